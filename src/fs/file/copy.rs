//! `copy_file_range` between two containers of one mount: whole chunks are copied as their data
//! members, moved to their new logical offset by rewriting each member's 16-byte payload, so
//! nothing is decompressed or compressed again (docs/COPY.md has the rules and the reasons).
//!
//! Locking: a copy never holds both files' write-state locks. Each batch of source chunks is
//! read under the source's lock alone (released before the destination's is taken), and each
//! destination chunk is replaced under the destination's lock alone. So copies A→B and B→A
//! running at once, or between two handles of one file, cannot deadlock; within one file the
//! order stays the usual one (write state, then store, then reader).

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use parking_lot::MutexGuard;

use super::digests::ShaTracker;
use super::writeback::LandingTurn;
use super::{ContainerFile, WriteState};
use crate::container::{self, IndexEntry, PieceKind};
use crate::fs::error::{FsError, FsResult};

/// Stored bytes of source members one batch holds in memory before they are appended to the
/// destination (a batch takes at least one chunk, whose members may be larger).
const BATCH_STORED_BYTES: usize = 8 << 20;

/// What a member copy did. `copied` counts bytes from the start of the range, without a gap:
/// everything before it is copied, nothing after it is (but see `error`).
#[derive(Debug, Default)]
pub struct MemberCopy {
    /// Bytes copied, from the start of the range.
    pub copied: u64,
    /// Data members appended to the destination.
    pub members: u64,
    /// Bytes copied as members (the rest of `copied` went through the byte-copy fallback).
    pub member_bytes: u64,
    /// Why the copy stopped before the end of the range, if it failed.
    pub error: Option<FsError>,
}

/// One source chunk, as a batch found it.
enum Found {
    /// The chunk's pieces in index order, already moved to the destination chunk: each entry
    /// with its member's bytes (none for a hole). Empty: the chunk holds no data (zeros).
    Pieces(Vec<(IndexEntry, Vec<u8>)>),
    /// Not copied as members (write-back failed, member framing damaged, beyond the source's
    /// size by now, or stored bytes beyond the end of a partial range): byte-copy it.
    Declined,
}

/// Chunks read from the source under one hold of its lock.
struct Batch {
    /// (bytes of the chunk inside the range, what was found), in chunk order.
    chunks: Vec<(u64, Found)>,
    /// The source's write generation while the batch was read.
    generation: u64,
    /// The source's running SHA-256 and size, when it was current.
    sha: Option<(ShaTracker, u64)>,
}

/// Carrying the source's SHA-256 state over to a destination that becomes an exact copy.
struct ShaCarry {
    sha: ShaTracker,
    /// Source size (= bytes hashed) and write generation when the state was taken.
    size: u64,
    src_generation: u64,
    /// The destination's generation after this copy's last change to it.
    dst_generation: Option<u64>,
}

impl ContainerFile {
    /// The file's chunk size as log2.
    pub fn chunk_log2(&self) -> u8 {
        self.chunk_log2
    }

