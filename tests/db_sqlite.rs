//! SQLite on the mount, killed in the middle of its update loop (issue "long-running real
//! workloads": databases at FUSE speed, nothing lost).
//!
//! A writer process (python3's sqlite3 module, `synchronous=FULL`) runs single-row-pair transfer
//! transactions in WAL and in rollback-journal mode, printing each transaction's number once its
//! COMMIT returned. At a random moment the daemon gets SIGKILL, the writer is killed, the dead
//! mount removed and the file system mounted again. Then:
//! - `PRAGMA integrity_check` says ok;
//! - the balances still sum to zero (each transaction moves one unit between two rows);
//! - the newest transaction recorded is at least the last one whose COMMIT returned: a committed
//!   transaction is never lost.
//!
//! `DEFLATEFS_SQLITE_CYCLES` (default 5) cycles per journal mode; `DEFLATEFS_SQLITE_SEED`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Mount, Rng};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const ROWS: u32 = 2000;

/// Creates the database (if new) and runs transfers until killed, printing each committed
/// transaction's number.
const WRITER: &str = r#"
import random, sqlite3, sys
path, mode, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
db = sqlite3.connect(path, isolation_level=None)
db.execute("PRAGMA journal_mode=" + mode)
db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE IF NOT EXISTS acct(id INTEGER PRIMARY KEY, bal INTEGER, pad TEXT)")
db.execute("CREATE TABLE IF NOT EXISTS txlog(seq INTEGER PRIMARY KEY)")
if db.execute("SELECT count(*) FROM acct").fetchone()[0] == 0:
    db.execute("BEGIN")
    for i in range(ROWS):
        db.execute("INSERT INTO acct VALUES(?, 0, ?)", (i, "x" * 150))
    db.execute("COMMIT")
seq = db.execute("SELECT coalesce(max(seq), 0) FROM txlog").fetchone()[0]
rng = random.Random(seed)
while True:
    seq += 1
    a, b = rng.randrange(ROWS), rng.randrange(ROWS)
    db.execute("BEGIN")
    db.execute("UPDATE acct SET bal = bal - 1 WHERE id = ?", (a,))
    db.execute("UPDATE acct SET bal = bal + 1 WHERE id = ?", (b,))
    db.execute("INSERT INTO txlog VALUES(?)", (seq,))
    db.execute("COMMIT")
    print(seq, flush=True)
"#;

/// Checks a database after a crash; returns (integrity, balance sum, newest transaction).
const CHECK: &str = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
ok = db.execute("PRAGMA integrity_check").fetchall()
total = db.execute("SELECT coalesce(sum(bal), 0) FROM acct").fetchone()[0]
newest = db.execute("SELECT coalesce(max(seq), 0) FROM txlog").fetchone()[0]
print(repr(ok), total, newest)
"#;

struct Writer {
    child: Child,
    committed: Arc<Mutex<u64>>,
}

fn start_writer(db: &Path, mode: &str, seed: u64) -> Writer {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(WRITER.replace("ROWS", &ROWS.to_string()))
        .arg(db)
        .arg(mode)
        .arg(seed.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 (apt-get install python3; .ci/run does)");
    let committed = Arc::new(Mutex::new(0));
    let out = child.stdout.take().unwrap();
    let c = committed.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let Ok(n) = line.trim().parse::<u64>() {
                *c.lock().unwrap() = n;
            }
        }
    });
    Writer { child, committed }
}

fn check(db: &Path) -> (String, i64, u64) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(CHECK)
        .arg(db)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "checking {}: {}\n{}",
        db.display(),
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut parts = text.rsplitn(3, ' ');
    let newest = parts.next().unwrap().trim().parse().unwrap();
    let total = parts.next().unwrap().parse().unwrap();
    (parts.next().unwrap().to_string(), total, newest)
}

fn sqlite_survives_daemon_kills(mode: &str) {
    let cycles = env_u64("DEFLATEFS_SQLITE_CYCLES", 5);
    let seed = env_u64("DEFLATEFS_SQLITE_SEED", 1);
    let mut rng = Rng::new(seed);
    let mut m = Mount::new();
    let db = m.path("bank.db");
    for cycle in 0..cycles {
        let mut w = start_writer(&db, mode, seed * 1000 + cycle);
        // Long enough for the table to exist and some transactions to commit.
        std::thread::sleep(Duration::from_millis(800 + rng.below(2200)));
        m.kill_daemon();
        let _ = w.child.kill();
        let _ = w.child.wait();
        // The reader thread has seen every line the writer printed before it died.
        std::thread::sleep(Duration::from_millis(100));
        let acknowledged = *w.committed.lock().unwrap();
        m.remove_dead_mount();
        m.mount();
        let (integrity, total, newest) = check(&db);
        eprintln!(
            "db_sqlite {mode} cycle {cycle}: {acknowledged} acknowledged, newest {newest}, \
             integrity {integrity}"
        );
        assert_eq!(integrity, "[('ok',)]", "{mode} cycle {cycle}");
        assert_eq!(
            total, 0,
            "{mode} cycle {cycle}: balances do not sum to zero"
        );
        assert!(
            newest >= acknowledged,
            "{mode} cycle {cycle}: transaction {acknowledged} was committed, the database \
             holds only up to {newest}"
        );
        assert!(
            cycle > 0 || acknowledged > 0,
            "no transaction committed before the kill: the test tested nothing"
        );
    }
    m.unmount();
}

#[test]
fn sqlite_in_wal_mode_loses_no_committed_transaction_when_the_daemon_is_killed() {
    sqlite_survives_daemon_kills("WAL");
}

#[test]
fn sqlite_with_a_rollback_journal_loses_no_committed_transaction_when_the_daemon_is_killed() {
    sqlite_survives_daemon_kills("DELETE");
}
