//! A test-only backing filesystem that can lose power (in the spirit of dm-log-writes): an
//! in-memory FUSE filesystem, served by the test process, that deflatefs is mounted on top of.
//!
//! It remembers, for every file, what was made durable by its last fsync/fdatasync and which 4 KiB
//! pages changed since, and for the directory tree the entries as of the last fsync of a
//! directory and the operations since (a journal: any fsync of a directory makes every earlier
//! one durable). [`Layer::cut`] is the power cut: it takes an image that keeps everything durable
//! plus an arbitrary part of the rest (each changed page of a file is either its newest or its
//! durable content, the length anything between the smallest and largest since the last sync, a
//! random prefix of the directory operations), and from then on every operation fails with EIO.
//! The image is the next boot's backing directory: [`LayerMount::mount`] serves it again, with
//! every file's mtime in 1970 (written before the "boot").
//!
//! It can also fail on purpose: ENOSPC past a space limit, EIO for writes, fsyncs or reads
//! ([`Faults`]), for the backing-failure tests.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use parking_lot::Mutex;

const PAGE: usize = 4096;
const ROOT: u64 = 1;
const TTL: Duration = Duration::ZERO;

/// Failures to inject.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Total bytes all files may hold; a write beyond gets ENOSPC.
    pub space_limit: Option<u64>,
    /// Writes fail with EIO.
    pub fail_writes: bool,
    /// fsync and fdatasync fail with EIO.
    pub fail_fsync: bool,
    /// Reads fail with EIO.
    pub fail_reads: bool,
}

#[derive(Clone, Debug)]
struct FileData {
    cur: Vec<u8>,
    durable: Vec<u8>,
    dirty: BTreeSet<usize>,
    min_len: usize,
    max_len: usize,
}

impl FileData {
    fn new(bytes: Vec<u8>) -> FileData {
        let n = bytes.len();
        FileData {
            durable: bytes.clone(),
            cur: bytes,
            dirty: BTreeSet::new(),
            min_len: n,
            max_len: n,
        }
    }

    fn sync(&mut self) {
        self.durable = self.cur.clone();
        self.dirty.clear();
        self.min_len = self.cur.len();
        self.max_len = self.cur.len();
    }

    fn mark(&mut self, from: usize, to: usize) {
        for p in from / PAGE..to.div_ceil(PAGE) {
            self.dirty.insert(p);
        }
    }

    fn write(&mut self, off: usize, data: &[u8]) {
        let end = off + data.len();
        if self.cur.len() < end {
            let old = self.cur.len();
            self.cur.resize(end, 0);
            self.mark(old, end);
        }
        self.cur[off..end].copy_from_slice(data);
        self.mark(off, end);
        self.max_len = self.max_len.max(self.cur.len());
    }

    fn truncate(&mut self, len: usize) {
        let old = self.cur.len();
        self.cur.resize(len, 0);
        self.mark(len.min(old), len.max(old));
        self.min_len = self.min_len.min(len);
        self.max_len = self.max_len.max(len);
    }

    /// The file after a power cut.
    fn cut(&self, rng: &mut impl FnMut() -> u64) -> Vec<u8> {
        let span = (self.max_len - self.min_len) as u64;
        let len = self.min_len + (rng() % (span + 1)) as usize;
        let keep = [0u64, 30, 70, 100][(rng() % 4) as usize];
        let mut out = vec![0u8; len];
        for p in 0..len.div_ceil(PAGE) {
            let a = p * PAGE;
            let b = (a + PAGE).min(len);
            let src = if self.dirty.contains(&p) && rng() % 100 < keep {
                &self.cur
            } else {
                &self.durable
            };
            for (i, o) in out[a..b].iter_mut().enumerate() {
                *o = src.get(a + i).copied().unwrap_or(0);
            }
        }
        out
    }
}

#[derive(Clone, Debug)]
struct Node {
    dir: bool,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    data: FileData,
    xattrs: BTreeMap<OsString, Vec<u8>>,
    /// What happened to it (writes, truncates, syncs), for failure reports.
    pub log: Vec<String>,
}

