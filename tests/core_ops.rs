//! The filesystem core driven directly, without the kernel (in the spirit of mountpoint-s3's fs
//! tests): every test builds a [`DeflateFs`] over a fresh backing directory, as the daemon
//! does at mount, and calls its operations the way the FUSE adapter would. No /dev/fuse, no
//! mount: what these tests see is what the core answers, errno for errno.
//!
//! The backing directory is real, so what the core leaves there (containers, names) is checked
//! with the container module and flate2, independently of the read path. The flusher thread is
//! not started: only the operations called here write anything back.
//!
//! Runs as any user (the daemon's own user is the caller); the suite runs it as root.

use std::ffi::{CString, OsStr};
use std::fs::OpenOptions;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::Digest;

mod common;
use common::assert_bytes_eq;

use deflatefs::container::{Container, PieceKind};
use deflatefs::engine::{Engine, EngineConfig, SoftwareBackend};
use deflatefs::fs::core::{Caller, SetAttr};
use deflatefs::fs::{DeflateFs, FsResult};
use deflatefs::options::MountOptions;

/// The root directory's node id, as the kernel knows it.
const ROOT: u64 = 1;
/// Chunk size of new files in these tests: 16 KiB, so a few chunks are a small file.
const CHUNK_LOG2: u8 = 14;
const CHUNK: usize = 1 << CHUNK_LOG2;

/// A filesystem core over a temporary backing directory, rebuilt on demand as a remount would.
struct Core {
    dir: tempfile::TempDir,
    fs: Option<DeflateFs>,
}

impl Core {
    fn new() -> Core {
        let dir = tempfile::tempdir().expect("temporary backing directory");
        let mut core = Core { dir, fs: None };
        core.mount();
        core
    }

    /// Builds the core over the backing directory as the daemon does at mount (src/mount.rs):
    /// the directory opened O_PATH first, then a software engine and the mount options.
    fn mount(&mut self) {
        let c = CString::new(self.dir.path().to_str().unwrap()).unwrap();
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        assert!(fd >= 0, "open {}: {}", self.dir.path().display(), errno());
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let root = unsafe { OwnedFd::from_raw_fd(fd) };
        let engine = Engine::new(EngineConfig {
            queues: 1,
            queue_depth: 4,
            backend: Arc::new(SoftwareBackend::new()),
        })
        .expect("software engine");
        let opts = MountOptions {
            chunk_log2: CHUNK_LOG2,
            ..MountOptions::default()
        };
        self.fs = Some(DeflateFs::new(root, opts, engine).expect("DeflateFs::new"));
    }

    /// Drops the core, after the unmount flush, and builds a new one over the same directory.
    fn remount(&mut self) {
        if let Some(fs) = self.fs.take() {
            fs.flush_all();
        }
        self.mount();
    }

    /// Builds a new core over the same directory, as after a power cut and a reboot: every
    /// file there was changed before the boot, so each goes through recovery at its first use.
    fn remount_after_power_cut(&mut self) {
        self.fs = None;
        self.mount();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        self.fs.as_mut().unwrap().assume_booted_at(now + 10);
    }

    fn fs(&self) -> &DeflateFs {
        self.fs.as_ref().expect("mounted")
    }

