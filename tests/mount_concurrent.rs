//! One file hammered at once by writer threads, a writer process, an appender, a truncator,
//! fsyncs, stats and readers, and every read checked against a model (issue 18).
//!
//! The file is a fixed area `[0, F)` (F set by the scenario) and a tail beyond it.
//! - The fixed area is made of 512-byte sectors that say what they are: a header (magic, sector
//!   number, version, which sectors of its 4 KiB block the same write covered, owner) and a body
//!   that is a function of sector and version (half of them compressible, half not, so chunks are
//!   stored both deflated and stored). Any byte of a sector can be checked on its own.
//! - Writers (threads, and a second process that runs this test binary's
//!   [`child_writer_process`]) each own stripes of blocks and write whole blocks, runs of blocks,
//!   runs of sectors inside a block and whole chunks, each write a new version of its blocks, with
//!   fsync and fdatasync now and then through several descriptors. A model shared with the writer process
//!   (a mapped file outside the mount) keeps for each sector the highest version whose write has
//!   *started* and the highest whose write has *completed*.
//! - The tail holds records appended with O_APPEND, each 8-byte word a function of its offset and
//!   record number; a truncator cuts it back now and then, never below F.
//! - Readers read random ranges (inside blocks, across chunk boundaries, unaligned, into the tail,
//!   up to 1 MiB) through O_DIRECT (served by the daemon's read path every time), through the page
//!   cache with the range evicted first (the kernel's read-ahead requests) and through mmap. Each
//!   sector read must show a version whose write had started by the end of the read and that is
//!   not older than the last one completed before the read began (older: a stale read), with
//!   exactly that version's bytes; in an O_DIRECT read the sectors one write covered must not show
//!   it half applied. Tail words must be records no older than those completed before the read,
//!   never bytes nobody wrote; a read may come up short, or show zeros in the tail, only where a
//!   truncation overlapped it (the kernel reads the rest of a short O_DIRECT read through the page
//!   cache, and a page the daemon no longer has reads as zeros there).
//! - A stat thread asks the daemon for the size (statx with AT_STATX_FORCE_SYNC) in a loop: never
//!   below F, never a size no append or truncate produced.
//!
//! At the end the whole file is compared with the model through the daemon, then again through
//! the page cache after a remount (everything was fsync'd, so all of it must survive), and the
//! daemon's log must hold no WARN or ERROR line and no panic.
//!
//! Each scenario runs [`DEFAULT_SECS`] seconds; `DEFLATEFS_CONCURRENT_SECS=N` runs N seconds
//! instead (a soak), in rounds of at most [`ROUND_MAX_SECS`] each ending with the full check and
//! a remount, so no mount outlives the fixture's watchdog.

mod common;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{cpath, Mount, Rng};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Seconds each scenario hammers its file, unless `DEFLATEFS_CONCURRENT_SECS` says otherwise.
const DEFAULT_SECS: u64 = 8;
/// The longest one mount is hammered before the full check and a remount (the fixture's
/// watchdog kills a daemon mounted for 150 s).
const ROUND_MAX_SECS: u64 = 90;
/// How long the threads get to finish their last operation once told to stop, before the run
/// counts as hung (and the daemon is killed so that the test ends).
const STOP_GRACE: Duration = Duration::from_secs(60);

const SECTOR: u64 = 512;
const BLOCK: u64 = 4096;
const SECTORS_PER_BLOCK: u64 = BLOCK / SECTOR;
/// Blocks are owned by writers in stripes of this many (128 KiB, the default chunk), so a writer
/// can write a whole chunk at once, and a run of blocks can cross small chunks' boundaries.
const STRIPE_BLOCKS: u64 = 32;
const STRIPE: u64 = STRIPE_BLOCKS * BLOCK;
/// The appender waits while the tail is this long or longer.
const TAIL_MAX: u64 = 384 * KIB;
const RECORD_MAX: u64 = 24 * KIB;
/// No size beyond F + `TAIL_CAP` is ever reached.
const TAIL_CAP: u64 = TAIL_MAX + RECORD_MAX;
/// The largest read.
const READ_MAX: u64 = MIB;

const WRITER_THREADS: u8 = 3;
/// The writer process owns the stripes of this owner number.
const CHILD_OWNER: u8 = WRITER_THREADS;
const OWNERS: u8 = WRITER_THREADS + 1;
/// The variable that makes [`child_writer_process`] run (its value is the job).
const CHILD_ENV: &str = "DEFLATEFS_HAMMER_CHILD";

/// What one scenario mounts with.
struct Scenario {
    name: &'static str,
    opts: &'static [&'static str],
    /// The chunk size the options give.
    chunk: u64,
    /// F, the size of the fixed area.
    fixed: u64,
    /// Whether the run must have compacted the file at least once.
    expect_compaction: bool,
}

/// Default chunk size (128 KiB) and a 12 MiB fixed area, over the smallest dirty pool (8 MiB):
/// write-back under memory pressure happens beside fsync's, and two writers share each chunk.
#[test]
fn a_file_hammered_with_default_chunks_always_reads_as_the_model() {
    hammer(&Scenario {
        name: "default chunks",
        opts: &["dirty=8m"],
        chunk: 128 * KIB,
        fixed: 12 * MIB,
        expect_compaction: false,
    });
}

/// 16 KiB chunks, small pools and cache, and a 4 MiB fixed area: 4 blocks a chunk, so sector
/// writes become overlay pieces of stored chunks, runs of blocks cross chunk boundaries, nearly
/// every read decodes, and fsyncs and closes find the file due for compaction while it is read.
#[test]
fn a_file_hammered_with_16k_chunks_and_small_pools_always_reads_as_the_model() {
    hammer(&Scenario {
        name: "16k chunks, small pools",
        opts: &["chunk=16k", "dirty=8m", "pool=2m", "cache=1m"],
        chunk: 16 * KIB,
        fixed: 4 * MIB,
        expect_compaction: true,
    });
}

/// 4 KiB chunks, one block each: every sector write is an overlay piece or a rewrite of its
/// chunk, a read of 1 MiB spans 256 chunks, and the cache holds few of them.
#[test]
fn a_file_hammered_with_4k_chunks_always_reads_as_the_model() {
    hammer(&Scenario {
        name: "4k chunks",
        opts: &["chunk=4k", "dirty=8m", "pool=1m", "cache=256k"],
        chunk: 4 * KIB,
        fixed: 2 * MIB,
        expect_compaction: false,
    });
}

/// The writer process of the scenarios above, not a test: it does nothing unless started by
/// one of them (with [`CHILD_ENV`] set, through `--ignored --exact`).
#[test]
#[ignore = "not a test: the writer process the hammer scenarios start"]
fn child_writer_process() {
    let Ok(job) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = job.split('\n');
    let mut next = |what: &str| {
        parts
            .next()
            .unwrap_or_else(|| panic!("{CHILD_ENV} lacks the {what}: {job:?}"))
            .to_string()
    };
    let file = PathBuf::from(next("file path"));
    let model_path = PathBuf::from(next("model path"));
    let seed: u64 = next("seed").parse().expect("seed");
    let chunk: u64 = next("chunk size").parse().expect("chunk size");
    let limit = Duration::from_secs(next("time limit").parse().expect("time limit"));
    let model = SharedModel::open(&model_path)
        .unwrap_or_else(|e| panic!("map the model {}: {e}", model_path.display()));
    let started = Instant::now();
    // The time limit only matters if the test that started this process died without saying
    // stop.
    let stop = || model.stop().load(SeqCst) != 0 || started.elapsed() > limit;
    let slot = Slot::new("writer process");
    match writer_loop(&file, &model, CHILD_OWNER, chunk, seed, &stop, &slot) {
        Ok(t) => {
            model.child_writes().store(t.writes, SeqCst);
            model.child_syncs().store(t.syncs, SeqCst);
        }
        Err(e) => panic!("writer process (owner {CHILD_OWNER}): {e}"),
    }
}

// ---- the content: sectors of the fixed area, words of the tail ----

const SECTOR_MAGIC: u64 = u64::from_le_bytes(*b"dfsHamr1");
const HEADER_LEN: usize = 32;
const TAIL_SALT: u64 = 0x7a11_5a17_0ddc_0ffe;
const HOLE_SALT: u64 = 0x4801_e5a1_7000_0001;

/// splitmix64's finalizer: a good 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn owner_of_block(block: u64) -> u8 {
    ((block / STRIPE_BLOCKS) % OWNERS as u64) as u8
}

/// Blocks the set-up leaves unwritten (holes reading as zeros until a writer writes them).
fn initially_a_hole(block: u64) -> bool {
    mix(block ^ HOLE_SALT).is_multiple_of(8)
}

fn header_check(sector: u64, version: u32, mask: u8, owner: u8) -> u64 {
    mix(sector ^ mix((version as u64) << 16 | (mask as u64) << 8 | owner as u64))
}

/// Header bytes that depend on the sector mask of the write (the rest of a sector is a function
/// of sector and version alone).
fn mask_dependent(i: usize) -> bool {
    i == 20 || (24..32).contains(&i)
}

