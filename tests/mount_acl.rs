//! POSIX ACLs (issue 17): enforced, kept in step with the mode (chmod changes the mask, setfacl
//! the group bits), default ACLs inherited with the umask ignored, setgid directories passed
//! on, all as on ext4.
//!
//! The same shell steps (setfacl, getfacl, chmod, and writes by `nobody` through setpriv) run
//! in a directory of the machine's ext4 and on an `allow_other` mount; the outputs must be the
//! same and must be ext4's known answers.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::Mount;

const SCENARIO: &str = r#"
cd "$D"
umask 022
touch f; chmod 640 f
setfacl -m u:65534:rw f
echo "acl_set: $(getfacl -cp f | tr '\n' ' ')"
echo "mode_after_setfacl: $(stat -c %a f)"
echo "nobody_write_by_acl: $(setpriv --reuid=65534 --regid=65534 --clear-groups sh -c 'echo x >> f' 2>&1 && echo ok)"
chmod 750 f
echo "acl_after_chmod: $(getfacl -cp f | tr '\n' ' ')"
echo "nobody_write_after_chmod: $(setpriv --reuid=65534 --regid=65534 --clear-groups sh -c 'echo x >> f' 2>&1 | sed 's/.*: //'; true)"
setfacl -m m::r f
echo "mode_after_mask: $(stat -c %a f)"
setfacl -b f
echo "acl_removed: $(getfacl -cp f | tr '\n' ' ') mode $(stat -c %a f)"
mkdir d; setfacl -d -m u:65534:rwx,g::r-x,o::- d
chown :65534 d; chmod g+s d
touch d/new; mkdir d/sub
echo "inherited_file: $(getfacl -cp d/new | tr '\n' ' ') mode $(stat -c %a d/new) group $(stat -c %g d/new)"
echo "inherited_dir: $(getfacl -cp d/sub | tr '\n' ' ') mode $(stat -c %a d/sub) group $(stat -c %g d/sub)"
umask 077; touch d/new2; echo "umask_ignored_with_default_acl: $(stat -c %a d/new2)"
mkdir e; touch e/plain; echo "umask_applied_without: $(stat -c %a e/plain)"
"#;

fn run(dir: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(SCENARIO)
        .env("D", dir)
        .output()
        .expect("run sh");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn posix_acls_are_enforced_kept_in_step_with_the_mode_and_inherited_as_ext4() {
    let plain = tempfile::Builder::new()
        .prefix("deflatefs-acl-ext4-")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::set_permissions(plain.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let on_ext4 = run(plain.path());

    let m = Mount::with_opts(&["allow_other"]);
    // `nobody` must reach the mount point.
    for d in [m.dir.path(), m.mnt.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let on_mount = run(&m.mnt);
    let known = "\
acl_set: user::rw- user:nobody:rw- group::r-- mask::rw- other::---  
mode_after_setfacl: 660
nobody_write_by_acl: ok
acl_after_chmod: user::rwx user:nobody:rw-\t#effective:r-- group::r-- mask::r-x other::---  
nobody_write_after_chmod: Permission denied
mode_after_mask: 740
acl_removed: user::rwx group::r-- other::---   mode 740
inherited_file: user::rw- user:nobody:rwx\t#effective:rw- group::r-x\t#effective:r-- mask::rw- other::---   mode 660 group 65534
inherited_dir: user::rwx user:nobody:rwx group::r-x mask::rwx other::--- default:user::rwx default:user:nobody:rwx default:group::r-x default:mask::rwx default:other::---   mode 2770 group 65534
umask_ignored_with_default_acl: 660
umask_applied_without: 600
";
    assert_eq!(on_ext4, known, "ext4 did not give its known answers");
    assert_eq!(on_mount, on_ext4, "deflatefs differs from ext4");
}