    fn backing(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The node id of `name` in directory `parent`.
    fn lookup(&self, parent: u64, name: &str) -> FsResult<u64> {
        self.fs()
            .lookup(parent, OsStr::new(name))
            .map(|(n, _)| n.id)
    }

    fn stat(&self, id: u64) -> libc::stat {
        self.fs().getattr(id).expect("getattr")
    }

    /// Creates `name` in the root, writes `data` and releases it; returns its node id.
    fn make_file(&self, name: &str, data: &[u8]) -> u64 {
        let (node, _, fh) = self
            .fs()
            .create(ROOT, OsStr::new(name), 0o644, libc::O_RDWR, me())
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
        if !data.is_empty() {
            write_all(self.fs(), fh, 0, data);
        }
        self.fs().release(fh).expect("release");
        node.id
    }

    /// The whole content of node `id`, read through a fresh handle.
    fn content(&self, id: u64) -> Vec<u8> {
        let fh = self
            .fs()
            .open(id, libc::O_RDONLY)
            .expect("open for reading");
        let size = self.stat(id).st_size as usize;
        let data = read_range(self.fs(), fh, 0, size + 1).expect("read");
        self.fs().release(fh).expect("release");
        data
    }

    /// Truncates (or extends) file `id` to `size` through setattr, as `truncate(1)` does.
    fn truncate(&self, id: u64, size: usize) -> libc::stat {
        let a = SetAttr {
            size: Some(size as u64),
            ..SetAttr::default()
        };
        self.fs().setattr(id, None, a).expect("setattr size")
    }
}

/// The caller of every request: the user running the tests (the daemon's own user).
fn me() -> Caller {
    Caller {
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        pid: std::process::id(),
    }
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Writes all of `data` at `offset` through handle `fh`, as the kernel would in 128 KiB requests.
fn write_all(fs: &DeflateFs, fh: u64, offset: u64, data: &[u8]) {
    for (i, piece) in data.chunks(128 << 10).enumerate() {
        let at = offset + (i * (128 << 10)) as u64;
        let n = fs
            .write(fh, at, piece)
            .unwrap_or_else(|e| panic!("write {} bytes at {at}: {e}", piece.len()));
        assert_eq!(n, piece.len(), "short write at {at}");
    }
}

/// Reads `len` bytes from `offset` (fewer at the end of the file) in 128 KiB requests.
fn read_range(fs: &DeflateFs, fh: u64, offset: u64, len: usize) -> FsResult<Vec<u8>> {
    let mut out = Vec::new();
    while out.len() < len {
        let want = (len - out.len()).min(128 << 10) as u32;
        let piece = fs.read(fh, offset + out.len() as u64, want)?;
        if piece.is_empty() {
            break;
        }
        out.extend_from_slice(&piece);
    }
    Ok(out)
}

/// `len` bytes of compressible text, different for each seed.
fn text(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut line = 0u64;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(
            format!("{line:06} chunk {} member {:x}\n", x % 997, x >> 40).as_bytes(),
        );
        line += 1;
    }
    out.truncate(len);
    out
}

#[track_caller]
fn assert_errno<T: std::fmt::Debug>(r: FsResult<T>, want: i32, what: &str) {
    match r {
        Ok(v) => panic!("{what}: succeeded ({v:?}), expected errno {want}"),
        Err(e) => assert_eq!(e.errno, want, "{what}: {e}"),
    }
}

fn names_in(fs: &DeflateFs, dir: u64) -> Vec<String> {
    let fh = fs.opendir(dir).expect("opendir");
    let mut names: Vec<String> = fs
        .readdir(fh, 0)
        .expect("readdir")
        .into_iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    fs.releasedir(fh).expect("releasedir");
    names.sort();
    names
}

// ---- lookup, create, write, read ----

#[test]
fn lookup_of_a_missing_name_is_enoent() {
    let core = Core::new();
    assert_errno(core.lookup(ROOT, "absent"), libc::ENOENT, "lookup absent");
}

#[test]
fn a_created_file_reads_back_what_was_written_and_stats_its_logical_size() {
    let core = Core::new();
    let data = text(5 * CHUNK + 123, 1);
    let (node, st, fh) = core
        .fs()
        .create(ROOT, OsStr::new("f"), 0o640, libc::O_RDWR, me())
        .unwrap();
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(st.st_mode & 0o7777, 0o640);
    assert_eq!(st.st_size, 0);
    write_all(core.fs(), fh, 0, &data);
    // Read back through the same handle before any flush: the dirty chunks answer.
    let back = read_range(core.fs(), fh, 0, data.len()).unwrap();
    assert_bytes_eq(&back, &data, "read before release");
    assert_eq!(core.stat(node.id).st_size as usize, data.len());
    core.fs().release(fh).unwrap();

    let id = core.lookup(ROOT, "f").unwrap();
    assert_eq!(id, node.id, "a second lookup finds the same node");
    assert_bytes_eq(&core.content(id), &data, "read after release");
    // The backing file is a container, and smaller than the text it holds.
    let backing = std::fs::read(core.backing("f")).unwrap();
    assert!(Container::probe(&std::fs::File::open(core.backing("f")).unwrap()).unwrap());
    assert!(
        backing.len() < data.len() / 2,
        "backing file {} bytes for {} bytes of text",
        backing.len(),
        data.len()
    );
}

#[test]
fn reads_at_and_past_the_end_are_short_or_empty() {
    let core = Core::new();
    let data = text(CHUNK + 10, 2);
    let id = core.make_file("f", &data);
    let fh = core.fs().open(id, libc::O_RDONLY).unwrap();
    let tail = core.fs().read(fh, data.len() as u64 - 4, 100).unwrap();
    assert_eq!(tail, &data[data.len() - 4..]);
    assert!(core
        .fs()
        .read(fh, data.len() as u64, 100)
        .unwrap()
        .is_empty());
    assert!(core
        .fs()
        .read(fh, 10 * CHUNK as u64, 100)
        .unwrap()
        .is_empty());
    core.fs().release(fh).unwrap();
}

#[test]
fn overwrites_inside_and_across_chunks_read_back_merged() {
    let core = Core::new();
    let mut model = text(4 * CHUNK, 3);
    let id = core.make_file("f", &model);
    let fh = core.fs().open(id, libc::O_RDWR).unwrap();
    for (at, len, seed) in [(100, 50, 10), (CHUNK - 7, 20, 11), (2 * CHUNK, CHUNK, 12)] {
        let patch = text(len, seed);
        write_all(core.fs(), fh, at as u64, &patch);
        model[at..at + len].copy_from_slice(&patch);
    }
    core.fs().release(fh).unwrap();
    assert_bytes_eq(&core.content(id), &model, "after overwrites");
}

#[test]
fn a_write_on_a_read_only_handle_is_ebadf() {
    let core = Core::new();
    let id = core.make_file("f", b"data");
    let fh = core.fs().open(id, libc::O_RDONLY).unwrap();
    assert_errno(
        core.fs().write(fh, 0, b"x"),
        libc::EBADF,
        "write on O_RDONLY",
    );
    core.fs().release(fh).unwrap();
    assert_eq!(core.content(id), b"data");
}

#[test]
fn a_released_handle_is_ebadf() {
    let core = Core::new();
    let id = core.make_file("f", b"data");
    let fh = core.fs().open(id, libc::O_RDONLY).unwrap();
    core.fs().release(fh).unwrap();
    assert_errno(core.fs().read(fh, 0, 4), libc::EBADF, "read after release");
    assert_errno(core.fs().release(fh), libc::EBADF, "second release");
}

#[test]
fn open_with_o_trunc_empties_the_file() {
    let core = Core::new();
    let id = core.make_file("f", &text(3 * CHUNK, 4));
    let fh = core.fs().open(id, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    assert_eq!(core.stat(id).st_size, 0);
    core.fs().write(fh, 0, b"new").unwrap();
    core.fs().release(fh).unwrap();
    assert_eq!(core.content(id), b"new");
}

#[test]
fn appends_through_an_o_append_handle_land_at_the_end() {
    let core = Core::new();
    let id = core.make_file("log", b"first\n");
    let fh = core.fs().open(id, libc::O_WRONLY | libc::O_APPEND).unwrap();
    // The offset the kernel sends is ignored for an O_APPEND handle.
    core.fs().write(fh, 0, b"second\n").unwrap();
    core.fs().write(fh, 0, b"third\n").unwrap();
    core.fs().release(fh).unwrap();
    assert_eq!(core.content(id), b"first\nsecond\nthird\n");
}

// ---- fsync and durability ----

#[test]
fn after_fsync_the_backing_file_holds_the_data_as_gzip() {
    let core = Core::new();
    let data = text(3 * CHUNK + 999, 5);
    let (_, _, fh) = core
        .fs()
        .create(ROOT, OsStr::new("f"), 0o644, libc::O_RDWR, me())
        .unwrap();
    write_all(core.fs(), fh, 0, &data);
    core.fs().fsync(fh, false).unwrap();
    // Read behind the core's back while the handle is still open: written front to back, a
    // container is a multi-member gzip file of its content (docs/FORMAT.md).
    let mut unzipped = Vec::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(core.backing("f")).unwrap())
        .read_to_end(&mut unzipped)
        .unwrap();
    assert_bytes_eq(&unzipped, &data, "gunzip of the backing file after fsync");
    let c = Container::open(std::fs::File::open(core.backing("f")).unwrap()).unwrap();
    assert_eq!(c.size(), data.len() as u64, "committed logical size");
    core.fs().release(fh).unwrap();
}

#[test]
fn flushed_data_survives_dropping_the_core_and_building_a_new_one() {
    let mut core = Core::new();
    let data = text(6 * CHUNK + 17, 6);
    let id = core.make_file("keep", &data);
    let mtime = core.stat(id).st_mtime;
    core.remount();
    let id = core.lookup(ROOT, "keep").unwrap();
    let st = core.stat(id);
    assert_eq!(st.st_size as usize, data.len());
    assert_eq!(st.st_mtime, mtime);
    assert_bytes_eq(&core.content(id), &data, "after remount");
}

#[test]
fn data_left_open_is_written_back_by_the_unmount_flush() {
    let mut core = Core::new();
    let data = text(2 * CHUNK + 5, 7);
    let (_, _, fh) = core
        .fs()
        .create(ROOT, OsStr::new("open"), 0o644, libc::O_RDWR, me())
        .unwrap();
    write_all(core.fs(), fh, 0, &data);
    // No release, no fsync: the handle is still open when the filesystem goes away.
    core.remount();
    let id = core.lookup(ROOT, "open").unwrap();
    assert_bytes_eq(&core.content(id), &data, "after the unmount flush");
}

/// The logical size the backing file's last commit records, read behind the core's back.
fn committed_size(path: &Path) -> u64 {
    Container::open(std::fs::File::open(path).unwrap())
        .unwrap()
        .size()
}

#[test]
fn the_flushers_commit_pass_commits_what_a_writer_left_uncommitted() {
    let core = Core::new();
    let data = text(3 * CHUNK + 10, 9);
    let (_, _, fh) = core
        .fs()
        .create(ROOT, OsStr::new("f"), 0o644, libc::O_RDWR, me())
        .unwrap();
    write_all(core.fs(), fh, 0, &data);
    assert_eq!(
        committed_size(&core.backing("f")),
        0,
        "nothing committed yet"
    );
    // The flusher's 50 ms passes only relieve memory pressure...
    core.fs().background_pass(false);
    assert_eq!(
        committed_size(&core.backing("f")),
        0,
        "a pass without commit"
    );
    // ...and every 5 s one commits, with the writer's handle still open.
    core.fs().background_pass(true);
    assert_eq!(committed_size(&core.backing("f")), data.len() as u64);
    core.fs().release(fh).unwrap();
}

// ---- setattr: truncate, holes ----

#[test]
fn truncate_shrinks_and_grows_with_zeros_where_data_was_cut() {
    let core = Core::new();
    let data = text(3 * CHUNK, 8);
    let id = core.make_file("f", &data);
    let shrink = CHUNK + 100;
    let st = core.truncate(id, shrink);
    assert_eq!(st.st_size as usize, shrink);
    assert_bytes_eq(&core.content(id), &data[..shrink], "after shrink");
    // Growing again must not bring back what the shrink cut away.
    let grow = 4 * CHUNK + 3;
    let st = core.truncate(id, grow);
    assert_eq!(st.st_size as usize, grow);
    let mut want = data[..shrink].to_vec();
    want.resize(grow, 0);
    assert_bytes_eq(&core.content(id), &want, "after grow");
}

#[test]
fn a_write_far_past_the_end_leaves_a_hole_that_reads_as_zeros() {
    let mut core = Core::new();
    let (node, _, fh) = core
        .fs()
        .create(ROOT, OsStr::new("sparse"), 0o644, libc::O_RDWR, me())
        .unwrap();
    core.fs().write(fh, 0, b"head").unwrap();
    let far = 50 * CHUNK as u64 + 7;
    core.fs().write(fh, far, b"tail").unwrap();
    core.fs().release(fh).unwrap();
    let mut want = vec![0u8; far as usize + 4];
    want[..4].copy_from_slice(b"head");
    want[far as usize..].copy_from_slice(b"tail");
    assert_bytes_eq(&core.content(node.id), &want, "sparse file");
    // The hole costs no data member: the backing file stays small.
    let backing = std::fs::metadata(core.backing("sparse")).unwrap().len();
    assert!(
        backing < 16 << 10,
        "backing file {backing} bytes for a hole"
    );
    core.remount();
    let id = core.lookup(ROOT, "sparse").unwrap();
    assert_bytes_eq(&core.content(id), &want, "sparse file after remount");
}

#[test]
fn truncate_of_a_directory_is_eisdir() {
    let core = Core::new();
    let (dir, _) = core.fs().mkdir(ROOT, OsStr::new("d"), 0o755, me()).unwrap();
    let r = core.fs().setattr(
        dir.id,
        None,
        SetAttr {
            size: Some(0),
            ..SetAttr::default()
        },
    );
    assert_errno(r, libc::EISDIR, "truncate a directory");
}

#[test]
fn setattr_changes_mode_and_times() {
    let core = Core::new();
    let id = core.make_file("f", b"x");
    let st = core
        .fs()
        .setattr(
            id,
            None,
            SetAttr {
                mode: Some(0o600),
                mtime: Some(deflatefs::fs::core::TimeSpec::At(1_000_000_000, 5)),
                ..SetAttr::default()
            },
        )
        .unwrap();
    assert_eq!(st.st_mode & 0o7777, 0o600);
    assert_eq!((st.st_mtime, st.st_mtime_nsec), (1_000_000_000, 5));
    let backing = std::fs::metadata(core.backing("f")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::mtime(&backing),
        1_000_000_000
    );
}

// ---- names ----

#[test]
fn rename_moves_a_file_and_the_old_name_is_gone() {
    let core = Core::new();
    let id = core.make_file("a", b"contents of a");
    core.fs()
        .rename(ROOT, OsStr::new("a"), ROOT, OsStr::new("b"), 0)
        .unwrap();
    assert_errno(core.lookup(ROOT, "a"), libc::ENOENT, "lookup old name");
    let b = core.lookup(ROOT, "b").unwrap();
    assert_eq!(b, id, "the node follows its inode");
    assert_eq!(core.content(b), b"contents of a");
}

#[test]
fn rename_over_an_existing_file_replaces_it_and_its_open_handle_keeps_the_old_data() {
    let core = Core::new();
    let old = text(2 * CHUNK, 20);
    let new = text(CHUNK + 1, 21);
    let victim = core.make_file("target", &old);
    core.make_file("source", &new);
    let held = core.fs().open(victim, libc::O_RDONLY).unwrap();
    core.fs()
        .rename(ROOT, OsStr::new("source"), ROOT, OsStr::new("target"), 0)
        .unwrap();
    let target = core.lookup(ROOT, "target").unwrap();
    assert_ne!(target, victim);
    assert_bytes_eq(&core.content(target), &new, "the new target");
    let still = read_range(core.fs(), held, 0, old.len()).unwrap();
    assert_bytes_eq(&still, &old, "the replaced file through its open handle");
    core.fs().release(held).unwrap();
    assert_errno(core.lookup(ROOT, "source"), libc::ENOENT, "lookup source");
}

#[test]
fn rename_noreplace_over_an_existing_name_is_eexist() {
    let core = Core::new();
    core.make_file("a", b"a");
    core.make_file("b", b"b");
    let r = core.fs().rename(
        ROOT,
        OsStr::new("a"),
        ROOT,
        OsStr::new("b"),
        libc::RENAME_NOREPLACE,
    );
    assert_errno(r, libc::EEXIST, "RENAME_NOREPLACE");
}

#[test]
fn rename_of_a_directory_over_a_non_empty_one_is_enotempty() {
    let core = Core::new();
    core.fs()
        .mkdir(ROOT, OsStr::new("d1"), 0o755, me())
        .unwrap();
    let (d2, _) = core
        .fs()
        .mkdir(ROOT, OsStr::new("d2"), 0o755, me())
        .unwrap();
    let (_, _, fh) = core
        .fs()
        .create(d2.id, OsStr::new("f"), 0o644, libc::O_RDWR, me())
        .unwrap();
    core.fs().release(fh).unwrap();
    let r = core
        .fs()
        .rename(ROOT, OsStr::new("d1"), ROOT, OsStr::new("d2"), 0);
    assert_errno(r, libc::ENOTEMPTY, "rename dir over non-empty dir");
}

#[test]
fn unlink_removes_the_name_and_an_open_handle_still_reads() {
    let core = Core::new();
    let data = text(CHUNK + 50, 22);
    let id = core.make_file("f", &data);
    let fh = core.fs().open(id, libc::O_RDONLY).unwrap();
    core.fs().unlink(ROOT, OsStr::new("f")).unwrap();
    assert_errno(core.lookup(ROOT, "f"), libc::ENOENT, "lookup after unlink");
    assert!(!core.backing("f").exists());
    let back = read_range(core.fs(), fh, 0, data.len()).unwrap();
    assert_bytes_eq(&back, &data, "unlinked file through its handle");
    core.fs().release(fh).unwrap();
    assert_errno(
        core.fs().unlink(ROOT, OsStr::new("f")),
        libc::ENOENT,
        "second unlink",
    );
}

#[test]
fn a_hard_link_shares_content_and_counts_two_links() {
    let core = Core::new();
    let id = core.make_file("a", b"one");
    let (linked, st) = core
        .fs()
        .link(id, ROOT, OsStr::new("b"))
        .expect("link a to b");
    assert_eq!(linked.id, id, "both names lead to one node");
    assert_eq!(st.st_nlink, 2);
    let fh = core.fs().open(id, libc::O_WRONLY | libc::O_APPEND).unwrap();
    core.fs().write(fh, 0, b" two").unwrap();
    core.fs().release(fh).unwrap();
    let b = core.lookup(ROOT, "b").unwrap();
    assert_eq!(core.content(b), b"one two");
    core.fs().unlink(ROOT, OsStr::new("a")).unwrap();
    assert_eq!(core.stat(b).st_nlink, 1);
    assert_eq!(core.content(b), b"one two");
}

#[test]
fn link_of_a_directory_is_eperm_and_over_an_existing_name_eexist() {
    let core = Core::new();
    let (d, _) = core.fs().mkdir(ROOT, OsStr::new("d"), 0o755, me()).unwrap();
    assert_errno(
        core.fs().link(d.id, ROOT, OsStr::new("d2")),
        libc::EPERM,
        "link a directory",
    );
    let f = core.make_file("f", b"f");
    core.make_file("g", b"g");
    assert_errno(
        core.fs().link(f, ROOT, OsStr::new("g")),
        libc::EEXIST,
        "link over g",
    );
}

#[test]
fn mkdir_then_readdir_lists_what_was_made_inside() {
    let core = Core::new();
    let (d, st) = core.fs().mkdir(ROOT, OsStr::new("d"), 0o750, me()).unwrap();
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFDIR);
    for name in ["x", "y", "z"] {
        let (_, _, fh) = core
            .fs()
            .create(d.id, OsStr::new(name), 0o644, libc::O_RDWR, me())
            .unwrap();
        core.fs().release(fh).unwrap();
    }
    core.fs()
        .mkdir(d.id, OsStr::new("sub"), 0o755, me())
        .unwrap();
    core.fs()
        .symlink(d.id, OsStr::new("ln"), OsStr::new("x"), me())
        .unwrap();
    assert_eq!(names_in(core.fs(), d.id), ["ln", "sub", "x", "y", "z"]);
    assert_eq!(names_in(core.fs(), ROOT), ["d"]);
    let ln = core.lookup(d.id, "ln").unwrap();
    assert_eq!(core.fs().readlink(ln).unwrap(), b"x");
}

