//! A byte-budget pool of reusable buffers: the engine's equivalent of a device's registered DMA memory.
//!
//! Every job names an input and an output [`PoolBuf`], both taken by the submitter before it submits.
//! The pool never lends more than its capacity, so the memory held by data in flight is bounded no
//! matter how much data streams through; a producer that finds the pool exhausted waits. Workers never
//! take from the pool, which is what keeps the engine free of deadlock (see docs/ENGINE.md).
//!
//! Buffers are recycled: a returned buffer goes to a free list for its size class and is handed out
//! again, without zeroing, to the next request of that class. Free-list bytes count against the
//! capacity, and are released when a request of another class needs the room.

use std::collections::VecDeque;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Why a pool request can never be satisfied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The request (after rounding to size classes, summed over all buffers of the request) is larger
    /// than the whole pool, so waiting would never help.
    #[error("buffer request of {requested} bytes exceeds the pool capacity of {capacity} bytes")]
    TooLarge { requested: usize, capacity: usize },
}

/// A fixed byte budget of recyclable buffers. See the module documentation.
pub struct BufferPool {
    capacity: usize,
    state: Mutex<PoolState>,
    /// Signalled when bytes are returned or the head of the wait queue changes.
    cond: Condvar,
}

struct PoolState {
    /// Bytes (size-class capacities) currently lent out.
    in_use: usize,
    /// Bytes held on the free lists. Invariant: `in_use + free_bytes <= capacity`.
    free_bytes: usize,
    free: Vec<FreeList>,
    high_water: usize,
    /// Tickets of blocked takers, served first come, first served so that a large request is not
    /// starved by a stream of small ones.
    waiters: VecDeque<u64>,
    next_ticket: u64,
}

struct FreeList {
    class: usize,
    bufs: Vec<Vec<u8>>,
}

/// When a request gives up waiting.
#[derive(Clone, Copy)]
enum Wait {
    Never,
    Forever,
    Until(Instant),
}

/// The buffer a reservation is satisfied with: a recycled one, or a fresh one to allocate after the
/// lock is released (its bytes are already charged).
enum Grant {
    Recycled(Vec<u8>),
    Fresh(usize),
}

impl BufferPool {
    /// A pool that lends at most `capacity` bytes at a time.
    pub fn new(capacity: usize) -> Arc<BufferPool> {
        Arc::new(BufferPool {
            capacity,
            state: Mutex::new(PoolState {
                in_use: 0,
                free_bytes: 0,
                free: Vec::new(),
                high_water: 0,
                waiters: VecDeque::new(),
                next_ticket: 0,
            }),
            cond: Condvar::new(),
        })
    }

    /// Takes a buffer of `len` bytes, waiting while the pool cannot lend it. Its contents are
    /// unspecified (a recycled buffer holds old data; buffers are not zeroed, for speed).
    /// Fails only if `len` exceeds the capacity.
    ///
    /// A thread that already holds buffers and waits for more can deadlock with other such threads;
    /// take everything a job needs at once with [`BufferPool::take_many`].
    pub fn take(self: &Arc<Self>, len: usize) -> Result<PoolBuf, PoolError> {
        let [buf] = self.take_many([len])?;
        Ok(buf)
    }

    /// Takes a buffer of `len` bytes if that is possible right now (and no blocked taker is ahead in
    /// line); never blocks.
    pub fn try_take(self: &Arc<Self>, len: usize) -> Option<PoolBuf> {
        let [buf] = self.take_impl([len], Wait::Never).ok()??;
        Some(buf)
    }

    /// Like [`BufferPool::take`], but gives up after `timeout` (or at once if the request is larger
    /// than the capacity).
    pub fn take_timeout(self: &Arc<Self>, len: usize, timeout: Duration) -> Option<PoolBuf> {
        let [buf] = self.try_take_many_timeout([len], timeout)?;
        Some(buf)
    }

