//! `deflatefs`: parse the command line and dispatch.
#![deny(clippy::undocumented_unsafe_blocks)]
use deflatefs::cli::{parse_args, Command};
use deflatefs::mount::{self, MountRequest};
use deflatefs::options::MountOptions;

/// Parses `-o` options; with `--sloppy`, unknown ones are reported and skipped.
fn parse_mount_options(
    groups: &[String],
    sloppy: bool,
) -> Result<MountOptions, deflatefs::options::OptionError> {
    if !sloppy {
        return MountOptions::parse(groups);
    }
    let (options, skipped) = MountOptions::parse_sloppy(groups)?;
    for opt in skipped {
        eprintln!("deflatefs: ignoring unknown mount option '{opt}' (sloppy mount)");
    }
    Ok(options)
}

fn main() {
    let cli = parse_args(std::env::args_os().collect());
    let code = match cli.command {
        Command::Mount(m) if deflatefs::remount::is_remount(&m.options) => {
            deflatefs::remount::run(&m.mountpoint, &m.options, m.sloppy)
        }
        Command::Mount(m) => match parse_mount_options(&m.options, m.sloppy) {
            Ok(options) => mount::run(MountRequest {
                source: m.source,
                mountpoint: m.mountpoint,
                options,
                foreground: m.foreground,
            }),
            Err(e) => {
                eprintln!("deflatefs: {e}");
                1
            }
        },
        Command::Stat(a) => deflatefs::stat::run(
            &a.paths,
            &deflatefs::stat::StatOptions {
                json: a.json,
                summary: a.summary,
                bytes: a.bytes,
            },
        ),
        Command::Fsck(a) => deflatefs::fsck::run(
            &deflatefs::fsck::FsckOptions {
                source: a.source,
                repair: a.repair,
                progress: if a.no_progress { Some(false) } else { None },
            },
            &mut std::io::stdout(),
        ),
        Command::Engines(a) => deflatefs::engine::bench::engines_command(
            a.level,
            &a.chunk,
            a.data.as_deref(),
            a.seconds,
        ),
    };
    std::process::exit(code);
}
