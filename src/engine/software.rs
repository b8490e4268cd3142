//! The software backend: libdeflate (through the `libdeflater` crate), one compressor per level and one
//! decompressor per queue.

use libdeflater::{CompressionLvl, Compressor, DecompressionError, Decompressor};

use super::backend::{Backend, Codec, CodecError};

/// Highest level libdeflate accepts (0 is "no compression", 1 fastest, 6 default, 12 best).
pub const SOFTWARE_MAX_LEVEL: u32 = 12;

/// The libdeflate backend, named "sw".
#[derive(Debug, Default, Clone, Copy)]
pub struct SoftwareBackend;

impl SoftwareBackend {
    /// The backend; it has no configuration.
    pub fn new() -> SoftwareBackend {
        SoftwareBackend
    }
}

impl Backend for SoftwareBackend {
    fn name(&self) -> String {
        "sw".to_string()
    }

    fn open_queue(&self) -> Result<Box<dyn Codec>, CodecError> {
        Ok(Box::new(SoftwareCodec::new()))
    }

    fn needs_verification(&self) -> bool {
        false // this is the reference
    }

    fn runs_inline(&self) -> bool {
        true
    }
}

/// One queue's libdeflate state. Compressors are created on first use of a level and kept: setting
/// one up costs far more than compressing a small chunk, and level-12 state is ~1 MB.
pub struct SoftwareCodec {
    compressors: [Option<Compressor>; SOFTWARE_MAX_LEVEL as usize + 1],
    decompressor: Decompressor,
}

impl SoftwareCodec {
    /// A codec with no compressor allocated yet.
    pub fn new() -> SoftwareCodec {
        SoftwareCodec {
            compressors: Default::default(),
            decompressor: Decompressor::new(),
        }
    }
}

impl Default for SoftwareCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl Codec for SoftwareCodec {
    fn deflate(&mut self, level: u32, input: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
        let slot = self
            .compressors
            .get_mut(level as usize)
            .ok_or(CodecError::InvalidLevel(level))?;
        let compressor = match slot {
            Some(c) => c,
            None => {
                let lvl = CompressionLvl::new(level as i32)
                    .map_err(|_| CodecError::InvalidLevel(level))?;
                slot.insert(Compressor::new(lvl))
            }
        };
        compressor
            .deflate_compress(input, out)
            .map_err(|_| CodecError::NoSpace)
    }

    fn inflate(&mut self, input: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
        match self.decompressor.deflate_decompress(input, out) {
            Ok(n) if n == out.len() => Ok(n),
            Ok(_) | Err(DecompressionError::BadData | DecompressionError::InsufficientSpace) => {
                Err(CodecError::Corrupt)
            }
        }
    }
}

/// Checks streams produced by a non-reference codec by inflating them with libdeflate. One per queue
/// worker; its scratch buffer grows to the largest chunk seen and is then reused.
pub(crate) struct ReferenceVerifier {
    decompressor: Decompressor,
    scratch: Vec<u8>,
}

impl ReferenceVerifier {
    pub(crate) fn new() -> ReferenceVerifier {
        ReferenceVerifier {
            decompressor: Decompressor::new(),
            scratch: Vec::new(),
        }
    }

    /// Whether the raw DEFLATE `stream` decodes to exactly `original`.
    pub(crate) fn check(&mut self, stream: &[u8], original: &[u8]) -> bool {
        if self.scratch.len() < original.len() {
            self.scratch.resize(original.len(), 0);
        }
        let out = &mut self.scratch[..original.len()];
        matches!(self.decompressor.deflate_decompress(stream, out), Ok(n) if n == original.len())
            && out == original
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_codec_round_trips_every_level() {
        let input: Vec<u8> = b"the quick brown fox jumps over the lazy dog. "
            .iter()
            .cycle()
            .take(100_000)
            .copied()
            .collect();
        let mut codec = SoftwareBackend.open_queue().unwrap();
        for level in 0..=SOFTWARE_MAX_LEVEL {
            let mut out = vec![0u8; input.len() + 1000];
            let n = codec.deflate(level, &input, &mut out).unwrap();
            let mut back = vec![0u8; input.len()];
            assert_eq!(codec.inflate(&out[..n], &mut back).unwrap(), input.len());
            assert_eq!(back, input);
        }
    }

    #[test]
    fn software_codec_reports_bad_level_and_no_space() {
        let mut codec = SoftwareCodec::new();
        let mut out = [0u8; 64];
        assert_eq!(
            codec.deflate(13, b"abc", &mut out),
            Err(CodecError::InvalidLevel(13))
        );
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert_eq!(codec.deflate(6, &noise, &mut out), Err(CodecError::NoSpace));
    }

    #[test]
    fn reference_verifier_accepts_only_exact_streams() {
        let mut codec = SoftwareCodec::new();
        let input = vec![9u8; 1000];
        let mut out = vec![0u8; 100];
        let n = codec.deflate(1, &input, &mut out).unwrap();
        let mut v = ReferenceVerifier::new();
        assert!(v.check(&out[..n], &input));
        assert!(!v.check(&out[..n], &input[..999]));
        let mut other = input.clone();
        other[500] = 8;
        assert!(!v.check(&out[..n], &other));
        assert!(!v.check(&out[..n / 2], &input));
    }

    #[test]
    fn software_inflate_demands_exact_length() {
        let mut codec = SoftwareCodec::new();
        let mut out = vec![0u8; 200];
        let n = codec.deflate(6, &[7u8; 100], &mut out).unwrap();
        let mut short = [0u8; 99];
        assert_eq!(
            codec.inflate(&out[..n], &mut short),
            Err(CodecError::Corrupt)
        );
        let mut long = [0u8; 101];
        assert_eq!(
            codec.inflate(&out[..n], &mut long),
            Err(CodecError::Corrupt)
        );
        let mut exact = [0u8; 100];
        assert_eq!(codec.inflate(&out[..n], &mut exact), Ok(100));
    }
}