#[derive(Clone, Debug)]
enum Meta {
    Link {
        dir: u64,
        name: OsString,
        ino: u64,
    },
    Unlink {
        dir: u64,
        name: OsString,
    },
    Rename {
        dir: u64,
        name: OsString,
        newdir: u64,
        newname: OsString,
    },
}

type Tree = HashMap<u64, BTreeMap<OsString, u64>>;

fn apply(tree: &mut Tree, m: &Meta) {
    match m {
        Meta::Link { dir, name, ino } => {
            tree.entry(*dir).or_default().insert(name.clone(), *ino);
        }
        Meta::Unlink { dir, name } => {
            if let Some(d) = tree.get_mut(dir) {
                d.remove(name);
            }
        }
        Meta::Rename {
            dir,
            name,
            newdir,
            newname,
        } => {
            if let Some(ino) = tree.get_mut(dir).and_then(|d| d.remove(name)) {
                tree.entry(*newdir)
                    .or_default()
                    .insert(newname.clone(), ino);
            }
        }
    }
}

/// The filesystem's state.
struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    tree: Tree,
    durable_tree: Tree,
    meta_log: Vec<Meta>,
    handles: HashMap<u64, u64>,
    next_fh: u64,
    dead: bool,
    faults: Faults,
    /// Counters: writes, fsyncs of files, fsyncs of directories.
    pub writes: u64,
    pub fsyncs: u64,
    pub dirsyncs: u64,
}

/// What survives a power cut: a directory tree of files (relative path -> bytes).
#[derive(Clone, Debug, Default)]
pub struct Image {
    pub files: BTreeMap<PathBuf, Vec<u8>>,
    pub dirs: BTreeSet<PathBuf>,
    /// Directory operations kept of those not yet durable.
    pub meta_kept: usize,
    pub meta_pending: usize,
    /// The operations each file went through since the layer was mounted.
    pub logs: BTreeMap<PathBuf, Vec<String>>,
    /// Extended attributes of the files: inode metadata, which a journaling filesystem commits
    /// no later than any data written after them, so they are kept with the file.
    pub xattrs: BTreeMap<PathBuf, BTreeMap<OsString, Vec<u8>>>,
}

fn now() -> (i64, u32) {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    (d.as_secs() as i64, d.subsec_nanos())
}

impl State {
    fn from_image(img: &Image) -> State {
        let mut s = State {
            nodes: HashMap::new(),
            next_ino: ROOT + 1,
            tree: HashMap::new(),
            durable_tree: HashMap::new(),
            meta_log: Vec::new(),
            handles: HashMap::new(),
            next_fh: 1,
            dead: false,
            faults: Faults::default(),
            writes: 0,
            fsyncs: 0,
            dirsyncs: 0,
        };
        let old = (1, 0); // written before this "boot"
        let root = s.node(true, 0o755, old, Vec::new());
        s.nodes.insert(ROOT, root);
        s.tree.insert(ROOT, BTreeMap::new());
        let mut dir_ino: HashMap<PathBuf, u64> = HashMap::new();
        dir_ino.insert(PathBuf::new(), ROOT);
        for d in &img.dirs {
            let parent = dir_ino[d.parent().unwrap_or(Path::new(""))];
            let ino = s.alloc(true, 0o755, old, Vec::new());
            s.tree.insert(ino, BTreeMap::new());
            s.tree
                .get_mut(&parent)
                .unwrap()
                .insert(d.file_name().unwrap().to_os_string(), ino);
            dir_ino.insert(d.clone(), ino);
        }
        for (p, bytes) in &img.files {
            let parent = dir_ino[p.parent().unwrap_or(Path::new(""))];
            let ino = s.alloc(false, 0o644, old, bytes.clone());
            if let Some(x) = img.xattrs.get(p) {
                s.nodes.get_mut(&ino).unwrap().xattrs = x.clone();
            }
            s.tree
                .get_mut(&parent)
                .unwrap()
                .insert(p.file_name().unwrap().to_os_string(), ino);
        }
        s.durable_tree = s.tree.clone();
        s
    }

