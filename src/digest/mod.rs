//! Content digests served as extended attributes (`user.deflatefs.blake3`, `.sha256`, `.info`).
//!
//! - [`blake3tree`]: BLAKE3 of a whole file from one chaining value per chunk. Chunk sizes are
//!   powers of two of at least 4 KiB and chunks are aligned, so every chunk (and the final partial
//!   one) is a subtree of the file's BLAKE3 tree: merging their chaining values gives exactly what
//!   `b3sum` prints, without touching the data.
//! - [`sha256`]: a SHA-256 state that can be saved and restored mid-stream (SHA-256 cannot be
//!   merged, so deflatefs keeps it running while a file is written front to back).
//! - [`info`]: the one-line `key=value` description of a file (`user.deflatefs.info`).

pub mod blake3tree;
pub mod info;
pub mod sha256;

pub use blake3tree::{chunk_cv, zero_cv, ChainingValue, TreeBuilder};
pub use info::FileInfo;
pub use sha256::Sha256State;

/// Lowercase hex of `bytes`, as `sha256sum` and `b3sum` print digests.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        assert_eq!(super::hex(&[0x00, 0xab, 0x7f]), "00ab7f");
    }
}
