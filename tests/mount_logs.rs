//! The daemon's log at the default level stays quiet under real workloads: a WARN or ERROR line
//! means something is wrong (damage, a failed write-back, a bug), never that a program did
//! something ordinary. Each test runs a workload on a mount and counts the log's WARN and ERROR
//! lines, which must be none.
//!
//! Before fuser's unimplemented requests were answered by the adapter, `python3 -m venv` alone
//! logged 1,757 warnings (one per isatty() of a file: TCGETS), and an fsx run 2,808.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::Mount;

/// Debian's interpreter, not one a developer's PATH may put first (pyenv): python3-venv is what
/// .ci/run installs for it.
const PYTHON: &str = "/usr/bin/python3";

/// Runs `prog args` in `dir` to completion, failing the test with its output if it fails.
#[track_caller]
fn run_in(dir: &Path, prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {prog}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{prog} {args:?} in {} failed ({}):\n{stdout}\n{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs a shell command line in `dir` (for redirections), failing the test if it fails.
#[track_caller]
fn sh_in(dir: &Path, script: &str) -> String {
    run_in(dir, "sh", &["-c", script])
}

#[track_caller]
fn assert_quiet_log(m: &Mount, workload: &str) {
    let lines = m.warn_and_error_lines();
    assert!(
        lines.is_empty(),
        "{workload}: {} WARN/ERROR lines in the daemon log:\n{}",
        lines.len(),
        lines.join("\n")
    );
}

/// Whether Debian's python3-venv is installed (`python3 -m venv` needs its ensurepip).
fn python_venv_installed() -> bool {
    Path::new(PYTHON).exists()
        && Command::new("dpkg")
            .args(["-s", "python3-venv"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

#[test]
fn python_venv_on_the_mount_logs_no_warning_or_error() {
    if !python_venv_installed() {
        eprintln!(
            "SKIPPED python_venv_on_the_mount_logs_no_warning_or_error: the Debian package \
             python3-venv is not installed (apt-get install -y python3-venv; .ci/run does)"
        );
        return;
    }
    let m = Mount::new();
    // Creates a venv with pip in it: thousands of files created, written, stat'ed, isatty()'d,
    // byte-compiled and renamed.
    run_in(&m.path(""), PYTHON, &["-m", "venv", "venv"]);
    let version = run_in(
        &m.path(""),
        "venv/bin/python",
        &["-c", "import sys, pip; print(sys.prefix, pip.__version__)"],
    );
    assert!(version.contains("/venv "), "{version}");
    assert!(m.path("venv/bin/pip").exists());
    assert_quiet_log(&m, "python3 -m venv");
}

/// A three-file C program with a Makefile: gcc writes objects through temporary files and
/// renames, make stats everything, the linker mmaps and writes the binary, which then runs from
/// the mount.
#[test]
fn a_c_build_with_make_and_gcc_on_the_mount_logs_no_warning_or_error() {
    let m = Mount::new();
    let dir = m.path("proj");
    std::fs::create_dir(&dir).unwrap();
    let files = [
        (
            "greet.h",
            "#pragma once\nconst char *greeting(int n);\nint sum_to(int n);\n",
        ),
        (
            "greet.c",
            "#include <stdio.h>\n#include \"greet.h\"\nstatic char buf[64];\n\
             const char *greeting(int n) { snprintf(buf, sizeof buf, \"hello %d\", n); \
             return buf; }\n",
        ),
        (
            "sum.c",
            "#include \"greet.h\"\nint sum_to(int n) { int s = 0; \
             for (int i = 1; i <= n; i++) s += i; return s; }\n",
        ),
        (
            "main.c",
            "#include <stdio.h>\n#include \"greet.h\"\n\
             int main(void) { printf(\"%s %d\\n\", greeting(3), sum_to(100)); return 0; }\n",
        ),
        (
            "Makefile",
            "CFLAGS = -O2 -Wall -Werror -g\nOBJS = main.o greet.o sum.o\n\
             app: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n\
             %.o: %.c greet.h\n\t$(CC) $(CFLAGS) -c -o $@ $<\n\
             libgreet.a: greet.o sum.o\n\tar rcs $@ $^\n\
             clean:\n\trm -f app $(OBJS) libgreet.a\n",
        ),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    run_in(&dir, "make", &["-j2", "app", "libgreet.a"]);
    assert_eq!(run_in(&dir, "./app", &[]), "hello 3 5050\n");
    // Nothing to do the second time; a touched source rebuilds one object and the binary.
    let again = run_in(&dir, "make", &["app"]);
    assert!(again.contains("up to date"), "{again}");
    sh_in(&dir, "sleep 0.01; touch sum.c");
    run_in(&dir, "make", &["app"]);
    assert_eq!(run_in(&dir, "./app", &[]), "hello 3 5050\n");
    run_in(&dir, "ar", &["t", "libgreet.a"]);
    run_in(&dir, "make", &["clean"]);
    assert!(!dir.join("app").exists());
    assert_quiet_log(&m, "make with gcc");
}

/// The shell's everyday operations, each of which once logged a warning or may: isatty() on a
/// file (`test -t`), `ls -l`, `cp` (copy_file_range), `lsattr`/`chattr`, `stat`, `find`,
/// `seek`ing tools, `mv`, `rm -r`.
#[test]
fn shell_operations_on_the_mount_log_no_warning_or_error() {
    let m = Mount::new();
    let root = m.path("");
    sh_in(
        &root,
        "mkdir -p a/b && seq 1 100000 > a/numbers && echo hi > a/b/small && ln -s numbers a/link",
    );
    // isatty() on a regular file: TCGETS, ENOTTY, as on ext4.
    let tty = sh_in(
        &root,
        "if test -t 0 < a/numbers; then echo tty; else echo file; fi",
    );
    assert_eq!(tty, "file\n");
    let listing = run_in(&root, "ls", &["-lR", "a"]);
    assert!(listing.contains("numbers"), "{listing}");
    run_in(&root, "cp", &["a/numbers", "a/copy"]);
    run_in(&root, "cp", &["-a", "a", "a2"]);
    sh_in(&root, "cmp a/numbers a/copy && cmp a/numbers a2/numbers");
    let attrs = run_in(&root, "lsattr", &["-R", "a"]);
    assert!(attrs.contains("a/numbers"), "{attrs}");
    run_in(&root, "chattr", &["+d", "a/copy"]);
    run_in(&root, "lsattr", &["-d", "a", "a/copy"]);
    // Tools that seek for data and holes (SEEK_DATA/SEEK_HOLE through cp's sparse detection).
    run_in(&root, "cp", &["--sparse=always", "a/numbers", "a/sparse"]);
    run_in(&root, "stat", &["a/numbers", "a/link", "a/b"]);
    run_in(&root, "find", &[".", "-type", "f", "-newer", "a/b/small"]);
    sh_in(
        &root,
        "tail -c 100 a/numbers > /dev/null && head -c 10 a/copy > /dev/null",
    );
    sh_in(
        &root,
        "mv a2 a3 && rm -r a3 && du -s a > /dev/null && df . > /dev/null",
    );
    run_in(&root, "getfattr", &["-d", "-m", "-", "a/numbers"]);
    assert_quiet_log(&m, "shell operations");
}
