//! Data members: framing (header and trailer around a deflate stream), validation, decoding,
//! and reading stored pieces in place. The stored blocks themselves are [`super::stored`]'s.

use std::fs::File;
use std::io::{self, IoSliceMut};
use std::ops::Range;

use super::record::{
    check_framing, framing, u32_at, u64_at, DATA_PAYLOAD_LEN, FRAMING_LEN, RECORD_DATA,
};
use super::stored::{
    decode_stored_blocks, encode_stored_blocks, stored_block_header, stored_stream_len,
    StoredStreamError, MAX_STORED_BLOCK, STORED_BLOCK_OVERHEAD,
};
use super::{
    corrupt, ContainerError, IndexEntry, PieceKind, Result, DATA_HEADER_LEN, MAX_CHUNK_LOG2,
    MEMBER_TRAILER_LEN,
};

/// Data member payload flag: the piece replaces all earlier pieces of its chunk.
pub const DATA_FLAG_RESET: u32 = 1;
/// Data member payload flag: the deflate stream consists of stored blocks only.
pub const DATA_FLAG_STORED: u32 = 2;

/// Smallest possible data member: header, a 2-byte deflate stream, trailer.
pub const MIN_DATA_MEMBER_LEN: usize = DATA_HEADER_LEN + 2 + MEMBER_TRAILER_LEN;

