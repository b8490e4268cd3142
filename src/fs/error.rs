//! The error type of the filesystem core: an errno plus the context a log line needs.

use std::fmt;

/// An error from a filesystem operation. `errno` is what the caller of the system call sees;
/// `context` names the file, chunk or offset involved so the log line is useful.
#[derive(Debug, Clone)]
pub struct FsError {
    pub errno: i32,
    pub context: Option<String>,
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
            logged: false,
        }
    }

    /// An error with an explanation for the log.
    pub fn with_context(errno: i32, context: impl Into<String>) -> Self {
        FsError {
            errno,
            context: Some(context.into()),
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
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = std::io::Error::from_raw_os_error(self.errno);
        match &self.context {
            Some(c) => write!(f, "{c}: {name}"),
            None => write!(f, "{name}"),
        }
    }
}

impl std::error::Error for FsError {}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> Self {
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        if e.raw_os_error().is_some() {
            FsError::new(errno)
        } else {
            FsError::with_context(errno, e.to_string())
        }
    }
}

impl From<nix::errno::Errno> for FsError {
    fn from(e: nix::errno::Errno) -> Self {
        FsError::new(e as i32)
    }
}

impl From<crate::container::ContainerError> for FsError {
    fn from(e: crate::container::ContainerError) -> Self {
        FsError::with_context(e.errno(), e.to_string())
    }
}

/// Shorthand for `Err(FsError::new(errno))`.
pub fn errno<T>(errno: i32) -> FsResult<T> {
    Err(FsError::new(errno))
}
