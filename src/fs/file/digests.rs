//! Digests of an open container: `user.deflatefs.blake3` merged from the chunk index's chaining
//! values, `user.deflatefs.sha256` from the running state (or recomputed by streaming the file),
//! and the `user.deflatefs.info` line.

use std::collections::HashMap;
use std::os::fd::AsRawFd;

use parking_lot::{Mutex, MutexGuard};

use super::{ContainerFile, WriteState};
use crate::container::{AuxRecord, Container, PieceKind};
use crate::digest::{chunk_cv, zero_cv, ChainingValue, FileInfo, Sha256State, TreeBuilder};
use crate::fs::error::{FsError, FsResult};

/// Chunks whose index data is copied out under the store lock at a time.
const BATCH: u64 = 4096;
/// Most chaining values computed from data that are remembered per file.
const MEMO_LIMIT: usize = 1 << 20;
/// Bytes read per step when a SHA-256 is recomputed.
const SHA_STEP: usize = 1 << 20;
/// Unlocked recompute attempts before one that holds writers off.
const SHA_UNLOCKED_TRIES: usize = 2;

/// Version of the whole content: (container epoch, write generation).
type ContentVersion = (u64, u64);

/// Version of a chunk: (epoch, container offset of its newest member, number of pieces).
type ChunkVersion = (u64, u64, u32);

/// The SHA-256 of the content while it is written front to back.
///
/// Invariant: when `valid`, `state` hashes exactly the bytes `[0, state.len())`, and it is current
/// if `state.len()` is the file size.
#[derive(Clone, Debug)]
pub(super) struct ShaTracker {
    // Boxed: keeps the open-file state small (it lives in an enum with plain files).
    state: Box<Sha256State>,
    valid: bool,
}

impl ShaTracker {
    /// The state the last commit recorded, or the empty state for an empty file.
    pub(super) fn from_container(c: &Container) -> ShaTracker {
        match c.aux() {
            Some(a) if a.sha256_len == c.size() => ShaTracker {
                state: Box::new(Sha256State::from_parts(
                    a.sha256_len,
                    &a.sha256_state,
                    &a.sha256_tail,
                )),
                valid: true,
            },
            _ => ShaTracker {
                state: Box::default(),
                valid: c.size() == 0,
            },
        }
    }

    fn current(&self, size: u64) -> Option<&Sha256State> {
        (self.valid && self.state.len() == size).then_some(&self.state)
    }

    /// Whether the state hashes exactly the content of a file of `size` bytes.
    pub(super) fn is_current(&self, size: u64) -> bool {
        self.current(size).is_some()
    }

    /// Whether a write at `offset` to a file of `size` bytes continues the hash.
    pub(super) fn continues_at(&self, offset: u64, size: u64) -> bool {
        self.current(size).is_some() && offset == size
    }

    pub(super) fn update(&mut self, data: &[u8]) {
        self.state.update(data);
    }

    pub(super) fn invalidate(&mut self) {
        self.valid = false;
    }

    /// The file became empty: the hash starts over.
    pub(super) fn reset(&mut self) {
        *self.state = Sha256State::new();
        self.valid = true;
    }

    fn set(&mut self, state: Sha256State) {
        *self.state = state;
        self.valid = true;
    }

    /// The auxiliary record for a commit of a file of `size` bytes, if the state is current.
    pub(super) fn aux_record(&self, size: u64) -> Option<AuxRecord> {
        let (sha256_len, sha256_state, sha256_tail) = self.current(size)?.to_parts();
        Some(AuxRecord {
            sha256_len,
            sha256_state,
            sha256_tail,
        })
    }
}

/// Per-file digest bookkeeping outside the write state.
pub(super) struct DigestState {
    /// Whether the container descriptor can be written (not on read-only mounts or files).
    writable: bool,
    /// One SHA-256 recomputation at a time per file.
    sha_recompute: Mutex<()>,
    /// Chaining values computed from data for chunks whose entry has none, by chunk, with the
    /// version of the chunk they belong to (epoch, newest member offset, piece count).
    memo: Mutex<HashMap<u64, (ChunkVersion, ChainingValue)>>,
    /// The last BLAKE3 computed, with the content version it belongs to (epoch, generation).
    last_blake3: Mutex<Option<(ContentVersion, [u8; 32])>>,
}

impl DigestState {
    pub(super) fn new(file: &std::fs::File) -> Box<DigestState> {
        let flags = nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_GETFL);
        Box::new(DigestState {
            writable: flags.is_ok_and(|f| f & libc::O_ACCMODE != libc::O_RDONLY),
            sha_recompute: Mutex::new(()),
            memo: Mutex::new(HashMap::new()),
            last_blake3: Mutex::new(None),
        })
    }

    pub(super) fn writable(&self) -> bool {
        self.writable
    }
}