/// Writes sector `sector` at `version` into `out` (512 bytes); `mask` has bit i set for each
/// sector i of the block that the same write covers.
fn fill_sector(out: &mut [u8], sector: u64, version: u32, mask: u8) {
    let owner = owner_of_block(sector / SECTORS_PER_BLOCK);
    out[0..8].copy_from_slice(&SECTOR_MAGIC.to_le_bytes());
    out[8..16].copy_from_slice(&sector.to_le_bytes());
    out[16..20].copy_from_slice(&version.to_le_bytes());
    out[20] = mask;
    out[21] = owner;
    out[22..24].fill(0);
    out[24..32].copy_from_slice(&header_check(sector, version, mask, owner).to_le_bytes());
    let seed = mix(sector.wrapping_mul(0x0100_0000_01B3) ^ (version as u64) << 40);
    let compressible = seed & 1 == 1;
    for (i, w) in out[HEADER_LEN..SECTOR as usize]
        .chunks_exact_mut(8)
        .enumerate()
    {
        let r = mix(seed.wrapping_add(i as u64));
        // Letters 'a'..'d' carry 2 bits a byte: deflate takes them to about a quarter.
        let v = if compressible {
            (r & 0x0303_0303_0303_0303) | 0x6161_6161_6161_6161
        } else {
            r
        };
        w.copy_from_slice(&v.to_le_bytes());
    }
}

/// What a whole sector read back holds.
enum Seen {
    Zeros,
    Version { version: u32, mask: u8 },
    Garbage(String),
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap())
}

fn decode_sector(bytes: &[u8], sector: u64) -> Seen {
    if bytes.iter().all(|b| *b == 0) {
        return Seen::Zeros;
    }
    if le64(&bytes[0..8]) != SECTOR_MAGIC {
        return Seen::Garbage(format!(
            "no sector header: first bytes {:02x?}",
            &bytes[..16]
        ));
    }
    let found = le64(&bytes[8..16]);
    let version = u32::from_le_bytes(bytes[16..20].try_into().unwrap());
    let (mask, owner) = (bytes[20], bytes[21]);
    if found != sector {
        return Seen::Garbage(format!(
            "holds sector {found} (version {version}), which belongs at byte {}",
            found * SECTOR
        ));
    }
    if header_check(sector, version, mask, owner) != le64(&bytes[24..32]) || bytes[22..24] != [0, 0]
    {
        return Seen::Garbage(format!(
            "damaged header (version {version}, mask {mask:#04x}, owner {owner})"
        ));
    }
    let expected_owner = owner_of_block(sector / SECTORS_PER_BLOCK);
    if owner != expected_owner || mask & (1 << (sector % SECTORS_PER_BLOCK)) == 0 {
        return Seen::Garbage(format!(
            "header of a write nobody made: owner {owner} (expected {expected_owner}), mask \
             {mask:#04x}"
        ));
    }
    let mut want = [0u8; SECTOR as usize];
    fill_sector(&mut want, sector, version, mask);
    if let Some(i) = bytes.iter().zip(want.iter()).position(|(a, b)| a != b) {
        return Seen::Garbage(format!(
            "version {version}'s body differs from byte {i} of the sector on: read {:02x?}, \
             expected {:02x?}",
            &bytes[i..(i + 8).min(bytes.len())],
            &want[i..(i + 8).min(want.len())]
        ));
    }
    Seen::Version { version, mask }
}

/// Whether the bytes `bytes`, at `from` inside sector `sector`, are those of `version` (0: zeros),
/// leaving aside the bytes that depend on the write's mask.
fn partial_sector_is(bytes: &[u8], from: usize, sector: u64, version: u32) -> bool {
    let mut want = [0u8; SECTOR as usize];
    if version > 0 {
        fill_sector(&mut want, sector, version, 0);
    }
    bytes
        .iter()
        .enumerate()
        .all(|(i, b)| mask_dependent(from + i) || *b == want[from + i])
}

/// The tail's 8-byte word at file offset `x` as record `record` writes it.
fn tail_word(x: u64, record: u32) -> u64 {
    record as u64 | mix(x ^ TAIL_SALT ^ (record as u64) << 36) << 32
}

// ---- the model ----

/// Per-sector version bounds and per-stripe eviction gates, in a file mapped shared by this
/// process and the writer process.
///
/// Layout (u32 words): 0 stop, 1 sector count, 2 writes of the writer process, 3 its syncs,
/// then `started[sectors]`, `completed[sectors]`, `gate[stripes]`.
struct SharedModel {
    map: *mut u8,
    len: usize,
    sectors: u64,
}

// SAFETY: the mapping is only reached through `AtomicU32` references (see `word`), which are
// safe to share between threads; the pointer stays valid until drop.
unsafe impl Send for SharedModel {}
// SAFETY: as above.
unsafe impl Sync for SharedModel {}

/// A gate bit: an evicting reader holds the stripe (writers wait).
const EVICTING: u32 = 1 << 31;

/// Waits a little before trying a gate again: a write can take milliseconds, and spinning would
/// take a core of two from the daemon.
fn gate_backoff(tries: &mut u32) {
    *tries += 1;
    if *tries < 8 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(100));
    }
}

impl SharedModel {
    const HEADER_WORDS: u64 = 16;

    fn words(sectors: u64) -> u64 {
        Self::HEADER_WORDS + 2 * sectors + sectors / (STRIPE / SECTOR)
    }

    /// A fresh model (all versions 0) for `sectors` sectors at `path` (not on the mount).
    fn create(path: &Path, sectors: u64) -> io::Result<SharedModel> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        f.set_len(Self::words(sectors) * 4)?;
        let mut m = Self::map(&f)?;
        m.word(1).store(sectors as u32, SeqCst);
        m.sectors = sectors;
        Ok(m)
    }

    /// The model another process created at `path`.
    fn open(path: &Path) -> io::Result<SharedModel> {
        let f = OpenOptions::new().read(true).write(true).open(path)?;
        let mut m = Self::map(&f)?;
        let sectors = m.word(1).load(SeqCst) as u64;
        if Self::words(sectors) * 4 != m.len as u64 {
            return Err(io::Error::other(format!(
                "model of {} bytes for {sectors} sectors",
                m.len
            )));
        }
        m.sectors = sectors;
        Ok(m)
    }

    fn map(f: &File) -> io::Result<SharedModel> {
        let len = f.metadata()?.len() as usize;
        // SAFETY: a fresh shared mapping of the whole file, which outlives nothing: it is unmapped
        // in drop; the kernel keeps it valid after `f` is closed.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedModel {
            map: map.cast(),
            len,
            sectors: 0,
        })
    }

    fn word(&self, i: u64) -> &AtomicU32 {
        assert!(
            (i as usize + 1) * 4 <= self.len,
            "model word {i} out of range"
        );
        // SAFETY: in bounds (checked), 4-aligned (the mapping is page-aligned), and every access
        // to the mapping, in both processes, goes through atomics.
        unsafe { &*(self.map.add(i as usize * 4) as *const AtomicU32) }
    }

    fn stop(&self) -> &AtomicU32 {
        self.word(0)
    }
    fn child_writes(&self) -> &AtomicU32 {
        self.word(2)
    }
    fn child_syncs(&self) -> &AtomicU32 {
        self.word(3)
    }
    /// The highest version of `sector` whose write has begun.
    fn started(&self, sector: u64) -> &AtomicU32 {
        assert!(sector < self.sectors);
        self.word(Self::HEADER_WORDS + sector)
    }
    /// The highest version of `sector` whose write has returned.
    fn completed(&self, sector: u64) -> &AtomicU32 {
        assert!(sector < self.sectors);
        self.word(Self::HEADER_WORDS + self.sectors + sector)
    }
    fn gate(&self, stripe: u64) -> &AtomicU32 {
        self.word(Self::HEADER_WORDS + 2 * self.sectors + stripe)
    }

    /// Lets a writer into `stripe` unless a reader is evicting it from the page cache.
    fn enter_stripe(&self, stripe: u64) {
        let g = self.gate(stripe);
        let mut tries = 0;
        loop {
            let v = g.load(SeqCst);
            if v & EVICTING == 0 && g.compare_exchange_weak(v, v + 1, SeqCst, SeqCst).is_ok() {
                return;
            }
            gate_backoff(&mut tries);
        }
    }

    fn leave_stripe(&self, stripe: u64) {
        self.gate(stripe).fetch_sub(1, SeqCst);
    }

    /// Runs `evict` (dropping pages of the stripes `first..=last` from the page cache) with no
    /// write to those stripes in flight.
    ///
    /// Why: a full-page buffered write to FUSE marks the page up to date and unlocks it before the
    /// WRITE reaches the daemon; evicting it then lets a read fetch the old bytes from the daemon
    /// into the cache, where they stay after the write returns. That is the kernel's race, not the
    /// daemon's, and the page-cache readers would report it as a stale read.
    fn with_stripes_quiet(&self, first: u64, last: u64, evict: impl FnOnce()) {
        for s in first..=last {
            let mut tries = 0;
            while self
                .gate(s)
                .compare_exchange_weak(0, EVICTING, SeqCst, SeqCst)
                .is_err()
            {
                gate_backoff(&mut tries);
            }
        }
        evict();
        for s in first..=last {
            self.gate(s).store(0, SeqCst);
        }
    }
}

