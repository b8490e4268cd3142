//! Permissions on a mount other users can reach (issue 20; docs/SECURITY.md): an unprivileged
//! user is denied exactly what ext4 denies, with the same errno, and what it creates is its own.
//!
//! Every test runs the same list of operations twice as the other user (`nobody`, 65534, no
//! supplementary groups): once in a plain directory on the machine's own filesystem (ext4 here)
//! and once on a deflatefs mount holding the same tree, and compares the errnos operation by
//! operation; the plain run is also checked against ext4's known answers, so a test that denies
//! nothing (or everything) cannot pass by accident. The operations run in a forked child that
//! enters the test's mount namespace and drops to the user with setresuid, so each result is
//! the errno of one system call.
//!
//! The mounts are made the ways users make them, inside a private mount namespace
//! (lifecycle_common::Ns): `mount -t fuse.deflatefs` (mount.fuse3) and `mount -t deflatefs`
//! (the mount(8) helper) as root, and `deflatefs mount` by a user through fusermount3.

mod lifecycle_common;

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use lifecycle_common::{describe, top_mount, FuseConf, Ns, FS_TYPE};

const NOBODY: u32 = 65534;
/// The non-root mount's owner (exists in the namespace's passwd, see lifecycle_common).
const ALICE: u32 = 4242;
/// A group neither user is in, for the setgid-directory rule.
const STAFF: u32 = 4321;

/// One system call of the list.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Call {
    /// open O_RDONLY and read a byte.
    Read,
    /// open O_WRONLY.
    OpenWrite,
    /// open O_RDWR|O_CREAT (no O_EXCL), mode 0644.
    OpenCreate,
    /// open O_WRONLY|O_CREAT|O_EXCL with this mode.
    CreateExcl(u32),
    /// open O_WRONLY|O_CREAT|O_TRUNC with this mode, write `b`, close, chmod to the mode.
    WriteFile(u32),
    /// open O_RDONLY|O_DIRECTORY and read the entries (what `ls` does).
    List,
    Lstat,
    Access(i32),
    Mkdir(u32),
    Rmdir,
    Unlink,
    /// rename(a, b).
    Rename,
    /// link(a, b).
    Link,
    /// symlink(target b, name a).
    Symlink,
    /// mknod(a, S_IFIFO | 0644).
    Fifo,
    Chmod(u32),
    /// chown(a, uid, gid); u32::MAX leaves one unchanged.
    Chown(u32, u32),
    /// utimensat with explicit times.
    SetTimes,
    /// utimensat(NULL): both times to now.
    TouchNow,
    Truncate,
    /// getxattr(a, name b).
    GetXattr,
    /// setxattr(a, name b, "v").
    SetXattr,
    /// removexattr(a, name b).
    RemoveXattr,
    ListXattr,
}

/// One call of a list, on paths relative to a base directory.
#[derive(Debug, Clone)]
struct Spec {
    call: Call,
    /// The path the call is on (relative; "" is the base itself).
    a: &'static str,
    /// A second path (rename, link), or a literal: xattr name, symlink target, file content.
    b: &'static str,
    /// What ext4 answers (checked against the plain directory); `None`: whatever it answers.
    ext4: Option<i32>,
    /// Also checked on a mount without default_permissions: the daemon itself decides it.
    daemon_checked: bool,
    /// Creates something as the other user, or needs what such a call created: a mount without
    /// root cannot do that (EPERM), so a user's mount checks these separately.
    other_creates: bool,
}

impl Spec {
    fn label(&self) -> String {
        if self.b.is_empty() {
            format!("{:?} {}", self.call, self.a)
        } else {
            format!("{:?} {} {}", self.call, self.a, self.b)
        }
    }

    fn b_is_path(&self) -> bool {
        matches!(self.call, Call::Rename | Call::Link)
    }
}

