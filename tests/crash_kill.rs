//! Crash consistency under SIGKILL of the daemon (issue "Nothing lost").
//!
//! A workload of writes, overwrites, appends, truncates, hole punches, renames, creates, unlinks, fsyncs and
//! closes runs on a mount while another thread kills the daemon with SIGKILL at a random moment.
//! The dead mount is removed, the backing directory mounted again and checked against the model
//! (`tests/crash_common`):
//! - every file holds one of the versions it had since its last fsync, fdatasync or successful
//!   close (the kernel keeps what reached the backing files, so a close commits without an
//!   fdatasync), or the version the operation in flight would have made;
//! - so no acknowledged byte is lost, no chunk is garbage or a mix of versions, and the names are
//!   exactly those of the model (the directory operation in flight either happened or not).
//!
//! CI runs 20 cycles; `DEFLATEFS_CRASH_CYCLES=250` is the long mode (`DEFLATEFS_CRASH_SEED`
//! picks another sequence).

mod common;
mod crash_common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Mount;
use crash_common::{apply_meta, judge, read_dir_files, run_workload, Model, Rng, Stats};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_byte() {
    let cycles = env_u64("DEFLATEFS_CRASH_CYCLES", 20);
    let seed = env_u64("DEFLATEFS_CRASH_SEED", 1);
    let mut m = Mount::with_opts(&["chunk=16k", "queues=2", "dirty=8m"]);
    let mut model = Model::default();
    let mut rng = Rng::new(seed);
    let mut failures: Vec<String> = Vec::new();
    let mut totals = Stats::default();
    let mut files_checked = 0u64;
    let mut inflight_seen = 0u64;
    let started = Instant::now();
    for cycle in 0..cycles {
        let pid = m.daemon_pid().expect("mounted") as i32;
        let delay = Duration::from_millis(5 + rng.below(600));
        let fired = Arc::new(AtomicBool::new(false));
        let killer = {
            let fired = fired.clone();
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                fired.store(true, Ordering::SeqCst);
                unsafe { libc::kill(pid, libc::SIGKILL) };
            })
        };
        let (err, stats) = run_workload(&m.mnt, &mut model, &mut rng, u64::MAX);
        let killed_first = fired.load(Ordering::SeqCst);
        killer.join().unwrap();
        totals.add(&stats);
        if let (Some(e), false) = (&err, killed_first) {
            failures.push(format!(
                "cycle {cycle}: an operation failed before the crash: {e}"
            ));
        }
        m.kill_daemon();
        m.remove_dead_mount();
        m.mount();

        // Check what the remount shows against the model.
        let found = read_dir_files(&m.mnt);
        let mut expected = vec![model.names.clone()];
        if let Some(op) = &model.inflight_meta {
            inflight_seen += 1;
            let mut alt = model.names.clone();
            apply_meta(&mut alt, op);
            expected.push(alt);
        }
        let found_names: Vec<&String> = found.keys().collect();
        let Some(names) = expected
            .iter()
            .find(|n| n.keys().collect::<Vec<_>>() == found_names)
        else {
            failures.push(format!(
                "cycle {cycle}: names {found_names:?}, expected {:?}",
                expected
                    .iter()
                    .map(|n| n.keys().collect::<Vec<_>>())
                    .collect::<Vec<_>>()
            ));
            break;
        };
        let mut contents = BTreeMap::new();
        for (name, id) in names {
            files_checked += 1;
            let fm = &model.files[*id];
            match &found[name] {
                Err(e) => failures.push(format!("cycle {cycle}: reading {name}: {e}")),
                Ok(data) => {
                    if let Err(why) = judge(data, &fm.since_ack, &fm.all) {
                        failures.push(format!("cycle {cycle}: {name}: {why}"));
                    }
                    contents.insert(name.clone(), data.clone());
                }
            }
        }
        if !failures.is_empty() {
            break;
        }
        model.restart(&contents);
    }
    let log = m.log_text();
    drop(m);
    eprintln!(
        "crash_kill: {cycles} SIGKILL cycles (seed {seed}) in {:.1?}: {} operations ({} writes, \
         {} truncates, {} punches, {} fsyncs, {} closes, {} renames, {} creates, {} unlinks, {} dir fsyncs), \
         {files_checked} files checked, {inflight_seen} directory operations in flight at the kill, \
         {} compactions",
        started.elapsed(),
        totals.ops,
        totals.writes,
        totals.truncates,
        totals.punches,
        totals.fsyncs,
        totals.closes,
        totals.renames,
        totals.creates,
        totals.unlinks,
        totals.dirsyncs,
        log.matches(": compacted").count()
    );
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}\n--- daemon log (tail) ---\n{}",
        failures.len(),
        failures.join("\n"),
        log.lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
}
