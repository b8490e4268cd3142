//! Compaction through a real mount (docs/FORMAT.md, "Compaction"): files kept open are compacted
//! too, and a compaction never undoes a rename or an unlink made through the mount meanwhile.

mod common;

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::{Duration, Instant};

use common::{random_bytes, Mount, Rng};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// Creates (or empties) `path` for reading and writing.
fn create_rw(path: impl AsRef<std::path::Path>) -> std::fs::File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap()
}

/// Overwrites `rounds` random 64 KiB ranges of the file behind `f` (of `len` bytes) with fresh
/// random data, fsyncing after each, and keeps `model` in step.
fn overwrite_and_fsync(f: &std::fs::File, model: &mut [u8], rounds: usize, rng: &mut Rng) {
    for _ in 0..rounds {
        let off = rng.below((model.len() - 64 * KIB) as u64) as usize;
        let data = random_bytes(64 * KIB, rng.next());
        f.write_all_at(&data, off as u64).unwrap();
        model[off..off + data.len()].copy_from_slice(&data);
        f.sync_data().unwrap();
    }
}

#[test]
fn a_file_kept_open_is_compacted_after_fsyncs() {
    let m = Mount::new();
    let p = m.path("db");
    let mut model = random_bytes(4 * MIB, 1);
    let f = create_rw(&p);
    f.write_all_at(&model, 0).unwrap();
    f.sync_all().unwrap();
    let mut rng = Rng::new(7);
    // 12.8 MiB of overwrites of a 4 MiB file: without compaction the backing file would grow
    // past 40 MiB.
    let mut largest = 0;
    for _ in 0..8 {
        overwrite_and_fsync(&f, &mut model, 25, &mut rng);
        largest = largest.max(std::fs::metadata(m.backing("db")).unwrap().len());
        std::thread::sleep(Duration::from_millis(400));
    }
    // The flusher looks once a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    // Without compaction each batch would append about 2-5 MiB (64 KiB overlay pieces, chunks
    // rewritten whole once overlays cover half of them), 20-40 MiB in all. Open files are
    // compacted within 50 ms of an fsync that finds them due, and once a second: twice the
    // compacted size plus what lands while a compaction runs.
    let bound = (2 * model.len() + 16 * MIB) as u64;
    // Once quiet, the file is within twice its compacted size (random data: about the model's):
    // the overwrites since the last compaction (most of them overlay pieces, which count as
    // reclaimable) stay below half of it, or the next compaction takes them back.
    let settled = (2 * model.len() + MIB) as u64;
    let mut backing = std::fs::metadata(m.backing("db")).unwrap().len();
    while backing > settled && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        backing = std::fs::metadata(m.backing("db")).unwrap().len();
    }
    assert!(
        backing <= settled,
        "backing file of a 4 MiB file kept open: {backing} bytes 10 s after its last fsync \
         (bound {settled})"
    );
    assert!(
        largest <= bound,
        "backing file reached {largest} bytes while open (bound {bound})\n{}",
        m.log_text()
    );
    let mut got = vec![0u8; model.len()];
    f.read_exact_at(&mut got, 0).unwrap();
    assert!(got == model, "content after compactions of the open file");
    drop(f);
    assert!(m.log_text().contains("'db' (inode"), "{}", m.log_text());
    assert!(m.log_text().contains(": compacted"), "{}", m.log_text());
    assert!(std::fs::read(&p).unwrap() == model);
}

