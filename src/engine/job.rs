//! What is submitted to the engine and what comes back.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::backend::CodecError;
use super::pool::PoolBuf;

/// The operation a [`Job`] performs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Compress all of `input` into `output[headroom .. output.len() - tailroom]` as raw DEFLATE
    /// (the head and tail room are left untouched for the caller's gzip framing).
    ///
    /// Level 0 writes stored blocks. Otherwise, if the compressed stream would not be smaller than
    /// the stored-blocks stream, or does not fit, stored blocks are written instead and
    /// [`Done::stored`] is set. The caller sizes `output` so that stored blocks always fit:
    /// `output.len() >= headroom + stored_stream_len(input.len()) + tailroom`. Bytes of the region
    /// after the stream may have been used as scratch space.
    Compress {
        level: u32,
        headroom: usize,
        tailroom: usize,
    },
    /// Decompress the raw DEFLATE stream `input[stream]` into all of `output` (whose length is the
    /// expected uncompressed length; it must come out exactly that long). With `stored`, the stream
    /// is stored blocks only and is copied without inflating. The crc32 of the output must equal
    /// `expected_crc`. Any mismatch is [`EngineError::Corrupt`].
    Decompress {
        stream: Range<usize>,
        expected_crc: u32,
        stored: bool,
    },
}

/// Called once with the job's [`Completion`], on the queue's worker thread.
///
/// It must be quick and must not block on the engine or the pool (no [`crate::engine::Engine::submit`],
/// no blocking [`crate::engine::BufferPool::take`], no [`Ticket::wait`]): the worker cannot complete
/// anything else meanwhile, so waiting for the engine from here can deadlock. Hand the completion to
/// another thread (a channel send) or use the non-blocking calls (`try_submit`, `try_take`).
pub type CompletionCallback = Box<dyn FnOnce(Completion) + Send>;

/// One unit of work: an operation on a pair of pool buffers the submitter took beforehand.
pub struct Job {
    pub op: Op,
    pub input: PoolBuf,
    pub output: PoolBuf,
    pub on_complete: CompletionCallback,
}

impl Job {
    /// A job whose completion fills the returned [`Ticket`].
    pub fn with_ticket(op: Op, input: PoolBuf, output: PoolBuf) -> (Job, Ticket) {
        let slot = Arc::new(TicketSlot {
            done: Mutex::new(None),
            cond: Condvar::new(),
        });
        let filler = Arc::clone(&slot);
        let job = Job {
            op,
            input,
            output,
            on_complete: Box::new(move |completion| {
                *filler.done.lock() = Some(completion);
                filler.cond.notify_all();
            }),
        };
        (job, Ticket { slot })
    }
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("op", &self.op)
            .field("input", &self.input)
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

/// The outcome of a job, with both of its buffers handed back (dropping them returns them to the
/// pool).
#[derive(Debug)]
pub struct Completion {
    pub result: Result<Done, EngineError>,
    pub input: PoolBuf,
    pub output: PoolBuf,
}

/// What a successful job produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    /// Compress: stream bytes, at `output[headroom .. headroom + len]`. Decompress: output bytes.
    pub len: usize,
    /// crc32 of the uncompressed data.
    pub crc32: u32,
    /// The stream is stored blocks only.
    pub stored: bool,
    /// Compression level used: 0 for stored streams and for decompression.
    pub level: u8,
    /// Window of the stream as log2 bytes (15 for 32 KiB); 0 for stored streams.
    pub window_log2: u8,
}

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The codec failed (including [`CodecError::NoSpace`] when even stored blocks did not fit and
    /// [`CodecError::Panicked`]).
    #[error("codec error: {0}")]
    Codec(#[from] CodecError),
    /// The data to decompress is damaged: invalid stream, wrong length, or crc32 mismatch.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The engine was shut down before the job was accepted.
    #[error("engine is shut down")]
    Shutdown,
    /// The job contradicts itself (head and tail room larger than the output, stream range outside
    /// the input): a bug in the submitter, not in the data.
    #[error("invalid job: {0}")]
    InvalidJob(String),
    /// [`crate::engine::Engine::new`] was given an unusable configuration.
    #[error("invalid engine configuration: {0}")]
    InvalidConfig(String),
    /// A queue worker thread could not be started.
    #[error("cannot start queue worker: {0}")]
    Spawn(#[source] std::io::Error),
}

struct TicketSlot {
    done: Mutex<Option<Completion>>,
    cond: Condvar,
}

/// The completion of one job, to wait for from any thread except a completion callback.
pub struct Ticket {
    slot: Arc<TicketSlot>,
}

impl Ticket {
    /// Waits for the job to complete.
    pub fn wait(self) -> Completion {
        let mut done = self.slot.done.lock();
        loop {
            if let Some(completion) = done.take() {
                return completion;
            }
            self.slot.cond.wait(&mut done);
        }
    }

    /// Waits at most `timeout`; gives the ticket back if the job is still running.
    pub fn wait_timeout(self, timeout: Duration) -> Result<Completion, Ticket> {
        {
            let mut done = self.slot.done.lock();
            if done.is_none() {
                self.slot.cond.wait_for(&mut done, timeout);
            }
            if let Some(completion) = done.take() {
                return Ok(completion);
            }
        }
        Err(self)
    }

    /// Whether the job has completed ([`Ticket::wait`] would not block).
    pub fn is_done(&self) -> bool {
        self.slot.done.lock().is_some()
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("done", &self.is_done())
            .finish()
    }
}
