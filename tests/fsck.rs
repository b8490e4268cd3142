//! `deflatefs fsck`: a backing directory with hand-damaged containers. fsck finds every one,
//! `--repair` fixes what can be fixed (torn tails, lost indexes, a damaged header, leftovers),
//! reports the chunks it cannot recover, and the mount afterwards serves everything repairable
//! while the unrecoverable chunks read as EIO (never zeros). fsck refuses a mounted source.

mod common;

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{run_deflatefs, scan_members, varied_text, Mount};

const CHUNK: usize = 16 << 10;

fn write_file(p: &Path, data: &[u8]) {
    let mut f = File::create(p).unwrap();
    f.write_all(data).unwrap();
}

fn append(p: &Path, data: &[u8]) {
    let mut f = fs::OpenOptions::new().append(true).open(p).unwrap();
    f.write_all(data).unwrap();
}

/// Flips one bit of a file at `at`.
fn flip(p: &Path, at: usize) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at as u64).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], at as u64).unwrap();
}

/// Offset of the middle of the `n`-th member of kind `kind` (b'd', b'i', b'c').
fn member_middle(p: &Path, kind: u8, n: usize) -> usize {
    let bytes = fs::read(p).unwrap();
    let members = scan_members(&bytes);
    let i = members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.kind == kind)
        .nth(n)
        .unwrap_or_else(|| panic!("{}: no member {n} of kind {}", p.display(), kind as char))
        .0;
    let start = members[i].offset;
    let end = members.get(i + 1).map_or(bytes.len(), |m| m.offset);
    (start + end) / 2
}

fn fsck(src: &Path, repair: bool) -> (i32, String) {
    let s = src.to_str().unwrap();
    if repair {
        run_deflatefs(&["fsck", "--repair", s])
    } else {
        run_deflatefs(&["fsck", s])
    }
}

/// Asserts that `p` reads as `want`, saying where it differs (not dumping both).
#[track_caller]
fn assert_reads(p: &Path, want: &[u8]) {
    let got = fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{}: {} bytes read, {} expected; first difference at {:?}",
            p.display(),
            got.len(),
            want.len(),
            at
        );
    }
}

fn lines_about<'a>(report: &'a str, name: &str) -> Vec<&'a str> {
    report
        .lines()
        .filter(|l| l.starts_with(&format!("{name}:")))
        .collect()
}

