"""Figures to tables: medians with spread, the ratios against the peers, the targets of issue 8."""

import os
import platform
import statistics
import subprocess
import time

from util import output

MIB = 1 << 20
RSS_SLACK = 64 * MIB  # the binary, thread stacks, allocator: on top of cache + dirty + pool


def machine():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = output(["git", "-C", repo, "rev-parse", "--short", "HEAD"])
        dirty = output(["git", "-C", repo, "status", "--porcelain", "--", "src", "Cargo.toml",
                        "Cargo.lock"])
        commit += " (src/ has uncommitted changes)" if dirty else ""
    except Exception:
        commit = "unknown"
    versions = {}
    for pkg in ["bindfs", "btrfs-progs", "fio", "pigz", "libdeflate-tools", "zfs-fuse", "fuse3"]:
        p = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
        versions[pkg] = p.stdout.strip() or "not installed"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / (1 << 20), 1),
        "kernel": platform.release(),
        "commit": commit,
        "versions": versions,
    }


# --- per-run figures ------------------------------------------------------------------------
def _mbps(t, key):
    return lambda r: r[t]["bytes"] / r[t][key] / 1e6 if t in r and key in r[t] else None


def _get(t, key, scale=1.0):
    def f(r):
        v = r.get(t, {}).get(key)
        return None if v is None else v * scale
    return f


def _cpu_per_gb(t, key):
    def f(r):
        v = r.get(t, {}).get(key)
        return None if v is None else v / (r[t]["bytes"] / 1e9)
    return f


def _rss(r):
    peaks = r.get("rss_peaks") or {}
    return max(peaks.values()) / MIB if peaks else None


def _tree_mbps(key):
    return lambda r: r["tree"]["bytes"] / r["tree"][key] / 1e6 if "tree" in r else None


METRICS = {
    "write": ("seq write MB/s", _mbps("large", "write_s")),
    "read": ("cold seq read MB/s", _mbps("large", "read_s")),
    "iwrite": ("incompressible write MB/s", _mbps("incompressible", "write_s")),
    "iread": ("incompressible cold read MB/s", _mbps("incompressible", "read_s")),
    "tree_in": ("tree copy in MB/s", _tree_mbps("in_s")),
    "tree_out": ("tree read back MB/s", _tree_mbps("out_s")),
    "randread": ("4k rand read IOPS", _get("fio", "randread_iops")),
    "randwrite": ("4k rand write IOPS", _get("fio", "randwrite_iops")),
    "ratio": ("ratio large", _get("large", "ratio")),
    "tree_ratio": ("ratio tree", _get("tree", "ratio")),
    "iratio": ("ratio incompressible", _get("incompressible", "ratio")),
    "cpu_write": ("CPU s/GB write", _cpu_per_gb("large", "write_cpu_s")),
    "cpu_read": ("CPU s/GB read", _cpu_per_gb("large", "read_cpu_s")),
    "cpu_iwrite": ("CPU s/GB incompr. write", _cpu_per_gb("incompressible", "write_cpu_s")),
    "rss": ("peak RSS MiB", _rss),
    "blake3": ("blake3 xattr ms", _get("digest", "blake3_ms")),
    "sha256": ("sha256 xattr ms", _get("digest", "sha256_ms")),
}
THROUGHPUT = ["write", "read", "iwrite", "iread", "tree_in", "tree_out", "randread", "randwrite"]
EFFICIENCY = ["ratio", "tree_ratio", "iratio", "cpu_write", "cpu_read", "cpu_iwrite", "rss",
              "blake3", "sha256"]


def values(results, system, metric):
    f = METRICS[metric][1]
    return [v for r in results.get(system, []) for v in [f(r)] if v is not None]


def median_spread(vals):
    """Median and half the min-max range as a fraction of the median."""
    m = statistics.median(vals)
    return m, ((max(vals) - min(vals)) / 2 / m if m else 0.0)


def fmt_num(v):
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def cell(vals, spread=True):
    if not vals:
        return "n/a"
    m, s = median_spread(vals)
    return f"{fmt_num(m)} ±{s * 100:.0f}%" if spread and len(vals) > 1 else fmt_num(m)


def progress_line(system, r):
    parts = []
    for k in ["write", "read", "iwrite", "iread", "tree_in", "tree_out", "randread", "ratio",
              "cpu_write", "rss"]:
        v = METRICS[k][1](r)
        if v is not None:
            parts.append(f"{k}={fmt_num(v)}")
    if "digest" in r:
        d = r["digest"]
        parts += [f"{a}={'n/a' if d.get(a + '_ms') is None else fmt_num(d[a + '_ms']) + 'ms'}"
                  for a in ("blake3", "sha256")]
    return f"{system.name}: " + " ".join(parts)


