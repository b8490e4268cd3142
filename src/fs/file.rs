//! Open-file state: plain files pass straight through; containers get chunked write-back.
//!
//! This module holds the types (the mount's [`FileContext`], [`OpenFile`], [`ContainerFile`]
//! and its state) and the lock rules below; the work is in its children, one concern each:
//! `read` (reads and chunk loading), `readahead` (the prefetch worker's batches), `writeback`
//! (writes, submission, landing, flush, truncate), `compact` (the rewrite of an open
//! container), `copy` (copy_file_range by member copy) and `digests` (SHA-256 and BLAKE3).
//!
//! Write-back of a container works like this:
//! - `write` copies into per-chunk dirty buffers taken from the dirty pool (a full pool makes the
//!   writer flush and wait: that bounds unwritten data). A chunk that a write fills to its end is
//!   submitted to the engine at once, so sequential writers compress in parallel across queues
//!   while they go on writing.
//! - A submitted job carries a sequence number. Its completion callback (on an engine worker)
//!   frames the gzip member and appends it to the container in sequence order, so the container
//!   stays in write order (and `zcat` of a sequentially written file gives its content). The
//!   callback only takes the store lock, never the write-state lock, and never waits on the engine:
//!   that is what keeps the pipeline free of deadlock.
//! - `flush`/`fsync` submit what is dirty, wait for the file's jobs to land, and commit the index.
//! - A chunk that was only appended to since it was last stored is written as a non-RESET piece
//!   holding just the new bytes (see docs/FORMAT.md), so a log fsync'd after every line stays a
//!   valid in-order gzip stream.
//!
//! # Locks
//!
//! Per open container, in the order they are taken (a thread holding one may take a later one,
//! never an earlier one):
//!
//! 1. `compaction` (`try_compaction_turn`): one compaction of the file at a time.
//! 2. `change_turn`: serialises everything that changes the file: `write`, `truncate`, `flush`
//!    and `fsync`, the periodic commit and `relieve_pressure` (both only with `try_lock`),
//!    compaction, copies into and out of it, the digests' one-pass fallback. It may be held
//!    across disk I/O, decoding, engine waits and fdatasync. Readers and `stat` never take it.
//! 3. `state` ([`WriteState`]: size, resident chunks, the write cursor): held only for short
//!    sections that copy bytes or update maps (a chunk is hashed from a snapshot, with `state`
//!    released). `stat` does not take it: it reads `size_for_stat`, a copy of the size stored
//!    in the same hold that changes it. Its holder lets go of it (with
//!    `MutexGuard::unlocked`) around every read or decode of a stored chunk, every wait for the
//!    buffer pools or the engine, compression of small pieces, and fdatasync. Because only the
//!    holder of `change_turn` changes what `state` holds, the holder finds it as it left it.
//! 4. `store.landing` (`writeback::LandingTurn`): one appender to the container at a time, a
//!    thread landing compressed members or a copy; engine completions only `try_lock` it (its
//!    holder lands their members too). Its holder writes members with `store.inner` released.
//! 5. `store.inner` ([`StoreInner`]: the container, landing order, jobs in flight, errors, the
//!    reading descriptor): short sections, plus the write of a commit record (a page-cache
//!    write) and a copy's pieces. Never across a landed member's write, fdatasync (a
//!    checkpoint's is done first, with it released: `Container::commit_needs_sync`) or
//!    decoding.
//! 6. Leaf locks, taken alone: `readahead.pending`, the chunk cache's, the digest memo's.
//!
//! What a reader relies on: it notes under `state` which chunks are resident (and copies their
//! bytes) and, for the others, the newest job in flight; then, without `state`, it waits for
//! those jobs and decodes. A writer moves a chunk from "resident" to "in flight" within one hold
//! of `state`, and a truncation shrinks the size in the same hold that drops chunks beyond it,
//! so a read always sees every write that completed before it began. Index pieces and the
//! descriptor they are read through are taken in one hold of `store.inner`, so a compaction
//! that switches containers meanwhile never mixes them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::cache::{ChunkCache, ChunkKey};
use super::error::{FsError, FsResult};
use crate::container::{
    self, Container, IndexEntry, PieceKind, StoredLayout, DATA_HEADER_LEN, MAX_CHUNK_PIECES,
    MEMBER_TRAILER_LEN,
};
use crate::digest::{chunk_cv, ChainingValue};
use crate::engine::pool::{BufferPool, PoolBuf};
use crate::engine::{Completion, Done, Engine, Job, Op};