/// A call with its arguments ready for a forked child (no allocation there).
struct Op {
    call: Call,
    a: CString,
    b: CString,
}

/// The calls of `specs` on paths under `base`.
fn at(base: &Path, specs: &[Spec]) -> Vec<Op> {
    let path = |rel: &str| {
        let p = if rel.is_empty() {
            base.to_path_buf()
        } else {
            base.join(rel)
        };
        CString::new(p.as_os_str().as_bytes()).unwrap()
    };
    specs
        .iter()
        .map(|s| Op {
            call: s.call,
            a: path(s.a),
            b: if s.b_is_path() {
                path(s.b)
            } else {
                CString::new(s.b).unwrap()
            },
        })
        .collect()
}

/// Runs one call; 0 or the errno.
///
/// # Safety
/// Only system calls on stack buffers: safe in a child forked from a threaded process.
unsafe fn exec(op: &Op) -> i32 {
    let (a, b) = (op.a.as_ptr(), op.b.as_ptr());
    let err = || *libc::__errno_location();
    let ok = |r: libc::c_int| if r < 0 { err() } else { 0 };
    let mut buf = [0u8; 4096];
    let bufp = buf.as_mut_ptr() as *mut libc::c_void;
    match op.call {
        Call::Read => {
            let fd = libc::open(a, libc::O_RDONLY);
            if fd < 0 {
                return err();
            }
            let r = libc::read(fd, bufp, 1);
            let e = if r < 0 { err() } else { 0 };
            libc::close(fd);
            e
        }
        Call::OpenWrite | Call::OpenCreate | Call::CreateExcl(_) | Call::List => {
            let (flags, mode) = match op.call {
                Call::OpenWrite => (libc::O_WRONLY, 0),
                Call::OpenCreate => (libc::O_RDWR | libc::O_CREAT, 0o644),
                Call::CreateExcl(m) => (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, m),
                _ => (libc::O_RDONLY | libc::O_DIRECTORY, 0),
            };
            let fd = libc::open(a, flags, mode);
            if fd < 0 {
                return err();
            }
            let mut e = 0;
            if op.call == Call::List {
                let r = libc::syscall(libc::SYS_getdents64, fd, bufp, buf.len());
                if r < 0 {
                    e = err();
                }
            }
            libc::close(fd);
            e
        }
        Call::WriteFile(mode) => {
            let fd = libc::open(a, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, mode);
            if fd < 0 {
                return err();
            }
            let bytes = op.b.as_bytes();
            let r = libc::write(fd, bytes.as_ptr() as *const libc::c_void, bytes.len());
            let e = if r < 0 { err() } else { 0 };
            if libc::close(fd) < 0 && e == 0 {
                return err();
            }
            if e != 0 {
                return e;
            }
            ok(libc::chmod(a, mode))
        }
        Call::Lstat => {
            let mut st: libc::stat = std::mem::zeroed();
            ok(libc::lstat(a, &mut st))
        }
        Call::Access(mode) => ok(libc::access(a, mode)),
        Call::Mkdir(mode) => ok(libc::mkdir(a, mode)),
        Call::Rmdir => ok(libc::rmdir(a)),
        Call::Unlink => ok(libc::unlink(a)),
        Call::Rename => ok(libc::rename(a, b)),
        Call::Link => ok(libc::link(a, b)),
        Call::Symlink => ok(libc::symlink(b, a)),
        Call::Fifo => ok(libc::mknod(a, libc::S_IFIFO | 0o644, 0)),
        Call::Chmod(mode) => ok(libc::chmod(a, mode)),
        Call::Chown(uid, gid) => ok(libc::chown(a, uid, gid)),
        Call::SetTimes => {
            let t = libc::timespec {
                tv_sec: 1_000_000,
                tv_nsec: 0,
            };
            ok(libc::utimensat(libc::AT_FDCWD, a, [t, t].as_ptr(), 0))
        }
        Call::TouchNow => ok(libc::utimensat(libc::AT_FDCWD, a, std::ptr::null(), 0)),
        Call::Truncate => ok(libc::truncate(a, 0)),
        Call::GetXattr => {
            let r = libc::getxattr(a, b, bufp, buf.len());
            if r < 0 {
                err()
            } else {
                0
            }
        }
        Call::SetXattr => ok(libc::setxattr(
            a,
            b,
            c"v".as_ptr() as *const libc::c_void,
            1,
            0,
        )),
        Call::RemoveXattr => ok(libc::removexattr(a, b)),
        Call::ListXattr => {
            let r = libc::listxattr(a, bufp as *mut libc::c_char, buf.len());
            if r < 0 {
                err()
            } else {
                0
            }
        }
    }
}

