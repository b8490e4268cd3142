//! The self-test every backend passes before a mount uses it: known vectors both ways.
//!
//! The backend must inflate fixed streams (fixed-Huffman, dynamic-Huffman, stored blocks, and a
//! larger libdeflate stream) to exactly their known text, compress a sample at several levels into
//! raw DEFLATE that libdeflate (the reference) decodes back to the sample, report `NoSpace` (or a
//! valid stream) for incompressible data that cannot fit, and refuse truncated streams and streams
//! longer than their output. It takes a few milliseconds.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::backend::{Backend, Codec, CodecError};
use super::software::ReferenceVerifier;
use crate::container::stored::{encode_stored_blocks, stored_stream_len};

/// A fixed-Huffman raw DEFLATE stream (zlib level 9) of [`FIXED_TEXT`].
const FIXED_STREAM: [u8; 18] = [
    0x4b, 0x4c, 0x4a, 0x4e, 0x84, 0x21, 0x85, 0x94, 0xd4, 0xb4, 0x9c, 0xc4, 0x92, 0xd4, 0xb4, 0x62,
    0x2e, 0x00,
];
const FIXED_TEXT: &[u8] = b"abcabcabcabc deflatefs\n";

/// A dynamic-Huffman raw DEFLATE stream (zlib level 9) of [`DYNAMIC_TEXT`] twice.
const DYNAMIC_STREAM: [u8; 83] = [
    0xb5, 0xcc, 0xc9, 0x0d, 0x80, 0x30, 0x10, 0x04, 0xc1, 0x3f, 0x51, 0x4c, 0x00, 0x40, 0x00, 0x64,
    0x03, 0xf6, 0x98, 0xcb, 0xb0, 0xe0, 0x5d, 0xce, 0xe8, 0x91, 0xf8, 0x11, 0x00, 0xcf, 0x56, 0x49,
    0xed, 0x19, 0x62, 0x6d, 0x0c, 0x0a, 0x65, 0x0c, 0x85, 0x51, 0x0d, 0x3b, 0x9d, 0x49, 0xaa, 0x60,
    0x1d, 0xb1, 0x6e, 0xbd, 0x1b, 0xd1, 0x24, 0x39, 0x66, 0x04, 0x39, 0x31, 0x6c, 0xd3, 0xa2, 0x90,
    0x9d, 0xe9, 0xe5, 0x58, 0xdf, 0x17, 0xbc, 0xb4, 0xf9, 0xa7, 0xa0, 0x91, 0x5c, 0xb4, 0xcc, 0xfc,
    0xaf, 0xf7, 0x07,
];
const DYNAMIC_TEXT: &[u8] = b"deflatefs self-test vector: the quick brown fox jumps over the lazy dog, the lazy dog sleeps.\n";

/// Deterministic, compressible sample (text-like lines with some varying bytes).
pub(crate) fn sample(len: usize, seed: u32) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "chunk", "member", "deflate", "queue", "engine", "buffer", "stream", "index", "commit",
        "window", "device", "backend",
    ];
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(WORDS[(x % 12) as usize].as_bytes());
        out.push(if x.is_multiple_of(9) { b'\n' } else { b' ' });
        if x.is_multiple_of(31) {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out.truncate(len);
    out
}

/// Incompressible bytes.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// Runs the self-test on a codec freshly opened from `backend`; `Err` says which check failed.
pub fn self_test(backend: &dyn Backend) -> Result<(), String> {
    let mut codec = backend
        .open_queue()
        .map_err(|e| format!("cannot open a queue: {e}"))?;
    match catch_unwind(AssertUnwindSafe(|| run_checks(codec.as_mut()))) {
        Ok(r) => r,
        Err(_) => Err("the codec panicked".into()),
    }
}

fn expect_inflate(
    codec: &mut dyn Codec,
    what: &str,
    stream: &[u8],
    text: &[u8],
) -> Result<(), String> {
    let mut out = vec![0u8; text.len()];
    match codec.inflate(stream, &mut out) {
        Ok(n) if n == text.len() && out == text => Ok(()),
        Ok(n) => Err(format!("inflating {what} gave {n} wrong bytes")),
        Err(e) => Err(format!("inflating {what} failed: {e}")),
    }
}

