"""The corpus: real files from a Debian package, plus deterministic incompressible data.

- `large`: streaming data. The Linux source tarball shipped by Debian's binary package
  linux-source-6.1 (a source package's tarball), decompressed: one tar of ~1.3 GB of real text;
  a run uses its first `large_bytes`.
- `tree`: many small files. Selected top-level directories of that same tarball, unpacked.
- `incompressible`: AES-128-CTR keystream with a fixed key (openssl), so every machine makes the
  same bytes; not /dev/urandom.

The .deb is fetched with `apt-get download` (no deb-src needed) and kept in the cache directory,
with the decompressed tar, between runs. Everything a run uses is staged on a tmpfs, so sources
are read from memory and are not affected by dropping caches.
"""

import glob
import hashlib
import os
import subprocess

from util import log, output, run

PACKAGE = "linux-source-6.1"
TOP = "linux-source-6.1"
AES_KEY = "000102030405060708090a0b0c0d0e0f"
AES_IV = "00000000000000000000000000000000"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(1 << 20)
        while n := f.readinto(buf):
            h.update(memoryview(buf)[:n])
    return h.hexdigest()


def tree_digest(root):
    """A sha256 over the sorted (path, size, sha256) of every regular file; file count; bytes."""
    h = hashlib.sha256()
    files = total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            size = os.path.getsize(p)
            h.update(f"{os.path.relpath(p, root)}\0{size}\0{sha256_file(p)}\n".encode())
            files += 1
            total += size
    return h.hexdigest(), files, total


def fetch(cache):
    """The .deb (downloaded once) and its decompressed source tar; returns a manifest dict."""
    debs = os.path.join(cache, "debs")
    os.makedirs(debs, exist_ok=True)
    found = sorted(glob.glob(os.path.join(debs, f"{PACKAGE}_*.deb")))
    if not found:
        log(f"corpus: apt-get download {PACKAGE}")
        run(["apt-get", "download", PACKAGE], cwd=debs)
        found = sorted(glob.glob(os.path.join(debs, f"{PACKAGE}_*.deb")))
    deb = found[-1]
    version = output(["dpkg-deb", "-f", deb, "Version"])
    tar = os.path.join(cache, f"{PACKAGE}_{version}.tar")
    if not os.path.exists(tar):
        log(f"corpus: decompressing the source tarball of {os.path.basename(deb)}")
        tmp = tar + ".tmp"
        subprocess.run(
            ["bash", "-o", "pipefail", "-c",
             f"dpkg-deb --fsys-tarfile '{deb}' | tar -xO --wildcards '*/{PACKAGE}.tar.xz'"
             f" | xz -dc -T0 > '{tmp}'"], check=True)
        os.rename(tmp, tar)
    sums = os.path.join(cache, "sha256.txt")
    known = {}
    if os.path.exists(sums):
        for line in open(sums):
            digest, name = line.split()
            known[name] = digest
    for path in (deb, tar):
        name = os.path.basename(path)
        if name not in known:
            log(f"corpus: sha256 {name}")
            known[name] = sha256_file(path)
    with open(sums, "w") as f:
        for name, digest in sorted(known.items()):
            f.write(f"{digest}  {name}\n")
    return {
        "package": PACKAGE,
        "version": version,
        "deb": os.path.basename(deb),
        "deb_sha256": known[os.path.basename(deb)],
        "tar": os.path.basename(tar),
        "tar_sha256": known[os.path.basename(tar)],
        "tar_bytes": os.path.getsize(tar),
        "tar_path": tar,
    }


def stage(manifest, stage_dir, cfg):
    """Writes the run's inputs into `stage_dir` (a tmpfs): large.tar, incompressible.bin, tree/.
    Returns a dict of paths, sizes and checksums."""
    tar = manifest["tar_path"]
    large = os.path.join(stage_dir, "large.tar")
    size = min(cfg.large_bytes, os.path.getsize(tar))
    log(f"corpus: staging large.tar ({size / 1e6:.0f} MB), incompressible.bin "
        f"({cfg.incompressible_bytes / 1e6:.0f} MB), tree/ ({', '.join(cfg.tree_dirs)})")
    run(["bash", "-c", f"head -c {size} '{tar}' > '{large}'"])
    incomp = os.path.join(stage_dir, "incompressible.bin")
    run(["bash", "-o", "pipefail", "-c",
         f"openssl enc -aes-128-ctr -nosalt -K {AES_KEY} -iv {AES_IV} < /dev/zero 2>/dev/null"
         f" | head -c {cfg.incompressible_bytes} > '{incomp}'"], check=False)
    if os.path.getsize(incomp) != cfg.incompressible_bytes:
        raise RuntimeError("could not make the incompressible data with openssl")
    tree = os.path.join(stage_dir, "tree")
    os.makedirs(tree)
    run(["tar", "-xf", tar, "-C", tree, "--strip-components=1"]
        + [f"{TOP}/{d}" for d in cfg.tree_dirs])
    log("corpus: checksums")
    tdigest, tfiles, tbytes = tree_digest(tree)
    return {
        "large": large, "large_bytes": size, "large_sha256": sha256_file(large),
        "incompressible": incomp, "incompressible_bytes": cfg.incompressible_bytes,
        "incompressible_sha256": sha256_file(incomp),
        "tree": tree, "tree_files": tfiles, "tree_bytes": tbytes, "tree_sha256": tdigest,
        "tree_dirs": list(cfg.tree_dirs),
    }