    /// Takes `N` buffers atomically (all or nothing), waiting while they do not fit together. This is
    /// how a submitter gets the input and output of a job without holding one while waiting for the
    /// other. Fails if the buffers together exceed the capacity.
    pub fn take_many<const N: usize>(
        self: &Arc<Self>,
        lens: [usize; N],
    ) -> Result<[PoolBuf; N], PoolError> {
        Ok(self
            .take_impl(lens, Wait::Forever)?
            .expect("an unbounded wait always ends with the buffers"))
    }

    /// [`BufferPool::take_many`] with a timeout; `None` on timeout or if the request can never fit.
    pub fn try_take_many_timeout<const N: usize>(
        self: &Arc<Self>,
        lens: [usize; N],
        timeout: Duration,
    ) -> Option<[PoolBuf; N]> {
        let wait = match Instant::now().checked_add(timeout) {
            Some(deadline) => Wait::Until(deadline),
            None => Wait::Forever,
        };
        self.take_impl(lens, wait).ok()?
    }

    /// The byte budget.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes lent out right now (buffer capacities, i.e. requests rounded up to their size class).
    pub fn in_use(&self) -> usize {
        self.state.lock().in_use
    }

    /// Bytes kept on the free lists for reuse (not lent, but allocated).
    pub fn free_bytes(&self) -> usize {
        self.state.lock().free_bytes
    }

    /// The largest [`BufferPool::in_use`] seen since creation or the last reset. Never above the
    /// capacity.
    pub fn high_water(&self) -> usize {
        self.state.lock().high_water
    }

    /// Restarts [`BufferPool::high_water`] from the current [`BufferPool::in_use`].
    pub fn reset_high_water(&self) {
        let mut st = self.state.lock();
        st.high_water = st.in_use;
    }

    /// Releases the memory held on the free lists.
    pub fn trim(&self) {
        let mut st = self.state.lock();
        st.free.clear();
        st.free_bytes = 0;
    }

    /// The size class a request of `len` bytes is served from: `len` rounded up to 4 KiB up to
    /// 64 KiB, then to 1/16 of its power of two (at most ~6% waste), but never beyond the capacity.
    fn class_of(&self, len: usize) -> usize {
        if len == 0 {
            return 0;
        }
        let step = if len <= 64 * 1024 {
            4096
        } else {
            1usize << (usize::BITS - 1 - len.leading_zeros() - 4)
        };
        let class = len.div_ceil(step).saturating_mul(step);
        if class > self.capacity {
            len
        } else {
            class
        }
    }

    fn take_impl<const N: usize>(
        self: &Arc<Self>,
        lens: [usize; N],
        wait: Wait,
    ) -> Result<Option<[PoolBuf; N]>, PoolError> {
        let classes = lens.map(|len| self.class_of(len));
        let total = classes
            .iter()
            .try_fold(0usize, |acc, &c| acc.checked_add(c))
            .unwrap_or(usize::MAX);
        if total > self.capacity {
            return Err(PoolError::TooLarge {
                requested: total,
                capacity: self.capacity,
            });
        }

        let mut st = self.state.lock();
        let grants = if st.waiters.is_empty() && st.in_use + total <= self.capacity {
            classes.map(|c| st.grant(c, self.capacity))
        } else {
            let deadline = match wait {
                Wait::Never => return Ok(None),
                Wait::Forever => None,
                Wait::Until(deadline) => Some(deadline),
            };
            let ticket = st.next_ticket;
            st.next_ticket += 1;
            st.waiters.push_back(ticket);
            loop {
                if st.waiters.front() == Some(&ticket) && st.in_use + total <= self.capacity {
                    st.waiters.pop_front();
                    let grants = classes.map(|c| st.grant(c, self.capacity));
                    if !st.waiters.is_empty() {
                        // The next in line may fit in what is left.
                        self.cond.notify_all();
                    }
                    break grants;
                }
                let timed_out = match deadline {
                    None => {
                        self.cond.wait(&mut st);
                        false
                    }
                    Some(deadline) => self.cond.wait_until(&mut st, deadline).timed_out(),
                };
                if timed_out
                    && !(st.waiters.front() == Some(&ticket) && st.in_use + total <= self.capacity)
                {
                    st.waiters.retain(|&t| t != ticket);
                    self.cond.notify_all();
                    return Ok(None);
                }
            }
        };
        st.high_water = st.high_water.max(st.in_use);
        drop(st);

        let mut lens = lens.into_iter();
        Ok(Some(grants.map(|grant| {
            let buf = match grant {
                Grant::Recycled(buf) => buf,
                // Zeroed only because handing out uninitialised memory as `&[u8]` is unsound; large
                // zeroed allocations come straight from the OS and cost no extra pass.
                Grant::Fresh(class) => vec![0u8; class],
            };
            PoolBuf {
                buf,
                len: lens.next().expect("one length per grant"),
                pool: Arc::clone(self),
            }
        })))
    }

