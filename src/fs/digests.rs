//! The attributes deflatefs serves itself (README, "Integrity digests"): `user.deflatefs.blake3`,
//! `user.deflatefs.sha256`, `user.deflatefs.info`, and with `-o shatag` the `user.shatag.sha256` /
//! `user.shatag.ts` pair that the cshatag bit-rot checker reads.
//!
//! They are computed, never stored as xattrs of the backing file: readable by name, absent from
//! listxattr (so `cp -a` and `rsync -X` do not copy values that would go stale), and refused with
//! EPERM by setxattr/removexattr.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use super::error::{FsError, FsResult};
use super::file::{OpenFile, PlainFile};
use crate::digest::{hex, FileInfo, Sha256State};

/// Prefix of the names deflatefs reserves.
pub const RESERVED_PREFIX: &[u8] = b"user.deflatefs.";
pub const BLAKE3: &str = "user.deflatefs.blake3";
pub const SHA256: &str = "user.deflatefs.sha256";
pub const INFO: &str = "user.deflatefs.info";
pub const SHATAG_SHA256: &str = "user.shatag.sha256";
pub const SHATAG_TS: &str = "user.shatag.ts";

/// One served attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    Blake3,
    Sha256,
    Info,
    ShatagSha256,
    ShatagTs,
}

/// Whether `name` is reserved by deflatefs (served or not): every `user.deflatefs.*` name, and
/// the cshatag names when `shatag` is on.
pub fn is_reserved(name: &[u8], shatag: bool) -> bool {
    name.starts_with(RESERVED_PREFIX)
        || (shatag && (name == SHATAG_SHA256.as_bytes() || name == SHATAG_TS.as_bytes()))
}

/// The served attribute called `name`; `Err(ENODATA)` for other reserved names; `Ok(None)` for
/// names that belong to the backing file.
pub fn served(name: &OsStr, shatag: bool) -> FsResult<Option<Served>> {
    let n = name.as_bytes();
    let s = match n {
        _ if n == BLAKE3.as_bytes() => Served::Blake3,
        _ if n == SHA256.as_bytes() => Served::Sha256,
        _ if n == INFO.as_bytes() => Served::Info,
        _ if shatag && n == SHATAG_SHA256.as_bytes() => Served::ShatagSha256,
        _ if shatag && n == SHATAG_TS.as_bytes() => Served::ShatagTs,
        _ if is_reserved(n, shatag) => return Err(FsError::new(libc::ENODATA)),
        _ => return Ok(None),
    };
    Ok(Some(s))
}

/// A listxattr result (NUL-separated names) without the reserved names.
pub fn filter_listing(list: &[u8], shatag: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.len());
    for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if !is_reserved(name, shatag) {
            out.extend_from_slice(name);
            out.push(0);
        }
    }
    out
}

/// What must be unchanged for a value computed for a size query to answer the next request:
/// the backing file's size, mtime and ctime, the logical size, and the open state's
/// [`ContainerFile::content_version`](super::file::ContainerFile::content_version).
pub type Token = ([i64; 5], u64, Option<(u64, u64)>);

/// The token of a file from its stats and its open state (if one exists).
pub fn token(st: &libc::stat, backing: &libc::stat, open: Option<&OpenFile>) -> Token {
    let version = match open {
        Some(OpenFile::Container(c)) => Some(c.content_version()),
        _ => None,
    };
    (
        [
            backing.st_size,
            backing.st_mtime,
            backing.st_mtime_nsec,
            backing.st_ctime,
            backing.st_ctime_nsec,
        ],
        st.st_size as u64,
        version,
    )
}

struct Probe {
    pid: u32,
    node: u64,
    which: Served,
    token: Token,
    value: Vec<u8>,
    at: Instant,
}

/// `getfattr` asks for a value's length, then for the value: the value computed for the first
/// request answers the second one of the same process, once, if the file did not change and
/// it comes within a second (computing a digest twice would double its cost).
#[derive(Default)]
pub struct ProbeCache {
    slots: Mutex<Vec<Probe>>,
}

/// Most size queries remembered at once (one per concurrent getfattr).
const PROBE_SLOTS: usize = 16;
const PROBE_TTL: Duration = Duration::from_secs(1);

