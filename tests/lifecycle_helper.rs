//! `mount -t deflatefs`, fstab lines and `mount -t fuse.deflatefs`, through the real mount(8),
//! the helper script of this checkout and mount.fuse3, in a private mount namespace
//! (lifecycle_common::Ns): nothing is installed on the machine and /etc/fstab is never touched;
//! fstab handling is tested with `mount -a -T FILE` and `mount --fstab FILE MOUNTPOINT`.

mod common;
mod lifecycle_common;

use std::path::Path;

use common::{gunzip_all, is_container, varied_text};
use lifecycle_common::{container_chunk_log2, describe, FuseConf, Ns, FS_TYPE};

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes `files` through the mount (reached from outside the namespace) and returns them.
fn write_files(ns: &Ns, mnt: &Path, seed: u64) -> Vec<(String, Vec<u8>)> {
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            (
                format!("file{i}.txt"),
                varied_text(100_000 + i * 70_000, seed + i as u64),
            )
        })
        .collect();
    for (name, data) in &files {
        std::fs::write(ns.path(&mnt.join(name)), data).unwrap();
    }
    files
}

#[test]
fn mount_t_deflatefs_over_the_same_directory_stores_containers_that_read_back_after_remount() {
    let ns = Ns::new(FuseConf::Host);
    let dir = ns.base.join("data");
    std::fs::create_dir(&dir).unwrap();
    let d = dir.display();
    let log = ns.base.join("log");
    let l = log.display();

    ns.ok(&format!("mount -t deflatefs {d} {d} -o chunk=64k,log={l}"));
    let top = lifecycle_common::top_mount(Some(ns.pid()), &dir).expect("mounted");
    assert_eq!(top.fs_type, FS_TYPE);
    assert_eq!(top.source, d.to_string(), "/proc/mounts shows the source");
    let findmnt = ns.ok(&format!("findmnt -n -o SOURCE,FSTYPE {d}"));
    assert_eq!(
        findmnt.split_whitespace().collect::<Vec<_>>(),
        vec![d.to_string(), FS_TYPE.to_string()]
    );
    let files = write_files(&ns, &dir, 7);
    ns.ok(&format!("umount {d}"));
    ns.wait_daemons_exit(&ns.base);
    assert!(!ns.deflatefs_at(&dir));

    // Unmounted: the backing files are containers with 64 KiB chunks holding the data.
    for (name, data) in &files {
        let backing = std::fs::read(ns.path(&dir.join(name))).unwrap();
        assert!(is_container(&backing), "{name} is not a container");
        assert_eq!(container_chunk_log2(&backing), 16, "{name}: chunk=64k");
        assert!(backing.len() < data.len() / 2, "{name} is compressed");
        assert_eq!(&gunzip_all(&backing).unwrap(), data, "{name}: zcat");
    }

    ns.ok(&format!("mount -t deflatefs {d} {d} -o log={l}"));
    for (name, data) in &files {
        let back = std::fs::read(ns.path(&dir.join(name))).unwrap();
        assert!(back == *data, "{name} reads back after remount");
    }
    ns.ok(&format!("umount {d}"));
    ns.wait_daemons_exit(&ns.base);
}

#[test]
fn the_helper_takes_mount_flags_in_any_position_and_drops_fstab_only_options() {
    let ns = Ns::new(FuseConf::Host);
    let src = ns.base.join("src");
    let mnt = ns.base.join("mnt");
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let (s, m) = (src.display(), mnt.display());
    let log = ns.base.join("log");

    // -f (fake): everything but the mount.
    let out = ns.sh(&format!(
        "/sbin/mount.deflatefs -f {s} {m} -o chunk=64k,log={}",
        log.display()
    ));
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!ns.deflatefs_at(&mnt), "-f must not mount");

    // Flags before, between and after the operands, combined or not, and every fstab-only option.
    let out = ns.sh(&format!(
        "/sbin/mount.deflatefs -n {s} -sv {m} -o defaults,auto,nofail,_netdev,x-systemd.automount,\
         comment=hello,user=joe,users,nouser,owner,group,chunk=32k,log={} -n",
        log.display()
    ));
    assert!(out.status.success(), "{}", describe(&out));
    assert!(ns.deflatefs_at(&mnt));
    assert!(
        stderr_of(&out).contains("deflatefs mount --sloppy -o chunk=32k,log="),
        "-v shows the command, without the fstab-only options: {}",
        stderr_of(&out)
    );
    std::fs::write(ns.path(&mnt.join("f")), b"x".repeat(100_000)).unwrap();
    ns.ok(&format!("umount {m}"));
    ns.wait_daemons_exit(&ns.base);
    let backing = std::fs::read(ns.path(&src.join("f"))).unwrap();
    assert_eq!(
        container_chunk_log2(&backing),
        15,
        "chunk=32k reached deflatefs"
    );

    // `user` in fstab makes mount(8) add noexec,nosuid,nodev: noexec is honoured.
    let out = ns.sh(&format!(
        "mount -t deflatefs {s} {m} -o user,log={}",
        log.display()
    ));
    assert!(out.status.success(), "{}", describe(&out));
    let top = lifecycle_common::top_mount(Some(ns.pid()), &mnt).unwrap();
    assert_eq!(top.fs_type, FS_TYPE);
    for flag in ["noexec", "nosuid", "nodev"] {
        assert!(
            top.options.split(',').any(|o| o == flag),
            "{flag} missing in {}",
            top.options
        );
    }
    ns.ok(&format!("umount {m}"));
    ns.wait_daemons_exit(&ns.base);
}

