//! Holes through the mount (issue 13): `fallocate` PUNCH_HOLE and ZERO_RANGE, compared with
//! ext4 on the same steps (contents, sizes, errnos, across a remount), the space punched chunks
//! give back, and lseek's SEEK_DATA / SEEK_HOLE. Needs root and /dev/fuse.

mod common;

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use common::*;

const KIB: u64 = 1024;
const CHUNK: u64 = 128 * KIB;

fn fallocate(f: &File, mode: i32, offset: u64, len: u64) -> Result<(), i32> {
    // SAFETY: no pointers; `f` keeps its descriptor open across the call.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, len as i64) };
    if r == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

fn seek(f: &File, offset: u64, whence: i32) -> Result<u64, i32> {
    // SAFETY: no pointers; `f` keeps its descriptor open across the call.
    let r = unsafe { libc::lseek(f.as_raw_fd(), offset as i64, whence) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as u64)
    }
}

fn open_rw(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(p)
        .unwrap()
}

const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
const ZERO_KEEP: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

/// The steps, each (mode, offset, length): whole chunks, parts of one chunk, ranges across
/// chunk boundaries, the last chunk, beyond the end, and the modes the kernel refuses.
fn steps() -> Vec<(i32, u64, u64)> {
    vec![
        (PUNCH, CHUNK, 3 * CHUNK),                   // whole chunks
        (PUNCH, 5 * CHUNK + 100, 4000),              // inside one chunk
        (PUNCH, 7 * CHUNK - 5000, 2 * CHUNK + 9000), // across boundaries, one chunk whole
        (PUNCH, 20 * CHUNK, 10 * CHUNK),             // beyond the end: nothing
        (libc::FALLOC_FL_PUNCH_HOLE, 0, 4096),       // without KEEP_SIZE: EOPNOTSUPP
        (ZERO_KEEP, 11 * CHUNK + 7, 2 * CHUNK),      // zero, keep the size
        (ZERO_KEEP, 15 * CHUNK, 8 * CHUNK),          // past the end, size kept
        (ZERO, 16 * CHUNK - 300, 3 * CHUNK),         // past the end: the size grows
        (PUNCH, 0, 64 * CHUNK),                      // everything
    ]
}

/// Runs the steps on `path` (a 2 MiB file of varied bytes first); after each, the file's size
/// and content and the call's result.
fn run_steps(path: &Path) -> Vec<(Result<(), i32>, u64, Vec<u8>)> {
    let f = open_rw(path);
    f.write_all_at(&varied_text(16 * CHUNK as usize + 1234, 13), 0)
        .unwrap();
    let mut out = Vec::new();
    for (mode, offset, len) in steps() {
        let r = fallocate(&f, mode, offset, len);
        let size = f.metadata().unwrap().len();
        let mut content = vec![0u8; size as usize];
        f.read_exact_at(&mut content, 0).unwrap();
        out.push((r, size, content));
    }
    out
}

#[test]
fn punch_hole_and_zero_range_match_ext4_and_survive_a_remount() {
    let mut m = Mount::new();
    let ext4 = m.dir.path().join("ext4");
    fs::create_dir(&ext4).unwrap();
    let here = run_steps(&m.path("f"));
    let there = run_steps(&ext4.join("f"));
    for (i, ((h, t), step)) in here.iter().zip(&there).zip(steps()).enumerate() {
        assert_eq!(
            (h.0, h.1),
            (t.0, t.1),
            "step {i} {step:?}: (result, size) on the mount, then on ext4"
        );
        assert_bytes_eq(&h.2, &t.2, &format!("step {i} {step:?}"));
    }
    // Before the last step, which punches everything: the same steps again, then a remount.
    let f = open_rw(&m.path("g"));
    let g = open_rw(&ext4.join("g"));
    for file in [&f, &g] {
        file.write_all_at(&varied_text(16 * CHUNK as usize + 1234, 13), 0)
            .unwrap();
        for (mode, offset, len) in &steps()[..steps().len() - 1] {
            let _ = fallocate(file, *mode, *offset, *len);
        }
        file.sync_all().unwrap();
    }
    drop(f);
    m.remount();
    assert_bytes_eq(
        &fs::read(m.path("g")).unwrap(),
        &fs::read(ext4.join("g")).unwrap(),
        "after the remount",
    );
    assert!(m.warn_and_error_lines().is_empty(), "{}", m.log_text());
}

