//! Holes in a container: `fallocate` PUNCH_HOLE and ZERO_RANGE, and lseek's SEEK_DATA and
//! SEEK_HOLE. A hole is a whole chunk with no data (docs/FORMAT.md: a hole entry, or no entry);
//! punching one appends a hole entry and drops the chunk's stored members from the index, so
//! their space comes back at the next compaction. Parts of chunks are zeroed as writes of zeros.

use super::writeback::LandingTurn;
use super::*;

impl ContainerFile {
    /// Zeros `[offset, offset + len)` within the file's size (the size never changes): chunks
    /// the range covers to their end (or to the end of the file) become holes, the parts of
    /// chunks at either end are written with zeros. Chunks that are holes already stay so.
    pub(super) fn punch_hole(&self, offset: u64, len: u64) -> FsResult<()> {
        // One hold of the change turn for the whole range: neither a periodic commit nor a
        // writer sees it half punched.
        let _turn = self.change_turn.lock();
        let mut st = self.state.lock();
        let size = st.size;
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(());
        }
        let cs = self.chunk_size() as u64;
        let first_whole = offset.div_ceil(cs);
        // A chunk counts as covered if the range reaches its end or the end of the file.
        let end_whole = if end == size {
            size.div_ceil(cs)
        } else {
            end / cs
        };
        let zero_part = |st: &mut MutexGuard<'_, WriteState>, from: u64, to: u64| {
            if from < to && self.chunk_has_data(st, from >> self.chunk_log2) {
                self.write_locked(st, from, &vec![0u8; (to - from) as usize], false)?;
            }
            FsResult::Ok(())
        };
        if first_whole >= end_whole {
            // Inside one chunk, or across a boundary without covering a chunk.
            let mid = (first_whole << self.chunk_log2).clamp(offset, end);
            zero_part(&mut st, offset, mid)?;
            return zero_part(&mut st, mid, end);
        }
        zero_part(&mut st, offset, first_whole << self.chunk_log2)?;
        zero_part(&mut st, (end_whole << self.chunk_log2).min(end), end)?;
        st.generation += 1;
        st.sha.invalidate();
        for chunk in first_whole..end_whole {
            // Jobs already submitted for it would land on top of the hole: wait for them
            // first. `st` is held from the chunk leaving `dirty` until its hole is in, so a
            // reader meanwhile finds its latest content, never an older one.
            MutexGuard::unlocked(&mut st, || self.wait_chunk_idle(chunk));
            st.dirty.remove(&chunk);
            let _landing = LandingTurn::take(&self.store, &self.label);
            let mut s = self.store.inner.lock();
            s.lost.remove(&chunk);
            if !s.container.index().pieces(chunk).is_empty() {
                s.container.append_hole(chunk).map_err(|e| {
                    FsError::from(e).context(format!("{}: punching chunk {chunk}", self.label))
                })?;
            }
        }
        Ok(())
    }

    /// Whether `chunk` holds data: stored, resident or on its way to the container.
    fn chunk_has_data(&self, st: &WriteState, chunk: u64) -> bool {
        if st.dirty.contains_key(&chunk) {
            return true;
        }
        let s = self.store.inner.lock();
        s.inflight_chunks.contains_key(&chunk) || !s.container.index().pieces(chunk).is_empty()
    }

    /// lseek(2) with SEEK_DATA or SEEK_HOLE from `offset`, at chunk granularity: every chunk
    /// that holds data counts as data throughout; the end of the file is a hole. ENXIO at or
    /// beyond the end, and for SEEK_DATA when no data follows.
    pub(super) fn seek_data_or_hole(&self, offset: u64, data: bool) -> FsResult<u64> {
        let st = self.state.lock();
        let size = st.size;
        if offset >= size {
            return Err(FsError::new(libc::ENXIO));
        }
        let s = self.store.inner.lock();
        let has_data = |chunk: u64| {
            st.dirty.contains_key(&chunk)
                || s.inflight_chunks.contains_key(&chunk)
                || !s.container.index().pieces(chunk).is_empty()
        };
        let last = (size - 1) >> self.chunk_log2;
        let mut chunk = offset >> self.chunk_log2;
        if data {
            // Candidates: the next stored chunk and the next resident or in-flight one.
            while chunk <= last {
                if has_data(chunk) {
                    return Ok(offset.max(chunk << self.chunk_log2));
                }
                let stored = s.container.index().next_data_chunk(chunk + 1);
                let resident = st.dirty.range(chunk + 1..).next().map(|(c, _)| *c);
                let flying = s
                    .inflight_chunks
                    .keys()
                    .filter(|c| **c > chunk)
                    .min()
                    .copied();
                match [stored, resident, flying].into_iter().flatten().min() {
                    Some(next) => chunk = next,
                    None => break,
                }
            }
            Err(FsError::new(libc::ENXIO))
        } else {
            while chunk <= last && has_data(chunk) {
                chunk += 1;
            }
            Ok(offset.max((chunk << self.chunk_log2).min(size)))
        }
    }
}
