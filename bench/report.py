"""Figures to tables: medians with spread, the ratios against the peers, the targets of issues 8
and 18."""

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
        return v if v is None or scale == 1 else v * scale  # counts stay ints
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
# Issue 18: concurrency. For every filesystem:
METRICS.update({
    "read4": ("4 readers cold MB/s (aggregate)", _mbps("readers4", "s")),
    "cpu_read4": ("CPU s/GB 4 readers", _cpu_per_gb("readers4", "cpu_s")),
    "randread4": ("4k rand read IOPS, 4 jobs", _get("fio", "randread4_iops")),
    "alone": ("reader alone MB/s", _get("contend", "alone_mbps")),
    "beside": ("reader beside writer MB/s", _get("contend", "with_writer_mbps")),
    "kept": ("kept (beside / alone)", _get("contend", "kept")),
    "fsyncs": ("writer fsyncs/s", _get("contend", "writer_fsyncs_per_s")),
})
# ... and for deflatefs:
METRICS.update({
    "gunzip_cpu": ("libdeflate-gunzip CPU s/GB", _cpu_per_gb("gunzip", "cpu_s")),
    "stat_p50": ("stat p50 ms in compaction", _get("statc", "p50_ms")),
    "stat_p99": ("stat p99 ms in compaction", _get("statc", "p99_ms")),
    "stat_max": ("stat max ms in compaction", _get("statc", "max_ms")),
    "stat_during": ("samples in compaction", _get("statc", "samples_during")),
    "stat_p99_all": ("stat p99 ms, all samples", _get("statc", "p99_all_ms")),
    "compactions": ("compactions", _get("statc", "compactions")),
})
THROUGHPUT = ["write", "read", "iwrite", "iread", "tree_in", "tree_out", "randread", "randwrite"]
EFFICIENCY = ["ratio", "tree_ratio", "iratio", "cpu_write", "cpu_read", "cpu_iwrite", "rss",
              "blake3", "sha256"]
CONCURRENCY = ["read4", "cpu_read4", "randread4", "alone", "beside", "kept", "fsyncs"]
DEFLATEFS_ONLY = ["cpu_read", "gunzip_cpu", "stat_p50", "stat_p99", "stat_max", "stat_during",
                  "stat_p99_all", "compactions"]


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
    text = f"{m:g}" if all(isinstance(v, int) for v in vals) else fmt_num(m)  # counts
    return f"{text} ±{s * 100:.0f}%" if spread and len(vals) > 1 else text


def progress_line(system, r):
    parts = []
    for k in ["write", "read", "iwrite", "iread", "tree_in", "tree_out", "randread", "ratio",
              "cpu_write", "rss", "cpu_read", "gunzip_cpu", "read4", "randread4", "kept",
              "stat_p99", "compactions"]:
        v = METRICS[k][1](r)
        if v is not None:
            parts.append(f"{k}={fmt_num(v)}")
    if "digest" in r:
        d = r["digest"]
        parts += [f"{a}={'n/a' if d.get(a + '_ms') is None else fmt_num(d[a + '_ms']) + 'ms'}"
                  for a in ("blake3", "sha256")]
    return f"{system.name}: " + " ".join(parts)


def table(systems, results, metrics, only=None):
    """One row per system (those named `only`, if given) with a figure in `metrics`."""
    head = "| system | " + " | ".join(METRICS[m][0] for m in metrics) + " |"
    rows = [head, "|---|" + "---|" * len(metrics)]
    for s in systems:
        if only is not None and not only(s):
            continue
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


def runs_text(rs, fmt="{:.2f}"):
    return "runs: " + ", ".join(fmt.format(x) for x in rs)


def ratio_target(names, results, desc, a, b, metric, want, higher=True, missed="MISSED"):
    """A target on metric(a) / metric(b) computed inside each run: (target, measured, verdict)
    for the median of those ratios against `want`."""
    if a not in names or b not in names:
        return (desc, f"not measured ({a} or {b} not in this run)", "n/a")
    rs = run_ratios(results, a, b, metric)
    if not rs:
        return (desc, "no figures", "n/a")
    m, s = median_spread(rs)
    ok = m >= want if higher else m <= want
    return (desc, f"{m:.3f}x ±{s * 100:.0f}% ({runs_text(rs)})", "met" if ok else missed)


def targets(systems, results):
    """The targets of issue 8. Rows: (target, measured, verdict)."""
    names = {s.name for s in systems}
    rows = []

    def ratio_row(desc, a, b, metric, want, higher=True):
        rows.append(ratio_target(names, results, desc, a, b, metric, want, higher))

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


