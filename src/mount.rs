//! Mounting: checks, the readiness pipe of the daemon, mount(2) with type `fuse.deflatefs`, the
//! FUSE session, and a clean unmount on SIGTERM/SIGINT.
//!
//! We call mount(2) ourselves and hand the /dev/fuse descriptor to `fuser::Session::from_fd`, so
//! fuser 0.18.0 never unmounts anything: its own unmount-on-drop checks "still mounted" the wrong
//! way round and, after an external `umount`, would unmount whatever lies underneath the mount
//! point (docs/PLATFORM.md). Our own unmount (on a signal) first checks, by mount id, that
//! the mount it is about to remove is still ours.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{umount2, MntFlags, MsFlags};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::stat::{umask, Mode};
use nix::unistd::{
    access, dup2_stderr, dup2_stdin, dup2_stdout, geteuid, getgid, getuid, pipe2, setsid,
    AccessFlags,
};

use crate::engine::{Engine, EngineConfig, EngineOptions};
use crate::fs::fuse::FuseAdapter;
use crate::fs::sys;
use crate::fs::DeflateFs;
use crate::logging::{self, LogTarget};
use crate::options::{AtimeMode, MountOptions};

/// The filesystem type shown in /proc/mounts and by findmnt.
pub const FS_TYPE: &str = "fuse.deflatefs";

/// What `deflatefs mount` was asked to do.
#[derive(Debug, Clone)]
pub struct MountRequest {
    pub source: PathBuf,
    pub mountpoint: PathBuf,
    pub options: MountOptions,
    pub foreground: bool,
}

/// An error before the mount is live; printed as `deflatefs: <message>`.
#[derive(Debug)]
pub struct MountError(pub String);

impl std::fmt::Display for MountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn fail<T>(msg: impl Into<String>) -> Result<T, MountError> {
    Err(MountError(msg.into()))
}

/// One line of /proc/self/mountinfo that matters here.
#[derive(Debug, Clone)]
pub struct MountInfo {
    pub id: u64,
    /// The device number (`major:minor`) of the mounted filesystem, as `stat` would report it.
    pub dev: (u32, u32),
    pub mount_point: PathBuf,
    pub fs_type: String,
    /// The per-mount options (`rw,nosuid,nodev,relatime`).
    pub mount_options: String,
    /// The superblock's options (`rw,user_id=0,group_id=0,default_permissions`).
    pub super_options: String,
}

fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..(i + 4).min(s.len())], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every mount of this process's namespace, in mount order.
pub fn read_mountinfo() -> Vec<MountInfo> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(MountInfo {
                id: fields.first()?.parse().ok()?,
                dev: fields
                    .get(2)
                    .and_then(|d| d.split_once(':'))
                    .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                    .unwrap_or((0, 0)),
                mount_point: PathBuf::from(unescape_mountinfo(fields.get(4)?)),
                fs_type: fields.get(sep + 1)?.to_string(),
                mount_options: fields.get(5)?.to_string(),
                super_options: fields.get(sep + 3).copied().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// The topmost mount at `path`, if `path` is a mount point.
pub fn top_mount_at(path: &Path) -> Option<MountInfo> {
    read_mountinfo()
        .into_iter()
        .rev()
        .find(|m| m.mount_point == path)
}

/// Validates the request and prepares what must exist before mounting: the source directory's
/// descriptor (opened before the mount hides it).
fn prepare(req: &MountRequest) -> Result<(OwnedFd, PathBuf, PathBuf), MountError> {
    let source = match std::fs::canonicalize(&req.source) {
        Ok(p) => p,
        Err(e) => return fail(format!("source {}: {}", req.source.display(), io_text(&e))),
    };
    if !source.is_dir() {
        return fail(format!("source {} is not a directory", source.display()));
    }
    let mountpoint = match std::fs::canonicalize(&req.mountpoint) {
        Ok(p) => p,
        Err(e) => {
            return fail(format!(
                "mount point {}: {}",
                req.mountpoint.display(),
                io_text(&e)
            ))
        }
    };
    if !mountpoint.is_dir() {
        return fail(format!(
            "mount point {} is not a directory",
            mountpoint.display()
        ));
    }
    // Mounting over any other mount (a tmpfs or ext4 mount root, even the source itself) is
    // supported; a second deflatefs on top of a live one is refused as the likely mistake.
    if let Some(m) = top_mount_at(&mountpoint) {
        if m.fs_type == FS_TYPE {
            return fail(format!(
                "mount point {} is already a deflatefs mount (unmount it first)",
                mountpoint.display()
            ));
        }
    }
    if !Path::new("/dev/fuse").exists() {
        return fail("/dev/fuse is missing (load the fuse module: modprobe fuse)");
    }
    // Root passes these checks anyway; a user gets a clear message instead of an EACCES later.
    let need = if req.options.read_only {
        libc::R_OK | libc::X_OK
    } else {
        libc::R_OK | libc::W_OK | libc::X_OK
    };
    if !accessible(&source, need) {
        return fail(format!(
            "source {}: permission denied (the mount needs read{} and search access to it)",
            source.display(),
            if req.options.read_only { "" } else { ", write" }
        ));
    }
    if !geteuid().is_root() && !accessible(&mountpoint, libc::W_OK) {
        return fail(format!(
            "mount point {}: permission denied (mounting without root needs write access to it)",
            mountpoint.display()
        ));
    }
    let csource = CString::new(source.as_os_str().as_bytes())
        .map_err(|_| MountError("source path contains a NUL byte".into()))?;
    let root = sys::openat(
        libc::AT_FDCWD,
        &csource,
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    )
    .map_err(|e| MountError(format!("cannot open source {}: {e}", source.display())))?;
    Ok((root, source, mountpoint))
}

/// An io::Error's text without the "(os error N)" suffix.
fn io_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// access(2) with the real ids (the daemon runs as the user who mounts).
fn accessible(path: &Path, mode: libc::c_int) -> bool {
    match CString::new(path.as_os_str().as_bytes()) {
        Ok(c) => access(c.as_c_str(), AccessFlags::from_bits_truncate(mode)).is_ok(),
        Err(_) => false,
    }
}

/// Raises the soft descriptor limit to the hard one (never the hard limit itself: that is the
/// administrator's, `ulimit -n` or systemd's LimitNOFILE) and returns the limit in force.
fn raise_fd_limit() -> u64 {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// The descriptor bound for cached inodes: `fds=N`, but at most half the process limit (the
/// other half is for open files, directory streams, /dev/fuse and the log).
fn fd_bound(asked: usize, limit: u64) -> usize {
    let half = usize::try_from(limit / 2).unwrap_or(usize::MAX);
    asked.min(half).max(crate::fs::inode::MIN_FD_BOUND)
}

/// Mounts the FUSE filesystem and returns the /dev/fuse descriptor: mount(2) as root, through
/// fusermount3 otherwise (src/fusermount.rs).
fn kernel_mount(
    source: &Path,
    mountpoint: &Path,
    opts: &MountOptions,
) -> Result<OwnedFd, MountError> {
    if !geteuid().is_root() {
        return user_mount(source, mountpoint, opts);
    }
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| MountError(format!("cannot open /dev/fuse: {e}")))?;
    let fd: OwnedFd = dev.into();
    let data = kernel_mount_data(fd.as_raw_fd(), opts);
    let flags = kernel_mount_flags(opts);
    if let Err(errno) = nix::mount::mount(
        Some(source),
        mountpoint,
        Some(FS_TYPE),
        flags,
        Some(data.as_str()),
    ) {
        let e = std::io::Error::from(errno);
        let hint = if errno == Errno::EPERM {
            " (mounting needs root)"
        } else {
            ""
        };
        return fail(format!(
            "mount {} on {} failed: {e}{hint}",
            source.display(),
            mountpoint.display()
        ));
    }
    Ok(fd)
}

/// The mount(2) flags for a mount by root: `nosuid,nodev` unless `suid`/`dev` were asked for, and
/// the access-time policy, so findmnt shows the options the daemon follows.
fn kernel_mount_flags(opts: &MountOptions) -> MsFlags {
    let mut flags = MsFlags::empty();
    if !opts.suid {
        flags |= MsFlags::MS_NOSUID;
    }
    if !opts.dev {
        flags |= MsFlags::MS_NODEV;
    }
    if opts.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    if opts.noexec {
        flags |= MsFlags::MS_NOEXEC;
    }
    flags |= match opts.atime {
        AtimeMode::Relatime => MsFlags::MS_RELATIME,
        AtimeMode::Strict => MsFlags::MS_STRICTATIME,
        AtimeMode::Never => MsFlags::MS_NOATIME,
    };
    if opts.nodiratime {
        flags |= MsFlags::MS_NODIRATIME;
    }
    if opts.lazytime {
        flags |= MsFlags::MS_LAZYTIME;
    }
    flags
}

/// The data string of mount(2) for a FUSE mount on /dev/fuse descriptor `fd`.
fn kernel_mount_data(fd: std::os::fd::RawFd, opts: &MountOptions) -> String {
    let mut data = format!(
        "fd={fd},rootmode=40000,user_id={},group_id={}",
        getuid(),
        getgid()
    );
    if opts.allow_other {
        data.push_str(",allow_other");
    }
    if opts.default_permissions {
        data.push_str(",default_permissions");
    }
    data
}

/// The option string fusermount3 gets for a mount without root.
fn fusermount_options(source: &Path, opts: &MountOptions) -> String {
    let mut o = vec![
        if opts.read_only { "ro" } else { "rw" }.to_string(),
        "nosuid".into(),
        "nodev".into(),
    ];
    if opts.noexec {
        o.push("noexec".into());
    }
    // fusermount3 knows noatime but not relatime, strictatime, nodiratime or lazytime
    // (`unknown option`); the daemon follows its own policy whatever the mount shows.
    if opts.atime == AtimeMode::Never {
        o.push("noatime".into());
    }
    o.push(format!(
        "fsname={}",
        crate::fusermount::escape_option_value(&source.to_string_lossy())
    ));
    o.push(format!(
        "subtype={}",
        FS_TYPE.strip_prefix("fuse.").expect("fuse.NAME")
    ));
    if opts.allow_other {
        o.push("allow_other".into());
    }
    if opts.default_permissions {
        o.push("default_permissions".into());
    }
    o.join(",")
}

fn user_mount(
    source: &Path,
    mountpoint: &Path,
    opts: &MountOptions,
) -> Result<OwnedFd, MountError> {
    if opts.dev || opts.suid {
        // FUSE forces nosuid,nodev on mounts without root, as fusermount3 does.
        tracing::warn!("options dev and suid need a mount by root; mounting nosuid,nodev");
    }
    crate::fusermount::mount(mountpoint, &fusermount_options(source, opts)).map_err(|why| {
        let hint = if why.contains("/dev/fuse") && why.contains("denied") {
            " (/dev/fuse must be mode 0666 for mounts without root; udev makes it so on Debian)"
        } else {
            ""
        };
        MountError(format!(
            "mount {} on {} failed: {why}{hint}",
            source.display(),
            mountpoint.display()
        ))
    })
}

/// Unmounts `mountpoint` only if the mount with id `mount_id` is still there and nothing is
/// mounted over it: an unmount by path removes the topmost mount, which must be ours.
pub fn unmount_if_ours(mountpoint: &Path, mount_id: u64) {
    let mounts = read_mountinfo();
    if !mounts.iter().any(|m| m.id == mount_id) {
        tracing::info!(
            "{} is no longer mounted; nothing to unmount",
            mountpoint.display()
        );
        return;
    }
    if let Some(top) = mounts.iter().rev().find(|m| m.mount_point == mountpoint) {
        if top.id != mount_id {
            tracing::error!(
                "not unmounting {}: another filesystem ({}) is mounted over it; unmount that first",
                mountpoint.display(),
                top.fs_type
            );
            return;
        }
    }
    if !geteuid().is_root() {
        if let Err(e) = crate::fusermount::unmount(mountpoint, false) {
            tracing::warn!(
                "unmount of {} failed ({e}); detaching it lazily",
                mountpoint.display()
            );
            if let Err(e) = crate::fusermount::unmount(mountpoint, true) {
                tracing::error!("lazy unmount of {} failed: {e}", mountpoint.display());
            }
        }
        return;
    }
    if let Err(errno) = umount2(mountpoint, MntFlags::empty()) {
        let e = std::io::Error::from(errno);
        tracing::warn!(
            "unmount of {} failed ({e}); detaching it lazily",
            mountpoint.display()
        );
        let _ = umount2(mountpoint, MntFlags::MNT_DETACH);
    }
}

/// Kernel read-ahead for this mount, in KiB. The FUSE bdi starts at 128 KiB, which caps every
/// read request at 128 KiB however big `max_readahead` is; 1 MiB requests let a sequential reader
/// go through a whole chunk batch per request (docs/PLATFORM.md).
const READ_AHEAD_KB: u32 = 1024;

/// Raises the bdi read_ahead_kb of the mount with id `mount_id` once the session answers
/// requests. The device number comes from /proc/self/mountinfo, never from a stat of the mount
/// point: that request would be served by this very daemon, and a SIGKILL arriving while one of
/// its own workers held it left the process a zombie with this thread stuck in the kernel,
/// holding /dev/fuse open, so the mount hung instead of failing with ENOTCONN.
fn raise_readahead_later(mount_id: u64) {
    let _ = std::thread::Builder::new()
        .name("dfs-readahead".into())
        .spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            // One-shot: a panic here only costs the larger read-ahead, so it is logged, not retried.
            let raised = crate::panics::catch(|| {
                let (major, minor) = mount_dev(mount_id)?;
                let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
                match std::fs::write(&path, READ_AHEAD_KB.to_string()) {
                    Ok(()) => tracing::debug!("{path} = {READ_AHEAD_KB}"),
                    Err(e) => tracing::debug!("cannot raise {path}: {e}"),
                }
                Some(())
            });
            if let Err(msg) = raised {
                tracing::error!(
                    "thread dfs-readahead panicked: {msg}; the mount keeps the kernel's \
                     default read-ahead"
                );
            }
        });
}

