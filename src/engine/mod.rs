//! The compression engine: batches of compress/decompress jobs run on queue pairs, modelled on an
//! accelerator's DMA queues (see docs/ENGINE.md).
//!
//! - Memory: a submitter takes each job's input and output from a fixed-size [`BufferPool`] before it
//!   submits, and waits when the pool is exhausted. That bounds the memory in flight.
//! - Queues: each queue is a bounded ring of job slots served by one worker thread owning one codec
//!   stream. [`Engine::try_submit`] says how many jobs a queue accepted (a short count is
//!   backpressure); [`Engine::submit`] spreads jobs over the queues and waits while all are full.
//! - Completions: each job's callback runs on its queue's worker thread with a [`Completion`] holding
//!   the result and both buffers. Workers never wait for memory, so every accepted job completes.
//! - Backends: [`Backend`] opens one [`Codec`] per queue. [`SoftwareBackend`] is libdeflate.

pub mod accel;
pub mod backend;
pub mod bench;
pub mod device;
pub mod fault;
mod job;
pub mod pool;
mod queue;
pub mod selftest;
pub mod software;
pub mod zlib;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Mutex, RwLock};

/// How long the stored-blocks stream of `n` input bytes is: the room a compress job's output
/// region must have (see [`Op::Compress`]). The stored blocks are the container's codec
/// ([`crate::container::stored`]), which the engine uses for its stored writes and reads.
pub use crate::container::stored::stored_stream_len;
pub use backend::{Backend, Codec, CodecError};
pub use job::{Completion, CompletionCallback, Done, EngineError, Job, Op, Ticket};
pub use pool::{BufferPool, PoolBuf, PoolError};
pub use software::SoftwareBackend;

use queue::{Offer, QueueCounters, QueuePair, SlotSignal};

/// How to build an [`Engine`].
#[derive(Clone)]
pub struct EngineConfig {
    /// Number of queue pairs, each with its own worker thread and codec stream (at least 1).
    pub queues: usize,
    /// Slots in each queue's ring: jobs accepted but not yet picked up by the worker (at least 1).
    pub queue_depth: usize,
    /// Where the codecs come from.
    pub backend: Arc<dyn Backend>,
}

/// How the engine guards against a backend that is not the software reference (one whose
/// [`Backend::needs_verification`] is true). The reference backend is never checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    /// Inflate every compressed stream of the backend with libdeflate and compare it with the
    /// input before the job completes (mount option `verify`, default on).
    pub verify: bool,
    /// Redo in software (libdeflate) every job the backend gets wrong: a stream that fails
    /// verification, a codec error, a panic, an inflate that fails where software succeeds. The
    /// caller sees only the latency. Off: such a compress job is written as stored blocks (bad
    /// stream) or fails (error, panic), and such a decompress job fails.
    pub fallback: bool,
    /// After this many faults the backend is disabled and every later job runs in software
    /// (`0`: never). Only with `fallback`.
    pub fault_limit: u64,
    /// Pin queue worker N to the N-th CPU the process may use (mount option `affinity`).
    pub affinity: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            verify: true,
            fallback: true,
            fault_limit: DEFAULT_FAULT_LIMIT,
            affinity: false,
        }
    }
}

impl EngineOptions {
    /// Faults are contained but not repaired: no software fallback (the behaviour the engine's
    /// fault-containment tests pin down).
    pub fn without_fallback() -> EngineOptions {
        EngineOptions {
            fallback: false,
            ..EngineOptions::default()
        }
    }
}

/// Faults after which a backend is disabled, by default.
pub const DEFAULT_FAULT_LIMIT: u64 = 8;

/// Faults of the backend over all queues, and whether it was disabled.
pub(crate) struct BackendHealth {
    backend: String,
    limit: u64,
    faults: AtomicU64,
    disabled: AtomicBool,
}

impl BackendHealth {
    fn new(backend: String, limit: u64) -> BackendHealth {
        BackendHealth {
            backend,
            limit,
            faults: AtomicU64::new(0),
            disabled: AtomicBool::new(false),
        }
    }

    pub(crate) fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    /// Logs a fault (the job was redone in software) and disables the backend at the limit.
    pub(crate) fn record_fault(&self, queue: usize, op: &Op, what: &str) {
        let n = self.faults.fetch_add(1, Ordering::Relaxed) + 1;
        let kind = match op {
            Op::Compress { .. } => "compress",
            Op::Decompress { .. } => "decompress",
        };
        tracing::warn!(
            "backend {} fault #{n} (queue {queue}, {kind}): {what}; job redone in software",
            self.backend
        );
        if self.limit > 0 && n >= self.limit && !self.disabled.swap(true, Ordering::Relaxed) {
            tracing::error!(
                "backend {} disabled after {n} faults: every later job runs in software (libdeflate)",
                self.backend
            );
        }
    }
}

