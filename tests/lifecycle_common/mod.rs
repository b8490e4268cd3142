//! Shared fixtures of the mount-lifecycle tests (`tests/lifecycle_*.rs`).
//!
//! - [`Daemon`]: a mount made the way a user makes one, `deflatefs mount SRC MNT` without `-f`, so
//!   the command returns once the mount is live and a daemon keeps serving; the test finds the
//!   daemon by its command line and watches it exit after an unmount.
//! - [`Ns`]: a private mount namespace (`unshare --mount --propagation private`) kept alive by an
//!   anchor process, in which `mount -t deflatefs` finds this checkout's `mount-helper/
//!   mount.deflatefs` as /sbin/mount.deflatefs (a read-only overlay on /usr/sbin) and the binary
//!   under test as `deflatefs` (a tmpfs on /usr/local/sbin, first in mount(8)'s PATH), /dev/fuse is
//!   a 0666 node as udev makes it on Debian (so users can mount through fusermount3), and
//!   /etc/fuse.conf may be replaced, and /etc/passwd and /etc/group are copies that also list
//!   [`TEST_USERS`]. Nothing outside the namespace changes: no file in /sbin,
//!   /usr/local, /etc or /dev is written. Commands run inside with `nsenter`; files inside are
//!   reached through /proc/ANCHOR/root.
//!
//! Both clean up on drop, also after a failed assertion: lazy unmounts, then SIGKILL for a daemon
//! that does not exit.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_deflatefs");

/// The fstype a live mount shows.
pub const FS_TYPE: &str = "fuse.deflatefs";

/// The helper script in this checkout.
pub fn helper_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-helper/mount.deflatefs")
}

/// Fails the calling test with a clear message when the environment cannot mount.
pub fn require_root_and_fuse() {
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the lifecycle tests mount real FUSE filesystems and must run as root (euid is {euid})"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: the lifecycle tests need the fuse module (modprobe fuse)"
    );
}

/// One line of a mountinfo file.
#[derive(Debug, Clone)]
pub struct MountLine {
    pub id: u64,
    pub mount_point: PathBuf,
    pub options: String,
    pub fs_type: String,
    pub source: String,
    /// Superblock options (where FUSE shows `user_id=`, `allow_other`, ...).
    pub super_options: String,
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push(
                b[i + 1..i + 4]
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + (c - b'0') as u32) as u8,
            );
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mounts of a process's mount namespace (`None`: this process), in mount order.
pub fn mounts_of(pid: Option<u32>) -> Vec<MountLine> {
    let file = match pid {
        Some(p) => format!("/proc/{p}/mountinfo"),
        None => "/proc/self/mountinfo".to_string(),
    };
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some(MountLine {
                id: f.first()?.parse().ok()?,
                mount_point: PathBuf::from(unescape(f.get(4)?)),
                options: f.get(5)?.to_string(),
                fs_type: f.get(sep + 1)?.to_string(),
                source: unescape(f.get(sep + 2)?),
                super_options: f.get(sep + 3).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

/// The topmost mount at `path` in a namespace.
pub fn top_mount(pid: Option<u32>, path: &Path) -> Option<MountLine> {
    mounts_of(pid)
        .into_iter()
        .rev()
        .find(|m| m.mount_point == path)
}

/// Every mount at `path` in a namespace, bottom first.
pub fn mounts_at(pid: Option<u32>, path: &Path) -> Vec<MountLine> {
    mounts_of(pid)
        .into_iter()
        .filter(|m| m.mount_point == path)
        .collect()
}

/// Whether a deflatefs mount is at `path`.
pub fn deflatefs_at(pid: Option<u32>, path: &Path) -> bool {
    mounts_at(pid, path).iter().any(|m| m.fs_type == FS_TYPE)
}

fn is_zombie_or_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(true),
        Err(_) => true,
    }
}

/// Live deflatefs processes whose command line has an argument under `under`.
pub fn daemons_under(under: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_deflatefs = args
            .first()
            .map(|a| Path::new(a).file_name() == Some("deflatefs".as_ref()))
            .unwrap_or(false);
        if is_deflatefs
            && args.iter().skip(1).any(|a| Path::new(a).starts_with(under))
            && !is_zombie_or_gone(pid)
        {
            out.push(pid);
        }
    }
    out
}