#[test]
fn mount_a_with_an_fstab_file_mounts_exactly_the_lines_without_noauto() {
    let ns = Ns::new(FuseConf::Host);
    let a = ns.base.join("a");
    let b = ns.base.join("b");
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    let log = ns.base.join("log");
    let fstab = ns.base.join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# test fstab\n\
             {a}  {a}  deflatefs  defaults,chunk=128k,nofail,log={l}  0 0\n\
             {b}  {b}  deflatefs  noauto,chunk=4k,x-test=1,log={l}  0 0\n",
            a = a.display(),
            b = b.display(),
            l = log.display()
        ),
    )
    .unwrap();

    ns.ok(&format!("mount -a -T {}", fstab.display()));
    assert!(ns.deflatefs_at(&a), "the auto line is mounted");
    assert!(!ns.deflatefs_at(&b), "the noauto line is not");
    // Running it again changes nothing (mount -a skips mounted lines).
    ns.ok(&format!("mount -a -T {}", fstab.display()));
    assert_eq!(
        lifecycle_common::mounts_at(Some(ns.pid()), &a)
            .iter()
            .filter(|m| m.fs_type == FS_TYPE)
            .count(),
        1
    );

    // The noauto line mounts by its mount point, with its options.
    ns.ok(&format!(
        "mount --fstab {} {}",
        fstab.display(),
        b.display()
    ));
    assert!(ns.deflatefs_at(&b));
    std::fs::write(ns.path(&a.join("f")), varied_text(300_000, 1)).unwrap();
    std::fs::write(ns.path(&b.join("f")), varied_text(300_000, 2)).unwrap();
    ns.ok(&format!("umount {} {}", a.display(), b.display()));
    ns.wait_daemons_exit(&ns.base);
    let fa = std::fs::read(ns.path(&a.join("f"))).unwrap();
    let fb = std::fs::read(ns.path(&b.join("f"))).unwrap();
    assert_eq!(container_chunk_log2(&fa), 17, "line 1: chunk=128k");
    assert_eq!(container_chunk_log2(&fb), 12, "line 2: chunk=4k");
}

#[test]
fn mount_t_fuse_deflatefs_goes_through_mount_fuse3() {
    let ns = Ns::new(FuseConf::Host);
    let src = ns.base.join("src");
    let mnt = ns.base.join("mnt");
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let (s, m) = (src.display(), mnt.display());
    let log = ns.base.join("log");
    ns.ok(&format!(
        "mount -t fuse.deflatefs {s} {m} -o chunk=16k,nofail,x-a=b,log={}",
        log.display()
    ));
    let top = lifecycle_common::top_mount(Some(ns.pid()), &mnt).unwrap();
    assert_eq!(
        (top.fs_type.as_str(), top.source.as_str()),
        (FS_TYPE, &*s.to_string())
    );
    let data = varied_text(200_000, 3);
    std::fs::write(ns.path(&mnt.join("f")), &data).unwrap();
    ns.ok(&format!("umount {m}"));
    ns.wait_daemons_exit(&ns.base);
    let backing = std::fs::read(ns.path(&src.join("f"))).unwrap();
    assert_eq!(container_chunk_log2(&backing), 14);
    assert_eq!(gunzip_all(&backing).unwrap(), data);
}