#[test]
fn punched_chunks_give_their_space_back() {
    let m = Mount::new();
    let p = m.path("image");
    let data = random_bytes(64 * CHUNK as usize, 5);
    let f = open_rw(&p);
    f.write_all_at(&data, 0).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let before = fs::metadata(m.backing("image")).unwrap().blocks();
    let f = open_rw(&p);
    fallocate(&f, PUNCH, 4 * CHUNK, 56 * CHUNK).unwrap();
    drop(f);
    // The close finds most of the container stale and compacts it in the background.
    assert!(
        m.wait_for_log(": compacted", Duration::from_secs(30)),
        "{}",
        m.log_text()
    );
    let after = fs::metadata(m.backing("image")).unwrap().blocks();
    assert!(
        after * 4 < before,
        "blocks of the backing file: {before} before the punch, {after} after"
    );
    let mut expect = data;
    expect[4 * CHUNK as usize..60 * CHUNK as usize].fill(0);
    assert_bytes_eq(&fs::read(&p).unwrap(), &expect, "after the punch");
    assert_eq!(fs::metadata(&p).unwrap().len(), 64 * CHUNK);
}

#[test]
fn seek_data_and_seek_hole_find_punched_chunks_as_ext4_does() {
    let m = Mount::new();
    let ext4 = m.dir.path().join("ext4");
    fs::create_dir(&ext4).unwrap();
    let mut results = Vec::new();
    for dir in [&m.mnt, &ext4] {
        let f = open_rw(&dir.join("sparse"));
        f.write_all_at(&random_bytes(10 * CHUNK as usize, 2), 0)
            .unwrap();
        // Chunk-aligned holes, so that the chunk granularity gives ext4's answers; a file
        // that ends in a hole; data written after a hole without filling it.
        fallocate(&f, PUNCH, 2 * CHUNK, 3 * CHUNK).unwrap();
        fallocate(&f, PUNCH, 8 * CHUNK, 2 * CHUNK).unwrap();
        f.write_all_at(b"tail", 14 * CHUNK).unwrap();
        fallocate(&f, PUNCH, 10 * CHUNK, 4 * CHUNK).unwrap();
        let size = f.metadata().unwrap().len();
        let mut r = Vec::new();
        for offset in [
            0,
            100,
            2 * CHUNK,
            3 * CHUNK + 5,
            5 * CHUNK,
            8 * CHUNK,
            13 * CHUNK,
            size - 1,
            size,
            size + 10,
        ] {
            r.push((
                offset,
                seek(&f, offset, libc::SEEK_DATA),
                seek(&f, offset, libc::SEEK_HOLE),
            ));
        }
        results.push(r);
    }
    assert_eq!(
        results[0], results[1],
        "(offset, SEEK_DATA, SEEK_HOLE): mount, then ext4"
    );
    assert!(results[0].iter().any(|(_, d, _)| *d == Err(libc::ENXIO)));
}

/// Before the daemon answered lseek, the kernel treated the whole file as data: the first hole
/// was the end of the file.
#[test]
fn seek_hole_inside_a_file_is_not_its_end() {
    let m = Mount::new();
    let f = open_rw(&m.path("h"));
    f.write_all_at(&random_bytes(4 * CHUNK as usize, 3), 0)
        .unwrap();
    fallocate(&f, PUNCH, CHUNK, CHUNK).unwrap();
    assert_eq!(seek(&f, 0, libc::SEEK_HOLE), Ok(CHUNK));
    assert_eq!(seek(&f, CHUNK, libc::SEEK_DATA), Ok(2 * CHUNK));
}
