//! The filesystem core: [`DeflateFs`], every operation of the mount on backing descriptors,
//! returning `FsResult`. It knows nothing of fuser: `fuse.rs` adapts the callbacks to these
//! methods, and tests drive them directly (tests/core_ops.rs).
//!
//! `DeflateFs`'s operations are spread over one `impl` block per concern:
//! - here: the struct, `lookup`, `getattr`/`stat_node` (logical sizes), `setattr`, `access`,
//!   and the per-handle file operations (`read`, `write`, `flush`, `fsync`, `release`,
//!   `fallocate`), which hand the work to the file's open state (`file`);
//! - `open`: the open state a file's handles share, `open` and `create`;
//! - `namespace`: making, removing, renaming and linking names, and directory listings;
//! - `xattr`: extended attributes, served digests and the engine report;
//! - `recovery`: what happens to a container found cut short at open (power loss);
//! - `compaction`: rewriting a container full of stale data and installing the rewrite;
//! - `flusher`: the background write-back thread and the flush at unmount;
//! - `copy` and `ioctl`: copy_file_range and the inode-flag ioctls.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::background::Background;
use super::cache::ChunkCache;
pub use super::caller::Caller;
use super::copy::CopyStats;
use super::digests::{Lingering, PlainDigests, ProbeCache};
use super::error::{errno, FsError, FsResult};
use super::file::{FileContext, OpenFile};
pub use super::flusher::FLUSHER_PANICS_ENV;
use super::inode::{BackingFd, Format, InodeTable, Node, NodeKind, ROOT_ID};
use super::namelock::NameLocks;
use super::recovery::{boot_time, Recovered};
use super::sys;
use crate::container::Container;
use crate::engine::pool::BufferPool;
use crate::engine::Engine;
use crate::options::MountOptions;

/// Names in the backing directory that belong to deflatefs itself and are never shown.
pub use crate::container::INTERNAL_NAME_PREFIX as INTERNAL_PREFIX;

/// One open file or directory handle.
pub struct Handle {
    pub node: Arc<Node>,
    pub file: Option<Arc<OpenFile>>,
    pub append: bool,
    pub writable: bool,
    /// Directory listing snapshot taken at opendir (offsets index into it).
    pub entries: Mutex<Option<Vec<DirEntry>>>,
}

/// One directory entry as listed.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    /// The backing directory's d_type (DT_REG, DT_DIR, DT_FIFO, ...).
    pub dtype: u8,
    pub name: OsString,
}

/// Changes requested by setattr.
#[derive(Debug, Default, Clone, Copy)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSpec>,
    pub mtime: Option<TimeSpec>,
}

/// A time to set: now, or seconds and nanoseconds.
#[derive(Debug, Clone, Copy)]
pub enum TimeSpec {
    Now,
    At(i64, u32),
}

/// The mounted filesystem.
pub struct DeflateFs {
    pub opts: MountOptions,
    pub(super) inodes: InodeTable,
    pub(super) handles: Mutex<HashMap<u64, Arc<Handle>>>,
    pub(super) next_handle: AtomicU64,
    pub(super) ctx: Arc<FileContext>,
    pub(super) shutting_down: AtomicBool,
    /// Set when an fsync leaves a file due for compaction: the flusher then compacts at its
    /// next pass (50 ms) instead of its once-a-second round, so a database that fsyncs
    /// hundreds of times a second does not grow for a second past the threshold.
    pub(super) compaction_due: AtomicBool,
    /// Files checked by [`OpenMode::Recover`](crate::container::OpenMode::Recover) in this
    /// mount (by node; see `recovery`).
    pub(super) recovered: Mutex<HashMap<u64, Recovered>>,
    /// When the machine booted (seconds since the epoch): files changed before it go through
    /// recovery at their first open (see `recovery`).
    pub(super) booted_at: i64,
    /// Digests of plain files (containers keep theirs in their open state).
    pub(super) plain_digests: PlainDigests,
    /// Served values computed for getfattr's size query, for its next request.
    pub(super) probes: ProbeCache,
    /// Open states kept briefly after serving an attribute.
    pub(super) lingering: Lingering,
    /// Held by directory operations and compaction's rename into place (see `namelock`).
    pub(super) names: NameLocks,
    /// The user the daemon runs as: the mount's owner, who (with root) may read the engine report.
    pub(super) owner_uid: u32,
    /// The source directory on a detached mount of its own with the `strictatime` flag, for
    /// reads under `strictatime` (see `atime`), when the daemon may make one (root).
    pub(super) strict_atime_view: Option<OwnedFd>,
    /// The options a remount may change (see `live`).
    pub(super) live: super::live::LiveOptions,
    /// The daemon runs as root, so it creates files under each caller's filesystem ids
    /// ([`AsCaller`]); a daemon without root creates them only for its own user.
    pub(super) creates_as_caller: bool,
    /// What copy_file_range did, for the engine report.
    pub(super) copies: CopyStats,
    /// Runs the compactions that a flush or close asks for, so neither waits for one (see
    /// `compaction::compact_soon`).
    pub(super) compactor: Background,
    /// Held (write) by a compaction from the rename of the rewritten file over the original
    /// until the new inode carries the old one's attributes; `stat_node` reads the backing
    /// inode under it (read), so a stat never sees either inode half way.
    pub(super) backing_switch: parking_lot::RwLock<()>,
    /// Compactions installed, and those handed to `compactor` by a flush or close (for the
    /// engine report: `compactions`, `compactions_queued`).
    pub(super) compactions: AtomicU64,
    pub(super) compactions_queued: AtomicU64,
    /// This filesystem, for tasks handed to `compactor`: set by [`DeflateFs::spawn_flusher`],
    /// which starts the background work of a mount (without it compactions run in place).
    pub(super) this: std::sync::OnceLock<std::sync::Weak<DeflateFs>>,
}