#[test]
fn an_unknown_option_is_named_and_nothing_is_mounted_whichever_way_mount_is_called() {
    let ns = Ns::new(FuseConf::Host);
    let src = ns.base.join("src");
    let mnt = ns.base.join("mnt");
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let (s, m) = (src.display(), mnt.display());
    let fstab = ns.base.join("fstab");
    std::fs::write(
        &fstab,
        format!("{s} {m} deflatefs chunk=64k,compresion=9 0 0\n"),
    )
    .unwrap();
    for cmd in [
        format!("mount -t deflatefs {s} {m} -o chunk=64k,compresion=9"),
        format!("mount -t fuse.deflatefs {s} {m} -o chunk=64k,compresion=9"),
        format!("mount -a -T {}", fstab.display()),
        format!("mount --fstab {} {m}", fstab.display()),
    ] {
        let out = ns.sh(&cmd);
        assert!(!out.status.success(), "{cmd} succeeded: {}", describe(&out));
        assert!(
            stderr_of(&out).contains("unknown mount option 'compresion=9'"),
            "{cmd}: the message names the option: {}",
            describe(&out)
        );
        assert!(
            lifecycle_common::mounts_at(Some(ns.pid()), &mnt).is_empty(),
            "{cmd}: nothing may be mounted"
        );
        assert!(lifecycle_common::daemons_under(&ns.base).is_empty());
    }
    // A bad value of a known option is refused too, even with -s (sloppy).
    let out = ns.sh(&format!("mount -s -t deflatefs {s} {m} -o chunk=3k"));
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("chunk=3k"), "{}", describe(&out));
    assert!(lifecycle_common::mounts_at(Some(ns.pid()), &mnt).is_empty());
}

#[test]
fn mount_t_deflatefs_over_a_tmpfs_root_then_umount_leaves_the_tmpfs_and_its_data() {
    let ns = Ns::new(FuseConf::Host);
    let dir = ns.base.join("tmpfs");
    std::fs::create_dir(&dir).unwrap();
    let d = dir.display();
    ns.ok(&format!("mount -t tmpfs -o size=64m lifecycle-tmpfs {d}"));
    std::fs::write(
        ns.path(&dir.join("before.txt")),
        b"written before deflatefs\n",
    )
    .unwrap();
    let tmpfs_id = lifecycle_common::top_mount(Some(ns.pid()), &dir)
        .unwrap()
        .id;

    let log = ns.base.join("log");
    ns.ok(&format!(
        "mount -t deflatefs {d} {d} -o log={}",
        log.display()
    ));
    let data = varied_text(500_000, 9);
    std::fs::write(ns.path(&dir.join("through.txt")), &data).unwrap();
    ns.ok(&format!("umount {d}"));
    ns.wait_daemons_exit(&ns.base);

    let top =
        lifecycle_common::top_mount(Some(ns.pid()), &dir).expect("the tmpfs is still mounted");
    assert_eq!((top.id, top.fs_type.as_str()), (tmpfs_id, "tmpfs"));
    assert_eq!(
        std::fs::read(ns.path(&dir.join("before.txt"))).unwrap(),
        b"written before deflatefs\n"
    );
    let backing = std::fs::read(ns.path(&dir.join("through.txt"))).unwrap();
    assert!(is_container(&backing));
    assert_eq!(gunzip_all(&backing).unwrap(), data);
}

#[test]
fn a_daemon_started_by_mount_logs_to_syslog() {
    let ns = Ns::with_private_dev(FuseConf::Host);
    // The namespace's /dev/log is this test's socket: whatever the daemon sends to syslog
    // arrives here.
    let socket = std::os::unix::net::UnixDatagram::bind(ns.path(Path::new("/dev/log"))).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let dir = ns.base.join("data");
    std::fs::create_dir(&dir).unwrap();
    let d = dir.display();
    ns.ok(&format!("mount -t deflatefs {d} {d}"));
    let mut buf = vec![0u8; 4096];
    let mut seen = Vec::new();
    let found = loop {
        let Ok(n) = socket.recv(&mut buf) else {
            break false;
        };
        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
        let hit = line.contains("deflatefs[") && line.contains(&format!("mounted {d} on {d}"));
        seen.push(line);
        if hit {
            break true;
        }
    };
    assert!(found, "no syslog line about the mount; received: {seen:?}");
    ns.ok(&format!("umount {d}"));
    ns.wait_daemons_exit(&ns.base);
}
