//! The thin adapter from fuser's callbacks to the filesystem core.
//!
//! Every handler runs the core call inside `catch_unwind`: a panic is logged and answered with EIO,
//! so one bad request can never end the session (fuser 0.18 would otherwise take the whole mount
//! down with "Transport endpoint is not connected").

use std::ffi::OsStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyBmap, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyIoctl, ReplyLseek, ReplyOpen, ReplyPoll, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};

use super::core::{Caller, DeflateFs, SetAttr, TimeSpec};
use super::error::FsResult;
use super::ioctl::{self, FlagsCommand};

/// How long the kernel may cache attributes and names. Only this daemon changes the backing tree
/// while it is mounted (docs/FORMAT.md), so a short cache is safe and saves many getattr calls.
const TTL: Duration = Duration::from_secs(1);

/// Largest write the kernel may send in one request.
pub const MAX_WRITE: u32 = 1 << 20;

thread_local! {
    /// Each FUSE worker's read reply buffer. Reused across requests: a fresh 1 MiB buffer per
    /// read cost page faults and page clearing (about 4% of the daemon's CPU in a cold
    /// sequential read). Dropped when a request made it larger than `MAX_WRITE`.
    static READ_REPLY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// fuser's view of the filesystem.
pub struct FuseAdapter {
    pub fs: Arc<DeflateFs>,
}

/// Runs a core call, turning a panic into EIO and logging errors worth a line.
fn guarded<T>(what: &str, f: impl FnOnce() -> FsResult<T>) -> Result<T, Errno> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            // Damage is logged where it is found, once a minute per file at most: a damaged
            // file read in a loop must not flood the log through here.
            if e.is_noteworthy() && !e.logged {
                tracing::warn!("{what}: {e}");
            } else {
                tracing::debug!("{what}: {e}");
            }
            Err(Errno::from_i32(e.errno))
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            tracing::error!("{what}: internal error (panic: {msg}); answered EIO");
            Err(Errno::EIO)
        }
    }
}