#[test]
fn readdir_offsets_continue_the_listing_taken_at_the_first_call() {
    let core = Core::new();
    for i in 0..10 {
        core.make_file(&format!("f{i}"), b"");
    }
    let fh = core.fs().opendir(ROOT).unwrap();
    let all = core.fs().readdir(fh, 0).unwrap();
    // A name made after the first call does not move the offsets of a listing in progress.
    core.make_file("late", b"");
    let rest = core.fs().readdir(fh, 5).unwrap();
    let names = |v: &[deflatefs::fs::core::DirEntry]| -> Vec<_> {
        v.iter().map(|e| e.name.clone()).collect()
    };
    assert_eq!(names(&rest), names(&all[5..]));
    core.fs().releasedir(fh).unwrap();
}

#[test]
fn deflatefs_own_names_are_hidden_and_cannot_be_made() {
    let core = Core::new();
    // What a compaction cut short by a crash leaves behind.
    std::fs::write(core.backing(".deflatefs-compact-42"), b"temporary").unwrap();
    core.make_file("visible", b"");
    assert_eq!(names_in(core.fs(), ROOT), ["visible"]);
    assert_errno(
        core.lookup(ROOT, ".deflatefs-compact-42"),
        libc::ENOENT,
        "lookup of an internal name",
    );
    assert_errno(
        core.fs()
            .create(ROOT, OsStr::new(".deflatefs-x"), 0o644, libc::O_RDWR, me()),
        libc::EPERM,
        "create of an internal name",
    );
    assert_errno(
        core.fs().rename(
            ROOT,
            OsStr::new("visible"),
            ROOT,
            OsStr::new(".deflatefs-y"),
            0,
        ),
        libc::EPERM,
        "rename to an internal name",
    );
}

