//! `deflatefs fsck SOURCE`: checks, and with `--repair` repairs, the containers of a backing
//! directory that is not mounted.
//!
//! For every container it checks the header, the last complete commit and whatever follows it (a
//! torn tail), the whole commit chain back to the first commit, every index member, every live
//! data member (framing, crc32 of the payload, the deflate stream or stored blocks, the crc32 of
//! the content), that the pieces of each chunk continue each other, and the BLAKE3 chaining
//! values recorded in the index. Plain files are counted and left alone, except files that start
//! like a container header but are not a valid one, and containers whose header is lost (zeroed,
//! overwritten, or lost with the first blocks in a power cut: see [`lost_header`]); both are
//! reported and rebuilt by `--repair`.
//!
//! `--repair`:
//! - drops a torn tail (truncates the file to its last complete commit);
//! - rebuilds a container whose index or commit chain is damaged, or whose header is, by scanning
//!   its members: data members describe themselves (logical offset, RESET flag, CRC32, ISIZE), so
//!   the pieces of every commit that can be read are recovered; the result is written to a
//!   temporary file, synced and renamed over the original;
//! - rewrites (like a compaction) a container whose older commit history is damaged;
//! - never zero-fills: a chunk whose data cannot be recovered is written as a piece that fails its
//!   crc32 check, so it keeps reading as EIO, and is reported.
//!
//! Exit code: 0 nothing found, 1 problems found (repaired or not: the report says which), 2 could
//! not run (bad arguments, source mounted, unreadable).

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use crate::container::salvage::lost_header;
use crate::container::salvage::{
    audit_history, file_lost_header, guess_chunk_log2, looks_like_header_member, poison_member,
    replay_scan, scan_members, MemberScan, Salvage,
};
use crate::container::{decode_piece, Container, ContainerError, PieceKind, HEADER_MEMBER_LEN};

use crate::container::INTERNAL_NAME_PREFIX as INTERNAL_PREFIX;

/// What `deflatefs fsck` was asked to do.
#[derive(Debug, Clone)]
pub struct FsckOptions {
    pub source: PathBuf,
    pub repair: bool,
    /// Progress bar: None = when stderr is a terminal.
    pub progress: Option<bool>,
}

/// The totals of a run.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub files: u64,
    pub containers: u64,
    pub plain: u64,
    pub with_problems: u64,
    pub repaired: u64,
    pub unrecoverable_chunks: u64,
    pub bytes: u64,
}

/// One file's findings.
#[derive(Debug, Default)]
struct Findings {
    problems: Vec<String>,
    repairs: Vec<String>,
    unrecoverable: u64,
}

/// Runs fsck; returns the exit code. Writes the report to `out` and progress to stderr.
pub fn run(opts: &FsckOptions, out: &mut dyn Write) -> i32 {
    match run_inner(opts, out) {
        Ok(s) => {
            let _ = writeln!(
                out,
                "{} files checked ({} containers, {} plain, {} bytes): {} with problems{}{}",
                s.files,
                s.containers,
                s.plain,
                s.bytes,
                s.with_problems,
                if opts.repair {
                    format!(", {} repaired", s.repaired)
                } else {
                    String::new()
                },
                if s.unrecoverable_chunks > 0 {
                    format!(
                        ", {} chunk(s) unrecoverable (they read as EIO)",
                        s.unrecoverable_chunks
                    )
                } else {
                    String::new()
                }
            );
            if s.with_problems > 0 {
                1
            } else {
                0
            }
        }
        Err(e) => {
            let _ = writeln!(out, "deflatefs fsck: {e}");
            2
        }
    }
}

/// The deflatefs mount that uses `source` (as its source or its mount point), if any.
fn mounted_on(source: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if f.get(sep + 1) != Some(&crate::mount::FS_TYPE) {
            continue;
        }
        let point = PathBuf::from(unescape(f.get(4).copied().unwrap_or("")));
        let src = PathBuf::from(unescape(f.get(sep + 2).copied().unwrap_or("")));
        if point == source || src == source {
            return Some(point);
        }
    }
    None
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every regular file under `root` (not crossing into other filesystems, not following
/// symlinks), deflatefs' temporary files apart.
fn walk(root: &Path) -> io::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let dev = std::fs::metadata(root)?.dev();
    let mut files = Vec::new();
    let mut leftovers = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)?.collect::<io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let md = e.path().symlink_metadata()?;
            if md.is_dir() {
                if md.dev() == dev {
                    stack.push(e.path());
                }
            } else if md.is_file() {
                if e.file_name().as_bytes() == crate::source_lock::lock_file_name().as_bytes() {
                    // A mount's lock on its source (src/source_lock.rs), not a leftover: removing
                    // it while held would let a second writer in.
                    continue;
                } else if e
                    .file_name()
                    .as_bytes()
                    .starts_with(INTERNAL_PREFIX.as_bytes())
                {
                    leftovers.push(e.path());
                } else {
                    files.push(e.path());
                }
            }
        }
    }
    Ok((files, leftovers))
}

