//! The ioctls of the mount: the inode flags of `lsattr` and `chattr`. Every other command is
//! answered ENOTTY, as ext4 answers commands it does not know (TCGETS from isatty() above all).
//!
//! Since Linux 5.13 the kernel turns FS_IOC_GETFLAGS/SETFLAGS and FS_IOC_FSGETXATTR/FSSETXATTR
//! into its `fileattr` calls, which FUSE sends back to the daemon as those same four ioctls, on a
//! handle it opens (read-only) for the purpose, with the sizes the kernel uses itself: 4 bytes for
//! the flags (although FS_IOC_GETFLAGS is encoded with the size of a long) and 28 for a
//! `struct fsxattr`. A `chattr` sends FS_IOC_FSGETXATTR before its FS_IOC_SETFLAGS (the kernel
//! reads the old attributes that way), so all four are needed for it to work.
//!
//! What the flags mean through the mount (README, "Inode flags"):
//! - `i` (immutable), `d` (no dump), `A` (no atime) and `D` (synchronous directory updates) are
//!   the backing inode's: the backing filesystem enforces them for the daemon exactly as it would
//!   for a process using the file directly, because every access through the mount is an access
//!   to the backing inode.
//! - `c` (compressed) is shown for a file stored as a container, and cannot be changed: a file is
//!   converted by rewriting it, not by chattr.
//! - Everything else (`a` append-only, `S` synchronous writes, `j`, `e`, `C`, project ids, ...)
//!   is refused with EOPNOTSUPP, like ext4 refuses flags it does not support. `a` and `S` in
//!   particular cannot be honoured: the daemon rewrites container headers in place and keeps
//!   written data in memory until a commit. Flags of the backing inode outside the list (such
//!   as ext4's `e`, extents) describe the backing file's layout, not the file seen through the
//!   mount, and are not shown.

use std::os::fd::{AsRawFd, RawFd};

use super::core::DeflateFs;
use super::error::{errno, FsError, FsResult};
use super::file::OpenFile;
use super::inode::{Node, NodeKind};
use super::sys;

// Inode flags (linux/fs.h; `man chattr` names their letters).
const FS_COMPR_FL: u32 = 0x0000_0004;
const FS_IMMUTABLE_FL: u32 = 0x0000_0010;
const FS_NODUMP_FL: u32 = 0x0000_0040;
const FS_NOATIME_FL: u32 = 0x0000_0080;
const FS_DIRSYNC_FL: u32 = 0x0001_0000;

// The same for FS_IOC_FSGETXATTR/FSSETXATTR (linux/fs.h). Only those with an inode flag the mount
// supports are listed; any other is refused.
const FS_XFLAG_IMMUTABLE: u32 = 0x0000_0008;
const FS_XFLAG_NOATIME: u32 = 0x0000_0040;
const FS_XFLAG_NODUMP: u32 = 0x0000_0080;

/// The flags that are the backing inode's, read and set there.
const BACKING_FLAGS: u32 = FS_IMMUTABLE_FL | FS_NODUMP_FL | FS_NOATIME_FL | FS_DIRSYNC_FL;

/// The flags compaction carries over to the rewritten file. Not `i`: an immutable file is never
/// written, so never compacted (and an immutable file could not be renamed into place).
const COMPACTION_KEEPS: u32 = FS_NODUMP_FL | FS_NOATIME_FL;

/// Size of `struct fsxattr`: xflags, extsize, nextents, projid, cowextsize (u32 each), 8 pad bytes.
const FSXATTR_SIZE: usize = 28;

/// An ioctl command this module answers. The kernel sends FS_IOC_GETFLAGS/SETFLAGS with the size
/// of a long in their encoding (and 4 bytes of data); a 32-bit kernel encodes 4: both are matched
/// by type and number alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagsCommand {
    GetFlags,
    SetFlags,
    GetXattr,
    SetXattr,
}

impl FlagsCommand {
    /// The command `cmd` names, or None for every other ioctl (answered ENOTTY).
    pub fn from_cmd(cmd: u32) -> Option<FlagsCommand> {
        let (kind, nr) = ((cmd >> 8) & 0xff, cmd & 0xff);
        match (kind as u8, nr) {
            (b'f', 1) => Some(FlagsCommand::GetFlags),
            (b'f', 2) => Some(FlagsCommand::SetFlags),
            (b'X', 31) => Some(FlagsCommand::GetXattr),
            (b'X', 32) => Some(FlagsCommand::SetXattr),
            _ => None,
        }
    }
}

