"""The systems under test. Each is set up fresh for every run and torn down after it.

Every block-backed system sits on its own loop device (a sparse file in the work directory,
direct I/O), so each starts from an empty filesystem, syncing one does not flush anything else on
the machine, and nothing is left behind.

- plain: ext4, the uncompressed disk.
- bindfs: bindfs --multithreaded over an ext4 directory: the FUSE cost without compression.
- deflatefs*: deflatefs over an ext4 directory, with mount options (deflatefs-digestsoff:
  digests=off, to show what the write path's digests cost).
- btrfs-*: kernel btrfs with compress=... on a loop device.
- zfs-gzip: zfs-fuse with compression=gzip (gzip-6), pool on a file vdev, if zfs-fuse is installed.
"""

import os
import shutil
import subprocess
import time

from util import (drop_caches, find_pid, is_mounted, log, mounts_under, output, peak_rss_bytes,
                  pid_alive, run, syncfs, wait_exit)

IMAGE_SIZE = "40G"  # sparse: only what is written takes space


class System:
    """A filesystem to test. `path` is the directory tests write into."""

    kind = "kernel"
    daemon_name = None

    def __init__(self, name, label, work):
        self.name = name
        self.label = label
        self.work = work
        self.root = os.path.join(work, "mnt", name)
        self.image = os.path.join(work, "img", f"{name}.img")
        self.disk = os.path.join(self.root, "disk")
        self.loop = None
        self.rss_peaks = {}

    # --- life cycle -------------------------------------------------------------------------
    def setup(self):
        raise NotImplementedError

    def teardown(self):
        self.stop_daemon("teardown")
        for mp in mounts_under(self.root):
            run(["umount", mp], check=False)
        self.detach()
        if os.path.exists(self.image):
            os.unlink(self.image)
        shutil.rmtree(self.root, ignore_errors=True)

    def make_loop(self):
        os.makedirs(os.path.dirname(self.image), exist_ok=True)
        os.makedirs(self.disk, exist_ok=True)
        if os.path.exists(self.image):
            os.unlink(self.image)
        run(["truncate", "-s", IMAGE_SIZE, self.image])
        self.loop = output(["losetup", "-f", "--show", "--direct-io=on", self.image])

    def detach(self):
        if self.loop:
            run(["losetup", "-d", self.loop], check=False)
            self.loop = None

    def mount_ext4(self):
        self.make_loop()
        run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
             self.loop])
        # noinit_itable: no background inode-table zeroing thread to disturb the measurements.
        run(["mount", "-o", "noinit_itable", self.loop, self.disk])

    # --- what tests call --------------------------------------------------------------------
    @property
    def path(self):
        return os.path.join(self.disk, "data")

    @property
    def layout_dir(self):
        """Where untimed set-up files can be written so that they read back through `path`."""
        return self.path

    def backing(self, rel):
        """Where the bytes of `rel` are stored, for allocation accounting."""
        return os.path.join(self.disk, "data", rel)

    def sync(self):
        """After files were written and fsynced: syncfs the block filesystem underneath."""
        syncfs(self.disk)

    def flush_all(self):
        """Puts everything written so far on disk, including what a daemon still buffers
        (FUSE systems: unmount and wait for the daemon to exit, since syncfs does not reach a
        FUSE daemon). `make_cold` brings the mount back."""
        self.sync()

    def make_cold(self, phase):
        """Before a cold read: restart the daemon (its caches go) and drop the page cache."""
        drop_caches()

    def allocated(self, rel):
        """Bytes allocated in the backing store for file or tree `rel` (regular files only)."""
        p = self.backing(rel)
        if os.path.isfile(p):
            return os.stat(p).st_blocks * 512
        total = 0
        for dirpath, _, filenames in os.walk(p):
            for n in filenames:
                st = os.lstat(os.path.join(dirpath, n))
                total += st.st_blocks * 512
        return total

    # --- daemons ----------------------------------------------------------------------------
    def daemon_pid(self):
        return None

    def record_rss(self, phase):
        pid = self.daemon_pid()
        if pid:
            self.rss_peaks[phase] = max(self.rss_peaks.get(phase, 0), peak_rss_bytes(pid))

    def stop_daemon(self, phase):
        pass


