//! Access times (issue 17): reading a file or listing a directory through the mount moves its
//! atime as ext4 does under the same mount options (`relatime` default, `strictatime`,
//! `noatime`, `nodiratime`), never its ctime; the daemon's own reads never move it.
//!
//! Each test runs one shell scenario twice in a private mount namespace (lifecycle_common::Ns):
//! in a directory of the machine's ext4 bind-mounted with the options under test, and on a
//! deflatefs mount made with `mount -t fuse.deflatefs ... -o OPTIONS`, as a user types it. The
//! scenario prints one line per step, `STEP moved` or `STEP kept`; the two runs must print the
//! same lines, and those must be ext4's known answers, so a scenario that observes nothing
//! cannot pass.

mod lifecycle_common;

use lifecycle_common::{FuseConf, Ns};

/// The steps, as shell. `$D` is the directory under test. `stat -c %x` shows nanoseconds, so
/// no step needs to sleep for a second to tell `moved` from `kept`.
const SCENARIO: &str = r#"
set -e
cd "$D"
at() { stat -c %x "$1"; }
ct() { stat -c %z "$1"; }
step() { if [ "$2" = "$3" ]; then echo "$1 kept"; else echo "$1 moved"; fi; }
printf hello > f
a=$(at f); cat f > /dev/null; b=$(at f); step first_read "$a" "$b"
sleep 0.05
a=$(at f); cat f > /dev/null; b=$(at f); step second_read "$a" "$b"
sleep 0.05
printf more >> f; sleep 0.05
a=$(at f); cat f > /dev/null; b=$(at f); step read_after_write "$a" "$b"
sleep 0.05
a=$(ct f); for i in 1 2 3; do cat f > /dev/null; sleep 0.02; done; b=$(ct f); step read_ctime "$a" "$b"
a=$(at f); stat f > /dev/null; head -c0 f; b=$(at f); step stat_only "$a" "$b"
touch -a -d '2001-02-03 04:05:06' f; step touch_a "$(at f)" "2001-02-03 04:05:06.000000000 +0000"
mkdir d; touch d/x; sleep 0.05
a=$(at d); ls d > /dev/null; b=$(at d); step first_list "$a" "$b"
sleep 0.05
a=$(at d); ls d > /dev/null; b=$(at d); step second_list "$a" "$b"
"#;

/// Runs [`SCENARIO`] in a fresh directory of ext4 bind-mounted with `ext4_opts`, and on a
/// deflatefs mount with `deflatefs_opts`; returns both outputs.
fn run_both(ns: &Ns, ext4_opts: &str, deflatefs_opts: &str) -> (String, String) {
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
    assert_eq!(
        ns.ok(&format!("stat -f -c %T {}", e4.display())).trim(),
        "ext2/ext3",
        "the reference must be ext4"
    );
    let on_ext4 = ns.ok(&format!("export TZ=UTC D={}\n{SCENARIO}", e4.display()));
    ns.ok(&format!(
        "mount -t fuse.deflatefs {s} {m} -o {deflatefs_opts}",
        s = src.display(),
        m = mnt.display()
    ));
    // VFS and superblock options together: lazytime belongs to the superblock.
    let shown = ns.ok(&format!("findmnt -no OPTIONS {}", mnt.display()));
    let shows = |o: &str| shown.trim().split(',').any(|s| s == o);
    for want in deflatefs_opts.split(',').filter(|o| *o != "rw") {
        // strictatime is what the kernel shows as neither relatime nor noatime.
        let ok = match want {
            "strictatime" => !shows("relatime") && !shows("noatime"),
            _ => shows(want),
        };
        assert!(ok, "findmnt shows {shown:?}, without {want}");
    }
    let on_mount = ns.ok(&format!("export TZ=UTC D={}\n{SCENARIO}", mnt.display()));
    ns.ok(&format!("umount {}", mnt.display()));
    ns.wait_daemons_exit(&src);
    (on_ext4, on_mount)
}

fn expect(steps: &[(&str, &str)]) -> String {
    steps.iter().map(|(s, r)| format!("{s} {r}\n")).collect()
}

fn check(ext4_opts: &str, deflatefs_opts: &str, known: &str) {
    let ns = Ns::new(FuseConf::Host);
    let (on_ext4, on_mount) = run_both(&ns, ext4_opts, deflatefs_opts);
    assert_eq!(
        on_ext4, known,
        "ext4 ({ext4_opts}) did not give its known answers"
    );
    assert_eq!(
        on_mount, on_ext4,
        "deflatefs -o {deflatefs_opts} differs from ext4 -o {ext4_opts}"
    );
}