impl Drop for SharedModel {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, not used after this.
        unsafe { libc::munmap(self.map.cast(), self.len) };
    }
}

/// The tail's model (only the test process appends and truncates).
struct TailModel {
    /// F: where the tail begins.
    fixed: u64,
    /// For each word of `[F, F + TAIL_CAP)`: the last record whose append covering it
    /// returned.
    latest: Vec<AtomicU32>,
    /// The highest record whose append has begun.
    started_record: AtomicU32,
    /// The file is at least this long (until a truncation begins).
    size_lower: AtomicU64,
    /// The file is at most this long (until a truncation begins).
    size_upper: AtomicU64,
    truncs_started: AtomicU64,
    truncs_done: AtomicU64,
    /// The exact size and the next record; held across each append and truncation, which the
    /// kernel serialises on the inode anyway.
    exact: Mutex<TailState>,
    /// The last appends and truncations (when each ended), for failure reports.
    history: Mutex<std::collections::VecDeque<(Instant, String)>>,
}

struct TailState {
    size: u64,
    next_record: u32,
}

/// Truncations that had begun and ended when a read or stat began.
#[derive(Clone, Copy)]
struct TruncWindow {
    started: u64,
    done: u64,
}

impl TailModel {
    fn new(fixed: u64) -> TailModel {
        TailModel {
            fixed,
            latest: (0..TAIL_CAP / 8).map(|_| AtomicU32::new(0)).collect(),
            started_record: AtomicU32::new(0),
            size_lower: AtomicU64::new(fixed),
            size_upper: AtomicU64::new(fixed),
            truncs_started: AtomicU64::new(0),
            truncs_done: AtomicU64::new(0),
            exact: Mutex::new(TailState {
                size: fixed,
                next_record: 1,
            }),
            history: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    fn remember(&self, event: String) {
        let mut h = self.history.lock().unwrap();
        if h.len() == 24 {
            h.pop_front();
        }
        h.push_back((Instant::now(), event));
    }

    /// The remembered events, each with how long before `now` it ended.
    fn recent(&self, now: Instant) -> String {
        let h = self.history.lock().unwrap();
        h.iter()
            .map(|(t, e)| format!("{:>9.3} ms ago: {e}", (now - *t).as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join("\n      ")
    }

    fn window(&self) -> TruncWindow {
        let started = self.truncs_started.load(SeqCst);
        let done = self.truncs_done.load(SeqCst);
        TruncWindow { started, done }
    }

    /// Whether a truncation was in flight at `w` or began since.
    fn truncated_since(&self, w: TruncWindow) -> bool {
        w.started != w.done || self.truncs_started.load(SeqCst) != w.started
    }
}

// ---- a run ----

/// Counts of what a run did, for the summary and for the check that every actor worked.
#[derive(Default)]
struct Tally {
    direct_reads: AtomicU64,
    direct_bytes: AtomicU64,
    cached_reads: AtomicU64,
    mapped_reads: AtomicU64,
    page_cache_rereads: AtomicU64,
    writes: AtomicU64,
    write_syncs: AtomicU64,
    appends: AtomicU64,
    truncates: AtomicU64,
    syncs: AtomicU64,
    stats: AtomicU64,
}

/// What one thread is doing, for the report of a hang.
struct Slot {
    name: String,
    doing: Mutex<(Instant, String)>,
}

impl Slot {
    fn new(name: &str) -> Slot {
        Slot {
            name: name.to_string(),
            doing: Mutex::new((Instant::now(), "starting".into())),
        }
    }
    fn set(&self, what: String) {
        *self.doing.lock().unwrap() = (Instant::now(), what);
    }
    fn describe(&self) -> String {
        let d = self.doing.lock().unwrap();
        format!("{}: {} (for {:?})", self.name, d.1, d.0.elapsed())
    }
}

/// Everything the threads of one round share.
struct Run<'a> {
    path: PathBuf,
    chunk: u64,
    model: &'a SharedModel,
    tail: &'a TailModel,
    began: Instant,
    stop: AtomicBool,
    failures: Mutex<Vec<String>>,
    tally: Tally,
    stat_latencies: Mutex<Vec<Duration>>,
    active: AtomicUsize,
}

impl Run<'_> {
    fn stopped(&self) -> bool {
        self.stop.load(SeqCst)
    }

    /// Records a failure and stops the run.
    fn fail(&self, who: &str, msg: String) {
        let mut f = self.failures.lock().unwrap();
        if f.len() < 12 {
            f.push(format!(
                "[{who}, {:.3} s into the round] {msg}",
                self.began.elapsed().as_secs_f64()
            ));
        }
        self.stop.store(true, SeqCst);
        self.model.stop().store(1, SeqCst);
    }

    /// Runs one actor on its own thread of `scope`, turning its error or panic into a failure.
    fn spawn<'s, 'e>(
        &'e self,
        scope: &'s std::thread::Scope<'s, 'e>,
        slot: &'e Slot,
        actor: impl FnOnce(&Slot) -> Result<(), String> + Send + 'e,
    ) {
        self.active.fetch_add(1, SeqCst);
        scope.spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| actor(slot)));
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => self.fail(&slot.name, e),
                Err(p) => {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    self.fail(&slot.name, format!("panicked: {msg}"));
                }
            }
            self.active.fetch_sub(1, SeqCst);
        });
    }

    /// Sleeps up to `d`, waking early when the run stops.
    fn pause(&self, d: Duration) {
        let end = Instant::now() + d;
        while !self.stopped() {
            let now = Instant::now();
            if now >= end {
                return;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(20)));
        }
    }
}

fn run_secs() -> u64 {
    match std::env::var("DEFLATEFS_CONCURRENT_SECS") {
        Ok(v) => v.parse().unwrap_or_else(|_| {
            panic!("DEFLATEFS_CONCURRENT_SECS={v:?} is not a number of seconds")
        }),
        Err(_) => DEFAULT_SECS,
    }
}

fn open_rw(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("open {} read-write: {e}", path.display()))
}

