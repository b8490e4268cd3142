//! Salvage: reading a damaged container member by member, reporting damage instead of stopping.
//!
//! [`Container::open`] stops at the first thing wrong, as a reader must. `deflatefs fsck` needs
//! the opposite: every problem of a commit chain ([`audit_history`]), whether a file that does not
//! open is a container whose header was lost ([`lost_header`]), and what can be recovered from
//! the members that are still intact ([`scan_members`] then [`replay_scan`], the basis of
//! `fsck --repair`, docs/FORMAT.md "Repairs"). The format knowledge for that lives here; what to
//! report and how to rewrite the file is fsck's.
//!
//! Like the rest of the module, none of this panics, loops forever or allocates beyond what the
//! input's length justifies, whatever the bytes are (`tests/fuzz_containers.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use super::file::{read_commit_entries, DEFAULT_CHUNK_LOG2};
use super::member::{build_stored_member, decode_piece, member_trailer};
use super::member::{DATA_FLAG_RESET, DATA_FLAG_STORED};
use super::record::{
    index_member_len, member_starts_at, parse_index_member_rest, u32_at, u64_at, AuxRecord,
    CommitRecord, FRAMING_LEN, GZIP_ID, MAGIC, RECORD_COMMIT, RECORD_DATA, RECORD_HEADER,
    RECORD_INDEX, SUBFIELD_ID1,
};
use super::{
    ChunkIndex, Container, IndexEntry, PieceKind, AUX_MEMBER_LEN, COMMIT_MEMBER_LEN,
    DATA_HEADER_LEN, HEADER_MEMBER_LEN, MAX_CHUNK_LOG2, MEMBER_TRAILER_LEN, MIN_CHUNK_LOG2,
};

/// Whether the first bytes look like a deflatefs header member (framing and magic), valid or not.
pub fn looks_like_header_member(b: &[u8]) -> bool {
    b.len() >= 24
        && b[..10] == GZIP_ID
        && b[12] == SUBFIELD_ID1
        && b[13] == RECORD_HEADER
        && &b[16..24] == MAGIC
}

/// How far into a file that does not begin with a header [`lost_header`] looks for the end of a
/// zero-filled prefix.
const LOST_HEADER_SCAN: usize = 4 << 20;

/// Whether `b`, the bytes of a file that does not begin with a valid header member, is a
/// deflatefs container whose header was lost: overwritten or zeroed in place, or (after a power
/// cut, for a file never fsync'd) the first blocks lost and read back as zeros while later ones
/// survived. Any of:
/// - a deflatefs member (framing and crc32 checked) starts where a header member ends;
/// - the file begins with zeros and a deflatefs member starts right after them;
/// - the file ends with a commit member that records its own offset as exactly that position.
///
/// A plain file matches only if it embeds valid deflatefs members at exactly those places. A
/// file of zeros alone (a creation cut short) does not match.
pub fn lost_header(b: &[u8]) -> bool {
    lost_header_in(b.len() as u64, |at, n| {
        let at = (at as usize).min(b.len());
        b[at..b.len().min(at + n)].to_vec()
    })
}

/// [`lost_header`] for a file, reading only the parts it needs.
pub fn file_lost_header(file: &File) -> bool {
    let Ok(md) = file.metadata() else {
        return false;
    };
    lost_header_in(md.len(), |at, n| {
        let mut buf = vec![0u8; n];
        let mut got = 0;
        while got < n {
            match file.read_at(&mut buf[got..], at + got as u64) {
                Ok(0) | Err(_) => break,
                Ok(k) => got += k,
            }
        }
        buf.truncate(got);
        buf
    })
}

