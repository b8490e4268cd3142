#!/usr/bin/env python3
"""deflatefs benchmark against its peers (issues 8 and 18). Run it through bench/run, which
installs the packages and builds the binary first; see bench/README.md.

One run = every system set up fresh, every test, torn down; the benchmark does --runs runs (the
systems interleaved within each run) and reports medians with their spread, and the ratios against
the peers computed inside each run.
"""

import argparse
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import corpus  # noqa: E402
import report  # noqa: E402
import workloads  # noqa: E402
from systems import make_systems  # noqa: E402
from util import drop_caches, loadavg, log, mounts_under, output, run  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FULL_SYSTEMS = ["libdeflate-gzip-1", "libdeflate-gzip-6", "pigz-1", "plain", "bindfs",
                "btrfs-zlib3", "btrfs-force-zlib1", "zfs-gzip", "deflatefs", "deflatefs-chunk4k",
                "deflatefs-level6", "deflatefs-digestsoff"]
QUICK_SYSTEMS = ["libdeflate-gzip-1", "plain", "bindfs", "btrfs-zlib3", "deflatefs",
                 "deflatefs-chunk4k"]
FULL_TREE = ["include", "fs", "kernel", "lib", "mm", "block"]
QUICK_TREE = ["kernel", "mm", "block"]


@dataclass
class Config:
    mode: str
    runs: int
    large_bytes: int
    incompressible_bytes: int
    fio_bytes: int
    fio_seconds: int
    tree_dirs: list
    systems: list = field(default_factory=list)
    # Issue 18. reader_vs_writer: file size (the reader's region, 3/4 of it, is larger than
    # deflatefs's 64 MiB chunk cache) and seconds of each phase; stat_during_compaction: file
    # size and seconds of sampling.
    contend_bytes: int = 0
    contend_seconds: float = 0
    compact_bytes: int = 16 << 20
    compact_seconds: float = 0


def config(args):
    if args.quick:
        cfg = Config("quick", 3, 128 << 20, 64 << 20, 256 << 20, 2, QUICK_TREE, QUICK_SYSTEMS,
                     contend_bytes=128 << 20, contend_seconds=2, compact_seconds=4)
    else:
        cfg = Config("full", 3, 1 << 30, 512 << 20, 1 << 30, 8, FULL_TREE, FULL_SYSTEMS,
                     contend_bytes=256 << 20, contend_seconds=5, compact_seconds=8)
    if args.runs:
        cfg.runs = args.runs
    if args.systems:
        cfg.systems = args.systems.split(",")
    return cfg


def cleanup(work):
    """Unmounts everything under the work directory, stops our zfs-fuse, detaches our loops."""
    pidfile = os.path.join(work, "zfs-fuse.pid")
    if os.path.exists(pidfile):
        try:
            pid = int(open(pidfile).read().strip())
            run(["zpool", "destroy", "-f", "dfsbench"], check=False)
            os.kill(pid, signal.SIGTERM)
            for _ in range(300):
                if not os.path.exists(f"/proc/{pid}"):
                    break
                time.sleep(0.1)
        except (ValueError, ProcessLookupError):
            pass
        os.unlink(pidfile)
    for mp in mounts_under(work):
        if run(["umount", mp], check=False).returncode != 0:
            run(["umount", "-l", mp], check=False)
    img = os.path.join(work, "img")
    if os.path.isdir(img):
        for dirpath, _, names in os.walk(img):
            for n in names:
                p = os.path.join(dirpath, n)
                for line in output(["losetup", "-j", p]).splitlines():
                    run(["losetup", "-d", line.split(":")[0]], check=False)
                os.unlink(p)
    left = mounts_under(work)
    if left:
        print(f"bench: still mounted: {left}", file=sys.stderr)
    elif os.path.isdir(work):
        shutil.rmtree(work)  # only once nothing is mounted below it


