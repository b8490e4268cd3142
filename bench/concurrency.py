"""The tests of issue 18: one file (or a few) served to several requesters at once.

- `four_readers`: four processes each read their own large file, cold, all at once.
- `reader_vs_writer`: a reader of one region of a file, alone and then while another process
  overwrites 4 KiB blocks of another region of the same file and fsyncs after each.
- `stat_during_compaction` (deflatefs only): `statx` latency of a file while a writer makes it
  pile up overlay pieces, so that deflatefs compacts it again and again.

Every requester is its own process (forked), not a thread: a Python thread waiting for the GIL
would add milliseconds of its own to the latencies and stalls being measured.
"""

import ctypes
import mmap
import multiprocessing as mp
import os
import random
import time

from workloads import BUF, DaemonCpu, copy_file, read_file

BLOCK = 4096
COMPACT_WRITES_PER_FSYNC = 8
COMPACT_TEMP_PREFIX = ".deflatefs-compact-"  # src/fs/core.rs, DeflateFs::compact
CTX = mp.get_context("fork")

_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
_AT_STATX_FORCE_SYNC = 0x2000  # ask the filesystem (a FUSE daemon), not the attribute cache
_STATX_BASIC_STATS = 0x7FF
_STATX_SIZE_OFFSET = 40  # struct statx: stx_size, after mask, blksize, attributes, nlink...


def _child(target, *args):
    """Starts `target(*args, conn)` in a forked process; returns (process, parent end)."""
    parent, child = CTX.Pipe(duplex=False)
    p = CTX.Process(target=_guarded, args=(target, args, child), daemon=True)
    p.start()
    child.close()
    return p, parent


def _guarded(target, args, conn):
    try:
        conn.send(("ok", target(*args)))
    except BaseException as e:  # the parent raises it with context
        conn.send(("error", f"{type(e).__name__}: {e}"))


def _result(proc, conn, what, timeout=600):
    if not conn.poll(timeout):
        proc.kill()
        raise RuntimeError(f"{what}: no answer after {timeout} s")
    status, value = conn.recv()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"{what}: {value}")
    return value


# --- four readers of four files ----------------------------------------------------------------
def _read_when_told(path, go):
    go.wait()
    return read_file(path)


