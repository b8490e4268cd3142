//! Real-mount tests: each test mounts deflatefs in its own temporary directory, performs one
//! behaviour through the mount, and checks what ext4/POSIX would give. Needs root and /dev/fuse.

mod common;

use std::collections::BTreeSet;
use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// helpers

fn rw_open(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

fn create(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(p)
        .unwrap_or_else(|e| panic!("create {}: {e}", p.display()))
}

fn write_file(p: &Path, data: &[u8]) {
    fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

fn read_file(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// pread of up to `len` bytes at `off` (short only at EOF).
fn pread(f: &File, off: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = f.read_at(&mut buf[done..], off + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(buf)
}

fn pwrite_all(f: &File, off: u64, data: &[u8]) {
    f.write_all_at(data, off)
        .unwrap_or_else(|e| panic!("pwrite {} bytes at {off}: {e}", data.len()));
}

/// Applies a pwrite to an in-memory model of a file.
fn model_write(model: &mut Vec<u8>, off: usize, data: &[u8]) {
    if model.len() < off + data.len() {
        model.resize(off + data.len(), 0);
    }
    model[off..off + data.len()].copy_from_slice(data);
}

#[track_caller]
fn expect_errno<T: std::fmt::Debug>(r: io::Result<T>, want: i32, what: &str) {
    match r {
        Ok(v) => panic!("{what}: succeeded ({v:?}), expected {}", errno_name(want)),
        Err(e) => assert_eq!(
            errno_of(&e),
            want,
            "{what}: failed with {e}, expected {}",
            errno_name(want)
        ),
    }
}

/// Turns a libc return value into io::Result.
fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    let (a, b) = (cpath(from), cpath(to));
    check(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    })
}

/// The names in a backing directory, but for the mount's lock on its source.
fn names_in(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| *n != deflatefs::source_lock::lock_file_name())
        .collect()
}

fn setxattr(p: &Path, name: &str, value: &[u8], flags: libc::c_int) -> io::Result<()> {
    let (cp, cn) = (cpath(p), CString::new(name).unwrap());
    check(unsafe {
        libc::setxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            flags,
        )
    })
}

fn getxattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let (cp, cn) = (cpath(p), CString::new(name).unwrap());
    let mut buf = vec![0u8; 65536];
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

