#!/usr/bin/env python3
"""SQLite single-row update transactions on a plain directory, bindfs and deflatefs (issue 16).

For every system and journal mode (WAL, DELETE) with synchronous=FULL: create a table of
--rows rows of 100-200 bytes of text, run --updates single-row UPDATE transactions, report the
transactions per second, run PRAGMA integrity_check, and sample the backing files of the database
and its -wal / -journal every ~0.2 s while the updates run (apparent size and st_blocks), giving
the peak ratio backing / logical. Prints a table with the ratios against bindfs.

Every mount this script makes is unmounted on exit, on success, failure or Ctrl-C.
Run as root from the repository root: python3 bench/sqlite.py [--updates N] [--systems ...]
"""

import argparse
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

from util import log, unmount

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BIN = os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "deflatefs"
)
SYSTEMS = ("plain", "bindfs", "deflatefs")
MODES = ("wal", "delete")
SUFFIXES = ("", "-wal", "-journal")


class System:
    """One system under test: `backing` is where the files land, `path` where SQLite opens them."""

    def __init__(self, name, work, binary, extra_opts):
        self.name = name
        self.backing = os.path.join(work, name, "src")
        self.mnt = os.path.join(work, name, "mnt")
        self.binary = binary
        self.extra_opts = extra_opts
        self.daemon_pid = None
        shutil.rmtree(os.path.join(work, name), ignore_errors=True)
        os.makedirs(self.backing)
        os.makedirs(self.mnt)

    @property
    def path(self):
        return self.backing if self.name == "plain" else self.mnt

    def mount(self):
        if self.name == "bindfs":
            subprocess.run(["bindfs", "--multithreaded", self.backing, self.mnt], check=True)
        elif self.name == "deflatefs":
            opts = ["-o", self.extra_opts] if self.extra_opts else []
            subprocess.run([self.binary, "mount", *opts, self.backing, self.mnt], check=True)
            self.daemon_pid = daemon_pid(self.mnt)

    def unmount(self):
        if self.name != "plain":
            unmount(self.mnt)


def daemon_pid(mnt):
    """The pid of the deflatefs daemon serving `mnt` (for perf/strace attached by hand)."""
    out = subprocess.run(["pgrep", "-f", f"deflatefs.* {mnt}$"], capture_output=True, text=True)
    pids = out.stdout.split()
    return int(pids[0]) if pids else None


class Sampler(threading.Thread):
    """Samples backing/logical sizes of the database's files every `interval` seconds."""

    def __init__(self, system, name, interval=0.2):
        super().__init__(daemon=True)
        self.system, self.name, self.interval = system, name, interval
        self.stop_event = threading.Event()
        # per suffix: peak apparent ratio, peak allocated ratio, peak backing bytes, logical then
        self.peaks = {s: {"apparent": 0.0, "blocks": 0.0, "backing": 0, "logical": 0} for s in SUFFIXES}
        self.samples = 0

    def sample(self):
        for s in SUFFIXES:
            try:
                b = os.stat(os.path.join(self.system.backing, self.name + s))
                lg = os.stat(os.path.join(self.system.path, self.name + s)).st_size
            except FileNotFoundError:
                continue
            # Files below one page say nothing about the format's overhead (a new journal).
            if lg < 4096:
                continue
            p = self.peaks[s]
            apparent, blocks = b.st_size / lg, b.st_blocks * 512 / lg
            if apparent > p["apparent"]:
                p.update(apparent=apparent, backing=b.st_size, logical=lg)
            p["blocks"] = max(p["blocks"], blocks)
        self.samples += 1

    def run(self):
        while not self.stop_event.wait(self.interval):
            self.sample()

    def stop(self):
        self.stop_event.set()
        self.join()
        self.sample()


