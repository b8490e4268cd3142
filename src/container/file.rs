//! [`Container`]: one container file open for reading and appending.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

use super::member::{decode_piece, parse_data_member, MIN_DATA_MEMBER_LEN};
use super::record::{
    check_framing, encode_index_member, header_member, index_entry_count_for_payload,
    index_members_len, parse_header, parse_index_member_rest, AuxRecord, CommitRecord, HeaderProbe,
    EMPTY_BODY, FRAMING_LEN, RECORD_INDEX,
};
use super::{
    corrupt, ChunkIndex, ContainerError, IndexEntry, PieceKind, Result, AUX_MEMBER_LEN,
    CHECKPOINT_MAX_DELTAS, CHECKPOINT_MIN_ENTRIES, COMMIT_MEMBER_LEN, COMPACTION_MIN_LEN,
    HEADER_MEMBER_LEN, MAX_CHUNK_LOG2, MAX_CHUNK_PIECES, MAX_INDEX_ENTRIES_PER_MEMBER,
    MIN_CHUNK_LOG2,
};

const COMMIT_LEN: u64 = COMMIT_MEMBER_LEN as u64;
const HEADER_LEN: u64 = HEADER_MEMBER_LEN as u64;
/// Block size of the backward commit scan.
const SCAN_BLOCK: u64 = 1 << 20;
/// [`OpenMode::Recover`] gives up after this many candidate commits with broken chains.
const MAX_RECOVERY_CANDIDATES: u64 = 64;
/// A checkpoint is written once more than `max(this, CHECKPOINT_BYTES_FACTOR x its own size)`
/// bytes were appended since the last one, which bounds what [`OpenMode::Recover`] decodes.
pub const CHECKPOINT_MIN_BYTES: u64 = 64 << 20;
/// See [`CHECKPOINT_MIN_BYTES`].
pub const CHECKPOINT_BYTES_FACTOR: u64 = 32;

/// How thoroughly [`Container::open_with`] checks a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// The last complete commit and its chain back to a checkpoint must be intact; data members
    /// are checked when they are read. Right for a file last written since the machine booted:
    /// the kernel still holds every byte that was written, so a crash of the writer leaves at
    /// most a torn tail.
    Strict,
    /// After a possible power loss (the file was last written before the machine booted), when
    /// bytes written after the last fdatasync may be missing anywhere, not only at the end. The
    /// writer makes everything before a checkpoint durable before writing it, so the commits after
    /// the last checkpoint are checked like a journal: each is kept only if its index members read
    /// and every data member it adds decodes with the right crc32, and the first that fails ends
    /// the replay. A candidate commit whose chain is broken gives way to the next older one.
    /// Costs decoding what was appended since the last checkpoint (see [`CHECKPOINT_MIN_BYTES`]).
    Recover,
}

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
    /// End of the last checkpoint commit (0: none yet).
    checkpoint_end: u64,
    /// Bytes known to be durable (everything before this offset was fdatasync'd).
    synced_len: AtomicU64,
    /// What [`OpenMode::Recover`] left out.
    recovery_note: Option<String>,
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

/// The bytes every new container starts with: its header and the empty checkpoint (seq 1).
fn initial_bytes(chunk_log2: u8) -> Vec<u8> {
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
    b.extend_from_slice(&header_member(chunk_log2));
    b.extend_from_slice(&first.encode());
    b
}

/// Longest file [`interrupted_creation`] reads through.
const INTERRUPTED_CREATION_MAX: u64 = 64 << 20;