/// A progress bar on stderr, redrawn at most every 100 ms.
struct Progress {
    on: bool,
    total: u64,
    last: Instant,
}

impl Progress {
    fn update(&mut self, done: u64, bytes: u64, force: bool) {
        if !self.on || (!force && self.last.elapsed() < Duration::from_millis(100)) {
            return;
        }
        self.last = Instant::now();
        let width = 30usize;
        let filled = (done * width as u64)
            .checked_div(self.total)
            .map_or(width, |f| f as usize);
        eprint!(
            "\r[{}{}] {done}/{} files, {} MiB ",
            "#".repeat(filled),
            " ".repeat(width - filled),
            self.total,
            bytes >> 20
        );
        let _ = io::stderr().flush();
    }

    fn finish(&mut self) {
        if self.on {
            eprint!("\r{}\r", " ".repeat(70));
            let _ = io::stderr().flush();
        }
    }
}

fn run_inner(opts: &FsckOptions, out: &mut dyn Write) -> io::Result<Summary> {
    let source = std::fs::canonicalize(&opts.source)
        .map_err(|e| io::Error::new(e.kind(), format!("source {}: {e}", opts.source.display())))?;
    if !source.is_dir() {
        return Err(io::Error::other(format!(
            "source {} is not a directory",
            source.display()
        )));
    }
    if let Some(point) = mounted_on(&source) {
        return Err(io::Error::other(format!(
            "{} is in use by the deflatefs mount on {}: unmount it first (fsck only runs on a \
             source nothing is mounted from)",
            source.display(),
            point.display()
        )));
    }
    let (files, leftovers) = walk(&source)?;
    let mut summary = Summary::default();
    let mut progress = Progress {
        on: opts.progress.unwrap_or_else(|| io::stderr().is_terminal()),
        total: files.len() as u64,
        last: Instant::now() - Duration::from_secs(1),
    };
    for path in &leftovers {
        summary.with_problems += 1;
        let rel = path.strip_prefix(&source).unwrap_or(path);
        if opts.repair {
            match std::fs::remove_file(path) {
                Ok(()) => {
                    summary.repaired += 1;
                    let _ = writeln!(
                        out,
                        "{}: leftover temporary file of an interrupted compaction or repair: \
                         removed",
                        rel.display()
                    );
                }
                Err(e) => {
                    let _ = writeln!(out, "{}: leftover temporary file: {e}", rel.display());
                }
            }
        } else {
            let _ = writeln!(
                out,
                "{}: leftover temporary file of an interrupted compaction or repair (--repair \
                 removes it)",
                rel.display()
            );
        }
    }
    for (i, path) in files.iter().enumerate() {
        progress.update(i as u64, summary.bytes, false);
        summary.files += 1;
        let rel = path.strip_prefix(&source).unwrap_or(path);
        let f = check_file(path, opts.repair, &mut summary);
        if !f.problems.is_empty() {
            summary.with_problems += 1;
            if !f.repairs.is_empty() {
                summary.repaired += 1;
            }
            summary.unrecoverable_chunks += f.unrecoverable;
            progress.finish();
            for p in &f.problems {
                let _ = writeln!(out, "{}: {p}", rel.display());
            }
            for r in &f.repairs {
                let _ = writeln!(out, "{}: repaired: {r}", rel.display());
            }
        }
    }
    progress.update(files.len() as u64, summary.bytes, true);
    progress.finish();
    Ok(summary)
}

