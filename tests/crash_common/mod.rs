//! The workload and the model of the crash tests (`tests/crash_kill.rs`, `tests/crash_powercut.rs`).
//!
//! A single thread runs random operations on a few files in one directory of a mount: writes,
//! overwrites, appends, truncates, fsync, fdatasync, close and reopen, renames (sometimes over
//! another file), creates, unlinks and fsyncs of the directory. It stops at the first error (the
//! crash). The model keeps, for every file, each version it went through as a list of chunk
//! hashes, so that what a remount shows can be checked against:
//! - the versions since the last point the crash keeps: fsync, fdatasync or a successful close
//!   for a daemon crash (the kernel keeps what reached the backing files), only fsync/fdatasync
//!   for a power cut;
//! - every version of the cycle, chunk by chunk, to tell a "mix of versions" from garbage.
//!
//! The operation in flight at the crash may or may not have happened: both outcomes are allowed.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Chunk size the crash tests mount with (`chunk=16k`).
pub const CHUNK: usize = 16 << 10;
/// Files stay below this size.
pub const MAX_SIZE: usize = 1536 << 10;
/// Names the workload uses.
pub const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

/// Deterministic generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

/// One version of a file: its size and the hash of each chunk's bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Version {
    pub size: usize,
    pub chunks: Vec<u64>,
}

impl Version {
    pub fn of(content: &[u8]) -> Version {
        Version {
            size: content.len(),
            chunks: content.chunks(CHUNK).map(hash_bytes).collect(),
        }
    }
}

/// What the model knows about one file.
#[derive(Clone, Debug)]
pub struct FileModel {
    pub content: Vec<u8>,
    /// Versions since the last fsync, fdatasync or successful close (a daemon crash keeps one
    /// of these).
    pub since_ack: Vec<Version>,
    /// Versions since the last fsync or fdatasync (a power cut keeps one of these).
    pub since_sync: Vec<Version>,
    /// Every version of this cycle.
    pub all: Vec<Version>,
    /// Whether an fsync/fdatasync ever succeeded (so its container header is durable).
    pub ever_synced: bool,
}

impl FileModel {
    fn new(content: Vec<u8>, synced: bool) -> FileModel {
        let v = Version::of(&content);
        FileModel {
            content,
            since_ack: vec![v.clone()],
            since_sync: vec![v.clone()],
            all: vec![v],
            ever_synced: synced,
        }
    }

    fn push(&mut self, v: Version) {
        self.since_ack.push(v.clone());
        self.since_sync.push(v.clone());
        self.all.push(v);
    }
}

/// A directory operation, as the model records it.
#[derive(Clone, Debug)]
pub enum MetaOp {
    Create { name: String, id: usize },
    Rename { from: String, to: String },
    Unlink { name: String },
}

/// Applies a directory operation to a name map.
pub fn apply_meta(names: &mut BTreeMap<String, usize>, op: &MetaOp) {
    match op {
        MetaOp::Create { name, id } => {
            names.insert(name.clone(), *id);
        }
        MetaOp::Rename { from, to } => {
            if let Some(id) = names.remove(from) {
                names.insert(to.clone(), id);
            }
        }
        MetaOp::Unlink { name } => {
            names.remove(name);
        }
    }
}

/// The model of the directory.
#[derive(Default)]
pub struct Model {
    pub files: Vec<FileModel>,
    pub names: BTreeMap<String, usize>,
    /// Names as of the last successful fsync of the directory, and what changed since.
    pub names_at_dirsync: BTreeMap<String, usize>,
    pub meta_since_dirsync: Vec<MetaOp>,
    /// The directory operation in flight at the crash, if any.
    pub inflight_meta: Option<MetaOp>,
}

impl Model {
    /// Starts a cycle from what was found on the mount: every file's versions restart at its
    /// current content, which is now the durable state.
    pub fn restart(&mut self, found: &BTreeMap<String, Vec<u8>>) {
        self.files.clear();
        self.names.clear();
        for (name, content) in found {
            self.files.push(FileModel::new(content.clone(), true));
            self.names.insert(name.clone(), self.files.len() - 1);
        }
        self.names_at_dirsync = self.names.clone();
        self.meta_since_dirsync.clear();
        self.inflight_meta = None;
    }
}

/// Counters of a workload run.
#[derive(Default, Debug, Clone, Copy)]
pub struct Stats {
    pub ops: u64,
    pub writes: u64,
    pub truncates: u64,
    pub punches: u64,
    pub fsyncs: u64,
    pub closes: u64,
    pub renames: u64,
    pub creates: u64,
    pub unlinks: u64,
    pub dirsyncs: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.ops += o.ops;
        self.writes += o.writes;
        self.truncates += o.truncates;
        self.punches += o.punches;
        self.fsyncs += o.fsyncs;
        self.closes += o.closes;
        self.renames += o.renames;
        self.creates += o.creates;
        self.unlinks += o.unlinks;
        self.dirsyncs += o.dirsyncs;
    }
}

