//! The inode table: one node per backing inode (st_dev, st_ino), reference-counted by the
//! kernel's lookup/forget, each reaching its backing inode through an O_PATH descriptor.
//!
//! The kernel may cache far more inodes than the daemon may hold descriptors (a `cp -a` of a
//! large tree, a million small files): at most [`InodeTable::fd_bound`] nodes keep their
//! descriptor open. Past that, the least recently used are closed, and reopened on the next use
//! by file handle where the daemon may (`open_by_handle_at` needs CAP_DAC_READ_SEARCH), by parent
//! descriptor and name otherwise, never by a path through the mount point; either way the
//! reopened inode must be the node's (device and inode number), or the call fails with ESTALE.
//!
//! Keying on the backing inode rather than on a path is what makes hard links share one node (and
//! one open-file state, so both names see the same data at once), and what keeps renames, long
//! names and unlinked-but-open files working without path bookkeeping.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::error::{FsError, FsResult};
use super::file::OpenFile;
use super::sys;

/// The node id the kernel uses for the mount's root.
pub const ROOT_ID: u64 = 1;

/// What kind of backing object a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Directory,
    Regular,
    Symlink,
    Other,
}

impl NodeKind {
    pub fn from_mode(mode: u32) -> NodeKind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => NodeKind::Directory,
            libc::S_IFREG => NodeKind::Regular,
            libc::S_IFLNK => NodeKind::Symlink,
            _ => NodeKind::Other,
        }
    }
}

/// How a regular file's backing bytes are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A deflatefs container (docs/FORMAT.md).
    Container,
    /// Anything else: served byte for byte.
    Plain,
}

/// The open-file state of a node and how many users (handles, truncations) hold it. Both live
/// under one lock so a state is never dropped while someone is about to use it: two states on
/// one container would append to it independently.
#[derive(Default)]
pub struct OpenSlot {
    pub file: Option<Arc<OpenFile>>,
    pub users: usize,
}

/// One backing inode known to the kernel.
pub struct Node {
    pub id: u64,
    pub dev: u64,
    pub ino: u64,
    pub kind: NodeKind,
    /// O_PATH (|O_NOFOLLOW for symlinks) descriptor of the backing inode while it is open, the
    /// ones compaction replaced, and the file handle to reopen it by (see [`BackingFds`]).
    fds: Mutex<BackingFds>,
    /// When the descriptor was last used ([`InodeTable`]'s use counter): eviction closes the
    /// least recently used first.
    last_used: AtomicU64,
    /// Operations that need the descriptor kept open (see [`InodeTable::pin`]).
    pins: AtomicU32,
    /// Current (st_dev, st_ino) of the backing inode: the table's key.
    key: Mutex<(u64, u64)>,
    /// Outstanding kernel lookups (root: never forgotten).
    lookups: Mutex<u64>,
    /// Backing format, decided on first use (regular files only).
    pub format: Mutex<Option<Format>>,
    /// Shared state while any handle is open (and while write-back is pending).
    pub open: Mutex<OpenSlot>,
    /// The last (parent node, name) this inode was reached through: names it in log lines, and
    /// tells compaction where to put the rewritten file.
    location: Mutex<Option<(u64, OsString)>>,
    /// The backing inode's generation when the node was made (0 where the backing filesystem's
    /// file handles do not carry one): the kernel puts it in file handles and refuses a handle
    /// whose generation differs, so a handle of a removed file never opens another file that
    /// got its inode number. Fixed for the node's life: a compaction's new inode keeps it.
    pub generation: u32,
}

impl Node {
    fn new(id: u64, st: &libc::stat, fd: OwnedFd, lookups: u64) -> Node {
        let generation = backing_generation(fd.as_raw_fd());
        Node {
            generation,
            id,
            dev: st.st_dev,
            ino: st.st_ino,
            kind: NodeKind::from_mode(st.st_mode),
            fds: Mutex::new(BackingFds::new(fd)),
            last_used: AtomicU64::new(0),
            pins: AtomicU32::new(0),
            key: Mutex::new((st.st_dev, st.st_ino)),
            lookups: Mutex::new(lookups),
            format: Mutex::new(None),
            open: Mutex::new(OpenSlot::default()),
            location: Mutex::new(None),
        }
    }