fn hammer(sc: &Scenario) {
    let secs = run_secs();
    let mut m = Mount::with_opts(sc.opts);
    let path = m.path("hammered");
    let model_path = m.dir.path().join("model");
    let model = SharedModel::create(&model_path, sc.fixed / SECTOR).expect("create the model");
    let tail = TailModel::new(sc.fixed);
    set_up(&path, &model).unwrap_or_else(|e| panic!("{}: set-up: {e}", sc.name));
    let mut left = secs;
    let mut round = 0u64;
    let mut compactions_before = 0;
    loop {
        let this = left.min(ROUND_MAX_SECS);
        left -= this;
        let outcome = run_round(&m, sc, &path, &model_path, &model, &tail, this, round);
        if outcome.daemon_killed {
            m.kill_daemon();
            m.remove_dead_mount();
        }
        if !outcome.failures.is_empty() {
            panic!(
                "{}: round {round}: {} failure(s):\n{}\n\ndaemon log (last lines):\n{}",
                sc.name,
                outcome.failures.len(),
                outcome.failures.join("\n"),
                last_lines(&m.log_text(), 30)
            );
        }
        let fail = |m: &Mount, when: &str, e: String| -> ! {
            panic!(
                "{}: round {round}: {when}: {e}\n\ndaemon log (last lines):\n{}",
                sc.name,
                last_lines(&m.log_text(), 30)
            )
        };
        open_rw(&path)
            .and_then(|f| f.sync_all().map_err(|e| format!("fsync: {e}")))
            .unwrap_or_else(|e| fail(&m, "final fsync", e));
        verify_file(&path, &model, &tail, true)
            .unwrap_or_else(|e| fail(&m, "whole file through O_DIRECT after the run", e));
        let log = m.log_text();
        let compactions = log.matches(": compacted").count();
        eprintln!(
            "{}: round {round}: {this} s: {}; compactions {}",
            sc.name,
            outcome.summary,
            compactions - compactions_before
        );
        compactions_before = compactions;
        let noisy = m.warn_and_error_lines();
        assert!(
            noisy.is_empty(),
            "{}: the daemon logged {} WARN/ERROR line(s):\n{}",
            sc.name,
            noisy.len(),
            noisy.join("\n")
        );
        for (what, text) in [("log", log), ("stderr", m.stderr_text())] {
            assert!(
                !text.contains("panicked"),
                "{}: the daemon's {what} shows a panic:\n{}",
                sc.name,
                last_lines(&text, 30)
            );
        }
        m.remount();
        verify_file(&path, &model, &tail, false)
            .unwrap_or_else(|e| fail(&m, "whole file through the page cache after a remount", e));
        round += 1;
        if left == 0 {
            break;
        }
    }
    if sc.expect_compaction {
        assert!(
            compactions_before > 0,
            "{}: the file was never compacted during the run: the scenario no longer reaches \
             compaction (log:\n{})",
            sc.name,
            last_lines(&m.log_text(), 30)
        );
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Writes version 1 of every block but the holes, sets the size to F and fsyncs.
fn set_up(path: &Path, model: &SharedModel) -> Result<(), String> {
    let fixed = model.sectors * SECTOR;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("create {}: {e}", path.display()))?;
    let blocks = fixed / BLOCK;
    let mut b = 0;
    let mut buf = Vec::new();
    while b < blocks {
        if initially_a_hole(b) {
            b += 1;
            continue;
        }
        let first = b;
        buf.clear();
        while b < blocks && !initially_a_hole(b) && b - first < 256 {
            for s in b * SECTORS_PER_BLOCK..(b + 1) * SECTORS_PER_BLOCK {
                let at = buf.len();
                buf.resize(at + SECTOR as usize, 0);
                fill_sector(&mut buf[at..], s, 1, 0xff);
            }
            b += 1;
        }
        f.write_all_at(&buf, first * BLOCK)
            .map_err(|e| format!("write blocks {first}..{b}: {e}"))?;
        for s in first * SECTORS_PER_BLOCK..b * SECTORS_PER_BLOCK {
            model.started(s).store(1, SeqCst);
            model.completed(s).store(1, SeqCst);
        }
    }
    f.set_len(fixed).map_err(|e| format!("ftruncate: {e}"))?;
    f.sync_all().map_err(|e| format!("fsync: {e}"))
}

struct RoundOutcome {
    failures: Vec<String>,
    summary: String,
    daemon_killed: bool,
}

#[allow(clippy::too_many_arguments)]
fn run_round(
    m: &Mount,
    sc: &Scenario,
    path: &Path,
    model_path: &Path,
    model: &SharedModel,
    tail: &TailModel,
    secs: u64,
    round: u64,
) -> RoundOutcome {
    model.stop().store(0, SeqCst);
    let run = Run {
        path: path.to_path_buf(),
        chunk: sc.chunk,
        model,
        tail,
        began: Instant::now(),
        stop: AtomicBool::new(false),
        failures: Mutex::new(Vec::new()),
        tally: Tally::default(),
        stat_latencies: Mutex::new(Vec::new()),
        active: AtomicUsize::new(0),
    };
    let seed = mix(round ^ sc.chunk);
    let child_stderr = m.dir.path().join(format!("writer-process-{round}.stderr"));
    let mut child =
        match spawn_writer_process(path, model_path, sc.chunk, seed, secs, &child_stderr) {
            Ok(c) => Some(c),
            Err(e) => {
                run.fail("writer process", e);
                None
            }
        };
    let mut slots: Vec<Slot> = (0..WRITER_THREADS)
        .map(|w| Slot::new(&format!("writer {w}")))
        .collect();
    let readers = [
        Via::Direct,
        Via::Direct,
        Via::Direct,
        Via::PageCache,
        Via::Mapped,
    ];
    for (i, via) in readers.iter().enumerate() {
        slots.push(Slot::new(&format!("{via:?} reader {i}")));
    }
    for name in ["appender", "truncator", "syncer", "stat"] {
        slots.push(Slot::new(name));
    }
    let mut daemon_killed = false;
    std::thread::scope(|scope| {
        let mut s = slots.iter();
        for w in 0..WRITER_THREADS {
            let run = &run;
            run.spawn(scope, s.next().unwrap(), move |slot| {
                let t = writer_loop(
                    &run.path,
                    run.model,
                    w,
                    run.chunk,
                    seed ^ mix(w as u64 + 1),
                    &|| run.stopped(),
                    slot,
                )?;
                run.tally.writes.fetch_add(t.writes as u64, SeqCst);
                run.tally.write_syncs.fetch_add(t.syncs as u64, SeqCst);
                Ok(())
            });
        }
        for (i, via) in readers.into_iter().enumerate() {
            let run = &run;
            let seed = seed ^ mix(100 + i as u64);
            run.spawn(scope, s.next().unwrap(), move |slot| {
                reader(run, via, seed, slot)
            });
        }
        let run = &run;
        run.spawn(scope, s.next().unwrap(), move |slot| {
            appender(run, seed ^ 1, slot)
        });
        run.spawn(scope, s.next().unwrap(), move |slot| {
            truncator(run, seed ^ 2, slot)
        });
        run.spawn(scope, s.next().unwrap(), move |slot| {
            syncer(run, seed ^ 3, slot)
        });
        run.spawn(scope, s.next().unwrap(), move |slot| stat_loop(run, slot));
        let deadline = run.began + Duration::from_secs(secs);
        while Instant::now() < deadline && !run.stopped() {
            std::thread::sleep(Duration::from_millis(20));
            if let Some(c) = child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    if run.stopped() {
                        break;
                    }
                    run.fail(
                        "writer process",
                        format!(
                            "exited early ({status}): {}",
                            std::fs::read_to_string(&child_stderr).unwrap_or_default()
                        ),
                    );
                    child = None;
                }
            }
        }
        run.stop.store(true, SeqCst);
        model.stop().store(1, SeqCst);
        let stopping = Instant::now();
        while run.active.load(SeqCst) > 0 {
            if stopping.elapsed() > STOP_GRACE {
                let stuck: Vec<String> = slots.iter().map(Slot::describe).collect();
                run.fail(
                    "monitor",
                    format!(
                        "threads still busy {STOP_GRACE:?} after the stop, the daemon is killed:\n  {}",
                        stuck.join("\n  ")
                    ),
                );
                if let Some(pid) = m.daemon_pid() {
                    // SAFETY: kill(2) of our own child, the daemon: its death aborts the FUSE
                    // connection, so the stuck system calls return ENOTCONN.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
                daemon_killed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    if let Some(mut c) = child {
        match wait_child(&mut c, STOP_GRACE) {
            Ok(status) if status.success() => {}
            Ok(status) => run.fail(
                "writer process",
                format!(
                    "exited with {status}: {}",
                    std::fs::read_to_string(&child_stderr).unwrap_or_default()
                ),
            ),
            Err(e) => run.fail("writer process", e),
        }
    }
    let t = &run.tally;
    let child_writes = model.child_writes().load(SeqCst) as u64;
    let child_syncs = model.child_syncs().load(SeqCst) as u64;
    let failed = !run.failures.lock().unwrap().is_empty();
    // A run where some actor did (almost) nothing proves nothing.
    let mut idle = Vec::new();
    for (what, n, least) in [
        ("O_DIRECT reads", t.direct_reads.load(SeqCst), 100),
        ("page-cache reads", t.cached_reads.load(SeqCst), 20),
        ("mmap reads", t.mapped_reads.load(SeqCst), 20),
        ("writes by threads", t.writes.load(SeqCst), 200),
        ("writes by the writer process", child_writes, 20),
        ("syncs by the writer process", child_syncs, 1),
        ("appends", t.appends.load(SeqCst), 20),
        ("truncations", t.truncates.load(SeqCst), 5),
        (
            "fsyncs",
            t.syncs.load(SeqCst) + t.write_syncs.load(SeqCst),
            10,
        ),
        ("stats", t.stats.load(SeqCst), 20),
    ] {
        if n < least {
            idle.push(format!("{what}: {n} (at least {least} expected)"));
        }
    }
    if !failed && !idle.is_empty() {
        run.fail(
            "monitor",
            format!(
                "the run did too little to prove anything: {}",
                idle.join("; ")
            ),
        );
    }
    let mut lat = run.stat_latencies.lock().unwrap().clone();
    lat.sort();
    let pct = |p: usize| lat.get(lat.len() * p / 100).copied().unwrap_or_default();
    let summary = format!(
        "O_DIRECT reads {} ({} MiB), page-cache reads {}, mmap reads {}, page-cache re-reads {}, \
         writes {} + {} by the writer process, appends {}, truncations {}, fsyncs {} + {} by \
         writers + {} by the writer process, stats {} (FORCE_SYNC p50 {:?} p99 {:?} max {:?})",
        t.direct_reads.load(SeqCst),
        t.direct_bytes.load(SeqCst) / MIB,
        t.cached_reads.load(SeqCst),
        t.mapped_reads.load(SeqCst),
        t.page_cache_rereads.load(SeqCst),
        t.writes.load(SeqCst),
        child_writes,
        t.appends.load(SeqCst),
        t.truncates.load(SeqCst),
        t.syncs.load(SeqCst),
        t.write_syncs.load(SeqCst),
        child_syncs,
        t.stats.load(SeqCst),
        pct(50),
        pct(99),
        lat.last().copied().unwrap_or_default(),
    );
    let failures = run.failures.into_inner().unwrap();
    RoundOutcome {
        failures,
        summary,
        daemon_killed,
    }
}

/// Starts this test binary's [`child_writer_process`] on the file.
fn spawn_writer_process(
    path: &Path,
    model_path: &Path,
    chunk: u64,
    seed: u64,
    secs: u64,
    stderr: &Path,
) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let err = File::create(stderr).map_err(|e| format!("create {}: {e}", stderr.display()))?;
    Command::new(&exe)
        .args([
            "--ignored",
            "--exact",
            "child_writer_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            CHILD_ENV,
            format!(
                "{}\n{}\n{}\n{chunk}\n{}",
                path.display(),
                model_path.display(),
                seed ^ 0xc41d,
                secs + 2 * STOP_GRACE.as_secs()
            ),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .map_err(|e| format!("start {}: {e}", exe.display()))
}

fn wait_child(c: &mut Child, patience: Duration) -> Result<std::process::ExitStatus, String> {
    let end = Instant::now() + patience;
    loop {
        match c.try_wait() {
            Ok(Some(s)) => return Ok(s),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = c.kill();
                let _ = c.wait();
                return Err(format!("still running {patience:?} after the stop; killed"));
            }
            Err(e) => return Err(format!("wait: {e}")),
        }
    }
}

// ---- writers ----

#[derive(Default)]
struct WriterTally {
    writes: u32,
    syncs: u32,
}

/// Writes new versions of the blocks `owner` owns until `stop()`: whole blocks, runs of up to 4
/// blocks inside a stripe, runs of sectors inside a block, and whole chunks (of `chunk` bytes,
/// when a stripe holds whole chunks), with fsync or fdatasync now and then through one of two
/// descriptors. Keeps the model's started/completed versions.
fn writer_loop(
    path: &Path,
    model: &SharedModel,
    owner: u8,
    chunk: u64,
    seed: u64,
    stop: &dyn Fn() -> bool,
    slot: &Slot,
) -> Result<WriterTally, String> {
    let file = open_rw(path)?;
    let sync_file = open_rw(path)?;
    let blocks: Vec<u64> = (0..model.sectors / SECTORS_PER_BLOCK)
        .filter(|b| owner_of_block(*b) == owner)
        .collect();
    // This writer's versions carry on from the model's (a round after a remount).
    let mut versions: Vec<u32> = blocks
        .iter()
        .map(|b| {
            (b * SECTORS_PER_BLOCK..(b + 1) * SECTORS_PER_BLOCK)
                .map(|s| model.started(s).load(SeqCst))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut rng = Rng::new(seed);
    let mut tally = WriterTally::default();
    let mut buf = vec![0u8; STRIPE as usize];
    let mut last_sync = Instant::now();
    while !stop() {
        let mut i = rng.below(blocks.len() as u64) as usize;
        let pick = rng.below(100);
        // (blocks, first sector in the block, sectors), from `blocks[i]` on.
        let (count, first_sector, sectors) = if pick < 5 && STRIPE.is_multiple_of(chunk) {
            // A whole chunk: the daemon hands it to the engine with its buffer, so it is in
            // flight with no copy in memory until it lands.
            let chunk_blocks = chunk / BLOCK;
            i -= (blocks[i] % chunk_blocks) as usize;
            (chunk_blocks as usize, 0, SECTORS_PER_BLOCK)
        } else if pick < 60 {
            (1, 0, SECTORS_PER_BLOCK)
        } else if pick < 75 {
            let b = blocks[i];
            let stripe_end = (b / STRIPE_BLOCKS + 1) * STRIPE_BLOCKS;
            let n = (2 + rng.below(3)).min(stripe_end - b) as usize;
            (n, 0, SECTORS_PER_BLOCK)
        } else {
            let a = rng.below(SECTORS_PER_BLOCK);
            (1, a, 1 + rng.below(SECTORS_PER_BLOCK - a))
        };
        let offset = blocks[i] * BLOCK + first_sector * SECTOR;
        let len = if count == 1 {
            sectors * SECTOR
        } else {
            count as u64 * BLOCK
        };
        let mask = ((1u32 << sectors) - 1) as u8;
        let mask = mask << first_sector;
        let stripe = blocks[i] / STRIPE_BLOCKS;
        let mut written = Vec::with_capacity(count * SECTORS_PER_BLOCK as usize);
        for k in 0..count {
            versions[i + k] += 1;
            let v = versions[i + k];
            let b = blocks[i + k];
            assert_eq!(b, blocks[i] + k as u64, "a run stays inside a stripe");
            for j in first_sector..first_sector + sectors {
                let s = b * SECTORS_PER_BLOCK + j;
                let at = ((s * SECTOR) - offset) as usize;
                fill_sector(&mut buf[at..at + SECTOR as usize], s, v, mask);
                written.push((s, v));
            }
        }
        slot.set(format!("pwrite {len} bytes at {offset}"));
        model.enter_stripe(stripe);
        for (s, v) in &written {
            model.started(*s).store(*v, SeqCst);
        }
        let r = file.write_all_at(&buf[..len as usize], offset);
        if r.is_ok() {
            for (s, v) in &written {
                model.completed(*s).store(*v, SeqCst);
            }
        }
        model.leave_stripe(stripe);
        r.map_err(|e| format!("pwrite {len} bytes at {offset}: {e}"))?;
        tally.writes += 1;
        // Now and then, and at least every 300 ms however slow the writes are.
        if rng.below(40) == 0 || last_sync.elapsed() > Duration::from_millis(300) {
            last_sync = Instant::now();
            let (f, which) = if rng.below(2) == 0 {
                (&file, "the writing descriptor")
            } else {
                (&sync_file, "a second descriptor")
            };
            let data_only = rng.below(2) == 0;
            slot.set(format!("fsync(datasync={data_only}) through {which}"));
            if data_only {
                f.sync_data()
            } else {
                f.sync_all()
            }
            .map_err(|e| format!("fsync (datasync={data_only}) through {which}: {e}"))?;
            tally.syncs += 1;
        }
    }
    Ok(tally)
}

// ---- the tail: appender and truncator ----

fn appender(run: &Run, seed: u64, slot: &Slot) -> Result<(), String> {
    let f = OpenOptions::new()
        .append(true)
        .open(&run.path)
        .map_err(|e| format!("open O_APPEND: {e}"))?;
    let tail = run.tail;
    let fixed = tail.fixed;
    let mut rng = Rng::new(seed);
    let mut buf = Vec::new();
    while !run.stopped() {
        let mut st = tail.exact.lock().unwrap();
        if st.size >= fixed + TAIL_MAX {
            drop(st);
            run.pause(Duration::from_millis(2));
            continue;
        }
        let record = st.next_record;
        st.next_record += 1;
        let len = if rng.below(4) == 0 {
            8 * (1 + rng.below(64))
        } else {
            8 * (256 + rng.below(RECORD_MAX / 8 - 256))
        };
        let start = st.size;
        buf.clear();
        for x in (start..start + len).step_by(8) {
            buf.extend_from_slice(&tail_word(x, record).to_le_bytes());
        }
        tail.started_record.store(record, SeqCst);
        tail.size_upper.fetch_max(start + len, SeqCst);
        slot.set(format!("append record {record}, {len} bytes at {start}"));
        let n = (&f)
            .write(&buf)
            .map_err(|e| format!("append record {record} ({len} bytes) at {start}: {e}"))?;
        // SAFETY: lseek on a descriptor `f` keeps open; it changes nothing (SEEK_CUR + 0).
        let pos = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_CUR) };
        if n as u64 != len || pos as u64 != start + len {
            return Err(format!(
                "append of record {record} ({len} bytes) wrote {n} bytes ending at {pos}, but \
                 the file was {start} bytes long: O_APPEND did not append at the end"
            ));
        }
        let w0 = (start - fixed) / 8;
        for w in w0..w0 + len / 8 {
            tail.latest[w as usize].store(record, SeqCst);
        }
        st.size = start + len;
        tail.size_lower.store(start + len, SeqCst);
        tail.remember(format!(
            "appended record {record} at {start}..{}",
            start + len
        ));
        drop(st);
        run.tally.appends.fetch_add(1, SeqCst);
        run.pause(Duration::from_micros(rng.below(1500)));
    }
    Ok(())
}

fn truncator(run: &Run, seed: u64, slot: &Slot) -> Result<(), String> {
    let f = open_rw(&run.path)?;
    let tail = run.tail;
    let fixed = tail.fixed;
    let mut rng = Rng::new(seed);
    while !run.stopped() {
        run.pause(Duration::from_millis(5 + rng.below(35)));
        if run.stopped() {
            break;
        }
        let mut st = tail.exact.lock().unwrap();
        let over = st.size - fixed;
        if over == 0 {
            continue;
        }
        let target = match rng.below(4) {
            0 => fixed,
            1 => fixed + run.chunk * rng.below(over / run.chunk + 1),
            _ => fixed + 8 * rng.below(over / 8 + 1),
        };
        let by_path = rng.below(3) == 0;
        slot.set(format!(
            "truncate from {} to {target} ({})",
            st.size,
            if by_path { "by path" } else { "ftruncate" }
        ));
        tail.truncs_started.fetch_add(1, SeqCst);
        let r = if by_path {
            let c = cpath(&run.path);
            // SAFETY: truncate(2) with a NUL-terminated path that lives across the call.
            if unsafe { libc::truncate(c.as_ptr(), target as libc::off_t) } == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        } else {
            f.set_len(target)
        };
        r.map_err(|e| format!("truncate from {} to {target}: {e}", st.size))?;
        tail.remember(format!(
            "truncated {} -> {target} ({})",
            st.size,
            if by_path { "by path" } else { "ftruncate" }
        ));
        st.size = target;
        tail.size_lower.store(target, SeqCst);
        tail.size_upper.store(target, SeqCst);
        tail.truncs_done.fetch_add(1, SeqCst);
        drop(st);
        run.tally.truncates.fetch_add(1, SeqCst);
    }
    Ok(())
}

// ---- fsyncs and stats ----

/// fsync, fdatasync, and opens and closes (a close flushes and may compact), now and then.
fn syncer(run: &Run, seed: u64, slot: &Slot) -> Result<(), String> {
    let f = open_rw(&run.path)?;
    let mut rng = Rng::new(seed);
    while !run.stopped() {
        run.pause(Duration::from_millis(10 + rng.below(70)));
        let what = rng.below(4);
        let r = match what {
            0 => {
                slot.set("fsync".into());
                f.sync_all().map_err(|e| format!("fsync: {e}"))
            }
            1 => {
                slot.set("fdatasync".into());
                f.sync_data().map_err(|e| format!("fdatasync: {e}"))
            }
            2 => {
                slot.set("open, fsync, close".into());
                open_rw(&run.path).and_then(|g| g.sync_all().map_err(|e| format!("fsync: {e}")))
            }
            _ => {
                slot.set("open read-only, close".into());
                File::open(&run.path)
                    .map(drop)
                    .map_err(|e| format!("open read-only: {e}"))
            }
        };
        r?;
        run.tally.syncs.fetch_add(1, SeqCst);
    }
    Ok(())
}

/// Asks for the file's attributes in a loop: through the daemon (statx with
/// AT_STATX_FORCE_SYNC) and as the kernel caches them (stat by path).
fn stat_loop(run: &Run, slot: &Slot) -> Result<(), String> {
    let f = File::open(&run.path).map_err(|e| format!("open: {e}"))?;
    let tail = run.tail;
    let fixed = tail.fixed;
    let empty = c"";
    let mut latencies = Vec::new();
    let mut n = 0u64;
    while !run.stopped() {
        let w = tail.window();
        let lower = tail.size_lower.load(SeqCst);
        let forced = n % 4 != 3;
        let t = Instant::now();
        let (size, mode, nlink) = if forced {
            slot.set("statx FORCE_SYNC".into());
            // SAFETY: statx fills the zeroed struct it is given; all-zero is a valid statx.
            let mut stx: libc::statx = unsafe { std::mem::zeroed() };
            // SAFETY: a descriptor `f` keeps open, an empty NUL-terminated path with
            // AT_EMPTY_PATH, and a buffer of the right type that lives across the call.
            let r = unsafe {
                libc::statx(
                    f.as_raw_fd(),
                    empty.as_ptr(),
                    libc::AT_EMPTY_PATH | libc::AT_STATX_FORCE_SYNC,
                    libc::STATX_BASIC_STATS,
                    &mut stx,
                )
            };
            if r != 0 {
                return Err(format!("statx: {}", io::Error::last_os_error()));
            }
            (stx.stx_size, stx.stx_mode as u32, stx.stx_nlink as u64)
        } else {
            slot.set("stat by path".into());
            let st = common::lstat(&run.path).map_err(|e| format!("stat: {e}"))?;
            (st.st_size as u64, st.st_mode, st.st_nlink)
        };
        let took = t.elapsed();
        if forced && latencies.len() < 1 << 20 {
            latencies.push(took);
        }
        let upper = tail.size_upper.load(SeqCst);
        let how = if forced { "statx FORCE_SYNC" } else { "stat" };
        if mode & libc::S_IFMT != libc::S_IFREG || nlink != 1 {
            return Err(format!("{how}: mode {mode:o}, {nlink} links"));
        }
        if size < fixed || size > fixed + TAIL_CAP || size % 8 != 0 {
            return Err(format!(
                "{how}: size {size}: no append or truncation ever made it (sizes are multiples \
                 of 8 in {fixed}..={})",
                fixed + TAIL_CAP
            ));
        }
        if !tail.truncated_since(w) && (size < lower || size > upper) {
            return Err(format!(
                "{how}: size {size}, but with no truncation meanwhile the file was between \
                 {lower} and {upper} bytes long"
            ));
        }
        n += 1;
        run.tally.stats.fetch_add(1, SeqCst);
        run.pause(Duration::from_micros(500));
    }
    run.stat_latencies.lock().unwrap().extend(latencies);
    Ok(())
}

// ---- readers ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// O_DIRECT: every read is a request to the daemon.
    Direct,
    /// Buffered reads of ranges first evicted from the page cache: the kernel's read-ahead.
    PageCache,
    /// Loads from a shared mapping of the fixed area, evicted now and then.
    Mapped,
}

/// A mapping the SIGBUS handler repairs (`start` 0: a free slot), and its faults so far.
struct BusSlot {
    start: AtomicUsize,
    len: AtomicUsize,
    faults: AtomicUsize,
    /// Offset in the mapping of the last fault.
    last: AtomicUsize,
}

impl BusSlot {
    const fn new() -> BusSlot {
        BusSlot {
            start: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            faults: AtomicUsize::new(0),
            last: AtomicUsize::new(0),
        }
    }
}

/// One slot per live [`Mapping`] (the scenarios run in parallel, one mapping each).
static BUS_SLOTS: [BusSlot; 8] = [const { BusSlot::new() }; 8];
const PAGE: usize = 4096;

/// A load from a mapping whose page fault the daemon did not serve (it died, or answered the
/// read with an error) raises SIGBUS, which would kill the whole test binary without a word and
/// leave the mount behind. For a page of a registered mapping this maps a zero page in its place,
/// so the load completes, and counts the fault for the reader to report; any other SIGBUS gets the
/// default action again.
extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel hands an SA_SIGINFO handler a valid siginfo; si_addr is the faulting
    // address for SIGBUS.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in &BUS_SLOTS {
        let start = slot.start.load(SeqCst);
        if start != 0 && addr >= start && addr < start + slot.len.load(SeqCst) {
            // SAFETY: replaces one page inside a mapping this process made and still holds
            // (registered until it is unmapped) with an anonymous zero page; mmap is a plain
            // system call, safe in a signal handler.
            unsafe {
                libc::mmap(
                    (addr & !(PAGE - 1)) as *mut libc::c_void,
                    PAGE,
                    libc::PROT_READ,
                    libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            slot.last.store(addr - start, SeqCst);
            slot.faults.fetch_add(1, SeqCst);
            return;
        }
    }
    // SAFETY: restoring the default action; returning re-runs the load, which then kills the
    // process as it would have without this handler.
    unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
}

fn install_sigbus_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; it is filled in before sigaction(2) reads it, and
        // `on_sigbus` has the SA_SIGINFO handler signature.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigbus as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
        }
    });
}

