//! `copy_file_range` within the mount, answered inside the daemon in one request.
//!
//! Between two containers with the same chunk size whose offsets lie at the same place in a
//! chunk, every chunk of the destination that the copy replaces whole is copied as the source
//! chunk's data members, without decompressing or compressing anything
//! ([`ContainerFile::copy_members_from`]). Everything else (plain files, other chunk sizes or
//! offsets, the partial chunks at either end of a range) is copied as bytes: read through the
//! source's read path, written through the destination's write path. docs/COPY.md gives the
//! rules and why they are safe.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::core::DeflateFs;
use super::error::{errno, FsError, FsResult};
use super::file::{ContainerFile, OpenFile};

/// Most bytes one request copies: the reply carries the count in 32 bits, and a caller (cp)
/// asks again for the rest. A multiple of every chunk size, so the next request stays aligned.
pub const MAX_COPY: u64 = 1 << 30;

/// Bytes read and written per step of the byte copy.
const BYTE_COPY_STEP: usize = 1 << 20;

/// Counters for `user.deflatefs.engine`.
#[derive(Debug, Default)]
pub struct CopyStats {
    /// copy_file_range requests answered.
    pub requests: AtomicU64,
    /// Data members copied without recompression.
    pub members: AtomicU64,
    /// Bytes copied as members.
    pub member_bytes: AtomicU64,
    /// Bytes copied through the read and write paths.
    pub byte_copied: AtomicU64,
}

impl CopyStats {
    fn record(&self, members: u64, member_bytes: u64, byte_copied: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.members.fetch_add(members, Ordering::Relaxed);
        self.member_bytes.fetch_add(member_bytes, Ordering::Relaxed);
        self.byte_copied.fetch_add(byte_copied, Ordering::Relaxed);
    }
}

/// The logical size of an open file.
fn size_of(f: &OpenFile) -> FsResult<u64> {
    match (f, f.logical_size()) {
        (_, Some(size)) => Ok(size),
        (OpenFile::Plain(p), None) => Ok(p.file.metadata()?.len()),
        (OpenFile::Container(_), None) => Ok(0),
    }
}

/// Copies up to `len` bytes as bytes: reads through `src`'s read path, writes through `dst`'s
/// write path, a step at a time (never holding both files' locks). Returns the bytes copied,
/// short when the source ends; an error after some bytes were copied ends the copy there (the
/// caller gets the count, and the error at its next call, as with write(2)).
fn byte_copy(src: &OpenFile, off_in: u64, dst: &OpenFile, off_out: u64, len: u64) -> FsResult<u64> {
    let mut done = 0u64;
    let mut buf = Vec::new();
    while done < len {
        let step = (len - done).min(BYTE_COPY_STEP as u64) as usize;
        let r = src.read_into(off_in + done, step, &mut buf).and_then(|()| {
            if buf.is_empty() {
                return Ok(0);
            }
            dst.write(off_out + done, &buf, false)
        });
        match r {
            Ok(0) => break,
            Ok(n) => {
                done += n as u64;
                if n < step {
                    break;
                }
            }
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(done)
}

impl DeflateFs {
    /// copy_file_range(2) from handle `fh_in` at `off_in` to handle `fh_out` at `off_out`:
    /// returns the bytes copied (fewer than `len` at the source's end, 0 at or beyond it; at
    /// most [`MAX_COPY`]). The kernel has checked the descriptors' modes (EBADF), O_APPEND
    /// and overlapping ranges of one file (EINVAL) already; they are checked again here
    /// against what the daemon knows.
    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> FsResult<u32> {
        let h_in = self.handle(fh_in)?;
        let h_out = self.handle(fh_out)?;
        let src = h_in.file.clone().ok_or(FsError::new(libc::EISDIR))?;
        let dst = h_out.file.clone().ok_or(FsError::new(libc::EISDIR))?;
        if !h_out.writable || h_out.append {
            return errno(libc::EBADF);
        }
        if self.read_only_now() {
            return errno(libc::EROFS);
        }
        if off_in > i64::MAX as u64 || off_out > i64::MAX as u64 {
            return errno(libc::EINVAL);
        }
        let src_size = size_of(&src)?;
        let n = if off_in >= src_size {
            0
        } else {
            len.min(src_size - off_in).min(MAX_COPY)
        };
        if n == 0 {
            return Ok(0);
        }
        if off_out.checked_add(n).is_none_or(|e| e > i64::MAX as u64) {
            return errno(libc::EFBIG);
        }
        let same = Arc::ptr_eq(&src, &dst) || h_in.node.id == h_out.node.id;
        if same && off_out < off_in + n && off_in < off_out + n {
            // Linux refuses overlapping ranges of one file (generic_copy_file_checks).
            return errno(libc::EINVAL);
        }
        let label = || {
            format!(
                "copy_file_range {} at {off_in} to {} at {off_out} ({n} bytes)",
                h_in.node.label(),
                h_out.node.label()
            )
        };
        let (copied, members, member_bytes, error) = match (&*src, &*dst) {
            (OpenFile::Container(s), OpenFile::Container(d)) if aligned(s, d, off_in, off_out) => {
                copy_containers(&src, s, off_in, &dst, d, off_out, n)
            }
            _ => match byte_copy(&src, off_in, &dst, off_out, n) {
                Ok(k) => (k, 0, 0, None),
                Err(e) => (0, 0, 0, Some(e)),
            },
        };
        self.copies
            .record(members, member_bytes, copied - member_bytes);
        match error {
            Some(e) if copied == 0 => Err(e.context(label())),
            Some(e) => {
                // The caller gets what was copied; the error comes again at its next call.
                tracing::debug!("{}: stopped after {copied} bytes: {e}", label());
                Ok(copied as u32)
            }
            None => Ok(copied as u32),
        }
    }
}

/// Whether a copy between these containers at these offsets can copy members: same chunk
/// size, and both offsets at the same place in their chunk.
fn aligned(s: &ContainerFile, d: &ContainerFile, off_in: u64, off_out: u64) -> bool {
    let mask = (1u64 << s.chunk_log2()) - 1;
    s.chunk_log2() == d.chunk_log2() && off_in & mask == off_out & mask
}

/// The copy between two aligned containers: the head up to the first chunk boundary as bytes,
/// then chunk by chunk. Returns (bytes copied, members copied, bytes copied as members, error).
fn copy_containers(
    src: &OpenFile,
    s: &ContainerFile,
    off_in: u64,
    dst: &OpenFile,
    d: &ContainerFile,
    off_out: u64,
    n: u64,
) -> (u64, u64, u64, Option<FsError>) {
    let cs = 1u64 << s.chunk_log2();
    let head = ((cs - (off_in & (cs - 1))) & (cs - 1)).min(n);
    if head > 0 {
        match byte_copy(src, off_in, dst, off_out, head) {
            Ok(k) if k < head => return (k, 0, 0, None),
            Ok(_) => {}
            Err(e) => return (0, 0, 0, Some(e)),
        }
    }
    if head == n {
        return (head, 0, 0, None);
    }
    let mut fallback = |si: u64, so: u64, len: u64| byte_copy(src, si, dst, so, len);
    let r = d.copy_members_from(s, off_in + head, off_out + head, n - head, &mut fallback);
    (head + r.copied, r.members, r.member_bytes, r.error)
}