mod compact;
mod copy;
mod digests;
mod holes;
mod read;
mod readahead;
mod writeback;
pub use copy::MemberCopy;
use digests::ShaTracker;

/// What every open container needs from the mount.
pub struct FileContext {
    pub engine: Arc<Engine>,
    /// Input and output buffers of decompression jobs, and outputs of compression jobs (the
    /// `pool=` option): the fixed pool the engine's queues work from.
    pub job_pool: Arc<BufferPool>,
    /// Budget for unwritten data (the `dirty=` option).
    pub dirty_pool: Arc<BufferPool>,
    pub cache: Arc<ChunkCache>,
    pub level: u32,
    /// Whether the write path keeps the digests' state (`digests=on|off`): the running SHA-256
    /// and each index entry's BLAKE3 chaining value. Off, entries get the all-zero ("not
    /// computed") value and no commit records a SHA-256 state, so the digests are computed from
    /// the data when they are read (see `digests.rs`).
    pub digests: bool,
    /// Chunks decompressed ahead of a sequential reader.
    pub readahead_chunks: usize,
    /// Source of cache epochs, unique across every container state of the mount: a container
    /// opened again, reset or compacted reuses member offsets, and its cached chunks of before
    /// must never match (a stale hit here once returned old bytes after a compaction).
    pub epochs: std::sync::atomic::AtomicU64,
    /// When each damaged file (by node) was last logged: one line per file per minute, however
    /// often it is read or opened.
    pub damage_log: Mutex<HashMap<u64, Instant>>,
    /// Stored pieces read straight into place (`FileContext::read_stored_in_place`), for
    /// `user.deflatefs.engine`.
    pub stored_in_place: AtomicU64,
    /// The worker that runs read-ahead (reads members and submits their decoding), so a
    /// reader never waits for read-ahead's I/O or for room in the engine's queues.
    pub prefetch: super::background::Background,
}

impl FileContext {
    fn next_epoch(&self) -> u64 {
        self.epochs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Logs damage of file `node` at error level, at most once a minute per file.
    pub fn log_damage(&self, node: u64, line: impl FnOnce() -> String) {
        let now = Instant::now();
        let mut log = self.damage_log.lock();
        if log
            .get(&node)
            .is_some_and(|t| now.duration_since(*t) < DAMAGE_LOG_INTERVAL)
        {
            return;
        }
        if log.len() >= 4096 {
            log.retain(|_, t| now.duration_since(*t) < DAMAGE_LOG_INTERVAL);
        }
        log.insert(node, now);
        drop(log);
        tracing::error!("{}", line());
    }
}

/// See [`FileContext::log_damage`].
const DAMAGE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The state shared by every handle open on one inode.
pub enum OpenFile {
    Plain(PlainFile),
    Container(ContainerFile),
}

impl OpenFile {
    pub fn read(&self, offset: u64, size: usize) -> FsResult<Vec<u8>> {
        let mut out = Vec::new();
        self.read_into(offset, size, &mut out)?;
        Ok(out)
    }

    /// Reads up to `size` bytes at `offset`, replacing the contents of `out` (whose capacity is
    /// reused: a FUSE worker keeps one buffer for all its replies instead of faulting in fresh
    /// pages for every request).
    pub fn read_into(&self, offset: u64, size: usize, out: &mut Vec<u8>) -> FsResult<()> {
        out.clear();
        match self {
            OpenFile::Plain(p) => p.read_into(offset, size, out),
            OpenFile::Container(c) => c.read_into(offset, size, out),
        }
    }

    pub fn write(&self, offset: u64, data: &[u8], append: bool) -> FsResult<usize> {
        match self {
            OpenFile::Plain(p) => p.write(offset, data, append),
            OpenFile::Container(c) => c.write(offset, data, append),
        }
    }

    /// Makes everything written so far part of a committed state (close and flush semantics).
    pub fn flush(&self) -> FsResult<()> {
        match self {
            OpenFile::Plain(_) => Ok(()),
            OpenFile::Container(c) => c.flush(false),
        }
    }

