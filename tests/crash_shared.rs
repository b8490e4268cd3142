//! Several processes share one file while the daemon is killed (issue "fsync'd pages come back
//! old after a daemon crash when several processes share a file").
//!
//! Four writer processes share `pages.dat`, 512 pages of 8 KiB; writer `w` owns the pages
//! `p % 4 == w`. Each loops: open, pwrite 1-40 of its pages with increasing version numbers,
//! fsync in 30% of the loops, close. Every close of a handle can start a compaction of the file
//! while the other writers' handles stay open, so closes race with compactions, fsyncs and
//! writes. Two more processes append 512-byte records to `append.log` through O_APPEND
//! descriptors of their own, fsyncing now and then. After a random delay the daemon gets SIGKILL;
//! the dead mount is removed, the backing directory mounted again and checked:
//! - every page holds exactly the bytes of one version of it, no older than its last fsync'd
//!   version (or the version the previous cycle found) and no newer than the last one written;
//! - `append.log` is whole records; each appender's records appear in order without a gap, at
//!   least up to its last fsync'd one.
//!
//! The writers are real processes (fork) that record what they wrote and what an fsync
//! acknowledged in a shared anonymous mapping, so the record survives their death.
//!
//! CI runs `DEFLATEFS_SHARED_CYCLES` = 12 cycles; thousands are the long mode
//! (`DEFLATEFS_SHARED_SEED` picks another sequence).

mod common;
mod powercut_common;

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{cpath, Mount, Rng};
use powercut_common::{Image, LayerMount};

const PAGE: usize = 8192;
const PAGES: usize = 512;
const WRITERS: usize = 4;
const APPENDERS: usize = 2;
const RECORD: usize = 512;
const PAGE_MAGIC: u32 = 0x5041_4745; // "PAGE"
const RECORD_MAGIC: u32 = 0x5245_4344; // "RECD"

/// What the children record, in memory shared with the test process.
#[repr(C)]
struct Shared {
    /// Highest version of each page whose pwrite was started.
    attempted: [AtomicU32; PAGES],
    /// Highest version of each page known durable: fsync'd by its writer after writing it, or
    /// found by the check of an earlier cycle.
    durable: [AtomicU32; PAGES],
    /// Records each appender started to append.
    appended: [AtomicU32; APPENDERS],
    /// Records each appender appended before a successful fsync (or found earlier).
    appended_durable: [AtomicU32; APPENDERS],
    /// Writes, fsyncs and closes done by all children (for the summary).
    writes: AtomicU32,
    fsyncs: AtomicU32,
    closes: AtomicU32,
}

/// A `Shared` in a MAP_SHARED anonymous mapping, so forked children write into it.
struct SharedMap(*mut Shared);

impl SharedMap {
    fn new() -> SharedMap {
        // SAFETY: an anonymous shared mapping of the struct's size; all-zero bytes are a valid
        // `Shared` (atomics of zero).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                std::mem::size_of::<Shared>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap of the shared record");
        SharedMap(p as *mut Shared)
    }

    fn get(&self) -> &Shared {
        // SAFETY: the mapping lives as long as `self` and holds only atomics.
        unsafe { &*self.0 }
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `new`.
        unsafe { libc::munmap(self.0 as *mut libc::c_void, std::mem::size_of::<Shared>()) };
    }
}