/// The 32 bytes that start a data member: framing and the 16-byte payload.
pub fn data_member_header(logical_offset: u64, reset: bool, stored: bool) -> [u8; DATA_HEADER_LEN] {
    let mut h = [0u8; DATA_HEADER_LEN];
    h[..FRAMING_LEN].copy_from_slice(&framing(RECORD_DATA, DATA_PAYLOAD_LEN));
    let p = &mut h[FRAMING_LEN..];
    p[0..8].copy_from_slice(&logical_offset.to_le_bytes());
    let flags = if reset { DATA_FLAG_RESET } else { 0 } | if stored { DATA_FLAG_STORED } else { 0 };
    p[8..12].copy_from_slice(&flags.to_le_bytes());
    let crc = libdeflater::crc32(&p[..12]);
    p[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Moves a data member to another logical place by rewriting only its 16-byte payload: the
/// piece's logical offset becomes `logical_offset`, the RESET flag is set when `reset` (other
/// flag bits are kept), and the payload crc32 is recomputed. The deflate stream and the gzip
/// trailer (CRC32 and ISIZE of the uncompressed bytes) stay valid as they are, which is what
/// lets `copy_file_range` copy a piece without decompressing it. Returns the entry for the
/// moved member, from the one it had (`entry` must describe `member`, as checked by
/// [`parse_data_member`]); its chaining value is left as it was, for the caller to keep or zero.
pub fn relocate_data_member(
    member: &mut [u8],
    entry: &IndexEntry,
    logical_offset: u64,
    reset: bool,
) -> Result<IndexEntry> {
    parse_data_member(member, entry)?;
    let p = &mut member[FRAMING_LEN..DATA_HEADER_LEN];
    p[0..8].copy_from_slice(&logical_offset.to_le_bytes());
    let flags = u32_at(p, 8) | if reset { DATA_FLAG_RESET } else { 0 };
    p[8..12].copy_from_slice(&flags.to_le_bytes());
    let crc = libdeflater::crc32(&p[..12]);
    p[12..16].copy_from_slice(&crc.to_le_bytes());
    let mut moved = entry.clone();
    moved.logical_offset = logical_offset;
    moved.reset = entry.reset || reset;
    Ok(moved)
}

/// The 8-byte gzip member trailer: CRC32 and ISIZE.
pub fn member_trailer(crc32: u32, len: u32) -> [u8; MEMBER_TRAILER_LEN] {
    let mut t = [0u8; MEMBER_TRAILER_LEN];
    t[..4].copy_from_slice(&crc32.to_le_bytes());
    t[4..].copy_from_slice(&len.to_le_bytes());
    t
}

/// Validates a data member read back (`bytes.len() == entry.stored_len`): framing, subfield
/// `D` `d`, payload crc32, payload logical offset == `entry.logical_offset`, payload flags agree
/// with the entry (RESET, STORED == kind Stored), trailer CRC32 == `entry.crc32` and
/// ISIZE == `entry.logical_len`. Returns the byte range of the deflate stream within `bytes`.
/// Error offsets are container offsets (`entry.member_offset` + position).
pub fn parse_data_member(bytes: &[u8], entry: &IndexEntry) -> Result<Range<usize>> {
    let at = member_offset_fn(entry);
    if entry.kind == PieceKind::Hole {
        return Err(corrupt("a hole entry has no data member", at(0)));
    }
    if bytes.len() != entry.stored_len as usize {
        return Err(corrupt(
            format!(
                "data member is {} bytes, index says {}",
                bytes.len(),
                entry.stored_len
            ),
            at(0),
        ));
    }
    if bytes.len() < MIN_DATA_MEMBER_LEN {
        return Err(corrupt(
            format!("data member of {} bytes is too short", bytes.len()),
            at(0),
        ));
    }
    check_data_header(&bytes[..DATA_HEADER_LEN], entry)?;
    let t = bytes.len() - MEMBER_TRAILER_LEN;
    check_data_trailer(&bytes[t..], t, entry)?;
    Ok(DATA_HEADER_LEN..t)
}

/// Container offset of byte `rel` of `entry`'s member (relative offsets for a member read
/// outside a container, `member_offset == u64::MAX`).
fn member_offset_fn(entry: &IndexEntry) -> impl Fn(usize) -> u64 {
    let base = if entry.member_offset == u64::MAX {
        0
    } else {
        entry.member_offset
    };
    move |rel: usize| base.saturating_add(rel as u64)
}

/// The checks of [`parse_data_member`] on the member's first [`DATA_HEADER_LEN`] bytes.
fn check_data_header(header: &[u8], entry: &IndexEntry) -> Result<()> {
    let at = member_offset_fn(entry);
    let len = check_framing(header, RECORD_DATA, at(0))?;
    if len != DATA_PAYLOAD_LEN {
        return Err(corrupt(
            format!("data member payload length {len} (expected 16)"),
            at(14),
        ));
    }
    let p = &header[FRAMING_LEN..DATA_HEADER_LEN];
    if libdeflater::crc32(&p[..12]) != u32_at(p, 12) {
        return Err(corrupt("data member payload crc32 mismatch", at(28)));
    }
    let off = u64_at(p, 0);
    if off != entry.logical_offset {
        return Err(corrupt(
            format!(
                "data member holds logical offset {off}, index says {}",
                entry.logical_offset
            ),
            at(16),
        ));
    }
    let flags = u32_at(p, 8);
    if flags & !(DATA_FLAG_RESET | DATA_FLAG_STORED) != 0 {
        return Err(corrupt(
            format!("unknown data member flags {flags:#x}"),
            at(24),
        ));
    }
    if (flags & DATA_FLAG_RESET != 0) != entry.reset
        || (flags & DATA_FLAG_STORED != 0) != (entry.kind == PieceKind::Stored)
    {
        return Err(corrupt(
            format!("data member flags {flags:#x} disagree with the index entry"),
            at(24),
        ));
    }
    Ok(())
}

/// The checks of [`parse_data_member`] on the member's trailer, which starts at `t`.
fn check_data_trailer(trailer: &[u8], t: usize, entry: &IndexEntry) -> Result<()> {
    let at = member_offset_fn(entry);
    let crc = u32_at(trailer, 0);
    let isize = u32_at(trailer, 4);
    if crc != entry.crc32 {
        return Err(corrupt(
            format!(
                "data member CRC32 {crc:#010x}, index says {:#010x}",
                entry.crc32
            ),
            at(t),
        ));
    }
    if isize != entry.logical_len {
        return Err(corrupt(
            format!(
                "data member ISIZE {isize}, index says {}",
                entry.logical_len
            ),
            at(t + 4),
        ));
    }
    Ok(())
}

/// How a stored piece written in deflatefs's block layout (stored blocks of
/// [`MAX_STORED_BLOCK`] bytes, the last one shorter and final) lies in its member, so that a
/// reader can read the payload straight into place and only the framing around it elsewhere
/// ([`StoredLayout::read_in_place`]). `None` when the entry's stored length does not fit that
/// layout (another writer's block split): such a member is read whole and checked by
/// [`decode_piece`].
#[derive(Debug)]
pub struct StoredLayout {
    /// Number of stored blocks.
    pub blocks: usize,
}

/// Most stored blocks one piece can have: a piece lies within one chunk of at most
/// 2^[`MAX_CHUNK_LOG2`] bytes.
const MAX_PIECE_BLOCKS: usize = (1usize << MAX_CHUNK_LOG2).div_ceil(MAX_STORED_BLOCK);

impl StoredLayout {
    pub fn of(entry: &IndexEntry) -> Option<StoredLayout> {
        if entry.kind != PieceKind::Stored {
            return None;
        }
        let n = entry.logical_len as usize;
        let want = super::stored_member_len(n);
        (entry.stored_len as usize == want).then(|| StoredLayout {
            blocks: n.div_ceil(MAX_STORED_BLOCK).max(1),
        })
    }

    /// Payload bytes of block `i` of a piece of `len` bytes.
    pub fn block_len(&self, i: usize, len: usize) -> usize {
        (len - (i * MAX_STORED_BLOCK).min(len)).min(MAX_STORED_BLOCK)
    }

    /// Checks the framing read around a payload read into place: `header` (the member's first
    /// [`DATA_HEADER_LEN`] bytes), the 5-byte header of every block, and the trailer. It makes
    /// the checks [`parse_data_member`] makes, and requires each block header to be exactly the
    /// one deflatefs writes. The caller checks the payload's crc32 against `entry.crc32`.
    pub fn check(
        &self,
        entry: &IndexEntry,
        header: &[u8],
        block_headers: &[[u8; STORED_BLOCK_OVERHEAD]],
        trailer: &[u8],
    ) -> Result<()> {
        let at = member_offset_fn(entry);
        check_data_header(header, entry)?;
        let len = entry.logical_len as usize;
        let mut pos = DATA_HEADER_LEN;
        for (i, h) in block_headers.iter().enumerate() {
            let n = self.block_len(i, len) as u16;
            let want = stored_block_header(n, i + 1 == self.blocks);
            if *h != want {
                return Err(corrupt(
                    format!("stored block {i} header {h:02x?}, expected {want:02x?}"),
                    at(pos),
                ));
            }
            pos += STORED_BLOCK_OVERHEAD + n as usize;
        }
        check_data_trailer(trailer, pos, entry)
    }

    /// Reads the stored piece `entry` (which this layout describes) from the container `file`
    /// with one positioned vectored read that puts its payload straight into `out` (exactly
    /// `entry.logical_len` bytes) and only its framing into small scratch buffers: no copy out
    /// of an input buffer. `Ok` guarantees what [`decode_piece`] guarantees: the framing passed
    /// [`StoredLayout::check`] and `out` holds bytes whose crc32 is `entry.crc32`.
    ///
    /// An error says why the piece could not be read this way: a short read, damage, an I/O
    /// error, or a piece with no payload (InvalidInput). `out` may then hold anything. Reading
    /// the member whole and decoding it with [`decode_piece`] gives the exact verdict (a valid
    /// piece in this layout always reads in place unless the file changes under it).
    pub fn read_in_place(&self, file: &File, entry: &IndexEntry, out: &mut [u8]) -> Result<()> {
        let len = entry.logical_len as usize;
        let at = member_offset_fn(entry);
        if len == 0 || out.len() != len {
            return Err(ContainerError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "reading a {len}-byte stored piece in place into {} bytes",
                    out.len()
                ),
            )));
        }
        if self.blocks > MAX_PIECE_BLOCKS {
            return Err(corrupt(
                format!(
                    "stored piece of {} blocks is larger than a chunk",
                    self.blocks
                ),
                at(0),
            ));
        }
        let mut header = [0u8; DATA_HEADER_LEN];
        let mut block_headers = [[0u8; STORED_BLOCK_OVERHEAD]; MAX_PIECE_BLOCKS];
        let mut trailer = [0u8; MEMBER_TRAILER_LEN];
        let read = {
            // Header, then each block's header and payload, then the trailer: the member's
            // byte order, so one preadv at the member's offset fills them all.
            let mut iov: [IoSliceMut; 2 * MAX_PIECE_BLOCKS + 2] =
                std::array::from_fn(|_| IoSliceMut::new(&mut []));
            iov[0] = IoSliceMut::new(&mut header);
            let mut n_iov = 1;
            let mut payload = &mut out[..];
            for (i, h) in block_headers[..self.blocks].iter_mut().enumerate() {
                let (block, rest) = payload.split_at_mut(self.block_len(i, len));
                iov[n_iov] = IoSliceMut::new(h);
                iov[n_iov + 1] = IoSliceMut::new(block);
                n_iov += 2;
                payload = rest;
            }
            iov[n_iov] = IoSliceMut::new(&mut trailer);
            n_iov += 1;
            let offset = libc::off_t::try_from(entry.member_offset)
                .map_err(|_| corrupt("member offset beyond the largest file offset", at(0)))?;
            nix::sys::uio::preadv(file, &mut iov[..n_iov], offset)
                .map_err(|e| ContainerError::Io(io::Error::from(e)))?
        };
        if read != entry.stored_len as usize {
            return Err(corrupt(
                format!(
                    "stored piece: read {read} of its {} bytes in place",
                    entry.stored_len
                ),
                at(read),
            ));
        }
        self.check(entry, &header, &block_headers[..self.blocks], &trailer)?;
        if libdeflater::crc32(out) != entry.crc32 {
            return Err(corrupt(
                "piece crc32 mismatch after reading in place",
                at(DATA_HEADER_LEN),
            ));
        }
        Ok(())
    }
}

