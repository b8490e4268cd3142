//! Containers written front to back are valid multi-member gzip files that decompress to the
//! logical content: flate2's MultiGzDecoder, `gzip -t` and `zcat` agree.

mod container_common;

use std::io::Read;
use std::path::Path;
use std::process::Command;

use container_common::{read_all, Scratch, Writer};

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn gzip_binary() -> Option<&'static str> {
    ["/usr/bin/gzip", "/bin/gzip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

fn check_with_tools(path: &Path, expected: &[u8]) {
    let Some(gzip) = gzip_binary() else {
        eprintln!("gzip binary not found: skipping the gzip -t / zcat check");
        return;
    };
    let t = Command::new(gzip).arg("-t").arg(path).output().unwrap();
    assert!(
        t.status.success(),
        "gzip -t failed: {}",
        String::from_utf8_lossy(&t.stderr)
    );
    let z = Command::new(gzip).arg("-dc").arg(path).output().unwrap();
    assert!(
        z.status.success(),
        "gzip -dc failed: {}",
        String::from_utf8_lossy(&z.stderr)
    );
    assert!(z.stdout == expected, "gzip -dc output differs");
    if Path::new("/usr/bin/zcat").exists() {
        let z = Command::new("/usr/bin/zcat").arg(path).output().unwrap();
        assert!(z.status.success());
        assert!(z.stdout == expected, "zcat output differs");
    }
}

#[test]
fn log_appended_line_by_line_with_a_commit_after_each_line_is_zcat_equivalent() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("log", 12));
    for i in 0..600 {
        let line = format!(
            "{i:05} the quick brown fox jumps over the lazy dog {}\n",
            i * 7
        );
        w.append(line.as_bytes());
        w.c.commit().unwrap();
    }
    w.check();
    // Several non-RESET pieces per chunk.
    assert!(w.c.index().live_entry_count() > 3 * w.c.index().chunk_count());
    assert!(w.c.index().pieces(0).len() > 2);
    assert!(w.c.index().pieces(0).iter().skip(1).all(|e| !e.reset));
    let bytes = std::fs::read(s.path("log")).unwrap();
    assert!(gunzip(&bytes) == w.model);
    check_with_tools(&s.path("log"), &w.model);
}

#[test]
fn large_sequential_write_in_whole_chunks_is_zcat_equivalent() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("big", 16));
    let mut data = Vec::new();
    let mut x = 12345u32;
    for i in 0..300_000u32 {
        x = x.wrapping_mul(1103515245).wrapping_add(12345);
        // Half compressible, half noise.
        data.push(if (i / 10_000) % 2 == 0 {
            b'a' + (i % 26) as u8
        } else {
            (x >> 16) as u8
        });
    }
    w.append(&data[..100_000]);
    w.c.commit().unwrap();
    w.append(&data[100_000..]);
    w.c.commit().unwrap();
    w.check();
    let bytes = std::fs::read(s.path("big")).unwrap();
    assert!(gunzip(&bytes) == data);
    check_with_tools(&s.path("big"), &data);
}

#[test]
fn checkpoints_and_empty_files_decompress_to_nothing_extra() {
    let s = Scratch::new();
    let c = s.create("empty", 12);
    let bytes = std::fs::read(s.path("empty")).unwrap();
    assert!(gunzip(&bytes).is_empty());
    check_with_tools(&s.path("empty"), b"");
    drop(c);

    // Over a thousand commits: a checkpoint with many index entries lands in the middle.
    let mut w = Writer::new(s.create("many", 12));
    for i in 0..1100 {
        w.append(format!("{i}\n").as_bytes());
        w.c.commit().unwrap();
    }
    let bytes = std::fs::read(s.path("many")).unwrap();
    assert!(gunzip(&bytes) == w.model);
    assert!(read_all(&w.c) == w.model);
    check_with_tools(&s.path("many"), &w.model);
}