/// The test of [`lost_header`] over a file of `len` bytes read through `read(offset, len)`.
fn lost_header_in(len: u64, read: impl Fn(u64, usize) -> Vec<u8>) -> bool {
    // Enough for any member but a data member's stream: an index member's payload length is a
    // u16; a data member is recognised by its header alone.
    const WINDOW: usize = FRAMING_LEN + (u16::MAX as usize) + 10;
    if len < (HEADER_MEMBER_LEN + FRAMING_LEN) as u64 {
        return false;
    }
    let head = read(0, HEADER_MEMBER_LEN + WINDOW);
    if member_starts_at(&head, HEADER_MEMBER_LEN) {
        return true;
    }
    // The end of a zero-filled prefix, if there is one.
    let mut z = None;
    let mut at = 0u64;
    while at < len.min(LOST_HEADER_SCAN as u64) {
        let block = read(at, 1 << 20);
        if block.is_empty() {
            break;
        }
        if let Some(i) = block.iter().position(|&x| x != 0) {
            z = Some(at + i as u64);
            break;
        }
        at += block.len() as u64;
    }
    if let Some(z) = z.filter(|z| *z > 0) {
        if member_starts_at(&read(z, WINDOW), 0) {
            return true;
        }
    }
    let Some(pos) = len.checked_sub(COMMIT_MEMBER_LEN as u64) else {
        return false;
    };
    let tail = read(pos, COMMIT_MEMBER_LEN);
    pos >= HEADER_MEMBER_LEN as u64
        && tail.len() == COMMIT_MEMBER_LEN
        && tail[..10] == GZIP_ID
        && tail[13] == RECORD_COMMIT
        && CommitRecord::decode(&tail, pos).is_ok_and(|c| c.offset == pos)
}

/// Checks the commit chain of `c` beyond what a read needs (from the last checkpoint back to the
/// first commit), every index member on the way, and the last commit's auxiliary member; returns
/// every problem found, one sentence each (empty: the history is intact). Unlike opening, it
/// does not stop at the last checkpoint, nor at a damaged index member.
pub fn audit_history(c: &Container) -> Vec<String> {
    let file = c.file();
    let mut problems = Vec::new();
    let last_off = c.container_len() - COMMIT_MEMBER_LEN as u64;
    let mut b = [0u8; COMMIT_MEMBER_LEN];
    if file.read_exact_at(&mut b, last_off).is_err() {
        return vec!["cannot read the last commit".into()];
    }
    let Ok(mut cur) = CommitRecord::decode(&b, last_off) else {
        return vec!["the last commit does not decode".into()];
    };
    if cur.aux != u64::MAX {
        let mut a = [0u8; AUX_MEMBER_LEN];
        let ok =
            file.read_exact_at(&mut a, cur.aux).is_ok() && AuxRecord::decode(&a, cur.aux).is_ok();
        if !ok {
            problems.push(format!(
                "auxiliary member at {} is damaged (its digest state is recomputed)",
                cur.aux
            ));
        }
    }
    let mut steps = 0u64;
    loop {
        if let Err(e) = read_commit_entries(file, &cur, c.chunk_log2()) {
            problems.push(format!(
                "index of commit {} (at {}): {e}",
                cur.seq, cur.offset
            ));
        }
        if cur.prev == u64::MAX {
            if cur.seq != 1 && !cur.checkpoint {
                problems.push(format!(
                    "commit {} (at {}) has no predecessor and is not a checkpoint",
                    cur.seq, cur.offset
                ));
            }
            break;
        }
        steps += 1;
        if steps > 10_000_000 {
            problems.push("commit chain too long".into());
            break;
        }
        if cur.prev >= cur.offset || file.read_exact_at(&mut b, cur.prev).is_err() {
            problems.push(format!(
                "commit {} (at {}) points to an unreadable previous commit at {}",
                cur.seq, cur.offset, cur.prev
            ));
            break;
        }
        match CommitRecord::decode(&b, cur.prev) {
            Ok(p) if p.seq.checked_add(1) == Some(cur.seq) => cur = p,
            Ok(p) => {
                problems.push(format!(
                    "commit sequence {} at {} is followed by {} at {} (older history)",
                    p.seq, p.offset, cur.seq, cur.offset
                ));
                break;
            }
            Err(e) => {
                problems.push(format!("older commit history damaged: {e}"));
                break;
            }
        }
    }
    problems
}