/// Who runs the calls, and in which mount namespace.
struct As<'a> {
    uid: u32,
    gid: u32,
    ns: &'a Ns,
}

/// Runs `ops` in a child forked into `who.ns` as `who` (no supplementary groups, umask 022) and
/// returns each call's errno (0 for success).
fn run_ops(who: &As, ops: &[Op]) -> Vec<i32> {
    let ns_file = std::fs::File::open(format!("/proc/{}/ns/mnt", who.ns.pid())).unwrap();
    let ns_fd = ns_file.as_raw_fd();
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (uid, gid) = (who.uid, who.gid);
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // The child: system calls only, then _exit.
        unsafe {
            libc::close(fds[0]);
            if libc::setns(ns_fd, libc::CLONE_NEWNS) != 0 {
                libc::_exit(101);
            }
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(gid, gid, gid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                libc::_exit(102);
            }
            libc::umask(0o022);
            for op in ops {
                let e: i32 = exec(op);
                let bytes = e.to_ne_bytes();
                if libc::write(fds[1], bytes.as_ptr() as *const libc::c_void, 4) != 4 {
                    libc::_exit(103);
                }
            }
            libc::_exit(0);
        }
    }
    unsafe { libc::close(fds[1]) };
    let mut out = Vec::new();
    let mut reader = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
    std::io::Read::read_to_end(&mut reader, &mut out).unwrap();
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child running the calls as {uid}:{gid} failed (status {status:#x})"
    );
    let results: Vec<i32> = out
        .chunks(4)
        .map(|c| i32::from_ne_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(results.len(), ops.len());
    results
}

fn errno_name(e: i32) -> String {
    match e {
        0 => "ok".into(),
        libc::EACCES => "EACCES".into(),
        libc::EPERM => "EPERM".into(),
        libc::ENOENT => "ENOENT".into(),
        libc::ENODATA => "ENODATA".into(),
        libc::EEXIST => "EEXIST".into(),
        e => format!("errno {e}"),
    }
}

/// A list of [`Spec`]s being built.
#[derive(Default)]
struct List(Vec<Spec>);

impl List {
    /// Adds a call expecting `ext4` and returns it for its flags.
    fn add(
        &mut self,
        call: Call,
        a: &'static str,
        b: &'static str,
        ext4: Option<i32>,
    ) -> &mut Spec {
        self.0.push(Spec {
            call,
            a,
            b,
            ext4,
            daemon_checked: false,
            other_creates: false,
        });
        self.0.last_mut().unwrap()
    }

    /// A setup call (it must succeed).
    fn setup(&mut self, call: Call, a: &'static str, b: &'static str) {
        self.add(call, a, b, Some(0));
    }
}

/// Names the daemon serves: digests, info, and the shatag pair (ordinary names without `-o
/// shatag`, but `user.*` data of the file all the same).
const SERVED: [&str; 4] = [
    "user.deflatefs.sha256",
    "user.deflatefs.blake3",
    "user.deflatefs.info",
    "user.shatag.sha256",
];

/// The tree both runs start from, made by its owner: `secret` (0600), `d700/inner`, `d755/file`
/// and `d755/sub/`, a sticky world-writable `sticky/` holding the owner's `owned` (0666),
/// `public` (0644), `open666` (0666), and for root's mounts a setgid directory `sg/` of group
/// STAFF. In the plain directory the served names are set as ordinary attributes, so a reader
/// gets a value there as on the mount.
fn setup_specs(plain: bool, root_owner: bool) -> Vec<Spec> {
    let mut l = List::default();
    l.setup(Call::WriteFile(0o600), "secret", "secret");
    l.setup(Call::Mkdir(0o755), "d700", "");
    l.setup(Call::WriteFile(0o644), "d700/inner", "inner");
    l.setup(Call::Chmod(0o700), "d700", "");
    l.setup(Call::Mkdir(0o755), "d755", "");
    l.setup(Call::WriteFile(0o644), "d755/file", "file");
    l.setup(Call::Mkdir(0o755), "d755/sub", "");
    l.setup(Call::Mkdir(0o755), "sticky", "");
    l.setup(Call::Chmod(0o1777), "sticky", "");
    l.setup(Call::WriteFile(0o666), "sticky/owned", "owned");
    l.setup(Call::WriteFile(0o644), "public", "public");
    l.setup(Call::WriteFile(0o666), "open666", "open");
    for f in ["secret", "public"] {
        l.setup(Call::SetXattr, f, "user.plain");
        if plain {
            for name in SERVED {
                l.setup(Call::SetXattr, f, name);
            }
        }
    }
    if plain {
        l.setup(Call::SetXattr, "d700", "user.deflatefs.sha256");
    }
    if root_owner {
        l.setup(Call::Mkdir(0o755), "sg", "");
        l.setup(Call::Chown(u32::MAX, STAFF), "sg", "");
        l.setup(Call::Chmod(0o2777), "sg", "");
    }
    l.0
}

/// What the other user tries, with ext4's answers.
fn other_user_specs(root_owner: bool) -> Vec<Spec> {
    use libc::{EACCES, EPERM};
    let mut l = List::default();
    // Reading and listing what the modes forbid.
    l.add(Call::Read, "secret", "", Some(EACCES));
    l.add(Call::OpenWrite, "secret", "", Some(EACCES));
    l.add(Call::Access(libc::R_OK), "secret", "", Some(EACCES));
    l.add(Call::List, "d700", "", Some(EACCES));
    l.add(Call::Lstat, "d700/inner", "", Some(EACCES));
    l.add(Call::Read, "d700/inner", "", Some(EACCES));
    l.add(Call::Read, "public", "", Some(0));
    l.add(Call::OpenWrite, "public", "", Some(EACCES));
    l.add(Call::OpenCreate, "d755/file", "", Some(EACCES));
    // Creating in someone else's directory: the daemon creates as the caller.
    for (call, a, b) in [
        (Call::CreateExcl(0o644), "d755/new", ""),
        (Call::Mkdir(0o755), "d755/newdir", ""),
        (Call::Symlink, "d755/lnk", "target"),
        (Call::Fifo, "d755/fifo", ""),
    ] {
        l.add(call, a, b, Some(EACCES)).daemon_checked = true;
    }
    // EPERM from fs.protected_hardlinks (EACCES from the directory's mode without it).
    l.add(Call::Link, "public", "d755/hard", None);
    // Digests, info and other user.* attributes are data: only readers get them.
    let xattrs = [
        (Call::GetXattr, "secret", SERVED[0], EACCES),
        (Call::GetXattr, "secret", SERVED[1], EACCES),
        (Call::GetXattr, "secret", SERVED[2], EACCES),
        (Call::GetXattr, "secret", SERVED[3], EACCES),
        (Call::GetXattr, "secret", "user.plain", EACCES),
        (Call::GetXattr, "d700", "user.deflatefs.sha256", EACCES),
        (Call::GetXattr, "public", "user.deflatefs.sha256", 0),
        (Call::GetXattr, "public", "user.plain", 0),
        (Call::ListXattr, "secret", "", 0),
        (Call::SetXattr, "public", "user.new", EACCES),
        (Call::RemoveXattr, "public", "user.plain", EACCES),
        (Call::SetXattr, "sticky", "user.new", EPERM),
    ];
    for (call, a, b, e) in xattrs {
        l.add(call, a, b, Some(e)).daemon_checked = true;
    }
    // Attributes of what belongs to someone else.
    l.add(Call::Chmod(0o666), "public", "", Some(EPERM));
    l.add(Call::Chown(NOBODY, NOBODY), "public", "", Some(EPERM));
    l.add(Call::SetTimes, "public", "", Some(EPERM));
    l.add(Call::TouchNow, "public", "", Some(EACCES));
    l.add(Call::Truncate, "public", "", Some(EACCES));
    l.add(Call::TouchNow, "open666", "", Some(0));
    l.add(Call::SetTimes, "open666", "", Some(EPERM));
    l.add(Call::Truncate, "open666", "", Some(0));
    // Names in someone else's directory, and the sticky bit.
    l.add(Call::Unlink, "d755/file", "", Some(EACCES));
    l.add(Call::Rename, "d755/file", "d755/file2", Some(EACCES));
    l.add(Call::Rename, "d755/file", "sticky/stolen", Some(EACCES));
    l.add(Call::Rmdir, "d755/sub", "", Some(EACCES));
    l.add(Call::Unlink, "sticky/owned", "", Some(EPERM));
    l.add(Call::Rename, "sticky/owned", "sticky/mine2", Some(EPERM));
    // What the user creates is theirs, to change and remove, but not to give away.
    let mut mine = vec![
        (Call::CreateExcl(0o644), "sticky/mine", "", 0),
        (Call::Mkdir(0o755), "sticky/mydir", "", 0),
        (Call::Symlink, "sticky/mylink", "target", 0),
        (Call::Fifo, "sticky/myfifo", "", 0),
        (Call::CreateExcl(0o600), "sticky/kept", "", 0),
        (Call::Chmod(0o640), "sticky/mine", "", 0),
        (Call::Chown(0, u32::MAX), "sticky/mine", "", EPERM),
        (Call::Chown(u32::MAX, 0), "sticky/mine", "", EPERM),
        (Call::Unlink, "sticky/mine", "", 0),
        (Call::Rmdir, "sticky/mydir", "", 0),
    ];
    if root_owner {
        // The setgid directory rule: the directory's group, a setgid bit on directories, and
        // no setgid bit on a file of a group its creator is not in.
        mine.push((Call::CreateExcl(0o2755), "sg/f", "", 0));
        mine.push((Call::Mkdir(0o755), "sg/d", "", 0));
        // chmod g+s of one's own file of a group one is not in: the bit is silently dropped.
        mine.push((Call::CreateExcl(0o755), "sg/g", "", 0));
        mine.push((Call::Chmod(0o2755), "sg/g", "", 0));
    }
    for (call, a, b, e) in mine {
        let s = l.add(call, a, b, Some(e));
        s.other_creates = true;
        // Without default_permissions the daemon still creates as the caller; changing
        // attributes is then left to the daemon's own rights (README, Permissions).
        s.daemon_checked = matches!(
            call,
            Call::CreateExcl(_) | Call::Mkdir(_) | Call::Symlink | Call::Fifo
        );
    }
    l.0
}

/// Runs `specs` as `who` under the plain directory and under the mount and compares them with
/// each other and the plain run with ext4's answers; returns the differences as lines.
fn compare(who: &As, plain: &Path, mnt: &Path, specs: &[Spec]) -> Vec<String> {
    let on_plain = run_ops(who, &at(plain, specs));
    let on_mount = run_ops(who, &at(mnt, specs));
    let mut bad = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        if let Some(want) = s.ext4 {
            if on_plain[i] != want {
                bad.push(format!(
                    "plain directory: {} gave {}, ext4 gives {}",
                    s.label(),
                    errno_name(on_plain[i]),
                    errno_name(want)
                ));
            }
        }
        if on_mount[i] != on_plain[i] {
            bad.push(format!(
                "mount: {} gave {}, the plain directory {}",
                s.label(),
                errno_name(on_mount[i]),
                errno_name(on_plain[i])
            ));
        }
    }
    bad
}