/// If `file` holds a prefix of a new container's first bytes (at least 27 bytes: up to the chunk
/// size, and not all of them) followed by nothing or by zeros only, its creation was cut short: a
/// crash before those bytes, or the appends after them, were all on disk. Returns the chunk
/// size. FORMAT.md: such a file is an empty container.
fn interrupted_creation(file: &File) -> Result<Option<u8>> {
    let full = HEADER_MEMBER_LEN + COMMIT_MEMBER_LEN;
    let mut b = [0u8; HEADER_MEMBER_LEN + COMMIT_MEMBER_LEN];
    let n = pread_prefix(file, &mut b)?;
    let len = file.metadata()?.len();
    let nz = b[..n].iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
    // A marked file that is empty or starts with zeros is always a container (the same answer
    // at every length and every later mount: a marked file judged plain while short and then
    // written as a plain file with a hole at its start would turn into a container later).
    if nz == 0
        && len <= INTERRUPTED_CREATION_MAX
        && (marked_as_container(file) || (n == full && lost_first_pages(file, len)?))
    {
        // Its chunk size went with the header: the next write starts it anew at the default.
        return Ok(Some(DEFAULT_CHUNK_LOG2));
    }
    // A file marked at its creation needs no length to be recognised (the power-cut layer keeps
    // arbitrary lengths: 4 bytes of a header are as good as 139).
    let min_prefix = if nz > 0 && nz < 15 && marked_as_container(file) {
        1
    } else {
        15
    };
    if !(min_prefix..full).contains(&nz) || len > INTERRUPTED_CREATION_MAX {
        return Ok(None);
    }
    // Up to the low byte of the header member's subfield length (after "DH"), 15 bytes: no
    // other file starts so. The chunk size is byte 26; a shorter prefix lost it with the rest.
    let log2 = if nz > 26 { b[26] } else { DEFAULT_CHUNK_LOG2 };
    if !(MIN_CHUNK_LOG2..=MAX_CHUNK_LOG2).contains(&log2) || initial_bytes(log2)[..nz] != b[..nz] {
        return Ok(None);
    }
    // A marked file is ours whatever follows: with no complete commit anywhere, nothing in it was
    // ever made durable (an fsync writes the first checkpoint durably), so whatever pages of later
    // appends a power cut kept are not a version of it. Unmarked, everything after the first
    // bytes must be zeros (pages that never reached the disk), or it may be damage for fsck.
    if marked_as_container(file) {
        return Ok(Some(log2));
    }
    let mut pos = n as u64;
    let mut buf = vec![0u8; 1 << 16];
    while pos < len {
        let k = ((len - pos) as usize).min(buf.len());
        pread(file, &mut buf[..k], pos, "interrupted creation")?;
        if buf[..k].iter().any(|&x| x != 0) {
            return Ok(None);
        }
        pos += k as u64;
    }
    Ok(Some(log2))
}

/// The extended attribute a new container's backing file gets at its creation (docs/FORMAT.md,
/// "Interrupted creation"). It is metadata of the inode, which a journaling filesystem makes
/// durable with the file's creation, before any of its data: after a power cut it tells a
/// container whose first page was lost from a plain file that starts with zeros.
pub const CONTAINER_MARK_XATTR: &std::ffi::CStr = c"user.deflatefs.container";

/// Sets [`CONTAINER_MARK_XATTR`]; a backing filesystem without user xattrs just goes without.
fn mark_as_container(file: &File) {
    // SAFETY: a valid descriptor, a NUL-terminated name and a 1-byte value.
    unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            CONTAINER_MARK_XATTR.as_ptr(),
            b"1".as_ptr().cast(),
            1,
            0,
        );
    }
}

/// Whether the file carries [`CONTAINER_MARK_XATTR`].
fn marked_as_container(file: &File) -> bool {
    let mut v = [0u8; 1];
    // SAFETY: a valid descriptor, a NUL-terminated name and a 1-byte buffer.
    let n = unsafe {
        libc::fgetxattr(
            file.as_raw_fd(),
            CONTAINER_MARK_XATTR.as_ptr(),
            v.as_mut_ptr().cast(),
            1,
        )
    };
    n == 1 && v[0] == b'1'
}

/// The chunk size a container whose header was lost is started anew with (128 KiB, the mount
/// default).
pub(crate) const DEFAULT_CHUNK_LOG2: u8 = 17;
/// Page size of the page cache: what a power cut loses or keeps of an unsynced file.
const PAGE: u64 = 4096;
/// How far a lost prefix is looked for.
const LOST_PREFIX_MAX: u64 = 4 << 20;

