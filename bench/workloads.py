"""The tests. Each takes a set-up system and returns figures (a dict) for one run.

Conventions: MB = 10^6 bytes; throughput is logical bytes / wall seconds; a write is timed until
the data is on disk (fsync of the file, then syncfs of the block filesystem underneath); a cold
read starts after the daemon (if any) was restarted and the page cache dropped; daemon CPU is
user + system seconds of the daemon process over the test, per GB (10^9 bytes) of logical data.
"""

import errno
import hashlib
import json
import os
import resource
import subprocess
import time

from util import cpu_seconds, drop_caches, log, run, syncfs

BUF = 1 << 20


def _write_all(fd, view):
    while view:
        n = os.write(fd, view)
        view = view[n:]


def copy_file(src, dst, limit=None, offset=0, repeat=False):
    """Copies src (from byte `offset` on) to dst in 1 MiB writes and fsyncs it; returns bytes
    written. With `repeat`, src is copied again from its start until `limit` bytes are written."""
    buf = bytearray(BUF)
    mv = memoryview(buf)
    total = 0
    with open(src, "rb", buffering=0) as fi:
        fi.seek(offset)
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            while limit is None or total < limit:
                want = BUF if limit is None else min(BUF, limit - total)
                n = fi.readinto(mv[:want])
                if not n and repeat and limit is not None and fi.tell() > 0:
                    fi.seek(0)
                    continue
                if not n:
                    break
                _write_all(fd, mv[:n])
                total += n
            os.fsync(fd)
        finally:
            os.close(fd)
    return total


def read_file(path, hasher=None):
    buf = bytearray(BUF)
    mv = memoryview(buf)
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while n := os.readv(fd, [buf]):
            total += n
            if hasher:
                hasher.update(mv[:n])
    finally:
        os.close(fd)
    return total


class DaemonCpu:
    """CPU seconds of the system's daemon between start() and stop() (None without a daemon)."""

    def __init__(self, system):
        self.system = system
        self.pid = system.daemon_pid()
        self.t0 = cpu_seconds(self.pid) if self.pid else None

    def stop(self):
        if not self.pid or self.system.daemon_pid() != self.pid:
            return None
        return cpu_seconds(self.pid) - self.t0


def seq(system, stage, which, verify):
    """Sequential write of stage[which] (large or incompressible), then a cold read of it."""
    src, size = stage[which], stage[f"{which}_bytes"]
    name = os.path.basename(src)
    dst = os.path.join(system.path, name)
    r = {}
    cpu = DaemonCpu(system)
    t0 = time.perf_counter()
    copy_file(src, dst)
    system.sync()
    r["write_s"] = time.perf_counter() - t0
    if (c := cpu.stop()) is not None:
        r["write_cpu_s"] = c
    system.record_rss(f"{which}-write")
    system.make_cold(f"{which}-write")
    r["allocated"] = system.allocated(name)
    r["ratio"] = size / max(r["allocated"], 1)
    cpu = DaemonCpu(system)
    t0 = time.perf_counter()
    got = read_file(dst)
    r["read_s"] = time.perf_counter() - t0
    if (c := cpu.stop()) is not None:
        r["read_cpu_s"] = c
    system.record_rss(f"{which}-read")
    if got != size:
        raise RuntimeError(f"{system.name}: read {got} bytes of {name}, wrote {size}")
    if verify:
        h = hashlib.sha256()
        read_file(dst, h)
        if h.hexdigest() != stage[f"{which}_sha256"]:
            raise RuntimeError(f"{system.name}: {name} reads back different bytes")
    r["bytes"] = size
    return r


