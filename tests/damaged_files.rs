//! Hostile and damaged backing files, through a mount (docs/FORMAT.md, "Foreign, damaged and
//! changed files"):
//! - a bad CRC, a bad deflate stream, a duplicate entry for a chunk's piece, a piece after a
//!   gap: EIO for that chunk only, the rest reads, one log line per file however often it is
//!   read;
//! - an index pointing outside the file, a commit with a size that overflows: the commit is not
//!   used (the file opens at an earlier one, or reads EIO as a whole when none is left);
//! - foreign gzip files and files that merely start like a container are plain files;
//! - files changed in the backing directory behind the mount's back behave as documented.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use common::{deflatefs_mounts_at, scan_members, varied_text, Mount};
use deflatefs::container::{build_stored_member, CommitRecord, Container};

const CHUNK: usize = 16 << 10;

fn write_file(p: &Path, data: &[u8]) {
    File::create(p).unwrap().write_all(data).unwrap();
}

fn flip(p: &Path, at: usize) {
    let f = OpenOptions::new().read(true).write(true).open(p).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at as u64).unwrap();
    f.write_all_at(&[b[0] ^ 0x21], at as u64).unwrap();
}

/// (start, end) of the `n`-th data member.
fn data_member(p: &Path, n: usize) -> (usize, usize) {
    let bytes = fs::read(p).unwrap();
    let members = scan_members(&bytes);
    let i = members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.kind == b'd')
        .nth(n)
        .unwrap()
        .0;
    (
        members[i].offset,
        members.get(i + 1).map_or(bytes.len(), |m| m.offset),
    )
}

/// Reads chunk by chunk: which chunks fail with EIO (any other error or wrong bytes panics).
fn eio_chunks(path: &Path, want: &[u8]) -> Vec<usize> {
    let f = File::open(path).unwrap();
    let mut bad = Vec::new();
    for c in 0..want.len().div_ceil(CHUNK) {
        let mut buf = vec![0u8; CHUNK.min(want.len() - c * CHUNK)];
        match f.read_exact_at(&mut buf, (c * CHUNK) as u64) {
            Ok(()) => assert!(
                buf == want[c * CHUNK..c * CHUNK + buf.len()],
                "{}: chunk {c} has wrong bytes",
                path.display()
            ),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{}: {e}", path.display());
                bad.push(c);
            }
        }
    }
    bad
}

/// An index member holding `entries` (64 bytes each), with a valid crc32.
fn index_member(entries: &[[u8; 64]]) -> Vec<u8> {
    let payload_len = 4 + 64 * entries.len() + 4;
    let mut m = vec![0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff];
    m.extend_from_slice(&((payload_len + 4) as u16).to_le_bytes());
    m.extend_from_slice(b"Di");
    m.extend_from_slice(&(payload_len as u16).to_le_bytes());
    let start = m.len();
    m.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        m.extend_from_slice(e);
    }
    let crc = libdeflater::crc32(&m[start..]);
    m.extend_from_slice(&crc.to_le_bytes());
    m.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    m
}

/// Appends a delta commit of `entries` with logical size `size` (all crc32s valid).
fn append_commit(p: &Path, entries: &[[u8; 64]], size: u64) {
    let mut bytes = fs::read(p).unwrap();
    let prev_off = bytes.len() as u64 - 94;
    let prev = CommitRecord::decode(&bytes[bytes.len() - 94..], prev_off).unwrap();
    let first_index = bytes.len() as u64;
    bytes.extend_from_slice(&index_member(entries));
    let offset = bytes.len() as u64;
    let c = CommitRecord {
        seq: prev.seq + 1,
        offset,
        size,
        prev: prev_off,
        first_index,
        entry_count: entries.len() as u32,
        checkpoint: false,
        index_members: 1,
        aux: u64::MAX,
    };
    bytes.extend_from_slice(&c.encode());
    fs::write(p, bytes).unwrap();
}

