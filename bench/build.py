#!/usr/bin/env python3
"""A C build on the mount against the same build on its peers (issue 16's target: at most 1.3x
bindfs).

GNU sed 4.9 (Debian's orig tarball: 1,030 files, 342 of them C, with gnulib) is unpacked,
configured and built with `make -j$(nproc)` on:
- plain: a directory of the root filesystem,
- bindfs: bindfs --multithreaded over such a directory (FUSE without compression),
- deflatefs: target/release/deflatefs over such a directory, default options.

Systems are measured in turn, `--runs` times (default 3) in rotating order; the table gives
the median seconds of each step and the ratio of the total to bindfs and to plain. Run as root
from the repository root after `cargo build --release`:

    python3 bench/build.py [--runs N] [--cache DIR]

The tarball is downloaded once from deb.debian.org into the cache (default
/var/tmp/deflatefs-bench) and checked against its SHA-256. Everything is unmounted and removed
on exit, also on failure or Ctrl-C.
"""

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from util import unmount

TARBALL = "sed_4.9.orig.tar.xz"
URL = f"http://deb.debian.org/debian/pool/main/s/sed/{TARBALL}"
SHA256 = "6e226b732e1cd739464ad6862bd1a1aba42d7982922da7a53519631d24975181"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFLATEFS = os.path.join(REPO, "target", "release", "deflatefs")


def fetch(cache):
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, TARBALL)
    if not os.path.exists(path):
        print(f"downloading {URL}", file=sys.stderr)
        urllib.request.urlretrieve(URL, path + ".part")
        os.rename(path + ".part", path)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != SHA256:
        sys.exit(f"{path}: SHA-256 {digest}, expected {SHA256}")
    return path


def timed(cmd, cwd):
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def build_once(system, work, tarball):
    """Sets `system` up in `work`, builds, tears down; returns {step: seconds}."""
    back, mnt = os.path.join(work, "back"), os.path.join(work, "mnt")
    os.makedirs(back)
    os.makedirs(mnt)
    if system == "plain":
        top = back
    elif system == "bindfs":
        subprocess.run(["bindfs", "--multithreaded", back, mnt], check=True)
        top = mnt
    else:
        subprocess.run([DEFLATEFS, "mount", "-o", f"log={work}/deflatefs.log", back, mnt],
                       check=True)
        top = mnt
    try:
        r = {"unpack": timed(["tar", "-xf", tarball], top)}
        src = os.path.join(top, "sed-4.9")
        r["configure"] = timed(["./configure", "-q"], src)
        # bindfs does not keep the tarball's timestamps exactly, so make would regenerate
        # aclocal.m4 and friends with tools that are not installed: never regenerate.
        r["make"] = timed(["make", f"-j{os.cpu_count()}", "ACLOCAL=true", "AUTOMAKE=true",
                           "AUTOCONF=true", "AUTOHEADER=true", "MAKEINFO=true"], src)
        out = subprocess.run([os.path.join(src, "sed", "sed"), "s/a/b/"], input=b"abc",
                             capture_output=True, check=True).stdout
        assert out == b"bbc", out
        r["total"] = r["unpack"] + r["configure"] + r["make"]
        return r
    finally:
        if top == mnt:
            unmount(mnt)
        if system == "deflatefs" and os.path.exists(f"{work}/deflatefs.log"):
            bad = [line for line in open(f"{work}/deflatefs.log")
                   if " WARN " in line or " ERROR " in line]
            if bad:
                print(f"deflatefs logged {len(bad)} WARN/ERROR lines, first: {bad[0].strip()}",
                      file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cache", default="/var/tmp/deflatefs-bench")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    if not os.path.exists(DEFLATEFS):
        sys.exit(f"{DEFLATEFS} missing: cargo build --release first")
    if shutil.which("bindfs") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "bindfs"], check=True)
    tarball = fetch(args.cache)
    systems = ["plain", "bindfs", "deflatefs"]
    results = {s: [] for s in systems}
    base = tempfile.mkdtemp(prefix="deflatefs-build-", dir="/var/tmp")
    try:
        for run in range(args.runs):
            order = systems[run % 3:] + systems[:run % 3]
            for s in order:
                work = os.path.join(base, f"{s}-{run}")
                r = build_once(s, work, tarball)
                print(f"run {run + 1} {s}: " + ", ".join(f"{k} {v:.1f} s" for k, v in r.items()),
                      file=sys.stderr)
                results[s].append(r)
                shutil.rmtree(work)
    finally:
        for mnt in [os.path.join(base, d, "mnt") for d in os.listdir(base)]:
            unmount(mnt)
        shutil.rmtree(base, ignore_errors=True)
    med = {s: {k: statistics.median(r[k] for r in results[s]) for k in results[s][0]}
           for s in systems}
    print(f"\nC build of GNU sed 4.9 (make -j{os.cpu_count()}), median of {args.runs} runs, seconds")
    print(f"{'system':<10} {'unpack':>7} {'configure':>10} {'make':>7} {'total':>7} "
          f"{'x bindfs':>9} {'x plain':>8}")
    for s in systems:
        m = med[s]
        print(f"{s:<10} {m['unpack']:>7.1f} {m['configure']:>10.1f} {m['make']:>7.1f} "
              f"{m['total']:>7.1f} {m['total'] / med['bindfs']['total']:>9.2f} "
              f"{m['total'] / med['plain']['total']:>8.2f}")


if __name__ == "__main__":
    main()