class Plain(System):
    def setup(self):
        self.mount_ext4()
        os.makedirs(self.path)


def unreachable_mounts():
    """Mount points whose source path exists but cannot be stat'ed (EIO, ENOTCONN)."""
    bad = []
    with open("/proc/self/mounts") as f:
        for line in f:
            src, mp = line.split()[:2]
            if not src.startswith("/"):
                continue
            try:
                os.stat(src.encode().decode("unicode_escape"))
            except FileNotFoundError:
                pass
            except OSError:
                bad.append(mp.encode().decode("unicode_escape"))
    return bad


class Btrfs(System):
    def __init__(self, name, label, work, mount_opts):
        super().__init__(name, label, work)
        self.mount_opts = mount_opts

    def setup(self):
        self.make_loop()
        mkfs = ["mkfs.btrfs", "-q", "-f", self.loop]
        broken = unreachable_mounts()
        if broken:
            # mkfs.btrfs stats the source of every mount and gives up on an error (seen: a FUSE
            # mount of another program whose daemon died: EIO). Hide those mounts from it in a
            # private mount namespace; nothing changes outside that namespace.
            script = "".join(f"umount -l '{m}'; " for m in broken) + " ".join(mkfs)
            mkfs = ["unshare", "-m", "--propagation", "private", "sh", "-c", script]
        run(mkfs)
        run(["mount", "-o", self.mount_opts, self.loop, self.disk])
        os.makedirs(self.path)

    def allocated(self, rel):
        # st_blocks on btrfs counts uncompressed bytes; compsize reads the extents.
        out = output(["compsize", "-b", self.backing(rel)])
        for line in out.splitlines():
            if line.startswith("TOTAL"):
                return int(line.split()[2])
        raise RuntimeError(f"compsize: no TOTAL line in {out!r}")


class FuseOverExt4(System):
    """A FUSE daemon over an ext4 directory (disk/data), mounted on fs/."""

    kind = "fuse"

    def __init__(self, name, label, work):
        super().__init__(name, label, work)
        self.mnt = os.path.join(self.root, "fs")
        self.pid = None

    @property
    def path(self):
        return self.mnt

    def setup(self):
        self.mount_ext4()
        os.makedirs(os.path.join(self.disk, "data"))
        os.makedirs(self.mnt)
        self.start_daemon()

    def start_daemon(self):
        run(self.mount_command())
        deadline = time.monotonic() + 30
        while not is_mounted(self.mnt):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: not mounted after 30 s")
            time.sleep(0.05)
        self.pid = find_pid(self.mnt, self.daemon_name)
        if not self.pid:
            raise RuntimeError(f"{self.name}: no {self.daemon_name} process for {self.mnt}")

    def stop_daemon(self, phase):
        if self.pid and pid_alive(self.pid):
            self.record_rss(phase)
        if is_mounted(self.mnt):
            run(["umount", self.mnt])
        if self.pid:
            wait_exit(self.pid)
        self.pid = None

    def daemon_pid(self):
        return self.pid

    def flush_all(self):
        self.stop_daemon("flush")
        self.sync()

    def make_cold(self, phase):
        self.stop_daemon(phase)
        self.sync()
        drop_caches()
        self.start_daemon()


class Bindfs(FuseOverExt4):
    daemon_name = "bindfs"

    def mount_command(self):
        return ["bindfs", "--multithreaded", os.path.join(self.disk, "data"), self.mnt]


    @property
    def layout_dir(self):
        # bindfs stores files as they are: untimed set-up data goes straight to the backing dir.
        return os.path.join(self.disk, "data")