#[test]
fn damage_gives_eio_for_the_affected_range_and_one_log_line_per_file() {
    let mut m = Mount::with_opts(&["chunk=16k", "cache=0"]);
    let data = varied_text(200_000, 1);
    for name in [
        "crc", "deflate", "dup", "gap", "outside", "overflow", "index",
    ] {
        write_file(&m.path(name), &data);
    }
    m.unmount();
    // A data member whose CRC32 trailer is wrong (chunk 3).
    let (_, end) = data_member(&m.backing("crc"), 3);
    flip(&m.backing("crc"), end - 6);
    // A damaged deflate stream (chunk 5).
    let (start, end) = data_member(&m.backing("deflate"), 5);
    flip(&m.backing("deflate"), (start + end) / 2);
    // A duplicate entry for chunk 2 (its piece again, as an overlay of itself): no writer
    // makes one, since every piece is a member of its own, stored after the ones before it.
    {
        let c = Container::open(File::open(m.backing("dup")).unwrap()).unwrap();
        let mut dup = c.index().pieces(2)[0].clone();
        dup.reset = false;
        append_commit(&m.backing("dup"), &[dup.encode()], 200_000);
    }
    // A piece that leaves a gap after what its chunk stores (the last chunk, 12, holds 3,392
    // bytes): pieces continue their chunk or lie over it.
    {
        let mut c = Container::open(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(m.backing("gap"))
                .unwrap(),
        )
        .unwrap();
        let (mem, e) = build_stored_member(12 * CHUNK as u64 + 3_400, false, b"after a gap");
        c.append_member(&mem, e).unwrap();
        c.commit().unwrap();
    }
    // An index entry pointing outside the file.
    let mut e = [0u8; 64];
    e[0..8].copy_from_slice(&(CHUNK as u64).to_le_bytes());
    e[8..12].copy_from_slice(&100u32.to_le_bytes());
    e[12..20].copy_from_slice(&(1u64 << 40).to_le_bytes());
    e[20..24].copy_from_slice(&200u32.to_le_bytes());
    e[28] = 1;
    e[29] = 1;
    append_commit(&m.backing("outside"), &[e], 200_000);
    // A commit whose size overflows (beyond i64::MAX): not a valid commit.
    append_commit(&m.backing("overflow"), &[], u64::MAX - 5);
    // The last commit's index member damaged: the file cannot be opened.
    let bytes = fs::read(m.backing("index")).unwrap();
    let last_index = scan_members(&bytes)
        .into_iter()
        .rfind(|x| x.kind == b'i')
        .unwrap();
    flip(&m.backing("index"), last_index.offset + 40);
    m.mount();

    assert_eq!(eio_chunks(&m.path("crc"), &data), vec![3]);
    assert_eq!(eio_chunks(&m.path("deflate"), &data), vec![5]);
    assert_eq!(eio_chunks(&m.path("dup"), &data), vec![2]);
    assert_eq!(eio_chunks(&m.path("gap"), &data), vec![12]);
    // A commit that cannot be used: the file opens at the commit before (overflow: the commit
    // is not even recognised) or fails as a whole (outside: its index names no valid member).
    assert_eq!(fs::read(m.path("overflow")).unwrap(), data);
    for name in ["outside", "index"] {
        let e = fs::read(m.path(name)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{name}: {e}");
        // Still listed, stat-able and removable.
        fs::metadata(m.path(name)).unwrap();
    }
    // Read the damaged chunk (and open the damaged index) many times: one log line for the
    // file, already written by the reads above, and no line per request.
    let lines_before = m.log_text().lines().count();
    for _ in 0..50 {
        let f = File::open(m.path("deflate")).unwrap();
        let mut b = vec![0u8; 100];
        assert!(f.read_exact_at(&mut b, (5 * CHUNK) as u64).is_err());
        assert!(File::open(m.path("index")).is_err());
    }
    let log = m.log_text();
    let repeated: Vec<&str> = log
        .lines()
        .skip(lines_before)
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(
        repeated.is_empty(),
        "50 reads of a damaged chunk and 50 opens of a damaged file logged {} line(s):\n{}",
        repeated.len(),
        repeated.join("\n")
    );
    assert!(
        !deflatefs_mounts_at(&m.mnt).is_empty(),
        "the mount went away"
    );
    fs::remove_file(m.path("index")).unwrap();
    let log = m.log_text();
    let lines = log
        .lines()
        .filter(|l| l.contains("'deflate'") && l.contains("cannot be read"))
        .count();
    assert_eq!(lines, 1, "log lines about 'deflate':\n{log}");
}

#[test]
fn foreign_and_header_like_files_are_plain() {
    let mut m = Mount::unmounted(&[], false);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&varied_text(20_000, 2)).unwrap();
    let gz = gz.finish().unwrap();
    fs::write(m.backing("other.gz"), &gz).unwrap();
    // Starts like a container header but its crc32 is wrong: not ours, served as is.
    let mut fake = deflatefs::container::header_member(17).to_vec();
    fake[30] ^= 1;
    fake.extend_from_slice(b"then anything");
    fs::write(m.backing("fake"), &fake).unwrap();
    // A creation cut short: an empty container.
    let mut w = Mount::with_opts(&[]);
    write_file(&w.path("x"), b"");
    w.unmount();
    let whole = fs::read(w.backing("x")).unwrap();
    fs::write(m.backing("cut"), &whole[..60]).unwrap();
    m.mount();
    assert_eq!(fs::read(m.path("other.gz")).unwrap(), gz);
    assert_eq!(fs::read(m.path("fake")).unwrap(), fake);
    assert_eq!(fs::read(m.path("cut")).unwrap(), b"");
    assert_eq!(fs::metadata(m.path("cut")).unwrap().len(), 0);
    // Writing it makes it a whole container again.
    write_file(&m.path("cut"), b"written after the crash");
    m.remount();
    assert_eq!(fs::read(m.path("cut")).unwrap(), b"written after the crash");
}

