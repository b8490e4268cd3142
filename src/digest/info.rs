//! `user.deflatefs.info`: one line of `key=value` pairs describing how a file is stored.
//!
//! ```text
//! size=1048576 stored=231270 disk=233472 chunk=131072 chunks=8 holes=0 codec=deflate level=1 ratio=4.53 format=1
//! ```
//!
//! | key | meaning |
//! |---|---|
//! | `size` | logical size in bytes (what `stat` shows through the mount) |
//! | `stored` | bytes of the backing file (the container's valid length; a plain file's size) |
//! | `disk` | bytes allocated to the backing file (`st_blocks * 512`, what `du` counts) |
//! | `chunk` | chunk size in bytes (0 for plain files) |
//! | `chunks` | chunks holding data |
//! | `holes` | chunks below the size holding no data (they read as zeros); `chunks + holes` covers the size |
//! | `codec` | `deflate` (some chunk is compressed), `stored` (all data is in deflate stored blocks), `none` (no data, or a plain file) |
//! | `level` | compression level of the compressed chunks: `N`, or `MIN-MAX` when they differ; 0 if none |
//! | `ratio` | `size / stored`, two decimals (1.00 when both are 0) |
//! | `format` | container format version (`1`), or `plain` for files served unchanged |

use std::collections::BTreeMap;

use crate::container::{ChunkIndex, PieceKind, FORMAT_VERSION};

/// What `user.deflatefs.info` reports about one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    pub size: u64,
    pub stored: u64,
    pub disk: u64,
    pub chunk_size: u64,
    pub chunks: u64,
    pub holes: u64,
    pub codec: String,
    pub level: String,
    /// `"1"` (the container format version) or `"plain"`.
    pub format: String,
}

impl FileInfo {
    /// A container with chunk index `index`, `stored` bytes long, with `disk` bytes allocated.
    pub fn for_container(index: &ChunkIndex, stored: u64, disk: u64) -> FileInfo {
        let mut levels: Option<(u8, u8)> = None;
        let mut any_stored = false;
        for e in index.live_entries() {
            match e.kind {
                PieceKind::Deflate => {
                    levels = Some(match levels {
                        None => (e.level, e.level),
                        Some((lo, hi)) => (lo.min(e.level), hi.max(e.level)),
                    })
                }
                PieceKind::Stored => any_stored = true,
                PieceKind::Hole => {}
            }
        }
        let (codec, level) = match levels {
            Some((lo, hi)) if lo == hi => ("deflate", lo.to_string()),
            Some((lo, hi)) => ("deflate", format!("{lo}-{hi}")),
            None if any_stored => ("stored", "0".to_string()),
            None => ("none", "0".to_string()),
        };
        FileInfo {
            size: index.size(),
            stored,
            disk,
            chunk_size: index.chunk_size(),
            chunks: index.chunk_count(),
            holes: index.hole_count(),
            codec: codec.into(),
            level,
            format: FORMAT_VERSION.to_string(),
        }
    }

    /// A plain (non-container) file of `size` bytes with `disk` bytes allocated.
    pub fn for_plain(size: u64, disk: u64) -> FileInfo {
        FileInfo {
            size,
            stored: size,
            disk,
            chunk_size: 0,
            chunks: 0,
            holes: 0,
            codec: "none".into(),
            level: "0".into(),
            format: "plain".into(),
        }
    }

    /// Whether the file is a container.
    pub fn is_container(&self) -> bool {
        self.format != "plain"
    }

    /// `size / stored` (1.0 when both are 0, 0.0 when only `stored` is).
    pub fn ratio(&self) -> f64 {
        ratio(self.size, self.stored)
    }

    /// The documented line (no trailing newline).
    pub fn to_line(&self) -> String {
        format!(
            "size={} stored={} disk={} chunk={} chunks={} holes={} codec={} level={} ratio={:.2} format={}",
            self.size,
            self.stored,
            self.disk,
            self.chunk_size,
            self.chunks,
            self.holes,
            self.codec,
            self.level,
            self.ratio(),
            self.format
        )
    }

    /// Parses a line written by [`FileInfo::to_line`]; unknown keys are ignored, so later
    /// versions may add some.
    pub fn parse_line(line: &str) -> Option<FileInfo> {
        let kv: BTreeMap<&str, &str> = line
            .split_whitespace()
            .filter_map(|p| p.split_once('='))
            .collect();
        let num = |k: &str| kv.get(k).and_then(|v| v.parse::<u64>().ok());
        Some(FileInfo {
            size: num("size")?,
            stored: num("stored")?,
            disk: num("disk")?,
            chunk_size: num("chunk")?,
            chunks: num("chunks")?,
            holes: num("holes")?,
            codec: kv.get("codec")?.to_string(),
            level: kv.get("level")?.to_string(),
            format: kv.get("format")?.to_string(),
        })
    }
}

/// `logical / stored` as [`FileInfo::ratio`] defines it.
pub fn ratio(logical: u64, stored: u64) -> f64 {
    match (logical, stored) {
        (0, 0) => 1.0,
        (_, 0) => 0.0,
        (l, s) => l as f64 / s as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::IndexEntry;

    fn piece(off: u64, kind: PieceKind, level: u8) -> IndexEntry {
        IndexEntry {
            logical_offset: off,
            logical_len: 4096,
            member_offset: 46,
            stored_len: 100,
            crc32: 0,
            kind,
            reset: true,
            level,
            window_log2: 15,
            chaining_value: [0; 32],
        }
    }

    #[test]
    fn container_line_has_every_documented_key_and_parses_back() {
        let mut ix = ChunkIndex::new(12);
        ix.apply(piece(0, PieceKind::Deflate, 1));
        ix.apply(piece(8192, PieceKind::Deflate, 6));
        ix.apply(piece(12288, PieceKind::Stored, 0));
        ix.set_size(4 * 4096);
        let info = FileInfo::for_container(&ix, 1000, 4096);
        let line = info.to_line();
        assert_eq!(
            line,
            "size=16384 stored=1000 disk=4096 chunk=4096 chunks=3 holes=1 codec=deflate level=1-6 ratio=16.38 format=1"
        );
        assert_eq!(FileInfo::parse_line(&line), Some(info));
    }

    #[test]
    fn plain_and_empty_files() {
        let p = FileInfo::for_plain(10, 4096);
        assert_eq!(
            p.to_line(),
            "size=10 stored=10 disk=4096 chunk=0 chunks=0 holes=0 codec=none level=0 ratio=1.00 format=plain"
        );
        assert!(!p.is_container());
        let e = FileInfo::for_container(&ChunkIndex::new(17), 140, 4096);
        assert_eq!(e.codec, "none");
        assert_eq!(e.ratio(), 0.0);
        assert!(FileInfo::parse_line("size=1").is_none());
    }
}