#[test]
fn fsck_finds_every_damaged_container_and_repair_fixes_what_can_be_fixed() {
    let mut m = Mount::with_opts(&["chunk=16k"]);
    let text = |n, seed| varied_text(n, seed);
    // Healthy files.
    write_file(&m.path("good"), &text(300_000, 1));
    write_file(&m.path("plain-elsewhere"), b"x");
    // A torn tail: garbage after the last commit.
    write_file(&m.path("torn"), &text(200_000, 2));
    // A commit cut in the middle: opens at the commit before. One descriptor, so that the
    // second commit is the close's: with two, the first one's asynchronous release can commit
    // part of the append in between (the kernel sends it as two writes, split at the partial
    // page), and the commit before the cut one would hold that part.
    {
        let mut f = File::create(m.path("cut")).unwrap();
        f.write_all(&text(100_000, 3)).unwrap();
        f.sync_all().unwrap();
        f.write_all(&text(50_000, 4)).unwrap();
    }
    // Damaged data: one chunk cannot be recovered.
    write_file(&m.path("bitflip"), &text(300_000, 5));
    // Damaged index of the last commit: rebuilt from the members, nothing lost.
    write_file(&m.path("index"), &text(100_000, 6));
    append(&m.path("index"), &text(80_000, 7));
    // Damaged index of an older commit (no checkpoint since): rebuilt, nothing lost.
    write_file(&m.path("oldindex"), &text(60_000, 8));
    append(&m.path("oldindex"), &text(60_000, 9));
    append(&m.path("oldindex"), &text(60_000, 10));
    // Damaged header: served as a plain file until repaired.
    write_file(&m.path("header"), &text(70_000, 11));
    // Header zeroed: no longer starts like a container (served as a plain file) until repaired.
    write_file(&m.path("zeroed"), &text(70_000, 15));
    // First 8 KiB zeroed (blocks lost in a power cut): found by its final commit, rebuilt; the
    // chunks whose members were there read EIO.
    write_file(&m.path("lostfirst"), &text(100_000, 16));
    // Index and one data member damaged: rebuilt, that chunk unrecoverable.
    write_file(&m.path("both"), &text(120_000, 12));
    append(&m.path("both"), &text(40_000, 13));
    m.unmount();

    let src = m.src.clone();
    let (code, report) = fsck(&src, false);
    assert_eq!(code, 0, "before any damage:\n{report}");
    // Plain files and foreign gzip files are not containers: no problem.
    write_file(&m.backing("plain.txt"), b"plain text, not a container\n");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&text(10_000, 14)).unwrap();
    write_file(&m.backing("other.gz"), &gz.finish().unwrap());
    write_file(&m.backing(".deflatefs-compact-999"), b"leftover");

    // Damage.
    let b = |n: &str| m.backing(n);
    append(&b("torn"), &fs::read(b("torn")).unwrap()[60..1060]);
    let len = fs::metadata(b("cut")).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(b("cut"))
        .unwrap()
        .set_len(len - 40)
        .unwrap();
    let bitflip_chunk = {
        let at = member_middle(&b("bitflip"), b'd', 7);
        flip(&b("bitflip"), at);
        7
    };
    let index_members = scan_members(&fs::read(b("index")).unwrap())
        .iter()
        .filter(|x| x.kind == b'i')
        .count();
    flip(
        &b("index"),
        member_middle(&b("index"), b'i', index_members - 1),
    );
    flip(&b("oldindex"), member_middle(&b("oldindex"), b'i', 0));
    flip(&b("header"), 30); // the header's payload: its crc32 no longer matches
    fs::OpenOptions::new()
        .write(true)
        .open(b("zeroed"))
        .unwrap()
        .write_all_at(&[0u8; deflatefs::container::HEADER_MEMBER_LEN], 0)
        .unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(b("lostfirst"))
        .unwrap()
        .write_all_at(&[0u8; 8192], 0)
        .unwrap();
    let both_bytes = fs::read(b("both")).unwrap();
    let both_d = scan_members(&both_bytes)
        .iter()
        .filter(|x| x.kind == b'd')
        .count();
    flip(&b("both"), member_middle(&b("both"), b'i', 0));
    flip(&b("both"), member_middle(&b("both"), b'd', both_d - 1));

    let damaged = [
        "torn",
        "cut",
        "bitflip",
        "index",
        "oldindex",
        "header",
        "zeroed",
        "lostfirst",
        "both",
    ];
    let (code, report) = fsck(&src, false);
    assert_eq!(code, 1, "fsck must report problems:\n{report}");
    for name in damaged {
        assert!(
            !lines_about(&report, name).is_empty(),
            "fsck does not report {name}:\n{report}"
        );
    }
    for name in ["good", "plain.txt", "other.gz", "plain-elsewhere"] {
        assert!(
            lines_about(&report, name).is_empty(),
            "fsck reports the healthy {name}:\n{report}"
        );
    }
    assert!(report.contains(".deflatefs-compact-999"), "{report}");
    assert!(
        lines_about(&report, "bitflip")
            .iter()
            .any(|l| l.contains(&format!("chunk {bitflip_chunk}"))),
        "{report}"
    );
    // Read-only: nothing changed.
    assert_eq!(fs::read(b("both")).unwrap().len(), both_bytes.len());

    let (code, report) = fsck(&src, true);
    assert_eq!(code, 1, "problems were found:\n{report}");
    for name in [
        "torn",
        "index",
        "oldindex",
        "header",
        "zeroed",
        "lostfirst",
        "both",
    ] {
        assert!(
            lines_about(&report, name)
                .iter()
                .any(|l| l.contains("repaired")),
            "{name} not repaired:\n{report}"
        );
    }
    assert!(!b(".deflatefs-compact-999").exists());

    // Again: only the unrecoverable chunks remain.
    let (code, report) = fsck(&src, false);
    assert_eq!(code, 1, "{report}");
    let left: Vec<&str> = report
        .lines()
        .filter(|l| l.contains(": "))
        .filter(|l| !l.contains("files checked"))
        .collect();
    for l in &left {
        assert!(
            l.starts_with("bitflip:") || l.starts_with("both:") || l.starts_with("lostfirst:"),
            "after the repair, still: {l}\n{report}"
        );
    }

    // The mount serves everything repairable; the unrecoverable chunks read as EIO.
    m.mount();
    assert_reads(&m.path("good"), &text(300_000, 1));
    assert_reads(&m.path("torn"), &text(200_000, 2));
    assert_reads(&m.path("cut"), &text(100_000, 3));
    let mut full = text(100_000, 6);
    full.extend_from_slice(&text(80_000, 7));
    assert_reads(&m.path("index"), &full);
    let mut full = text(60_000, 8);
    full.extend_from_slice(&text(60_000, 9));
    full.extend_from_slice(&text(60_000, 10));
    assert_reads(&m.path("oldindex"), &full);
    assert_reads(&m.path("header"), &text(70_000, 11));
    assert_reads(&m.path("zeroed"), &text(70_000, 15));
    let want = text(100_000, 16);
    let f = File::open(m.path("lostfirst")).unwrap();
    let mut eio = Vec::new();
    for c in 0..want.len().div_ceil(CHUNK) {
        let mut buf = vec![0u8; CHUNK.min(want.len() - c * CHUNK)];
        match f.read_exact_at(&mut buf, (c * CHUNK) as u64) {
            Ok(()) => assert!(buf == want[c * CHUNK..c * CHUNK + buf.len()], "chunk {c}"),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO));
                eio.push(c);
            }
        }
    }
    assert!(
        !eio.is_empty() && eio.iter().all(|c| *c < 2),
        "lostfirst: chunks reading EIO: {eio:?} (the members in its first 8 KiB)"
    );
    let want = text(300_000, 5);
    let f = File::open(m.path("bitflip")).unwrap();
    for c in 0..300_000usize.div_ceil(CHUNK) {
        let mut buf = vec![0u8; CHUNK.min(300_000 - c * CHUNK)];
        let r = f.read_exact_at(&mut buf, (c * CHUNK) as u64);
        if c == bitflip_chunk {
            assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EIO));
        } else {
            r.unwrap();
            assert!(buf == want[c * CHUNK..c * CHUNK + buf.len()], "chunk {c}");
        }
    }
    let mut want = text(120_000, 12);
    want.extend_from_slice(&text(40_000, 13));
    let f = File::open(m.path("both")).unwrap();
    let mut eio = 0;
    for c in 0..want.len().div_ceil(CHUNK) {
        let mut buf = vec![0u8; CHUNK.min(want.len() - c * CHUNK)];
        match f.read_exact_at(&mut buf, (c * CHUNK) as u64) {
            Ok(()) => assert!(buf == want[c * CHUNK..c * CHUNK + buf.len()], "chunk {c}"),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO));
                eio += 1;
            }
        }
    }
    assert_eq!(eio, 1, "one chunk of 'both' is unrecoverable");
    assert_eq!(
        fs::read(m.path("plain.txt")).unwrap(),
        b"plain text, not a container\n"
    );

    // A mounted source is refused.
    let (code, report) = fsck(&src, true);
    assert_eq!(code, 2, "{report}");
    assert!(report.contains("unmount it first"), "{report}");
    m.unmount();
}

#[test]
fn fsck_exit_codes_clean_and_could_not_run() {
    let mut m = Mount::with_opts(&["chunk=16k"]);
    write_file(&m.path("a"), &varied_text(50_000, 1));
    write_file(&m.path("b"), b"");
    m.unmount();
    let (code, report) = fsck(&m.src, false);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("2 files checked"), "{report}");
    let (code, report) = fsck(&m.src.join("missing"), false);
    assert_eq!(code, 2, "{report}");
    // Mounted over itself: refused too.
    let mut same = Mount::unmounted(&[], true);
    same.mount();
    let (code, report) = fsck(&same.src, false);
    assert_eq!(code, 2, "{report}");
    same.unmount();
}
