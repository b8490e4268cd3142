//! Shared fixture of the real-mount integration tests (`tests/mount_*.rs`, `tests/model_*.rs`).
//!
//! [`Mount`] owns a private temporary directory holding `src/` (the backing directory) and `mnt/`
//! (the mount point), or a single directory mounted over itself. It runs `deflatefs mount -f` as a
//! child process logging to a file in that directory, waits until the mount is listed in
//! /proc/self/mountinfo with type `fuse.deflatefs`, and on drop unmounts and waits for the daemon to
//! exit, so the backing files are complete. Every test builds its own `Mount`, so tests run in
//! parallel without sharing anything.
//!
//! These tests need root and /dev/fuse: without them they fail with a message saying so.
#![allow(dead_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_deflatefs");

/// The fstype a live mount shows in /proc/self/mountinfo.
pub const FS_TYPE: &str = "fuse.deflatefs";

/// How long one mount may live before the watchdog kills its daemon (which aborts the FUSE
/// connection, so a hung request fails with ENOTCONN instead of hanging the whole test run).
const WATCHDOG: Duration = Duration::from_secs(150);

/// Fails the calling test with a clear message when the environment cannot mount.
pub fn require_root_and_fuse() {
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the deflatefs mount tests mount real FUSE filesystems and must run as root \
         (euid is {euid}); run `cargo test` as root"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: the mount tests need the fuse module (modprobe fuse)"
    );
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub struct MountLine {
    pub id: u64,
    pub dev: String,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub options: String,
}

fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, c| acc * 8 + (c - b'0') as u32);
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Every mount in this process's namespace.
pub fn mountinfo() -> Vec<MountLine> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some(MountLine {
                id: f.first()?.parse().ok()?,
                dev: f.get(2)?.to_string(),
                mount_point: PathBuf::from(std::ffi::OsStr::from_bytes(&unescape(f.get(4)?))),
                fs_type: f.get(sep + 1)?.to_string(),
                options: f.get(5)?.to_string(),
            })
        })
        .collect()
}

/// The deflatefs mounts at `path` (normally zero or one).
pub fn deflatefs_mounts_at(path: &Path) -> Vec<MountLine> {
    mountinfo()
        .into_iter()
        .filter(|m| m.mount_point == path && m.fs_type == FS_TYPE)
        .collect()
}

/// Whether anything at all is mounted at `path`.
pub fn anything_mounted_at(path: &Path) -> bool {
    mountinfo().iter().any(|m| m.mount_point == path)
}

/// Options every fixture mount gets before its own, from `DEFLATEFS_TEST_MOUNT_OPTS` (comma
/// separated): e.g. `DEFLATEFS_TEST_MOUNT_OPTS=allow_other cargo test --release --test mount_ops`
/// runs the conformance tests on mounts that other users can reach.
pub fn extra_mount_options() -> Vec<String> {
    std::env::var("DEFLATEFS_TEST_MOUNT_OPTS")
        .unwrap_or_default()
        .split(',')
        .filter(|o| !o.is_empty())
        .map(str::to_string)
        .collect()
}

/// Kills a daemon that outlives [`WATCHDOG`].
struct Watchdog {
    done: Arc<(Mutex<bool>, Condvar)>,
}

impl Watchdog {
    fn start(pid: u32, label: String) -> Watchdog {
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let d = done.clone();
        std::thread::spawn(move || {
            let (lock, cv) = &*d;
            let mut finished = lock.lock().unwrap();
            let deadline = Instant::now() + WATCHDOG;
            while !*finished {
                let now = Instant::now();
                if now >= deadline {
                    eprintln!(
                        "watchdog: the deflatefs daemon of {label} is still mounted after {:?}; \
                         killing it (pid {pid}) so the test cannot hang",
                        WATCHDOG
                    );
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    return;
                }
                finished = cv.wait_timeout(finished, deadline - now).unwrap().0;
            }
        });
        Watchdog { done }
    }

    fn stop(&self) {
        let (lock, cv) = &*self.done;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }
}