/// Where a chunk's chaining value comes from.
enum Source {
    Hole,
    Entry(ChainingValue),
    /// Computed from the stored data; the key identifies the chunk's version.
    Data(ChunkVersion),
}

/// The chaining value of `data` followed by zeros up to `len` bytes, at `offset`.
fn cv_with_zero_tail(offset: u64, data: &[u8], len: u64) -> ChainingValue {
    let n = (data.len() as u64).min(len) as usize;
    if n as u64 == len {
        return chunk_cv(offset, &data[..n]);
    }
    let mut padded = Vec::with_capacity(len as usize);
    padded.extend_from_slice(&data[..n]);
    padded.resize(len as usize, 0);
    chunk_cv(offset, &padded)
}

impl ContainerFile {
    /// BLAKE3 of the content (what `b3sum` prints). Reads no data for chunks whose index entry
    /// carries a chaining value that covers the chunk; files of at most one chunk are hashed
    /// from their bytes.
    pub fn blake3(&self) -> FsResult<[u8; 32]> {
        // Writers wait (the digest is of one state of the file); readers go on.
        let _turn = self.change_turn.lock();
        let mut st = self.state.lock();
        MutexGuard::unlocked(&mut st, || self.drain());
        let version = (self.store.inner.lock().epoch, st.generation);
        if let Some((v, digest)) = *self.digests.last_blake3.lock() {
            if v == version {
                return Ok(digest);
            }
        }
        let digest = self.blake3_locked(&mut st)?;
        *self.digests.last_blake3.lock() = Some((version, digest));
        Ok(digest)
    }

    fn blake3_locked(&self, st: &mut MutexGuard<'_, WriteState>) -> FsResult<[u8; 32]> {
        let size = st.size;
        let cs = self.chunk_size() as u64;
        if size <= cs {
            let data = self.read_locked(st, 0, size as usize)?;
            return Ok(*blake3::hash(&data).as_bytes());
        }
        let n = size.div_ceil(cs);
        let mut tree = TreeBuilder::new();
        let mut first = 0;
        while first < n {
            let end = (first + BATCH).min(n);
            let sources: Vec<Source> = {
                let s = self.store.inner.lock();
                let index = s.container.index();
                (first..end)
                    .map(|c| {
                        let start = c << self.chunk_log2;
                        let len = cs.min(size - start);
                        let pieces = index.pieces(c);
                        let Some(last) = pieces.last() else {
                            return Source::Hole;
                        };
                        let extent = pieces
                            .iter()
                            .filter(|p| p.kind != PieceKind::Hole)
                            .map(|p| p.logical_offset - start + p.logical_len as u64)
                            .max()
                            .unwrap_or(0);
                        if last.chaining_value != [0; 32] && extent == len {
                            Source::Entry(last.chaining_value)
                        } else {
                            Source::Data((s.epoch, last.member_offset, pieces.len() as u32))
                        }
                    })
                    .collect()
            };
            for (c, source) in (first..end).zip(sources) {
                let start = c << self.chunk_log2;
                let len = cs.min(size - start);
                let cv = if let Some(d) = st.dirty.get(&c) {
                    cv_with_zero_tail(start, &d.buf[..d.valid], len)
                } else {
                    match source {
                        Source::Hole => zero_cv(start, len),
                        Source::Entry(cv) => cv,
                        Source::Data(key) => {
                            MutexGuard::unlocked(st, || self.cv_from_data(c, key, len))?
                        }
                    }
                };
                tree.push(cv);
            }
            first = end;
        }
        let root = tree.finalize().expect("a file of more than one chunk");
        Ok(*root.as_bytes())
    }

    /// A chunk's chaining value computed from its stored data (entries without one: files
    /// written by older versions, or a chunk a size increase padded with zeros).
    fn cv_from_data(&self, chunk: u64, key: ChunkVersion, len: u64) -> FsResult<ChainingValue> {
        if let Some((k, cv)) = self.digests.memo.lock().get(&chunk) {
            if *k == key {
                return Ok(*cv);
            }
        }
        let data = self.load_chunk(chunk)?;
        let cv = cv_with_zero_tail(chunk << self.chunk_log2, &data, len);
        let mut memo = self.digests.memo.lock();
        if memo.len() >= MEMO_LIMIT {
            memo.clear();
        }
        memo.insert(chunk, (key, cv));
        Ok(cv)
    }