/// Decodes the data member `bytes` of `entry` into `out` (`out.len() == entry.logical_len`):
/// validates it with [`parse_data_member`], copies stored blocks or inflates, and checks the
/// crc32 of the result.
pub fn decode_piece(
    bytes: &[u8],
    entry: &IndexEntry,
    decompressor: &mut libdeflater::Decompressor,
    out: &mut [u8],
) -> Result<()> {
    let range = parse_data_member(bytes, entry)?;
    let at = entry.member_offset.saturating_add(range.start as u64);
    if out.len() != entry.logical_len as usize {
        return Err(corrupt(
            format!(
                "output buffer of {} bytes for a piece of {}",
                out.len(),
                entry.logical_len
            ),
            at,
        ));
    }
    let stream = &bytes[range];
    let n = match entry.kind {
        PieceKind::Stored => decode_stored_blocks(stream, out)
            .map_err(|StoredStreamError { what, at: pos }| corrupt(what, at + pos as u64))?,
        PieceKind::Deflate => decompressor
            .deflate_decompress(stream, out)
            .map_err(|e| corrupt(format!("inflate failed: {e}"), at))?,
        PieceKind::Hole => unreachable!("parse_data_member rejects holes"),
    };
    if n != out.len() {
        return Err(corrupt(
            format!("piece decodes to {n} bytes, index says {}", out.len()),
            at,
        ));
    }
    if libdeflater::crc32(out) != entry.crc32 {
        return Err(corrupt("piece crc32 mismatch after decoding", at));
    }
    Ok(())
}

