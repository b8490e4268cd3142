//! Access times: a read or a directory listing through the mount moves the file's atime as the
//! same mount options would on ext4 (`relatime` by default, `strictatime`, `noatime`,
//! `nodiratime`).
//!
//! The atime users see is the backing inode's. The daemon opens backing inodes with O_NOATIME,
//! so its own reads (read-ahead, the index at open, digests, compaction, fsck) never move it;
//! only [`DeflateFs::note_file_read`] and [`DeflateFs::note_dir_read`], called for the requests a
//! user made, do. They decide with ext4's rule and then let the backing filesystem itself record
//! the access (one byte read, or one getdents, through a descriptor opened without O_NOATIME):
//! that moves the atime without moving the ctime, which `utimensat` would, and which the
//! digests and recovery use to tell whether a file changed. Only when the backing filesystem's
//! own policy would refuse (`strictatime` here over a `relatime` backing mount), the access is
//! made through a detached clone of the backing mount that has the `strictatime` flag
//! (`open_tree` + `mount_setattr`, reopening the inode by its file handle); a daemon that cannot
//! make one (not root) sets the atime with `utimensat`, which moves the ctime too.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use super::core::DeflateFs;
use super::error::FsResult;
use super::inode::{Node, NodeKind};
use super::sys;
use crate::options::AtimeMode;

/// How old an atime may get under `relatime` before a read moves it anyway (as the kernel's
/// `relatime_need_update`).
const RELATIME_MAX_AGE_SECS: i64 = 24 * 60 * 60;

/// Whether an access at `now` (seconds, nanoseconds) moves the atime of an inode with stat `st`
/// under `mode`: always under `strictatime`; under `relatime` only when the atime is not after
/// the mtime or the ctime, or is at least a day old; never under `noatime`. An atime already
/// equal to `now` is never rewritten.
pub fn atime_needs_update(mode: AtimeMode, st: &libc::stat, now: (i64, i64)) -> bool {
    let atime = (st.st_atime, st.st_atime_nsec);
    if atime == now {
        return false;
    }
    match mode {
        AtimeMode::Never => false,
        AtimeMode::Strict => true,
        AtimeMode::Relatime => {
            (st.st_mtime, st.st_mtime_nsec) >= atime
                || (st.st_ctime, st.st_ctime_nsec) >= atime
                || now.0 - atime.0 >= RELATIME_MAX_AGE_SECS
        }
    }
}

fn now() -> (i64, i64) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, i64::from(d.subsec_nanos()))
}

/// A detached clone of the mount holding the source directory `root`, flagged `strictatime`,
/// through which reads under `strictatime` record every access whatever the backing mount's
/// own atime option is (made for every mode: a remount may switch to `strictatime`). None
/// without root, or when the kernel does not allow one (logged).
pub fn strict_atime_view(root: &OwnedFd) -> Option<OwnedFd> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOUNT_ATTR_ATIME_MASK: u64 = 0x70;
    const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
    // SAFETY: the empty path is NUL-terminated; open_tree reads nothing else.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            root.as_raw_fd(),
            c"".as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint,
        )
    };
    if fd < 0 {
        tracing::info!(
            "strictatime: no private strictatime view of the source ({}); reads that the \
             backing mount's own atime policy skips set the atime with utimensat (moves ctime)",
            std::io::Error::last_os_error()
        );
        return None;
    }
    // SAFETY: `fd` was just returned by open_tree and nothing else owns it.
    let view = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // struct mount_attr { attr_set, attr_clr, propagation, userns_fd }
    let attr: [u64; 4] = [MOUNT_ATTR_STRICTATIME, MOUNT_ATTR_ATIME_MASK, 0, 0];
    // SAFETY: `attr` is a live struct mount_attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            view.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if r != 0 {
        tracing::info!(
            "strictatime: cannot flag the private view of the source ({}); reads set the \
             atime with utimensat (moves ctime)",
            std::io::Error::last_os_error()
        );
        return None;
    }
    // open_by_handle_at refuses an O_PATH descriptor (which open_tree gives) as its anchor.
    match sys::openat(
        view.as_raw_fd(),
        c".",
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    ) {
        Ok(anchor) => Some(anchor),
        Err(e) => {
            tracing::info!("strictatime: cannot open the private view of the source: {e}");
            None
        }
    }
}

impl DeflateFs {
    /// The access-time policy for `node`'s kind, or `None` when nothing may move its atime
    /// (a read-only mount, `noatime`, a directory under `nodiratime`).
    fn atime_mode(&self, node: &Node) -> Option<AtimeMode> {
        let mode = self.atime_now();
        if self.read_only_now() || mode == AtimeMode::Never {
            return None;
        }
        if node.kind == NodeKind::Directory && self.nodiratime_now() {
            return None;
        }
        Some(mode)
    }