/// Runs setup `specs` as `who` under `base`; every call must succeed.
fn set_up(who: &As, base: &Path, specs: &[Spec]) {
    let r = run_ops(who, &at(base, specs));
    for (s, e) in specs.iter().zip(&r) {
        assert_eq!(
            *e,
            0,
            "setup under {}: {} gave {}",
            base.display(),
            s.label(),
            errno_name(*e)
        );
    }
}

/// Owner, group, type and mode of what the other user created (and, when the kernel checks
/// permissions, chmodded), the same on the mount as in the plain directory (for root's mounts).
fn compare_created(ns: &Ns, plain: &Path, mnt: &Path, kernel_checks: bool) -> Vec<String> {
    let mut bad = Vec::new();
    let mut paths = vec![
        "sticky/kept",
        "sticky/mylink",
        "sticky/myfifo",
        "sg/f",
        "sg/d",
    ];
    if kernel_checks {
        paths.push("sg/g");
    }
    for rel in paths {
        let st = |base: &Path| -> (u32, u32, u32) {
            let p = ns.path(&base.join(rel));
            let c = CString::new(p.as_os_str().as_bytes()).unwrap();
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            assert_eq!(
                unsafe { libc::lstat(c.as_ptr(), &mut st) },
                0,
                "{}",
                p.display()
            );
            (st.st_uid, st.st_gid, st.st_mode)
        };
        let (want, got) = (st(plain), st(mnt));
        if want != got {
            bad.push(format!(
                "{rel}: uid {} gid {} mode {:o} on the mount, uid {} gid {} mode {:o} in the plain \
                 directory",
                got.0, got.1, got.2, want.0, want.1, want.2
            ));
        }
    }
    // ext4's answers, so that the comparison is not vacuous.
    let plain_st = |rel: &str| {
        let md = std::fs::symlink_metadata(ns.path(&plain.join(rel))).unwrap();
        use std::os::unix::fs::MetadataExt;
        (md.uid(), md.gid(), md.mode() & 0o7777)
    };
    assert_eq!(plain_st("sticky/kept"), (NOBODY, NOBODY, 0o600));
    assert_eq!(
        plain_st("sg/f"),
        (NOBODY, STAFF, 0o755),
        "setgid bit cleared"
    );
    assert_eq!(plain_st("sg/d"), (NOBODY, STAFF, 0o2755), "setgid bit kept");
    assert_eq!(
        plain_st("sg/g"),
        (NOBODY, STAFF, 0o755),
        "chmod g+s dropped"
    );
    bad
}

