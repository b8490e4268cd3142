//! Recovery after a simulated power loss, at the container level: bytes written after the last
//! fdatasync survive only in part (any subset of 4 KiB pages, and any length), and
//! `Container::open_with(.., OpenMode::Recover)` must still open the container as one of its
//! commits that is at least as new as the last one made durable, with every chunk readable.

mod container_common;

use container_common::{read_all, rw, Scratch, Writer};
use deflatefs::container::{Container, OpenMode};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One committed state: its content and where its commit ends.
struct State {
    content: Vec<u8>,
    end: u64,
}

fn text(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    (0..len)
        .map(|i| {
            if i % 61 == 60 {
                b'\n'
            } else {
                b"abcdefgh "[r.below(9) as usize]
            }
        })
        .collect()
}

/// Builds a container by random operations with commits and occasional fdatasyncs; returns
/// every committed state and the length known durable at the end.
fn build(s: &Scratch, seed: u64, ops: usize) -> (Vec<State>, u64) {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut w = Writer::new(s.create("f", 12));
    let mut states = vec![State {
        content: Vec::new(),
        end: w.c.container_len(),
    }];
    for i in 0..ops {
        match r.below(6) {
            0 | 1 => w.append(&text(1 + r.below(9000) as usize, seed + i as u64)),
            2 => {
                let off = r.below(w.model.len() as u64 + 5000) as usize;
                w.write_at(off, &text(1 + r.below(6000) as usize, seed ^ i as u64));
            }
            3 => {
                let size = r.below(w.model.len() as u64 + 1) as usize;
                w.truncate(size);
            }
            _ => {
                // Many small appends: drives the checkpoint policy (and its sync).
                for k in 0..r.below(300) {
                    w.append(&text(1 + r.below(40) as usize, k));
                    w.c.commit().unwrap();
                    states.push(State {
                        content: w.model.clone(),
                        end: w.c.container_len(),
                    });
                }
            }
        }
        w.c.commit().unwrap();
        states.push(State {
            content: w.model.clone(),
            end: w.c.container_len(),
        });
        if r.below(5) == 0 {
            w.c.sync_data().unwrap();
        }
    }
    w.check();
    (states, w.c.synced_len())
}

/// The container bytes after a power cut: `synced` bytes intact, the rest cut at a random
/// length, and each 4 KiB page (or the part of it past `synced`) kept or zeroed at random.
fn cut(bytes: &[u8], synced: u64, r: &mut Rng) -> Vec<u8> {
    let synced = synced as usize;
    let len = synced + r.below((bytes.len() - synced) as u64 + 1) as usize;
    let mut img = bytes[..len].to_vec();
    let keep_percent = [0, 30, 70, 95][r.below(4) as usize];
    let mut page = synced / 4096 * 4096;
    while page < len {
        let start = page.max(synced);
        let end = (page + 4096).min(len);
        if r.below(100) >= keep_percent {
            img[start..end].fill(0);
        }
        page += 4096;
    }
    img
}

fn check_seed(seed: u64, ops: usize, trials: usize) -> (usize, usize) {
    let s = Scratch::new();
    let (states, synced) = build(&s, seed, ops);
    let bytes = std::fs::read(s.path("f")).unwrap();
    // The newest state made durable.
    let floor = states
        .iter()
        .rposition(|st| st.end <= synced)
        .expect("the first commit is always there");
    let mut r = Rng(seed ^ 0xdead_beef_u64 | 1);
    let mut rolled_back = 0;
    for t in 0..trials {
        let img = cut(&bytes, synced, &mut r);
        std::fs::write(s.path("g"), &img).unwrap();
        let c = Container::open_with(rw(&s.path("g")), OpenMode::Recover).unwrap_or_else(|e| {
            panic!(
                "seed {seed} trial {t}: recovery failed: {e} (synced {synced} of {})",
                bytes.len()
            )
        });
        let content = read_all(&c);
        let end = c.container_len();
        // By content: a shrink commits an intermediate state of the same content first.
        let found = states
            .iter()
            .rposition(|st| st.content == content)
            .unwrap_or_else(|| {
                panic!(
                    "seed {seed} trial {t}: recovered content (size {}, commit ending at {end}) \
                     is no committed state",
                    content.len()
                )
            });
        assert!(
            found >= floor,
            "seed {seed} trial {t}: recovered state {found} is older than the durable state {floor}"
        );
        if found + 1 < states.len() {
            rolled_back += 1;
        }
    }
    (trials, rolled_back)
}

#[test]
fn recovery_after_a_power_cut_finds_a_durable_or_newer_commit() {
    let seeds: u64 = std::env::var("DEFLATEFS_RECOVER_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let mut total = 0;
    let mut rolled = 0;
    for seed in 1..=seeds {
        let (t, r) = check_seed(seed, 30, 40);
        total += t;
        rolled += r;
    }
    // The cuts must actually hit unsynced commits sometimes, or the test proves nothing.
    assert!(
        rolled > total / 20,
        "only {rolled} of {total} cuts lost a commit"
    );
    eprintln!("{total} simulated power cuts, {rolled} rolled back to an older commit");
}

#[test]
fn strict_open_of_a_damaged_unsynced_tail_fails_but_recover_rolls_back() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 12));
    w.append(&text(10_000, 1));
    w.c.commit().unwrap();
    w.c.sync_data().unwrap();
    let durable = w.model.clone();
    let synced = w.c.synced_len();
    w.append(&text(9_000, 2));
    w.c.commit().unwrap();
    drop(w);
    let mut bytes = std::fs::read(s.path("f")).unwrap();
    // Lose the page holding the first new data member, keep the commit.
    let at = synced as usize + 100;
    bytes[at..at + 200].fill(0);
    std::fs::write(s.path("f"), &bytes).unwrap();
    // Strict opens it (structure intact); the damage shows only when the chunk is read.
    let strict = Container::open(rw(&s.path("f"))).unwrap();
    assert_eq!(strict.size(), 19_000);
    let c = Container::open_with(rw(&s.path("f")), OpenMode::Recover).unwrap();
    assert_eq!(read_all(&c), durable);
    assert!(c.recovery_note().unwrap().contains("recovered to commit"));
}
