//! The daemon's lifecycle: `deflatefs mount` (daemon mode) returns once the mount is live; `umount`,
//! `umount -l`, `fusermount3 -u`, SIGTERM and SIGINT all write back and commit everything before
//! the daemon exits; an external unmount never unmounts anything else (the fuser 0.18.0 defect in
//! docs/PLATFORM.md); /proc/mounts, findmnt and df show what they show for other
//! filesystems; logging goes where the options say.

mod common;
mod lifecycle_common;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{gunzip_all, is_container, varied_text};
use lifecycle_common::{deflatefs_at, describe, run, top_mount, wait_until, Daemon, FS_TYPE};

/// Reads `name` back through a fresh mount and unmounts again.
fn read_after_remount(d: &Daemon, name: &str) -> Vec<u8> {
    d.mount();
    let back = std::fs::read(d.mnt.join(name)).unwrap();
    d.umount();
    back
}

/// The backing file, checked to be a container that `zcat` reads as `data`.
fn assert_backing_holds(d: &Daemon, name: &str, data: &[u8]) {
    let backing = std::fs::read(d.src.join(name)).unwrap();
    assert!(is_container(&backing), "{name}: not a container");
    let z = gunzip_all(&backing).unwrap();
    assert!(
        z == data,
        "{name}: backing decompresses to {} bytes, expected {}",
        z.len(),
        data.len()
    );
}

#[test]
fn the_mount_command_returns_with_the_mount_live_and_the_daemon_detached_in_dir_root() {
    let d = Daemon::unmounted(&[]);
    d.mount();
    // Usable at once: no sleep between the command's return and the first write.
    std::fs::write(d.mnt.join("now"), b"immediately").unwrap();
    assert_ne!(
        std::fs::metadata(&d.mnt).unwrap().dev(),
        std::fs::metadata(&d.base).unwrap().dev()
    );
    let pid = d.pid();
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        Path::new("/"),
        "the daemon keeps no directory busy"
    );
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    assert_eq!(
        fields[3],
        pid.to_string(),
        "the daemon leads its own session"
    );
    // Modes are the caller's, with the caller's umask applied once (not the daemon's on top).
    let out = run(Command::new("sh").arg("-c").arg(format!(
        "umask 002 && touch {m}/g && mkdir {m}/dir && stat -c %a {m}/g {m}/dir",
        m = d.mnt.display()
    )));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "664\n775\n",
        "{}",
        describe(&out)
    );
    d.umount();
}