fn check_file(path: &Path, repair: bool, summary: &mut Summary) -> Findings {
    let mut f = Findings::default();
    let file = match open_for(path, repair) {
        Ok(file) => file,
        Err(e) => {
            f.problems.push(format!("cannot open: {e}"));
            return f;
        }
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    summary.bytes += len;
    let mut head = [0u8; HEADER_MEMBER_LEN];
    let n = read_prefix(&file, &mut head);
    match Container::probe(&file) {
        Ok(false) => {
            let problem = if looks_like_header_member(&head[..n]) {
                Some(
                    "starts like a deflatefs container but its header member is damaged \
                     (served as a plain file until repaired)",
                )
            } else if file_lost_header(&file) {
                Some(
                    "a deflatefs container whose header member is lost (overwritten or zeroed, \
                     or its first blocks lost in a power cut; served as a plain file until \
                     repaired)",
                )
            } else {
                None
            };
            if let Some(problem) = problem {
                summary.containers += 1;
                f.problems.push(problem.into());
                if repair {
                    rebuild_by_scan(path, &file, &mut f);
                }
            } else {
                summary.plain += 1;
            }
            return f;
        }
        Err(ContainerError::Io(e)) => {
            f.problems.push(format!("cannot read: {e}"));
            return f;
        }
        Err(e) => {
            summary.containers += 1;
            f.problems.push(format!("unusable header: {e}"));
            if repair && !matches!(e, ContainerError::UnsupportedVersion(_)) {
                rebuild_by_scan(path, &file, &mut f);
            }
            return f;
        }
        Ok(true) => summary.containers += 1,
    }
    let c = match Container::open(file.try_clone().expect("dup")) {
        Ok(c) => c,
        Err(e) => {
            f.problems.push(format!("cannot be opened: {e}"));
            if repair {
                rebuild_by_scan(path, &file, &mut f);
            }
            return f;
        }
    };
    if c.last_seq() == 0 {
        f.problems.push(
            "its creation was cut short (only part of its header is there): it reads as empty"
                .into(),
        );
        if repair {
            rebuild_by_scan(path, &file, &mut f);
        }
        return f;
    }
    if c.container_len() < len {
        f.problems.push(format!(
            "torn tail: {} byte(s) after the last complete commit (which ends at {})",
            len - c.container_len(),
            c.container_len()
        ));
    }
    let history = audit_history(&c);
    let history_damaged = !history.is_empty();
    f.problems.extend(history);
    let bad = check_data(&c);
    for (chunk, why) in &bad {
        let cs = c.index().chunk_size();
        f.problems.push(format!(
            "chunk {chunk} (bytes {}..{}): {why}",
            chunk * cs,
            (chunk + 1) * cs
        ));
    }
    if !repair || f.problems.is_empty() {
        f.unrecoverable += bad.len() as u64;
        return f;
    }
    if history_damaged {
        // Rewrite from the live index, like a compaction: the damaged history goes away.
        drop(c);
        rebuild_by_scan(path, &file, &mut f);
        return f;
    }
    let mut c = c;
    if c.container_len() < len {
        match c.drop_torn_tail() {
            Ok(_) => {
                let _ = c.sync_data();
                f.repairs.push(format!(
                    "torn tail dropped (truncated to {} bytes)",
                    c.container_len()
                ))
            }
            Err(e) => f
                .problems
                .push(format!("could not drop the torn tail: {e}")),
        }
    }
    if !bad.is_empty() {
        f.unrecoverable += bad.len() as u64;
        f.repairs.push(format!(
            "{} chunk(s) cannot be recovered: they keep reading as EIO",
            bad.len()
        ));
    }
    f
}

/// Opens a file the walk found as a regular file. O_NOFOLLOW: if it was replaced by a symlink
/// since, fsck (often run as root) must not open what the link points to.
fn open_for(path: &Path, write: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

fn read_prefix(file: &File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

/// Decodes every live piece; returns the chunks that cannot be read and why.
fn check_data(c: &Container) -> Vec<(u64, String)> {
    let mut bad = Vec::new();
    let mut d = libdeflater::Decompressor::new();
    let cs = c.index().chunk_size();
    let chunks: Vec<u64> = c.index().data_chunks().collect();
    for chunk in chunks {
        let start = chunk * cs;
        let mut content: Vec<u8> = Vec::new();
        let mut why = None;
        let pieces = c.index().pieces(chunk);
        if let Err(e) = crate::container::check_piece_order(start, pieces) {
            bad.push((chunk, e.to_string()));
            continue;
        }
        for p in pieces {
            let at = (p.logical_offset - start) as usize;
            if p.reset {
                content.clear();
            }
            if p.kind == PieceKind::Hole {
                continue;
            }
            let mut m = vec![0u8; p.stored_len as usize];
            let mut out = vec![0u8; p.logical_len as usize];
            if let Err(e) = c
                .read_member(p, &mut m)
                .and_then(|_| decode_piece(&m, p, &mut d, &mut out))
            {
                why = Some(e.to_string());
                break;
            }
            // A piece continues the chunk or is laid over it (check_piece_order).
            let end = at + out.len();
            if content.len() < end {
                content.resize(end, 0);
            }
            content[at..end].copy_from_slice(&out);
            if p.chaining_value != [0; 32]
                && crate::digest::chunk_cv(start, &content) != p.chaining_value
            {
                why = Some(format!(
                    "BLAKE3 chaining value of the piece at {} does not match its content",
                    p.logical_offset
                ));
                break;
            }
        }
        if let Some(w) = why {
            bad.push((chunk, w));
        }
    }
    bad
}

// ---------------------------------------------------------------------------------------------
// Rebuilding by scanning the members

/// The file, mapped read-only.
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    fn new(file: &File) -> io::Result<Mapped> {
        let len = file.metadata()?.len() as usize;
        if len == 0 {
            return Ok(Mapped {
                ptr: std::ptr::null_mut(),
                len: 0,
            });
        }
        // SAFETY: a fresh read-only private mapping at an address the kernel picks, of `len`
        // bytes of an open file; it aliases no Rust object.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapped { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` is a live PROT_READ mapping of `len` bytes (unmapped only in drop, and
        // the slice borrows `self`). Its bytes are stable while borrowed because fsck refuses a
        // source that is mounted: no daemon writes or truncates the file meanwhile. (Another
        // process doing so would be outside the tool's contract: a truncation would SIGBUS.)
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the mapping made in `new`, unmapped once; no slice of it outlives `self`.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

/// What a rebuild tells the user about the salvage of a file, one note each.
fn salvage_notes(rec: &Salvage, scan: &MemberScan) -> Vec<String> {
    let mut notes = Vec::new();
    for (seq, offset) in &rec.lost_indexes {
        notes.push(format!(
            "index of commit {seq} (at {offset}) lost: its pieces taken from the data members \
             before it"
        ));
    }
    if rec.commits == 0 {
        notes.push("no commit found: the file is empty".into());
    }
    if rec.uncommitted > 0 {
        notes.push(format!(
            "{} data member(s) after the last commit were never committed: left out",
            rec.uncommitted
        ));
    }
    let garbage_bytes: usize = scan.garbage.iter().map(|r| r.len()).sum();
    if garbage_bytes > 0 {
        notes.push(format!(
            "{garbage_bytes} byte(s) in {} region(s) are no member at all (first at {})",
            scan.garbage.len(),
            scan.garbage[0].start
        ));
    }
    notes
}

/// Rebuilds `path` from a scan of its members into a temporary file, syncs it and renames it over
/// the original.
fn rebuild_by_scan(path: &Path, file: &File, f: &mut Findings) {
    match rebuild_inner(path, file) {
        Ok((notes, unrecoverable, size)) => {
            f.unrecoverable += unrecoverable;
            let mut what = format!("rebuilt from its members (size {size})");
            for n in notes {
                what.push_str("; ");
                what.push_str(&n);
            }
            if unrecoverable > 0 {
                what.push_str(&format!(
                    "; {unrecoverable} chunk(s) cannot be recovered: they keep reading as EIO"
                ));
            }
            f.repairs.push(what);
        }
        Err(e) => f.problems.push(format!("could not rebuild: {e}")),
    }
}

fn rebuild_inner(path: &Path, file: &File) -> io::Result<(Vec<String>, u64, u64)> {
    let map = Mapped::new(file)?;
    let b = map.bytes();
    let chunk_log2 = guess_chunk_log2(b);
    let scan = scan_members(b, chunk_log2);
    let rec = replay_scan(&scan, chunk_log2);
    let notes = salvage_notes(&rec, &scan);
    let cs = 1u64 << chunk_log2;
    let size = rec.index.size();
    let dir = path.parent().unwrap_or(Path::new("."));
    let md = file.metadata()?;
    let tmp = dir.join(format!("{INTERNAL_PREFIX}fsck-{}", md.ino()));
    let _ = std::fs::remove_file(&tmp);
    // Mode 0600 until copy_metadata gives it the original's owner and mode: the data of a
    // private file must not be readable by others while it is rebuilt.
    let dest = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?
    };
    let mut chunks: BTreeSet<u64> = rec.index.data_chunks().collect();
    chunks.extend(rec.poisoned.iter().copied());
    let mut members = Vec::new();
    for chunk in chunks {
        let start = chunk * cs;
        if start >= size {
            continue;
        }
        if rec.poisoned.contains(&chunk) {
            members.push(poison_member(start, (size - start).min(cs) as usize));
            continue;
        }
        for p in rec.index.pieces(chunk) {
            if p.kind == PieceKind::Hole {
                continue;
            }
            let a = p.member_offset as usize;
            let bytes = b[a..a + p.stored_len as usize].to_vec();
            members.push((bytes, p.clone()));
        }
    }
    let unrecoverable = rec.poisoned.iter().filter(|c| **c * cs < size).count() as u64;
    let result = Container::rebuild(dest, chunk_log2, size, members.into_iter())
        .map_err(|e| io::Error::other(e.to_string()))
        .and_then(|c| c.sync_data().map_err(|e| io::Error::other(e.to_string())));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    copy_metadata(path, &tmp, &md);
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()?;
    Ok((notes, unrecoverable, size))
}

/// Owner, mode, extended attributes and times of `from` onto `to` (best effort).
fn copy_metadata(from: &Path, to: &Path, md: &std::fs::Metadata) {
    let cto = CString::new(to.as_os_str().as_bytes()).expect("no NUL");
    let cfrom = CString::new(from.as_os_str().as_bytes()).expect("no NUL");
    // SAFETY: every path and name is a NUL-terminated CString living across the calls; each
    // buffer handed to llistxattr or lgetxattr is exactly as long as the size passed with it
    // (a size of 0 with a null buffer only asks for the length); lsetxattr reads `vlen` bytes of
    // `v`, which holds at least that many; utimensat reads the two timespecs of `times`.
    unsafe {
        libc::chown(cto.as_ptr(), md.uid(), md.gid());
        libc::chmod(cto.as_ptr(), md.mode() & 0o7777);
        let len = libc::llistxattr(cfrom.as_ptr(), std::ptr::null_mut(), 0);
        if len > 0 {
            let mut names = vec![0u8; len as usize];
            let len = libc::llistxattr(cfrom.as_ptr(), names.as_mut_ptr() as *mut _, names.len());
            if len > 0 {
                for name in names[..len as usize]
                    .split(|c| *c == 0)
                    .filter(|n| !n.is_empty())
                {
                    let cname = CString::new(name).expect("no NUL");
                    let vlen =
                        libc::lgetxattr(cfrom.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0);
                    if vlen < 0 {
                        continue;
                    }
                    let mut v = vec![0u8; vlen as usize];
                    let vlen = libc::lgetxattr(
                        cfrom.as_ptr(),
                        cname.as_ptr(),
                        v.as_mut_ptr() as *mut _,
                        v.len(),
                    );
                    if vlen >= 0 {
                        libc::lsetxattr(
                            cto.as_ptr(),
                            cname.as_ptr(),
                            v.as_ptr() as *const _,
                            vlen as usize,
                            0,
                        );
                    }
                }
            }
        }
        let times = [
            libc::timespec {
                tv_sec: md.atime(),
                tv_nsec: md.atime_nsec(),
            },
            libc::timespec {
                tv_sec: md.mtime(),
                tv_nsec: md.mtime_nsec(),
            },
        ];
        libc::utimensat(libc::AT_FDCWD, cto.as_ptr(), times.as_ptr(), 0);
    }
}

/// The checks fsck makes on a container's bytes, for fuzzing: scanning and replaying hostile
/// bytes must never panic, hang or allocate without bound.
pub fn scan_for_fuzzing(bytes: &[u8]) -> usize {
    let log2 = guess_chunk_log2(bytes);
    let scan = scan_members(bytes, log2);
    let rec = replay_scan(&scan, log2);
    rec.index.live_entry_count() as usize + rec.poisoned.len() + salvage_notes(&rec, &scan).len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_decode() {
        assert_eq!(unescape("/a\\040b"), "/a b");
    }
}
