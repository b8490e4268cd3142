//! `mount -o remount,OPTIONS MOUNTPOINT`: mount(8) runs mount.fuse3 (or the mount.deflatefs
//! helper), which runs `deflatefs SOURCE MOUNTPOINT -o remount,...` with the mount's current
//! options followed by the new ones. This changes the live mount instead of mounting again.
//!
//! What can change: `ro`/`rw`, the access-time options (`relatime`, `strictatime`, `noatime`,
//! `nodiratime`, `lazytime` and their opposites), `exec`/`noexec`, `dev`/`nodev`,
//! `suid`/`nosuid`. The kernel's FUSE options that findmnt shows (`user_id=`, `group_id=`,
//! `default_permissions`, `allow_other`, ...) are accepted when they are the mount's current
//! ones. Everything else (chunk, level, cache sizes, ...) is refused, naming the option, and
//! nothing changes: those are set when the daemon starts.
//!
//! The kernel applies the change (mount(2) with MS_REMOUNT); the daemon follows it (see
//! `watch_remounts` in mount.rs), and this command returns only once the daemon reports that
//! it did: after `remount,ro`, everything written before has reached the backing files and
//! nothing changes them any more.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::MsFlags;
use nix::unistd::geteuid;

use crate::mount::{shown_state, top_mount_at, MountInfo, FS_TYPE};
use crate::options::{AtimeMode, MountOptions};

/// How long the command waits for the daemon to follow (it writes everything back first).
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(60);

/// Options a remount can change, with their opposites.
const CHANGEABLE: &[&str] = &[
    "ro",
    "rw",
    "relatime",
    "norelatime",
    "atime",
    "strictatime",
    "nostrictatime",
    "noatime",
    "nodiratime",
    "diratime",
    "lazytime",
    "nolazytime",
    "exec",
    "noexec",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "async",
    "defaults",
    "remount",
];

/// The kernel's FUSE options, which findmnt shows and mount(8) passes back at remount.
const KERNEL_FUSE: &[&str] = &[
    "user_id",
    "group_id",
    "rootmode",
    "max_read",
    "blksize",
    "default_permissions",
    "allow_other",
];

/// Whether the option groups ask for a remount.
pub fn is_remount(groups: &[String]) -> bool {
    groups
        .iter()
        .flat_map(|g| g.split(','))
        .any(|o| o == "remount")
}

/// The mount(2) flags a remount asks for: the mount's current per-mount flags, changed by the
/// options in order (the last one wins, as mount(8) applies them).
fn remount_flags(current: &MountInfo, changes: &[&str]) -> MsFlags {
    let (read_only, atime, nodiratime) = shown_state(current);
    let has = |o: &str| current.mount_options.split(',').any(|x| x == o);
    let mut o = MountOptions {
        read_only,
        atime,
        nodiratime,
        lazytime: current.super_options.split(',').any(|x| x == "lazytime"),
        dev: !has("nodev"),
        suid: !has("nosuid"),
        noexec: has("noexec"),
        ..MountOptions::default()
    };
    for c in changes {
        // Only names from CHANGEABLE reach here, all of which parse.
        if let Ok(p) = MountOptions::parse(&[*c]) {
            match *c {
                "ro" | "rw" => o.read_only = p.read_only,
                "relatime" | "norelatime" | "atime" | "strictatime" | "nostrictatime"
                | "noatime" => o.atime = p.atime,
                "nodiratime" | "diratime" => o.nodiratime = p.nodiratime,
                "lazytime" | "nolazytime" => o.lazytime = p.lazytime,
                "exec" | "noexec" => o.noexec = p.noexec,
                "dev" | "nodev" => o.dev = p.dev,
                "suid" | "nosuid" => o.suid = p.suid,
                _ => {}
            }
        }
    }
    let mut flags = MsFlags::MS_REMOUNT;
    for (on, flag) in [
        (o.read_only, MsFlags::MS_RDONLY),
        (!o.dev, MsFlags::MS_NODEV),
        (!o.suid, MsFlags::MS_NOSUID),
        (o.noexec, MsFlags::MS_NOEXEC),
        (o.nodiratime, MsFlags::MS_NODIRATIME),
        (o.lazytime, MsFlags::MS_LAZYTIME),
    ] {
        if on {
            flags |= flag;
        }
    }
    flags |= match o.atime {
        AtimeMode::Relatime => MsFlags::MS_RELATIME,
        AtimeMode::Strict => MsFlags::MS_STRICTATIME,
        AtimeMode::Never => MsFlags::MS_NOATIME,
    };
    flags
}

/// Sorts the options of a remount: the ones to apply, or an error naming the first option that
/// cannot change (or is unknown; skipped with a warning when `sloppy`).
fn changes_of<'a>(
    groups: &'a [String],
    current: &MountInfo,
    sloppy: bool,
) -> Result<Vec<&'a str>, String> {
    let mut changes = Vec::new();
    for opt in groups
        .iter()
        .flat_map(|g| g.split(','))
        .filter(|o| !o.is_empty())
    {
        let name = opt.split_once('=').map_or(opt, |(n, _)| n);
        if CHANGEABLE.contains(&opt) {
            changes.push(opt);
        } else if KERNEL_FUSE.contains(&name) {
            if !current.super_options.split(',').any(|x| x == opt) {
                return Err(format!(
                    "option '{opt}' cannot change at remount (unmount and mount again)"
                ));
            }
        } else {
            match MountOptions::parse(&[opt]) {
                Err(e) if sloppy && e.0.starts_with("unknown mount option") => {
                    eprintln!("deflatefs: ignoring unknown mount option '{opt}' (sloppy mount)")
                }
                Err(e) => return Err(e.0),
                Ok(_) => {
                    return Err(format!(
                        "option '{opt}' cannot change at remount; a remount can change ro/rw, \
                         relatime/strictatime/noatime/nodiratime/lazytime, exec, dev and suid \
                         (unmount and mount again for the others; with an fstab line, give \
                         both SOURCE and MOUNTPOINT so mount(8) does not add its options)"
                    ))
                }
            }
        }
    }
    Ok(changes)
}

