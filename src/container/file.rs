//! [`Container`]: one container file open for reading and appending.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::member::{parse_data_member, stored_stream_len, MIN_DATA_MEMBER_LEN};
use super::record::{
    check_framing, encode_index_member, header_member, index_entry_count_for_payload,
    index_members_len, parse_header, parse_index_member_rest, AuxRecord, CommitRecord, HeaderProbe,
    EMPTY_BODY, FRAMING_LEN, RECORD_INDEX,
};
use super::{
    corrupt, ChunkIndex, ContainerError, IndexEntry, PieceKind, Result, AUX_MEMBER_LEN,
    CHECKPOINT_MAX_DELTAS, CHECKPOINT_MIN_ENTRIES, COMMIT_MEMBER_LEN, COMPACTION_MIN_LEN,
    DATA_HEADER_LEN, HEADER_MEMBER_LEN, MAX_CHUNK_LOG2, MAX_INDEX_ENTRIES_PER_MEMBER,
    MEMBER_TRAILER_LEN, MIN_CHUNK_LOG2,
};

const COMMIT_LEN: u64 = COMMIT_MEMBER_LEN as u64;
const HEADER_LEN: u64 = HEADER_MEMBER_LEN as u64;
/// Block size of the backward commit scan.
const SCAN_BLOCK: u64 = 1 << 20;

/// Entries recorded between a shrink that dropped data and the previous one: replayed as one
/// delta commit with the shrunk size, so that dropped chunks stay dropped even if the file grows
/// again before the next commit.
#[derive(Debug)]
struct Segment {
    entries: Vec<IndexEntry>,
    size: u64,
}

/// One container file, open for reading and appending.
#[derive(Debug)]
pub struct Container {
    file: File,
    index: ChunkIndex,
    /// Valid length: the append offset. The file may be longer (torn tail) when `tail_dirty`.
    container_len: u64,
    /// The file may extend past `container_len`; truncate before the next write.
    tail_dirty: bool,
    /// The header and first checkpoint still have to be written (new or reset container).
    needs_init: bool,
    last_seq: u64,
    /// Offset of the last commit (`u64::MAX`: none yet).
    last_commit: u64,
    committed_size: u64,
    deltas_since_checkpoint: u64,
    entries_since_checkpoint: u64,
    segments: Vec<Segment>,
    pending: Vec<IndexEntry>,
    /// What the next commit records in its auxiliary member (dropped if its length is not the
    /// commit's size).
    aux: Option<AuxRecord>,
    /// What the last commit recorded.
    committed_aux: Option<AuxRecord>,
}

fn invalid(msg: &str) -> ContainerError {
    ContainerError::Io(io::Error::new(io::ErrorKind::InvalidInput, msg.to_string()))
}

/// pread exactly `buf.len()` bytes at `offset`; a short file is `Corrupt` (naming `what`).
fn pread(file: &File, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
    match file.read_exact_at(buf, offset) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(corrupt(
            format!("{what}: unexpected end of file reading {} bytes", buf.len()),
            offset,
        )),
        Err(e) => Err(e.into()),
    }
}

