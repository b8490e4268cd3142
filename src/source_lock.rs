//! One read-write mount per source: two daemons writing one backing directory would interleave
//! appends to the same containers and corrupt them.
//!
//! A read-write mount holds a write lock on `SOURCE/.deflatefs-lock` for its lifetime: an open
//! file description lock (`F_OFD_SETLK`), so it stays with the daemon after it detaches (a fork
//! keeps the description) and goes away with it however it ends, `kill -9` included; no stale
//! lock is ever left to clean up. The lock is a POSIX record lock as far as other hosts are
//! concerned: NFS, GlusterFS and CephFS pass it to their lock managers, so a second read-write
//! mount of a shared source on another host is refused too. The file holds who has the lock
//! (host, pid, mount point), for the refusal's message. Read-only mounts take no lock and may
//! run beside a writer.

use std::ffi::CStr;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::container::INTERNAL_NAME_PREFIX;

/// The lock file's name in the source directory (hidden from the mount like every name with
/// the internal prefix).
pub fn lock_file_name() -> String {
    format!("{INTERNAL_NAME_PREFIX}lock")
}

/// The held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct SourceLock {
    _file: std::fs::File,
}

impl SourceLock {
    /// Takes the lock of the source directory `root` (an open descriptor of it) for a
    /// read-write mount on `mountpoint`. Refused, naming the holder, if another mount holds it.
    /// `Ok(None)` where no lock can exist: a source on a read-only filesystem (nothing can
    /// write it), or one whose filesystem has no record locks (NFS mounted `nolock`: logged as
    /// a warning, since a second writer is then not refused).
    pub fn acquire(
        root: RawFd,
        source: &Path,
        mountpoint: &Path,
    ) -> Result<Option<SourceLock>, String> {
        let name = std::ffi::CString::new(lock_file_name()).expect("no NUL");
        let fd = match open_lock_file(root, &name) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => return Ok(None),
            Err(e) => {
                return Err(format!(
                    "{}: cannot open its lock file {}: {e}",
                    source.display(),
                    lock_file_name()
                ))
            }
        };
        let mut file = std::fs::File::from(fd);
        match set_write_lock(file.as_raw_fd()) {
            Ok(true) => {}
            Ok(false) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() {
                    "another deflatefs daemon".to_string()
                } else {
                    holder.to_string()
                };
                return Err(format!(
                    "{} is already mounted read-write ({holder}); a second read-write mount of \
                     one source would corrupt its files (a read-only mount, -o ro, may run \
                     beside it)",
                    source.display()
                ));
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOLCK | libc::EOPNOTSUPP)) => {
                tracing::warn!(
                    "{}: its filesystem has no record locks ({e}): a second read-write mount of \
                     it would not be refused",
                    source.display()
                );
                return Ok(None);
            }
            Err(e) => {
                return Err(format!(
                    "{}: cannot lock {}: {e}",
                    source.display(),
                    lock_file_name()
                ))
            }
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        let who = format!(
            "host {host}, pid {}, mount point {}\n",
            std::process::id(),
            mountpoint.display()
        );
        // What the holder writes is only for messages: failing to write it changes nothing.
        let _ = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(who.as_bytes()));
        Ok(Some(SourceLock { _file: file }))
    }
}

fn open_lock_file(root: RawFd, name: &CStr) -> std::io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and lives across the call; `root` is a descriptor the
    // caller keeps open.
    let fd = unsafe {
        libc::openat(
            root,
            name.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            0o600,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `Ok(false)` if another open file description holds a conflicting lock.
fn set_write_lock(fd: RawFd) -> std::io::Result<bool> {
    let lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // SAFETY: F_OFD_SETLK reads the `flock` it is given, which lives across the call.
    if unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &lock) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}
