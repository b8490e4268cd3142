//! A SHA-256 state that can be saved mid-stream and restored (FIPS 180-4).
//!
//! The `sha2` crate keeps its buffered state private, so this keeps the eight state words, the
//! length and the partial block itself, uses `sha2::block_api::compress256` (SHA-NI when the CPU
//! has it) for whole blocks, and pads at the end. The saved form ([`Sha256State::to_parts`]) is
//! what the container's auxiliary member stores (docs/FORMAT.md).

use sha2::block_api::compress256;

/// The initial hash value H(0) of SHA-256.
const IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// SHA-256 of the bytes fed so far, resumable after [`Sha256State::to_parts`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sha256State {
    h: [u32; 8],
    /// Bytes fed so far.
    len: u64,
    /// The `len % 64` bytes after the last complete block (the rest is zero).
    tail: [u8; 64],
}

impl Default for Sha256State {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256State {
    /// The state of the empty input.
    pub fn new() -> Self {
        Sha256State {
            h: IV,
            len: 0,
            tail: [0; 64],
        }
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Feeds `data`.
    pub fn update(&mut self, mut data: &[u8]) {
        let fill = (self.len % 64) as usize;
        self.len += data.len() as u64;
        if fill > 0 {
            let take = (64 - fill).min(data.len());
            self.tail[fill..fill + take].copy_from_slice(&data[..take]);
            data = &data[take..];
            if fill + take < 64 {
                return;
            }
            compress256(&mut self.h, &[self.tail]);
            self.tail = [0; 64];
        }
        let (blocks, rest) = data.as_chunks::<64>();
        if !blocks.is_empty() {
            compress256(&mut self.h, blocks);
        }
        self.tail[..rest.len()].copy_from_slice(rest);
    }

    /// The digest of everything fed so far (the state itself is unchanged).
    pub fn finalize(&self) -> [u8; 32] {
        let mut h = self.h;
        let n = (self.len % 64) as usize;
        let mut last = [[0u8; 64]; 2];
        last[0][..n].copy_from_slice(&self.tail[..n]);
        last[0][n] = 0x80;
        let blocks = if n < 56 { 1 } else { 2 };
        last[blocks - 1][56..].copy_from_slice(&(self.len.wrapping_mul(8)).to_be_bytes());
        compress256(&mut h, &last[..blocks]);
        let mut out = [0u8; 32];
        for (i, w) in h.iter().enumerate() {
            out[4 * i..4 * i + 4].copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    /// The saved form: (length, the eight state words as big-endian bytes, the `length % 64`
    /// bytes after the last complete block followed by zeros).
    pub fn to_parts(&self) -> (u64, [u8; 32], [u8; 64]) {
        let mut h = [0u8; 32];
        for (i, w) in self.h.iter().enumerate() {
            h[4 * i..4 * i + 4].copy_from_slice(&w.to_be_bytes());
        }
        let mut tail = [0u8; 64];
        let n = (self.len % 64) as usize;
        tail[..n].copy_from_slice(&self.tail[..n]);
        (self.len, h, tail)
    }

    /// Restores a state saved by [`Sha256State::to_parts`] (bytes of `tail` beyond
    /// `len % 64` are ignored).
    pub fn from_parts(len: u64, h: &[u8; 32], tail: &[u8; 64]) -> Self {
        let mut words = [0u32; 8];
        for (i, w) in words.iter_mut().enumerate() {
            *w = u32::from_be_bytes([h[4 * i], h[4 * i + 1], h[4 * i + 2], h[4 * i + 3]]);
        }
        let n = (len % 64) as usize;
        let mut t = [0u8; 64];
        t[..n].copy_from_slice(&tail[..n]);
        Sha256State {
            h: words,
            len,
            tail: t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    fn reference(data: &[u8]) -> [u8; 32] {
        sha2::Sha256::digest(data).into()
    }

    #[test]
    fn known_vectors() {
        assert_eq!(
            crate::digest::hex(&Sha256State::new().finalize()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut s = Sha256State::new();
        s.update(b"abc");
        assert_eq!(
            crate::digest::hex(&s.finalize()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn any_split_and_save_restore_matches_the_reference() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for len in [0usize, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 129, 1000] {
            let want = reference(&data[..len]);
            for cut in [0, 1, len / 3, len.saturating_sub(1), len] {
                let cut = cut.min(len);
                let mut s = Sha256State::new();
                s.update(&data[..cut]);
                let (l, h, t) = s.to_parts();
                let mut r = Sha256State::from_parts(l, &h, &t);
                assert_eq!(r, s);
                for piece in data[cut..len].chunks(17) {
                    r.update(piece);
                }
                assert_eq!(r.finalize(), want, "len {len} cut {cut}");
                assert_eq!(r.len(), len as u64);
            }
        }
    }

    #[test]
    fn saved_form_of_the_empty_state_is_the_initial_value() {
        let (len, h, tail) = Sha256State::new().to_parts();
        assert_eq!(len, 0);
        assert_eq!(&h[..4], &[0x6a, 0x09, 0xe6, 0x67]);
        assert_eq!(tail, [0; 64]);
    }
}