fn listxattr(p: &Path) -> io::Result<BTreeSet<String>> {
    let cp = cpath(p);
    let mut buf = vec![0u8; 65536];
    let n = unsafe {
        libc::listxattr(
            cp.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

fn removexattr(p: &Path, name: &str) -> io::Result<()> {
    let (cp, cn) = (cpath(p), CString::new(name).unwrap());
    check(unsafe { libc::removexattr(cp.as_ptr(), cn.as_ptr()) })
}

fn access(p: &Path, mode: libc::c_int) -> io::Result<()> {
    let cp = cpath(p);
    check(unsafe { libc::access(cp.as_ptr(), mode) })
}

fn utimens(p: &Path, atime: libc::timespec, mtime: libc::timespec) -> io::Result<()> {
    let cp = cpath(p);
    let times = [atime, mtime];
    check(unsafe { libc::utimensat(libc::AT_FDCWD, cp.as_ptr(), times.as_ptr(), 0) })
}

fn ts(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as libc::c_long,
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `du --block-size=1 [--apparent-size] PATH` in bytes.
fn du_bytes(p: &Path, apparent: bool) -> u64 {
    let mut cmd = Command::new("du");
    cmd.arg("--block-size=1");
    if apparent {
        cmd.arg("--apparent-size");
    }
    let out = cmd.arg(p).output().expect("run du");
    assert!(
        out.status.success(),
        "du failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// stat with a retry window: attributes are cached by the kernel for up to 1 s.
fn wait_for_stat(p: &Path, pred: impl Fn(&libc::stat) -> bool) -> libc::stat {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let st = lstat(p).unwrap();
        if pred(&st) || Instant::now() > deadline {
            return st;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// data: create, read, write

#[test]
fn create_write_and_read_at_offsets_across_chunks() {
    let m = Mount::with_opts(&["chunk=4k"]);
    let p = m.path("f");
    let f = create(&p);
    let mut model = Vec::new();
    let writes: &[(usize, usize, u64)] = &[
        (0, 5, 1),
        (3, 10, 2),
        (4090, 20, 3),    // straddles the 4k boundary
        (100, 9000, 4),   // spans three chunks
        (20000, 100, 5),  // beyond EOF, leaves a gap
        (12288, 4096, 6), // exactly one chunk
        (20050, 10, 7),   // inside the last write
        (0, 1, 8),
    ];
    for &(off, len, seed) in writes {
        let data = random_bytes(len, seed);
        pwrite_all(&f, off as u64, &data);
        model_write(&mut model, off, &data);
        assert_eq!(fstat(&f).unwrap().st_size as usize, model.len());
        assert_bytes_eq(
            &pread(&f, 0, model.len() + 10).unwrap(),
            &model,
            "whole file",
        );
    }
    for &(off, len) in &[
        (0, 1),
        (4095, 2),
        (4000, 5000),
        (19990, 200),
        (20099, 100),
        (30000, 10),
    ] {
        let got = pread(&f, off as u64, len).unwrap();
        let end = (off + len).min(model.len());
        let want = if off < model.len() {
            &model[off..end]
        } else {
            &[][..]
        };
        assert_bytes_eq(&got, want, &format!("pread {len} at {off}"));
    }
    drop(f);
    assert_bytes_eq(&read_file(&p), &model, "read after close");
    // Sequential write()/read() with the file position.
    let mut f = rw_open(&p);
    f.seek(SeekFrom::Start(4096)).unwrap();
    f.write_all(b"positioned").unwrap();
    model_write(&mut model, 4096, b"positioned");
    f.seek(SeekFrom::Start(4090)).unwrap();
    let mut buf = [0u8; 16];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf[..], &model[4090..4106]);
    drop(f);
    assert_bytes_eq(&read_file(&p), &model, "after positioned write");
}

#[test]
fn sparse_write_at_10mib_has_right_size_reads_zeros_and_takes_little_space() {
    let mut m = Mount::new();
    let p = m.path("sparse");
    let f = create(&p);
    let off = 10 * MIB as u64;
    pwrite_all(&f, off, b"tail");
    assert_eq!(fstat(&f).unwrap().st_size as u64, off + 4);
    for at in [0u64, 4096, 5 * MIB as u64, off - 100] {
        let got = pread(&f, at, 100).unwrap();
        assert_eq!(got, vec![0u8; 100], "hole at {at} must read as zeros");
    }
    assert_eq!(pread(&f, off - 2, 10).unwrap(), b"\0\0tail".to_vec());
    f.sync_all().unwrap();
    drop(f);
    let st = wait_for_stat(&p, |st| (st.st_blocks as u64) * 512 < MIB as u64);
    assert_eq!(st.st_size as u64, off + 4);
    assert!(
        (st.st_blocks as u64) * 512 < MIB as u64,
        "a 10 MiB file with 4 bytes of data uses {} bytes (st_blocks {})",
        st.st_blocks * 512,
        st.st_blocks
    );
    assert!(du_bytes(&p, false) < MIB as u64, "du of the sparse file");
    assert_eq!(du_bytes(&p, true), off + 4, "du --apparent-size");
    m.remount();
    let data = read_file(&p);
    assert_eq!(data.len() as u64, off + 4);
    assert!(data[..off as usize].iter().all(|b| *b == 0));
    assert_eq!(&data[off as usize..], b"tail");
    let backing = fs::metadata(m.backing("sparse")).unwrap();
    assert!(
        backing.blocks() * 512 < MIB as u64 && backing.len() < MIB as u64,
        "backing file of the sparse file: {} bytes, {} blocks",
        backing.len(),
        backing.blocks()
    );
}

#[test]
fn o_append_writes_always_go_to_the_end() {
    let m = Mount::new();
    let p = m.path("log");
    write_file(&p, b"first\n");
    let mut a = OpenOptions::new().append(true).open(&p).unwrap();
    let mut b = OpenOptions::new().append(true).open(&p).unwrap();
    a.write_all(b"a1\n").unwrap();
    b.write_all(b"b1\n").unwrap();
    // Seeking does not matter for O_APPEND writes.
    a.seek(SeekFrom::Start(0)).unwrap();
    a.write_all(b"a2\n").unwrap();
    // pwrite on an O_APPEND descriptor appends on Linux, too.
    b.write_all_at(b"b2\n", 0).unwrap();
    drop((a, b));
    assert_eq!(
        String::from_utf8(read_file(&p)).unwrap(),
        "first\na1\nb1\na2\nb2\n"
    );
    assert_eq!(fs::metadata(&p).unwrap().len(), 18);
}

#[test]
fn o_trunc_empties_an_existing_file() {
    let m = Mount::with_opts(&["chunk=4k"]);
    let p = m.path("t");
    write_file(&p, &varied_text(100 * KIB, 1));
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    assert_eq!(fstat(&f).unwrap().st_size, 0);
    f.write_all(b"x").unwrap();
    drop(f);
    assert_eq!(read_file(&p), b"x");
    // Extending after O_TRUNC shows zeros, never the old bytes.
    let f = rw_open(&p);
    f.set_len(50 * KIB as u64).unwrap();
    let data = read_file(&p);
    assert_eq!(data.len(), 50 * KIB);
    assert_eq!(data[0], b'x');
    assert!(
        data[1..].iter().all(|b| *b == 0),
        "old bytes reappeared after O_TRUNC"
    );
}

#[test]
fn o_excl_on_an_existing_name_is_eexist() {
    let m = Mount::new();
    let p = m.path("e");
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .expect("O_CREAT|O_EXCL on a new name");
    expect_errno(
        OpenOptions::new().write(true).create_new(true).open(&p),
        libc::EEXIST,
        "O_CREAT|O_EXCL on an existing file",
    );
    fs::create_dir(m.path("d")).unwrap();
    expect_errno(
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(m.path("d")),
        libc::EEXIST,
        "O_CREAT|O_EXCL on an existing directory",
    );
    std::os::unix::fs::symlink("nowhere", m.path("dangling")).unwrap();
    expect_errno(
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(m.path("dangling")),
        libc::EEXIST,
        "O_CREAT|O_EXCL on a dangling symlink",
    );
}

#[test]
fn truncate_down_then_extend_never_shows_old_bytes() {
    let mut m = Mount::with_opts(&["chunk=4k"]);
    let p = m.path("t");
    let original = varied_text(20000, 2);
    write_file(&p, &original);
    // Truncate down to the middle of a chunk, then up again.
    let f = rw_open(&p);
    f.set_len(5000).unwrap();
    assert_eq!(fstat(&f).unwrap().st_size, 5000);
    assert_bytes_eq(&read_file(&p), &original[..5000], "after truncate to 5000");
    f.set_len(30000).unwrap();
    let mut model = original[..5000].to_vec();
    model.resize(30000, 0);
    assert_bytes_eq(&read_file(&p), &model, "after extending to 30000");
    // A write beyond the old end in the truncated chunk does not resurrect anything either.
    f.set_len(4500).unwrap();
    model.truncate(4500);
    pwrite_all(&f, 6000, b"new");
    model_write(&mut model, 6000, b"new");
    assert_bytes_eq(
        &read_file(&p),
        &model,
        "after truncate to 4500 and write at 6000",
    );
    drop(f);
    // truncate(2) by path, both directions, on a closed file.
    let cp = cpath(&p);
    check(unsafe { libc::truncate(cp.as_ptr(), 4097) }).unwrap();
    model.truncate(4097);
    check(unsafe { libc::truncate(cp.as_ptr(), 9000) }).unwrap();
    model.resize(9000, 0);
    assert_bytes_eq(&read_file(&p), &model, "after truncate(2) 4097 then 9000");
    m.remount();
    assert_bytes_eq(&read_file(&p), &model, "after remount");
    assert_eq!(fs::metadata(&p).unwrap().len(), 9000);
    // And again after the remount: shrinking to 0 and growing gives only zeros.
    let f = rw_open(&p);
    f.set_len(0).unwrap();
    f.set_len(8192).unwrap();
    drop(f);
    assert_eq!(read_file(&p), vec![0u8; 8192]);
    m.remount();
    assert_eq!(read_file(&p), vec![0u8; 8192]);
}

// ---------------------------------------------------------------------------------------------
// attributes

#[test]
fn chmod_changes_the_mode() {
    let mut m = Mount::new();
    let p = m.path("f");
    write_file(&p, b"data");
    for mode in [0o600, 0o4755, 0o000, 0o1777, 0o644] {
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        let st = lstat(&p).unwrap();
        assert_eq!(st.st_mode & 0o7777, mode, "mode after chmod {mode:o}");
        assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFREG);
    }
    fs::create_dir(m.path("d")).unwrap();
    fs::set_permissions(m.path("d"), fs::Permissions::from_mode(0o711)).unwrap();
    m.remount();
    assert_eq!(lstat(&p).unwrap().st_mode & 0o7777, 0o644);
    assert_eq!(lstat(&m.path("d")).unwrap().st_mode & 0o7777, 0o711);
    assert_eq!(read_file(&p), b"data");
}

#[test]
fn chown_changes_owner_and_group() {
    let mut m = Mount::new();
    let p = m.path("f");
    write_file(&p, b"data");
    std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
    let st = lstat(&p).unwrap();
    assert_eq!((st.st_uid, st.st_gid), (1234, 5678));
    std::os::unix::fs::chown(&p, None, Some(42)).unwrap();
    let st = lstat(&p).unwrap();
    assert_eq!(
        (st.st_uid, st.st_gid),
        (1234, 42),
        "chown with uid -1 keeps the uid"
    );
    // lchown on a symlink changes the link, not its target.
    std::os::unix::fs::symlink("f", m.path("l")).unwrap();
    std::os::unix::fs::lchown(m.path("l"), Some(7), Some(8)).unwrap();
    let st = lstat(&m.path("l")).unwrap();
    assert_eq!((st.st_uid, st.st_gid), (7, 8));
    assert_eq!(lstat(&p).unwrap().st_uid, 1234);
    m.remount();
    let st = lstat(&p).unwrap();
    assert_eq!((st.st_uid, st.st_gid), (1234, 42));
    let b = fs::metadata(m.backing("f")).unwrap();
    assert_eq!((b.uid(), b.gid()), (1234, 42), "owner of the backing file");
}

#[test]
fn utimensat_sets_times_and_honours_utime_now_and_utime_omit() {
    let mut m = Mount::new();
    let p = m.path("f");
    write_file(&p, b"data");
    utimens(
        &p,
        ts(1_000_000_000, 123_456_789),
        ts(1_100_000_000, 987_654_321),
    )
    .unwrap();
    let st = lstat(&p).unwrap();
    assert_eq!(
        (st.st_atime, st.st_atime_nsec),
        (1_000_000_000, 123_456_789)
    );
    assert_eq!(
        (st.st_mtime, st.st_mtime_nsec),
        (1_100_000_000, 987_654_321)
    );
    // UTIME_OMIT leaves mtime, sets atime.
    utimens(&p, ts(1_200_000_000, 5), ts(0, libc::UTIME_OMIT)).unwrap();
    let st = lstat(&p).unwrap();
    assert_eq!((st.st_atime, st.st_atime_nsec), (1_200_000_000, 5));
    assert_eq!(
        (st.st_mtime, st.st_mtime_nsec),
        (1_100_000_000, 987_654_321),
        "UTIME_OMIT must leave mtime alone"
    );
    // UTIME_NOW sets mtime to now, UTIME_OMIT leaves atime.
    let before = now_secs();
    utimens(&p, ts(0, libc::UTIME_OMIT), ts(0, libc::UTIME_NOW)).unwrap();
    let after = now_secs();
    let st = lstat(&p).unwrap();
    assert_eq!(
        (st.st_atime, st.st_atime_nsec),
        (1_200_000_000, 5),
        "UTIME_OMIT must leave atime alone"
    );
    assert!(
        st.st_mtime >= before - 1 && st.st_mtime <= after + 1,
        "UTIME_NOW gave mtime {} (now is {before}..{after})",
        st.st_mtime
    );
    // Both UTIME_NOW.
    utimens(&p, ts(0, libc::UTIME_NOW), ts(0, libc::UTIME_NOW)).unwrap();
    let st = lstat(&p).unwrap();
    assert!(st.st_atime >= before - 1, "UTIME_NOW atime {}", st.st_atime);
    // Times persist across remount (unmount must not bump mtime of an unchanged file).
    utimens(&p, ts(1_300_000_000, 0), ts(1_300_000_001, 0)).unwrap();
    m.remount();
    let st = lstat(&p).unwrap();
    assert_eq!(st.st_mtime, 1_300_000_001, "mtime after remount");
    assert_eq!(st.st_atime, 1_300_000_000, "atime after remount");
}

#[test]
fn write_updates_mtime_and_ctime() {
    let m = Mount::new();
    let p = m.path("f");
    write_file(&p, b"data");
    utimens(&p, ts(1_000_000_000, 0), ts(1_000_000_000, 0)).unwrap();
    let before = now_secs();
    let f = rw_open(&p);
    pwrite_all(&f, 2, b"XY");
    f.sync_all().unwrap();
    drop(f);
    let st = wait_for_stat(&p, |st| st.st_mtime >= before - 1);
    assert!(
        st.st_mtime >= before - 1,
        "mtime after a write is {} (expected about {before})",
        st.st_mtime
    );
    assert!(
        st.st_ctime >= before - 1,
        "ctime after a write is {}",
        st.st_ctime
    );
}

// ---------------------------------------------------------------------------------------------
// namespace

#[test]
fn mkdir_and_rmdir_with_enotempty_and_eexist() {
    let mut m = Mount::new();
    let d = m.path("d");
    fs::create_dir(&d).unwrap();
    assert!(fs::metadata(&d).unwrap().is_dir());
    expect_errno(
        fs::create_dir(&d),
        libc::EEXIST,
        "mkdir of an existing directory",
    );
    fs::create_dir(d.join("sub")).unwrap();
    write_file(&d.join("sub/file"), b"x");
    assert_eq!(
        lstat(&d).unwrap().st_nlink,
        3,
        "nlink of a directory with one subdirectory"
    );
    expect_errno(
        fs::remove_dir(&d),
        libc::ENOTEMPTY,
        "rmdir of a non-empty directory",
    );
    expect_errno(
        fs::remove_dir(d.join("sub/file")),
        libc::ENOTDIR,
        "rmdir of a file",
    );
    expect_errno(fs::remove_file(&d), libc::EISDIR, "unlink of a directory");
    fs::remove_file(d.join("sub/file")).unwrap();
    fs::remove_dir(d.join("sub")).unwrap();
    assert_eq!(lstat(&d).unwrap().st_nlink, 2);
    expect_errno(
        fs::remove_dir(d.join("sub")),
        libc::ENOENT,
        "rmdir of a missing directory",
    );
    fs::create_dir_all(m.path("a/b/c")).unwrap();
    m.remount();
    assert!(fs::metadata(m.path("a/b/c")).unwrap().is_dir());
    fs::remove_dir(&d).unwrap();
    expect_errno(
        fs::metadata(&d),
        libc::ENOENT,
        "stat of a removed directory",
    );
    assert_eq!(names_in(&m.mnt), ["a".to_string()].into_iter().collect());
}

#[test]
fn unlinked_open_file_stays_readable_and_writable_through_its_descriptor() {
    let m = Mount::with_opts(&["chunk=4k"]);
    let p = m.path("f");
    let content = varied_text(50 * KIB, 3);
    write_file(&p, &content);
    let f = rw_open(&p);
    fs::remove_file(&p).unwrap();
    expect_errno(fs::metadata(&p), libc::ENOENT, "stat after unlink");
    assert!(
        !names_in(&m.mnt).contains("f"),
        "unlinked name still listed"
    );
    assert_eq!(fstat(&f).unwrap().st_nlink, 0);
    assert_bytes_eq(
        &pread(&f, 0, 100 * KIB).unwrap(),
        &content,
        "read after unlink",
    );
    pwrite_all(&f, 10, b"still alive");
    let mut model = content.clone();
    model_write(&mut model, 10, b"still alive");
    f.sync_all().unwrap();
    assert_bytes_eq(
        &pread(&f, 0, 100 * KIB).unwrap(),
        &model,
        "read after write after unlink",
    );
    // A new file with the same name is a different file.
    write_file(&p, b"new");
    assert_eq!(read_file(&p), b"new");
    assert_bytes_eq(
        &pread(&f, 0, 100 * KIB).unwrap(),
        &model,
        "old file after name reuse",
    );
    drop(f);
    assert_eq!(read_file(&p), b"new");
    // Once closed, the unlinked file leaves nothing behind in the backing directory.
    assert_eq!(names_in(&m.src), ["f".to_string()].into_iter().collect());
}

#[test]
fn rename_over_an_existing_file_replaces_it() {
    let mut m = Mount::new();
    let (a, b) = (m.path("a"), m.path("b"));
    write_file(&a, b"content of a");
    write_file(&b, b"content of b, longer");
    let ino_a = lstat(&a).unwrap().st_ino;
    // An open descriptor of the replaced file keeps its old content.
    let old_b = File::open(&b).unwrap();
    fs::rename(&a, &b).unwrap();
    expect_errno(fs::metadata(&a), libc::ENOENT, "old name after rename");
    assert_eq!(read_file(&b), b"content of a");
    assert_eq!(lstat(&b).unwrap().st_ino, ino_a, "rename keeps the inode");
    assert_eq!(pread(&old_b, 0, 100).unwrap(), b"content of b, longer");
    drop(old_b);
    // Into a subdirectory, and a directory over an empty directory.
    fs::create_dir(m.path("d")).unwrap();
    fs::rename(&b, m.path("d/b")).unwrap();
    fs::create_dir(m.path("e")).unwrap();
    fs::create_dir(m.path("empty")).unwrap();
    fs::rename(m.path("d"), m.path("empty")).unwrap();
    assert_eq!(read_file(&m.path("empty/b")), b"content of a");
    write_file(&m.path("e/x"), b"x");
    expect_errno(
        fs::rename(m.path("empty"), m.path("e")),
        libc::ENOTEMPTY,
        "rename of a directory over a non-empty one",
    );
    m.remount();
    assert_eq!(read_file(&m.path("empty/b")), b"content of a");
    assert_eq!(
        names_in(&m.mnt),
        ["e", "empty"].iter().map(|s| s.to_string()).collect()
    );
}

#[test]
fn rename_noreplace_over_an_existing_name_is_eexist() {
    let m = Mount::new();
    let (a, b) = (m.path("a"), m.path("b"));
    write_file(&a, b"A");
    write_file(&b, b"B");
    expect_errno(
        renameat2(&a, &b, libc::RENAME_NOREPLACE),
        libc::EEXIST,
        "RENAME_NOREPLACE onto an existing file",
    );
    assert_eq!(read_file(&a), b"A");
    assert_eq!(read_file(&b), b"B");
    renameat2(&a, &m.path("c"), libc::RENAME_NOREPLACE).expect("RENAME_NOREPLACE to a new name");
    assert_eq!(read_file(&m.path("c")), b"A");
    expect_errno(fs::metadata(&a), libc::ENOENT, "old name");
}

#[test]
fn rename_exchange_swaps_two_names() {
    let mut m = Mount::new();
    let (a, b) = (m.path("a"), m.path("b"));
    write_file(&a, b"AAAA");
    write_file(&b, b"BB");
    let (ia, ib) = (lstat(&a).unwrap().st_ino, lstat(&b).unwrap().st_ino);
    renameat2(&a, &b, libc::RENAME_EXCHANGE).expect("RENAME_EXCHANGE");
    assert_eq!(read_file(&a), b"BB");
    assert_eq!(read_file(&b), b"AAAA");
    assert_eq!(
        (lstat(&a).unwrap().st_ino, lstat(&b).unwrap().st_ino),
        (ib, ia)
    );
    // A file and a directory.
    fs::create_dir(m.path("d")).unwrap();
    write_file(&m.path("d/inner"), b"i");
    renameat2(&a, &m.path("d"), libc::RENAME_EXCHANGE).expect("RENAME_EXCHANGE file<->dir");
    assert!(fs::metadata(&a).unwrap().is_dir());
    assert_eq!(read_file(&m.path("a/inner")), b"i");
    assert_eq!(read_file(&m.path("d")), b"BB");
    expect_errno(
        renameat2(&b, &m.path("missing"), libc::RENAME_EXCHANGE),
        libc::ENOENT,
        "RENAME_EXCHANGE with a missing target",
    );
    m.remount();
    assert_eq!(read_file(&m.path("a/inner")), b"i");
    assert_eq!(read_file(&m.path("d")), b"BB");
    assert_eq!(read_file(&b), b"AAAA");
}

#[test]
fn hard_links_share_inode_link_count_and_data() {
    let mut m = Mount::with_opts(&["chunk=4k"]);
    let (a, b) = (m.path("a"), m.path("b"));
    write_file(&a, &varied_text(10 * KIB, 4));
    fs::hard_link(&a, &b).unwrap();
    let (sa, sb) = (lstat(&a).unwrap(), lstat(&b).unwrap());
    assert_eq!(sa.st_ino, sb.st_ino, "hard links must share st_ino");
    assert_eq!((sa.st_nlink, sb.st_nlink), (2, 2));
    // Write through one name while both are open; read through the other.
    let fa = rw_open(&a);
    let fb = rw_open(&b);
    pwrite_all(&fa, 5000, b"written through a");
    assert_eq!(pread(&fb, 5000, 17).unwrap(), b"written through a");
    pwrite_all(&fb, 12 * KIB as u64, b"extended through b");
    assert_eq!(fstat(&fa).unwrap().st_size as usize, 12 * KIB + 18);
    assert_eq!(
        pread(&fa, 12 * KIB as u64, 100).unwrap(),
        b"extended through b"
    );
    fb.set_len(6000).unwrap();
    assert_eq!(fstat(&fa).unwrap().st_size, 6000);
    drop((fa, fb));
    let expected = read_file(&a);
    assert_bytes_eq(&read_file(&b), &expected, "both names");
    expect_errno(
        fs::hard_link(&a, &b),
        libc::EEXIST,
        "link onto an existing name",
    );
    m.remount();
    assert_eq!(lstat(&a).unwrap().st_ino, lstat(&b).unwrap().st_ino);
    assert_eq!(lstat(&a).unwrap().st_nlink, 2);
    assert_bytes_eq(&read_file(&b), &expected, "after remount");
    fs::remove_file(&a).unwrap();
    assert_eq!(lstat(&b).unwrap().st_nlink, 1);
    assert_bytes_eq(&read_file(&b), &expected, "after unlinking the other name");
}

#[test]
fn symlink_and_readlink() {
    let mut m = Mount::new();
    write_file(&m.path("target"), b"T");
    std::os::unix::fs::symlink("target", m.path("l")).unwrap();
    std::os::unix::fs::symlink("no/such/thing", m.path("dangling")).unwrap();
    let long_target = "x/".repeat(1000) + "end";
    std::os::unix::fs::symlink(&long_target, m.path("long")).unwrap();
    assert_eq!(fs::read_link(m.path("l")).unwrap(), PathBuf::from("target"));
    assert_eq!(
        lstat(&m.path("l")).unwrap().st_mode & libc::S_IFMT,
        libc::S_IFLNK
    );
    assert_eq!(
        lstat(&m.path("l")).unwrap().st_size,
        6,
        "a symlink's size is its length"
    );
    assert_eq!(read_file(&m.path("l")), b"T", "read through the symlink");
    expect_errno(
        fs::read(m.path("dangling")),
        libc::ENOENT,
        "open of a dangling symlink",
    );
    assert_eq!(
        fs::read_link(m.path("long")).unwrap(),
        PathBuf::from(&long_target)
    );
    expect_errno(
        fs::read_link(m.path("target")),
        libc::EINVAL,
        "readlink of a regular file",
    );
    m.remount();
    assert_eq!(
        fs::read_link(m.path("dangling")).unwrap(),
        PathBuf::from("no/such/thing")
    );
    assert_eq!(read_file(&m.path("l")), b"T");
    assert_eq!(
        fs::read_link(m.backing("l")).unwrap(),
        PathBuf::from("target")
    );
}

#[test]
fn mknod_creates_fifos_and_sockets() {
    let m = Mount::new();
    let fifo = m.path("fifo");
    let sock = m.path("sock");
    let cf = cpath(&fifo);
    check(unsafe { libc::mknod(cf.as_ptr(), libc::S_IFIFO | 0o640, 0) }).expect("mknod fifo");
    let cs = cpath(&sock);
    check(unsafe { libc::mknod(cs.as_ptr(), libc::S_IFSOCK | 0o600, 0) }).expect("mknod socket");
    let st = lstat(&fifo).unwrap();
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFIFO);
    assert_eq!(st.st_mode & 0o7777, 0o640);
    let st = lstat(&sock).unwrap();
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFSOCK);
    assert_eq!(
        lstat(&m.backing("fifo")).unwrap().st_mode & libc::S_IFMT,
        libc::S_IFIFO,
        "the backing fifo"
    );
    assert_eq!(
        lstat(&m.backing("sock")).unwrap().st_mode & libc::S_IFMT,
        libc::S_IFSOCK,
        "the backing socket"
    );
    // The fifo works: the kernel handles its I/O.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    f.write_all(b"through the pipe").unwrap();
    let mut buf = [0u8; 16];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"through the pipe");
    // mknod of a regular file works too, and the file is usable.
    let cr = cpath(&m.path("reg"));
    check(unsafe { libc::mknod(cr.as_ptr(), libc::S_IFREG | 0o644, 0) }).expect("mknod S_IFREG");
    write_file(&m.path("reg"), b"regular");
    assert_eq!(read_file(&m.path("reg")), b"regular");
    expect_errno(
        check(unsafe { libc::mknod(cf.as_ptr(), libc::S_IFIFO | 0o640, 0) }),
        libc::EEXIST,
        "mknod over an existing name",
    );
}

#[test]
fn readdir_lists_exactly_the_entries_after_many_creates_and_deletes() {
    let mut m = Mount::new();
    let dir = m.path("many");
    fs::create_dir(&dir).unwrap();
    let mut expected = BTreeSet::new();
    for i in 0..400 {
        let name = format!("file-{i:04}-{}", "n".repeat(i % 40));
        write_file(&dir.join(&name), format!("{i}").as_bytes());
        expected.insert(name);
    }
    for i in (0..400).step_by(3) {
        let name = format!("file-{i:04}-{}", "n".repeat(i % 40));
        fs::remove_file(dir.join(&name)).unwrap();
        expected.remove(&name);
    }
    for i in (1..400).step_by(7) {
        let name = format!("file-{i:04}-{}", "n".repeat(i % 40));
        if expected.remove(&name) {
            let new = format!("renamed-{i}");
            fs::rename(dir.join(&name), dir.join(&new)).unwrap();
            expected.insert(new);
        }
    }
    fs::create_dir(dir.join("subdir")).unwrap();
    expected.insert("subdir".into());
    std::os::unix::fs::symlink("x", dir.join("link")).unwrap();
    expected.insert("link".into());
    let listed: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let set: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(listed.len(), set.len(), "readdir returned duplicates");
    assert_eq!(set, expected);
    // d_type is right.
    for e in fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        match name.as_str() {
            "subdir" => assert!(ft.is_dir()),
            "link" => assert!(ft.is_symlink()),
            _ => assert!(ft.is_file(), "{name}"),
        }
    }
    // "." and ".." are there too (as on ext4), exactly once.
    let cdir = cpath(&dir);
    let mut dots = Vec::new();
    unsafe {
        let d = libc::opendir(cdir.as_ptr());
        assert!(!d.is_null());
        let mut count = 0;
        loop {
            let ent = libc::readdir(d);
            if ent.is_null() {
                break;
            }
            count += 1;
            let name = std::ffi::CStr::from_ptr((*ent).d_name.as_ptr());
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                dots.push(name.to_string_lossy().into_owned());
            }
        }
        libc::closedir(d);
        assert_eq!(count, expected.len() + 2, "entries incl. . and ..");
    }
    dots.sort();
    assert_eq!(dots, vec![".".to_string(), "..".to_string()]);
    m.remount();
    assert_eq!(names_in(&dir), expected, "after remount");
    assert_eq!(names_in(&m.backing("many")), expected, "backing directory");
}

#[test]
fn statfs_reports_nonzero_numbers() {
    let m = Mount::new();
    let cp = cpath(&m.mnt);
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    check(unsafe { libc::statvfs(cp.as_ptr(), &mut st) }).expect("statvfs");
    assert!(
        st.f_bsize > 0 && st.f_frsize > 0,
        "block sizes {} {}",
        st.f_bsize,
        st.f_frsize
    );
    assert!(st.f_blocks > 0, "f_blocks is 0");
    assert!(
        st.f_bfree > 0 && st.f_bavail > 0,
        "f_bfree {} f_bavail {}",
        st.f_bfree,
        st.f_bavail
    );
    assert!(st.f_namemax >= 255, "f_namemax {}", st.f_namemax);
    let out = Command::new("df")
        .arg("-P")
        .arg("-k")
        .arg(&m.mnt)
        .output()
        .expect("run df");
    assert!(
        out.status.success(),
        "df failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().nth(1).unwrap_or_default().to_string();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert!(fields.len() >= 6, "df output: {text}");
    let total: u64 = fields[1].parse().unwrap();
    let avail: u64 = fields[3].parse().unwrap();
    assert!(total > 0 && avail > 0, "df output: {text}");
    assert!(
        fields.last().unwrap().ends_with("/mnt"),
        "df must report the mount itself: {text}"
    );
}

#[test]
fn access_reports_existence_and_permissions_like_ext4() {
    let m = Mount::new();
    let f = m.path("f");
    write_file(&f, b"x");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    access(&f, libc::F_OK).expect("F_OK on an existing file");
    access(&f, libc::R_OK | libc::W_OK).expect("R_OK|W_OK as root");
    expect_errno(
        access(&m.path("missing"), libc::F_OK),
        libc::ENOENT,
        "F_OK on a missing file",
    );
    // Root may execute only files with at least one x bit (ext4: EACCES otherwise).
    expect_errno(
        access(&f, libc::X_OK),
        libc::EACCES,
        "X_OK on a 0644 file as root",
    );
    fs::set_permissions(&f, fs::Permissions::from_mode(0o744)).unwrap();
    access(&f, libc::X_OK).expect("X_OK on a 0744 file");
    fs::create_dir(m.path("d")).unwrap();
    access(&m.path("d"), libc::X_OK | libc::W_OK).expect("X_OK|W_OK on a directory");
}

#[test]
fn user_xattrs_set_get_list_remove_and_live_on_the_backing_file() {
    let mut m = Mount::new();
    let p = m.path("f");
    write_file(&p, b"data");
    setxattr(&p, "user.alpha", b"1", 0).expect("setxattr user.alpha");
    setxattr(&p, "user.beta", &vec![7u8; 3000], 0).expect("setxattr user.beta (3000 bytes)");
    setxattr(&p, "user.empty", b"", 0).expect("setxattr with an empty value");
    assert_eq!(getxattr(&p, "user.alpha").unwrap(), b"1");
    assert_eq!(getxattr(&p, "user.beta").unwrap(), vec![7u8; 3000]);
    assert_eq!(getxattr(&p, "user.empty").unwrap(), b"");
    let names = listxattr(&p).unwrap();
    for n in ["user.alpha", "user.beta", "user.empty"] {
        assert!(names.contains(n), "listxattr lacks {n}: {names:?}");
    }
    // Size queries (size 0) return the needed length.
    let cp = cpath(&p);
    let cn = CString::new("user.beta").unwrap();
    let n = unsafe { libc::getxattr(cp.as_ptr(), cn.as_ptr(), std::ptr::null_mut(), 0) };
    assert_eq!(n, 3000, "getxattr size query");
    let mut small = [0u8; 10];
    let n = unsafe {
        libc::getxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            small.as_mut_ptr() as *mut libc::c_void,
            10,
        )
    };
    assert_eq!(
        (n, errno()),
        (-1, libc::ERANGE),
        "getxattr into a too small buffer"
    );
    // XATTR_CREATE / XATTR_REPLACE.
    expect_errno(
        setxattr(&p, "user.alpha", b"2", libc::XATTR_CREATE),
        libc::EEXIST,
        "XATTR_CREATE on an existing attribute",
    );
    expect_errno(
        setxattr(&p, "user.none", b"2", libc::XATTR_REPLACE),
        libc::ENODATA,
        "XATTR_REPLACE on a missing attribute",
    );
    setxattr(&p, "user.alpha", b"replaced", libc::XATTR_REPLACE).unwrap();
    assert_eq!(getxattr(&p, "user.alpha").unwrap(), b"replaced");
    removexattr(&p, "user.empty").expect("removexattr");
    expect_errno(
        getxattr(&p, "user.empty"),
        libc::ENODATA,
        "getxattr after removexattr",
    );
    expect_errno(
        removexattr(&p, "user.empty"),
        libc::ENODATA,
        "removexattr twice",
    );
    // The attributes are on the backing file.
    assert_eq!(
        getxattr(&m.backing("f"), "user.alpha").unwrap(),
        b"replaced"
    );
    let (ok, out, err) = run_tool(
        "getfattr",
        &[
            OsStr::new("-d"),
            OsStr::new("-m"),
            OsStr::new("^user\\."),
            m.backing("f").as_os_str(),
        ],
    );
    assert!(ok, "getfattr on the backing file: {err}");
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.contains("user.alpha=\"replaced\""),
        "getfattr output: {out}"
    );
    assert!(!out.contains("user.empty"), "getfattr output: {out}");
    // Attributes on directories, and after remount.
    fs::create_dir(m.path("d")).unwrap();
    setxattr(&m.path("d"), "user.dir", b"yes", 0).unwrap();
    m.remount();
    assert_eq!(getxattr(&p, "user.alpha").unwrap(), b"replaced");
    assert_eq!(getxattr(&m.path("d"), "user.dir").unwrap(), b"yes");
    assert_eq!(
        read_file(&p),
        b"data",
        "xattrs must not disturb the content"
    );
}