#[test]
fn a_file_renamed_while_open_keeps_every_write_through_compactions() {
    let mut m = Mount::new();
    let mut model = random_bytes(2 * MIB, 2);
    let f = create_rw(m.path("old"));
    f.write_all_at(&model, 0).unwrap();
    f.sync_all().unwrap();
    let mut rng = Rng::new(3);
    overwrite_and_fsync(&f, &mut model, 40, &mut rng);
    std::fs::rename(m.path("old"), m.path("new")).unwrap();
    // Compactions now happen (flusher, closes of a second handle) after the rename.
    for _ in 0..6 {
        overwrite_and_fsync(&f, &mut model, 20, &mut rng);
        let other = OpenOptions::new().write(true).open(m.path("new")).unwrap();
        drop(other);
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(f);
    m.remount();
    assert!(
        !m.path("old").exists(),
        "a compaction brought back the old name"
    );
    assert!(
        std::fs::read(m.path("new")).unwrap() == model,
        "the renamed file lost writes made after the rename"
    );
    assert!(m.log_text().contains(": compacted"), "{}", m.log_text());
}

#[test]
fn a_file_unlinked_while_open_is_not_brought_back_by_compaction() {
    let mut m = Mount::new();
    let mut model = random_bytes(2 * MIB, 4);
    let f = create_rw(m.path("gone"));
    f.write_all_at(&model, 0).unwrap();
    let mut rng = Rng::new(5);
    overwrite_and_fsync(&f, &mut model, 40, &mut rng);
    std::fs::remove_file(m.path("gone")).unwrap();
    overwrite_and_fsync(&f, &mut model, 40, &mut rng);
    std::thread::sleep(Duration::from_millis(1500));
    let mut got = vec![0u8; model.len()];
    f.read_exact_at(&mut got, 0).unwrap();
    assert!(
        got == model,
        "the unlinked open file reads what was written"
    );
    drop(f);
    m.remount();
    let names: Vec<_> = std::fs::read_dir(&m.src)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| *n != *deflatefs::source_lock::lock_file_name())
        .collect();
    assert!(names.is_empty(), "backing directory holds {names:?}");
    assert!(
        !m.log_text().contains("compaction failed"),
        "{}",
        m.log_text()
    );
}

#[test]
fn compaction_keeps_owner_mode_xattrs_mtime_and_inode_flags() {
    let m = Mount::new();
    let p = m.path("kept");
    let mut model = random_bytes(2 * MIB, 6);
    let f = create_rw(&p);
    f.write_all_at(&model, 0).unwrap();
    std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let (ok, _, err) = common::run_tool(
        "setfattr",
        &[
            OsStr::new("-n"),
            OsStr::new("user.note"),
            OsStr::new("-v"),
            OsStr::new("kept"),
            p.as_os_str(),
        ],
    );
    assert!(ok, "setfattr: {err}");
    // No dump, no atime: flags of the backing inode, which the rewritten file must get too.
    let (ok, _, err) = common::run_tool("chattr", &[OsStr::new("+dA"), p.as_os_str()]);
    assert!(ok, "chattr: {err}");
    let mut rng = Rng::new(9);
    overwrite_and_fsync(&f, &mut model, 60, &mut rng);
    let before = std::fs::metadata(&p).unwrap();
    drop(f);
    // Compacted by the flusher meanwhile or, handed over by the close, on the compactor.
    assert!(
        m.wait_for_log(": compacted", Duration::from_secs(20)),
        "{}",
        m.log_text()
    );
    assert!(m.log_text().contains("'kept' (inode"), "{}", m.log_text());
    let after = std::fs::metadata(&p).unwrap();
    assert_eq!((after.uid(), after.gid()), (1234, 5678));
    assert_eq!(after.mode() & 0o7777, 0o640);
    assert_eq!(after.mtime(), before.mtime());
    assert_eq!(after.mtime_nsec(), before.mtime_nsec());
    assert_eq!(
        after.ino(),
        before.ino(),
        "the inode number the mount shows"
    );
    let (ok, out, err) = common::run_tool(
        "getfattr",
        &[
            OsStr::new("--only-values"),
            OsStr::new("-n"),
            OsStr::new("user.note"),
            p.as_os_str(),
        ],
    );
    assert!(ok, "getfattr: {err}");
    assert_eq!(out, b"kept");
    for path in [&p, &m.backing("kept")] {
        let (ok, out, err) = common::run_tool("lsattr", &[path.as_os_str()]);
        assert!(ok, "lsattr: {err}");
        let flags = String::from_utf8(out).unwrap();
        let flags = flags.split_whitespace().next().unwrap();
        assert!(
            flags.contains('d') && flags.contains('A'),
            "{}: {flags}",
            path.display()
        );
    }
    assert!(std::fs::read(&p).unwrap() == model);
}

