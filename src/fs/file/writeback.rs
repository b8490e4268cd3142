//! Write-back of a container: writes into resident chunks, their submission to the engine as
//! whole-chunk, appended or overlay pieces, the landing of compressed members in sequence
//! order, flush and fsync (commit, fdatasync), truncation and the periodic commit.

use super::*;

impl ContainerFile {
    pub(super) fn write(&self, offset: u64, data: &[u8], append: bool) -> FsResult<usize> {
        let _turn = self.change_turn.lock();
        let mut st = self.state.lock();
        self.write_locked(&mut st, offset, data, append)
    }

    /// [`Self::write`] for a caller that holds the change turn and `st`.
    pub(super) fn write_locked(
        &self,
        st: &mut MutexGuard<'_, WriteState>,
        offset: u64,
        data: &[u8],
        append: bool,
    ) -> FsResult<usize> {
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
            self.clamp_tail_before_growth(st)?;
        }
        let mut pos = offset;
        while pos < end {
            let chunk = pos >> self.chunk_log2;
            let chunk_start = chunk << self.chunk_log2;
            let a = (pos - chunk_start) as usize;
            let b = ((end - chunk_start) as usize).min(cs);
            let src = &data[(pos - offset) as usize..(pos - offset) as usize + (b - a)];
            if !st.dirty.contains_key(&chunk) {
                let d = self.make_resident(st, chunk, a == 0 && b == cs)?;
                st.dirty.insert(chunk, d);
            }
            let d = st.dirty.get_mut(&chunk).expect("just inserted");
            let from = if a > d.valid {
                d.buf.bytes_mut()[d.valid..a].fill(0);
                d.valid
            } else {
                a
            };
            d.buf.bytes_mut()[a..b].copy_from_slice(src);
            d.changed = (d.changed.0.min(from), d.changed.1.max(b));
            d.valid = d.valid.max(b);
            d.dirty = true;
            pos = chunk_start + b as u64;
            if b == cs {
                // The writer reached the end of this chunk: compress it while it goes on.
                self.submit_chunk(st, chunk)?;
            }
        }
        st.size = st.size.max(end);
        self.size_for_stat.store(st.size, Ordering::Release);
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
                self.submit_chunk(st, chunk)?;
            }
        }
        Ok(data.len())
    }

    /// Brings a chunk into memory for writing. `overwritten` means the caller replaces all of it.
    pub(super) fn make_resident(
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
                buf: ChunkBuf::new(buf),
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
            buf: ChunkBuf::new(buf),
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
    pub(super) fn take_dirty_buffer(
        &self,
        st: &mut MutexGuard<'_, WriteState>,
    ) -> FsResult<PoolBuf> {
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

    pub(super) fn submit_all(&self, st: &mut MutexGuard<'_, WriteState>) -> FsResult<()> {
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
    pub(super) fn submit_chunk(
        &self,
        st: &mut MutexGuard<'_, WriteState>,
        chunk: u64,
    ) -> FsResult<()> {
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
        let out_len = container::stored_member_len(in_len);
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
                // Hashing a whole chunk takes longer than a reader or `stat` should wait for
                // `state`: hash a snapshot with it released. This thread holds the change
                // turn, so the chunk stays resident and unchanged meanwhile.
                let (snapshot, valid) = (d.buf.snapshot(), d.valid);
                MutexGuard::unlocked(st, || chunk_cv(chunk_start, &snapshot[..valid]))
            } else {
                [0; 32]
            };
            let d = st.dirty.get_mut(&chunk).expect("present");
            let input = match self.try_take_job_buffer(hi - lo) {
                Some(mut input) => {
                    input.copy_from_slice(&d.buf[lo..hi]);
                    input
                }
                None => {
                    // No dirty memory for a copy: the chunk gives up its own buffer (a writer
                    // waiting here for memory that only its own chunks hold would wait forever).
                    let mut buf = st.dirty.remove(&chunk).expect("present").buf.into_inner();
                    buf.copy_within(lo..hi, 0);
                    buf.set_len(hi - lo);
                    buf
                }
            };
            (input, lo, false, Some(cv))
        } else if d.valid == cs && !lost && !d.keep_after_submit {
            // Written whole by a streaming writer: hand the buffer over instead of copying it.
            let d = st.dirty.remove(&chunk).expect("present");
            (d.buf.into_inner(), 0, true, None)
        } else {
            let input = match self.try_take_job_buffer(d.valid) {
                Some(mut input) => {
                    input.copy_from_slice(&d.buf[..d.valid]);
                    input
                }
                None => {
                    // As above: hand the chunk's buffer over rather than wait for a copy's.
                    let d = st.dirty.remove(&chunk).expect("present");
                    let mut buf = d.buf.into_inner();
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
    pub(super) fn overlay_fits(&self, chunk: u64, len: usize) -> bool {
        let s = self.store.inner.lock();
        let pieces = s.container.index().pieces(chunk);
        let inflight = s.inflight_chunks.get(&chunk).copied().unwrap_or(0) as usize;
        let overlaid: usize = pieces.iter().skip(1).map(|p| p.logical_len as usize).sum();
        ((pieces.len() + inflight) as u64) < MAX_CHUNK_PIECES
            && overlaid + len <= self.chunk_size() / 2
    }

    /// A job input buffer of exactly `len` bytes from the dirty pool, if it has room now.
    pub(super) fn try_take_job_buffer(&self, len: usize) -> Option<PoolBuf> {
        let mut b = self.ctx.dirty_pool.try_take(len.max(1))?;
        b.set_len(len);
        Some(b)
    }

    /// Waits until every submitted job of this file has landed in the container.
    pub(super) fn drain(&self) {
        let mut s = self.store.inner.lock();
        while s.inflight > 0 {
            self.store.landed.wait(&mut s);
        }
    }

    /// Writes back everything and commits; with `durable`, also fdatasyncs the container.
    pub(super) fn flush(&self, durable: bool) -> FsResult<()> {
        let _turn = self.change_turn.lock();
        let mut st = self.state.lock();
        self.flush_locked(&mut st, durable)
    }

    /// [`Self::flush`] for a caller that holds the change turn and `st`.
    pub(super) fn flush_locked(
        &self,
        st: &mut MutexGuard<'_, WriteState>,
        durable: bool,
    ) -> FsResult<()> {
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
        // The rest needs only the size and the SHA-256 state from `state`: commit with it
        // released, so readers and `stat` never wait for a commit's writes.
        let size = st.size;
        let aux = st.sha.aux_record(size);
        MutexGuard::unlocked(st, || self.commit_and_sync(size, aux, durable))
    }

    /// Commits what landed at `size` (with the SHA-256 state `aux` if the commit records new
    /// content) and, with `durable`, fdatasyncs. For a caller that holds the change turn, with
    /// every job landed: nothing else appends to the container meanwhile, so fdatasyncs can run
    /// with `store.inner` released and still cover what they must.
    fn commit_and_sync(
        &self,
        size: u64,
        aux: Option<crate::container::AuxRecord>,
        durable: bool,
    ) -> FsResult<()> {
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
        if s.container.size() != size {
            s.container.set_size(size);
        }
        // The SHA-256 state rides along with a commit of new content, never makes one: a flush
        // after reads alone must leave the backing file (and so the file's mtime) untouched.
        if self.digests.writable() && s.container.has_content_pending() {
            s.container.set_aux(aux);
        }
        if s.container.commit_needs_sync() {
            // A checkpoint is only written once what it refers to is durable: make it so
            // here, with readers free to take `store.inner`, rather than inside the commit.
            drop(s);
            self.sync_unlocked()?;
            s = self.store.inner.lock();
        }
        crate::fs::test_hooks::commit_delay();
        s.container
            .commit()
            .map_err(|e| FsError::from(e).context(format!("{}: commit", self.label)))?;
        // Even with nothing new to commit, an earlier commit (a close's, the periodic one's) may
        // not be on disk yet; but when every byte the container holds was fdatasync'd already,
        // another fdatasync has nothing to write (a database fsyncs files it did not change).
        let synced = s.container.is_synced();
        drop(s);
        if durable && !synced {
            self.sync_unlocked()?;
        }
        Ok(())
    }

    /// fdatasyncs the container with no lock held and records it. A failure is remembered:
    /// every later fsync reports it, since the data it should have made durable may be lost
    /// while a later fdatasync succeeds.
    fn sync_unlocked(&self) -> FsResult<()> {
        let (file, len) = {
            let s = self.store.inner.lock();
            (s.reader.clone(), s.container.container_len())
        };
        let synced = file.sync_data();
        let mut s = self.store.inner.lock();
        if let Err(e) = synced {
            let e = FsError::from(e).context(format!("{}: fdatasync", self.label));
            tracing::error!("{e}");
            s.sync_failed = Some(e.clone());
            return Err(e);
        }
        s.container.mark_synced(len);
        Ok(())
    }

    pub(super) fn truncate(&self, size: u64) -> FsResult<()> {
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
            self.size_for_stat.store(st.size, Ordering::Release);
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
        self.size_for_stat.store(st.size, Ordering::Release);
        Ok(())
    }

    /// Before the file grows past `st.size`: when the chunk holding that end has stored bytes
    /// beyond it, makes the chunk resident (clamped to the end, see `make_resident`) to be
    /// rewritten as a RESET piece, so those bytes read as zeros once the file is longer, as
    /// after any truncation. A shrink always rewrites that chunk, but a crash or power cut can
    /// keep the commit of the shrunk size and lose the later one with the rewrite: the size
    /// alone then hides the old bytes, until the file grows (power-cut seed 26: a truncate up
    /// after recovery showed bytes of an earlier, longer version of the chunk).
    pub(super) fn clamp_tail_before_growth(
        &self,
        st: &mut MutexGuard<'_, WriteState>,
    ) -> FsResult<()> {
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

    pub(super) fn relieve_pressure(&self) {
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
pub(super) fn land_compressed(
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
    store.inner.lock().ready.insert(seq, ready);
    // Whoever holds the landing turn lands this member too (see `LandingTurn`).
    drop(LandingTurn::try_take(store, label));
}

/// The right to append to a file's container, held by one thread at a time: a thread landing
/// compressed members, or a copy appending its pieces. It lets the appender write with
/// `store.inner` released, so readers, which need that lock for the index, never wait for a
/// write to the backing file. Taken before `store.inner`.
///
/// Dropping it lands every member that is next in sequence order first, and gives the turn up
/// in the same hold of `store.inner` as it finds none: a completion that queues a member after
/// that finds the turn free, and one that queued before is landed. So no member waits in
/// `ready` with nobody to land it.
pub(super) struct LandingTurn<'a> {
    store: &'a Store,
    label: &'a str,
    turn: Option<MutexGuard<'a, ()>>,
}

impl<'a> LandingTurn<'a> {
    /// The turn, if nobody holds it (an engine completion: the holder lands its member).
    pub(super) fn try_take(store: &'a Store, label: &'a str) -> Option<Self> {
        let turn = store.landing.try_lock()?;
        Some(LandingTurn {
            store,
            label,
            turn: Some(turn),
        })
    }

    /// The turn, waiting for it.
    pub(super) fn take(store: &'a Store, label: &'a str) -> Self {
        LandingTurn {
            store,
            label,
            turn: Some(store.landing.lock()),
        }
    }
}

impl Drop for LandingTurn<'_> {
    fn drop(&mut self) {
        land_ready(self.store, self.label, &mut self.turn);
    }
}

/// Appends, one at a time and in sequence order, the members that are next to land, each
/// written with `store.inner` released; gives `turn` up once none is next (see
/// [`LandingTurn`]).
fn land_ready(store: &Store, label: &str, turn: &mut Option<MutexGuard<'_, ()>>) {
    let mut s = store.inner.lock();
    loop {
        let next = s.next_append;
        let Some(r) = s.ready.remove(&next) else {
            drop(turn.take());
            return;
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
                } else {
                    let member = &output[..len];
                    let stored = match s.container.begin_append(member, entry) {
                        Ok(slot) => {
                            // The landing turn keeps every other appender out; readers only
                            // look at the index, which changes in `finish_append`.
                            let file = s.reader.clone();
                            let written = MutexGuard::unlocked(&mut s, || {
                                crate::fs::test_hooks::member_write_delay();
                                file.write_all_at(member, slot.offset())
                            });
                            s.container.finish_append(slot, written)
                        }
                        Err(e) => Err(e),
                    };
                    if let Err(e) = stored {
                        let e = FsError::from(e).context(format!("{label}: writing chunk {chunk}"));
                        tracing::error!("{e}");
                        s.error.get_or_insert(e.clone());
                        s.lost.insert(chunk, e);
                    } else {
                        s.lost.remove(&chunk);
                    }
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
        // Per member, not per batch: a reader waits for the job it needs, not for the rest.
        store.landed.notify_all();
    }
}

/// Writes the member header and trailer around a compressed stream that the engine left at
/// `output[DATA_HEADER_LEN..]`, and describes it with an index entry whose chaining value is
/// `cv` (the whole chunk's after this piece).
pub(super) fn frame_member(
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
