//! copy_file_range within a mount (README, "Copying files within a mount"; docs/COPY.md): whole
//! chunks of a container are copied as their compressed members with no compression or
//! decompression job; unaligned ranges, partial chunks, other chunk sizes and plain files are
//! copied as bytes; counts, errnos and contents are those of ext4, across remounts and a
//! SIGKILL after fsync; copies both ways at once and between two handles of one file finish.
//! Needs root and /dev/fuse (and the getfattr, sha256sum and b3sum tools).

mod common;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::*;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
const CHUNK: u64 = 128 * KIB;

/// One copy_file_range call with explicit offsets: the count, or the errno's error.
fn cfr(fi: &File, off_in: u64, fo: &File, off_out: u64, len: u64) -> io::Result<u64> {
    let mut i = off_in as libc::loff_t;
    let mut o = off_out as libc::loff_t;
    let n = unsafe {
        libc::copy_file_range(
            fi.as_raw_fd(),
            &mut i,
            fo.as_raw_fd(),
            &mut o,
            len as usize,
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as u64)
}

/// copy_file_range until `len` bytes are copied or a call returns 0 (as cp would loop).
fn cfr_all(fi: &File, off_in: u64, fo: &File, off_out: u64, len: u64) -> io::Result<u64> {
    let mut done = 0;
    while done < len {
        let n = cfr(fi, off_in + done, fo, off_out + done, len - done)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

fn open_rw(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

fn open_ro(p: &Path) -> File {
    File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

fn write_file(p: &Path, data: &[u8]) {
    fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

fn read_file(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn xattr(p: &Path, name: &str) -> String {
    let (ok, out, err) = run_tool(
        "getfattr",
        &[
            "-n".as_ref(),
            name.as_ref(),
            "--only-values".as_ref(),
            p.as_os_str(),
        ],
    );
    assert!(ok, "getfattr {name} {}: {err}", p.display());
    String::from_utf8(out).unwrap()
}

/// The first word a tool prints for `p` (sha256sum, b3sum).
fn tool_digest(tool: &str, p: &Path) -> String {
    let (ok, out, err) = run_tool(tool, &[p.as_os_str()]);
    assert!(ok, "{tool} {}: {err}", p.display());
    String::from_utf8(out)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn report(m: &Mount, key: &str) -> u64 {
    engine_report_value(&m.mnt, key).parse().unwrap()
}

/// A `key=value` field of `user.deflatefs.info`.
fn info_field(p: &Path, key: &str) -> String {
    xattr(p, "user.deflatefs.info")
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in the info of {}", p.display()))
        .to_string()
}

#[test]
fn copy_file_range_copies_members_without_recompressing() {
    let mut m = Mount::new();
    let data = varied_text((6 * MIB + 12_345) as usize, 7);
    write_file(&m.path("a"), &data);
    let chunks = (data.len() as u64).div_ceil(CHUNK);
    let (jobs0, members0) = (report(&m, "jobs"), report(&m, "members_copied"));
    {
        let a = open_ro(&m.path("a"));
        let b = open_rw(&m.path("b"));
        assert_eq!(
            cfr_all(&a, 0, &b, 0, u64::MAX / 4).unwrap(),
            data.len() as u64
        );
        // Nothing was compressed or decompressed: every chunk went over as its members.
        assert_eq!(report(&m, "jobs"), jobs0, "engine jobs during the copy");
        assert_eq!(report(&m, "members_copied") - members0, chunks);
        assert_eq!(report(&m, "copied_as_members"), data.len() as u64);
        assert_eq!(report(&m, "copied_as_bytes"), 0);
    }
    // The close committed the copy without any job either.
    assert_eq!(report(&m, "jobs"), jobs0, "engine jobs at close");
    // A whole file copied onto an empty one carries its running SHA-256: answered at once.
    let sha = xattr(&m.path("b"), "user.deflatefs.sha256");
    assert_eq!(
        report(&m, "jobs"),
        jobs0,
        "engine jobs for the copy's SHA-256"
    );
    assert_eq!(sha, xattr(&m.path("a"), "user.deflatefs.sha256"));
    // Same offsets, same chunks: the chaining values were kept, and BLAKE3 reads no data.
    let b3 = xattr(&m.path("b"), "user.deflatefs.blake3");
    assert_eq!(
        report(&m, "jobs"),
        jobs0,
        "engine jobs for the copy's BLAKE3"
    );
    assert_bytes_eq(&read_file(&m.path("b")), &data, "the copy");
    assert_eq!(sha, tool_digest("sha256sum", &m.path("b")));
    assert_eq!(b3, tool_digest("b3sum", &m.path("b")));
    // The same compressed members: the copy takes no more space than the original (which has
    // a few more commits).
    let stored = |n: &str| info_field(&m.path(n), "stored").parse::<u64>().unwrap();
    assert!(
        stored("b") <= stored("a"),
        "{} > {}",
        stored("b"),
        stored("a")
    );
    m.remount();
    assert_bytes_eq(&read_file(&m.path("b")), &data, "the copy after remount");
    m.unmount();
    // Members in file order: zcat of the backing file prints the content.
    let backing = read_file(&m.backing("b"));
    assert_bytes_eq(&gunzip_all(&backing).unwrap(), &data, "zcat of the copy");
    let (code, out) = run_deflatefs(&["fsck", m.src.to_str().unwrap()]);
    assert_eq!(code, 0, "fsck after copy_file_range:\n{out}");
}

/// What one step of [`scenario`] returned: a count or an errno name.
fn outcome(r: io::Result<u64>) -> String {
    match r {
        Ok(n) => format!("{n}"),
        Err(e) => errno_name(errno_of(&e)),
    }
}

/// Files the scenario leaves, compared byte for byte with ext4's.
const SCENARIO_FILES: &[&str] = &[
    "a", "b", "c", "d", "e", "f", "g", "holes", "i", "j", "k", "l", "n", "o", "p", "q",
];

/// copy_file_range cases run in `dir` (a mount or an ext4 directory): the results of each call,
/// in order. Every file ends up closed.
fn scenario(dir: &Path) -> Vec<(String, String)> {
    let p = |n: &str| dir.join(n);
    let mut out: Vec<(String, String)> = Vec::new();
    let mut note = |what: &str, r: io::Result<u64>| out.push((what.to_string(), outcome(r)));
    let a_data = varied_text((MIB + 1000) as usize, 1);
    let alen = a_data.len() as u64;
    write_file(&p("a"), &a_data);
    let a = open_ro(&p("a"));
    // Offsets at different places in their chunks: bytes.
    let b = open_rw(&p("b"));
    note("unaligned", cfr(&a, 1000, &b, 5000, 300 * KIB));
    // Same place in the chunk: the head as bytes, then whole chunks, then a partial tail.
    let c = open_rw(&p("c"));
    note("congruent", cfr(&a, 1000, &c, CHUNK + 1000, 600 * KIB));
    // At and beyond the source's end.
    let d = open_rw(&p("d"));
    note("past eof", cfr(&a, alen - 100, &d, 0, MIB));
    note("at eof", cfr(&a, alen, &d, 0, 10));
    note("beyond eof", cfr(&a, alen + 5000, &d, 0, 10));
    note("len 0", cfr(&a, 0, &d, 0, 0));
    // Onto a larger file whose chunk was read (and cached) before: the bytes after the range
    // stay, the copied ones replace what was read.
    let e_data = varied_text((2 * MIB + 77) as usize, 2);
    write_file(&p("e"), &e_data);
    let e = open_rw(&p("e"));
    let mut seen = vec![0u8; 4096];
    e.read_exact_at(&mut seen, CHUNK + 10).unwrap();
    note("onto larger", cfr(&a, 0, &e, CHUNK, 600 * KIB));
    note(
        "whole chunks onto larger",
        cfr(&a, 256 * KIB, &e, MIB, 512 * KIB),
    );
    // Whole chunks inside a file written front to back (whose SHA-256 was running).
    write_file(&p("n"), &varied_text(MIB as usize, 14));
    let n = open_rw(&p("n"));
    note("whole chunks inside", cfr(&a, 0, &n, 256 * KIB, 256 * KIB));
    // The source's partial last chunk onto a file that ends before it: a gap, then the tail.
    write_file(&p("f"), b"a hundred bytes or so, the start of f\n");
    let f = open_rw(&p("f"));
    note("tail after a gap", cfr(&a, 768 * KIB, &f, CHUNK, MIB));
    // Two handles of one file: ranges that do not overlap, then ranges that do.
    write_file(&p("g"), &a_data);
    let g1 = open_ro(&p("g"));
    let g2 = open_rw(&p("g"));
    note(
        "same file, beyond its end",
        cfr(&g1, 0, &g2, 2 * MIB, 256 * KIB),
    );
    note("same file, inside", cfr(&g1, 512 * KIB, &g2, 0, CHUNK));
    note(
        "same file, unaligned",
        cfr(&g1, 3, &g2, 300 * KIB + 7, 1000),
    );
    note("same file, overlapping", cfr(&g1, 0, &g2, 100, 1000));
    note("same file, overlapping back", cfr(&g1, 1000, &g2, 0, 2000));
    note("same file, same range", cfr(&g1, 0, &g2, 0, 10));
    // Holes stay holes.
    let h = open_rw(&p("holes"));
    h.set_len(MIB).unwrap();
    h.write_all_at(b"data in the middle", 512 * KIB + 5)
        .unwrap();
    let i = open_rw(&p("i"));
    note("holes", cfr(&h, 0, &i, 0, 2 * MIB));
    // A destination with unwritten data in the chunks the copy replaces, and a write after it.
    write_file(&p("j"), &varied_text((300 * KIB) as usize, 3));
    let j = open_rw(&p("j"));
    // Small writes inside chunks 0 and 1: held in memory, not written back yet.
    j.write_all_at(b"unwritten bytes, replaced by the copy", 10)
        .unwrap();
    j.write_all_at(b"more unwritten bytes", CHUNK + 10).unwrap();
    note("over unwritten data", cfr(&a, 0, &j, 0, 256 * KIB));
    let mut seen = vec![0u8; 64];
    j.read_exact_at(&mut seen, 0).unwrap();
    note(
        "read after the copy",
        Ok(seen.iter().map(|b| *b as u64).sum()),
    );
    // A write into a copied chunk: the chunk is the copy's, nothing of before comes back.
    j.write_all_at(b"after the copy", 100).unwrap();
    // A destination whose chunks are being compressed (a large write submits each chunk it
    // fills at once): the copy must land after those jobs, not under them.
    let o = open_rw(&p("o"));
    o.write_all_at(&varied_text((4 * MIB) as usize, 15), 0)
        .unwrap();
    note("over data in flight", cfr(&a, 0, &o, 3 * MIB, MIB));
    // A source chunk changed in place after it was stored (a chunk of several pieces where
    // small overwrites are stored as overlay pieces), copied to the same and another offset.
    write_file(&p("p"), &varied_text((512 * KIB) as usize, 16));
    {
        let pw = open_rw(&p("p"));
        pw.write_all_at(b"changed in place", 200 * KIB).unwrap();
        pw.write_all_at(b"and again, nearby", 200 * KIB + 4000)
            .unwrap();
    }
    let pr = open_ro(&p("p"));
    let q = open_rw(&p("q"));
    note("changed chunks, same offset", cfr(&pr, 0, &q, 0, 512 * KIB));
    note(
        "changed chunks, moved",
        cfr(&pr, 0, &q, 640 * KIB, 512 * KIB),
    );
    // A source with unwritten data.
    let k = open_rw(&p("k"));
    k.write_all_at(&varied_text((400 * KIB + 3) as usize, 4), 0)
        .unwrap();
    let l = open_rw(&p("l"));
    note("unwritten source", cfr(&k, 0, &l, 0, MIB));
    // What the kernel refuses before asking the filesystem.
    let ro = open_ro(&p("l"));
    note("read-only destination", cfr(&a, 0, &ro, 0, 10));
    let wo = OpenOptions::new().write(true).open(p("a")).unwrap();
    note("write-only source", cfr(&wo, 0, &l, 0, 10));
    let app = OpenOptions::new().append(true).open(p("l")).unwrap();
    note("append destination", cfr(&a, 0, &app, 0, 10));
    let mut i0: libc::loff_t = 0;
    let mut o0: libc::loff_t = 0;
    let r = unsafe { libc::copy_file_range(a.as_raw_fd(), &mut i0, l.as_raw_fd(), &mut o0, 10, 1) };
    note(
        "flags 1",
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as u64)
        },
    );
    let dirf = File::open(dir).unwrap();
    note("directory source", cfr(&dirf, 0, &l, 0, 10));
    out
}

#[test]
fn copy_file_range_cases_match_ext4_and_survive_a_remount() {
    let mut m = Mount::new();
    let ext4 = m.dir.path().join("ext4");
    fs::create_dir(&ext4).unwrap();
    let here = scenario(&m.mnt);
    let there = scenario(&ext4);
    assert_eq!(here, there, "copy_file_range results (mount, then ext4)");
    // Both paths were taken.
    assert!(report(&m, "members_copied") > 0);
    assert!(report(&m, "copied_as_bytes") > 0);
    for name in SCENARIO_FILES {
        assert_bytes_eq(
            &read_file(&m.path(name)),
            &read_file(&ext4.join(name)),
            &format!("{name} through the mount"),
        );
    }
    // The copy of a sparse file keeps its holes (only the chunk with data takes a piece).
    assert_eq!(info_field(&m.path("i"), "holes"), "7");
    for name in ["c", "e", "i", "j", "n", "q"] {
        assert_eq!(
            xattr(&m.path(name), "user.deflatefs.sha256"),
            tool_digest("sha256sum", &ext4.join(name)),
            "SHA-256 of {name}"
        );
        assert_eq!(
            xattr(&m.path(name), "user.deflatefs.blake3"),
            tool_digest("b3sum", &ext4.join(name)),
            "BLAKE3 of {name}"
        );
    }
    m.remount();
    for name in SCENARIO_FILES {
        assert_bytes_eq(
            &read_file(&m.path(name)),
            &read_file(&ext4.join(name)),
            &format!("{name} after remount"),
        );
    }
    let warnings = m.warn_and_error_lines();
    assert!(warnings.is_empty(), "log lines: {warnings:#?}");
    m.unmount();
    let (code, out) = run_deflatefs(&["fsck", m.src.to_str().unwrap()]);
    assert_eq!(code, 0, "fsck:\n{out}");
}

#[test]
fn copy_file_range_between_chunk_sizes_and_plain_files_copies_bytes() {
    let mut m = Mount::unmounted(&["chunk=4k"], false);
    let plain = random_bytes(300_000, 5);
    write_file(&m.backing("plain"), &plain);
    m.mount();
    let small = varied_text(700_000, 6);
    write_file(&m.path("small-chunks"), &small);
    m.opts = vec!["chunk=128k".into()];
    m.remount();
    let big = varied_text(900_000, 8);
    write_file(&m.path("big-chunks"), &big);
    let members0 = report(&m, "members_copied");
    let mut expect = big.clone();
    {
        let s = open_ro(&m.path("small-chunks"));
        let p = open_ro(&m.path("plain"));
        let d = open_rw(&m.path("big-chunks"));
        assert_eq!(cfr_all(&s, 0, &d, 0, 1 << 40).unwrap(), small.len() as u64);
        expect[..small.len()].copy_from_slice(&small);
        assert_eq!(
            cfr_all(&p, 0, &d, CHUNK, 1 << 40).unwrap(),
            plain.len() as u64
        );
        expect[CHUNK as usize..CHUNK as usize + plain.len()].copy_from_slice(&plain);
        // Into a plain file too.
        let pw = open_rw(&m.path("plain"));
        assert_eq!(cfr(&s, 4096, &pw, 8192, 50_000).unwrap(), 50_000);
    }
    assert_eq!(report(&m, "members_copied"), members0, "no member copy");
    let mut plain_expect = plain.clone();
    plain_expect[8192..58_192].copy_from_slice(&small[4096..54_096]);
    m.remount();
    assert_bytes_eq(&read_file(&m.path("big-chunks")), &expect, "big-chunks");
    assert_bytes_eq(&read_file(&m.path("plain")), &plain_expect, "plain");
    assert_bytes_eq(
        &read_file(&m.backing("plain")),
        &plain_expect,
        "plain stays plain",
    );
}

#[test]
fn copy_file_range_data_survives_sigkill_after_fsync_of_the_destination() {
    let mut m = Mount::new();
    let a_data = varied_text((3 * MIB + 999) as usize, 9);
    write_file(&m.path("a"), &a_data);
    let mut expect = varied_text((5 * MIB) as usize, 10);
    write_file(&m.path("b"), &expect);
    {
        let a = open_ro(&m.path("a"));
        // A source with data not written back yet, copied too.
        let s = open_rw(&m.path("s"));
        let s_data = varied_text((MIB + 5) as usize, 11);
        s.write_all_at(&s_data, 0).unwrap();
        let b = open_rw(&m.path("b"));
        assert_eq!(
            cfr_all(&a, 0, &b, MIB, 1 << 40).unwrap(),
            a_data.len() as u64
        );
        expect[MIB as usize..MIB as usize + a_data.len()].copy_from_slice(&a_data);
        assert_eq!(cfr_all(&s, 0, &b, 0, 1 << 40).unwrap(), s_data.len() as u64);
        expect[..s_data.len()].copy_from_slice(&s_data);
        b.sync_all().unwrap();
        assert!(report(&m, "members_copied") > 0);
        m.kill_daemon();
    }
    m.remove_dead_mount();
    m.mount();
    assert_bytes_eq(&read_file(&m.path("b")), &expect, "b after SIGKILL");
}

#[test]
fn copy_file_range_both_ways_at_once_and_within_one_file_finishes() {
    let m = Mount::new();
    let x = 2 * MIB;
    let a_data = varied_text((3 * x) as usize, 12);
    let b_data = varied_text((3 * x) as usize, 13);
    write_file(&m.path("a"), &a_data);
    write_file(&m.path("b"), &b_data);
    let (tx, rx) = mpsc::channel();
    let paths = Arc::new((m.path("a"), m.path("b")));
    let mut workers = Vec::new();
    for w in 0..3 {
        let (tx, paths) = (tx.clone(), paths.clone());
        workers.push(std::thread::spawn(move || {
            let (a, b) = (&paths.0, &paths.1);
            let (ar, aw, br, bw) = (open_ro(a), open_rw(a), open_ro(b), open_rw(b));
            for _ in 0..15 {
                let r = match w {
                    // a's first third onto b's second, and b's first onto a's second.
                    0 => cfr_all(&ar, 0, &bw, x, x),
                    1 => cfr_all(&br, 0, &aw, x, x),
                    // Within a, through two handles: its first third onto its last.
                    _ => cfr_all(&ar, 0, &aw, 2 * x, x),
                };
                assert_eq!(r.unwrap(), x);
            }
            tx.send(w).unwrap();
        }));
    }
    drop(tx);
    for _ in 0..3 {
        rx.recv_timeout(Duration::from_secs(120))
            .expect("copies both ways at once did not finish within 120 s (deadlock?)");
    }
    for w in workers {
        w.join().unwrap();
    }
    let x = x as usize;
    let mut a_expect = a_data.clone();
    a_expect[x..2 * x].copy_from_slice(&b_data[..x]);
    a_expect[2 * x..].copy_from_slice(&a_data[..x]);
    let mut b_expect = b_data.clone();
    b_expect[x..2 * x].copy_from_slice(&a_data[..x]);
    assert_bytes_eq(&read_file(&m.path("a")), &a_expect, "a");
    assert_bytes_eq(&read_file(&m.path("b")), &b_expect, "b");
}