    /// flush, then make it durable.
    pub fn fsync(&self, datasync: bool) -> FsResult<()> {
        match self {
            OpenFile::Plain(p) => {
                if datasync {
                    p.file.sync_data()?
                } else {
                    p.file.sync_all()?
                }
                Ok(())
            }
            OpenFile::Container(c) => c.flush(true),
        }
    }

    pub fn truncate(&self, size: u64) -> FsResult<()> {
        match self {
            OpenFile::Plain(p) => Ok(p.file.set_len(size)?),
            OpenFile::Container(c) => c.truncate(size),
        }
    }

    /// Zeros `[offset, offset + len)` below the size, giving whole chunks' space back (a
    /// container's chunks become holes); the size does not change.
    pub fn punch_hole(&self, offset: u64, len: u64) -> FsResult<()> {
        match self {
            OpenFile::Plain(p) => super::sys::fallocate(
                &p.file,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ),
            OpenFile::Container(c) => c.punch_hole(offset, len),
        }
    }

    /// lseek(2) SEEK_DATA (`data`) or SEEK_HOLE from `offset`; for a container at chunk
    /// granularity.
    pub fn seek_data_or_hole(&self, offset: u64, data: bool) -> FsResult<u64> {
        match self {
            OpenFile::Plain(p) => super::sys::seek_data_or_hole(&p.file, offset, data),
            OpenFile::Container(c) => c.seek_data_or_hole(offset, data),
        }
    }

    /// Logical size, if this state knows it better than the backing file does.
    pub fn logical_size(&self) -> Option<u64> {
        match self {
            OpenFile::Plain(_) => None,
            OpenFile::Container(c) => Some(c.size_for_stat.load(Ordering::Acquire)),
        }
    }

    /// True while unwritten data or uncommitted appends remain.
    pub fn has_unflushed(&self) -> bool {
        match self {
            OpenFile::Plain(_) => false,
            OpenFile::Container(c) => c.has_unflushed(),
        }
    }

    /// Writes back dirty chunks and gives clean cached ones back to the dirty pool, without
    /// blocking if the file is busy. Used by the background flusher under memory pressure.
    pub fn relieve_pressure(&self) {
        if let OpenFile::Container(c) = self {
            c.relieve_pressure()
        }
    }
}

/// A non-container file served byte for byte.
pub struct PlainFile {
    pub file: File,
}

impl PlainFile {
    fn read_into(&self, offset: u64, size: usize, buf: &mut Vec<u8>) -> FsResult<()> {
        buf.resize(size, 0);
        let mut done = 0;
        while done < size {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(done);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8], append: bool) -> FsResult<usize> {
        let offset = if append {
            self.file.metadata()?.len()
        } else {
            offset
        };
        self.file.write_all_at(data, offset)?;
        Ok(data.len())
    }
}

/// Pieces up to this long are compressed on the writer's thread (`Engine::run_now`).
const INLINE_PIECE_MAX: usize = 16 << 10;

/// [`DirtyChunk::changed`] when nothing changed.
const UNCHANGED: (usize, usize) = (usize::MAX, 0);

/// One chunk held in memory by the writer.
/// A resident chunk's buffer. The holder of the change turn (the only thread that changes or
/// removes resident chunks) may take a [`ChunkBuf::snapshot`] of it and read it with `state`
/// released, for work too long to do under that lock (hashing a chunk for a partial piece);
/// the snapshot is dropped before the same thread changes the chunk again.
struct ChunkBuf(Arc<PoolBuf>);

impl ChunkBuf {
    fn new(buf: PoolBuf) -> Self {
        ChunkBuf(Arc::new(buf))
    }

    /// The bytes, to change. Panics if a snapshot is still alive: that would be a change while
    /// its holder reads, which the change turn rules out.
    fn bytes_mut(&mut self) -> &mut PoolBuf {
        Arc::get_mut(&mut self.0).expect("a chunk snapshot outlived its change turn")
    }

    /// A shared handle on the bytes, readable without `state`.
    fn snapshot(&self) -> Arc<PoolBuf> {
        Arc::clone(&self.0)
    }

