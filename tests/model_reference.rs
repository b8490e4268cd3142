//! Reference-model test: random sequences of file operations are applied both to a deflatefs
//! mount (chunk=4k, so writes, truncations and holes cross chunk boundaries) and to a plain
//! directory on the local disk, and after every step the two must agree on every name's
//! existence, content, size, mode and link count, and on every operation's result (errno).
//! Needs root and /dev/fuse.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use common::*;

const NAMES: &[&str] = &["a", "b", "c"];
const SLOTS: usize = 3;
const CHUNK: u64 = 4096;

#[derive(Debug, Clone)]
enum Data {
    /// Compressible text.
    Text(u64),
    /// Incompressible bytes.
    Random(u64),
    /// Zeros (may be stored as a hole).
    Zeros,
}

#[derive(Debug, Clone)]
enum Op {
    Open {
        slot: usize,
        name: usize,
        create: bool,
        trunc: bool,
        append: bool,
    },
    Write {
        slot: usize,
        offset: u64,
        len: usize,
        data: Data,
    },
    Truncate {
        slot: usize,
        size: u64,
    },
    TruncatePath {
        name: usize,
        size: u64,
    },
    Read {
        slot: usize,
        offset: u64,
        len: usize,
    },
    Rename {
        from: usize,
        to: usize,
    },
    Link {
        from: usize,
        to: usize,
    },
    Unlink {
        name: usize,
    },
    Chmod {
        name: usize,
        mode: u32,
    },
    Fsync {
        slot: usize,
    },
    Close {
        slot: usize,
    },
    Remount,
}

/// Offsets concentrated around chunk boundaries and beyond the end of small files.
fn offset_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..5 * CHUNK,
        (0u64..8, -3i64..4).prop_map(|(c, d)| (c * CHUNK).saturating_add_signed(d)),
        5 * CHUNK..12 * CHUNK,
    ]
}

fn len_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..64,
        64usize..3 * CHUNK as usize,
        Just(CHUNK as usize),
        Just(2 * CHUNK as usize + 1),
    ]
}

fn data_strategy() -> impl Strategy<Value = Data> {
    prop_oneof![
        3 => any::<u64>().prop_map(Data::Text),
        2 => any::<u64>().prop_map(Data::Random),
        1 => Just(Data::Zeros),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    let name = 0..NAMES.len();
    prop_oneof![
        4 => (slot.clone(), name.clone(), prop::bool::weighted(0.8), prop::bool::weighted(0.15),
              prop::bool::weighted(0.15))
            .prop_map(|(slot, name, create, trunc, append)| Op::Open { slot, name, create, trunc, append }),
        8 => (slot.clone(), offset_strategy(), len_strategy(), data_strategy())
            .prop_map(|(slot, offset, len, data)| Op::Write { slot, offset, len, data }),
        2 => (slot.clone(), offset_strategy()).prop_map(|(slot, size)| Op::Truncate { slot, size }),
        1 => (name.clone(), offset_strategy()).prop_map(|(name, size)| Op::TruncatePath { name, size }),
        3 => (slot.clone(), offset_strategy(), len_strategy())
            .prop_map(|(slot, offset, len)| Op::Read { slot, offset, len }),
        2 => (name.clone(), name.clone()).prop_map(|(from, to)| Op::Rename { from, to }),
        2 => (name.clone(), name.clone()).prop_map(|(from, to)| Op::Link { from, to }),
        2 => name.clone().prop_map(|name| Op::Unlink { name }),
        1 => (name.clone(), prop::sample::select(vec![0o600u32, 0o644, 0o755, 0o640, 0o4711]))
            .prop_map(|(name, mode)| Op::Chmod { name, mode }),
        2 => slot.clone().prop_map(|slot| Op::Fsync { slot }),
        2 => slot.prop_map(|slot| Op::Close { slot }),
        1 => Just(Op::Remount),
    ]
}

fn bytes_of(data: &Data, len: usize) -> Vec<u8> {
    match data {
        Data::Text(seed) => varied_text(len, *seed),
        Data::Random(seed) => random_bytes(len, *seed),
        Data::Zeros => vec![0; len],
    }
}

/// The outcome of one operation, compared between the two sides.
fn outcome<T>(r: &io::Result<T>) -> Result<(), i32> {
    match r {
        Ok(_) => Ok(()),
        Err(e) => Err(errno_of(e)),
    }
}

/// One side of the comparison: a directory and the descriptors open in it.
struct Side {
    root: PathBuf,
    slots: Vec<Option<File>>,
}

impl Side {
    fn path(&self, name: usize) -> PathBuf {
        self.root.join(NAMES[name])
    }

    /// Applies `op`; returns its outcome and, for reads, the bytes read.
    fn apply(&mut self, op: &Op) -> (Result<(), i32>, Option<Vec<u8>>) {
        match op {
            Op::Open {
                slot,
                name,
                create,
                trunc,
                append,
            } => {
                self.slots[*slot] = None;
                let r = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(*create)
                    .truncate(*trunc)
                    .append(*append)
                    .mode(0o644)
                    .open(self.path(*name));
                let o = outcome(&r);
                self.slots[*slot] = r.ok();
                (o, None)
            }
            Op::Write {
                slot,
                offset,
                len,
                data,
            } => match &self.slots[*slot] {
                Some(f) => (
                    outcome(&f.write_all_at(&bytes_of(data, *len), *offset)),
                    None,
                ),
                None => (Ok(()), None),
            },
            Op::Truncate { slot, size } => match &self.slots[*slot] {
                Some(f) => (outcome(&f.set_len(*size)), None),
                None => (Ok(()), None),
            },
            Op::TruncatePath { name, size } => {
                let c = cpath(&self.path(*name));
                let r = if unsafe { libc::truncate(c.as_ptr(), *size as libc::off_t) } == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                };
                (outcome(&r), None)
            }
            Op::Read { slot, offset, len } => match &self.slots[*slot] {
                Some(f) => {
                    let mut buf = vec![0u8; *len];
                    let mut done = 0;
                    let r = loop {
                        if done == *len {
                            break Ok(());
                        }
                        match f.read_at(&mut buf[done..], *offset + done as u64) {
                            Ok(0) => break Ok(()),
                            Ok(n) => done += n,
                            Err(e) => break Err(e),
                        }
                    };
                    buf.truncate(done);
                    (outcome(&r), Some(buf))
                }
                None => (Ok(()), None),
            },
            Op::Rename { from, to } => {
                (outcome(&fs::rename(self.path(*from), self.path(*to))), None)
            }
            Op::Link { from, to } => (
                outcome(&fs::hard_link(self.path(*from), self.path(*to))),
                None,
            ),
            Op::Unlink { name } => (outcome(&fs::remove_file(self.path(*name))), None),
            Op::Chmod { name, mode } => (
                outcome(&fs::set_permissions(
                    self.path(*name),
                    fs::Permissions::from_mode(*mode),
                )),
                None,
            ),
            Op::Fsync { slot } => match &self.slots[*slot] {
                Some(f) => (outcome(&f.sync_all()), None),
                None => (Ok(()), None),
            },
            Op::Close { slot } => {
                self.slots[*slot] = None;
                (Ok(()), None)
            }
            Op::Remount => {
                for s in self.slots.iter_mut() {
                    *s = None;
                }
                (Ok(()), None)
            }
        }
    }

    /// What every name looks like: None if absent, else (content, size, mode, nlink).
    fn snapshot(&self, name: usize) -> Result<Option<Snapshot>, String> {
        let p = self.path(name);
        match lstat(&p) {
            Err(e) if errno_of(&e) == libc::ENOENT => Ok(None),
            Err(e) => Err(format!("lstat {}: {e}", p.display())),
            Ok(st) => {
                let content = fs::read(&p).map_err(|e| format!("read {}: {e}", p.display()))?;
                Ok(Some((content, st.st_size, st.st_mode, st.st_nlink)))
            }
        }
    }
}

