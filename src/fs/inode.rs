//! The inode table: one node per backing inode (st_dev, st_ino), reference-counted by the
//! kernel's lookup/forget, each holding an O_PATH descriptor to its backing inode.
//!
//! Keying on the backing inode rather than on a path is what makes hard links share one node (and
//! one open-file state, so both names see the same data at once), and what keeps renames, long
//! names and unlinked-but-open files working without path bookkeeping.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::file::OpenFile;

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
    /// O_PATH (|O_NOFOLLOW for symlinks) descriptor of the backing inode, and the ones
    /// compaction replaced (see [`BackingFds`]).
    fds: Mutex<BackingFds>,
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
}

impl Node {
    pub fn raw_fd(&self) -> RawFd {
        self.fds.lock().current.as_raw_fd()
    }

    /// Records the name this inode was last reached through.
    pub fn set_location(&self, parent: u64, name: &std::ffi::OsStr) {
        *self.location.lock() = Some((parent, name.to_os_string()));
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
    _fd: OwnedFd,
}

/// The descriptors of a node's backing inode.
struct BackingFds {
    current: OwnedFd,
    /// Replaced inodes, oldest first.
    retired: VecDeque<Retired>,
}

impl BackingFds {
    fn new(fd: OwnedFd) -> Self {
        BackingFds {
            current: fd,
            retired: VecDeque::new(),
        }
    }

    /// Makes `fd` current, retiring the descriptor of the inode `old_key`.
    fn replace(&mut self, fd: OwnedFd, old_key: (u64, u64), now: Instant) {
        let old = std::mem::replace(&mut self.current, fd);
        self.retired.push_back(Retired {
            at: now,
            key: old_key,
            _fd: old,
        });
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
}

/// Node ids at or above this are synthesized (never a real inode number in practice).
const SYNTHETIC_BASE: u64 = 1 << 63;

/// All nodes the kernel currently holds a reference to.
pub struct InodeTable {
    table: Mutex<Table>,
}

impl InodeTable {
    /// A table holding only the root, whose descriptor is the source directory opened before the
    /// mount.
    pub fn new(root_fd: OwnedFd, st: &libc::stat) -> InodeTable {
        let root = Arc::new(Node {
            id: ROOT_ID,
            dev: st.st_dev,
            ino: st.st_ino,
            kind: NodeKind::Directory,
            fds: Mutex::new(BackingFds::new(root_fd)),
            key: Mutex::new((st.st_dev, st.st_ino)),
            lookups: Mutex::new(1),
            format: Mutex::new(None),
            open: Mutex::new(OpenSlot::default()),
            location: Mutex::new(None),
        });
        let mut t = Table {
            root_dev: st.st_dev,
            next_synthetic: SYNTHETIC_BASE,
            ..Default::default()
        };
        t.by_key.insert((st.st_dev, st.st_ino), ROOT_ID);
        t.by_id.insert(ROOT_ID, root);
        InodeTable {
            table: Mutex::new(t),
        }
    }

    /// The node for a kernel node id.
    pub fn get(&self, id: u64) -> Option<Arc<Node>> {
        self.table.lock().by_id.get(&id).cloned()
    }

    /// Registers one kernel lookup of the inode described by `st`, reached through `fd`. An inode
    /// already known keeps its node (and its existing descriptor; `fd` is dropped).
    pub fn insert_lookup(&self, fd: OwnedFd, st: &libc::stat) -> Arc<Node> {
        let mut t = self.table.lock();
        let key = (st.st_dev, st.st_ino);
        if let Some(id) = t.by_key.get(&key).copied() {
            let node = t.by_id[&id].clone();
            *node.lookups.lock() += 1;
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
        let node = Arc::new(Node {
            id,
            dev: st.st_dev,
            ino: st.st_ino,
            kind: NodeKind::from_mode(st.st_mode),
            fds: Mutex::new(BackingFds::new(fd)),
            key: Mutex::new(key),
            lookups: Mutex::new(1),
            format: Mutex::new(None),
            open: Mutex::new(OpenSlot::default()),
            location: Mutex::new(None),
        });
        t.by_key.insert(key, id);
        t.by_id.insert(id, node.clone());
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