/// xorshift64* step, usable in a forked child (no allocation, no locks).
fn mix(mut x: u64) -> u64 {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// The bytes of version `version` of page `page`: a header, half a page of pseudo-random bytes
/// (so the file is big enough to be compacted) and half of a repeated pattern (so it compresses).
fn fill_page(buf: &mut [u8; PAGE], page: u32, version: u32) {
    buf[0..4].copy_from_slice(&PAGE_MAGIC.to_le_bytes());
    buf[4..8].copy_from_slice(&page.to_le_bytes());
    buf[8..12].copy_from_slice(&version.to_le_bytes());
    buf[12..16].copy_from_slice(&(page ^ version).to_le_bytes());
    let mut x = ((page as u64) << 32 | version as u64) ^ 0x9E37_79B9_7F4A_7C15;
    let mut i = 16;
    while i < PAGE / 2 {
        x = mix(x);
        buf[i..i + 8].copy_from_slice(&x.to_le_bytes());
        i += 8;
    }
    while i < PAGE {
        buf[i] = (version as u8) ^ (i as u8 & 0x0f);
        i += 1;
    }
}

/// The bytes of record `seq` (1-based) of appender `who`.
fn fill_record(buf: &mut [u8; RECORD], who: u32, seq: u32) {
    buf[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    buf[4..8].copy_from_slice(&who.to_le_bytes());
    buf[8..12].copy_from_slice(&seq.to_le_bytes());
    let mut x = ((who as u64) << 32 | seq as u64) ^ 0xD1B5_4A32_D192_ED03;
    let mut i = 12;
    while i + 8 <= RECORD {
        x = mix(x);
        buf[i..i + 8].copy_from_slice(&x.to_le_bytes());
        i += 8;
    }
    buf[RECORD - 4..].copy_from_slice(&seq.to_le_bytes());
}

/// Body of a page writer (in a forked child: libc calls and the shared record only).
fn page_writer(path: &std::ffi::CStr, shared: &Shared, who: usize, seed: u64) -> ! {
    let mut rng = seed | 1;
    let mut buf = [0u8; PAGE];
    // Versions go on from the highest ever written (so each is unique), but what this process
    // holds for a page is the version the file held when it started (what the last check found)
    // until it writes the page itself: a version an earlier crash lost was never in the file.
    let mut next = [0u32; PAGES];
    let mut mine = [0u32; PAGES];
    for p in 0..PAGES {
        next[p] = shared.attempted[p].load(Ordering::SeqCst) + 1;
        mine[p] = shared.durable[p].load(Ordering::SeqCst);
    }
    loop {
        // SAFETY: plain syscalls on a NUL-terminated path and a stack buffer.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR) };
        if fd < 0 {
            unsafe { libc::_exit(0) };
        }
        rng = mix(rng);
        let n = 1 + rng % 40;
        for _ in 0..n {
            rng = mix(rng);
            let page = (rng as usize % (PAGES / WRITERS)) * WRITERS + who;
            let version = next[page];
            next[page] += 1;
            mine[page] = version;
            shared.attempted[page].store(version, Ordering::SeqCst);
            fill_page(&mut buf, page as u32, version);
            let off = (page * PAGE) as libc::off_t;
            // SAFETY: as above.
            let w = unsafe { libc::pwrite(fd, buf.as_ptr() as *const libc::c_void, PAGE, off) };
            if w != PAGE as isize {
                unsafe { libc::_exit(0) };
            }
            shared.writes.fetch_add(1, Ordering::Relaxed);
        }
        rng = mix(rng);
        if rng % 10 < 3 {
            // SAFETY: as above.
            if unsafe { libc::fsync(fd) } != 0 {
                unsafe { libc::_exit(0) };
            }
            shared.fsyncs.fetch_add(1, Ordering::Relaxed);
            // Everything this process wrote before the fsync is durable.
            for page in (who..PAGES).step_by(WRITERS) {
                shared.durable[page].fetch_max(mine[page], Ordering::SeqCst);
            }
        }
        // SAFETY: as above.
        if unsafe { libc::close(fd) } != 0 {
            unsafe { libc::_exit(0) };
        }
        shared.closes.fetch_add(1, Ordering::Relaxed);
    }
}

/// Body of an appender (in a forked child).
fn appender(path: &std::ffi::CStr, shared: &Shared, who: usize, seed: u64) -> ! {
    let mut rng = seed | 1;
    let mut buf = [0u8; RECORD];
    let mut seq = shared.appended[who].load(Ordering::SeqCst);
    loop {
        // SAFETY: plain syscalls on a NUL-terminated path and a stack buffer.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_APPEND) };
        if fd < 0 {
            unsafe { libc::_exit(0) };
        }
        rng = mix(rng);
        let n = 1 + rng % 20;
        for _ in 0..n {
            seq += 1;
            shared.appended[who].store(seq, Ordering::SeqCst);
            fill_record(&mut buf, who as u32, seq);
            // SAFETY: as above.
            let w = unsafe { libc::write(fd, buf.as_ptr() as *const libc::c_void, RECORD) };
            if w != RECORD as isize {
                unsafe { libc::_exit(0) };
            }
            shared.writes.fetch_add(1, Ordering::Relaxed);
        }
        rng = mix(rng);
        if rng % 10 < 3 {
            // SAFETY: as above.
            if unsafe { libc::fsync(fd) } != 0 {
                unsafe { libc::_exit(0) };
            }
            shared.fsyncs.fetch_add(1, Ordering::Relaxed);
            shared.appended_durable[who].fetch_max(seq, Ordering::SeqCst);
        }
        // SAFETY: as above.
        if unsafe { libc::close(fd) } != 0 {
            unsafe { libc::_exit(0) };
        }
        shared.closes.fetch_add(1, Ordering::Relaxed);
    }
}

/// Forks a child running `body`; returns its pid.
fn spawn_child(body: impl FnOnce()) -> libc::pid_t {
    // SAFETY: the child runs only `body`, which makes plain syscalls and atomic stores on memory
    // that exists in the child (stack, the shared mapping) and ends in _exit; it never returns
    // into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        body();
        unsafe { libc::_exit(0) };
    }
    pid
}

/// Checks `pages.dat`; on success raises each page's durable version to the one found.
fn check_pages(data: &[u8], shared: &Shared, cycle: u64, failures: &mut Vec<String>) {
    if data.len() != PAGES * PAGE {
        failures.push(format!(
            "cycle {cycle}: pages.dat is {} bytes, want {}",
            data.len(),
            PAGES * PAGE
        ));
        return;
    }
    let mut expect = [0u8; PAGE];
    let mut lost = Vec::new();
    let mut garbage = Vec::new();
    for page in 0..PAGES {
        let got = &data[page * PAGE..(page + 1) * PAGE];
        let version = u32::from_le_bytes(got[8..12].try_into().unwrap());
        fill_page(&mut expect, page as u32, version);
        let durable = shared.durable[page].load(Ordering::SeqCst);
        let attempted = shared.attempted[page].load(Ordering::SeqCst);
        if got != &expect[..] || version > attempted {
            garbage.push(page);
        } else if version < durable {
            lost.push(format!(
                "page {page} at version {version}, {durable} was fsync'd"
            ));
        } else {
            shared.durable[page].store(version, Ordering::SeqCst);
        }
    }
    if !lost.is_empty() {
        failures.push(format!(
            "cycle {cycle}: {} page(s) lost fsync'd versions, e.g. {}",
            lost.len(),
            lost.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
        ));
    }
    if !garbage.is_empty() {
        failures.push(format!(
            "cycle {cycle}: {} page(s) hold bytes of no version written, e.g. pages {:?}",
            garbage.len(),
            &garbage[..garbage.len().min(8)]
        ));
    }
}

/// Checks `append.log`; on success raises each appender's durable count to the one found.
fn check_log(data: &[u8], shared: &Shared, cycle: u64, failures: &mut Vec<String>) {
    if !data.len().is_multiple_of(RECORD) {
        failures.push(format!(
            "cycle {cycle}: append.log is {} bytes, not whole records",
            data.len()
        ));
        return;
    }
    let mut seen = [0u32; APPENDERS];
    let mut expect = [0u8; RECORD];
    for (i, rec) in data.chunks(RECORD).enumerate() {
        let who = u32::from_le_bytes(rec[4..8].try_into().unwrap()) as usize;
        let seq = u32::from_le_bytes(rec[8..12].try_into().unwrap());
        if who >= APPENDERS {
            failures.push(format!("cycle {cycle}: append.log record {i} is garbage"));
            return;
        }
        fill_record(&mut expect, who as u32, seq);
        if rec != &expect[..] || seq != seen[who] + 1 {
            failures.push(format!(
                "cycle {cycle}: append.log record {i}: appender {who} seq {seq} after {} \
                 (intact: {})",
                seen[who],
                rec == &expect[..]
            ));
            return;
        }
        seen[who] = seq;
    }
    for (who, &count) in seen.iter().enumerate() {
        let durable = shared.appended_durable[who].load(Ordering::SeqCst);
        let appended = shared.appended[who].load(Ordering::SeqCst);
        if count < durable || count > appended {
            failures.push(format!(
                "cycle {cycle}: append.log holds {count} records of appender {who}; \
                 {durable} were fsync'd, {appended} appended"
            ));
        } else {
            shared.appended_durable[who].store(count, Ordering::SeqCst);
            // Appending resumes after what the file holds.
            shared.appended[who].store(count, Ordering::SeqCst);
        }
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// How a cycle ends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Crash {
    /// SIGKILL of the daemon: what reached the backing files stays.
    Kill,
    /// A power cut of the backing filesystem (`tests/powercut_common`), then SIGKILL: only what
    /// was fsync'd stays for sure, any part of the rest may.
    PowerCut,
}

/// The kill delays of a cycle in ms, `DEFLATEFS_SHARED_DELAY_MS=MIN-MAX` (default 300-2000).
fn delay_range() -> (u64, u64) {
    std::env::var("DEFLATEFS_SHARED_DELAY_MS")
        .ok()
        .and_then(|v| {
            let (a, b) = v.split_once('-')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .filter(|(a, b)| a <= b)
        .unwrap_or((300, 2000))
}

/// The log grows by every cycle's appends; past this it is truncated between cycles.
const LOG_LIMIT: usize = 8 << 20;

fn run(crash: Crash, cycles: u64, seed: u64) {
    let mut m = Mount::unmounted(&["queues=2"], false);
    let shared_map = SharedMap::new();
    let shared = shared_map.get();
    let (delay_min, delay_max) = delay_range();
    let mut rng = Rng::new(seed);
    let mut failures = Vec::new();
    let mut image = Image::default();
    let mut cycles_run = 0;
    let started = Instant::now();
    // The layer under the mount in power-cut mode; each cycle's check runs on the mount the next
    // cycle then uses, as a machine would after its reboot.
    let mut layer = (crash == Crash::PowerCut).then(|| LayerMount::mount(&m.src, &image));
    m.mount();
    {
        let f = std::fs::File::create(m.path("pages.dat")).unwrap();
        let mut buf = [0u8; PAGE];
        for page in 0..PAGES {
            fill_page(&mut buf, page as u32, 0);
            f.write_all_at(&buf, (page * PAGE) as u64).unwrap();
        }
        f.sync_all().unwrap();
        std::fs::File::create(m.path("append.log"))
            .unwrap()
            .sync_all()
            .unwrap();
        std::fs::File::open(&m.mnt).unwrap().sync_all().unwrap();
    }
    for cycle in 0..cycles {
        let pages_path = cpath(&m.path("pages.dat"));
        let log_path = cpath(&m.path("append.log"));
        let mut children = Vec::new();
        for who in 0..WRITERS {
            let s = rng.next();
            let p = pages_path.clone();
            children.push(spawn_child(move || page_writer(&p, shared, who, s)));
        }
        for who in 0..APPENDERS {
            let s = rng.next();
            let p = log_path.clone();
            children.push(spawn_child(move || appender(&p, shared, who, s)));
        }
        std::thread::sleep(Duration::from_millis(
            delay_min + rng.below(delay_max - delay_min + 1),
        ));
        if let Some(l) = &layer {
            image = l.cut(rng.next());
        }
        // SIGKILL to the daemon, then to the children (which fail on the dead mount anyway).
        m.kill_daemon();
        for &child in &children {
            // SAFETY: signals and waits for processes this test forked.
            unsafe { libc::kill(child, libc::SIGKILL) };
            let mut status = 0;
            unsafe { libc::waitpid(child, &mut status, 0) };
        }
        m.remove_dead_mount();
        cycles_run += 1;
        if let Some(l) = layer.take() {
            l.unmount();
            layer = Some(LayerMount::mount(&m.src, &image));
        }
        m.mount();
        let pages = std::fs::read(m.path("pages.dat")).expect("read pages.dat after the crash");
        check_pages(&pages, shared, cycle, &mut failures);
        let log = std::fs::read(m.path("append.log")).expect("read append.log after the crash");
        check_log(&log, shared, cycle, &mut failures);
        if !failures.is_empty() {
            break;
        }
        if log.len() > LOG_LIMIT {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(m.path("append.log"))
                .unwrap();
            f.set_len(0).unwrap();
            f.sync_all().unwrap();
            for who in 0..APPENDERS {
                shared.appended[who].store(0, Ordering::SeqCst);
                shared.appended_durable[who].store(0, Ordering::SeqCst);
            }
        }
    }
    m.unmount();
    if let Some(l) = layer {
        l.unmount();
    }
    let log = m.log_text();
    eprintln!(
        "crash_shared ({crash:?}): {cycles_run} cycles (seed {seed}, {delay_min}-{delay_max} ms) \
         in {:.1?}: {} writes, {} fsyncs, {} closes by {WRITERS} page writers and {APPENDERS} \
         appenders, {} compactions, {} failed compactions",
        started.elapsed(),
        shared.writes.load(Ordering::Relaxed),
        shared.fsyncs.load(Ordering::Relaxed),
        shared.closes.load(Ordering::Relaxed),
        log.matches(": compacted").count(),
        log.matches("compaction failed").count()
    );
    let reasons: std::collections::BTreeSet<&str> = log
        .lines()
        .filter_map(|l| l.split_once("file left as it was: ").map(|(_, why)| why))
        .collect();
    if !reasons.is_empty() {
        eprintln!("crash_shared ({crash:?}): compactions failed with: {reasons:?}");
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}\n--- daemon log (compaction lines, tail) ---\n{}",
        failures.len(),
        failures.join("\n"),
        log.lines()
            .filter(|l| l.contains("compact"))
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn processes_sharing_a_file_lose_no_fsynced_page_when_the_daemon_is_killed() {
    run(
        Crash::Kill,
        env_u64("DEFLATEFS_SHARED_CYCLES", 25),
        env_u64("DEFLATEFS_SHARED_SEED", 1),
    );
}

#[test]
fn processes_sharing_a_file_lose_no_fsynced_page_in_a_power_cut() {
    run(
        Crash::PowerCut,
        env_u64("DEFLATEFS_SHARED_CUTS", 10),
        env_u64("DEFLATEFS_SHARED_SEED", 1),
    );
}