    /// Records the name this inode was last reached through.
    pub fn set_location(&self, parent: u64, name: &std::ffi::OsStr) {
        *self.location.lock() = Some((parent, name.to_os_string()));
    }

    /// Forgets the location if it is `(parent, name)`: that name was removed or replaced, so it
    /// no longer leads here. Until a lookup names the inode again its descriptor stays open (an
    /// unlinked file cannot be reopened).
    pub fn clear_location_if(&self, parent: u64, name: &std::ffi::OsStr) {
        let mut loc = self.location.lock();
        if loc
            .as_ref()
            .is_some_and(|(p, n)| *p == parent && n.as_os_str() == name)
        {
            *loc = None;
        }
    }

    /// The last known (parent, name), if any.
    pub fn location(&self) -> Option<(u64, OsString)> {
        self.location.lock().clone()
    }

    /// How log lines name this file: `'name' (inode N)`.
    pub fn label(&self) -> String {
        match &*self.location.lock() {
            Some((_, name)) => format!("'{}' (inode {})", name.to_string_lossy(), self.ino),
            None => format!("inode {}", self.ino),
        }
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {} (ino {})", self.id, self.ino)
    }
}

/// How long a backing inode replaced by compaction stays open and known to the table. Raw
/// descriptors are handed out for the few system calls of one operation, and a lookup that
/// opened the name just before the rename finds the node by the old inode's key: both must keep
/// working past any such use. Not for the node's lifetime, though: each replaced inode keeps the
/// old container's disk space allocated while it is open.
const RETIRED_GRACE: Duration = Duration::from_secs(5);

/// A backing inode compaction replaced: its descriptor, its table key, and when.
struct Retired {
    at: Instant,
    key: (u64, u64),
    _fd: Arc<OwnedFd>,
}

/// A backing descriptor lent for one operation. It stays open until the borrower drops it, even
/// if the node's own descriptor is closed meanwhile to stay under the bound: a raw descriptor
/// number is never used after its close (it could name another file by then).
#[derive(Clone)]
pub struct BackingFd(Arc<OwnedFd>);

impl BackingFd {
    /// The descriptor, valid while `self` lives.
    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// The descriptors of a node's backing inode.
struct BackingFds {
    /// None while closed to stay under the descriptor bound.
    current: Option<Arc<OwnedFd>>,
    /// The backing inode's file handle (`name_to_handle_at`), when the daemon may reopen by one.
    handle: Option<Box<[u8]>>,
    /// Replaced inodes, oldest first.
    retired: VecDeque<Retired>,
}

impl BackingFds {
    fn new(fd: OwnedFd) -> Self {
        BackingFds {
            current: Some(Arc::new(fd)),
            handle: None,
            retired: VecDeque::new(),
        }
    }

    /// Makes `fd` current, retiring the descriptor of the inode `old_key`.
    fn replace(&mut self, fd: OwnedFd, old_key: (u64, u64), now: Instant) {
        let old = self.current.replace(Arc::new(fd));
        self.handle = None;
        if let Some(old) = old {
            self.retired.push_back(Retired {
                at: now,
                key: old_key,
                _fd: old,
            });
        }
    }