    /// Stops counting `class` bytes lent out by a buffer that left the pool
    /// ([`PoolBuf::into_vec`]).
    fn give_back_detached(&self, class: usize) {
        let mut st = self.state.lock();
        st.in_use -= class;
        if class > 0 && !st.waiters.is_empty() {
            self.cond.notify_all();
        }
    }

    /// Takes a buffer that [`PoolBuf::into_vec`] took out back onto the free list of its size
    /// class, if that fits within the capacity; otherwise frees it.
    pub fn adopt(&self, mut buf: Vec<u8>) {
        let class = buf.capacity();
        if class == 0 || self.class_of(class) != class {
            return;
        }
        {
            let st = self.state.lock();
            if st.in_use + st.free_bytes + class > self.capacity {
                return;
            }
        }
        // Free-list buffers hold `class` initialised bytes (no allocation: capacity == class).
        buf.resize(class, 0);
        let mut st = self.state.lock();
        if st.in_use + st.free_bytes + class > self.capacity {
            return;
        }
        st.shelve(buf, class);
        if !st.waiters.is_empty() {
            self.cond.notify_all();
        }
    }

    fn give_back(&self, buf: Vec<u8>) {
        let class = buf.len();
        let mut st = self.state.lock();
        st.in_use -= class;
        if class == 0 {
            return;
        }
        st.shelve(buf, class);
        if !st.waiters.is_empty() {
            self.cond.notify_all();
        }
    }
}

impl PoolState {
    /// Puts a returned buffer of size class `class` on its free list.
    fn shelve(&mut self, buf: Vec<u8>, class: usize) {
        self.free_bytes += class;
        match self.free.iter_mut().find(|f| f.class == class) {
            Some(list) => list.bufs.push(buf),
            None => self.free.push(FreeList {
                class,
                bufs: vec![buf],
            }),
        }
    }

    /// Charges `class` bytes and says which buffer satisfies them. The caller has checked that
    /// `in_use + class <= capacity`; free buffers of other classes are released as needed to keep
    /// `in_use + free_bytes <= capacity`.
    fn grant(&mut self, class: usize, capacity: usize) -> Grant {
        self.in_use += class;
        if let Some(list) = self.free.iter_mut().find(|f| f.class == class) {
            if let Some(buf) = list.bufs.pop() {
                self.free_bytes -= class;
                return Grant::Recycled(buf);
            }
        }
        self.shed_to(capacity);
        Grant::Fresh(class)
    }

    /// Drops free buffers (largest classes first) until `in_use + free_bytes <= limit`.
    fn shed_to(&mut self, limit: usize) {
        while self.in_use + self.free_bytes > limit {
            let Some(list) = self
                .free
                .iter_mut()
                .filter(|f| !f.bufs.is_empty())
                .max_by_key(|f| f.class)
            else {
                break;
            };
            let buf = list.bufs.pop().expect("non-empty list");
            self.free_bytes -= buf.len();
        }
        self.free.retain(|f| !f.bufs.is_empty());
    }
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state.lock();
        f.debug_struct("BufferPool")
            .field("capacity", &self.capacity)
            .field("in_use", &st.in_use)
            .field("free_bytes", &st.free_bytes)
            .field("high_water", &st.high_water)
            .field("waiters", &st.waiters.len())
            .finish()
    }
}

