//! The power-loss recovery policy: what happens to a container found cut short at open.
//!
//! A container last changed before the machine booted may have lost, to a power cut, any write
//! after its last fdatasync: its journal tail can be torn or point at data that never reached
//! the disk. Such a file is opened in [`OpenMode::Recover`] once per mount, which checks the
//! tail and falls back to the last commit whose data is intact; on a writable mount what
//! recovery leaves out is truncated away at once, so the size a `stat` shows and the content a
//! read returns agree from the first stat on. A file changed in this boot (by its ctime, which
//! only the kernel sets) is opened strictly: a damaged one fails with EIO, logged once.
//!
//! Guarantees: recovery runs at most once per file per mount unless the file changed since or
//! still holds commits it could not cut away; its result (size, backing length and ctime) is
//! remembered so `stat` of an unopened file answers without replaying the journal again.

use std::os::fd::AsRawFd;

use super::core::DeflateFs;
use super::error::{FsError, FsResult};
use super::inode::Node;
use super::sys;
use crate::container::{Container, OpenMode};

/// What [`OpenMode::Recover`] found for a file, and the backing file it found it in.
pub(super) struct Recovered {
    len: i64,
    ctime: (i64, i64),
    size: u64,
    /// The file still holds commits recovery leaves out (it could not be truncated).
    rolled_back: bool,
}

impl Recovered {
    fn matches(&self, st: &libc::stat) -> bool {
        self.len == st.st_size && self.ctime == (st.st_ctime, st.st_ctime_nsec)
    }
}

/// When the machine booted (seconds since the epoch, from /proc/stat), or 0 if unknown.
pub(super) fn boot_time() -> i64 {
    static BOOT: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    })
}

impl DeflateFs {
    /// Whether the backing file was changed since the machine booted. Its ctime says so, not its
    /// mtime: the mtime is the user's to set (`cp -a`, `tar x`, `touch -d` date files in the past,
    /// which made every such file go through recovery at its first stat), the ctime is not.
    pub(super) fn changed_this_boot(&self, st: &libc::stat) -> bool {
        st.st_ctime >= self.booted_at
    }

    /// Testing only: takes `secs` (seconds since the epoch) for the time the machine booted, so
    /// that files changed before it go through recovery as after a power cut. A test cannot
    /// date a file's ctime in the past, but it can date the boot after the file
    /// (tests/core_ops.rs); the daemon never calls this.
    #[doc(hidden)]
    pub fn assume_booted_at(&mut self, secs: i64) {
        self.booted_at = secs;
    }

    /// Opens the container of `node`. A file last written before the machine booted may have
    /// lost unsynced writes to a power cut anywhere after its last fdatasync: it is opened in
    /// [`OpenMode::Recover`] (its journal tail checked) once per mount, and on a writable mount
    /// what recovery leaves out is truncated away at once, so its size and content agree from
    /// the first stat on (the truncation dates the file in this boot: later opens are strict).
    pub(super) fn open_container(&self, node: &Node) -> FsResult<Container> {
        let access = if self.opts.read_only {
            libc::O_RDONLY
        } else {
            libc::O_RDWR
        };
        let file = match self.reopen(node, access) {
            Err(e)
                if access == libc::O_RDWR
                    && matches!(e.errno, libc::EACCES | libc::EROFS | libc::EPERM) =>
            {
                self.reopen(node, libc::O_RDONLY)?
            }
            other => other?,
        };
        self.open_container_with(node, file)
    }

    /// [`Self::open_container`] through `file`, a descriptor of the node opened for reading
    /// (and for writing unless the mount or the file forbids it).
    pub(super) fn open_container_with(
        &self,
        node: &Node,
        file: std::fs::File,
    ) -> FsResult<Container> {
        let label = Self::label(node);
        let st = sys::fstat(file.as_raw_fd())?;
        let mode = if self.changed_this_boot(&st) {
            OpenMode::Strict
        } else {
            match self.recovered.lock().get(&node.id) {
                Some(r) if r.matches(&st) && !r.rolled_back => OpenMode::Strict,
                _ => OpenMode::Recover,
            }
        };
        let damaged = |e: crate::container::ContainerError| {
            let e = FsError::from(e);
            self.ctx.log_damage(node.id, || {
                format!("{label}: cannot open container (run deflatefs fsck): {e}")
            });
            e.logged()
        };
        let mut c = Container::open_with(file, mode).map_err(damaged)?;
        if mode == OpenMode::Recover {
            let mut rolled_back = false;
            if let Some(note) = c.recovery_note() {
                tracing::warn!("{label}: {note}");
                rolled_back = true;
                match c.drop_torn_tail() {
                    Ok(true) => {
                        rolled_back = false;
                        tracing::warn!("{label}: truncated to the recovered commit");
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!("{label}: cannot truncate to the recovered commit: {e}")
                    }
                }
            }
            let st = sys::fstat(c.file().as_raw_fd())?;
            self.recovered.lock().insert(
                node.id,
                Recovered {
                    len: st.st_size,
                    ctime: (st.st_ctime, st.st_ctime_nsec),
                    size: c.size(),
                    rolled_back,
                },
            );
        }
        Ok(c)
    }

    /// The logical size recovery found for `node` in this mount, if the file is unchanged since.
    pub(super) fn recovered_size(&self, node: &Node, st: &libc::stat) -> Option<u64> {
        self.recovered
            .lock()
            .get(&node.id)
            .filter(|r| r.matches(st))
            .map(|r| r.size)
    }
}