    /// The buffer itself, handed to the engine. Panics like [`ChunkBuf::bytes_mut`].
    fn into_inner(self) -> PoolBuf {
        Arc::into_inner(self.0).expect("a chunk snapshot outlived its change turn")
    }
}

impl std::ops::Deref for ChunkBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

struct DirtyChunk {
    /// Capacity: the chunk size; bytes `[..valid]` are the chunk's content.
    buf: ChunkBuf,
    valid: usize,
    /// Bytes `[..persisted]` equal what the container already holds for this chunk.
    persisted: usize,
    /// Content changed since it was last submitted.
    dirty: bool,
    /// The chunk must be replaced as a whole (RESET) by the next piece: bytes beyond `valid` that
    /// the container holds must not come back (truncation), or what it holds is not a prefix
    /// of `buf`.
    rewrite: bool,
    /// Bytes `[changed.0..changed.1]` hold every change since the chunk was last submitted
    /// (`changed.0 > changed.1` when nothing changed). With `persisted > 0` and no `rewrite`, the
    /// next piece need only cover them: an overlay piece when they start below `persisted`, an
    /// appended piece when they start at it.
    changed: (usize, usize),
    /// The chunk was read from the container to be changed in place (not written whole by a
    /// streaming writer): when it is submitted, a clean copy stays resident, so the next small
    /// write to it (a database rewriting the same pages) needs no read and decode.
    keep_after_submit: bool,
}

struct WriteState {
    size: u64,
    dirty: BTreeMap<u64, DirtyChunk>,
    next_seq: u64,
    /// End of the last read, to recognise a sequential reader.
    last_read_end: u64,
    /// Running SHA-256 of the content while it is written front to back.
    sha: ShaTracker,
    /// Bumped by every change of content or size (a digest computed without holding this
    /// state is only kept if the generation did not move meanwhile).
    generation: u64,
    /// Whether a partial tail chunk was already handed to the engine early (see `write`).
    early_tail_sent: bool,
}

enum Ready {
    Member {
        output: PoolBuf,
        len: usize,
        entry: IndexEntry,
        chunk: u64,
    },
    Failed {
        error: FsError,
        chunk: u64,
    },
}

struct StoreInner {
    container: Container,
    next_append: u64,
    ready: BTreeMap<u64, Ready>,
    inflight: u64,
    inflight_chunks: HashMap<u64, u32>,
    /// For each chunk with jobs in flight, the sequence number of its newest one: a reader that
    /// found the chunk in flight waits for that job (`next_append` past it), not for the chunk
    /// to fall idle, which a writer rewriting it in a loop could put off indefinitely.
    newest_inflight: HashMap<u64, u64>,
    /// A descriptor of the container's file for reading members without holding this lock.
    /// Replaced together with `container` by a compaction, so pieces taken from the index
    /// and this descriptor, taken under one hold of the lock, always belong together.
    reader: Arc<File>,
    /// First write-back error since the last flush; reported by the next flush or fsync (and
    /// by every write until then).
    error: Option<FsError>,
    /// Chunks whose latest content could not be stored (the engine failed the job or the append
    /// failed: ENOSPC, EIO). Nothing is committed while any remain, so the container keeps its
    /// last committed state; they read as EIO unless still in memory, a resident one is retried
    /// at every flush, and rewriting a chunk whole or truncating it away clears it.
    lost: BTreeMap<u64, FsError>,
    /// An fdatasync of the container failed: what it covered may not be on disk, and a later
    /// fdatasync would not say so, so every later fsync of this open file fails too.
    sync_failed: Option<FsError>,
    /// Changes whenever the container is reset, so cached chunk versions of before never match.
    epoch: u64,
}

struct Store {
    /// The landing turn ([`writeback::LandingTurn`]): one appender at a time, taken before
    /// `inner`.
    landing: Mutex<()>,
    inner: Mutex<StoreInner>,
    landed: Condvar,
}

/// Read-ahead jobs in flight for a file, so a reader waits for them instead of redoing the work.
#[derive(Default)]
struct Readahead {
    pending: Mutex<HashSet<u64>>,
    done: Condvar,
}

/// A container open for reading and writing.
pub struct ContainerFile {
    node: u64,
    label: String,
    ctx: Arc<FileContext>,
    /// Taken first by everything that changes the file: write, truncate, flush and fsync, the
    /// periodic commit, compaction, copies into it. It may be held across disk I/O, engine
    /// waits and fdatasync; readers never take it. See "Locks" in the module docs.
    change_turn: Mutex<()>,
    /// Size, dirty chunks and the write cursor. Held only for short sections that copy bytes
    /// or update maps, never across disk I/O, decoding, engine waits or fdatasync: every
    /// reader and `stat` takes it.
    state: Mutex<WriteState>,
    /// `state`'s size, stored in the same hold of `state` that changes it: what `stat` reads,
    /// so that it never waits for `state`.
    size_for_stat: AtomicU64,
    store: Arc<Store>,
    chunk_log2: u8,
    readahead: Arc<Readahead>,
    /// Digest state that is not part of the write path (see `digests.rs`).
    digests: Box<digests::DigestState>,
    /// Held by the one compaction of this file that may run (see [`Self::try_compaction_turn`]).
    compaction: Mutex<()>,
}

impl ContainerFile {
    /// Wraps an opened container. `label` names the file in log lines.
    pub fn new(
        node: u64,
        label: String,
        ctx: Arc<FileContext>,
        container: Container,
    ) -> FsResult<ContainerFile> {
        let reader = Arc::new(container.file().try_clone()?);
        let epoch = ctx.next_epoch();
        let chunk_log2 = container.chunk_log2();
        let size = container.size();
        let sha = ShaTracker::from_container(&container);
        let digests = digests::DigestState::new(container.file());
        Ok(ContainerFile {
            node,
            label,
            ctx,
            state: Mutex::new(WriteState {
                size,
                dirty: BTreeMap::new(),
                next_seq: 0,
                last_read_end: u64::MAX,
                sha,
                generation: 0,
                early_tail_sent: false,
            }),
            store: Arc::new(Store {
                landing: Mutex::new(()),
                inner: Mutex::new(StoreInner {
                    container,
                    next_append: 0,
                    ready: BTreeMap::new(),
                    inflight: 0,
                    inflight_chunks: HashMap::new(),
                    newest_inflight: HashMap::new(),
                    reader,
                    error: None,
                    lost: BTreeMap::new(),
                    sync_failed: None,
                    epoch,
                }),
                landed: Condvar::new(),
            }),
            change_turn: Mutex::new(()),
            size_for_stat: AtomicU64::new(size),
            chunk_log2,
            readahead: Arc::new(Readahead::default()),
            digests,
            compaction: Mutex::new(()),
        })
    }

