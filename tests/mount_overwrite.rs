//! Small overwrites of stored data (issue 16, databases): a write inside what a chunk already
//! stores goes in as an overlay piece holding just the changed bytes, not as a rewrite of the
//! chunk; the pieces of a chunk are folded back into one by a rewrite once there are too many.
//! Every test reads the file back against a model, also after a remount and after the daemon
//! was killed, and checks the container with `deflatefs fsck`. Needs root and /dev/fuse.

mod common;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::*;

const KIB: usize = 1024;
const CHUNK: usize = 128 * KIB;

fn backing_len(m: &Mount, name: &str) -> u64 {
    std::fs::metadata(m.backing(name)).unwrap().len()
}

/// The data members of a container: (logical offset, RESET flag, member offset).
fn data_members(container: &[u8]) -> Vec<(u64, bool)> {
    scan_members(container)
        .into_iter()
        .filter(|m| m.kind == b'd' && m.payload_len == 16)
        .map(|m| {
            let p = &container[m.offset + 16..m.offset + 32];
            let off = u64::from_le_bytes(p[0..8].try_into().unwrap());
            let flags = u32::from_le_bytes(p[8..12].try_into().unwrap());
            (off, flags & 1 != 0)
        })
        .collect()
}

/// `deflatefs fsck` of the backing directory, unmounted for it, finds nothing wrong (`what`
/// names the step); the mount is back afterwards.
fn fsck_clean(m: &mut Mount, what: &str) {
    assert!(m.unmount().success());
    let dir = m.backing("");
    let (code, out) = run_deflatefs(&["fsck", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "fsck {what}: {out}");
    m.mount();
}

fn write_file(path: &Path, data: &[u8]) {
    let f = File::create(path).unwrap();
    f.write_all_at(data, 0).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn small_overwrite_is_stored_as_an_overlay_piece() {
    require_root_and_fuse();
    let mut m = Mount::new();
    // Incompressible, so a rewrite of the chunk would cost the backing file 128 KiB.
    let mut model = random_bytes(1 << 20, 1);
    write_file(&m.path("f"), &model);
    let before = backing_len(&m, "f");

    let f = OpenOptions::new().write(true).open(m.path("f")).unwrap();
    let page = random_bytes(4 * KIB, 2);
    let at = 3 * CHUNK + 5000;
    f.write_all_at(&page, at as u64).unwrap();
    f.sync_data().unwrap();
    model[at..at + page.len()].copy_from_slice(&page);
    let grown = backing_len(&m, "f") - before;
    // The page stored, its member framing, one index member, one commit.
    assert!(
        (4 * KIB as u64..6 * KIB as u64).contains(&grown),
        "a 4 KiB overwrite grew the backing file by {grown} bytes (a rewrite of the chunk would \
         be about 128 KiB)"
    );
    let container = std::fs::read(m.backing("f")).unwrap();
    let last = *data_members(&container).last().unwrap();
    assert_eq!(
        last,
        ((3 * CHUNK + 5000) as u64, false),
        "the last data member should be the overlay piece at the page's offset, without RESET"
    );
    drop(f);
    assert_bytes_eq(
        &std::fs::read(m.path("f")).unwrap(),
        &model,
        "after overwrite",
    );
    m.remount();
    assert_bytes_eq(
        &std::fs::read(m.path("f")).unwrap(),
        &model,
        "after remount",
    );
    fsck_clean(&mut m, "f");
}

#[test]
fn overlay_pieces_fold_into_one_rewrite_when_a_chunk_holds_too_many() {
    require_root_and_fuse();
    let mut m = Mount::new();
    let mut model = random_bytes(2 * CHUNK, 3);
    write_file(&m.path("f"), &model);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("f"))
        .unwrap();
    // 40 fsync'd 1 KiB overwrites of the first chunk: at most 16 pieces per chunk, so at least
    // two rewrites fold them.
    let mut rng = Rng::new(4);
    for i in 0..40u64 {
        let at = rng.below((CHUNK - KIB) as u64) as usize;
        let bytes = random_bytes(KIB, 100 + i);
        f.write_all_at(&bytes, at as u64).unwrap();
        f.sync_data().unwrap();
        model[at..at + KIB].copy_from_slice(&bytes);
        let mut back = vec![0u8; 2 * CHUNK];
        f.read_exact_at(&mut back, 0).unwrap();
        assert_bytes_eq(&back, &model, &format!("after overwrite {i}"));
    }
    drop(f);
    let container = std::fs::read(m.backing("f")).unwrap();
    let first_chunk: Vec<bool> = data_members(&container)
        .into_iter()
        .filter(|(off, _)| *off < CHUNK as u64)
        .map(|(_, reset)| reset)
        .collect();
    let resets = first_chunk.iter().filter(|r| **r).count();
    assert!(
        resets >= 3,
        "40 overwrites of one chunk should have folded its overlay pieces at least twice: \
         {first_chunk:?}"
    );
    let longest_run = first_chunk
        .split(|reset| *reset)
        .map(|run| run.len())
        .max()
        .unwrap();
    assert!(
        longest_run < 16,
        "a chunk held {} overlay pieces after one RESET piece (at most 15)",
        longest_run
    );
    m.remount();
    assert_bytes_eq(
        &std::fs::read(m.path("f")).unwrap(),
        &model,
        "after remount",
    );
    fsck_clean(&mut m, "f");
}

/// Random overwrites of every size, inside chunks, across their boundaries, past the end of
/// what a chunk stores and past the end of the file, with fsyncs between some of them: the file
/// always reads as the model, through the open descriptor, after a remount, and after the
/// daemon is killed (everything was fsync'd before the kill).
#[test]
fn random_overwrites_read_back_like_the_model_after_remount_and_kill() {
    require_root_and_fuse();
    let mut m = Mount::new();
    let mut rng = Rng::new(7);
    let mut model = varied_text(5 * CHUNK + 777, 8);
    write_file(&m.path("f"), &model);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("f"))
        .unwrap();
    for i in 0..300u64 {
        let len = match rng.below(4) {
            0 => 1 + rng.below(64) as usize,
            1 => 1 + rng.below(4 * KIB as u64) as usize,
            2 => 4 * KIB,
            _ => 1 + rng.below(CHUNK as u64 + 10_000) as usize,
        };
        let at = rng.below(model.len() as u64 + 3 * KIB as u64) as usize;
        let bytes = if rng.below(2) == 0 {
            varied_text(len, 1000 + i)
        } else {
            random_bytes(len, 1000 + i)
        };
        f.write_all_at(&bytes, at as u64).unwrap();
        if model.len() < at + len {
            model.resize(at + len, 0);
        }
        model[at..at + len].copy_from_slice(&bytes);
        if rng.below(3) == 0 {
            f.sync_data().unwrap();
        }
        if i % 25 == 0 {
            let mut back = vec![0u8; model.len()];
            f.read_exact_at(&mut back, 0).unwrap();
            assert_bytes_eq(&back, &model, &format!("after write {i}"));
        }
    }
    f.sync_all().unwrap();
    drop(f);
    assert_bytes_eq(&std::fs::read(m.path("f")).unwrap(), &model, "after close");
    m.remount();
    assert_bytes_eq(
        &std::fs::read(m.path("f")).unwrap(),
        &model,
        "after remount",
    );
    fsck_clean(&mut m, "f");

    // More overwrites, fsync'd, then the daemon dies without a close or unmount.
    let f = OpenOptions::new().write(true).open(m.path("f")).unwrap();
    for i in 0..50u64 {
        let at = rng.below(model.len() as u64 - 5000) as usize;
        let bytes = varied_text(1 + rng.below(5000) as usize, 5000 + i);
        f.write_all_at(&bytes, at as u64).unwrap();
        model[at..at + bytes.len()].copy_from_slice(&bytes);
    }
    f.sync_data().unwrap();
    m.kill_daemon();
    drop(f);
    m.remove_dead_mount();
    m.mount();
    assert_bytes_eq(
        &std::fs::read(m.path("f")).unwrap(),
        &model,
        "after kill -9",
    );
    fsck_clean(&mut m, "f");
}