/// The remountable state a mount's /proc/self/mountinfo options show: read-only (the mount's or
/// the superblock's flag), the access-time policy and `nodiratime`.
pub fn shown_state(m: &MountInfo) -> (bool, AtimeMode, bool) {
    let has = |list: &str, o: &str| list.split(',').any(|x| x == o);
    let read_only = has(&m.mount_options, "ro") || has(&m.super_options, "ro");
    let atime = if has(&m.mount_options, "noatime") {
        AtimeMode::Never
    } else if has(&m.mount_options, "relatime") {
        AtimeMode::Relatime
    } else {
        AtimeMode::Strict
    };
    (read_only, atime, has(&m.mount_options, "nodiratime"))
}

/// Follows remounts of the mount with id `mount_id` (`mount -o remount,ro|rw|noatime...`): the
/// kernel applies them and bumps the namespace's mount table, which wakes a poll on
/// /proc/self/mountinfo; the daemon then reads its mount's options and follows them
/// ([`DeflateFs::follow_remount`]). No request to any filesystem is made.
fn watch_remounts(fs: Arc<DeflateFs>, mount_id: u64) {
    let spawned = std::thread::Builder::new()
        .name("dfs-remount".into())
        .spawn(move || {
            let Ok(table) = File::open("/proc/self/mountinfo") else {
                tracing::warn!("cannot open /proc/self/mountinfo: remounts are not followed");
                return;
            };
            let mut last = None;
            loop {
                let followed = crate::panics::catch(|| {
                    let Some(m) = read_mountinfo().into_iter().find(|m| m.id == mount_id) else {
                        return false;
                    };
                    // What the mount showed at start is the options' doing (fusermount3 cannot
                    // show them all): only what changes after it is a remount to follow.
                    let shown = shown_state(&m);
                    if let Some(before) = last.filter(|b| *b != shown) {
                        let (ro, atime, nodiratime): (bool, AtimeMode, bool) = before;
                        fs.follow_remount(
                            if shown.0 != ro {
                                shown.0
                            } else {
                                fs.read_only_now()
                            },
                            if shown.1 != atime {
                                shown.1
                            } else {
                                fs.atime_now()
                            },
                            if shown.2 != nodiratime {
                                shown.2
                            } else {
                                fs.nodiratime_now()
                            },
                        );
                    }
                    last = Some(shown);
                    true
                });
                match followed {
                    Ok(true) => {}
                    Ok(false) => return, // unmounted
                    Err(msg) => tracing::error!("thread dfs-remount panicked: {msg}"),
                }
                let mut pfd = libc::pollfd {
                    fd: table.as_raw_fd(),
                    events: libc::POLLPRI,
                    revents: 0,
                };
                // SAFETY: `pfd` is one live pollfd, as the count says.
                unsafe { libc::poll(&mut pfd, 1, 1000) };
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the remount thread ({e}): remounts are not followed");
    }
}

/// The device number of the mount with id `mount_id`, from /proc/self/mountinfo (no request to
/// any filesystem).
fn mount_dev(mount_id: u64) -> Option<(u32, u32)> {
    read_mountinfo()
        .into_iter()
        .find(|m| m.id == mount_id)
        .map(|m| m.dev)
}

/// Blocks SIGTERM/SIGINT/SIGHUP in this thread and every thread started after it, so one
/// dedicated thread can wait for them.
fn block_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    // Cannot fail: SIG_BLOCK is a valid `how` and the set is ours.
    let _ = set.thread_block();
    set
}

/// The warning a mount without `default_permissions` gets, on stderr and in the log: the opt-out
/// must never go unnoticed (README, "Permissions").
fn permissions_warning(opts: &MountOptions, source: &Path, mountpoint: &Path) -> Option<String> {
    if opts.default_permissions {
        return None;
    }
    let owner = getuid();
    Some(if opts.allow_other {
        format!(
            "warning: no_default_permissions with allow_other: the kernel checks no permissions \
             on {}; every user who can reach it reads, writes, renames and deletes files in {} \
             with the rights of uid {owner} (the daemon still checks who may create files and \
             read or change user.* attributes, digests included)",
            mountpoint.display(),
            source.display()
        )
    } else {
        format!(
            "warning: no_default_permissions: the kernel checks no permissions on {}; only uid \
             {owner} can reach it, and the daemon acts on {} with that user's rights",
            mountpoint.display(),
            source.display()
        )
    })
}

/// Runs the mount: daemonizes unless `foreground`, and returns the process exit code.
pub fn run(req: MountRequest) -> i32 {
    let (root, source, mountpoint) = match prepare(&req) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("deflatefs: {e}");
            return 1;
        }
    };
    if let Some(w) = permissions_warning(&req.options, &source, &mountpoint) {
        eprintln!("deflatefs: {w}");
    }
    if req.foreground {
        let target = match &req.options.log_file {
            Some(f) => LogTarget::File(f.clone()),
            None => LogTarget::Stderr,
        };
        if let Err(e) = logging::init(target, &req.options.log_level) {
            eprintln!("deflatefs: {e}");
            return 1;
        }
        return match serve(root, &source, &mountpoint, &req.options, None) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("deflatefs: {e}");
                1
            }
        };
    }
    // Daemon: the parent waits on a pipe until the child reports the mount live (or an error).
    let (rd, wr) = match pipe2(OFlag::O_CLOEXEC) {
        Ok((rd, wr)) => (File::from(rd), File::from(wr)),
        Err(e) => {
            eprintln!("deflatefs: pipe: {}", std::io::Error::from(e));
            return 1;
        }
    };
    let mut rd = rd;
    // SAFETY: no other thread exists yet in this process (the engine, the flusher and the FUSE
    // workers start in `serve`, after the fork), so the child cannot inherit a lock held by a
    // thread that does not exist in it; it goes on running ordinary Rust code.
    match unsafe { libc::fork() } {
        -1 => {
            eprintln!("deflatefs: fork: {}", std::io::Error::last_os_error());
            1
        }
        0 => {
            drop(rd);
            // Cannot fail: a forked child is never a process group leader.
            let _ = setsid();
            redirect_stdio();
            let target = match &req.options.log_file {
                Some(f) => LogTarget::File(f.clone()),
                None => LogTarget::Syslog,
            };
            let mut wr = wr;
            if let Err(e) = logging::init(target, &req.options.log_level) {
                let _ = wr.write_all(format!("ERR {e}").as_bytes());
                // SAFETY: _exit only ends the process; it runs no atexit handlers or destructors
                // (none of the parent's must run twice), which is why it is used, not exit.
                unsafe { libc::_exit(1) };
            }
            // Like any daemon: keep no directory busy (the caller's cwd may be on a filesystem
            // that is unmounted later). Every path in use is absolute by now.
            let _ = std::env::set_current_dir("/");
            let ready = ReadyPipe(Some(wr));
            let code = match serve(root, &source, &mountpoint, &req.options, Some(ready)) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("{e}");
                    1
                }
            };
            // SAFETY: as above; the daemon has written back and committed everything by now.
            unsafe { libc::_exit(code) }
        }
        _child => {
            drop(wr);
            let mut msg = String::new();
            let _ = rd.read_to_string(&mut msg);
            if msg == "OK" {
                0
            } else {
                let msg = msg.strip_prefix("ERR ").unwrap_or(&msg);
                if msg.is_empty() {
                    eprintln!("deflatefs: the daemon exited before the mount was ready");
                } else {
                    eprintln!("deflatefs: {msg}");
                }
                1
            }
        }
    }
}