    /// SHA-256 of the content (what `sha256sum` prints). Immediate while the running state is
    /// current; otherwise the file is streamed through the engine (bounded memory), and the
    /// result is kept and recorded at the next commit (at once if nothing else is pending).
    pub fn sha256(&self) -> FsResult<[u8; 32]> {
        if let Some(d) = self.current_sha256() {
            return Ok(d);
        }
        let _one = self.digests.sha_recompute.lock();
        for _ in 0..SHA_UNLOCKED_TRIES {
            let (generation, size) = {
                let st = self.state.lock();
                if let Some(s) = st.sha.current(st.size) {
                    return Ok(s.finalize());
                }
                (st.generation, st.size)
            };
            // Writers and readers go on meanwhile; the result counts only if nothing changed.
            let state = Self::hash_stream(size, |off, n| self.read(off, n))?;
            let _turn = self.change_turn.lock();
            let mut st = self.state.lock();
            if st.generation == generation && st.size == size {
                return Ok(self.install_sha(&mut st, state));
            }
        }
        // The file keeps changing: hold writers off for one pass.
        let _turn = self.change_turn.lock();
        let mut st = self.state.lock();
        let size = st.size;
        let state = Self::hash_stream(size, |off, n| self.read_locked(&mut st, off, n))?;
        Ok(self.install_sha(&mut st, state))
    }

    /// The SHA-256 if the running state is current.
    pub fn current_sha256(&self) -> Option<[u8; 32]> {
        let st = self.state.lock();
        st.sha.current(st.size).map(Sha256State::finalize)
    }

    fn hash_stream(
        size: u64,
        mut read: impl FnMut(u64, usize) -> FsResult<Vec<u8>>,
    ) -> FsResult<Sha256State> {
        let mut h = Sha256State::new();
        while h.len() < size {
            let n = (size - h.len()).min(SHA_STEP as u64) as usize;
            let data = read(h.len(), n)?;
            if data.is_empty() {
                return Err(FsError::with_context(
                    libc::EIO,
                    format!("file ended at {} of {size} bytes while hashing", h.len()),
                ));
            }
            h.update(&data);
        }
        Ok(h)
    }

    /// Makes a freshly computed state the running one and records it if that is cheap.
    fn install_sha(&self, st: &mut MutexGuard<'_, WriteState>, state: Sha256State) -> [u8; 32] {
        let digest = state.finalize();
        st.sha.set(state);
        if let Err(e) = self.persist_sha(st) {
            tracing::warn!("{}: cannot record the SHA-256 state: {e}", self.label);
        }
        digest
    }

    /// Commits the SHA-256 state on its own when nothing else is waiting to be committed (else
    /// the next commit records it). The commit does not move the file's mtime: reading an
    /// attribute is not a modification.
    fn persist_sha(&self, st: &mut MutexGuard<'_, WriteState>) -> FsResult<()> {
        if !self.digests.writable || st.dirty.values().any(|d| d.dirty) {
            return Ok(());
        }
        let mut s = self.store.inner.lock();
        if s.inflight > 0 || s.container.has_pending() || s.container.size() != st.size {
            return Ok(());
        }
        let fd = s.container.file().as_raw_fd();
        let before = crate::fs::sys::fstat(fd)?;
        let previous = s.container.aux().cloned();
        s.container.set_aux(st.sha.aux_record(st.size));
        if let Err(e) = s.container.commit() {
            s.container.set_aux(previous);
            return Err(e.into());
        }
        let times = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            libc::timespec {
                tv_sec: before.st_mtime,
                tv_nsec: before.st_mtime_nsec,
            },
        ];
        // SAFETY: futimens reads the two timespecs of `times`, a live array of two.
        if unsafe { libc::futimens(fd, times.as_ptr()) } != 0 {
            return Err(FsError::new(crate::fs::sys::last_errno()));
        }
        Ok(())
    }

    /// Changes whenever the content or size seen through this state may have changed: the
    /// container's epoch (unique per mount and container state) and the write generation.
    pub fn content_version(&self) -> (u64, u64) {
        let generation = self.state.lock().generation;
        (self.store.inner.lock().epoch, generation)
    }

    /// The `user.deflatefs.info` description, with `disk` bytes allocated to the backing file.
    pub fn info(&self, disk: u64) -> FileInfo {
        let _turn = self.change_turn.lock();
        let mut st = self.state.lock();
        MutexGuard::unlocked(&mut st, || self.drain());
        let s = self.store.inner.lock();
        let mut info =
            FileInfo::for_container(s.container.index(), s.container.container_len(), disk);
        if info.size != st.size {
            // Data not written back yet: report the size the user sees.
            info.size = st.size;
            info.holes = s
                .container
                .index()
                .chunks_for(st.size)
                .saturating_sub(info.chunks);
        }
        info
    }
}