def digests(system, stage):
    """Time to read user.deflatefs.blake3 and .sha256 of the large file after a 4 KiB overwrite
    in its middle (each attribute after its own overwrite). None where the attribute is missing."""
    path = os.path.join(system.path, os.path.basename(stage["large"]))
    size = stage["large_bytes"]
    r = {}
    for i, attr in enumerate(["blake3", "sha256"]):
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, bytes([65 + i]) * 4096, (size // 2) & ~4095)
            os.fsync(fd)
        finally:
            os.close(fd)
        t0 = time.perf_counter()
        try:
            os.getxattr(path, f"user.deflatefs.{attr}")
            r[f"{attr}_ms"] = (time.perf_counter() - t0) * 1000
        except OSError as e:
            if e.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            r[f"{attr}_ms"] = None
    return r


def tree(system, stage):
    """cp -a of the small-file tree in, until on disk; then a cold `tar c` of it to /dev/null."""
    dst = os.path.join(system.path, "tree")
    r = {"bytes": stage["tree_bytes"], "files": stage["tree_files"]}
    t0 = time.perf_counter()
    run(["cp", "-a", stage["tree"], dst])
    system.flush_all()
    r["in_s"] = time.perf_counter() - t0
    system.make_cold("tree-in")
    r["allocated"] = system.allocated("tree")
    r["ratio"] = stage["tree_bytes"] / max(r["allocated"], 1)
    cpu = DaemonCpu(system)
    # GNU tar skips reading file data when its archive is /dev/null itself: pipe through cat.
    t0 = time.perf_counter()
    run(["bash", "-o", "pipefail", "-c", f"tar -C '{system.path}' -cf - tree | cat > /dev/null"])
    r["out_s"] = time.perf_counter() - t0
    if (c := cpu.stop()) is not None:
        r["out_cpu_s"] = c
    system.record_rss("tree-out")
    return r


def _fio(name, path, size, extra, outdir, numjobs=1):
    """Runs one fio job (or `numjobs` of them on the same file, reported as one group)."""
    out = os.path.join(outdir, f"fio-{name}.json")
    cmd = ["fio", f"--name={name}", f"--filename={path}", f"--size={size}", "--bs=4k",
           "--ioengine=psync", "--direct=1", f"--numjobs={numjobs}", "--group_reporting",
           "--iodepth=1", "--output-format=json", f"--output={out}", *extra]
    t0 = time.perf_counter()
    run(cmd)
    wall = time.perf_counter() - t0
    with open(out) as f:
        job = json.load(f)["jobs"][0]
    return job, wall


def fio(system, stage, cfg, outdir):
    """4 KiB random reads (one job, then four jobs at once), then random writes, with O_DIRECT
    at the mount (its page cache is bypassed; whatever the system caches below is its own), on a
    file of the large data's bytes. Each starts cold."""
    path = os.path.join(system.path, "fio.dat")
    # The whole file, also where fio_bytes exceeds the large data (quick mode): fio would
    # otherwise lay out the rest itself, through the mount, with bytes of its own.
    copy_file(stage["large"], os.path.join(system.layout_dir, "fio.dat"), limit=cfg.fio_bytes,
              repeat=True)
    system.sync()
    system.make_cold("fio-layout")
    r = {}
    cpu = DaemonCpu(system)
    job, _ = _fio("randread", path, cfg.fio_bytes,
                  ["--rw=randread", "--time_based", f"--runtime={cfg.fio_seconds}"], outdir)
    r["randread_iops"] = job["read"]["iops"]
    if (c := cpu.stop()) is not None:
        r["randread_cpu_s"] = c
    system.record_rss("fio-randread")
    system.make_cold("fio-randread")
    # Issue 18: four processes reading the one file at random at once (fio psync, numjobs=4).
    cpu = DaemonCpu(system)
    job, _ = _fio("randread4", path, cfg.fio_bytes,
                  ["--rw=randread", "--time_based", f"--runtime={cfg.fio_seconds}"], outdir,
                  numjobs=4)
    r["randread4_iops"] = job["read"]["iops"]
    if (c := cpu.stop()) is not None:
        r["randread4_cpu_s"] = c
    system.record_rss("fio-randread4")
    system.make_cold("fio-randread4")
    # Writes: a fixed time of 4 KiB writes, then fsync; IOPS counts the fsync tail too.
    job, wall = _fio("randwrite", path, cfg.fio_bytes,
                     ["--rw=randwrite", "--time_based", f"--runtime={cfg.fio_seconds}",
                      "--end_fsync=1", "--buffer_compress_percentage=50",
                      "--buffer_compress_chunk=4k", "--refill_buffers"], outdir)
    r["randwrite_iops"] = job["write"]["total_ios"] / wall
    system.record_rss("fio-randwrite")
    return r


def gzip_tool(system, stage):
    """A ceiling: compress the large file onto plain ext4 (until synced), then decompress it cold
    to /dev/null. CPU is the tool's own user + system seconds."""
    src, size = stage["large"], stage["large_bytes"]
    dst = os.path.join(system.path, "large.tar.gz")
    r = {"bytes": size}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        subprocess.run(system.compress, stdin=fi, stdout=fo, check=True)
        os.fsync(fo.fileno())
    system.sync()
    r["write_s"] = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    r["write_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    r["allocated"] = os.stat(dst).st_blocks * 512
    r["ratio"] = size / r["allocated"]
    drop_caches()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(dst, "rb") as fi, open(os.devnull, "wb") as fo:
        subprocess.run(system.decompress, stdin=fi, stdout=fo, check=True)
    r["read_s"] = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    r["read_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return r


def gunzip_reference(system, stage, level):
    """The yardstick of the daemon's read CPU (issue 18): user + system CPU seconds of
    `libdeflate-gunzip -c > /dev/null` on a gzip (`libdeflate-gzip -LEVEL`) of the large data,
    read cold from the system's ext4 disk as the daemon's cold read was. The .gz is made once per
    benchmark on the staging tmpfs (untimed); each run copies it beside the data directory, syncs
    and drops the caches."""
    size = stage["large_bytes"]
    gz = os.path.join(os.path.dirname(stage["large"]), f"large.tar.{level}.gz")
    if not os.path.exists(gz):
        with open(stage["large"], "rb") as fi, open(gz + ".tmp", "wb") as fo:
            subprocess.run(["libdeflate-gzip", f"-{level}", "-c"], stdin=fi, stdout=fo,
                           check=True)
        os.rename(gz + ".tmp", gz)
    dst = os.path.join(system.disk, "gunzip-reference.gz")
    copy_file(gz, dst)
    syncfs(system.disk)
    drop_caches()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(dst, "rb") as fi, open(os.devnull, "wb") as fo:
        subprocess.run(["libdeflate-gunzip", "-c"], stdin=fi, stdout=fo, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    os.unlink(dst)
    return {"bytes": size, "level": level, "s": wall,
            "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}


def run_system(system, stage, cfg, verify, outdir):
    """Every test that applies to `system`, in order; returns {test: figures}."""
    import concurrency  # here, not at the top: it imports this module's helpers
    res = {}
    if system.kind == "tool":
        log(f"  {system.name}: compress + decompress the large file")
        res["large"] = gzip_tool(system, stage)
        return res
    log(f"  {system.name}: sequential write + cold read, {stage['large_bytes'] / 1e6:.0f} MB")
    res["large"] = seq(system, stage, "large", verify)
    if system.name.startswith("deflatefs"):
        res["digest"] = digests(system, stage)
        log(f"  {system.name}: libdeflate-gunzip -c of a gzip -{system.level()} of the large file")
        res["gunzip"] = gunzip_reference(system, stage, system.level())
    os.unlink(os.path.join(system.path, os.path.basename(stage["large"])))
    log(f"  {system.name}: incompressible write + cold read, "
        f"{stage['incompressible_bytes'] / 1e6:.0f} MB")
    res["incompressible"] = seq(system, stage, "incompressible", verify)
    os.unlink(os.path.join(system.path, os.path.basename(stage["incompressible"])))
    log(f"  {system.name}: small-file tree, {stage['tree_files']} files")
    res["tree"] = tree(system, stage)
    log(f"  {system.name}: fio 4k random read/write, {cfg.fio_bytes >> 20} MiB file")
    res["fio"] = fio(system, stage, cfg, outdir)
    os.unlink(os.path.join(system.path, "fio.dat"))
    log(f"  {system.name}: four readers of four files, {stage['large_bytes'] / 4e6:.0f} MB each")
    res["readers4"] = concurrency.four_readers(system, stage, cfg)
    log(f"  {system.name}: a reader beside an overwrite + fsync loop, {cfg.contend_seconds} s each")
    res["contend"] = concurrency.reader_vs_writer(system, stage, cfg)
    # The target is the default mount's; the variants' would cost the full run 1.5 minutes.
    if system.name == "deflatefs":
        log(f"  {system.name}: stat during compactions, {cfg.compact_seconds} s")
        res["statc"] = concurrency.stat_during_compaction(system, stage, cfg)
    return res
