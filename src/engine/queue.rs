//! Queue pairs: a bounded ring of job slots feeding one worker thread that owns one codec stream.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicIsize, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use parking_lot::{Condvar, Mutex, MutexGuard};

use super::backend::{Backend, Codec, CodecError};
use super::job::{Completion, Done, EngineError, Job, Op};
use super::software::{ReferenceVerifier, SoftwareCodec};
use super::{BackendHealth, EngineOptions};
use crate::container::stored::{decode_stored_blocks, stored_stream_len, try_encode_stored_blocks};
use crate::panics::message as panic_message;

/// Counters of one queue, shared by its submitters and its worker. Aligned to keep queues' counters
/// off each other's cache lines.
#[repr(align(128))]
#[derive(Default)]
pub(super) struct QueueCounters {
    /// Jobs accepted and not yet completed (waiting in the ring or being run). Incremented after a
    /// successful send and decremented at completion, so it never exceeds the true occupancy
    /// (`queue_depth + 1`) but can dip below it, even below zero, for a moment: read it with
    /// [`QueueCounters::occupancy`].
    occupancy: AtomicIsize,
    pub max_occupancy: AtomicUsize,
    pub jobs_completed: AtomicU64,
    pub jobs_failed: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub verify_failures: AtomicU64,
    /// Jobs the backend got wrong (bad stream, error, panic, failed inflate) that were redone in
    /// software.
    pub faults: AtomicU64,
    /// Jobs run by the software fallback: after a fault, or because the backend was disabled.
    pub software_jobs: AtomicU64,
}