/// A buffer lent by a [`BufferPool`]; it dereferences to its first [`PoolBuf::len`] bytes and goes back
/// to the pool when dropped. Contents on take are unspecified: buffers are recycled without zeroing.
pub struct PoolBuf {
    /// Always `capacity` initialised bytes; only `..len` is exposed.
    buf: Vec<u8>,
    len: usize,
    pool: Arc<BufferPool>,
}

impl PoolBuf {
    /// Bytes visible through `Deref`.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether [`PoolBuf::len`] is 0.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes this buffer can hold (its size class, at least the length it was taken with).
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Changes the visible length. Growing exposes unspecified bytes.
    ///
    /// # Panics
    /// If `len > self.capacity()`.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.buf.len(),
            "PoolBuf::set_len({len}) beyond capacity {}",
            self.buf.len()
        );
        self.len = len;
    }

    /// The pool this buffer returns to.
    pub fn pool(&self) -> &Arc<BufferPool> {
        &self.pool
    }

    /// Takes the bytes out of the pool, without copying: the pool stops counting them (their room
    /// is free for other requests at once) and the caller owns them, `len()` long. The chunk
    /// cache keeps decoded chunks this way and hands them back with [`BufferPool::adopt`] when it
    /// evicts them, so the pool does not allocate anew.
    pub fn into_vec(mut self) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.buf);
        self.pool.give_back_detached(buf.len());
        buf.truncate(self.len);
        buf
    }
}

impl Deref for PoolBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl DerefMut for PoolBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

