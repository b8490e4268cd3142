//! Read-ahead: the chunks after a sequential reader's, decoded on the engine's queues by the
//! mount's prefetch worker (never on the reader's thread) and put in the chunk cache.

use super::read::chunk_key;
use super::*;

impl ContainerFile {
    /// The chunks of `first..first + count` within the file that are not resident: what
    /// read-ahead may decode.
    pub(super) fn readahead_candidates(&self, st: &WriteState, first: u64, count: u64) -> Vec<u64> {
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
    pub(super) fn start_readahead(&self, chunks: &[u64]) {
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
}

/// Read-ahead of some chunks of one file, run on the mount's prefetch worker.
pub(super) struct ReadaheadBatch {
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
    pub(super) fn run(self) {
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