impl QueueCounters {
    /// Counts one completed job.
    pub fn count(&self, op: &Op, input_len: usize, result: &Result<Done, EngineError>) {
        match result {
            Ok(done) => {
                let (bytes_in, bytes_out) = match op {
                    Op::Compress { .. } => (input_len, done.len),
                    Op::Decompress { stream, .. } => (stream.len(), done.len),
                };
                self.bytes_in.fetch_add(bytes_in as u64, Ordering::Relaxed);
                self.bytes_out
                    .fetch_add(bytes_out as u64, Ordering::Relaxed);
            }
            Err(_) => {
                self.jobs_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.jobs_completed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> super::QueueStats {
        super::QueueStats {
            jobs_completed: self.jobs_completed.load(Ordering::Relaxed),
            jobs_failed: self.jobs_failed.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            verify_failures: self.verify_failures.load(Ordering::Relaxed),
            faults: self.faults.load(Ordering::Relaxed),
            software_jobs: self.software_jobs.load(Ordering::Relaxed),
            occupancy: self.occupancy(),
            max_occupancy: self.max_occupancy.load(Ordering::Relaxed),
        }
    }

    pub fn occupancy(&self) -> usize {
        self.occupancy.load(Ordering::Relaxed).max(0) as usize
    }
}

/// The submit side of a queue pair.
pub(super) struct QueuePair {
    tx: Sender<Job>,
    counters: Arc<QueueCounters>,
}

/// Outcome of offering one job to a queue.
pub(super) enum Offer {
    Accepted,
    Full(Job),
    /// The worker is gone (it only exits once its ring is closed, so this means shutdown).
    Closed(Job),
}

impl QueuePair {
    /// Puts `job` in a free slot of the ring, if there is one. Never blocks.
    pub fn offer(&self, job: Job) -> Offer {
        match self.tx.try_send(job) {
            Ok(()) => {
                let occupancy = self.counters.occupancy.fetch_add(1, Ordering::Relaxed) + 1;
                self.counters
                    .max_occupancy
                    .fetch_max(occupancy.max(0) as usize, Ordering::Relaxed);
                Offer::Accepted
            }
            Err(TrySendError::Full(job)) => Offer::Full(job),
            Err(TrySendError::Disconnected(job)) => Offer::Closed(job),
        }
    }

    pub fn occupancy(&self) -> usize {
        self.counters.occupancy()
    }
}

/// Wakes submitters waiting for a free slot in any queue. Workers only touch the lock when someone
/// is waiting, so the common path costs one atomic load per job.
#[derive(Default)]
pub(super) struct SlotSignal {
    waiters: AtomicUsize,
    lock: Mutex<()>,
    cond: Condvar,
}

impl SlotSignal {
    /// Registers a waiter; hold the guard while re-checking for space, then pass it to `wait`.
    pub fn prepare(&self) -> MutexGuard<'_, ()> {
        let guard = self.lock.lock();
        self.waiters.fetch_add(1, Ordering::SeqCst);
        guard
    }

    /// Waits for a slot to free up (or a short timeout, as a safety net), then unregisters.
    pub fn wait(&self, guard: MutexGuard<'_, ()>) {
        self.wait_at_most(guard, Duration::from_millis(50));
    }

    fn wait_at_most(&self, mut guard: MutexGuard<'_, ()>, timeout: Duration) {
        self.cond.wait_for(&mut guard, timeout);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Unregisters without waiting.
    pub fn cancel(&self, guard: MutexGuard<'_, ()>) {
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        drop(guard);
    }

    /// Wakes every waiter unconditionally (shutdown).
    pub fn wake_all(&self) {
        let _guard = self.lock.lock();
        self.cond.notify_all();
    }

    /// Called after a slot was freed. A waiter registered before our load is woken; one registered
    /// after it re-checks under the lock and sees the freed slot.
    pub fn notify(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock.lock();
            self.cond.notify_all();
        }
    }
}

/// Creates queue `index` with `depth` slots and starts its worker, named "dfs-queue-N".
pub(super) fn start_queue(
    index: usize,
    depth: usize,
    backend: Arc<dyn Backend>,
    slots: Arc<SlotSignal>,
    options: &EngineOptions,
    health: Arc<BackendHealth>,
) -> Result<(QueuePair, Arc<QueueCounters>, JoinHandle<()>), EngineError> {
    let codec = backend.open_queue()?;
    // A backend that is not the reference is checked (unless the user turned that off) and, when
    // it gets a job wrong, the job is redone by libdeflate.
    let outsider = backend.needs_verification();
    let verifier = (outsider && options.verify).then(ReferenceVerifier::new);
    let fallback = (outsider && options.fallback).then(SoftwareCodec::new);
    let cpu = if options.affinity {
        pick_cpu(index)
    } else {
        None
    };
    let (tx, rx) = crossbeam_channel::bounded(depth);
    let counters = Arc::new(QueueCounters::default());
    let worker = Worker {
        index,
        rx,
        codec,
        verifier,
        fallback,
        health,
        backend,
        counters: Arc::clone(&counters),
        slots,
    };
    let handle = std::thread::Builder::new()
        .name(format!("dfs-queue-{index}"))
        .spawn(move || {
            if let Some(cpu) = cpu {
                pin_to_cpu(index, cpu);
            }
            worker.run()
        })
        .map_err(EngineError::Spawn)?;
    let pair = QueuePair {
        tx,
        counters: Arc::clone(&counters),
    };
    Ok((pair, counters, handle))
}

/// The CPU queue `index` is pinned to: the `index`-th CPU (modulo their number) this process may
/// run on.
fn pick_cpu(index: usize) -> Option<usize> {
    let set = sched_getaffinity(Pid::from_raw(0)).ok()?;
    let allowed: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect();
    (!allowed.is_empty()).then(|| allowed[index % allowed.len()])
}

/// Pins the calling thread to `cpu` (the `affinity` option): a queue's jobs then run, and
/// complete, on one CPU, as on a device that signals completions to the CPU that submitted.
fn pin_to_cpu(index: usize, cpu: usize) {
    let mut set = CpuSet::new();
    let pinned = set
        .set(cpu)
        .and_then(|()| sched_setaffinity(Pid::from_raw(0), &set));
    match pinned {
        Err(e) => tracing::warn!("queue {index}: cannot pin the worker to CPU {cpu}: {e}"),
        Ok(()) => tracing::debug!("queue {index}: worker pinned to CPU {cpu}"),
    }
}

struct Worker {
    index: usize,
    rx: Receiver<Job>,
    codec: Box<dyn Codec>,
    /// Present when the backend's compressed streams must be checked against the reference.
    verifier: Option<ReferenceVerifier>,
    /// Present when jobs the backend gets wrong are redone in software.
    fallback: Option<SoftwareCodec>,
    health: Arc<BackendHealth>,
    backend: Arc<dyn Backend>,
    counters: Arc<QueueCounters>,
    slots: Arc<SlotSignal>,
}

impl Worker {
    /// Runs jobs until the ring is closed and empty (shutdown drains).
    ///
    /// A worker never dies of a panic: one in a codec, in the bookkeeping around it, or in a
    /// completion callback is caught in [`Worker::run_job`], logged, and turned into a failed job,
    /// so every accepted job completes and no request waits forever on a dead queue. The guard
    /// here only catches what would escape that (a bug in this loop itself).
    fn run(mut self) {
        while let Ok(job) = self.rx.recv() {
            self.slots.notify();
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| self.run_job(job))) {
                tracing::error!(
                    "queue {}: worker panicked outside a job: {}; the worker goes on",
                    self.index,
                    panic_message(payload.as_ref())
                );
            }
        }
        tracing::debug!("queue {} worker exits", self.index);
    }