fn time_to_timespec(t: Option<TimeSpec>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeSpec::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeSpec::At(s, ns)) => libc::timespec {
            tv_sec: s,
            tv_nsec: ns as i64,
        },
    }
}

pub(super) fn is_internal(name: &[u8]) -> bool {
    name.starts_with(INTERNAL_PREFIX.as_bytes())
}

impl DeflateFs {
    /// A filesystem over the source directory `root_fd` (opened before mounting).
    pub fn new(root_fd: OwnedFd, opts: MountOptions, engine: Arc<Engine>) -> FsResult<DeflateFs> {
        let st = sys::fstat(root_fd.as_raw_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return errno(libc::ENOTDIR);
        }
        let job_pool = BufferPool::new(opts.pool_bytes);
        let ctx = Arc::new(FileContext {
            engine: engine.clone(),
            job_pool: job_pool.clone(),
            dirty_pool: BufferPool::new(opts.dirty_bytes),
            cache: Arc::new(ChunkCache::recycling_into(opts.cache_bytes, job_pool)),
            level: opts.level,
            digests: opts.digests,
            // Two 1 MiB read requests' worth ahead, and at least two jobs per queue.
            readahead_chunks: ((2usize << 20) >> opts.chunk_log2).max(engine.queue_count() * 2),
            epochs: AtomicU64::new(0),
            damage_log: Mutex::new(HashMap::new()),
            stored_in_place: Default::default(),
            // One thread: it only reads members and submits them; the decoding runs on the
            // engine's queues. Room for a few readers' batches; beyond that they decode alone.
            prefetch: Background::new("dfs-prefetch", 1, 16)?,
        });
        let strict_atime_view = super::atime::strict_atime_view(&root_fd);
        let live = super::live::LiveOptions::new(&opts);
        let inodes = InodeTable::new(root_fd, &st, opts.fds);
        Ok(DeflateFs {
            opts,
            inodes,
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            ctx,
            shutting_down: AtomicBool::new(false),
            compaction_due: AtomicBool::new(false),
            recovered: Mutex::new(HashMap::new()),
            booted_at: boot_time(),
            plain_digests: PlainDigests::new(),
            probes: ProbeCache::new(),
            lingering: Lingering::new(),
            names: NameLocks::default(),
            owner_uid: nix::unistd::getuid().as_raw(),
            strict_atime_view,
            live,
            creates_as_caller: nix::unistd::geteuid().is_root(),
            copies: CopyStats::default(),
            // One at a time is what the disk can do anyway; a queue beyond that only holds
            // open states in memory, so a full queue makes the closer compact in place.
            compactor: Background::new("dfs-compact", 1, 64)?,
            backing_switch: parking_lot::RwLock::new(()),
            compactions: AtomicU64::new(0),
            compactions_queued: AtomicU64::new(0),
            this: std::sync::OnceLock::new(),
        })
    }