/// Length of a data member whose deflate stream is `stream_len` bytes long.
pub const fn data_member_len(stream_len: usize) -> usize {
    DATA_HEADER_LEN + stream_len + MEMBER_TRAILER_LEN
}

/// What a compressor made of one piece's bytes: the deflate stream and how it was made, which is
/// what [`frame_data_member`] records besides the piece's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceStream {
    /// Bytes of the deflate stream.
    pub len: usize,
    /// crc32 of the uncompressed bytes.
    pub crc32: u32,
    /// The stream is stored blocks only (a [`PieceKind::Stored`] piece), else compressed
    /// ([`PieceKind::Deflate`]).
    pub stored: bool,
    /// Compression level used (0 for stored blocks).
    pub level: u8,
    /// Window of the stream as log2 bytes (0 for stored blocks).
    pub window_log2: u8,
}

/// Makes a complete data member of the deflate stream that already sits at
/// `member[DATA_HEADER_LEN..DATA_HEADER_LEN + stream.len]`, without moving it: writes the
/// member's header before it and its trailer (CRC32, ISIZE = `logical_len`) after it. Returns
/// the member's index entry, with `chaining_value` and `member_offset` `u64::MAX` until the
/// member is appended; the member is `member[..entry.stored_len]`.
///
/// Panics if `member` is shorter than [`data_member_len`]`(stream.len)`.
pub fn frame_data_member(
    member: &mut [u8],
    logical_offset: u64,
    reset: bool,
    logical_len: u32,
    stream: PieceStream,
    chaining_value: [u8; 32],
) -> IndexEntry {
    let total = data_member_len(stream.len);
    assert!(
        member.len() >= total,
        "frame_data_member: {}-byte buffer for a {total}-byte member",
        member.len()
    );
    member[..DATA_HEADER_LEN].copy_from_slice(&data_member_header(
        logical_offset,
        reset,
        stream.stored,
    ));
    let trailer_at = DATA_HEADER_LEN + stream.len;
    member[trailer_at..total].copy_from_slice(&member_trailer(stream.crc32, logical_len));
    IndexEntry {
        logical_offset,
        logical_len,
        member_offset: u64::MAX,
        stored_len: total as u32,
        crc32: stream.crc32,
        kind: if stream.stored {
            PieceKind::Stored
        } else {
            PieceKind::Deflate
        },
        reset,
        level: stream.level,
        window_log2: stream.window_log2,
        chaining_value,
    }
}

