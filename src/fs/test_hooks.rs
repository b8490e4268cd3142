//! Delays that tests ask for through the daemon's environment, to hold the daemon in one step
//! long enough to show what waits for it and what does not. Unset, they cost one cached lookup.

use std::sync::OnceLock;
use std::time::Duration;

/// `DEFLATEFS_TEST_COMPACTION_DELAY_MS=N`: every compaction waits N ms before it starts, so a
/// test can tell whether a close waited for it (tests/mount_compaction.rs).
pub const COMPACTION_DELAY_ENV: &str = "DEFLATEFS_TEST_COMPACTION_DELAY_MS";

/// `DEFLATEFS_TEST_COMMIT_DELAY_MS=N`: every commit of a flush or fsync waits N ms while it
/// holds the container, as a slow commit write would, so a test can show that `stat` does
/// not wait for commits (tests/mount_waits.rs).
pub const COMMIT_DELAY_ENV: &str = "DEFLATEFS_TEST_COMMIT_DELAY_MS";

/// `DEFLATEFS_TEST_MEMBER_WRITE_DELAY_MS=N`: every landed member's write to the backing file
/// takes N ms longer, as on a busy disk, so a test can show that readers do not wait for it
/// (tests/mount_waits.rs).
pub const MEMBER_WRITE_DELAY_ENV: &str = "DEFLATEFS_TEST_MEMBER_WRITE_DELAY_MS";

/// The delay the environment sets under `env`, read once per hook.
fn delay(cell: &'static OnceLock<Option<Duration>>, env: &str) -> Option<Duration> {
    *cell.get_or_init(|| {
        let ms: u64 = std::env::var(env).ok()?.parse().ok()?;
        Some(Duration::from_millis(ms))
    })
}

/// Sleeps for [`COMPACTION_DELAY_ENV`]'s delay, if set.
pub fn compaction_delay() {
    static CELL: OnceLock<Option<Duration>> = OnceLock::new();
    if let Some(d) = delay(&CELL, COMPACTION_DELAY_ENV) {
        std::thread::sleep(d);
    }
}

/// Sleeps for [`COMMIT_DELAY_ENV`]'s delay, if set.
pub fn commit_delay() {
    static CELL: OnceLock<Option<Duration>> = OnceLock::new();
    if let Some(d) = delay(&CELL, COMMIT_DELAY_ENV) {
        std::thread::sleep(d);
    }
}

/// Sleeps for [`MEMBER_WRITE_DELAY_ENV`]'s delay, if set.
pub fn member_write_delay() {
    static CELL: OnceLock<Option<Duration>> = OnceLock::new();
    if let Some(d) = delay(&CELL, MEMBER_WRITE_DELAY_ENV) {
        std::thread::sleep(d);
    }
}