fn fill(len: usize, rng: &mut Rng) -> Vec<u8> {
    // Compressible text with some random bytes, so both stored and deflate pieces occur.
    let mut v = Vec::with_capacity(len);
    let stamp = rng.next();
    while v.len() < len {
        if rng.chance(40) {
            v.extend_from_slice(&rng.next().to_le_bytes());
        } else {
            v.extend_from_slice(format!("{stamp:016x} line {} ", v.len()).as_bytes());
        }
    }
    v.truncate(len);
    v
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Runs random operations in `dir` until one fails (or `max_ops` were done); returns the error
/// that stopped it (None if it ran out of operations) and the counters. Every operation is
/// recorded in `model` before it is issued, as a possible outcome.
pub fn run_workload(
    dir: &Path,
    model: &mut Model,
    rng: &mut Rng,
    max_ops: u64,
) -> (Option<io::Error>, Stats) {
    let mut open: HashMap<usize, File> = HashMap::new();
    let mut st = Stats::default();
    let err = loop {
        if st.ops >= max_ops {
            break None;
        }
        st.ops += 1;
        if let Err(e) = step(dir, model, rng, &mut open, &mut st) {
            break Some(e);
        }
    };
    drop(open); // closes every descriptor: a dead mount answers at once
    (err, st)
}

fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

/// The workload's open descriptor of file `id`, opened (read-write, at `path`) if it has none.
fn open_for<'a>(
    open: &'a mut HashMap<usize, File>,
    id: usize,
    path: &Path,
) -> io::Result<&'a File> {
    Ok(match open.entry(id) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => e.insert(open_rw(path)?),
    })
}

