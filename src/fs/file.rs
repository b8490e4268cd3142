//! Open-file state: plain files pass straight through; containers get chunked write-back.
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
//!    sections that copy bytes or update maps. Its holder lets go of it (with
//!    `MutexGuard::unlocked`) around every read or decode of a stored chunk, every wait for the
//!    buffer pools or the engine, compression of small pieces, and fdatasync. Because only the
//!    holder of `change_turn` changes what `state` holds, the holder finds it as it left it.
//! 4. `store.inner` ([`StoreInner`]: the container, landing order, jobs in flight, errors, the
//!    reading descriptor): short sections, plus the append of a landed member and the write of
//!    a commit record (page-cache writes of at most a chunk). Never across fdatasync or
//!    decoding. Engine completions take only this lock, so landing never waits for a writer.
//! 5. Leaf locks, taken alone: `readahead.pending`, the chunk cache's, the digest memo's.
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
use crate::engine::{stored_stream_len, Completion, Done, Engine, Job, Op};

mod copy;
mod digests;
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
    /// A stored piece in deflatefs's own block layout, read with one preadv that puts its
    /// payload straight into `out` (`p.logical_len` bytes) and its framing into small scratch
    /// buffers: no copy out of an input buffer, no queue round trip. Its framing and crc32 are
    /// checked as [`container::parse_data_member`] and the stored decode would. `None` when
    /// anything differs or the read comes up short: the general path then reads the member
    /// whole and gives the exact verdict (a different but valid block split, or the damage).
    fn read_stored_in_place(
        &self,
        file: &File,
        p: &IndexEntry,
        layout: &StoredLayout,
        mut out: PoolBuf,
    ) -> Option<PoolBuf> {
        // Any failure leaves the verdict to the general path (see above).
        layout.read_in_place(file, p, &mut out).ok()?;
        self.stored_in_place.fetch_add(1, Ordering::Relaxed);
        Some(out)
    }

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

    /// Logical size, if this state knows it better than the backing file does.
    pub fn logical_size(&self) -> Option<u64> {
        match self {
            OpenFile::Plain(_) => None,
            OpenFile::Container(c) => Some(c.state.lock().size),
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
struct DirtyChunk {
    /// Capacity: the chunk size; bytes `[..valid]` are the chunk's content.
    buf: PoolBuf,
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

    /// Compacts the container (docs/FORMAT.md, "Compaction"): with writers held off, writes a
    /// fresh container into the empty file `dest` (chunks stored in one piece are copied as they
    /// are, others are decoded and recompressed), then calls `install`, which must put `dest` in
    /// the original's place; only if that succeeds does this file switch to the new container.
    pub fn compact(&self, dest: File, install: impl FnOnce() -> FsResult<()>) -> FsResult<()> {
        // Writers wait for the whole compaction; readers and `stat` only for the switch.
        let _turn = self.change_turn.lock();
        let mut st = self.state.lock();
        self.flush_locked(&mut st, false)?;
        drop(st);
        let (chunks, size, aux) = {
            let s = self.store.inner.lock();
            let chunks: Vec<u64> = s.container.index().data_chunks().collect();
            (chunks, s.container.size(), s.container.aux().cloned())
        };
        let mut failure: Option<FsError> = None;
        let mut next = chunks.into_iter();
        let members = std::iter::from_fn(|| {
            if failure.is_some() {
                return None;
            }
            let chunk = next.next()?;
            match self.compacted_member(chunk) {
                Ok(m) => {
                    m.or_else(|| Some((Vec::new(), IndexEntry::hole(chunk << self.chunk_log2))))
                }
                Err(e) => {
                    failure = Some(e);
                    None
                }
            }
        })
        .filter(|(bytes, _)| !bytes.is_empty());
        let rebuilt = Container::rebuild_with_aux(dest, self.chunk_log2, size, aux, members);
        if let Some(e) = failure {
            return Err(e);
        }
        let rebuilt = rebuilt?;
        rebuilt.sync_data()?;
        // Everything that can fail comes before the install: once it has renamed the copy into
        // place, this file must switch to it.
        let reader = Arc::new(rebuilt.file().try_clone()?);
        install()?;
        let mut s = self.store.inner.lock();
        s.container = rebuilt;
        s.epoch = self.ctx.next_epoch();
        s.reader = reader;
        // Chunks kept resident stay: the compacted container holds the same bytes for them, so
        // a database that rewrites the same pages goes on without reading and decoding them
        // again after every compaction. (Everything was flushed: none is dirty.)
        Ok(())
    }

    /// One chunk as a single complete data member for a compacted container.
    fn compacted_member(&self, chunk: u64) -> FsResult<Option<(Vec<u8>, IndexEntry)>> {
        let chunk_start = chunk << self.chunk_log2;
        let pieces = self
            .store
            .inner
            .lock()
            .container
            .index()
            .pieces(chunk)
            .to_vec();
        if let [p] = pieces.as_slice() {
            if p.reset && p.logical_offset == chunk_start && p.kind != PieceKind::Hole {
                let mut bytes = vec![0u8; p.stored_len as usize];
                self.reader().read_exact_at(&mut bytes, p.member_offset)?;
                container::parse_data_member(&bytes, p)?;
                return Ok(Some((bytes, p.clone())));
            }
        }
        let data = self.load_chunk(chunk)?;
        if data.is_empty() {
            return Ok(None);
        }
        let len = data.len();
        let [mut input, output] = self
            .ctx
            .job_pool
            .take_many([
                len,
                DATA_HEADER_LEN + stored_stream_len(len) + MEMBER_TRAILER_LEN,
            ])
            .map_err(FsError::from)?;
        input.copy_from_slice(&data);
        let op = Op::Compress {
            level: self.ctx.level,
            headroom: DATA_HEADER_LEN,
            tailroom: MEMBER_TRAILER_LEN,
        };
        let c = self.ctx.engine.submit_with_ticket(op, input, output).wait();
        let done = c
            .result
            .map_err(|e| FsError::from(e).context(format!("compacting chunk {chunk}")))?;
        let cv = if self.ctx.digests {
            chunk_cv(chunk_start, &data)
        } else {
            [0; 32]
        };
        let (bytes, entry) = frame_member(c.output, done, chunk_start, true, len, cv);
        Ok(Some((bytes[..entry.stored_len as usize].to_vec(), entry)))
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

    // ---- reading ----

    fn read(&self, offset: u64, size: usize) -> FsResult<Vec<u8>> {
        let mut out = Vec::new();
        self.read_into(offset, size, &mut out)?;
        Ok(out)
    }

    fn read_into(&self, offset: u64, size: usize, out: &mut Vec<u8>) -> FsResult<()> {
        let mut st = self.state.lock();
        self.read_locked_into(&mut st, offset, size, out)
    }

    fn read_locked(
        &self,
        st: &mut MutexGuard<'_, WriteState>,
        offset: u64,
        size: usize,
    ) -> FsResult<Vec<u8>> {
        let mut out = Vec::new();
        self.read_locked_into(st, offset, size, &mut out)?;
        Ok(out)
    }

    /// Appends to `out` the bytes at `offset..offset + size` (short at end of file).
    ///
    /// Under `st` it takes only what it must: the size, the bytes of resident chunks, and for
    /// each stored chunk the newest job in flight for it. Then it lets go of `st` while stored
    /// chunks are read and decoded, so other readers, writers and `stat` go on meanwhile. A
    /// read sees every write that completed before it began (resident, or in flight and waited
    /// for, or landed); a write running at the same time it may see or not, chunk by chunk,
    /// as on a local filesystem.
    fn read_locked_into(
        &self,
        st: &mut MutexGuard<'_, WriteState>,
        offset: u64,
        size: usize,
        out: &mut Vec<u8>,
    ) -> FsResult<()> {
        if offset >= st.size || size == 0 {
            return Ok(());
        }
        let end = st.size.min(offset + size as u64);
        let base = out.len();
        let cs = self.chunk_size() as u64;
        let first = offset >> self.chunk_log2;
        let last = (end - 1) >> self.chunk_log2;
        // With no chunk of the range resident (a cold or streaming read), the output is
        // appended to in order once the chunks are loaded: no zero-fill of it beforehand.
        let any_resident = st.dirty.range(first..=last).next().is_some();
        if any_resident {
            out.resize(base + (end - offset) as usize, 0);
        } else {
            out.reserve((end - offset) as usize);
        }
        let sequential = offset == st.last_read_end || offset == 0;
        st.last_read_end = end;
        // Decode the other chunks of this request in parallel across the queues, and (for a
        // sequential reader) the next ones too, while this thread decodes the first itself
        // (a small file's only chunk never makes a round trip through a queue).
        let ahead = if last > first || sequential {
            let beyond = if sequential {
                self.ctx.readahead_chunks as u64
            } else {
                0
            };
            self.readahead_candidates(st, first + 1, last - first + beyond)
        } else {
            Vec::new()
        };
        let mut loads = Vec::new();
        {
            let s = self.store.inner.lock();
            let mut pos = offset;
            while pos < end {
                let chunk = pos >> self.chunk_log2;
                let chunk_start = chunk << self.chunk_log2;
                let a = (pos - chunk_start) as usize;
                let b = ((end - chunk_start).min(cs)) as usize;
                let at = base + (pos - offset) as usize;
                if let Some(d) = st.dirty.get(&chunk) {
                    fill_from(&mut out[at..at + (b - a)], &d.buf[..d.valid], a);
                } else {
                    loads.push(PendingLoad {
                        chunk,
                        from: a,
                        at,
                        len: b - a,
                        after: s.newest_inflight.get(&chunk).copied(),
                    });
                }
                pos = chunk_start + b as u64;
            }
        }
        if loads.is_empty() && ahead.is_empty() {
            return Ok(());
        }
        MutexGuard::unlocked(st, || {
            self.start_readahead(&ahead);
            for l in loads {
                let data = self.load_chunk_after(l.chunk, l.after)?;
                if any_resident {
                    fill_from(&mut out[l.at..l.at + l.len], &data, l.from);
                } else {
                    debug_assert_eq!(out.len(), l.at);
                    append_from(out, &data, l.from, l.len);
                }
            }
            Ok(())
        })
    }

    /// The sequence number of the newest job in flight for `chunk`, if any.
    fn newest_job(&self, chunk: u64) -> Option<u64> {
        self.store.inner.lock().newest_inflight.get(&chunk).copied()
    }

    /// Waits until the job numbered `seq` (and so every job before it: they land in order) has
    /// landed in the container.
    fn wait_landed(&self, seq: Option<u64>) {
        let Some(seq) = seq else {
            return;
        };
        let mut s = self.store.inner.lock();
        while s.next_append <= seq {
            self.store.landed.wait(&mut s);
        }
    }

    /// Waits until every job of this file submitted so far for `chunk` has landed.
    fn wait_chunk_idle(&self, chunk: u64) {
        self.wait_landed(self.newest_job(chunk));
    }

    /// The stored content of a chunk (without the dirty overlay), as far as its pieces reach;
    /// callers treat bytes beyond the returned length as zeros. Waits for the chunk's jobs in
    /// flight first: its newest stored version is wanted.
    fn load_chunk(&self, chunk: u64) -> FsResult<Arc<Vec<u8>>> {
        self.load_chunk_after(chunk, self.newest_job(chunk))
    }

    /// [`Self::load_chunk`] of the version that job `after` (if any) stores or a later one.
    /// Takes no lock across its I/O and decoding; the index pieces and the descriptor they
    /// are read through are taken together, so a compaction meanwhile cannot mix them.
    fn load_chunk_after(&self, chunk: u64, after: Option<u64>) -> FsResult<Arc<Vec<u8>>> {
        self.wait_landed(after);
        let (pieces, key, file) = {
            let s = self.store.inner.lock();
            if let Some(e) = s.lost.get(&chunk) {
                return Err(FsError::with_context(
                    libc::EIO,
                    format!(
                        "{}: chunk {chunk} was not stored (write-back failed: {e})",
                        self.label
                    ),
                ));
            }
            let pieces = s.container.index().pieces(chunk).to_vec();
            let key = chunk_key(self.node, s.epoch, chunk, &pieces);
            (pieces, key, s.reader.clone())
        };
        let Some(key) = key else {
            return Ok(Arc::new(Vec::new()));
        };
        if let Some(hit) = self.ctx.cache.get(&key) {
            return Ok(hit);
        }
        // A read-ahead job may be producing it right now.
        {
            let mut pending = self.readahead.pending.lock();
            while pending.contains(&chunk) {
                self.readahead.done.wait(&mut pending);
            }
        }
        if let Some(hit) = self.ctx.cache.get(&key) {
            return Ok(hit);
        }
        let data = self
            .decode_pieces(&file, chunk, &pieces)
            .map_err(|e| self.report_damage(chunk, e))?;
        let data = Arc::new(data);
        self.ctx.cache.insert(key, data.clone());
        Ok(data)
    }

    fn report_damage(&self, chunk: u64, e: FsError) -> FsError {
        if e.errno == libc::EIO {
            // One line per file per minute: a damaged file read in a loop must not flood the log.
            self.ctx.log_damage(self.node, || {
                format!(
                    "{}: chunk {} (bytes {}..{}) cannot be read: {}",
                    self.label,
                    chunk,
                    chunk << self.chunk_log2,
                    (chunk + 1) << self.chunk_log2,
                    e
                )
            });
            return e.logged();
        }
        e
    }

    fn decode_pieces(&self, file: &File, chunk: u64, pieces: &[IndexEntry]) -> FsResult<Vec<u8>> {
        let chunk_start = chunk << self.chunk_log2;
        let extent = pieces
            .iter()
            .map(|p| (p.logical_offset - chunk_start) as usize + p.logical_len as usize)
            .max()
            .unwrap_or(0)
            .min(self.chunk_size());
        if let [p] = pieces {
            if p.kind != PieceKind::Hole
                && p.logical_offset == chunk_start
                && p.logical_len as usize <= self.chunk_size()
            {
                // The common case, one piece from the chunk's start: its decoded bytes are the
                // chunk, taken out of the pool as they are.
                return Ok(self.decode_piece(file, p)?.into_vec());
            }
        }
        let mut out = vec![0u8; extent];
        container::check_piece_order(chunk_start, pieces)?;
        for p in pieces {
            if p.kind == PieceKind::Hole {
                let start = (p.logical_offset - chunk_start) as usize;
                let end = (start + p.logical_len as usize).min(extent);
                out[start.min(end)..end].fill(0);
                continue;
            }
            let output = self.decode_piece(file, p)?;
            let start = (p.logical_offset - chunk_start) as usize;
            let end = start + output.len();
            if end > out.len() {
                return Err(FsError::with_context(
                    libc::EIO,
                    format!("piece at {} reaches beyond its chunk", p.logical_offset),
                ));
            }
            out[start..end].copy_from_slice(&output);
        }
        Ok(out)
    }

    fn decode_piece(&self, file: &File, p: &IndexEntry) -> FsResult<PoolBuf> {
        if let Some(layout) = StoredLayout::of(p) {
            let out = self
                .ctx
                .job_pool
                .take(p.logical_len as usize)
                .map_err(FsError::from)?;
            if let Some(out) = self.ctx.read_stored_in_place(file, p, &layout, out) {
                return Ok(out);
            }
        }
        // Input and output together, so two readers can never each hold half of what they need.
        let [mut input, output] = self
            .ctx
            .job_pool
            .take_many([p.stored_len as usize, p.logical_len as usize])
            .map_err(FsError::from)?;
        file.read_exact_at(&mut input, p.member_offset)
            .map_err(|e| {
                let ctx = format!("reading member at {}", p.member_offset);
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    FsError::with_context(libc::EIO, ctx)
                } else {
                    FsError::from(e).context(ctx)
                }
            })?;
        let stream = container::parse_data_member(&input, p)?;
        let op = Op::Decompress {
            stream,
            expected_crc: p.crc32,
            stored: p.kind == PieceKind::Stored,
        };
        let done = self.ctx.engine.run_now(op, input, output);
        match done.result {
            Ok(_) => Ok(done.output),
            Err(e) => Err(FsError::from(e).context(format!("member at {}", p.member_offset))),
        }
    }

    /// The chunks of `first..first + count` within the file that are not resident: what
    /// read-ahead may decode.
    fn readahead_candidates(&self, st: &WriteState, first: u64, count: u64) -> Vec<u64> {
        if st.size == 0 {
            return Vec::new();
        }
        let last_chunk = (st.size - 1) >> self.chunk_log2;
        let end = first.saturating_add(count).min(last_chunk + 1);
        (first..end).filter(|c| !st.dirty.contains_key(c)).collect()
    }

    /// Hands read-ahead of `chunks` to the mount's prefetch worker, which decodes those stored
    /// in one piece and not cached, so the reader finds them ready (or waits for the job
    /// instead of redoing it). Never waits: with the worker's queue full, the reader decodes
    /// them itself as it reaches them.
    fn start_readahead(&self, chunks: &[u64]) {
        if chunks.is_empty() {
            return;
        }
        let batch = ReadaheadBatch {
            node: self.node,
            chunk_log2: self.chunk_log2,
            ctx: self.ctx.clone(),
            store: self.store.clone(),
            readahead: self.readahead.clone(),
            chunks: chunks.to_vec(),
        };
        self.ctx.prefetch.try_spawn(move || batch.run());
    }

    // ---- writing ----

    fn write(&self, offset: u64, data: &[u8], append: bool) -> FsResult<usize> {
        let _turn = self.change_turn.lock();
        let mut st = self.state.lock();
        if let Some(e) = self.store.inner.lock().error.clone() {
            // Data written earlier could not be stored (ENOSPC, EIO): say so now, as a local
            // filesystem would, rather than only at close.
            return Err(e);
        }
        let offset = if append { st.size } else { offset };
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= i64::MAX as u64)
            .ok_or(FsError::new(libc::EFBIG))?;
        let cs = self.chunk_size();
        if !data.is_empty() {
            st.generation += 1;
            // Front-to-back writers keep the SHA-256 running; any other write makes it stale. A
            // write that fails half way leaves the state ahead of the size: stale as well. With
            // `digests=off` every write makes it stale (no commit records a state then).
            if self.ctx.digests && st.sha.continues_at(offset, st.size) {
                st.sha.update(data);
            } else {
                st.sha.invalidate();
            }
        }
        if end > st.size {
            self.clamp_tail_before_growth(&mut st)?;
        }
        let mut pos = offset;
        while pos < end {
            let chunk = pos >> self.chunk_log2;
            let chunk_start = chunk << self.chunk_log2;
            let a = (pos - chunk_start) as usize;
            let b = ((end - chunk_start) as usize).min(cs);
            let src = &data[(pos - offset) as usize..(pos - offset) as usize + (b - a)];
            if !st.dirty.contains_key(&chunk) {
                let d = self.make_resident(&mut st, chunk, a == 0 && b == cs)?;
                st.dirty.insert(chunk, d);
            }
            let d = st.dirty.get_mut(&chunk).expect("just inserted");
            let from = if a > d.valid {
                d.buf[d.valid..a].fill(0);
                d.valid
            } else {
                a
            };
            d.buf[a..b].copy_from_slice(src);
            d.changed = (d.changed.0.min(from), d.changed.1.max(b));
            d.valid = d.valid.max(b);
            d.dirty = true;
            pos = chunk_start + b as u64;
            if b == cs {
                // The writer reached the end of this chunk: compress it while it goes on.
                self.submit_chunk(&mut st, chunk)?;
            }
        }
        st.size = st.size.max(end);
        // A write that ends a new file's data short of a chunk boundary is, most often, the last
        // one (a small file copied in one write, the tail of a large one): compress that chunk
        // now, while the writer sets attributes and closes, instead of at the close. If more
        // is appended it becomes a second piece of the chunk; this is done once per open state,
        // so a writer appending in small pieces pays it at most once.
        if !st.early_tail_sent && !data.is_empty() && end == st.size && end % cs as u64 != 0 {
            let chunk = (end - 1) >> self.chunk_log2;
            if st
                .dirty
                .get(&chunk)
                .is_some_and(|d| d.persisted == 0 && d.dirty)
            {
                st.early_tail_sent = true;
                self.submit_chunk(&mut st, chunk)?;
            }
        }
        Ok(data.len())
    }

    /// Brings a chunk into memory for writing. `overwritten` means the caller replaces all of it.
    fn make_resident(
        &self,
        st: &mut MutexGuard<'_, WriteState>,
        chunk: u64,
        overwritten: bool,
    ) -> FsResult<DirtyChunk> {
        let mut buf = self.take_dirty_buffer(st)?;
        let chunk_start = chunk << self.chunk_log2;
        let logical_len = if st.size > chunk_start {
            ((st.size - chunk_start) as usize).min(self.chunk_size())
        } else {
            0
        };
        if overwritten || logical_len == 0 {
            return Ok(DirtyChunk {
                buf,
                valid: 0,
                persisted: 0,
                dirty: false,
                rewrite: true,
                changed: UNCHANGED,
                keep_after_submit: false,
            });
        }
        // The change turn keeps every other writer out meanwhile: only readers run, and they
        // change nothing this relies on.
        let stored = MutexGuard::unlocked(st, || self.load_chunk(chunk))?;
        let n = stored.len().min(logical_len);
        buf[..n].copy_from_slice(&stored[..n]);
        buf[n..logical_len].fill(0);
        // Appending a piece is only right if what is stored is exactly our prefix.
        let persisted = if stored.len() == logical_len { n } else { 0 };
        Ok(DirtyChunk {
            buf,
            valid: logical_len,
            persisted,
            dirty: false,
            rewrite: persisted == 0,
            changed: UNCHANGED,
            keep_after_submit: true,
        })
    }

    /// A chunk-sized buffer from the dirty pool. When the pool is exhausted, this file's own dirty
    /// chunks are written back first, then the writer waits for write-back (its own or, through
    /// the background flusher, other files') to give memory back.
    fn take_dirty_buffer(&self, st: &mut MutexGuard<'_, WriteState>) -> FsResult<PoolBuf> {
        let cs = self.chunk_size();
        let pool = &self.ctx.dirty_pool;
        if let Some(b) = pool.try_take(cs) {
            return Ok(b);
        }
        // Clean resident chunks only spare reads and decoding; give their memory back first.
        st.dirty.retain(|_, d| d.dirty);
        if let Some(b) = pool.try_take(cs) {
            return Ok(b);
        }
        self.submit_all(st)?;
        st.dirty.retain(|_, d| d.dirty);
        Ok(MutexGuard::unlocked(st, || loop {
            if let Some(b) = pool.take_timeout(cs, Duration::from_millis(20)) {
                return b;
            }
        }))
    }

    fn submit_all(&self, st: &mut MutexGuard<'_, WriteState>) -> FsResult<()> {
        let chunks: Vec<u64> = st
            .dirty
            .iter()
            .filter(|(_, d)| d.dirty)
            .map(|(c, _)| *c)
            .collect();
        for c in chunks {
            self.submit_chunk(st, c)?;
        }
        Ok(())
    }

    /// Hands one dirty chunk to the engine. A chunk that was only appended to is sent as a piece
    /// holding just the new bytes; one changed inside what is stored, as an overlay piece holding
    /// just the changed range while the chunk has room for it (`overlay_fits`): a 4 KiB page
    /// rewritten by a database costs 4 KiB of compression, not the chunk's. Anything else
    /// replaces the whole chunk.
    fn submit_chunk(&self, st: &mut MutexGuard<'_, WriteState>, chunk: u64) -> FsResult<()> {
        let cs = self.chunk_size();
        let chunk_start = chunk << self.chunk_log2;
        let Some(d) = st.dirty.get_mut(&chunk) else {
            return Ok(());
        };
        if !d.dirty {
            return Ok(());
        }
        let lost = self.store.inner.lock().lost.contains_key(&chunk);
        // What the next piece covers when it need not replace the chunk: the bytes changed
        // since the last submit, appended after what is stored or laid over it.
        let partial = if !d.rewrite && d.persisted > 0 && !lost {
            let (lo, hi) = d.changed;
            if lo >= hi {
                d.dirty = false;
                return Ok(());
            }
            (lo >= d.persisted || self.overlay_fits(chunk, hi - lo)).then_some((lo, hi))
        } else {
            None
        };
        // The output buffer first, the one thing that may have to wait: nothing has changed
        // yet, so readers meanwhile find the chunk resident as it was.
        let in_len = match partial {
            Some((lo, hi)) => hi - lo,
            None => d.valid,
        };
        let out_len = DATA_HEADER_LEN + stored_stream_len(in_len) + MEMBER_TRAILER_LEN;
        let output = match self.ctx.job_pool.try_take(out_len) {
            Some(output) => output,
            None => MutexGuard::unlocked(st, || self.ctx.job_pool.take(out_len))
                .map_err(FsError::from)?,
        };
        // Still resident: only this thread, which holds the change turn, removes chunks.
        let d = st.dirty.get_mut(&chunk).expect("present");
        // The entry's BLAKE3 chaining value covers the whole chunk: for a partial piece it is
        // computed here from the chunk so far; for a whole-chunk piece, on the engine worker
        // (`None`). With `digests=off` it is all zero: "not computed".
        let (input, offset_in_chunk, reset, cv) = if let Some((lo, hi)) = partial {
            let cv = if self.ctx.digests {
                chunk_cv(chunk_start, &d.buf[..d.valid])
            } else {
                [0; 32]
            };
            let input = match self.try_take_job_buffer(hi - lo) {
                Some(mut input) => {
                    input.copy_from_slice(&d.buf[lo..hi]);
                    input
                }
                None => {
                    // No dirty memory for a copy: the chunk gives up its own buffer (a writer
                    // waiting here for memory that only its own chunks hold would wait forever).
                    let mut buf = st.dirty.remove(&chunk).expect("present").buf;
                    buf.copy_within(lo..hi, 0);
                    buf.set_len(hi - lo);
                    buf
                }
            };
            (input, lo, false, Some(cv))
        } else if d.valid == cs && !lost && !d.keep_after_submit {
            // Written whole by a streaming writer: hand the buffer over instead of copying it.
            let d = st.dirty.remove(&chunk).expect("present");
            (d.buf, 0, true, None)
        } else {
            let input = match self.try_take_job_buffer(d.valid) {
                Some(mut input) => {
                    input.copy_from_slice(&d.buf[..d.valid]);
                    input
                }
                None => {
                    // As above: hand the chunk's buffer over rather than wait for a copy's.
                    let d = st.dirty.remove(&chunk).expect("present");
                    let mut buf = d.buf;
                    buf.set_len(d.valid);
                    buf
                }
            };
            (input, 0, true, None)
        };
        let cv = if self.ctx.digests { cv } else { Some([0; 32]) };
        if let Some(d) = st.dirty.get_mut(&chunk) {
            d.persisted = d.valid;
            d.dirty = false;
            d.rewrite = false;
            d.changed = UNCHANGED;
        }
        let len = input.len();
        debug_assert_eq!(len, in_len);
        let seq = st.next_seq;
        st.next_seq += 1;
        {
            // In the same hold of `st` as the chunk left `dirty` (or was marked persisted): a
            // reader never finds its latest content in neither place.
            let mut s = self.store.inner.lock();
            s.inflight += 1;
            *s.inflight_chunks.entry(chunk).or_insert(0) += 1;
            s.newest_inflight.insert(chunk, seq);
        }
        let logical_offset = chunk_start + offset_in_chunk as u64;
        let op = Op::Compress {
            level: self.ctx.level,
            headroom: DATA_HEADER_LEN,
            tailroom: MEMBER_TRAILER_LEN,
        };
        let store = self.store.clone();
        let label = self.label.clone();
        let land = move |c: Completion| {
            land_compressed(
                &store,
                &label,
                seq,
                chunk,
                logical_offset,
                reset,
                len,
                cv,
                c,
            )
        };
        MutexGuard::unlocked(st, || {
            if len <= INLINE_PIECE_MAX {
                // A piece this small (a database page, a log line) compresses in tens of
                // microseconds: a round trip through a queue, two thread wake-ups, costs more
                // than the work, and an fsync is waiting for it.
                land(self.ctx.engine.run_now(op, input, output));
                return;
            }
            let job = Job {
                op,
                input,
                output,
                on_complete: Box::new(land),
            };
            // May wait while every queue is full: never with `st` held.
            self.ctx.engine.submit(vec![job]);
        });
        Ok(())
    }

    /// Whether a change of `len` bytes inside what `chunk` already stores may go in as an overlay
    /// piece rather than a rewrite of the whole chunk: the chunk keeps at most
    /// [`MAX_CHUNK_PIECES`] pieces, and its overlay pieces at most half of the chunk's bytes,
    /// so reading it decodes at most 1.5 chunks and its backing space stays within about
    /// 1.5x of the chunk's until a rewrite or compaction folds them in.
    fn overlay_fits(&self, chunk: u64, len: usize) -> bool {
        let s = self.store.inner.lock();
        let pieces = s.container.index().pieces(chunk);
        let inflight = s.inflight_chunks.get(&chunk).copied().unwrap_or(0) as usize;
        let overlaid: usize = pieces.iter().skip(1).map(|p| p.logical_len as usize).sum();
        ((pieces.len() + inflight) as u64) < MAX_CHUNK_PIECES
            && overlaid + len <= self.chunk_size() / 2
    }

    /// A job input buffer of exactly `len` bytes from the dirty pool, if it has room now.
    fn try_take_job_buffer(&self, len: usize) -> Option<PoolBuf> {
        let mut b = self.ctx.dirty_pool.try_take(len.max(1))?;
        b.set_len(len);
        Some(b)
    }

    /// Waits until every submitted job of this file has landed in the container.
    fn drain(&self) {
        let mut s = self.store.inner.lock();
        while s.inflight > 0 {
            self.store.landed.wait(&mut s);
        }
    }

    /// Writes back everything and commits; with `durable`, also fdatasyncs the container.
    fn flush(&self, durable: bool) -> FsResult<()> {
        let _turn = self.change_turn.lock();
        let mut st = self.state.lock();
        self.flush_locked(&mut st, durable)
    }

    /// [`Self::flush`] for a caller that holds the change turn and `st`.
    fn flush_locked(&self, st: &mut MutexGuard<'_, WriteState>, durable: bool) -> FsResult<()> {
        self.submit_all(st)?;
        MutexGuard::unlocked(st, || self.drain());
        // Lost chunks still in memory are written again, whole.
        let retry: Vec<u64> = {
            let s = self.store.inner.lock();
            s.lost
                .keys()
                .copied()
                .filter(|c| st.dirty.contains_key(c))
                .collect()
        };
        if !retry.is_empty() {
            for c in &retry {
                let d = st.dirty.get_mut(c).expect("resident");
                d.dirty = true;
                d.rewrite = true;
                d.persisted = 0;
            }
            self.submit_all(st)?;
            MutexGuard::unlocked(st, || self.drain());
        }
        let mut s = self.store.inner.lock();
        if let Some(e) = s.error.take() {
            return Err(e);
        }
        if let Some((chunk, e)) = s.lost.iter().next() {
            // Committing now would record the file with those chunks at an older version or as
            // zeros: keep the last committed state instead.
            return Err(FsError::with_context(
                libc::EIO,
                format!(
                    "{}: {} chunk(s) could not be stored (first: chunk {chunk}, {e}); nothing is \
                     committed until they are rewritten or truncated away",
                    self.label,
                    s.lost.len()
                ),
            ));
        }
        if durable {
            if let Some(e) = &s.sync_failed {
                return Err(e.clone());
            }
        }
        if s.container.size() != st.size {
            s.container.set_size(st.size);
        }
        // The SHA-256 state rides along with a commit of new content, never makes one: a flush
        // after reads alone must leave the backing file (and so the file's mtime) untouched.
        if self.digests.writable() && s.container.has_content_pending() {
            s.container.set_aux(st.sha.aux_record(st.size));
        }
        s.container
            .commit()
            .map_err(|e| FsError::from(e).context(format!("{}: commit", self.label)))?;
        // Even with nothing new to commit, an earlier commit (a close's, the periodic one's) may
        // not be on disk yet; but when every byte the container holds was fdatasync'd already,
        // another fdatasync has nothing to write (a database fsyncs files it did not change).
        if durable && !s.container.is_synced() {
            // Outside every lock a reader needs: only holders of the change turn, which this
            // caller has, append to or replace the container, so what the fdatasync covers
            // cannot move meanwhile.
            let (file, len) = (s.reader.clone(), s.container.container_len());
            drop(s);
            let synced = MutexGuard::unlocked(st, || file.sync_data());
            let mut s = self.store.inner.lock();
            if let Err(e) = synced {
                let e = FsError::from(e).context(format!("{}: fdatasync", self.label));
                tracing::error!("{e}");
                s.sync_failed = Some(e.clone());
                return Err(e);
            }
            s.container.mark_synced(len);
        }
        Ok(())
    }

    fn truncate(&self, size: u64) -> FsResult<()> {
        let _turn = self.change_turn.lock();
        let mut st = self.state.lock();
        MutexGuard::unlocked(&mut st, || self.drain());
        if size != st.size {
            st.generation += 1;
            if size == 0 {
                st.sha.reset();
            } else {
                st.sha.invalidate();
            }
        }
        // Truncation to zero is a shrink like any other: a commit of size 0 appended to the
        // container. Rewriting the file in place instead (ftruncate 0, a new header) would leave
        // a power cut the chance to keep the new length without the new header: zeros where a
        // synced file was. The space comes back at the next compaction.
        if size < st.size {
            let cs = self.chunk_size() as u64;
            let first_gone = size.div_ceil(cs);
            st.dirty.retain(|c, _| *c < first_gone);
            // Shrunk for readers at once, in the same hold of `st` that dropped the chunks
            // beyond it: a reader while the rest runs (unlocked) must not find those chunks
            // at their stored versions, older than writes that completed before this.
            st.size = size;
            // What was written before the shrink lands before it, so the commit that records
            // the shrink on its own (see `Container::set_size`) is a state the file really had.
            self.submit_all(&mut st)?;
            MutexGuard::unlocked(&mut st, || self.drain());
            self.store.inner.lock().lost.retain(|c, _| *c < first_gone);
            let partial = size >> self.chunk_log2;
            let keep = (size - (partial << self.chunk_log2)) as usize;
            if keep > 0 {
                if !st.dirty.contains_key(&partial) {
                    let d = self.make_resident(&mut st, partial, false)?;
                    st.dirty.insert(partial, d);
                }
                let d = st.dirty.get_mut(&partial).expect("resident");
                if d.valid > keep {
                    d.valid = keep;
                }
                // Bytes beyond the new end must never come back: replace the chunk.
                d.rewrite = true;
                d.persisted = 0;
                d.dirty = true;
            }
            self.store.inner.lock().container.set_size(size);
        }
        if size > st.size {
            self.clamp_tail_before_growth(&mut st)?;
        }
        st.size = size;
        Ok(())
    }

    /// Before the file grows past `st.size`: when the chunk holding that end has stored bytes
    /// beyond it, makes the chunk resident (clamped to the end, see `make_resident`) to be
    /// rewritten as a RESET piece, so those bytes read as zeros once the file is longer, as
    /// after any truncation. A shrink always rewrites that chunk, but a crash or power cut can
    /// keep the commit of the shrunk size and lose the later one with the rewrite: the size
    /// alone then hides the old bytes, until the file grows (power-cut seed 26: a truncate up
    /// after recovery showed bytes of an earlier, longer version of the chunk).
    fn clamp_tail_before_growth(&self, st: &mut MutexGuard<'_, WriteState>) -> FsResult<()> {
        let size = st.size;
        let chunk = size >> self.chunk_log2;
        let chunk_start = chunk << self.chunk_log2;
        if size == chunk_start || st.dirty.contains_key(&chunk) {
            return Ok(());
        }
        let stale = self
            .store
            .inner
            .lock()
            .container
            .index()
            .pieces(chunk)
            .iter()
            .any(|p| p.kind != PieceKind::Hole && p.logical_offset + p.logical_len as u64 > size);
        if stale {
            // Clamped to the size; `rewrite` unless a RESET piece of exactly that length landed
            // meanwhile (then what is stored already is the clamped chunk).
            let d = self.make_resident(st, chunk, false)?;
            debug_assert_eq!(d.valid, (size - chunk_start) as usize);
            st.dirty.insert(chunk, d);
            let d = st.dirty.get_mut(&chunk).expect("just inserted");
            d.dirty = true;
        }
        Ok(())
    }

    fn relieve_pressure(&self) {
        let Some(_turn) = self.change_turn.try_lock() else {
            return;
        };
        let mut st = self.state.lock();
        if self.submit_all(&mut st).is_ok() {
            st.dirty.retain(|_, d| d.dirty);
        }
    }

    /// Commits if anything was written and not yet committed (periodic commit). Skips a busy file.
    pub fn try_periodic_commit(&self) {
        let Some(_turn) = self.change_turn.try_lock() else {
            return;
        };
        let mut st = self.state.lock();
        let pending = {
            let s = self.store.inner.lock();
            s.container.has_pending() || s.inflight > 0
        } || st.dirty.values().any(|d| d.dirty);
        if pending {
            if let Err(e) = self.flush_locked(&mut st, false) {
                tracing::warn!("{}: periodic commit failed: {}", self.label, e);
                // Keep the error for the next flush/fsync of the user.
                self.store.inner.lock().error.get_or_insert(e);
            }
        }
    }
}

/// Completion of one compression job: frame the member, then append every member that is next in
/// sequence. Runs on an engine worker; takes only the store lock.
#[allow(clippy::too_many_arguments)]
fn land_compressed(
    store: &Store,
    label: &str,
    seq: u64,
    chunk: u64,
    logical_offset: u64,
    reset: bool,
    len: usize,
    cv: Option<ChainingValue>,
    c: Completion,
) {
    let Completion {
        result,
        input,
        output,
    } = c;
    // A whole-chunk piece starts at its chunk's offset and its input is the whole chunk.
    let cv = match (&result, cv) {
        (Ok(_), None) => chunk_cv(logical_offset, &input[..len]),
        (_, cv) => cv.unwrap_or([0; 32]),
    };
    drop(input); // give the dirty memory back as early as possible
    let ready = match result {
        Ok(done) => {
            let (output, entry) = frame_member(output, done, logical_offset, reset, len, cv);
            Ready::Member {
                len: entry.stored_len as usize,
                output,
                entry,
                chunk,
            }
        }
        Err(e) => Ready::Failed {
            error: FsError::from(e).context(format!("{label}: compressing chunk {chunk}")),
            chunk,
        },
    };
    let mut s = store.inner.lock();
    s.ready.insert(seq, ready);
    loop {
        let next = s.next_append;
        let Some(r) = s.ready.remove(&next) else {
            break;
        };
        let chunk = match r {
            Ready::Member {
                output,
                len,
                entry,
                chunk,
            } => {
                if !entry.reset && s.lost.contains_key(&chunk) {
                    // It would continue bytes that were never stored; the chunk stays lost (a
                    // resident chunk is written again whole at the next flush).
                } else if let Err(e) = s.container.append_member(&output[..len], entry) {
                    let e = FsError::from(e).context(format!("{label}: writing chunk {chunk}"));
                    tracing::error!("{e}");
                    s.error.get_or_insert(e.clone());
                    s.lost.insert(chunk, e);
                } else {
                    s.lost.remove(&chunk);
                }
                chunk
            }
            Ready::Failed { error, chunk } => {
                tracing::error!("{error}");
                s.error.get_or_insert(error.clone());
                s.lost.insert(chunk, error);
                chunk
            }
        };
        s.next_append += 1;
        s.inflight -= 1;
        if let Some(n) = s.inflight_chunks.get_mut(&chunk) {
            *n -= 1;
            if *n == 0 {
                s.inflight_chunks.remove(&chunk);
                s.newest_inflight.remove(&chunk);
            }
        }
    }
    drop(s);
    store.landed.notify_all();
}

/// Writes the member header and trailer around a compressed stream that the engine left at
/// `output[DATA_HEADER_LEN..]`, and describes it with an index entry whose chaining value is
/// `cv` (the whole chunk's after this piece).
fn frame_member(
    mut output: PoolBuf,
    done: Done,
    logical_offset: u64,
    reset: bool,
    len: usize,
    cv: ChainingValue,
) -> (PoolBuf, IndexEntry) {
    let stream = container::PieceStream {
        len: done.len,
        crc32: done.crc32,
        stored: done.stored,
        level: done.level,
        window_log2: done.window_log2,
    };
    let entry =
        container::frame_data_member(&mut output, logical_offset, reset, len as u32, stream, cv);
    (output, entry)
}

/// Read-ahead of some chunks of one file, run on the mount's prefetch worker.
struct ReadaheadBatch {
    node: u64,
    chunk_log2: u8,
    ctx: Arc<FileContext>,
    store: Arc<Store>,
    readahead: Arc<Readahead>,
    chunks: Vec<u64>,
}

impl ReadaheadBatch {
    /// Submits decompression of the chunks. Takes no file lock across its I/O; a chunk
    /// rewritten meanwhile is decoded at the version it had, under that version's cache key,
    /// which the newer version never matches.
    fn run(self) {
        let pool = &self.ctx.job_pool;
        for &chunk in &self.chunks {
            let (pieces, key, file) = {
                let s = self.store.inner.lock();
                if s.inflight_chunks.contains_key(&chunk) {
                    continue;
                }
                let pieces = s.container.index().pieces(chunk).to_vec();
                let key = chunk_key(self.node, s.epoch, chunk, &pieces);
                (pieces, key, s.reader.clone())
            };
            let (Some(key), [p]) = (key, pieces.as_slice()) else {
                continue;
            };
            if p.kind == PieceKind::Hole
                || p.logical_offset != chunk << self.chunk_log2
                || self.ctx.cache.get(&key).is_some()
            {
                continue;
            }
            {
                let mut pending = self.readahead.pending.lock();
                if !pending.insert(chunk) {
                    continue;
                }
            }
            let release = |ra: &Readahead| {
                ra.pending.lock().remove(&chunk);
                ra.done.notify_all();
            };
            if let Some(layout) = StoredLayout::of(p) {
                // Nothing to decode: read it into place here rather than copy it in a queue.
                let Some(out) = pool.take_timeout(p.logical_len as usize, Duration::ZERO) else {
                    release(&self.readahead);
                    break;
                };
                if let Some(out) = self.ctx.read_stored_in_place(&file, p, &layout, out) {
                    self.ctx.cache.insert(key, Arc::new(out.into_vec()));
                }
                release(&self.readahead);
                continue;
            }
            // Read-ahead never waits for memory: if the pool is busy, the reader does the work.
            let Some([mut input, output]) = pool.try_take_many_timeout(
                [p.stored_len as usize, p.logical_len as usize],
                Duration::ZERO,
            ) else {
                release(&self.readahead);
                break;
            };
            let stream = match file.read_exact_at(&mut input, p.member_offset) {
                Ok(()) => container::parse_data_member(&input, p).ok(),
                Err(_) => None,
            };
            let Some(stream) = stream else {
                release(&self.readahead);
                continue;
            };
            let cache = self.ctx.cache.clone();
            let ra = self.readahead.clone();
            let job = Job {
                op: Op::Decompress {
                    stream,
                    expected_crc: p.crc32,
                    stored: p.kind == PieceKind::Stored,
                },
                input,
                output,
                on_complete: Box::new(move |c: Completion| {
                    if c.result.is_ok() {
                        cache.insert(key, Arc::new(c.output.into_vec()));
                    }
                    ra.pending.lock().remove(&chunk);
                    ra.done.notify_all();
                }),
            };
            self.ctx.engine.submit(vec![job]);
        }
    }
}

/// The cache key of `chunk` of file `node` stored as `pieces` in a container state of `epoch`
/// (None for a chunk with no pieces).
fn chunk_key(node: u64, epoch: u64, chunk: u64, pieces: &[IndexEntry]) -> Option<ChunkKey> {
    pieces.last().map(|last| ChunkKey {
        node,
        epoch,
        chunk,
        last_member_offset: last.member_offset,
        pieces: pieces.len() as u32,
    })
}

/// Fills `dst` with `data[from..from + dst.len()]`, reading bytes beyond `data.len()` as zeros.
fn fill_from(dst: &mut [u8], data: &[u8], from: usize) {
    let have = data.len().saturating_sub(from).min(dst.len());
    if have > 0 {
        dst[..have].copy_from_slice(&data[from..from + have]);
    }
    dst[have..].fill(0);
}

/// Appends `data[from..from + len]` to `out`, reading bytes beyond `data.len()` as zeros.
fn append_from(out: &mut Vec<u8>, data: &[u8], from: usize, len: usize) {
    let have = data.len().saturating_sub(from).min(len);
    if have > 0 {
        out.extend_from_slice(&data[from..from + have]);
    }
    out.resize(out.len() + (len - have), 0);
}

/// A stored chunk a read needs, noted under the state lock and loaded after it is let go.
struct PendingLoad {
    chunk: u64,
    /// Where in the chunk the read's bytes start.
    from: usize,
    /// Where in the output they go, and how many.
    at: usize,
    len: usize,
    /// The chunk's newest job in flight when the read began: its result must be seen.
    after: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::{append_from, fill_from};

    #[test]
    fn bytes_beyond_stored_content_read_as_zeros() {
        let mut out = [9u8; 5];
        fill_from(&mut out, b"abc", 1);
        assert_eq!(&out, b"bc\0\0\0");
        let mut out = [9u8; 2];
        fill_from(&mut out, b"abc", 4);
        assert_eq!(&out, b"\0\0");
        let mut out = b"x".to_vec();
        append_from(&mut out, b"abc", 1, 5);
        assert_eq!(out, b"xbc\0\0\0");
        append_from(&mut out, b"abc", 4, 1);
        assert_eq!(out, b"xbc\0\0\0\0");
    }
}
