//! Who is asking: the identity of the process behind a request, the mode-bit check ext4 makes
//! for it, and running a creating system call under its filesystem ids.
//!
//! The kernel checks permissions itself on every mount made with `default_permissions` (the
//! default, README "Permissions"). The daemon still decides a few things the kernel leaves to it:
//! who may read the attributes deflatefs serves (digests, info, the engine report), whether an
//! open that races a creation may use the file that won, and who owns what it creates. Those
//! answers come from here.

use super::error::{FsError, FsResult};

/// The identity of the process behind one request, as FUSE reports it (filesystem uid and gid,
/// thread id in the daemon's pid namespace).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// Read permission, as in a mode's permission bits.
pub const MAY_READ: u32 = 4;
/// Write permission.
pub const MAY_WRITE: u32 = 2;
/// Execute (search, for a directory) permission.
pub const MAY_EXEC: u32 = 1;

impl Caller {
    /// The caller's supplementary groups, from /proc/PID/status (FUSE requests carry only the
    /// primary gid; libfuse's `fuse_getgroups` reads the same file). `None` when the process is
    /// gone or the file cannot be read.
    pub fn groups(&self) -> Option<Vec<u32>> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
        line.split_whitespace().map(|g| g.parse().ok()).collect()
    }

    /// Whether the caller is in group `gid` (primary or supplementary); `None` if unknown.
    fn in_group(&self, gid: u32) -> Option<bool> {
        if self.gid == gid {
            return Some(true);
        }
        self.groups().map(|g| g.contains(&gid))
    }

    /// Whether the caller may do `want` (a mix of [`MAY_READ`], [`MAY_WRITE`], [`MAY_EXEC`]) to
    /// an inode with the owner and mode of `st`, by the rules ext4 applies without ACLs
    /// (generic_permission): root may read and write anything, and execute a non-directory only
    /// if some execute bit is set; anyone else gets the owner's, the group's or the others' bits,
    /// whichever class they are in first. When the groups cannot be read, the caller gets only
    /// what both the group and the others may do: never more than ext4 would give.
    pub fn may(&self, st: &libc::stat, want: u32) -> bool {
        let mode = st.st_mode;
        if self.uid == 0 {
            let is_dir = mode & libc::S_IFMT == libc::S_IFDIR;
            return want & MAY_EXEC == 0 || is_dir || mode & 0o111 != 0;
        }
        let bits = if self.uid == st.st_uid {
            (mode >> 6) & 7
        } else {
            match self.in_group(st.st_gid) {
                Some(true) => (mode >> 3) & 7,
                Some(false) => mode & 7,
                None => (mode >> 3) & mode & 7,
            }
        };
        bits & want == want
    }

    /// [`Caller::may`] as a result: `EACCES` when denied.
    pub fn check(&self, st: &libc::stat, want: u32) -> FsResult<()> {
        if self.may(st, want) {
            Ok(())
        } else {
            Err(FsError::new(libc::EACCES))
        }
    }

    /// The permission an open with `flags` needs on an existing file (ext4's may_open): read
    /// for O_RDONLY/O_RDWR, write for O_WRONLY/O_RDWR and for O_TRUNC.
    pub fn open_wants(flags: i32) -> u32 {
        let acc = flags & libc::O_ACCMODE;
        let mut want = 0;
        if acc == libc::O_RDONLY || acc == libc::O_RDWR {
            want |= MAY_READ;
        }
        if acc == libc::O_WRONLY || acc == libc::O_RDWR || flags & libc::O_TRUNC != 0 {
            want |= MAY_WRITE;
        }
        want
    }
}

fn setfsuid(uid: u32) -> u32 {
    // The raw system call: it changes only the calling thread, which is what we want here.
    // SAFETY: setfsuid takes one integer and touches no memory of ours.
    unsafe { libc::syscall(libc::SYS_setfsuid, uid as libc::c_long) as u32 }
}

fn setfsgid(gid: u32) -> u32 {
    // SAFETY: setfsgid takes one integer and touches no memory of ours.
    unsafe { libc::syscall(libc::SYS_setfsgid, gid as libc::c_long) as u32 }
}

/// setgroups(2) for the calling thread only. glibc's wrapper would apply it to every thread of
/// the daemon (its set*id broadcast), which must never happen while other requests run.
fn set_thread_groups(groups: &[libc::gid_t]) -> bool {
    // SAFETY: the kernel reads `groups.len()` gid_t values from `groups`, a live slice of exactly
    // that many; the raw syscall's arguments are the kernel's (int size, const gid_t *list).
    unsafe {
        libc::syscall(
            libc::SYS_setgroups,
            groups.len() as libc::c_long,
            groups.as_ptr(),
        ) == 0
    }
}

fn thread_groups() -> Option<Vec<libc::gid_t>> {
    let groups = nix::unistd::getgroups().ok()?;
    Some(groups.into_iter().map(|g| g.as_raw()).collect())
}

/// The calling thread acting with a caller's filesystem uid, gid and supplementary groups,
/// until dropped (also when a panic unwinds through it). While it lives, files the thread
/// creates belong to the caller (with the setgid-directory rule applied by the backing
/// filesystem itself), and the backing filesystem checks the caller's permission to create them.
///
/// A filesystem uid other than 0 also drops the thread's filesystem capabilities
/// (CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID, ...); switching back to 0 restores them.
pub struct AsCaller {
    saved_uid: u32,
    saved_gid: u32,
    saved_groups: Vec<libc::gid_t>,
}

