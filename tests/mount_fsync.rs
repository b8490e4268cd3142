//! What an fsync through the mount costs the backing filesystem (issue 16, databases): the
//! system calls the daemon makes are counted with strace attached to it, so these tests assert
//! counts, never timings. Needs root, /dev/fuse and strace.

mod common;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;

const KIB: usize = 1024;

/// strace attached to every thread of the daemon, tracing some system calls into a file.
struct Tracer {
    child: Child,
    out: PathBuf,
}

impl Tracer {
    /// Attaches to `pid` and returns once strace says it is attached to all of its threads.
    fn attach(pid: u32, calls: &str, out: &Path) -> Tracer {
        let mut child = Command::new("strace")
            .args(["-f", "-e", &format!("trace={calls}"), "-o"])
            .arg(out)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run strace (apt-get install strace): these tests count the daemon's syscalls");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            let n = stderr.read_line(&mut line).unwrap();
            assert!(n > 0, "strace exited before attaching to the daemon");
            if line.contains("attached") {
                break;
            }
        }
        // Drain strace's later messages so it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while stderr.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        Tracer {
            child,
            out: out.to_path_buf(),
        }
    }

    /// Detaches and returns how often each of `calls` was made (completed calls only).
    fn finish(mut self, calls: &[&str]) -> Vec<usize> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait().unwrap();
        let text = std::fs::read_to_string(&self.out).unwrap();
        calls
            .iter()
            .map(|c| {
                let start = format!(" {c}(");
                let resumed = format!("<... {c} resumed>");
                text.lines()
                    .filter(|l| {
                        (l.contains(&start) && !l.contains("<unfinished ...>"))
                            || l.contains(&resumed)
                    })
                    .count()
            })
            .collect()
    }
}

/// Compressible text, so the container stays far below the size at which the mount compacts it
/// (a compaction fdatasyncs and reads on its own).
fn text(len: usize, salt: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            format!("row {:08} salt {salt} ....................\n", i).as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

fn open_rw(p: &Path) -> File {
    OpenOptions::new().read(true).write(true).open(p).unwrap()
}

/// A 512 KiB file (four 128 KiB chunks) written and fsync'd through the mount.
fn database_like_file(m: &Mount) -> File {
    let p = m.path("db");
    std::fs::write(&p, text(512 * KIB, 0)).unwrap();
    let f = open_rw(&p);
    f.sync_all().unwrap();
    f
}

#[test]
fn fsync_of_a_change_fdatasyncs_the_backing_file_once() {
    let m = Mount::new();
    let f = database_like_file(&m);
    let trace = m.dir.path().join("strace.out");
    let t = Tracer::attach(m.daemon_pid().unwrap(), "fdatasync,fsync", &trace);
    for round in 0..5u64 {
        // One page in the first chunk (like SQLite's header page) and one further on.
        f.write_all_at(&text(4 * KIB, round + 1), 0).unwrap();
        f.write_all_at(&text(4 * KIB, round + 100), 200 * KIB as u64)
            .unwrap();
        f.sync_data().unwrap();
    }
    let [fdatasync, fsync] = t.finish(&["fdatasync", "fsync"])[..] else {
        unreachable!()
    };
    assert_eq!(
        (fdatasync, fsync),
        (5, 0),
        "five fsyncs of changed data: one backing fdatasync each, nothing else"
    );
}

#[test]
fn fsync_with_nothing_new_does_not_fdatasync_again() {
    let m = Mount::new();
    let f = database_like_file(&m);
    f.write_all_at(b"changed", 4096).unwrap();
    let trace = m.dir.path().join("strace.out");
    let t = Tracer::attach(m.daemon_pid().unwrap(), "fdatasync,fsync", &trace);
    f.sync_data().unwrap();
    for _ in 0..10 {
        f.sync_data().unwrap();
        f.sync_all().unwrap();
    }
    let counts = t.finish(&["fdatasync", "fsync"]);
    assert_eq!(
        counts,
        vec![1, 0],
        "one fdatasync for the change, none for the 20 fsyncs with nothing new"
    );
    drop(f);
    assert_eq!(
        &std::fs::read(m.path("db")).unwrap()[4096..4103],
        b"changed"
    );
}

#[test]
fn small_overwrites_of_a_chunk_read_it_from_the_container_once() {
    let mut m = Mount::new();
    let f = database_like_file(&m);
    let trace = m.dir.path().join("strace.out");
    let t = Tracer::attach(m.daemon_pid().unwrap(), "pread64,preadv", &trace);
    let mut model = text(512 * KIB, 0);
    for round in 0..20u64 {
        let at = 128 * KIB + (round as usize * 4 * KIB) % (128 * KIB);
        let page = text(4 * KIB, round + 1);
        f.write_all_at(&page, at as u64).unwrap();
        model[at..at + page.len()].copy_from_slice(&page);
        f.sync_data().unwrap();
    }
    let reads: usize = t.finish(&["pread64", "preadv"]).iter().sum();
    assert!(
        reads <= 1,
        "20 page writes into one chunk read the container {reads} times: the chunk should \
         stay resident after the first"
    );
    drop(f);
    m.remount();
    assert!(std::fs::read(m.path("db")).unwrap() == model);
}