fn system_time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// Converts a core stat into fuser's attributes.
pub fn to_attr(st: &libc::stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(st.st_ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: system_time(st.st_atime, st.st_atime_nsec),
        mtime: system_time(st.st_mtime, st.st_mtime_nsec),
        ctime: system_time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: file_type(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn dtype_kind(dtype: u8) -> FileType {
    match dtype {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn time_spec(t: Option<TimeOrNow>) -> Option<TimeSpec> {
    t.map(|t| match t {
        TimeOrNow::Now => TimeSpec::Now,
        TimeOrNow::SpecificTime(st) => match st.duration_since(UNIX_EPOCH) {
            Ok(d) => TimeSpec::At(d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                let (mut s, mut ns) = (-(d.as_secs() as i64), d.subsec_nanos());
                if ns > 0 {
                    s -= 1;
                    ns = 1_000_000_000 - ns;
                }
                TimeSpec::At(s, ns)
            }
        },
    })
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

impl FuseAdapter {
    fn reply_entry(&self, reply: ReplyEntry, r: Result<libc::stat, Errno>) {
        match r {
            Ok(st) => reply.entry(
                &TTL,
                &to_attr(&st),
                Generation(u64::from(self.fs.generation(st.st_ino))),
            ),
            Err(e) => reply.error(e),
        }
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, r: Result<Vec<u8>, Errno>) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // POSIX ACLs as on ext4: the kernel checks them and keeps them in step with the mode;
        // the ACLs live as xattrs of the backing inodes. Only with default_permissions (the
        // kernel turns that on with ACLs, which would override no_default_permissions).
        if self.fs.opts.default_permissions {
            let acl = fuser::InitFlags::FUSE_POSIX_ACL | fuser::InitFlags::FUSE_DONT_MASK;
            match config.add_capabilities(acl) {
                Ok(()) => self.fs.set_posix_acl(true),
                Err(missing) => {
                    tracing::warn!("the kernel offers no POSIX ACLs ({missing:?}): not enforced")
                }
            }
        }
        // Big requests are what make the FUSE path cheap (docs/PLATFORM.md).
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_PARALLEL_DIROPS);
        let _ = config.add_capabilities(
            fuser::InitFlags::FUSE_DO_READDIRPLUS | fuser::InitFlags::FUSE_READDIRPLUS_AUTO,
        );
        let _ = config.set_max_background(64);
        // File handles (open_by_handle_at, NFS export) outlive the kernel's inode cache: it
        // then asks for "." of the node id, which the core answers (`DeflateFs::lookup_id`).
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_EXPORT_SUPPORT);
        Ok(())
    }

    fn destroy(&mut self) {
        self.fs.flush_all();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = guarded("lookup", || {
            self.fs.lookup(parent.0, name).map(|(_, st)| st)
        });
        self.reply_entry(reply, r);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _ = guarded("forget", || {
            self.fs.forget(ino.0, nlookup);
            Ok(())
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match guarded("getattr", || self.fs.getattr(ino.0)) {
            Ok(st) => reply.attr(&TTL, &to_attr(&st)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: time_spec(atime),
            mtime: time_spec(mtime),
        };
        match guarded("setattr", || self.fs.setattr(ino.0, fh.map(|f| f.0), set)) {
            Ok(st) => reply.attr(&TTL, &to_attr(&st)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match guarded("readlink", || self.fs.readlink(ino.0)) {
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = guarded("mknod", || {
            let mode = self.fs.mode_for_new(parent.0, mode, umask);
            self.fs
                .mknod(parent.0, name, mode, rdev as u64, caller(req))
                .map(|(_, st)| st)
        });
        self.reply_entry(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = guarded("mkdir", || {
            let mode = self.fs.mode_for_new(parent.0, mode, umask);
            self.fs
                .mkdir(parent.0, name, mode, caller(req))
                .map(|(_, st)| st)
        });
        self.reply_entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, guarded("unlink", || self.fs.unlink(parent.0, name)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, guarded("rmdir", || self.fs.rmdir(parent.0, name)));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = guarded("symlink", || {
            self.fs
                .symlink(parent.0, link_name, target.as_os_str(), caller(req))
                .map(|(_, st)| st)
        });
        self.reply_entry(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            guarded("rename", || {
                self.fs
                    .rename(parent.0, name, newparent.0, newname, flags.bits())
            }),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = guarded("link", || {
            self.fs.link(ino.0, newparent.0, newname).map(|(_, st)| st)
        });
        self.reply_entry(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match guarded("open", || self.fs.open(ino.0, flags.0)) {
            // KEEP_CACHE: only this daemon changes the data, and it invalidates nothing behind
            // the kernel's back, so cached pages stay valid across opens. Unless the next read
            // must move the atime: it has to reach the daemon then, not the kernel's cache.
            Ok(fh) => {
                let reads = flags.0 & libc::O_ACCMODE != libc::O_WRONLY;
                let keep = !(reads && self.fs.handle_read_would_move_atime(fh));
                let cache = if keep {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(fh), cache)
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        READ_REPLY.with_borrow_mut(|buf| {
            match guarded("read", || self.fs.read_into(fh.0, offset, size, buf)) {
                Ok(()) => {
                    // Before the reply: the kernel asks for the atime again once it has it.
                    self.fs.note_file_read(fh.0);
                    reply.data(buf)
                }
                Err(e) => reply.error(e),
            }
            if buf.capacity() > MAX_WRITE as usize {
                *buf = Vec::new();
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match guarded("write", || self.fs.write(fh.0, offset, data)) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, guarded("flush", || self.fs.flush(fh.0)));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, guarded("release", || self.fs.release(fh.0)));
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, guarded("fsync", || self.fs.fsync(fh.0, datasync)));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match guarded("opendir", || self.fs.opendir(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match guarded("readdir", || self.fs.readdir(fh.0, offset)) {
            Ok(entries) => {
                self.fs.note_dir_read(fh.0);
                for (i, e) in entries.iter().enumerate() {
                    let kind = dtype_kind(e.dtype);
                    if reply.add(INodeNo(e.ino), offset + i as u64 + 1, kind, &e.name) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    /// Listing with attributes, so `ls -l` and `du` need no lookup per entry. Every entry added
    /// (but "." and "..", which the kernel does not link) counts as one lookup; an entry that does
    /// not fit is forgotten again.
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let entries = match guarded("readdirplus", || self.fs.readdir(fh.0, offset)) {
            Ok(entries) => entries,
            Err(e) => return reply.error(e),
        };
        self.fs.note_dir_read(fh.0);
        for (i, e) in entries.iter().enumerate() {
            let next = offset + i as u64 + 1;
            let name = e.name.as_encoded_bytes();
            if name == b"." || name == b".." {
                // SAFETY: libc::stat is plain integers, for which all-zero bytes are valid.
                let mut attr = to_attr(&unsafe { std::mem::zeroed() });
                attr.ino = INodeNo(if name == b"." { ino.0 } else { e.ino });
                attr.kind = FileType::Directory;
                if reply.add(
                    attr.ino,
                    next,
                    &e.name,
                    &Duration::ZERO,
                    &attr,
                    Generation(0),
                ) {
                    break;
                }
                continue;
            }
            // An entry that vanished since the listing was taken is simply left out.
            let Ok((node, st)) = guarded("readdirplus lookup", || self.fs.lookup(ino.0, &e.name))
            else {
                continue;
            };
            let attr = to_attr(&st);
            let generation = Generation(u64::from(node.generation));
            if reply.add(attr.ino, next, &e.name, &TTL, &attr, generation) {
                self.fs.forget(node.id, 1);
                break;
            }
        }
        reply.ok()
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, guarded("releasedir", || self.fs.releasedir(fh.0)));
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, guarded("fsyncdir", || self.fs.fsyncdir(fh.0)));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match guarded("statfs", || self.fs.statfs()) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            guarded("setxattr", || {
                self.fs.setxattr(ino.0, name, value, flags, caller(req))
            }),
        );
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let r = guarded("getxattr", || {
            self.fs.getxattr(ino.0, name, size, caller(req))
        });
        reply_xattr(reply, size, r);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let r = guarded("listxattr", || self.fs.listxattr(ino.0, size));
        reply_xattr(reply, size, r);
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(
            reply,
            guarded("removexattr", || {
                self.fs.removexattr(ino.0, name, caller(req))
            }),
        );
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        reply_empty(
            reply,
            guarded("access", || self.fs.access(ino.0, mask.bits(), caller(req))),
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match guarded("create", || {
            let mode = self.fs.mode_for_new(parent.0, mode, umask);
            self.fs.create(parent.0, name, mode, flags, caller(req))
        }) {
            Ok((node, st, fh)) => reply.created(
                &TTL,
                &to_attr(&st),
                Generation(u64::from(node.generation)),
                FileHandle(fh),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            guarded("fallocate", || {
                self.fs.fallocate(fh.0, offset, length, mode)
            }),
        );
    }

    // The requests below are answered the way ext4 answers them where deflatefs has nothing
    // better, without fuser's "[Not Implemented]" warning: a shell's or runtime's isatty() sends
    // TCGETS for every file it opens, and `python3 -m venv` alone logged 1,757 such warnings.

    /// The inode flags of lsattr and chattr (`ioctl.rs`); every other command is ENOTTY, what
    /// ext4 gives for TCGETS and other commands it does not know.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        let Some(command) = FlagsCommand::from_cmd(cmd) else {
            return reply.error(Errno::from_i32(libc::ENOTTY));
        };
        match guarded("ioctl", || {
            ioctl::inode_flags(&self.fs, fh.0, command, in_data, out_size)
        }) {
            Ok(out) => reply.ioctl(0, &out),
            Err(e) => reply.error(e),
        }
    }

    /// SEEK_DATA and SEEK_HOLE (the only whence values the kernel sends here): from the chunk
    /// index for containers (a chunk with data is data throughout), from the backing file
    /// otherwise.
    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return reply.error(Errno::EINVAL),
        };
        if offset < 0 {
            return reply.error(Errno::ENXIO);
        }
        match guarded("lseek", || {
            self.fs.seek_data_or_hole(fh.0, offset as u64, data)
        }) {
            Ok(pos) => reply.offset(pos as i64),
            Err(e) => reply.error(e),
        }
    }

    /// Answered inside the daemon in one request: containers copy their compressed members
    /// where they can, anything else is copied as bytes (src/fs/copy.rs). The kernel has
    /// already checked the descriptors' modes, O_APPEND, flags and same-file overlaps.
    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        if !flags.is_empty() {
            // No flag is defined; copy_file_range(2) refuses any with EINVAL.
            reply.error(Errno::EINVAL);
            return;
        }
        match guarded("copy_file_range", || {
            self.fs
                .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
        }) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    /// There are no block numbers to map (FIBMAP): ENOSYS, as fuser answers, without the warning.
    fn bmap(&self, _req: &Request, _ino: INodeNo, _blocksize: u32, _idx: u64, reply: ReplyBmap) {
        reply.error(Errno::ENOSYS);
    }

    /// ENOSYS: the kernel then answers every poll of the mount's files itself with "ready for
    /// reading and writing" (and never asks again), which is what ext4 answers for regular
    /// files. fuser's default would say the same with a warning each time.
    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: ReplyPoll,
    ) {
        reply.error(Errno::ENOSYS);
    }
}
