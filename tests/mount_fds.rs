//! The daemon's descriptors stay within a bound whatever the number of inodes the kernel caches
//! (`fds=N`, at most half the process limit): descriptors of idle inodes are closed and reopened
//! on demand, by file handle as root, by parent and name otherwise (`DEFLATEFS_REOPEN_BY_NAME=1`
//! makes a root daemon take that path too). Reopening never breaks renames, hard links, unlinked
//! open files or removed working directories, and reaching the limit slows calls down without
//! failing them.

mod common;

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::{engine_report_value, Mount};

/// `key=value` of `user.deflatefs.engine` on the mount's root, as a number.
fn engine_counter(mnt: &Path, key: &str) -> u64 {
    let v = engine_report_value(mnt, key);
    v.parse()
        .unwrap_or_else(|_| panic!("{key}={v} is not a number"))
}

/// Descriptors the daemon holds now.
fn daemon_fds(m: &Mount) -> usize {
    let pid = m.daemon_pid().expect("mounted");
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Descriptors the daemon holds in the backing directory, the source directory itself aside
/// (which it keeps twice: an O_PATH root and a plain one for reopening by handle).
fn daemon_backing_fds(m: &Mount) -> usize {
    let pid = m.daemon_pid().expect("mounted");
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(&m.src) && *target != m.src)
        .count()
}

fn content(d: usize, f: usize) -> Vec<u8> {
    format!("directory {d}, file {f}\n")
        .repeat(1 + (d * 7 + f) % 13)
        .into_bytes()
}

/// Creates `dirs` directories of `files` files each under `root`.
fn make_tree(root: &Path, dirs: usize, files: usize) {
    for d in 0..dirs {
        let dir = root.join(format!("d{d}")).join("sub");
        fs::create_dir_all(&dir).unwrap();
        for f in 0..files {
            fs::write(dir.join(format!("f{f}")), content(d, f)).unwrap();
        }
    }
}

fn check_tree(root: &Path, dirs: usize, files: usize) {
    for d in 0..dirs {
        for f in 0..files {
            let p = root.join(format!("d{d}/sub/f{f}"));
            assert_eq!(
                fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
                content(d, f),
                "{}",
                p.display()
            );
        }
    }
}

fn mount_with(opts: &[&str], by_name: bool, nofile: Option<u64>) -> Mount {
    let mut m = Mount::unmounted(opts, false);
    if by_name {
        m.daemon_env
            .push(("DEFLATEFS_REOPEN_BY_NAME".into(), "1".into()));
    }
    m.nofile = nofile;
    m.mount();
    m
}

fn descriptors_stay_within_the_bound(by_name: bool) {
    let mut m = mount_with(&["fds=32"], by_name, None);
    make_tree(&m.mnt, 30, 100);
    // Every inode looked up again: the kernel caches all 3,000 files and 60 directories.
    check_tree(&m.mnt, 30, 100);
    let held = engine_counter(&m.mnt, "inode_fds");
    assert!(held <= 32, "{held} inode descriptors open, bound 32");
    assert!(engine_counter(&m.mnt, "inodes") > 3000);
    assert!(
        engine_counter(&m.mnt, "inode_fds_closed") > 2900,
        "descriptors were not closed"
    );
    assert!(engine_counter(&m.mnt, "inode_fds_reopened") > 0);
    let now = daemon_backing_fds(&m);
    assert!(
        now <= 32,
        "the daemon holds {now} descriptors in the backing directory, bound 32"
    );
    assert_eq!(
        engine_report_value(&m.mnt, "inode_reopen"),
        if by_name { "name" } else { "handle" }
    );
    m.unmount();
    assert!(
        !m.log_text().contains("WARN") && !m.log_text().contains("ERROR"),
        "{}",
        m.log_text()
    );
}

#[test]
fn descriptors_stay_within_the_bound_reopened_by_handle() {
    descriptors_stay_within_the_bound(false);
}

#[test]
fn descriptors_stay_within_the_bound_reopened_by_name() {
    descriptors_stay_within_the_bound(true);
}

