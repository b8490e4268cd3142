//! DEFLATE "stored" blocks (RFC 1951 §3.2.4, BTYPE 00): the one writer and reader of them.
//!
//! A stored piece's deflate stream (docs/FORMAT.md, "Data members") is made of these blocks, and
//! the engine writes them whenever compressing does not pay, so both the container layer and the
//! engine use this module; it knows DEFLATE only, nothing of gzip members.
//!
//! The split is fixed: blocks of [`MAX_STORED_BLOCK`] bytes, the last one shorter (or empty for
//! empty data) and final. Readers of pieces in place ([`super::StoredLayout`]) rely on that.
//!
//! A stored-only stream always starts byte aligned, and every stored block ends byte aligned, so
//! every block header occupies exactly one byte (BFINAL, BTYPE=00 and 5 padding bits) followed by
//! LEN and NLEN. That holds for streams written by any encoder, which is why
//! [`decode_stored_blocks`] accepts any block split.

/// Largest payload of one deflate stored block.
pub const MAX_STORED_BLOCK: usize = 65535;
/// Bytes of framing per stored block (1 header byte, LEN, NLEN).
pub const STORED_BLOCK_OVERHEAD: usize = 5;

/// Bytes of deflate stored blocks needed for `n` bytes of data: `n + 5 * ceil(n / 65535)`, and 5
/// for `n == 0` (one empty final stored block).
pub const fn stored_stream_len(n: usize) -> usize {
    let blocks = if n == 0 {
        1
    } else {
        n.div_ceil(MAX_STORED_BLOCK)
    };
    n + blocks * STORED_BLOCK_OVERHEAD
}

/// The header of a stored block of `len` bytes: BFINAL = `last`, BTYPE 00, padding 0, LEN, NLEN.
pub fn stored_block_header(len: u16, last: bool) -> [u8; STORED_BLOCK_OVERHEAD] {
    let mut h = [u8::from(last), 0, 0, 0, 0];
    h[1..3].copy_from_slice(&len.to_le_bytes());
    h[3..5].copy_from_slice(&(!len).to_le_bytes());
    h
}

/// Writes `data` as deflate stored blocks (the last one final) at the start of `out`; returns
/// the stream length, [`stored_stream_len`]`(data.len())`, or `None` when `out` is shorter than
/// that (then nothing meaningful was written).
pub fn try_encode_stored_blocks(data: &[u8], out: &mut [u8]) -> Option<usize> {
    let need = stored_stream_len(data.len());
    if out.len() < need {
        return None;
    }
    let mut pos = 0;
    let mut rest = data;
    loop {
        let n = rest.len().min(MAX_STORED_BLOCK);
        let last = n == rest.len();
        out[pos..pos + STORED_BLOCK_OVERHEAD].copy_from_slice(&stored_block_header(n as u16, last));
        pos += STORED_BLOCK_OVERHEAD;
        out[pos..pos + n].copy_from_slice(&rest[..n]);
        pos += n;
        rest = &rest[n..];
        if last {
            break;
        }
    }
    debug_assert_eq!(pos, need);
    Some(pos)
}

/// [`try_encode_stored_blocks`] into a buffer the caller sized.
///
/// Panics if `out` is shorter than [`stored_stream_len`]`(data.len())`.
pub fn encode_stored_blocks(data: &[u8], out: &mut [u8]) -> usize {
    try_encode_stored_blocks(data, out).expect("encode_stored_blocks: output buffer too small")
}

/// Why a stream is not a valid stored-only deflate stream for its output buffer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} (at byte {at} of the stored stream)")]
pub struct StoredStreamError {
    /// What is wrong.
    pub what: String,
    /// Position in the stream where it was found.
    pub at: usize,
}

fn damage(what: impl Into<String>, at: usize) -> StoredStreamError {
    StoredStreamError {
        what: what.into(),
        at,
    }
}