#[test]
fn shared_writable_mmap_is_read_back_and_survives_remount() {
    let mut m = Mount::with_opts(&["chunk=4k"]);
    let p = m.path("mapped");
    let len = 3 * 4096 + 100;
    let f = create(&p);
    pwrite_all(&f, 0, &varied_text(len, 5));
    let mut expected = varied_text(len, 5);
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(
            addr,
            libc::MAP_FAILED,
            "mmap: {}",
            io::Error::last_os_error()
        );
        let s = std::slice::from_raw_parts_mut(addr as *mut u8, len);
        assert_bytes_eq(s, &expected, "mapping before writing");
        for (i, b) in s.iter_mut().enumerate().step_by(997) {
            *b = b'#';
            expected[i] = b'#';
        }
        s[4096..4096 + 15].copy_from_slice(b"via the mapping");
        expected[4096..4096 + 15].copy_from_slice(b"via the mapping");
        assert_eq!(
            libc::msync(addr, len, libc::MS_SYNC),
            0,
            "msync: {}",
            io::Error::last_os_error()
        );
        assert_eq!(libc::munmap(addr, len), 0);
    }
    drop(f);
    assert_bytes_eq(&read_file(&p), &expected, "read() after munmap");
    m.remount();
    assert_bytes_eq(&read_file(&p), &expected, "read() after remount");
}

