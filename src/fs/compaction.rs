//! Compaction: rewriting a container that has accumulated stale data (overwritten pieces,
//! superseded index records) into a fresh file, and installing it in place of the old one
//! (docs/FORMAT.md).
//!
//! When: at the flush or close of a file that wants it, and on the flusher thread for files
//! kept open (within a second of crossing the threshold, or at the flusher's next pass after an
//! fsync that left the file due). Compaction of a read-only mount never runs.
//!
//! Guarantees:
//! - one compaction of a file at a time (its compaction turn); a close that finds one running
//!   leaves the work to it;
//! - the rewrite goes to `.deflatefs-compact-<ino>` in the same directory, with the owner,
//!   mode, user xattrs, kept inode flags and times of the original, synced before the rename;
//! - the rename happens under the directory's name lock and only while the name still leads to
//!   this file with a single link: files with several hard links, or whose name moved, are
//!   skipped and left as they were;
//! - after the rename the directory is fsynced; if that fails, every later fsync of the file
//!   fails, since a power cut could bring the old inode back;
//! - any failure before the rename leaves the file as it was (larger) and removes the
//!   temporary; failures are logged, never returned to the caller of close. A panic is caught
//!   and marks the file failed (see `flusher`).

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::core::{DeflateFs, INTERNAL_PREFIX};
use super::error::{errno, FsError, FsResult};
use super::file::{ContainerFile, OpenFile};
use super::inode::Node;
use super::sys;

