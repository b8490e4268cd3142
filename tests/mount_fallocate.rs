//! fallocate (issue 17): mode 0 fails with ENOSPC, changing nothing, when the backing
//! filesystem cannot hold the range (even stored uncompressed), and otherwise reserves it, so
//! writing the range later succeeds on a full disk; a non-root caller's fallocate clears setuid
//! and setgid as on ext4 (the kernel's FUSE does that part: it sends the mode change).
//!
//! The reference is ext4 itself: in a private mount namespace (lifecycle_common::Ns), two small
//! ext4 images are loop-mounted, one used directly and one as the backing directory of a
//! deflatefs mount; the same shell steps run on both and their outputs must match each other
//! and ext4's known answers.

mod lifecycle_common;

use lifecycle_common::{FuseConf, Ns};

/// The steps, in directory `$M` on a filesystem whose free space the filler file `$FILL` (on
/// the same disk) takes; one line per step.
const SCENARIO: &str = r#"
cd /
free() { df --output=avail "$M" | tail -1; }
a=$(free)
fallocate -l 200M "$M/big" 2>/dev/null && echo "beyond_free ok" || echo "beyond_free ENOSPC"
# Within 1 MiB: a new file's first block (a container's header) may take 4 KiB.
[ $((a - $(free))) -lt 1024 ] && echo "beyond_free_space_kept yes" || echo "beyond_free_space_kept no"
echo "beyond_free_size $(stat -c %s "$M/big" 2>/dev/null || echo none)"
rm -f "$M/big"
fallocate -l 8M "$M/pre" && echo "within_free ok"
echo "within_free_size $(stat -c %s "$M/pre")"
dd if=/dev/zero of="$FILL" bs=1M 2>/dev/null; sync
dd if=/dev/urandom of="$M/pre" bs=1M count=8 conv=notrunc,fsync 2>/dev/null \
  && echo "write_reserved_on_full_disk ok" || echo "write_reserved_on_full_disk ENOSPC"
rm -f "$FILL"
touch "$M/s"; chown 65534:65534 "$M/s"; chmod 6775 "$M/s"
setpriv --reuid=65534 --regid=65534 --clear-groups fallocate -l 4096 "$M/s"
echo "nonroot_fallocate_mode $(stat -c %a "$M/s")"
touch "$M/t"; chown 65534:0 "$M/t"; chmod 2755 "$M/t"
setpriv --reuid=65534 --regid=65534 --clear-groups fallocate -l 4096 "$M/t"
echo "nonroot_outside_group_mode $(stat -c %a "$M/t")"
chmod 6775 "$M/s"; fallocate -l 8192 "$M/s"
echo "root_fallocate_mode $(stat -c %a "$M/s")"
"#;

#[test]
fn fallocate_reserves_space_gives_enospc_and_clears_setuid_as_ext4() {
    let ns = Ns::new(FuseConf::Host);
    let b = &ns.base;
    let (e4, back, mnt) = (b.join("ext4"), b.join("back"), b.join("mnt"));
    for d in [&e4, &back, &mnt] {
        std::fs::create_dir_all(d).unwrap();
    }
    for (img, dir) in [("e.img", &e4), ("b.img", &back)] {
        ns.ok(&format!(
            "truncate -s 64M {i} && mkfs.ext4 -q -m 0 {i} && mount -o loop {i} {d} && chmod 777 {d}",
            i = b.join(img).display(),
            d = dir.display()
        ));
    }
    let on_ext4 = ns.ok(&format!(
        "M={e} FILL={e}/filler\n{SCENARIO}",
        e = e4.display()
    ));
    ns.ok(&format!("umount {}", e4.display()));
    // Inside the namespace: `back` is a mount there only.
    let src = back.join("src");
    ns.ok(&format!("mkdir {}", src.display()));
    ns.ok(&format!(
        "mount -t fuse.deflatefs {} {} -o allow_other",
        src.display(),
        mnt.display()
    ));
    let on_mount = ns.ok(&format!(
        "M={m} FILL={f}/filler\n{SCENARIO}",
        m = mnt.display(),
        f = back.display()
    ));
    ns.ok(&format!("umount {}", mnt.display()));
    ns.wait_daemons_exit(&src);
    ns.ok(&format!("umount -l {}", back.display()));
    // ext4 keeps what it allocated before running out (the file grows to about the free
    // space, the free space is gone); deflatefs changes nothing. Every other line is the same.
    let ext4_partial = on_ext4
        .lines()
        .find(|l| l.starts_with("beyond_free_size "))
        .unwrap_or("")
        .to_string();
    let size: u64 = ext4_partial
        .trim_start_matches("beyond_free_size ")
        .parse()
        .unwrap_or(0);
    assert!(size > 32 << 20, "ext4 allocated {size} bytes of 200M");
    let on_ext4 = on_ext4
        .replace(&ext4_partial, "beyond_free_size 0")
        .replace("beyond_free_space_kept no", "beyond_free_space_kept yes");
    let known = "beyond_free ENOSPC\nbeyond_free_space_kept yes\nbeyond_free_size 0\n\
                 within_free ok\n\
                 within_free_size 8388608\nwrite_reserved_on_full_disk ok\n\
                 nonroot_fallocate_mode 775\nnonroot_outside_group_mode 755\n\
                 root_fallocate_mode 6775\n";
    assert_eq!(on_ext4, known, "ext4 did not give its known answers");
    assert_eq!(on_mount, on_ext4, "deflatefs differs from ext4");
}