#[test]
fn findmnt_shows_source_and_type_and_df_reports_the_backing_space() {
    let d = Daemon::unmounted(&[]);
    d.mount();
    let m = top_mount(None, &d.mnt).unwrap();
    assert_eq!(m.fs_type, FS_TYPE);
    assert_eq!(Path::new(&m.source), d.src);
    let out = run(Command::new("findmnt")
        .args(["-n", "-o", "SOURCE,FSTYPE"])
        .arg(&d.mnt));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        vec![d.src.to_str().unwrap(), FS_TYPE]
    );
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(mounts.lines().any(|l| l.starts_with(&format!(
        "{} {} {FS_TYPE} ",
        d.src.display(),
        d.mnt.display()
    ))));
    // df: the numbers of the filesystem holding the backing directory.
    let df = |p: &Path| {
        let out = run(Command::new("df").args(["-B1", "--output=size"]).arg(p));
        assert!(out.status.success(), "{}", describe(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(df(&d.mnt), df(&d.base));
    d.umount();
}

#[test]
fn umount_writes_back_and_commits_before_the_daemon_exits() {
    let d = Daemon::unmounted(&["chunk=16k"]);
    d.mount();
    let mut files = Vec::new();
    for i in 0..4 {
        let data = varied_text(400_000 + i * 100_000, 20 + i as u64);
        std::fs::write(d.mnt.join(format!("f{i}")), &data).unwrap();
        files.push((format!("f{i}"), data));
    }
    d.umount();
    assert!(!deflatefs_at(None, &d.mnt));
    for (name, data) in &files {
        assert_backing_holds(&d, name, data);
        assert!(read_after_remount(&d, name) == *data);
    }
    assert!(d.log_text().contains("unmounted"), "{}", d.log_text());
}

#[test]
fn lazy_umount_keeps_serving_open_files_then_commits_and_exits_after_the_last_close() {
    let d = Daemon::unmounted(&["chunk=16k"]);
    d.mount();
    let first = varied_text(300_000, 31);
    let second = varied_text(200_000, 32);
    let mut f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(d.mnt.join("open"))
        .unwrap();
    f.write_all(&first).unwrap();
    let pid = d.pid();
    let out = run(Command::new("umount").arg("-l").arg(&d.mnt));
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        !deflatefs_at(None, &d.mnt),
        "detached from the tree at once"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        lifecycle_common::daemons_under(&d.base).contains(&pid),
        "the daemon must keep serving the open file"
    );
    f.write_all(&second).unwrap();
    f.sync_all().unwrap();
    f.write_all(b"tail after fsync\n").unwrap();
    drop(f);
    d.wait_exit(Duration::from_secs(30));
    let mut expected = first;
    expected.extend_from_slice(&second);
    expected.extend_from_slice(b"tail after fsync\n");
    assert_backing_holds(&d, "open", &expected);
    assert!(read_after_remount(&d, "open") == expected);
}

#[test]
fn fusermount3_u_writes_back_and_the_daemon_exits() {
    let d = Daemon::unmounted(&[]);
    d.mount();
    let data = varied_text(700_000, 41);
    std::fs::write(d.mnt.join("f"), &data).unwrap();
    let out = run(Command::new("fusermount3").arg("-u").arg(&d.mnt));
    assert!(out.status.success(), "{}", describe(&out));
    d.wait_exit(Duration::from_secs(30));
    assert_backing_holds(&d, "f", &data);
}

/// Writes through a descriptor that stays open, so the data is still dirty in the daemon when
/// the signal arrives, then checks that the signal committed it and unmounted.
fn signal_flushes_and_unmounts(sig: i32) {
    let d = Daemon::unmounted(&["chunk=16k"]);
    d.mount();
    let pid = d.pid();
    let closed = varied_text(300_000, 50);
    std::fs::write(d.mnt.join("closed"), &closed).unwrap();
    let open = varied_text(250_000, 51);
    let mut f = File::create(d.mnt.join("open")).unwrap();
    f.write_all(&open).unwrap();
    unsafe { libc::kill(pid, sig) };
    // The mount point is busy (the open file): the daemon commits, detaches the mount lazily and
    // serves the descriptor until it is closed.
    assert!(
        wait_until(Duration::from_secs(20), || !deflatefs_at(None, &d.mnt)),
        "signal {sig} did not unmount\nlog:\n{}",
        d.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            std::fs::read(d.src.join("open"))
                .ok()
                .and_then(|b| gunzip_all(&b).ok())
                .is_some_and(|z| z == open)
        }),
        "signal {sig}: the open file's data was not committed\nlog:\n{}",
        d.log_text()
    );
    drop(f);
    d.wait_exit(Duration::from_secs(30));
    assert_backing_holds(&d, "closed", &closed);
    assert_backing_holds(&d, "open", &open);
    assert!(read_after_remount(&d, "open") == open);
}

#[test]
fn sigterm_writes_back_unmounts_and_exits() {
    signal_flushes_and_unmounts(libc::SIGTERM);
}

#[test]
fn sigint_writes_back_unmounts_and_exits() {
    signal_flushes_and_unmounts(libc::SIGINT);
}

/// A tmpfs mounted at `dir` (removed on drop if still there).
struct Tmpfs<'a>(&'a Path);

impl<'a> Tmpfs<'a> {
    fn mount(dir: &'a Path) -> Tmpfs<'a> {
        let out = run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m", "lifecycle-tmpfs"])
            .arg(dir));
        assert!(out.status.success(), "mount tmpfs: {}", describe(&out));
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        while lifecycle_common::mounts_at(None, self.0)
            .iter()
            .any(|m| m.fs_type == "tmpfs")
        {
            let out = run(Command::new("umount").arg("-l").arg(self.0));
            if !out.status.success() {
                break;
            }
        }
    }
}