/// A member found by [`scan_members`].
#[derive(Debug)]
pub enum FoundMember {
    /// A data member that decodes: its entry (member offset and stored length filled in).
    Data(IndexEntry),
    /// A data member that does not decode (its payload says which chunk it belonged to).
    Damaged { offset: u64, logical_offset: u64 },
    /// An index member that parses, and its entries.
    Index {
        offset: u64,
        entries: Vec<IndexEntry>,
    },
    /// A commit member that decodes.
    Commit(CommitRecord),
}

/// What [`scan_members`] found: the members in file order, and the byte ranges that are no
/// member at all.
#[derive(Debug, Default)]
pub struct MemberScan {
    pub found: Vec<FoundMember>,
    pub garbage: Vec<Range<usize>>,
}

/// The next position after `from` where a member starts (or the end of the file).
fn next_member(b: &[u8], from: usize) -> usize {
    let mut i = from;
    while i + FRAMING_LEN <= b.len() {
        match b[i..].iter().position(|&x| x == 0x1f) {
            None => return b.len(),
            Some(k) => i += k,
        }
        if member_starts_at(b, i) {
            return i;
        }
        i += 1;
    }
    b.len()
}

/// Tries to read a data member starting at `pos` and ending at `end`; its entry if it decodes.
fn data_member(
    b: &[u8],
    pos: usize,
    end: usize,
    chunk_log2: u8,
    d: &mut libdeflater::Decompressor,
) -> Option<IndexEntry> {
    if end - pos < DATA_HEADER_LEN + 2 + MEMBER_TRAILER_LEN {
        return None;
    }
    let logical_offset = u64_at(b, pos + 16);
    let flags = u32_at(b, pos + 24);
    let crc = u32_at(b, end - 8);
    let isize = u32_at(b, end - 4) as u64;
    let cs = 1u64 << chunk_log2;
    if isize > cs - (logical_offset & (cs - 1)) || logical_offset > i64::MAX as u64 {
        return None;
    }
    let stored = flags & DATA_FLAG_STORED != 0;
    let e = IndexEntry {
        logical_offset,
        logical_len: isize as u32,
        member_offset: pos as u64,
        stored_len: (end - pos) as u32,
        crc32: crc,
        kind: if stored {
            PieceKind::Stored
        } else {
            PieceKind::Deflate
        },
        reset: flags & DATA_FLAG_RESET != 0,
        level: 0,
        window_log2: if stored { 0 } else { 15 },
        chaining_value: [0; 32],
    };
    let mut out = vec![0u8; isize as usize];
    decode_piece(&b[pos..end], &e, d, &mut out).ok().map(|_| e)
}