impl AsCaller {
    /// Switches the calling thread to `caller`'s filesystem ids; for a daemon running as root
    /// (no other can). Returns `None` when the thread already acts as the caller, and `EPERM`
    /// when the switch fails (never a silent half switch).
    pub fn enter(caller: &Caller) -> FsResult<Option<AsCaller>> {
        let saved_uid = setfsuid(u32::MAX);
        let saved_gid = setfsgid(u32::MAX);
        let groups = if caller.uid == 0 {
            None // root's own supplementary groups do not matter: it has CAP_DAC_OVERRIDE
        } else {
            Some(caller.groups().unwrap_or_default())
        };
        if (caller.uid, caller.gid) == (saved_uid, saved_gid) && groups.is_none() {
            return Ok(None);
        }
        let saved_groups = thread_groups().ok_or(FsError::new(libc::EPERM))?;
        let guard = AsCaller {
            saved_uid,
            saved_gid,
            saved_groups,
        };
        if let Some(groups) = groups {
            if !set_thread_groups(&groups) {
                return Err(FsError::with_context(
                    libc::EPERM,
                    "cannot take the caller's groups",
                ));
            }
        }
        setfsgid(caller.gid);
        setfsuid(caller.uid);
        if setfsgid(u32::MAX) != caller.gid || setfsuid(u32::MAX) != caller.uid {
            return Err(FsError::with_context(
                libc::EPERM,
                format!("cannot act as uid {} gid {}", caller.uid, caller.gid),
            ));
        }
        Ok(Some(guard))
    }
}

impl Drop for AsCaller {
    fn drop(&mut self) {
        setfsuid(self.saved_uid);
        setfsgid(self.saved_gid);
        let groups_back = set_thread_groups(&self.saved_groups);
        if !groups_back
            || setfsuid(u32::MAX) != self.saved_uid
            || setfsgid(u32::MAX) != self.saved_gid
        {
            // A request thread left with another user's ids would serve the next request as
            // that user: stopping is the only safe answer (it cannot happen for a root daemon).
            tracing::error!("cannot restore the daemon's own filesystem ids; aborting");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(uid: u32, gid: u32, mode: u32) -> libc::stat {
        // SAFETY: libc::stat is plain integers, for which all-zero bytes are a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        st.st_uid = uid;
        st.st_gid = gid;
        st.st_mode = mode;
        st
    }

    /// A caller whose groups cannot be read (no such process).
    fn caller(uid: u32, gid: u32) -> Caller {
        Caller {
            uid,
            gid,
            pid: u32::MAX,
        }
    }

    #[test]
    fn owner_group_and_others_get_their_own_class_of_bits() {
        let f = stat(1000, 100, libc::S_IFREG | 0o640);
        assert!(caller(1000, 1000).may(&f, MAY_READ | MAY_WRITE));
        assert!(caller(2000, 100).may(&f, MAY_READ));
        assert!(!caller(2000, 100).may(&f, MAY_WRITE));
        assert!(!caller(2000, 2000).may(&f, MAY_READ));
        // The owner class wins even when it grants less than the others get.
        let g = stat(1000, 100, libc::S_IFREG | 0o066);
        assert!(!caller(1000, 1000).may(&g, MAY_READ));
        assert!(caller(3000, 3000).may(&g, MAY_READ));
    }

    #[test]
    fn root_reads_and_writes_anything_but_executes_only_with_an_x_bit() {
        let root = caller(0, 0);
        let f = stat(1000, 1000, libc::S_IFREG);
        assert!(root.may(&f, MAY_READ | MAY_WRITE));
        assert!(!root.may(&f, MAY_EXEC));
        assert!(root.may(&stat(1000, 1000, libc::S_IFREG | 0o001), MAY_EXEC));
        assert!(root.may(&stat(1000, 1000, libc::S_IFDIR), MAY_EXEC));
    }

    #[test]
    fn unknown_groups_never_grant_more_than_ext4() {
        // 0604: a member of group 100 may not read; the others may. With the groups unknown,
        // the caller gets what both classes allow: nothing here.
        let f = stat(1000, 100, libc::S_IFREG | 0o604);
        assert!(!caller(2000, 2000).may(&f, MAY_READ));
        assert!(caller(2000, 2000).may(&stat(1000, 100, libc::S_IFREG | 0o644), MAY_READ));
    }

    #[test]
    fn supplementary_groups_come_from_proc() {
        let me = Caller {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            pid: std::process::id(),
        };
        assert!(me.groups().is_some());
        assert_eq!(caller(1, 1).groups(), None);
    }

    #[test]
    fn open_wants_read_write_and_write_for_truncation() {
        assert_eq!(Caller::open_wants(libc::O_RDONLY), MAY_READ);
        assert_eq!(Caller::open_wants(libc::O_WRONLY), MAY_WRITE);
        assert_eq!(Caller::open_wants(libc::O_RDWR), MAY_READ | MAY_WRITE);
        assert_eq!(
            Caller::open_wants(libc::O_RDONLY | libc::O_TRUNC),
            MAY_READ | MAY_WRITE
        );
    }
}