class Deflatefs(FuseOverExt4):
    daemon_name = "deflatefs"

    def __init__(self, name, label, work, binary, options):
        super().__init__(name, label, work)
        self.binary = binary
        self.options = options

    def mount_command(self):
        opts = ["-o", self.options] if self.options else []
        return [self.binary, "mount", *opts, os.path.join(self.disk, "data"), self.mnt]

    def level(self):
        """The compression level of the mount options (deflatefs's default: 1)."""
        for opt in (self.options or "").split(","):
            k, _, v = opt.partition("=")
            if k == "level":
                return int(v)
        return 1

    def memory_bound(self):
        """cache + dirty + pool, from the mount options over the defaults (64m + 64m + 32m)."""
        sizes = {"cache": 64 << 20, "dirty": 64 << 20, "pool": 32 << 20}
        for opt in (self.options or "").split(","):
            k, _, v = opt.partition("=")
            if k in sizes:
                mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(v[-1:].lower(), 1)
                sizes[k] = int(v.rstrip("kKmMgG")) * mult
        return sum(sizes.values())


class ZfsFuse(System):
    """zfs-fuse: one daemon serves the pool; its vdev is a sparse file in the work directory."""

    kind = "fuse"
    daemon_name = "zfs-fuse"
    POOL = "dfsbench"

    def __init__(self, name, label, work):
        super().__init__(name, label, work)
        self.mnt = os.path.join(self.root, "fs")
        self.vdev_dir = os.path.join(work, "img", "zfs")
        self.vdev = os.path.join(self.vdev_dir, "vdev")
        self.pidfile = os.path.join(work, "zfs-fuse.pid")
        self.pid = None

    @staticmethod
    def available():
        if not shutil.which("zfs-fuse"):
            return "zfs-fuse is not installed"
        if find_pid_by_name("zfs-fuse"):
            return "a zfs-fuse daemon is already running on this machine"
        return None

    @property
    def path(self):
        return self.mnt

    def backing(self, rel):
        return os.path.join(self.mnt, rel)

    def start_daemon(self):
        if os.path.exists(self.pidfile):  # left by the previous daemon; zfs-fuse refuses to start
            os.unlink(self.pidfile)
        run(["zfs-fuse", "-p", self.pidfile, "--no-kstat-mount"])
        deadline = time.monotonic() + 30
        while True:
            if os.path.exists(self.pidfile):
                try:
                    self.pid = int(open(self.pidfile).read().strip())
                    if run(["zpool", "list"], check=False).returncode == 0:
                        return
                except ValueError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError("zfs-fuse did not start")
            time.sleep(0.1)

    def setup(self):
        os.makedirs(self.vdev_dir, exist_ok=True)
        os.makedirs(self.mnt, exist_ok=True)
        run(["truncate", "-s", IMAGE_SIZE, self.vdev])
        self.start_daemon()
        run(["zpool", "create", "-f", "-m", self.mnt, self.POOL, self.vdev])
        run(["zfs", "set", "compression=gzip", self.POOL])
        run(["zfs", "set", "atime=off", self.POOL])

    def stop_daemon(self, phase):
        if self.pid and pid_alive(self.pid):
            self.record_rss(phase)
            run(["kill", str(self.pid)], check=False)
            wait_exit(self.pid)
        self.pid = None

    def daemon_pid(self):
        return self.pid

    def sync(self):
        syncfs(self.mnt)

    def flush_all(self):
        # Export writes every transaction group out and unmounts.
        run(["zpool", "export", self.POOL])
        self.stop_daemon("flush")

    def make_cold(self, phase):
        if self.pid:
            run(["zpool", "export", self.POOL])
            self.stop_daemon(phase)
        drop_caches()
        self.start_daemon()
        run(["zpool", "import", "-d", self.vdev_dir, self.POOL])

    def teardown(self):
        if self.pid and pid_alive(self.pid):
            run(["zpool", "destroy", "-f", self.POOL], check=False)
        self.stop_daemon("teardown")
        for mp in mounts_under(self.root):
            run(["umount", mp], check=False)
        shutil.rmtree(self.vdev_dir, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)
        if os.path.exists(self.pidfile):
            os.unlink(self.pidfile)