/// Copies the data of a deflate stream made only of stored blocks (any block split) into `out`;
/// returns the number of bytes copied, which may be less than `out.len()`. Validates the block
/// types, LEN/NLEN, that the last block is final, that nothing follows it and that the data fits
/// in `out`.
pub fn decode_stored_blocks(stream: &[u8], out: &mut [u8]) -> Result<usize, StoredStreamError> {
    let mut pos = 0usize;
    let mut written = 0usize;
    loop {
        if stream.len() - pos < STORED_BLOCK_OVERHEAD {
            return Err(damage(
                "stored deflate stream ends inside a block header",
                pos,
            ));
        }
        let hdr = stream[pos];
        if (hdr >> 1) & 3 != 0 {
            return Err(damage(
                format!(
                    "deflate block type {} in a stored-only stream",
                    (hdr >> 1) & 3
                ),
                pos,
            ));
        }
        let len = u16::from_le_bytes([stream[pos + 1], stream[pos + 2]]);
        let nlen = u16::from_le_bytes([stream[pos + 3], stream[pos + 4]]);
        if len != !nlen {
            return Err(damage(
                format!("stored block LEN {len:#06x} and NLEN {nlen:#06x} disagree"),
                pos + 1,
            ));
        }
        let len = len as usize;
        let data_start = pos + STORED_BLOCK_OVERHEAD;
        if stream.len() - data_start < len {
            return Err(damage(
                "stored block extends past the end of the stream",
                pos,
            ));
        }
        if out.len() - written < len {
            return Err(damage("stored blocks hold more data than expected", pos));
        }
        out[written..written + len].copy_from_slice(&stream[data_start..data_start + len]);
        written += len;
        pos = data_start + len;
        if hdr & 1 != 0 {
            if pos != stream.len() {
                return Err(damage("bytes after the final stored block", pos));
            }
            return Ok(written);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_stream_len_counts_block_headers() {
        assert_eq!(stored_stream_len(0), 5);
        assert_eq!(stored_stream_len(1), 6);
        assert_eq!(stored_stream_len(65535), 65540);
        assert_eq!(stored_stream_len(65536), 65546);
        assert_eq!(stored_stream_len(131072), 131072 + 15);
        assert_eq!(stored_stream_len(4 << 20), (4 << 20) + 5 * 65);
    }

    #[test]
    fn stored_blocks_round_trip_at_block_boundaries() {
        for n in [
            0usize, 1, 5, 4095, 65534, 65535, 65536, 131070, 131071, 200_000,
        ] {
            let data: Vec<u8> = (0..n).map(|i| (i * 7 + i / 300) as u8).collect();
            let mut s = vec![0u8; stored_stream_len(n)];
            assert_eq!(encode_stored_blocks(&data, &mut s), s.len());
            let mut out = vec![0u8; n];
            assert_eq!(decode_stored_blocks(&s, &mut out).unwrap(), n);
            assert_eq!(out, data, "size {n}");
            // Any DEFLATE decoder understands it.
            let mut d = libdeflater::Decompressor::new();
            let mut out2 = vec![0u8; n];
            assert_eq!(d.deflate_decompress(&s, &mut out2).unwrap(), n);
            assert_eq!(out2, data);
        }
    }

    #[test]
    fn empty_data_is_one_empty_final_block() {
        let mut s = [0u8; 5];
        assert_eq!(encode_stored_blocks(&[], &mut s), 5);
        assert_eq!(s, [0x01, 0x00, 0x00, 0xff, 0xff]);
    }

    #[test]
    fn try_encode_refuses_short_output() {
        let mut out = [0u8; 9];
        assert_eq!(try_encode_stored_blocks(&[1, 2, 3, 4, 5], &mut out), None);
        assert_eq!(try_encode_stored_blocks(&[1, 2, 3, 4], &mut out), Some(9));
    }

    #[test]
    fn decode_stored_blocks_rejects_garbage() {
        let mut s = vec![0u8; stored_stream_len(10)];
        encode_stored_blocks(b"0123456789", &mut s);
        let mut out = [0u8; 10];
        let mut bad = s.clone();
        bad[3] ^= 1; // NLEN
        assert_eq!(decode_stored_blocks(&bad, &mut out).unwrap_err().at, 1);
        let mut bad = s.clone();
        bad[0] = 0; // not final: runs off the end
        assert!(decode_stored_blocks(&bad, &mut out).is_err());
        let mut bad = s.clone();
        bad[0] = 3; // fixed huffman
        assert!(decode_stored_blocks(&bad, &mut out).is_err());
        let mut bad = s.clone();
        bad.push(0);
        assert!(decode_stored_blocks(&bad, &mut out).is_err());
        assert!(decode_stored_blocks(&s[..9], &mut out).is_err());
        assert!(decode_stored_blocks(&s, &mut out[..9]).is_err());
        assert!(decode_stored_blocks(&[], &mut out).is_err());
        // A stream shorter than the buffer decodes; the caller compares the count.
        let mut long_out = [0u8; 11];
        assert_eq!(decode_stored_blocks(&s, &mut long_out), Ok(10));
    }

    #[test]
    fn another_encoders_block_split_decodes() {
        // Two blocks of 3 and 2 bytes: not deflatefs's split, still valid stored DEFLATE.
        let mut s = stored_block_header(3, false).to_vec();
        s.extend_from_slice(b"abc");
        s.extend_from_slice(&stored_block_header(2, true));
        s.extend_from_slice(b"de");
        let mut out = [0u8; 5];
        assert_eq!(decode_stored_blocks(&s, &mut out), Ok(5));
        assert_eq!(&out, b"abcde");
    }
}
