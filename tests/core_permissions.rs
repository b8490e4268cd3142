//! The filesystem core's own permission decisions, called directly (no mount), for the cases a
//! mount cannot produce on demand: a create that loses the race to another creator, and files
//! created on behalf of another user by a daemon running as root (docs/SECURITY.md).
//!
//! Needs root (the daemon's rights): run as the test suite runs, as root.

use std::ffi::{CString, OsStr};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use deflatefs::engine::{Engine, EngineConfig, SoftwareBackend};
use deflatefs::fs::core::Caller;
use deflatefs::fs::DeflateFs;
use deflatefs::options::MountOptions;

const ROOT_ID: u64 = 1;
const NOBODY: u32 = 65534;

fn require_root() {
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests act as a daemon running as root (euid is {euid})"
    );
}

/// A filesystem core over `dir`, as a root mount's daemon has it.
fn core_over(dir: &Path) -> Arc<DeflateFs> {
    let c = CString::new(dir.to_str().unwrap()).unwrap();
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    assert!(fd >= 0);
    let root: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    let engine = Engine::new(EngineConfig {
        queues: 1,
        queue_depth: 4,
        backend: Arc::new(SoftwareBackend::new()),
    })
    .unwrap();
    Arc::new(DeflateFs::new(root, MountOptions::default(), engine).unwrap())
}

fn nobody() -> Caller {
    // This process's pid: its groups are root's, and nobody is in none of the files' groups.
    Caller {
        uid: NOBODY,
        gid: NOBODY,
        pid: std::process::id(),
    }
}

fn file(dir: &Path, name: &str, mode: u32) {
    let p = dir.join(name);
    std::fs::write(&p, b"root's data\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_create_that_finds_another_users_file_opens_it_only_as_its_mode_allows() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    // Made in the backing directory after the kernel's lookup said "no such file": the kernel
    // sends a create, and takes the answer for a file the caller made (it checks nothing).
    file(dir.path(), "private", 0o600);
    file(dir.path(), "shared", 0o666);
    let fs = core_over(dir.path());
    for flags in [
        libc::O_RDWR,
        libc::O_WRONLY,
        libc::O_RDONLY,
        libc::O_RDONLY | libc::O_TRUNC,
    ] {
        let e = fs
            .create(ROOT_ID, OsStr::new("private"), 0o644, flags, nobody())
            .err()
            .unwrap_or_else(|| panic!("flags {flags:#o}: nobody opened root's 0600 file"));
        assert_eq!(e.errno, libc::EACCES, "flags {flags:#o}");
    }
    let (_, st, fh) = fs
        .create(ROOT_ID, OsStr::new("shared"), 0o644, libc::O_RDWR, nobody())
        .expect("a 0666 file is open to anyone");
    assert_eq!(st.st_uid, 0, "the existing file keeps its owner");
    fs.release(fh).unwrap();
    // Root's own data is untouched.
    assert_eq!(
        std::fs::read(dir.path().join("private")).unwrap(),
        b"root's data\n"
    );
}

#[test]
fn what_a_root_daemon_creates_for_a_user_is_the_users_and_needs_the_users_rights() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let closed = dir.path().join("closed");
    std::fs::create_dir(&closed).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o755)).unwrap();
    let fs = core_over(dir.path());
    let (open_node, _) = fs.lookup(ROOT_ID, OsStr::new("open")).unwrap();
    let (closed_node, _) = fs.lookup(ROOT_ID, OsStr::new("closed")).unwrap();

    let (_, st, fh) = fs
        .create(open_node.id, OsStr::new("f"), 0o640, libc::O_RDWR, nobody())
        .unwrap();
    fs.write(fh, 0, b"nobody's\n").unwrap();
    fs.release(fh).unwrap();
    assert_eq!((st.st_uid, st.st_gid), (NOBODY, NOBODY));
    let (_, st) = fs
        .mkdir(open_node.id, OsStr::new("d"), 0o755, nobody())
        .unwrap();
    assert_eq!((st.st_uid, st.st_gid), (NOBODY, NOBODY));
    let (_, st) = fs
        .symlink(open_node.id, OsStr::new("l"), OsStr::new("f"), nobody())
        .unwrap();
    assert_eq!((st.st_uid, st.st_gid), (NOBODY, NOBODY));
    let (_, st) = fs
        .mknod(
            open_node.id,
            OsStr::new("p"),
            libc::S_IFIFO | 0o600,
            0,
            nobody(),
        )
        .unwrap();
    assert_eq!((st.st_uid, st.st_gid), (NOBODY, NOBODY));
    for name in ["f", "d", "l", "p"] {
        let md = std::fs::symlink_metadata(open.join(name)).unwrap();
        assert_eq!((md.uid(), md.gid()), (NOBODY, NOBODY), "backing {name}");
    }

    // The backing filesystem checks the caller's right to create, not the daemon's.
    let e = fs
        .create(
            closed_node.id,
            OsStr::new("f"),
            0o644,
            libc::O_RDWR,
            nobody(),
        )
        .map(|_| ())
        .expect_err("nobody may not create in root's 0755 directory");
    assert_eq!(e.errno, libc::EACCES);
    let e = fs
        .mkdir(closed_node.id, OsStr::new("d"), 0o755, nobody())
        .map(|_| ())
        .expect_err("nobody may not mkdir in root's 0755 directory");
    assert_eq!(e.errno, libc::EACCES);
    assert_eq!(std::fs::read_dir(&closed).unwrap().count(), 0);

    // The thread is root again afterwards: root's own create works and gives root's file.
    let root = Caller {
        uid: 0,
        gid: 0,
        pid: std::process::id(),
    };
    let (_, st, fh) = fs
        .create(closed_node.id, OsStr::new("r"), 0o600, libc::O_RDWR, root)
        .unwrap();
    fs.release(fh).unwrap();
    assert_eq!((st.st_uid, st.st_gid), (0, 0));
    assert_eq!(
        (unsafe { libc::setfsuid(u32::MAX) }, unsafe {
            libc::setfsgid(u32::MAX)
        }),
        (0, 0),
        "the test thread's filesystem ids are root's again"
    );
}
