//! DEFLATE "stored" blocks (RFC 1951 §3.2.4, BTYPE 00): the engine's own writer and reader.
//!
//! Incompressible chunks are written as stored blocks so that the stream stays valid DEFLATE (and the
//! container a valid gzip file) at ~5 bytes of overhead per 65535 input bytes, and are read back by a
//! plain copy instead of an inflate. The container module has its own copy of this code in the format
//! layer; this one is private to the engine, which exports only [`stored_stream_len`].
//!
//! A stored-only stream always starts byte aligned, and every stored block ends byte aligned, so every
//! block header occupies exactly one byte (BFINAL, BTYPE=00 and 5 padding bits) followed by LEN and
//! NLEN. That holds for streams written by any encoder, not only this one.

/// Largest payload of one stored block.
pub const STORED_BLOCK_MAX: usize = 65535;

/// Bytes of header per stored block: one byte BFINAL/BTYPE/padding, LEN, NLEN.
const STORED_HEADER_LEN: usize = 5;

/// Exact length of the stored-blocks-only DEFLATE stream this module writes for `n` input bytes:
/// 5 for `n == 0` (one empty final block), otherwise `5 * ceil(n / 65535) + n`.
pub const fn stored_stream_len(n: usize) -> usize {
    if n == 0 {
        STORED_HEADER_LEN
    } else {
        STORED_HEADER_LEN * n.div_ceil(STORED_BLOCK_MAX) + n
    }
}

/// Writes `input` as stored blocks at the start of `out`; returns the stream length
/// (`stored_stream_len(input.len())`), or `None` if `out` is too small (nothing meaningful written).
pub fn write_stored(input: &[u8], out: &mut [u8]) -> Option<usize> {
    let total = stored_stream_len(input.len());
    if out.len() < total {
        return None;
    }
    if input.is_empty() {
        out[..STORED_HEADER_LEN].copy_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
        return Some(STORED_HEADER_LEN);
    }
    let mut pos = 0;
    let mut blocks = input.chunks(STORED_BLOCK_MAX).peekable();
    while let Some(block) = blocks.next() {
        let last = blocks.peek().is_none();
        let len = block.len() as u16;
        out[pos] = u8::from(last);
        out[pos + 1..pos + 3].copy_from_slice(&len.to_le_bytes());
        out[pos + 3..pos + 5].copy_from_slice(&(!len).to_le_bytes());
        pos += STORED_HEADER_LEN;
        out[pos..pos + block.len()].copy_from_slice(block);
        pos += block.len();
    }
    debug_assert_eq!(pos, total);
    Some(pos)
}

/// Copies the payload of a stored-blocks-only DEFLATE stream into `out`, which must be filled exactly
/// and the stream must end exactly after its final block. Returns a description of the first problem
/// found otherwise (a non-stored block, a LEN/NLEN mismatch, truncation, too much or too little data).
pub fn read_stored(stream: &[u8], out: &mut [u8]) -> Result<(), String> {
    let mut pos = 0;
    let mut written = 0;
    loop {
        let Some(header) = stream.get(pos..pos + STORED_HEADER_LEN) else {
            return Err(format!(
                "stored stream truncated at byte {pos} (block header)"
            ));
        };
        let bfinal = header[0] & 1 == 1;
        let btype = (header[0] >> 1) & 3;
        if btype != 0 {
            return Err(format!(
                "block at byte {pos} has BTYPE {btype}, not stored (0)"
            ));
        }
        let len = u16::from_le_bytes([header[1], header[2]]);
        let nlen = u16::from_le_bytes([header[3], header[4]]);
        if len != !nlen {
            return Err(format!(
                "stored block at byte {pos}: LEN {len:#06x} and NLEN {nlen:#06x} disagree"
            ));
        }
        pos += STORED_HEADER_LEN;
        let len = usize::from(len);
        let Some(payload) = stream.get(pos..pos + len) else {
            return Err(format!(
                "stored stream truncated at byte {pos} ({len}-byte block)"
            ));
        };
        let Some(dest) = out.get_mut(written..written + len) else {
            return Err(format!(
                "stored stream holds more than the expected {} bytes",
                out.len()
            ));
        };
        dest.copy_from_slice(payload);
        pos += len;
        written += len;
        if bfinal {
            break;
        }
    }
    if written != out.len() {
        return Err(format!(
            "stored stream holds {written} bytes, expected {}",
            out.len()
        ));
    }
    if pos != stream.len() {
        return Err(format!(
            "{} trailing bytes after the final stored block",
            stream.len() - pos
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_stream_len_matches_formula() {
        assert_eq!(stored_stream_len(0), 5);
        assert_eq!(stored_stream_len(1), 6);
        assert_eq!(stored_stream_len(65535), 65540);
        assert_eq!(stored_stream_len(65536), 65546);
        assert_eq!(stored_stream_len(131072), 131072 + 15);
    }

    #[test]
    fn stored_round_trip_all_boundary_sizes() {
        for n in [
            0usize, 1, 4095, 65534, 65535, 65536, 131070, 131071, 200_000,
        ] {
            let input: Vec<u8> = (0..n).map(|i| (i * 7 + i / 300) as u8).collect();
            let mut stream = vec![0u8; stored_stream_len(n)];
            assert_eq!(write_stored(&input, &mut stream), Some(stream.len()));
            let mut back = vec![0u8; n];
            read_stored(&stream, &mut back).unwrap();
            assert_eq!(back, input, "size {n}");
            // Any DEFLATE decoder understands it.
            let mut d = libdeflater::Decompressor::new();
            let mut back2 = vec![0u8; n];
            assert_eq!(d.deflate_decompress(&stream, &mut back2).unwrap(), n);
            assert_eq!(back2, input);
        }
    }

    #[test]
    fn write_stored_refuses_short_output() {
        let mut out = [0u8; 9];
        assert_eq!(write_stored(&[1, 2, 3, 4, 5], &mut out), None);
        assert_eq!(write_stored(&[1, 2, 3, 4], &mut out), Some(9));
    }

    #[test]
    fn read_stored_rejects_damage() {
        let input = vec![42u8; 70_000];
        let mut stream = vec![0u8; stored_stream_len(input.len())];
        write_stored(&input, &mut stream).unwrap();
        let mut out = vec![0u8; input.len()];

        let mut bad = stream.clone();
        bad[3] ^= 1; // NLEN
        assert!(read_stored(&bad, &mut out).is_err());

        let mut bad = stream.clone();
        bad[0] = 0x02; // fixed Huffman block
        assert!(read_stored(&bad, &mut out).is_err());

        assert!(read_stored(&stream[..stream.len() - 1], &mut out).is_err());

        let mut longer = stream.clone();
        longer.push(0);
        assert!(read_stored(&longer, &mut out).is_err());

        let mut short_out = vec![0u8; input.len() - 1];
        assert!(read_stored(&stream, &mut short_out).is_err());
        let mut long_out = vec![0u8; input.len() + 1];
        assert!(read_stored(&stream, &mut long_out).is_err());
    }
}