    /// Copies `len` bytes at `off_in` of `src` to `off_out` of this file, both offsets at chunk
    /// boundaries and both files with this chunk size. Chunks whose destination is replaced
    /// whole are copied as data members; any other chunk goes through `fallback(src offset, dst
    /// offset, len)`, which copies bytes and returns how many (short: the source ended). `src`
    /// may be this very file (ranges that do not overlap, checked by the caller).
    pub fn copy_members_from(
        &self,
        src: &ContainerFile,
        off_in: u64,
        off_out: u64,
        len: u64,
        fallback: &mut dyn FnMut(u64, u64, u64) -> FsResult<u64>,
    ) -> MemberCopy {
        debug_assert_eq!(self.chunk_log2, src.chunk_log2);
        debug_assert_eq!(off_in & (self.chunk_size() as u64 - 1), 0);
        debug_assert_eq!(off_out & (self.chunk_size() as u64 - 1), 0);
        let mut out = MemberCopy::default();
        // Only a copy of a whole file onto the start of another can carry its SHA-256 over.
        let mut carry: Option<ShaCarry> = None;
        let mut carry_possible = off_in == 0 && off_out == 0 && self.ctx.digests;
        'batches: while out.copied < len {
            let (s0, d0) = (off_in + out.copied, off_out + out.copied);
            let batch = match src.copy_out(s0, d0, len - out.copied) {
                Ok(b) => b,
                Err(e) => {
                    out.error = Some(e);
                    break;
                }
            };
            if carry_possible {
                match (&mut carry, batch.sha) {
                    (None, Some((sha, size))) if out.copied == 0 => {
                        carry = Some(ShaCarry {
                            sha,
                            size,
                            src_generation: batch.generation,
                            dst_generation: None,
                        })
                    }
                    (Some(c), _) if c.src_generation == batch.generation => {}
                    _ => carry_possible = false,
                }
            }
            for (want, found) in batch.chunks {
                let (s, d) = (off_in + out.copied, off_out + out.copied);
                let applied = match found {
                    Found::Declined => Ok(None),
                    Found::Pieces(pieces) => {
                        let expect = carry
                            .as_ref()
                            .filter(|_| carry_possible)
                            .and_then(|c| c.dst_generation);
                        self.copy_in_chunk(d, want, pieces, expect)
                    }
                };
                match applied {
                    Ok(Some((members, generation))) => {
                        out.copied += want;
                        out.member_bytes += want;
                        out.members += members;
                        match &mut carry {
                            Some(c) if generation.is_some() => c.dst_generation = generation,
                            _ => carry_possible = false,
                        }
                    }
                    Ok(None) => {
                        carry_possible = false;
                        match fallback(s, d, want) {
                            Ok(n) => {
                                out.copied += n;
                                if n < want {
                                    break 'batches;
                                }
                            }
                            Err(e) => {
                                out.error = Some(e);
                                break 'batches;
                            }
                        }
                    }
                    Err(e) => {
                        out.error = Some(e);
                        break 'batches;
                    }
                }
            }
        }
        if let Some(c) = carry.filter(|c| carry_possible && c.size == out.copied) {
            let mut st = self.state.lock();
            if Some(st.generation) == c.dst_generation && st.size == c.size {
                // The destination holds exactly the source's bytes, unchanged since the state
                // was taken: its SHA-256 is the source's, and `user.deflatefs.sha256` of a
                // fresh copy answers at once instead of reading the whole file.
                st.sha = c.sha;
            }
        }
        out
    }

    /// Reads, under this (source) file's lock, the chunks from `s0` on that `len` bytes cover
    /// (at least one, then until about [`BATCH_STORED_BYTES`] of members), each with its
    /// members moved to the destination offset that `d0` gives the first.
    fn copy_out(&self, s0: u64, d0: u64, len: u64) -> FsResult<Batch> {
        let cs = self.chunk_size() as u64;
        let _turn = self.change_turn.lock();
        let mut st = self.state.lock();
        let mut batch = Batch {
            chunks: Vec::new(),
            generation: st.generation,
            sha: st
                .sha
                .is_current(st.size)
                .then(|| (st.sha.clone(), st.size)),
        };
        let mut stored = 0usize;
        let mut pos = s0;
        while pos < s0 + len && (batch.chunks.is_empty() || stored < BATCH_STORED_BYTES) {
            let want = cs.min(s0 + len - pos);
            let found = self.found_chunk(&mut st, pos, d0 + (pos - s0), want)?;
            if let Found::Pieces(p) = &found {
                stored += p.iter().map(|(_, m)| m.len()).sum::<usize>();
            }
            batch.chunks.push((want, found));
            pos += want;
        }
        Ok(batch)
    }

    /// Chunk at `pos` of this (source) file for a copy of its first `want` bytes to `dest`.
    fn found_chunk(
        &self,
        st: &mut MutexGuard<'_, WriteState>,
        pos: u64,
        dest: u64,
        want: u64,
    ) -> FsResult<Found> {
        let chunk = pos >> self.chunk_log2;
        if pos + want > st.size {
            // The source shrank since the range was measured: the byte copy copies what is left.
            return Ok(Found::Declined);
        }
        // Unwritten data goes through the normal write path first (compressed once, as it would
        // be at the next flush), so the members below are the chunk's current content.
        if st.dirty.get(&chunk).is_some_and(|d| d.dirty) {
            self.submit_chunk(st, chunk)?;
        }
        MutexGuard::unlocked(st, || self.wait_chunk_idle(chunk));
        let (pieces, reader) = {
            let s = self.store.inner.lock();
            if s.lost.contains_key(&chunk) {
                return Ok(Found::Declined);
            }
            // The reader is taken with the index under the store lock, which is how compaction
            // switches both: the member offsets always belong to this descriptor's file.
            (s.container.index().pieces(chunk).to_vec(), s.reader.clone())
        };
        let extent = pieces
            .iter()
            .map(|p| p.logical_offset + p.logical_len as u64 - pos)
            .max()
            .unwrap_or(0);
        if extent > want {
            // A partial range whose chunk holds more: those bytes are not the copy's to take.
            return Ok(Found::Declined);
        }
        let mut moved = Vec::with_capacity(pieces.len());
        for (i, p) in pieces.iter().enumerate() {
            let at = p.logical_offset - pos + dest;
            if p.kind == PieceKind::Hole {
                moved.push((IndexEntry::hole(dest), Vec::new()));
                continue;
            }
            let mut bytes = vec![0u8; p.stored_len as usize];
            let relocated = reader
                .read_exact_at(&mut bytes, p.member_offset)
                .map_err(FsError::from)
                .and_then(|()| {
                    // The first piece starts the chunk over in the destination, whatever its
                    // chunk held before.
                    container::relocate_data_member(&mut bytes, p, at, i == 0)
                        .map_err(FsError::from)
                });
            let Ok(mut e) = relocated else {
                // Damaged framing, or a member cut short: the byte copy reads the chunk through
                // the read path, which reports the damage (EIO) as a read would.
                return Ok(Found::Declined);
            };
            // A chaining value depends on the chunk's offset in the file: valid at the same
            // offset, else "not computed" (the digest then hashes this chunk's data once).
            if dest != pos {
                e.chaining_value = [0; 32];
            }
            moved.push((e, bytes));
        }
        Ok(Found::Pieces(moved))
    }

    /// Replaces this (destination) file's chunk at `d` by the moved `pieces` for a copy of
    /// `want` bytes; `Ok(None)` when it must be byte-copied instead (a partial range whose
    /// chunk has bytes after it to keep). On success returns the members appended and, when
    /// `expect` is the generation the file had (no one else changed it since this copy last
    /// did), the generation after this change.
    fn copy_in_chunk(
        &self,
        d: u64,
        want: u64,
        pieces: Vec<(IndexEntry, Vec<u8>)>,
        expect: Option<u64>,
    ) -> FsResult<Option<(u64, Option<u64>)>> {
        let cs = self.chunk_size() as u64;
        let chunk = d >> self.chunk_log2;
        let end = d
            .checked_add(want)
            .filter(|e| *e <= i64::MAX as u64)
            .ok_or(FsError::new(libc::EFBIG))?;
        let _turn = self.change_turn.lock();
        let mut st = self.state.lock();
        if let Some(e) = self.store.inner.lock().error.clone() {
            // As for a write: earlier data could not be stored, say so now.
            return Err(e);
        }
        if want < cs && st.size > end {
            // The chunk's bytes after the range stay: only a byte copy keeps them.
            return Ok(None);
        }
        let unchanged = expect.is_none_or(|g| g == st.generation);
        if end > st.size && st.size >> self.chunk_log2 != chunk {
            // As before any growth: bytes a shrink hid in the old last chunk must not return.
            self.clamp_tail_before_growth(&mut st)?;
        }
        // Every byte of the chunk is replaced (or lies beyond the new end): what is in memory
        // for it goes, and jobs already submitted for it must land before the copy does, or
        // they would land on top of it.
        // (Waited for before the chunk leaves `dirty`, and `st` then held until the copy's
        // pieces are in: a reader meanwhile finds the chunk's latest content, never older.)
        MutexGuard::unlocked(&mut st, || self.wait_chunk_idle(chunk));
        st.dirty.remove(&chunk);
        // The only appender while it holds the turn: members of other chunks that land
        // meanwhile wait, and are landed when it is dropped.
        let _landing = LandingTurn::take(&self.store, &self.label);
        let mut s = self.store.inner.lock();
        let had_data = !s.container.index().pieces(chunk).is_empty();
        let mut members = 0u64;
        if pieces.is_empty() {
            if had_data {
                s.container.append_hole(chunk).map_err(|e| {
                    FsError::from(e).context(format!("{}: copy into chunk {chunk}", self.label))
                })?;
            }
        } else {
            for (i, (entry, bytes)) in pieces.into_iter().enumerate() {
                let result = if entry.kind == PieceKind::Hole {
                    s.container.append_hole(chunk)
                } else {
                    members += 1;
                    s.container.append_member(&bytes, entry)
                };
                if let Err(e) = result {
                    let e = FsError::from(e).context(format!(
                        "{}: copying into chunk {chunk} (offset {d})",
                        self.label
                    ));
                    if i > 0 {
                        // Part of the chunk was replaced: like a write-back that failed, the
                        // chunk is lost until rewritten, and nothing is committed meanwhile.
                        tracing::error!("{e}");
                        s.error.get_or_insert(e.clone());
                        s.lost.insert(chunk, e.clone());
                    }
                    return Err(e);
                }
            }
        }
        s.lost.remove(&chunk);
        drop(s);
        st.size = st.size.max(end);
        self.size_for_stat.store(st.size, Ordering::Release);
        st.generation += 1;
        // Stale unless the caller carries the source's state over at the end.
        st.sha.invalidate();
        Ok(Some((members, unchanged.then_some(st.generation))))
    }
}
