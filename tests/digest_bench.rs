//! Time to read each digest attribute of a large file, before and after a small overwrite (the
//! figures issue 4 asks for). Not a timed test: it prints, and only checks the values.
//!
//! Ignored by default; run in release mode as root:
//! `cargo test --release --test digest_bench -- --ignored --nocapture`
//! `DFS_BENCH_DIGEST_MB` sets the file size (default 1024 MiB); the mount uses the default
//! options.

mod common;

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn getxattr(p: &Path, name: &str) -> String {
    let (cp, cn) = (cpath(p), CString::new(name).unwrap());
    let mut buf = vec![0u8; 4096];
    let n = unsafe {
        libc::getxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    };
    assert!(
        n >= 0,
        "getxattr {name}: {}",
        std::io::Error::last_os_error()
    );
    buf.truncate(n as usize);
    String::from_utf8(buf).unwrap()
}

fn timed(p: &Path, name: &str) -> (String, Duration) {
    let t = Instant::now();
    let v = getxattr(p, name);
    (v, t.elapsed())
}

fn tool(prog: &str, p: &Path) -> (String, Duration) {
    let t = Instant::now();
    let (ok, out, err) = run_tool(prog, &[p.as_os_str()]);
    assert!(ok, "{prog}: {err}");
    let d = t.elapsed();
    let s = String::from_utf8_lossy(&out);
    (s.split_whitespace().next().unwrap_or("").to_string(), d)
}

#[test]
#[ignore]
fn time_to_read_digests_of_a_large_file_after_a_small_overwrite() {
    let mb: u64 = std::env::var("DFS_BENCH_DIGEST_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let m = Mount::new();
    let p = m.path("big");
    let block = varied_text(8 << 20, 42);
    let t = Instant::now();
    {
        let mut f = std::fs::File::create(&p).unwrap();
        for i in 0..mb {
            // Vary each MiB a little so chunks differ.
            let at = ((i % 8) << 20) as usize;
            let mut piece = block[at..at + (1 << 20)].to_vec();
            piece[..16].copy_from_slice(format!("{i:016}").as_bytes());
            f.write_all(&piece).unwrap();
        }
    }
    let write = t.elapsed();
    println!(
        "file: {mb} MiB written sequentially in {:.2?} ({:.0} MB/s)",
        write,
        (mb << 20) as f64 / write.as_secs_f64() / 1e6
    );
    let report = |when: &str, name: &str, (v, d): (String, Duration)| {
        println!(
            "{when:<28} {name:<22} {:>10.3} ms  {v}",
            d.as_secs_f64() * 1e3
        );
    };
    let b3 = timed(&p, "user.deflatefs.blake3");
    let sha = timed(&p, "user.deflatefs.sha256");
    let info = timed(&p, "user.deflatefs.info");
    let (b3v, shav) = (b3.0.clone(), sha.0.clone());
    report("sequentially written", "user.deflatefs.blake3", b3);
    report("sequentially written", "user.deflatefs.sha256", sha);
    report("sequentially written", "user.deflatefs.info", info);
    let (tb3, tb3d) = tool("b3sum", &p);
    let (tsha, tshad) = tool("sha256sum", &p);
    assert_eq!((b3v, shav), (tb3, tsha));
    println!(
        "reference: b3sum {tb3d:.2?}, sha256sum {tshad:.2?} (reading the file through the mount)"
    );

    // A 4 KiB overwrite in the middle, like `dd bs=4k count=1 seek=... conv=notrunc`.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(&random_bytes(4096, 7), (mb << 20) / 2 + 12_345)
        .unwrap();
    drop(f);
    let b3 = timed(&p, "user.deflatefs.blake3");
    let sha = timed(&p, "user.deflatefs.sha256");
    let sha2 = timed(&p, "user.deflatefs.sha256");
    let (b3v, shav) = (b3.0.clone(), sha.0.clone());
    assert_eq!(sha2.0, shav);
    report("after a 4 KiB overwrite", "user.deflatefs.blake3", b3);
    report("after a 4 KiB overwrite", "user.deflatefs.sha256", sha);
    report("  read again", "user.deflatefs.sha256", sha2);
    let (tb3, _) = tool("b3sum", &p);
    let (tsha, _) = tool("sha256sum", &p);
    assert_eq!((b3v, shav), (tb3, tsha));
}
