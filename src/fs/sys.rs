//! Thin wrappers over the *at system calls on backing file descriptors.
//!
//! The backing tree is reached only through file descriptors opened before the mount (and their
//! children): a path lookup into the mount point from a request handler would deadlock when the
//! mount sits on top of its own source directory. Where a call has no fd form for an O_PATH
//! descriptor, the /proc/self/fd/N magic link names the same inode without a lookup in the tree.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use nix::dir::{Dir, Type as DirType};

use super::error::{FsError, FsResult};

// The unsafe blocks below are plain system calls. What makes each sound is the same few things:
// every `&CStr` argument is NUL-terminated and borrowed for the whole call; every out-pointer is
// a live local or buffer of exactly the type and length the call is told; and a descriptor number
// that is wrong can only make the call fail with EBADF (the kernel checks it), never touch memory.
// Each block's comment names which of these it relies on.

/// Converts a name or path to a C string; names with a NUL byte are invalid.
pub fn cstr(name: &OsStr) -> FsResult<CString> {
    CString::new(name.as_bytes()).map_err(|_| FsError::new(libc::EINVAL))
}

/// The /proc/self/fd/N path of a descriptor.
pub fn proc_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a number")
}

fn check(ret: libc::c_int) -> FsResult<libc::c_int> {
    if ret < 0 {
        Err(FsError::new(last_errno()))
    } else {
        Ok(ret)
    }
}

/// The errno of the last failed libc call.
pub fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// openat(2) returning an owned descriptor.
pub fn openat(dir: RawFd, name: &CStr, flags: i32, mode: u32) -> FsResult<OwnedFd> {
    // SAFETY: `name` is a NUL-terminated string borrowed for the call.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    check(fd)?;
    // SAFETY: `fd` was just returned by openat, is open, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the inode behind an O_PATH descriptor for I/O with `flags` (O_RDONLY, O_RDWR, ...).
///
/// O_NOATIME: the daemon's own reads (a stat reading a container's size, the index at open) must
/// not move the backing file's atime, which is the file's atime as users see it.
pub fn reopen(fd: RawFd, flags: i32) -> FsResult<File> {
    let path = proc_path(fd);
    let flags = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_TRUNC);
    // SAFETY: `path` is a NUL-terminated CString that lives across the call; no O_CREAT, so the
    // variadic mode argument is not read.
    let mut raw = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC | libc::O_NOATIME) };
    if raw < 0 && last_errno() == libc::EPERM {
        // O_NOATIME needs ownership or CAP_FOWNER; without them, read as usual.
        // SAFETY: as above.
        raw = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    }
    check(raw)?;
    // SAFETY: `raw` was just returned by open, is open, and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(raw) })
}