def table(systems, results, metrics):
    head = "| system | " + " | ".join(METRICS[m][0] for m in metrics) + " |"
    rows = [head, "|---|" + "---|" * len(metrics)]
    for s in systems:
        cells = [cell(values(results, s.name, m)) for m in metrics]
        if all(c == "n/a" for c in cells):
            continue
        rows.append(f"| {s.label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


# --- targets ----------------------------------------------------------------------------------
def paired(results, a, b):
    """(figures of a, figures of b) for every run in which both have figures."""
    runs_b = {r.get("run", i): r for i, r in enumerate(results.get(b, []))}
    return [(ra, runs_b[k]) for i, ra in enumerate(results.get(a, []))
            if (k := ra.get("run", i)) in runs_b]


def run_ratios(results, a, b, metric):
    """metric(a) / metric(b) for each run in which both have a figure."""
    fa, fb = METRICS[metric][1], METRICS[metric][1]
    out = []
    for ra, rb in paired(results, a, b):
        va, vb = fa(ra), fb(rb)
        if va is not None and vb:
            out.append(va / vb)
    return out


def targets(systems, results):
    """Rows: (target, measured, verdict)."""
    names = {s.name for s in systems}
    rows = []

    def ratio_row(desc, a, b, metric, want, higher=True):
        if a not in names or b not in names:
            return rows.append((desc, f"not measured ({a} or {b} not in this run)", "n/a"))
        rs = run_ratios(results, a, b, metric)
        if not rs:
            return rows.append((desc, "no figures", "n/a"))
        m, s = median_spread(rs)
        ok = m >= want if higher else m <= want
        rows.append((desc, f"{m:.3f}x ±{s * 100:.0f}% (runs: {', '.join(f'{x:.2f}' for x in rs)})",
                     "met" if ok else "MISSED"))

    ratio_row("seq write (compressible, level 1) >= 1.5x btrfs compress=zlib:3", "deflatefs",
              "btrfs-zlib3", "write", 1.5)
    ratio_row("compression ratio >= btrfs compress=zlib:3 (ratio of ratios >= 1)", "deflatefs",
              "btrfs-zlib3", "ratio", 1.0)
    ratio_row("cold seq read >= 1.0x bindfs", "deflatefs", "bindfs", "read", 1.0)
    ratio_row("incompressible write >= 0.8x bindfs", "deflatefs", "bindfs", "iwrite", 0.8)
    ratio_row("incompressible cold read >= 0.8x bindfs", "deflatefs", "bindfs", "iread", 0.8)
    rows_before = len(rows)
    # deflatefs-digestsoff (digests=off) next to the default shows what the write path's
    # digests (running SHA-256, BLAKE3 chaining values) cost in CPU.
    for dfs, tool in [("deflatefs", "libdeflate-gzip-1"),
                      ("deflatefs-digestsoff", "libdeflate-gzip-1"),
                      ("deflatefs-level6", "libdeflate-gzip-6")]:
        if dfs in names and tool in names:
            rs = []
            for ra, rb in paired(results, dfs, tool):
                ca, cb = ra.get("large", {}).get("write_cpu_s"), rb.get("large", {}).get("write_cpu_s")
                if ca is not None and cb:
                    rs.append(ca / cb)
            if rs:
                m, s = median_spread(rs)
                rows.append((f"compression CPU ({dfs}) <= 1.15x {tool} CLI",
                             f"{m:.3f}x ±{s * 100:.0f}% (runs: {', '.join(f'{x:.2f}' for x in rs)})",
                             "met" if m <= 1.15 else "MISSED"))
    if len(rows) == rows_before:
        rows.append(("compression CPU <= 1.15x libdeflate-gzip", "not measured", "n/a"))
    ratio_row("small-file tree copy in >= 0.8x bindfs", "deflatefs", "bindfs", "tree_in", 0.8)
    ratio_row("small-file tree read back >= 0.8x bindfs", "deflatefs", "bindfs", "tree_out", 0.8)
    ratio_row("4k random read (chunk=128k) >= 0.3x bindfs", "deflatefs", "bindfs", "randread", 0.3)
    ratio_row("4k random read (chunk=4k) >= 0.7x bindfs", "deflatefs-chunk4k", "bindfs",
              "randread", 0.7)
    for s in systems:
        if not hasattr(s, "memory_bound"):
            continue
        peaks = [max(r["rss_peaks"].values()) for r in results.get(s.name, []) if r.get("rss_peaks")]
        if not peaks:
            continue
        bound = s.memory_bound() + RSS_SLACK
        worst = max(peaks)
        rows.append((f"peak RSS of {s.name} <= cache+dirty+pool+64 MiB ({bound // MIB} MiB)",
                     f"max VmHWM {worst / MIB:.0f} MiB over every test and run",
                     "met" if worst <= bound else "MISSED"))
    return rows


def render(cfg, meta, manifest, stage, systems, results, skipped, errors):
    v = meta["versions"]
    lines = [
        f"# deflatefs benchmark ({cfg.mode}), {meta['date']}",
        "",
        f"- Machine: {meta['cpu']}, {meta['cores']} cores, {meta['memory_gib']} GiB, "
        f"kernel {meta['kernel']}",
        f"- deflatefs commit: {meta['commit']}",
        f"- Runs: {meta.get('runs_done', cfg.runs)} of {cfg.runs} (each system set up fresh in every run; systems interleaved); "
        f"duration {meta['duration_s'] / 60:.1f} min",
        f"- Load average (1/5/15 min) at start: {meta['load_start']}; at end: {meta['load_end']}"
        + ("" if meta.get("waited_idle", True) else " (did not get below the idle threshold)"),
        "- Tools: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "",
        "## Corpus",
        "",
        f"- Source: Debian package {manifest['package']} {manifest['version']} "
        f"(`{manifest['deb']}`, sha256 `{manifest['deb_sha256']}`); its source tarball "
        f"decompressed: {manifest['tar_bytes']} bytes, sha256 `{manifest['tar_sha256']}`.",
        f"- Large (streaming) file: the first {stage['large_bytes']} bytes of that tar, "
        f"sha256 `{stage['large_sha256']}`.",
        f"- Incompressible: {stage['incompressible_bytes']} bytes of AES-128-CTR keystream "
        f"(openssl, fixed key), sha256 `{stage['incompressible_sha256']}`.",
        f"- Small-file tree: {', '.join(stage['tree_dirs'])} of the tar: {stage['tree_files']} "
        f"files, {stage['tree_bytes']} bytes, digest `{stage['tree_sha256']}`.",
        f"- Random I/O: fio, 4 KiB, psync, O_DIRECT, one job, {cfg.fio_seconds} s each, on a "
        f"{cfg.fio_bytes >> 20} MiB file of the tar's bytes.",
        "",
        "## Results",
        "",
        "Median of the runs, ±: half the min-max range relative to the median. MB = 10^6 bytes.",
        "",
        table(systems, results, THROUGHPUT),
        "",
        "Ratio: logical bytes / bytes allocated in the backing store. CPU: the daemon's (FUSE "
        "systems) or the tool's user+system seconds per GB of logical data; kernel filesystems: "
        "n/a. RSS: daemon VmHWM, highest over the tests. Digests: getxattr of "
        "user.deflatefs.{blake3,sha256} on the large file after a 4 KiB overwrite in its middle.",
        "",
        table(systems, results, EFFICIENCY),
        "",
        "## Targets (ratios computed inside each run, then the median)",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]
    lines += [f"| {t} | {m} | {ok} |" for t, m, ok in targets(systems, results)]
    if skipped or errors:
        lines += ["", "## Skipped or failed", ""]
        lines += [f"- {k}: skipped: {why}" for k, why in skipped.items()]
        lines += [f"- {k}: failed: {'; '.join(why)}" for k, why in errors.items()]
    lines += [
        "",
        "## Method",
        "",
        "- Every block-backed system is on its own loop device (sparse file, direct I/O) with a "
        "fresh filesystem; FUSE systems run over ext4 on such a device. Sources are on a tmpfs.",
        "- Writes are timed until the data is on disk: fsync of the file, then syncfs of the block "
        "filesystem; the tree copy (`cp -a`) until FUSE daemons have exited after `umount` "
        "(syncfs does not reach a FUSE daemon) or syncfs for kernel filesystems.",
        "- Cold reads: the daemon is restarted (its caches go) and `echo 3 > "
        "/proc/sys/vm/drop_caches`. Tree read back: `tar -cf - tree | cat > /dev/null`.",
        "- Random I/O bypasses the mount's page cache (O_DIRECT at the mount); whatever a "
        "system caches underneath (bindfs and deflatefs: ext4's page cache) is its own. Random "
        "write IOPS include the final fsync.",
        "- Ceilings: the gzip tools compress the large file from tmpfs onto ext4 (synced) and "
        "decompress it cold to /dev/null; their CPU is the tool's own.",
    ]
    return "\n".join(lines) + "\n"