/// The engine report on the root: the owner reads it, the other user gets EACCES. Returns the
/// differences as lines.
fn check_engine_report(ns: &Ns, owner: u32, mnt: &Path) -> Vec<String> {
    let mut l = List::default();
    l.add(Call::GetXattr, "", "user.deflatefs.engine", None);
    let ops = at(mnt, &l.0);
    let mut bad = Vec::new();
    for (uid, want) in [(owner, 0), (NOBODY, libc::EACCES)] {
        let got = run_ops(&As { uid, gid: uid, ns }, &ops)[0];
        if got != want {
            bad.push(format!(
                "mount: uid {uid} reading user.deflatefs.engine gave {}, not {}",
                errno_name(got),
                errno_name(want)
            ));
        }
    }
    bad
}

/// `src/`, `mnt/` and `plain/` in the namespace's directory, owned by `owner`.
fn dirs(ns: &Ns, owner: u32) -> (PathBuf, PathBuf, PathBuf) {
    let [src, mnt, plain] = ["src", "mnt", "plain"].map(|d| ns.base.join(d));
    for d in [&src, &mnt, &plain] {
        std::fs::create_dir(d).unwrap();
        std::os::unix::fs::chown(d, Some(owner), Some(owner)).unwrap();
    }
    (src, mnt, plain)
}