/// Scans the members of the container bytes `b` from just after its header, whatever is
/// damaged: a data member is found whole when some later member start (or the end of `b`) ends
/// it so that it decodes, within the reach of a member of a `chunk_log2` chunk; a data member
/// header with no such end is reported [`FoundMember::Damaged`], and bytes where no member starts are
/// reported as garbage.
pub fn scan_members(b: &[u8], chunk_log2: u8) -> MemberScan {
    let mut found = Vec::new();
    let mut garbage = Vec::new();
    let mut d = libdeflater::Decompressor::new();
    let max_member = super::stored_member_len(1 << chunk_log2) + 1024;
    let mut pos = HEADER_MEMBER_LEN.min(b.len());
    while pos < b.len() {
        if !member_starts_at(b, pos) {
            let next = next_member(b, pos + 1);
            garbage.push(pos..next);
            pos = next;
            continue;
        }
        match b[pos + 13] {
            RECORD_DATA => {
                // Its end is where a later member starts: try the candidates in order.
                let mut end = next_member(b, pos + DATA_HEADER_LEN);
                let mut ok = None;
                loop {
                    if let Some(e) = data_member(b, pos, end, chunk_log2, &mut d) {
                        ok = Some(e);
                        break;
                    }
                    if end >= b.len() || end - pos > max_member {
                        break;
                    }
                    end = next_member(b, end + 1);
                }
                match ok {
                    Some(e) => {
                        pos += e.stored_len as usize;
                        found.push(FoundMember::Data(e));
                    }
                    None => {
                        found.push(FoundMember::Damaged {
                            offset: pos as u64,
                            logical_offset: u64_at(b, pos + 16),
                        });
                        pos = next_member(b, pos + DATA_HEADER_LEN);
                    }
                }
            }
            RECORD_COMMIT => {
                let c = CommitRecord::decode(&b[pos..pos + COMMIT_MEMBER_LEN], pos as u64)
                    .expect("checked");
                found.push(FoundMember::Commit(c));
                pos += COMMIT_MEMBER_LEN;
            }
            RECORD_INDEX => {
                let plen = u16::from_le_bytes([b[pos + 14], b[pos + 15]]) as usize;
                let end = pos + FRAMING_LEN + plen + 10;
                let entries = parse_index_member_rest(&b[pos + FRAMING_LEN..end], pos as u64)
                    .expect("checked");
                found.push(FoundMember::Index {
                    offset: pos as u64,
                    entries,
                });
                pos = end;
            }
            _ => pos += AUX_MEMBER_LEN,
        }
    }
    MemberScan { found, garbage }
}

/// The chunk size of a container whose header may be damaged: the header's if plausible, else
/// the smallest size no data member crosses a boundary of.
pub fn guess_chunk_log2(b: &[u8]) -> u8 {
    if b.len() > 26 && (MIN_CHUNK_LOG2..=MAX_CHUNK_LOG2).contains(&b[26]) {
        return b[26];
    }
    let pieces: Vec<(u64, u64)> = scan_members(b, MAX_CHUNK_LOG2)
        .found
        .iter()
        .filter_map(|f| match f {
            FoundMember::Data(e) => Some((e.logical_offset, e.logical_len as u64)),
            _ => None,
        })
        .collect();
    (MIN_CHUNK_LOG2..=MAX_CHUNK_LOG2)
        .find(|l| {
            pieces
                .iter()
                .all(|(o, n)| *n == 0 || (o >> l) == ((o + n - 1) >> l))
        })
        .unwrap_or(DEFAULT_CHUNK_LOG2)
}

/// What [`replay_scan`] recovered.
#[derive(Debug)]
pub struct Salvage {
    /// The live index; its entries point into the scanned bytes.
    pub index: ChunkIndex,
    /// Chunks (below the logical size) whose data cannot be recovered.
    pub poisoned: BTreeSet<u64>,
    /// Commit members found.
    pub commits: u64,
    /// Commits whose index members were not all found, as (sequence number, offset), in file
    /// order: their pieces were taken from the data members found before them.
    pub lost_indexes: Vec<(u64, u64)>,
    /// Data members (intact or damaged) after the last commit: never committed, left out.
    pub uncommitted: usize,
}