#[test]
fn names_of_255_bytes_work_and_256_is_enametoolong() {
    let mut m = Mount::new();
    let name255 = "n".repeat(250) + "12345";
    assert_eq!(name255.len(), 255);
    let p = m.path(&name255);
    write_file(&p, b"long name");
    assert_eq!(read_file(&p), b"long name");
    assert!(names_in(&m.mnt).contains(&name255));
    fs::create_dir(m.path(&("d".repeat(255)))).unwrap();
    let name256 = "m".repeat(256);
    expect_errno(
        File::create(m.path(&name256)),
        libc::ENAMETOOLONG,
        "create with a 256-byte name",
    );
    m.remount();
    assert_eq!(read_file(&p), b"long name");
    assert!(fs::metadata(m.path(&("d".repeat(255)))).unwrap().is_dir());
}

#[test]
fn deep_paths_near_path_max_work() {
    let mut m = Mount::new();
    let mut dir = m.mnt.clone();
    let mut level = 0;
    // Directories with 200-byte names until the path is about 3800 bytes.
    while dir.as_os_str().len() + 201 < 3800 {
        dir = dir.join(format!("{level:03}{}", "d".repeat(197)));
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir at depth {level}: {e}"));
        level += 1;
    }
    // A file name that brings the whole path to about 4000 bytes.
    let room = 4000 - dir.as_os_str().len() - 1;
    let fname = "f".repeat(room.min(255));
    let file = dir.join(&fname);
    assert!(
        file.as_os_str().len() >= 3900,
        "path is {} bytes",
        file.as_os_str().len()
    );
    let content = varied_text(20 * KIB, 6);
    write_file(&file, &content);
    assert_bytes_eq(&read_file(&file), &content, "file at the deep path");
    assert_eq!(fs::metadata(&file).unwrap().len() as usize, content.len());
    assert!(names_in(&dir).contains(&fname));
    let rel = file.strip_prefix(&m.mnt).unwrap().to_path_buf();
    m.remount();
    assert_bytes_eq(
        &read_file(&m.mnt.join(&rel)),
        &content,
        "deep file after remount",
    );
    // The backing tree has the same shape (src/ has the same length as mnt/).
    assert!(m.src.join(&rel).exists(), "backing file at the deep path");
}

// ---------------------------------------------------------------------------------------------
// sizes, inodes, persistence

#[test]
fn st_size_is_logical_and_st_blocks_reflects_the_compressed_size() {
    let m = Mount::new();
    let p = m.path("text");
    let line = b"The quick brown fox jumps over the lazy dog; compress me please.\n";
    let mut f = create(&p);
    let total = 10 * MIB;
    let block: Vec<u8> = line.iter().cycle().take(MIB).cloned().collect();
    for _ in 0..10 {
        f.write_all(&block).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let st = wait_for_stat(&p, |st| (st.st_blocks as u64) * 512 < (total / 8) as u64);
    assert_eq!(st.st_size as usize, total, "st_size is the logical size");
    assert!(
        (st.st_blocks as u64) * 512 < (total / 8) as u64,
        "st_blocks*512 = {} for 10 MiB of repeated text (backing file is {} bytes)",
        st.st_blocks * 512,
        fs::metadata(m.backing("text")).unwrap().len()
    );
    assert!(st.st_blocks > 0, "st_blocks is 0 for a file with data");
    let du = du_bytes(&p, false);
    let apparent = du_bytes(&p, true);
    assert_eq!(apparent, total as u64, "du --apparent-size");
    assert!(
        du < (total / 8) as u64,
        "du gives {du} bytes for 10 MiB of repeated text"
    );
    // Incompressible data uses about its size.
    let q = m.path("random");
    write_file(&q, &random_bytes(MIB, 7));
    let st = wait_for_stat(&q, |st| st.st_blocks > 0);
    assert_eq!(st.st_size as usize, MIB);
    assert!(
        (st.st_blocks as u64) * 512 >= MIB as u64 - 4096,
        "1 MiB of random data reports {} bytes",
        st.st_blocks * 512
    );
}

#[test]
fn inode_numbers_are_stable_across_remount() {
    let mut m = Mount::new();
    write_file(&m.path("a"), b"a");
    fs::create_dir(m.path("d")).unwrap();
    write_file(&m.path("d/b"), b"b");
    fs::hard_link(m.path("a"), m.path("d/a-link")).unwrap();
    std::os::unix::fs::symlink("a", m.path("s")).unwrap();
    let names = ["", "a", "d", "d/b", "d/a-link", "s"];
    let before: Vec<u64> = names
        .iter()
        .map(|n| lstat(&m.path(n)).unwrap().st_ino)
        .collect();
    let unique: BTreeSet<u64> = before.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        5,
        "a and d/a-link share one inode, the rest differ: {before:?}"
    );
    m.remount();
    let after: Vec<u64> = names
        .iter()
        .map(|n| lstat(&m.path(n)).unwrap().st_ino)
        .collect();
    assert_eq!(before, after, "inode numbers of {names:?}");
    m.remount();
    // Looked up in a different order this time.
    let again: Vec<u64> = names
        .iter()
        .rev()
        .map(|n| lstat(&m.path(n)).unwrap().st_ino)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    assert_eq!(before, again, "inode numbers after a second remount");
}