#[test]
fn relatime_is_the_default_and_moves_atime_as_ext4() {
    check(
        "relatime",
        "rw",
        &expect(&[
            ("first_read", "moved"),
            ("second_read", "kept"),
            ("read_after_write", "moved"),
            ("read_ctime", "kept"),
            ("stat_only", "kept"),
            ("touch_a", "kept"),
            ("first_list", "moved"),
            ("second_list", "kept"),
        ]),
    );
}

#[test]
fn strictatime_moves_atime_at_every_read_as_ext4() {
    check(
        "strictatime",
        "strictatime",
        &expect(&[
            ("first_read", "moved"),
            ("second_read", "moved"),
            ("read_after_write", "moved"),
            ("read_ctime", "kept"),
            ("stat_only", "kept"),
            ("touch_a", "kept"),
            ("first_list", "moved"),
            ("second_list", "moved"),
        ]),
    );
}

#[test]
fn noatime_never_moves_atime_as_ext4() {
    check(
        "noatime",
        "noatime",
        &expect(&[
            ("first_read", "kept"),
            ("second_read", "kept"),
            ("read_after_write", "kept"),
            ("read_ctime", "kept"),
            ("stat_only", "kept"),
            ("touch_a", "kept"),
            ("first_list", "kept"),
            ("second_list", "kept"),
        ]),
    );
}

#[test]
fn nodiratime_keeps_directory_atime_as_ext4() {
    check(
        "relatime,nodiratime",
        "nodiratime,lazytime",
        &expect(&[
            ("first_read", "moved"),
            ("second_read", "kept"),
            ("read_after_write", "moved"),
            ("read_ctime", "kept"),
            ("stat_only", "kept"),
            ("touch_a", "kept"),
            ("first_list", "kept"),
            ("second_list", "kept"),
        ]),
    );
}

/// The daemon reads a whole file to serve its digest attribute: that read is the daemon's, and
/// ext4 has nothing like it, so the reference is that asking for an attribute moves nothing.
#[test]
fn daemon_reads_never_move_atime() {
    let ns = Ns::new(FuseConf::Host);
    let (src, mnt) = (ns.base.join("src"), ns.base.join("mnt"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    ns.ok(&format!(
        "mount -t fuse.deflatefs {s} {m} -o strictatime",
        s = src.display(),
        m = mnt.display()
    ));
    let out = ns.ok(&format!(
        "set -e; cd {m}; head -c 3000000 /dev/urandom > f; touch -a -d '2001-02-03' f
         a=$(stat -c %x f); getfattr --only-values -n user.deflatefs.sha256 f > /dev/null
         getfattr -d f > /dev/null; stat f > /dev/null; b=$(stat -c %x f)
         [ \"$a\" = \"$b\" ] && echo kept || echo \"moved $a -> $b\"",
        m = mnt.display()
    ));
    ns.ok(&format!("umount {}", mnt.display()));
    ns.wait_daemons_exit(&src);
    assert_eq!(out.trim(), "kept");
}

/// A user's mount goes through fusermount3, which knows `noatime` (not `relatime`,
/// `strictatime` or `nodiratime`, which the daemon follows all the same).
#[test]
fn a_users_mount_follows_the_atime_options_through_fusermount3() {
    const ALICE: u32 = 4242;
    let ns = Ns::new(FuseConf::Host);
    let (src, mnt) = (ns.base.join("src"), ns.base.join("mnt"));
    for d in [&src, &mnt] {
        std::fs::create_dir(d).unwrap();
        std::os::unix::fs::chown(d, Some(ALICE), Some(ALICE)).unwrap();
    }
    let (s, m) = (src.display(), mnt.display());
    for opts in ["noatime", "nodiratime", "strictatime"] {
        ns.ok_as(ALICE, ALICE, &format!("deflatefs mount -o {opts} {s} {m}"));
        let shown = ns.ok(&format!("findmnt -no OPTIONS {m}"));
        let out = ns.ok_as(
            ALICE,
            ALICE,
            &format!("export TZ=UTC D={m}; rm -rf {m}/*\n{SCENARIO}"),
        );
        ns.ok_as(ALICE, ALICE, &format!("fusermount3 -u {m}"));
        ns.wait_daemons_exit(&src);
        let first_read = out.lines().next().unwrap_or("");
        match opts {
            "noatime" => {
                assert!(shown.contains("noatime"), "{shown}");
                assert_eq!(first_read, "first_read kept", "{out}");
            }
            "nodiratime" => {
                assert_eq!(first_read, "first_read moved", "{out}");
                assert!(out.contains("first_list kept"), "{out}");
            }
            _ => assert!(out.contains("second_read moved"), "{out}"),
        }
    }
}
