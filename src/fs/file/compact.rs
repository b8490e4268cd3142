//! Compaction of an open container: the rewrite of every chunk into a fresh container and
//! the switch to it (the install into the backing directory is `fs::compaction`'s).

use super::writeback::frame_member;
use super::*;

impl ContainerFile {
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
    pub(super) fn compacted_member(&self, chunk: u64) -> FsResult<Option<(Vec<u8>, IndexEntry)>> {
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
            .take_many([len, container::stored_member_len(len)])
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
}