fn step(
    dir: &Path,
    model: &mut Model,
    rng: &mut Rng,
    open: &mut HashMap<usize, File>,
    st: &mut Stats,
) -> io::Result<()> {
    let path = |n: &str| -> PathBuf { dir.join(n) };
    // Fewer than two files: create one.
    let roll = if model.names.len() < 2 {
        0
    } else {
        1 + rng.below(100)
    };
    let names: Vec<String> = model.names.keys().cloned().collect();
    let pick = if names.is_empty() {
        String::new()
    } else {
        names[rng.below(names.len() as u64) as usize].clone()
    };
    let id = model.names.get(&pick).copied().unwrap_or(0);
    match roll {
        0..=2 => {
            // create
            let free: Vec<&str> = NAMES
                .iter()
                .copied()
                .filter(|n| !model.names.contains_key(*n))
                .collect();
            if free.is_empty() {
                return Ok(());
            }
            let name = free[rng.below(free.len() as u64) as usize].to_string();
            model.files.push(FileModel::new(Vec::new(), false));
            let id = model.files.len() - 1;
            let op = MetaOp::Create {
                name: name.clone(),
                id,
            };
            model.inflight_meta = Some(op.clone());
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path(&name))?;
            model.inflight_meta = None;
            apply_meta(&mut model.names, &op);
            model.meta_since_dirsync.push(op);
            open.insert(id, f);
            st.creates += 1;
        }
        53..=55 => {
            // punch a hole: whole chunks become holes, parts of chunks are zeroed
            let f = open_for(open, id, &path(&pick))?;
            let fm = &mut model.files[id];
            let size = fm.content.len();
            let off = rng.below(size as u64 + 1) as usize;
            let len = 1 + rng.below(3 * CHUNK as u64) as usize;
            let mut next = fm.content.clone();
            let end = (off + len).min(size);
            if off < end {
                next[off..end].fill(0);
            }
            fm.push(Version::of(&next));
            // SAFETY: no pointers; `f` keeps its descriptor open across the call.
            let r = unsafe {
                libc::fallocate(
                    std::os::fd::AsRawFd::as_raw_fd(f),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off as i64,
                    len as i64,
                )
            };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
            fm.content = next;
            st.punches += 1;
        }
        3..=52 => {
            // write: overwrite, append, whole chunk, or beyond the end
            let f = open_for(open, id, &path(&pick))?;
            let fm = &mut model.files[id];
            let size = fm.content.len();
            let (off, len) = match rng.below(5) {
                0 | 4 => (size, 1 + rng.below(96 << 10) as usize),
                1 => {
                    let c = rng.below((size / CHUNK + 1) as u64) as usize;
                    (c * CHUNK, CHUNK)
                }
                2 => (
                    rng.below(size as u64 + 1) as usize,
                    1 + rng.below(200) as usize,
                ),
                _ => (
                    rng.below(size as u64 + (32 << 10)) as usize,
                    1 + rng.below(64 << 10) as usize,
                ),
            };
            if off + len > MAX_SIZE {
                return Ok(());
            }
            let data = fill(len, rng);
            let mut next = fm.content.clone();
            if next.len() < off + len {
                next.resize(off + len, 0);
            }
            next[off..off + len].copy_from_slice(&data);
            fm.push(Version::of(&next));
            f.write_all_at(&data, off as u64)?;
            fm.content = next;
            st.writes += 1;
        }
        56..=61 => {
            // truncate
            let f = open_for(open, id, &path(&pick))?;
            let fm = &mut model.files[id];
            let size = fm.content.len();
            let new = if rng.chance(30) {
                rng.below(size as u64 + 1) as usize
            } else if rng.chance(70) {
                size.saturating_sub(rng.below(CHUNK as u64 * 2) as usize)
            } else {
                (size + rng.below(40 << 10) as usize).min(MAX_SIZE)
            };
            let mut next = fm.content.clone();
            next.resize(new, 0);
            fm.push(Version::of(&next));
            f.set_len(new as u64)?;
            fm.content = next;
            st.truncates += 1;
        }
        62..=73 => {
            // fsync or fdatasync
            let Some(f) = open.get(&id) else {
                return Ok(());
            };
            if rng.chance(50) {
                f.sync_all()?;
            } else {
                f.sync_data()?;
            }
            let fm = &mut model.files[id];
            let v = Version::of(&fm.content);
            fm.since_ack = vec![v.clone()];
            fm.since_sync = vec![v];
            fm.ever_synced = true;
            st.fsyncs += 1;
        }
        74..=81 => {
            // close (a successful close commits), sometimes reopened with O_TRUNC
            if let Some(f) = open.remove(&id) {
                let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
                if unsafe { libc::close(fd) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                let fm = &mut model.files[id];
                fm.since_ack = vec![Version::of(&fm.content)];
                st.closes += 1;
            }
            if rng.chance(5) {
                let fm = &mut model.files[id];
                fm.push(Version::of(&[]));
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .truncate(true)
                    .open(path(&pick))?;
                fm.content.clear();
                open.insert(id, f);
            }
        }
        82..=86 => {
            // rename, usually to a free name, sometimes over another file
            let free: Vec<&str> = NAMES
                .iter()
                .copied()
                .filter(|n| !model.names.contains_key(*n))
                .collect();
            let to = if !free.is_empty() && rng.chance(75) {
                free[rng.below(free.len() as u64) as usize].to_string()
            } else {
                NAMES[rng.below(NAMES.len() as u64) as usize].to_string()
            };
            if to == pick {
                return Ok(());
            }
            let op = MetaOp::Rename {
                from: pick.clone(),
                to: to.clone(),
            };
            model.inflight_meta = Some(op.clone());
            std::fs::rename(path(&pick), path(&to))?;
            model.inflight_meta = None;
            if let Some(gone) = model.names.get(&to).copied() {
                open.remove(&gone);
            }
            apply_meta(&mut model.names, &op);
            model.meta_since_dirsync.push(op);
            st.renames += 1;
        }
        87..=88 => {
            // unlink
            if model.names.len() < 4 {
                return Ok(());
            }
            let op = MetaOp::Unlink { name: pick.clone() };
            model.inflight_meta = Some(op.clone());
            std::fs::remove_file(path(&pick))?;
            model.inflight_meta = None;
            open.remove(&id);
            apply_meta(&mut model.names, &op);
            model.meta_since_dirsync.push(op);
            st.unlinks += 1;
        }
        _ => {
            fsync_dir(dir)?;
            model.names_at_dirsync = model.names.clone();
            model.meta_since_dirsync.clear();
            st.dirsyncs += 1;
        }
    }
    Ok(())
}

/// Reads every regular file of `dir`: name -> content, or the error reading it gave.
pub fn read_dir_files(dir: &Path) -> BTreeMap<String, io::Result<Vec<u8>>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("list the mount") {
        let e = e.expect("directory entry");
        let name = e.file_name().to_string_lossy().into_owned();
        out.insert(name, std::fs::read(e.path()));
    }
    out
}

/// How a file found after a crash compares with the versions allowed for it.
pub fn judge(found: &[u8], allowed: &[Version], all: &[Version]) -> Result<(), String> {
    let v = Version::of(found);
    if allowed.contains(&v) {
        return Ok(());
    }
    // Not an allowed version: find out whether each chunk is at least some version of it.
    let mut garbage = Vec::new();
    for (i, h) in v.chunks.iter().enumerate() {
        if !all.iter().any(|a| a.chunks.get(i) == Some(h)) {
            garbage.push(i);
        }
    }
    let sizes: BTreeSet<usize> = allowed.iter().map(|a| a.size).collect();
    let in_cycle = all.contains(&v);
    Err(format!(
        "size {} not an allowed version (allowed sizes {:?}); {}; chunks matching no version: {:?}",
        v.size,
        sizes,
        if in_cycle {
            "it is an OLDER version of this cycle (acknowledged data lost)"
        } else {
            "it is no version at all"
        },
        garbage
    ))
}
