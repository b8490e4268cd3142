//! Panics in the daemon's background threads are logged and do not stop them, and log lines keep
//! their level on the way to the journal.
//!
//! `DEFLATEFS_TEST_FLUSHER_PANICS=N` (read by the daemon at mount, testing only) makes the
//! flusher's next N periodic commit passes panic.

mod common;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{deflatefs_mounts_at, varied_text, Mount, BIN};

const FLUSHER_PANICS_ENV: &str = "DEFLATEFS_TEST_FLUSHER_PANICS";

/// Waits up to `limit` for `cond`; false if it never held.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// The flusher's first periodic commit panics. The panic is logged at ERROR with the thread's
/// name, and the periodic commits go on: data written before and after the panic, in files that
/// stay open (no fsync, no close), survives a SIGKILL of the daemon a few seconds later, which
/// only a periodic commit can have made durable.
#[test]
fn a_panicking_periodic_commit_is_logged_and_commits_go_on() {
    let mut m = Mount::unmounted(&["chunk=16k"], false);
    m.daemon_env
        .push((FLUSHER_PANICS_ENV.to_string(), "1".to_string()));
    m.mount();
    let before = varied_text(100_000, 1);
    let after = varied_text(70_000, 2);
    let mut a = File::create(m.path("before")).unwrap();
    a.write_all(&before).unwrap();

    // The first periodic commit is due 5 s after the mount.
    assert!(
        wait_for(Duration::from_secs(20), || m
            .log_text()
            .contains("injected flusher panic")),
        "no flusher panic in the log:\n{}",
        m.log_text()
    );
    let log = m.log_text();
    assert!(
        log.lines().any(|l| l.contains(" ERROR ")
            && l.contains("thread 'dfs-flusher' panicked")
            && l.contains("injected flusher panic")),
        "the panic hook's line is missing:\n{log}"
    );
    assert!(
        log.lines().any(|l| l.contains(" ERROR ")
            && l.contains("thread dfs-flusher panicked")
            && l.contains("it goes on")),
        "the flusher's own line is missing:\n{log}"
    );
    let mut b = File::create(m.path("after")).unwrap();
    b.write_all(&after).unwrap();

    // The commit cut short is retried 1 s after the panic, the next one is due 5 s later.
    std::thread::sleep(Duration::from_secs(7));
    m.kill_daemon();
    drop((a, b));
    m.remove_dead_mount();
    m.mount();
    assert!(
        std::fs::read(m.path("before")).unwrap() == before,
        "data written before the panic was not committed"
    );
    assert!(
        std::fs::read(m.path("after")).unwrap() == after,
        "data written after the panic was not committed: periodic commits stopped"
    );
}

/// A foreground daemon whose stderr systemd connected to the journal (JOURNAL_STREAM names
/// stderr's device and inode) prefixes each line with its syslog priority, `<N>`, as
/// sd-daemon(3) describes, so journald stores WARN as 4 and ERROR as 3 instead of everything at
/// the default 6.
#[test]
fn a_daemon_logging_to_the_journal_stream_gives_each_line_its_priority() {
    let m = Mount::unmounted(&[], false);
    let stderr_path = m.dir.path().join("journal-stream");
    let stderr = File::create(&stderr_path).unwrap();
    let md = stderr.metadata().unwrap();
    let mut child = Command::new(BIN)
        .args(["mount", "-f"])
        .arg(&m.src)
        .arg(&m.mnt)
        .env("JOURNAL_STREAM", format!("{}:{}", md.dev(), md.ino()))
        // A WARN line at mount and, 5 s later, ERROR lines.
        .env(FLUSHER_PANICS_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let text = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let seen = wait_for(Duration::from_secs(20), || {
        text().contains("injected flusher panic")
    });
    let _ = Command::new("umount").arg(&m.mnt).status();
    let status = child.wait().unwrap();
    if !deflatefs_mounts_at(&m.mnt).is_empty() {
        let _ = Command::new("umount").arg("-l").arg(&m.mnt).status();
    }
    let out = text();
    assert!(seen, "no flusher panic logged:\n{out}");
    assert!(status.success(), "daemon exited with {status}:\n{out}");
    let has = |prefix: &str, what: &str| {
        out.lines()
            .any(|l| l.starts_with(prefix) && l.contains(what))
    };
    assert!(has("<6>", "mounted"), "{out}");
    assert!(has("<4>", FLUSHER_PANICS_ENV), "{out}");
    assert!(has("<3>", "injected flusher panic"), "{out}");
    assert!(
        out.lines().all(|l| l.len() > 3
            && l.starts_with('<')
            && l.as_bytes()[2] == b'>'
            && (b'0'..=b'7').contains(&l.as_bytes()[1])),
        "a line without a priority prefix:\n{out}"
    );
}
