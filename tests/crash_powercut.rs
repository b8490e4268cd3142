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
//! - a file whose creation was cut short before its header was on disk is no container: like
//!   any plain file it must read exactly as the backing filesystem kept it (counted; such a file
//!   stays plain, as every empty file in a source does). It was never fsync'd, and it is empty,
//!   zeros, or zeros followed by the raw members that survived, which `deflatefs fsck` must
//!   recognise as a container whose header is lost.
//!
//! CI runs 10 cuts; `DEFLATEFS_POWERCUT_CYCLES` sets more.

mod common;
mod crash_common;
mod powercut_common;

use std::collections::{BTreeMap, BTreeSet};
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
    plain_before: &BTreeSet<usize>,
    plain: &mut u64,
    lost_headers: &mut (u64, u64),
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
        let (mut lost_found, mut lost_unfound) = (0, 0);
        for (name, id) in cand {
            let fm = &model.files[*id];
            match &found[name] {
                Err(e) => fails.push(format!("{name}: read failed: {e}")),
                Ok(data) => {
                    let backing = image.files.get(&PathBuf::from(name));
                    if backing == Some(data) {
                        // Not a container: served byte for byte, as the backing filesystem kept
                        // it. Either it was plain already when the cycle began (its creation was
                        // cut short by an earlier cut; such a file stays plain), or its creation
                        // was cut short now, before the header was on disk: then it was never
                        // fsync'd (an fsync makes the header durable), and it is empty or zeros,
                        // or, its first blocks lost and later ones kept, zeros followed by the
                        // raw members that survived. deflatefs cannot tell that last case from a
                        // plain file without syncing the header of every new file; it is counted,
                        // and when the members left identify it, `deflatefs fsck` must find it.
                        let zeros = data.iter().all(|&b| b == 0);
                        if plain_before.contains(id) || (!fm.ever_synced && zeros) {
                        } else if fm.ever_synced {
                            fails.push(format!(
                                "{name} (fsync'd, or a container when the cycle began): served \
                                 as a plain file of {} bytes (first non-zero byte at {:?})",
                                data.len(),
                                data.iter().position(|&b| b != 0)
                            ));
                        } else if deflatefs::fsck::lost_header(data) {
                            // Never fsync'd, its header page lost and no member left where the
                            // mount looks (docs/FORMAT.md, "Interrupted creation"): counted.
                            lost_found += 1;
                        } else {
                            lost_unfound += 1;
                        }
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
            lost_headers.0 += lost_found;
            lost_headers.1 += lost_unfound;
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
    let mut plain_ids: BTreeSet<usize> = BTreeSet::new();
    let mut lost_headers = (0u64, 0u64);
    for cycle in 0..=cycles {
        if verbose {
            eprintln!("[{:.1?}] cycle {cycle}: mount", started.elapsed());
        }
        let layer = LayerMount::mount(&m.src, &image);
        m.mount();
        let found = read_dir_files(&m.mnt);
        if cycle > 0 {
            files_checked += found.len() as u64;
            if let Err(f) = verify(
                &model,
                &image,
                &found,
                &plain_ids,
                &mut plain,
                &mut lost_headers,
            ) {
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
        // The files served as plain files (byte for byte what the image holds) as this cycle
        // begins: they stay plain.
        plain_ids = model
            .names
            .iter()
            .filter(|(n, _)| image.files.get(&PathBuf::from(n.as_str())) == contents.get(*n))
            .map(|(_, id)| *id)
            .collect();
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
         creation cut short before the header was on disk; of them, never fsync'd and their \
         first blocks lost while later ones were kept: {} found by deflatefs fsck, {} not)",
        started.elapsed(),
        totals.ops,
        totals.writes,
        totals.fsyncs,
        totals.closes,
        totals.renames,
        totals.creates,
        totals.dirsyncs,
        lost_headers.0,
        lost_headers.1
    );
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}\n--- daemon log (tail) ---\n{}",
        failures.len(),
        failures.join("\n"),
        log.lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
}

/// Seeds 7 and 8 through a mount: a file last written before the boot, marked as a container,
/// whose first page holds the header and a prefix of the first checkpoint followed by zeros,
/// and whose later pages hold complete delta commits chained to that lost checkpoint (a
/// re-creation in place never fsync'd, cut). Recovery makes it an interrupted creation: it
/// stats and reads as empty at every open (an earlier version read EIO at the second open,
/// which was strict), and writing it starts it anew.
#[test]
fn a_file_whose_first_checkpoint_a_cut_lost_reads_as_empty_at_every_open() {
    use deflatefs::container::{build_stored_member, Container};
    let scratch = std::env::temp_dir().join(format!("dfs-lost-ckpt-{}", std::process::id()));
    let mut bytes = {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&scratch)
            .unwrap();
        let mut c = Container::create(f, 14).unwrap();
        for i in 0..3u64 {
            let (m, e) = build_stored_member(i * 16384, true, &[b'a' + i as u8; 9000]);
            c.append_member(&m, e).unwrap();
            c.set_size(i * 16384 + 9000);
            c.commit().unwrap();
        }
        drop(c);
        let b = std::fs::read(&scratch).unwrap();
        std::fs::remove_file(&scratch).unwrap();
        b
    };
    bytes[98..4096].fill(0);
    let mut image = Image::default();
    image.files.insert(PathBuf::from("f"), bytes);
    image.xattrs.insert(
        PathBuf::from("f"),
        BTreeMap::from([("user.deflatefs.container".into(), b"1".to_vec())]),
    );
    let mut m = Mount::unmounted(&["chunk=16k"], false);
    let _layer = LayerMount::mount(&m.src, &image);
    m.mount();
    let p = m.path("f");
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
    for open in 0..3 {
        let got = std::fs::read(&p).unwrap_or_else(|e| panic!("open {open}: {e}"));
        assert!(got.is_empty(), "open {open}: {} bytes", got.len());
    }
    std::fs::write(&p, b"new content").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"new content");
    m.unmount();
    m.mount();
    assert_eq!(std::fs::read(&p).unwrap(), b"new content");
    m.unmount();
}