/// The fuser 0.18.0 defect: after an external unmount its session unmounted the path again,
/// taking away the filesystem underneath when the mount point is itself a mount root. Here the
/// source is a tmpfs mount root and deflatefs is mounted over it; whichever way the mount ends,
/// the tmpfs and its files must still be there.
fn mount_over_a_tmpfs_root_then(end: &str) {
    let mut d = Daemon::unmounted(&[]);
    let dir = d.base.join("tmpfs");
    std::fs::create_dir(&dir).unwrap();
    let _tmpfs = Tmpfs::mount(&dir);
    let tmpfs_id = top_mount(None, &dir).unwrap().id;
    std::fs::write(dir.join("before.txt"), b"on the tmpfs before deflatefs\n").unwrap();
    d.src = dir.clone();
    d.mnt = dir.clone();
    d.mount();
    let data = varied_text(400_000, 60);
    std::fs::write(dir.join("through.txt"), &data).unwrap();
    match end {
        "umount" => assert!(run(Command::new("umount").arg(&dir)).status.success()),
        "umount -l" => assert!(run(Command::new("umount").arg("-l").arg(&dir))
            .status
            .success()),
        "fusermount3 -u" => assert!(run(Command::new("fusermount3").arg("-u").arg(&dir))
            .status
            .success()),
        "SIGTERM" => unsafe {
            libc::kill(d.pid(), libc::SIGTERM);
        },
        other => panic!("{other}?"),
    }
    d.wait_exit(Duration::from_secs(30));
    // Give a buggy second unmount every chance to happen before looking.
    std::thread::sleep(Duration::from_millis(200));
    let top = top_mount(None, &dir);
    assert!(
        top.as_ref()
            .is_some_and(|t| t.id == tmpfs_id && t.fs_type == "tmpfs"),
        "after {end}: the tmpfs under deflatefs must still be mounted, found {top:?}\nlog:\n{}",
        d.log_text()
    );
    assert_eq!(
        std::fs::read(dir.join("before.txt")).unwrap(),
        b"on the tmpfs before deflatefs\n"
    );
    assert_backing_holds(&d, "through.txt", &data);
}

#[test]
fn external_umount_of_a_mount_over_a_tmpfs_root_leaves_the_tmpfs_mounted() {
    mount_over_a_tmpfs_root_then("umount");
}

#[test]
fn lazy_umount_of_a_mount_over_a_tmpfs_root_leaves_the_tmpfs_mounted() {
    mount_over_a_tmpfs_root_then("umount -l");
}

#[test]
fn fusermount3_u_of_a_mount_over_a_tmpfs_root_leaves_the_tmpfs_mounted() {
    mount_over_a_tmpfs_root_then("fusermount3 -u");
}

#[test]
fn sigterm_to_a_mount_over_a_tmpfs_root_leaves_the_tmpfs_mounted() {
    mount_over_a_tmpfs_root_then("SIGTERM");
}

#[test]
fn a_signal_never_unmounts_a_filesystem_mounted_on_top_of_deflatefs() {
    let d = Daemon::unmounted(&[]);
    d.mount();
    let deflatefs_id = top_mount(None, &d.mnt).unwrap().id;
    let tmpfs = Tmpfs::mount(&d.mnt);
    std::fs::write(d.mnt.join("on-top"), b"tmpfs over deflatefs").unwrap();
    unsafe { libc::kill(d.pid(), libc::SIGTERM) };
    assert!(
        wait_until(Duration::from_secs(5), || d
            .log_text()
            .contains("not unmounting")),
        "log:\n{}",
        d.log_text()
    );
    let at = lifecycle_common::mounts_at(None, &d.mnt);
    assert_eq!(
        at.last().map(|m| m.fs_type.as_str()),
        Some("tmpfs"),
        "{at:?}"
    );
    assert!(at.iter().any(|m| m.id == deflatefs_id), "{at:?}");
    assert_eq!(
        std::fs::read(d.mnt.join("on-top")).unwrap(),
        b"tmpfs over deflatefs"
    );
    drop(tmpfs);
    d.umount();
}

#[test]
fn the_daemon_logs_to_the_log_file_at_the_chosen_level_and_to_stderr_in_the_foreground() {
    let quiet = Daemon::unmounted(&["log_level=warn"]);
    quiet.mount();
    quiet.umount();
    assert!(
        !quiet.log_text().contains("INFO"),
        "log_level=warn logs no INFO lines:\n{}",
        quiet.log_text()
    );

    let chatty = Daemon::unmounted(&["log_level=debug"]);
    chatty.mount();
    std::fs::write(chatty.mnt.join("f"), b"x").unwrap();
    chatty.umount();
    let log = chatty.log_text();
    assert!(
        log.contains("DEBUG") && log.contains("INFO") && log.contains("mounted"),
        "log_level=debug logs DEBUG lines:\n{log}"
    );

    // -f: in the foreground, logging to stderr; SIGTERM ends it.
    let fg = Daemon::unmounted(&[]);
    let child = Command::new(lifecycle_common::BIN)
        .args(["mount", "-f"])
        .arg(&fg.src)
        .arg(&fg.mnt)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(20), || deflatefs_at(
        None, &fg.mnt
    )));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("mounted") && stderr.contains("unmounted"),
        "{stderr}"
    );
    assert!(!deflatefs_at(None, &fg.mnt));
}
