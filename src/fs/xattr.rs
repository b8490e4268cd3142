//! Extended attributes: the backing file's own, and the ones deflatefs serves itself.
//!
//! Guarantees:
//! - `user.deflatefs.blake3`, `user.deflatefs.sha256`, `user.deflatefs.info` (and with
//!   `-o shatag` the cshatag pair) are computed from the file's logical content
//!   (src/fs/digests.rs), never stored as xattrs of the backing file: readable by name on
//!   regular files (ENODATA on anything else), absent from listxattr, and refused with EPERM by
//!   setxattr and removexattr, as is every other `user.deflatefs.*` name;
//! - `user.deflatefs.engine` on the mount's root is the engine report (see
//!   [`DeflateFs::engine_report`]), for the mount's owner and root only (EACCES otherwise);
//! - a `user.*` attribute is data of the file, whatever the mount's permission mode: reading
//!   one needs read permission on the file, changing one needs write permission, and in a
//!   sticky directory only the owner (or root) changes them, as on ext4;
//! - every other name is passed to the backing inode unchanged.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::caller::{Caller, MAY_READ, MAY_WRITE};
use super::core::DeflateFs;
use super::digests;
use super::error::{errno, FsResult};
use super::inode::{Node, NodeKind, ROOT_ID};
use super::sys;

/// Read-only xattr on the mount's root describing the compression engine.
const ENGINE_XATTR: &str = "user.deflatefs.engine";

impl DeflateFs {
    /// getxattr for `caller`. Its pid lets a computed value answer the same process's size
    /// query and then its request for the value with one computation.
    ///
    /// A `user.*` attribute, served (digests, info, shatag) or stored, is data of the file: only
    /// a caller who may read the file gets it, as on ext4 (EACCES otherwise). The kernel makes
    /// the same check first on a `default_permissions` mount; this one holds on every mount.
    /// The engine report on the root is for the mount's owner and root only.
    pub fn getxattr(&self, id: u64, name: &OsStr, size: u32, caller: Caller) -> FsResult<Vec<u8>> {
        if id == ROOT_ID && name == ENGINE_XATTR {
            if caller.uid != 0 && caller.uid != self.owner_uid {
                return errno(libc::EACCES);
            }
            return Ok(self.engine_report().into_bytes());
        }
        let node = self.node(id)?;
        if name.as_bytes().starts_with(b"user.") {
            caller.check(&sys::fstat(self.fd(&node)?.raw())?, MAY_READ)?;
        }
        if let Some(which) = digests::served(name, self.opts.shatag)? {
            return self.served_xattr(&node, which, size, caller.pid);
        }
        let cname = sys::cstr(name)?;
        if size == 0 {
            let n = sys::getxattr_len(self.fd(&node)?.raw(), &cname)?;
            return Ok(vec![0; n]);
        }
        sys::getxattr_fd(self.fd(&node)?.raw(), &cname, size as usize)
    }

    /// An attribute deflatefs computes (src/fs/digests.rs); regular files only.
    fn served_xattr(
        &self,
        node: &Arc<Node>,
        which: digests::Served,
        size: u32,
        pid: u32,
    ) -> FsResult<Vec<u8>> {
        if node.kind != NodeKind::Regular {
            return errno(libc::ENODATA);
        }
        let st = self.stat_node(node)?;
        if which == digests::Served::ShatagTs {
            return Ok(digests::shatag_ts(st.st_mtime, st.st_mtime_nsec).into_bytes());
        }
        let token = |st: &libc::stat| -> FsResult<digests::Token> {
            let backing = sys::fstat(self.fd(node)?.raw())?;
            let open = node.open.lock().file.clone();
            Ok(digests::token(st, &backing, open.as_deref()))
        };
        if size > 0 {
            if let Some(v) = self.probes.take(pid, node.id, which, &token(&st)?) {
                return Ok(v);
            }
        }
        let backing = sys::fstat(self.fd(node)?.raw())?;
        let open = self.open_state(node)?;
        let r = digests::value(&open, which, &st, &backing, &self.plain_digests);
        // Keep the state (its index, chaining values, SHA-256) for the requests that usually
        // follow; the background flusher gives the use back.
        if !self.lingering.hold(node) {
            self.put_state(node);
        }
        let value = r?;
        if size == 0 {
            // Computing may have recorded a digest (a commit): take the token as it is now.
            let st = self.stat_node(node)?;
            self.probes
                .put(pid, node.id, which, token(&st)?, value.clone());
        }
        Ok(value)
    }

