//! Opening regular files: the open state a file's handles share, open, and create.
//!
//! Guarantees:
//! - a regular file has at most one open state ([`OpenFile`]), made at its first use and
//!   shared by every handle and by the attribute reads that need its content; each use is
//!   paired with a [`DeflateFs::put_state`], and the last one drops the state unless data is
//!   still unwritten (it then stays for the next user or the unmount flush);
//! - a container is opened through the power-loss recovery policy (`recovery`); a file the
//!   daemon may not write (read-only backing, EACCES, immutable) is opened for reading only;
//! - `open` refuses directories (EISDIR), other non-regular files (ENXIO), writing on a
//!   read-only mount (EROFS) and writing to an immutable file (EPERM); O_TRUNC truncates at
//!   open;
//! - `create` makes the file (O_EXCL, for its caller) a container from its first byte and
//!   opens it without re-reading it; a name that appeared after the kernel's lookup is opened
//!   only as its mode allows the caller (the kernel checks nothing on that reply); a file it
//!   made and could not finish is removed again;
//! - running out of descriptors on the way is retried once after closing idle inode
//!   descriptors.

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::Mutex;

use super::caller::Caller;
use super::core::{DeflateFs, Handle};
use super::error::{errno, FsResult};
use super::file::{ContainerFile, OpenFile, PlainFile};
use super::inode::{Format, Node, NodeKind};
use super::sys;
use crate::container::Container;

impl DeflateFs {
    /// The open-file state of a regular file, created on first use and shared by all handles.
    /// Each call must be paired with [`Self::put_state`].
    pub(super) fn open_state(&self, node: &Arc<Node>) -> FsResult<Arc<OpenFile>> {
        let mut slot = node.open.lock();
        if let Some(open) = slot.file.clone() {
            slot.users += 1;
            return Ok(open);
        }
        let access = if self.opts.read_only {
            libc::O_RDONLY
        } else {
            libc::O_RDWR
        };
        // Out of descriptors anywhere on the way (the container's reader is a second one): once
        // more after closing idle inode descriptors.
        let open = self.inodes.retry_emfile(|| {
            let file = match self.reopen(node, access) {
                Err(e)
                    if access == libc::O_RDWR
                        && matches!(
                            e.errno,
                            libc::EROFS | libc::EACCES | libc::ETXTBSY | libc::EPERM
                        ) =>
                {
                    self.reopen(node, libc::O_RDONLY)?
                }
                other => other?,
            };
            Ok(match self.format_of(node)? {
                Format::Plain => OpenFile::Plain(PlainFile { file }),
                Format::Container => {
                    let label = Self::label(node);
                    let container = self.open_container_with(node, file)?;
                    OpenFile::Container(ContainerFile::new(
                        node.id,
                        label,
                        self.ctx.clone(),
                        container,
                    )?)
                }
            })
        })?;
        let open = Arc::new(open);
        slot.file = Some(open.clone());
        slot.users = 1;
        Ok(open)
    }

    /// Gives back a use of the shared state; the last user drops it unless data is still unwritten
    /// (then it stays for the next user or the unmount flush).
    pub(super) fn put_state(&self, node: &Arc<Node>) {
        let mut slot = node.open.lock();
        slot.users = slot.users.saturating_sub(1);
        if slot.users == 0 {
            if let Some(open) = slot.file.as_ref() {
                if !open.has_unflushed() {
                    slot.file = None;
                }
            }
        }
    }