/// Looks up enough other files that every descriptor not in use is closed.
fn churn(m: &Mount) {
    for d in 0..10 {
        for f in 0..40 {
            fs::metadata(m.path(&format!("churn/d{d}/sub/f{f}"))).unwrap();
        }
    }
}

fn closed_descriptors_reopen_after_renames_links_and_unlinks(by_name: bool) {
    let mut m = mount_with(&["fds=16"], by_name, None);
    make_tree(&m.path("churn"), 10, 40);
    make_tree(&m.mnt, 4, 10);
    let closed_before = engine_counter(&m.mnt, "inode_fds_closed");

    // A directory renamed: its files are reached through the new name.
    fs::rename(m.path("d0"), m.path("d0-renamed")).unwrap();
    churn(&m);
    assert_eq!(
        fs::read(m.path("d0-renamed/sub/f3")).unwrap(),
        content(0, 3)
    );

    // A file renamed over another: the new name leads to the moved file.
    fs::rename(m.path("d1/sub/f1"), m.path("d1/sub/f2")).unwrap();
    churn(&m);
    assert_eq!(fs::read(m.path("d1/sub/f2")).unwrap(), content(1, 1));
    assert!(!m.path("d1/sub/f1").exists());

    // Hard links: the name the node was last reached by is removed; the other still works.
    fs::hard_link(m.path("d2/sub/f0"), m.path("d2/sub/link")).unwrap();
    fs::metadata(m.path("d2/sub/f0")).unwrap();
    fs::remove_file(m.path("d2/sub/f0")).unwrap();
    churn(&m);
    let md = fs::metadata(m.path("d2/sub/link")).unwrap();
    assert_eq!(md.nlink(), 1);
    assert_eq!(fs::read(m.path("d2/sub/link")).unwrap(), content(2, 0));

    // An unlinked file kept open: fstat, read and write keep working.
    let mut open = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("d3/sub/f5"))
        .unwrap();
    fs::remove_file(m.path("d3/sub/f5")).unwrap();
    churn(&m);
    assert_eq!(open.metadata().unwrap().nlink(), 0);
    open.seek(SeekFrom::End(0)).unwrap();
    open.write_all(b"appended after the unlink\n").unwrap();
    churn(&m);
    let mut back = Vec::new();
    open.seek(SeekFrom::Start(0)).unwrap();
    open.read_to_end(&mut back).unwrap();
    let mut want = content(3, 5);
    want.extend_from_slice(b"appended after the unlink\n");
    assert_eq!(back, want);
    drop(open);

    // A removed directory that is a process's working directory: listing it works (empty).
    fs::create_dir(m.path("gone")).unwrap();
    let mut sh = Command::new("sh")
        .arg("-c")
        .arg("read x; ls -a . | wc -l; echo ok")
        .current_dir(m.path("gone"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    fs::remove_dir(m.path("gone")).unwrap();
    churn(&m);
    sh.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = sh.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok"), "{text}");

    assert!(
        engine_counter(&m.mnt, "inode_fds_closed") > closed_before + 100,
        "the churn closed no descriptors: this test would not test reopening"
    );
    check_tree(&m.path("churn"), 10, 40);
    m.unmount();
    let log = m.log_text();
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "{log}");
}

#[test]
fn closed_descriptors_reopen_after_renames_links_and_unlinks_by_handle() {
    closed_descriptors_reopen_after_renames_links_and_unlinks(false);
}

#[test]
fn closed_descriptors_reopen_after_renames_links_and_unlinks_by_name() {
    closed_descriptors_reopen_after_renames_links_and_unlinks(true);
}

/// A renamed-away name in the backing directory (outside the mount): a lookup through the new
/// name finds the same node; the old one is gone, as on any filesystem.
#[test]
fn files_renamed_in_the_backing_directory_are_found_by_their_new_name() {
    let mut m = mount_with(&["fds=16"], true, None);
    make_tree(&m.path("churn"), 10, 40);
    make_tree(&m.mnt, 1, 5);
    let ino = fs::metadata(m.path("d0/sub/f1")).unwrap().ino();
    fs::rename(m.backing("d0"), m.backing("d0-moved")).unwrap();
    churn(&m);
    let md = fs::metadata(m.path("d0-moved/sub/f1")).unwrap();
    assert_eq!(md.ino(), ino);
    assert_eq!(fs::read(m.path("d0-moved/sub/f1")).unwrap(), content(0, 1));
    m.unmount();
}

