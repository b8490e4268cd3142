//! The in-memory chunk index and its replay rules (FORMAT.md "Reading a container", steps 3-4).

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use super::{corrupt, IndexEntry, PieceKind, Result};

/// The pieces of one non-empty chunk; the common one-piece case is stored inline.
#[derive(Clone, Debug)]
enum Slot {
    One(IndexEntry),
    /// `reach`: the logical end of the furthest piece.
    Many {
        pieces: Vec<IndexEntry>,
        reach: u64,
    },
}

fn piece_end(e: &IndexEntry) -> u64 {
    e.logical_offset + e.logical_len as u64
}

impl Slot {
    fn as_slice(&self) -> &[IndexEntry] {
        match self {
            Slot::One(e) => std::slice::from_ref(e),
            Slot::Many { pieces, .. } => pieces,
        }
    }

    fn reach(&self) -> u64 {
        match self {
            Slot::One(e) => piece_end(e),
            Slot::Many { reach, .. } => *reach,
        }
    }

    /// Adds a piece after the others; returns whether it is an overlay piece (it starts below
    /// what the pieces before it reach, so it replaces stored bytes instead of adding some).
    fn push(&mut self, e: IndexEntry) -> bool {
        let overlay = e.logical_offset < self.reach();
        let reach = self.reach().max(piece_end(&e));
        match self {
            Slot::One(first) => {
                let first = first.clone();
                *self = Slot::Many {
                    pieces: vec![first, e],
                    reach,
                };
            }
            Slot::Many { pieces, reach: r } => {
                pieces.push(e);
                *r = reach;
            }
        }
        overlay
    }

    /// Stored bytes of the overlay pieces (see [`Slot::push`]).
    fn overlay_stored(&self) -> u64 {
        let Slot::Many { pieces, .. } = self else {
            return 0;
        };
        let mut reach = 0;
        let mut sum = 0;
        for (i, p) in pieces.iter().enumerate() {
            if i > 0 && p.logical_offset < reach {
                sum += p.stored_len as u64;
            }
            reach = reach.max(piece_end(p));
        }
        sum
    }
}

/// The chunk index of one file: for every chunk, the pieces to apply in order.
///
/// Only chunks that hold data take memory (a `BTreeMap` keyed by chunk number, about 100 bytes per
/// non-empty chunk), so sparse files and corrupt offsets cannot make it allocate by logical size.
#[derive(Clone, Debug)]
pub struct ChunkIndex {
    chunk_log2: u8,
    size: u64,
    chunks: BTreeMap<u64, Slot>,
    live_entries: u64,
    live_stored: u64,
    overlay_stored: u64,
}

impl ChunkIndex {
    /// An empty index (size 0) for chunks of `1 << chunk_log2` bytes.
    pub fn new(chunk_log2: u8) -> Self {
        assert!(chunk_log2 < 64);
        ChunkIndex {
            chunk_log2,
            size: 0,
            chunks: BTreeMap::new(),
            live_entries: 0,
            live_stored: 0,
            overlay_stored: 0,
        }
    }

    pub fn chunk_log2(&self) -> u8 {
        self.chunk_log2
    }

    pub fn chunk_size(&self) -> u64 {
        1u64 << self.chunk_log2
    }

    /// Logical file size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Number of the chunk holding logical offset `offset`.
    pub fn chunk_of(&self, offset: u64) -> u64 {
        offset >> self.chunk_log2
    }

    /// Number of chunks covering `size` bytes (the first chunk starting at or after `size`).
    pub fn chunks_for(&self, size: u64) -> u64 {
        (size >> self.chunk_log2) + u64::from(size & (self.chunk_size() - 1) != 0)
    }

    /// Sets the logical size and drops every chunk that starts at or after it.
    pub fn set_size(&mut self, size: u64) {
        self.size = size;
        let first = self.chunks_for(size);
        if self.chunks.range(first..).next().is_some() {
            let dropped = self.chunks.split_off(&first);
            for slot in dropped.values() {
                self.forget(slot);
            }
        }
    }

    /// True if a chunk at or after `size` holds data (i.e. `set_size(size)` would drop data).
    pub fn has_data_from(&self, size: u64) -> bool {
        self.chunks.range(self.chunks_for(size)..).next().is_some()
    }

    fn forget(&mut self, slot: &Slot) {
        self.overlay_stored -= slot.overlay_stored();
        for e in slot.as_slice() {
            self.live_entries -= 1;
            self.live_stored -= e.stored_len as u64;
        }
    }

