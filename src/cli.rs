//! The command line: `deflatefs mount ...` and the `deflatefs SOURCE MOUNTPOINT -o OPTS` form that
//! mount.fuse3 runs for `mount -t fuse.deflatefs`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::options::OPTION_HELP;

/// deflatefs: a transparent-compression filesystem. Files written through the mount are stored in
/// the source directory as chunked gzip (docs/FORMAT.md).
#[derive(Debug, Parser)]
#[command(name = "deflatefs", version, after_help = OPTION_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount SOURCE on MOUNTPOINT (they may be the same directory).
    #[command(after_help = OPTION_HELP)]
    Mount(MountArgs),
    /// Show how files are stored: logical and stored bytes, disk usage, ratio, chunks, holes
    /// (per file and in total; on paths inside a mount or in a backing directory).
    Stat(StatArgs),
    /// List the compression backends found on this machine (for `-o accel=`), each with its
    /// self-test result and single-thread compress/decompress throughput.
    Engines(EnginesArgs),
    /// Check the containers of SOURCE (not mounted): members, CRCs, index, commit chain,
    /// chaining values. Exit 0 clean, 1 problems found, 2 could not run.
    Fsck(FsckArgs),
}

#[derive(Debug, clap::Args)]
pub struct FsckArgs {
    /// Repair: drop torn tails, rebuild lost or damaged indexes by scanning the members. Chunks
    /// that cannot be recovered are reported and keep reading as EIO (never zero-filled).
    #[arg(long)]
    pub repair: bool,
    /// No progress bar (there is one when stderr is a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// The backing directory (refused while a deflatefs mount uses it).
    pub source: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct EnginesArgs {
    /// Compression level to measure (1..12; zlib backends clamp to 9).
    #[arg(short, long, default_value_t = crate::options::DEFAULT_LEVEL)]
    pub level: u32,
    /// Chunk size to measure (like the chunk= mount option).
    #[arg(short, long, default_value = "128k")]
    pub chunk: String,
    /// Measure on this file instead of the built-in data (its first 64 MiB).
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Seconds per backend and direction.
    #[arg(long, default_value_t = 0.5)]
    pub seconds: f64,
}

#[derive(Debug, clap::Args)]
pub struct StatArgs {
    /// Print JSON (exact byte counts) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only the totals, not one line per file.
    #[arg(short, long)]
    pub summary: bool,
    /// Exact byte counts instead of K/M/G in the table.
    #[arg(short, long)]
    pub bytes: bool,
    /// Files or directories (walked recursively, symlinks not followed).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// Stay in the foreground and log to stderr.
    #[arg(short, long)]
    pub foreground: bool,
    /// Skip unknown mount options with a warning instead of failing (what `mount -s` asks for).
    #[arg(short, long)]
    pub sloppy: bool,
    /// Mount options, comma-separated (may be repeated); see below.
    #[arg(short = 'o', value_name = "OPT[,OPT...]")]
    pub options: Vec<String>,
    /// Directory holding the backing files.
    pub source: PathBuf,
    /// Where to mount.
    pub mountpoint: PathBuf,
}

/// Parses argv, accepting `deflatefs SOURCE MOUNTPOINT [-o OPTS]` as `deflatefs mount ...`.
pub fn parse_args(args: Vec<OsString>) -> Cli {
    let known = [
        "mount",
        "stat",
        "engines",
        "fsck",
        "help",
        "-h",
        "--help",
        "-V",
        "--version",
    ];
    let first_positional = args
        .iter()
        .skip(1)
        .find(|a| !a.to_string_lossy().starts_with('-'));
    let bare_form = match (args.get(1), first_positional) {
        (Some(first), Some(p)) => {
            let first = first.to_string_lossy();
            !known.contains(&first.as_ref()) && !known.contains(&p.to_string_lossy().as_ref())
        }
        _ => false,
    };
    if bare_form {
        let mut v = vec![args[0].clone(), OsString::from("mount")];
        v.extend(args.into_iter().skip(1));
        Cli::parse_from(v)
    } else {
        Cli::parse_from(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_is_a_subcommand_with_level_and_chunk() {
        let Command::Engines(a) =
            parse(&["deflatefs", "engines", "-l", "6", "--chunk", "64k"]).command
        else {
            panic!("not engines")
        };
        assert_eq!((a.level, a.chunk.as_str()), (6, "64k"));
        let Command::Engines(a) = parse(&["deflatefs", "engines"]).command else {
            panic!("not engines")
        };
        assert_eq!(a.level, crate::options::DEFAULT_LEVEL);
    }

    #[test]
    fn stat_is_a_subcommand_not_a_bare_mount() {
        let Command::Stat(a) = parse(&["deflatefs", "stat", "--json", "/a", "/b"]).command else {
            panic!("not stat")
        };
        assert!(a.json && !a.summary);
        assert_eq!(a.paths, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
    }

    fn parse(v: &[&str]) -> Cli {
        parse_args(v.iter().map(OsString::from).collect())
    }

    #[test]
    fn bare_form_from_mount_fuse3_is_a_mount() {
        let Command::Mount(m) = parse(&["deflatefs", "/src", "/mnt", "-o", "rw,chunk=64k"]).command
        else {
            panic!("not a mount")
        };
        assert_eq!(m.source, PathBuf::from("/src"));
        assert_eq!(m.options, vec!["rw,chunk=64k"]);
        assert!(!m.foreground);
    }

    #[test]
    fn mount_subcommand_takes_foreground_and_options() {
        let Command::Mount(m) =
            parse(&["deflatefs", "mount", "-f", "-o", "ro", "/a", "/b"]).command
        else {
            panic!("not a mount")
        };
        assert!(m.foreground);
        assert_eq!(m.mountpoint, PathBuf::from("/b"));
    }
}