def find_pid_by_name(name):
    p = subprocess.run(["pgrep", "-x", name], stdout=subprocess.PIPE, text=True)
    return [int(x) for x in p.stdout.split()]


class GzipTool(Plain):
    """A ceiling, not a filesystem: a gzip program compressing the large file onto plain ext4
    (`write`) and decompressing it to /dev/null (`read`)."""

    kind = "tool"

    def __init__(self, name, label, work, compress, decompress):
        super().__init__(name, label, work)
        self.compress = compress
        self.decompress = decompress


def make_systems(cfg, work, binary):
    """All systems of this configuration, in run order; and the ones skipped, with why."""
    ncpu = os.cpu_count()
    every = {
        "plain": lambda: Plain("plain", "ext4 (uncompressed)", work),
        "bindfs": lambda: Bindfs("bindfs", "bindfs over ext4", work),
        "btrfs-zlib3": lambda: Btrfs("btrfs-zlib3", "btrfs compress=zlib:3", work,
                                     "compress=zlib:3"),
        "btrfs-force-zlib1": lambda: Btrfs("btrfs-force-zlib1", "btrfs compress-force=zlib:1",
                                           work, "compress-force=zlib:1"),
        "zfs-gzip": lambda: ZfsFuse("zfs-gzip", "zfs-fuse compression=gzip", work),
        "deflatefs": lambda: Deflatefs("deflatefs", "deflatefs (defaults)", work, binary, ""),
        "deflatefs-chunk4k": lambda: Deflatefs("deflatefs-chunk4k", "deflatefs chunk=4k", work,
                                               binary, "chunk=4k"),
        "deflatefs-chunk1m": lambda: Deflatefs("deflatefs-chunk1m", "deflatefs chunk=1m", work,
                                               binary, "chunk=1m"),
        "deflatefs-level6": lambda: Deflatefs("deflatefs-level6", "deflatefs level=6", work,
                                              binary, "level=6"),
        "deflatefs-digestsoff": lambda: Deflatefs("deflatefs-digestsoff",
                                                  "deflatefs digests=off", work, binary,
                                                  "digests=off"),
        "libdeflate-gzip-1": lambda: GzipTool("libdeflate-gzip-1", "libdeflate-gzip -1", work,
                                              ["libdeflate-gzip", "-1", "-c"],
                                              ["libdeflate-gunzip", "-c"]),
        "libdeflate-gzip-6": lambda: GzipTool("libdeflate-gzip-6", "libdeflate-gzip -6", work,
                                              ["libdeflate-gzip", "-6", "-c"],
                                              ["libdeflate-gunzip", "-c"]),
        "pigz-1": lambda: GzipTool("pigz-1", f"pigz -p {ncpu} -1", work,
                                   ["pigz", "-p", str(ncpu), "-1", "-c"],
                                   ["pigz", "-p", str(ncpu), "-d", "-c"]),
        "pigz-6": lambda: GzipTool("pigz-6", f"pigz -p {ncpu} -6", work,
                                   ["pigz", "-p", str(ncpu), "-6", "-c"],
                                   ["pigz", "-p", str(ncpu), "-d", "-c"]),
    }
    chosen, skipped = [], {}
    for name in cfg.systems:
        if name not in every:
            raise SystemExit(f"unknown system {name!r}; known: {', '.join(every)}")
        if name == "zfs-gzip" and (why := ZfsFuse.available()):
            skipped[name] = why
            log(f"skipping {name}: {why}")
            continue
        chosen.append(every[name]())
    return chosen, skipped, list(every)