    /// Applies one entry: RESET (always set on holes) clears the chunk's pieces; a hole leaves the
    /// chunk empty; any other entry appends a piece.
    pub fn apply(&mut self, e: IndexEntry) {
        let chunk = self.chunk_of(e.logical_offset);
        if e.kind == PieceKind::Hole {
            if let Some(old) = self.chunks.remove(&chunk) {
                self.forget(&old);
            }
            return;
        }
        self.live_entries += 1;
        self.live_stored += e.stored_len as u64;
        // One map lookup per entry: replaying a large file's index is mostly this.
        let replaced = match self.chunks.entry(chunk) {
            Entry::Occupied(mut o) if e.reset => Some(std::mem::replace(o.get_mut(), Slot::One(e))),
            Entry::Occupied(mut o) => {
                let stored = e.stored_len as u64;
                if o.get_mut().push(e) {
                    self.overlay_stored += stored;
                }
                None
            }
            Entry::Vacant(v) => {
                v.insert(Slot::One(e));
                None
            }
        };
        if let Some(old) = replaced {
            self.forget(&old);
        }
    }

    /// Replays one commit (docs/FORMAT.md, "Reading a container"): a checkpoint starts from an empty index,
    /// then each entry is applied in order ([`ChunkIndex::apply`]), then the logical size is set.
    /// The one replay rule, for opening a container and for salvaging one.
    pub fn apply_commit(
        &mut self,
        checkpoint: bool,
        entries: impl IntoIterator<Item = IndexEntry>,
        size: u64,
    ) {
        if checkpoint {
            *self = ChunkIndex::new(self.chunk_log2());
        }
        for e in entries {
            self.apply(e);
        }
        self.set_size(size);
    }

    /// The pieces of `chunk`, in order (empty for holes and beyond the end).
    pub fn pieces(&self, chunk: u64) -> &[IndexEntry] {
        self.chunks.get(&chunk).map_or(&[], Slot::as_slice)
    }

    /// Number of chunks holding data.
    pub fn chunk_count(&self) -> u64 {
        self.chunks.len() as u64
    }

    /// Number of chunks below the logical size without data.
    pub fn hole_count(&self) -> u64 {
        let n = self.chunks_for(self.size);
        let beyond = self.chunks.range(n..).count() as u64;
        n - (self.chunk_count() - beyond)
    }

    /// The first chunk from `from` on that holds data.
    pub fn next_data_chunk(&self, from: u64) -> Option<u64> {
        self.chunks.range(from..).next().map(|(c, _)| *c)
    }

    /// Numbers of the chunks holding data, ascending.
    pub fn data_chunks(&self) -> impl Iterator<Item = u64> + '_ {
        self.chunks.keys().copied()
    }

    /// Every live entry, in chunk order then piece order.
    pub fn live_entries(&self) -> impl Iterator<Item = &IndexEntry> + '_ {
        self.chunks.values().flat_map(Slot::as_slice)
    }

    /// Number of live entries.
    pub fn live_entry_count(&self) -> u64 {
        self.live_entries
    }

    /// Total stored length of the live data members.
    pub fn live_stored_bytes(&self) -> u64 {
        self.live_stored
    }

    /// Stored length of the live overlay pieces (pieces laid over bytes their chunk already
    /// stored): a compaction, which writes each chunk as one piece, gets about this much back.
    pub fn overlay_stored_bytes(&self) -> u64 {
        self.overlay_stored
    }
}

