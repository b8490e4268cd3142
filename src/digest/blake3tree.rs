//! BLAKE3 of a file from per-chunk chaining values (blake3's `hazmat` module).
//!
//! BLAKE3 hashes 1 KiB leaves into a left-complete binary tree: a node over `n > 1024` bytes has a
//! left subtree of the largest power of two of bytes smaller than `n`. For a file of size `N`
//! split into aligned chunks of `C` bytes (`C` a power of two, at least 1 KiB) and `N > C`, that
//! tree decomposes into one subtree per chunk, the last one possibly short, and the chunks are its
//! leaves in a left-complete tree of the same shape. So the root hash is obtained by hashing each
//! chunk as a non-root subtree at its offset ([`chunk_cv`]) and merging those chaining values in
//! order ([`TreeBuilder`]), which is the same lazy stack merge the blake3 hasher does internally.
//! A file of at most one chunk has no parent node: its hash is `blake3::hash` of its bytes.

use std::num::NonZeroUsize;
use std::sync::OnceLock;

use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode};
use parking_lot::Mutex;

/// A non-root BLAKE3 chaining value.
pub type ChainingValue = [u8; 32];

/// The chaining value of `data` as the subtree of a larger input starting at byte `offset`.
///
/// `offset` must be a multiple of a power of two that is at least `data.len()` and at least 1 KiB
/// (true for a deflatefs chunk at its chunk offset). The subtree must not be the whole input:
/// a file of at most one chunk is hashed with `blake3::hash` instead.
pub fn chunk_cv(offset: u64, data: &[u8]) -> ChainingValue {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(offset);
    h.update(data);
    h.finalize_non_root()
}

const ZERO_BLOCK: usize = 64 << 10;
static ZEROS: [u8; ZERO_BLOCK] = [0; ZERO_BLOCK];
/// Chaining values of all-zero subtrees, by (offset, length). They differ by offset (BLAKE3 leaves
/// include their position), so a hole costs one hash of zeros the first time it is seen.
const ZERO_CACHE_ENTRIES: usize = 1 << 16;

fn zero_cache() -> &'static Mutex<lru::LruCache<(u64, u64), ChainingValue>> {
    static CACHE: OnceLock<Mutex<lru::LruCache<(u64, u64), ChainingValue>>> = OnceLock::new();
    CACHE.get_or_init(|| {
        Mutex::new(lru::LruCache::new(
            NonZeroUsize::new(ZERO_CACHE_ENTRIES).expect("non-zero"),
        ))
    })
}

/// [`chunk_cv`] of `len` zero bytes at `offset` (a hole), remembered for later calls.
pub fn zero_cv(offset: u64, len: u64) -> ChainingValue {
    if let Some(cv) = zero_cache().lock().get(&(offset, len)) {
        return *cv;
    }
    let mut h = blake3::Hasher::new();
    h.set_input_offset(offset);
    let mut left = len;
    while left > 0 {
        let n = left.min(ZERO_BLOCK as u64) as usize;
        h.update(&ZEROS[..n]);
        left -= n as u64;
    }
    let cv = h.finalize_non_root();
    zero_cache().lock().put((offset, len), cv);
    cv
}

/// Merges the chaining values of consecutive equal-size subtrees (the last may be shorter) into
/// the root hash, keeping O(log n) values.
#[derive(Debug, Default, Clone)]
pub struct TreeBuilder {
    stack: Vec<ChainingValue>,
    count: u64,
}

impl TreeBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the chaining value of the next chunk.
    pub fn push(&mut self, cv: ChainingValue) {
        // Merge the completed subtrees, but never the newest one: whether it is the root's child
        // is only known once the next value arrives (or does not).
        let keep = self.count.count_ones() as usize;
        while self.stack.len() > keep {
            let right = self.stack.pop().expect("len > keep >= 0");
            let left = self
                .stack
                .pop()
                .expect("a completed subtree has two halves");
            self.stack
                .push(merge_subtrees_non_root(&left, &right, Mode::Hash));
        }
        self.stack.push(cv);
        self.count += 1;
    }

    /// Number of chunks pushed.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The root hash; `None` with fewer than two chunks (such inputs have no parent node).
    pub fn finalize(&self) -> Option<blake3::Hash> {
        if self.stack.len() < 2 {
            return None;
        }
        let mut right = *self.stack.last().expect("len >= 2");
        for left in self.stack[1..self.stack.len() - 1].iter().rev() {
            right = merge_subtrees_non_root(left, &right, Mode::Hash);
        }
        Some(merge_subtrees_root(&self.stack[0], &right, Mode::Hash))
    }
}

/// BLAKE3 of `data` computed the deflatefs way, from chunks of `chunk` bytes (for tests and as
/// the reference of the merge): equal to `blake3::hash(data)`.
pub fn hash_by_chunks(data: &[u8], chunk: usize) -> blake3::Hash {
    if data.len() <= chunk {
        return blake3::hash(data);
    }
    let mut t = TreeBuilder::new();
    for (i, c) in data.chunks(chunk).enumerate() {
        t.push(chunk_cv((i * chunk) as u64, c));
    }
    t.finalize().expect("more than one chunk")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u64).wrapping_mul(0x9E37_79B9) as u8 ^ (i >> 11) as u8)
            .collect()
    }

    #[test]
    fn merged_chunk_values_equal_blake3_around_chunk_boundaries() {
        for chunk in [1024usize, 4096, 8192] {
            let mut sizes = vec![0, 1, chunk - 1, chunk, chunk + 1];
            for k in 1..=5 {
                let n = chunk << k;
                sizes.extend([n - 1, n, n + 1, n + chunk / 2]);
            }
            sizes.push(3 * chunk + 1023);
            sizes.push(7 * chunk + 1025);
            for n in sizes {
                let d = data(n);
                assert_eq!(
                    hash_by_chunks(&d, chunk),
                    blake3::hash(&d),
                    "chunk {chunk} n {n}"
                );
            }
        }
    }

    #[test]
    fn zero_cv_equals_hashing_zeros_at_that_offset() {
        let len = 128 << 10;
        for off in [len as u64, 5 * len as u64] {
            assert_eq!(zero_cv(off, len as u64), chunk_cv(off, &vec![0; len]));
            assert_eq!(zero_cv(off, 100), chunk_cv(off, &[0; 100]));
        }
        // The position matters: the same zeros at another offset give another value.
        assert_ne!(zero_cv(len as u64, 4096), zero_cv(2 * len as u64, 4096));
    }

    #[test]
    fn tree_with_fewer_than_two_chunks_has_no_root() {
        let mut t = TreeBuilder::new();
        assert!(t.finalize().is_none());
        t.push([0; 32]);
        assert!(t.finalize().is_none());
        assert_eq!(t.count(), 1);
    }
}
