//! Where log lines go: stderr in the foreground, syslog (the journal) for a daemon, or a file.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::sync::Mutex;

use tracing::{Level, Metadata};
use tracing_log::AsLog;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Where to send log lines.
pub enum LogTarget {
    Stderr,
    Syslog,
    File(String),
}

/// The syslog(3) priority of a line at `level`, which is also the journal's priority for it.
fn priority(level: &Level) -> libc::c_int {
    match *level {
        Level::ERROR => libc::LOG_ERR,
        Level::WARN => libc::LOG_WARNING,
        Level::INFO => libc::LOG_INFO,
        Level::DEBUG | Level::TRACE => libc::LOG_DEBUG,
    }
}

/// Hands one line (no newline) on with its priority.
type Sink = fn(libc::c_int, &str);

/// Makes, for each event, a writer that knows the event's level: each line then reaches syslog or
/// the journal with the matching priority. (The level is never guessed from the formatted text:
/// a WARN line quoting a file named ERROR.log is still a warning.)
#[derive(Clone, Copy)]
struct PriorityWriter {
    sink: Sink,
}

/// The writer of one event.
struct PriorityLines {
    priority: libc::c_int,
    sink: Sink,
}

impl Write for PriorityLines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            (self.sink)(self.priority, line);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for PriorityWriter {
    type Writer = PriorityLines;

    /// Only for output not tied to an event; tracing-subscriber's fmt layer asks for
    /// [`MakeWriter::make_writer_for`] with each event's metadata.
    fn make_writer(&'a self) -> Self::Writer {
        PriorityLines {
            priority: libc::LOG_INFO,
            sink: self.sink,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        PriorityLines {
            priority: priority(meta.level()),
            sink: self.sink,
        }
    }
}

/// syslog(3), through the connection [`init`] opened with openlog(3).
fn to_syslog(priority: libc::c_int, line: &str) {
    if let Ok(c) = CString::new(line) {
        // SAFETY: "%s" is a valid format that consumes exactly one argument, a NUL-terminated
        // string, and `c` is one that lives until syslog returns (syslog copies it). Passing the
        // line as the format instead would let a `%` in a file name read missing arguments.
        unsafe { libc::syslog(priority, c"%s".as_ptr(), c.as_ptr()) };
    }
}

/// A line on stderr with the `<N>` prefix of sd-daemon(3), for stderr that systemd connected to
/// the journal: journald strips the prefix and stores the line at priority N.
fn to_journal_stream(priority: libc::c_int, line: &str) {
    let _ = writeln!(io::stderr().lock(), "<{priority}>{line}");
}

/// Whether stderr is the journal stream systemd gave this process: `JOURNAL_STREAM` (set by
/// systemd for a service whose stderr goes to the journal, systemd.exec(5)) names the device and
/// inode of that stream. Comparing them with stderr's own, as systemd documents, ignores a
/// variable inherited by a process whose stderr was redirected since.
fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    match nix::sys::stat::fstat(io::stderr()) {
        Ok(st) => journal_stream_is(&value, st.st_dev, st.st_ino),
        Err(_) => false,
    }
}

