//! Power cuts (issue "Nothing lost"): deflatefs runs on top of a test-only backing filesystem
//! (`tests/powercut_common`) that, at a random moment, keeps only what was fsync'd/fdatasync'd
//! plus an arbitrary part of the rest: any subset of the 4 KiB pages changed since a file's last
//! sync, any length in between, any prefix of the directory operations since the last fsync of
//! a directory. The daemon is then killed and the surviving image mounted again (its files dated
//! before the "boot", so deflatefs checks their journal tails: `OpenMode::Recover`).
//!
//! After every cut, through a fresh mount:
//! - the names are those of the model after some prefix of the directory operations not yet made
//!   durable by an fsync of the directory;
//! - a file that was ever fsync'd reads as one of its versions since its last fsync/fdatasync
//!   (nothing fsync'd is lost), and never with EIO;
//! - a file never fsync'd reads as one of its versions;
//! - a file whose creation was cut short before its header was on disk is no container (an
//!   empty file, or zeros): like any plain file it must read exactly as the backing filesystem
//!   kept it (counted; such a file stays plain, as every empty file in a source does).
//!
//! CI runs 10 cuts; `DEFLATEFS_POWERCUT_CYCLES` sets more.

mod common;
mod crash_common;
mod powercut_common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::Mount;
use crash_common::{apply_meta, judge, read_dir_files, run_workload, Model, Rng, Stats};
use powercut_common::{Image, LayerMount};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Checks what a mount of the image shows against the model of the cycle before the cut.
fn verify(
    model: &Model,
    image: &Image,
    found: &BTreeMap<String, std::io::Result<Vec<u8>>>,
    plain: &mut u64,
) -> Result<(), Vec<String>> {
    let mut ops = model.meta_since_dirsync.clone();
    ops.extend(model.inflight_meta.clone());
    let mut candidates = Vec::new();
    let mut names = model.names_at_dirsync.clone();
    candidates.push(names.clone());
    for op in &ops {
        apply_meta(&mut names, op);
        candidates.push(names.clone());
    }
    let found_names: Vec<&String> = found.keys().collect();
    let mut first_failure = None;
    let matching: Vec<_> = candidates
        .iter()
        .filter(|c| c.keys().collect::<Vec<_>>() == found_names)
        .collect();
    if matching.is_empty() {
        return Err(vec![format!(
            "names {found_names:?} are not those of any prefix of the directory operations: {:?}",
            candidates
                .iter()
                .map(|c| c.keys().collect::<Vec<_>>())
                .collect::<Vec<_>>()
        )]);
    }
    for cand in matching {
        let mut fails = Vec::new();
        let mut plain_files = 0;
        for (name, id) in cand {
            let fm = &model.files[*id];
            match &found[name] {
                Err(e) => fails.push(format!("{name}: read failed: {e}")),
                Ok(data) => {
                    let backing = image.files.get(&PathBuf::from(name));
                    if backing == Some(data) {
                        // Not a container (an empty file, or one whose header never reached
                        // the disk): served byte for byte, as the backing filesystem kept it.
                        plain_files += 1;
                        continue;
                    }
                    let allowed = if fm.ever_synced {
                        &fm.since_sync
                    } else {
                        &fm.all
                    };
                    if let Err(why) = judge(data, allowed, &fm.all) {
                        fails.push(format!(
                            "{name} ({}): {why}",
                            if fm.ever_synced {
                                "fsync'd"
                            } else {
                                "never fsync'd"
                            }
                        ));
                    }
                }
            }
        }
        if fails.is_empty() {
            *plain += plain_files;
            return Ok(());
        }
        first_failure.get_or_insert(fails);
    }
    Err(first_failure.unwrap())
}

#[test]
fn power_cuts_keep_everything_fsynced_and_nothing_reads_as_garbage() {
    let cycles = env_u64("DEFLATEFS_POWERCUT_CYCLES", 10);
    let seed = env_u64("DEFLATEFS_POWERCUT_SEED", 1);
    let mut m = Mount::unmounted(&["chunk=16k", "queues=2", "dirty=8m"], false);
    let mut rng = Rng::new(seed);
    let mut model = Model::default();
    let mut image = Image::default();
    let mut failures: Vec<String> = Vec::new();
    let mut totals = Stats::default();
    let (mut files_checked, mut plain, mut meta_kept, mut meta_pending) = (0, 0, 0, 0);
    let started = Instant::now();
    let verbose = std::env::var_os("DEFLATEFS_CRASH_VERBOSE").is_some();
    for cycle in 0..=cycles {
        if verbose {
            eprintln!("[{:.1?}] cycle {cycle}: mount", started.elapsed());
        }
        let layer = LayerMount::mount(&m.src, &image);
        m.mount();
        let found = read_dir_files(&m.mnt);
        if cycle > 0 {
            files_checked += found.len() as u64;
            if let Err(f) = verify(&model, &image, &found, &mut plain) {
                failures.extend(f.into_iter().map(|x| format!("cut {cycle}: {x}")));
                if let Ok(dir) = std::env::var("DEFLATEFS_POWERCUT_DUMP") {
                    let _ = std::fs::remove_dir_all(&dir);
                    for (p, b) in &image.files {
                        let _ = std::fs::create_dir_all(&dir);
                        let _ = std::fs::write(PathBuf::from(&dir).join(p), b);
                        let log = image.logs.get(p).map(|l| l.join("\n")).unwrap_or_default();
                        let _ =
                            std::fs::write(PathBuf::from(&dir).join(p).with_extension("log"), log);
                    }
                }
                m.unmount();
                layer.unmount();
                break;
            }
        }
        let contents = found
            .into_iter()
            .filter_map(|(n, r)| r.ok().map(|v| (n, v)))
            .collect();
        model.restart(&contents);
        if cycle == cycles {
            m.unmount();
            layer.unmount();
            break;
        }
        let pid = m.daemon_pid().expect("mounted") as i32;
        let delay = Duration::from_millis(10 + rng.below(500));
        let cut_seed = rng.next();
        let cutter = layer.cutter();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            let img = cutter.cut(cut_seed);
            unsafe { libc::kill(pid, libc::SIGKILL) };
            img
        });
        let (err, stats) = run_workload(&m.mnt, &mut model, &mut rng, u64::MAX);
        if verbose {
            eprintln!(
                "[{:.1?}] cycle {cycle}: {} ops, stopped by {err:?}",
                started.elapsed(),
                stats.ops
            );
        }
        totals.add(&stats);
        image = killer.join().unwrap();
        meta_kept += image.meta_kept;
        meta_pending += image.meta_pending;
        m.kill_daemon();
        m.remove_dead_mount();
        layer.unmount();
    }
    let log = m.log_text();
    let recovered = log.matches("recovered to commit").count();
    eprintln!(
        "crash_powercut: {cycles} power cuts (seed {seed}) in {:.1?}: {} operations ({} writes, \
         {} fsyncs, {} closes, {} renames, {} creates, {} dir fsyncs); {files_checked} files \
         checked; {recovered} opens rolled back to an older commit; {meta_kept} of \
         {meta_pending} pending directory operations kept; {plain} files found plain (their \
         creation cut short before the header was on disk)",
        started.elapsed(),
        totals.ops,
        totals.writes,
        totals.fsyncs,
        totals.closes,
        totals.renames,
        totals.creates,
        totals.dirsyncs
    );
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}\n--- daemon log (tail) ---\n{}",
        failures.len(),
        failures.join("\n"),
        log.lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
}