/// Replays a scan: a commit whose index members are all there applies its entries (checking
/// that the members they name were found intact); a commit whose index is missing applies the data
/// members found since the previous commit, in file order. Data after the last commit was never
/// committed and is left out, as any reader does. Each commit is applied by the replay rule of
/// opening, [`ChunkIndex::apply_commit`].
pub fn replay_scan(scan: &MemberScan, chunk_log2: u8) -> Salvage {
    let mut index = ChunkIndex::new(chunk_log2);
    let mut poisoned: BTreeSet<u64> = BTreeSet::new();
    let mut lost_indexes = Vec::new();
    let mut members: BTreeMap<u64, Option<&IndexEntry>> = BTreeMap::new();
    let mut since_commit: Vec<&FoundMember> = Vec::new();
    let mut index_members: BTreeMap<u64, &Vec<IndexEntry>> = BTreeMap::new();
    let mut commits = 0;
    for f in &scan.found {
        match f {
            FoundMember::Data(e) => {
                members.insert(e.member_offset, Some(e));
                since_commit.push(f);
            }
            FoundMember::Damaged { offset, .. } => {
                members.insert(*offset, None);
                since_commit.push(f);
            }
            FoundMember::Index { offset, entries } => {
                index_members.insert(*offset, entries);
            }
            FoundMember::Commit(c) => {
                commits += 1;
                // The commit's own index members, if all of them were found.
                let mut entries: Option<Vec<IndexEntry>> = Some(Vec::new());
                let mut pos = c.first_index;
                let mut n = 0u32;
                while pos < c.offset {
                    match index_members.get(&pos) {
                        Some(list) => {
                            if let Some(v) = entries.as_mut() {
                                v.extend(list.iter().cloned());
                            }
                            n += 1;
                            pos += index_member_len(list.len()) as u64;
                        }
                        None => {
                            entries = None;
                            break;
                        }
                    }
                }
                if n != c.index_members {
                    entries = None;
                }
                let (checkpoint, apply) =
                    match entries.filter(|e| e.len() == c.entry_count as usize) {
                        Some(list) => {
                            if c.checkpoint {
                                poisoned.clear();
                            }
                            let mut apply = Vec::with_capacity(list.len());
                            for e in list {
                                let chunk = e.logical_offset >> chunk_log2;
                                if e.kind == PieceKind::Hole {
                                    poisoned.remove(&chunk);
                                    apply.push(e);
                                    continue;
                                }
                                match members.get(&e.member_offset) {
                                    Some(Some(m)) if m.stored_len == e.stored_len => {
                                        if e.reset {
                                            poisoned.remove(&chunk);
                                        }
                                        apply.push(e);
                                    }
                                    _ => {
                                        poisoned.insert(chunk);
                                    }
                                }
                            }
                            (c.checkpoint, apply)
                        }
                        None => {
                            lost_indexes.push((c.seq, c.offset));
                            let mut apply = Vec::new();
                            for f in &since_commit {
                                match f {
                                    FoundMember::Data(e) => {
                                        let chunk = e.logical_offset >> chunk_log2;
                                        if e.reset {
                                            poisoned.remove(&chunk);
                                        }
                                        apply.push((*e).clone());
                                    }
                                    FoundMember::Damaged { logical_offset, .. } => {
                                        poisoned.insert(logical_offset >> chunk_log2);
                                    }
                                    _ => {}
                                }
                            }
                            // What the lost index held is unknown: never a fresh start.
                            (false, apply)
                        }
                    };
                index.apply_commit(checkpoint, apply, c.size);
                let first_gone = index.chunks_for(c.size);
                poisoned.retain(|ch| *ch < first_gone);
                since_commit.clear();
            }
        }
    }
    Salvage {
        index,
        poisoned,
        commits,
        lost_indexes,
        uncommitted: since_commit.len(),
    }
}