/// A shared read-only mapping of the fixed area.
struct Mapping {
    ptr: *const u8,
    len: usize,
    /// Its slot in [`BUS_SLOTS`].
    slot: usize,
}

impl Mapping {
    fn new(f: &File, len: usize) -> Result<Mapping, String> {
        install_sigbus_handler();
        // SAFETY: a fresh read-only shared mapping of `len` bytes of a file at least that long;
        // unmapped in drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap: {}", io::Error::last_os_error()));
        }
        let Some(slot) = BUS_SLOTS.iter().position(|s| {
            s.start
                .compare_exchange(0, p as usize, SeqCst, SeqCst)
                .is_ok()
        }) else {
            // SAFETY: the mapping just made, never used.
            unsafe { libc::munmap(p, len) };
            return Err("no free SIGBUS slot for the mapping".into());
        };
        BUS_SLOTS[slot].len.store(len, SeqCst);
        Ok(Mapping {
            ptr: p as *const u8,
            len,
            slot,
        })
    }

    /// Copies `out.len()` bytes at `offset` (both multiples of 8) with 8-byte volatile loads:
    /// other processes change the pages meanwhile. Fails if a load raised SIGBUS.
    fn copy(&self, offset: u64, out: &mut [u8]) -> Result<(), String> {
        let bus = &BUS_SLOTS[self.slot];
        let faults = bus.faults.load(SeqCst);
        assert!(
            offset.is_multiple_of(8)
                && out.len().is_multiple_of(8)
                && offset as usize + out.len() <= self.len
        );
        for (i, w) in out.chunks_exact_mut(8).enumerate() {
            // SAFETY: in bounds of the mapping (asserted), 8-aligned (page-aligned base), and
            // the fixed area never shrinks, so the page exists; a fault the daemon does not serve
            // is repaired by `on_sigbus` and reported below.
            let v = unsafe {
                std::ptr::read_volatile(self.ptr.add(offset as usize + i * 8) as *const u64)
            };
            w.copy_from_slice(&v.to_ne_bytes());
        }
        if bus.faults.load(SeqCst) != faults {
            return Err(format!(
                "SIGBUS loading byte {} of the mapping: the daemon did not serve a page fault",
                bus.last.load(SeqCst)
            ));
        }
        Ok(())
    }

    /// Drops the mapping's pages of `[offset, offset + len)` (the page cache's go separately).
    fn forget(&self, offset: u64, len: u64) {
        let a = offset & !(BLOCK - 1);
        let b = (offset + len).div_ceil(BLOCK) * BLOCK;
        // SAFETY: a page-aligned range inside the mapping; MADV_DONTNEED on a shared file
        // mapping only drops page table entries, the next load faults the page in again.
        unsafe {
            libc::madvise(
                self.ptr.add(a as usize) as *mut libc::c_void,
                (b.min(self.len as u64) - a) as usize,
                libc::MADV_DONTNEED,
            )
        };
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, not used after this.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
        BUS_SLOTS[self.slot].start.store(0, SeqCst);
    }
}