def four_readers(system, stage, cfg):
    """Four files, each a different quarter of the large data, laid out untimed; then, cold, four
    processes read one each (1 MiB reads) all at once. Aggregate MB/s: all bytes / the time from
    the start until the last reader is done."""
    quarter = (stage["large_bytes"] // 4) & ~(BUF - 1)
    names = [f"reader{i}.dat" for i in range(4)]
    for i, name in enumerate(names):
        copy_file(stage["large"], os.path.join(system.layout_dir, name), limit=quarter,
                  offset=i * quarter)
    system.sync()
    system.make_cold("readers-layout")
    go = CTX.Event()
    readers = [_child(_read_when_told, os.path.join(system.path, n), go) for n in names]
    time.sleep(0.2)  # every reader is at go.wait()
    cpu = DaemonCpu(system)
    t0 = time.perf_counter()
    go.set()
    got = [_result(p, c, f"{system.name}: reader of {n}") for (p, c), n in zip(readers, names)]
    r = {"s": time.perf_counter() - t0, "bytes": sum(got)}
    if (c := cpu.stop()) is not None:
        r["cpu_s"] = c
    system.record_rss("four-readers")
    if got != [quarter] * 4:
        raise RuntimeError(f"{system.name}: four readers read {got} bytes, each file has {quarter}")
    for name in names:
        os.unlink(os.path.join(system.path, name))
    return r


# --- a reader and an overwriter of one file ---------------------------------------------------
def _direct_reader(path, start, length, seconds):
    """Reads [start, start+length) of `path` over and over with 1 MiB O_DIRECT reads for
    `seconds`; returns (bytes, seconds). O_DIRECT: every pass asks the filesystem again instead
    of the page cache of the mount."""
    buf = mmap.mmap(-1, BUF)  # page-aligned, as O_DIRECT needs
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        total, off = 0, start
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while time.perf_counter() < deadline:
            n = os.preadv(fd, [buf], off)
            if n <= 0:
                raise RuntimeError(f"read of {path} at {off} returned {n}")
            total += n
            off += n
            if off >= start + length:
                off = start
        return total, time.perf_counter() - t0
    finally:
        os.close(fd)


def _overwriter(path, start, length, blocks, per_fsync, stop, started, seed):
    """Until `stop`: writes `per_fsync` 4 KiB blocks, each at a random 4 KiB-aligned offset in
    [start, start+length) of `path`, then fsyncs the file. Returns (fsyncs, seconds)."""
    rnd = random.Random(seed)
    fd = os.open(path, os.O_WRONLY)
    try:
        n = 0
        t0 = time.perf_counter()
        while not stop.is_set():
            for i in range(per_fsync):
                os.pwrite(fd, blocks[(n * per_fsync + i) % len(blocks)],
                          start + rnd.randrange(length // BLOCK) * BLOCK)
            os.fsync(fd)
            n += 1
            if n == 3:
                started.set()
        started.set()
        return n, time.perf_counter() - t0
    finally:
        os.close(fd)


def _sample_blocks(stage, count=64, seed=18):
    """`count` 4 KiB blocks of the large data from random places: what the writers write."""
    rnd = random.Random(seed)
    with open(stage["large"], "rb") as f:
        out = []
        for _ in range(count):
            f.seek(rnd.randrange(stage["large_bytes"] // BLOCK) * BLOCK)
            out.append(f.read(BLOCK))
    return out


def reader_vs_writer(system, stage, cfg):
    """A file of the large data's bytes: its first quarter is the writer's, the rest the
    reader's. Cold, the reader reads its region for `cfg.contend_seconds` alone; cold again, the
    same while a writer overwrites 4 KiB blocks of its own region with an fsync after each.
    The file is read once, untimed, before either phase, so that both start equally cold.
    The reader's region is larger than deflatefs's chunk cache (64 MiB by default), so every
    pass decodes again."""
    size = min(cfg.contend_bytes, stage["large_bytes"])
    name = "contend.dat"
    path = os.path.join(system.path, name)
    copy_file(stage["large"], os.path.join(system.layout_dir, name), limit=size)
    system.sync()
    w_start, w_len = 0, size // 4
    r_start, r_len = size // 4, size - size // 4
    r = {}
    # One untimed read first: the first read of freshly written data from a virtual disk can be
    # slower than every later one (seen: bindfs's reader 1.3-2x faster in the second phase,
    # whatever ran beside it), which would favour the phase beside the writer.
    read_file(path)
    system.make_cold("contend-layout")
    p, c = _child(_direct_reader, path, r_start, r_len, cfg.contend_seconds)
    got, secs = _result(p, c, f"{system.name}: reader alone")
    r["alone_mbps"] = got / secs / 1e6
    system.record_rss("contend-alone")
    system.make_cold("contend-alone")
    stop, started = CTX.Event(), CTX.Event()
    wp, wc = _child(_overwriter, path, w_start, w_len, _sample_blocks(stage), 1, stop, started,
                    1)
    try:
        if not started.wait(60):
            raise RuntimeError(f"{system.name}: the writer did not get 3 fsyncs done in 60 s")
        p, c = _child(_direct_reader, path, r_start, r_len, cfg.contend_seconds)
        got, secs = _result(p, c, f"{system.name}: reader beside the writer")
    finally:
        stop.set()
    fsyncs, wsecs = _result(wp, wc, f"{system.name}: writer")
    r["with_writer_mbps"] = got / secs / 1e6
    r["writer_fsyncs_per_s"] = fsyncs / wsecs
    r["kept"] = r["with_writer_mbps"] / r["alone_mbps"]
    system.record_rss("contend-with-writer")
    os.unlink(path)
    return r


# --- stat during compaction -------------------------------------------------------------------
def _statx_forced(path_b, buf):
    """statx(2) with AT_STATX_FORCE_SYNC: a FUSE mount asks its daemon (GETATTR) whatever its
    attribute timeout; returns the size."""
    if _libc.statx(_AT_FDCWD, path_b, _AT_STATX_FORCE_SYNC, _STATX_BASIC_STATS, buf) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path_b.decode())
    return int.from_bytes(buf.raw[_STATX_SIZE_OFFSET:_STATX_SIZE_OFFSET + 8], "little")


def _compacting(backing_dir):
    """Whether a compaction's temporary (`.deflatefs-compact-<inode>`, written next to the
    file it replaces) exists in `backing_dir`."""
    return any(n.startswith(COMPACT_TEMP_PREFIX) for n in os.listdir(backing_dir))


def _stat_sampler(path, backing, seconds, interval, size):
    """statx (forced to the daemon) of `path` every `interval` s for `seconds`. A sample counts
    as taken during a compaction if deflatefs's compaction temporary existed just before or just
    after it, or if the backing file was replaced meanwhile (a compaction renames its temporary
    over the name). Returns the latencies (s) during and outside compactions and the number of
    compactions seen (replacements of the backing file)."""
    buf = ctypes.create_string_buffer(256)
    path_b = os.fsencode(path)
    bdir = os.path.dirname(backing)
    during, outside = [], []
    inos = [os.stat(backing).st_ino]
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        ino = os.stat(backing).st_ino
        if ino != inos[-1]:
            inos.append(ino)
        before = _compacting(bdir)
        t0 = time.perf_counter()
        got = _statx_forced(path_b, buf)
        lat = time.perf_counter() - t0
        after = _compacting(bdir) or os.stat(backing).st_ino != ino
        if got != size:
            raise RuntimeError(f"statx of {path} says {got} bytes, the file has {size}")
        (during if before or after else outside).append(lat)
        time.sleep(interval)
    ino = os.stat(backing).st_ino
    if ino != inos[-1]:
        inos.append(ino)
    return during, outside, len(inos) - 1


def _percentile(sorted_vals, q):
    if not sorted_vals:
        return None
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


def stat_during_compaction(system, stage, cfg):
    """deflatefs: a file of `cfg.compact_bytes` of the large data; a writer overwrites random
    4 KiB blocks of it with an fsync after each (each leaves an overlay piece: stale bytes pile
    up and deflatefs compacts the file, again and again), while a sampler times statx of the
    file's path every millisecond, forced past the kernel's attribute cache (deflatefs answers
    with a 1 s attribute timeout). Latencies in ms: p50/p99/max of the samples taken while a
    compaction ran, p99 of all, and the number of compactions (replacements of the backing
    file) seen."""
    size = min(cfg.compact_bytes, stage["large_bytes"])
    name = "compact.dat"
    path = os.path.join(system.path, name)
    copy_file(stage["large"], path, limit=size)
    system.sync()
    backing = system.backing(name)
    stop, started = CTX.Event(), CTX.Event()
    # Random bytes, 8 blocks per fsync: stale bytes pile up fast enough for several compactions
    # within the sampling time.
    noise = random.Random(2)
    blocks = [noise.randbytes(BLOCK) for _ in range(64)]
    wp, wc = _child(_overwriter, path, 0, size, blocks, COMPACT_WRITES_PER_FSYNC, stop, started,
                    2)
    try:
        if not started.wait(60):
            raise RuntimeError(f"{system.name}: the writer did not get 3 fsyncs done in 60 s")
        p, c = _child(_stat_sampler, path, backing, cfg.compact_seconds, 0.001, size)
        during, outside, compactions = _result(p, c, f"{system.name}: stat sampler")
    finally:
        stop.set()
    fsyncs, wsecs = _result(wp, wc, f"{system.name}: writer")
    system.record_rss("stat-compaction")
    during.sort()
    every = sorted(during + outside)
    ms = lambda v: None if v is None else v * 1000  # noqa: E731
    os.unlink(path)
    return {
        "compactions": compactions,
        "samples": len(every),
        "samples_during": len(during),
        "p50_ms": ms(_percentile(during, 0.50)),
        "p99_ms": ms(_percentile(during, 0.99)),
        "max_ms": ms(during[-1] if during else None),
        "p99_all_ms": ms(_percentile(every, 0.99)),
        "max_all_ms": ms(every[-1] if every else None),
        "writer_fsyncs_per_s": fsyncs / wsecs,
    }
