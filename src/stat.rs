//! `deflatefs stat PATH...`: how files are stored (like btrfs's compsize). Per file and in total:
//! logical bytes, stored bytes, disk usage, ratio, chunks, holes.
//!
//! Inside a mount the numbers come from `user.deflatefs.info` (so they include data not yet
//! written back); on a backing directory the containers are read directly. Directories are walked
//! without following symlinks; each inode counts once (hard links), as `du` counts. A last line
//! adds directories, symlinks and other entries so that its apparent size and disk usage are what
//! `du -sb --apparent-size` and `du -sB1` print for the same paths (inside a mount the apparent
//! size of a file is its logical size; in a backing directory, its container's length).

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::container::Container;
use crate::digest::info::ratio;
use crate::digest::FileInfo;

/// Options of `deflatefs stat`.
#[derive(Debug, Clone, Default)]
pub struct StatOptions {
    pub json: bool,
    pub summary: bool,
    pub bytes: bool,
}

/// One regular file.
#[derive(Debug, Clone)]
pub struct FileRow {
    pub path: PathBuf,
    pub info: FileInfo,
    /// `st_size` as `lstat` shows it: the logical size inside a mount, the container's length
    /// in a backing directory (what `du --apparent-size` adds up).
    pub apparent: u64,
}

/// Everything `stat` found under its paths.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub files: Vec<FileRow>,
    /// Directories, symlinks and other non-regular entries (each inode once).
    pub other_entries: u64,
    /// Their apparent size (`st_size`) and disk usage.
    pub other_apparent: u64,
    pub other_disk: u64,
    /// Paths that could not be read, with the reason.
    pub errors: Vec<(PathBuf, String)>,
}

/// Totals over the regular files of a report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    pub files: u64,
    pub containers: u64,
    pub plain: u64,
    pub logical: u64,
    pub stored: u64,
    pub disk: u64,
    pub chunks: u64,
    pub holes: u64,
}

impl Report {
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for f in &self.files {
            t.files += 1;
            if f.info.is_container() {
                t.containers += 1;
            } else {
                t.plain += 1;
            }
            t.logical += f.info.size;
            t.stored += f.info.stored;
            t.disk += f.info.disk;
            t.chunks += f.info.chunks;
            t.holes += f.info.holes;
        }
        t
    }

    /// What `du -sb --apparent-size` counts: every inode's size once.
    pub fn du_apparent(&self) -> u64 {
        self.files.iter().map(|f| f.apparent).sum::<u64>() + self.other_apparent
    }

    /// What `du -sB1` counts: every inode's allocated bytes once.
    pub fn du_disk(&self) -> u64 {
        self.totals().disk + self.other_disk
    }
}

fn lgetxattr(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes())?;
    let n = CString::new(name)?;
    let mut buf = vec![0u8; 512];
    loop {
        // SAFETY: `p` and `n` are NUL-terminated CStrings living across the call; lgetxattr
        // writes at most `buf.len()` bytes into `buf`, which is that long.
        let r = unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                n.as_ptr(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        };
        if r >= 0 {
            buf.truncate(r as usize);
            return Ok(buf);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ERANGE) && buf.len() < 1 << 16 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        return Err(e);
    }
}

/// How one regular file is stored; `disk` is its allocation as `lstat` shows it.
pub fn file_info(path: &Path, size: u64, disk: u64) -> Result<FileInfo, String> {
    match lgetxattr(path, crate::fs::digests::INFO) {
        Ok(v) => {
            let line = String::from_utf8_lossy(&v);
            let mut info = FileInfo::parse_line(&line)
                .ok_or_else(|| format!("unreadable user.deflatefs.info: {line:?}"))?;
            info.disk = disk;
            return Ok(info);
        }
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENODATA) | Some(libc::EOPNOTSUPP)
            ) => {}
        Err(e) => return Err(e.to_string()),
    }
    // Not inside a mount: read the file itself.
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(path)
        .or_else(|_| File::open(path))
        .map_err(|e| e.to_string())?;
    if !Container::probe(&file).map_err(|e| e.to_string())? {
        return Ok(FileInfo::for_plain(size, disk));
    }
    let c = Container::open(file).map_err(|e| e.to_string())?;
    Ok(FileInfo::for_container(c.index(), c.container_len(), disk))
}