/// The superblock options of the deflatefs mount at `mnt` in the namespace.
fn mount_options(ns: &Ns, mnt: &Path) -> String {
    let top = top_mount(Some(ns.pid()), mnt).expect("mounted");
    assert_eq!(top.fs_type, FS_TYPE);
    top.super_options
}

fn has_option(options: &str, name: &str) -> bool {
    options.split(',').any(|o| o == name)
}

/// Root mounts SRC on MNT with `mount_cmd` (a format with {s}, {m}, {o}), sets both trees up
/// as root, and runs the comparison; `kernel_checks` is false for no_default_permissions.
fn root_mount_case(mount_cmd: &str, opts: &str, kernel_checks: bool) {
    let ns = Ns::new(FuseConf::Host);
    let (src, mnt, plain) = dirs(&ns, 0);
    let log = ns.base.join("log");
    let cmd = mount_cmd
        .replace("{s}", &src.display().to_string())
        .replace("{m}", &mnt.display().to_string())
        .replace("{o}", &format!("{opts},log={}", log.display()));
    let out = ns.sh(&cmd);
    assert!(out.status.success(), "{cmd}: {}", describe(&out));
    // Every difference is collected before failing, so one run shows all of them.
    let mut bad = Vec::new();
    let options = mount_options(&ns, &mnt);
    if !has_option(&options, "allow_other")
        || has_option(&options, "default_permissions") != kernel_checks
    {
        bad.push(format!("/proc/mounts options of `{cmd}`: {options}"));
    }
    if !kernel_checks
        && !String::from_utf8_lossy(&out.stderr).contains("warning: no_default_permissions")
    {
        bad.push(format!("no warning from `{cmd}`: {}", describe(&out)));
    }
    let root = As {
        uid: 0,
        gid: 0,
        ns: &ns,
    };
    set_up(&root, &plain, &setup_specs(true, true));
    set_up(&root, &mnt, &setup_specs(false, true));
    let nobody = As {
        uid: NOBODY,
        gid: NOBODY,
        ns: &ns,
    };
    let specs: Vec<Spec> = other_user_specs(true)
        .into_iter()
        .filter(|s| kernel_checks || s.daemon_checked)
        .collect();
    bad.extend(compare(&nobody, &plain, &mnt, &specs));
    bad.extend(compare_created(&ns, &plain, &mnt, kernel_checks));
    bad.extend(check_engine_report(&ns, 0, &mnt));
    let log_text = std::fs::read_to_string(ns.path(&log)).unwrap_or_default();
    assert!(
        bad.is_empty(),
        "`{cmd}`: {} of {} checks differ from ext4:\n{}\nlog:\n{log_text}",
        bad.len(),
        specs.len(),
        bad.join("\n")
    );
    ns.ok(&format!("umount {}", mnt.display()));
    ns.wait_daemons_exit(&ns.base);
}