/// Builds a complete stored data member for `data` (at most one chunk) and its index entry
/// (`member_offset` is `u64::MAX` until the member is appended).
pub fn build_stored_member(logical_offset: u64, reset: bool, data: &[u8]) -> (Vec<u8>, IndexEntry) {
    assert!(data.len() <= u32::MAX as usize / 2);
    let mut m = vec![0u8; data_member_len(stored_stream_len(data.len()))];
    let len = encode_stored_blocks(data, &mut m[DATA_HEADER_LEN..]);
    let stream = PieceStream {
        len,
        crc32: libdeflater::crc32(data),
        stored: true,
        level: 0,
        window_log2: 0,
    };
    let e = frame_data_member(
        &mut m,
        logical_offset,
        reset,
        data.len() as u32,
        stream,
        [0; 32],
    );
    (m, e)
}

/// Builds a complete deflate data member for `data` with `compressor` (created with `level`)
/// and its index entry (`member_offset` is `u64::MAX` until the member is appended).
pub fn build_deflate_member(
    compressor: &mut libdeflater::Compressor,
    level: u8,
    logical_offset: u64,
    reset: bool,
    data: &[u8],
) -> (Vec<u8>, IndexEntry) {
    assert!(data.len() <= u32::MAX as usize / 2);
    let bound = compressor.deflate_compress_bound(data.len()).max(2);
    let mut m = vec![0u8; data_member_len(bound)];
    let len = compressor
        .deflate_compress(data, &mut m[DATA_HEADER_LEN..DATA_HEADER_LEN + bound])
        .expect("buffer sized with deflate_compress_bound");
    let stream = PieceStream {
        len,
        crc32: libdeflater::crc32(data),
        stored: false,
        level,
        window_log2: 15,
    };
    let e = frame_data_member(
        &mut m,
        logical_offset,
        reset,
        data.len() as u32,
        stream,
        [0; 32],
    );
    m.truncate(e.stored_len as usize);
    (m, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a stored member the way a reader in place sees it: header, block headers, payload,
    /// trailer.
    fn stored_parts(m: &[u8], layout: &StoredLayout, len: usize) -> (Vec<[u8; 5]>, Vec<u8>) {
        let mut pos = DATA_HEADER_LEN;
        let (mut headers, mut payload) = (Vec::new(), Vec::new());
        for i in 0..layout.blocks {
            headers.push(m[pos..pos + 5].try_into().unwrap());
            let n = layout.block_len(i, len);
            payload.extend_from_slice(&m[pos + 5..pos + 5 + n]);
            pos += 5 + n;
        }
        assert_eq!(pos, m.len() - MEMBER_TRAILER_LEN);
        (headers, payload)
    }

    #[test]
    fn stored_layout_checks_what_parse_data_member_checks_and_exact_block_headers() {
        for len in [1usize, 65535, 65536, 131072, 200_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let (m, e) = build_stored_member(8192, true, &data);
            let layout = StoredLayout::of(&e).expect("deflatefs's own layout");
            let (headers, payload) = stored_parts(&m, &layout, len);
            assert_eq!(payload, data);
            let t = m.len() - MEMBER_TRAILER_LEN;
            layout
                .check(&e, &m[..DATA_HEADER_LEN], &headers, &m[t..])
                .unwrap();
            // Any flipped framing byte is refused, as parse_data_member refuses it.
            let mut bad = m.clone();
            bad[20] ^= 1; // logical offset
            assert!(layout
                .check(&e, &bad[..DATA_HEADER_LEN], &headers, &m[t..])
                .is_err());
            assert!(parse_data_member(&bad, &e).is_err());
            let mut trailer = m[t..].to_vec();
            trailer[0] ^= 1; // CRC32
            assert!(layout
                .check(&e, &m[..DATA_HEADER_LEN], &headers, &trailer)
                .is_err());
            for b in 0..headers.len() {
                for byte in 0..5 {
                    let mut h = headers.clone();
                    h[b][byte] ^= 1;
                    assert!(
                        layout
                            .check(&e, &m[..DATA_HEADER_LEN], &h, &m[t..])
                            .is_err(),
                        "len {len}: block {b} header byte {byte}"
                    );
                }
            }
        }
    }

    #[test]
    fn stored_layout_is_none_for_other_block_splits_and_deflate_members() {
        let data = vec![9u8; 1000];
        let (_, mut e) = build_stored_member(0, true, &data);
        assert!(StoredLayout::of(&e).is_some());
        e.stored_len += 5; // one more block header: another writer's split
        assert!(StoredLayout::of(&e).is_none());
        let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(1).unwrap());
        let (_, d) = build_deflate_member(&mut c, 1, 0, true, &data);
        assert!(StoredLayout::of(&d).is_none());
    }

    #[test]
    fn data_member_header_layout_matches_spec() {
        let h = data_member_header(0x1000, true, true);
        assert_eq!(
            &h[..16],
            &[0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 20, 0, b'D', b'd', 16, 0]
        );
        assert_eq!(&h[16..24], &0x1000u64.to_le_bytes());
        assert_eq!(&h[24..28], &3u32.to_le_bytes());
        assert_eq!(&h[28..32], &libdeflater::crc32(&h[16..28]).to_le_bytes());
        assert_eq!(member_trailer(0x01020304, 5), [4, 3, 2, 1, 5, 0, 0, 0]);
    }

    #[test]
    fn stored_and_deflate_members_parse_and_decode() {
        let data: Vec<u8> = b"hello world ".iter().cycle().take(5000).copied().collect();
        let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(6).unwrap());
        let mut d = libdeflater::Decompressor::new();
        for (m, mut e) in [
            build_stored_member(8192, false, &data),
            build_deflate_member(&mut c, 6, 8192, true, &data),
        ] {
            e.member_offset = 1000;
            let r = parse_data_member(&m, &e).unwrap();
            assert_eq!(r.start, DATA_HEADER_LEN);
            assert_eq!(r.end, m.len() - 8);
            let mut out = vec![0u8; data.len()];
            decode_piece(&m, &e, &mut d, &mut out).unwrap();
            assert_eq!(out, data);
            // Each checked field is checked.
            let mut e2 = e.clone();
            e2.logical_offset += 1;
            assert!(parse_data_member(&m, &e2).is_err());
            let mut e2 = e.clone();
            e2.crc32 ^= 1;
            assert!(parse_data_member(&m, &e2).is_err());
            let mut e2 = e.clone();
            e2.logical_len += 1;
            assert!(parse_data_member(&m, &e2).is_err());
            let mut e2 = e.clone();
            e2.reset = !e2.reset;
            assert!(parse_data_member(&m, &e2).is_err());
            assert!(parse_data_member(&m[1..], &e).is_err());
            let mut m2 = m.clone();
            m2[13] = b'i';
            assert!(parse_data_member(&m2, &e).is_err());
            let mut m2 = m.clone();
            m2[20] ^= 1; // payload crc
            assert!(parse_data_member(&m2, &e).is_err());
            let mut m2 = m.clone();
            let mid = m2.len() / 2;
            m2[mid] ^= 0x55; // body: only decode_piece notices
            assert!(decode_piece(&m2, &e, &mut d, &mut out).is_err());
        }
    }

    #[test]
    fn decode_piece_reports_container_offsets() {
        let (m, mut e) = build_stored_member(0, true, b"abc");
        e.member_offset = 4096;
        let mut m2 = m.clone();
        m2[DATA_HEADER_LEN + 1] ^= 0xff; // LEN
        let mut d = libdeflater::Decompressor::new();
        let mut out = [0u8; 3];
        match decode_piece(&m2, &e, &mut d, &mut out) {
            Err(crate::container::ContainerError::Corrupt { offset, .. }) => {
                assert_eq!(offset, 4096 + DATA_HEADER_LEN as u64 + 1)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn stored_pieces_read_in_place_exactly_when_intact() {
        use std::os::unix::fs::FileExt;
        for len in [1usize, 65535, 65536, 200_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 13 + len) as u8).collect();
            let (m, mut e) = build_stored_member(4096, true, &data);
            e.member_offset = 1000;
            let layout = StoredLayout::of(&e).expect("deflatefs's own layout");
            let file = tempfile::tempfile().unwrap();
            file.write_all_at(&[0xaa; 1000], 0).unwrap();
            file.write_all_at(&m, 1000).unwrap();
            let mut out = vec![0u8; len];
            layout.read_in_place(&file, &e, &mut out).unwrap();
            assert_eq!(out, data, "len {len}");
            // Every flipped byte of the member is refused: framing, block headers, payload.
            for at in [
                0,
                20,
                DATA_HEADER_LEN,
                DATA_HEADER_LEN + 2,
                m.len() / 2,
                m.len() - 1,
            ] {
                file.write_all_at(&[m[at] ^ 0x10], 1000 + at as u64)
                    .unwrap();
                let r = layout.read_in_place(&file, &e, &mut out);
                assert!(r.is_err(), "len {len}: flipped byte {at} read in place");
                file.write_all_at(&m[at..at + 1], 1000 + at as u64).unwrap();
            }
            // A member cut short by the end of the file, and a buffer of the wrong size.
            file.set_len(1000 + m.len() as u64 - 1).unwrap();
            assert!(layout.read_in_place(&file, &e, &mut out).is_err());
            file.write_all_at(&m[m.len() - 1..], 1000 + m.len() as u64 - 1)
                .unwrap();
            assert!(layout.read_in_place(&file, &e, &mut out[1..]).is_err());
            layout.read_in_place(&file, &e, &mut out).unwrap();
        }
    }

    #[test]
    fn framing_a_stream_in_place_writes_header_and_trailer_around_it() {
        let data: Vec<u8> = b"framed in place "
            .iter()
            .cycle()
            .take(70_000)
            .copied()
            .collect();
        // A stream left at DATA_HEADER_LEN by a compressor, with room after it.
        let mut buf = vec![0x55u8; data_member_len(stored_stream_len(data.len())) + 100];
        let len = encode_stored_blocks(&data, &mut buf[DATA_HEADER_LEN..]);
        let stream_bytes = buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len].to_vec();
        let crc = libdeflater::crc32(&data);
        let stream = PieceStream {
            len,
            crc32: crc,
            stored: true,
            level: 0,
            window_log2: 0,
        };
        let cv = [7u8; 32];
        let e = frame_data_member(&mut buf, 1 << 20, false, data.len() as u32, stream, cv);
        let total = DATA_HEADER_LEN + len + MEMBER_TRAILER_LEN;
        assert_eq!(e.stored_len as usize, total);
        assert_eq!(
            buf[..DATA_HEADER_LEN],
            data_member_header(1 << 20, false, true)
        );
        assert_eq!(
            buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len],
            stream_bytes[..]
        );
        assert_eq!(buf[total - 8..total - 4], crc.to_le_bytes());
        assert_eq!(buf[total - 4..total], (data.len() as u32).to_le_bytes());
        assert!(
            buf[total..].iter().all(|&b| b == 0x55),
            "nothing written after it"
        );
        assert_eq!(
            (e.logical_offset, e.logical_len, e.crc32, e.reset),
            (1 << 20, data.len() as u32, crc, false)
        );
        assert_eq!(
            (e.kind, e.member_offset, e.chaining_value),
            (PieceKind::Stored, u64::MAX, cv)
        );
        let mut out = vec![0u8; data.len()];
        let mut d = libdeflater::Decompressor::new();
        decode_piece(&buf[..total], &e, &mut d, &mut out).unwrap();
        assert_eq!(out, data);
        // A deflate stream's entry says how it was made.
        let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(6).unwrap());
        let (m, dm) = build_deflate_member(&mut c, 6, 0, true, &data);
        assert_eq!(
            (dm.kind, dm.level, dm.window_log2),
            (PieceKind::Deflate, 6, 15)
        );
        decode_piece(&m, &dm, &mut d, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn a_relocated_member_decodes_at_its_new_offset_with_the_same_stream() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8 ^ b'a').collect();
        let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(1).unwrap());
        for (mut m, e) in [
            build_deflate_member(&mut c, 1, 4096 + 100, false, &data),
            build_stored_member(8192, true, &data),
        ] {
            let before = m.clone();
            let moved = relocate_data_member(&mut m, &e, 1 << 20, true).unwrap();
            assert_eq!(moved.logical_offset, 1 << 20);
            assert!(moved.reset);
            assert_eq!((moved.kind, moved.crc32), (e.kind, e.crc32));
            // Only the payload changed: the stream and trailer are byte for byte the same.
            assert_eq!(m[..16], before[..16]);
            assert_eq!(m[DATA_HEADER_LEN..], before[DATA_HEADER_LEN..]);
            let mut out = vec![0u8; data.len()];
            decode_piece(&m, &moved, &mut libdeflater::Decompressor::new(), &mut out).unwrap();
            assert_eq!(out, data);
            // The old entry no longer describes it, and a wrong entry is refused.
            assert!(parse_data_member(&m, &e).is_err());
            assert!(relocate_data_member(&mut m, &e, 0, true).is_err());
        }
    }
}