/// fstat of any descriptor, O_PATH included.
pub fn fstat(fd: RawFd) -> FsResult<libc::stat> {
    // SAFETY: libc::stat is plain integers, for which all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let empty = c"";
    // SAFETY: the empty path is a NUL-terminated static; `st` is a live libc::stat, the exact
    // type fstatat writes.
    check(unsafe {
        libc::fstatat(
            fd,
            empty.as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// fstatat of a name in a directory, not following a final symlink.
pub fn fstatat(dir: RawFd, name: &CStr) -> FsResult<libc::stat> {
    // SAFETY: libc::stat is plain integers, for which all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated and borrowed for the call; `st` is a live libc::stat.
    check(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

pub fn mkdirat(dir: RawFd, name: &CStr, mode: u32) -> FsResult<()> {
    // SAFETY: `name` is NUL-terminated and borrowed for the call.
    check(unsafe { libc::mkdirat(dir, name.as_ptr(), mode) }).map(drop)
}

pub fn mknodat(dir: RawFd, name: &CStr, mode: u32, rdev: u64) -> FsResult<()> {
    // SAFETY: `name` is NUL-terminated and borrowed for the call.
    check(unsafe { libc::mknodat(dir, name.as_ptr(), mode, rdev) }).map(drop)
}

pub fn symlinkat(target: &CStr, dir: RawFd, name: &CStr) -> FsResult<()> {
    // SAFETY: `target` and `name` are NUL-terminated and borrowed for the call.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir, name.as_ptr()) }).map(drop)
}

pub fn unlinkat(dir: RawFd, name: &CStr, flags: i32) -> FsResult<()> {
    // SAFETY: `name` is NUL-terminated and borrowed for the call.
    check(unsafe { libc::unlinkat(dir, name.as_ptr(), flags) }).map(drop)
}

pub fn renameat2(
    olddir: RawFd,
    oldname: &CStr,
    newdir: RawFd,
    newname: &CStr,
    flags: u32,
) -> FsResult<()> {
    // SAFETY: both names are NUL-terminated and borrowed for the call.
    check(unsafe { libc::renameat2(olddir, oldname.as_ptr(), newdir, newname.as_ptr(), flags) })
        .map(drop)
}

/// Hard link of the inode behind `fd` (O_PATH) as `newname` in `newdir`.
pub fn link_fd(fd: RawFd, newdir: RawFd, newname: &CStr) -> FsResult<()> {
    let path = proc_path(fd);
    // SAFETY: `path` (a CString living across the call) and `newname` are NUL-terminated.
    check(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            path.as_ptr(),
            newdir,
            newname.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
    .map(drop)
}

/// readlink of a symlink held by an O_PATH|O_NOFOLLOW descriptor.
pub fn readlink_fd(fd: RawFd) -> FsResult<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    let empty = c"";
    // SAFETY: the empty path is NUL-terminated; readlinkat writes at most `buf.len()` bytes into
    // `buf`, which is that long.
    let n = unsafe {
        libc::readlinkat(
            fd,
            empty.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
        )
    };
    if n < 0 {
        return Err(FsError::new(last_errno()));
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn chmod_fd(fd: RawFd, mode: u32) -> FsResult<()> {
    let path = proc_path(fd);
    // SAFETY: `path` is a CString living across the call.
    check(unsafe { libc::chmod(path.as_ptr(), mode) }).map(drop)
}

pub fn chown_fd(fd: RawFd, uid: Option<u32>, gid: Option<u32>) -> FsResult<()> {
    let empty = c"";
    // SAFETY: the empty path is a NUL-terminated static.
    check(unsafe {
        libc::fchownat(
            fd,
            empty.as_ptr(),
            uid.unwrap_or(u32::MAX),
            gid.unwrap_or(u32::MAX),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

pub fn chown_at(dir: RawFd, name: &CStr, uid: u32, gid: u32) -> FsResult<()> {
    // SAFETY: `name` is NUL-terminated and borrowed for the call.
    check(unsafe { libc::fchownat(dir, name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })
        .map(drop)
}

/// fchown of an open (not O_PATH) descriptor: no path walk.
pub fn fchown(fd: RawFd, uid: u32, gid: u32) -> FsResult<()> {
    // SAFETY: no pointers; a bad `fd` fails with EBADF.
    check(unsafe { libc::fchown(fd, uid, gid) }).map(drop)
}

/// utimensat on the inode behind `fd`; each time is (sec, nsec) or UTIME_NOW/UTIME_OMIT in nsec.
pub fn utimens_fd(fd: RawFd, is_symlink: bool, times: [libc::timespec; 2]) -> FsResult<()> {
    if is_symlink {
        // The magic link would resolve to the symlink's target: use the empty path instead.
        let empty = c"";
        // SAFETY: the empty path is NUL-terminated; `times` is the array of two timespecs
        // utimensat reads.
        return check(unsafe {
            libc::utimensat(
                fd,
                empty.as_ptr(),
                times.as_ptr(),
                libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(drop);
    }
    let path = proc_path(fd);
    // SAFETY: `path` is a CString living across the call; `times` holds the two timespecs read.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) }).map(drop)
}

pub fn fstatvfs(fd: RawFd) -> FsResult<libc::statvfs> {
    // SAFETY: libc::statvfs is plain integers, for which all-zero bytes are a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // fstatvfs works on O_PATH descriptors since Linux 3.x through the proc path.
    let path = proc_path(fd);
    // SAFETY: `path` is a CString living across the call; `st` is a live libc::statvfs.
    check(unsafe { libc::statvfs(path.as_ptr(), &mut st) })?;
    Ok(st)
}

/// Reads a directory's entries through a fresh descriptor (the O_PATH one cannot be read).
pub fn read_dir(fd: RawFd) -> FsResult<Vec<(u64, u8, Vec<u8>)>> {
    let dot = c".";
    // O_NOATIME: the listing is the daemon's; the user's access is recorded by `atime`.
    let dirfd = match openat(
        fd,
        dot,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOATIME,
        0,
    ) {
        Err(e) if e.errno == libc::EPERM => openat(fd, dot, libc::O_RDONLY | libc::O_DIRECTORY, 0)?,
        r => r?,
    };
    let mut dir = Dir::from_fd(dirfd).map_err(|e| FsError::new(e as i32))?;
    let mut out = Vec::new();
    for ent in dir.iter() {
        let ent = ent.map_err(|e| FsError::new(e as i32))?;
        out.push((
            ent.ino(),
            d_type(ent.file_type()),
            ent.file_name().to_bytes().to_vec(),
        ));
    }
    Ok(out)
}

/// The `d_type` byte of a directory entry's type (DT_UNKNOWN when the filesystem gave none).
fn d_type(t: Option<DirType>) -> u8 {
    match t {
        Some(DirType::Fifo) => libc::DT_FIFO,
        Some(DirType::CharacterDevice) => libc::DT_CHR,
        Some(DirType::Directory) => libc::DT_DIR,
        Some(DirType::BlockDevice) => libc::DT_BLK,
        Some(DirType::File) => libc::DT_REG,
        Some(DirType::Symlink) => libc::DT_LNK,
        Some(DirType::Socket) => libc::DT_SOCK,
        None => libc::DT_UNKNOWN,
    }
}

fn xattr_result(n: isize) -> FsResult<usize> {
    if n < 0 {
        Err(FsError::new(last_errno()))
    } else {
        Ok(n as usize)
    }
}

/// getxattr on the inode behind `fd`; `size` 0 asks for the length only.
pub fn getxattr_fd(fd: RawFd, name: &CStr, size: usize) -> FsResult<Vec<u8>> {
    let path = proc_path(fd);
    let mut buf = vec![0u8; size];
    // SAFETY: `path` and `name` are NUL-terminated; getxattr writes at most `size` bytes into
    // `buf`, which is `size` bytes long.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            size,
        )
    };
    let n = xattr_result(n)?;
    buf.truncate(n);
    Ok(buf)
}

/// Length of an xattr value.
pub fn getxattr_len(fd: RawFd, name: &CStr) -> FsResult<usize> {
    let path = proc_path(fd);
    // SAFETY: `path` and `name` are NUL-terminated; with size 0 getxattr only returns the length
    // and never writes through the null buffer.
    xattr_result(unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) })
}

pub fn setxattr_fd(fd: RawFd, name: &CStr, value: &[u8], flags: i32) -> FsResult<()> {
    let path = proc_path(fd);
    // SAFETY: `path` and `name` are NUL-terminated; setxattr reads `value.len()` bytes from
    // `value`.
    check(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            flags,
        )
    })
    .map(drop)
}

/// listxattr; `size` 0 asks for the length only.
pub fn listxattr_fd(fd: RawFd, size: usize) -> FsResult<Vec<u8>> {
    let path = proc_path(fd);
    let mut buf = vec![0u8; size];
    // SAFETY: `path` is NUL-terminated; listxattr writes at most `size` bytes into `buf`, which
    // is `size` bytes long (with size 0 it writes nothing).
    let n = unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, size) };
    let n = xattr_result(n)?;
    if size == 0 {
        return Ok(vec![0; n]);
    }
    buf.truncate(n);
    Ok(buf)
}

pub fn removexattr_fd(fd: RawFd, name: &CStr) -> FsResult<()> {
    let path = proc_path(fd);
    // SAFETY: `path` and `name` are NUL-terminated and live across the call.
    check(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) }).map(drop)
}

/// fallocate on an open file.
pub fn fallocate(file: &File, mode: i32, offset: u64, len: u64) -> FsResult<()> {
    // SAFETY: no pointers; `file` keeps its descriptor open across the call.
    check(unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })
    .map(drop)
}

/// lseek(2) with SEEK_DATA (`data`) or SEEK_HOLE on an open file; the new offset.
pub fn seek_data_or_hole(file: &File, offset: u64, data: bool) -> FsResult<u64> {
    let whence = if data {
        libc::SEEK_DATA
    } else {
        libc::SEEK_HOLE
    };
    // SAFETY: no pointers; `file` keeps its descriptor open across the call. lseek on a
    // descriptor shared by nobody else here (the daemon's own) moves only its own offset.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
    if r < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(r as u64)
}