/// A page-aligned buffer (O_DIRECT) carved out of a Vec.
struct AlignedBuf {
    v: Vec<u8>,
    at: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let v = vec![0u8; len + BLOCK as usize];
        let at = v.as_ptr().align_offset(BLOCK as usize);
        AlignedBuf { v, at, len }
    }
    fn get(&mut self, n: usize) -> &mut [u8] {
        assert!(n <= self.len);
        &mut self.v[self.at..self.at + n]
    }
}

/// A random range to read: block-aligned runs, ranges across a chunk boundary, large ranges,
/// unaligned ranges, and ranges into the tail.
fn pick_range(rng: &mut Rng, via: Via, chunk: u64, fixed: u64) -> (u64, u64) {
    let blocks = fixed / BLOCK;
    if via == Via::Mapped {
        let off = 8 * rng.below(fixed / 8);
        let len = (8 * (1 + rng.below(32 * KIB))).min(fixed - off);
        return (off, len);
    }
    let pick = rng.below(100);
    let (off, len) = if pick < 30 {
        (BLOCK * rng.below(blocks), BLOCK * (1 + rng.below(8)))
    } else if pick < 55 {
        let boundary = chunk * (1 + rng.below(fixed / chunk - 1));
        let before = if rng.below(2) == 0 {
            BLOCK * (1 + rng.below(4))
        } else {
            SECTOR * (1 + rng.below(16))
        };
        (
            boundary - before.min(boundary),
            before + BLOCK * (1 + rng.below(8)) + chunk * rng.below(3),
        )
    } else if pick < 65 {
        (
            BLOCK * rng.below(blocks),
            128 * KIB + rng.below(READ_MAX - 128 * KIB),
        )
    } else if pick < 80 {
        (rng.below(fixed), 1 + rng.below(64 * KIB))
    } else {
        let back = if rng.below(2) == 0 {
            BLOCK * rng.below(8)
        } else {
            rng.below(16 * KIB)
        };
        (fixed - back, BLOCK + rng.below(TAIL_CAP + 16 * KIB))
    };
    (off, len.min(READ_MAX))
}

