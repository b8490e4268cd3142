//! Fixed records of the format: member framing, header, index entries, index members, commits.

use super::{
    corrupt, ContainerError, Result, AUX_MEMBER_LEN, COMMIT_MEMBER_LEN, DATA_HEADER_LEN,
    HEADER_MEMBER_LEN, INDEX_ENTRY_LEN, MAX_CHUNK_LOG2, MAX_INDEX_ENTRIES_PER_MEMBER,
    MIN_CHUNK_LOG2,
};

/// Magic at the start of the header payload.
pub const MAGIC: &[u8; 8] = b"DEFLATFS";
/// The format version this module reads and writes.
pub const FORMAT_VERSION: u16 = 1;
/// Magic at the start of the commit payload.
pub const COMMIT_MAGIC: &[u8; 4] = b"DFCM";

/// Record type of the header member.
pub const RECORD_HEADER: u8 = b'H';
/// Record type of a data member.
pub const RECORD_DATA: u8 = b'd';
/// Record type of an index member.
pub const RECORD_INDEX: u8 = b'i';
/// Record type of a commit member.
pub const RECORD_COMMIT: u8 = b'c';
/// Record type of an auxiliary member (per-file state of one commit).
pub const RECORD_AUX: u8 = b'a';
/// First subfield id byte of every member.
pub const SUBFIELD_ID1: u8 = b'D';

/// Length of the member framing (gzip header with FEXTRA and the subfield header).
pub const FRAMING_LEN: usize = 16;
/// Payload length of the header member.
pub const HEADER_PAYLOAD_LEN: usize = 20;
/// Payload length of a commit member.
pub const COMMIT_PAYLOAD_LEN: usize = 68;
/// Payload length of a data member.
pub const DATA_PAYLOAD_LEN: usize = 16;
/// Payload length of an auxiliary member.
pub const AUX_PAYLOAD_LEN: usize = 112;
/// Auxiliary member flag: the member holds a SHA-256 state.
pub const AUX_FLAG_SHA256: u32 = 1;

/// The first ten bytes of every member: ID1 ID2 CM FLG MTIME(4) XFL OS.
pub(crate) const GZIP_ID: [u8; 10] = [0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff];
/// Body of every empty member: the deflate stream `03 00`, CRC32 0, ISIZE 0.
pub(crate) const EMPTY_BODY: [u8; 10] = [0x03, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];

pub(crate) fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