    /// Whether the next read through the new handle `fh` must reach the daemon so the file's
    /// atime moves: open then asks the kernel to drop its cached pages, which a read would
    /// otherwise be served from.
    pub fn handle_read_would_move_atime(&self, fh: u64) -> bool {
        let Ok(h) = self.handle(fh) else {
            return false;
        };
        let node = &h.node;
        let Some(mode) = self.atime_mode(node) else {
            return false;
        };
        match self.fd(node).and_then(|fd| sys::fstat(fd.raw())) {
            Ok(st) => atime_needs_update(mode, &st, now()),
            Err(_) => false,
        }
    }

    /// Records a user's read through handle `fh`: moves the file's atime if the mount's policy
    /// says so. Failing to do so is logged and never fails the read.
    pub fn note_file_read(&self, fh: u64) {
        if self.atime_now() == AtimeMode::Never || self.read_only_now() {
            return;
        }
        if let Ok(h) = self.handle(fh) {
            self.note_access(&h.node);
        }
    }

    /// Records a user's directory listing through handle `fh` (see [`Self::note_file_read`]).
    pub fn note_dir_read(&self, fh: u64) {
        if self.atime_now() == AtimeMode::Never || self.read_only_now() || self.nodiratime_now() {
            return;
        }
        if let Ok(h) = self.handle(fh) {
            self.note_access(&h.node);
        }
    }

    fn note_access(&self, node: &Node) {
        let Some(mode) = self.atime_mode(node) else {
            return;
        };
        if let Err(e) = self.move_atime(node, mode) {
            tracing::debug!("{}: access time not updated: {e}", Self::label(node));
        }
    }

    fn move_atime(&self, node: &Node, mode: AtimeMode) -> FsResult<()> {
        let fd = self.fd(node)?;
        let before = sys::fstat(fd.raw())?;
        if !atime_needs_update(mode, &before, now()) {
            return Ok(());
        }
        // A read through a descriptor without O_NOATIME: the backing filesystem records the
        // access itself, under its own mount's policy (or the strictatime view's), and leaves
        // the ctime alone.
        let access = if node.kind == NodeKind::Directory {
            libc::O_RDONLY | libc::O_DIRECTORY
        } else {
            libc::O_RDONLY
        };
        let through_view = self.strict_atime_view.as_ref().and_then(|view| {
            let handle = super::inode::file_handle(fd.raw())?;
            super::inode::open_by_handle_with(view.as_raw_fd(), &handle, access).ok()
        });
        let opened = through_view.or_else(|| {
            let path = sys::proc_path(fd.raw());
            // SAFETY: `path` is a NUL-terminated CString living across the call; no O_CREAT.
            let raw = unsafe { libc::open(path.as_ptr(), access | libc::O_CLOEXEC) };
            // SAFETY: `raw` was just returned by open and nothing else owns it.
            (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw) })
        });
        if let Some(opened) = opened {
            let file = std::fs::File::from(opened);
            if node.kind == NodeKind::Directory {
                let mut buf = [0u8; 1024];
                // SAFETY: `buf` is a live buffer of the length given; getdents64 writes within it.
                unsafe {
                    libc::syscall(
                        libc::SYS_getdents64,
                        file.as_raw_fd(),
                        buf.as_mut_ptr(),
                        buf.len(),
                    )
                };
            } else {
                let _ = file.read_at(&mut [0u8; 1], 0);
            }
        }
        if mode != AtimeMode::Strict {
            return Ok(());
        }
        let after = sys::fstat(fd.raw())?;
        if (after.st_atime, after.st_atime_nsec) != (before.st_atime, before.st_atime_nsec) {
            return Ok(());
        }
        // The backing mount's policy is laxer than `strictatime`: set it ourselves.
        let now = libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        };
        let omit = libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        };
        sys::utimens_fd(fd.raw(), false, [now, omit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_with(atime: i64, mtime: i64, ctime: i64) -> libc::stat {
        // SAFETY: libc::stat is plain integers, for which all-zero bytes are a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        st.st_atime = atime;
        st.st_mtime = mtime;
        st.st_ctime = ctime;
        st
    }

    #[test]
    fn relatime_moves_atime_only_when_not_after_mtime_or_ctime_or_a_day_old() {
        let now = (1_000_000, 0);
        let r = AtimeMode::Relatime;
        assert!(atime_needs_update(r, &stat_with(100, 200, 100), now));
        assert!(atime_needs_update(r, &stat_with(200, 100, 200), now));
        assert!(!atime_needs_update(r, &stat_with(999_000, 100, 100), now));
        assert!(atime_needs_update(
            r,
            &stat_with(now.0 - RELATIME_MAX_AGE_SECS, 100, 100),
            now
        ));
    }

    #[test]
    fn strictatime_always_moves_and_noatime_never() {
        let now = (1_000_000, 0);
        let fresh = stat_with(999_999, 100, 100);
        assert!(atime_needs_update(AtimeMode::Strict, &fresh, now));
        assert!(!atime_needs_update(
            AtimeMode::Never,
            &stat_with(1, 2, 2),
            now
        ));
    }
}