    fn node(&self, dir: bool, mode: u32, mtime: (i64, u32), bytes: Vec<u8>) -> Node {
        Node {
            dir,
            mode,
            uid: 0,
            gid: 0,
            mtime,
            data: FileData::new(bytes),
            xattrs: BTreeMap::new(),
            log: Vec::new(),
        }
    }

    fn alloc(&mut self, dir: bool, mode: u32, mtime: (i64, u32), bytes: Vec<u8>) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        let n = self.node(dir, mode, mtime, bytes);
        self.nodes.insert(ino, n);
        ino
    }

    fn nlink(&self, ino: u64) -> u32 {
        self.tree
            .values()
            .map(|d| d.values().filter(|i| **i == ino).count() as u32)
            .sum::<u32>()
            .max(1)
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let n = self.nodes.get(&ino)?;
        let t = UNIX_EPOCH + Duration::new(n.mtime.0.max(0) as u64, n.mtime.1);
        let size = if n.dir { 4096 } else { n.data.cur.len() as u64 };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: if n.dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: (n.mode & 0o7777) as u16,
            nlink: if n.dir { 2 } else { self.nlink(ino) },
            uid: n.uid,
            gid: n.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn used(&self) -> u64 {
        self.nodes.values().map(|n| n.data.cur.len() as u64).sum()
    }

    fn sync_tree(&mut self) {
        self.durable_tree = self.tree.clone();
        self.meta_log.clear();
        self.dirsyncs += 1;
    }

    fn meta(&mut self, m: Meta) {
        apply(&mut self.tree, &m);
        self.meta_log.push(m);
    }

    fn cut(&mut self, rng: &mut impl FnMut() -> u64) -> Image {
        let k = (rng() % (self.meta_log.len() as u64 + 1)) as usize;
        let mut tree = self.durable_tree.clone();
        for m in &self.meta_log[..k] {
            apply(&mut tree, m);
        }
        let mut img = Image {
            meta_kept: k,
            meta_pending: self.meta_log.len(),
            ..Image::default()
        };
        let mut stack = vec![(ROOT, PathBuf::new())];
        while let Some((dir, path)) = stack.pop() {
            for (name, ino) in tree.get(&dir).cloned().unwrap_or_default() {
                let p = path.join(&name);
                let Some(n) = self.nodes.get(&ino) else {
                    continue;
                };
                if n.dir {
                    img.dirs.insert(p.clone());
                    stack.push((ino, p));
                } else {
                    img.logs.insert(p.clone(), n.log.clone());
                    img.xattrs.insert(p.clone(), n.xattrs.clone());
                    img.files.insert(p, n.data.cut(rng));
                }
            }
        }
        self.dead = true;
        img
    }
}

/// The FUSE side.
struct LayerFs {
    state: Arc<Mutex<State>>,
}

fn eio() -> Errno {
    Errno::from_i32(libc::EIO)
}

fn err(e: i32) -> Errno {
    Errno::from_i32(e)
}

impl LayerFs {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> Result<T, Errno>) -> Result<T, Errno> {
        let mut s = self.state.lock();
        if s.dead {
            return Err(eio());
        }
        f(&mut s)
    }

    fn entry(&self, reply: ReplyEntry, r: Result<u64, Errno>) {
        match r.and_then(|ino| self.with(|s| s.attr(ino).ok_or(err(libc::ENOENT)))) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn new_node(
        &self,
        parent: u64,
        name: &OsStr,
        dir: bool,
        mode: u32,
        req: &Request,
    ) -> Result<u64, Errno> {
        self.with(|s| {
            let d = s.tree.get(&parent).ok_or(err(libc::ENOENT))?;
            if d.contains_key(name) {
                return Err(err(libc::EEXIST));
            }
            let ino = s.alloc(dir, mode, now(), Vec::new());
            let n = s.nodes.get_mut(&ino).unwrap();
            n.uid = req.uid();
            n.gid = req.gid();
            if dir {
                s.tree.insert(ino, BTreeMap::new());
            }
            s.meta(Meta::Link {
                dir: parent,
                name: name.to_os_string(),
                ino,
            });
            Ok(ino)
        })
    }
}