def write_results(args, cfg, meta, manifest, stage, systems, results, skipped, errors, started,
                  runs_done):
    """Renders the tables and writes bench/results/DATE-MODE.md and .json; returns the text."""
    meta["load_end"] = loadavg()
    meta["duration_s"] = time.time() - started
    meta["runs_done"] = runs_done
    text = report.render(cfg, meta, manifest, stage, systems, results, skipped, errors)
    os.makedirs(args.results, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d-%H%M", time.localtime(started))
    base = os.path.join(args.results, f"{stamp}-{cfg.mode}")
    with open(base + ".md", "w") as f:
        f.write(text)
    with open(base + ".json", "w") as f:
        json.dump({"meta": meta, "corpus": {**manifest, **stage}, "results": results,
                   "skipped": skipped, "errors": errors}, f, indent=1, default=str)
    log(f"results after {runs_done} of {cfg.runs} runs: {base}.md (raw figures: {base}.json)")
    return text


def setup_with_retry(system, tries=3):
    """Sets a system up; a failed attempt (seen: a fresh loop device answering EIO to mkfs) is
    torn down and tried again on another device."""
    for attempt in range(1, tries + 1):
        try:
            return system.setup()
        except Exception as e:
            if attempt == tries:
                raise
            log(f"  {system.name}: set-up failed ({e}); trying again")
            system.teardown()
            time.sleep(1)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def wait_idle(max_load, timeout):
    deadline = time.monotonic() + timeout
    while True:
        one = float(loadavg().split()[0])
        if one < max_load:
            return True
        if time.monotonic() > deadline:
            log(f"load average still {one} after {timeout}s: running anyway (noted in results)")
            return False
        log(f"waiting for the load average ({one}) to drop below {max_load}")
        time.sleep(20)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small corpus, fewer systems (<9 min)")
    ap.add_argument("--runs", type=int, help="runs per system (default 3)")
    ap.add_argument("--systems", help="comma-separated subset, in run order")
    ap.add_argument("--binary", default=os.path.join(os.path.dirname(HERE),
                                                      "target/release/deflatefs"))
    ap.add_argument("--cache", default="/var/tmp/deflatefs-bench",
                    help="corpus cache and work directory (default /var/tmp/deflatefs-bench)")
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--wait-idle", type=float, metavar="LOAD",
                    help="first wait (up to --wait-timeout s) for a 1-minute load below LOAD")
    ap.add_argument("--wait-timeout", type=int, default=1200)
    ap.add_argument("--cleanup-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = os.path.join(args.cache, "work")
    if args.cleanup_only:
        cleanup(work)
        return 0
    if os.geteuid() != 0:
        sys.exit("bench: must run as root")
    if not os.access(args.binary, os.X_OK):
        sys.exit(f"bench: {args.binary} not found: build it (bench/run does)")
    # A SIGTERM becomes an exception, so the finally below unmounts everything.
    signal.signal(signal.SIGTERM, _interrupt)
    cfg = config(args)
    cleanup(work)
    os.makedirs(work, exist_ok=True)
    started = time.time()
    meta = report.machine()
    meta["mode"] = cfg.mode
    meta["runs"] = cfg.runs
    meta["load_start"] = loadavg()
    try:
        manifest = corpus.fetch(args.cache)
        stage_dir = os.path.join(work, "stage")
        os.makedirs(stage_dir)
        # The slack holds the tree and the gzips of the large file (workloads.gunzip_reference).
        stage_mib = (cfg.large_bytes + cfg.incompressible_bytes) // (1 << 20) + 1536
        run(["mount", "-t", "tmpfs", "-o", f"size={stage_mib}m", "bench-stage", stage_dir])
        stage = corpus.stage(manifest, stage_dir, cfg)
        systems, skipped, _ = make_systems(cfg, work, args.binary)
        if args.wait_idle is not None:
            meta["waited_idle"] = wait_idle(args.wait_idle, args.wait_timeout)
            meta["load_start"] = loadavg()
        outdir = os.path.join(work, "out")
        os.makedirs(outdir, exist_ok=True)
        results = {s.name: [] for s in systems}
        errors = {}
        for i in range(cfg.runs):
            log(f"run {i + 1}/{cfg.runs} (load {loadavg()})")
            for s in systems:
                try:
                    s.rss_peaks = {}
                    setup_with_retry(s)
                    drop_caches()
                    r = workloads.run_system(s, stage, cfg, verify=(i == 0), outdir=outdir)
                    s.teardown()
                    r["rss_peaks"] = dict(s.rss_peaks)
                    r["run"] = i + 1
                    results[s.name].append(r)
                    log("  " + report.progress_line(s, r))
                except Exception as e:  # one broken system must not stop the others
                    log(f"  {s.name}: FAILED in run {i + 1}: {e}")
                    errors.setdefault(s.name, []).append(f"run {i + 1}: {e}")
                    try:
                        s.teardown()
                    except Exception as e2:
                        log(f"  {s.name}: teardown failed too: {e2}")
                        cleanup(work)
            if i + 1 < cfg.runs:  # partial results survive an interrupted benchmark
                write_results(args, cfg, meta, manifest, stage, systems, results, skipped,
                              errors, started, i + 1)
        text = write_results(args, cfg, meta, manifest, stage, systems, results, skipped,
                             errors, started, cfg.runs)
        print(text)
        return 1 if errors else 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        cleanup(work)


if __name__ == "__main__":
    sys.exit(main())
