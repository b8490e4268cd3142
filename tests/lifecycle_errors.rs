//! Every way a mount can fail before it is live: the command prints what is wrong, exits
//! non-zero, and leaves nothing mounted and no daemon behind.

mod common;
mod lifecycle_common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use lifecycle_common::{daemons_under, describe, mounts_at, run, Daemon, BIN};

/// An unprivileged uid/gid without a passwd entry (nothing is added to /etc/passwd).
const USER: u32 = 4242;

#[track_caller]
fn assert_refused(d: &Daemon, out: &Output, words: &[&str]) {
    assert!(
        !out.status.success(),
        "the mount succeeded: {}",
        describe(out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("deflatefs: "),
        "one clear line on stderr: {}",
        describe(out)
    );
    for w in words {
        assert!(
            stderr.contains(w),
            "the message should say {w:?}: {}",
            describe(out)
        );
    }
    assert!(
        mounts_at(None, &d.mnt).is_empty(),
        "nothing may be mounted at {}",
        d.mnt.display()
    );
    let findmnt = run(Command::new("findmnt").arg(&d.mnt));
    assert!(
        !findmnt.status.success(),
        "findmnt finds a mount: {}",
        describe(&findmnt)
    );
    assert!(daemons_under(&d.base).is_empty(), "no daemon may be left");
}

fn mount_cmd(src: &Path, mnt: &Path, opts: &str) -> Command {
    let mut c = Command::new(BIN);
    c.arg("mount");
    if !opts.is_empty() {
        c.arg("-o").arg(opts);
    }
    c.arg(src).arg(mnt);
    c
}

#[test]
fn a_missing_source_is_named() {
    let d = Daemon::unmounted(&[]);
    let missing = d.base.join("nope");
    let out = run(&mut mount_cmd(&missing, &d.mnt, ""));
    assert_refused(&d, &out, &["source", "nope", "No such file or directory"]);
}

#[test]
fn a_source_that_is_a_file_is_refused() {
    let d = Daemon::unmounted(&[]);
    let file = d.base.join("file");
    std::fs::write(&file, b"x").unwrap();
    let out = run(&mut mount_cmd(&file, &d.mnt, ""));
    assert_refused(&d, &out, &["source", "is not a directory"]);
}

#[test]
fn a_missing_mount_point_is_named() {
    let d = Daemon::unmounted(&[]);
    let missing = d.base.join("nowhere");
    let out = run(&mut mount_cmd(&d.src, &missing, ""));
    assert_refused(
        &d,
        &out,
        &["mount point", "nowhere", "No such file or directory"],
    );
}

#[test]
fn a_mount_point_that_is_a_file_is_refused() {
    let d = Daemon::unmounted(&[]);
    let file = d.base.join("file");
    std::fs::write(&file, b"x").unwrap();
    let out = run(&mut mount_cmd(&d.src, &file, ""));
    assert_refused(&d, &out, &["mount point", "is not a directory"]);
}

#[test]
fn a_mount_point_that_already_is_a_deflatefs_mount_is_refused() {
    let d = Daemon::unmounted(&[]);
    d.mount();
    let pid = d.pid();
    let out = d.try_mount();
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already a deflatefs mount"),
        "{}",
        describe(&out)
    );
    let at = mounts_at(None, &d.mnt);
    assert_eq!(at.len(), 1, "still exactly the first mount: {at:?}");
    assert_eq!(daemons_under(&d.base), vec![pid]);
    d.umount();
}

#[test]
fn a_missing_dev_fuse_is_named() {
    let d = Daemon::unmounted(&[]);
    // Only inside a private mount namespace does /dev lack fuse (a tmpfs hides it).
    let out = run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs lifecycle-empty-dev /dev && exec {BIN} mount {} {}",
            d.src.display(),
            d.mnt.display()
        )));
    assert_refused(&d, &out, &["/dev/fuse is missing"]);
}

#[test]
fn invalid_options_are_named() {
    let d = Daemon::unmounted(&[]);
    for (opts, words) in [
        (
            "chunk=64k,frobnicate",
            &["unknown mount option 'frobnicate'"][..],
        ),
        ("chunk=5k", &["chunk=5k", "power of two"][..]),
        ("level=99", &["level=99"][..]),
        ("ro=yes", &["ro", "takes no value"][..]),
    ] {
        let out = run(&mut mount_cmd(&d.src, &d.mnt, opts));
        assert_refused(&d, &out, words);
    }
}

#[test]
fn a_failure_after_the_fork_reaches_the_mount_command() {
    // The log file is opened by the daemon child: its failure travels back through the
    // readiness pipe.
    let d = Daemon::unmounted(&[]);
    let out = run(&mut mount_cmd(&d.src, &d.mnt, "log=/nonexistent-dir/x.log"));
    assert_refused(&d, &out, &["cannot open log file /nonexistent-dir/x.log"]);
}

#[test]
fn a_user_without_access_gets_permission_denied() {
    let d = Daemon::unmounted(&[]);
    // src and mnt belong to root, mode 0755: the user may not write to either.
    for (src, mnt, what) in [
        (d.src.clone(), d.mnt.clone(), "source"),
        (d.base.join("own-src"), d.mnt.clone(), "mount point"),
    ] {
        if what == "mount point" {
            std::fs::create_dir_all(&src).unwrap();
            std::os::unix::fs::chown(&src, Some(USER), Some(USER)).unwrap();
        }
        let out = run(mount_cmd(&src, &mnt, "").uid(USER).gid(USER));
        assert_refused(&d, &out, &[what, "permission denied"]);
    }
}

/// One read-write mount per source: a second read-write mount of the same source on another
/// mount point is refused and names the holder (pid, mount point); a read-only mount may run
/// beside it; once the holder is killed with SIGKILL and its dead mount removed, the source
/// mounts read-write again (the lock went with the daemon).
#[test]
fn a_second_read_write_mount_of_one_source_is_refused_naming_the_holder() {
    let d = Daemon::unmounted(&[]);
    d.mount();
    let pid = d.pid();
    let second = d.base.join("second");
    std::fs::create_dir(&second).unwrap();
    let out = run(&mut mount_cmd(&d.src, &second, ""));
    assert!(!out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for w in [
        "already mounted read-write".to_string(),
        format!("pid {pid}"),
        d.mnt.display().to_string(),
    ] {
        assert!(
            stderr.contains(&w),
            "the message should say {w:?}: {}",
            describe(&out)
        );
    }
    assert!(mounts_at(None, &second).is_empty());
    // The refused daemon reports before it exits.
    assert!(
        lifecycle_common::wait_until(std::time::Duration::from_secs(10), || {
            daemons_under(&d.base) == vec![pid]
        }),
        "no second daemon may be left: {:?}",
        daemons_under(&d.base)
    );

    let out = run(&mut mount_cmd(&d.src, &second, "ro"));
    assert!(
        out.status.success(),
        "a read-only mount beside it: {}",
        describe(&out)
    );
    assert!(run(Command::new("umount").arg(&second)).status.success());

    // SAFETY: kill(2) with a pid and a signal number, no pointers.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    assert!(lifecycle_common::wait_gone(
        &[pid],
        std::time::Duration::from_secs(10)
    ));
    assert!(run(Command::new("umount").arg("-l").arg(&d.mnt))
        .status
        .success());
    let out = run(&mut mount_cmd(&d.src, &second, ""));
    assert!(
        out.status.success(),
        "after the holder died: {}",
        describe(&out)
    );
    assert!(run(Command::new("umount").arg(&second)).status.success());
}
