//! A long-running mutation fuzzer for every parser of the backing format: `Container::probe`,
//! `read_logical_size`, `open` in both modes followed by decoding every piece, and fsck's member
//! scan (which reads arbitrary bytes by design).
//!
//! cargo-fuzz needs a nightly toolchain, which this project does not use, so this is an ordinary
//! test: it starts from the seed corpus in `tests/fuzz_corpus/` plus containers built here,
//! applies random mutations (bit flips, interesting bytes, truncations, splices, insertions,
//! deletions, duplications, and field changes with their crc32 fixed up so the parsers go deep),
//! and keeps every input that reaches an outcome not seen before (a coarse coverage signal).
//! For every execution it checks that nothing panics, that no execution takes more than 10 s
//! (a watchdog saves the input and aborts), and that the memory allocated at once stays within
//! 64 MiB plus 16 times the input (a counting allocator). A failing input is saved under
//! `target/fuzz-failures/` (or `$DEFLATEFS_FUZZ_OUT`).
//!
//! CI runs it for 20 s; `DEFLATEFS_FUZZ_SECS=600` is the acceptance run, `DEFLATEFS_FUZZ_SEED`
//! another sequence. It prints the number of executions.

mod container_common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use container_common::{rw, Scratch, Writer};
use deflatefs::container::{decode_piece, AuxRecord, Container, ContainerError, OpenMode};

// ---- memory accounting ----

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

// ---- randomness ----

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---- seeds ----

fn text(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    (0..len)
        .map(|i| {
            if i % 53 == 52 {
                b'\n'
            } else {
                b"abcdefgh  ."[r.below(11)]
            }
        })
        .collect()
}

/// Real containers of several shapes.
fn built_seeds() -> Vec<Vec<u8>> {
    let s = Scratch::new();
    let mut out = Vec::new();
    let mut take = |name: &str| out.push(std::fs::read(s.path(name)).unwrap());
    // Appends with commits, then overwrites, a truncation, a hole, an aux member.
    let mut w = Writer::new(s.create("a", 12));
    w.append(&text(5000, 1));
    w.c.commit().unwrap();
    w.append(b"tail line\n");
    w.c.commit().unwrap();
    w.write_at(7000, &text(3000, 2));
    w.c.append_hole(5).unwrap();
    w.c.commit().unwrap();
    w.truncate(9500);
    w.c.set_aux(Some(AuxRecord {
        sha256_len: 9500,
        sha256_state: [7; 32],
        sha256_tail: [0; 64],
    }));
    w.c.commit().unwrap();
    drop(w);
    take("a");
    // Many small commits: a checkpoint in between.
    let mut w = Writer::new(s.create("b", 12));
    for i in 0..40 {
        w.append(&text(30, i));
        w.c.commit().unwrap();
    }
    drop(w);
    take("b");
    // Incompressible data in bigger chunks.
    let mut w = Writer::new(s.create("c", 14));
    let mut r = Rng(99);
    let noise: Vec<u8> = (0..40_000).map(|_| r.next() as u8).collect();
    w.append(&noise);
    w.c.commit().unwrap();
    drop(w);
    take("c");
    // An empty container and an interrupted creation.
    let _ = s.create("d", 17);
    take("d");
    let d = out.last().unwrap().clone();
    out.push(d[..70].to_vec());
    out
}

fn load_corpus(dir: &Path) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if let Ok(b) = std::fs::read(&p) {
                v.push(b);
            }
        }
    }
    v
}

// ---- mutations ----

const INTERESTING: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, 0xfe, 0x1f, 0x8b];

/// Positions of members (by their gzip id and 'D' subfield).
fn member_starts(b: &[u8]) -> Vec<usize> {
    (0..b.len().saturating_sub(16))
        .filter(|&i| b[i] == 0x1f && b[i + 1] == 0x8b && b[i + 12] == b'D')
        .collect()
}

