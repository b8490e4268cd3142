//! Persistent file handles (issue 17): `name_to_handle_at` + `open_by_handle_at` through the
//! mount work as on ext4, also after the kernel forgot the inode: across an unmount and a new
//! mount of the same source, which is what an NFS server's clients see after a restart. A
//! handle of a removed file is ESTALE, as on ext4.
//!
//! The reference is a directory of the machine's ext4 (checked with statfs): the same steps run
//! there and on the mount, and the results are compared with each other and with known answers.

mod common;

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use common::Mount;

/// `struct file_handle` with room for any handle.
#[repr(C)]
struct FileHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; 128],
}

fn name_to_handle(path: &Path) -> Result<FileHandle, i32> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut h = FileHandle {
        handle_bytes: 128,
        handle_type: 0,
        f_handle: [0; 128],
    };
    let mut mount_id = 0i32;
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c.as_ptr(),
            &mut h as *mut FileHandle,
            &mut mount_id as *mut i32,
            0,
        )
    };
    if r != 0 {
        return Err(common::errno());
    }
    Ok(h)
}

fn open_by_handle(mount: &Path, h: &mut FileHandle, flags: i32) -> Result<OwnedFd, i32> {
    let m = File::open(mount).unwrap();
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            m.as_raw_fd(),
            h as *mut FileHandle,
            flags,
        )
    };
    if fd < 0 {
        return Err(common::errno());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What opening each handle gives: the file's content, the directory's entries, or the errno.
fn use_handles(mount: &Path, handles: &mut [(&str, FileHandle)]) -> Vec<String> {
    handles
        .iter_mut()
        .map(|(what, h)| {
            let dir = what.starts_with("dir");
            let flags = if dir {
                libc::O_RDONLY | libc::O_DIRECTORY
            } else {
                libc::O_RDONLY
            };
            match open_by_handle(mount, h, flags) {
                Err(libc::ESTALE) => format!("{what}: ESTALE"),
                Err(e) => format!("{what}: {}", common::errno_name(e)),
                Ok(fd) if dir => {
                    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
                    let mut names: Vec<String> = std::fs::read_dir(path)
                        .unwrap()
                        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect();
                    names.sort();
                    format!("{what}: {}", names.join(" "))
                }
                Ok(fd) => {
                    let mut text = String::new();
                    File::from(fd).read_to_string(&mut text).unwrap();
                    format!("{what}: {text}")
                }
            }
        })
        .collect()
}

/// Makes the tree under `root`, takes handles of a file, a file in a subdirectory, the
/// subdirectory and a file that is then removed; `between` runs before the handles are used.
fn scenario(root: &Path, mount: &Path, between: impl FnOnce()) -> Vec<String> {
    std::fs::write(root.join("top"), "top file").unwrap();
    std::fs::create_dir(root.join("dir")).unwrap();
    std::fs::write(root.join("dir/inner"), "inner file").unwrap();
    std::fs::write(root.join("gone"), "removed").unwrap();
    let mut handles = vec![
        ("top", name_to_handle(&root.join("top")).unwrap()),
        ("inner", name_to_handle(&root.join("dir/inner")).unwrap()),
        ("dir", name_to_handle(&root.join("dir")).unwrap()),
        ("gone", name_to_handle(&root.join("gone")).unwrap()),
    ];
    let gone_ino = common::lstat(&root.join("gone")).unwrap().st_ino;
    std::fs::remove_file(root.join("gone")).unwrap();
    // ext4 hands the freed inode number to the next file made nearby: the handle of the removed
    // file must still be ESTALE, never open this one (the generations differ).
    std::fs::write(root.join("reuser"), "another file").unwrap();
    eprintln!(
        "{}: inode number reused: {}",
        root.display(),
        common::lstat(&root.join("reuser")).unwrap().st_ino == gone_ino
    );
    let mut out = vec!["while cached".to_string()];
    out.extend(use_handles(mount, &mut handles));
    between();
    out.push("after".to_string());
    out.extend(use_handles(mount, &mut handles));
    out
}

#[test]
fn open_by_handle_at_round_trips_across_a_remount_as_ext4() {
    let plain = tempfile::Builder::new()
        .prefix("deflatefs-handles-ext4-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let c = CString::new(plain.path().as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0);
    assert_eq!(st.f_type, 0xEF53, "the reference must be ext4");
    let on_ext4 = scenario(plain.path(), plain.path(), || {});

    let mut m = Mount::new();
    let mnt = m.mnt.clone();
    let on_mount = scenario(&mnt, &mnt, || m.remount());
    let known = [
        "while cached",
        "top: top file",
        "inner: inner file",
        "dir: inner",
        "gone: ESTALE",
        "after",
        "top: top file",
        "inner: inner file",
        "dir: inner",
        "gone: ESTALE",
    ];
    assert_eq!(on_ext4, known, "ext4 did not give its known answers");
    assert_eq!(on_mount, on_ext4, "deflatefs differs from ext4");
}