fn reader(run: &Run, via: Via, seed: u64, slot: &Slot) -> Result<(), String> {
    let fixed = run.tail.fixed;
    let mut opts = OpenOptions::new();
    opts.read(true);
    if via == Via::Direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    let f = opts
        .open(&run.path)
        .map_err(|e| format!("open for {via:?} reads: {e}"))?;
    let map = if via == Via::Mapped {
        Some(Mapping::new(&f, fixed as usize)?)
    } else {
        None
    };
    let mut rng = Rng::new(seed);
    let mut buf = AlignedBuf::new(READ_MAX as usize);
    while !run.stopped() {
        let (off, len) = pick_range(&mut rng, via, run.chunk, fixed);
        // Page-cache readers evict what they are about to read (most of the time), so the
        // daemon serves it again.
        if via != Via::Direct && off < fixed && rng.below(4) != 0 {
            let end = (off + len).min(fixed);
            slot.set(format!("evict {off}..{end}"));
            run.model
                .with_stripes_quiet(off / STRIPE, (end - 1) / STRIPE, || {
                    if let Some(map) = &map {
                        map.forget(off, end - off);
                    }
                    // SAFETY: posix_fadvise on a descriptor `f` keeps open; advice only.
                    unsafe {
                        libc::posix_fadvise(
                            f.as_raw_fd(),
                            off as libc::off_t,
                            (end - off) as libc::off_t,
                            libc::POSIX_FADV_DONTNEED,
                        )
                    };
                });
        }
        let window = Window::open(run, off, len);
        slot.set(format!("{via:?} read of {len} bytes at {off}"));
        let data = buf.get(len as usize);
        let n = match &map {
            Some(map) => {
                map.copy(off, data)?;
                len as usize
            }
            None => f
                .read_at(data, off)
                .map_err(|e| format!("{via:?} read of {len} bytes at {off}: {e}"))?,
        };
        let data = &data[..n];
        let mut problems = window.check(run, off, data, via, true);
        if via != Via::Direct && !problems.is_empty() {
            // The page cache is read while writes copy into it: a sector or word caught half
            // copied is read again (still bound by what had completed before the first read).
            problems = reread_torn(run, &window, &f, map.as_ref(), via, problems)?;
        }
        if !problems.is_empty() {
            let tail_events = if off + n as u64 > fixed || off + len > fixed {
                format!(
                    "\n    the read began {:.3} ms ago; the tail's last appends and \
                     truncations:\n      {}",
                    window.opened.elapsed().as_secs_f64() * 1e3,
                    run.tail.recent(Instant::now())
                )
            } else {
                String::new()
            };
            return Err(format!(
                "{via:?} read of {len} bytes at {off} (chunk {}, {} bytes back, {} problems):\n    \
                 {}{tail_events}",
                off / run.chunk,
                n,
                problems.len(),
                problems
                    .iter()
                    .take(6)
                    .map(|p| p.msg.as_str())
                    .collect::<Vec<_>>()
                    .join("\n    ")
            ));
        }
        let tally = &run.tally;
        match via {
            Via::Direct => {
                tally.direct_reads.fetch_add(1, SeqCst);
                tally.direct_bytes.fetch_add(n as u64, SeqCst);
            }
            Via::PageCache => {
                tally.cached_reads.fetch_add(1, SeqCst);
            }
            Via::Mapped => {
                tally.mapped_reads.fetch_add(1, SeqCst);
            }
        }
    }
    Ok(())
}

/// Reads each problem's region again, up to 20 times, and returns the problems that remain.
fn reread_torn(
    run: &Run,
    window: &Window,
    f: &File,
    map: Option<&Mapping>,
    via: Via,
    problems: Vec<Problem>,
) -> Result<Vec<Problem>, String> {
    let mut left = Vec::new();
    for p in problems {
        let Some((at, len)) = p.region else {
            left.push(p);
            continue;
        };
        let mut last = p;
        let mut settled = false;
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(1));
            run.tally.page_cache_rereads.fetch_add(1, SeqCst);
            let mut data = vec![0u8; len as usize];
            let n = match map {
                Some(map) => {
                    map.copy(at, &mut data)?;
                    len as usize
                }
                None => f
                    .read_at(&mut data, at)
                    .map_err(|e| format!("{via:?} re-read of {len} bytes at {at}: {e}"))?,
            };
            if n < len as usize {
                // Gone meanwhile (truncated): nothing left to judge.
                settled = true;
                break;
            }
            let again = window.check(run, at, &data, via, false);
            match again.into_iter().next() {
                None => {
                    settled = true;
                    break;
                }
                Some(q) => last = q,
            }
        }
        if !settled {
            last.msg = format!("{} (the same after 20 re-reads)", last.msg);
            left.push(last);
        }
    }
    Ok(left)
}

struct Problem {
    msg: String,
    /// The whole sector or word to read again, for a page-cache reader (None: a length problem).
    region: Option<(u64, u64)>,
}

/// What a read may show, captured just before it.
struct Window {
    offset: u64,
    len: u64,
    first_sector: u64,
    /// The completed version of each sector the range touches.
    sector_lo: Vec<u32>,
    /// Index (into `TailModel::latest`) of the first tail word the range touches.
    first_word: u64,
    word_lo: Vec<u32>,
    truncs: TruncWindow,
    size_lower: u64,
    opened: Instant,
}

impl Window {
    fn open(run: &Run, offset: u64, len: u64) -> Window {
        let tail = run.tail;
        let fixed = tail.fixed;
        let truncs = tail.window();
        let size_lower = tail.size_lower.load(SeqCst);
        let end = offset + len;
        let first_sector = offset / SECTOR;
        let sector_lo = if offset < fixed {
            (first_sector..end.min(fixed).div_ceil(SECTOR))
                .map(|s| run.model.completed(s).load(SeqCst))
                .collect()
        } else {
            Vec::new()
        };
        let first_word = offset.max(fixed).saturating_sub(fixed) / 8;
        let last_word = end.min(fixed + TAIL_CAP).saturating_sub(fixed).div_ceil(8);
        let word_lo = (first_word..last_word.max(first_word))
            .map(|w| tail.latest[w as usize].load(SeqCst))
            .collect();
        Window {
            offset,
            len,
            first_sector,
            sector_lo,
            first_word,
            word_lo,
            truncs,
            size_lower,
            opened: Instant::now(),
        }
    }