fn redirect_stdio() {
    // Not close-on-exec: if 0, 1 or 2 was closed, the descriptor itself becomes one of them.
    if let Ok(null) = nix::fcntl::open(c"/dev/null", OFlag::O_RDWR, Mode::empty()) {
        let _ = dup2_stdin(&null);
        let _ = dup2_stdout(&null);
        let _ = dup2_stderr(&null);
        if null.as_raw_fd() <= 2 {
            // It is stdin, stdout or stderr now: keep it open.
            let _ = null.into_raw_fd();
        }
    }
}

/// The write end of the readiness pipe: "OK" once the mount is live, "ERR <why>" otherwise.
struct ReadyPipe(Option<File>);

impl ReadyPipe {
    fn send(&mut self, msg: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(msg.as_bytes());
        }
    }
}

/// Mounts and serves until unmounted.
/// glibc arenas the daemon's allocations may spread over. By default glibc gives each new
/// thread its own arena (up to 8 per core); memory a FUSE worker frees after another thread
/// allocated it then stays in that arena, and the daemon's RSS grew well past its buffers: with
/// `chunk=4k`, reading and overwriting a 1 GiB file peaked at 217 MiB with the default and at
/// 142-192 MiB with two arenas. Throughput was unchanged (1 GiB write and cold read, A/B).
const MALLOC_ARENAS: libc::c_int = 2;

