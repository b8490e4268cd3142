//! `deflatefs`: parse the command line and dispatch.
use deflatefs::cli::{parse_args, Command};
use deflatefs::mount::{self, MountRequest};
use deflatefs::options::MountOptions;

fn main() {
    let cli = parse_args(std::env::args_os().collect());
    let code = match cli.command {
        Command::Mount(m) => match MountOptions::parse(&m.options) {
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
    };
    std::process::exit(code);
}