/// `ulimit -n 256` before mounting: the bound follows the limit (half of it, said once in the
/// log), and thousands of files created, copied in parallel and compared fail nothing.
#[test]
fn a_daemon_limited_to_256_descriptors_serves_thousands_of_files() {
    let mut m = mount_with(&[], false, Some(256));
    assert!(
        m.log_text().contains("descriptor limit 256"),
        "{}",
        m.log_text()
    );
    assert_eq!(engine_counter(&m.mnt, "inode_fds_bound"), 128);
    make_tree(&m.path("src"), 20, 100);
    let copies: Vec<_> = (0..4)
        .map(|i| {
            Command::new("cp")
                .arg("-a")
                .arg(m.path("src"))
                .arg(m.path(&format!("copy{i}")))
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in copies {
        assert!(c.wait().unwrap().success(), "cp -a failed");
    }
    for i in 0..4 {
        let out = Command::new("diff")
            .arg("-r")
            .arg(m.path("src"))
            .arg(m.path(&format!("copy{i}")))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "diff -r: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert!(engine_counter(&m.mnt, "inode_fds") <= 128);
    assert!(daemon_fds(&m) < 256);
    // Many files open at once as well: the inode descriptors make room for them.
    let held: Vec<File> = (0..100)
        .map(|f| File::open(m.path(&format!("copy1/d3/sub/f{f}"))).unwrap())
        .collect();
    check_tree(&m.path("copy2"), 20, 100);
    drop(held);
    m.unmount();
    let log = m.log_text();
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "{log}");
}

/// Files renamed back and forth while their open descriptors are used (fchmod always reaches
/// the daemon) and lookups of other files keep closing idle descriptors: a moved inode whose
/// descriptor was closed must be reopened under its new name, never fail with ESTALE. (Fails at
/// once if a rename does not record the new name; the narrower window between the rename and
/// that record, which a pin closes, is rarely hit.)
#[test]
fn open_files_renamed_back_and_forth_are_reopened_by_their_new_name() {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mut m = mount_with(&["fds=16"], true, None);
    make_tree(&m.path("churn"), 10, 40);
    fs::create_dir(m.path("r")).unwrap();
    let files: Vec<File> = (0..20)
        .map(|i| {
            let p = m.path(&format!("r/a{i}"));
            fs::write(&p, b"x").unwrap();
            File::open(&p).unwrap()
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mnt = m.mnt.clone();
    let renamer = {
        let stop = stop.clone();
        let mnt = mnt.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for i in 0..20 {
                    let (a, b) = (mnt.join(format!("r/a{i}")), mnt.join(format!("r/b{i}")));
                    if n.is_multiple_of(2) {
                        fs::rename(&a, &b).unwrap();
                    } else {
                        fs::rename(&b, &a).unwrap();
                    }
                }
                n += 1;
            }
            n
        })
    };
    let churner = {
        let stop = stop.clone();
        let mnt = mnt.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for d in 0..10 {
                    for f in 0..40 {
                        let _ = fs::metadata(mnt.join(format!("churn/d{d}/sub/f{f}")));
                    }
                }
            }
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut calls = 0u64;
    while std::time::Instant::now() < deadline {
        for (i, f) in files.iter().enumerate() {
            let mode = if (calls + i as u64).is_multiple_of(2) {
                0o644
            } else {
                0o600
            };
            f.set_permissions(fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("fchmod of r/?{i} during renames: {e}"));
            calls += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = renamer.join().unwrap();
    churner.join().unwrap();
    eprintln!("{calls} fchmod calls during {rounds} rounds of 20 renames");
    assert!(engine_counter(&m.mnt, "inode_fds_reopened") > 0);
    drop(files);
    m.unmount();
}