/// A creation whose first pages a power cut lost while later ones were kept: the file is zeros
/// up to a page boundary, and a deflatefs member starts within the reach of one member after
/// that (a data member's header, with its own crc32, or a whole index, commit or auxiliary
/// member). Such a file was never fsync'd (an fsync makes the header durable, and the writer
/// fdatasyncs before its first checkpoint), so it holds nothing it must keep: it reads as the
/// empty file it was when created, rather than as zeros followed by raw members. A foreign file
/// would need a page of zeros followed at once by a valid deflatefs member to be taken for one.
fn lost_first_pages(file: &File, len: u64) -> Result<bool> {
    let mut buf = vec![0u8; 64 << 10];
    let mut pos = 0u64;
    let first_nonzero = loop {
        if pos >= len.min(LOST_PREFIX_MAX) {
            return Ok(false);
        }
        let k = ((len - pos) as usize).min(buf.len());
        pread(file, &mut buf[..k], pos, "lost first pages")?;
        if let Some(i) = buf[..k].iter().position(|&x| x != 0) {
            break pos + i as u64;
        }
        pos += k as u64;
    };
    if first_nonzero % PAGE != 0 {
        return Ok(false);
    }
    let reach = (len - first_nonzero).min((1u64 << MAX_CHUNK_LOG2) + (64 << 10)) as usize;
    let mut window = vec![0u8; reach];
    pread(file, &mut window, first_nonzero, "lost first pages")?;
    let mut at = 0;
    while let Some(k) = window[at..].iter().position(|&x| x == 0x1f) {
        if super::record::member_starts_at(&window, at + k) {
            return Ok(true);
        }
        at += k + 1;
    }
    Ok(false)
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
        && stored < super::stored_member_len(e.logical_len as usize) as u64
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

/// The chain of commits from `last` back to the most recent checkpoint, newest first: every
/// previous commit must be valid and numbered one lower. Offsets strictly decrease, so this ends.
fn commit_chain(file: &File, last: &CommitRecord) -> Result<Vec<CommitRecord>> {
    commit_chain_at(file, last).map_err(|(e, _)| e)
}

/// [`commit_chain`]; an error comes with the offset of the commit the chain could not reach
/// (no valid commit after it can have an intact chain either).
fn commit_chain_at(
    file: &File,
    last: &CommitRecord,
) -> std::result::Result<Vec<CommitRecord>, (ContainerError, u64)> {
    let mut chain = vec![*last];
    loop {
        let cur = chain.last().expect("chain is never empty");
        if cur.checkpoint {
            return Ok(chain);
        }
        if cur.prev == u64::MAX {
            return Err((
                corrupt(
                    format!(
                        "commit {} has no previous commit and is not a checkpoint",
                        cur.seq
                    ),
                    cur.offset + 16 + 28,
                ),
                cur.offset.saturating_sub(1),
            ));
        }
        let (prev_off, seq, at) = (cur.prev, cur.seq, cur.offset);
        let mut b = [0u8; COMMIT_MEMBER_LEN];
        pread(file, &mut b, prev_off, "previous commit").map_err(|e| (e, prev_off))?;
        let prev = CommitRecord::decode(&b, prev_off).map_err(|e| {
            let e = match e {
                ContainerError::Corrupt { what, offset } => corrupt(
                    format!("previous commit of the commit at {at}: {what}"),
                    offset,
                ),
                other => other,
            };
            (e, prev_off)
        })?;
        if prev.seq.checked_add(1) != Some(seq) {
            return Err((
                corrupt(
                    format!(
                        "commit sequence {} is followed by {seq} (expected +1)",
                        prev.seq
                    ),
                    prev_off + 16 + 4,
                ),
                prev_off,
            ));
        }
        chain.push(prev);
    }
}

/// Reads and validates the index members of commit `c`; returns its entries in order.
pub(crate) fn read_commit_entries(
    file: &File,
    c: &CommitRecord,
    chunk_log2: u8,
) -> Result<Vec<IndexEntry>> {
    let mut pos = c.first_index;
    let mut members = 0u64;
    let mut out = Vec::new();
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
            out.push(e);
        }
        members += 1;
        pos += FRAMING_LEN as u64 + rest_len;
    }
    if members != c.index_members as u64 || out.len() as u64 != c.entry_count as u64 {
        return Err(corrupt(
            format!(
                "commit {} announces {} entries in {} index members, found {} in {members}",
                c.seq,
                c.entry_count,
                c.index_members,
                out.len()
            ),
            c.offset + 16 + 44,
        ));
    }
    Ok(out)
}