impl ProbeCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Remembers `value`, computed for a size query of process `pid`.
    pub fn put(&self, pid: u32, node: u64, which: Served, token: Token, value: Vec<u8>) {
        if pid == 0 {
            return;
        }
        let mut slots = self.slots.lock();
        slots.retain(|p| p.at.elapsed() < PROBE_TTL && !(p.pid == pid && p.node == node));
        if slots.len() >= PROBE_SLOTS {
            slots.remove(0);
        }
        slots.push(Probe {
            pid,
            node,
            which,
            token,
            value,
            at: Instant::now(),
        });
    }

    /// The value remembered for this request, if still valid (it is used once).
    pub fn take(&self, pid: u32, node: u64, which: Served, token: &Token) -> Option<Vec<u8>> {
        let mut slots = self.slots.lock();
        let i = slots
            .iter()
            .position(|p| p.pid == pid && p.node == node && p.which == which)?;
        let p = slots.remove(i);
        (pid != 0 && p.at.elapsed() < PROBE_TTL && p.token == *token).then_some(p.value)
    }
}

/// Open states kept for a moment after a served attribute was read, so that the next request
/// (`getfattr` of another attribute, `deflatefs stat`, a checker going through the names) does
/// not replay the container's index again. Each held node keeps one use of its open state
/// (see `DeflateFs::put_state`), given back by the background flusher once expired.
#[derive(Default)]
pub struct Lingering {
    held: Mutex<Vec<(std::sync::Arc<super::inode::Node>, Instant)>>,
}

/// How long a state is kept after its last served attribute.
pub const LINGER: Duration = Duration::from_secs(2);

impl Lingering {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the caller's use of `node`'s open state until [`LINGER`] from now. Returns false
    /// when a use is already held (then the caller gives its own back at once).
    pub fn hold(&self, node: &std::sync::Arc<super::inode::Node>) -> bool {
        let mut held = self.held.lock();
        let until = Instant::now() + LINGER;
        if let Some(h) = held
            .iter_mut()
            .find(|(n, _)| n.id == node.id && std::sync::Arc::ptr_eq(n, node))
        {
            h.1 = until;
            return false;
        }
        held.push((node.clone(), until));
        true
    }

    /// The nodes whose time is up (their uses are to be given back).
    pub fn expired(&self) -> Vec<std::sync::Arc<super::inode::Node>> {
        let now = Instant::now();
        let mut held = self.held.lock();
        let mut out = Vec::new();
        held.retain(|(n, until)| {
            if *until <= now {
                out.push(n.clone());
                false
            } else {
                true
            }
        });
        out
    }
}

/// The cshatag timestamp form of an mtime: `%010d.%09d` seconds and nanoseconds.
pub fn shatag_ts(sec: i64, nsec: i64) -> String {
    format!("{sec:010}.{nsec:09}")
}

/// Which digests a cache entry holds.
#[derive(Default, Clone)]
struct PlainEntry {
    key: (i64, i64, i64, i64, i64),
    blake3: Option<[u8; 32]>,
    sha256: Option<[u8; 32]>,
}

/// Digests of plain (non-container) files, which are computed by reading the file: cached by
/// backing inode and valid while its size, mtime and ctime stay the same.
#[derive(Default)]
pub struct PlainDigests {
    entries: Mutex<HashMap<(u64, u64), PlainEntry>>,
}

/// Most plain files whose digests are remembered.
const PLAIN_CACHE_ENTRIES: usize = 4096;

impl PlainDigests {
    pub fn new() -> Self {
        Self::default()
    }

    fn key(st: &libc::stat) -> (i64, i64, i64, i64, i64) {
        (
            st.st_size,
            st.st_mtime,
            st.st_mtime_nsec,
            st.st_ctime,
            st.st_ctime_nsec,
        )
    }

    fn get(&self, st: &libc::stat, which: Served) -> Option<[u8; 32]> {
        let map = self.entries.lock();
        let e = map.get(&(st.st_dev, st.st_ino))?;
        if e.key != Self::key(st) {
            return None;
        }
        match which {
            Served::Blake3 => e.blake3,
            _ => e.sha256,
        }
    }

    fn put(&self, st: &libc::stat, which: Served, digest: [u8; 32]) {
        // Timestamps are coarse (a few ms): a change within the same tick as `st` would keep the
        // key. Only remember digests of files that have not changed for a second.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if now - st.st_ctime.max(st.st_mtime) < 2 {
            return;
        }
        let mut map = self.entries.lock();
        if map.len() >= PLAIN_CACHE_ENTRIES && !map.contains_key(&(st.st_dev, st.st_ino)) {
            map.clear();
        }
        let e = map.entry((st.st_dev, st.st_ino)).or_default();
        if e.key != Self::key(st) {
            *e = PlainEntry {
                key: Self::key(st),
                ..Default::default()
            };
        }
        match which {
            Served::Blake3 => e.blake3 = Some(digest),
            _ => e.sha256 = Some(digest),
        }
    }
}