    /// Checks `data`, read at `at` (the window's whole range with `whole`, else a part of it,
    /// read again), against the model: now, after the read, the versions started bound it from
    /// above.
    fn check(&self, run: &Run, at: u64, data: &[u8], via: Via, whole: bool) -> Vec<Problem> {
        let mut problems = Vec::new();
        let tail = run.tail;
        let fixed = tail.fixed;
        let model = run.model;
        let end = at + data.len() as u64;
        let truncated = tail.truncated_since(self.truncs);
        if whole {
            let asked_end = self.offset + self.len;
            let sure = if truncated {
                fixed
            } else {
                fixed.max(self.size_lower)
            };
            if end < asked_end.min(sure) {
                problems.push(Problem {
                    msg: format!(
                        "short read: {} bytes, but the file was at least {sure} bytes long \
                         throughout{}",
                        data.len(),
                        if truncated {
                            ""
                        } else {
                            " (no truncation meanwhile)"
                        }
                    ),
                    region: None,
                });
            }
            let upper = tail.size_upper.load(SeqCst);
            if !truncated && end > upper.max(fixed) {
                problems.push(Problem {
                    msg: format!(
                        "read reaches byte {end}, but with no truncation meanwhile the file was \
                         never longer than {upper}: bytes past the end"
                    ),
                    region: None,
                });
            }
        }
        // The fixed area, sector by sector.
        let mut full: Vec<(u64, u32, u8)> = Vec::new();
        if at < fixed {
            let fixed_end = end.min(fixed);
            let mut s = at / SECTOR;
            while s * SECTOR < fixed_end {
                let (s0, s1) = (s * SECTOR, (s + 1) * SECTOR);
                let (a, b) = (s0.max(at), s1.min(fixed_end));
                let bytes = &data[(a - at) as usize..(b - at) as usize];
                let lo = self.sector_lo[(s - self.first_sector) as usize];
                let hi = model.started(s).load(SeqCst);
                let whereabouts = || {
                    format!(
                        "sector {s} (bytes {s0}..{s1}, block {}, chunk {}, owner {})",
                        s / SECTORS_PER_BLOCK,
                        s0 / run.chunk,
                        owner_of_block(s / SECTORS_PER_BLOCK)
                    )
                };
                let mut bad = |msg: String| {
                    problems.push(Problem {
                        msg: format!("{}: {msg}", whereabouts()),
                        region: Some((s0, SECTOR)),
                    })
                };
                if a == s0 && b == s1 {
                    match decode_sector(bytes, s) {
                        Seen::Zeros if lo > 0 => bad(format!(
                            "reads as zeros, but version {lo} was written completely before the \
                             read began"
                        )),
                        Seen::Zeros => full.push((s, 0, 0)),
                        Seen::Version { version, .. } if version < lo => bad(format!(
                            "STALE: shows version {version}, but version {lo} was written \
                             completely before the read began"
                        )),
                        Seen::Version { version, .. } if version > hi => bad(format!(
                            "shows version {version}, but no write of a version above {hi} had \
                             begun"
                        )),
                        Seen::Version { version, mask } => full.push((s, version, mask)),
                        Seen::Garbage(what) => bad(format!(
                            "GARBAGE: {what} (versions {lo}..={hi} were possible)"
                        )),
                    }
                } else {
                    let from = (a - s0) as usize;
                    let ok = (lo..=hi).any(|v| partial_sector_is(bytes, from, s, v));
                    if !ok {
                        bad(format!(
                            "bytes {a}..{b} are none of versions {lo}..={hi}: {:02x?}",
                            &bytes[..bytes.len().min(16)]
                        ));
                    }
                }
                s += 1;
            }
        }
        // In a read the daemon served (O_DIRECT, block-aligned, so no request boundary splits a
        // block), a write's sectors are seen all applied or none.
        if via == Via::Direct && whole && at.is_multiple_of(BLOCK) {
            for &(s, v, mask) in &full {
                let block = s / SECTORS_PER_BLOCK;
                for &(t, u, _) in &full {
                    let j = t % SECTORS_PER_BLOCK;
                    if t / SECTORS_PER_BLOCK == block && mask & (1 << j) != 0 && u < v {
                        problems.push(Problem {
                            msg: format!(
                                "TORN: sector {s} shows version {v} of a write that covered \
                                 sectors {mask:#010b} of block {block}, but sector {t} of it \
                                 shows version {u}: the write seen half applied",
                            ),
                            region: None,
                        });
                    }
                }
            }
        }
        // The tail, word by word.
        if end > fixed {
            let hi = tail.started_record.load(SeqCst);
            let mut x = at.max(fixed) & !7;
            while x < end {
                let (a, b) = (x.max(at), (x + 8).min(end));
                let bytes = &data[(a - at) as usize..(b - at) as usize];
                let w = (x - fixed) / 8;
                let Some(&lo) = w
                    .checked_sub(self.first_word)
                    .and_then(|i| self.word_lo.get(i as usize))
                else {
                    problems.push(Problem {
                        msg: format!("read reaches byte {b}, beyond any size the file had"),
                        region: None,
                    });
                    break;
                };
                // Zeros are what a read overlapping a truncation may show, whatever the path:
                // the kernel serves the rest of a short O_DIRECT read through the page cache
                // (generic_file_read_iter), up to the size it still believes in, and a page the
                // daemon no longer has reads as zeros.
                let zeros_ok = truncated;
                let mut bad = |msg: String| {
                    problems.push(Problem {
                        msg: format!("tail word at {x}: {msg}"),
                        region: Some((x, 8)),
                    })
                };
                if a == x && b == x + 8 {
                    let v = le64(bytes);
                    let record = v as u32;
                    if v == 0 {
                        if !zeros_ok {
                            bad(format!(
                                "ZEROS where records {lo}..={hi} were possible and no \
                                 truncation overlapped the read"
                            ));
                        }
                    } else if record == 0 || tail_word(x, record) != v {
                        bad(format!(
                            "GARBAGE: {v:#018x} is no record's word for this offset"
                        ));
                    } else if record < lo {
                        bad(format!(
                            "STALE: record {record}, but record {lo} covering it was appended \
                             completely before the read began"
                        ));
                    } else if record > hi {
                        bad(format!(
                            "record {record}, but no append above record {hi} had begun"
                        ));
                    }
                } else {
                    let from = (a - x) as usize;
                    let matches = |want: u64| {
                        let w = want.to_le_bytes();
                        bytes.iter().enumerate().all(|(i, c)| *c == w[from + i])
                    };
                    let ok = (zeros_ok && matches(0))
                        || (lo.max(1)..=hi).any(|r| matches(tail_word(x, r)));
                    if !ok {
                        bad(format!(
                            "bytes {a}..{b} ({bytes:02x?}) are none of records {lo}..={hi}"
                        ));
                    }
                }
                x += 8;
            }
        }
        problems
    }
}

// ---- the final comparison ----

/// Reads the whole file (through O_DIRECT with `direct`, else through the page cache) and
/// compares it with the model, which must be quiet (no write in flight).
fn verify_file(
    path: &Path,
    model: &SharedModel,
    tail: &TailModel,
    direct: bool,
) -> Result<(), String> {
    let size = tail.exact.lock().unwrap().size;
    let fixed = tail.fixed;
    let mut opts = OpenOptions::new();
    opts.read(true);
    if direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    let f = opts.open(path).map_err(|e| format!("open: {e}"))?;
    let mut buf = AlignedBuf::new((fixed + TAIL_CAP + BLOCK) as usize);
    let data = buf.get((fixed + TAIL_CAP + BLOCK) as usize);
    let mut n = 0;
    loop {
        let end = (n + READ_MAX as usize).min(data.len());
        let got = f
            .read_at(&mut data[n..end], n as u64)
            .map_err(|e| format!("read at {n}: {e}"))?;
        if got == 0 {
            break;
        }
        n += got;
    }
    let data = &data[..n];
    let mut problems = Vec::new();
    if n as u64 != size {
        problems.push(format!(
            "{n} bytes, but the model says {size} (the last append or truncation)"
        ));
    }
    for s in 0..model.sectors {
        let (c, st) = (
            model.completed(s).load(SeqCst),
            model.started(s).load(SeqCst),
        );
        if c != st {
            problems.push(format!(
                "sector {s}: version {st} was started but never completed"
            ));
            continue;
        }
        let bytes = &data[(s * SECTOR) as usize..((s + 1) * SECTOR).min(n as u64) as usize];
        if bytes.len() < SECTOR as usize {
            break;
        }
        match decode_sector(bytes, s) {
            Seen::Zeros if c == 0 => {}
            Seen::Version { version, .. } if version == c => {}
            Seen::Zeros => problems.push(format!(
                "sector {s} (byte {}) reads as zeros, expected version {c}",
                s * SECTOR
            )),
            Seen::Version { version, .. } => problems.push(format!(
                "sector {s} (byte {}): version {version}, expected {c}{}",
                s * SECTOR,
                if version < c { " (STALE)" } else { "" }
            )),
            Seen::Garbage(what) => problems.push(format!(
                "sector {s} (byte {}): GARBAGE: {what}, expected version {c}",
                s * SECTOR
            )),
        }
        if problems.len() >= 12 {
            break;
        }
    }
    let tail_end = (n as u64).min(size);
    for x in (fixed..tail_end).step_by(8) {
        if problems.len() >= 12 {
            break;
        }
        let record = tail.latest[((x - fixed) / 8) as usize].load(SeqCst);
        let got = le64(&data[x as usize..x as usize + 8]);
        if record == 0 || got != tail_word(x, record) {
            problems.push(format!(
                "tail word at {x}: {got:#018x}, expected record {record}'s ({:#018x})",
                tail_word(x, record)
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} difference(s) with the model (first ones):\n  {}",
            problems.len(),
            problems.join("\n  ")
        ))
    }
}