#[test]
fn create_exclusive_of_an_existing_name_is_eexist_and_mkdir_too() {
    let core = Core::new();
    core.make_file("f", b"keep me");
    assert_errno(
        core.fs().create(
            ROOT,
            OsStr::new("f"),
            0o644,
            libc::O_RDWR | libc::O_EXCL,
            me(),
        ),
        libc::EEXIST,
        "O_EXCL create",
    );
    assert_errno(
        core.fs().mkdir(ROOT, OsStr::new("f"), 0o755, me()),
        libc::EEXIST,
        "mkdir over a file",
    );
    let id = core.lookup(ROOT, "f").unwrap();
    assert_eq!(core.content(id), b"keep me");
}

#[test]
fn rmdir_of_a_non_empty_directory_is_enotempty_and_of_a_file_enotdir() {
    let core = Core::new();
    let (d, _) = core.fs().mkdir(ROOT, OsStr::new("d"), 0o755, me()).unwrap();
    let (_, _, fh) = core
        .fs()
        .create(d.id, OsStr::new("f"), 0o644, libc::O_RDWR, me())
        .unwrap();
    core.fs().release(fh).unwrap();
    assert_errno(
        core.fs().rmdir(ROOT, OsStr::new("d")),
        libc::ENOTEMPTY,
        "rmdir non-empty",
    );
    core.make_file("plain", b"");
    assert_errno(
        core.fs().rmdir(ROOT, OsStr::new("plain")),
        libc::ENOTDIR,
        "rmdir a file",
    );
    core.fs().unlink(d.id, OsStr::new("f")).unwrap();
    core.fs().rmdir(ROOT, OsStr::new("d")).unwrap();
    assert_errno(core.lookup(ROOT, "d"), libc::ENOENT, "lookup removed dir");
}

