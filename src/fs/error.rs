//! The error type of the filesystem core: an errno, the context a log line needs, and the
//! subsystem error it came from.
//!
//! Each subsystem keeps its own error enum ([`crate::container::ContainerError`],
//! [`crate::engine::EngineError`], [`crate::engine::pool::PoolError`], `std::io::Error`);
//! [`ToErrno`] is the one place each maps to the errno the kernel gets, and converting into
//! [`FsError`] keeps the original as its `source()`, so the log line shows the whole chain.

use std::fmt;
use std::sync::Arc;

use crate::container::ContainerError;
use crate::engine::pool::PoolError;
use crate::engine::EngineError;

/// The errno a subsystem error means to a caller of the filesystem.
pub trait ToErrno {
    fn to_errno(&self) -> i32;
}

impl ToErrno for std::io::Error {
    /// The OS error; EIO for errors that carry none.
    fn to_errno(&self) -> i32 {
        self.raw_os_error().unwrap_or(libc::EIO)
    }
}

impl ToErrno for ContainerError {
    /// The OS error of an I/O failure; EIO for damage, unknown versions and foreign files.
    fn to_errno(&self) -> i32 {
        match self {
            ContainerError::Io(e) => e.to_errno(),
            _ => libc::EIO,
        }
    }
}

impl ToErrno for EngineError {
    /// EIO: a job that failed (damaged data, a failing codec, shutdown) leaves its bytes
    /// unreadable or unstored, which is what EIO says to the caller.
    fn to_errno(&self) -> i32 {
        libc::EIO
    }
}

impl ToErrno for PoolError {
    /// EIO: a request the buffer pool can never satisfy is a configuration the operation
    /// cannot run under (a chunk larger than `pool=`), not a shortage that waiting would end.
    fn to_errno(&self) -> i32 {
        libc::EIO
    }
}

/// An error from a filesystem operation. `errno` is what the caller of the system call sees;
/// `context` names the file, chunk or offset involved so the log line is useful; `source` is
/// the subsystem error it came from, if any.
#[derive(Debug, Clone)]
pub struct FsError {
    pub errno: i32,
    pub context: Option<String>,
    pub source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    /// Already logged where it was found (damage, rate-limited per file): the FUSE adapter
    /// does not log it again for every request that returns it.
    pub logged: bool,
}

/// Result of every core operation.
pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    /// An error with only an errno (the common case: ENOENT, EEXIST, ...).
    pub fn new(errno: i32) -> Self {
        FsError {
            errno,
            context: None,
            source: None,
            logged: false,
        }
    }

    /// An error caused by the subsystem error `e`, with `e`'s errno.
    pub fn caused_by<E: ToErrno + std::error::Error + Send + Sync + 'static>(e: E) -> Self {
        FsError {
            errno: e.to_errno(),
            context: None,
            source: Some(Arc::new(e)),
            logged: false,
        }
    }

    /// An error with an explanation for the log.
    pub fn with_context(errno: i32, context: impl Into<String>) -> Self {
        FsError {
            errno,
            context: Some(context.into()),
            source: None,
            logged: false,
        }
    }

    /// Adds (or prefixes) context, keeping the errno.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.context = Some(match self.context.take() {
            Some(inner) => format!("{what}: {inner}"),
            None => what.to_string(),
        });
        self
    }

    /// Marks the error as logged where it was found (see [`FsError::logged`]).
    pub fn logged(mut self) -> Self {
        self.logged = true;
        self
    }

    /// True for errors that indicate damage or a bug rather than an ordinary answer such as
    /// ENOENT; those are worth a log line.
    pub fn is_noteworthy(&self) -> bool {
        matches!(self.errno, libc::EIO | libc::ENOSPC | libc::EDQUOT)
    }
}

impl fmt::Display for FsError {
    /// `context: source: its source...: errno name`, leaving out what is absent.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = &self.context {
            write!(f, "{c}: ")?;
        }
        let mut cause = self.source.as_deref().map(|e| e as &dyn std::error::Error);
        while let Some(e) = cause {
            write!(f, "{e}: ")?;
            cause = e.source();
        }
        write!(f, "{}", std::io::Error::from_raw_os_error(self.errno))
    }
}

impl std::error::Error for FsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> Self {
        if e.raw_os_error().is_some() {
            // The errno name already says all an OS error says.
            FsError::new(e.to_errno())
        } else {
            FsError::caused_by(e)
        }
    }
}

impl From<EngineError> for FsError {
    fn from(e: EngineError) -> Self {
        FsError::caused_by(e)
    }
}

impl From<PoolError> for FsError {
    fn from(e: PoolError) -> Self {
        FsError::caused_by(e)
    }
}

impl From<nix::errno::Errno> for FsError {
    fn from(e: nix::errno::Errno) -> Self {
        FsError::new(e as i32)
    }
}

impl From<ContainerError> for FsError {
    fn from(e: ContainerError) -> Self {
        FsError::caused_by(e)
    }
}

/// Shorthand for `Err(FsError::new(errno))`.
pub fn errno<T>(errno: i32) -> FsResult<T> {
    Err(FsError::new(errno))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsystem_errors_keep_their_chain_and_map_to_one_errno() {
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let e = FsError::from(ContainerError::Io(io)).context("f.txt: writing chunk 3");
        assert_eq!(e.errno, libc::ENOSPC);
        let line = e.to_string();
        assert!(
            line.starts_with("f.txt: writing chunk 3: I/O error: "),
            "{line}"
        );
        assert!(line.contains("No space left on device"), "{line}");
        let source = std::error::Error::source(&e).expect("the container error is the source");
        assert!(source.downcast_ref::<ContainerError>().is_some());

        let corrupt = crate::container::corrupt("bad member", 4096);
        let e = FsError::from(corrupt);
        assert_eq!(e.errno, libc::EIO);
        assert!(e.to_string().contains("(at offset 4096)"), "{e}");

        let e = FsError::from(EngineError::Corrupt("crc32 mismatch".into())).context("member at 7");
        assert_eq!(e.errno, libc::EIO);
        assert_eq!(
            e.to_string(),
            format!(
                "member at 7: corrupt data: crc32 mismatch: {}",
                std::io::Error::from_raw_os_error(libc::EIO)
            )
        );
    }
}
