//! What readers and `stat` never wait for (issue 18): the daemon is held in one step of a
//! file's write path by a test hook, and a stat forced past the kernel's attribute cache, or an
//! O_DIRECT read of data already stored, must answer meanwhile. Needs root and /dev/fuse.
//!
//! A binary of its own: while a commit is held back, any process forked by the test binary
//! (another test's daemon or helper) closes its inherited descriptor of the held file when it
//! execs, and that close's FLUSH waits for the same commit; tests of other binaries that count
//! on their processes starting promptly are kept out of the way.

mod common;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::{Duration, Instant};

use common::Mount;

/// `stat` never waits for a commit: the daemon holds every fsync's commit back 2 s (test
/// hook), and a stat forced to the daemon meanwhile must answer at once, with the new size.
/// Before the commit ran with the file's state lock released, it waited the 2 s.
#[test]
fn stat_answers_while_an_fsync_commit_is_held_up() {
    let mut m = Mount::unmounted(&[], false);
    m.daemon_env
        .push(("DEFLATEFS_TEST_COMMIT_DELAY_MS".into(), "2000".into()));
    m.mount();
    let p = m.path("held");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    f.write_all_at(&vec![7u8; 300 * 1024], 0).unwrap();
    let syncing = std::thread::spawn({
        let f = f.try_clone().unwrap();
        move || {
            let t = Instant::now();
            f.sync_all().unwrap();
            t.elapsed()
        }
    });
    // Let the fsync reach its held commit.
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let size = statx_forced(&f).unwrap();
    let took = t.elapsed();
    let fsync_took = syncing.join().unwrap();
    assert!(
        fsync_took >= Duration::from_millis(1500),
        "the hook did not hold the commit back: fsync took {fsync_took:?}"
    );
    assert_eq!(size, 300 * 1024);
    assert!(
        took < Duration::from_millis(1000),
        "stat waited {took:?} for a commit held back 2 s"
    );
    drop(f);
    assert!(m.warn_and_error_lines().is_empty(), "{}", m.log_text());
}

/// The size as the daemon says it now (statx with AT_STATX_FORCE_SYNC, past the kernel's
/// attribute cache).
fn statx_forced(f: &File) -> io::Result<u64> {
    // SAFETY: statx fills the zeroed struct it is given; all-zero is a valid statx.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a descriptor `f` keeps open, an empty NUL-terminated path with AT_EMPTY_PATH, and
    // a buffer of the right type that lives across the call.
    let r = unsafe {
        libc::statx(
            f.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_FORCE_SYNC,
            libc::STATX_BASIC_STATS,
            &mut stx,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stx.stx_size)
}

/// A reader of stored data never waits for the write of a member being landed: the daemon
/// makes every member's write to the backing file take 2 s longer (test hook), a writer fills
/// a new chunk, and meanwhile an O_DIRECT read of the file's first, stored chunk must answer
/// at once. Before members were written with the store lock released, it waited the 2 s.
#[test]
fn a_read_of_stored_data_does_not_wait_for_a_member_being_written() {
    const CHUNK: usize = 128 * 1024;
    let mut m = Mount::unmounted(&[], false);
    m.daemon_env
        .push(("DEFLATEFS_TEST_MEMBER_WRITE_DELAY_MS".into(), "2000".into()));
    m.mount();
    let p = m.path("landing");
    let first: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
    {
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&p)
            .unwrap();
        f.write_all_at(&first, 0).unwrap();
        f.sync_all().unwrap();
    }
    let writer = std::thread::spawn({
        let p = p.clone();
        move || {
            let f = OpenOptions::new().write(true).open(&p).unwrap();
            // A whole chunk: handed to the engine at once, landed (and held) on a worker.
            f.write_all_at(&vec![9u8; CHUNK], CHUNK as u64).unwrap();
            let t = Instant::now();
            f.sync_all().unwrap();
            t.elapsed()
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let r = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&p)
        .unwrap();
    let mut buf = AlignedBuf::new(CHUNK);
    let t = Instant::now();
    let n = r.read_at(buf.as_mut(), 0).unwrap();
    let took = t.elapsed();
    let fsync_took = writer.join().unwrap();
    assert!(
        fsync_took >= Duration::from_millis(1000),
        "the hook did not hold the landing back: fsync took {fsync_took:?}"
    );
    assert_eq!(n, CHUNK);
    assert!(
        buf.as_mut()[..n] == first[..],
        "the stored chunk read back wrong"
    );
    assert!(
        took < Duration::from_millis(1000),
        "a read of stored data waited {took:?} for a member's write held back 2 s"
    );
    assert!(m.warn_and_error_lines().is_empty(), "{}", m.log_text());
}

/// A page-aligned buffer, as O_DIRECT needs.
struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        AlignedBuf { ptr, len }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `len` initialised bytes this value owns.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, 4096).unwrap();
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) };
    }
}