    pub(super) fn new_handle(&self, h: Handle) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, Arc::new(h));
        fh
    }

    pub fn open(&self, id: u64, flags: i32) -> FsResult<u64> {
        let node = self.node(id)?;
        let acc = flags & libc::O_ACCMODE;
        let writable = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        if writable || flags & libc::O_TRUNC != 0 {
            self.check_writable()?;
        }
        match node.kind {
            NodeKind::Directory => return errno(libc::EISDIR),
            NodeKind::Regular => {}
            // Fifos and devices are opened by the kernel itself; never reaches here normally.
            _ => return errno(libc::ENXIO),
        }
        // An immutable file (chattr +i) is opened for reading only (EPERM in open_state).
        if writable && super::ioctl::writes_refused(self.fd(&node)?.raw())? {
            return errno(libc::EPERM);
        }
        let open = self.open_state(&node)?;
        if flags & libc::O_TRUNC != 0 && writable {
            if let Err(e) = open.truncate(0) {
                self.put_state(&node);
                return Err(e);
            }
        }
        Ok(self.new_handle(Handle {
            node,
            file: Some(open),
            append: flags & libc::O_APPEND != 0,
            writable,
            entries: Mutex::new(None),
        }))
    }

    /// Creates a new regular file (a container) and opens it.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        caller: Caller,
    ) -> FsResult<(Arc<Node>, libc::stat, u64)> {
        self.check_writable()?;
        self.refuse_internal(name)?;
        let dir = self.node(parent)?;
        let cname = sys::cstr(name)?;
        let made = self.create_file_as(caller, &dir, &cname, mode);
        match made {
            Ok(fd) => {
                let file = std::fs::File::from(fd);
                match self.create_container(&dir, &cname, file, flags, caller) {
                    Ok(created) => Ok(created),
                    Err(e) => {
                        let _ = sys::unlinkat(self.fd(&dir)?.raw(), &cname, 0);
                        Err(e)
                    }
                }
            }
            Err(e) if e.errno == libc::EEXIST && flags & libc::O_EXCL == 0 => {
                // The name appeared after the kernel's lookup (another creator won the race, or
                // the file was made in the backing directory). The kernel takes this reply for a
                // file the caller created and checks no permission on it: the daemon must.
                let (node, st) = self.lookup(parent, name)?;
                let opened = caller
                    .check(&st, Caller::open_wants(flags))
                    .and_then(|()| self.open(node.id, flags))
                    .and_then(|fh| match self.stat_node(&node) {
                        Ok(st) => Ok((st, fh)),
                        Err(e) => {
                            let _ = self.release(fh);
                            Err(e)
                        }
                    });
                match opened {
                    Ok((st, fh)) => Ok((node, st, fh)),
                    Err(e) => {
                        self.inodes.forget(node.id, 1);
                        Err(e)
                    }
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Makes the file just created (O_EXCL) as `file` a container owned by the caller, and opens
    /// it with the container state already in hand: creating a file costs no re-open, probe or
    /// replay of what was just written (cp of a tree of small files is bound by this path).
    fn create_container(
        &self,
        dir: &Arc<Node>,
        cname: &std::ffi::CStr,
        file: std::fs::File,
        flags: i32,
        caller: Caller,
    ) -> FsResult<(Arc<Node>, libc::stat, u64)> {
        if !self.creates_as_caller {
            let (uid, gid) = self.owner_for_new(dir, caller)?;
            sys::fchown(file.as_raw_fd(), uid, gid)?;
        }
        let container = Container::create(file, self.opts.chunk_log2)?;
        let dir_fd = self.fd(dir)?;
        let path_fd = self.inodes.retry_emfile(|| {
            sys::openat(dir_fd.raw(), cname, libc::O_PATH | libc::O_NOFOLLOW, 0)
        })?;
        let st = sys::fstat(path_fd.as_raw_fd())?;
        let created = sys::fstat(container.file().as_raw_fd())?;
        if (st.st_dev, st.st_ino) != (created.st_dev, created.st_ino) {
            // Renamed or replaced in the backing directory meanwhile: not ours to remove.
            return errno(libc::EAGAIN);
        }
        let name = OsStr::from_bytes(cname.to_bytes());
        let node = self.inodes.insert_lookup(path_fd, &st);
        node.set_location(dir.id, name);
        *node.format.lock() = Some(Format::Container);
        let open = {
            let mut slot = node.open.lock();
            if slot.file.is_some() {
                // Only an inode the table already knew could have a state: never a new file.
                drop(slot);
                self.inodes.forget(node.id, 1);
                return errno(libc::EIO);
            }
            let open = Arc::new(OpenFile::Container(ContainerFile::new(
                node.id,
                Self::label(&node),
                self.ctx.clone(),
                container,
            )?));
            slot.file = Some(open.clone());
            slot.users = 1;
            open
        };
        let st = match self.stat_node(&node) {
            Ok(st) => st,
            Err(e) => {
                node.open.lock().file = None;
                self.inodes.forget(node.id, 1);
                return Err(e);
            }
        };
        let acc = flags & libc::O_ACCMODE;
        let fh = self.new_handle(Handle {
            node: node.clone(),
            file: Some(open),
            append: flags & libc::O_APPEND != 0,
            writable: acc == libc::O_WRONLY || acc == libc::O_RDWR,
            entries: Mutex::new(None),
        });
        Ok((node, st, fh))
    }
}
