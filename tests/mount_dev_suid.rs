//! `dev` and `suid` (issue 17): a mount by root honours device nodes and setuid bits when asked
//! to, as ext4 does, and keeps `nodev,nosuid` otherwise.
//!
//! Each test runs the same steps in a private mount namespace (lifecycle_common::Ns) on a
//! directory of the machine's ext4 bind-mounted with the options under test, and on a deflatefs
//! mount made with `mount -t fuse.deflatefs` (mount.fuse3) or `deflatefs mount` with the same
//! options, and compares what a user sees: whether writing to a /dev/null node made on the
//! mount works, and the effective uid of a setuid-root copy of `id` run by `nobody` (so the
//! deflatefs mounts are `allow_other`).

mod lifecycle_common;

use lifecycle_common::{FuseConf, Ns};

/// The steps, as shell, in directory `$D`: one line per step.
const SCENARIO: &str = r#"
cd "$D"
mknod null c 1 3 && chmod 666 null
if echo x > null 2>/dev/null; then echo "device_node opens"; else echo "device_node refused"; fi
cp /usr/bin/id id && chown root:root id && chmod 4755 id
echo "setuid_euid $(setpriv --reuid=65534 --regid=65534 --clear-groups ./id -u)"
"#;

/// Runs [`SCENARIO`] on ext4 bind-mounted with `ext4_opts` and on deflatefs mounted by `mount`
/// (a shell command with `{s}` and `{m}` for source and mount point); returns both outputs and
/// the deflatefs mount's options as findmnt shows them.
fn run_both(ext4_opts: &str, mount: &str) -> (String, String, String) {
    let ns = Ns::new(FuseConf::Host);
    let base = &ns.base;
    let e4 = base.join("ext4");
    let (src, mnt) = (base.join("src"), base.join("mnt"));
    for d in [&e4, &src, &mnt] {
        std::fs::create_dir_all(d).unwrap();
    }
    ns.ok(&format!(
        "mount --bind {e} {e} && mount -o remount,bind,{ext4_opts} {e}",
        e = e4.display()
    ));
    let on_ext4 = ns.ok(&format!("D={}\n{SCENARIO}", e4.display()));
    ns.ok(&mount
        .replace("{s}", &src.display().to_string())
        .replace("{m}", &mnt.display().to_string()));
    let shown = ns.ok(&format!("findmnt -no OPTIONS {}", mnt.display()));
    let on_mount = ns.ok(&format!("D={}\n{SCENARIO}", mnt.display()));
    ns.ok(&format!("umount {}", mnt.display()));
    ns.wait_daemons_exit(&src);
    (on_ext4, on_mount, shown.trim().to_string())
}

fn has(options: &str, o: &str) -> bool {
    options.split(',').any(|x| x == o)
}

#[test]
fn dev_suid_mount_by_root_opens_device_nodes_and_runs_setuid_as_ext4() {
    let (on_ext4, on_mount, shown) = run_both(
        "dev,suid",
        "mount -t fuse.deflatefs {s} {m} -o dev,suid,allow_other",
    );
    assert_eq!(on_ext4, "device_node opens\nsetuid_euid 0\n", "ext4");
    assert_eq!(on_mount, on_ext4, "deflatefs -o dev,suid differs from ext4");
    assert!(!has(&shown, "nodev") && !has(&shown, "nosuid"), "{shown}");
}

#[test]
fn nodev_nosuid_mount_refuses_device_nodes_and_setuid_as_ext4() {
    let (on_ext4, on_mount, shown) = run_both(
        "nodev,nosuid",
        "mount -t fuse.deflatefs {s} {m} -o nodev,nosuid,allow_other",
    );
    assert_eq!(on_ext4, "device_node refused\nsetuid_euid 65534\n", "ext4");
    assert_eq!(
        on_mount, on_ext4,
        "deflatefs -o nodev,nosuid differs from ext4"
    );
    assert!(has(&shown, "nodev") && has(&shown, "nosuid"), "{shown}");
}

#[test]
fn deflatefs_mount_without_dev_suid_stays_nodev_nosuid() {
    let (on_ext4, on_mount, shown) =
        run_both("nodev,nosuid", "deflatefs mount -o allow_other {s} {m}");
    assert_eq!(
        on_mount, on_ext4,
        "deflatefs mount differs from ext4 nodev,nosuid"
    );
    assert!(has(&shown, "nodev") && has(&shown, "nosuid"), "{shown}");
}

/// mount.fuse3 adds `dev,suid` for root unless `nodev`/`nosuid` are given, as mount(8) mounts
/// ext4 by default.
#[test]
fn mount_t_fuse_deflatefs_by_root_defaults_to_dev_suid_as_ext4() {
    let (on_ext4, on_mount, shown) =
        run_both("dev,suid", "mount -t fuse.deflatefs {s} {m} -o allow_other");
    assert_eq!(on_ext4, "device_node opens\nsetuid_euid 0\n", "ext4");
    assert_eq!(
        on_mount, on_ext4,
        "mount -t fuse.deflatefs differs from ext4"
    );
    assert!(!has(&shown, "nodev") && !has(&shown, "nosuid"), "{shown}");
}