/// Waits until none of `pids` is alive; false on timeout.
pub fn wait_gone(pids: &[i32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pids.iter().all(|p| is_zombie_or_gone(*p)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `cond` holds; false on timeout.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Exit code and combined output of a finished command, for messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command to completion with no input.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

/// A private temporary directory that other users can traverse (for the non-root tests).
pub fn open_tempdir(prefix: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create a temporary directory");
    let base = std::fs::canonicalize(dir.path()).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, base)
}

/// The chunk size (log2) recorded in a container's header member (docs/FORMAT.md: payload byte
/// 10, after 16 bytes of member framing).
pub fn container_chunk_log2(data: &[u8]) -> u8 {
    data[26]
}

/// A mount made by `deflatefs mount SRC MNT` (daemon mode) in this namespace.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub base: PathBuf,
    pub src: PathBuf,
    pub mnt: PathBuf,
    pub log: PathBuf,
    pub opts: Vec<String>,
}

impl Daemon {
    /// Directories `src/` and `mnt/` in a fresh temporary directory, not mounted yet.
    pub fn unmounted(opts: &[&str]) -> Daemon {
        require_root_and_fuse();
        let (dir, base) = open_tempdir("deflatefs-life-");
        let src = base.join("src");
        let mnt = base.join("mnt");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
        Daemon {
            log: base.join("deflatefs.log"),
            dir,
            base,
            src,
            mnt,
            opts: opts.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// `deflatefs mount -o OPTS,log=LOG SRC MNT`: returns once the mount is live.
    pub fn mount(&self) {
        let out = self.try_mount();
        assert!(
            out.status.success(),
            "deflatefs mount failed: {}\nlog:\n{}",
            describe(&out),
            self.log_text()
        );
        assert!(
            deflatefs_at(None, &self.mnt),
            "deflatefs mount returned 0 but {} is not a deflatefs mount yet",
            self.mnt.display()
        );
    }

    /// Runs the mount command and returns its output, whatever happened.
    pub fn try_mount(&self) -> Output {
        let mut all = self.opts.clone();
        all.push(format!("log={}", self.log.display()));
        run(Command::new(BIN)
            .arg("mount")
            .arg("-o")
            .arg(all.join(","))
            .arg(&self.src)
            .arg(&self.mnt))
    }

    /// The daemon serving this fixture (exactly one expected).
    pub fn pid(&self) -> i32 {
        let pids = daemons_under(&self.base);
        assert_eq!(
            pids.len(),
            1,
            "expected one deflatefs daemon, found {pids:?}"
        );
        pids[0]
    }

    /// Waits for every daemon of this fixture to exit; panics with the log after `timeout`.
    pub fn wait_exit(&self, timeout: Duration) {
        let pids = daemons_under(&self.base);
        assert!(
            wait_gone(&pids, timeout),
            "the deflatefs daemon {pids:?} did not exit within {timeout:?}\nlog:\n{}",
            self.log_text()
        );
    }

    /// `umount MNT`, then waits for the daemon to exit.
    pub fn umount(&self) {
        let out = run(Command::new("umount").arg(&self.mnt));
        assert!(out.status.success(), "umount: {}", describe(&out));
        self.wait_exit(Duration::from_secs(30));
    }

    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        for _ in 0..10 {
            if !deflatefs_at(None, &self.mnt) {
                break;
            }
            let _ = run(Command::new("umount").arg("-l").arg(&self.mnt));
        }
        let pids = daemons_under(&self.base);
        if !wait_gone(&pids, Duration::from_secs(10)) {
            for p in pids {
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
    }
}

/// Unprivileged users that exist inside an [`Ns`] only (name, uid = gid).
pub const TEST_USERS: [(&str, u32); 2] = [("deflatefs-alice", 4242), ("deflatefs-bob", 4243)];

/// What to put in place of /etc/fuse.conf inside an [`Ns`].
pub enum FuseConf {
    /// Leave the machine's file visible.
    Host,
    /// A file with exactly this content.
    Content(&'static str),
}

/// A private mount namespace with the helper and the binary under test installed (see above).
pub struct Ns {
    pub dir: tempfile::TempDir,
    /// The temporary directory (same path inside and outside the namespace).
    pub base: PathBuf,
    anchor: Child,
}

impl Ns {
    pub fn new(fuse_conf: FuseConf) -> Ns {
        Ns::build(fuse_conf, false)
    }

    /// Like [`Ns::new`], with a private tmpfs on /dev holding only null, zero, random, urandom
    /// and fuse, so that a test can bind its own /dev/log (syslog) socket there.
    pub fn with_private_dev(fuse_conf: FuseConf) -> Ns {
        Ns::build(fuse_conf, true)
    }

    fn build(fuse_conf: FuseConf, private_dev: bool) -> Ns {
        require_root_and_fuse();
        let (dir, base) = open_tempdir("deflatefs-ns-");
        let sbin = base.join("ns-sbin");
        std::fs::create_dir_all(&sbin).unwrap();
        std::fs::copy(helper_script(), sbin.join("mount.deflatefs")).unwrap();
        std::fs::set_permissions(
            sbin.join("mount.deflatefs"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let dev = base.join("ns-dev");
        std::fs::create_dir_all(&dev).unwrap();
        let node = dev.join("fuse");
        let c = std::ffi::CString::new(node.to_str().unwrap()).unwrap();
        let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(10, 229)) };
        assert_eq!(
            r,
            0,
            "mknod {}: {}",
            node.display(),
            std::io::Error::last_os_error()
        );
        std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o666)).unwrap();
        let mut setup = format!(
            "set -e\n\
             mount -t overlay deflatefs-test-sbin -o lowerdir={sbin}:/usr/sbin /usr/sbin\n\
             mount -t tmpfs deflatefs-test-bin /usr/local/sbin\n\
             ln -s {bin} /usr/local/sbin/deflatefs\n\
             mount --bind {node} /dev/fuse\n",
            sbin = sbin.display(),
            bin = BIN,
            node = node.display()
        );
        if private_dev {
            setup.push_str(
                "mount -t tmpfs -o mode=0755 deflatefs-test-dev /dev\n\
                 mknod -m 666 /dev/null c 1 3\n\
                 mknod -m 666 /dev/zero c 1 5\n\
                 mknod -m 666 /dev/random c 1 8\n\
                 mknod -m 666 /dev/urandom c 1 9\n\
                 mknod -m 666 /dev/fuse c 10 229\n",
            );
        }
        if let FuseConf::Content(text) = fuse_conf {
            let conf = base.join("ns-fuse.conf");
            std::fs::write(&conf, text).unwrap();
            std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
            setup.push_str(&format!("mount --bind {} /etc/fuse.conf\n", conf.display()));
        }
        // fusermount3 wants a user name: the test users exist in the namespace's passwd only.
        for (file, line) in [
            (
                "passwd",
                "{name}:x:{id}:{id}::/nonexistent:/usr/sbin/nologin\n",
            ),
            ("group", "{name}:x:{id}:\n"),
        ] {
            let mut text = std::fs::read_to_string(format!("/etc/{file}")).unwrap_or_default();
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            for (name, id) in TEST_USERS {
                text.push_str(
                    &line
                        .replace("{name}", name)
                        .replace("{id}", &id.to_string()),
                );
            }
            let copy = base.join(format!("ns-{file}"));
            std::fs::write(&copy, text).unwrap();
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
            setup.push_str(&format!("mount --bind {} /etc/{file}\n", copy.display()));
        }
        setup.push_str("echo ready\nexec sleep 3600\n");
        let mut anchor = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(&setup)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn unshare (util-linux)");
        let mut line = String::new();
        let mut reader = BufReader::new(anchor.stdout.take().unwrap());
        let _ = reader.read_line(&mut line);
        if line.trim() != "ready" {
            let out = anchor.wait_with_output().unwrap();
            panic!("could not set up the test namespace: {}", describe(&out));
        }
        Ns { dir, base, anchor }
    }

    /// The anchor's pid: `/proc/PID/root` and `/proc/PID/mountinfo` show the namespace.
    pub fn pid(&self) -> u32 {
        self.anchor.id()
    }

    /// A path inside the namespace, as seen from this process.
    pub fn path(&self, p: &Path) -> PathBuf {
        let rel = p.strip_prefix("/").unwrap_or(p);
        PathBuf::from(format!("/proc/{}/root", self.pid())).join(rel)
    }

    /// `sh -c SCRIPT` inside the namespace, as root, with cwd /.
    pub fn sh(&self, script: &str) -> Output {
        run(Command::new("nsenter")
            .arg("-t")
            .arg(self.pid().to_string())
            .args(["-m", "--", "sh", "-c"])
            .arg(script)
            .current_dir("/"))
    }

    /// `sh -c SCRIPT` inside the namespace as `uid:gid` (no supplementary groups).
    pub fn sh_as(&self, uid: u32, gid: u32, script: &str) -> Output {
        run(Command::new("nsenter")
            .arg("-t")
            .arg(self.pid().to_string())
            .args(["-m", "--", "setpriv"])
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .args(["--clear-groups", "--", "sh", "-c"])
            .arg(script)
            .current_dir("/"))
    }

    /// Like [`Ns::sh`], asserting success.
    #[track_caller]
    pub fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "`{script}` failed: {}",
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Like [`Ns::sh_as`], asserting success.
    #[track_caller]
    pub fn ok_as(&self, uid: u32, gid: u32, script: &str) -> String {
        let out = self.sh_as(uid, gid, script);
        assert!(
            out.status.success(),
            "`{script}` as {uid}:{gid} failed: {}",
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether a deflatefs mount is at `path` inside the namespace.
    pub fn deflatefs_at(&self, path: &Path) -> bool {
        deflatefs_at(Some(self.pid()), path)
    }

    /// Waits for the deflatefs daemons with an argument under `under` to exit.
    #[track_caller]
    pub fn wait_daemons_exit(&self, under: &Path) {
        let pids = daemons_under(under);
        assert!(
            wait_gone(&pids, Duration::from_secs(30)),
            "deflatefs daemons {pids:?} did not exit within 30 s"
        );
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let pid = Some(self.pid());
        for _ in 0..10 {
            let left: Vec<MountLine> = mounts_of(pid)
                .into_iter()
                .filter(|m| m.fs_type == FS_TYPE || m.mount_point.starts_with(&self.base))
                .collect();
            if left.is_empty() {
                break;
            }
            for m in left.iter().rev() {
                let _ = self.sh(&format!("umount -l '{}'", m.mount_point.display()));
            }
        }
        let pids = daemons_under(&self.base);
        if !wait_gone(&pids, Duration::from_secs(10)) {
            for p in &pids {
                unsafe { libc::kill(*p, libc::SIGKILL) };
            }
            wait_gone(&pids, Duration::from_secs(5));
        }
        let _ = self.anchor.kill();
        let _ = self.anchor.wait();
    }
}
