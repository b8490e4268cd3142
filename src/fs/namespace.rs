//! The tree's names: making entries (mkdir, mknod, symlink), removing, renaming and linking
//! them, reading symlinks, and listing directories. Creating and opening a regular file is in
//! `core` (`create`), beside `open`.
//!
//! Guarantees:
//! - names starting with `.deflatefs-` belong to deflatefs itself (compaction's temporaries):
//!   lookup does not find them (`core`), readdir does not list them, and nothing makes,
//!   renames, links or removes one through the mount (EPERM);
//! - an entry is made for its caller (`DeflateFs::create_as`): it belongs to the caller and
//!   the backing filesystem checks the caller's right to make it, whatever the mount's
//!   permission mode; a daemon without root makes entries for its own user only (EPERM);
//! - a regular file made by mknod is a container from its first byte, like one from create;
//! - unlink, rmdir, rename and link hold the directories' name locks, so compaction's rename
//!   into place never races them; an inode whose name goes keeps its descriptor (an unlinked
//!   file stays readable through its handles, a removed directory stays a working directory),
//!   and a renamed inode's recorded location follows it;
//! - readdir offsets are positions in a snapshot taken at the first call (or a rewind to 0);
//! - fsyncdir makes the directory's entries (creates, renames, unlinks) durable.

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::Arc;

use parking_lot::Mutex;

use super::caller::{AsCaller, Caller};
use super::core::{is_internal, DeflateFs, DirEntry, Handle};
use super::error::{errno, FsResult};
use super::inode::{BackingFd, Node, NodeKind};
use super::sys;
use crate::container::Container;

impl DeflateFs {
    /// Runs `make`, a system call creating an entry in the backing tree, so that the entry
    /// belongs to `caller`, whatever the permission mode of the mount. A daemon running as root
    /// makes it under the caller's filesystem uid, gid and groups: the backing filesystem then
    /// sets the owner, applies the setgid-directory rule (group, and setgid bit on directories;
    /// a setgid bit the caller may not have is cleared) and checks the caller's permission to
    /// create there, as it would for the caller itself. A daemon without root cannot create
    /// files for another user: for anyone but its own user (`allow_other`) the answer is EPERM.
    fn create_as<T>(&self, caller: Caller, make: impl FnOnce() -> FsResult<T>) -> FsResult<T> {
        if self.creates_as_caller {
            let _as_caller = AsCaller::enter(&caller)?;
            make()
        } else if caller.uid != self.owner_uid {
            errno(libc::EPERM)
        } else {
            make()
        }
    }

    /// Creates the regular file `name` in `dir` (O_EXCL, read-write) for `caller`, as
    /// [`Self::create_as`] does every entry.
    pub(super) fn create_file_as(
        &self,
        caller: Caller,
        dir: &Node,
        name: &std::ffi::CStr,
        mode: u32,
    ) -> FsResult<OwnedFd> {
        let dir_fd = self.fd(dir)?;
        // Out of descriptors, open(2) fails before it creates anything: retrying is safe.
        self.create_as(caller, || {
            self.inodes.retry_emfile(|| {
                sys::openat(
                    dir_fd.raw(),
                    name,
                    libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
                    mode & 0o7777,
                )
            })
        })
    }

    /// The group a daemon without root gives what it created for its user (see
    /// [`Self::create_as`]): the directory's if the directory is setgid, else the caller's.
    pub(super) fn owner_for_new(&self, dir: &Node, caller: Caller) -> FsResult<(u32, u32)> {
        let dst = sys::fstat(self.fd(dir)?.raw())?;
        let gid = if dst.st_mode & libc::S_ISGID != 0 {
            dst.st_gid
        } else {
            caller.gid
        };
        Ok((caller.uid, gid))
    }

    /// After [`Self::create_as`] made `name` in `dir`: a daemon without root gives it the
    /// caller's group; then it is looked up.
    fn finish_create(
        &self,
        dir: &Node,
        name: &OsStr,
        caller: Caller,
    ) -> FsResult<(Arc<Node>, libc::stat)> {
        if !self.creates_as_caller {
            let cname = sys::cstr(name)?;
            let (uid, gid) = self.owner_for_new(dir, caller)?;
            if let Err(e) = sys::chown_at(self.fd(dir)?.raw(), &cname, uid, gid) {
                let _ = sys::unlinkat(self.fd(dir)?.raw(), &cname, 0);
                let _ = sys::unlinkat(self.fd(dir)?.raw(), &cname, libc::AT_REMOVEDIR);
                return Err(e);
            }
        }
        self.lookup(dir.id, name)
    }

