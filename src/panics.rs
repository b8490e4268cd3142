//! Panics in the daemon's threads: caught where a thread can go on, and always logged.
//!
//! A daemon's stderr is /dev/null, so the default panic message would vanish; the hook installed
//! by [`install_hook`] logs every panic at ERROR instead, with the thread's name and where it
//! happened. The guards ([`catch`]) then log what the thread does about it.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The message of a panic payload (`panic!("...")` gives a `&str` or a `String`).
pub fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Runs `f`, turning a panic into `Err(its message)`.
///
/// `AssertUnwindSafe`: the callers' shared state is behind parking_lot locks (no poisoning, a
/// lock held by the panicking code is released by the unwind) and atomics; each caller says what
/// it does about state a panic may have left half-updated.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| message(payload.as_ref()))
}

/// The name of the calling thread, for log lines.
pub fn thread_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unnamed thread")
        .to_string()
}

/// Replaces the default panic hook (a message on stderr) with an ERROR line in the log, with a
/// backtrace when RUST_BACKTRACE asks for one.
pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = message(info.payload());
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let backtrace = std::backtrace::Backtrace::capture();
        let backtrace = match backtrace.status() {
            std::backtrace::BacktraceStatus::Captured => format!("\n{backtrace}"),
            _ => String::new(),
        };
        tracing::error!(
            target: "deflatefs::panic",
            "thread '{}' panicked{location}: {msg}{backtrace}",
            thread_name()
        );
    }));
}
