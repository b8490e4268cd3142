//! The decompressed-chunk cache: an LRU bounded in bytes.
//!
//! Entries are keyed by the chunk's *version* (the container offset of its newest piece and the
//! number of pieces, plus a per-file epoch that changes when a container is reset or rebuilt).
//! The backing format only ever appends, so a key can never name two different contents: a stale
//! entry is simply never hit again and ages out, and no invalidation race exists between a
//! read-ahead completing and a writer replacing the chunk.

use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

use crate::engine::BufferPool;

/// Identifies one version of one chunk of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkKey {
    pub node: u64,
    pub epoch: u64,
    pub chunk: u64,
    pub last_member_offset: u64,
    pub pieces: u32,
}

struct Inner {
    lru: LruCache<ChunkKey, Arc<Vec<u8>>>,
    bytes: usize,
}

/// A byte-bounded LRU of decompressed chunks shared by all files of a mount.
pub struct ChunkCache {
    inner: Mutex<Inner>,
    capacity: usize,
    /// Where evicted chunks nobody else holds go back to (their buffers came out of it).
    recycle: Option<Arc<BufferPool>>,
}

impl ChunkCache {
    /// A cache holding at most `capacity` bytes of chunk data (0 disables it).
    pub fn new(capacity: usize) -> ChunkCache {
        ChunkCache {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            capacity,
            recycle: None,
        }
    }

    /// [`ChunkCache::new`] whose evicted chunks are offered back to `pool` (see
    /// [`crate::engine::PoolBuf::into_vec`]): decoded chunks move from the engine's output buffers
    /// into the cache and back without being copied or reallocated.
    pub fn recycling_into(capacity: usize, pool: Arc<BufferPool>) -> ChunkCache {
        ChunkCache {
            recycle: Some(pool),
            ..ChunkCache::new(capacity)
        }
    }

    fn evicted(&self, old: Arc<Vec<u8>>) {
        if let Some(pool) = &self.recycle {
            if let Ok(v) = Arc::try_unwrap(old) {
                pool.adopt(v);
            }
        }
    }

    pub fn get(&self, key: &ChunkKey) -> Option<Arc<Vec<u8>>> {
        self.inner.lock().lru.get(key).cloned()
    }

    /// Inserts a chunk, evicting the least recently used ones to stay within capacity.
    pub fn insert(&self, key: ChunkKey, data: Arc<Vec<u8>>) {
        let size = data.capacity().max(1);
        if size > self.capacity {
            return;
        }
        let mut gone = Vec::new();
        {
            let mut inner = self.inner.lock();
            if let Some(old) = inner.lru.put(key, data) {
                inner.bytes -= old.capacity().max(1);
                gone.push(old);
            }
            inner.bytes += size;
            while inner.bytes > self.capacity {
                match inner.lru.pop_lru() {
                    Some((_, old)) => {
                        inner.bytes -= old.capacity().max(1);
                        gone.push(old);
                    }
                    None => break,
                }
            }
        }
        for old in gone {
            self.evicted(old);
        }
    }

    /// Drops every entry of one node (when it is forgotten, to give memory back early).
    pub fn remove_node(&self, node: u64) {
        let mut inner = self.inner.lock();
        let keys: Vec<ChunkKey> = inner
            .lru
            .iter()
            .filter(|(k, _)| k.node == node)
            .map(|(k, _)| *k)
            .collect();
        let mut gone = Vec::new();
        for k in keys {
            if let Some(old) = inner.lru.pop(&k) {
                inner.bytes -= old.capacity().max(1);
                gone.push(old);
            }
        }
        drop(inner);
        for old in gone {
            self.evicted(old);
        }
    }

    /// Bytes currently held.
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }
}

impl Default for ChunkCache {
    fn default() -> Self {
        ChunkCache::new(64 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(chunk: u64) -> ChunkKey {
        ChunkKey {
            node: 2,
            epoch: 0,
            chunk,
            last_member_offset: chunk * 100,
            pieces: 1,
        }
    }

    #[test]
    fn cache_stays_within_its_byte_capacity() {
        let cache = ChunkCache::new(4096 * 3);
        for c in 0..10 {
            cache.insert(key(c), Arc::new(vec![0u8; 4096]));
            assert!(cache.bytes() <= 4096 * 3);
        }
        assert!(cache.get(&key(9)).is_some());
        assert!(cache.get(&key(0)).is_none());
    }

    #[test]
    fn a_new_chunk_version_misses_the_cache() {
        let cache = ChunkCache::new(1 << 20);
        cache.insert(key(1), Arc::new(vec![1u8; 10]));
        let mut newer = key(1);
        newer.last_member_offset += 1;
        assert!(cache.get(&newer).is_none());
    }
}
