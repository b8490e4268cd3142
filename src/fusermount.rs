//! Mounting and unmounting without root, through the setuid helper `fusermount3`, the way libfuse
//! does it (fuser's own mount code is never used, see src/mount.rs):
//!
//! - mount: make a socketpair, run `fusermount3 -o OPTS -- MOUNTPOINT` with `_FUSE_COMMFD` naming
//!   one end, and receive the opened /dev/fuse descriptor over the other end (SCM_RIGHTS).
//!   fusermount3 checks that the user may mount there (write access to the mount point, `allow_other`
//!   only with `user_allow_other` in /etc/fuse.conf), mounts with type `fuse.SUBTYPE` and source
//!   `fsname`, and exits.
//! - unmount: `fusermount3 -u [-z] -- MOUNTPOINT`, which only removes a FUSE mount of the same user.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// The helper's name; `FUSERMOUNT3` in the environment overrides it (a full path, for tests or
/// unusual installs).
pub const FUSERMOUNT: &str = "fusermount3";

/// The environment variable through which fusermount3 learns its end of the socketpair.
const COMMFD_ENV: &str = "_FUSE_COMMFD";

fn program() -> std::ffi::OsString {
    std::env::var_os("FUSERMOUNT3").unwrap_or_else(|| FUSERMOUNT.into())
}

/// Escapes `\` and `,` in an option value, as fusermount3 and libfuse's option parser expect
/// (a comma in the source path must not split the option string).
pub fn escape_option_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c == ',' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn spawn_error(e: io::Error) -> String {
    if e.kind() == io::ErrorKind::NotFound {
        format!(
            "{} not found: mounting without root needs it (Debian package fuse3)",
            program().to_string_lossy()
        )
    } else {
        format!("cannot run {}: {e}", program().to_string_lossy())
    }
}

/// What fusermount3 printed, without its program-name prefix, on one line.
fn helper_message(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    lines.join("; ")
}

/// Mounts through fusermount3 with the given option string (already escaped) and returns the
/// /dev/fuse descriptor. The error is fusermount3's own explanation.
pub fn mount(mountpoint: &Path, options: &str) -> Result<OwnedFd, String> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let their_fd = theirs.as_raw_fd();
    let mut cmd = Command::new(program());
    cmd.arg("-o")
        .arg(options)
        .arg("--")
        .arg(mountpoint)
        .env(COMMFD_ENV, their_fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // The socket is created close-on-exec; only the child's copy must survive exec.
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed: it makes two fcntl calls on a copied integer and reads errno, and
    // neither allocates nor takes a lock. `theirs` stays open in the parent until after spawn,
    // so the child's `their_fd` is the socket.
    unsafe {
        cmd.pre_exec(move || {
            let flags = libc::fcntl(their_fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(their_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(spawn_error)?;
    drop(theirs);
    let received = receive_fd(&ours);
    drop(ours);
    let output = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {}: {e}", program().to_string_lossy()))?;
    match received {
        Ok(Some(fd)) => Ok(fd),
        Ok(None) | Err(_) => {
            let msg = helper_message(&output.stderr);
            Err(if msg.is_empty() {
                format!(
                    "{} failed ({}) without saying why",
                    program().to_string_lossy(),
                    output.status
                )
            } else {
                msg
            })
        }
    }
}

/// Receives one descriptor sent with SCM_RIGHTS; `None` when the peer closed without sending one.
fn receive_fd(sock: &UnixStream) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    };
    // SAFETY: CMSG_SPACE is arithmetic on its argument; it touches no memory.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is integers and raw pointers, for which all-zero bytes (null pointers,
    // zero lengths) are a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    loop {
        // SAFETY: `msg` points at `iov` (one live 1-byte buffer) and at `control`, a live buffer
        // of at least `space` bytes, aligned for cmsghdr; recvmsg writes only inside them.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            if n == 0 {
                return Ok(None);
            }
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let mut found = None;
    // SAFETY: `msg` is the header recvmsg filled: its control pointer and the length the kernel
    // set describe `control`, so CMSG_FIRSTHDR returns a header inside it, or null.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: a non-null header from CMSG_FIRSTHDR/CMSG_NXTHDR lies inside `control`, which
        // is aligned for cmsghdr and outlives this borrow.
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: pointer arithmetic inside the same control message.
            let data = unsafe { libc::CMSG_DATA(cmsg) };
            let payload = header.cmsg_len as usize - (data as usize - cmsg as usize);
            let count = payload / std::mem::size_of::<libc::c_int>();
            for i in 0..count {
                // SAFETY: `count` ints fit in the payload the kernel wrote after `data`, by the
                // message's own cmsg_len; read_unaligned needs no alignment.
                let fd = unsafe { std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i)) };
                if fd < 0 {
                    continue;
                }
                // Keep the first; close any extra descriptor rather than leak it.
                // SAFETY: SCM_RIGHTS installed this descriptor in our table just now, for us
                // alone: nothing else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if found.is_none() {
                    found = Some(owned);
                }
            }
        }
        // SAFETY: `cmsg` is a header inside `msg`'s control buffer; CMSG_NXTHDR bounds-checks
        // the next one against msg_controllen and returns null past the end.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(found)
}

/// `fusermount3 -u [-z] -- MOUNTPOINT`.
pub fn unmount(mountpoint: &Path, lazy: bool) -> Result<(), String> {
    let mut cmd = Command::new(program());
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let output = cmd
        .arg("--")
        .arg(OsStr::new(mountpoint))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(spawn_error)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(helper_message(&output.stderr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_and_backslashes_are_escaped() {
        assert_eq!(escape_option_value("/a,b\\c"), "/a\\,b\\\\c");
        assert_eq!(escape_option_value("/plain"), "/plain");
    }

    #[test]
    fn a_descriptor_sent_over_the_socket_is_received() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        // Send like fusermount3 does: one data byte, one SCM_RIGHTS descriptor.
        let fd = file.as_raw_fd();
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        // SAFETY: arithmetic only.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
        let mut control = vec![0u64; space.div_ceil(8)];
        // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: `control` is `space` bytes, aligned, so the first header and its int of data
        // fit in it (CMSG_FIRSTHDR is non-null for a buffer of at least one header); sendmsg
        // reads the 1-byte `iov` and that control message.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), fd);
            assert_eq!(libc::sendmsg(a.as_raw_fd(), &msg, 0), 1);
        }
        let got = receive_fd(&b).unwrap().expect("a descriptor");
        assert_ne!(got.as_raw_fd(), fd);
        drop(a);
        assert!(receive_fd(&b).unwrap().is_none(), "EOF gives no descriptor");
    }
}