/// A live (or stopped) deflatefs mount in a private temporary directory.
pub struct Mount {
    /// The temporary directory holding everything (removed on drop).
    pub dir: tempfile::TempDir,
    /// The backing directory (SOURCE).
    pub src: PathBuf,
    /// The mount point (equal to `src` for a mount over the same directory).
    pub mnt: PathBuf,
    /// The daemon's log file (`-o log=...`), appended to across remounts.
    pub log: PathBuf,
    /// The daemon's stderr, appended to across remounts.
    pub stderr: PathBuf,
    /// Options given with `-o` (the log option is added by the fixture).
    pub opts: Vec<String>,
    /// Environment variables given to the daemon (e.g. `DEFLATEFS_REOPEN_BY_NAME=1`).
    pub daemon_env: Vec<(String, String)>,
    /// RLIMIT_NOFILE (soft and hard) the daemon starts with, as `ulimit -n N` would set it.
    pub nofile: Option<u64>,
    child: Option<Child>,
    watchdog: Option<Watchdog>,
}

impl Mount {
    /// A mount of a fresh empty `src/` on `mnt/` with default options.
    pub fn new() -> Mount {
        Self::with_opts(&[])
    }

    /// A mount with extra `-o` options, e.g. `&["chunk=4k"]`.
    pub fn with_opts(opts: &[&str]) -> Mount {
        let mut m = Self::unmounted(opts, false);
        m.mount();
        m
    }

    /// A fixture whose directories exist but which is not mounted yet: fill `src` first, then call
    /// [`Mount::mount`]. With `same_dir`, `src` and `mnt` are the same directory.
    pub fn unmounted(opts: &[&str], same_dir: bool) -> Mount {
        require_root_and_fuse();
        let dir = tempfile::Builder::new()
            .prefix("deflatefs-test-")
            .tempdir()
            .expect("create a temporary directory");
        // Canonical paths: /proc/self/mountinfo shows resolved paths.
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let src = if same_dir {
            base.join("both")
        } else {
            base.join("src")
        };
        let mnt = if same_dir {
            src.clone()
        } else {
            base.join("mnt")
        };
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
        Mount {
            log: base.join("deflatefs.log"),
            stderr: base.join("deflatefs.stderr"),
            dir,
            src,
            mnt,
            opts: opts.iter().map(|s| s.to_string()).collect(),
            daemon_env: Vec::new(),
            nofile: None,
            child: None,
            watchdog: None,
        }
    }

    /// Whether the daemon is running.
    pub fn is_mounted(&self) -> bool {
        self.child.is_some()
    }

    /// `mnt/<rel>`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// `src/<rel>`: the backing file (read it only while unmounted, or after a sync).
    pub fn backing(&self, rel: &str) -> PathBuf {
        self.src.join(rel)
    }

