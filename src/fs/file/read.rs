//! Reads of a container: what a read takes under the state lock, then the loading, cache
//! lookup and decoding of stored chunks without it (see "Locks" in the parent module).

use super::*;

impl ContainerFile {
    pub(super) fn read(&self, offset: u64, size: usize) -> FsResult<Vec<u8>> {
        let mut out = Vec::new();
        self.read_into(offset, size, &mut out)?;
        Ok(out)
    }

    pub(super) fn read_into(&self, offset: u64, size: usize, out: &mut Vec<u8>) -> FsResult<()> {
        let mut st = self.state.lock();
        self.read_locked_into(&mut st, offset, size, out)
    }

    pub(super) fn read_locked(
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
    pub(super) fn read_locked_into(
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
    pub(super) fn newest_job(&self, chunk: u64) -> Option<u64> {
        self.store.inner.lock().newest_inflight.get(&chunk).copied()
    }

    /// Waits until the job numbered `seq` (and so every job before it: they land in order) has
    /// landed in the container.
    pub(super) fn wait_landed(&self, seq: Option<u64>) {
        let Some(seq) = seq else {
            return;
        };
        let mut s = self.store.inner.lock();
        while s.next_append <= seq {
            self.store.landed.wait(&mut s);
        }
    }

    /// Waits until every job of this file submitted so far for `chunk` has landed.
    pub(super) fn wait_chunk_idle(&self, chunk: u64) {
        self.wait_landed(self.newest_job(chunk));
    }

    /// The stored content of a chunk (without the dirty overlay), as far as its pieces reach;
    /// callers treat bytes beyond the returned length as zeros. Waits for the chunk's jobs in
    /// flight first: its newest stored version is wanted.
    pub(super) fn load_chunk(&self, chunk: u64) -> FsResult<Arc<Vec<u8>>> {
        self.load_chunk_after(chunk, self.newest_job(chunk))
    }

    /// [`Self::load_chunk`] of the version that job `after` (if any) stores or a later one.
    /// Takes no lock across its I/O and decoding; the index pieces and the descriptor they
    /// are read through are taken together, so a compaction meanwhile cannot mix them.
    pub(super) fn load_chunk_after(
        &self,
        chunk: u64,
        after: Option<u64>,
    ) -> FsResult<Arc<Vec<u8>>> {
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

    pub(super) fn report_damage(&self, chunk: u64, e: FsError) -> FsError {
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

    pub(super) fn decode_pieces(
        &self,
        file: &File,
        chunk: u64,
        pieces: &[IndexEntry],
    ) -> FsResult<Vec<u8>> {
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

    pub(super) fn decode_piece(&self, file: &File, p: &IndexEntry) -> FsResult<PoolBuf> {
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
}

impl FileContext {
    /// A stored piece in deflatefs's own block layout, read with one preadv that puts its
    /// payload straight into `out` (`p.logical_len` bytes) and its framing into small scratch
    /// buffers: no copy out of an input buffer, no queue round trip. Its framing and crc32 are
    /// checked as [`container::parse_data_member`] and the stored decode would. `None` when
    /// anything differs or the read comes up short: the general path then reads the member
    /// whole and gives the exact verdict (a different but valid block split, or the damage).
    pub(super) fn read_stored_in_place(
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
}

/// The cache key of `chunk` of file `node` stored as `pieces` in a container state of `epoch`
/// (None for a chunk with no pieces).
pub(super) fn chunk_key(
    node: u64,
    epoch: u64,
    chunk: u64,
    pieces: &[IndexEntry],
) -> Option<ChunkKey> {
    pieces.last().map(|last| ChunkKey {
        node,
        epoch,
        chunk,
        last_member_offset: last.member_offset,
        pieces: pieces.len() as u32,
    })
}

/// Fills `dst` with `data[from..from + dst.len()]`, reading bytes beyond `data.len()` as zeros.
pub(super) fn fill_from(dst: &mut [u8], data: &[u8], from: usize) {
    let have = data.len().saturating_sub(from).min(dst.len());
    if have > 0 {
        dst[..have].copy_from_slice(&data[from..from + have]);
    }
    dst[have..].fill(0);
}

/// Appends `data[from..from + len]` to `out`, reading bytes beyond `data.len()` as zeros.
pub(super) fn append_from(out: &mut Vec<u8>, data: &[u8], from: usize, len: usize) {
    let have = data.len().saturating_sub(from).min(len);
    if have > 0 {
        out.extend_from_slice(&data[from..from + have]);
    }
    out.resize(out.len() + (len - have), 0);
}

/// A stored chunk a read needs, noted under the state lock and loaded after it is let go.
pub(super) struct PendingLoad {
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
    pub(super) fn bytes_beyond_stored_content_read_as_zeros() {
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