/// link(2) used to hold the directory's name lock while its lookup waited for the file's state
/// lock, which a compaction holds while it waits for the name lock: `ln` of a file being
/// compacted could hang the mount.
#[test]
fn hard_links_and_renames_while_an_open_file_is_compacted_never_hang() {
    let m = Mount::new();
    let mut model = random_bytes(2 * MIB, 8);
    let f = create_rw(m.path("hot"));
    f.write_all_at(&model, 0).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let linker = {
        let stop = stop.clone();
        let (hot, link, moved) = (m.path("hot"), m.path("link"), m.path("moved"));
        std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                std::fs::hard_link(&hot, &link).unwrap();
                std::fs::metadata(&link).unwrap();
                std::fs::remove_file(&link).unwrap();
                std::fs::rename(&hot, &moved).unwrap();
                std::fs::rename(&moved, &hot).unwrap();
                rounds += 1;
            }
            rounds
        })
    };
    let mut rng = Rng::new(11);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        overwrite_and_fsync(&f, &mut model, 10, &mut rng);
        // A close of a second handle (the linker moves the name back and forth).
        let second = OpenOptions::new()
            .write(true)
            .open(m.path("hot"))
            .or_else(|_| OpenOptions::new().write(true).open(m.path("moved")));
        drop(second);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let rounds = linker.join().unwrap();
    drop(f);
    assert!(rounds > 0);
    assert!(std::fs::read(m.path("hot")).unwrap() == model);
}

/// A close that leaves a file due for compaction hands the compaction to the background: the
/// close returns at once (here while every compaction is held back 3 s by a test hook), the
/// file stays readable and writable meanwhile (an open shares the state the compaction works
/// on), and the compaction then runs and keeps every write.
#[test]
fn close_hands_compaction_to_the_background_and_never_waits_for_it() {
    let mut m = Mount::unmounted(&[], false);
    m.daemon_env
        .push(("DEFLATEFS_TEST_COMPACTION_DELAY_MS".into(), "3000".into()));
    m.mount();
    let p = m.path("stale");
    let mut model = random_bytes(2 * MIB, 11);
    let f = create_rw(&p);
    f.write_all_at(&model, 0).unwrap();
    f.sync_data().unwrap();
    drop(f);
    // Three rewrites of the whole file, each closed: mostly stale data, due for compaction.
    for round in 0..3u64 {
        let data = random_bytes(2 * MIB, 100 + round);
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&data, 0).unwrap();
        model.copy_from_slice(&data);
        let started = Instant::now();
        drop(f);
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "close waited {:?} (compaction held back 3 s)",
            started.elapsed()
        );
    }
    assert!(
        !m.log_text().contains(": compacted"),
        "compacted before the hook's delay: {}",
        m.log_text()
    );
    // Meanwhile the file is served: read it, and write through a new open.
    common::assert_bytes_eq(
        &std::fs::read(&p).unwrap(),
        &model,
        "while compaction pending",
    );
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    let tail = random_bytes(64 * KIB, 7);
    f.write_all_at(&tail, (MIB) as u64).unwrap();
    model[MIB..MIB + tail.len()].copy_from_slice(&tail);
    drop(f);
    assert!(
        m.wait_for_log(": compacted", Duration::from_secs(30)),
        "{}",
        m.log_text()
    );
    common::assert_bytes_eq(&std::fs::read(&p).unwrap(), &model, "after compaction");
    m.remount();
    common::assert_bytes_eq(&std::fs::read(&p).unwrap(), &model, "after remount");
    assert!(m.warn_and_error_lines().is_empty(), "{}", m.log_text());
}
