"""Small helpers shared by the benchmark: commands, progress lines, caches, processes."""

import ctypes
import os
import subprocess
import sys
import time

_START = time.monotonic()
_libc = ctypes.CDLL(None, use_errno=True)


def log(msg):
    """One progress line on stderr, prefixed with the time since the benchmark started."""
    t = int(time.monotonic() - _START)
    print(f"[{t // 60:3d}:{t % 60:02d}] {msg}", file=sys.stderr, flush=True)


def run(cmd, check=True, quiet=True, **kw):
    """Runs a command (a list); its output is captured and shown only if it fails."""
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({p.returncode}): {p.stdout.strip()}")
    if not quiet and p.stdout:
        print(p.stdout, file=sys.stderr, end="")
    return p


def output(cmd):
    return run(cmd).stdout.strip()


def syncfs(path):
    """syncfs(2) on the filesystem holding `path` (Python 3.11 has no os.syncfs)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), path)
    finally:
        os.close(fd)


def drop_caches():
    """Drops the page cache, dentries and inodes (our filesystems have been synced before)."""
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def pid_alive(pid):
    """Whether any thread of process `pid` still runs. Not only the leader: a daemon whose main
    thread has returned shows as a zombie while its other threads still wind down and hold its
    files open (seen: deflatefs's signal thread), and an unmount of the disk beneath then fails
    with EBUSY."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return False
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                if f.read().rsplit(") ", 1)[-1].split()[0] not in ("Z", "X"):
                    return True
        except (FileNotFoundError, ProcessLookupError):
            continue
    return False


def wait_exit(pid, timeout=300):
    """Waits until process `pid` (not our child) has exited."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} still running after {timeout}s")
        time.sleep(0.02)


def cpu_seconds(pid):
    """User + system CPU seconds the process has used so far (all threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_bytes(pid):
    """VmHWM: the peak resident set size of the process."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def find_pid(argv_contains, name):
    """The pid of the process whose command line has argv0 ending in `name` and contains the
    argument `argv_contains` (a mount point: unique to one daemon)."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == name and argv_contains in argv:
            return int(d)
    return None


def mounts_under(root):
    """Mount points at or below `root`, deepest (most recently mounted) first."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == root or mp.startswith(root.rstrip("/") + "/"):
                found.append(mp)
    return list(reversed(found))


def is_mounted(path):
    return path in mounts_under(path)


def unmount(path):
    """umount `path` until it is gone (lazily after 10 tries); raises if it stays mounted."""
    path = os.path.realpath(path)
    for attempt in range(50):
        if not is_mounted(path):
            return
        subprocess.run(["umount", path], stderr=subprocess.DEVNULL)
        if attempt > 10:
            subprocess.run(["umount", "-l", path], stderr=subprocess.DEVNULL)
        time.sleep(0.1)
    raise RuntimeError(f"could not unmount {path}")


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])