#[test]
fn files_changed_behind_the_mounts_back() {
    let m = Mount::with_opts(&["chunk=16k", "cache=0"]);
    let data = varied_text(300_000, 3);
    for name in ["appended", "truncated", "replaced"] {
        write_file(&m.path(name), &data);
    }
    // Appended to in the backing directory while not open: like a torn tail, ignored.
    let mut f = OpenOptions::new()
        .append(true)
        .open(m.backing("appended"))
        .unwrap();
    f.write_all(b"written by someone else").unwrap();
    drop(f);
    assert_eq!(fs::read(m.path("appended")).unwrap(), data);
    // Truncated while open: the missing range reads as EIO, never zeros; the mount stays.
    // (Pages the kernel still caches would be served as they were: drop them first.)
    let f = File::open(m.path("truncated")).unwrap();
    let mut b = vec![0u8; 100];
    f.read_exact_at(&mut b, 0).unwrap();
    unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
            0,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    let len = fs::metadata(m.backing("truncated")).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(m.backing("truncated"))
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let mut b = vec![0u8; CHUNK];
    let e = f.read_exact_at(&mut b, 280_000).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    drop(f);
    assert!(!deflatefs_mounts_at(&m.mnt).is_empty());
    // Replaced in the backing directory: seen once the kernel's cached name expires (1 s).
    fs::write(m.backing("replaced.new"), b"plain replacement").unwrap();
    fs::rename(m.backing("replaced.new"), m.backing("replaced")).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(fs::read(m.path("replaced")).unwrap(), b"plain replacement");
}

