//! Background write-back: the flusher thread, and the flush of every open file at unmount.
//!
//! Guarantees:
//! - every 50 ms the flusher relieves dirty-memory pressure (when more than half of the dirty
//!   pool is in use) and gives back open states kept after serving an attribute; every 5 s it
//!   commits what writers left uncommitted, like ext4's commit interval;
//! - open files due for compaction are compacted within a second of crossing the threshold, or
//!   at the next pass after an fsync that left one due (see `compaction`);
//! - a panic never stops periodic commits silently: it is caught per file and per pass, logged
//!   at ERROR, and the flusher goes on; a file whose own write-back or compaction panicked fails
//!   every later fsync with EIO (until it is opened afresh), since data may have been lost;
//! - the thread holds the filesystem only weakly: it ends at shutdown or when the filesystem
//!   is dropped, and never keeps it alive;
//! - [`DeflateFs::flush_all`] (unmount, SIGTERM) writes back and commits every open file and
//!   stops further background compaction.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::core::DeflateFs;
use super::error::FsError;
use super::file::OpenFile;
use super::inode::Node;

impl DeflateFs {
    /// Writes back and commits every open file (unmount, SIGTERM). Errors are logged.
    pub fn flush_all(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        // Compactions handed over by closes finish first (each holds its file's state open).
        self.compactor.wait_idle();
        let mut files: Vec<Arc<OpenFile>> = self.inodes.open_files();
        files.extend(self.handles.lock().values().filter_map(|h| h.file.clone()));
        for f in files {
            if let Err(e) = f.flush() {
                tracing::error!("flush at unmount failed: {e}");
            }
        }
    }

    /// One pass of the background flusher: relieve dirty-memory pressure and commit files that
    /// have had uncommitted data for a while.
    pub fn background_pass(&self, commit: bool) {
        for node in self.lingering.expired() {
            self.put_state(&node);
        }
        let files: Vec<(Arc<Node>, Arc<OpenFile>)> = self
            .handles
            .lock()
            .values()
            .filter_map(|h| Some((h.node.clone(), h.file.clone()?)))
            .collect();
        let pool = &self.ctx.dirty_pool;
        let pressure = pool.in_use() * 2 > pool.capacity();
        for (node, f) in files {
            // One file's panic must not cost the other files their commit.
            let pass = crate::panics::catch(|| {
                if pressure {
                    f.relieve_pressure();
                }
                if commit {
                    if let OpenFile::Container(c) = f.as_ref() {
                        c.try_periodic_commit();
                    }
                }
            });
            if let Err(msg) = pass {
                self.file_panicked(&node, &f, "write-back", &msg);
            }
        }
    }

    /// After a panic in the background write-back or compaction of `file`: the unwind may have
    /// dropped data that was on its way to the backing file, or left the open state writing to a
    /// container that a compaction replaced, so nothing may claim this file durable any more.
    /// Every later fsync of it fails with EIO (until it is opened afresh); the other files go on.
    pub(super) fn file_panicked(&self, node: &Node, file: &OpenFile, what: &str, msg: &str) {
        tracing::error!(
            "{}: {what} panicked on thread {}: {msg}; every later fsync of this file fails with \
             EIO",
            node.label(),
            crate::panics::thread_name()
        );
        if let OpenFile::Container(c) = file {
            c.fail_syncs(FsError::new(libc::EIO));
        }
    }

    /// Runs the background flusher until shutdown.
    ///
    /// A panic in a pass is caught and logged at ERROR, and the flusher goes on: periodic commits
    /// never stop silently. A file whose own write-back panicked is marked failed
    /// ([`DeflateFs::background_pass`]); a pass that panics outside any one file (the loop's own work)
    /// has nothing half-done to undo, so the next one simply runs. A commit that a panic cut
    /// short is retried at the next pass rather than 5 s later, and after a panic the flusher
    /// pauses a second, so a pass that panics every time logs once a second, not 20 times.
    pub fn spawn_flusher(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let _ = self.this.set(weak.clone());
        let mut injected = injected_flusher_panics();
        std::thread::Builder::new()
            .name("dfs-flusher".into())
            .spawn(move || {
                let mut tick = 0u64;
                let mut commit_due = false;
                loop {
                    std::thread::sleep(Duration::from_millis(50));
                    let Some(fs) = weak.upgrade() else { return };
                    if fs.shutting_down.load(Ordering::SeqCst) {
                        return;
                    }
                    tick += 1;
                    // Commit every 5 s what writers left uncommitted, like ext4's commit interval.
                    let commit = commit_due || tick.is_multiple_of(100);
                    let pass = crate::panics::catch(|| {
                        if commit && injected > 0 {
                            injected -= 1;
                            panic!("injected flusher panic ({FLUSHER_PANICS_ENV})");
                        }
                        fs.background_pass(commit);
                        // Files kept open are compacted within a second of crossing the threshold.
                        if tick.is_multiple_of(20)
                            || fs.compaction_due.swap(false, Ordering::Relaxed)
                        {
                            fs.compact_open_files();
                            fs.inodes.prune_retired();
                        }
                    });
                    commit_due = pass.is_err() && commit;
                    if let Err(msg) = pass {
                        tracing::error!(
                            "thread dfs-flusher panicked: {msg}; it goes on{}",
                            if commit_due {
                                ", retrying the periodic commit in 1 s"
                            } else {
                                ""
                            }
                        );
                        drop(fs);
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            })
            .expect("spawn flusher thread");
    }
}

/// Testing only: the environment variable (read at mount) whose value N makes the flusher's next N
/// periodic commit passes panic, to show that a panic neither stops periodic commits nor goes
/// unlogged (tests/mount_robustness.rs).
pub const FLUSHER_PANICS_ENV: &str = "DEFLATEFS_TEST_FLUSHER_PANICS";

fn injected_flusher_panics() -> u32 {
    let n = std::env::var(FLUSHER_PANICS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if n > 0 {
        tracing::warn!("{FLUSHER_PANICS_ENV}={n}: the next {n} periodic commits panic (testing)");
    }
    n
}
