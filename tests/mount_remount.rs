//! `mount -o remount,...` (issue 17): ro/rw, access-time and exec/dev/suid options change on a
//! live mount as on ext4; options set at start are refused by name and change nothing; after
//! `remount,ro` returns, the backing files hold everything written before.
//!
//! The reference is a real ext4 (a small image, `mount -o loop`) in a private mount namespace
//! (lifecycle_common::Ns): the same shell steps run there and on a deflatefs mount, both
//! remounted with plain `mount -o remount,OPTS MOUNTPOINT` as a user types it, and the outputs
//! are compared with each other and with ext4's known answers.

mod lifecycle_common;

use lifecycle_common::{FuseConf, Ns};

/// The steps, in mount point `$M`: one line per step.
const SCENARIO: &str = r#"
cd /
shows() { findmnt -no OPTIONS "$M" | tr , '\n' | grep -qx "$1" && echo "$2 $1" || echo "$2 no-$1"; }
head -c 3000000 /dev/urandom > "$M/a"
exec 3>>"$M/a"
mount -o remount,ro "$M" 2>/dev/null && echo "ro_while_writing ok" || echo "ro_while_writing refused"
exec 3>&-
mount -o remount,ro "$M" && echo "ro ok"
shows ro after_ro
echo x 2>/dev/null > "$M/b" && echo "write_when_ro ok" || echo "write_when_ro refused"
cat "$M/a" > /dev/null && echo "read_when_ro ok"
mount -o remount,rw "$M" && echo "rw ok"
shows rw after_rw
echo x > "$M/b" && echo "write_when_rw ok"
mount -o remount,noatime "$M" && echo "noatime ok"
shows noatime after_noatime
shows rw after_noatime
mount -o remount,noexec "$M" && echo "noexec ok"
shows noexec after_noexec
"#;

fn expected() -> String {
    [
        "ro_while_writing refused",
        "ro ok",
        "after_ro ro",
        "write_when_ro refused",
        "read_when_ro ok",
        "rw ok",
        "after_rw rw",
        "write_when_rw ok",
        "noatime ok",
        "after_noatime noatime",
        "after_noatime rw",
        "noexec ok",
        "after_noexec noexec",
    ]
    .iter()
    .map(|l| format!("{l}\n"))
    .collect()
}

#[test]
fn remount_ro_rw_noatime_noexec_as_ext4() {
    let ns = Ns::new(FuseConf::Host);
    let base = &ns.base;
    let (img, e4) = (base.join("ext4.img"), base.join("ext4"));
    let (src, mnt) = (base.join("src"), base.join("mnt"));
    for d in [&e4, &src, &mnt] {
        std::fs::create_dir_all(d).unwrap();
    }
    ns.ok(&format!(
        "truncate -s 64M {i} && mkfs.ext4 -q {i} && mount -o loop {i} {e}",
        i = img.display(),
        e = e4.display()
    ));
    let on_ext4 = ns.ok(&format!("M={}\n{SCENARIO}", e4.display()));
    ns.ok(&format!("umount {}", e4.display()));
    assert_eq!(on_ext4, expected(), "ext4 did not give its known answers");

    ns.ok(&format!(
        "mount -t fuse.deflatefs {} {}",
        src.display(),
        mnt.display()
    ));
    let on_mount = ns.ok(&format!("M={}\n{SCENARIO}", mnt.display()));
    ns.ok(&format!("umount {}", mnt.display()));
    ns.wait_daemons_exit(&src);
    assert_eq!(on_mount, on_ext4, "deflatefs differs from ext4");
}

/// After `remount,ro` returns, the backing file holds everything written before, and nothing
/// changes it any more: reading through the mount moves no access time (as on a read-only
/// ext4), and the mount keeps its nosuid,nodev.
#[test]
fn remount_ro_leaves_the_backing_files_complete_and_unchanged() {
    let ns = Ns::new(FuseConf::Host);
    let (src, mnt) = (ns.base.join("src"), ns.base.join("mnt"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    ns.ok(&format!(
        "deflatefs mount -o dirty=64m {} {}",
        src.display(),
        mnt.display()
    ));
    let out = ns.ok(&format!(
        "set -e; head -c 20000000 /dev/urandom > {b}/orig; cp {b}/orig {m}/f
         mount -o remount,ro {m}
         zcat {s}/f | cmp - {b}/orig && echo complete
         before=$(stat -c '%x %y %z %s' {s}/f); cat {m}/f > /dev/null; ls {m} > /dev/null
         after=$(stat -c '%x %y %z %s' {s}/f)
         [ \"$before\" = \"$after\" ] && echo unchanged || echo \"changed: $before -> $after\"
         findmnt -no OPTIONS {m}",
        b = ns.base.display(),
        m = mnt.display(),
        s = src.display()
    ));
    ns.ok(&format!("umount {}", mnt.display()));
    ns.wait_daemons_exit(&src);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("complete"), "{out}");
    assert_eq!(lines.next(), Some("unchanged"), "{out}");
    let shown = lines.next().unwrap_or("");
    for o in ["ro", "nosuid", "nodev"] {
        assert!(shown.split(',').any(|x| x == o), "{o} not in {shown}");
    }
}

/// Options the daemon takes at start are refused by name, and the mount stays as it was.
#[test]
fn remount_refuses_options_set_at_start_and_changes_nothing() {
    let ns = Ns::new(FuseConf::Host);
    let (src, mnt) = (ns.base.join("src"), ns.base.join("mnt"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    ns.ok(&format!(
        "mount -t fuse.deflatefs {} {}",
        src.display(),
        mnt.display()
    ));
    let m = mnt.display();
    let out = ns.sh(&format!("mount -o remount,ro,chunk=64k {m}"));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        err.contains("option 'chunk=64k' cannot change at remount"),
        "{err}"
    );
    let out = ns.sh(&format!("mount -o remount,bogus {m}"));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(err.contains("unknown mount option 'bogus'"), "{err}");
    let shown = ns.ok(&format!("findmnt -no OPTIONS {m}"));
    assert!(shown.starts_with("rw,"), "{shown}");
    ns.ok(&format!("echo x > {m}/f"));
    ns.ok(&format!("umount {m}"));
    ns.wait_daemons_exit(&src);
}