/// Recovery mode is for files last changed before the machine booted, and the backing file's
/// ctime says when that was, not its mtime, which users set freely (`cp -a`, `touch -d`). A file
/// written in this boot and dated 2001 by its user used to be opened in recovery mode: one damaged
/// data member in its last commit then rolled the whole file back to the commit before (and
/// truncated it there) instead of giving EIO for that chunk.
#[test]
fn a_file_dated_in_the_past_is_not_rolled_back_by_recovery() {
    let mut m = Mount::with_opts(&["chunk=16k", "cache=0"]);
    let data = varied_text(8 * CHUNK, 7);
    {
        let mut f = File::create(m.path("old")).unwrap();
        f.write_all(&data[..4 * CHUNK]).unwrap();
        f.sync_all().unwrap();
        f.write_all(&data[4 * CHUNK..]).unwrap();
    }
    let t = libc::timeval {
        tv_sec: 978_307_200, // 2001-01-01
        tv_usec: 0,
    };
    let p = common::cpath(&m.path("old"));
    assert_eq!(unsafe { libc::utimes(p.as_ptr(), [t, t].as_ptr()) }, 0);
    m.unmount();
    // Chunk 6 was written after the fsync: its member belongs to the last commit.
    let (start, end) = data_member(&m.backing("old"), 6);
    flip(&m.backing("old"), (start + end) / 2);
    // The damage moved the mtime; date it back as the user had.
    let p = common::cpath(&m.backing("old"));
    assert_eq!(unsafe { libc::utimes(p.as_ptr(), [t, t].as_ptr()) }, 0);
    m.mount();
    assert_eq!(
        fs::metadata(m.path("old")).unwrap().len(),
        data.len() as u64,
        "the file was rolled back"
    );
    assert_eq!(eio_chunks(&m.path("old"), &data), vec![6]);
}

/// Reading never writes: a container whose last commit has no auxiliary member (written before
/// there was one, or with digests=off), dated 2001, and one with a torn tail, are read through a
/// mount; their backing files keep their bytes and their mtimes. (A flush after reads used to
/// commit the SHA-256 state of the empty file: a new commit, the torn tail cut, the mtime now.)
#[test]
fn reading_a_file_leaves_its_backing_file_untouched() {
    let mut m = Mount::with_opts(&["chunk=16k"]);
    write_file(&m.path("seed"), b"x");
    m.unmount();
    let bytes = fs::read(m.backing("seed")).unwrap();
    // Header and creation checkpoint only (140 bytes): an empty container without aux record.
    fs::write(m.backing("bare"), &bytes[..140]).unwrap();
    let mut torn = bytes[..140].to_vec();
    torn.extend_from_slice(&[0x5a; 300]);
    fs::write(m.backing("torn"), &torn).unwrap();
    let t = libc::timeval {
        tv_sec: 978_307_200,
        tv_usec: 0,
    };
    for name in ["bare", "torn"] {
        let p = common::cpath(&m.backing(name));
        assert_eq!(unsafe { libc::utimes(p.as_ptr(), [t, t].as_ptr()) }, 0);
    }
    let before: Vec<_> = ["bare", "torn"]
        .iter()
        .map(|n| {
            let md = fs::metadata(m.backing(n)).unwrap();
            (fs::read(m.backing(n)).unwrap(), md.modified().unwrap())
        })
        .collect();
    m.mount();
    for name in ["bare", "torn"] {
        assert_eq!(fs::read(m.path(name)).unwrap(), b"", "{name}");
    }
    m.unmount();
    for (name, (data, mtime)) in ["bare", "torn"].iter().zip(before) {
        let md = fs::metadata(m.backing(name)).unwrap();
        assert_eq!(fs::read(m.backing(name)).unwrap(), data, "{name}: bytes");
        assert_eq!(md.modified().unwrap(), mtime, "{name}: mtime");
    }
}

/// `user.deflatefs.engine`'s `stored_reads_in_place` counter.
fn stored_reads_in_place(m: &Mount) -> u64 {
    let v = common::engine_report_value(&m.mnt, "stored_reads_in_place");
    v.parse()
        .unwrap_or_else(|_| panic!("stored_reads_in_place={v} is not a number"))
}