/// Random 4 KiB overwrites all over a file sixteen times the dirty pool (8 MiB, the least): the
/// pool fills with chunks kept in memory, and a writer that needs one more must give memory back (drop clean
/// chunks, hand a dirty chunk's own buffer to the engine) instead of waiting for memory only it
/// holds. fio randwrite on the benchmark's 256 MiB file hung this way once clean chunks were
/// kept across compactions. The writes run on a thread with a deadline.
#[test]
fn random_overwrites_of_a_file_larger_than_the_dirty_pool_never_hang() {
    require_root_and_fuse();
    let m = Mount::with_opts(&["dirty=8m"]);
    let len = 128 << 20;
    let mut model = varied_text(len, 11);
    write_file(&m.path("f"), &model);
    let path = m.path("f");
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || {
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        let mut rng = Rng::new(12);
        let mut writes = Vec::new();
        for i in 0..4000u64 {
            let at = rng.below((len / (4 * KIB)) as u64) as usize * 4 * KIB;
            let page = varied_text(4 * KIB, 2000 + i);
            f.write_all_at(&page, at as u64).unwrap();
            if i % 100 == 99 {
                f.sync_data().unwrap();
            }
            writes.push((at, page));
        }
        f.sync_all().unwrap();
        tx.send(writes).unwrap();
    });
    let writes = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("4,000 random 4 KiB writes did not finish in 120 s: the writer hangs");
    writer.join().unwrap();
    for (at, page) in writes {
        model[at..at + page.len()].copy_from_slice(&page);
    }
    assert_bytes_eq(
        &std::fs::read(m.path("f")).unwrap(),
        &model,
        "after the writes",
    );
}