/// Whether `JOURNAL_STREAM=value` ("DEVICE:INODE", both decimal) names device `dev`, inode `ino`.
fn journal_stream_is(value: &str, dev: u64, ino: u64) -> bool {
    let mut parts = value.split(':');
    let (Some(d), Some(i), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
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
    let euid = nix::unistd::geteuid().as_raw();
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

/// The filter of `log_level=LEVEL` when DEFLATEFS_LOG does not say otherwise: our own lines at
/// that level, fuser's warnings and errors only.
fn default_filter(level: &str) -> EnvFilter {
    EnvFilter::new(format!("deflatefs={level},fuser=warn"))
}

/// Installs the global logger, and the panic hook that logs panics through it
/// ([`crate::panics::install_hook`]). `level` is error/warn/info/debug/trace.
///
/// Every line carries its level to where it goes: as the syslog priority (ERROR → LOG_ERR, WARN
/// → LOG_WARNING, INFO → LOG_INFO, DEBUG and TRACE → LOG_DEBUG) for a daemon, and as the same
/// priority in a `<N>` prefix on stderr when systemd connected stderr to the journal (a
/// foreground daemon run as a service); as the level's name in the text otherwise.
pub fn init(target: LogTarget, level: &str) -> Result<(), String> {
    let filter = EnvFilter::try_from_env("DEFLATEFS_LOG").unwrap_or_else(|_| default_filter(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // `finish` and set_global_default, not `try_init`, which would install tracing-log's own
    // bridge for fuser's `log` records instead of ours.
    let result = match target {
        LogTarget::Stderr if stderr_is_journal() => {
            // The journal adds the time and knows the priority: neither goes in the text.
            let subscriber = builder
                .with_ansi(false)
                .without_time()
                .with_writer(PriorityWriter {
                    sink: to_journal_stream,
                })
                .finish();
            tracing::subscriber::set_global_default(subscriber)
        }
        LogTarget::Stderr => {
            tracing::subscriber::set_global_default(builder.with_writer(io::stderr).finish())
        }
        LogTarget::Syslog => {
            static IDENT: &std::ffi::CStr = c"deflatefs";
            // SAFETY: openlog keeps the ident pointer for later syslog calls; IDENT is a static,
            // NUL-terminated string, valid for the rest of the process.
            unsafe { libc::openlog(IDENT.as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
            let subscriber = builder
                .with_ansi(false)
                .without_time()
                .with_writer(PriorityWriter { sink: to_syslog })
                .finish();
            tracing::subscriber::set_global_default(subscriber)
        }
        LogTarget::File(path) => {
            let file = open_log_file(&path)?;
            let subscriber = builder
                .with_ansi(false)
                .with_writer(Mutex::new(file))
                .finish();
            tracing::subscriber::set_global_default(subscriber)
        }
    };
    result.map_err(|e| e.to_string())?;
    if log::set_boxed_logger(Box::new(FuserLogBridge::new())).is_ok() {
        // fuser's records above the subscriber's most verbose level are not even formatted.
        log::set_max_level(tracing::level_filters::LevelFilter::current().as_log());
    }
    crate::panics::install_hook();
    Ok(())
}

/// Hands fuser's `log` records to `tracing` (tracing-log's LogTracer), except the one that says
/// nothing is wrong with the mount: "Failed to send FUSE reply: ... (os error 2)". The kernel
/// answers ENOENT to a reply for a request it no longer waits for (the caller was interrupted or
/// killed meanwhile, or the connection was aborted), and fuser logs that at ERROR. It becomes a
/// DEBUG line of ours. Every other failure to send a reply (EINVAL: a malformed reply, a bug) and
/// every other record of fuser keeps its level.
struct FuserLogBridge {
    tracer: tracing_log::LogTracer,
}

impl FuserLogBridge {
    fn new() -> Self {
        FuserLogBridge {
            tracer: tracing_log::LogTracer::new(),
        }
    }
}

/// Whether `record` is fuser's error for a reply whose request is gone (see [`FuserLogBridge`]).
/// fuser 0.18.0 (pinned) logs it from `fuser::reply` as `Failed to send FUSE reply: {io error}`.
fn is_reply_to_a_gone_request(record: &log::Record) -> bool {
    record.target() == "fuser::reply" && record.level() == log::Level::Error && {
        let text = record.args().to_string();
        text.starts_with("Failed to send FUSE reply: ")
            && text.ends_with(&format!("(os error {})", libc::ENOENT))
    }
}

impl log::Log for FuserLogBridge {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.tracer.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if is_reply_to_a_gone_request(record) {
            tracing::debug!(
                target: "deflatefs::fs::fuse",
                "reply to a request the kernel no longer waits for (its caller was interrupted \
                 or killed): {}",
                record.args()
            );
        } else {
            self.tracer.log(record);
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Log;
    use std::sync::Arc;

    /// A writer collecting every formatted line, for a scoped subscriber.
    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    /// What the bridge logs of fuser's error `Failed to send FUSE reply: <errno's error>`, and of
    /// one other error of fuser's, at log level `level`.
    fn bridged(level: &str, errno: i32) -> String {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(default_filter(level))
            .with_ansi(false)
            .with_writer(lines.clone())
            .finish();
        let bridge = FuserLogBridge::new();
        tracing::subscriber::with_default(subscriber, || {
            let error = io::Error::from_raw_os_error(errno);
            bridge.log(
                &log::Record::builder()
                    .target("fuser::reply")
                    .level(log::Level::Error)
                    .args(format_args!("Failed to send FUSE reply: {error}"))
                    .build(),
            );
            bridge.log(
                &log::Record::builder()
                    .target("fuser::request")
                    .level(log::Level::Error)
                    .args(format_args!("Unknown FUSE opcode (99)"))
                    .build(),
            );
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn a_reply_to_a_request_whose_caller_is_gone_is_a_debug_line_not_an_error() {
        let info = bridged("info", libc::ENOENT);
        assert!(!info.contains("FUSE reply"), "{info}");
        assert!(
            info.contains("ERROR fuser::request: Unknown FUSE opcode"),
            "{info}"
        );
        let debug = bridged("debug", libc::ENOENT);
        assert!(
            debug.contains("DEBUG deflatefs::fs::fuse: reply to a request the kernel no longer")
                && debug.contains("Failed to send FUSE reply: No such file or directory"),
            "{debug}"
        );
        assert!(!debug.contains("ERROR fuser::reply"), "{debug}");
    }

    #[test]
    fn any_other_failure_to_send_a_reply_stays_an_error() {
        for errno in [libc::EINVAL, libc::ENODEV, libc::EIO] {
            let info = bridged("info", errno);
            assert!(
                info.contains("ERROR fuser::reply: Failed to send FUSE reply"),
                "errno {errno}: {info}"
            );
        }
    }
    thread_local! {
        static SENT: std::cell::RefCell<Vec<(libc::c_int, String)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }

    /// A sink standing in for syslog(3): records (priority, line) on the calling thread.
    fn record(priority: libc::c_int, line: &str) {
        SENT.with(|s| s.borrow_mut().push((priority, line.to_string())));
    }

    /// What reaches the sink, as (priority, line), while `f` logs at level `trace` through the
    /// subscriber the daemon uses for syslog.
    fn sent_to_syslog(f: impl FnOnce()) -> Vec<(libc::c_int, String)> {
        SENT.with(|s| s.borrow_mut().clear());
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(default_filter("trace"))
            .with_ansi(false)
            .without_time()
            .with_writer(PriorityWriter { sink: record })
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        SENT.with(|s| s.borrow().clone())
    }

    #[test]
    fn each_level_reaches_syslog_as_the_matching_priority() {
        let sent = sent_to_syslog(|| {
            tracing::error!("e");
            tracing::warn!("w: cannot open ERROR.log");
            tracing::info!("i: WARN is only a word here");
            tracing::debug!("d");
            tracing::trace!("t");
            // A record of fuser's, through the bridge, keeps its level too.
            FuserLogBridge::new().log(
                &log::Record::builder()
                    .target("fuser::request")
                    .level(log::Level::Warn)
                    .args(format_args!("fuser warns"))
                    .build(),
            );
        });
        let priorities: Vec<libc::c_int> = sent.iter().map(|(p, _)| *p).collect();
        assert_eq!(
            priorities,
            [
                libc::LOG_ERR,
                libc::LOG_WARNING,
                libc::LOG_INFO,
                libc::LOG_DEBUG,
                libc::LOG_DEBUG,
                libc::LOG_WARNING
            ],
            "{sent:?}"
        );
        assert!(sent[1].1.ends_with("w: cannot open ERROR.log"), "{sent:?}");
        assert!(sent[5].1.contains("fuser warns"), "{sent:?}");
    }

    #[test]
    fn every_line_of_a_multi_line_event_gets_its_priority() {
        let sent = sent_to_syslog(|| tracing::error!("first\nsecond"));
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert!(sent.iter().all(|(p, _)| *p == libc::LOG_ERR), "{sent:?}");
    }

    #[test]
    fn journal_stream_must_name_stderr_exactly() {
        assert!(journal_stream_is("8:12345", 8, 12345));
        assert!(!journal_stream_is("8:12345", 8, 12346));
        assert!(!journal_stream_is("9:12345", 8, 12345));
        assert!(!journal_stream_is("8:12345:1", 8, 12345));
        assert!(!journal_stream_is("8", 8, 12345));
        assert!(!journal_stream_is("", 8, 12345));
    }

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
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
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
        if !nix::unistd::geteuid().is_root() {
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