    pub fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        caller: Caller,
    ) -> FsResult<(Arc<Node>, libc::stat)> {
        self.check_writable()?;
        self.refuse_internal(name)?;
        let dir = self.node(parent)?;
        let cname = sys::cstr(name)?;
        let dir_fd = self.fd(&dir)?;
        self.create_as(caller, || sys::mkdirat(dir_fd.raw(), &cname, mode & 0o7777))?;
        self.finish_create(&dir, name, caller)
    }

    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        caller: Caller,
    ) -> FsResult<(Arc<Node>, libc::stat)> {
        self.check_writable()?;
        self.refuse_internal(name)?;
        let dir = self.node(parent)?;
        let cname = sys::cstr(name)?;
        if mode & libc::S_IFMT == libc::S_IFREG {
            // A regular file made by mknod is a new file like any other: make it a container.
            let fd = self.create_file_as(caller, &dir, &cname, mode)?;
            let file = std::fs::File::from(fd);
            if let Err(e) = Container::create(file, self.opts.chunk_log2) {
                let _ = sys::unlinkat(self.fd(&dir)?.raw(), &cname, 0);
                return Err(e.into());
            }
        } else {
            let dir_fd = self.fd(&dir)?;
            self.create_as(caller, || sys::mknodat(dir_fd.raw(), &cname, mode, rdev))?;
        }
        self.finish_create(&dir, name, caller)
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
        caller: Caller,
    ) -> FsResult<(Arc<Node>, libc::stat)> {
        self.check_writable()?;
        self.refuse_internal(name)?;
        let dir = self.node(parent)?;
        let cname = sys::cstr(name)?;
        let ctarget = sys::cstr(target)?;
        let dir_fd = self.fd(&dir)?;
        self.create_as(caller, || sys::symlinkat(&ctarget, dir_fd.raw(), &cname))?;
        self.finish_create(&dir, name, caller)
    }

    pub fn readlink(&self, id: u64) -> FsResult<Vec<u8>> {
        let node = self.node(id)?;
        if node.kind != NodeKind::Symlink {
            return errno(libc::EINVAL);
        }
        sys::readlink_fd(self.fd(&node)?.raw())
    }

    pub(super) fn refuse_internal(&self, name: &OsStr) -> FsResult<()> {
        if is_internal(name.as_bytes()) {
            // Reserved for deflatefs' own temporary files in the backing directory.
            errno(libc::EPERM)
        } else {
            Ok(())
        }
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.remove_name(parent, name, 0)
    }

    /// unlink (`flags` 0) or rmdir (`AT_REMOVEDIR`) of `name` in `parent`.
    fn remove_name(&self, parent: u64, name: &OsStr, flags: i32) -> FsResult<()> {
        self.check_writable()?;
        self.refuse_internal(name)?;
        let dir = self.node(parent)?;
        let _names = self.names.lock(&[parent]);
        let dir_fd = self.fd(&dir)?;
        self.before_name_goes(&dir_fd, parent, name)?;
        sys::unlinkat(dir_fd.raw(), &sys::cstr(name)?, flags)
    }

    /// Before `name` in `parent` is removed or replaced: the inode it names, if the kernel
    /// holds it, keeps its descriptor open from now on unless a lookup names it again. Once the
    /// name is gone it could not be reopened, and an unlinked file may still be open, or a
    /// removed directory some process's working directory.
    fn before_name_goes(&self, dir_fd: &BackingFd, parent: u64, name: &OsStr) -> FsResult<()> {
        if let Ok(st) = sys::fstatat(dir_fd.raw(), &sys::cstr(name)?) {
            if let Some(node) = self.inodes.find(st.st_dev, st.st_ino) {
                self.inodes.keep_open_unnamed(&node, parent, name);
            }
        }
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.remove_name(parent, name, libc::AT_REMOVEDIR)
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        self.check_writable()?;
        self.refuse_internal(name)?;
        self.refuse_internal(newname)?;
        let dir = self.node(parent)?;
        let newdir = self.node(newparent)?;
        let cnew = sys::cstr(newname)?;
        let _names = self.names.lock(&[parent, newparent]);
        let dir_fd = self.fd(&dir)?;
        let newdir_fd = self.fd(&newdir)?;
        // Until its location is updated below, the moved inode could not be reopened by name.
        let _moving = sys::fstatat(dir_fd.raw(), &sys::cstr(name)?)
            .ok()
            .and_then(|st| self.inodes.find(st.st_dev, st.st_ino))
            .map(|node| self.inodes.pin(&node));
        let _exchanged = if flags & libc::RENAME_EXCHANGE != 0 {
            sys::fstatat(newdir_fd.raw(), &cnew)
                .ok()
                .and_then(|st| self.inodes.find(st.st_dev, st.st_ino))
                .map(|node| self.inodes.pin(&node))
        } else {
            None
        };
        if flags & libc::RENAME_EXCHANGE == 0 {
            self.before_name_goes(&newdir_fd, newparent, newname)?;
        }
        sys::renameat2(
            dir_fd.raw(),
            &sys::cstr(name)?,
            newdir_fd.raw(),
            &cnew,
            flags,
        )?;
        // Keep the moved inode's name current (log lines, compaction, reopening).
        if let Ok(st) = sys::fstatat(newdir_fd.raw(), &cnew) {
            if let Some(node) = self.inodes.find(st.st_dev, st.st_ino) {
                node.set_location(newparent, newname);
            }
        }
        if flags & libc::RENAME_EXCHANGE != 0 {
            if let Ok(st) = sys::fstatat(dir_fd.raw(), &sys::cstr(name)?) {
                if let Some(node) = self.inodes.find(st.st_dev, st.st_ino) {
                    node.set_location(parent, name);
                }
            }
        }
        Ok(())
    }

    pub fn link(
        &self,
        id: u64,
        newparent: u64,
        newname: &OsStr,
    ) -> FsResult<(Arc<Node>, libc::stat)> {
        self.check_writable()?;
        self.refuse_internal(newname)?;
        let node = self.node(id)?;
        let newdir = self.node(newparent)?;
        if node.kind == NodeKind::Directory {
            return errno(libc::EPERM);
        }
        // A second name must not appear between compaction's check that the file has one name
        // and its rename into place: hold the directory compaction would rename in.
        let names = loop {
            let at = node.location().map(|(p, _)| p).unwrap_or(newparent);
            let held = self.names.lock(&[at, newparent]);
            if node.location().map(|(p, _)| p).unwrap_or(newparent) == at {
                break held;
            }
        };
        if node.kind == NodeKind::Symlink {
            // linkat through /proc would follow the link; hard-link the symlink itself.
            let empty = c"";
            // SAFETY: both paths are NUL-terminated; the CString made for `newname` and the
            // descriptors' guards are temporaries of this statement, so they outlive the call.
            let r = unsafe {
                libc::linkat(
                    self.fd(&node)?.raw(),
                    empty.as_ptr(),
                    self.fd(&newdir)?.raw(),
                    sys::cstr(newname)?.as_ptr(),
                    libc::AT_EMPTY_PATH,
                )
            };
            if r < 0 {
                return errno(sys::last_errno());
            }
        } else {
            sys::link_fd(
                self.fd(&node)?.raw(),
                self.fd(&newdir)?.raw(),
                &sys::cstr(newname)?,
            )?;
        }
        // Released before the lookup: its stat may wait for the file's state lock, which a
        // compaction holds while it waits for these.
        drop(names);
        self.lookup(newparent, newname)
    }

    pub fn opendir(&self, id: u64) -> FsResult<u64> {
        let node = self.node(id)?;
        if node.kind != NodeKind::Directory {
            return errno(libc::ENOTDIR);
        }
        Ok(self.new_handle(Handle {
            node,
            file: None,
            append: false,
            writable: false,
            entries: Mutex::new(None),
        }))
    }

    /// Entries from `offset` on; offsets are positions in a snapshot taken at the first call (or
    /// whenever the listing restarts at 0, as rewinddir does).
    pub fn readdir(&self, fh: u64, offset: u64) -> FsResult<Vec<DirEntry>> {
        let h = self.handle(fh)?;
        let mut snap = h.entries.lock();
        if snap.is_none() || offset == 0 {
            let raw = sys::read_dir(self.fd(&h.node)?.raw())?;
            let list = raw
                .into_iter()
                .filter(|(_, _, name)| !is_internal(name))
                .map(|(ino, dtype, name)| DirEntry {
                    ino,
                    dtype,
                    name: OsString::from_vec(name),
                })
                .collect();
            *snap = Some(list);
        }
        let list = snap.as_ref().expect("filled");
        Ok(list.iter().skip(offset as usize).cloned().collect())
    }

    /// fsync of the backing directory, so its entries (creates, renames, unlinks) are durable.
    pub fn fsyncdir(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        let dir = self.reopen(&h.node, libc::O_RDONLY | libc::O_DIRECTORY)?;
        dir.sync_all()?;
        Ok(())
    }

    pub fn releasedir(&self, fh: u64) -> FsResult<()> {
        self.handles.lock().remove(&fh);
        Ok(())
    }
}
