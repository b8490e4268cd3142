//! When the backing filesystem fails: ENOSPC on a small tmpfs, EIO from a backing filesystem that
//! fails on purpose (`tests/powercut_common`). The caller gets the errno, data already committed
//! stays intact, the mount stays up, and once space is freed (or the device works again) writing
//! works again.
//!
//! The tmpfs is 48 MiB in CI; `DEFLATEFS_ENOSPC_SIZE=256m` is the acceptance size.

mod common;
mod powercut_common;

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{deflatefs_mounts_at, random_bytes, Mount};
use powercut_common::{Faults, Image, LayerMount};

/// A tmpfs mounted for the test (unmounted on drop).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "enospc-test"])
            .arg(at)
            .status()
            .expect("run mount")
            .success();
        assert!(ok, "mount a tmpfs of {size} on {}", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `data` to a new file in pieces, fsyncs and closes it: the first error.
fn write_file(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    for piece in data.chunks(256 << 10) {
        f.write_all(piece)?;
    }
    f.sync_all()?;
    let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
    if unsafe { libc::close(fd) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn parse_size(s: &str) -> u64 {
    let (n, mult) = match s.as_bytes().last() {
        Some(b'm') | Some(b'M') => (&s[..s.len() - 1], 1 << 20),
        Some(b'g') | Some(b'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    n.parse::<u64>().expect("size") * mult
}

#[test]
fn a_full_backing_filesystem_gives_enospc_and_keeps_what_was_written() {
    let size = std::env::var("DEFLATEFS_ENOSPC_SIZE").unwrap_or_else(|_| "48m".into());
    let bytes = parse_size(&size);
    let mut m = Mount::unmounted(&["chunk=64k", "dirty=16m"], false);
    let _tmpfs = Tmpfs::mount(&m.src, &size);
    m.mount();
    // Files written before the disk fills up.
    let keepers: Vec<Vec<u8>> = (0..3).map(|i| random_bytes(2 << 20, i)).collect();
    for (i, d) in keepers.iter().enumerate() {
        write_file(&m.path(&format!("keep{i}")), d).unwrap();
    }
    // Fill it with data that does not compress until a writer gets ENOSPC.
    let filler = 4usize << 20;
    let mut n = 0;
    let err = loop {
        let d = random_bytes(filler, 100 + n);
        if let Err(e) = write_file(&m.path(&format!("fill{n}")), &d) {
            break e;
        }
        n += 1;
        assert!(
            n * filler as u64 <= bytes * 2,
            "wrote twice the size of the tmpfs without an error"
        );
    };
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOSPC),
        "the writer got {err}"
    );
    eprintln!(
        "{size} tmpfs: {n} files of {} MiB written before ENOSPC",
        filler >> 20
    );
    assert!(
        !deflatefs_mounts_at(&m.mnt).is_empty(),
        "the mount went away"
    );
    for (i, d) in keepers.iter().enumerate() {
        assert!(
            fs::read(m.path(&format!("keep{i}"))).unwrap() == *d,
            "keep{i}"
        );
    }
    // More writers keep getting ENOSPC, and nothing breaks.
    let e = write_file(&m.path("more"), &random_bytes(filler, 7)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    // Free space: writing works again.
    for i in 0..n {
        fs::remove_file(m.path(&format!("fill{i}"))).unwrap();
    }
    let _ = fs::remove_file(m.path("more"));
    let again = random_bytes(3 << 20, 9);
    write_file(&m.path("again"), &again).unwrap();
    let failed = random_bytes(filler, 100 + n);
    m.remount();
    for (i, d) in keepers.iter().enumerate() {
        assert!(
            fs::read(m.path(&format!("keep{i}"))).unwrap() == *d,
            "keep{i} after remount"
        );
    }
    assert!(fs::read(m.path("again")).unwrap() == again);
    // The file whose writer got ENOSPC holds a committed state: a prefix of what was written.
    let got = fs::read(m.path(&format!("fill{n}"))).unwrap();
    assert!(got.len() <= failed.len() && got == failed[..got.len()]);
    m.unmount();
}

#[test]
fn backing_eio_reaches_the_caller_and_committed_data_stays() {
    let mut m = Mount::unmounted(&["chunk=16k"], false);
    let layer = LayerMount::mount(&m.src, &Image::default());
    m.mount();
    let a = random_bytes(600_000, 1);
    write_file(&m.path("a"), &a).unwrap();

    // Writes fail: the caller sees EIO (at write, close or fsync); what was there stays.
    layer.set_faults(Faults {
        fail_writes: true,
        ..Faults::default()
    });
    let more = random_bytes(300_000, 2);
    let r = (|| -> io::Result<()> {
        let mut f = fs::OpenOptions::new().append(true).open(m.path("a"))?;
        f.write_all(&more)?;
        f.sync_all()
    })();
    assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EIO));
    let e = write_file(&m.path("b"), &random_bytes(100_000, 3)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    layer.set_faults(Faults::default());
    // What was acknowledged reads back; what could not be stored reads as EIO, never zeros.
    let check_a = || {
        let f = File::open(m.path("a")).unwrap();
        let mut got = vec![0u8; a.len()];
        f.read_exact_at(&mut got, 0).unwrap();
        assert!(got == a, "a after failed writes");
        let mut rest = vec![0u8; more.len()];
        match f.read_at(&mut rest, a.len() as u64) {
            Ok(n) => assert!(rest[..n] == more[..n], "a's appended bytes"),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO)),
        }
    };
    check_a();

    // fsync fails: EIO, and it keeps failing for that open file even once the device works.
    let c = random_bytes(200_000, 4);
    let mut f = File::create(m.path("c")).unwrap();
    f.write_all(&c).unwrap();
    layer.set_faults(Faults {
        fail_fsync: true,
        ..Faults::default()
    });
    assert_eq!(f.sync_all().unwrap_err().raw_os_error(), Some(libc::EIO));
    layer.set_faults(Faults::default());
    assert_eq!(
        f.sync_all().unwrap_err().raw_os_error(),
        Some(libc::EIO),
        "a later fsync must not claim the data is safe"
    );
    drop(f);

    // Reads fail (of data not cached): EIO, then work again.
    layer.set_faults(Faults {
        fail_reads: true,
        ..Faults::default()
    });
    let mut buf = Vec::new();
    let r = File::open(m.path("c")).and_then(|mut f| io::Read::read_to_end(&mut f, &mut buf));
    assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EIO));
    layer.set_faults(Faults::default());
    assert!(fs::read(m.path("c")).unwrap() == c);
    assert!(
        !deflatefs_mounts_at(&m.mnt).is_empty(),
        "the mount went away"
    );
    check_a();
    // And writing works again.
    let d = random_bytes(300_000, 5);
    write_file(&m.path("d"), &d).unwrap();
    m.remount();
    assert!(fs::read(m.path("d")).unwrap() == d);
    // After a remount a holds a committed state: what was acknowledged, maybe more of it.
    let got = fs::read(m.path("a")).unwrap();
    let mut all = a.clone();
    all.extend_from_slice(&more);
    assert!(
        got.len() >= a.len() && got[..] == all[..got.len()],
        "a after remount"
    );
    m.unmount();
    layer.unmount();
}