/// A piece that covers `len` bytes of the chunk at `start` and fails its crc32 check on every
/// read: what fsck writes for a chunk it cannot recover, so it keeps reading as EIO.
pub fn poison_member(start: u64, len: usize) -> (Vec<u8>, IndexEntry) {
    let (mut m, mut e) = build_stored_member(start, true, &vec![0u8; len]);
    e.crc32 = !e.crc32;
    let t = m.len() - MEMBER_TRAILER_LEN;
    m[t..].copy_from_slice(&member_trailer(e.crc32, e.logical_len));
    (m, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::parse_data_member;

    #[test]
    fn poison_members_parse_but_never_decode() {
        let (m, e) = poison_member(8192, 100);
        assert!(parse_data_member(&m, &e).is_ok());
        let mut out = vec![0u8; 100];
        let mut d = libdeflater::Decompressor::new();
        assert!(decode_piece(&m, &e, &mut d, &mut out).is_err());
    }

    /// A container of 4 KiB chunks: after the creation's checkpoint (commit 1), commit 2 stores
    /// chunks 0, 1 and 2, commit 3 replaces chunk 1. Returns its bytes and the offsets of commit
    /// 2's index member and of commit 2.
    fn three_commits() -> (Vec<u8>, usize, usize) {
        let file = tempfile::tempfile().unwrap();
        let mut c = Container::create(file.try_clone().unwrap(), 12).unwrap();
        for chunk in 0..3u64 {
            let (m, e) = build_stored_member(chunk << 12, true, &[chunk as u8 + 1; 4096]);
            c.append_member(&m, e).unwrap();
        }
        c.set_size(3 << 12);
        let index2 = c.container_len() as usize;
        c.commit().unwrap();
        let commit2 = c.container_len() as usize - COMMIT_MEMBER_LEN;
        let (m, e) = build_stored_member(1 << 12, true, &[9; 4096]);
        c.append_member(&m, e).unwrap();
        c.commit().unwrap();
        let mut b = vec![0u8; c.container_len() as usize];
        file.read_exact_at(&mut b, 0).unwrap();
        (b, index2, commit2)
    }

    /// Chunk `chunk`'s only piece in `rec`, decoded from `b`.
    fn chunk_content(b: &[u8], rec: &Salvage, chunk: u64) -> Vec<u8> {
        let [p] = rec.index.pieces(chunk) else {
            panic!("chunk {chunk} has {} pieces", rec.index.pieces(chunk).len());
        };
        let m = &b[p.member_offset as usize..(p.member_offset + p.stored_len as u64) as usize];
        let mut out = vec![0u8; p.logical_len as usize];
        decode_piece(m, p, &mut libdeflater::Decompressor::new(), &mut out).unwrap();
        out
    }

    #[test]
    fn replaying_a_scan_recovers_what_the_commits_name() {
        let (b, _, _) = three_commits();
        let scan = scan_members(&b, guess_chunk_log2(&b));
        assert!(scan.garbage.is_empty());
        let rec = replay_scan(&scan, 12);
        assert_eq!((rec.commits, rec.uncommitted), (3, 0));
        assert!(rec.lost_indexes.is_empty() && rec.poisoned.is_empty());
        assert_eq!(rec.index.size(), 3 << 12);
        for (chunk, want) in [(0, 1u8), (1, 9), (2, 3)] {
            assert_eq!(
                chunk_content(&b, &rec, chunk),
                vec![want; 4096],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn a_lost_index_takes_the_data_members_before_it_and_poisons_what_they_lost() {
        let (mut b, index2, commit2) = three_commits();
        // Commit 2's index member no longer parses: it is no member, so the data member before
        // it (chunk 2's) has no end the scan can find either.
        b[index2 + FRAMING_LEN + 10] ^= 0xff;
        let scan = scan_members(&b, 12);
        let damaged: Vec<u64> = (scan.found.iter())
            .filter_map(|f| match f {
                FoundMember::Damaged { logical_offset, .. } => Some(*logical_offset),
                _ => None,
            })
            .collect();
        assert_eq!(damaged, vec![2 << 12]);
        let rec = replay_scan(&scan, 12);
        assert_eq!(rec.commits, 3);
        assert_eq!(rec.lost_indexes, vec![(2, commit2 as u64)]);
        assert_eq!(rec.poisoned.iter().copied().collect::<Vec<_>>(), vec![2]);
        // Chunk 0 comes from the data members before commit 2, chunk 1 from commit 3's index.
        assert_eq!(chunk_content(&b, &rec, 0), vec![1; 4096]);
        assert_eq!(chunk_content(&b, &rec, 1), vec![9; 4096]);
    }
}