/// Counters of one queue since the engine started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Jobs completed, successfully or not.
    pub jobs_completed: u64,
    /// Jobs completed with an error.
    pub jobs_failed: u64,
    /// Bytes consumed by successful jobs (compress: input; decompress: stream).
    pub bytes_in: u64,
    /// Bytes produced by successful jobs (compress: stream; decompress: output).
    pub bytes_out: u64,
    /// Compressed streams that failed verification against the software reference and were
    /// replaced by stored blocks (see [`Backend::needs_verification`]).
    pub verify_failures: u64,
    /// Jobs the backend got wrong that were redone in software (verification failures included).
    pub faults: u64,
    /// Jobs run by the software fallback (after a fault, or with the backend disabled).
    pub software_jobs: u64,
    /// Jobs accepted and not yet completed, right now.
    pub occupancy: usize,
    /// Largest occupancy seen: at most `queue_depth + 1` (full ring plus the job being run).
    pub max_occupancy: usize,
}

/// A snapshot of the engine's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub backend: String,
    /// The backend was disabled after repeated faults; software runs every job.
    pub backend_disabled: bool,
    /// One entry per queue, by queue index.
    pub queues: Vec<QueueStats>,
    /// Jobs run on their callers' threads by [`Engine::run_now`] (occupancy stays 0).
    pub inline: QueueStats,
}

impl EngineStats {
    /// Jobs completed over all queues and on callers' threads.
    pub fn jobs_completed(&self) -> u64 {
        self.queues.iter().map(|q| q.jobs_completed).sum::<u64>() + self.inline.jobs_completed
    }
    /// Failed jobs over all queues and on callers' threads.
    pub fn jobs_failed(&self) -> u64 {
        self.queues.iter().map(|q| q.jobs_failed).sum::<u64>() + self.inline.jobs_failed
    }
    /// Bytes consumed over all queues and on callers' threads.
    pub fn bytes_in(&self) -> u64 {
        self.queues.iter().map(|q| q.bytes_in).sum::<u64>() + self.inline.bytes_in
    }
    /// Bytes produced over all queues and on callers' threads.
    pub fn bytes_out(&self) -> u64 {
        self.queues.iter().map(|q| q.bytes_out).sum::<u64>() + self.inline.bytes_out
    }
    /// Backend faults over all queues (see [`QueueStats::faults`]).
    pub fn faults(&self) -> u64 {
        self.queues.iter().map(|q| q.faults).sum()
    }
    /// Verification failures over all queues.
    pub fn verify_failures(&self) -> u64 {
        self.queues.iter().map(|q| q.verify_failures).sum()
    }
    /// Jobs run by the software fallback over all queues.
    pub fn software_jobs(&self) -> u64 {
        self.queues.iter().map(|q| q.software_jobs).sum()
    }
    /// Largest occupancy seen on any queue.
    pub fn max_occupancy(&self) -> usize {
        self.queues
            .iter()
            .map(|q| q.max_occupancy)
            .max()
            .unwrap_or(0)
    }
}

/// A set of queue pairs over one backend. Dropping the last `Arc` shuts it down (draining).
pub struct Engine {
    backend_name: String,
    options: EngineOptions,
    /// Whether the backend is checked / backed by software (it is not the reference).
    guarded: bool,
    health: Arc<BackendHealth>,
    /// Submit sides, by queue index; emptied by [`Engine::shutdown`], which closes the rings.
    queues: RwLock<Vec<QueuePair>>,
    counters: Vec<Arc<QueueCounters>>,
    slots: Arc<SlotSignal>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Rotates the starting queue of the least-loaded search so ties spread round-robin.
    next_queue: AtomicUsize,
    /// Whether [`Engine::run_now`] may run jobs on the caller's thread (see
    /// [`Backend::runs_inline`]).
    inline: bool,
    /// Counts the jobs run on callers' threads.
    inline_counters: Arc<QueueCounters>,
}

thread_local! {
    /// The codec [`Engine::run_now`] uses on this thread (software only; created on first use).
    static INLINE_CODEC: std::cell::RefCell<Option<software::SoftwareCodec>> =
        const { std::cell::RefCell::new(None) };
}

