//! The interface between the engine and a compression implementation.
//!
//! A [`Backend`] is a device (or library); each engine queue opens its own [`Codec`] from it, the
//! equivalent of one hardware queue pair / compression stream, and uses it from that queue's worker
//! thread only. Backend-specific code lives in its own file (see `software.rs`).

/// What a codec can report. The engine turns these into [`crate::engine::EngineError`]s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The output buffer is too small for the result.
    #[error("output does not fit in the buffer")]
    NoSpace,
    /// The input is not a valid stream, or does not decode to exactly the expected length.
    #[error("corrupt or truncated stream")]
    Corrupt,
    /// The codec does not support this compression level.
    #[error("unsupported compression level {0}")]
    InvalidLevel(u32),
    /// The codec (or the device behind it) failed for another reason.
    #[error("codec failure: {0}")]
    Failed(String),
    /// The codec panicked while running a job; the engine reopened the queue's codec.
    #[error("codec panicked: {0}")]
    Panicked(String),
}

/// A source of codecs: a library or a device. Shared by all queues of an engine.
pub trait Backend: Send + Sync {
    /// Short name for logs and stats ("sw" for the libdeflate backend).
    fn name(&self) -> String;

    /// Opens one codec stream, for the exclusive use of one queue worker. Called once per queue when
    /// the engine starts, and again to replace a codec that panicked.
    fn open_queue(&self) -> Result<Box<dyn Codec>, CodecError>;

    /// Whether the engine must check each compressed stream from this backend against the software
    /// reference (inflate it with libdeflate and compare with the input) before completing the job;
    /// a stream that fails is replaced by stored blocks and counted in
    /// [`crate::engine::QueueStats::verify_failures`]. Defaults to `true`: hardware compressors have
    /// shipped silent-corruption bugs. The software backend, being the reference, says `false`.
    fn needs_verification(&self) -> bool {
        true
    }

    /// Whether a job may run on the thread that needs its result instead of a queue worker: true
    /// only for a plain CPU library (the software reference), where a queue buys parallelism but
    /// costs two thread hand-offs that a caller about to wait for one small job gains nothing from.
    /// A device, or anything that must be verified or fault-counted, goes through its queues.
    fn runs_inline(&self) -> bool {
        false
    }
}

/// One compression stream. Calls are whole-buffer and synchronous; the engine provides the
/// asynchrony (one worker thread per codec).
pub trait Codec: Send {
    /// Compresses `input` as raw DEFLATE (RFC 1951, no zlib/gzip wrapper) into `out`; returns the
    /// stream length. `Err(CodecError::NoSpace)` if it does not fit in `out` (the engine relies on
    /// this to fall back to stored blocks, sizing `out` one byte below the stored size).
    fn deflate(&mut self, level: u32, input: &[u8], out: &mut [u8]) -> Result<usize, CodecError>;

    /// Decompresses the raw DEFLATE stream `input`, which must fill `out` exactly:
    /// `Err(CodecError::Corrupt)` otherwise (bad data, too short, or more data than `out` holds).
    fn inflate(&mut self, input: &[u8], out: &mut [u8]) -> Result<usize, CodecError>;

    /// The window (log2 bytes) streams from [`Codec::deflate`] may reference: 15 (32 KiB) unless the
    /// device uses a smaller one. Recorded per chunk so a reader can route it to a capable decoder.
    fn window_log2(&self) -> u8 {
        15
    }
}