/// The engine report of the mount at `mountpoint` (the `user.deflatefs.engine` attribute).
fn engine_report(mountpoint: &Path) -> Option<String> {
    let path = CString::new(mountpoint.as_os_str().as_bytes()).ok()?;
    let mut buf = vec![0u8; 64 << 10];
    // SAFETY: `path` and the attribute name are NUL-terminated; `buf` is live for its length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"user.deflatefs.engine".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Runs the remount of `mountpoint`; returns the exit status (messages on stderr).
pub fn run(mountpoint: &Path, groups: &[String], sloppy: bool) -> i32 {
    match remount(mountpoint, groups, sloppy) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("deflatefs: remount {}: {e}", mountpoint.display());
            1
        }
    }
}

fn remount(mountpoint: &Path, groups: &[String], sloppy: bool) -> Result<(), String> {
    let mountpoint = std::fs::canonicalize(mountpoint).map_err(|e| e.to_string())?;
    let current = top_mount_at(&mountpoint)
        .filter(|m| m.fs_type == FS_TYPE)
        .ok_or_else(|| "not a deflatefs mount point".to_string())?;
    let changes = changes_of(groups, &current, sloppy)?;
    if !geteuid().is_root() {
        return Err(
            "remounting needs root (fusermount3 cannot remount a FUSE mount); \
                    unmount and mount again with the new options"
                .into(),
        );
    }
    let flags = remount_flags(&current, &changes);
    let (was_read_only, _, _) = shown_state(&current);
    let want_read_only = flags.contains(MsFlags::MS_RDONLY);
    if was_read_only && !want_read_only {
        if let Some(report) = engine_report(&mountpoint) {
            if report.lines().any(|l| l == "mount_mode=ro-fixed") {
                return Err(
                    "the mount was made read-only, so its backing files are open \
                            read-only: unmount it and mount it rw"
                        .into(),
                );
            }
        }
    }
    nix::mount::mount(None::<&str>, &mountpoint, None::<&str>, flags, None::<&str>).map_err(
        |errno| {
            let hint = match errno {
                nix::errno::Errno::EBUSY if want_read_only => {
                    " (files are open for writing on it; close them first)"
                }
                _ => "",
            };
            format!("{}{hint}", std::io::Error::from(errno))
        },
    )?;
    // The daemon follows what mountinfo now shows; wait until its report says so.
    let now = top_mount_at(&mountpoint)
        .filter(|m| m.id == current.id)
        .ok_or_else(|| "the mount disappeared during the remount".to_string())?;
    let (read_only, atime, nodiratime) = shown_state(&now);
    let want = [
        format!("mount_mode={}", if read_only { "ro" } else { "rw" }),
        format!("atime={}", atime.option_name()),
        format!("nodiratime={}", if nodiratime { "on" } else { "off" }),
    ];
    let deadline = Instant::now() + FOLLOW_TIMEOUT;
    loop {
        let report = engine_report(&mountpoint).unwrap_or_default();
        if want.iter().all(|w| report.lines().any(|l| l == w)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the kernel remounted, but the daemon did not report {} within {} s",
                want.join(" "),
                FOLLOW_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(mount_options: &str, super_options: &str) -> MountInfo {
        MountInfo {
            id: 1,
            dev: (0, 0),
            mount_point: "/m".into(),
            fs_type: FS_TYPE.into(),
            mount_options: mount_options.into(),
            super_options: super_options.into(),
        }
    }

    #[test]
    fn remount_keeps_current_flags_and_applies_changes_in_order() {
        let cur = info("rw,nosuid,nodev,relatime", "rw,user_id=0,group_id=0");
        let f = remount_flags(&cur, &["ro"]);
        assert!(f.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV));
        assert!(f.contains(MsFlags::MS_RELATIME));
        let f = remount_flags(&cur, &["ro", "rw", "noatime", "suid"]);
        assert!(!f.contains(MsFlags::MS_RDONLY) && !f.contains(MsFlags::MS_NOSUID));
        assert!(f.contains(MsFlags::MS_NOATIME | MsFlags::MS_NODEV));
    }

    #[test]
    fn remount_refuses_options_that_cannot_change_and_accepts_current_kernel_ones() {
        let cur = info("rw,relatime", "rw,user_id=0,group_id=0,default_permissions");
        let ok = vec!["ro,relatime,remount,user_id=0,group_id=0,default_permissions".to_string()];
        assert_eq!(
            changes_of(&ok, &cur, false).unwrap(),
            ["ro", "relatime", "remount"]
        );
        for bad in [
            "remount,chunk=64k",
            "remount,allow_other",
            "remount,user_id=5",
        ] {
            let e = changes_of(&[bad.to_string()], &cur, false).unwrap_err();
            assert!(e.contains("cannot change at remount"), "{bad}: {e}");
        }
        let e = changes_of(&["remount,bogus".to_string()], &cur, false).unwrap_err();
        assert!(e.contains("unknown mount option 'bogus'"), "{e}");
        assert!(changes_of(&["remount,bogus".to_string()], &cur, true).is_ok());
    }
}