/// Answers one of the flag ioctls on the file or directory open as `fh`: the bytes to reply
/// (exactly `out_size` of them, as the kernel requires), empty for the setters.
pub fn inode_flags(
    fs: &DeflateFs,
    fh: u64,
    command: FlagsCommand,
    in_data: &[u8],
    out_size: u32,
) -> FsResult<Vec<u8>> {
    tracing::trace!(
        "ioctl {command:?} on handle {fh}: {} bytes in, {out_size} out",
        in_data.len()
    );
    let h = fs.handle(fh)?;
    if !matches!(h.node.kind, NodeKind::Regular | NodeKind::Directory) {
        return errno(libc::ENOTTY);
    }
    let container = matches!(h.file.as_deref(), Some(OpenFile::Container(_)));
    // The handle's own descriptors are O_PATH (or the open file's, which a compaction may
    // replace): the flags ioctls need a real descriptor of the current backing inode.
    let backing = fs.reopen(&h.node, libc::O_RDONLY | libc::O_NONBLOCK)?;
    let backing_flags = get_backing_flags(backing.as_raw_fd())?;
    let shown = (backing_flags & BACKING_FLAGS) | if container { FS_COMPR_FL } else { 0 };
    match command {
        FlagsCommand::GetFlags => flags_reply(shown, out_size),
        FlagsCommand::GetXattr => {
            let mut out = vec![0u8; FSXATTR_SIZE];
            out[..4].copy_from_slice(&to_xflags(shown).to_ne_bytes());
            sized(out, out_size)
        }
        FlagsCommand::SetFlags | FlagsCommand::SetXattr => {
            let wanted = if command == FlagsCommand::SetFlags {
                u32_at(in_data, 0)?
            } else {
                wanted_from_fsxattr(in_data, shown)?
            };
            set_flags(
                fs,
                &h.node,
                backing.as_raw_fd(),
                backing_flags,
                shown,
                wanted,
            )?;
            Ok(Vec::new())
        }
    }
}

/// The flags an FS_IOC_FSSETXATTR asks for, as the mount shows flags: `shown` with its
/// immutable, noatime and nodump bits replaced. Anything else it could set (other xflags,
/// extsize, a project id, cowextsize, all shown as 0) is EOPNOTSUPP.
fn wanted_from_fsxattr(in_data: &[u8], shown: u32) -> FsResult<u32> {
    if in_data.len() < FSXATTR_SIZE {
        return errno(libc::EINVAL);
    }
    let xflags = u32_at(in_data, 0)?;
    let (extsize, projid, cowextsize) = (
        u32_at(in_data, 4)?,
        u32_at(in_data, 12)?,
        u32_at(in_data, 16)?,
    );
    if xflags & !(FS_XFLAG_IMMUTABLE | FS_XFLAG_NOATIME | FS_XFLAG_NODUMP) != 0
        || (extsize, projid, cowextsize) != (0, 0, 0)
    {
        return errno(libc::EOPNOTSUPP);
    }
    let xflag_bits = FS_IMMUTABLE_FL | FS_NOATIME_FL | FS_NODUMP_FL;
    Ok((shown & !xflag_bits) | from_xflags(xflags))
}

/// Sets `wanted` (as the mount shows flags) on `node`'s backing inode, open as `fd`, whose flags
/// are `backing_flags` and shown as `shown`. A change to a flag outside [`BACKING_FLAGS`] is
/// EOPNOTSUPP and changes nothing; the backing inode's own other flags are kept as they are.
/// Making a file immutable while it is open for writing is EBUSY: the daemon would keep accepting
/// writes through those handles that it could then never store.
fn set_flags(
    fs: &DeflateFs,
    node: &Node,
    fd: RawFd,
    backing_flags: u32,
    shown: u32,
    wanted: u32,
) -> FsResult<()> {
    let changed = shown ^ wanted;
    if changed & !BACKING_FLAGS != 0 {
        return errno(libc::EOPNOTSUPP);
    }
    if changed == 0 {
        return Ok(());
    }
    if fs.read_only_now() {
        return errno(libc::EROFS);
    }
    if wanted & changed & FS_IMMUTABLE_FL != 0 && fs.open_for_writing(node.id) {
        return errno(libc::EBUSY);
    }
    set_backing_flags(
        fd,
        (backing_flags & !BACKING_FLAGS) | (wanted & BACKING_FLAGS),
    )
}

/// Gives the rewritten file `to` the flags of `from` that compaction keeps ([`COMPACTION_KEEPS`];
/// both may be O_PATH descriptors). A backing filesystem without inode flags has none to keep.
pub fn copy_kept_flags(from: RawFd, to: RawFd) -> FsResult<()> {
    let from = sys::reopen(from, libc::O_RDONLY | libc::O_NONBLOCK)?;
    let kept = get_backing_flags(from.as_raw_fd())? & COMPACTION_KEEPS;
    if kept == 0 {
        return Ok(());
    }
    let to = sys::reopen(to, libc::O_RDONLY | libc::O_NONBLOCK)?;
    let current = get_backing_flags(to.as_raw_fd())?;
    if current & COMPACTION_KEEPS == kept {
        return Ok(());
    }
    set_backing_flags(to.as_raw_fd(), (current & !COMPACTION_KEEPS) | kept)
}