#[test]
fn mount_t_fuse_deflatefs_with_allow_other_alone_denies_what_ext4_denies() {
    root_mount_case(
        "mount -t fuse.deflatefs {s} {m} -o {o}",
        "allow_other",
        true,
    );
}

#[test]
fn mount_t_deflatefs_with_allow_other_alone_denies_what_ext4_denies() {
    root_mount_case("mount -t deflatefs -o {o} {s} {m}", "allow_other", true);
}

#[test]
fn allow_other_with_default_permissions_denies_what_ext4_denies() {
    root_mount_case(
        "mount -t deflatefs -o {o} {s} {m}",
        "allow_other,default_permissions",
        true,
    );
}

/// The explicit opt-out: the kernel checks nothing, but the daemon still keeps the digests and
/// other user.* attributes to readers, creates nothing where the caller may not, and gives what
/// it creates to the caller.
#[test]
fn without_default_permissions_the_daemon_still_guards_attributes_and_creation() {
    root_mount_case(
        "mount -t deflatefs -o {o} {s} {m}",
        "allow_other,no_default_permissions",
        false,
    );
}

/// A user's own mount through fusermount3, with allow_other (user_allow_other in fuse.conf).
fn user_mount_case(opts: &str) {
    let ns = Ns::new(FuseConf::Content("user_allow_other\n"));
    let (src, mnt, plain) = dirs(&ns, ALICE);
    let logdir = ns.base.join("logs");
    std::fs::create_dir(&logdir).unwrap();
    std::os::unix::fs::chown(&logdir, Some(ALICE), Some(ALICE)).unwrap();
    ns.ok_as(
        ALICE,
        ALICE,
        &format!(
            "deflatefs mount -o {opts},log={}/log {} {}",
            logdir.display(),
            src.display(),
            mnt.display()
        ),
    );
    let options = mount_options(&ns, &mnt);
    assert!(options.contains(&format!("user_id={ALICE}")), "{options}");
    let alice = As {
        uid: ALICE,
        gid: ALICE,
        ns: &ns,
    };
    set_up(&alice, &plain, &setup_specs(true, false));
    set_up(&alice, &mnt, &setup_specs(false, false));
    let nobody = As {
        uid: NOBODY,
        gid: NOBODY,
        ns: &ns,
    };
    let specs = other_user_specs(false);
    let compared: Vec<Spec> = specs.iter().filter(|s| !s.other_creates).cloned().collect();
    let mut bad = compare(&nobody, &plain, &mnt, &compared);
    bad.extend(check_engine_report(&ns, ALICE, &mnt));
    if !has_option(&options, "allow_other") || !has_option(&options, "default_permissions") {
        bad.push(format!("/proc/mounts options: {options}"));
    }
    let log_text = std::fs::read_to_string(ns.path(&logdir.join("log"))).unwrap_or_default();
    assert!(
        bad.is_empty(),
        "{opts}: {} of {} checks differ from ext4:\n{}\nlog:\n{log_text}",
        bad.len(),
        compared.len(),
        bad.join("\n")
    );
    // A daemon without root cannot make files for another user: it refuses, and leaves nothing.
    let creates: Vec<Spec> = specs
        .into_iter()
        .filter(|s| {
            s.other_creates
                && matches!(
                    s.call,
                    Call::CreateExcl(_) | Call::Mkdir(_) | Call::Symlink | Call::Fifo
                )
        })
        .collect();
    let r = run_ops(&nobody, &at(&mnt, &creates));
    assert!(
        r.iter().all(|e| *e == libc::EPERM),
        "creating as another user on a user's mount: {:?}",
        r.iter().map(|e| errno_name(*e)).collect::<Vec<_>>()
    );
    let left: Vec<String> = std::fs::read_dir(ns.path(&src.join("sticky")))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        ["owned"],
        "nothing left behind in the backing directory"
    );
    check_engine_report(&ns, ALICE, &mnt);
    ns.ok_as(ALICE, ALICE, &format!("fusermount3 -u {}", mnt.display()));
    ns.wait_daemons_exit(&ns.base);
}

#[test]
fn a_users_own_mount_with_allow_other_denies_what_ext4_denies() {
    user_mount_case("allow_other");
}

#[test]
fn a_users_own_mount_with_allow_other_and_default_permissions_denies_what_ext4_denies() {
    user_mount_case("allow_other,default_permissions");
}
