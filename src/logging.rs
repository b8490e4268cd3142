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

/// Opens (or creates) the log file of `log=FILE`. Log lines name files and users' actions, and a
/// daemon running as root must never append to a file someone else planted: a new file is mode
/// 0600; the last path component is never followed if it is a symlink (O_NOFOLLOW) and a FIFO
/// never blocks the mount (O_NONBLOCK); and an existing file is used only if it is a regular file
/// of the daemon's own user, with one link, that no other user may write.
pub fn open_log_file(path: &str) -> Result<std::fs::File, String> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                format!("cannot open log file {path}: it is a symlink (give the real path)")
            } else {
                format!("cannot open log file {path}: {e}")
            }
        })?;
    let md = file
        .metadata()
        .map_err(|e| format!("cannot open log file {path}: {e}"))?;
    let euid = unsafe { libc::geteuid() };
    let refuse = if !md.file_type().is_file() {
        Some("it is not a regular file".to_string())
    } else if md.uid() != euid {
        Some(format!(
            "it belongs to uid {}, not to the daemon's user (uid {euid})",
            md.uid()
        ))
    } else if md.nlink() != 1 {
        Some(format!("it has {} hard links", md.nlink()))
    } else if md.mode() & 0o022 != 0 {
        Some(format!(
            "other users may write it (mode {:o}; chmod go-w it)",
            md.mode() & 0o7777
        ))
    } else {
        None
    };
    match refuse {
        Some(why) => Err(format!("refusing log file {path}: {why}")),
        None => Ok(file),
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
            let file = open_log_file(&path)?;
            builder
                .with_ansi(false)
                .with_writer(Mutex::new(file))
                .try_init()
        }
    };
    let _ = tracing_log::LogTracer::init();
    result.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn a_new_log_file_is_private_and_an_existing_one_of_ours_is_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let p = path.to_str().unwrap();
        drop(open_log_file(p).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut f = open_log_file(p).unwrap();
        f.write_all(b"x").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"x");
    }

    #[test]
    fn a_planted_symlink_fifo_hard_link_or_writable_log_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = open_log_file(link.to_str().unwrap()).unwrap_err();
        assert!(e.contains("symlink"), "{e}");

        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = open_log_file(fifo.to_str().unwrap()).unwrap_err();
        assert!(e.contains("fifo") || e.contains("regular"), "{e}");

        let hard = dir.path().join("hard");
        std::fs::hard_link(&target, &hard).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = open_log_file(hard.to_str().unwrap()).unwrap_err();
        assert!(e.contains("hard links"), "{e}");

        let open = dir.path().join("open");
        std::fs::write(&open, b"").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = open_log_file(open.to_str().unwrap()).unwrap_err();
        assert!(e.contains("other users may write"), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }

    #[test]
    fn a_log_file_of_another_user_is_refused() {
        if unsafe { libc::geteuid() } != 0 {
            return; // only root can make a file of another user's
        }
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("theirs");
        std::fs::write(&theirs, b"").unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let e = open_log_file(theirs.to_str().unwrap()).unwrap_err();
        assert!(e.contains("belongs to uid 65534"), "{e}");
    }
}