/// Copies every xattr of the inode behind `from` to the inode behind `to` (both O_PATH).
fn copy_xattrs(from: std::os::fd::RawFd, to: std::os::fd::RawFd) -> FsResult<()> {
    let len = sys::listxattr_fd(from, 0)?.len();
    if len == 0 {
        return Ok(());
    }
    let names = sys::listxattr_fd(from, len)?;
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = sys::cstr(OsStr::from_bytes(name))?;
        let vlen = sys::getxattr_len(from, &cname)?;
        let value = sys::getxattr_fd(from, &cname, vlen)?;
        match sys::setxattr_fd(to, &cname, &value, 0) {
            Ok(()) => {}
            // security.* and system.* may be refused or managed by the kernel; user data is not.
            Err(_) if !name.starts_with(b"user.") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl DeflateFs {
    /// Compaction that a flush or close of `open` finds due, handed to the compaction worker so
    /// that the close does not wait for it. The file's open state stays in its slot until the
    /// task ends (the task counts as one more user of it, like an open handle), so an open
    /// meanwhile shares that state, and its writes go into whichever container the compaction
    /// leaves in place. With the worker's queue full, or before the mount's background work is
    /// started, it runs here, as it always did.
    pub(super) fn compact_soon(&self, node: &Arc<Node>, open: &Arc<OpenFile>) {
        let OpenFile::Container(c) = open.as_ref() else {
            return;
        };
        if self.read_only_now()
            || self.shutting_down.load(Ordering::SeqCst)
            || !c.wants_compaction()
        {
            return;
        }
        let Some(fs) = self.this.get().and_then(std::sync::Weak::upgrade) else {
            return self.maybe_compact(node, open);
        };
        {
            let mut slot = node.open.lock();
            if !slot.file.as_ref().is_some_and(|f| Arc::ptr_eq(f, open)) {
                // Not the node's current state (a state being replaced): nothing to hold.
                drop(slot);
                return self.maybe_compact(node, open);
            }
            slot.users += 1;
        }
        let (task_node, task_open) = (Arc::clone(node), Arc::clone(open));
        let queued = self.compactor.try_spawn(move || {
            fs.maybe_compact(&task_node, &task_open);
            fs.put_state(&task_node);
        });
        if queued {
            self.compactions_queued.fetch_add(1, Ordering::Relaxed);
        } else {
            self.put_state(node);
            self.maybe_compact(node, open);
        }
    }

    /// Compacts a container that has accumulated enough stale data (docs/FORMAT.md). Failures
    /// only leave the file as it was, larger; they are logged, not returned. One compaction of a
    /// file runs at a time: a close that finds one running leaves the work to it.
    pub(super) fn maybe_compact(&self, node: &Arc<Node>, open: &OpenFile) {
        let OpenFile::Container(c) = open else {
            return;
        };
        if self.read_only_now() || !c.wants_compaction() {
            return;
        }
        let Some(_turn) = c.try_compaction_turn() else {
            return;
        };
        // A reference like a kernel lookup: the kernel may forget the node meanwhile (after the
        // last release), and a new lookup must then find this node, not make a second one.
        if !self.inodes.hold(node) {
            return;
        }
        super::test_hooks::compaction_delay();
        // Guarded here, not only by the flusher's loop, so that the reference taken above is
        // given back whatever happens.
        let result = crate::panics::catch(|| self.compact(node, c));
        self.inodes.forget(node.id, 1);
        match result {
            Err(msg) => self.file_panicked(node, open, "compaction", &msg),
            Ok(Ok(true)) => {
                self.compactions.fetch_add(1, Ordering::Relaxed);
                tracing::info!("{}: compacted", node.label())
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(
                "{}: compaction failed, file left as it was: {e}",
                node.label()
            ),
        }
    }

    /// Rewrites the container into a temporary file next to it and renames it into place. The
    /// caller holds the file's compaction turn. Skipped (Ok(false)) for files with several hard
    /// links, which a rename would split, and for files whose name moved meanwhile.
    fn compact(&self, node: &Arc<Node>, c: &ContainerFile) -> FsResult<bool> {
        let st = sys::fstat(self.fd(node)?.raw())?;
        if st.st_nlink != 1 {
            return Ok(false);
        }
        let Some((parent, name)) = node.location() else {
            return Ok(false);
        };
        let dir = self.node(parent)?;
        let cname = sys::cstr(&name)?;
        let tmp_name = sys::cstr(OsStr::new(&format!(
            "{INTERNAL_PREFIX}compact-{}",
            st.st_ino
        )))?;
        // With one compaction per file at a time, a file of this name can only be what a
        // compaction cut short by a crash left behind (or a stranger's): never a live one.
        let _ = sys::unlinkat(self.fd(&dir)?.raw(), &tmp_name, 0);
        let tmp = std::fs::File::from(sys::openat(
            self.fd(&dir)?.raw(),
            &tmp_name,
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_NOFOLLOW,
            0o600,
        )?);
        let tmp_raw = tmp.as_raw_fd();
        let tmp_st = sys::fstat(tmp_raw)?;
        let same = |a: &libc::stat, b: &libc::stat| (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino);
        // Why the install declined to rename (nothing was changed): not a failure.
        const MOVED: i32 = libc::ESTALE;
        let dest = tmp.try_clone()?;
        let result = c.compact(dest, || {
            // Taken now, with writers held off: the flush that began the compaction moved mtime.
            let st = sys::fstat(self.fd(node)?.raw())?;
            // Same owner, mode, user xattrs and times as the original, set through our own
            // descriptor: the name could be someone else's file by now.
            sys::chown_fd(tmp_raw, Some(st.st_uid), Some(st.st_gid))?;
            sys::chmod_fd(tmp_raw, st.st_mode & 0o7777)?;
            let node_fd = self.fd(node)?;
            copy_xattrs(node_fd.raw(), tmp_raw)?;
            super::ioctl::copy_kept_flags(node_fd.raw(), tmp_raw)?;
            // sync_all: the owner, mode and attributes must be as durable as the data.
            tmp.sync_all()?;
            let tmp_path_fd = sys::openat(
                self.fd(&dir)?.raw(),
                &tmp_name,
                libc::O_PATH | libc::O_NOFOLLOW,
                0,
            )?;
            // Held across the switch: the old inode's descriptor must stay open while it is
            // read below, whatever eviction or retirement does with the node's own.
            let old_backing = self.fd(node)?;
            let old_fd = old_backing.raw();
            // From the rename until the new inode has the old one's attributes, a stat would
            // see the old inode unlinked (0 links) or the new one with the copy's times: stat
            // waits for this short switch (never for the compaction itself).
            let switch = self.backing_switch.write();
            {
                let _names = self.names.lock(&[parent]);
                // Under the directory's name lock, nothing moves the file's names: check that
                // the name still leads to this one-name file and the temporary is ours.
                let now = sys::fstat(old_fd)?;
                let here = sys::fstatat(self.fd(&dir)?.raw(), &cname).ok();
                let tmp_here = sys::fstat(tmp_path_fd.as_raw_fd())?;
                if now.st_nlink != 1
                    || node.location() != Some((parent, name.clone()))
                    || !here.is_some_and(|h| same(&h, &now))
                    || !same(&tmp_here, &tmp_st)
                {
                    return errno(MOVED);
                }
                self.inodes.alias_backing(node, &tmp_st);
                if let Err(e) = sys::renameat2(
                    self.fd(&dir)?.raw(),
                    &tmp_name,
                    self.fd(&dir)?.raw(),
                    &cname,
                    0,
                ) {
                    self.inodes.drop_alias(node, &tmp_st);
                    return Err(e);
                }
                // Nothing below may fail: the new file is in place, and the open state must
                // follow it (c.compact switches only when this returns Ok). From here on
                // requests reach the new inode.
                self.inodes.replace_backing(node, tmp_path_fd, &tmp_st);
            }
            let new_backing = self.fd(node)?;
            let new_fd = new_backing.raw();
            // A chmod, chown, setxattr or utimens that reached the old inode while the copy was
            // made would be undone: carry the old inode's final attributes over.
            let old = sys::fstat(old_fd).unwrap_or(st);
            if (old.st_uid, old.st_gid) != (st.st_uid, st.st_gid) {
                let _ = sys::chown_fd(new_fd, Some(old.st_uid), Some(old.st_gid));
            }
            if old.st_mode != st.st_mode || (old.st_uid, old.st_gid) != (st.st_uid, st.st_gid) {
                let _ = sys::chmod_fd(new_fd, old.st_mode & 0o7777);
            }
            if let Err(e) = copy_xattrs(old_fd, new_fd) {
                tracing::warn!("{}: copying attributes after compaction: {e}", node.label());
            }
            let times = [
                libc::timespec {
                    tv_sec: old.st_atime,
                    tv_nsec: old.st_atime_nsec,
                },
                libc::timespec {
                    tv_sec: old.st_mtime,
                    tv_nsec: old.st_mtime_nsec,
                },
            ];
            let _ = sys::utimens_fd(new_fd, false, times);
            drop(switch);
            // Make the rename durable now: a later fsync of the file only syncs the new inode,
            // and a power cut must not bring back the old one without what was written since.
            // If that fails, no later fsync of this file may claim durability.
            if let Err(e) = self
                .reopen(&dir, libc::O_RDONLY | libc::O_DIRECTORY)
                .and_then(|d| d.sync_all().map_err(FsError::from))
            {
                let e = e.context(format!(
                    "{}: fsync of its directory after compaction",
                    node.label()
                ));
                tracing::error!("{e}");
                c.fail_syncs(e);
            }
            Ok(())
        });
        match result {
            Ok(()) => Ok(true),
            Err(e) => {
                // Remove the temporary only while the name is still ours.
                if sys::fstatat(self.fd(&dir)?.raw(), &tmp_name).is_ok_and(|t| same(&t, &tmp_st)) {
                    let _ = sys::unlinkat(self.fd(&dir)?.raw(), &tmp_name, 0);
                }
                if e.errno == MOVED {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Compacts the open files that need it. A file kept open for days (a database, a log) never
    /// reaches the close that compacts other files: without this its backing file grows with
    /// every overwrite. Runs on the flusher thread; each file is held open meanwhile, so its
    /// state cannot be dropped and made again under the compaction.
    pub fn compact_open_files(&self) {
        if self.read_only_now() {
            return;
        }
        let mut nodes: Vec<Arc<Node>> = self
            .handles
            .lock()
            .values()
            .filter(|h| h.file.is_some())
            .map(|h| h.node.clone())
            .collect();
        nodes.sort_by_key(|n| n.id);
        nodes.dedup_by_key(|n| n.id);
        for node in nodes {
            if self.shutting_down.load(Ordering::SeqCst) {
                return;
            }
            let held = {
                let mut slot = node.open.lock();
                let file = slot.file.clone();
                if file.is_some() {
                    slot.users += 1;
                }
                file
            };
            if let Some(file) = held {
                self.maybe_compact(&node, &file);
                self.put_state(&node);
            }
        }
    }
}
