//! The options a remount may change while the daemon runs (`mount -o remount,...`): read-only
//! or read-write, and the access-time policy. The kernel applies them to the mount first; the
//! daemon follows what /proc/self/mountinfo then shows for its mount (`watch_remounts` in
//! src/mount.rs) and reports what it follows in the engine report (`mount_mode`, `atime`,
//! `nodiratime`), which the remounting command waits for.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use super::core::DeflateFs;
use crate::options::{AtimeMode, MountOptions};

/// The remountable options in force.
pub struct LiveOptions {
    read_only: AtomicBool,
    atime: AtomicU8,
    nodiratime: AtomicBool,
    /// Mounted read-only: backing files are opened read-only, so the mount can never become
    /// writable without being mounted again.
    started_read_only: bool,
    /// The kernel enforces POSIX ACLs and leaves the umask to the daemon (FUSE_POSIX_ACL and
    /// FUSE_DONT_MASK granted at init).
    posix_acl: AtomicBool,
}

fn atime_code(mode: AtimeMode) -> u8 {
    match mode {
        AtimeMode::Relatime => 0,
        AtimeMode::Strict => 1,
        AtimeMode::Never => 2,
    }
}

fn atime_of(code: u8) -> AtimeMode {
    match code {
        1 => AtimeMode::Strict,
        2 => AtimeMode::Never,
        _ => AtimeMode::Relatime,
    }
}

impl LiveOptions {
    pub fn new(opts: &MountOptions) -> LiveOptions {
        LiveOptions {
            read_only: AtomicBool::new(opts.read_only),
            atime: AtomicU8::new(atime_code(opts.atime)),
            nodiratime: AtomicBool::new(opts.nodiratime),
            started_read_only: opts.read_only,
            posix_acl: AtomicBool::new(false),
        }
    }
}

impl DeflateFs {
    /// Whether the mount is read-only now (mounted so, or remounted so).
    pub fn read_only_now(&self) -> bool {
        self.live.read_only.load(Ordering::SeqCst)
    }

    /// The access-time policy in force.
    pub fn atime_now(&self) -> AtimeMode {
        atime_of(self.live.atime.load(Ordering::Relaxed))
    }

    /// Whether directory listings leave directory access times alone now.
    pub fn nodiratime_now(&self) -> bool {
        self.live.nodiratime.load(Ordering::Relaxed)
    }

    /// Follows a remount of the mount to `read_only`, `atime`, `nodiratime`. Going read-only
    /// writes everything back first, so once the report says `mount_mode=ro` the backing
    /// directory no longer changes (no compaction, no access times either). A mount made
    /// read-only stays so (logged): its backing files were opened read-only.
    pub fn follow_remount(&self, read_only: bool, atime: AtimeMode, nodiratime: bool) {
        self.live.atime.store(atime_code(atime), Ordering::Relaxed);
        self.live.nodiratime.store(nodiratime, Ordering::Relaxed);
        let was = self.read_only_now();
        if read_only && !was {
            self.live.read_only.store(true, Ordering::SeqCst);
            self.flush_all();
            tracing::info!("remounted read-only: everything written back");
        } else if !read_only && was {
            if self.live.started_read_only {
                tracing::warn!(
                    "remount read-write refused: the mount was made read-only, so its backing \
                     files are open read-only; unmount and mount it rw"
                );
            } else {
                self.live.read_only.store(false, Ordering::SeqCst);
                tracing::info!("remounted read-write");
            }
        }
    }

    /// Records that the kernel granted POSIX ACLs (and leaves the umask to the daemon).
    pub fn set_posix_acl(&self, on: bool) {
        self.live.posix_acl.store(on, Ordering::Relaxed);
    }

    /// The mode a new inode in directory `parent` gets from the `mode` and `umask` of the
    /// request, as ext4 decides it: the umask applies unless the directory has a default ACL
    /// (which the backing filesystem then applies itself, masked by `mode`). Without POSIX ACLs
    /// the kernel has already applied the umask.
    pub fn mode_for_new(&self, parent: u64, mode: u32, umask: u32) -> u32 {
        if !self.live.posix_acl.load(Ordering::Relaxed) {
            return mode;
        }
        let has_default_acl = self
            .node(parent)
            .and_then(|dir| self.fd(&dir))
            .and_then(|fd| super::sys::getxattr_len(fd.raw(), c"system.posix_acl_default"))
            .is_ok_and(|n| n > 0);
        if has_default_acl {
            mode
        } else {
            mode & !(umask & 0o777)
        }
    }

    /// The remountable options in force, as lines of the engine report.
    pub fn live_report(&self) -> String {
        format!(
            "mount_mode={}\natime={}\nnodiratime={}\n",
            if !self.read_only_now() {
                "rw"
            } else if self.live.started_read_only {
                "ro-fixed"
            } else {
                "ro"
            },
            self.atime_now().option_name(),
            if self.nodiratime_now() { "on" } else { "off" }
        )
    }
}