pub(crate) fn u32_at(b: &[u8], i: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[i..i + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

/// The 16 framing bytes of a member of type `record` with a payload of `payload_len` bytes.
pub(crate) fn framing(record: u8, payload_len: usize) -> [u8; FRAMING_LEN] {
    debug_assert!(payload_len + 4 <= u16::MAX as usize);
    let mut f = [0u8; FRAMING_LEN];
    f[..10].copy_from_slice(&GZIP_ID);
    f[10..12].copy_from_slice(&((payload_len + 4) as u16).to_le_bytes());
    f[12] = SUBFIELD_ID1;
    f[13] = record;
    f[14..16].copy_from_slice(&(payload_len as u16).to_le_bytes());
    f
}

/// Checks the framing bytes of a member of type `record` at container offset `offset`; returns
/// the payload length.
pub(crate) fn check_framing(b: &[u8], record: u8, offset: u64) -> Result<usize> {
    if b.len() < FRAMING_LEN {
        return Err(corrupt("member framing truncated", offset));
    }
    if b[..10] != GZIP_ID {
        return Err(corrupt(
            "bad gzip member header (expected 1f 8b 08 04 00 00 00 00 00 ff)",
            offset,
        ));
    }
    if b[12] != SUBFIELD_ID1 || b[13] != record {
        return Err(corrupt(
            format!(
                "expected subfield 'D' '{}', found {:02x} {:02x}",
                record as char, b[12], b[13]
            ),
            offset + 12,
        ));
    }
    let xlen = u16_at(b, 10) as usize;
    let len = u16_at(b, 14) as usize;
    if xlen != len + 4 {
        return Err(corrupt(
            format!("XLEN {xlen} does not match subfield length {len} + 4"),
            offset + 10,
        ));
    }
    Ok(len)
}

fn check_empty_body(b: &[u8], offset: u64) -> Result<()> {
    if b != EMPTY_BODY {
        return Err(corrupt(
            "metadata member body is not the empty deflate stream 03 00 with zero CRC32/ISIZE",
            offset,
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Header

/// The complete header member of a container with chunks of `1 << chunk_log2` bytes.
pub fn header_member(chunk_log2: u8) -> [u8; HEADER_MEMBER_LEN] {
    let mut m = [0u8; HEADER_MEMBER_LEN];
    m[..16].copy_from_slice(&framing(RECORD_HEADER, HEADER_PAYLOAD_LEN));
    let p = &mut m[16..36];
    p[..8].copy_from_slice(MAGIC);
    p[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    p[10] = chunk_log2;
    // p[11] reserved, p[12..16] flags: zero.
    let crc = libdeflater::crc32(&p[..16]);
    p[16..20].copy_from_slice(&crc.to_le_bytes());
    m[36..46].copy_from_slice(&EMPTY_BODY);
    m
}

/// Outcome of looking at the first bytes of a file.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeaderProbe {
    /// Not a container: serve the file unchanged.
    NotOurs,
    /// A valid version-1 header.
    Container { chunk_log2: u8 },
}

/// Parses the first bytes of a file (`b` may be shorter than a header).
///
/// Not a container: too short, wrong framing, wrong magic or wrong crc32. A header with a valid
/// magic and crc32 is ours: an unknown version is `UnsupportedVersion`, any other invalid field
/// (chunk size out of range, non-zero reserved bits, a wrong member body) is `Corrupt`.
pub(crate) fn parse_header(b: &[u8]) -> Result<HeaderProbe> {
    if b.len() < HEADER_MEMBER_LEN {
        return Ok(HeaderProbe::NotOurs);
    }
    if !matches!(check_framing(b, RECORD_HEADER, 0), Ok(HEADER_PAYLOAD_LEN)) {
        return Ok(HeaderProbe::NotOurs);
    }
    let p = &b[16..36];
    if &p[..8] != MAGIC || libdeflater::crc32(&p[..16]) != u32_at(p, 16) {
        return Ok(HeaderProbe::NotOurs);
    }
    let version = u16_at(p, 8);
    if version != FORMAT_VERSION {
        return Err(ContainerError::UnsupportedVersion(version));
    }
    let chunk_log2 = p[10];
    if !(MIN_CHUNK_LOG2..=MAX_CHUNK_LOG2).contains(&chunk_log2) {
        return Err(corrupt(
            format!("chunk size log2 {chunk_log2} outside {MIN_CHUNK_LOG2}..={MAX_CHUNK_LOG2}"),
            26,
        ));
    }
    if p[11] != 0 || u32_at(p, 12) != 0 {
        return Err(corrupt("header reserved byte or flags not zero", 27));
    }
    check_empty_body(&b[36..46], 36)?;
    Ok(HeaderProbe::Container { chunk_log2 })
}

// ---------------------------------------------------------------------------------------------
// Index entries

/// How a piece is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PieceKind {
    /// Compressed deflate stream: inflate it.
    Deflate,
    /// Deflate stored blocks only: copy it.
    Stored,
    /// No data: the chunk reads as zeros.
    Hole,
}

impl PieceKind {
    fn code(self) -> u8 {
        match self {
            PieceKind::Deflate => 0,
            PieceKind::Stored => 1,
            PieceKind::Hole => 2,
        }
    }
}

/// One chunk index entry (64 bytes on disk).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Logical offset of the piece's first byte (for a hole: the chunk's start).
    pub logical_offset: u64,
    /// Logical length of the piece (0 for a hole).
    pub logical_len: u32,
    /// Container offset of the data member (`u64::MAX` for a hole).
    pub member_offset: u64,
    /// Total bytes of the data member, header to ISIZE (0 for a hole).
    pub stored_len: u32,
    /// crc32 of the piece's uncompressed bytes (0 for a hole).
    pub crc32: u32,
    pub kind: PieceKind,
    /// The piece replaces all earlier pieces of its chunk (always set on holes).
    pub reset: bool,
    /// Compression level used (0 for stored and hole).
    pub level: u8,
    /// Deflate window as log2 (15 for 32 KiB; 0 for stored and hole).
    pub window_log2: u8,
    /// BLAKE3 chaining value of the whole chunk after this piece (all zero: not computed).
    pub chaining_value: [u8; 32],
}

impl IndexEntry {
    /// The 64-byte encoding.
    pub fn encode(&self) -> [u8; INDEX_ENTRY_LEN] {
        let mut b = [0u8; INDEX_ENTRY_LEN];
        b[0..8].copy_from_slice(&self.logical_offset.to_le_bytes());
        b[8..12].copy_from_slice(&self.logical_len.to_le_bytes());
        b[12..20].copy_from_slice(&self.member_offset.to_le_bytes());
        b[20..24].copy_from_slice(&self.stored_len.to_le_bytes());
        b[24..28].copy_from_slice(&self.crc32.to_le_bytes());
        b[28] = self.kind.code();
        b[29] = self.reset as u8;
        b[30] = self.level;
        b[31] = self.window_log2;
        b[32..64].copy_from_slice(&self.chaining_value);
        b
    }

    /// Decodes an entry; error offsets are relative to the entry's first byte.
    pub fn decode(b: &[u8; INDEX_ENTRY_LEN]) -> Result<Self> {
        Self::decode_at(b, 0)
    }

    /// Decodes an entry located at container offset `offset` (used in error messages).
    pub(crate) fn decode_at(b: &[u8; INDEX_ENTRY_LEN], offset: u64) -> Result<Self> {
        let kind = match b[28] {
            0 => PieceKind::Deflate,
            1 => PieceKind::Stored,
            2 => PieceKind::Hole,
            k => {
                return Err(corrupt(
                    format!("unknown index entry kind {k}"),
                    offset + 28,
                ))
            }
        };
        if b[29] & !1 != 0 {
            return Err(corrupt(
                format!("unknown index entry flags {:#04x}", b[29]),
                offset + 29,
            ));
        }
        let mut chaining_value = [0u8; 32];
        chaining_value.copy_from_slice(&b[32..64]);
        let e = IndexEntry {
            logical_offset: u64_at(b, 0),
            logical_len: u32_at(b, 8),
            member_offset: u64_at(b, 12),
            stored_len: u32_at(b, 20),
            crc32: u32_at(b, 24),
            kind,
            reset: b[29] & 1 != 0,
            level: b[30],
            window_log2: b[31],
            chaining_value,
        };
        if kind == PieceKind::Hole {
            if !e.reset {
                return Err(corrupt("hole entry without RESET", offset + 29));
            }
            if e.member_offset != u64::MAX {
                return Err(corrupt("hole entry with a member offset", offset + 12));
            }
        } else if e.member_offset == u64::MAX {
            return Err(corrupt("data entry without a member offset", offset + 12));
        }
        Ok(e)
    }

    /// A hole entry for the chunk starting at `chunk_start`: RESET, no member, length 0.
    pub fn hole(chunk_start: u64) -> Self {
        IndexEntry {
            logical_offset: chunk_start,
            logical_len: 0,
            member_offset: u64::MAX,
            stored_len: 0,
            crc32: 0,
            kind: PieceKind::Hole,
            reset: true,
            level: 0,
            window_log2: 0,
            chaining_value: [0; 32],
        }
    }

    /// Container offset one past the data member (0 for holes).
    pub fn member_end(&self) -> u64 {
        if self.kind == PieceKind::Hole {
            0
        } else {
            self.member_offset.saturating_add(self.stored_len as u64)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Index members

/// Length of an index member holding `n` entries (`n <= 1000`).
pub const fn index_member_len(n: usize) -> usize {
    FRAMING_LEN + 4 + INDEX_ENTRY_LEN * n + 4 + EMPTY_BODY.len()
}

/// Total length of the index members for `n` entries packed 1000 per member.
pub(crate) fn index_members_len(n: u64) -> u64 {
    let members = n.div_ceil(MAX_INDEX_ENTRIES_PER_MEMBER as u64);
    members * index_member_len(0) as u64 + n * INDEX_ENTRY_LEN as u64
}

/// Appends one index member holding `entries` (at most 1000) to `out`.
pub(crate) fn encode_index_member<'a>(
    entries: impl ExactSizeIterator<Item = &'a IndexEntry>,
    out: &mut Vec<u8>,
) {
    let n = entries.len();
    assert!(n <= MAX_INDEX_ENTRIES_PER_MEMBER);
    let payload_len = 4 + INDEX_ENTRY_LEN * n + 4;
    out.extend_from_slice(&framing(RECORD_INDEX, payload_len));
    let start = out.len();
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.encode());
    }
    let crc = libdeflater::crc32(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&EMPTY_BODY);
}

/// Checks the payload length announced by an index member's framing; returns the entry count.
pub(crate) fn index_entry_count_for_payload(payload_len: usize, offset: u64) -> Result<usize> {
    if payload_len < 8 || !(payload_len - 8).is_multiple_of(INDEX_ENTRY_LEN) {
        return Err(corrupt(
            format!("index member payload length {payload_len} is not 8 + 64 n"),
            offset + 14,
        ));
    }
    let n = (payload_len - 8) / INDEX_ENTRY_LEN;
    if n > MAX_INDEX_ENTRIES_PER_MEMBER {
        return Err(corrupt(
            format!("index member holds {n} entries (at most 1000)"),
            offset + 14,
        ));
    }
    Ok(n)
}

/// Parses the payload and body of an index member located at `offset` (`rest` is everything
/// after the framing: payload then the 10-byte empty body).
pub(crate) fn parse_index_member_rest(rest: &[u8], offset: u64) -> Result<Vec<IndexEntry>> {
    if rest.len() < 8 + EMPTY_BODY.len() {
        return Err(corrupt("index member truncated", offset));
    }
    let payload_len = rest.len() - EMPTY_BODY.len();
    let n = index_entry_count_for_payload(payload_len, offset)?;
    let payload = &rest[..payload_len];
    let poff = offset + FRAMING_LEN as u64;
    if u32_at(payload, 0) as usize != n {
        return Err(corrupt(
            format!(
                "index member entry count {} does not match its length ({n} entries)",
                u32_at(payload, 0)
            ),
            poff,
        ));
    }
    if libdeflater::crc32(&payload[..payload_len - 4]) != u32_at(payload, payload_len - 4) {
        return Err(corrupt(
            "index member crc32 mismatch",
            poff + payload_len as u64 - 4,
        ));
    }
    check_empty_body(&rest[payload_len..], poff + payload_len as u64)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let start = 4 + i * INDEX_ENTRY_LEN;
        let mut b = [0u8; INDEX_ENTRY_LEN];
        b.copy_from_slice(&payload[start..start + INDEX_ENTRY_LEN]);
        out.push(IndexEntry::decode_at(&b, poff + start as u64)?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Commits

/// A decoded commit member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitRecord {
    /// Sequence number: 1 for the first commit, then +1.
    pub seq: u64,
    /// Container offset of this commit member.
    pub offset: u64,
    /// Logical file size.
    pub size: u64,
    /// Container offset of the previous commit (`u64::MAX`: none).
    pub prev: u64,
    /// Container offset of the first index member (== `offset` when there is none).
    pub first_index: u64,
    /// Number of index entries in this commit.
    pub entry_count: u32,
    /// Checkpoint (kind 1) or delta (kind 0).
    pub checkpoint: bool,
    /// Number of index members.
    pub index_members: u32,
    /// Container offset of an auxiliary member (`u64::MAX`: none).
    pub aux: u64,
}

impl CommitRecord {
    /// The complete 94-byte commit member.
    pub fn encode(&self) -> [u8; COMMIT_MEMBER_LEN] {
        let mut m = [0u8; COMMIT_MEMBER_LEN];
        m[..16].copy_from_slice(&framing(RECORD_COMMIT, COMMIT_PAYLOAD_LEN));
        let p = &mut m[16..84];
        p[0..4].copy_from_slice(COMMIT_MAGIC);
        p[4..12].copy_from_slice(&self.seq.to_le_bytes());
        p[12..20].copy_from_slice(&self.offset.to_le_bytes());
        p[20..28].copy_from_slice(&self.size.to_le_bytes());
        p[28..36].copy_from_slice(&self.prev.to_le_bytes());
        p[36..44].copy_from_slice(&self.first_index.to_le_bytes());
        p[44..48].copy_from_slice(&self.entry_count.to_le_bytes());
        p[48] = self.checkpoint as u8;
        p[52..56].copy_from_slice(&self.index_members.to_le_bytes());
        p[56..64].copy_from_slice(&self.aux.to_le_bytes());
        let crc = libdeflater::crc32(&p[..64]);
        p[64..68].copy_from_slice(&crc.to_le_bytes());
        m[84..94].copy_from_slice(&EMPTY_BODY);
        m
    }

    /// Decodes and validates the 94-byte commit member `b` found at container offset `offset`:
    /// framing, magic, crc32, own offset == `offset`, kind, reserved bytes, empty body and the
    /// ordering of the offsets it contains.
    pub fn decode(b: &[u8], offset: u64) -> Result<Self> {
        if b.len() != COMMIT_MEMBER_LEN {
            return Err(corrupt("commit member has the wrong length", offset));
        }
        let len = check_framing(b, RECORD_COMMIT, offset)?;
        if len != COMMIT_PAYLOAD_LEN {
            return Err(corrupt(
                format!("commit payload length {len} (expected 68)"),
                offset + 14,
            ));
        }
        let p = &b[16..84];
        let poff = offset + 16;
        if &p[0..4] != COMMIT_MAGIC {
            return Err(corrupt("commit magic is not DFCM", poff));
        }
        if libdeflater::crc32(&p[..64]) != u32_at(p, 64) {
            return Err(corrupt("commit crc32 mismatch", poff + 64));
        }
        check_empty_body(&b[84..94], offset + 84)?;
        let c = CommitRecord {
            seq: u64_at(p, 4),
            offset: u64_at(p, 12),
            size: u64_at(p, 20),
            prev: u64_at(p, 28),
            first_index: u64_at(p, 36),
            entry_count: u32_at(p, 44),
            checkpoint: p[48] == 1,
            index_members: u32_at(p, 52),
            aux: u64_at(p, 56),
        };
        if c.offset != offset {
            return Err(corrupt(
                format!("commit records its own offset as {}", c.offset),
                poff + 12,
            ));
        }
        if p[48] > 1 {
            return Err(corrupt(format!("unknown commit kind {}", p[48]), poff + 48));
        }
        if p[49..52] != [0, 0, 0] {
            return Err(corrupt("commit reserved bytes not zero", poff + 49));
        }
        if c.seq == 0 {
            return Err(corrupt("commit sequence number 0", poff + 4));
        }
        if c.size > i64::MAX as u64 {
            return Err(corrupt(
                format!("logical size {} too large", c.size),
                poff + 20,
            ));
        }
        if c.first_index > offset || c.first_index < HEADER_MEMBER_LEN as u64 {
            return Err(corrupt(
                format!("first index member offset {} out of range", c.first_index),
                poff + 36,
            ));
        }
        if c.prev != u64::MAX && c.prev.saturating_add(COMMIT_MEMBER_LEN as u64) > c.first_index {
            return Err(corrupt(
                format!("previous commit offset {} not before this commit", c.prev),
                poff + 28,
            ));
        }
        if c.aux != u64::MAX && c.aux >= offset {
            return Err(corrupt(
                format!("auxiliary member offset {} not before this commit", c.aux),
                poff + 56,
            ));
        }
        Ok(c)
    }

    /// The commit member's first 16 bytes, which readers scan for.
    pub fn prefix() -> [u8; FRAMING_LEN] {
        framing(RECORD_COMMIT, COMMIT_PAYLOAD_LEN)
    }
}

// ---------------------------------------------------------------------------------------------
// Auxiliary members

/// The per-file state a commit records in its auxiliary member: the running SHA-256 of the
/// logical content `[0, sha256_len)` (the commit's logical size), as saved by
/// `digest::Sha256State::to_parts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuxRecord {
    /// Bytes hashed: always the logical size of the commit that points at the member.
    pub sha256_len: u64,
    /// SHA-256 state words H0..H7 after the `sha256_len / 64` complete blocks, big-endian.
    pub sha256_state: [u8; 32],
    /// The `sha256_len % 64` bytes after those blocks, then zeros.
    pub sha256_tail: [u8; 64],
}

impl AuxRecord {
    /// The complete 138-byte auxiliary member.
    pub fn encode(&self) -> [u8; AUX_MEMBER_LEN] {
        let mut m = [0u8; AUX_MEMBER_LEN];
        m[..16].copy_from_slice(&framing(RECORD_AUX, AUX_PAYLOAD_LEN));
        let p = &mut m[16..16 + AUX_PAYLOAD_LEN];
        p[0..4].copy_from_slice(&AUX_FLAG_SHA256.to_le_bytes());
        p[4..12].copy_from_slice(&self.sha256_len.to_le_bytes());
        p[12..44].copy_from_slice(&self.sha256_state);
        let n = (self.sha256_len % 64) as usize;
        p[44..44 + n].copy_from_slice(&self.sha256_tail[..n]);
        let crc = libdeflater::crc32(&p[..108]);
        p[108..112].copy_from_slice(&crc.to_le_bytes());
        m[16 + AUX_PAYLOAD_LEN..].copy_from_slice(&EMPTY_BODY);
        m
    }

    /// Decodes and validates the auxiliary member `b` found at container offset `offset`:
    /// framing, length, crc32, flags, zero padding of the tail and the empty body.
    pub fn decode(b: &[u8], offset: u64) -> Result<Self> {
        if b.len() != AUX_MEMBER_LEN {
            return Err(corrupt("auxiliary member has the wrong length", offset));
        }
        let len = check_framing(b, RECORD_AUX, offset)?;
        if len != AUX_PAYLOAD_LEN {
            return Err(corrupt(
                format!("auxiliary payload length {len} (expected {AUX_PAYLOAD_LEN})"),
                offset + 14,
            ));
        }
        let p = &b[16..16 + AUX_PAYLOAD_LEN];
        let poff = offset + 16;
        if libdeflater::crc32(&p[..108]) != u32_at(p, 108) {
            return Err(corrupt("auxiliary member crc32 mismatch", poff + 108));
        }
        let flags = u32_at(p, 0);
        if flags != AUX_FLAG_SHA256 {
            return Err(corrupt(
                format!("unknown auxiliary member flags {flags:#x}"),
                poff,
            ));
        }
        let sha256_len = u64_at(p, 4);
        let n = (sha256_len % 64) as usize;
        if p[44 + n..108].iter().any(|&x| x != 0) {
            return Err(corrupt(
                "auxiliary member: SHA-256 tail padding not zero",
                poff + 44 + n as u64,
            ));
        }
        check_empty_body(&b[16 + AUX_PAYLOAD_LEN..], poff + AUX_PAYLOAD_LEN as u64)?;
        let mut sha256_state = [0u8; 32];
        sha256_state.copy_from_slice(&p[12..44]);
        let mut sha256_tail = [0u8; 64];
        sha256_tail.copy_from_slice(&p[44..108]);
        Ok(AuxRecord {
            sha256_len,
            sha256_state,
            sha256_tail,
        })
    }
}

/// Whether a member of a known kind starts at `pos` (framing, and for data members a payload
/// with a valid crc32; for the others, the whole member).
pub(crate) fn member_starts_at(b: &[u8], pos: usize) -> bool {
    if b.len() < pos + FRAMING_LEN || b[pos..pos + 10] != GZIP_ID {
        return false;
    }
    let kind = b[pos + 13];
    let Ok(plen) = check_framing(&b[pos..], kind, pos as u64) else {
        return false;
    };
    match kind {
        RECORD_DATA => {
            plen == DATA_PAYLOAD_LEN
                && b.len() - pos >= DATA_HEADER_LEN
                && libdeflater::crc32(&b[pos + 16..pos + 28]) == u32_at(b, pos + 28)
        }
        RECORD_COMMIT => {
            b.len() - pos >= COMMIT_MEMBER_LEN
                && CommitRecord::decode(&b[pos..pos + COMMIT_MEMBER_LEN], pos as u64).is_ok()
        }
        RECORD_INDEX => {
            let end = pos + FRAMING_LEN + plen + 10;
            end <= b.len()
                && parse_index_member_rest(&b[pos + FRAMING_LEN..end], pos as u64).is_ok()
        }
        RECORD_AUX => {
            b.len() - pos >= AUX_MEMBER_LEN
                && AuxRecord::decode(&b[pos..pos + AUX_MEMBER_LEN], pos as u64).is_ok()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_entry() -> IndexEntry {
        IndexEntry {
            logical_offset: 0x0102_0304_0506_0708,
            logical_len: 0x1122_3344,
            member_offset: 0x5566_7788_99aa_bbcc,
            stored_len: 0xdead_beef,
            crc32: 0xcafe_babe,
            kind: PieceKind::Deflate,
            reset: true,
            level: 6,
            window_log2: 15,
            chaining_value: std::array::from_fn(|i| i as u8),
        }
    }

    #[test]
    fn index_entry_round_trips_every_kind() {
        for kind in [PieceKind::Deflate, PieceKind::Stored] {
            for reset in [false, true] {
                let e = IndexEntry {
                    kind,
                    reset,
                    ..sample_entry()
                };
                assert_eq!(IndexEntry::decode(&e.encode()).unwrap(), e);
            }
        }
        let h = IndexEntry::hole(1 << 20);
        assert_eq!(IndexEntry::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn index_entry_layout_matches_spec() {
        let b = sample_entry().encode();
        assert_eq!(&b[0..8], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&b[8..12], &0x1122_3344u32.to_le_bytes());
        assert_eq!(&b[12..20], &0x5566_7788_99aa_bbccu64.to_le_bytes());
        assert_eq!(&b[20..24], &0xdead_beefu32.to_le_bytes());
        assert_eq!(&b[24..28], &0xcafe_babeu32.to_le_bytes());
        assert_eq!(&b[28..32], &[0, 1, 6, 15]);
        assert_eq!(b[32], 0);
        assert_eq!(b[63], 31);
    }

    #[test]
    fn index_entry_decode_rejects_bad_kind_flags_and_holes() {
        let mut b = sample_entry().encode();
        b[28] = 3;
        assert!(IndexEntry::decode(&b).is_err());
        let mut b = sample_entry().encode();
        b[29] = 2;
        assert!(IndexEntry::decode(&b).is_err());
        let mut b = IndexEntry::hole(0).encode();
        b[29] = 0;
        assert!(IndexEntry::decode(&b).is_err());
        let mut b = IndexEntry::hole(0).encode();
        b[12] = 0;
        assert!(IndexEntry::decode(&b).is_err());
        let mut b = sample_entry().encode();
        b[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(IndexEntry::decode(&b).is_err());
    }

    #[test]
    fn header_member_round_trips_and_has_spec_layout() {
        let h = header_member(17);
        assert_eq!(h.len(), HEADER_MEMBER_LEN);
        assert_eq!(
            &h[..16],
            &[0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 24, 0, b'D', b'H', 20, 0]
        );
        assert_eq!(&h[16..24], MAGIC);
        assert_eq!(
            parse_header(&h).unwrap(),
            HeaderProbe::Container { chunk_log2: 17 }
        );
    }

    #[test]
    fn header_with_unknown_version_is_unsupported_and_bad_crc_is_not_ours() {
        let mut h = header_member(12);
        h[24] = 2;
        let crc = libdeflater::crc32(&h[16..32]);
        h[32..36].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            parse_header(&h),
            Err(ContainerError::UnsupportedVersion(2))
        ));
        let mut h = header_member(12);
        h[24] = 2; // crc now wrong
        assert_eq!(parse_header(&h).unwrap(), HeaderProbe::NotOurs);
        assert_eq!(parse_header(&h[..45]).unwrap(), HeaderProbe::NotOurs);
    }

    #[test]
    fn header_with_bad_chunk_size_is_corrupt() {
        let mut h = header_member(12);
        h[26] = 23;
        let crc = libdeflater::crc32(&h[16..32]);
        h[32..36].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            parse_header(&h),
            Err(ContainerError::Corrupt { .. })
        ));
    }

    fn sample_commit() -> CommitRecord {
        CommitRecord {
            seq: 7,
            offset: 5000,
            size: 123_456,
            prev: 1000,
            first_index: 4000,
            entry_count: 3,
            checkpoint: false,
            index_members: 1,
            aux: u64::MAX,
        }
    }

    #[test]
    fn commit_round_trips_and_starts_with_scan_prefix() {
        for checkpoint in [false, true] {
            let c = CommitRecord {
                checkpoint,
                ..sample_commit()
            };
            let b = c.encode();
            assert_eq!(
                &b[..16],
                &[0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 0x48, 0, 0x44, 0x63, 0x44, 0]
            );
            assert_eq!(b[..16], CommitRecord::prefix());
            assert_eq!(CommitRecord::decode(&b, 5000).unwrap(), c);
        }
    }

    #[test]
    fn commit_decode_checks_own_offset_crc_and_ordering() {
        let b = sample_commit().encode();
        assert!(CommitRecord::decode(&b, 5001).is_err());
        let mut x = b;
        x[30] ^= 1;
        assert!(CommitRecord::decode(&x, 5000).is_err());
        let bad = CommitRecord {
            prev: 3950,
            ..sample_commit()
        };
        assert!(CommitRecord::decode(&bad.encode(), 5000).is_err());
        let bad = CommitRecord {
            first_index: 5001,
            ..sample_commit()
        };
        assert!(CommitRecord::decode(&bad.encode(), 5000).is_err());
    }

    #[test]
    fn index_member_round_trips() {
        let entries = vec![sample_entry(), IndexEntry::hole(4096)];
        let mut out = Vec::new();
        encode_index_member(entries.iter(), &mut out);
        assert_eq!(out.len(), index_member_len(2));
        let len = check_framing(&out, RECORD_INDEX, 0).unwrap();
        assert_eq!(len, 4 + 128 + 4);
        assert_eq!(parse_index_member_rest(&out[16..], 0).unwrap(), entries);
        let mut bad = out.clone();
        bad[40] ^= 0x80;
        assert!(parse_index_member_rest(&bad[16..], 0).is_err());
    }

    fn sample_aux() -> AuxRecord {
        let mut tail = [0u8; 64];
        tail[..5].copy_from_slice(b"hello");
        AuxRecord {
            sha256_len: 64 * 3 + 5,
            sha256_state: std::array::from_fn(|i| 0xa0 + i as u8),
            sha256_tail: tail,
        }
    }

    #[test]
    fn aux_member_round_trips_and_has_spec_layout() {
        let a = sample_aux();
        let b = a.encode();
        assert_eq!(
            &b[..16],
            &[0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 116, 0, b'D', b'a', 112, 0]
        );
        assert_eq!(&b[16..20], &[1, 0, 0, 0]);
        assert_eq!(&b[20..28], &197u64.to_le_bytes());
        assert_eq!(b[28], 0xa0);
        assert_eq!(&b[60..65], b"hello");
        assert_eq!(&b[128..138], &EMPTY_BODY);
        assert_eq!(AuxRecord::decode(&b, 1000).unwrap(), a);
    }

    #[test]
    fn aux_member_decode_rejects_damage_unknown_flags_and_dirty_padding() {
        let b = sample_aux().encode();
        let mut x = b;
        x[40] ^= 1;
        assert!(AuxRecord::decode(&x, 0).is_err());
        let mut x = b;
        x[16] = 3;
        let crc = libdeflater::crc32(&x[16..124]);
        x[124..128].copy_from_slice(&crc.to_le_bytes());
        assert!(AuxRecord::decode(&x, 0).is_err());
        let mut x = b;
        x[100] = 1;
        let crc = libdeflater::crc32(&x[16..124]);
        x[124..128].copy_from_slice(&crc.to_le_bytes());
        assert!(AuxRecord::decode(&x, 0).is_err());
        assert!(AuxRecord::decode(&b[..137], 0).is_err());
    }

    #[test]
    fn index_members_len_counts_per_member_overhead() {
        assert_eq!(index_members_len(0), 0);
        assert_eq!(index_members_len(1), 34 + 64);
        assert_eq!(index_members_len(1000), 34 + 64_000);
        assert_eq!(index_members_len(1001), 2 * 34 + 64_064);
    }
}