def run_case(system, mode, rows, updates, seed):
    name = f"bench-{mode}.db"
    db = os.path.join(system.path, name)
    for s in SUFFIXES:
        try:
            os.unlink(db + s)
        except FileNotFoundError:
            pass
    rnd = random.Random(seed)
    con = sqlite3.connect(db, isolation_level=None)
    con.execute(f"PRAGMA journal_mode={mode}")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    con.execute("BEGIN")
    for i in range(rows):
        con.execute("INSERT INTO t VALUES (?, ?)", (i, text(rnd)))
    con.execute("COMMIT")
    sampler = Sampler(system, name)
    sampler.start()
    t0 = time.monotonic()
    for _ in range(updates):
        con.execute("UPDATE t SET v = ? WHERE id = ?", (text(rnd), rnd.randrange(rows)))
    elapsed = time.monotonic() - t0
    sampler.stop()
    check = con.execute("PRAGMA integrity_check").fetchone()[0]
    con.close()
    peak = max(sampler.peaks.values(), key=lambda p: p["apparent"])
    return {
        "system": system.name,
        "mode": mode,
        "updates": updates,
        "seconds": round(elapsed, 3),
        "tx_per_s": round(updates / elapsed, 1),
        "integrity": check,
        "samples": sampler.samples,
        "peaks": {("db" + s): p for s, p in sampler.peaks.items() if p["logical"]},
        "peak_ratio": round(peak["apparent"], 2),
        "peak_blocks_ratio": round(max(p["blocks"] for p in sampler.peaks.values()), 2),
    }


def text(rnd):
    n = rnd.randrange(100, 201)
    return "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz0123456789 ") for _ in range(n))


def table(results):
    base = {r["mode"]: r["tx_per_s"] for r in results if r["system"] == "bindfs"}
    lines = [
        "| system | journal | tx/s | vs bindfs | integrity | peak backing/logical (apparent, blocks) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        vs = f"{r['tx_per_s'] / base[r['mode']]:.2f}x" if r["mode"] in base else "-"
        ratio = (
            f"{r['peak_ratio']:.2f}, {r['peak_blocks_ratio']:.2f}" if r["system"] == "deflatefs" else "-"
        )
        lines.append(
            f"| {r['system']} | {r['mode']} | {r['tx_per_s']:.0f} | {vs} | {r['integrity']} | {ratio} |"
        )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--updates", type=int, default=20000, help="update transactions per case")
    ap.add_argument("--rows", type=int, default=10000)
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="subset of " + ",".join(SYSTEMS))
    ap.add_argument("--modes", default=",".join(MODES), help="subset of " + ",".join(MODES))
    ap.add_argument("--work", default="/var/tmp/deflatefs-sqlite", help="directory on the disk under test")
    ap.add_argument("--bin", default=DEFAULT_BIN, help="the deflatefs binary")
    ap.add_argument("--opts", default="", help="extra deflatefs mount options")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument(
        "--pause", action="store_true", help="wait for Enter after mounting (to attach perf/strace)"
    )
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (it mounts FUSE filesystems)")
    systems = a.systems.split(",")
    results = []
    mounted = []
    try:
        for name in systems:
            if name not in SYSTEMS:
                sys.exit(f"unknown system {name}")
            s = System(name, a.work, a.bin, a.opts)
            s.mount()
            mounted.append(s)
            if a.pause and s.daemon_pid:
                input(f"{name}: daemon pid {s.daemon_pid}; press Enter to start ")
            for mode in a.modes.split(","):
                log(f"{name} {mode}: {a.rows} rows, {a.updates} updates ...")
                r = run_case(s, mode, a.rows, a.updates, a.seed)
                log(f"  {r['tx_per_s']:.0f} tx/s, integrity {r['integrity']}, peak ratio {r['peak_ratio']}")
                results.append(r)
            s.unmount()
            mounted.remove(s)
    finally:
        for s in mounted:
            try:
                s.unmount()
            except Exception as e:  # keep unmounting the others
                log(f"unmounting {s.mnt}: {e}")
    print(table(results))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