    fn chunk_size(&self) -> usize {
        1 << self.chunk_log2
    }

    fn reader(&self) -> Arc<File> {
        self.store.inner.lock().reader.clone()
    }

    /// Whether the container has enough stale bytes or pieces to be worth compacting.
    pub fn wants_compaction(&self) -> bool {
        self.store.inner.lock().container.needs_compaction()
    }

    /// The right to compact this file, if no compaction of it is running. Two at once would
    /// share the temporary file's name: the second would remove the first's temporary and the
    /// first rename the second's into place, leaving the open state writing to a file no name
    /// leads to (fsync'd data lost at the next crash).
    pub fn try_compaction_turn(&self) -> Option<MutexGuard<'_, ()>> {
        self.compaction.try_lock()
    }

    /// Makes every later fsync of this file fail with `e`: what it would make durable may not
    /// survive a power cut (the directory entry of a compacted copy could not be synced).
    pub fn fail_syncs(&self, e: FsError) {
        self.store.inner.lock().sync_failed.get_or_insert(e);
    }

    /// Container statistics for `user.deflatefs.info`-style reporting and `du`.
    pub fn with_container<T>(&self, f: impl FnOnce(&Container) -> T) -> T {
        f(&self.store.inner.lock().container)
    }

    fn has_unflushed(&self) -> bool {
        let st = self.state.lock();
        if st.dirty.values().any(|d| d.dirty) {
            return true;
        }
        let s = self.store.inner.lock();
        s.inflight > 0
            || s.container.has_pending()
            || s.container.size() != st.size
            || !s.lost.is_empty()
    }
}