#[test]
fn directories_refuse_file_operations_and_files_directory_ones() {
    let core = Core::new();
    let (d, _) = core.fs().mkdir(ROOT, OsStr::new("d"), 0o755, me()).unwrap();
    let f = core.make_file("f", b"");
    assert_errno(
        core.fs().open(d.id, libc::O_RDONLY),
        libc::EISDIR,
        "open a dir",
    );
    assert_errno(
        core.fs().unlink(ROOT, OsStr::new("d")),
        libc::EISDIR,
        "unlink a dir",
    );
    assert_errno(core.fs().opendir(f), libc::ENOTDIR, "opendir a file");
    assert_errno(core.fs().readlink(f), libc::EINVAL, "readlink a file");
}

// ---- xattrs ----

/// The value of a served attribute, asked the way getfattr asks: size first, then the value.
fn served(core: &Core, id: u64, name: &str) -> String {
    let len = core
        .fs()
        .getxattr(id, OsStr::new(name), 0, me())
        .unwrap_or_else(|e| panic!("getxattr {name} (size query): {e}"))
        .len();
    let v = core
        .fs()
        .getxattr(id, OsStr::new(name), len as u32, me())
        .unwrap_or_else(|e| panic!("getxattr {name}: {e}"));
    assert_eq!(v.len(), len, "{name}: the size query's answer");
    String::from_utf8(v).unwrap()
}