/// Walks `paths` and describes every regular file under them.
pub fn collect(paths: &[PathBuf]) -> Report {
    let mut report = Report::default();
    let mut seen = HashSet::new();
    for p in paths {
        walk(p, &mut report, &mut seen);
    }
    report
}

fn walk(path: &Path, report: &mut Report, seen: &mut HashSet<(u64, u64)>) {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => {
            report.errors.push((path.to_path_buf(), e.to_string()));
            return;
        }
    };
    if !seen.insert((meta.dev(), meta.ino())) {
        return;
    }
    let disk = meta.blocks() * 512;
    if meta.is_file() {
        match file_info(path, meta.len(), disk) {
            Ok(info) => report.files.push(FileRow {
                path: path.to_path_buf(),
                info,
                apparent: meta.len(),
            }),
            Err(e) => report.errors.push((path.to_path_buf(), e)),
        }
        return;
    }
    report.other_entries += 1;
    report.other_apparent += meta.len();
    report.other_disk += disk;
    if meta.is_dir() {
        let mut names: Vec<PathBuf> = match std::fs::read_dir(path) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                // deflatefs' own files in a backing directory: a compaction's temporaries are
                // left out; the source lock stays for good, so it counts like `du` counts it.
                .filter(|e| {
                    let name = e.file_name();
                    if name.as_bytes() == crate::source_lock::lock_file_name().as_bytes() {
                        if let Ok(m) = e.metadata() {
                            report.other_entries += 1;
                            report.other_apparent += m.len();
                            report.other_disk += m.blocks() * 512;
                        }
                        return false;
                    }
                    !name
                        .as_bytes()
                        .starts_with(crate::container::INTERNAL_NAME_PREFIX.as_bytes())
                })
                .map(|e| e.path())
                .collect(),
            Err(e) => {
                report.errors.push((path.to_path_buf(), e.to_string()));
                return;
            }
        };
        names.sort();
        for n in names {
            walk(&n, report, seen);
        }
    }
}