/// Whether the backing inode (`fd`, O_PATH will do) is immutable or append-only, so that the
/// daemon cannot write it: a writable open of it is refused with EPERM, as ext4 refuses it, rather
/// than accepted and failed at write-back. (Append-only is refused too: the daemon does not only
/// append to a container.) One statx, no open.
pub fn writes_refused(fd: RawFd) -> FsResult<bool> {
    // SAFETY: libc::statx is plain integers, for which all-zero bytes are a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx writes one struct statx into `stx`, a live one; the empty path is
    // NUL-terminated and, with AT_EMPTY_PATH, names `fd` itself.
    let r = unsafe { libc::statx(fd, c"".as_ptr(), libc::AT_EMPTY_PATH, 0, &mut stx) };
    if r != 0 {
        return errno(sys::last_errno());
    }
    let refused = (libc::STATX_ATTR_IMMUTABLE | libc::STATX_ATTR_APPEND) as u64;
    Ok(stx.stx_attributes & stx.stx_attributes_mask & refused != 0)
}

/// The backing inode's flags; 0 on a filesystem without them (ENOTTY, EINVAL or EOPNOTSUPP,
/// as tmpfs before Linux 6.0, FAT or NFS answer).
fn get_backing_flags(fd: RawFd) -> FsResult<u32> {
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes at most a long (filesystems write an int) into `flags`.
    if unsafe { libc::ioctl(fd, libc::FS_IOC_GETFLAGS, &mut flags) } == 0 {
        return Ok(flags as u32);
    }
    match sys::last_errno() {
        libc::ENOTTY | libc::EINVAL | libc::EOPNOTSUPP => Ok(0),
        e => errno(e),
    }
}

fn set_backing_flags(fd: RawFd, flags: u32) -> FsResult<()> {
    let value: libc::c_long = flags as libc::c_long;
    // SAFETY: FS_IOC_SETFLAGS reads an int (the kernel's own size) from `value`, a long.
    if unsafe { libc::ioctl(fd, libc::FS_IOC_SETFLAGS, &value) } == 0 {
        return Ok(());
    }
    match sys::last_errno() {
        // The backing filesystem has no inode flags: the mount cannot have them either.
        libc::ENOTTY => errno(libc::EOPNOTSUPP),
        e => Err(FsError::new(e)),
    }
}

/// The reply to FS_IOC_GETFLAGS: an int from the kernel's fileattr call (4 bytes), a long
/// (8 bytes) from a caller that gave the command's encoded size.
fn flags_reply(flags: u32, out_size: u32) -> FsResult<Vec<u8>> {
    match out_size {
        4 => Ok(flags.to_ne_bytes().to_vec()),
        8 => Ok((flags as u64).to_ne_bytes().to_vec()),
        _ => errno(libc::EINVAL),
    }
}

/// `out` as a reply of exactly `out_size` bytes.
fn sized(mut out: Vec<u8>, out_size: u32) -> FsResult<Vec<u8>> {
    if (out_size as usize) < out.len() {
        return errno(libc::EINVAL);
    }
    out.resize(out_size as usize, 0);
    Ok(out)
}

fn u32_at(data: &[u8], at: usize) -> FsResult<u32> {
    data.get(at..at + 4)
        .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
        .ok_or(FsError::new(libc::EINVAL))
}

fn to_xflags(flags: u32) -> u32 {
    let mut x = 0;
    for (fl, xfl) in XFLAGS {
        if flags & fl != 0 {
            x |= xfl;
        }
    }
    x
}

fn from_xflags(xflags: u32) -> u32 {
    let mut f = 0;
    for (fl, xfl) in XFLAGS {
        if xflags & xfl != 0 {
            f |= fl;
        }
    }
    f
}

/// Inode flags and their FS_XFLAG_* equivalents.
const XFLAGS: [(u32, u32); 3] = [
    (FS_IMMUTABLE_FL, FS_XFLAG_IMMUTABLE),
    (FS_NOATIME_FL, FS_XFLAG_NOATIME),
    (FS_NODUMP_FL, FS_XFLAG_NODUMP),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_commands_are_recognised_whatever_size_they_encode() {
        assert_eq!(
            FlagsCommand::from_cmd(libc::FS_IOC_GETFLAGS as u32),
            Some(FlagsCommand::GetFlags)
        );
        assert_eq!(
            FlagsCommand::from_cmd(libc::FS_IOC_SETFLAGS as u32),
            Some(FlagsCommand::SetFlags)
        );
        // FS_IOC32_GETFLAGS: _IOR('f', 1, int).
        assert_eq!(
            FlagsCommand::from_cmd(0x8004_6601),
            Some(FlagsCommand::GetFlags)
        );
        // FS_IOC_FSGETXATTR / FSSETXATTR: _IOR/_IOW('X', 31/32, struct fsxattr).
        assert_eq!(
            FlagsCommand::from_cmd(0x801c_581f),
            Some(FlagsCommand::GetXattr)
        );
        assert_eq!(
            FlagsCommand::from_cmd(0x401c_5820),
            Some(FlagsCommand::SetXattr)
        );
        assert_eq!(FlagsCommand::from_cmd(libc::TCGETS as u32), None);
    }

    #[test]
    fn xflags_map_both_ways_for_the_flags_that_have_one() {
        let flags = FS_IMMUTABLE_FL | FS_NOATIME_FL | FS_NODUMP_FL;
        assert_eq!(from_xflags(to_xflags(flags)), flags);
        assert_eq!(to_xflags(FS_COMPR_FL | FS_DIRSYNC_FL), 0);
    }
}