#[test]
fn digest_xattrs_equal_sha256_and_blake3_of_the_content() {
    let core = Core::new();
    let mut data = text(3 * CHUNK + 77, 30);
    let id = core.make_file("f", &data);
    let check = |data: &[u8], what: &str| {
        let sha = sha2::Sha256::digest(data);
        let sha: String = sha.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(served(&core, id, "user.deflatefs.sha256"), sha, "{what}");
        let b3 = blake3::hash(data).to_hex().to_string();
        assert_eq!(served(&core, id, "user.deflatefs.blake3"), b3, "{what}");
    };
    check(&data, "as written");
    // An overwrite in the middle and a truncate change both digests.
    let fh = core.fs().open(id, libc::O_RDWR).unwrap();
    core.fs().write(fh, CHUNK as u64 + 5, b"CHANGED").unwrap();
    core.fs().release(fh).unwrap();
    data[CHUNK + 5..CHUNK + 12].copy_from_slice(b"CHANGED");
    check(&data, "after an overwrite");
    core.truncate(id, CHUNK + 1);
    data.truncate(CHUNK + 1);
    check(&data, "after a truncate");
    let empty = core.make_file("empty", b"");
    assert_eq!(
        served(&core, empty, "user.deflatefs.sha256"),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn digest_names_are_not_listed_cannot_be_set_and_are_enodata_on_directories() {
    let core = Core::new();
    let id = core.make_file("f", b"data");
    core.fs()
        .setxattr(id, OsStr::new("user.mine"), b"v", 0, me())
        .unwrap();
    let list = core.fs().listxattr(id, 0).unwrap();
    let names: Vec<&[u8]> = list.split(|b| *b == 0).filter(|n| !n.is_empty()).collect();
    assert_eq!(names, [b"user.mine".as_slice()]);
    assert_eq!(
        core.fs()
            .getxattr(id, OsStr::new("user.mine"), 64, me())
            .unwrap(),
        b"v"
    );
    for name in ["user.deflatefs.sha256", "user.deflatefs.anything"] {
        assert_errno(
            core.fs().setxattr(id, OsStr::new(name), b"x", 0, me()),
            libc::EPERM,
            name,
        );
        assert_errno(
            core.fs().removexattr(id, OsStr::new(name), me()),
            libc::EPERM,
            name,
        );
    }
    assert_errno(
        core.fs()
            .getxattr(id, OsStr::new("user.deflatefs.anything"), 64, me()),
        libc::ENODATA,
        "an unknown reserved name",
    );
    let (d, _) = core.fs().mkdir(ROOT, OsStr::new("d"), 0o755, me()).unwrap();
    assert_errno(
        core.fs()
            .getxattr(d.id, OsStr::new("user.deflatefs.sha256"), 64, me()),
        libc::ENODATA,
        "digest of a directory",
    );
}

#[test]
fn the_engine_report_is_served_on_the_root() {
    let core = Core::new();
    let report = served(&core, ROOT, "user.deflatefs.engine");
    assert!(report.contains("backend="), "{report}");
    assert!(report.contains("queues=1\n"), "{report}");
}

// ---- damage ----

/// Flips one byte in the middle of the data member of chunk `chunk` of the container at `path`.
fn damage_chunk(path: &Path, chunk: u64) {
    let c = Container::open(std::fs::File::open(path).unwrap()).unwrap();
    let pieces = c.index().pieces(chunk);
    let piece = pieces
        .iter()
        .rev()
        .find(|p| p.kind != PieceKind::Hole)
        .unwrap_or_else(|| panic!("chunk {chunk} has no data member"));
    let at = piece.member_offset + piece.stored_len as u64 / 2;
    drop(c);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x5a], at).unwrap();
}

#[test]
fn a_damaged_chunk_reads_eio_while_the_other_chunks_read_fine() {
    let mut core = Core::new();
    let data = text(4 * CHUNK, 40);
    core.make_file("f", &data);
    core.remount();
    damage_chunk(&core.backing("f"), 2);
    let id = core.lookup(ROOT, "f").unwrap();
    assert_eq!(core.stat(id).st_size as usize, data.len(), "size is intact");
    let fh = core.fs().open(id, libc::O_RDONLY).unwrap();
    for chunk in 0..4u64 {
        let at = chunk * CHUNK as u64;
        let r = read_range(core.fs(), fh, at, CHUNK);
        if chunk == 2 {
            assert_errno(r, libc::EIO, "read of the damaged chunk");
        } else {
            let got = r.unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
            assert_bytes_eq(
                &got,
                &data[at as usize..at as usize + CHUNK],
                &format!("chunk {chunk}"),
            );
        }
    }
    // A read that starts in a good chunk and runs into the damaged one fails too, and the
    // damage does not heal by asking again.
    assert_errno(
        core.fs().read(fh, 2 * CHUNK as u64 - 10, 20),
        libc::EIO,
        "read across into the damaged chunk",
    );
    assert_errno(
        core.fs().read(fh, 2 * CHUNK as u64 + 100, 10),
        libc::EIO,
        "second read of the damaged chunk",
    );
    core.fs().release(fh).unwrap();
    // The SHA-256 recorded as the file was written answers without reading the data: it is
    // the digest of what was written, which a bit-rot check then compares against.
    let sha: String = sha2::Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(served(&core, id, "user.deflatefs.sha256"), sha);
}