/// Content, size, mode and link count of one name.
type Snapshot = (Vec<u8>, i64, u32, u64);

fn describe(v: &Option<Snapshot>) -> String {
    match v {
        None => "absent".into(),
        Some((c, size, mode, nlink)) => format!(
            "{} bytes read, st_size {size}, mode {mode:o}, nlink {nlink}",
            c.len()
        ),
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

fn run_case(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut m = Mount::with_opts(&["chunk=4k"]);
    let reference_dir = tempfile::Builder::new()
        .prefix("deflatefs-ref-")
        .tempdir()
        .unwrap();
    let mut real = Side {
        root: m.mnt.clone(),
        slots: (0..SLOTS).map(|_| None).collect(),
    };
    let mut reference = Side {
        root: reference_dir.path().to_path_buf(),
        slots: (0..SLOTS).map(|_| None).collect(),
    };
    for (step, op) in ops.iter().enumerate() {
        let (got, got_read) = real.apply(op);
        let (want, want_read) = reference.apply(op);
        if matches!(op, Op::Remount) {
            m.remount();
        }
        prop_assert_eq!(
            got,
            want,
            "step {}: {:?}: deflatefs gave {:?}, the local disk {:?} (errno)",
            step,
            op,
            got.err().map(errno_name),
            want.err().map(errno_name)
        );
        if let (Some(g), Some(w)) = (&got_read, &want_read) {
            prop_assert!(
                g == w,
                "step {}: {:?}: read {} bytes, expected {} bytes, first difference at {}",
                step,
                op,
                g.len(),
                w.len(),
                first_difference(g, w)
            );
        }
        for (name, label) in NAMES.iter().enumerate() {
            let g = real.snapshot(name).map_err(TestCaseError::fail)?;
            let w = reference.snapshot(name).map_err(TestCaseError::fail)?;
            if g != w {
                let detail = match (&g, &w) {
                    (Some((gc, ..)), Some((wc, ..))) if gc != wc => format!(
                        "; content first differs at byte {}",
                        first_difference(gc, wc)
                    ),
                    _ => String::new(),
                };
                return Err(TestCaseError::fail(format!(
                    "step {step}: after {op:?}, name {:?}: deflatefs has {}, the local disk has {}{detail}",
                    label,
                    describe(&g),
                    describe(&w),
                )));
            }
        }
    }
    // Everything still holds after a final remount.
    let _ = real.apply(&Op::Remount);
    let _ = reference.apply(&Op::Remount);
    m.remount();
    for (name, label) in NAMES.iter().enumerate() {
        let g = real.snapshot(name).map_err(TestCaseError::fail)?;
        let w = reference.snapshot(name).map_err(TestCaseError::fail)?;
        prop_assert!(
            g == w,
            "after the final remount, name {:?}: deflatefs has {}, the local disk has {}",
            label,
            describe(&g),
            describe(&w)
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        // Regressions would be written next to the tests; the failing sequence is printed instead.
        failure_persistence: None,
        max_shrink_iters: 300,
        max_shrink_time: 90_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn mount_matches_a_local_directory_after_every_operation(ops in prop::collection::vec(op_strategy(), 1..40)) {
        require_root_and_fuse();
        run_case(&ops)?;
    }
}
