//! Mounting without root, through fusermount3: a user mounts a directory of their own, unmounts
//! it with `fusermount3 -u` or a signal, and `allow_other` / `default_permissions` behave as with
//! other FUSE filesystems. Runs in a private mount namespace (lifecycle_common::Ns) where
//! /dev/fuse is mode 0666 as udev makes it on Debian, and where /etc/fuse.conf is replaced by a
//! test file only in the test about `user_allow_other`: the machine's files are never edited.

mod common;
mod lifecycle_common;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use common::{gunzip_all, is_container, varied_text};
use lifecycle_common::{describe, top_mount, wait_until, FuseConf, Ns, FS_TYPE};

/// Two unprivileged users without passwd entries (nothing is added to /etc/passwd).
const ALICE: u32 = 4242;
const BOB: u32 = 4243;

/// `src/`, `mnt/` and a log directory owned by `uid`.
fn user_dirs(ns: &Ns, uid: u32) -> (PathBuf, PathBuf, PathBuf) {
    let src = ns.base.join("src");
    let mnt = ns.base.join("mnt");
    let logdir = ns.base.join("logs");
    for d in [&src, &mnt, &logdir] {
        std::fs::create_dir(d).unwrap();
        std::os::unix::fs::chown(d, Some(uid), Some(uid)).unwrap();
    }
    (src, mnt, logdir)
}

#[test]
fn a_user_mounts_their_own_directory_through_fusermount3_and_unmounts_it() {
    let ns = Ns::new(FuseConf::Host);
    let (src, mnt, logdir) = user_dirs(&ns, ALICE);
    let (s, m, l) = (src.display(), mnt.display(), logdir.display());
    ns.ok_as(
        ALICE,
        ALICE,
        &format!("deflatefs mount -o chunk=32k,log={l}/log {s} {m}"),
    );
    let top = top_mount(Some(ns.pid()), &mnt).expect("mounted");
    assert_eq!(top.fs_type, FS_TYPE);
    assert_eq!(top.source, s.to_string());
    assert!(
        top.super_options.contains(&format!("user_id={ALICE}")),
        "{top:?}"
    );

    let data = varied_text(300_000, 70);
    std::fs::write(ns.base.join("data"), &data).unwrap();
    ns.ok_as(
        ALICE,
        ALICE,
        &format!(
            "cp {}/data {m}/f && cmp {m}/f {}/data",
            ns.base.display(),
            ns.base.display()
        ),
    );
    // Without allow_other, nobody else gets in, not even root.
    let e = std::fs::read(ns.path(&mnt.join("f"))).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");

    ns.ok_as(ALICE, ALICE, &format!("fusermount3 -u {m}"));
    ns.wait_daemons_exit(&ns.base);
    assert!(!ns.deflatefs_at(&mnt));
    let backing_path = ns.path(&src.join("f"));
    let backing = std::fs::read(&backing_path).unwrap();
    assert!(is_container(&backing));
    assert_eq!(gunzip_all(&backing).unwrap(), data);
    assert_eq!(std::fs::metadata(&backing_path).unwrap().uid(), ALICE);
}

#[test]
fn sigterm_to_a_users_daemon_unmounts_through_fusermount3() {
    let ns = Ns::new(FuseConf::Host);
    let (src, mnt, logdir) = user_dirs(&ns, ALICE);
    let (s, m, l) = (src.display(), mnt.display(), logdir.display());
    ns.ok_as(
        ALICE,
        ALICE,
        &format!("deflatefs mount -o log={l}/log {s} {m}"),
    );
    ns.ok_as(ALICE, ALICE, &format!("seq 1 200000 > {m}/seq"));
    let pids = lifecycle_common::daemons_under(&ns.base);
    assert_eq!(pids.len(), 1);
    unsafe { libc::kill(pids[0], libc::SIGTERM) };
    ns.wait_daemons_exit(&ns.base);
    assert!(!ns.deflatefs_at(&mnt), "the signal unmounted it");
    let backing = std::fs::read(ns.path(&src.join("seq"))).unwrap();
    let expected: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    assert_eq!(gunzip_all(&backing).unwrap(), expected.as_bytes());
}

#[test]
fn a_user_cannot_mount_where_they_may_not_write_nor_use_allow_other_unless_allowed() {
    let ns = Ns::new(FuseConf::Content("# no user_allow_other\n"));
    let (src, _mnt, logdir) = user_dirs(&ns, ALICE);
    let theirs = ns.base.join("roots");
    std::fs::create_dir(&theirs).unwrap();
    let out = ns.sh_as(
        ALICE,
        ALICE,
        &format!(
            "deflatefs mount -o log={}/log {} {}",
            logdir.display(),
            src.display(),
            theirs.display()
        ),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{}",
        describe(&out)
    );
    assert!(lifecycle_common::mounts_at(Some(ns.pid()), &theirs).is_empty());

    let out = ns.sh_as(
        ALICE,
        ALICE,
        &format!(
            "deflatefs mount -o allow_other,log={}/log {} {}",
            logdir.display(),
            src.display(),
            ns.base.join("mnt").display()
        ),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("user_allow_other"),
        "{}",
        describe(&out)
    );
    assert!(!ns.deflatefs_at(&ns.base.join("mnt")));
    assert!(lifecycle_common::daemons_under(&ns.base).is_empty());
}

#[test]
fn allow_other_and_default_permissions_work_as_for_other_fuse_filesystems() {
    let ns = Ns::new(FuseConf::Content("user_allow_other\n"));
    let (src, mnt, logdir) = user_dirs(&ns, ALICE);
    let (s, m, l) = (src.display(), mnt.display(), logdir.display());
    ns.ok_as(
        ALICE,
        ALICE,
        &format!("deflatefs mount -o allow_other,default_permissions,log={l}/log {s} {m}"),
    );
    ns.ok_as(
        ALICE,
        ALICE,
        &format!(
            "umask 022 && echo public > {m}/public && echo secret > {m}/private && chmod 600 {m}/private"
        ),
    );
    // Another user reads what the modes allow, and only that: the kernel checks them.
    assert_eq!(ns.ok_as(BOB, BOB, &format!("cat {m}/public")), "public\n");
    let out = ns.sh_as(BOB, BOB, &format!("cat {m}/private"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        describe(&out)
    );
    let out = ns.sh_as(BOB, BOB, &format!("echo x > {m}/bobs"));
    assert!(!out.status.success(), "{}", describe(&out));
    // Root is another user too.
    assert_eq!(
        std::fs::read(ns.path(&mnt.join("public"))).unwrap(),
        b"public\n"
    );
    ns.ok_as(ALICE, ALICE, &format!("fusermount3 -u {m}"));
    ns.wait_daemons_exit(&ns.base);
    assert!(wait_until(Duration::from_secs(5), || !ns.deflatefs_at(&mnt)));
}