// ---- compaction ----

/// `len` bytes that do not compress, different for each seed.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The backing file's inode number and length.
fn backing_inode(path: &Path) -> (u64, u64) {
    let md = std::fs::metadata(path).unwrap();
    (std::os::unix::fs::MetadataExt::ino(&md), md.len())
}

/// Writes 1.5 MiB of noise to `name` and overwrites all of it twice, each pass committed, with
/// the last handle left open: two thirds of the container are then stale, well past the
/// compaction threshold (docs/FORMAT.md, "Compaction"). Returns the node, the open handle and
/// the content.
fn mostly_stale_file(core: &Core, name: &str) -> (u64, u64, Vec<u8>) {
    let len = 3 << 19;
    let (node, _, fh) = core
        .fs()
        .create(ROOT, OsStr::new(name), 0o640, libc::O_RDWR, me())
        .unwrap();
    let mut data = Vec::new();
    for seed in 0..3 {
        data = noise(len, 50 + seed);
        write_all(core.fs(), fh, 0, &data);
        core.fs().fsync(fh, true).unwrap();
    }
    (node.id, fh, data)
}

#[test]
fn closing_a_mostly_stale_file_compacts_it_in_place_keeping_content_and_attributes() {
    let mut core = Core::new();
    let (id, fh, data) = mostly_stale_file(&core, "db");
    core.fs()
        .setxattr(id, OsStr::new("user.tag"), b"kept", 0, me())
        .unwrap();
    let (ino_before, len_before) = backing_inode(&core.backing("db"));
    assert!(len_before > 2 * data.len() as u64, "{len_before} bytes");
    core.fs().release(fh).unwrap();
    let (ino_after, len_after) = backing_inode(&core.backing("db"));
    assert_ne!(
        ino_after, ino_before,
        "the compacted copy is renamed into place"
    );
    assert!(
        len_after < data.len() as u64 + (64 << 10),
        "compacted to {len_after} bytes for {} bytes of data",
        data.len()
    );
    assert_eq!(
        names_in(core.fs(), ROOT),
        ["db"],
        "no temporary left behind"
    );
    let st = core.stat(id);
    assert_eq!(st.st_mode & 0o7777, 0o640);
    assert_eq!(
        core.fs()
            .getxattr(id, OsStr::new("user.tag"), 64, me())
            .unwrap(),
        b"kept"
    );
    assert_bytes_eq(&core.content(id), &data, "after compaction");
    core.remount();
    let id = core.lookup(ROOT, "db").unwrap();
    assert_bytes_eq(&core.content(id), &data, "compacted file after remount");
}

#[test]
fn a_file_kept_open_is_compacted_by_the_background_round_and_stays_writable() {
    let mut core = Core::new();
    let (id, fh, mut data) = mostly_stale_file(&core, "log");
    let (ino_before, _) = backing_inode(&core.backing("log"));
    // What the flusher runs once a second (not started in these tests).
    core.fs().compact_open_files();
    let (ino_after, _) = backing_inode(&core.backing("log"));
    assert_ne!(ino_after, ino_before, "compacted while open");
    // The open handle now writes to the new backing file.
    write_all(core.fs(), fh, 100, b"after compaction");
    data[100..116].copy_from_slice(b"after compaction");
    core.fs().fsync(fh, false).unwrap();
    core.fs().release(fh).unwrap();
    assert_bytes_eq(&core.content(id), &data, "written after compaction");
    core.remount();
    let id = core.lookup(ROOT, "log").unwrap();
    assert_bytes_eq(&core.content(id), &data, "after remount");
}

#[test]
fn a_file_with_two_links_is_never_compacted() {
    let core = Core::new();
    let (id, fh, data) = mostly_stale_file(&core, "a");
    core.fs().link(id, ROOT, OsStr::new("b")).unwrap();
    let (ino_before, len_before) = backing_inode(&core.backing("a"));
    core.fs().release(fh).unwrap();
    // A rename into place would split the two names into two files.
    assert_eq!(backing_inode(&core.backing("a")), (ino_before, len_before));
    assert_eq!(backing_inode(&core.backing("b")).0, ino_before);
    let b = core.lookup(ROOT, "b").unwrap();
    assert_bytes_eq(&core.content(b), &data, "through the second name");
}

// ---- containers found cut short at open ----