    pub fn setxattr(
        &self,
        id: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        caller: Caller,
    ) -> FsResult<()> {
        if digests::is_reserved(name.as_bytes(), self.opts.shatag) {
            return errno(libc::EPERM);
        }
        self.check_writable()?;
        let node = self.node(id)?;
        self.check_user_xattr_write(&node, name, caller)?;
        sys::setxattr_fd(self.fd(&node)?.raw(), &sys::cstr(name)?, value, flags)
    }

    /// Who may change a `user.*` attribute, as on ext4: a caller who may write the file, and in
    /// a sticky directory only its owner (or root). The kernel checks this itself on a
    /// `default_permissions` mount; the daemon holds it on every mount.
    fn check_user_xattr_write(&self, node: &Node, name: &OsStr, caller: Caller) -> FsResult<()> {
        if !name.as_bytes().starts_with(b"user.") {
            return Ok(());
        }
        let st = sys::fstat(self.fd(node)?.raw())?;
        let sticky_dir =
            st.st_mode & libc::S_IFMT == libc::S_IFDIR && st.st_mode & libc::S_ISVTX != 0;
        if sticky_dir && caller.uid != 0 && caller.uid != st.st_uid {
            return errno(libc::EPERM);
        }
        caller.check(&st, MAY_WRITE)
    }

    /// The backing file's attribute names without the ones deflatefs reserves (the full list
    /// is read to filter it; the adapter answers a size query with its length).
    pub fn listxattr(&self, id: u64, _size: u32) -> FsResult<Vec<u8>> {
        let node = self.node(id)?;
        let list = loop {
            let n = sys::listxattr_fd(self.fd(&node)?.raw(), 0)?.len();
            if n == 0 {
                break Vec::new();
            }
            match sys::listxattr_fd(self.fd(&node)?.raw(), n) {
                Err(e) if e.errno == libc::ERANGE => continue, // grew meanwhile
                r => break r?,
            }
        };
        Ok(digests::filter_listing(&list, self.opts.shatag))
    }

    pub fn removexattr(&self, id: u64, name: &OsStr, caller: Caller) -> FsResult<()> {
        if digests::is_reserved(name.as_bytes(), self.opts.shatag) {
            return errno(libc::EPERM);
        }
        self.check_writable()?;
        let node = self.node(id)?;
        self.check_user_xattr_write(&node, name, caller)?;
        sys::removexattr_fd(self.fd(&node)?.raw(), &sys::cstr(name)?)
    }

    /// The value of `user.deflatefs.engine` on the mount's root: one `key=value` per line with the
    /// backend, queues, safeguards, job and fault counters, and the buffer pools' high-water marks.
    pub fn engine_report(&self) -> String {
        let e = &self.ctx.engine;
        let st = e.stats();
        let (pool, dirty) = (&self.ctx.job_pool, &self.ctx.dirty_pool);
        let fds = self.inodes.fd_counts();
        format!(
            "backend={}\nqueues={}\nverify={}\nfallback={}\nbackend_disabled={}\nfaults={}\n\
             verify_failures={}\nsoftware_jobs={}\njobs={}\njobs_failed={}\nbytes_in={}\n\
             bytes_out={}\npool_capacity={}\npool_high_water={}\ndirty_capacity={}\n\
             dirty_high_water={}\nstored_reads_in_place={}\ninodes={}\ninode_fds={}\n\
             inode_fds_bound={}\ninode_fds_closed={}\ninode_fds_reopened={}\n\
             inode_reopen={}\ncopy_requests={}\nmembers_copied={}\ncopied_as_members={}\n\
             copied_as_bytes={}\ncompactions={}\ncompactions_queued={}\n",
            st.backend,
            st.queues.len(),
            if e.verifies() { "on" } else { "off" },
            if e.falls_back() { "sw" } else { "none" },
            st.backend_disabled,
            st.faults(),
            st.verify_failures(),
            st.software_jobs(),
            st.jobs_completed(),
            st.jobs_failed(),
            st.bytes_in(),
            st.bytes_out(),
            pool.capacity(),
            pool.high_water(),
            dirty.capacity(),
            dirty.high_water(),
            self.ctx
                .stored_in_place
                .load(std::sync::atomic::Ordering::Relaxed),
            self.inodes.len(),
            fds.0,
            self.inodes.fd_bound(),
            fds.1,
            fds.2,
            if self.reopens_by_handle() {
                "handle"
            } else {
                "name"
            },
            self.copies.requests.load(Ordering::Relaxed),
            self.copies.members.load(Ordering::Relaxed),
            self.copies.member_bytes.load(Ordering::Relaxed),
            self.copies.byte_copied.load(Ordering::Relaxed),
            self.compactions.load(Ordering::Relaxed),
            self.compactions_queued.load(Ordering::Relaxed),
        ) + &self.live_report()
    }
}