    /// Starts the daemon in the foreground and waits until the mount is live.
    pub fn mount(&mut self) {
        assert!(self.child.is_none(), "already mounted");
        assert!(
            deflatefs_mounts_at(&self.mnt).is_empty(),
            "{} is already a deflatefs mount point",
            self.mnt.display()
        );
        let mut args: Vec<String> = vec!["mount".into(), "-f".into()];
        let mut all = extra_mount_options();
        all.extend(self.opts.iter().cloned());
        all.push(format!("log={}", self.log.display()));
        args.push("-o".into());
        args.push(all.join(","));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr)
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(&args)
            .arg(&self.src)
            .arg(&self.mnt)
            .envs(self.daemon_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if let Some(n) = self.nofile {
            use std::os::unix::process::CommandExt;
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn deflatefs");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if !deflatefs_mounts_at(&self.mnt).is_empty() {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "deflatefs mount {:?} exited ({status}) before the mount was live\n\
                     stderr:\n{}\nlog:\n{}",
                    args,
                    self.stderr_text(),
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "deflatefs mount {:?} did not show up in /proc/self/mountinfo within 20 s\n\
                     stderr:\n{}\nlog:\n{}",
                    args,
                    self.stderr_text(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.watchdog = Some(Watchdog::start(child.id(), self.mnt.display().to_string()));
        self.child = Some(child);
    }

    /// Unmounts (`umount`, then `umount -l` if it stays busy) and waits for the daemon to exit,
    /// which it does only after writing everything back. Returns the daemon's exit status.
    pub fn unmount(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("not mounted");
        if let Some(w) = self.watchdog.take() {
            w.stop();
        }
        let mut unmounted = false;
        for attempt in 0..50 {
            if deflatefs_mounts_at(&self.mnt).is_empty() {
                unmounted = true;
                break;
            }
            let out = Command::new("umount")
                .arg(&self.mnt)
                .stdin(Stdio::null())
                .output()
                .expect("run umount");
            if out.status.success() {
                unmounted = true;
                break;
            }
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            if attempt == 49 {
                eprintln!(
                    "umount {} keeps failing ({}); detaching lazily",
                    self.mnt.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut patience = Duration::from_secs(60);
        if !unmounted && !deflatefs_mounts_at(&self.mnt).is_empty() {
            // Something (a leaked descriptor or mapping of a failed test) keeps the mount busy:
            // the daemon would wait for it forever, so give it only a short grace period.
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).output();
            patience = Duration::from_secs(5);
        }
        let deadline = Instant::now() + patience;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                eprintln!(
                    "deflatefs daemon for {} did not exit within {:?} of umount; killing it",
                    self.mnt.display(),
                    patience
                );
                let _ = child.kill();
                break child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // A killed daemon can leave a dead mount behind: never leave one.
        if !deflatefs_mounts_at(&self.mnt).is_empty() {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).output();
        }
        status
    }

    /// The daemon's process id while mounted.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// A crash: kills the daemon with SIGKILL (nothing is written back) and waits for it. The
    /// dead mount stays until [`Mount::remove_dead_mount`] (close every descriptor in it first).
    pub fn kill_daemon(&mut self) {
        let mut child = self.child.take().expect("not mounted");
        if let Some(w) = self.watchdog.take() {
            w.stop();
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Unmounts what a killed daemon left behind (`umount`, then `umount -l`).
    pub fn remove_dead_mount(&mut self) {
        for _ in 0..50 {
            if deflatefs_mounts_at(&self.mnt).is_empty() {
                return;
            }
            let ok = Command::new("umount")
                .arg(&self.mnt)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).output();
    }

    /// Unmounts, asserting a clean daemon exit, and mounts again with the same options.
    pub fn remount(&mut self) {
        let status = self.unmount();
        assert!(
            status.success(),
            "the daemon exited with {status} at unmount\nstderr:\n{}\nlog:\n{}",
            self.stderr_text(),
            self.log_text()
        );
        self.mount();
    }

    /// The log file's content so far ("" if none).
    /// Waits up to `timeout` for the daemon's log to contain `needle`; whether it did.
    pub fn wait_for_log(&self, needle: &str, timeout: std::time::Duration) -> bool {
        let until = std::time::Instant::now() + timeout;
        loop {
            if self.log_text().contains(needle) {
                return true;
            }
            if std::time::Instant::now() >= until {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The log's WARN and ERROR lines so far (the default level logs nothing worse than INFO
    /// for a workload without damage or failures).
    pub fn warn_and_error_lines(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .map(String::from)
            .collect()
    }

    /// The daemon's stderr so far.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stderr).unwrap_or_default()).into_owned()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.is_some() {
            let status = self.unmount();
            if !status.success() && !std::thread::panicking() {
                panic!(
                    "the deflatefs daemon exited with {status} at unmount\nstderr:\n{}\nlog:\n{}",
                    self.stderr_text(),
                    self.log_text()
                );
            }
        }
    }
}

/// Runs `deflatefs ARGS` to completion; returns (exit code, stdout+stderr).
pub fn run_deflatefs(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run deflatefs");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// Runs a shell tool, returning (success, stdout bytes, stderr text).
pub fn run_tool(prog: &str, args: &[&std::ffi::OsStr]) -> (bool, Vec<u8>, String) {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {prog}: {e}"));
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A NUL-terminated copy of a path for libc calls.
/// The value of `key` in `user.deflatefs.engine` on the mount's root (one `key=value` per line),
/// read with getfattr; panics naming the key if the report lacks it.
pub fn engine_report_value(mnt: &Path, key: &str) -> String {
    let (ok, out, err) = run_tool(
        "getfattr",
        &[
            "-n".as_ref(),
            "user.deflatefs.engine".as_ref(),
            "--only-values".as_ref(),
            mnt.as_os_str(),
        ],
    );
    assert!(ok, "getfattr user.deflatefs.engine: {err}");
    let report = String::from_utf8(out).unwrap();
    report
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no {key} in the engine report:\n{report}"))
}

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// The errno of the last failed libc call.
pub fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The errno inside an io::Error (0 when it has none).
pub fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Name of an errno value, for messages.
pub fn errno_name(e: i32) -> String {
    format!("{} ({})", io::Error::from_raw_os_error(e), e)
}

/// lstat(2).
pub fn lstat(p: &Path) -> io::Result<libc::stat> {
    let c = cpath(p);
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::lstat(c.as_ptr(), &mut st) } == 0 {
        Ok(st)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// fstat(2).
pub fn fstat(f: &File) -> io::Result<libc::stat> {
    use std::os::fd::AsRawFd;
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(f.as_raw_fd(), &mut st) } == 0 {
        Ok(st)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Deterministic pseudo-random generator (xorshift64*), for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `len` bytes of varied but compressible text (words from a small vocabulary, line numbers).
pub fn varied_text(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "alpha",
        "bravo",
        "charlie",
        "delta",
        "echo",
        "foxtrot",
        "golf",
        "hotel",
        "india",
        "juliett",
        "kilo",
        "lima",
        "mike",
        "november",
        "oscar",
        "papa",
        "quebec",
        "romeo",
        "sierra",
        "tango",
        "uniform",
        "victor",
        "whiskey",
        "xray",
        "yankee",
        "zulu",
        "chunk",
        "deflate",
        "member",
        "container",
        "commit",
        "index",
    ];
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 64);
    let mut line = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("{line:08} ").as_bytes());
        let n = 4 + rng.below(10);
        for _ in 0..n {
            out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
            out.push(if rng.below(7) == 0 { b',' } else { b' ' });
        }
        out.extend_from_slice(format!("{:x}\n", rng.next() & 0xffff).as_bytes());
        line += 1;
    }
    out.truncate(len);
    out
}

/// `len` bytes that do not compress.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A gzip member deflatefs wrote, found by its framing (docs/FORMAT.md).
#[derive(Debug, Clone, Copy)]
pub struct MemberAt {
    /// Offset of the member's first byte in the container.
    pub offset: usize,
    /// Record type (`b'H'`, `b'd'`, `b'i'`, `b'c'`).
    pub kind: u8,
    /// Payload length (from the LEN field).
    pub payload_len: usize,
}

/// Every offset where a deflatefs member header (`1f 8b 08 04 .. .. .. .. 00 ff` + `44 <type>`)
/// starts. Framing bytes can in principle occur inside compressed data; the tests only use this
/// on data they control and cross-check with the payload.
pub fn scan_members(data: &[u8]) -> Vec<MemberAt> {
    let mut out = Vec::new();
    if data.len() < 16 {
        return out;
    }
    for i in 0..data.len() - 16 {
        if data[i] == 0x1f
            && data[i + 1] == 0x8b
            && data[i + 2] == 0x08
            && data[i + 3] == 0x04
            && data[i + 12] == 0x44
        {
            let kind = data[i + 13];
            let xlen = u16::from_le_bytes([data[i + 10], data[i + 11]]) as usize;
            let len = u16::from_le_bytes([data[i + 14], data[i + 15]]) as usize;
            if matches!(kind, b'H' | b'd' | b'i' | b'c') && xlen == len + 4 {
                out.push(MemberAt {
                    offset: i,
                    kind,
                    payload_len: len,
                });
            }
        }
    }
    out
}

/// Decompresses every gzip member of `data` in order (like `zcat`), with flate2.
pub fn gunzip_all(data: &[u8]) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out)?;
    Ok(out)
}

/// Whether `data` starts with a deflatefs header member.
pub fn is_container(data: &[u8]) -> bool {
    data.len() >= 36
        && data[0..4] == [0x1f, 0x8b, 0x08, 0x04]
        && data[12] == 0x44
        && data[13] == b'H'
        && &data[16..24] == b"DEFLATFS"
}

/// Compares two byte strings, reporting the first difference instead of dumping both.
#[track_caller]
pub fn assert_bytes_eq(actual: &[u8], expected: &[u8], what: &str) {
    if actual == expected {
        return;
    }
    let first = actual
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(actual.len().min(expected.len()));
    let show = |v: &[u8]| {
        let end = (first + 16).min(v.len());
        format!("{:02x?}", &v[first.min(v.len())..end])
    };
    panic!(
        "{what}: contents differ: actual {} bytes, expected {} bytes; first difference at byte {first}: \
         actual {} expected {}",
        actual.len(),
        expected.len(),
        show(actual),
        show(expected)
    );
}

/// Peak resident set size (VmHWM) of process `pid`, in KiB.
pub fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}