impl Engine {
    /// Opens one codec per queue and starts the workers ("dfs-queue-N"), with the default
    /// [`EngineOptions`] (verification and software fallback on).
    pub fn new(cfg: EngineConfig) -> Result<Arc<Engine>, EngineError> {
        Engine::with_options(cfg, EngineOptions::default())
    }

    /// [`Engine::new`] with explicit options.
    pub fn with_options(
        cfg: EngineConfig,
        options: EngineOptions,
    ) -> Result<Arc<Engine>, EngineError> {
        if cfg.queues == 0 {
            return Err(EngineError::InvalidConfig(
                "queues must be at least 1".into(),
            ));
        }
        if cfg.queue_depth == 0 {
            return Err(EngineError::InvalidConfig(
                "queue_depth must be at least 1".into(),
            ));
        }
        let limit = if options.fallback {
            options.fault_limit
        } else {
            0
        };
        let health = Arc::new(BackendHealth::new(cfg.backend.name(), limit));
        let slots = Arc::new(SlotSignal::default());
        let mut pairs = Vec::with_capacity(cfg.queues);
        let mut counters = Vec::with_capacity(cfg.queues);
        let mut workers = Vec::with_capacity(cfg.queues);
        for index in 0..cfg.queues {
            match queue::start_queue(
                index,
                cfg.queue_depth,
                Arc::clone(&cfg.backend),
                Arc::clone(&slots),
                &options,
                Arc::clone(&health),
            ) {
                Ok((pair, c, handle)) => {
                    pairs.push(pair);
                    counters.push(c);
                    workers.push(handle);
                }
                Err(e) => {
                    drop(pairs); // closes the rings: started workers exit
                    for handle in workers {
                        let _ = handle.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Arc::new(Engine {
            backend_name: cfg.backend.name(),
            guarded: cfg.backend.needs_verification(),
            options,
            health,
            queues: RwLock::new(pairs),
            counters,
            slots,
            workers: Mutex::new(workers),
            next_queue: AtomicUsize::new(0),
            inline: cfg.backend.runs_inline(),
            inline_counters: Arc::new(QueueCounters::default()),
        }))
    }

    /// Number of queue pairs.
    pub fn queue_count(&self) -> usize {
        self.counters.len()
    }

    /// The backend's name ("sw" for libdeflate).
    pub fn backend_name(&self) -> String {
        self.backend_name.clone()
    }

    /// The options the engine runs with.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Whether compressed streams of the backend are verified against libdeflate (the backend is
    /// not the reference and `verify` is on).
    pub fn verifies(&self) -> bool {
        self.guarded && self.options.verify
    }

    /// Whether jobs the backend gets wrong are redone in software.
    pub fn falls_back(&self) -> bool {
        self.guarded && self.options.fallback
    }

    /// Offers jobs from the front of `jobs` to queue `queue` until its ring is full; returns how many
    /// were accepted (they are removed from `jobs`, the rest stay in order). Never blocks, so it may
    /// be called from a completion callback.
    ///
    /// After [`Engine::shutdown`], all jobs are "accepted" and completed at once, on this thread,
    /// with [`EngineError::Shutdown`].
    ///
    /// # Panics
    /// If `queue >= self.queue_count()`.
    pub fn try_submit(&self, queue: usize, jobs: &mut Vec<Job>) -> usize {
        assert!(
            queue < self.queue_count(),
            "queue {queue} out of range (engine has {})",
            self.queue_count()
        );
        let mut accepted = 0;
        let mut refused = Vec::new();
        {
            let queues = self.queues.read();
            let mut offered = std::mem::take(jobs).into_iter();
            match queues.get(queue) {
                Some(pair) => {
                    for job in offered.by_ref() {
                        match pair.offer(job) {
                            Offer::Accepted => accepted += 1,
                            Offer::Full(job) => {
                                jobs.push(job);
                                break;
                            }
                            Offer::Closed(job) => {
                                refused.push(job);
                                accepted += 1;
                            }
                        }
                    }
                    jobs.extend(offered);
                }
                None => {
                    accepted = offered.len();
                    refused.extend(offered);
                }
            }
        }
        complete_refused(refused);
        accepted
    }

    /// Submits all `jobs`, spreading them over the queues (each to the least occupied queue), and
    /// waits while every queue is full. Must not be called from a completion callback.
    ///
    /// After [`Engine::shutdown`], the remaining jobs complete at once, on this thread, with
    /// [`EngineError::Shutdown`].
    pub fn submit(&self, jobs: Vec<Job>) {
        for job in jobs {
            self.submit_one(job);
        }
    }

    /// Submits one job whose completion fills the returned [`Ticket`]; waits while every queue is full.
    pub fn submit_with_ticket(&self, op: Op, input: PoolBuf, output: PoolBuf) -> Ticket {
        let (job, ticket) = Job::with_ticket(op, input, output);
        self.submit_one(job);
        ticket
    }

    /// Runs one job and returns its completion, for a caller that would only wait for it (a
    /// foreground read decoding the chunk it needs). With a backend that [runs
    /// inline](Backend::runs_inline) the job runs here, on this thread's own software codec,
    /// with the same code a queue worker uses; otherwise it goes through the queues.
    pub fn run_now(&self, op: Op, input: PoolBuf, mut output: PoolBuf) -> Completion {
        if !self.inline || self.queues.read().is_empty() {
            return self.submit_with_ticket(op, input, output).wait();
        }
        let mut report = queue::JobReport::default();
        let result = INLINE_CODEC.with(|cell| {
            let mut cell = cell.borrow_mut();
            let codec = cell.get_or_insert_with(software::SoftwareCodec::new);
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                queue::execute(codec, None, None, &op, &input, &mut output, &mut report)
            }))
            .unwrap_or_else(|_| {
                // The codec may be inconsistent after an unwind: the next job gets a new one.
                *cell = None;
                Err(EngineError::Codec(CodecError::Panicked(
                    "software codec panicked on the caller's thread".into(),
                )))
            })
        });
        self.inline_counters.count(&op, input.len(), &result);
        Completion {
            result,
            input,
            output,
        }
    }