impl fmt::Debug for PoolBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuf")
            .field("len", &self.len)
            .field("capacity", &self.buf.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn take_charges_size_classes_and_returns_on_drop() {
        let pool = BufferPool::new(1 << 20);
        let a = pool.take(100).unwrap();
        assert_eq!(a.len(), 100);
        assert_eq!(a.capacity(), 4096);
        let b = pool.take(100_000).unwrap();
        assert_eq!(b.len(), 100_000);
        assert!(b.capacity() >= 100_000 && b.capacity() <= 100_000 * 17 / 16);
        assert_eq!(pool.in_use(), a.capacity() + b.capacity());
        drop(a);
        drop(b);
        assert_eq!(pool.in_use(), 0);
        assert_eq!(pool.free_bytes(), 4096 + 102_400);
        let empty = pool.take(0).unwrap();
        assert!(empty.is_empty());
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn class_never_exceeds_capacity() {
        let pool = BufferPool::new(5000);
        let buf = pool.take(5000).unwrap();
        assert_eq!(buf.capacity(), 5000);
        assert_eq!(
            pool.take(5001).unwrap_err(),
            PoolError::TooLarge {
                requested: 5001,
                capacity: 5000
            }
        );
        assert!(pool.try_take(5001).is_none());
        assert!(pool.take_timeout(5001, Duration::from_secs(10)).is_none());
        assert!(pool.take_many([4096, 4096]).is_err());
    }

    #[test]
    fn buffers_are_recycled_without_new_allocation() {
        let pool = BufferPool::new(1 << 20);
        let mut a = pool.take(64 << 10).unwrap();
        a[0] = 0xAA;
        let ptr = a.as_ptr();
        drop(a);
        let b = pool.take((64 << 10) - 100).unwrap(); // same class
        assert_eq!(b.as_ptr(), ptr);
        assert_eq!(b[0], 0xAA, "recycled contents are not cleared");
    }

    #[test]
    fn free_buffers_of_other_sizes_are_dropped_to_make_room() {
        let pool = BufferPool::new(256 << 10);
        drop(
            pool.take_many([64 << 10, 64 << 10, 64 << 10, 64 << 10])
                .unwrap(),
        );
        assert_eq!(pool.free_bytes(), 256 << 10);
        let big = pool.try_take(200 << 10).expect("free lists give way");
        assert_eq!(pool.in_use(), big.capacity());
        assert!(pool.in_use() + pool.free_bytes() <= pool.capacity());
    }

    #[test]
    fn a_detached_buffer_frees_its_room_and_is_recycled_when_adopted() {
        let pool = BufferPool::new(16384);
        let mut a = pool.take(8192).unwrap();
        a[..4].copy_from_slice(b"data");
        a.set_len(5000);
        let v = a.into_vec();
        assert_eq!((v.len(), &v[..4]), (5000, &b"data"[..]));
        assert_eq!(pool.in_use(), 0);
        let b = pool.take(16384).unwrap();
        // No room while the whole pool is lent: the adopted buffer is freed, not kept.
        pool.adopt(v.clone());
        assert_eq!(pool.free_bytes(), 0);
        drop(b);
        pool.trim();
        pool.adopt(v);
        assert_eq!(pool.free_bytes(), 8192);
        let again = pool.take(8000).unwrap();
        assert_eq!((again.capacity(), pool.free_bytes()), (8192, 0));
    }

    #[test]
    fn try_take_and_timeout_do_not_block_beyond_their_limit() {
        let pool = BufferPool::new(8192);
        let a = pool.take(8192).unwrap();
        assert!(pool.try_take(1).is_none());
        let t = Instant::now();
        assert!(pool.take_timeout(1, Duration::from_millis(30)).is_none());
        assert!(t.elapsed() >= Duration::from_millis(30));
        drop(a);
        assert!(pool.take_timeout(1, Duration::from_millis(30)).is_some());
    }

    #[test]
    fn blocked_take_wakes_when_memory_returns() {
        let pool = BufferPool::new(8192);
        let a = pool.take(8192).unwrap();
        let p2 = Arc::clone(&pool);
        let waiter = thread::spawn(move || p2.take(8192).unwrap().len());
        thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished());
        drop(a);
        assert_eq!(waiter.join().unwrap(), 8192);
        assert_eq!(pool.high_water(), 8192);
    }

    #[test]
    fn large_request_is_not_starved_by_small_ones() {
        let pool = BufferPool::new(16 << 10);
        let small = pool.take(4096).unwrap();
        let p2 = Arc::clone(&pool);
        let big = thread::spawn(move || p2.take(16 << 10).map(|b| b.len()));
        while pool.state.lock().waiters.is_empty() {
            thread::yield_now();
        }
        // Room for a small one, but the big request is first in line.
        assert!(pool.try_take(4096).is_none());
        drop(small);
        assert_eq!(big.join().unwrap().unwrap(), 16 << 10);
    }

    #[test]
    fn timed_out_waiter_leaves_the_line() {
        let pool = BufferPool::new(8192);
        let a = pool.take(8192).unwrap();
        assert!(pool.take_timeout(8192, Duration::from_millis(5)).is_none());
        assert!(pool.state.lock().waiters.is_empty());
        drop(a);
        assert!(pool.try_take(8192).is_some());
    }

    #[test]
    fn high_water_stays_within_capacity_under_contention() {
        let pool = BufferPool::new(64 << 10);
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let pool = Arc::clone(&pool);
                thread::spawn(move || {
                    for j in 0..500 {
                        let len = 1 + (i * 7919 + j * 104_729) % (24 << 10);
                        let mut b = pool.take_many([len, 4096]).unwrap();
                        b[0][0] = 1;
                        assert!(pool.in_use() <= pool.capacity());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(pool.high_water() <= pool.capacity());
        assert_eq!(pool.in_use(), 0);
        assert!(pool.free_bytes() <= pool.capacity());
        pool.reset_high_water();
        assert_eq!(pool.high_water(), 0);
    }

    #[test]
    #[should_panic(expected = "beyond capacity")]
    fn set_len_beyond_capacity_panics() {
        let pool = BufferPool::new(1 << 20);
        let mut b = pool.take(10).unwrap();
        b.set_len(4096); // fine: the class is 4 KiB
        b.set_len(4097);
    }
}