#[test]
fn data_survives_unmount_and_remount() {
    let mut m = Mount::with_opts(&["chunk=4k"]);
    let files: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), vec![]),
        ("one".into(), b"1".to_vec()),
        ("4095".into(), varied_text(4095, 8)),
        ("4096".into(), varied_text(4096, 9)),
        ("4097".into(), varied_text(4097, 10)),
        ("random".into(), random_bytes(MIB + 1, 11)),
        ("text".into(), varied_text(3 * MIB + 17, 12)),
        ("zeros".into(), vec![0u8; 100 * KIB]),
    ];
    for (name, data) in &files {
        write_file(&m.path(name), data);
    }
    // One file still open for writing across the unmount request is not possible; write one
    // more with many small writes instead.
    let mut small = Vec::new();
    {
        let mut f = create(&m.path("small-writes"));
        for i in 0..3000 {
            let piece = format!("line {i}\n");
            f.write_all(piece.as_bytes()).unwrap();
            small.extend_from_slice(piece.as_bytes());
        }
    }
    m.remount();
    for (name, data) in &files {
        assert_bytes_eq(&read_file(&m.path(name)), data, name);
        assert_eq!(
            fs::metadata(m.path(name)).unwrap().len() as usize,
            data.len(),
            "{name}"
        );
    }
    assert_bytes_eq(&read_file(&m.path("small-writes")), &small, "small-writes");
    m.unmount();
    for (name, data) in files
        .iter()
        .chain([("small-writes".to_string(), small.clone())].iter())
    {
        let backing = read_file(&m.backing(name));
        assert!(
            is_container(&backing),
            "backing file of {name} ({} bytes) is not a container",
            backing.len()
        );
        if !data.is_empty() {
            assert_bytes_eq(
                &gunzip_all(&backing).unwrap(),
                data,
                &format!("gunzip of {name}"),
            );
        }
    }
    m.mount();
    for (name, data) in &files {
        assert_bytes_eq(&read_file(&m.path(name)), data, name);
    }
}

#[test]
fn zcat_of_a_sequentially_written_file_equals_its_content() {
    let mut m = Mount::with_opts(&["chunk=64k"]);
    let content = varied_text(3 * MIB + 123, 13);
    {
        let mut f = create(&m.path("seq.txt"));
        for piece in content.chunks(50_000) {
            f.write_all(piece).unwrap();
        }
    }
    m.unmount();
    let backing = m.backing("seq.txt");
    let (ok, out, err) = run_tool("zcat", &[backing.as_os_str()]);
    assert!(ok, "zcat failed: {err}");
    assert_bytes_eq(&out, &content, "zcat of the backing file");
    let (ok, _, err) = run_tool("gzip", &[OsStr::new("-t"), backing.as_os_str()]);
    assert!(ok, "gzip -t failed: {err}");
    assert!(
        fs::metadata(&backing).unwrap().len() < content.len() as u64 / 2,
        "text must compress"
    );
}

#[test]
fn zcat_of_a_file_appended_with_fsync_after_every_line_equals_its_content() {
    let mut m = Mount::new();
    let mut content = Vec::new();
    {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.path("app.log"))
            .unwrap();
        for i in 0..200 {
            let line = format!(
                "{i:05} an appended log line with some words, number {}\n",
                i * 7
            );
            f.write_all(line.as_bytes()).unwrap();
            f.sync_all().unwrap();
            content.extend_from_slice(line.as_bytes());
        }
    }
    // Reopen-and-append, as a logger that reopens its file would.
    for i in 200..210 {
        let line = format!("{i:05} reopened\n");
        let mut f = OpenOptions::new()
            .append(true)
            .open(m.path("app.log"))
            .unwrap();
        f.write_all(line.as_bytes()).unwrap();
        f.sync_all().unwrap();
        content.extend_from_slice(line.as_bytes());
    }
    assert_bytes_eq(
        &read_file(&m.path("app.log")),
        &content,
        "through the mount",
    );
    m.unmount();
    let backing = m.backing("app.log");
    let (ok, out, err) = run_tool("zcat", &[backing.as_os_str()]);
    assert!(ok, "zcat failed: {err}");
    assert_bytes_eq(&out, &content, "zcat of the appended file");
    let (ok, _, err) = run_tool("gzip", &[OsStr::new("-t"), backing.as_os_str()]);
    assert!(ok, "gzip -t failed: {err}");
    m.mount();
    assert_bytes_eq(&read_file(&m.path("app.log")), &content, "after remount");
}

#[test]
fn plain_files_in_the_source_are_served_unchanged_and_stay_plain_when_written() {
    let mut m = Mount::unmounted(&[], false);
    let text = varied_text(300 * KIB, 14);
    let binary = random_bytes(70 * KIB, 15);
    // A gzip file made by another tool: must be served as its compressed bytes.
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b"hello from gzip").unwrap();
        e.finish().unwrap()
    };
    write_file(&m.backing("plain.txt"), &text);
    write_file(&m.backing("plain.bin"), &binary);
    write_file(&m.backing("other.gz"), &gz);
    write_file(&m.backing("empty"), b"");
    m.mount();
    assert_bytes_eq(&read_file(&m.path("plain.txt")), &text, "plain.txt");
    assert_bytes_eq(&read_file(&m.path("plain.bin")), &binary, "plain.bin");
    assert_bytes_eq(&read_file(&m.path("other.gz")), &gz, "other.gz");
    assert_eq!(read_file(&m.path("empty")), b"");
    assert_eq!(
        fs::metadata(m.path("plain.txt")).unwrap().len() as usize,
        text.len()
    );
    // Write to the plain file: overwrite in the middle and append.
    let mut expected = text.clone();
    {
        let f = rw_open(&m.path("plain.txt"));
        pwrite_all(&f, 1000, b"OVERWRITTEN");
        model_write(&mut expected, 1000, b"OVERWRITTEN");
        let end = expected.len();
        pwrite_all(&f, end as u64, b"appended tail");
        model_write(&mut expected, end, b"appended tail");
    }
    write_file(&m.path("empty"), b"now has data");
    assert_bytes_eq(
        &read_file(&m.path("plain.txt")),
        &expected,
        "plain.txt after writing",
    );
    m.unmount();
    assert_bytes_eq(
        &read_file(&m.backing("plain.txt")),
        &expected,
        "backing bytes of the written plain file",
    );
    assert_bytes_eq(
        &read_file(&m.backing("plain.bin")),
        &binary,
        "backing plain.bin",
    );
    assert_bytes_eq(&read_file(&m.backing("other.gz")), &gz, "backing other.gz");
    let e = read_file(&m.backing("empty"));
    assert!(
        e == b"now has data",
        "an existing empty plain file written through the mount stays plain; backing is {} bytes{}",
        e.len(),
        if is_container(&e) {
            " (a container)"
        } else {
            ""
        }
    );
    m.mount();
    assert_bytes_eq(&read_file(&m.path("plain.txt")), &expected, "after remount");
}

#[test]
fn mounting_over_the_source_directory_itself_works() {
    let mut m = Mount::unmounted(&["chunk=4k"], true);
    assert_eq!(m.src, m.mnt);
    let plain = varied_text(10 * KIB, 16);
    write_file(&m.src.join("existing.txt"), &plain);
    m.mount();
    assert_bytes_eq(
        &read_file(&m.path("existing.txt")),
        &plain,
        "pre-existing plain file",
    );
    let content = varied_text(100 * KIB, 17);
    write_file(&m.path("new.txt"), &content);
    fs::create_dir(m.path("sub")).unwrap();
    write_file(&m.path("sub/inner"), b"inner");
    assert_bytes_eq(&read_file(&m.path("new.txt")), &content, "new file");
    m.remount();
    assert_bytes_eq(
        &read_file(&m.path("new.txt")),
        &content,
        "new file after remount",
    );
    assert_eq!(read_file(&m.path("sub/inner")), b"inner");
    m.unmount();
    assert!(!anything_mounted_at(&m.mnt), "still mounted after unmount");
    let backing = read_file(&m.src.join("new.txt"));
    assert!(
        is_container(&backing),
        "new.txt is not stored as a container"
    );
    assert_bytes_eq(
        &gunzip_all(&backing).unwrap(),
        &content,
        "gunzip of new.txt",
    );
    assert!(is_container(&read_file(&m.src.join("sub/inner"))));
    assert_bytes_eq(
        &read_file(&m.src.join("existing.txt")),
        &plain,
        "plain file stays plain",
    );
}

// ---------------------------------------------------------------------------------------------
// command line

/// Runs `deflatefs ARGS` with a time limit; returns (exit code, output).
fn run_with_timeout(args: &[&OsStr], limit: Duration) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out");
    let out = File::create(&out_path).unwrap();
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        code,
        String::from_utf8_lossy(&fs::read(&out_path).unwrap()).into_owned(),
    )
}

/// Unmounts anything a failed refusal left behind, so the test run stays clean.
fn cleanup_stray_mount(mnt: &Path) {
    for _ in 0..3 {
        if !anything_mounted_at(mnt) {
            return;
        }
        let _ = Command::new("umount").arg("-l").arg(mnt).output();
    }
}