def targets18(systems, results):
    """The targets of issue 18 ("One file, many requests"). Rows: (target, measured, verdict);
    verdicts are "met", "not met", or "n/a" where this run has no figure for it."""
    names = {s.name for s in systems}
    rows = [
        ratio_target(names, results, "cold sequential read of the large file >= 1.1x bindfs",
                     "deflatefs", "bindfs", "read", 1.1, missed="not met"),
        ratio_target(names, results, "four readers of four files at once, cold: aggregate "
                     ">= 1.0x bindfs", "deflatefs", "bindfs", "read4", 1.0, missed="not met"),
        ratio_target(names, results, "4 KiB random reads, fio psync O_DIRECT numjobs=4, "
                     "default chunk: >= 0.6x bindfs", "deflatefs", "bindfs", "randread4", 0.6,
                     missed="not met"),
    ]
    desc = "daemon CPU per GB of cold sequential read <= 1.1x libdeflate-gunzip's (user+sys)"
    per_run = [(r["large"]["read_cpu_s"] / r["large"]["bytes"] * 1e9,
                r["gunzip"]["cpu_s"] / r["gunzip"]["bytes"] * 1e9)
               for r in results.get("deflatefs", [])
               if "read_cpu_s" in r.get("large", {}) and r.get("gunzip", {}).get("cpu_s")]
    if not per_run:
        rows.append((desc, "not measured (no deflatefs run)", "n/a"))
    else:
        rs = [d / g for d, g in per_run]
        m, spread = median_spread(rs)
        daemon = statistics.median(d for d, _ in per_run)
        gunzip = statistics.median(g for _, g in per_run)
        rows.append((desc, f"{daemon:.2f} s/GB against {gunzip:.2f} s/GB: {m:.3f}x "
                     f"±{spread * 100:.0f}% ({runs_text(rs)})", "met" if m <= 1.1 else "not met"))
    # Every system, for comparison; the target is deflatefs's row.
    rows_before = len(rows)
    for system in systems:
        kept = values(results, system.name, "kept")
        if not kept:
            continue
        m, spread = median_spread(kept)
        alone = statistics.median(values(results, system.name, "alone"))
        beside = statistics.median(values(results, system.name, "beside"))
        rows.append((f"a reader beside an overwrite+fsync loop on the same file keeps >= 0.8x "
                     f"its alone throughput: {system.name}",
                     f"{m:.3f}x ±{spread * 100:.0f}% ({runs_text(kept)}; medians: alone "
                     f"{alone:.0f} MB/s, beside {beside:.0f} MB/s)",
                     "met" if m >= 0.8 else "not met"))
    if len(rows) == rows_before:
        rows.append(("a reader beside an overwrite+fsync loop keeps >= 0.8x its alone "
                     "throughput", "not measured", "n/a"))
    desc = "stat of the file within 1 ms (p99) during a compaction of it: deflatefs"
    runs = [r["statc"] for r in results.get("deflatefs", []) if "statc" in r]
    p99s = [x["p99_ms"] for x in runs if x.get("p99_ms") is not None]
    if not runs:
        rows.append((desc, "not measured (no deflatefs run)", "n/a"))
    elif not p99s:
        rows.append((desc, f"no sample fell in a compaction ({sum(x['compactions'] for x in runs)} "
                     "compactions seen)", "n/a"))
    else:
        p50 = statistics.median(x["p50_ms"] for x in runs if x.get("p50_ms") is not None)
        worst = max(x["max_ms"] for x in runs if x.get("max_ms") is not None)
        p99 = statistics.median(p99s)
        rows.append((desc, f"p50 {p50:.3f} / p99 {p99:.3f} / max {worst:.1f} ms over "
                     f"{sum(x['samples_during'] for x in runs)} samples in "
                     f"{sum(x['compactions'] for x in runs)} compactions (p99 is the median of "
                     f"the runs' p99: {', '.join(f'{x:.2f}' for x in p99s)}; p99 of all samples "
                     f"{statistics.median(x['p99_all_ms'] for x in runs):.2f} ms)",
                     "met" if p99 <= 1.0 else "not met"))
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
        "## Targets of issue 18 (ratios computed inside each run, then the median)",
        "",
    ]
    if cfg.mode == "quick":
        lines += ["Quick mode: smaller files and shorter phases than the targets were set on; "
                  "read these verdicts as a smoke test, not as the answer.", ""]
    lines += [
        "| target | measured | verdict |",
        "|---|---|---|",
    ]
    lines += [f"| {t} | {m} | {ok} |" for t, m, ok in targets18(systems, results)]
    lines += [
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
        f"- Random I/O: fio, 4 KiB, psync, O_DIRECT, one job (reads also four jobs), "
        f"{cfg.fio_seconds} s each, on a {cfg.fio_bytes >> 20} MiB file of the tar's bytes.",
        f"- Concurrency: four files of {stage['large_bytes'] // 4 >> 20} MiB, each a quarter of "
        f"the large file; a reader and a writer on one {cfg.contend_bytes >> 20} MiB file, "
        f"{cfg.contend_seconds} s per phase; stat during compactions of a "
        f"{cfg.compact_bytes >> 20} MiB file, {cfg.compact_seconds} s of sampling.",
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
        "### Concurrency (issue 18)",
        "",
        "4 readers: four processes each reading its own file (a quarter of the large data) "
        "cold, all at once; MB/s of all of them together, CPU the daemon's. 4 jobs: fio "
        "randread with numjobs=4 on one file. Reader/writer: one process reads a region of a "
        "file (O_DIRECT, 1 MiB, over and over) cold, alone, then cold again while another "
        "overwrites random 4 KiB blocks of another region of that file with an fsync after "
        "each; kept = beside / alone, within the run.",
        "",
        table(systems, results, CONCURRENCY),
        "",
        "deflatefs only. CPU s/GB read: the daemon's during the cold sequential read; "
        "libdeflate-gunzip: its user+sys decompressing, cold from the same disk, a "
        "`libdeflate-gzip` of the same data at the mount's level. stat: statx forced to the "
        "daemon (AT_STATX_FORCE_SYNC) every millisecond while a writer overwrites random 4 KiB "
        "blocks (8 per fsync) so that the file is compacted again and again; in compaction: "
        "samples taken while deflatefs's compaction temporary existed or the backing file was "
        "replaced; compactions: replacements of the backing file seen.",
        "",
        table(systems, results, DEFLATEFS_ONLY, only=lambda s: s.name.startswith("deflatefs")),
        "",
        "## Targets of issue 8 (ratios computed inside each run, then the median)",
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
        "- Concurrency: every reader, writer and stat sampler is its own process (a Python "
        "thread would add GIL waits to what is measured). The reader/writer phases each start "
        "cold; the reader's region (3/4 of the file) is larger than deflatefs's chunk cache.",
    ]
    return "\n".join(lines) + "\n"
