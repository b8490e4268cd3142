//! The daemon's memory stays within its configured buffers (cache + dirty + pool) while a file
//! of many small chunks is written, read by two readers at once, overwritten and digested.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use common::{run_tool, varied_text, vm_hwm_kib, Mount};

/// 256 MiB in 4 KiB chunks (65,536 chunks, about 10 MiB of chunk index) through a mount whose
/// buffers add up to 48 MiB. Measured on the 2-core CI machine class: 37-48 MiB peak; before
/// the daemon limited glibc's malloc arenas to two (each thread got its own, and memory freed by
/// another thread stayed in it) and wrote checkpoints in 1 MiB pieces (the whole encoded index
/// was built in memory first), 55-65 MiB.
#[test]
fn a_small_chunk_file_read_overwritten_and_digested_stays_within_the_buffers() {
    const MIB: u64 = 1 << 20;
    const SIZE: u64 = 256 * MIB;
    const BUFFERS_KIB: u64 = 48 << 10;
    let mut m = Mount::with_opts(&["chunk=4k", "cache=16m", "dirty=16m", "pool=16m"]);
    {
        let mut f = std::fs::File::create(m.path("f")).unwrap();
        for i in 0..SIZE / MIB {
            f.write_all(&varied_text(MIB as usize, i)).unwrap();
        }
        f.sync_all().unwrap();
    }
    // A fresh daemon: its peak is what reading and overwriting cost, not the write above.
    m.remount();
    let pid = m.daemon_pid().expect("daemon running");
    let readers: Vec<_> = [0u64, 1000 * 4096]
        .into_iter()
        .map(|skip| {
            let path = m.path("f");
            std::thread::spawn(move || {
                let f = std::fs::File::open(path).unwrap();
                let mut buf = vec![0u8; 1 << 20];
                let mut total = 0u64;
                let mut at = skip;
                loop {
                    let n = f.read_at(&mut buf, at).unwrap();
                    if n == 0 {
                        break;
                    }
                    at += n as u64;
                    total += n as u64;
                }
                total
            })
        })
        .collect();
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(m.path("f"))
            .unwrap();
        f.write_all_at(&[b'A'; 4096], SIZE / 2).unwrap();
        f.sync_all().unwrap();
    }
    let path = m.path("f");
    let (ok, digest, err) = run_tool(
        "getfattr",
        &[
            "-n".as_ref(),
            "user.deflatefs.blake3".as_ref(),
            "--only-values".as_ref(),
            path.as_os_str(),
        ],
    );
    assert!(ok && digest.len() == 64, "getfattr: {err}");
    let mut f = std::fs::File::open(m.path("f")).unwrap();
    let mut probe = [0u8; 8];
    f.read_exact(&mut probe).unwrap();
    let hwm = vm_hwm_kib(pid);
    eprintln!("daemon VmHWM {hwm} KiB (buffers {BUFFERS_KIB} KiB)");
    assert!(
        hwm <= BUFFERS_KIB + (4 << 10),
        "daemon peak RSS {hwm} KiB exceeds its buffers ({BUFFERS_KIB} KiB) by more than 4 MiB"
    );
}