#[test]
fn bad_options_exit_nonzero_naming_the_option_and_mount_nothing() {
    require_root_and_fuse();
    let dir = tempfile::tempdir().unwrap();
    let base = fs::canonicalize(dir.path()).unwrap();
    let (src, mnt) = (base.join("src"), base.join("mnt"));
    fs::create_dir(&src).unwrap();
    fs::create_dir(&mnt).unwrap();
    let mut failures = Vec::new();
    for (opt, must_name) in [
        ("bogus", "bogus"),
        ("chunk=3k", "chunk"),
        ("level=99", "level"),
    ] {
        for foreground in [false, true] {
            let mut args: Vec<&OsStr> = vec![OsStr::new("mount")];
            if foreground {
                args.push(OsStr::new("-f"));
            }
            args.extend([
                OsStr::new("-o"),
                OsStr::new(opt),
                src.as_os_str(),
                mnt.as_os_str(),
            ]);
            let (code, out) = run_with_timeout(&args, Duration::from_secs(10));
            let mounted = anything_mounted_at(&mnt);
            cleanup_stray_mount(&mnt);
            if code == Some(0) || code.is_none() || !out.contains(must_name) || mounted {
                failures.push(format!(
                    "-o {opt} (foreground {foreground}): exit {code:?}, mounted {mounted}, output {out:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "bad options were not refused cleanly:\n{}",
        failures.join("\n")
    );
}

#[test]
fn missing_source_exits_nonzero_and_mounts_nothing() {
    require_root_and_fuse();
    let dir = tempfile::tempdir().unwrap();
    let base = fs::canonicalize(dir.path()).unwrap();
    let mnt = base.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let missing = base.join("no-such-source");
    let (code, out) = run_with_timeout(
        &[OsStr::new("mount"), missing.as_os_str(), mnt.as_os_str()],
        Duration::from_secs(10),
    );
    let mounted = anything_mounted_at(&mnt);
    cleanup_stray_mount(&mnt);
    assert!(
        code.is_some() && code != Some(0),
        "exit {code:?}, output {out:?}"
    );
    assert!(
        out.contains("no-such-source"),
        "the message must name the source: {out:?}"
    );
    assert!(!mounted, "something was mounted");
    // A missing mount point too.
    let src = base.join("src");
    fs::create_dir(&src).unwrap();
    let (code, out) = run_with_timeout(
        &[
            OsStr::new("mount"),
            src.as_os_str(),
            base.join("no-mnt").as_os_str(),
        ],
        Duration::from_secs(10),
    );
    assert!(
        code.is_some() && code != Some(0),
        "missing mount point: exit {code:?}, {out:?}"
    );
}

/// Pids of `deflatefs` processes whose command line mentions `needle`.
fn daemons_mentioning(needle: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let is_us = args
            .first()
            .map(|a| a.ends_with(b"deflatefs"))
            .unwrap_or(false);
        if is_us && args.iter().any(|a| *a == needle.as_os_str().as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn daemon_mode_exits_zero_only_once_the_mount_is_live_and_flushes_at_umount() {
    require_root_and_fuse();
    let dir = tempfile::tempdir().unwrap();
    let base = fs::canonicalize(dir.path()).unwrap();
    let (src, mnt) = (base.join("src"), base.join("mnt"));
    fs::create_dir(&src).unwrap();
    fs::create_dir(&mnt).unwrap();
    let log = base.join("log");
    let logopt = format!("log={}", log.display());
    let (code, out) = run_with_timeout(
        &[
            OsStr::new("mount"),
            OsStr::new("-o"),
            OsStr::new(&logopt),
            src.as_os_str(),
            mnt.as_os_str(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(0), "daemon mount failed: {out}");
    // Live right away: no polling.
    let live = deflatefs_mounts_at(&mnt);
    if live.is_empty() {
        cleanup_stray_mount(&mnt);
        panic!(
            "deflatefs exited 0 but {} is not a fuse.deflatefs mount",
            mnt.display()
        );
    }
    let content = varied_text(2 * MIB, 18);
    let write_result = fs::write(mnt.join("f"), &content);
    let st = Command::new("umount").arg(&mnt).status().unwrap();
    if !st.success() {
        cleanup_stray_mount(&mnt);
    }
    write_result.expect("write through the daemon mount");
    assert!(st.success(), "umount failed");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !daemons_mentioning(&mnt).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the daemon did not exit after umount"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let backing = read_file(&src.join("f"));
    assert!(is_container(&backing));
    assert_bytes_eq(
        &gunzip_all(&backing).unwrap(),
        &content,
        "flushed at umount",
    );
}

// ---------------------------------------------------------------------------------------------
// read-only mounts and damage

#[test]
fn ro_mount_rejects_writes_with_erofs() {
    let mut m = Mount::unmounted(&[], false);
    write_file(&m.backing("plain"), b"plain data");
    // Make a container with a rw mount first.
    m.mount();
    write_file(&m.path("packed"), b"packed data");
    fs::create_dir(m.path("dir")).unwrap();
    m.unmount();
    m.opts = vec!["ro".into()];
    m.mount();
    assert_eq!(read_file(&m.path("plain")), b"plain data");
    assert_eq!(read_file(&m.path("packed")), b"packed data");
    let mut failures: Vec<String> = Vec::new();
    let mut expect = |what: &str, r: io::Result<()>| match r {
        Ok(()) => failures.push(format!("{what}: succeeded, expected EROFS")),
        Err(e) if errno_of(&e) == libc::EROFS => {}
        Err(e) => failures.push(format!("{what}: {e}, expected EROFS")),
    };
    expect(
        "open packed O_WRONLY",
        OpenOptions::new()
            .write(true)
            .open(m.path("packed"))
            .map(drop),
    );
    expect(
        "open plain O_RDWR",
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.path("plain"))
            .map(drop),
    );
    expect("create", File::create(m.path("new")).map(drop));
    expect("mkdir", fs::create_dir(m.path("newdir")));
    expect("unlink", fs::remove_file(m.path("packed")));
    expect("rmdir", fs::remove_dir(m.path("dir")));
    expect("rename", fs::rename(m.path("plain"), m.path("plain2")));
    expect("link", fs::hard_link(m.path("plain"), m.path("plain3")));
    expect("symlink", std::os::unix::fs::symlink("x", m.path("sl")));
    expect("truncate", {
        let c = cpath(&m.path("packed"));
        check(unsafe { libc::truncate(c.as_ptr(), 0) })
    });
    expect(
        "chmod",
        fs::set_permissions(m.path("plain"), fs::Permissions::from_mode(0o600)),
    );
    expect("setxattr", setxattr(&m.path("plain"), "user.x", b"1", 0));
    expect(
        "utimensat",
        utimens(
            &m.path("plain"),
            ts(0, libc::UTIME_NOW),
            ts(0, libc::UTIME_NOW),
        ),
    );
    expect("access W_OK", access(&m.path("plain"), libc::W_OK));
    assert!(failures.is_empty(), "ro mount:\n{}", failures.join("\n"));
    assert_eq!(read_file(&m.path("packed")), b"packed data");
    m.unmount();
    assert_eq!(read_file(&m.backing("plain")), b"plain data");
}

#[test]
fn a_corrupted_chunk_gives_eio_for_that_chunk_only_and_is_logged() {
    const CHUNK: usize = 64 * KIB;
    let mut m = Mount::with_opts(&["chunk=64k"]);
    let content = varied_text(MIB, 19);
    let other = varied_text(300 * KIB, 20);
    write_file(&m.path("big.txt"), &content);
    write_file(&m.path("other.txt"), &other);
    m.unmount();
    // Find the 5th data member and flip a byte in the middle of its deflate data.
    let bpath = m.backing("big.txt");
    let mut backing = read_file(&bpath);
    let members = scan_members(&backing);
    let data: Vec<(usize, MemberAt)> = members
        .iter()
        .enumerate()
        .filter(|(_, mm)| mm.kind == b'd')
        .map(|(i, mm)| (i, *mm))
        .collect();
    assert!(
        data.len() >= 16,
        "expected 16 data members, found {}: {members:?}",
        data.len()
    );
    let (idx, victim) = data[4];
    let payload = &backing[victim.offset + 16..victim.offset + 16 + victim.payload_len];
    let logical = u64::from_le_bytes(payload[0..8].try_into().unwrap()) as usize;
    let bad_chunk = logical / CHUNK;
    let deflate_start = victim.offset + 16 + victim.payload_len;
    let member_end = members
        .get(idx + 1)
        .map(|n| n.offset)
        .unwrap_or(backing.len());
    let deflate_end = member_end - 8;
    assert!(
        deflate_end > deflate_start + 100,
        "deflate data too short to damage"
    );
    let at = (deflate_start + deflate_end) / 2;
    backing[at] ^= 0x5a;
    fs::write(&bpath, &backing).unwrap();
    m.mount();
    let f = File::open(m.path("big.txt")).unwrap();
    let ino = fstat(&f).unwrap().st_ino;
    // Every other chunk reads back.
    let mut failures = Vec::new();
    for c in 0..MIB / CHUNK {
        if c == bad_chunk {
            continue;
        }
        match pread(&f, (c * CHUNK) as u64, CHUNK) {
            Ok(got) if got == content[c * CHUNK..(c + 1) * CHUNK] => {}
            Ok(_) => failures.push(format!("chunk {c}: wrong bytes")),
            Err(e) => failures.push(format!("chunk {c}: {e}")),
        }
    }
    // Bytes inside the damaged chunk give EIO.
    let r = pread(&f, (bad_chunk * CHUNK + 1000) as u64, 100);
    match &r {
        Err(e) if errno_of(e) == libc::EIO => {}
        other => failures.push(format!(
            "read inside damaged chunk {bad_chunk}: {:?}, expected EIO",
            other.as_ref().map(|v| v.len())
        )),
    }
    // Reading the whole file fails with EIO rather than returning data with a gap.
    match fs::read(m.path("big.txt")) {
        Err(e) if errno_of(&e) == libc::EIO => {}
        other => failures.push(format!(
            "read of the whole damaged file: {:?}, expected EIO",
            other.map(|v| v.len())
        )),
    }
    // The other file is fine, the mount stays up.
    match fs::read(m.path("other.txt")) {
        Ok(v) if v == other => {}
        Ok(_) => failures.push("other.txt: wrong bytes".into()),
        Err(e) => failures.push(format!("other.txt: {e}")),
    }
    assert!(
        !deflatefs_mounts_at(&m.mnt).is_empty(),
        "the mount went away"
    );
    if let Err(e) = fs::metadata(m.path("big.txt")) {
        failures.push(format!("stat after the damaged read: {e}"));
    }
    // Reading the neighbours again after the error still works.
    for c in [
        bad_chunk.saturating_sub(1),
        (bad_chunk + 1).min(MIB / CHUNK - 1),
    ] {
        match pread(&f, (c * CHUNK) as u64, 100) {
            Ok(got) if got == content[c * CHUNK..c * CHUNK + 100] => {}
            other => failures.push(format!(
                "re-read of chunk {c}: {:?}",
                other.map(|v| v.len())
            )),
        }
    }
    drop(f);
    // The log line names the chunk and the file (by name or by inode number).
    let log = m.log_text();
    let names_chunk = log.lines().any(|l| {
        (l.contains("big.txt") || l.contains(&format!("inode {ino}")))
            && (l.contains(&format!("chunk {bad_chunk}"))
                || l.contains(&format!("{}", bad_chunk * CHUNK)))
    });
    if !names_chunk {
        failures.push(format!(
            "the log does not name big.txt (inode {ino}) and chunk {bad_chunk}; log:\n{log}"
        ));
    }
    assert!(
        failures.is_empty(),
        "damaged chunk {bad_chunk} (byte {at} of the container flipped):\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// load: overwrites, memory pressure, concurrency

#[test]
fn repeated_overwrites_keep_the_data_and_the_container_bounded() {
    let mut m = Mount::with_opts(&["chunk=4k"]);
    let p = m.path("hot");
    let mut model = varied_text(64 * KIB, 21);
    write_file(&p, &model);
    for round in 0..100u64 {
        let f = rw_open(&p);
        let data = random_bytes(16 * KIB, 100 + round);
        let off = (round as usize * 5000) % (48 * KIB);
        pwrite_all(&f, off as u64, &data);
        model_write(&mut model, off, &data);
        f.sync_all().unwrap();
    }
    assert_bytes_eq(&read_file(&p), &model, "after 100 overwrites");
    m.remount();
    assert_bytes_eq(&read_file(&p), &model, "after remount");
    m.unmount();
    let size = fs::metadata(m.backing("hot")).unwrap().len();
    // 100 x 16 KiB of incompressible data were written (1.6 MiB of members, nearly all stale).
    // docs/FORMAT.md "Compaction": a committed file whose stale bytes exceed half of the
    // container is compacted, so the container stays far below what was ever written.
    assert!(
        size < MIB as u64,
        "the container of a 64 KiB file overwritten 100 times (16 KiB + fsync each) is {size} \
         bytes: it was never compacted"
    );
    m.mount();
    assert_bytes_eq(&read_file(&p), &model, "after compaction and remount");
}

#[test]
fn writing_more_than_the_dirty_limit_succeeds() {
    let mut m = Mount::with_opts(&["dirty=8m", "cache=1m", "pool=1m"]);
    let p = m.path("big");
    let mut f = create(&p);
    let mut expected = Vec::with_capacity(40 * MIB);
    for i in 0..40u64 {
        let piece = if i % 2 == 0 {
            random_bytes(MIB, 200 + i)
        } else {
            varied_text(MIB, 200 + i)
        };
        f.write_all(&piece).unwrap();
        expected.extend_from_slice(&piece);
    }
    drop(f);
    assert_eq!(fs::metadata(&p).unwrap().len() as usize, expected.len());
    m.remount();
    assert_bytes_eq(&read_file(&p), &expected, "40 MiB written with dirty=8m");
}

#[test]
fn concurrent_writers_to_different_files_and_disjoint_ranges_of_one_file() {
    let mut m = Mount::with_opts(&["chunk=16k"]);
    let shared = m.path("shared");
    create(&shared).set_len(4 * MIB as u64).unwrap();
    let mnt = m.mnt.clone();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let mnt = mnt.clone();
            std::thread::spawn(move || {
                let own = varied_text(2 * MIB, 300 + t);
                let mut f = create(&mnt.join(format!("own-{t}")));
                for piece in own.chunks(7000) {
                    f.write_all(piece).unwrap();
                }
                // Interleaved 10000-byte stripes (not chunk-aligned) of the shared file.
                let s = rw_open(&mnt.join("shared"));
                let mut off = t as usize * 10000;
                while off + 10000 <= 4 * MIB {
                    s.write_all_at(&random_bytes(10000, off as u64), off as u64)
                        .unwrap();
                    off += 40000;
                }
                s.sync_all().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut expected_shared = vec![0u8; 4 * MIB];
    let mut off = 0;
    while off + 10000 <= 4 * MIB {
        expected_shared[off..off + 10000].copy_from_slice(&random_bytes(10000, off as u64));
        off += 10000;
    }
    assert_bytes_eq(&read_file(&shared), &expected_shared, "shared file");
    m.remount();
    assert_bytes_eq(
        &read_file(&shared),
        &expected_shared,
        "shared file after remount",
    );
    for t in 0..4u64 {
        assert_bytes_eq(
            &read_file(&m.path(&format!("own-{t}"))),
            &varied_text(2 * MIB, 300 + t),
            &format!("own-{t}"),
        );
    }
}

#[test]
fn readdir_while_deleting_returns_every_remaining_entry_once() {
    // What `rm -rf` relies on: entries removed after they were read must not make the listing
    // skip or repeat the others.
    let m = Mount::new();
    let dir = m.path("d");
    fs::create_dir(&dir).unwrap();
    let all: BTreeSet<String> = (0..500).map(|i| format!("entry-{i:03}")).collect();
    for n in &all {
        write_file(&dir.join(n), b"x");
    }
    let cdir = cpath(&dir);
    let mut seen = Vec::new();
    unsafe {
        let d = libc::opendir(cdir.as_ptr());
        assert!(!d.is_null());
        loop {
            let ent = libc::readdir(d);
            if ent.is_null() {
                break;
            }
            let name = std::ffi::CStr::from_ptr((*ent).d_name.as_ptr())
                .to_string_lossy()
                .into_owned();
            if name == "." || name == ".." {
                continue;
            }
            // Delete every entry as soon as it was read.
            fs::remove_file(dir.join(&name)).unwrap_or_else(|e| panic!("unlink {name}: {e}"));
            seen.push(name);
        }
        libc::closedir(d);
    }
    let set: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(seen.len(), set.len(), "entries returned twice");
    let missing: Vec<&String> = all.difference(&set).collect();
    assert!(
        missing.is_empty(),
        "{} entries never listed: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(names_in(&dir).is_empty());
    fs::remove_dir(&dir).unwrap();
    // A whole tree, removed the way rm -rf does it.
    for i in 0..20 {
        let sub = m.path(&format!("tree/{i}/a/b"));
        fs::create_dir_all(&sub).unwrap();
        for j in 0..10 {
            write_file(&sub.join(format!("f{j}")), b"data");
        }
    }
    let out = Command::new("rm")
        .arg("-rf")
        .arg(m.path("tree"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rm -rf: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(names_in(&m.mnt).is_empty());
}

#[test]
fn stat_does_not_change_atime() {
    // On ext4 only reading data may update atime; a stat never does.
    let m = Mount::new();
    let p = m.path("f");
    write_file(&p, &varied_text(10 * KIB, 22));
    utimens(&p, ts(1_200_000_000, 0), ts(0, libc::UTIME_OMIT)).unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(lstat(&p).unwrap().st_atime);
        // Past the attribute timeout, so each stat reaches the daemon.
        std::thread::sleep(Duration::from_millis(1100));
    }
    seen.push(lstat(&p).unwrap().st_atime);
    assert!(
        seen.iter().all(|a| *a == 1_200_000_000),
        "atime after repeated stat calls: {seen:?} (expected 1200000000 throughout)"
    );
}

#[test]
fn readdir_reports_the_file_type_of_fifos_sockets_and_symlinks() {
    let m = Mount::new();
    let cf = cpath(&m.path("fifo"));
    check(unsafe { libc::mknod(cf.as_ptr(), libc::S_IFIFO | 0o640, 0) }).expect("mknod fifo");
    let cs = cpath(&m.path("sock"));
    check(unsafe { libc::mknod(cs.as_ptr(), libc::S_IFSOCK | 0o600, 0) }).expect("mknod socket");
    std::os::unix::fs::symlink("target", m.path("link")).unwrap();
    fs::create_dir(m.path("dir")).unwrap();
    write_file(&m.path("file"), b"x");
    // Both listing paths: readdir (std's read_dir file_type comes from d_type) and readdirplus.
    for _ in 0..2 {
        let mut seen = std::collections::BTreeMap::new();
        for e in fs::read_dir(m.path("")).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            let kind = if t.is_fifo() {
                "fifo"
            } else if t.is_socket() {
                "socket"
            } else if t.is_symlink() {
                "symlink"
            } else if t.is_dir() {
                "dir"
            } else if t.is_file() {
                "file"
            } else {
                "other"
            };
            seen.insert(e.file_name().to_string_lossy().into_owned(), kind);
        }
        assert_eq!(seen.get("fifo"), Some(&"fifo"), "{seen:?}");
        assert_eq!(seen.get("sock"), Some(&"socket"), "{seen:?}");
        assert_eq!(seen.get("link"), Some(&"symlink"), "{seen:?}");
        assert_eq!(seen.get("dir"), Some(&"dir"), "{seen:?}");
        assert_eq!(seen.get("file"), Some(&"file"), "{seen:?}");
    }
}

#[test]
fn isatty_seek_data_copy_file_range_and_poll_answer_like_ext4_without_warnings() {
    let m = Mount::new();
    let data = varied_text(300 * KIB, 11);
    write_file(&m.path("a"), &data);
    let a = File::open(m.path("a")).unwrap();
    // isatty(): TCGETS, answered ENOTTY as on ext4.
    assert_eq!(unsafe { libc::isatty(a.as_raw_fd()) }, 0);
    assert_eq!(errno(), libc::ENOTTY, "isatty's errno");
    // SEEK_DATA / SEEK_HOLE: the whole file is data.
    let off = unsafe { libc::lseek(a.as_raw_fd(), 0, libc::SEEK_DATA) };
    assert_eq!(off, 0);
    let off = unsafe { libc::lseek(a.as_raw_fd(), 0, libc::SEEK_HOLE) };
    assert_eq!(off, data.len() as i64);
    // copy_file_range within the mount copies the bytes (the daemon copies the compressed
    // members; tests/mount_copy.rs covers it).
    let b = create(&m.path("b"));
    let mut off_in: libc::loff_t = 0;
    let mut off_out: libc::loff_t = 0;
    let mut copied = 0usize;
    while copied < data.len() {
        let n = unsafe {
            libc::copy_file_range(
                a.as_raw_fd(),
                &mut off_in,
                b.as_raw_fd(),
                &mut off_out,
                data.len() - copied,
                0,
            )
        };
        assert!(n > 0, "copy_file_range: {}", io::Error::last_os_error());
        copied += n as usize;
    }
    drop(b);
    assert!(read_file(&m.path("b")) == data);
    // poll() (configure scripts use it): a regular file is always ready, as on ext4.
    let mut pfd = libc::pollfd {
        fd: a.as_raw_fd(),
        events: libc::POLLIN | libc::POLLOUT,
        revents: 0,
    };
    assert_eq!(unsafe { libc::poll(&mut pfd, 1, 1000) }, 1);
    assert_eq!(pfd.revents, libc::POLLIN | libc::POLLOUT);
    let warnings = m.warn_and_error_lines();
    assert!(warnings.is_empty(), "log lines: {warnings:#?}");
}

// ---------------------------------------------------------------------------------------------
// inode flags (lsattr, chattr) and lseek

/// The flag letters `lsattr` prints for `p` (`-d`: a directory itself, not its entries).
fn lsattr(p: &Path) -> String {
    let (ok, out, err) = run_tool("lsattr", &[OsStr::new("-d"), p.as_os_str()]);
    assert!(ok, "lsattr -d {}: {err}", p.display());
    let out = String::from_utf8(out).unwrap();
    out.split_whitespace().next().unwrap_or("").to_string()
}

/// `chattr CHANGE p`: Ok, or chattr's message.
fn chattr(change: &str, p: &Path) -> Result<(), String> {
    let (ok, _, err) = run_tool("chattr", &[OsStr::new(change), p.as_os_str()]);
    if ok {
        Ok(())
    } else {
        Err(err)
    }
}

/// Whether the letter is set in lsattr's output.
fn has_flag(flags: &str, letter: char) -> bool {
    flags.contains(letter)
}

/// Clears the immutable flag of a backing file on drop, so a failed test leaves a directory
/// that can be removed.
struct Mutable(PathBuf);

impl Drop for Mutable {
    fn drop(&mut self) {
        let _ = run_tool("chattr", &[OsStr::new("-i"), self.0.as_os_str()]);
    }
}

#[test]
fn lsattr_shows_c_for_compressed_files_and_the_backing_flags_that_hold_through_the_mount() {
    let mut m = Mount::unmounted(&[], false);
    // A plain file: one that was in the backing directory before deflatefs, served as it is.
    write_file(&m.backing("plain"), b"stored as it is\n");
    m.mount();
    write_file(&m.path("packed"), &varied_text(200 * KIB, 3));
    fs::create_dir(m.path("dir")).unwrap();
    let packed = lsattr(&m.path("packed"));
    assert!(
        has_flag(&packed, 'c'),
        "a container is compressed: {packed}"
    );
    assert_eq!(packed.len(), lsattr(&m.backing("packed")).len(), "{packed}");
    let plain = lsattr(&m.path("plain"));
    assert!(
        !plain.contains(|c| c != '-'),
        "no flag on a plain file: {plain}"
    );
    // ext4's `e` (extents) describes the backing file's layout, not the file in the mount.
    let dir = lsattr(&m.path("dir"));
    assert!(
        !dir.contains(|c| c != '-'),
        "no flag on a new directory: {dir}"
    );
    assert!(!lsattr(&m.path("")).contains(|c| c != '-'));
    // The raw ioctls: FS_IOC_GETFLAGS (a long for the caller, an int on the wire), and
    // FS_IOC_FSGETXATTR, which has no compression flag.
    let f = File::open(m.path("packed")).unwrap();
    let mut flags: libc::c_long = -1;
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    assert_eq!(r, 0, "FS_IOC_GETFLAGS: {}", io::Error::last_os_error());
    assert_eq!(flags & 0xffff_ffff, 0x4, "FS_COMPR_FL only");
    const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
    let mut fsx = [0xffu8; 28];
    let r = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FSGETXATTR, fsx.as_mut_ptr()) };
    assert_eq!(r, 0, "FS_IOC_FSGETXATTR: {}", io::Error::last_os_error());
    assert_eq!(fsx, [0u8; 28]);
    let warnings = m.warn_and_error_lines();
    assert!(warnings.is_empty(), "log lines: {warnings:#?}");
}

#[test]
fn chattr_d_a_and_dir_sync_are_set_on_the_backing_inode_and_shown_back() {
    let m = Mount::new();
    write_file(&m.path("f"), b"data\n");
    fs::create_dir(m.path("d")).unwrap();
    chattr("+d", &m.path("f")).unwrap();
    chattr("+A", &m.path("f")).unwrap();
    chattr("+D", &m.path("d")).unwrap();
    let f = lsattr(&m.path("f"));
    assert!(
        has_flag(&f, 'd') && has_flag(&f, 'A') && has_flag(&f, 'c'),
        "{f}"
    );
    let backing = lsattr(&m.backing("f"));
    assert!(
        has_flag(&backing, 'd') && has_flag(&backing, 'A'),
        "{backing}"
    );
    let d = lsattr(&m.path("d"));
    assert!(has_flag(&d, 'D'), "{d}");
    assert!(has_flag(&lsattr(&m.backing("d")), 'D'));
    chattr("-d", &m.path("f")).unwrap();
    let f = lsattr(&m.path("f"));
    assert!(!has_flag(&f, 'd') && has_flag(&f, 'A'), "{f}");
    assert!(!has_flag(&lsattr(&m.backing("f")), 'd'));
    // Setting what is already set changes nothing and succeeds, `c` included.
    chattr("+c", &m.path("f")).unwrap();
    chattr("+A", &m.path("f")).unwrap();
    assert_eq!(lsattr(&m.path("f")), f);
    // The same through FS_IOC_FSSETXATTR (xfs_io's chattr): no dump is FS_XFLAG_NODUMP; a
    // project id cannot be set.
    const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;
    const FS_XFLAG_NOATIME: u32 = 0x40;
    const FS_XFLAG_NODUMP: u32 = 0x80;
    let file = File::open(m.path("f")).unwrap();
    let mut fsx = [0u8; 28];
    fsx[..4].copy_from_slice(&(FS_XFLAG_NODUMP | FS_XFLAG_NOATIME).to_ne_bytes());
    let r = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FSSETXATTR, fsx.as_ptr()) };
    assert_eq!(r, 0, "FS_IOC_FSSETXATTR: {}", io::Error::last_os_error());
    let f = lsattr(&m.path("f"));
    assert!(
        has_flag(&f, 'd') && has_flag(&f, 'A') && has_flag(&f, 'c'),
        "{f}"
    );
    fsx[12..16].copy_from_slice(&7u32.to_ne_bytes());
    let r = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FSSETXATTR, fsx.as_ptr()) };
    assert_eq!((r, errno()), (-1, libc::EOPNOTSUPP), "a project id");
    assert_eq!(lsattr(&m.path("f")), f);
}

#[test]
fn chattr_i_makes_a_file_immutable_through_the_mount_until_chattr_minus_i() {
    let m = Mount::new();
    write_file(&m.path("f"), b"kept\n");
    let _guard = Mutable(m.backing("f"));
    // Not while open for writing: writes through that descriptor could never be stored.
    let writer = OpenOptions::new().append(true).open(m.path("f")).unwrap();
    let err = chattr("+i", &m.path("f")).unwrap_err();
    assert!(
        err.contains("busy"),
        "chattr +i of a file open for writing: {err}"
    );
    drop(writer);
    // A reader keeps the file's open state alive across the changes refused below.
    let reader = File::open(m.path("f")).unwrap();
    chattr("+i", &m.path("f")).unwrap();
    assert!(has_flag(&lsattr(&m.path("f")), 'i'));
    // Readable; every change is EPERM, as on ext4.
    assert_eq!(read_file(&m.path("f")), b"kept\n");
    let write = OpenOptions::new().append(true).open(m.path("f"));
    expect_errno(write, libc::EPERM, "open for writing");
    let trunc = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.path("f"));
    expect_errno(trunc, libc::EPERM, "open with O_TRUNC");
    let r = unsafe { libc::truncate(cpath(&m.path("f")).as_ptr(), 0) };
    assert_eq!((r, errno()), (-1, libc::EPERM), "truncate(2)");
    assert_eq!(
        pread(&reader, 0, 100).unwrap(),
        b"kept\n",
        "after the refused truncate"
    );
    expect_errno(
        fs::set_permissions(m.path("f"), fs::Permissions::from_mode(0o600)),
        libc::EPERM,
        "chmod",
    );
    expect_errno(fs::remove_file(m.path("f")), libc::EPERM, "unlink");
    expect_errno(fs::rename(m.path("f"), m.path("g")), libc::EPERM, "rename");
    expect_errno(
        setxattr(&m.path("f"), "user.x", b"1", 0),
        libc::EPERM,
        "setxattr",
    );
    chattr("-i", &m.path("f")).unwrap();
    drop(reader);
    assert!(!has_flag(&lsattr(&m.path("f")), 'i'));
    let mut f = OpenOptions::new().append(true).open(m.path("f")).unwrap();
    f.write_all(b"more\n").unwrap();
    drop(f);
    assert_eq!(read_file(&m.path("f")), b"kept\nmore\n");
    fs::remove_file(m.path("f")).unwrap();
    let warnings = m.warn_and_error_lines();
    assert!(warnings.is_empty(), "log lines: {warnings:#?}");
}

#[test]
fn chattr_of_a_flag_the_mount_cannot_honour_is_eopnotsupp_and_changes_nothing() {
    let m = Mount::new();
    write_file(&m.path("f"), b"data\n");
    fs::create_dir(m.path("d")).unwrap();
    let before = lsattr(&m.path("f"));
    let backing_before = lsattr(&m.backing("f"));
    // a (append-only), S (synchronous writes), e (extents), C (no copy on write), j (data
    // journalling), and c in either direction: a file is converted by rewriting it.
    for change in ["+a", "+S", "+e", "+C", "+j", "-c"] {
        let err = chattr(change, &m.path("f")).unwrap_err();
        assert!(
            err.contains("Operation not supported"),
            "chattr {change}: {err}"
        );
    }
    for change in ["+a", "+S", "+c"] {
        let err = chattr(change, &m.path("d")).unwrap_err();
        assert!(
            err.contains("Operation not supported"),
            "chattr {change} on a directory: {err}"
        );
    }
    assert_eq!(lsattr(&m.path("f")), before);
    assert_eq!(lsattr(&m.backing("f")), backing_before);
    let warnings = m.warn_and_error_lines();
    assert!(warnings.is_empty(), "log lines: {warnings:#?}");
}

#[test]
fn seek_data_and_seek_hole_answer_like_ext4_for_a_file_without_holes() {
    let m = Mount::new();
    let data = varied_text(300 * KIB, 5);
    write_file(&m.path("a"), &data);
    write_file(&m.path("empty"), b"");
    let len = data.len() as i64;
    let a = File::open(m.path("a")).unwrap();
    let seek = |f: &File, off: i64, whence: i32| {
        let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
        if r < 0 {
            Err(errno())
        } else {
            Ok(r)
        }
    };
    // Data everywhere in the file; the only hole is the one at its end.
    assert_eq!(seek(&a, 0, libc::SEEK_DATA), Ok(0));
    assert_eq!(seek(&a, 1000, libc::SEEK_DATA), Ok(1000));
    assert_eq!(seek(&a, 0, libc::SEEK_HOLE), Ok(len));
    assert_eq!(seek(&a, len - 1, libc::SEEK_HOLE), Ok(len));
    // At or past the end: ENXIO for both.
    assert_eq!(seek(&a, len, libc::SEEK_DATA), Err(libc::ENXIO));
    assert_eq!(seek(&a, len, libc::SEEK_HOLE), Err(libc::ENXIO));
    assert_eq!(seek(&a, len + 5, libc::SEEK_DATA), Err(libc::ENXIO));
    let empty = File::open(m.path("empty")).unwrap();
    assert_eq!(seek(&empty, 0, libc::SEEK_DATA), Err(libc::ENXIO));
    assert_eq!(seek(&empty, 0, libc::SEEK_HOLE), Err(libc::ENXIO));
    let warnings = m.warn_and_error_lines();
    assert!(warnings.is_empty(), "log lines: {warnings:#?}");
}

// ---------------------------------------------------------------------------------------------
// fallocate (README, "Preallocation")

#[test]
fn fallocate_extends_a_container_with_zeros_and_reserves_the_range() {
    let m = Mount::new();
    let f = create(&m.path("f"));
    pwrite_all(&f, 0, b"head");
    let len = 64 * MIB as i64;
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len) };
    assert_eq!(r, 0, "fallocate: {}", io::Error::last_os_error());
    assert_eq!(f.metadata().unwrap().len(), len as u64);
    // The range is reserved in the backing file as if stored uncompressed (tests/
    // mount_fallocate.rs shows that the reservation holds on a full disk).
    let reserved = fs::metadata(m.backing("f")).unwrap().blocks() * 512;
    assert!(reserved >= len as u64, "{reserved} bytes reserved");
    // KEEP_SIZE reserves too (from the backing file's end, so a longer range adds to what
    // is reserved), without changing the size.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, 2 * len) };
    assert_eq!(r, 0, "fallocate KEEP_SIZE: {}", io::Error::last_os_error());
    assert_eq!(f.metadata().unwrap().len(), len as u64);
    let more = fs::metadata(m.backing("f")).unwrap().blocks() * 512;
    assert!(more >= 2 * len as u64, "{more} after {reserved}");
    // A range inside the file does not change the size.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 4096, 4096) };
    assert_eq!(r, 0);
    assert_eq!(f.metadata().unwrap().len(), len as u64);
    drop(f);
    let data = read_file(&m.path("f"));
    assert_eq!(&data[..4], b"head");
    assert!(
        data[4..].iter().all(|&b| b == 0),
        "the extension reads as zeros"
    );
}

/// The kernel's FUSE refuses COLLAPSE_RANGE and INSERT_RANGE for every FUSE filesystem; the
/// file stays as it was (PUNCH_HOLE and ZERO_RANGE: tests/mount_holes.rs).
#[test]
fn fallocate_collapse_and_insert_range_are_eopnotsupp_on_a_container() {
    let m = Mount::new();
    let data = varied_text(256 * KIB, 9);
    write_file(&m.path("f"), &data);
    let f = rw_open(&m.path("f"));
    for (mode, what) in [
        (libc::FALLOC_FL_COLLAPSE_RANGE, "COLLAPSE_RANGE"),
        (libc::FALLOC_FL_INSERT_RANGE, "INSERT_RANGE"),
    ] {
        let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, 0, 128 * KIB as i64) };
        assert_eq!((r, errno()), (-1, libc::EOPNOTSUPP), "{what}");
    }
    drop(f);
    assert!(read_file(&m.path("f")) == data, "the file is unchanged");
    let warnings = m.warn_and_error_lines();
    assert!(warnings.is_empty(), "log lines: {warnings:#?}");
}

#[test]
fn fallocate_on_a_plain_file_is_passed_to_the_backing_file() {
    let mut m = Mount::unmounted(&[], false);
    let data = random_bytes(256 * KIB, 4);
    write_file(&m.backing("plain"), &data);
    m.mount();
    let f = rw_open(&m.path("plain"));
    // Extends (and on the backing filesystem, reserves), then punches a hole at the start.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, MIB as i64) };
    assert_eq!(r, 0, "mode 0: {}", io::Error::last_os_error());
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let r = unsafe { libc::fallocate(f.as_raw_fd(), punch, 0, 128 * KIB as i64) };
    assert_eq!(r, 0, "PUNCH_HOLE: {}", io::Error::last_os_error());
    drop(f);
    let mut want = data.clone();
    want[..128 * KIB].fill(0);
    want.resize(MIB, 0);
    assert!(read_file(&m.path("plain")) == want);
    // The backing file is still plain, with the hole punched in it.
    let backing = fs::metadata(m.backing("plain")).unwrap();
    assert_eq!(backing.len(), MIB as u64);
    assert!(
        backing.blocks() * 512 <= (MIB - 128 * KIB) as u64,
        "st_blocks {}",
        backing.blocks()
    );
    assert!(read_file(&m.backing("plain")) == want);
}
