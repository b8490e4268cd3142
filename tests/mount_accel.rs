//! Real mounts with pluggable backends (`accel=`): files written through the zlib-ABI backend
//! read back through libdeflate and the other way round; a zlib-ABI library that silently
//! corrupts streams is caught with no data lost; a library that fails its self-test is refused;
//! and a file 16x the engine pool streams through it with the pool's high-water mark and the
//! daemon's peak RSS bounded. Needs root, /dev/fuse and a C compiler (for the shim library).

mod common;

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn system_libz() -> String {
    deflatefs::engine::accel::system_libz().expect("the system zlib (zlib1g) is installed")
}

/// Builds tests/shim/corrupt_zlib.c into `dir`, corrupting every `every`-th deflate stream.
fn build_shim(dir: &Path, every: u32) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/shim/corrupt_zlib.c");
    let out = dir.join(format!("libzcorrupt{every}.so"));
    let status = Command::new("cc")
        .args([
            "-shared",
            "-fPIC",
            "-O2",
            &format!("-DCORRUPT_EVERY={every}"),
            "-o",
        ])
        .arg(&out)
        .arg(&src)
        .arg("-ldl")
        .status()
        .expect("run cc (gcc is needed to build the test shim)");
    assert!(status.success(), "cc failed to build {}", src.display());
    out
}

/// `user.deflatefs.engine` of the mount's root, as key/value pairs.
fn engine_xattr(m: &Mount) -> Vec<(String, String)> {
    let path = CString::new(m.mnt.to_str().unwrap()).unwrap();
    let name = c"user.deflatefs.engine";
    let mut buf = vec![0u8; 4096];
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    };
    assert!(
        n > 0,
        "getxattr user.deflatefs.engine: {}",
        errno_name(errno())
    );
    String::from_utf8(buf[..n as usize].to_vec())
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn value(kv: &[(String, String)], key: &str) -> String {
    kv.iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no {key} in {kv:?}"))
        .1
        .clone()
}

/// A set of files of several kinds and sizes, written under `dir`.
fn write_set(dir: &Path, seed: u64) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for (i, len) in [0usize, 1, 4095, 128 << 10, (300 << 10) + 7, 3 << 20]
        .into_iter()
        .enumerate()
    {
        let data = if i % 2 == 0 {
            varied_text(len, seed + i as u64)
        } else {
            let mut d = random_bytes(len, seed + i as u64);
            // Half compressible, half not.
            for b in d.iter_mut().step_by(2) {
                *b = b'z';
            }
            d
        };
        let path = dir.join(format!("f{seed}-{i}"));
        std::fs::write(&path, &data).unwrap();
        files.push((path, data));
    }
    files
}

fn check_set(files: &[(PathBuf, Vec<u8>)]) {
    for (path, data) in files {
        let got = std::fs::read(path).unwrap();
        assert_bytes_eq(&got, data, &path.display().to_string());
    }
}

#[test]
fn zlib_and_sw_backends_read_each_others_files() {
    let libz = system_libz();
    let accel_zlib = format!("accel=zlib:{libz}");
    let mut m = Mount::unmounted(&[&accel_zlib, "chunk=64k", "level=6"], false);
    m.mount();
    let kv = engine_xattr(&m);
    assert_eq!(value(&kv, "backend"), format!("zlib:{libz}"));
    assert_eq!(value(&kv, "verify"), "on");
    let by_zlib = write_set(&m.mnt, 1);
    check_set(&by_zlib);
    assert!(m
        .log_text()
        .contains(&format!("engine: backend zlib:{libz}")));
    assert_eq!(m.unmount().code(), Some(0));

    // The backing files are plain gzip members either way.
    let backing = std::fs::read(m.backing("f1-5")).unwrap();
    assert!(is_container(&backing));

    m.opts = vec!["accel=sw".into()];
    m.mount();
    assert_eq!(value(&engine_xattr(&m), "backend"), "sw");
    assert_eq!(
        value(&engine_xattr(&m), "verify"),
        "off",
        "the reference is not checked"
    );
    check_set(&by_zlib);
    let by_sw = write_set(&m.mnt, 2);
    assert_eq!(m.unmount().code(), Some(0));

    m.opts = vec![accel_zlib];
    m.mount();
    check_set(&by_sw);
    check_set(&by_zlib);
    let kv = engine_xattr(&m);
    assert_eq!(value(&kv, "faults"), "0");
    assert_eq!(value(&kv, "jobs_failed"), "0");
}