#[test]
fn a_container_cut_short_in_its_last_commit_opens_at_the_commit_before() {
    let mut core = Core::new();
    let v1 = text(2 * CHUNK, 60);
    let id = core.make_file("f", &v1);
    let fh = core.fs().open(id, libc::O_RDWR).unwrap();
    core.fs()
        .write(fh, 3 * CHUNK as u64, &text(CHUNK, 61))
        .unwrap();
    core.fs().release(fh).unwrap();
    core.remount();
    // A writer killed in the middle of its last commit leaves a torn tail.
    let path = core.backing("f");
    let len = std::fs::metadata(&path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let id = core.lookup(ROOT, "f").unwrap();
    assert_eq!(
        core.stat(id).st_size as usize,
        v1.len(),
        "size of the commit before"
    );
    assert_bytes_eq(&core.content(id), &v1, "content of the commit before");
    // Writing after the torn tail works, and what is written then survives a remount.
    let fh = core.fs().open(id, libc::O_WRONLY | libc::O_APPEND).unwrap();
    core.fs().write(fh, 0, b"appended").unwrap();
    core.fs().release(fh).unwrap();
    core.remount();
    let id = core.lookup(ROOT, "f").unwrap();
    let mut want = v1.clone();
    want.extend_from_slice(b"appended");
    assert_bytes_eq(&core.content(id), &want, "appended after the torn tail");
}

#[test]
fn a_container_of_an_unknown_format_version_is_listed_and_removable_but_opens_with_eio() {
    let mut core = Core::new();
    core.make_file("future", &text(CHUNK, 70));
    core.remount();
    // Format version 99 in the header, with the header's own crc32 made right again: a
    // container of ours (not a plain file to serve as raw bytes) that this version cannot read.
    let path = core.backing("future");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut payload = [0u8; 20];
    f.read_exact_at(&mut payload, 16).unwrap();
    assert_eq!(&payload[..8], b"DEFLATFS");
    payload[8..10].copy_from_slice(&99u16.to_le_bytes());
    let crc = libdeflater::crc32(&payload[..16]);
    payload[16..20].copy_from_slice(&crc.to_le_bytes());
    f.write_all_at(&payload, 16).unwrap();
    drop(f);
    let id = core.lookup(ROOT, "future").unwrap();
    assert_errno(core.fs().open(id, libc::O_RDONLY), libc::EIO, "open");
    assert_eq!(names_in(core.fs(), ROOT), ["future"]);
    core.fs().unlink(ROOT, OsStr::new("future")).unwrap();
    assert!(!path.exists());
}

#[test]
fn a_container_without_an_intact_commit_shows_size_0_and_opens_with_eio() {
    let mut core = Core::new();
    core.make_file("f", &text(2 * CHUNK, 71));
    core.remount();
    // Damage the payload of every commit member (found by the framing readers scan for).
    let path = core.backing("f");
    let mut bytes = std::fs::read(&path).unwrap();
    let prefix = deflatefs::container::CommitRecord::prefix();
    let commits: Vec<usize> = (0..bytes.len() - prefix.len())
        .filter(|&i| bytes[i..i + prefix.len()] == prefix)
        .collect();
    assert!(!commits.is_empty(), "no commit member found");
    for at in commits {
        bytes[at + prefix.len() + 4] ^= 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();
    let id = core.lookup(ROOT, "f").unwrap();
    assert_eq!(core.stat(id).st_size, 0, "a damaged container shows size 0");
    assert_errno(core.fs().open(id, libc::O_RDONLY), libc::EIO, "open");
    // It keeps its name and attributes: it can be renamed and removed.
    core.fs()
        .rename(ROOT, OsStr::new("f"), ROOT, OsStr::new("g"), 0)
        .unwrap();
    core.fs().unlink(ROOT, OsStr::new("g")).unwrap();
}

// ---- power-loss recovery ----

#[test]
fn after_a_power_cut_a_commit_whose_data_was_lost_is_dropped_and_the_file_cut_back() {
    let mut core = Core::new();
    let v1 = text(2 * CHUNK, 80);
    let id = core.make_file("f", &v1);
    let committed_len = std::fs::metadata(core.backing("f")).unwrap().len();
    let fh = core.fs().open(id, libc::O_WRONLY | libc::O_APPEND).unwrap();
    write_all(core.fs(), fh, 0, &text(CHUNK, 81));
    core.fs().release(fh).unwrap();
    core.remount();
    // The last commit's data never reached the disk whole.
    damage_chunk(&core.backing("f"), 2);

    // Changed in this boot, the file is read strictly: its last commit stands, the lost chunk
    // reads EIO.
    let id = core.lookup(ROOT, "f").unwrap();
    assert_eq!(core.stat(id).st_size as usize, 3 * CHUNK);
    let fh = core.fs().open(id, libc::O_RDONLY).unwrap();
    assert_errno(
        core.fs().read(fh, 2 * CHUNK as u64, 10),
        libc::EIO,
        "strict",
    );
    core.fs().release(fh).unwrap();

    // Changed before the boot, the commit whose data is lost is dropped at the first stat,
    // and cut from the backing file, so size and content agree from then on.
    core.remount_after_power_cut();
    let id = core.lookup(ROOT, "f").unwrap();
    assert_eq!(core.stat(id).st_size as usize, v1.len(), "recovered size");
    assert_eq!(
        std::fs::metadata(core.backing("f")).unwrap().len(),
        committed_len,
        "the backing file is cut back to the recovered commit"
    );
    assert_bytes_eq(&core.content(id), &v1, "recovered content");
    // The cut dates the file in this boot: later mounts read it strictly, as recovered.
    core.remount();
    let id = core.lookup(ROOT, "f").unwrap();
    assert_bytes_eq(&core.content(id), &v1, "after the next mount");
}

#[test]
fn after_a_power_cut_an_intact_file_keeps_every_commit() {
    let mut core = Core::new();
    let mut data = text(2 * CHUNK + 5, 82);
    let id = core.make_file("f", &data);
    let fh = core.fs().open(id, libc::O_WRONLY | libc::O_APPEND).unwrap();
    let more = text(CHUNK, 83);
    write_all(core.fs(), fh, 0, &more);
    core.fs().fsync(fh, true).unwrap();
    core.fs().release(fh).unwrap();
    data.extend_from_slice(&more);
    let len = std::fs::metadata(core.backing("f")).unwrap().len();
    core.remount_after_power_cut();
    let id = core.lookup(ROOT, "f").unwrap();
    assert_eq!(core.stat(id).st_size as usize, data.len());
    assert_bytes_eq(&core.content(id), &data, "after recovery");
    assert_eq!(std::fs::metadata(core.backing("f")).unwrap().len(), len);
}
