//! A misbehaving compression device (`-o fault=SPEC`, the fault-injecting backend): jobs that
//! fail, panic, come back late and out of order, or return corrupt output.
//!
//! - With the defaults (verification and software fallback on) nothing of it reaches the files.
//! - Without the fallback, data the engine could not compress is reported as EIO by write, close
//!   or fsync, is never committed, and the mount stays up; what close or fsync acknowledged is
//!   intact after a remount.
//! - Corrupt output is never committed while verification is on; with `verify=off` (the user's
//!   choice) it is committed, but reading it fails with EIO instead of returning wrong bytes.
//! - Delayed jobs complete out of order on several queues, and members still land in write order
//!   (zcat of a file written front to back prints it).

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

use common::{deflatefs_mounts_at, gunzip_all, random_bytes, varied_text, Mount};

const CHUNK: usize = 16 << 10;

fn content(i: u64, len: usize) -> Vec<u8> {
    // Half compressible text, half random: both deflate and stored pieces.
    let mut v = varied_text(len / 2, i);
    v.extend_from_slice(&random_bytes(len - len / 2, i + 1000));
    v
}

/// Writes a file front to back in pieces of `step` bytes, then fsyncs and closes it; returns the
/// first error.
fn write_all_sync(path: &std::path::Path, data: &[u8], step: usize) -> io::Result<()> {
    let mut f = File::create(path)?;
    for piece in data.chunks(step) {
        f.write_all(piece)?;
    }
    f.sync_all()?;
    let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
    if unsafe { libc::close(fd) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[test]
fn with_fallback_no_fault_reaches_the_files() {
    let mut m = Mount::with_opts(&[
        "chunk=16k",
        "queues=3",
        "fault=fail=10:corrupt=10:panic=2:delay=20:delay_ms=15:seed=3",
        "fault_limit=0",
    ]);
    let files: Vec<Vec<u8>> = (0..6)
        .map(|i| content(i, 200_000 + i as usize * 7_000))
        .collect();
    for (i, d) in files.iter().enumerate() {
        write_all_sync(&m.path(&format!("f{i}")), d, 50_000).unwrap();
    }
    for (i, d) in files.iter().enumerate() {
        assert!(fs::read(m.path(&format!("f{i}"))).unwrap() == *d, "f{i}");
    }
    m.remount();
    for (i, d) in files.iter().enumerate() {
        assert!(
            fs::read(m.path(&format!("f{i}"))).unwrap() == *d,
            "f{i} after remount"
        );
    }
    let log = m.log_text();
    assert!(log.contains("fault injection on"), "{log}");
    assert!(log.contains("redone in software"), "no fault fired?\n{log}");
}

#[test]
fn without_fallback_failed_compression_is_eio_never_committed_and_the_mount_stays() {
    let mut m = Mount::with_opts(&[
        "chunk=16k",
        "queues=2",
        "fault=fail=8:panic=2:ops=deflate:seed=5:fallback=off",
    ]);
    let mut acked = Vec::new();
    let mut failed = 0;
    for i in 0..12u64 {
        let d = content(i, 150_000);
        let p = m.path(&format!("f{i}"));
        match write_all_sync(&p, &d, 40_000) {
            Ok(()) => acked.push((i, d)),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "f{i}: {e}");
                failed += 1;
            }
        }
    }
    assert!(failed > 0, "no write failed: the faults did not fire");
    assert!(!acked.is_empty(), "every file failed");
    assert!(
        !deflatefs_mounts_at(&m.mnt).is_empty(),
        "the mount went away"
    );
    // A file whose data could not be stored reads EIO where it is missing, never zeros (it
    // may also be shorter: a write that reported the error stored nothing).
    for i in 0..12u64 {
        if acked.iter().any(|(j, _)| *j == i) {
            continue;
        }
        let d = content(i, 150_000);
        let f = File::open(m.path(&format!("f{i}"))).unwrap();
        for c in 0..d.len().div_ceil(CHUNK) {
            let mut buf = vec![0u8; CHUNK.min(d.len() - c * CHUNK)];
            match f.read_at(&mut buf, (c * CHUNK) as u64) {
                Ok(n) => assert!(buf[..n] == d[c * CHUNK..c * CHUNK + n], "f{i} chunk {c}"),
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "f{i} chunk {c}: {e}"),
            }
        }
    }
    m.remount();
    for (i, d) in &acked {
        assert!(
            fs::read(m.path(&format!("f{i}"))).unwrap() == *d,
            "acknowledged f{i}"
        );
    }
    // The others hold a state that was committed: nothing, or a prefix (never garbage).
    for i in 0..12u64 {
        if acked.iter().any(|(j, _)| *j == i) {
            continue;
        }
        let d = content(i, 150_000);
        let got = fs::read(m.path(&format!("f{i}"))).unwrap();
        assert!(got.len() <= d.len() && got == d[..got.len()], "f{i}");
    }
}