#[test]
fn corrupting_zlib_library_is_caught_and_no_data_is_lost() {
    let mut m = Mount::unmounted(&["chunk=4k"], false);
    let shim = build_shim(m.dir.path(), 100);
    let accel = format!("accel=zlib:{}", shim.display());
    // fault_limit=0: the backend stays on, so every 100th chunk is caught and redone.
    m.opts = vec!["chunk=4k".into(), accel.clone(), "fault_limit=0".into()];
    m.mount();
    let data = varied_text(8 << 20, 7); // 2048 chunks of 4 KiB
    std::fs::write(m.path("big"), &data).unwrap();
    let f = std::fs::File::open(m.path("big")).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let kv = engine_xattr(&m);
    let faults: u64 = value(&kv, "faults").parse().unwrap();
    assert!(
        faults >= 15,
        "about one fault per 100 chunks expected: {kv:?}"
    );
    assert_eq!(value(&kv, "verify_failures"), faults.to_string());
    assert_eq!(value(&kv, "backend_disabled"), "false");
    assert_eq!(m.unmount().code(), Some(0));
    let log = m.log_text();
    assert!(
        log.contains("fault #1 ") && log.contains("does not decode to its"),
        "the log names the faults:\n{log}"
    );
    // Read back through libdeflate alone: what was committed is right.
    m.opts = vec!["accel=sw".into()];
    m.mount();
    assert_bytes_eq(&std::fs::read(m.path("big")).unwrap(), &data, "big");
    assert_eq!(m.unmount().code(), Some(0));

    // With the default limit, the backend is disabled after 8 faults; nothing is lost either.
    m.opts = vec!["chunk=4k".into(), accel];
    m.mount();
    let more = varied_text(8 << 20, 8);
    std::fs::write(m.path("more"), &more).unwrap();
    std::fs::File::open(m.path("more"))
        .unwrap()
        .sync_all()
        .unwrap();
    let kv = engine_xattr(&m);
    assert_eq!(value(&kv, "backend_disabled"), "true", "{kv:?}");
    assert_eq!(value(&kv, "faults"), "8");
    assert_bytes_eq(&std::fs::read(m.path("more")).unwrap(), &more, "more");
    assert_bytes_eq(&std::fs::read(m.path("big")).unwrap(), &data, "big");
    assert_eq!(m.unmount().code(), Some(0));
    assert!(m.log_text().contains("disabled after 8 faults"));
}

#[test]
fn library_failing_its_self_test_is_refused_with_a_clear_message() {
    let m = Mount::unmounted(&[], false);
    let shim = build_shim(m.dir.path(), 1);
    let (code, out) = run_deflatefs(&[
        "mount",
        "-f",
        "-o",
        &format!("accel=zlib:{}", shim.display()),
        m.src.to_str().unwrap(),
        m.mnt.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        out.contains("failed its self-test") && out.contains("refusing it"),
        "{out}"
    );
    assert!(deflatefs_mounts_at(&m.mnt).is_empty());
    let (code, out) = run_deflatefs(&[
        "mount",
        "-f",
        "-o",
        "accel=zlib:/nonexistent/libz.so.1",
        m.src.to_str().unwrap(),
        m.mnt.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(out.contains("cannot load /nonexistent/libz.so.1"), "{out}");
}

/// The daemon serving `mnt` (found by its command line).
fn daemon_pid(mnt: &Path) -> u32 {
    let want = mnt.to_str().unwrap();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args.first().is_some_and(|a| a.ends_with(b"deflatefs"))
            && args.contains(&want.as_bytes())
        {
            return pid;
        }
    }
    panic!("no deflatefs daemon for {want}");
}

#[test]
fn file_16x_the_pool_streams_through_with_bounded_memory() {
    const POOL: usize = 2 << 20;
    let libz = system_libz();
    let m = Mount::with_opts(&[
        "pool=2m",
        "dirty=8m",
        "cache=4m",
        &format!("accel=zlib:{libz}"),
    ]);
    let pid = daemon_pid(&m.mnt);
    let total = 16 * POOL;
    let block = varied_text(1 << 20, 11);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(m.path("stream")).unwrap();
        for i in 0..total / block.len() {
            let mut b = block.clone();
            b[..8].copy_from_slice(&(i as u64).to_le_bytes());
            f.write_all(&b).unwrap();
        }
        f.sync_all().unwrap();
    }
    {
        use std::io::Read;
        let mut f = std::fs::File::open(m.path("stream")).unwrap();
        let mut b = vec![0u8; block.len()];
        for i in 0..total / block.len() {
            f.read_exact(&mut b).unwrap();
            assert_eq!(u64::from_le_bytes(b[..8].try_into().unwrap()), i as u64);
            assert!(b[8..] == block[8..], "block {i}");
        }
    }
    let kv = engine_xattr(&m);
    let high: usize = value(&kv, "pool_high_water").parse().unwrap();
    assert_eq!(value(&kv, "pool_capacity"), POOL.to_string());
    assert!(high <= POOL, "pool high water {high} > {POOL}");
    assert!(high > 0);
    let bytes_in: u64 = value(&kv, "bytes_in").parse().unwrap();
    assert!(
        bytes_in >= total as u64,
        "everything went through the engine: {kv:?}"
    );
    // Data buffers are bounded by cache + dirty + pool (14 MiB); the rest is the binary, thread
    // stacks and codec state.
    let hwm = vm_hwm_kib(pid);
    assert!(hwm < (14 + 50) << 10, "daemon peak RSS {hwm} KiB");
    eprintln!("16x pool: pool high water {high} bytes, daemon VmHWM {hwm} KiB");
}