    fn submit_one(&self, mut job: Job) {
        loop {
            job = match self.offer_anywhere(job) {
                Ok(()) => return,
                Err(job) => job,
            };
            // Every ring was full: register as a waiter, re-check (a slot may have freed before we
            // registered), then sleep until a worker frees one.
            let guard = self.slots.prepare();
            job = match self.offer_anywhere(job) {
                Ok(()) => {
                    self.slots.cancel(guard);
                    return;
                }
                Err(job) => job,
            };
            self.slots.wait(guard);
        }
    }

    /// Offers `job` to the least occupied queue, then to the others; gives it back if all are full.
    /// Completes it with [`EngineError::Shutdown`] if the engine is shut down.
    fn offer_anywhere(&self, job: Job) -> Result<(), Job> {
        let refused = {
            let queues = self.queues.read();
            let n = queues.len();
            if n == 0 {
                job
            } else {
                let start = self.next_queue.fetch_add(1, Ordering::Relaxed) % n;
                let mut best = start;
                let mut best_occupancy = usize::MAX;
                for i in 0..n {
                    let q = (start + i) % n;
                    let occupancy = queues[q].occupancy();
                    if occupancy < best_occupancy {
                        best = q;
                        best_occupancy = occupancy;
                        if occupancy == 0 {
                            break;
                        }
                    }
                }
                let mut job = job;
                let mut i = 0;
                loop {
                    match queues[(best + i) % n].offer(job) {
                        Offer::Accepted => return Ok(()),
                        Offer::Closed(j) => break j,
                        Offer::Full(j) if i + 1 == n => return Err(j),
                        Offer::Full(j) => job = j,
                    }
                    i += 1;
                }
            }
        };
        complete_refused(vec![refused]);
        Ok(())
    }

    /// Stops accepting jobs, lets the workers finish every job already accepted, and joins them.
    /// Later submits complete with [`EngineError::Shutdown`]. Idempotent. Called from a completion
    /// callback it cannot join the calling worker, which then exits after its current job.
    pub fn shutdown(&self) {
        // Dropping the senders closes the rings; workers drain what was accepted, then exit.
        drop(std::mem::take(&mut *self.queues.write()));
        // Submitters waiting for a slot re-check and find the engine shut down.
        self.slots.wake_all();
        let me = std::thread::current().id();
        let workers = std::mem::take(&mut *self.workers.lock());
        for handle in workers {
            if handle.thread().id() == me {
                continue;
            }
            if handle.join().is_err() {
                tracing::error!("an engine queue worker panicked outside a job");
            }
        }
    }

    /// A snapshot of the per-queue counters.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            backend: self.backend_name.clone(),
            backend_disabled: self.health.is_disabled(),
            queues: self.counters.iter().map(|c| c.snapshot()).collect(),
            inline: self.inline_counters.snapshot(),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Completes jobs the engine did not run, on the calling thread.
fn complete_refused(jobs: Vec<Job>) {
    for job in jobs {
        (job.on_complete)(Completion {
            result: Err(EngineError::Shutdown),
            input: job.input,
            output: job.output,
        });
    }
}