#[test]
fn corrupt_output_is_never_committed_with_verification_and_reads_eio_without() {
    // Verification on (default), no fallback: a corrupt stream is replaced by stored blocks.
    let mut m = Mount::with_opts(&[
        "chunk=16k",
        "fault=corrupt=30:ops=deflate:seed=7:fallback=off",
    ]);
    let d = content(1, 300_000);
    write_all_sync(&m.path("v"), &d, 64_000).unwrap();
    m.remount();
    assert!(fs::read(m.path("v")).unwrap() == d);
    m.unmount();
    // Verification off: corrupt streams are committed; reads of them fail, never lie.
    m.opts = vec![
        "chunk=16k".into(),
        "verify=off".into(),
        "fault=corrupt=30:ops=deflate:seed=7:fallback=off".into(),
    ];
    m.mount();
    let d = varied_text(300_000, 2);
    write_all_sync(&m.path("u"), &d, 64_000).unwrap();
    m.remount();
    let f = File::open(m.path("u")).unwrap();
    let (mut good, mut eio) = (0, 0);
    for c in 0..d.len().div_ceil(CHUNK) {
        let mut buf = vec![0u8; CHUNK.min(d.len() - c * CHUNK)];
        match f.read_exact_at(&mut buf, (c * CHUNK) as u64) {
            Ok(()) => {
                assert!(
                    buf == d[c * CHUNK..c * CHUNK + buf.len()],
                    "chunk {c}: wrong bytes"
                );
                good += 1;
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO));
                eio += 1;
            }
        }
    }
    assert!(eio > 0 && good > 0, "{good} good, {eio} EIO");
}

#[test]
fn delayed_jobs_complete_out_of_order_and_members_still_land_in_write_order() {
    let mut m = Mount::with_opts(&[
        "chunk=16k",
        "queues=4",
        "fault=delay=50:delay_ms=30:seed=11",
    ]);
    let d = varied_text(1_500_000, 3);
    write_all_sync(&m.path("seq"), &d, 128 << 10).unwrap();
    // Reads with delayed inflate jobs too.
    let mut got = Vec::new();
    File::open(m.path("seq"))
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert!(got == d);
    m.unmount();
    let backing = fs::read(m.backing("seq")).unwrap();
    assert!(gunzip_all(&backing).unwrap() == d, "zcat order");
}

#[test]
fn inflate_faults_without_fallback_give_eio_on_read_never_wrong_bytes() {
    let mut m = Mount::with_opts(&["chunk=16k"]);
    let d = varied_text(400_000, 4);
    write_all_sync(&m.path("r"), &d, 64_000).unwrap();
    m.unmount();
    m.opts = vec![
        "chunk=16k".into(),
        "cache=0".into(),
        "fault=fail=30:corrupt=20:ops=inflate:seed=13:fallback=off".into(),
    ];
    m.mount();
    let f = OpenOptions::new().read(true).open(m.path("r")).unwrap();
    let mut eio = 0;
    for round in 0..3 {
        for c in 0..d.len().div_ceil(CHUNK) {
            let mut buf = vec![0u8; CHUNK.min(d.len() - c * CHUNK)];
            match f.read_exact_at(&mut buf, (c * CHUNK) as u64) {
                Ok(()) => assert!(
                    buf == d[c * CHUNK..c * CHUNK + buf.len()],
                    "round {round} chunk {c}: wrong bytes"
                ),
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EIO));
                    eio += 1;
                }
            }
        }
    }
    assert!(eio > 0, "no inflate fault reached a reader");
    assert!(!deflatefs_mounts_at(&m.mnt).is_empty());
}