/// Applies commit `c` to `index`: a checkpoint starts from an empty index; then its entries, then
/// its size. On error `index` is unchanged.
fn replay_commit(file: &File, c: &CommitRecord, index: &mut ChunkIndex) -> Result<()> {
    let entries = read_commit_entries(file, c, index.chunk_log2())?;
    index.apply_commit(c.checkpoint, entries, c.size);
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
            checkpoint_end: 0,
            synced_len: AtomicU64::new(0),
            recovery_note: None,
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
        // No ftruncate: the file is known to be empty, and on ext4 a truncation to zero marks
        // the inode for a data flush at every close (auto_da_alloc), which made each file
        // created through a mount start disk writes at its release.
        c.write_initial_bytes()?;
        mark_as_container(c.file());
        Ok(c)
    }

    /// `Ok(true)` iff the file begins with a valid header member. `Ok(false)` for anything else
    /// (short files, other gzip files, bad crc32). `Err(UnsupportedVersion)` for a header with a
    /// valid crc32 but another version; `Err(Corrupt)` for a header with a valid magic and crc32
    /// whose other fields are invalid.
    ///
    /// A file holding only a prefix of a new container's first bytes (at least 27 bytes, so it
    /// names its chunk size), possibly followed by zeros, is an interrupted creation: a
    /// container, empty.
    pub fn probe(file: &File) -> Result<bool> {
        let mut b = [0u8; HEADER_MEMBER_LEN];
        let n = pread_prefix(file, &mut b)?;
        match parse_header(&b[..n])? {
            HeaderProbe::Container { .. } => Ok(true),
            HeaderProbe::NotOurs => Ok(interrupted_creation(file)?.is_some()),
        }
    }

    /// Opens a container: checks the header, finds the last complete commit (a torn tail is
    /// tolerated and truncated away before the first write), follows the chain back to the last
    /// checkpoint and replays it. The same as [`Container::open_with`] in [`OpenMode::Strict`].
    pub fn open(file: File) -> Result<Container> {
        Self::open_with(file, OpenMode::Strict)
    }

    /// Opens a container, checking it as `mode` says (see [`OpenMode`]).
    pub fn open_with(file: File, mode: OpenMode) -> Result<Container> {
        let len = file.metadata()?.len();
        let mut hb = [0u8; HEADER_MEMBER_LEN];
        let n = pread_prefix(&file, &mut hb)?;
        // A creation cut short (see `probe`) is an empty container, written from the start at
        // the first append.
        let chunk_log2 = match parse_header(&hb[..n]) {
            Ok(HeaderProbe::NotOurs) => {
                return match interrupted_creation(&file)? {
                    Some(log2) => Ok(Self::fresh(file, log2)),
                    None => Err(ContainerError::NotAContainer),
                }
            }
            Ok(HeaderProbe::Container { chunk_log2 }) => chunk_log2,
            // The header's last 10 bytes (its empty body) are zeros: a creation torn inside its
            // header, whose first page a power cut kept at an earlier 36-byte prefix while the
            // file's new length was kept (the power-cut test, seed 5). An interrupted creation if
            // the rest says so; otherwise the damage it looks like.
            Err(e) if n == HEADER_MEMBER_LEN && hb[36..].iter().all(|&x| x == 0) => {
                return match interrupted_creation(&file)? {
                    Some(log2) => Ok(Self::fresh(file, log2)),
                    None => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let Some(last) = find_last_commit(&file, len)? else {
            return match interrupted_creation(&file)? {
                Some(log2) => Ok(Self::fresh(file, log2)),
                None => Err(corrupt("no valid commit member", len)),
            };
        };
        if mode == OpenMode::Strict {
            let chain = commit_chain(&file, &last)?;
            let mut index = ChunkIndex::new(chunk_log2);
            for c in chain.iter().rev() {
                replay_commit(&file, c, &mut index)?;
            }
            return Ok(Self::opened(file, len, index, &chain, None));
        }
        // Recover: newest candidate commit first; one whose chain is broken gives way to the
        // next older one.
        let mut candidate = Some(last);
        let mut first_error = None;
        let mut skipped = 0u64;
        // Where the chain of the last candidate tried broke, and whether candidates ran out.
        let mut last_break = None;
        let mut exhausted = true;
        while let Some(c) = candidate {
            match Self::recover_from(&file, chunk_log2, &c) {
                Ok((index, chain, dropped)) => {
                    let note = (skipped > 0 || dropped > 0).then(|| {
                        format!(
                            "recovered to commit {} (size {}): {} newer commit(s) skipped as damaged \
                             or incomplete, first problem: {}",
                            chain[0].seq,
                            chain[0].size,
                            skipped + dropped,
                            first_error
                                .as_ref()
                                .map_or_else(|| "none".to_string(), |e: &ContainerError| e.to_string())
                        )
                    });
                    return Ok(Self::opened(file, len, index, &chain, note));
                }
                Err((e, below)) => {
                    first_error.get_or_insert(e);
                    last_break = Some(below);
                    skipped += 1;
                    if skipped >= MAX_RECOVERY_CANDIDATES {
                        exhausted = false;
                        break;
                    }
                    // Every commit between `below` and this one depends on what is broken:
                    // go on with candidates starting at or before `below`.
                    let below = below.min(c.offset - 1);
                    candidate = scan_for_commit(&file, below.saturating_add(COMMIT_LEN))?;
                }
            }
        }
        // No commit recovers, and the oldest candidate's chain broke at the first checkpoint's
        // place. A marked file whose first bytes are a strict prefix of a new container's (then
        // zeros) lost that checkpoint: a re-creation in place that was never fsync'd (an fsync
        // makes the first page durable), whose first page a power cut kept at its earlier
        // version while later pages, with commits chained to the lost checkpoint, were kept.
        // Nothing in it was ever durable: it is an interrupted creation. It carries a recovery
        // note, so the mount logs it and keeps opening it this way (not strictly) until it is
        // written anew.
        if exhausted && last_break == Some(HEADER_LEN) {
            if let Some(log2) = interrupted_creation(&file)? {
                let note = format!(
                    "no commit recovers ({}): its first checkpoint never reached the disk, so it \
                     is an interrupted creation, read as empty",
                    first_error
                        .as_ref()
                        .map_or_else(|| "none".to_string(), |e| e.to_string())
                );
                let mut c = Self::fresh(file, log2);
                c.recovery_note = Some(note);
                return Ok(c);
            }
        }
        Err(first_error.unwrap_or_else(|| corrupt("no valid commit member", len)))
    }

    /// [`OpenMode::Recover`] from the candidate commit `last`: its chain back to a checkpoint
    /// must be intact and the checkpoint's index must read; the delta commits after the
    /// checkpoint are applied oldest first, each only if its index members read and every data
    /// member it adds decodes with the right crc32. Returns the index, the chain of the commits
    /// kept (newest first) and how many deltas were dropped.
    fn recover_from(
        file: &File,
        chunk_log2: u8,
        last: &CommitRecord,
    ) -> std::result::Result<(ChunkIndex, Vec<CommitRecord>, u64), (ContainerError, u64)> {
        let chain = commit_chain_at(file, last)?;
        let mut index = ChunkIndex::new(chunk_log2);
        let checkpoint = chain.last().expect("chain is never empty");
        replay_commit(file, checkpoint, &mut index)
            .map_err(|e| (e, checkpoint.offset.saturating_sub(1)))?;
        let mut kept = 1usize;
        let mut decompressor = libdeflater::Decompressor::new();
        let mut member = Vec::new();
        let mut out = Vec::new();
        for c in chain.iter().rev().skip(1) {
            let ok = read_commit_entries(file, c, chunk_log2).and_then(|entries| {
                for e in &entries {
                    if e.kind == PieceKind::Hole {
                        continue;
                    }
                    member.resize(e.stored_len as usize, 0);
                    pread(file, &mut member, e.member_offset, "data member")?;
                    out.resize(e.logical_len as usize, 0);
                    decode_piece(&member, e, &mut decompressor, &mut out)?;
                }
                Ok(entries)
            });
            match ok {
                Ok(entries) => {
                    for e in entries {
                        index.apply(e);
                    }
                    index.set_size(c.size);
                    kept += 1;
                }
                Err(_) => break,
            }
        }
        let dropped = (chain.len() - kept) as u64;
        let chain = chain[chain.len() - kept..].to_vec();
        Ok((index, chain, dropped))
    }

    /// The container state after replaying `chain` (newest first; `chain[0]` is the commit the
    /// state ends at) into `index`, for a file of `len` bytes.
    fn opened(
        file: File,
        len: u64,
        index: ChunkIndex,
        chain: &[CommitRecord],
        recovery_note: Option<String>,
    ) -> Container {
        let last = chain[0];
        let checkpoint = chain.last().expect("chain is never empty");
        let entries_since_checkpoint = chain
            .iter()
            .filter(|c| !c.checkpoint)
            .map(|c| c.entry_count as u64)
            .sum();
        let aux = read_aux(&file, &last);
        Container {
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
            checkpoint_end: checkpoint.offset + COMMIT_LEN,
            synced_len: AtomicU64::new(0),
            recovery_note,
        }
    }

    /// Length of the prefix known to be durable: everything before it was fdatasync'd through
    /// this handle (0 after an open).
    pub fn synced_len(&self) -> u64 {
        self.synced_len.load(Ordering::Relaxed)
    }

    /// Truncates the file to the end of the last complete commit if anything follows it (a torn
    /// tail, or what [`OpenMode::Recover`] left out). A writer does this before its first append
    /// anyway; doing it at once makes the file say what it holds. Returns whether it truncated.
    pub fn drop_torn_tail(&mut self) -> Result<bool> {
        if !self.tail_dirty || self.needs_init {
            return Ok(false);
        }
        self.file.set_len(self.container_len)?;
        self.forget_synced();
        self.tail_dirty = false;
        Ok(true)
    }

    /// What [`OpenMode::Recover`] had to leave out, if anything (for a log line).
    pub fn recovery_note(&self) -> Option<&str> {
        self.recovery_note.as_deref()
    }

    /// The logical size recorded by the last complete commit: reads the last 94 bytes, and only
    /// on a torn tail falls back to the backward scan.
    pub fn read_logical_size(file: &File) -> Result<u64> {
        let len = file.metadata()?.len();
        match find_last_commit(file, len)? {
            Some(c) => Ok(c.size),
            None if interrupted_creation(file)?.is_some() => Ok(0),
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

    /// Writes the header and the first checkpoint at offset 0 of an empty file.
    fn write_initial_bytes(&mut self) -> Result<()> {
        self.synced_len.store(0, Ordering::Relaxed);
        let b = initial_bytes(self.chunk_log2());
        self.file.write_all_at(&b, 0)?;
        self.needs_init = false;
        self.tail_dirty = false;
        self.container_len = b.len() as u64;
        self.last_seq = 1;
        self.last_commit = HEADER_LEN;
        self.committed_size = 0;
        self.deltas_since_checkpoint = 0;
        self.entries_since_checkpoint = 0;
        self.checkpoint_end = self.container_len;
        Ok(())
    }

    /// Truncates a torn tail away and writes the header and first checkpoint if still needed.
    fn prepare_write(&mut self) -> Result<()> {
        if self.needs_init {
            // An interrupted creation: whatever prefix of the first bytes is there goes.
            self.file.set_len(0)?;
            self.write_initial_bytes()?;
        }
        if self.tail_dirty {
            self.file.set_len(self.container_len)?;
            self.forget_synced();
            self.tail_dirty = false;
        }
        Ok(())
    }

    /// Appends one complete data member at the end, fills `entry.member_offset`/`stored_len`,
    /// applies it to the index and records it for the next commit. On error nothing changes.
    pub fn append_member(&mut self, member: &[u8], entry: IndexEntry) -> Result<()> {
        let slot = self.begin_append(member, entry)?;
        let written = self.file.write_all_at(member, slot.offset);
        self.finish_append(slot, written)
    }

    /// The first half of [`Container::append_member`], for a caller that writes the member's
    /// bytes without holding the container: checks the member against `entry` and says where
    /// the bytes go ([`AppendSlot::offset`]). Nothing changes until
    /// [`Container::finish_append`]; until then the caller must be this container's only
    /// appender (no other append, commit or cut of it may run).
    pub fn begin_append(&mut self, member: &[u8], mut entry: IndexEntry) -> Result<AppendSlot> {
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
        Ok(AppendSlot {
            offset: self.container_len,
            entry,
        })
    }

    /// The second half of [`Container::append_member`]: `written` is how the write of the
    /// member at `slot.offset()` went. On success the entry is applied and recorded for the next
    /// commit; on a failed write nothing changes but that the bytes after the last good append
    /// are cut away before the next write.
    pub fn finish_append(&mut self, slot: AppendSlot, written: std::io::Result<()>) -> Result<()> {
        if slot.offset != self.container_len {
            // Someone appended or cut meanwhile, against `begin_append`'s rule: what the write
            // overlapped cannot be trusted.
            self.tail_dirty = true;
            return Err(invalid(
                "the container changed between begin_append and finish_append",
            ));
        }
        if let Err(e) = written {
            self.tail_dirty = true;
            return Err(e.into());
        }
        self.container_len = slot.offset + slot.entry.stored_len as u64;
        self.index.apply(slot.entry.clone());
        self.pending.push(slot.entry);
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
        self.has_content_pending() || self.aux != self.committed_aux
    }

    /// Whether the next commit would record a change of content or size (pieces, truncations),
    /// leaving the auxiliary state aside.
    pub fn has_content_pending(&self) -> bool {
        !self.pending.is_empty()
            || !self.segments.is_empty()
            || self.index.size() != self.committed_size
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

    /// What the next commit writes: (whether it is a checkpoint, whether it needs a final
    /// delta, the entries and the deltas it adds).
    fn next_commit_shape(&self, force_checkpoint: bool) -> (bool, bool, u64, u64) {
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
            || self.deltas_since_checkpoint + new_deltas > CHECKPOINT_MAX_DELTAS
            || self.container_len.saturating_sub(self.checkpoint_end)
                > CHECKPOINT_MIN_BYTES.max(CHECKPOINT_BYTES_FACTOR * index_members_len(live));
        (checkpoint, final_needed, new_entries, new_deltas)
    }

    /// Whether [`Container::commit`] would fdatasync before writing: its commit is a checkpoint
    /// and bytes it refers to are not durable yet. A caller that must not hold its lock on this
    /// container across an fdatasync makes them durable first ([`Container::mark_synced`]).
    pub fn commit_needs_sync(&self) -> bool {
        self.has_pending()
            && self.last_commit != u64::MAX
            && !self.needs_init
            && !self.tail_dirty
            && self.synced_len.load(Ordering::Relaxed) < self.container_len
            && self.next_commit_shape(false).0
    }

    fn commit_inner(&mut self, force_checkpoint: bool) -> Result<()> {
        if !force_checkpoint && !self.has_pending() {
            return Ok(());
        }
        self.prepare_write()?;
        let final_size = self.index.size();
        let (checkpoint, final_needed, new_entries, new_deltas) =
            self.next_commit_shape(force_checkpoint);
        let live = self.index.live_entry_count();
        if checkpoint
            && self.last_commit != u64::MAX
            && self.synced_len.load(Ordering::Relaxed) < self.container_len
        {
            // Everything a checkpoint refers to must be durable before it is written: recovery
            // after a power loss trusts a checkpoint's data and checks only what follows it.
            self.sync_data()?;
        }

        if checkpoint && live > u32::MAX as u64 {
            return Err(invalid("too many live index entries for one checkpoint"));
        }
        let mut out = CommitWriter::new(&self.file, self.container_len);
        let mut seq = self.last_seq;
        let mut prev = self.last_commit;
        let aux = self.aux.clone().filter(|a| a.sha256_len == final_size);
        let written = (|| -> std::io::Result<()> {
            if checkpoint {
                let iter = self.index.live_entries();
                prev = emit_commit(
                    &mut out,
                    &mut seq,
                    prev,
                    final_size,
                    true,
                    aux.as_ref(),
                    live,
                    iter,
                )?;
            } else {
                for s in &self.segments {
                    let n = s.entries.len() as u64;
                    prev = emit_commit(
                        &mut out,
                        &mut seq,
                        prev,
                        s.size,
                        false,
                        None,
                        n,
                        s.entries.iter(),
                    )?;
                }
                if final_needed {
                    let n = self.pending.len() as u64;
                    prev = emit_commit(
                        &mut out,
                        &mut seq,
                        prev,
                        final_size,
                        false,
                        aux.as_ref(),
                        n,
                        self.pending.iter(),
                    )?;
                }
            }
            out.finish()
        })();
        if let Err(e) = written {
            self.tail_dirty = true;
            return Err(e.into());
        }
        self.container_len = out.position();
        self.last_seq = seq;
        self.last_commit = prev;
        self.committed_size = final_size;
        if checkpoint {
            self.checkpoint_end = self.container_len;
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

    /// After the file's length was cut (a torn tail dropped): nothing is known to be durable
    /// until the next fdatasync, which then also makes the shorter length durable. Keeping the
    /// old mark would let [`Container::is_synced`] skip that fdatasync.
    fn forget_synced(&self) {
        self.synced_len.store(0, Ordering::Relaxed);
    }

    /// Whether everything this container holds (every append, commit and cut made through this
    /// handle) was made durable by an fdatasync through it since, so another one would write
    /// nothing. False after an open: a writer before it may have left its commits unsynced.
    pub fn is_synced(&self) -> bool {
        !self.needs_init
            && !self.tail_dirty
            && self.synced_len.load(Ordering::Relaxed) >= self.container_len
    }

    /// fdatasync.
    pub fn sync_data(&self) -> Result<()> {
        let len = self.container_len;
        self.file.sync_data()?;
        self.synced_len.fetch_max(len, Ordering::Relaxed);
        Ok(())
    }

    /// Records that an fdatasync of this container's file (through any descriptor of it)
    /// completed after the container was `len` bytes long: what [`Container::sync_data`] does
    /// after its own fdatasync, for a caller that synced without holding the container.
    pub fn mark_synced(&self, len: u64) {
        self.synced_len.fetch_max(len, Ordering::Relaxed);
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
    /// container (header, the live data members but the overlay pieces, and a checkpoint of the
    /// live entries). This counts superseded members, overlay pieces and all commit metadata
    /// except that one checkpoint; it assumes compaction keeps the other members as they are.
    pub fn stale_bytes(&self) -> u64 {
        let aux = if self.committed_aux.is_some() {
            AUX_MEMBER_LEN as u64
        } else {
            0
        };
        // Overlay pieces are folded into their chunk's one member by a compaction, which then
        // takes about the size of the chunk's first piece alone.
        let compacted = HEADER_LEN
            + (self.index.live_stored_bytes() - self.index.overlay_stored_bytes())
            + index_members_len(self.index.live_entry_count())
            + aux
            + COMMIT_LEN;
        self.container_len.saturating_sub(compacted)
    }

    /// FORMAT.md "Compaction": the file is committed, the container is at least 1 MiB, and
    /// either the stale bytes exceed half of it or chunks hold more than [`MAX_CHUNK_PIECES`]
    /// pieces on average.
    pub fn needs_compaction(&self) -> bool {
        if self.has_pending() || self.container_len < COMPACTION_MIN_LEN {
            return false;
        }
        self.stale_bytes() > self.container_len / 2
            || self.index.live_entry_count() > MAX_CHUNK_PIECES * self.index.chunk_count()
    }

    /// Resets to an empty container in place (truncate-to-zero): ftruncate 0, then header and
    /// checkpoint. If the ftruncate fails nothing changes; if the rewrite fails the logical state
    /// is already empty and the header is rewritten before the next write.
    pub fn reset(&mut self) -> Result<()> {
        self.file.set_len(0)?;
        self.synced_len.store(0, Ordering::Relaxed);
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
        // The caller syncs the whole file before installing it; until then it is not in use, so
        // its checkpoint needs no sync of its own (see `commit_inner`).
        c.synced_len.store(c.container_len, Ordering::Relaxed);
        c.segments.clear();
        c.aux = aux;
        c.commit_inner(true)?;
        Ok(c)
    }
}

/// Writes a commit's members to the container in pieces of at most [`CommitWriter::FLUSH_AT`]
/// bytes, so a checkpoint of a file with millions of chunks never holds its whole encoded index
/// in memory. Nothing it wrote counts until the commit member at its end is on disk: a commit
/// cut short is a torn tail like any other.
/// Where a data member begun with [`Container::begin_append`] is to be written.
#[must_use = "an append is only recorded by Container::finish_append"]
#[derive(Debug)]
pub struct AppendSlot {
    offset: u64,
    entry: IndexEntry,
}

impl AppendSlot {
    /// The container offset the member's bytes go to.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

struct CommitWriter<'f> {
    file: &'f std::fs::File,
    /// Container offset of `buf[0]`.
    flushed_to: u64,
    buf: Vec<u8>,
}

impl<'f> CommitWriter<'f> {
    const FLUSH_AT: usize = 1 << 20;

    fn new(file: &'f std::fs::File, at: u64) -> Self {
        CommitWriter {
            file,
            flushed_to: at,
            buf: Vec::new(),
        }
    }

    /// Container offset of the next byte appended.
    fn position(&self) -> u64 {
        self.flushed_to + self.buf.len() as u64
    }

    fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    fn maybe_flush(&mut self) -> std::io::Result<()> {
        if self.buf.len() >= Self::FLUSH_AT {
            self.finish()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.file.write_all_at(&self.buf, self.flushed_to)?;
        self.flushed_to += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

/// Appends the auxiliary member `aux` (if any), the index members for `entries` (1000 per
/// member) and a commit member to `out`. Returns the commit's offset.
#[allow(clippy::too_many_arguments)]
fn emit_commit<'a>(
    out: &mut CommitWriter<'_>,
    seq: &mut u64,
    prev: u64,
    size: u64,
    checkpoint: bool,
    aux: Option<&AuxRecord>,
    count: u64,
    mut entries: impl Iterator<Item = &'a IndexEntry>,
) -> std::io::Result<u64> {
    let aux_offset = match aux {
        Some(a) => {
            let at = out.position();
            out.buf().extend_from_slice(&a.encode());
            at
        }
        None => u64::MAX,
    };
    let first_index = out.position();
    let mut members = 0u32;
    let mut left = count;
    let mut chunk: Vec<&IndexEntry> = Vec::with_capacity(MAX_INDEX_ENTRIES_PER_MEMBER);
    while left > 0 {
        chunk.clear();
        let take = left.min(MAX_INDEX_ENTRIES_PER_MEMBER as u64);
        for _ in 0..take {
            chunk.push(entries.next().expect("entry count matches the iterator"));
        }
        encode_index_member(chunk.iter().copied(), out.buf());
        out.maybe_flush()?;
        members += 1;
        left -= take;
    }
    debug_assert!(entries.next().is_none());
    *seq += 1;
    let offset = out.position();
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
    out.buf().extend_from_slice(&c.encode());
    Ok(offset)
}