fn run_checks(codec: &mut dyn Codec) -> Result<(), String> {
    // Known streams, reference -> backend.
    expect_inflate(codec, "a fixed-Huffman vector", &FIXED_STREAM, FIXED_TEXT)?;
    let twice = [DYNAMIC_TEXT, DYNAMIC_TEXT].concat();
    expect_inflate(codec, "a dynamic-Huffman vector", &DYNAMIC_STREAM, &twice)?;
    let big = sample(200_000, 7);
    let mut stored = vec![0u8; stored_stream_len(big.len())];
    let n = encode_stored_blocks(&big, &mut stored);
    expect_inflate(codec, "stored blocks", &stored[..n], &big)?;
    let mut reference = super::software::SoftwareCodec::new();
    let mut stream = vec![0u8; stored_stream_len(big.len())];
    let n = reference
        .deflate(6, &big, &mut stream)
        .map_err(|e| format!("libdeflate failed on the sample: {e}"))?;
    expect_inflate(codec, "a libdeflate stream", &stream[..n], &big)?;

    // Streams that must be refused.
    let mut out = vec![0u8; big.len()];
    if codec.inflate(&stream[..n / 2], &mut out).is_ok() {
        return Err("a truncated stream was accepted".into());
    }
    let mut short = vec![0u8; big.len() - 1];
    if codec.inflate(&stream[..n], &mut short).is_ok() {
        return Err("a stream longer than its output buffer was accepted".into());
    }
    expect_inflate(codec, "a stream after refused ones", &stream[..n], &big)?;

    // Backend -> reference.
    let mut verifier = ReferenceVerifier::new();
    for (level, input) in [
        (1, &big[..]),
        (6, &big[..65_536]),
        (9, FIXED_TEXT),
        (1, &[][..]),
    ] {
        let limit = stored_stream_len(input.len()) - 1;
        let mut out = vec![0u8; limit];
        match codec.deflate(level, input, &mut out) {
            Ok(len) if len <= limit && verifier.check(&out[..len], input) => {}
            Ok(len) if len > limit => {
                return Err(format!(
                    "deflate at level {level} reported {len} bytes in a {limit}-byte buffer"
                ))
            }
            Ok(len) => {
                return Err(format!(
                    "deflate at level {level} of {} bytes gave a {len}-byte stream that does not \
                     decode to its input",
                    input.len()
                ))
            }
            // Tiny inputs may not beat stored blocks.
            Err(CodecError::NoSpace) if input.len() < 1000 => {}
            Err(e) => {
                return Err(format!(
                    "deflate at level {level} of {} bytes failed: {e}",
                    input.len()
                ))
            }
        }
    }
    let rough = noise(65_536);
    let mut out = vec![0u8; stored_stream_len(rough.len()) - 1];
    match codec.deflate(1, &rough, &mut out) {
        Err(CodecError::NoSpace) => {}
        Ok(len) if len <= out.len() && verifier.check(&out[..len], &rough) => {}
        Ok(_) => return Err("deflate of incompressible data gave a bad stream".into()),
        Err(e) => return Err(format!("deflate of incompressible data failed: {e}")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fault::{Fault, FaultAction, FaultBackend, FaultOp, FaultTrigger};
    use crate::engine::SoftwareBackend;
    use std::sync::Arc;

    #[test]
    fn vectors_decode_with_libdeflate() {
        let mut sw = super::super::software::SoftwareCodec::new();
        expect_inflate(&mut sw, "fixed", &FIXED_STREAM, FIXED_TEXT).unwrap();
        let twice = [DYNAMIC_TEXT, DYNAMIC_TEXT].concat();
        expect_inflate(&mut sw, "dynamic", &DYNAMIC_STREAM, &twice).unwrap();
        assert_eq!(FIXED_STREAM[0] >> 1 & 3, 1, "fixed Huffman block");
        assert_eq!(DYNAMIC_STREAM[0] >> 1 & 3, 2, "dynamic Huffman block");
    }

    #[test]
    fn software_passes() {
        self_test(&SoftwareBackend::new()).unwrap();
    }

    #[test]
    fn corrupting_deflate_panicking_and_failing_inflate_fail() {
        for (op, action) in [
            (FaultOp::Deflate, FaultAction::CorruptOutput),
            (FaultOp::Inflate, FaultAction::CorruptOutput),
            (FaultOp::Inflate, FaultAction::Panic),
            (
                FaultOp::Deflate,
                FaultAction::Fail(CodecError::Failed("x".into())),
            ),
        ] {
            let (b, control) = FaultBackend::new(Arc::new(SoftwareBackend::new()));
            control.add(Fault {
                op,
                trigger: FaultTrigger::NthCall(0),
                action: action.clone(),
            });
            let e = self_test(&b).unwrap_err();
            assert!(!e.is_empty(), "{op:?} {action:?}");
        }
    }
}