/// Changes a field of a commit, index or data member and fixes its crc32.
fn mutate_structured(b: &mut [u8], r: &mut Rng) {
    let starts = member_starts(b);
    if starts.is_empty() {
        return;
    }
    let at = starts[r.below(starts.len())];
    let kind = b[at + 13];
    let plen = u16::from_le_bytes([b[at + 14], b[at + 15]]) as usize;
    let p = at + 16;
    let field = |r: &mut Rng, b: &mut [u8], lo: usize, hi: usize| {
        if hi > lo && hi <= b.len() {
            let i = lo + r.below(hi - lo);
            b[i] = if r.below(2) == 0 {
                INTERESTING[r.below(INTERESTING.len())]
            } else {
                r.next() as u8
            };
        }
    };
    match kind {
        b'c' if p + 68 <= b.len() => {
            field(r, b, p + 4, p + 64);
            let crc = libdeflater::crc32(&b[p..p + 64]);
            b[p + 64..p + 68].copy_from_slice(&crc.to_le_bytes());
        }
        b'i' if p + plen <= b.len() && plen >= 8 => {
            field(r, b, p, p + plen - 4);
            let crc = libdeflater::crc32(&b[p..p + plen - 4]);
            b[p + plen - 4..p + plen].copy_from_slice(&crc.to_le_bytes());
        }
        b'd' if p + 16 <= b.len() => {
            field(r, b, p, p + 12);
            let crc = libdeflater::crc32(&b[p..p + 12]);
            b[p + 12..p + 16].copy_from_slice(&crc.to_le_bytes());
        }
        _ => field(r, b, at, (at + 40).min(b.len())),
    }
}

fn mutate(input: &[u8], corpus: &[Vec<u8>], r: &mut Rng) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..1 + r.below(3) {
        if b.is_empty() {
            b = (0..r.below(200)).map(|_| r.next() as u8).collect();
            continue;
        }
        match r.below(9) {
            0 => {
                for _ in 0..1 + r.below(8) {
                    let i = r.below(b.len());
                    b[i] ^= 1 << r.below(8);
                }
            }
            1 => {
                let i = r.below(b.len());
                b[i] = INTERESTING[r.below(INTERESTING.len())];
            }
            2 => {
                let n = r.below(b.len() + 1);
                b.truncate(n);
            }
            3 => {
                let other = &corpus[r.below(corpus.len())];
                if !other.is_empty() {
                    let a = r.below(other.len());
                    let n = r.below(other.len() - a + 1).min(4096);
                    let at = r.below(b.len());
                    let end = (at + n).min(b.len());
                    b[at..end].copy_from_slice(&other[a..a + (end - at)]);
                }
            }
            4 => {
                let at = r.below(b.len() + 1);
                let n = 1 + r.below(64);
                let ins: Vec<u8> = (0..n).map(|_| r.next() as u8).collect();
                b.splice(at..at, ins);
            }
            5 => {
                let at = r.below(b.len());
                let n = r.below(b.len() - at + 1).min(512);
                b.drain(at..at + n);
            }
            6 => {
                let a = r.below(b.len());
                let n = r.below(b.len() - a + 1).min(1024);
                let piece = b[a..a + n].to_vec();
                let at = r.below(b.len() + 1);
                b.splice(at..at, piece);
            }
            7 | 8 => mutate_structured(&mut b, r),
            _ => unreachable!(),
        }
    }
    b
}

// ---- execution ----

/// Runs every parser on `bytes` (written to `path`); returns a coarse description of the outcome.
fn exercise(bytes: &[u8], path: &Path) -> String {
    std::fs::write(path, bytes).unwrap();
    let kind = |r: &Result<Container, ContainerError>| match r {
        Ok(c) => format!(
            "ok{}:{}",
            c.last_seq().min(3),
            c.index().chunk_count().min(3)
        ),
        Err(ContainerError::Corrupt { what, .. }) => what
            .split(|c: char| c.is_ascii_digit())
            .next()
            .unwrap_or("")
            .to_string(),
        Err(e) => format!("{e}"),
    };
    let f = rw(path);
    let probe = format!("{:?}", Container::probe(&f).map_err(|_| ()));
    let size = Container::read_logical_size(&f).is_ok();
    let strict = Container::open_with(rw(path), OpenMode::Strict);
    let recover = Container::open_with(rw(path), OpenMode::Recover);
    let outcome = format!("{probe}|{size}|{}|{}", kind(&strict), kind(&recover));
    let mut d = libdeflater::Decompressor::new();
    for c in [strict, recover].into_iter().flatten() {
        let chunks: Vec<u64> = c.index().data_chunks().take(64).collect();
        for chunk in chunks {
            for e in c.index().pieces(chunk) {
                assert!(e.member_offset + e.stored_len as u64 <= bytes.len() as u64);
                let mut m = vec![0u8; e.stored_len as usize];
                if c.read_member(e, &mut m).is_ok() {
                    let mut out = vec![0u8; e.logical_len as usize];
                    let _ = decode_piece(&m, e, &mut d, &mut out);
                }
            }
        }
        let _ = c.stale_bytes();
    }
    let scanned = deflatefs::fsck::scan_for_fuzzing(bytes);
    format!("{outcome}|{}", scanned.min(4))
}