/// `1536` -> `1.5K` (powers of 1024, like `du -h`), or the exact count with `bytes`.
fn size(n: u64, bytes: bool) -> String {
    if bytes {
        return n.to_string();
    }
    const UNITS: [&str; 6] = ["", "K", "M", "G", "T", "P"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The report as a table (or a summary) for people.
pub fn render_table(r: &Report, o: &StatOptions) -> String {
    let mut out = String::new();
    let head = format!(
        "{:>12} {:>12} {:>12} {:>7} {:>9} {:>9}  {:<6} ",
        "Logical", "Stored", "Disk", "Ratio", "Chunks", "Holes", "Format"
    );
    out.push_str(&head);
    out.push_str("Path\n");
    if !o.summary {
        for f in &r.files {
            let i = &f.info;
            out.push_str(&format!(
                "{:>12} {:>12} {:>12} {:>7.2} {:>9} {:>9}  {:<6} {}\n",
                size(i.size, o.bytes),
                size(i.stored, o.bytes),
                size(i.disk, o.bytes),
                i.ratio(),
                i.chunks,
                i.holes,
                i.format,
                f.path.display()
            ));
        }
    }
    let t = r.totals();
    out.push_str(&format!(
        "{:>12} {:>12} {:>12} {:>7.2} {:>9} {:>9}  {:<6} TOTAL: {} files ({} containers, {} plain)\n",
        size(t.logical, o.bytes),
        size(t.stored, o.bytes),
        size(t.disk, o.bytes),
        ratio(t.logical, t.stored),
        t.chunks,
        t.holes,
        "",
        t.files,
        t.containers,
        t.plain
    ));
    out.push_str(&format!(
        "{:>12} {:>12} {:>12} {:>7} {:>9} {:>9}  {:<6} du (files + {} directories and other entries)\n",
        size(r.du_apparent(), o.bytes),
        "",
        size(r.du_disk(), o.bytes),
        "",
        "",
        "",
        "",
        r.other_entries
    ));
    out
}

/// The report as JSON (exact byte counts).
pub fn render_json(r: &Report, o: &StatOptions) -> String {
    let t = r.totals();
    let mut out = String::from("{");
    if !o.summary {
        out.push_str("\"files\":[");
        for (k, f) in r.files.iter().enumerate() {
            let i = &f.info;
            if k > 0 {
                out.push(',');
            }
            out.push_str(&format!(
                "{{\"path\":{},\"format\":{},\"logical\":{},\"stored\":{},\"disk\":{},\"ratio\":{:.4},\"chunks\":{},\"holes\":{},\"chunk_size\":{},\"codec\":{},\"level\":{}}}",
                json_string(&f.path.to_string_lossy()),
                json_string(&i.format),
                i.size,
                i.stored,
                i.disk,
                i.ratio(),
                i.chunks,
                i.holes,
                i.chunk_size,
                json_string(&i.codec),
                json_string(&i.level)
            ));
        }
        out.push_str("],");
    }
    out.push_str(&format!(
        "\"total\":{{\"files\":{},\"containers\":{},\"plain\":{},\"logical\":{},\"stored\":{},\"disk\":{},\"ratio\":{:.4},\"chunks\":{},\"holes\":{}}},",
        t.files,
        t.containers,
        t.plain,
        t.logical,
        t.stored,
        t.disk,
        ratio(t.logical, t.stored),
        t.chunks,
        t.holes
    ));
    out.push_str(&format!(
        "\"du\":{{\"other_entries\":{},\"apparent\":{},\"disk\":{}}},\"errors\":[",
        r.other_entries,
        r.du_apparent(),
        r.du_disk()
    ));
    for (k, (p, e)) in r.errors.iter().enumerate() {
        if k > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "{{\"path\":{},\"error\":{}}}",
            json_string(&p.to_string_lossy()),
            json_string(e)
        ));
    }
    out.push_str("]}\n");
    out
}

/// Runs `deflatefs stat`; returns the exit code (1 if some path could not be read).
pub fn run(paths: &[PathBuf], o: &StatOptions) -> i32 {
    let r = collect(paths);
    let text = if o.json {
        render_json(&r, o)
    } else {
        render_table(&r, o)
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    for (p, e) in &r.errors {
        eprintln!("deflatefs stat: {}: {e}", p.display());
    }
    i32::from(!r.errors.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes_and_json_strings() {
        assert_eq!(size(1000, false), "1000");
        assert_eq!(size(1536, false), "1.5K");
        assert_eq!(size(3 << 30, false), "3.0G");
        assert_eq!(size(1536, true), "1536");
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }

    #[test]
    fn plain_tree_totals_match_what_du_counts() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), vec![1u8; 10_000]).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/b"), b"hello").unwrap();
        std::fs::hard_link(d.path().join("a"), d.path().join("sub/a2")).unwrap();
        std::os::unix::fs::symlink("a", d.path().join("l")).unwrap();
        let r = collect(&[d.path().to_path_buf()]);
        let t = r.totals();
        assert_eq!((t.files, t.plain, t.logical), (2, 2, 10_005));
        assert_eq!(r.other_entries, 3); // the root, sub, the symlink
        let json = render_json(&r, &StatOptions::default());
        assert!(json.contains("\"files\":2"), "{json}");
        let table = render_table(&r, &StatOptions::default());
        assert!(
            table.contains("TOTAL: 2 files (0 containers, 2 plain)"),
            "{table}"
        );
    }
}
