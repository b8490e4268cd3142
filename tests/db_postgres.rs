//! A real database on the mount, killed (issue "fsync'd pages come back old after a daemon crash
//! when several processes share a file").
//!
//! PostgreSQL (Debian's `postgresql`, run as the `postgres` user through an `allow_other` mount)
//! keeps its data directory on deflatefs: `pgbench -i`, a clean pgbench run and shutdown (every
//! file checkpointed and fsync'd), then cycles of: pgbench with four clients, SIGKILL of the daemon
//! at a random moment, every postgres process killed, the dead mount removed, a remount, and
//! PostgreSQL's own crash recovery. After every recovery:
//! - `pg_amcheck --heapallindexed` finds every table and index consistent (a page that came back
//!   in an older version shows up as a heap tuple without its index tuple, as it did before the
//!   fix);
//! - pgbench's balance invariants hold: the sums of account, teller and branch balances and of
//!   the history's deltas are equal (each transaction changes all four, atomically).
//!
//! CI runs `DEFLATEFS_PG_CYCLES` = 3 cycles at scale `DEFLATEFS_PG_SCALE` = 2; the long mode is
//! 100 cycles (and a larger scale).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Mount, Rng};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The newest PostgreSQL server's binaries (/usr/lib/postgresql/N/bin).
fn pg_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, b)| b)
        .expect("PostgreSQL's server is not installed (apt-get install postgresql; .ci/run does)")
}

/// uid and gid of the `postgres` user.
fn postgres_ids() -> (u32, u32) {
    let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    assert!(
        !pw.is_null(),
        "no postgres user (apt-get install postgresql creates it)"
    );
    // SAFETY: getpwnam returned a valid entry.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

/// A PostgreSQL server on a data directory of the mount, in its own process group.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    sockets: PathBuf,
    port: u16,
    ids: (u32, u32),
    server: Option<Child>,
    log: PathBuf,
}

impl Postgres {
    fn command(&self, prog: &str) -> Command {
        let mut c = Command::new(self.bin.join(prog));
        c.uid(self.ids.0)
            .gid(self.ids.1)
            .env("PGHOST", &self.sockets)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", "postgres")
            .current_dir("/")
            .stdin(Stdio::null());
        c
    }