    fn run_job(&mut self, job: Job) {
        let Job {
            op,
            input,
            mut output,
            on_complete,
        } = job;
        // Everything up to the callback runs under one guard that only borrows the buffers: a
        // panic anywhere in it still leaves the job whole, to be completed with an error.
        let result = catch_unwind(AssertUnwindSafe(|| self.run_op(&op, &input, &mut output)))
            .unwrap_or_else(|payload| {
                let msg = panic_message(payload.as_ref());
                tracing::error!(
                    "queue {}: worker panicked running {op:?}: {msg}; the job fails",
                    self.index
                );
                Err(EngineError::Codec(CodecError::Panicked(msg)))
            });
        let c = &self.counters;
        c.count(&op, input.len(), &result);
        c.occupancy.fetch_sub(1, Ordering::Relaxed);

        let completion = Completion {
            result,
            input,
            output,
        };
        if let Err(payload) = catch_unwind(AssertUnwindSafe(move || on_complete(completion))) {
            tracing::error!(
                "queue {}: completion callback panicked: {}",
                self.index,
                panic_message(payload.as_ref())
            );
        }
    }

    /// Runs one job's operation: on the backend's codec (checked, with the software fallback if
    /// configured), or in software once the backend is disabled. Updates the fault counters.
    fn run_op(&mut self, op: &Op, input: &[u8], output: &mut [u8]) -> Result<Done, EngineError> {
        let mut report = JobReport::default();
        let disabled = self.fallback.is_some() && self.health.is_disabled();
        let result = if disabled {
            // The backend was disabled after repeated faults: software does everything.
            let sw = self.fallback.as_mut().expect("checked");
            report.software = true;
            run_guarded(self.index, sw, None, None, op, input, output, &mut report)
        } else {
            match catch_unwind(AssertUnwindSafe(|| {
                execute(
                    self.codec.as_mut(),
                    self.verifier.as_mut(),
                    self.fallback.as_mut().map(|c| c as &mut dyn Codec),
                    op,
                    input,
                    output,
                    &mut report,
                )
            })) {
                Ok(result) => result,
                Err(payload) => {
                    let msg = panic_message(payload.as_ref());
                    tracing::error!(
                        "queue {}: codec panicked running {op:?}: {msg}; reopening the codec",
                        self.index
                    );
                    self.reopen_codec();
                    match self.fallback.as_mut() {
                        Some(sw) => {
                            report = JobReport {
                                fault: Some(format!("codec panicked: {msg}")),
                                software: true,
                                ..report
                            };
                            run_guarded(self.index, sw, None, None, op, input, output, &mut report)
                        }
                        None => Err(EngineError::Codec(CodecError::Panicked(msg))),
                    }
                }
            }
        };

        let c = &self.counters;
        if report.verify_failed {
            c.verify_failures.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(fault) = report.fault.take() {
            c.faults.fetch_add(1, Ordering::Relaxed);
            self.health.record_fault(self.index, op, &fault);
        }
        if report.software {
            c.software_jobs.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Replaces the codec after it panicked: the unwind may have left it inconsistent. A backend
    /// that fails, or panics, to open a new one leaves the old one in place (the job that
    /// panicked still completes, with its error or from the fallback).
    fn reopen_codec(&mut self) {
        match catch_unwind(AssertUnwindSafe(|| self.backend.open_queue())) {
            Ok(Ok(fresh)) => self.codec = fresh,
            Ok(Err(e)) => tracing::error!(
                "queue {}: cannot reopen codec ({e}); keeping the old one",
                self.index
            ),
            Err(payload) => tracing::error!(
                "queue {}: reopening the codec panicked ({}); keeping the old one",
                self.index,
                panic_message(payload.as_ref())
            ),
        }
    }
}

/// Runs a job on `codec` (the software fallback) with panics turned into a failed job.
#[allow(clippy::too_many_arguments)]
fn run_guarded(
    index: usize,
    codec: &mut dyn Codec,
    verifier: Option<&mut ReferenceVerifier>,
    fallback: Option<&mut dyn Codec>,
    op: &Op,
    input: &[u8],
    output: &mut [u8],
    report: &mut JobReport,
) -> Result<Done, EngineError> {
    catch_unwind(AssertUnwindSafe(|| {
        execute(codec, verifier, fallback, op, input, output, report)
    }))
    .unwrap_or_else(|payload| {
        let msg = panic_message(payload.as_ref());
        tracing::error!("queue {index}: software codec panicked running {op:?}: {msg}");
        Err(EngineError::Codec(CodecError::Panicked(msg)))
    })
}

/// What happened to one job besides its result.
#[derive(Debug, Default)]
pub(super) struct JobReport {
    /// A compressed stream failed verification against the reference.
    pub verify_failed: bool,
    /// The backend got the job wrong (how), and the job was redone in software.
    pub fault: Option<String>,
    /// The result came from the software fallback.
    pub software: bool,
}

/// Runs one operation with `codec`. Compressed streams are checked with `verifier` if given. When
/// the codec gets the job wrong (a stream that fails the check, an error other than `NoSpace`, an
/// inflate that fails where the software one succeeds), the job is redone with `fallback` if given
/// and `report.fault` says why; without a fallback, a stream that fails the check is replaced by
/// stored blocks and errors are returned. Allocates only to describe an error.
pub(super) fn execute(
    codec: &mut dyn Codec,
    verifier: Option<&mut ReferenceVerifier>,
    fallback: Option<&mut dyn Codec>,
    op: &Op,
    input: &[u8],
    output: &mut [u8],
    report: &mut JobReport,
) -> Result<Done, EngineError> {
    match *op {
        Op::Compress {
            level,
            headroom,
            tailroom,
        } => {
            let region = compress_region(output, headroom, tailroom)?;
            compress(codec, verifier, fallback, level, input, region, report)
        }
        Op::Decompress {
            ref stream,
            expected_crc,
            stored,
        } => {
            let Some(src) = input.get(stream.clone()) else {
                return Err(EngineError::InvalidJob(format!(
                    "stream range {stream:?} outside the {}-byte input",
                    input.len()
                )));
            };
            if stored {
                return decompress(codec, src, expected_crc, true, output);
            }
            match decompress(codec, src, expected_crc, false, output) {
                Ok(done) => Ok(done),
                Err(e) => match fallback {
                    Some(sw) => {
                        let retry = decompress(sw, src, expected_crc, false, output);
                        if retry.is_ok() {
                            report.fault =
                                Some(format!("inflate failed ({e}) where software succeeded"));
                        }
                        report.software = true;
                        retry
                    }
                    None => Err(e),
                },
            }
        }
    }
}

/// `output[headroom .. len - tailroom]`, or `InvalidJob`.
fn compress_region(
    output: &mut [u8],
    headroom: usize,
    tailroom: usize,
) -> Result<&mut [u8], EngineError> {
    let out_len = output.len();
    match out_len.checked_sub(tailroom) {
        Some(end) if end >= headroom => Ok(&mut output[headroom..end]),
        _ => Err(EngineError::InvalidJob(format!(
            "headroom {headroom} + tailroom {tailroom} exceed the {out_len}-byte output"
        ))),
    }
}

fn compress(
    codec: &mut dyn Codec,
    verifier: Option<&mut ReferenceVerifier>,
    fallback: Option<&mut dyn Codec>,
    level: u32,
    input: &[u8],
    region: &mut [u8],
    report: &mut JobReport,
) -> Result<Done, EngineError> {
    if level > 0 && looks_incompressible(codec, input, region) {
        return store(input, region);
    }
    if level > 0 {
        // One byte less than stored blocks would take: a stream that does not beat them "does not
        // fit", and the codec may give up early.
        let limit = region.len().min(stored_stream_len(input.len()) - 1);
        let fault = match codec.deflate(level, input, &mut region[..limit]) {
            Ok(len) if len <= limit => {
                if verifier.is_some_and(|v| !v.check(&region[..len], input)) {
                    report.verify_failed = true;
                    format!(
                        "compressed stream ({len} bytes, level {level}) does not decode to its \
                         {}-byte input",
                        input.len()
                    )
                } else {
                    return Ok(Done {
                        len,
                        crc32: libdeflater::crc32(input),
                        stored: false,
                        level: u8::try_from(level).unwrap_or(u8::MAX),
                        window_log2: codec.window_log2(),
                    });
                }
            }
            Ok(len) => format!("codec reported {len} bytes written into a {limit}-byte buffer"),
            Err(CodecError::NoSpace) => return store(input, region),
            Err(e) if fallback.is_some() => e.to_string(),
            Err(e) => return Err(e.into()),
        };
        match fallback {
            Some(sw) => {
                report.fault = Some(fault);
                report.software = true;
                return compress(sw, None, None, level, input, region, report);
            }
            None if report.verify_failed => {
                // Never hand out a stream that does not decode to its input: store instead.
                tracing::error!("{fault}; writing stored blocks instead");
            }
            None => return Err(EngineError::Codec(CodecError::Failed(fault))),
        }
    }
    store(input, region)
}

/// Inputs at least this long are probed before being compressed whole.
const PROBE_MIN_INPUT: usize = 64 << 10;
/// Bytes per probe sample.
const PROBE_LEN: usize = 8 << 10;

/// Early abort for data that will not compress (media, archives, encrypted data): two samples of
/// the input, at its start and its middle, are compressed at level 1 into `scratch`; if neither
/// shrinks by at least 1/32 the whole input is stored without trying. Costs 1/8 of compressing a
/// 128 KiB chunk, saves the other 7/8 when it hits; an input whose compressible part misses both
/// samples is stored uncompressed (the price every early-abort heuristic pays).
fn looks_incompressible(codec: &mut dyn Codec, input: &[u8], scratch: &mut [u8]) -> bool {
    if input.len() < PROBE_MIN_INPUT || scratch.len() < PROBE_LEN {
        return false;
    }
    let limit = PROBE_LEN - PROBE_LEN / 32;
    for start in [0, input.len() / 2] {
        let sample = &input[start..start + PROBE_LEN];
        match codec.deflate(1, sample, &mut scratch[..limit]) {
            Err(CodecError::NoSpace) => continue,
            Ok(len) if len >= limit => continue,
            // It compresses, or the codec has something to say: the real attempt decides.
            _ => return false,
        }
    }
    true
}

/// Writes `input` as stored blocks into `region`.
fn store(input: &[u8], region: &mut [u8]) -> Result<Done, EngineError> {
    match try_encode_stored_blocks(input, region) {
        Some(len) => Ok(Done {
            len,
            crc32: libdeflater::crc32(input),
            stored: true,
            level: 0,
            window_log2: 0,
        }),
        None => Err(EngineError::Codec(CodecError::NoSpace)),
    }
}

fn decompress(
    codec: &mut dyn Codec,
    src: &[u8],
    expected_crc: u32,
    stored: bool,
    output: &mut [u8],
) -> Result<Done, EngineError> {
    let expected_len = output.len();
    if stored {
        let n =
            decode_stored_blocks(src, output).map_err(|e| EngineError::Corrupt(e.to_string()))?;
        if n != expected_len {
            return Err(EngineError::Corrupt(format!(
                "stored stream holds {n} bytes, expected {expected_len}"
            )));
        }
    } else {
        match codec.inflate(src, output) {
            Ok(n) if n == expected_len => {}
            Ok(n) => {
                return Err(EngineError::Corrupt(format!(
                    "deflate stream decodes to {n} bytes, expected {expected_len}"
                )))
            }
            Err(CodecError::Corrupt) => {
                return Err(EngineError::Corrupt(format!(
                    "{}-byte deflate stream is invalid or does not decode to exactly {expected_len} bytes",
                    src.len()
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }
    let crc32 = libdeflater::crc32(output);
    if crc32 != expected_crc {
        return Err(EngineError::Corrupt(format!(
            "crc32 of the {expected_len} decompressed bytes is {crc32:08x}, expected {expected_crc:08x}"
        )));
    }
    Ok(Done {
        len: expected_len,
        crc32,
        stored,
        level: 0,
        window_log2: if stored { 0 } else { codec.window_log2() },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::software::SoftwareCodec;

    #[test]
    fn a_pinned_worker_runs_on_the_one_cpu_picked_for_it() {
        let cpu = pick_cpu(0).expect("this process may run on some CPU");
        let allowed = std::thread::spawn(move || {
            pin_to_cpu(0, cpu);
            let set = sched_getaffinity(Pid::from_raw(0)).unwrap();
            (0..CpuSet::count())
                .filter(|&c| set.is_set(c).unwrap())
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap();
        assert_eq!(allowed, [cpu]);
    }

    /// Records the output size it was offered, then behaves like libdeflate.
    struct Spy {
        inner: SoftwareCodec,
        offered: usize,
    }

    impl Codec for Spy {
        fn deflate(&mut self, level: u32, i: &[u8], o: &mut [u8]) -> Result<usize, CodecError> {
            self.offered = o.len();
            self.inner.deflate(level, i, o)
        }
        fn inflate(&mut self, i: &[u8], o: &mut [u8]) -> Result<usize, CodecError> {
            self.inner.inflate(i, o)
        }
    }

    fn run(
        codec: &mut dyn Codec,
        op: &Op,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<Done, EngineError> {
        let mut report = JobReport::default();
        let r = execute(codec, None, None, op, input, output, &mut report);
        assert!(!report.verify_failed && report.fault.is_none());
        r
    }

    #[test]
    fn codec_is_offered_one_byte_less_than_stored_blocks() {
        let mut spy = Spy {
            inner: SoftwareCodec::new(),
            offered: 0,
        };
        let input = vec![b'x'; 1000];
        let mut output = vec![0u8; 7 + stored_stream_len(1000) + 3 + 500];
        let op = Op::Compress {
            level: 3,
            headroom: 7,
            tailroom: 3,
        };
        let done = run(&mut spy, &op, &input, &mut output).unwrap();
        assert_eq!(spy.offered, stored_stream_len(1000) - 1);
        assert!(!done.stored);
        assert_eq!(done.level, 3);
    }

    #[test]
    fn level_zero_never_calls_the_codec() {
        let mut spy = Spy {
            inner: SoftwareCodec::new(),
            offered: usize::MAX,
        };
        let input = vec![b'x'; 1000];
        let mut output = vec![0u8; stored_stream_len(1000)];
        let op = Op::Compress {
            level: 0,
            headroom: 0,
            tailroom: 0,
        };
        let done = run(&mut spy, &op, &input, &mut output).unwrap();
        assert_eq!(spy.offered, usize::MAX);
        assert!(done.stored);
        assert_eq!(done.len, stored_stream_len(1000));
        assert_eq!(done.crc32, libdeflater::crc32(&input));
    }

    #[test]
    fn decompress_checks_length_and_crc() {
        let mut codec = SoftwareCodec::new();
        let input = b"hello hello hello hello".to_vec();
        let mut stream = vec![0u8; 64];
        let op = Op::Compress {
            level: 6,
            headroom: 0,
            tailroom: 0,
        };
        let done = run(&mut codec, &op, &input, &mut stream).unwrap();
        let mut framed = vec![0xEE; 3];
        framed.extend_from_slice(&stream[..done.len]);
        framed.push(0xEE);
        let dec = |crc, len| {
            let mut out = vec![0u8; len];
            let op = Op::Decompress {
                stream: 3..3 + done.len,
                expected_crc: crc,
                stored: false,
            };
            run(&mut SoftwareCodec::new(), &op, &framed, &mut out).map(|d| (d, out))
        };
        let (d, out) = dec(done.crc32, input.len()).unwrap();
        assert_eq!(out, input);
        assert_eq!(
            (d.len, d.crc32, d.window_log2),
            (input.len(), done.crc32, 15)
        );
        assert!(matches!(
            dec(done.crc32 ^ 1, input.len()),
            Err(EngineError::Corrupt(_))
        ));
        assert!(matches!(
            dec(done.crc32, input.len() - 1),
            Err(EngineError::Corrupt(_))
        ));
        assert!(matches!(
            dec(done.crc32, input.len() + 1),
            Err(EngineError::Corrupt(_))
        ));
    }

    #[test]
    fn slot_signal_wakes_a_registered_waiter() {
        let signal = Arc::new(SlotSignal::default());
        let guard = signal.prepare();
        let s2 = Arc::clone(&signal);
        let notifier = std::thread::spawn(move || s2.notify());
        let start = std::time::Instant::now();
        signal.wait(guard);
        notifier.join().unwrap();
        assert!(
            start.elapsed() < Duration::from_millis(45),
            "woken, not timed out"
        );
        assert_eq!(signal.waiters.load(Ordering::SeqCst), 0);
    }
}