fn limit_malloc_arenas() {
    // SAFETY: mallopt only changes allocator parameters; called before the daemon's threads start.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) } != 1 {
        tracing::debug!("mallopt(M_ARENA_MAX) refused");
    }
}

fn serve(
    root: OwnedFd,
    source: &Path,
    mountpoint: &Path,
    opts: &MountOptions,
    mut ready: Option<ReadyPipe>,
) -> Result<(), MountError> {
    limit_malloc_arenas();
    let result = serve_inner(root, source, mountpoint, opts, &mut ready);
    if let (Err(e), Some(r)) = (&result, ready.as_mut()) {
        r.send(&format!("ERR {e}"));
    }
    result
}

fn serve_inner(
    root: OwnedFd,
    source: &Path,
    mountpoint: &Path,
    opts: &MountOptions,
    ready: &mut Option<ReadyPipe>,
) -> Result<(), MountError> {
    let fd_limit = raise_fd_limit();
    let mut opts = opts.clone();
    let bound = fd_bound(opts.fds, fd_limit);
    if bound < opts.fds {
        tracing::info!(
            "descriptor limit {fd_limit}: keeping at most {bound} descriptors for cached inodes \
             (fds={} asks for more); idle ones are closed and reopened as needed",
            opts.fds
        );
        opts.fds = bound;
    }
    let opts = &opts;
    // The kernel has already applied the caller's umask to the modes in create/mkdir/mknod
    // requests; the daemon's own umask must not strip bits a second time.
    umask(Mode::empty());
    let signals = block_signals();
    let backend = crate::engine::accel::select(&opts.accel)
        .map_err(|e| MountError(format!("compression engine (accel={}): {e}", opts.accel)))?;
    // Testing only (`fault=SPEC`): the chosen backend behind random faults.
    let backend: Arc<dyn crate::engine::Backend> = match &opts.fault {
        Some(spec) => {
            tracing::warn!("fault injection on ({spec}): for testing only");
            Arc::new(crate::engine::fault::FaultBackend::from_spec(backend, spec))
        }
        None => backend,
    };
    let engine = Engine::with_options(
        EngineConfig {
            queues: opts.queues,
            queue_depth: 4,
            backend,
        },
        EngineOptions {
            verify: opts.verify,
            fallback: opts.fault.as_ref().is_none_or(|f| f.fallback),
            fault_limit: opts.fault_limit,
            affinity: opts.affinity,
        },
    )
    .map_err(|e| MountError(format!("compression engine: {e}")))?;
    // Before anything reads or repairs the source: a second writer must find it locked.
    let _source_lock = if opts.read_only {
        None
    } else {
        crate::source_lock::SourceLock::acquire(root.as_raw_fd(), source, mountpoint)
            .map_err(MountError)?
    };
    let fs = Arc::new(
        DeflateFs::new(root, opts.clone(), engine.clone())
            .map_err(|e| MountError(format!("source {}: {e}", source.display())))?,
    );
    let fuse_fd = kernel_mount(source, mountpoint, opts)?;
    let mount_id = top_mount_at(mountpoint)
        .filter(|m| m.fs_type == FS_TYPE)
        .map(|m| m.id)
        .unwrap_or(0);
    let mut config = fuser::Config::default();
    config.n_threads = Some(opts.threads);
    config.clone_fd = true;
    let acl = if opts.allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    let adapter = FuseAdapter { fs: fs.clone() };
    let session = match fuser::Session::from_fd(adapter, fuse_fd, acl, config) {
        Ok(s) => s,
        Err(e) => {
            unmount_if_ours(mountpoint, mount_id);
            return fail(format!("FUSE handshake failed: {e}"));
        }
    };
    fs.spawn_flusher();
    raise_readahead_later(mount_id);
    watch_remounts(fs.clone(), mount_id);
    if let Some(w) = permissions_warning(opts, source, mountpoint) {
        tracing::warn!("{w}");
    }
    tracing::info!(
        "mounted {} on {} (chunk={}k level={} queues={} backend={} cache={}m dirty={}m pool={}m \
         fds={}{} digests={} permissions={}{})",
        source.display(),
        mountpoint.display(),
        opts.chunk_size() >> 10,
        opts.level,
        engine.queue_count(),
        engine.backend_name(),
        opts.cache_bytes >> 20,
        opts.dirty_bytes >> 20,
        opts.pool_bytes >> 20,
        opts.fds,
        if fs.reopens_by_handle() {
            " (reopened by handle)"
        } else {
            ""
        },
        if opts.digests { "on" } else { "off" },
        if opts.default_permissions {
            "kernel"
        } else {
            "none"
        },
        if opts.allow_other { " allow_other" } else { "" }
    );
    tracing::info!(
        "engine: backend {} (accel={}), {} queues, verify={}, fallback={}, fault_limit={}{}",
        engine.backend_name(),
        opts.accel,
        engine.queue_count(),
        if engine.verifies() { "on" } else { "off" },
        if engine.falls_back() { "sw" } else { "none" },
        opts.fault_limit,
        if opts.affinity {
            ", workers pinned to CPUs"
        } else {
            ""
        }
    );
    {
        let fs = fs.clone();
        let mountpoint = mountpoint.to_path_buf();
        std::thread::Builder::new()
            .name("dfs-signals".into())
            .spawn(move || loop {
                let Ok(sig) = signals.wait() else {
                    continue;
                };
                tracing::info!("signal {sig}: writing back and unmounting");
                // This thread must outlive a panic: the signals stay blocked in every thread,
                // so without it the next SIGTERM would be ignored and the daemon unstoppable.
                // A panicking write-back still unmounts, as asked; the main thread writes back
                // once more after the session ends, and what fails then is logged there.
                if let Err(msg) = crate::panics::catch(|| fs.flush_all()) {
                    tracing::error!(
                        "thread dfs-signals: writing back panicked: {msg}; unmounting anyway"
                    );
                }
                if let Err(msg) = crate::panics::catch(|| unmount_if_ours(&mountpoint, mount_id)) {
                    tracing::error!(
                        "thread dfs-signals: unmounting panicked: {msg}; still waiting for signals"
                    );
                }
            })
            .map_err(|e| MountError(format!("signal thread: {e}")))?;
    }
    if let Some(r) = ready.as_mut() {
        r.send("OK");
    }
    *ready = None;
    let result = session.run();
    fs.flush_all();
    engine.shutdown();
    tracing::info!(
        "engine at unmount: {}",
        fs.engine_report().trim_end().replace('\n', " ")
    );
    tracing::info!("{} unmounted", mountpoint.display());
    result.map_err(|e| MountError(format!("FUSE session ended with an error: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_bound_is_at_most_half_the_limit() {
        assert_eq!(fd_bound(4096, 20_000), 4096);
        assert_eq!(fd_bound(4096, 1024), 512);
        assert_eq!(fd_bound(4096, 10), crate::fs::inode::MIN_FD_BOUND);
        assert_eq!(fd_bound(100, u64::MAX), 100);
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/x\\134y"), "/x\\y");
    }

    #[test]
    fn mountinfo_device_numbers_are_those_stat_reports() {
        use std::os::unix::fs::MetadataExt;
        let root = top_mount_at(Path::new("/")).expect("/ is a mount point");
        let dev = std::fs::metadata("/").unwrap().dev();
        assert_eq!(root.dev, (libc::major(dev), libc::minor(dev)));
        assert_eq!(mount_dev(root.id), Some(root.dev));
        assert_eq!(mount_dev(u64::MAX), None);
    }

    #[test]
    fn every_mount_asks_the_kernel_to_check_permissions_unless_opted_out() {
        let has = |s: &str| s.split(',').any(|o| o == "default_permissions");
        for text in ["", "allow_other", "allow_other,ro"] {
            let o = MountOptions::parse(&[text]).unwrap();
            assert!(has(&kernel_mount_data(5, &o)), "{text}");
            assert!(has(&fusermount_options(Path::new("/src"), &o)), "{text}");
        }
        let o = MountOptions::parse(&["allow_other,no_default_permissions"]).unwrap();
        assert!(!has(&kernel_mount_data(5, &o)));
        assert!(!has(&fusermount_options(Path::new("/src"), &o)));
        assert!(permissions_warning(&o, Path::new("/s"), Path::new("/m"))
            .unwrap()
            .contains("allow_other"));
        assert!(
            permissions_warning(&MountOptions::default(), Path::new("/s"), Path::new("/m"))
                .is_none()
        );
    }

    #[test]
    fn root_is_listed_in_mountinfo() {
        assert!(read_mountinfo()
            .iter()
            .any(|m| m.mount_point == Path::new("/")));
    }
}