/// Reads a plain file from the start and hashes it (blake3 or sha256). The descriptor is
/// shared by every handle of the file, so only positioned reads are used.
fn hash_plain(p: &PlainFile, which: Served) -> FsResult<[u8; 32]> {
    use std::os::unix::fs::FileExt;
    let mut pos = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut b3 = blake3::Hasher::new();
    let mut sha = Sha256State::new();
    loop {
        let n = match p.file.read_at(&mut buf, pos) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if which == Served::Blake3 {
            b3.update(&buf[..n]);
        } else {
            sha.update(&buf[..n]);
        }
        pos += n as u64;
    }
    Ok(if which == Served::Blake3 {
        *b3.finalize().as_bytes()
    } else {
        sha.finalize()
    })
}

/// The value of a served attribute of a regular file whose open state is `open` and whose
/// attributes (as the mount shows them) are `st`; `backing` is the backing file's own stat.
pub fn value(
    open: &OpenFile,
    which: Served,
    st: &libc::stat,
    backing: &libc::stat,
    plain: &PlainDigests,
) -> FsResult<Vec<u8>> {
    let disk = backing.st_blocks as u64 * 512;
    let text = match (which, open) {
        (Served::ShatagTs, _) => shatag_ts(st.st_mtime, st.st_mtime_nsec),
        (Served::Info, OpenFile::Container(c)) => c.info(disk).to_line(),
        (Served::Info, OpenFile::Plain(_)) => {
            FileInfo::for_plain(st.st_size as u64, disk).to_line()
        }
        (Served::Blake3, OpenFile::Container(c)) => hex(&c.blake3()?),
        (Served::Sha256 | Served::ShatagSha256, OpenFile::Container(c)) => hex(&c.sha256()?),
        (which, OpenFile::Plain(p)) => {
            let which = if which == Served::Blake3 {
                Served::Blake3
            } else {
                Served::Sha256
            };
            match plain.get(backing, which) {
                Some(d) => hex(&d),
                None => {
                    let d = hash_plain(p, which)?;
                    plain.put(backing, which, d);
                    hex(&d)
                }
            }
        }
    };
    Ok(text.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_and_shatag_switch() {
        assert_eq!(
            served(OsStr::new(BLAKE3), false).unwrap(),
            Some(Served::Blake3)
        );
        assert_eq!(served(OsStr::new("user.other"), false).unwrap(), None);
        assert_eq!(served(OsStr::new(SHATAG_TS), false).unwrap(), None);
        assert_eq!(
            served(OsStr::new(SHATAG_TS), true).unwrap(),
            Some(Served::ShatagTs)
        );
        let e = served(OsStr::new("user.deflatefs.nope"), false).unwrap_err();
        assert_eq!(e.errno, libc::ENODATA);
        assert!(is_reserved(b"user.deflatefs.sha256", false));
        assert!(!is_reserved(b"user.shatag.sha256", false));
    }

    #[test]
    fn listing_drops_reserved_names_only() {
        let list = b"user.a\0user.deflatefs.x\0user.shatag.ts\0security.selinux\0";
        assert_eq!(
            filter_listing(list, false),
            b"user.a\0user.shatag.ts\0security.selinux\0".to_vec()
        );
        assert_eq!(
            filter_listing(list, true),
            b"user.a\0security.selinux\0".to_vec()
        );
    }

    #[test]
    fn probe_value_answers_the_same_process_once_while_the_token_holds() {
        let c = ProbeCache::new();
        let t: Token = ([1, 2, 3, 4, 5], 6, None);
        c.put(7, 1, Served::Blake3, t, b"v".to_vec());
        assert_eq!(c.take(8, 1, Served::Blake3, &t), None, "another process");
        assert_eq!(c.take(7, 1, Served::Sha256, &t), None, "another attribute");
        assert_eq!(c.take(7, 1, Served::Blake3, &t), Some(b"v".to_vec()));
        assert_eq!(c.take(7, 1, Served::Blake3, &t), None, "used once");
        c.put(7, 1, Served::Blake3, t, b"v".to_vec());
        let changed: Token = ([1, 2, 3, 4, 5], 6, Some((1, 1)));
        assert_eq!(c.take(7, 1, Served::Blake3, &changed), None, "file changed");
        c.put(0, 1, Served::Blake3, t, b"v".to_vec());
        assert_eq!(
            c.take(0, 1, Served::Blake3, &t),
            None,
            "no caller: never kept"
        );
    }

    #[test]
    fn shatag_timestamp_is_padded_like_cshatag() {
        assert_eq!(shatag_ts(1560177334, 20775051), "1560177334.020775051");
        assert_eq!(shatag_ts(5, 0), "0000000005.000000000");
    }
}
