//! Where log lines go: stderr in the foreground, syslog (the journal) for a daemon, or a file.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::sync::Mutex;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Where to send log lines.
pub enum LogTarget {
    Stderr,
    Syslog,
    File(String),
}

/// A writer that hands each formatted line to syslog(3).
#[derive(Clone, Copy)]
struct SyslogWriter;

impl Write for SyslogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let priority = if line.contains("ERROR") {
                libc::LOG_ERR
            } else if line.contains("WARN") {
                libc::LOG_WARNING
            } else {
                libc::LOG_INFO
            };
            if let Ok(c) = CString::new(line.replace('%', "%%")) {
                unsafe { libc::syslog(priority, c.as_ptr()) };
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for SyslogWriter {
    type Writer = SyslogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

/// Installs the global logger. `level` is error/warn/info/debug/trace.
pub fn init(target: LogTarget, level: &str) -> Result<(), String> {
    let filter = EnvFilter::try_from_env("DEFLATEFS_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("deflatefs={level},fuser=warn")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match target {
        LogTarget::Stderr => builder.with_writer(io::stderr).try_init(),
        LogTarget::Syslog => {
            static IDENT: &std::ffi::CStr = c"deflatefs";
            unsafe { libc::openlog(IDENT.as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
            builder
                .with_ansi(false)
                .without_time()
                .with_writer(SyslogWriter)
                .try_init()
        }
        LogTarget::File(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("cannot open log file {path}: {e}"))?;
            builder
                .with_ansi(false)
                .with_writer(Mutex::new(file))
                .try_init()
        }
    };
    let _ = tracing_log::LogTracer::init();
    result.map_err(|e| e.to_string())
}