    /// Runs `prog args` as postgres; returns its stdout, panics with its stderr on failure.
    fn run(&self, prog: &str, args: &[&str]) -> String {
        let out = self
            .command(prog)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {prog}: {e}"));
        assert!(
            out.status.success(),
            "{prog} {args:?} failed ({}):\n{}\n{}\n--- server log (tail) ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Starts the server (crash recovery runs first if needed) and waits until it answers.
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = self
            .command("postgres")
            .args(["-D".as_ref(), self.data.as_os_str()])
            .args(["-c", "listen_addresses="])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.sockets.display()
            ))
            .args(["-p", &self.port.to_string()])
            // Small buffers and frequent checkpoints: pages go to the files, and are fsync'd,
            // all the time.
            .args(["-c", "shared_buffers=16MB", "-c", "max_wal_size=64MB"])
            .args(["-c", "checkpoint_timeout=30s", "-c", "fsync=on"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start postgres");
        self.server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ok = self
                .command("pg_isready")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            if let Some(s) = self.server.as_mut().unwrap().try_wait().unwrap() {
                panic!("postgres exited ({s}) while starting:\n{}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start within 120 s:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A clean shutdown (checkpoint, every file fsync'd).
    fn stop(&mut self) {
        if let Some(mut child) = self.server.take() {
            // SIGINT: PostgreSQL's fast shutdown.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let status = child.wait().unwrap();
            assert!(status.success(), "postgres shutdown: {status}");
        }
    }

    /// SIGKILL to every process of the server (its process group), and waits until they are gone.
    fn kill(&mut self) {
        if let Some(mut child) = self.server.take() {
            let pgid = child.id() as i32;
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            let deadline = Instant::now() + Duration::from_secs(60);
            // SAFETY: signal 0 only checks whether the group still has members.
            while unsafe { libc::kill(-pgid, 0) } == 0 {
                assert!(
                    Instant::now() < deadline,
                    "postgres processes outlive SIGKILL"
                );
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// pg_amcheck --heapallindexed over the database and the balance invariants; Err says what
    /// is wrong.
    fn check(&self) -> Result<String, String> {
        let out = self
            .command("pg_amcheck")
            .args(["--heapallindexed", "--install-missing", "-d", "bench"])
            .output()
            .unwrap();
        if !out.status.success() || !out.stdout.is_empty() {
            return Err(format!(
                "pg_amcheck ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let sums = self.run(
            "psql",
            &[
                "-XAt",
                "-d",
                "bench",
                "-c",
                "select (select sum(abalance) from pgbench_accounts), \
                 (select sum(tbalance) from pgbench_tellers), \
                 (select sum(bbalance) from pgbench_branches), \
                 (select coalesce(sum(delta), 0) from pgbench_history), \
                 (select count(*) from pgbench_history)",
            ],
        );
        let v: Vec<&str> = sums.trim().split('|').collect();
        if v.len() != 5 || v[0] != v[1] || v[1] != v[2] || v[2] != v[3] {
            return Err(format!(
                "balance invariants broken: accounts|tellers|branches|history|rows = {}",
                sums.trim()
            ));
        }
        Ok(format!("sum {} over {} history rows", v[0], v[4]))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs pgbench with four clients for `secs` seconds in the background. `-n`: without it pgbench
/// truncates pgbench_history before it starts, and the balance invariants would not hold.
fn pgbench(pg: &Postgres, secs: u64) -> Child {
    pg.command("pgbench")
        .args(["-n", "-c4", "-j2", "-T", &secs.to_string(), "bench"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pgbench")
}

fn make_dir_for(path: &Path, ids: (u32, u32), mode: u32) {
    std::fs::create_dir_all(path).unwrap();
    std::os::unix::fs::chown(path, Some(ids.0), Some(ids.1)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn postgres_recovers_consistent_after_every_daemon_kill() {
    let cycles = env_u64("DEFLATEFS_PG_CYCLES", 3);
    let scale = env_u64("DEFLATEFS_PG_SCALE", 2);
    let seed = env_u64("DEFLATEFS_PG_SEED", 1);
    let bin = pg_bin();
    let ids = postgres_ids();
    let mut m = Mount::unmounted(&["allow_other"], false);
    // The postgres user must reach the mount and the sockets directory.
    let base = m.src.parent().unwrap().to_path_buf();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&m.src, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sockets = base.join("sockets");
    make_dir_for(&sockets, ids, 0o700);
    m.mount();
    let data = m.path("pgdata");
    make_dir_for(&data, ids, 0o700);
    let mut pg = Postgres {
        bin,
        data: data.clone(),
        sockets,
        port: 5400 + (std::process::id() % 500) as u16,
        ids,
        server: None,
        log: base.join("postgres.log"),
    };
    pg.run(
        "initdb",
        &[
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-locale",
            "-E",
            "UTF8",
        ],
    );
    pg.start();
    pg.run("createdb", &["bench"]);
    pg.run("pgbench", &["-i", "-q", "-s", &scale.to_string(), "bench"]);
    // A clean run and shutdown first: the page reverted to its form from before it.
    pg.run("pgbench", &["-n", "-c4", "-j2", "-T", "5", "bench"]);
    pg.stop();
    pg.start();
    let clean = pg
        .check()
        .unwrap_or_else(|e| panic!("after the clean run: {e}"));
    eprintln!("db_postgres: after the clean run: {clean}");

    let mut rng = Rng::new(seed);
    let mut failures = Vec::new();
    let mut last = String::new();
    let started = Instant::now();
    for cycle in 0..cycles {
        let mut bench = pgbench(&pg, 120);
        std::thread::sleep(Duration::from_millis(2000 + rng.below(6000)));
        m.kill_daemon();
        pg.kill();
        let _ = bench.kill();
        let _ = bench.wait();
        m.remove_dead_mount();
        m.mount();
        pg.start();
        match pg.check() {
            Ok(s) => last = s,
            Err(e) => {
                failures.push(format!(
                    "cycle {cycle}: {e}\n--- server log (tail) ---\n{}",
                    pg.log_tail()
                ));
                break;
            }
        }
    }
    pg.stop();
    let log = m.log_text();
    drop(pg);
    drop(m);
    eprintln!(
        "db_postgres: {cycles} kill cycles (scale {scale}, seed {seed}) in {:.1?}; last check: \
         {last}; {} compactions, {} failed",
        started.elapsed(),
        log.matches(": compacted").count(),
        log.matches("compaction failed").count()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