impl Filesystem for LayerFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.with(|s| {
            s.tree
                .get(&parent.0)
                .and_then(|d| d.get(name).copied())
                .ok_or(err(libc::ENOENT))
        });
        self.entry(reply, r);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.with(|s| s.attr(ino.0).ok_or(err(libc::ENOENT))) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = self.with(|s| {
            if let Some(size) = size {
                if s.faults.fail_writes {
                    return Err(eio());
                }
                if let Some(limit) = s.faults.space_limit {
                    let cur = s.nodes.get(&ino.0).map_or(0, |n| n.data.cur.len() as u64);
                    if size > cur && s.used() + (size - cur) > limit {
                        return Err(err(libc::ENOSPC));
                    }
                }
            }
            let n = s.nodes.get_mut(&ino.0).ok_or(err(libc::ENOENT))?;
            if let Some(m) = mode {
                n.mode = m;
            }
            if let Some(u) = uid {
                n.uid = u;
            }
            if let Some(g) = gid {
                n.gid = g;
            }
            if let Some(size) = size {
                n.log.push(format!("truncate {size}"));
                n.data.truncate(size as usize);
                n.mtime = now();
            }
            if let Some(t) = mtime {
                n.mtime = match t {
                    TimeOrNow::Now => now(),
                    TimeOrNow::SpecificTime(t) => {
                        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
                        (d.as_secs() as i64, d.subsec_nanos())
                    }
                };
            }
            s.attr(ino.0).ok_or(err(libc::ENOENT))
        });
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(err(libc::EPERM));
        }
        let r = self.new_node(parent.0, name, false, mode & 0o7777, req);
        self.entry(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.new_node(parent.0, name, true, mode & 0o7777, req);
        self.entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.with(|s| {
            let ino = s
                .tree
                .get(&parent.0)
                .and_then(|d| d.get(name).copied())
                .ok_or(err(libc::ENOENT))?;
            if s.nodes.get(&ino).is_some_and(|n| n.dir) {
                return Err(err(libc::EISDIR));
            }
            s.meta(Meta::Unlink {
                dir: parent.0,
                name: name.to_os_string(),
            });
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.with(|s| {
            let ino = s
                .tree
                .get(&parent.0)
                .and_then(|d| d.get(name).copied())
                .ok_or(err(libc::ENOENT))?;
            if !s.tree.get(&ino).is_some_and(|d| d.is_empty()) {
                return Err(err(libc::ENOTEMPTY));
            }
            s.meta(Meta::Unlink {
                dir: parent.0,
                name: name.to_os_string(),
            });
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self.with(|s| {
            let flags = flags.bits();
            if flags & !libc::RENAME_NOREPLACE != 0 {
                return Err(err(libc::EINVAL));
            }
            s.tree
                .get(&parent.0)
                .and_then(|d| d.get(name))
                .ok_or(err(libc::ENOENT))?;
            let exists = s
                .tree
                .get(&newparent.0)
                .ok_or(err(libc::ENOENT))?
                .contains_key(newname);
            if exists && flags & libc::RENAME_NOREPLACE != 0 {
                return Err(err(libc::EEXIST));
            }
            s.meta(Meta::Rename {
                dir: parent.0,
                name: name.to_os_string(),
                newdir: newparent.0,
                newname: newname.to_os_string(),
            });
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = self.with(|s| {
            if s.tree
                .get(&newparent.0)
                .ok_or(err(libc::ENOENT))?
                .contains_key(newname)
            {
                return Err(err(libc::EEXIST));
            }
            s.meta(Meta::Link {
                dir: newparent.0,
                name: newname.to_os_string(),
                ino: ino.0,
            });
            Ok(ino.0)
        });
        self.entry(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let r = self.with(|s| {
            s.nodes.get(&ino.0).ok_or(err(libc::ENOENT))?;
            let fh = s.next_fh;
            s.next_fh += 1;
            s.handles.insert(fh, ino.0);
            Ok(fh)
        });
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let r = self.with(|s| {
            if s.faults.fail_reads {
                return Err(eio());
            }
            let n = s.nodes.get(&ino.0).ok_or(err(libc::ENOENT))?;
            let c = &n.data.cur;
            let a = (offset as usize).min(c.len());
            let b = (a + size as usize).min(c.len());
            Ok(c[a..b].to_vec())
        });
        match r {
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = self.with(|s| {
            if s.faults.fail_writes {
                return Err(eio());
            }
            let cur = s.nodes.get(&ino.0).ok_or(err(libc::ENOENT))?.data.cur.len() as u64;
            let end = offset + data.len() as u64;
            if let Some(limit) = s.faults.space_limit {
                if end > cur && s.used() + (end - cur) > limit {
                    return Err(err(libc::ENOSPC));
                }
            }
            let n = s.nodes.get_mut(&ino.0).unwrap();
            n.data.write(offset as usize, data);
            n.log.push(format!("write {offset}+{}", data.len()));
            n.mtime = now();
            s.writes += 1;
            Ok(data.len() as u32)
        });
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state.lock().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.with(|s| {
            if s.faults.fail_fsync {
                return Err(eio());
            }
            let n = s.nodes.get_mut(&ino.0).ok_or(err(libc::ENOENT))?;
            n.data.sync();
            n.log.push(format!("fsync (len {})", n.data.cur.len()));
            s.fsyncs += 1;
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|s| {
            if s.tree.contains_key(&ino.0) {
                Ok(())
            } else {
                Err(err(libc::ENOTDIR))
            }
        }) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.with(|s| {
            let d = s.tree.get(&ino.0).ok_or(err(libc::ENOTDIR))?;
            let mut v: Vec<(u64, FileType, OsString)> = vec![
                (ino.0, FileType::Directory, ".".into()),
                (ROOT, FileType::Directory, "..".into()),
            ];
            for (name, i) in d {
                let kind = if s.nodes.get(i).is_some_and(|n| n.dir) {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                v.push((*i, kind, name.clone()));
            }
            Ok(v)
        });
        match r {
            Ok(v) => {
                for (i, (ino, kind, name)) in v.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.with(|s| {
            if s.faults.fail_fsync {
                return Err(eio());
            }
            s.sync_tree();
            Ok(())
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (used, limit) = {
            let s = self.state.lock();
            (s.used(), s.faults.space_limit.unwrap_or(1 << 40))
        };
        let blocks = limit / 4096;
        let free = limit.saturating_sub(used) / 4096;
        reply.statfs(blocks, free, free, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        match self.with(|s| {
            let n = s.nodes.get_mut(&ino.0).ok_or(err(libc::ENOENT))?;
            n.xattrs.insert(name.to_os_string(), value.to_vec());
            Ok(())
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.with(|s| {
            let n = s.nodes.get(&ino.0).ok_or(err(libc::ENOENT))?;
            n.xattrs.get(name).cloned().ok_or(err(libc::ENODATA))
        }) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(err(libc::ERANGE)),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.with(|s| {
            let n = s.nodes.get(&ino.0).ok_or(err(libc::ENOENT))?;
            let mut v = Vec::new();
            for k in n.xattrs.keys() {
                v.extend_from_slice(k.as_bytes());
                v.push(0);
            }
            Ok(v)
        }) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(err(libc::ERANGE)),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.with(|s| {
            let n = s.nodes.get_mut(&ino.0).ok_or(err(libc::ENOENT))?;
            n.xattrs.remove(name).map(|_| ()).ok_or(err(libc::ENODATA))
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self.new_node(parent.0, name, false, mode & 0o7777, req);
        let r = r.and_then(|ino| {
            self.with(|s| {
                let fh = s.next_fh;
                s.next_fh += 1;
                s.handles.insert(fh, ino);
                Ok((s.attr(ino).unwrap(), fh))
            })
        });
        match r {
            Ok((a, fh)) => reply.created(
                &TTL,
                &a,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }
}

/// Cuts the power of a layer (see [`LayerMount::cutter`]).
pub struct Cutter {
    state: Arc<Mutex<State>>,
}

impl Cutter {
    /// The power cut: the image of what survives; every later operation fails with EIO.
    pub fn cut(&self, seed: u64) -> Image {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut rng = move || {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        self.state.lock().cut(&mut rng)
    }

    /// A cut that leaves the layer running (for tests of the layer itself).
    pub fn cut_keep_alive(&self, seed: u64) -> Image {
        let img = self.cut(seed);
        self.state.lock().dead = false;
        img
    }
}

/// A live layer mounted at a directory.
pub struct LayerMount {
    pub dir: PathBuf,
    state: Arc<Mutex<State>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn fuse_mount(dir: &Path) -> OwnedFd {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .expect("open /dev/fuse");
    let fd: OwnedFd = dev.into();
    let data = CString::new(format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
        fd.as_raw_fd()
    ))
    .unwrap();
    let src = CString::new("powercut").unwrap();
    let ty = CString::new("fuse.powercut").unwrap();
    let target = CString::new(dir.as_os_str().as_bytes()).unwrap();
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            ty.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr() as *const libc::c_void,
        )
    };
    assert_eq!(
        r,
        0,
        "mount the power-cut layer on {}: {}",
        dir.display(),
        std::io::Error::last_os_error()
    );
    fd
}

impl LayerMount {
    /// Mounts a layer holding `image` on `dir` (every file written "before the boot").
    pub fn mount(dir: &Path, image: &Image) -> LayerMount {
        let state = Arc::new(Mutex::new(State::from_image(image)));
        let fd = fuse_mount(dir);
        let fs = LayerFs {
            state: state.clone(),
        };
        let mut config = fuser::Config::default();
        config.n_threads = Some(4);
        config.clone_fd = true;
        let session = fuser::Session::from_fd(fs, fd, fuser::SessionACL::All, config)
            .expect("FUSE handshake of the power-cut layer");
        let thread = std::thread::spawn(move || {
            let _ = session.run();
        });
        LayerMount {
            dir: dir.to_path_buf(),
            state,
            thread: Some(thread),
        }
    }

    /// A handle that can cut the power from another thread.
    pub fn cutter(&self) -> Cutter {
        Cutter {
            state: self.state.clone(),
        }
    }

    /// The power cut: the image of what survives; every later operation fails with EIO.
    pub fn cut(&self, seed: u64) -> Image {
        self.cutter().cut(seed)
    }

    pub fn set_faults(&self, f: Faults) {
        self.state.lock().faults = f;
    }

    /// Bytes held by all files.
    pub fn used(&self) -> u64 {
        self.state.lock().used()
    }

    /// (writes, file fsyncs, directory fsyncs) served so far.
    pub fn counters(&self) -> (u64, u64, u64) {
        let s = self.state.lock();
        (s.writes, s.fsyncs, s.dirsyncs)
    }

    /// Unmounts and waits for the session to end.
    pub fn unmount(mut self) {
        self.unmount_inner();
    }

    fn unmount_inner(&mut self) {
        let c = CString::new(self.dir.as_os_str().as_bytes()).unwrap();
        let mut ok = false;
        for _ in 0..100 {
            if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !ok {
            // Still in use (a deflatefs mount on top, e.g. when a test failed): detach it and
            // let the session serve its last user in the background instead of waiting.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            self.thread.take();
            return;
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LayerMount {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.unmount_inner();
        }
    }
}