/// pread up to `buf.len()` bytes at 0, stopping at end of file; returns the count.
fn pread_prefix(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads the commit member in the last 94 bytes if it is valid, else scans backwards (1 MiB
/// blocks) for the last valid commit. `None`: no valid commit.
fn find_last_commit(file: &File, len: u64) -> Result<Option<CommitRecord>> {
    if len < HEADER_LEN + COMMIT_LEN {
        return Ok(None);
    }
    let mut tail = [0u8; COMMIT_MEMBER_LEN];
    pread(file, &mut tail, len - COMMIT_LEN, "last commit")?;
    if let Ok(c) = CommitRecord::decode(&tail, len - COMMIT_LEN) {
        return Ok(Some(c));
    }
    scan_for_commit(file, len)
}

/// Backward scan for the last valid commit member wholly inside `[HEADER_LEN, len)`.
fn scan_for_commit(file: &File, len: u64) -> Result<Option<CommitRecord>> {
    let prefix = CommitRecord::prefix();
    let lowest = HEADER_LEN;
    if len < lowest + COMMIT_LEN {
        return Ok(None);
    }
    // Candidate start positions are in [lowest, last_start].
    let last_start = len - COMMIT_LEN;
    let mut end = last_start + 1; // exclusive end of the candidate range still to scan
    let mut buf = vec![0u8; (SCAN_BLOCK + COMMIT_LEN) as usize];
    while end > lowest {
        let start = end.saturating_sub(SCAN_BLOCK).max(lowest);
        // Read candidates [start, end) plus the 93 bytes that complete the last one.
        let read_len = (end - 1 + COMMIT_LEN - start) as usize;
        let b = &mut buf[..read_len];
        pread(file, b, start, "commit scan")?;
        for rel in (0..(end - start) as usize).rev() {
            if b[rel] == prefix[0] && b[rel..rel + FRAMING_LEN] == prefix {
                let at = start + rel as u64;
                if let Ok(c) = CommitRecord::decode(&b[rel..rel + COMMIT_MEMBER_LEN], at) {
                    return Ok(Some(c));
                }
            }
        }
        end = start;
    }
    Ok(None)
}

/// The auxiliary member of commit `c`, if it has a valid one. A damaged or unknown auxiliary
/// member only loses the state it carried (it is recomputed), so it is not an error.
fn read_aux(file: &File, c: &CommitRecord) -> Option<AuxRecord> {
    let end = c.aux.checked_add(AUX_MEMBER_LEN as u64)?;
    if c.aux == u64::MAX || c.aux < HEADER_LEN || end > c.first_index {
        return None;
    }
    let mut b = [0u8; AUX_MEMBER_LEN];
    pread(file, &mut b, c.aux, "auxiliary member").ok()?;
    let a = AuxRecord::decode(&b, c.aux).ok()?;
    (a.sha256_len == c.size).then_some(a)
}

/// Checks an entry against the container: a data member must lie after the header and end at
/// or before `data_limit`, its piece must lie within one chunk, and its stored length must be
/// plausible. `at` is the entry's container offset for error messages.
fn validate_entry(e: &IndexEntry, chunk_log2: u8, data_limit: u64, at: u64) -> Result<()> {
    let chunk = e.logical_offset >> chunk_log2;
    let chunk_end = (chunk as u128 + 1) << chunk_log2;
    let end = e.logical_offset as u128 + e.logical_len as u128;
    if end > chunk_end || end > i64::MAX as u128 {
        return Err(corrupt(
            format!(
                "piece {}+{} crosses a chunk boundary or the maximum file size",
                e.logical_offset, e.logical_len
            ),
            at,
        ));
    }
    if e.kind == PieceKind::Hole {
        return Ok(());
    }
    let stored = e.stored_len as u64;
    if stored < MIN_DATA_MEMBER_LEN as u64 {
        return Err(corrupt(
            format!("data member length {stored} too short"),
            at + 20,
        ));
    }
    if e.kind == PieceKind::Stored
        && stored
            < (DATA_HEADER_LEN + stored_stream_len(e.logical_len as usize) + MEMBER_TRAILER_LEN)
                as u64
    {
        return Err(corrupt(
            format!(
                "stored piece of {} bytes cannot fit in {stored} bytes",
                e.logical_len
            ),
            at + 20,
        ));
    }
    if e.member_offset < HEADER_LEN || e.member_offset.saturating_add(stored) > data_limit {
        return Err(corrupt(
            format!(
                "data member {}+{stored} outside the data area (ends at {data_limit})",
                e.member_offset
            ),
            at + 12,
        ));
    }
    Ok(())
}

impl Container {
    fn fresh(file: File, chunk_log2: u8) -> Container {
        Container {
            file,
            index: ChunkIndex::new(chunk_log2),
            container_len: 0,
            tail_dirty: false,
            needs_init: true,
            last_seq: 0,
            last_commit: u64::MAX,
            committed_size: 0,
            deltas_since_checkpoint: 0,
            entries_since_checkpoint: 0,
            segments: Vec::new(),
            pending: Vec::new(),
            aux: None,
            committed_aux: None,
        }
    }

    fn check_empty(file: &File, chunk_log2: u8) -> Result<()> {
        if !(MIN_CHUNK_LOG2..=MAX_CHUNK_LOG2).contains(&chunk_log2) {
            return Err(invalid("chunk size log2 out of range"));
        }
        if file.metadata()?.len() != 0 {
            return Err(invalid("container file is not empty"));
        }
        Ok(())
    }

    /// Writes the header and an empty checkpoint commit (seq 1) into the empty file `file`.
    pub fn create(file: File, chunk_log2: u8) -> Result<Container> {
        Self::check_empty(&file, chunk_log2)?;
        let mut c = Self::fresh(file, chunk_log2);
        c.prepare_write()?;
        Ok(c)
    }

    /// `Ok(true)` iff the file begins with a valid header member. `Ok(false)` for anything else
    /// (short files, other gzip files, bad crc32). `Err(UnsupportedVersion)` for a header with a
    /// valid crc32 but another version; `Err(Corrupt)` for a header with a valid magic and crc32
    /// whose other fields are invalid.
    pub fn probe(file: &File) -> Result<bool> {
        let mut b = [0u8; HEADER_MEMBER_LEN];
        let n = pread_prefix(file, &mut b)?;
        Ok(matches!(
            parse_header(&b[..n])?,
            HeaderProbe::Container { .. }
        ))
    }

    /// Opens a container: checks the header, finds the last complete commit (a torn tail is
    /// tolerated and truncated away before the first write), follows the chain back to the last
    /// checkpoint and replays it.
    pub fn open(file: File) -> Result<Container> {
        let len = file.metadata()?.len();
        let mut hb = [0u8; HEADER_MEMBER_LEN];
        let n = pread_prefix(&file, &mut hb)?;
        let chunk_log2 = match parse_header(&hb[..n])? {
            HeaderProbe::NotOurs => return Err(ContainerError::NotAContainer),
            HeaderProbe::Container { chunk_log2 } => chunk_log2,
        };
        let last =
            find_last_commit(&file, len)?.ok_or_else(|| corrupt("no valid commit member", len))?;

        // Walk back to the most recent checkpoint. Offsets strictly decrease, so this ends.
        let mut chain = vec![last];
        loop {
            let cur = chain.last().expect("chain is never empty");
            if cur.checkpoint {
                break;
            }
            if cur.prev == u64::MAX {
                return Err(corrupt(
                    format!(
                        "commit {} has no previous commit and is not a checkpoint",
                        cur.seq
                    ),
                    cur.offset + 16 + 28,
                ));
            }
            let (prev_off, seq, at) = (cur.prev, cur.seq, cur.offset);
            let mut b = [0u8; COMMIT_MEMBER_LEN];
            pread(&file, &mut b, prev_off, "previous commit")?;
            let prev = CommitRecord::decode(&b, prev_off).map_err(|e| match e {
                ContainerError::Corrupt { what, offset } => corrupt(
                    format!("previous commit of the commit at {at}: {what}"),
                    offset,
                ),
                other => other,
            })?;
            if prev.seq.checked_add(1) != Some(seq) {
                return Err(corrupt(
                    format!(
                        "commit sequence {} is followed by {seq} (expected +1)",
                        prev.seq
                    ),
                    prev_off + 16 + 4,
                ));
            }
            chain.push(prev);
        }

        let mut index = ChunkIndex::new(chunk_log2);
        let mut entries_since_checkpoint = 0u64;
        for c in chain.iter().rev() {
            if c.checkpoint {
                index = ChunkIndex::new(chunk_log2);
            } else {
                entries_since_checkpoint += c.entry_count as u64;
            }
            Self::replay_commit(&file, c, &mut index)?;
        }
        let aux = read_aux(&file, &last);

        Ok(Container {
            file,
            index,
            container_len: last.offset + COMMIT_LEN,
            tail_dirty: len > last.offset + COMMIT_LEN,
            needs_init: false,
            last_seq: last.seq,
            last_commit: last.offset,
            committed_size: last.size,
            deltas_since_checkpoint: chain.len() as u64 - 1,
            entries_since_checkpoint,
            segments: Vec::new(),
            pending: Vec::new(),
            aux: aux.clone(),
            committed_aux: aux,
        })
    }

    /// Reads the index members of commit `c` and applies them, then its size.
    fn replay_commit(file: &File, c: &CommitRecord, index: &mut ChunkIndex) -> Result<()> {
        let chunk_log2 = index.chunk_log2();
        let mut pos = c.first_index;
        let mut members = 0u64;
        let mut entries = 0u64;
        let mut rest = Vec::new();
        while pos < c.offset {
            let mut fb = [0u8; FRAMING_LEN];
            if c.offset - pos < FRAMING_LEN as u64 {
                return Err(corrupt("index member overlaps its commit", pos));
            }
            pread(file, &mut fb, pos, "index member")?;
            let plen = check_framing(&fb, RECORD_INDEX, pos)?;
            index_entry_count_for_payload(plen, pos)?;
            let rest_len = (plen + EMPTY_BODY.len()) as u64;
            if c.offset - pos - (FRAMING_LEN as u64) < rest_len {
                return Err(corrupt("index member overlaps its commit", pos));
            }
            rest.resize(rest_len as usize, 0);
            pread(file, &mut rest, pos + FRAMING_LEN as u64, "index member")?;
            let list = parse_index_member_rest(&rest, pos)?;
            let base = pos + FRAMING_LEN as u64 + 4;
            for (i, e) in list.into_iter().enumerate() {
                validate_entry(&e, chunk_log2, c.first_index, base + 64 * i as u64)?;
                index.apply(e);
                entries += 1;
            }
            members += 1;
            pos += FRAMING_LEN as u64 + rest_len;
        }
        if members != c.index_members as u64 || entries != c.entry_count as u64 {
            return Err(corrupt(
                format!(
                    "commit {} announces {} entries in {} index members, found {entries} in {members}",
                    c.seq, c.entry_count, c.index_members
                ),
                c.offset + 16 + 44,
            ));
        }
        index.set_size(c.size);
        Ok(())
    }

    /// The logical size recorded by the last complete commit: reads the last 94 bytes, and only
    /// on a torn tail falls back to the backward scan.
    pub fn read_logical_size(file: &File) -> Result<u64> {
        let len = file.metadata()?.len();
        match find_last_commit(file, len)? {
            Some(c) => Ok(c.size),
            None => Err(corrupt("no valid commit member", len)),
        }
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn index(&self) -> &ChunkIndex {
        &self.index
    }

    pub fn chunk_log2(&self) -> u8 {
        self.index.chunk_log2()
    }

    /// Logical size, including an uncommitted `set_size`.
    pub fn size(&self) -> u64 {
        self.index.size()
    }

    /// Sets the logical size now (dropping chunks that start at or after it); recorded at the
    /// next commit.
    pub fn set_size(&mut self, size: u64) {
        if size < self.index.size() && self.index.has_data_from(size) {
            // This shrink drops data: close a segment so replay drops it too, even if the file
            // grows again before the commit.
            if self.pending.is_empty() {
                match self.segments.last_mut() {
                    Some(last) => last.size = last.size.min(size),
                    None => self.segments.push(Segment {
                        entries: Vec::new(),
                        size,
                    }),
                }
            } else {
                self.segments.push(Segment {
                    entries: std::mem::take(&mut self.pending),
                    size,
                });
            }
        }
        self.index.set_size(size);
    }

    /// Truncates a torn tail away and writes the header and first checkpoint if still needed.
    fn prepare_write(&mut self) -> Result<()> {
        if self.needs_init {
            self.file.set_len(0)?;
            let first = CommitRecord {
                seq: 1,
                offset: HEADER_LEN,
                size: 0,
                prev: u64::MAX,
                first_index: HEADER_LEN,
                entry_count: 0,
                checkpoint: true,
                index_members: 0,
                aux: u64::MAX,
            };
            let mut b = Vec::with_capacity(HEADER_MEMBER_LEN + COMMIT_MEMBER_LEN);
            b.extend_from_slice(&header_member(self.chunk_log2()));
            b.extend_from_slice(&first.encode());
            self.file.write_all_at(&b, 0)?;
            self.needs_init = false;
            self.tail_dirty = false;
            self.container_len = b.len() as u64;
            self.last_seq = 1;
            self.last_commit = HEADER_LEN;
            self.committed_size = 0;
            self.deltas_since_checkpoint = 0;
            self.entries_since_checkpoint = 0;
        }
        if self.tail_dirty {
            self.file.set_len(self.container_len)?;
            self.tail_dirty = false;
        }
        Ok(())
    }

    /// Appends one complete data member at the end, fills `entry.member_offset`/`stored_len`,
    /// applies it to the index and records it for the next commit. On error nothing changes.
    pub fn append_member(&mut self, member: &[u8], mut entry: IndexEntry) -> Result<()> {
        if entry.kind == PieceKind::Hole {
            return Err(invalid("append_member with a hole entry"));
        }
        if member.len() > u32::MAX as usize {
            return Err(invalid("data member too large"));
        }
        self.prepare_write()?;
        entry.member_offset = self.container_len;
        entry.stored_len = member.len() as u32;
        parse_data_member(member, &entry)?;
        let end = self.container_len + member.len() as u64;
        validate_entry(&entry, self.chunk_log2(), end, entry.member_offset)?;
        if let Err(e) = self.file.write_all_at(member, self.container_len) {
            self.tail_dirty = true;
            return Err(e.into());
        }
        self.container_len = end;
        self.index.apply(entry.clone());
        self.pending.push(entry);
        Ok(())
    }

    /// Records a hole entry for `chunk` (RESET, no data) and applies it.
    pub fn append_hole(&mut self, chunk: u64) -> Result<()> {
        let start = chunk
            .checked_shl(self.chunk_log2() as u32)
            .filter(|s| s >> self.chunk_log2() == chunk && *s <= i64::MAX as u64)
            .ok_or_else(|| invalid("hole chunk number out of range"))?;
        let e = IndexEntry::hole(start);
        self.index.apply(e.clone());
        self.pending.push(e);
        Ok(())
    }

    /// Anything (entries, a size change or new auxiliary state) since the last commit.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
            || !self.segments.is_empty()
            || self.index.size() != self.committed_size
            || self.aux != self.committed_aux
    }

    /// The auxiliary state the next commit records (after a commit or an open: the state the
    /// last commit recorded).
    pub fn aux(&self) -> Option<&AuxRecord> {
        self.aux.as_ref()
    }

    /// Sets the auxiliary state for the next commit, which records it only if its
    /// `sha256_len` equals the logical size at that commit.
    pub fn set_aux(&mut self, aux: Option<AuxRecord>) {
        self.aux = aux;
    }

    /// Writes the index members and commit member(s) for everything pending: a delta commit per
    /// segment (see [`Container::set_size`]) or one checkpoint, per the FORMAT.md policy. No
    /// fsync. No-op when nothing is pending. On error nothing changes.
    pub fn commit(&mut self) -> Result<()> {
        self.commit_inner(false)
    }

    fn commit_inner(&mut self, force_checkpoint: bool) -> Result<()> {
        if !force_checkpoint && !self.has_pending() {
            return Ok(());
        }
        self.prepare_write()?;
        let final_size = self.index.size();
        // The final delta is redundant only when a segment already records the final state.
        let final_needed = self
            .segments
            .last()
            .is_none_or(|s| !self.pending.is_empty() || s.size != final_size);
        let new_entries: u64 = self
            .segments
            .iter()
            .map(|s| s.entries.len() as u64)
            .sum::<u64>()
            + self.pending.len() as u64;
        let new_deltas = self.segments.len() as u64 + u64::from(final_needed);
        let live = self.index.live_entry_count();
        let checkpoint = force_checkpoint
            || self.last_commit == u64::MAX
            || self.entries_since_checkpoint + new_entries > live.max(CHECKPOINT_MIN_ENTRIES)
            || self.deltas_since_checkpoint + new_deltas > CHECKPOINT_MAX_DELTAS;

        let mut buf = Vec::new();
        let mut seq = self.last_seq;
        let mut prev = self.last_commit;
        let base = self.container_len;
        let aux = self.aux.clone().filter(|a| a.sha256_len == final_size);
        if checkpoint {
            if live > u32::MAX as u64 {
                return Err(invalid("too many live index entries for one checkpoint"));
            }
            let iter = self.index.live_entries();
            prev = emit_commit(
                &mut buf,
                base,
                &mut seq,
                prev,
                final_size,
                true,
                aux.as_ref(),
                live,
                iter,
            );
        } else {
            for s in &self.segments {
                let n = s.entries.len() as u64;
                prev = emit_commit(
                    &mut buf,
                    base,
                    &mut seq,
                    prev,
                    s.size,
                    false,
                    None,
                    n,
                    s.entries.iter(),
                );
            }
            if final_needed {
                let n = self.pending.len() as u64;
                prev = emit_commit(
                    &mut buf,
                    base,
                    &mut seq,
                    prev,
                    final_size,
                    false,
                    aux.as_ref(),
                    n,
                    self.pending.iter(),
                );
            }
        }
        if let Err(e) = self.file.write_all_at(&buf, base) {
            self.tail_dirty = true;
            return Err(e.into());
        }
        self.container_len = base + buf.len() as u64;
        self.last_seq = seq;
        self.last_commit = prev;
        self.committed_size = final_size;
        if checkpoint {
            self.deltas_since_checkpoint = 0;
            self.entries_since_checkpoint = 0;
        } else {
            self.deltas_since_checkpoint += new_deltas;
            self.entries_since_checkpoint += new_entries;
        }
        self.segments.clear();
        self.pending.clear();
        self.aux = aux.clone();
        self.committed_aux = aux;
        // Align memory with what a replay shows (drops data a caller left beyond the size).
        self.index.set_size(final_size);
        Ok(())
    }

    /// fdatasync.
    pub fn sync_data(&self) -> Result<()> {
        self.file.sync_data()?;
        Ok(())
    }

    /// Reads the complete data member of `entry` into `buf` (`buf.len() == entry.stored_len`).
    pub fn read_member(&self, entry: &IndexEntry, buf: &mut [u8]) -> Result<()> {
        if entry.kind == PieceKind::Hole || entry.member_offset == u64::MAX {
            return Err(corrupt("read_member on a hole entry", entry.logical_offset));
        }
        if buf.len() != entry.stored_len as usize {
            return Err(invalid("read_member buffer length differs from stored_len"));
        }
        pread(&self.file, buf, entry.member_offset, "data member")
    }

    /// Sequence number of the last commit written or found (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Delta commits since the last checkpoint: what an open of the committed state replays
    /// besides the checkpoint (at most 1024 by the checkpoint policy).
    pub fn deltas_since_checkpoint(&self) -> u64 {
        self.deltas_since_checkpoint
    }

    /// Valid length of the container (the append offset).
    pub fn container_len(&self) -> u64 {
        self.container_len
    }

    /// Bytes a compaction would reclaim: `container_len` minus the length of the compacted
    /// container (header, the live data members, and a checkpoint of the live entries). This
    /// counts superseded members and all commit metadata except that one checkpoint; it
    /// assumes compaction keeps the existing members as they are.
    pub fn stale_bytes(&self) -> u64 {
        let aux = if self.committed_aux.is_some() {
            AUX_MEMBER_LEN as u64
        } else {
            0
        };
        let compacted = HEADER_LEN
            + self.index.live_stored_bytes()
            + index_members_len(self.index.live_entry_count())
            + aux
            + COMMIT_LEN;
        self.container_len.saturating_sub(compacted)
    }

    /// FORMAT.md "Compaction": the file is committed, the container is at least 1 MiB, and
    /// either the stale bytes exceed half of it or chunks hold more than two pieces on average.
    pub fn needs_compaction(&self) -> bool {
        if self.has_pending() || self.container_len < COMPACTION_MIN_LEN {
            return false;
        }
        self.stale_bytes() > self.container_len / 2
            || self.index.live_entry_count() > 2 * self.index.chunk_count()
    }

    /// Resets to an empty container in place (truncate-to-zero): ftruncate 0, then header and
    /// checkpoint. If the ftruncate fails nothing changes; if the rewrite fails the logical state
    /// is already empty and the header is rewritten before the next write.
    pub fn reset(&mut self) -> Result<()> {
        self.file.set_len(0)?;
        let chunk_log2 = self.chunk_log2();
        self.index = ChunkIndex::new(chunk_log2);
        self.container_len = 0;
        self.tail_dirty = false;
        self.needs_init = true;
        self.last_seq = 0;
        self.last_commit = u64::MAX;
        self.committed_size = 0;
        self.deltas_since_checkpoint = 0;
        self.entries_since_checkpoint = 0;
        self.segments.clear();
        self.pending.clear();
        self.aux = None;
        self.committed_aux = None;
        self.prepare_write()
    }

    /// Writes a compacted container into the empty file `dest`: header, the given complete data
    /// members in the given order (their `member_offset`/`stored_len` are assigned here), and a
    /// checkpoint with logical size `size`.
    pub fn rebuild(
        dest: File,
        chunk_log2: u8,
        size: u64,
        members: impl Iterator<Item = (Vec<u8>, IndexEntry)>,
    ) -> Result<Container> {
        Self::rebuild_with_aux(dest, chunk_log2, size, None, members)
    }

    /// [`Container::rebuild`] whose checkpoint also records the auxiliary state `aux`.
    pub fn rebuild_with_aux(
        dest: File,
        chunk_log2: u8,
        size: u64,
        aux: Option<AuxRecord>,
        members: impl Iterator<Item = (Vec<u8>, IndexEntry)>,
    ) -> Result<Container> {
        Self::check_empty(&dest, chunk_log2)?;
        dest.write_all_at(&header_member(chunk_log2), 0)?;
        let mut c = Self::fresh(dest, chunk_log2);
        c.needs_init = false;
        c.container_len = HEADER_LEN;
        for (bytes, entry) in members {
            c.append_member(&bytes, entry)?;
        }
        // Pieces beyond `size` are dropped; no segment bookkeeping needed for a checkpoint.
        c.index.set_size(size);
        c.segments.clear();
        c.aux = aux;
        c.commit_inner(true)?;
        Ok(c)
    }
}

/// Appends the auxiliary member `aux` (if any), the index members for `entries` (1000 per
/// member) and a commit member to `buf`, which will be written at container offset `base`.
/// Returns the commit's offset.
#[allow(clippy::too_many_arguments)]
fn emit_commit<'a>(
    buf: &mut Vec<u8>,
    base: u64,
    seq: &mut u64,
    prev: u64,
    size: u64,
    checkpoint: bool,
    aux: Option<&AuxRecord>,
    count: u64,
    mut entries: impl Iterator<Item = &'a IndexEntry>,
) -> u64 {
    let aux_offset = match aux {
        Some(a) => {
            let at = base + buf.len() as u64;
            buf.extend_from_slice(&a.encode());
            at
        }
        None => u64::MAX,
    };
    let first_index = base + buf.len() as u64;
    let mut members = 0u32;
    let mut left = count;
    let mut chunk: Vec<&IndexEntry> = Vec::with_capacity(MAX_INDEX_ENTRIES_PER_MEMBER);
    while left > 0 {
        chunk.clear();
        let take = left.min(MAX_INDEX_ENTRIES_PER_MEMBER as u64);
        for _ in 0..take {
            chunk.push(entries.next().expect("entry count matches the iterator"));
        }
        encode_index_member(chunk.iter().copied(), buf);
        members += 1;
        left -= take;
    }
    debug_assert!(entries.next().is_none());
    *seq += 1;
    let offset = base + buf.len() as u64;
    let c = CommitRecord {
        seq: *seq,
        offset,
        size,
        prev,
        first_index,
        entry_count: count as u32,
        checkpoint,
        index_members: members,
        aux: aux_offset,
    };
    buf.extend_from_slice(&c.encode());
    offset
}