/// Stored (incompressible) chunks are read straight into place, their framing and CRC checked
/// apart from the payload: damage to the payload, to a stored block's header or to the trailer
/// still gives EIO for that chunk only, and every other chunk reads back exactly.
#[test]
fn damaged_stored_chunks_read_in_place_give_eio_for_their_range_only() {
    const CHUNK128: usize = 128 << 10;
    let mut m = Mount::new();
    let data = common::random_bytes(8 * CHUNK128 + 1000, 7);
    write_file(&m.path("f"), &data);
    m.unmount();
    let back = m.backing("f");
    // Chunk 1: a payload byte in its second stored block.
    let (start, _) = data_member(&back, 1);
    flip(&back, start + 32 + 70_000);
    // Chunk 3: the LEN field of its second stored block's header.
    let (start, _) = data_member(&back, 3);
    flip(&back, start + 32 + 5 + 65_535 + 1);
    // Chunk 5: its trailer's CRC32.
    let (_, end) = data_member(&back, 5);
    flip(&back, end - 8);
    m.mount();
    let before = stored_reads_in_place(&m);
    let f = File::open(m.path("f")).unwrap();
    let mut bad = Vec::new();
    for c in 0..data.len().div_ceil(CHUNK128) {
        let want = &data[c * CHUNK128..((c + 1) * CHUNK128).min(data.len())];
        let mut buf = vec![0u8; want.len()];
        match f.read_exact_at(&mut buf, (c * CHUNK128) as u64) {
            Ok(()) => assert!(buf == want, "chunk {c} has wrong bytes"),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "chunk {c}: {e}");
                bad.push(c);
            }
        }
    }
    assert_eq!(bad, vec![1, 3, 5]);
    let in_place = stored_reads_in_place(&m) - before;
    assert!(in_place >= 6, "only {in_place} chunks were read in place");
}

/// Power-cut seed 26: a shrink into the middle of a chunk is committed on its own (the commit of
/// the shrunk size) before the commit that rewrites that chunk; a cut kept the first and lost
/// the second. The size alone hid the chunk's old bytes beyond it, until the file grew after
/// recovery: a truncate up then showed them instead of zeros. Growing now rewrites that chunk
/// first, by a truncate up, a write further on, or a write right at the end.
#[test]
fn bytes_beyond_a_committed_shrink_read_as_zeros_when_the_file_grows_again() {
    const CH: usize = 16 << 10;
    for (name, grow) in [("truncate", 0u8), ("write_beyond", 1), ("append", 2)] {
        let mut m = Mount::with_opts(&["chunk=16k"]);
        m.unmount();
        let back = m.backing(name);
        {
            let f = File::create_new(&back).unwrap();
            let mut c = Container::create(f, 14).unwrap();
            for chunk in 0..2u64 {
                let (mem, e) = build_stored_member(chunk * CH as u64, true, &[b'x'; CH]);
                c.append_member(&mem, e).unwrap();
            }
            c.set_size(2 * CH as u64);
            c.commit().unwrap();
            // The shrink's own commit, without the rewrite of chunk 1 that followed it.
            c.set_size(CH as u64 + 1000);
            c.commit().unwrap();
        }
        m.mount();
        let p = m.path(name);
        assert_eq!(fs::read(&p).unwrap(), vec![b'x'; CH + 1000], "{name}");
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        let want_len = match grow {
            0 => {
                f.set_len(40_000).unwrap();
                40_000
            }
            1 => {
                f.write_all_at(b"end", 40_000).unwrap();
                40_003
            }
            _ => {
                f.write_all_at(b"more", (CH + 1000) as u64).unwrap();
                CH + 1004
            }
        };
        f.sync_all().unwrap();
        drop(f);
        let mut want = vec![0u8; want_len];
        want[..CH + 1000].fill(b'x');
        match grow {
            1 => want[40_000..].copy_from_slice(b"end"),
            2 => want[CH + 1000..].copy_from_slice(b"more"),
            _ => {}
        }
        let got = fs::read(&p).unwrap();
        assert!(got == want, "{name}: bytes beyond the shrink came back");
        m.unmount();
        m.mount();
        assert!(fs::read(&p).unwrap() == want, "{name}: after remount");
    }
}