/// Checks that a chunk's pieces are ones a deflatefs writer makes (docs/FORMAT.md, "Read a
/// chunk"): a RESET piece starts at the chunk's first byte; every other piece starts within what
/// the pieces before it reach (continuing them, or laid over them), and lies in a later member.
/// Anything else (gaps, duplicate entries, members out of order) is damage, not a version that
/// was ever written: an I/O error for the chunk.
pub fn check_piece_order(chunk_start: u64, pieces: &[IndexEntry]) -> Result<()> {
    let mut reach = 0u64;
    let mut last_member: Option<u64> = None;
    for p in pieces {
        let at = p.logical_offset - chunk_start;
        if p.reset {
            reach = 0;
            if at != 0 {
                return Err(corrupt(
                    "a replacing piece does not start its chunk",
                    p.logical_offset,
                ));
            }
        }
        if at > reach {
            return Err(corrupt(
                format!(
                    "piece leaves a gap in its chunk (stored bytes end at {})",
                    chunk_start + reach
                ),
                p.logical_offset,
            ));
        }
        if p.kind != PieceKind::Hole {
            if last_member.is_some_and(|m| p.member_offset <= m) {
                return Err(corrupt(
                    format!(
                        "piece is stored at {}, not after the piece before it",
                        p.member_offset
                    ),
                    p.logical_offset,
                ));
            }
            last_member = Some(p.member_offset);
        }
        reach = reach.max(at + p.logical_len as u64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(off: u64, len: u32, reset: bool, member: u64) -> IndexEntry {
        IndexEntry {
            logical_offset: off,
            logical_len: len,
            member_offset: member,
            stored_len: 100,
            crc32: 0,
            kind: PieceKind::Stored,
            reset,
            level: 0,
            window_log2: 0,
            chaining_value: [0; 32],
        }
    }

    #[test]
    fn non_reset_pieces_accumulate_and_reset_clears() {
        let mut ix = ChunkIndex::new(12);
        ix.apply(piece(0, 10, true, 100));
        ix.apply(piece(10, 10, false, 200));
        ix.apply(piece(20, 10, false, 300));
        assert_eq!(ix.pieces(0).len(), 3);
        assert_eq!(ix.live_entry_count(), 3);
        assert_eq!(ix.live_stored_bytes(), 300);
        ix.apply(piece(0, 4096, true, 400));
        assert_eq!(ix.pieces(0), &[piece(0, 4096, true, 400)]);
        assert_eq!(ix.live_entry_count(), 1);
        assert_eq!(ix.live_stored_bytes(), 100);
    }

    #[test]
    fn overlay_pieces_are_counted_until_their_chunk_is_replaced() {
        let mut idx = ChunkIndex::new(12);
        idx.apply(piece(0, 2000, true, 100)); // each stored in 100 bytes (see `piece`)
        idx.apply(piece(2000, 1000, false, 200)); // continues the chunk: not an overlay
        assert_eq!(idx.overlay_stored_bytes(), 0);
        idx.apply(piece(100, 10, false, 300)); // over stored bytes
        idx.apply(piece(2990, 500, false, 400)); // starts below the reach (3000)
        assert_eq!(idx.overlay_stored_bytes(), 200);
        idx.apply(piece(4096, 10, true, 500));
        idx.apply(piece(4100, 10, false, 600));
        assert_eq!(idx.overlay_stored_bytes(), 300);
        idx.apply(piece(0, 4096, true, 700));
        assert_eq!(idx.overlay_stored_bytes(), 100);
        idx.set_size(4096);
        assert_eq!(idx.overlay_stored_bytes(), 0);
    }

    #[test]
    fn hole_entry_empties_the_chunk() {
        let mut ix = ChunkIndex::new(12);
        ix.apply(piece(4096, 10, true, 100));
        ix.apply(piece(4106, 10, false, 200));
        ix.set_size(8192);
        ix.apply(IndexEntry::hole(4096));
        assert!(ix.pieces(1).is_empty());
        assert_eq!(ix.chunk_count(), 0);
        assert_eq!(ix.hole_count(), 2);
        assert_eq!(ix.live_entry_count(), 0);
        assert_eq!(ix.live_stored_bytes(), 0);
    }

    #[test]
    fn set_size_drops_chunks_starting_at_or_after_size() {
        let mut ix = ChunkIndex::new(12);
        for c in 0..4u64 {
            ix.apply(piece(c << 12, 4096, true, 1000 + c));
        }
        ix.set_size(4 * 4096);
        assert_eq!(ix.chunk_count(), 4);
        ix.set_size(4096 + 1); // chunk 1 keeps its data, 2 and 3 dropped
        assert_eq!(ix.chunk_count(), 2);
        assert_eq!(ix.pieces(1).len(), 1);
        assert!(ix.pieces(2).is_empty());
        ix.set_size(4096); // chunk 1 starts at the size: dropped
        assert_eq!(ix.chunk_count(), 1);
        ix.set_size(10 * 4096);
        assert_eq!(ix.hole_count(), 9);
        assert_eq!(ix.live_entry_count(), 1);
        assert_eq!(ix.live_entries().count(), 1);
        ix.set_size(0);
        assert_eq!(ix.chunk_count(), 0);
        assert_eq!(ix.hole_count(), 0);
    }

    #[test]
    fn live_entries_are_in_chunk_then_piece_order() {
        let mut ix = ChunkIndex::new(12);
        ix.apply(piece(8192, 1, true, 1));
        ix.apply(piece(0, 1, true, 2));
        ix.apply(piece(1, 1, false, 3));
        let m: Vec<u64> = ix.live_entries().map(|e| e.member_offset).collect();
        assert_eq!(m, vec![2, 3, 1]);
        assert_eq!(ix.data_chunks().collect::<Vec<_>>(), vec![0, 2]);
    }

    #[test]
    fn one_piece_chunks_are_stored_inline_and_small() {
        assert_eq!(std::mem::size_of::<IndexEntry>(), 64);
        assert!(std::mem::size_of::<Slot>() <= 72);
    }

    #[test]
    fn huge_sizes_and_offsets_do_not_overflow_or_allocate() {
        let mut ix = ChunkIndex::new(22);
        ix.apply(piece(i64::MAX as u64 - 10, 10, true, 1));
        ix.set_size(u64::MAX);
        assert_eq!(ix.chunk_count(), 1);
        assert_eq!(ix.hole_count(), ix.chunks_for(u64::MAX) - 1);
        ix.set_size(0);
        assert_eq!(ix.chunk_count(), 0);
    }
}