    /// Closes the replaced descriptors past their grace period; returns their keys.
    fn prune(&mut self, now: Instant) -> Vec<(u64, u64)> {
        let mut keys = Vec::new();
        while self
            .retired
            .front()
            .is_some_and(|r| now.duration_since(r.at) > RETIRED_GRACE)
        {
            keys.extend(self.retired.pop_front().map(|r| r.key));
        }
        keys
    }
}

#[derive(Default)]
struct Table {
    by_id: HashMap<u64, Arc<Node>>,
    by_key: HashMap<(u64, u64), u64>,
    /// Device of the source directory: its inodes keep their own numbers as node ids.
    root_dev: u64,
    /// Next id for inodes of other devices (mounts inside the source) and number clashes.
    next_synthetic: u64,
    /// Nodes holding descriptors that compaction replaced (see [`InodeTable::prune_retired`]).
    retiring: HashSet<u64>,
    /// Nodes other than the root whose descriptor is open (the bound counts these).
    with_fd: HashSet<u64>,
}

/// Node ids at or above this are synthesized (never a real inode number in practice).
const SYNTHETIC_BASE: u64 = 1 << 63;

/// All nodes the kernel currently holds a reference to.
pub struct InodeTable {
    table: Mutex<Table>,
    /// Most node descriptors kept open (the root's aside).
    fd_bound: usize,
    /// Ticks at every use of a node's descriptor (see `Node::last_used`).
    uses: AtomicU64,
    /// A plain (not O_PATH) descriptor of the source directory for `open_by_handle_at`, when
    /// file handles can reopen inodes (probed once at start).
    handle_mount: Option<OwnedFd>,
    /// Descriptors closed to stay under the bound, and reopened (for statistics and tests).
    evicted: AtomicU64,
    reopened: AtomicU64,
}

/// A node whose descriptor stays open while this lives (see [`InodeTable::pin`]).
pub struct Pinned(Arc<Node>);

impl Drop for Pinned {
    fn drop(&mut self) {
        self.0.pins.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Fewest node descriptors a bound may allow: below this, eviction would thrash on every call.
pub const MIN_FD_BOUND: usize = 16;

/// How deep a chain of closed parent directories a reopen follows before giving up (ESTALE): a
/// cycle of stale locations must not recurse forever.
const MAX_REOPEN_DEPTH: usize = 4096;

impl InodeTable {
    /// A table holding only the root, whose descriptor is the source directory opened before the
    /// mount.
    /// mount. At most `fd_bound` (at least [`MIN_FD_BOUND`]) other nodes keep a descriptor open.
    pub fn new(root_fd: OwnedFd, st: &libc::stat, fd_bound: usize) -> InodeTable {
        let handle_mount = handles_work(&root_fd);
        let root = Arc::new(Node::new(ROOT_ID, st, root_fd, 1));
        let mut t = Table {
            root_dev: st.st_dev,
            next_synthetic: SYNTHETIC_BASE,
            ..Default::default()
        };
        t.by_key.insert((st.st_dev, st.st_ino), ROOT_ID);
        t.by_id.insert(ROOT_ID, root);
        InodeTable {
            table: Mutex::new(t),
            fd_bound: fd_bound.max(MIN_FD_BOUND),
            uses: AtomicU64::new(0),
            handle_mount,
            evicted: AtomicU64::new(0),
            reopened: AtomicU64::new(0),
        }
    }

    /// Most node descriptors kept open at once.
    pub fn fd_bound(&self) -> usize {
        self.fd_bound
    }

    /// Node descriptors open now, and how many were closed and reopened so far.
    pub fn fd_counts(&self) -> (usize, u64, u64) {
        (
            self.table.lock().with_fd.len(),
            self.evicted.load(Ordering::Relaxed),
            self.reopened.load(Ordering::Relaxed),
        )
    }

    /// Whether inodes are reopened by file handle (else by parent and name).
    pub fn reopens_by_handle(&self) -> bool {
        self.handle_mount.is_some()
    }

    /// The backing descriptor of `node` for one operation, reopened if it was closed to stay
    /// under the bound. ESTALE if the inode can no longer be reached (its name was changed or
    /// removed outside the mount).
    pub fn fd(&self, node: &Node) -> FsResult<BackingFd> {
        self.fd_at_depth(node, 0)
    }

    fn fd_at_depth(&self, node: &Node, depth: usize) -> FsResult<BackingFd> {
        node.last_used
            .store(self.uses.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        if let Some(fd) = &node.fds.lock().current {
            return Ok(BackingFd(fd.clone()));
        }
        if depth > MAX_REOPEN_DEPTH {
            return Err(self.stale(node, "too deep a chain of closed directories"));
        }
        let fd = self.reopen(node, depth)?;
        let lent = {
            let mut fds = node.fds.lock();
            match &fds.current {
                // Another thread reopened it meanwhile: use that one, drop ours.
                Some(fd) => return Ok(BackingFd(fd.clone())),
                None => {
                    let fd = Arc::new(fd);
                    fds.current = Some(fd.clone());
                    fd
                }
            }
        };
        self.reopened.fetch_add(1, Ordering::Relaxed);
        self.table.lock().with_fd.insert(node.id);
        self.make_room();
        Ok(BackingFd(lent))
    }

    fn stale(&self, node: &Node, why: &str) -> FsError {
        FsError::with_context(
            libc::ESTALE,
            format!("{}: cannot reopen the backing inode: {why}", node.label()),
        )
    }

    /// Opens `node`'s backing inode again: by file handle, else through its parent and name.
    fn reopen(&self, node: &Node, depth: usize) -> FsResult<OwnedFd> {
        let key = *node.key.lock();
        let handle = node.fds.lock().handle.clone();
        if let (Some(handle), Some(mount)) = (handle, &self.handle_mount) {
            match self.retry_emfile(|| open_by_handle(mount.as_raw_fd(), &handle)) {
                Ok(fd) if same_inode(&fd, key) => return Ok(fd),
                // Renamed away, replaced or removed: the name may still lead to it.
                _ => {}
            }
        }
        let Some((parent_id, name)) = node.location() else {
            return Err(self.stale(node, "it has no name left"));
        };
        let Some(parent) = self.get(parent_id) else {
            return Err(self.stale(node, "its directory is no longer known"));
        };
        let dir = self.fd_at_depth(&parent, depth + 1)?;
        let cname = sys::cstr(&name)?;
        let fd = self
            .retry_emfile(|| sys::openat(dir.raw(), &cname, libc::O_PATH | libc::O_NOFOLLOW, 0));
        match fd {
            Ok(fd) if same_inode(&fd, key) => Ok(fd),
            Ok(_) => Err(self.stale(
                node,
                &format!("'{}' is another inode now", name.to_string_lossy()),
            )),
            Err(e) if e.errno == libc::ENOENT => {
                Err(self.stale(node, &format!("'{}' is gone", name.to_string_lossy())))
            }
            Err(e) => Err(e),
        }
    }

    /// Makes `node` keep its descriptor while it has no name: reopens it now if it was closed,
    /// and forgets its location if that is `(parent, name)`, the name about to go.
    pub fn keep_open_unnamed(&self, node: &Node, parent: u64, name: &std::ffi::OsStr) {
        // Not reachable any more (changed outside the mount): the name goes all the same.
        let fd = self.fd(node).ok();
        node.clear_location_if(parent, name);
        // An eviction between the reopen and the cleared location may have closed it again.
        if let Some(fd) = fd {
            self.install_if_closed(node, fd);
        }
    }

    /// Makes `fd` (a descriptor of `node`'s current inode) the node's own again if an eviction
    /// closed that meanwhile.
    fn install_if_closed(&self, node: &Node, fd: BackingFd) {
        let mut fds = node.fds.lock();
        if fds.current.is_none() {
            fds.current = Some(fd.0);
            drop(fds);
            if node.id != ROOT_ID {
                self.table.lock().with_fd.insert(node.id);
            }
        }
    }

    /// Keeps `node`'s descriptor open until the guard is dropped (reopened now if it was
    /// closed): for a rename, between which the node's recorded name is out of date.
    pub fn pin(&self, node: &Arc<Node>) -> Pinned {
        node.pins.fetch_add(1, Ordering::AcqRel);
        if let Ok(fd) = self.fd(node) {
            self.install_if_closed(node, fd);
        }
        Pinned(node.clone())
    }

    /// Runs `open`, and once more after closing idle descriptors if the process ran out of
    /// them: reaching the limit slows calls down, it must not fail them.
    pub fn retry_emfile<T>(&self, mut open: impl FnMut() -> FsResult<T>) -> FsResult<T> {
        match open() {
            Err(e) if e.errno == libc::EMFILE || e.errno == libc::ENFILE => {
                let held = self.table.lock().with_fd.len();
                self.evict_down_to(held / 2);
                open()
            }
            r => r,
        }
    }

    /// Closes the least recently used node descriptors when more than the bound are open.
    fn make_room(&self) {
        if self.table.lock().with_fd.len() > self.fd_bound {
            // An eighth at a time: the scan is paid once per many opens.
            self.evict_down_to(self.fd_bound - self.fd_bound / 8);
        }
    }

    /// Closes idle node descriptors, least recently used first, until at most `target` are open
    /// (or nothing more can be closed: the root, nodes without a name to reopen them by, and
    /// nodes busy right now keep theirs).
    fn evict_down_to(&self, target: usize) {
        let mut candidates: Vec<(u64, Arc<Node>)> = {
            let t = self.table.lock();
            if t.with_fd.len() <= target {
                return;
            }
            t.with_fd
                .iter()
                .filter_map(|id| t.by_id.get(id))
                .map(|n| (n.last_used.load(Ordering::Relaxed), n.clone()))
                .collect()
        };
        let mut excess = candidates.len().saturating_sub(target);
        candidates.sort_unstable_by_key(|(used, _)| *used);
        let mut closed = Vec::new();
        for (_, node) in candidates {
            if excess == 0 {
                break;
            }
            if node.id == ROOT_ID
                || node.pins.load(Ordering::Acquire) > 0
                || node.location.lock().is_none()
            {
                continue;
            }
            let Some(mut fds) = node.fds.try_lock() else {
                continue;
            };
            if fds.handle.is_none() && self.reopens_by_handle() {
                fds.handle = fds
                    .current
                    .as_ref()
                    .and_then(|fd| file_handle(fd.as_raw_fd()));
            }
            if let Some(fd) = fds.current.take() {
                closed.push((node.id, fd));
                excess -= 1;
            }
        }
        self.evicted
            .fetch_add(closed.len() as u64, Ordering::Relaxed);
        let mut t = self.table.lock();
        for (id, _) in &closed {
            t.with_fd.remove(id);
        }
        drop(t);
        // Closed here, outside the locks.
        drop(closed);
    }

    /// The node for a kernel node id.
    pub fn get(&self, id: u64) -> Option<Arc<Node>> {
        self.table.lock().by_id.get(&id).cloned()
    }

    /// Opens (O_PATH) the backing inode whose number is node id `id`, for a node the kernel no
    /// longer holds (a file handle from before a forget or a remount). Works where the backing
    /// filesystem's file handles are an inode number and a generation (`FILEID_INO32_GEN`, as on
    /// ext2/3/4): the handle is built with generation 0, which the filesystem does not check,
    /// and the inode is accepted only if it is on the source's device. None otherwise.
    pub fn open_by_id(&self, id: u64, root: &Node) -> Option<(OwnedFd, libc::stat)> {
        const FILEID_INO32_GEN: i32 = 1;
        let mount = self.handle_mount.as_ref()?;
        let ino = u32::try_from(id).ok()?;
        let root_fd = self.fd(root).ok()?;
        let template = file_handle(root_fd.raw())?;
        let kind = i32::from_ne_bytes(template.get(4..8)?.try_into().ok()?);
        if kind != FILEID_INO32_GEN || template.len() != 16 {
            return None;
        }
        let mut handle = template.to_vec();
        handle[8..12].copy_from_slice(&ino.to_le_bytes());
        handle[12..16].copy_from_slice(&0u32.to_le_bytes());
        let fd = open_by_handle(mount.as_raw_fd(), &handle).ok()?;
        let st = sys::fstat(fd.as_raw_fd()).ok()?;
        let root_dev = self.table.lock().root_dev;
        (st.st_dev == root_dev && st.st_ino == id).then_some((fd, st))
    }

    /// Registers one kernel lookup of the inode described by `st`, reached through `fd`. An inode
    /// already known keeps its node (and its existing descriptor; `fd` is dropped).
    pub fn insert_lookup(&self, fd: OwnedFd, st: &libc::stat) -> Arc<Node> {
        let mut t = self.table.lock();
        let key = (st.st_dev, st.st_ino);
        if let Some(id) = t.by_key.get(&key).copied() {
            let node = t.by_id[&id].clone();
            *node.lookups.lock() += 1;
            let installed = {
                let mut fds = node.fds.lock();
                let closed = fds.current.is_none() && *node.key.lock() == key;
                if closed {
                    // Closed to stay under the bound: the lookup's descriptor saves a reopen.
                    fds.current = Some(Arc::new(fd));
                }
                closed
            };
            if installed && id != ROOT_ID {
                t.with_fd.insert(id);
                drop(t);
                self.make_room();
            }
            return node;
        }
        // The kernel shows the node id as st_ino, so backing inode numbers are used as ids: they
        // stay stable across remounts and `ls -i`, `find -inum` and hard-link checks work.
        let id = if st.st_dev == t.root_dev
            && st.st_ino != ROOT_ID
            && st.st_ino < SYNTHETIC_BASE
            && !t.by_id.contains_key(&st.st_ino)
        {
            st.st_ino
        } else {
            t.next_synthetic += 1;
            t.next_synthetic
        };
        let node = Arc::new(Node::new(id, st, fd, 1));
        node.last_used
            .store(self.uses.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        t.by_key.insert(key, id);
        t.by_id.insert(id, node.clone());
        t.with_fd.insert(id);
        drop(t);
        self.make_room();
        node
    }

    /// The node of a backing inode, if the kernel holds one.
    pub fn find(&self, dev: u64, ino: u64) -> Option<Arc<Node>> {
        let t = self.table.lock();
        t.by_key
            .get(&(dev, ino))
            .and_then(|id| t.by_id.get(id))
            .cloned()
    }

    /// Drops `n` kernel lookups; the node leaves the table when none remain (open handles keep
    /// their own Arc, so data in flight is unaffected).
    pub fn forget(&self, id: u64, n: u64) {
        if id == ROOT_ID {
            return;
        }
        let mut t = self.table.lock();
        let Some(node) = t.by_id.get(&id).cloned() else {
            return;
        };
        let mut lookups = node.lookups.lock();
        *lookups = lookups.saturating_sub(n);
        if *lookups == 0 {
            drop(lookups);
            t.by_id.remove(&id);
            t.retiring.remove(&id);
            t.with_fd.remove(&id);
            let key = *node.key.lock();
            t.by_key.remove(&key);
            for r in &node.fds.lock().retired {
                if t.by_key.get(&r.key) == Some(&id) {
                    t.by_key.remove(&r.key);
                }
            }
        }
    }

    /// Takes a reference on `node` like a kernel lookup, for work that must not see the node
    /// forgotten meanwhile (a compaction); false if the table no longer holds this node. Give it
    /// back with [`Self::forget`]`(id, 1)`.
    pub fn hold(&self, node: &Arc<Node>) -> bool {
        let t = self.table.lock();
        match t.by_id.get(&node.id) {
            Some(n) if Arc::ptr_eq(n, node) => {
                *node.lookups.lock() += 1;
                true
            }
            _ => false,
        }
    }

    /// Closes the descriptors compaction replaced more than [`RETIRED_GRACE`] ago and forgets
    /// their keys (the flusher calls this once a second).
    pub fn prune_retired(&self) {
        let now = Instant::now();
        let mut t = self.table.lock();
        let ids: Vec<u64> = t.retiring.iter().copied().collect();
        for id in ids {
            let Some(node) = t.by_id.get(&id).cloned() else {
                t.retiring.remove(&id);
                continue;
            };
            let mut fds = node.fds.lock();
            for key in fds.prune(now) {
                if t.by_key.get(&key) == Some(&id) && *node.key.lock() != key {
                    t.by_key.remove(&key);
                }
            }
            if fds.retired.is_empty() {
                t.retiring.remove(&id);
            }
        }
    }

    /// Makes the table find `node` under the backing inode `st` as well as under its own, before
    /// compaction renames that inode into the node's place: a lookup of the name between the
    /// rename and [`Self::replace_backing`] must find this node, never make a second node (and a
    /// second open state appending to the same container) for the new inode.
    pub fn alias_backing(&self, node: &Node, st: &libc::stat) {
        self.table
            .lock()
            .by_key
            .insert((st.st_dev, st.st_ino), node.id);
    }

    /// Undoes [`Self::alias_backing`] when the rename did not happen.
    pub fn drop_alias(&self, node: &Node, st: &libc::stat) {
        let mut t = self.table.lock();
        let key = (st.st_dev, st.st_ino);
        if t.by_key.get(&key) == Some(&node.id) && *node.key.lock() != key {
            t.by_key.remove(&key);
        }
    }

    /// Points `node` at a new backing inode (after compaction replaced the file): `fd` becomes
    /// its descriptor and its key the table's key for it. The node id, which the kernel knows,
    /// stays the same. The old inode stays open and still leads to this node for
    /// [`RETIRED_GRACE`]: a lookup that opened the name just before the rename must find this
    /// node, not make a second one (with a second open state) for the replaced inode.
    pub fn replace_backing(&self, node: &Node, fd: OwnedFd, st: &libc::stat) {
        let mut t = self.table.lock();
        let mut key = node.key.lock();
        let old_key = *key;
        *key = (st.st_dev, st.st_ino);
        t.by_key.insert(*key, node.id);
        node.fds.lock().replace(fd, old_key, Instant::now());
        t.retiring.insert(node.id);
        if node.id != ROOT_ID {
            t.with_fd.insert(node.id);
        }
    }

    /// Every node with an open-file state (for flushing at unmount).
    pub fn open_files(&self) -> Vec<Arc<OpenFile>> {
        // Not under the table lock: a compaction holds its file's state lock while it takes the
        // table lock, and a stat holds the slot lock while it waits for the state lock.
        let nodes: Vec<Arc<Node>> = self.table.lock().by_id.values().cloned().collect();
        nodes
            .iter()
            .filter_map(|n| n.open.lock().file.clone())
            .collect()
    }

    /// Number of nodes (for tests and statistics).
    pub fn len(&self) -> usize {
        self.table.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A descriptor to reopen inodes by file handle with, if this process may (CAP_DAC_READ_SEARCH):
/// tried on the source directory itself. `DEFLATEFS_REOPEN_BY_NAME=1` in the daemon's
/// environment says no (for tests of the path a daemon without the capability takes).
fn handles_work(root: &OwnedFd) -> Option<OwnedFd> {
    if std::env::var_os("DEFLATEFS_REOPEN_BY_NAME").is_some_and(|v| v == "1") {
        return None;
    }
    // open_by_handle_at refuses an O_PATH descriptor as its mount anchor.
    let mount: OwnedFd = sys::reopen(root.as_raw_fd(), libc::O_RDONLY | libc::O_DIRECTORY)
        .ok()?
        .into();
    let handle = file_handle(root.as_raw_fd())?;
    let fd = open_by_handle(mount.as_raw_fd(), &handle).ok()?;
    same_inode(&fd, {
        let st = sys::fstat(root.as_raw_fd()).ok()?;
        (st.st_dev, st.st_ino)
    })
    .then_some(mount)
}

/// `name_to_handle_at(fd, "", AT_EMPTY_PATH)`: the kernel's `struct file_handle` as bytes
/// (handle_bytes, handle_type, f_handle), or None where the backing filesystem has none.
pub(super) fn file_handle(fd: RawFd) -> Option<Box<[u8]>> {
    const MAX_HANDLE_SZ: usize = 128;
    let mut buf = vec![0u8; 8 + MAX_HANDLE_SZ];
    buf[..4].copy_from_slice(&(MAX_HANDLE_SZ as u32).to_ne_bytes());
    let mut mount_id: libc::c_int = 0;
    // SAFETY: the empty path is NUL-terminated; `buf` starts with handle_bytes = MAX_HANDLE_SZ
    // and has room for the 8-byte header plus that many bytes, which is all the kernel writes
    // (it copies bytes, so the u8 buffer's alignment does not matter); `mount_id` is a live int.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            fd,
            c"".as_ptr(),
            buf.as_mut_ptr(),
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    };
    if r != 0 {
        return None;
    }
    let len = u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    buf.truncate(8 + len.min(MAX_HANDLE_SZ));
    Some(buf.into_boxed_slice())
}

/// The generation in the backing filesystem's file handle of `fd` (`FILEID_INO32_GEN`: inode
/// number, then generation), or 0.
fn backing_generation(fd: RawFd) -> u32 {
    const FILEID_INO32_GEN: i32 = 1;
    let Some(h) = file_handle(fd) else {
        return 0;
    };
    let kind = h
        .get(4..8)
        .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
    match (kind, h.get(12..16)) {
        (Some(FILEID_INO32_GEN), Some(g)) if h.len() == 16 => {
            u32::from_ne_bytes(g.try_into().expect("4 bytes"))
        }
        _ => 0,
    }
}

/// `open_by_handle_at(mount_fd, handle, O_PATH | O_NOFOLLOW)`.
fn open_by_handle(mount_fd: RawFd, handle: &[u8]) -> FsResult<OwnedFd> {
    open_by_handle_with(mount_fd, handle, libc::O_PATH | libc::O_NOFOLLOW)
}

/// `open_by_handle_at(mount_fd, handle, flags | O_CLOEXEC)`, with a handle from [`file_handle`].
pub(super) fn open_by_handle_with(mount_fd: RawFd, handle: &[u8], flags: i32) -> FsResult<OwnedFd> {
    // The kernel reads the header's handle_bytes and then that many bytes: keep them aligned
    // as `struct file_handle` is.
    let mut aligned = vec![0u32; handle.len().div_ceil(4)];
    for (word, chunk) in aligned.iter_mut().zip(handle.chunks(4)) {
        let mut b = [0u8; 4];
        b[..chunk.len()].copy_from_slice(chunk);
        *word = u32::from_ne_bytes(b);
    }
    // SAFETY: `aligned` holds the whole handle as made by `file_handle` (header and
    // handle_bytes bytes of f_handle), so the kernel reads only inside it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd,
            aligned.as_mut_ptr(),
            flags | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(FsError::new(sys::last_errno()));
    }
    // SAFETY: `fd` was just returned by open_by_handle_at, is open, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Whether `fd` is the backing inode `key` (device, inode number).
fn same_inode(fd: &OwnedFd, key: (u64, u64)) -> bool {
    sys::fstat(fd.as_raw_fd()).is_ok_and(|st| (st.st_dev, st.st_ino) == key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn null_fd() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn descriptors_replaced_by_compaction_are_closed_after_their_grace_period() {
        let start = Instant::now();
        let mut fds = BackingFds::new(null_fd());
        let mut pruned = 0;
        // A compaction every second for ten minutes, with the flusher pruning after each.
        for s in 1..=600u64 {
            let now = start + Duration::from_secs(s);
            fds.replace(null_fd(), (1, s), now);
            pruned += fds.prune(now).len();
        }
        let kept = fds.retired.len() as u64;
        assert!(
            kept <= RETIRED_GRACE.as_secs() + 1,
            "{kept} replaced descriptors still open"
        );
        // The most recently replaced ones are kept: a caller may still be using them.
        assert!(kept >= RETIRED_GRACE.as_secs());
        assert_eq!(pruned as u64 + kept, 600);
    }
}