fn save(dir: &Path, what: &str, bytes: &[u8]) -> PathBuf {
    let _ = std::fs::create_dir_all(dir);
    let p = dir.join(format!(
        "{what}-{:016x}.bin",
        libdeflater::crc32(bytes) as u64 | ((bytes.len() as u64) << 32)
    ));
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn the_parsers_survive_mutated_containers() {
    let secs = env_u64("DEFLATEFS_FUZZ_SECS", 20);
    let seed = env_u64("DEFLATEFS_FUZZ_SEED", 0x5eed);
    let out_dir = std::env::var("DEFLATEFS_FUZZ_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_TARGET_TMPDIR")).join("../fuzz-failures"));
    let corpus_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus");
    let mut corpus = load_corpus(&corpus_dir);
    let from_disk = corpus.len();
    corpus.extend(built_seeds());
    if let Ok(dir) = std::env::var("DEFLATEFS_FUZZ_WRITE_SEEDS") {
        // Refreshes the checked-in seed corpus from the built seeds.
        for (i, b) in built_seeds().iter().enumerate() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(Path::new(&dir).join(format!("seed-{i}.bin")), b).unwrap();
        }
    }
    let scratch = Scratch::new();
    let path = scratch.path("input");
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut seen: HashSet<String> = HashSet::new();
    for b in corpus.clone() {
        seen.insert(exercise(&b, &path));
    }

    // The watchdog: an execution running for more than 10 s is a hang.
    let current: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
    let started_exec = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    {
        let (current, started_exec, done, out_dir) = (
            current.clone(),
            started_exec.clone(),
            done.clone(),
            out_dir.clone(),
        );
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            if done.load(Ordering::Relaxed) == 1 {
                return;
            }
            let s = started_exec.load(Ordering::Relaxed);
            if s > 0 && (t0.elapsed().as_millis() as u64).saturating_sub(s) > 10_000 {
                let bytes = current.lock().unwrap().clone();
                let p = save(&out_dir, "hang", &bytes);
                eprintln!(
                    "fuzz: an execution ran for more than 10 s: input saved to {}",
                    p.display()
                );
                std::process::abort();
            }
        });
    }

    let deadline = t0 + Duration::from_secs(secs);
    let mut execs = 0u64;
    let mut peak_seen = 0usize;
    while Instant::now() < deadline {
        let base = &corpus[r.below(corpus.len())];
        let input = mutate(base, &corpus, &mut r);
        *current.lock().unwrap() = input.clone();
        let before = CURRENT.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        started_exec.store(t0.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
        let result = std::panic::catch_unwind(|| exercise(&input, &path));
        started_exec.store(0, Ordering::Relaxed);
        let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
        peak_seen = peak_seen.max(peak);
        execs += 1;
        match result {
            Err(_) => {
                let p = save(&out_dir, "panic", &input);
                panic!("a parser panicked on the input saved to {}", p.display());
            }
            Ok(outcome) => {
                let limit = (64 << 20) + 16 * input.len();
                if peak > limit {
                    let p = save(&out_dir, "memory", &input);
                    panic!(
                        "{peak} bytes allocated at once for a {}-byte input (saved to {})",
                        input.len(),
                        p.display()
                    );
                }
                if seen.insert(outcome) && corpus.len() < 5000 && input.len() < 256 << 10 {
                    corpus.push(input);
                }
            }
        }
    }
    done.store(1, Ordering::Relaxed);
    eprintln!(
        "fuzz: {execs} executions in {secs} s (seed {seed:#x}): no panic, hang or excessive \
         allocation (largest {} KiB); {} distinct outcomes, corpus {} ({} from tests/fuzz_corpus)",
        peak_seen >> 10,
        seen.len(),
        corpus.len(),
        from_disk
    );
    assert!(execs > 0);
}
