//! Integrity digests served as extended attributes (README, "Integrity digests"):
//! `user.deflatefs.blake3` equals `b3sum`, `user.deflatefs.sha256` equals `sha256sum`, after
//! every kind of write, around chunk boundaries, with holes, after remount, for every chunk size,
//! on hard links and on plain files; the attributes are not listed, cannot be set, and `cp -a`
//! does not copy them; `-o shatag` serves cshatag's pair; `-o digests=off` stores no digest
//! state yet serves the same values; `deflatefs stat` matches `du`.
//! Needs root and /dev/fuse (and the sha256sum, b3sum, getfattr and cp tools).

mod common;

use std::collections::BTreeSet;
use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use sha2::Digest;

use common::*;
use deflatefs::container::{build_stored_member, Container, PieceKind};
use deflatefs::digest::{chunk_cv, hex};

const BLAKE3: &str = "user.deflatefs.blake3";
const SHA256: &str = "user.deflatefs.sha256";
const INFO: &str = "user.deflatefs.info";

fn getxattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let (cp, cn) = (cpath(p), CString::new(name).unwrap());
    let mut buf = vec![0u8; 4096];
    let n = unsafe {
        libc::getxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

fn attr(p: &Path, name: &str) -> String {
    let v = getxattr(p, name).unwrap_or_else(|e| panic!("getxattr {name} on {}: {e}", p.display()));
    String::from_utf8(v).unwrap()
}

fn setxattr(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let (cp, cn) = (cpath(p), CString::new(name).unwrap());
    let r = unsafe {
        libc::setxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            0,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn removexattr(p: &Path, name: &str) -> io::Result<()> {
    let (cp, cn) = (cpath(p), CString::new(name).unwrap());
    if unsafe { libc::removexattr(cp.as_ptr(), cn.as_ptr()) } < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn listxattr(p: &Path) -> BTreeSet<String> {
    let cp = cpath(p);
    let mut buf = vec![0u8; 65536];
    let n = unsafe {
        libc::listxattr(
            cp.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
        )
    };
    assert!(
        n >= 0,
        "listxattr {}: {}",
        p.display(),
        io::Error::last_os_error()
    );
    buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// The first word a checksum tool prints for `p`.
fn tool_digest(tool: &str, p: &Path) -> String {
    let (ok, out, err) = run_tool(tool, &[p.as_os_str()]);
    assert!(ok, "{tool} {}: {err}", p.display());
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&sha2::Sha256::digest(data))
}

fn blake3_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// Both served digests of `p` against the tools and against the expected content.
#[track_caller]
fn assert_digests(p: &Path, content: &[u8]) {
    let (b3, sha) = (attr(p, BLAKE3), attr(p, SHA256));
    assert_eq!(
        b3,
        blake3_hex(content),
        "blake3 of {} ({} bytes)",
        p.display(),
        content.len()
    );
    assert_eq!(
        sha,
        sha256_hex(content),
        "sha256 of {} ({} bytes)",
        p.display(),
        content.len()
    );
    assert_eq!(b3, tool_digest("b3sum", p), "b3sum of {}", p.display());
    assert_eq!(
        sha,
        tool_digest("sha256sum", p),
        "sha256sum of {}",
        p.display()
    );
}

fn rw(p: &Path) -> File {
    OpenOptions::new().read(true).write(true).open(p).unwrap()
}

/// The backing container, opened read-only (the mount has committed what was closed).
fn backing_container(p: &Path) -> Container {
    Container::open(File::open(p).unwrap()).unwrap()
}

/// Whether the last commit of the backing container records the SHA-256 of its whole content.
fn sha_state_recorded(p: &Path) -> bool {
    let c = backing_container(p);
    c.aux().is_some_and(|a| a.sha256_len == c.size())
}

#[test]
fn digests_equal_the_tools_around_chunk_boundaries_for_every_chunk_size_and_after_remount() {
    for log2 in 12u32..=22 {
        let c = 1usize << log2;
        let chunk_opt = format!("chunk={}k", c >> 10);
        let mut m = Mount::with_opts(&[&chunk_opt]);
        let mut sizes = vec![0, 1, c - 1, c, c + 1];
        for k in 1..=3 {
            sizes.extend([(c << k) - 1, (c << k) + 1]);
        }
        if log2 <= 14 {
            sizes.extend([(c << 4) - 1, c << 4, (c << 4) + 1]);
        }
        let mut files = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let data = varied_text(n, (log2 as u64) << 8 | i as u64);
            let name = format!("f{i}-{n}");
            std::fs::write(m.path(&name), &data).unwrap();
            files.push((name, data));
        }
        for (name, data) in &files {
            assert_digests(&m.path(name), data);
        }
        m.remount();
        for (name, data) in &files {
            // An empty file needs no state (its digest is a constant), and a flush with no new
            // content commits nothing.
            assert!(
                data.is_empty() || sha_state_recorded(&m.backing(name)),
                "{chunk_opt} {name}: a sequentially written file records its SHA-256 state"
            );
            assert_digests(&m.path(name), data);
        }
    }
}

#[test]
fn every_entry_written_through_the_mount_carries_the_chunk_chaining_value() {
    let m = Mount::with_opts(&["chunk=4k"]);
    let p = m.path("f");
    let mut model = varied_text(10 * 4096 + 100, 1);
    std::fs::write(&p, &model).unwrap();
    // An overwrite inside a chunk, an append piece after an fsync, a truncation into a chunk.
    let f = rw(&p);
    f.write_all_at(b"XYZ", 5000).unwrap();
    model[5000..5003].copy_from_slice(b"XYZ");
    f.sync_all().unwrap();
    f.write_all_at(b"tail", model.len() as u64).unwrap();
    model.extend_from_slice(b"tail");
    f.sync_all().unwrap();
    f.set_len(7 * 4096 + 10).unwrap();
    model.truncate(7 * 4096 + 10);
    drop(f);
    let c = backing_container(&m.backing("f"));
    for chunk in c.index().data_chunks().collect::<Vec<_>>() {
        let last = c.index().pieces(chunk).last().unwrap().clone();
        assert_ne!(last.kind, PieceKind::Hole);
        let start = (chunk * 4096) as usize;
        let end = (start + 4096).min(model.len());
        assert_eq!(
            last.chaining_value,
            chunk_cv(start as u64, &model[start..end]),
            "chunk {chunk}"
        );
    }
    assert_digests(&p, &model);
}

#[test]
fn sha256_state_survives_fsync_and_reopening_to_append() {
    let m = Mount::with_opts(&["chunk=8k"]);
    let p = m.path("log");
    let mut model = Vec::new();
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .unwrap();
    for i in 0..200 {
        let line = format!("line {i} {}\n", "x".repeat(i % 37));
        io::Write::write_all(&mut &f, line.as_bytes()).unwrap();
        model.extend_from_slice(line.as_bytes());
        if i % 50 == 0 {
            f.sync_all().unwrap();
            assert_eq!(attr(&p, SHA256), sha256_hex(&model));
        }
    }
    drop(f);
    assert!(sha_state_recorded(&m.backing("log")));
    let f = OpenOptions::new().append(true).open(&p).unwrap();
    io::Write::write_all(&mut &f, b"after reopen\n").unwrap();
    model.extend_from_slice(b"after reopen\n");
    drop(f);
    assert!(
        sha_state_recorded(&m.backing("log")),
        "reopening to append continues the running state"
    );
    assert_digests(&p, &model);
}

#[test]
fn random_write_makes_sha256_stale_then_reading_recomputes_records_and_keeps_mtime() {
    let m = Mount::with_opts(&["chunk=4k"]);
    let p = m.path("f");
    let mut model = varied_text(100_000, 3);
    std::fs::write(&p, &model).unwrap();
    assert!(sha_state_recorded(&m.backing("f")));
    let f = rw(&p);
    f.write_all_at(&[0xAB; 4096], 40_000).unwrap();
    model[40_000..44_096].fill(0xAB);
    drop(f);
    assert!(
        !sha_state_recorded(&m.backing("f")),
        "an overwrite in the middle makes the recorded state stale"
    );
    let before = std::fs::metadata(&p).unwrap();
    assert_eq!(attr(&p, SHA256), sha256_hex(&model));
    assert!(
        sha_state_recorded(&m.backing("f")),
        "the recomputed state is recorded"
    );
    let after = std::fs::metadata(&p).unwrap();
    assert_eq!(
        (before.mtime(), before.mtime_nsec()),
        (after.mtime(), after.mtime_nsec()),
        "reading a digest does not move the mtime"
    );
    assert_digests(&p, &model);
    // Truncating to zero starts a fresh running state.
    let f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.write_all_at(b"fresh", 0).unwrap();
    drop(f);
    assert!(sha_state_recorded(&m.backing("f")));
    assert_digests(&p, b"fresh");
}

#[test]
fn digests_of_open_files_include_unflushed_writes() {
    let m = Mount::with_opts(&["chunk=4k"]);
    let p = m.path("f");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    let mut model = varied_text(30_000, 4);
    f.write_all_at(&model, 0).unwrap();
    assert_eq!(attr(&p, BLAKE3), blake3_hex(&model));
    assert_eq!(attr(&p, SHA256), sha256_hex(&model));
    f.write_all_at(b"middle", 9000).unwrap();
    model[9000..9006].copy_from_slice(b"middle");
    f.write_all_at(b"!", 50_000).unwrap(); // a hole up to the end
    model.resize(50_000, 0);
    model.push(b'!');
    assert_eq!(attr(&p, BLAKE3), blake3_hex(&model));
    assert_eq!(attr(&p, SHA256), sha256_hex(&model));
    drop(f);
    assert_digests(&p, &model);
}

#[test]
fn served_attributes_are_hidden_protected_and_not_copied_by_cp_a() {
    let m = Mount::new();
    let p = m.path("f");
    std::fs::write(&p, b"some content").unwrap();
    setxattr(&p, "user.note", b"kept").unwrap();
    assert_eq!(
        listxattr(&p),
        BTreeSet::from(["user.note".to_string()]),
        "served attributes are not listed, others are"
    );
    for name in [BLAKE3, SHA256, INFO, "user.deflatefs.other"] {
        let e = setxattr(&p, name, b"x").unwrap_err();
        assert_eq!(errno_of(&e), libc::EPERM, "setxattr {name}");
        let e = removexattr(&p, name).unwrap_err();
        assert_eq!(errno_of(&e), libc::EPERM, "removexattr {name}");
    }
    let e = getxattr(&p, "user.deflatefs.other").unwrap_err();
    assert_eq!(errno_of(&e), libc::ENODATA);
    let (ok, _, err) = run_tool(
        "setfattr",
        &[
            OsStr::new("-n"),
            OsStr::new(SHA256),
            OsStr::new("-v"),
            OsStr::new("x"),
            p.as_os_str(),
        ],
    );
    assert!(!ok && err.contains("Operation not permitted"), "{err}");
    let (ok, out, err) = run_tool("getfattr", &[OsStr::new("-d"), p.as_os_str()]);
    assert!(ok, "{err}");
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.contains("user.note") && !out.contains("user.deflatefs"),
        "{out}"
    );
    // cp -a to a directory outside the mount copies user.note and nothing of ours.
    let dest = tempfile::tempdir().unwrap();
    let (ok, _, err) = run_tool(
        "cp",
        &[OsStr::new("-a"), p.as_os_str(), dest.path().as_os_str()],
    );
    assert!(ok, "{err}");
    assert_eq!(
        listxattr(&dest.path().join("f")),
        BTreeSet::from(["user.note".to_string()])
    );
    // Directories and symlinks have no digests.
    std::fs::create_dir(m.path("d")).unwrap();
    std::os::unix::fs::symlink("f", m.path("l")).unwrap();
    assert_eq!(
        errno_of(&getxattr(&m.path("d"), SHA256).unwrap_err()),
        libc::ENODATA
    );
    let cl = cpath(&m.path("l"));
    let name = CString::new(BLAKE3).unwrap();
    let mut buf = [0u8; 128];
    let r = unsafe {
        libc::lgetxattr(
            cl.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr() as *mut _,
            buf.len(),
        )
    };
    assert!(
        r < 0 && errno() == libc::ENODATA,
        "symlink: {r} {}",
        errno()
    );
}

#[test]
fn info_line_describes_the_container() {
    let m = Mount::with_opts(&["chunk=4k", "level=1"]);
    let p = m.path("f");
    std::fs::write(&p, varied_text(3 * 4096, 5)).unwrap();
    let f = rw(&p);
    f.set_len(6 * 4096 + 1).unwrap(); // three holes and a partial fourth
    drop(f);
    let info = attr(&p, INFO);
    let kv: std::collections::BTreeMap<&str, &str> = info
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect();
    let keys: Vec<&str> = kv.keys().copied().collect();
    assert_eq!(
        keys,
        [
            "chunk", "chunks", "codec", "disk", "format", "holes", "level", "ratio", "size",
            "stored"
        ],
        "{info}"
    );
    assert_eq!(kv["size"], (6 * 4096 + 1).to_string());
    assert_eq!((kv["chunk"], kv["chunks"], kv["holes"]), ("4096", "3", "4"));
    assert_eq!(
        (kv["codec"], kv["level"], kv["format"]),
        ("deflate", "1", "1")
    );
    assert_eq!(
        kv["stored"],
        std::fs::metadata(m.backing("f")).unwrap().len().to_string()
    );
    let disk = std::fs::metadata(&p).unwrap().blocks() * 512;
    assert_eq!(kv["disk"], disk.to_string());
}

#[test]
fn plain_files_are_hashed_by_reading_and_say_format_plain() {
    let mut m = Mount::unmounted(&[], false);
    let data = random_bytes(300_000, 6);
    std::fs::write(m.backing("plain"), &data).unwrap();
    m.mount();
    let p = m.path("plain");
    assert_digests(&p, &data);
    assert!(
        attr(&p, INFO).ends_with("format=plain"),
        "{}",
        attr(&p, INFO)
    );
    // A change of the same size right away is seen (digests of fresh files are not cached).
    let f = rw(&p);
    f.write_all_at(b"changed", 1000).unwrap();
    drop(f);
    let mut changed = data.clone();
    changed[1000..1007].copy_from_slice(b"changed");
    assert_digests(&p, &changed);
}

#[test]
fn hard_links_share_one_digest() {
    let m = Mount::with_opts(&["chunk=16k"]);
    let mut model = varied_text(70_000, 7);
    std::fs::write(m.path("a"), &model).unwrap();
    std::fs::hard_link(m.path("a"), m.path("b")).unwrap();
    let f = rw(&m.path("b"));
    f.write_all_at(b"via b", 20_000).unwrap();
    model[20_000..20_005].copy_from_slice(b"via b");
    drop(f);
    assert_digests(&m.path("a"), &model);
    assert_digests(&m.path("b"), &model);
}

#[test]
fn files_without_chaining_values_or_sha_state_are_computed_from_data() {
    // A container as an older deflatefs wrote it: zero chaining values, no auxiliary member.
    let mut m = Mount::unmounted(&[], false);
    let data = varied_text(3 * 4096 + 500, 8);
    {
        let mut c = Container::create(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(m.backing("old"))
                .unwrap(),
            12,
        )
        .unwrap();
        for (i, piece) in data.chunks(4096).enumerate() {
            let (member, entry) = build_stored_member((i * 4096) as u64, true, piece);
            c.append_member(&member, entry).unwrap();
        }
        c.set_size(data.len() as u64);
        c.commit().unwrap();
    }
    m.mount();
    assert_digests(&m.path("old"), &data);
    assert!(sha_state_recorded(&m.backing("old")));
}

/// Every piece of every chunk of the backing container has the all-zero ("not computed")
/// chaining value.
#[track_caller]
fn assert_no_chaining_values(backing: &Path) {
    let c = backing_container(backing);
    let chunks: Vec<u64> = c.index().data_chunks().collect();
    assert!(chunks.len() > 1, "a multi-chunk file");
    for chunk in chunks {
        for p in c.index().pieces(chunk) {
            assert_eq!(
                p.chaining_value, [0; 32],
                "chunk {chunk}, piece at {}: no chaining value with digests=off",
                p.logical_offset
            );
        }
    }
}

/// Appends `data` to `p` through an O_APPEND descriptor and closes it.
fn append(p: &Path, data: &[u8]) {
    let f = OpenOptions::new().append(true).open(p).unwrap();
    io::Write::write_all(&mut &f, data).unwrap();
}

#[test]
fn digests_off_stores_no_chaining_values_or_sha_state_yet_serves_digests_equal_to_the_tools() {
    let m = Mount::with_opts(&["chunk=16k", "digests=off"]);
    let p = m.path("f");
    // Whole chunks, a partial tail, then (after an fsync) an appended piece and a new chunk.
    let mut model = varied_text(5 * 16384 + 777, 21);
    std::fs::write(&p, &model).unwrap();
    let f = OpenOptions::new().append(true).open(&p).unwrap();
    f.sync_all().unwrap();
    let more = varied_text(16384, 22);
    io::Write::write_all(&mut &f, &more).unwrap();
    model.extend_from_slice(&more);
    drop(f);
    assert_no_chaining_values(&m.backing("f"));
    assert!(
        backing_container(&m.backing("f")).aux().is_none(),
        "no commit records a SHA-256 state with digests=off"
    );
    // Computed by reading the file; the SHA-256 so computed is recorded.
    assert_digests(&p, &model);
    assert!(sha_state_recorded(&m.backing("f")));
    // The write path does not continue that state either: an append makes it stale again.
    append(&p, b"appended after the digests were read\n");
    model.extend_from_slice(b"appended after the digests were read\n");
    assert!(!sha_state_recorded(&m.backing("f")));
    assert_no_chaining_values(&m.backing("f"));
    assert_digests(&p, &model);
}

#[test]
fn file_written_with_digests_off_has_right_digests_after_remount_with_digests_on_and_append() {
    let mut m = Mount::with_opts(&["chunk=16k", "digests=off"]);
    let p = m.path("f");
    let mut model = varied_text(7 * 16384 + 5000, 23);
    std::fs::write(&p, &model).unwrap();
    m.unmount();
    assert_no_chaining_values(&m.backing("f"));
    assert!(!sha_state_recorded(&m.backing("f")));
    m.opts = vec!["chunk=16k".into(), "digests=on".into()];
    m.mount();
    assert_digests(&p, &model);
    // An append that fills the partial last chunk and starts another: the new pieces carry
    // the chunk's chaining value again (the old chunks still have none and are read).
    let more = varied_text(20_000, 24);
    append(&p, &more);
    model.extend_from_slice(&more);
    let c = backing_container(&m.backing("f"));
    for chunk in [7u64, 8] {
        let last = c.index().pieces(chunk).last().unwrap().clone();
        let start = (chunk * 16384) as usize;
        let end = (start + 16384).min(model.len());
        assert_eq!(
            last.chaining_value,
            chunk_cv(start as u64, &model[start..end]),
            "chunk {chunk} written with digests=on"
        );
    }
    assert_eq!(
        c.index().pieces(0).last().unwrap().chaining_value,
        [0; 32],
        "chunk 0, written with digests=off, is unchanged"
    );
    assert_digests(&p, &model);
    m.remount();
    assert_digests(&p, &model);
}

#[test]
fn shatag_option_serves_what_cshatag_reads() {
    let m = Mount::with_opts(&["shatag"]);
    let p = m.path("f");
    std::fs::write(&p, b"bit rot check").unwrap();
    let meta = std::fs::metadata(&p).unwrap();
    assert_eq!(attr(&p, "user.shatag.sha256"), sha256_hex(b"bit rot check"));
    assert_eq!(
        attr(&p, "user.shatag.ts"),
        format!("{:010}.{:09}", meta.mtime(), meta.mtime_nsec())
    );
    assert_eq!(
        errno_of(&setxattr(&p, "user.shatag.ts", b"1").unwrap_err()),
        libc::EPERM
    );
    assert!(listxattr(&p).is_empty());

    // Without the option the names belong to the file like any other user attribute.
    let m2 = Mount::new();
    let q = m2.path("g");
    std::fs::write(&q, b"x").unwrap();
    setxattr(&q, "user.shatag.sha256", b"stored by cshatag").unwrap();
    assert_eq!(attr(&q, "user.shatag.sha256"), "stored by cshatag");
}

#[test]
fn stat_command_totals_match_du_inside_the_mount_and_on_the_backing_directory() {
    let mut m = Mount::unmounted(&[], false);
    std::fs::write(m.backing("plain"), b"a plain file").unwrap();
    m.mount();
    std::fs::create_dir(m.path("d")).unwrap();
    std::fs::write(m.path("d/text"), varied_text(500_000, 9)).unwrap();
    std::fs::write(m.path("d/small"), b"small").unwrap();
    std::fs::hard_link(m.path("d/text"), m.path("d/text2")).unwrap();
    let f = File::create(m.path("sparse")).unwrap();
    f.set_len(10 << 20).unwrap();
    f.write_all_at(b"end", (10 << 20) - 3).unwrap();
    drop(f);
    let du = |p: &Path, apparent: bool| -> u64 {
        let mut args = vec![OsStr::new("-s")];
        args.push(OsStr::new(if apparent { "-b" } else { "-B1" }));
        args.push(p.as_os_str());
        let (ok, out, err) = run_tool("du", &args);
        assert!(ok, "{err}");
        String::from_utf8_lossy(&out)
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    for dir in [m.mnt.clone(), m.src.clone()] {
        let (code, out) = run_deflatefs(&["stat", "--json", "-s", dir.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}");
        let field = |section: &str, key: &str| -> u64 {
            let s = &out[out.find(&format!("\"{section}\":")).unwrap()..];
            let v = &s[s.find(&format!("\"{key}\":")).unwrap() + key.len() + 3..];
            v[..v.find([',', '}']).unwrap()].parse().unwrap()
        };
        assert_eq!(field("total", "files"), 4, "{out}");
        assert_eq!(field("total", "containers"), 3, "{out}");
        assert_eq!(
            field("total", "logical"),
            500_000 + 5 + 12 + (10 << 20),
            "{out}"
        );
        assert!(field("total", "holes") > 0, "{out}");
        assert_eq!(
            field("du", "apparent"),
            du(&dir, true),
            "{} {out}",
            dir.display()
        );
        assert_eq!(
            field("du", "disk"),
            du(&dir, false),
            "{} {out}",
            dir.display()
        );
    }
    let (code, table) = run_deflatefs(&["stat", m.path("d").to_str().unwrap()]);
    assert_eq!(code, 0, "{table}");
    assert!(
        table.contains("TOTAL: 2 files (2 containers, 0 plain)"),
        "{table}"
    );
}

// ---- random write/truncate sequences ----

#[derive(Debug, Clone)]
enum Op {
    Write { off: u64, len: usize, seed: u64 },
    Append { len: usize, seed: u64 },
    Truncate { size: u64 },
    Fsync,
    Reopen,
    Check,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    // Offsets and sizes around chunk boundaries of 4 KiB chunks, up to 20 chunks.
    let near = prop_oneof![
        (0u64..20).prop_map(|k| k * 4096),
        (1u64..20).prop_map(|k| k * 4096 - 1),
        (0u64..20).prop_map(|k| k * 4096 + 1),
        0u64..82_000,
    ];
    prop_oneof![
        4 => (near.clone(), 1usize..9000, any::<u64>()).prop_map(|(off, len, seed)| Op::Write { off, len, seed }),
        3 => (1usize..9000, any::<u64>()).prop_map(|(len, seed)| Op::Append { len, seed }),
        2 => near.prop_map(|size| Op::Truncate { size }),
        1 => Just(Op::Fsync),
        1 => Just(Op::Reopen),
        2 => Just(Op::Check),
    ]
}

fn check_case(p: &Path, model: &[u8], step: usize) -> Result<(), TestCaseError> {
    let b3 =
        String::from_utf8(getxattr(p, BLAKE3).map_err(|e| TestCaseError::fail(e.to_string()))?)
            .unwrap();
    let sha =
        String::from_utf8(getxattr(p, SHA256).map_err(|e| TestCaseError::fail(e.to_string()))?)
            .unwrap();
    prop_assert_eq!(
        b3,
        blake3_hex(model),
        "blake3 after step {} ({} bytes)",
        step,
        model.len()
    );
    prop_assert_eq!(
        sha,
        sha256_hex(model),
        "sha256 after step {} ({} bytes)",
        step,
        model.len()
    );
    Ok(())
}

fn run_case(m: &Mount, name: &str, ops: &[Op]) -> Result<(), TestCaseError> {
    let p = m.path(name);
    let mut f = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    let mut model: Vec<u8> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Write { off, len, seed } => {
                let data = if seed % 3 == 0 {
                    random_bytes(*len, *seed)
                } else {
                    varied_text(*len, *seed)
                };
                f.write_all_at(&data, *off).unwrap();
                let end = *off as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[*off as usize..end].copy_from_slice(&data);
            }
            Op::Append { len, seed } => {
                let data = varied_text(*len, *seed);
                f.write_all_at(&data, model.len() as u64).unwrap();
                model.extend_from_slice(&data);
            }
            Op::Truncate { size } => {
                f.set_len(*size).unwrap();
                model.resize(*size as usize, 0);
            }
            Op::Fsync => f.sync_all().unwrap(),
            Op::Reopen => {
                drop(f);
                f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
            }
            Op::Check => check_case(&p, &model, step)?,
        }
    }
    drop(f);
    check_case(&p, &model, ops.len())?;
    prop_assert_eq!(tool_digest("sha256sum", &p), sha256_hex(&model));
    prop_assert_eq!(tool_digest("b3sum", &p), blake3_hex(&model));
    Ok(())
}

#[test]
fn digests_match_after_random_write_and_truncate_sequences() {
    let mut m = Mount::with_opts(&["chunk=4k"]);
    let cases = std::cell::RefCell::new(Vec::new());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 40,
        failure_persistence: None,
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    });
    let result = runner.run(&prop::collection::vec(op_strategy(), 1..30), |ops| {
        // Every case (shrinking included) gets a file of its own.
        let name = format!("case{}", cases.borrow().len());
        cases.borrow_mut().push(name.clone());
        run_case(&m, &name, &ops)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let cases = cases.into_inner();
    // And the same digests after a remount (from the recorded state and chaining values).
    let expected: Vec<(String, String, String)> = cases
        .iter()
        .map(|c| {
            (
                c.clone(),
                attr(&m.path(c), BLAKE3),
                attr(&m.path(c), SHA256),
            )
        })
        .collect();
    m.remount();
    for (c, b3, sha) in expected {
        assert_eq!(attr(&m.path(&c), BLAKE3), b3, "{c} after remount");
        assert_eq!(attr(&m.path(&c), SHA256), sha, "{c} after remount");
    }
}