    /// The backing descriptor of `node` for one operation (reopened if it was closed to stay
    /// under the descriptor bound).
    pub(super) fn fd(&self, node: &Node) -> FsResult<BackingFd> {
        self.inodes.fd(node)
    }

    /// Whether cached inodes whose descriptor was closed are reopened by file handle (else by
    /// parent and name).
    pub fn reopens_by_handle(&self) -> bool {
        self.inodes.reopens_by_handle()
    }

    /// Descriptors held for cached inodes now, and how many were closed and reopened so far.
    pub fn fd_counts(&self) -> (usize, u64, u64) {
        self.inodes.fd_counts()
    }

    /// Opens `node`'s backing inode with `flags` (through /proc/self/fd), once more after
    /// closing idle descriptors if the process ran out of them.
    pub(super) fn reopen(&self, node: &Node, flags: i32) -> FsResult<std::fs::File> {
        let fd = self.fd(node)?;
        self.inodes.retry_emfile(|| sys::reopen(fd.raw(), flags))
    }

    pub(super) fn node(&self, id: u64) -> FsResult<Arc<Node>> {
        self.inodes
            .get(id)
            .ok_or_else(|| FsError::with_context(libc::ENOENT, format!("unknown node {id}")))
    }

    pub(super) fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.handles
            .lock()
            .get(&fh)
            .cloned()
            .ok_or(FsError::new(libc::EBADF))
    }

    /// Whether a handle open for writing refers to node `id`.
    pub(super) fn open_for_writing(&self, id: u64) -> bool {
        self.handles
            .lock()
            .values()
            .any(|h| h.writable && h.node.id == id)
    }

    pub(super) fn check_writable(&self) -> FsResult<()> {
        if self.read_only_now() {
            errno(libc::EROFS)
        } else {
            Ok(())
        }
    }

    pub(super) fn label(node: &Node) -> String {
        node.label()
    }

    /// Whether a regular file is a container; decided once per node.
    pub(super) fn format_of(&self, node: &Node) -> FsResult<Format> {
        if let Some(f) = *node.format.lock() {
            return Ok(f);
        }
        let file = self.reopen(node, libc::O_RDONLY)?;
        self.probe_format(node, &file)
    }

    /// Decides the format of `node` by reading its first bytes through `file`.
    fn probe_format(&self, node: &Node, file: &std::fs::File) -> FsResult<Format> {
        let f = match Container::probe(file) {
            Ok(true) => Format::Container,
            Ok(false) => Format::Plain,
            // Our header with an unknown version or invalid fields: a container this mount
            // cannot read (EIO at open), not a plain file to serve as raw bytes.
            Err(crate::container::ContainerError::Io(e)) => return Err(e.into()),
            Err(_) => Format::Container,
        };
        *node.format.lock() = Some(f);
        Ok(f)
    }

    /// stat of a node with the logical size of containers and the real allocation in st_blocks.
    pub fn stat_node(&self, node: &Node) -> FsResult<libc::stat> {
        let mut st = {
            // Not in the middle of a compaction's switch to the rewritten inode.
            let _switch = self.backing_switch.read();
            sys::fstat(self.fd(node)?.raw())?
        };
        st.st_ino = node.id;
        if node.kind != NodeKind::Regular || st.st_size == 0 {
            return Ok(st);
        }
        if let Some(open) = node.open.lock().file.clone() {
            if let Some(size) = open.logical_size() {
                st.st_size = size as i64;
            }
            return Ok(st);
        }
        // One descriptor for the format probe and the size: re-opening through /proc costs more
        // than the reads (a `tar c` of small files is bound by this path).
        let known = *node.format.lock();
        let mut probe_file = None;
        let format = match known {
            Some(f) => f,
            None => {
                let file = self.reopen(node, libc::O_RDONLY)?;
                let f = self.probe_format(node, &file)?;
                probe_file = Some(file);
                f
            }
        };
        if format == Format::Container {
            if !self.changed_this_boot(&st) {
                // Its size is that of the commit recovery opens it at (see `open_container`).
                // Under the open slot's lock, as `open_state` opens: recovery truncates what it
                // leaves out, which must never race a writer that opened the file meanwhile and
                // already appended after the last commit (its members would be cut away).
                let slot = node.open.lock();
                if let Some(size) = slot.file.as_ref().and_then(|f| f.logical_size()) {
                    st.st_size = size as i64;
                    return Ok(st);
                }
                if let Some(size) = self.recovered_size(node, &st) {
                    st.st_size = size as i64;
                    return Ok(st);
                }
                st.st_size = match self.open_container(node) {
                    Ok(c) => c.size() as i64,
                    Err(e) if e.errno != libc::EIO => return Err(e),
                    Err(_) => 0,
                };
                drop(slot);
                return Ok(st);
            }
            let file = match probe_file {
                Some(f) => f,
                None => self.reopen(node, libc::O_RDONLY)?,
            };
            // A damaged container still has a name and attributes (it can be listed, renamed
            // and removed); its size shows as 0 and opening it fails with EIO.
            st.st_size = match Container::read_logical_size(&file) {
                Ok(size) => size as i64,
                Err(crate::container::ContainerError::Io(e)) => return Err(e.into()),
                Err(e) => {
                    self.ctx.log_damage(node.id, || {
                        format!(
                            "{}: damaged container, shown with size 0 (run deflatefs fsck): {e}",
                            Self::label(node)
                        )
                    });
                    0
                }
            };
        }
        Ok(st)
    }

    // ---- names ----

    /// Looks a name up in a directory; registers one kernel lookup of the result.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<(Arc<Node>, libc::stat)> {
        if is_internal(name.as_bytes()) {
            return errno(libc::ENOENT);
        }
        // The kernel looks up "." of a node id to reconnect a file handle (open_by_handle_at,
        // NFS), and ".." of a directory to find its parent; the root is its own parent.
        match name.as_bytes() {
            b"." => return self.lookup_id(parent),
            b".." if parent == ROOT_ID => return self.lookup_id(ROOT_ID),
            _ => {}
        }
        let dir = self.node(parent)?;
        let cname = sys::cstr(name)?;
        let dir_fd = self.fd(&dir)?;
        let fd = self.inodes.retry_emfile(|| {
            sys::openat(dir_fd.raw(), &cname, libc::O_PATH | libc::O_NOFOLLOW, 0)
        })?;
        let st = sys::fstat(fd.as_raw_fd())?;
        let node = self.inodes.insert_lookup(fd, &st);
        if name.as_bytes() != b".." {
            node.set_location(parent, name);
        }
        match self.stat_node(&node) {
            Ok(st) => Ok((node, st)),
            Err(e) => {
                self.inodes.forget(node.id, 1);
                Err(e)
            }
        }
    }

    /// Looks node `id` up by itself; registers one kernel lookup. A node the kernel forgot (or
    /// that a previous mount handed out) is found again by its backing inode number where the
    /// backing filesystem allows it (see `InodeTable::open_by_id`); ESTALE otherwise, as for
    /// a removed file.
    pub fn lookup_id(&self, id: u64) -> FsResult<(Arc<Node>, libc::stat)> {
        let (fd, st) = match self.inodes.get(id) {
            Some(node) => {
                let fd = self.fd(&node)?;
                let st = sys::fstat(fd.raw())?;
                // SAFETY: F_DUPFD_CLOEXEC on a descriptor `fd` keeps open; no pointers.
                let dup = unsafe { libc::fcntl(fd.raw(), libc::F_DUPFD_CLOEXEC, 0) };
                if dup < 0 {
                    return errno(sys::last_errno());
                }
                // SAFETY: `dup` was just returned by fcntl and nothing else owns it.
                (
                    unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dup) },
                    st,
                )
            }
            None => {
                let root = self.node(ROOT_ID)?;
                self.inodes.open_by_id(id, &root).ok_or_else(|| {
                    FsError::with_context(libc::ESTALE, format!("node {id} cannot be found again"))
                })?
            }
        };
        if st.st_nlink == 0 && st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return errno(libc::ESTALE);
        }
        let node = self.inodes.insert_lookup(fd, &st);
        match self.stat_node(&node) {
            Ok(st) => Ok((node, st)),
            Err(e) => {
                self.inodes.forget(node.id, 1);
                Err(e)
            }
        }
    }

    /// The generation the kernel gets with node `id` (see `Node::generation`); 0 if unknown.
    pub fn generation(&self, id: u64) -> u32 {
        self.inodes.get(id).map_or(0, |n| n.generation)
    }

    pub fn forget(&self, id: u64, n: u64) {
        self.inodes.forget(id, n);
    }

    pub fn getattr(&self, id: u64) -> FsResult<libc::stat> {
        let node = self.node(id)?;
        self.stat_node(&node)
    }

    // ---- attributes ----

    pub fn setattr(&self, id: u64, fh: Option<u64>, a: SetAttr) -> FsResult<libc::stat> {
        let node = self.node(id)?;
        if a.mode.is_some() || a.uid.is_some() || a.gid.is_some() || a.size.is_some() {
            self.check_writable()?;
        }
        if let Some(mode) = a.mode {
            if node.kind == NodeKind::Symlink {
                return errno(libc::EOPNOTSUPP);
            }
            sys::chmod_fd(self.fd(&node)?.raw(), mode & 0o7777)?;
        }
        if a.uid.is_some() || a.gid.is_some() {
            sys::chown_fd(self.fd(&node)?.raw(), a.uid, a.gid)?;
        }
        if let Some(size) = a.size {
            self.truncate(&node, fh, size)?;
        }
        if a.atime.is_some() || a.mtime.is_some() {
            self.check_writable()?;
            // Write back first, so a later commit does not move the mtime the user just set.
            if let Some(open) = node.open.lock().file.clone() {
                open.flush()?;
            }
            sys::utimens_fd(
                self.fd(&node)?.raw(),
                node.kind == NodeKind::Symlink,
                [time_to_timespec(a.atime), time_to_timespec(a.mtime)],
            )?;
        }
        self.stat_node(&node)
    }

    fn truncate(&self, node: &Arc<Node>, fh: Option<u64>, size: u64) -> FsResult<()> {
        match node.kind {
            NodeKind::Directory => return errno(libc::EISDIR),
            NodeKind::Regular => {}
            _ => return errno(libc::EINVAL),
        }
        if size > i64::MAX as u64 {
            return errno(libc::EFBIG);
        }
        let _ = fh;
        // The open state would be truncated before the backing file refused the commit.
        if super::ioctl::writes_refused(self.fd(node)?.raw())? {
            return errno(libc::EPERM);
        }
        let open = self.open_state(node)?;
        let r = open.truncate(size).and_then(|_| open.flush());
        self.put_state(node);
        r
    }

    pub fn statfs(&self) -> FsResult<libc::statvfs> {
        let root = self.node(ROOT_ID)?;
        sys::fstatvfs(self.fd(&root)?.raw())
    }

    /// access(2) with the same answers as ext4 (see [`Caller::may`]). With `default_permissions`
    /// the kernel answers access(2) itself and never asks.
    pub fn access(&self, id: u64, mask: i32, caller: Caller) -> FsResult<()> {
        let node = self.node(id)?;
        let st = sys::fstat(self.fd(&node)?.raw())?;
        if mask & libc::W_OK != 0 && self.read_only_now() {
            return errno(libc::EROFS);
        }
        // R_OK, W_OK and X_OK are the mode bits 4, 2 and 1.
        caller.check(&st, (mask & (libc::R_OK | libc::W_OK | libc::X_OK)) as u32)
    }

    // ---- files ----

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let mut out = Vec::new();
        self.read_into(fh, offset, size, &mut out)?;
        Ok(out)
    }

    /// [`Self::read`] into `out` (its contents replaced, its capacity reused).
    pub fn read_into(&self, fh: u64, offset: u64, size: u32, out: &mut Vec<u8>) -> FsResult<()> {
        let h = self.handle(fh)?;
        let file = h.file.as_ref().ok_or(FsError::new(libc::EISDIR))?;
        file.read_into(offset, size as usize, out)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<usize> {
        let h = self.handle(fh)?;
        if !h.writable {
            return errno(libc::EBADF);
        }
        let file = h.file.as_ref().ok_or(FsError::new(libc::EISDIR))?;
        file.write(offset, data, h.append)
    }

    pub fn flush(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        match &h.file {
            Some(f) => {
                f.flush()?;
                self.compact_soon(&h.node, f);
                Ok(())
            }
            None => Ok(()),
        }
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let h = self.handle(fh)?;
        match h.file.as_deref() {
            Some(f) => {
                f.fsync(datasync)?;
                if let OpenFile::Container(c) = f {
                    if !self.read_only_now() && c.wants_compaction() {
                        self.compaction_due.store(true, Ordering::Relaxed);
                    }
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    pub fn release(&self, fh: u64) -> FsResult<()> {
        let h = self.handles.lock().remove(&fh);
        let Some(h) = h else {
            return errno(libc::EBADF);
        };
        let r = match &h.file {
            Some(f) => f.flush().map(|()| self.compact_soon(&h.node, f)),
            None => Ok(()),
        };
        if h.file.is_some() {
            self.put_state(&h.node);
        }
        r
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        self.check_writable()?;
        let h = self.handle(fh)?;
        let file = h.file.as_ref().ok_or(FsError::new(libc::EISDIR))?;
        match file.as_ref() {
            OpenFile::Plain(p) => sys::fallocate(&p.file, mode, offset, length),
            OpenFile::Container(_) if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 => {
                // The kernel lets PUNCH_HOLE through only with KEEP_SIZE.
                if mode & !(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) != 0 {
                    return errno(libc::EOPNOTSUPP);
                }
                file.punch_hole(offset, length)
            }
            OpenFile::Container(_) if mode & libc::FALLOC_FL_ZERO_RANGE != 0 => {
                if mode & !(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE) != 0 {
                    return errno(libc::EOPNOTSUPP);
                }
                let end = offset
                    .checked_add(length)
                    .ok_or(FsError::new(libc::EFBIG))?;
                file.punch_hole(offset, length)?;
                if mode & libc::FALLOC_FL_KEEP_SIZE == 0 && end > file.logical_size().unwrap_or(0) {
                    file.truncate(end)?;
                }
                Ok(())
            }
            OpenFile::Container(_) => {
                if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
                    return errno(libc::EOPNOTSUPP);
                }
                let end = offset
                    .checked_add(length)
                    .ok_or(FsError::new(libc::EFBIG))?;
                // Mode 0 and KEEP_SIZE alike: reserve, as ext4 does for both.
                self.reserve_backing(&h.node, length)?;
                if mode & libc::FALLOC_FL_KEEP_SIZE == 0 {
                    let size = file.logical_size().unwrap_or(0);
                    if end > size {
                        file.truncate(end)?;
                    }
                }
                Ok(())
            }
        }
    }

    /// lseek(2) SEEK_DATA (`data`) or SEEK_HOLE from `offset` in an open file.
    pub fn seek_data_or_hole(&self, fh: u64, offset: u64, data: bool) -> FsResult<u64> {
        let h = self.handle(fh)?;
        let file = h.file.as_ref().ok_or(FsError::new(libc::EISDIR))?;
        file.seek_data_or_hole(offset, data)
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.ctx.engine
    }

    /// Reserves room for `length` bytes of a container stored uncompressed (with its members'
    /// framing) in the backing filesystem: blocks allocated past the backing file's end
    /// (`FALLOC_FL_KEEP_SIZE`), which the members written next fill. ENOSPC, with nothing
    /// changed, when the backing filesystem cannot hold them. Compressed data takes less, so
    /// writes of up to `length` bytes will not run out of space, unless the reservation is
    /// used up by other writes to the file first or a compaction moves it to a new inode.
    fn reserve_backing(&self, node: &Node, length: u64) -> FsResult<()> {
        // Framing of stored members: well under 1/64 of the data, plus an index record's worth.
        let framing = length / 64 + (64 << 10);
        let want = length.saturating_add(framing);
        // Refused before anything is allocated: the backing filesystem keeps whatever part of
        // a fallocate it managed before running out, and those blocks past the end could only
        // be given back by a truncate, which could cut members a concurrent write-back just
        // appended.
        let fs = sys::fstatvfs(self.fd(node)?.raw())?;
        let free = fs.f_bavail.saturating_mul(fs.f_frsize);
        if want > free {
            return Err(FsError::with_context(
                libc::ENOSPC,
                format!("fallocate needs {want} bytes stored uncompressed, {free} are free"),
            ));
        }
        let file = self.reopen(node, libc::O_WRONLY)?;
        let end = file.metadata().map_err(FsError::from)?.len();
        // Past the end: the members written next fill these blocks. Out of space here (the
        // disk filled meanwhile), what was allocated stays for those members.
        sys::fallocate(&file, libc::FALLOC_FL_KEEP_SIZE, end, want).map_err(|e| {
            FsError::with_context(e.errno, format!("reserving {want} bytes for fallocate"))
        })
    }
}
