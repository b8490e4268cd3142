//! A fault-injecting backend for tests: wraps another backend and, on request, panics, fails,
//! silently corrupts output, or holds calls at a gate.
//!
//! It exists so that the engine, and the layers above it, can be tested against the failures real
//! devices have: a crashing driver, an error completion, a compressor that returns wrong bytes
//! (hardware compressors have shipped such bugs), a queue that stalls.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::backend::{Backend, Codec, CodecError};

/// Which codec call a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    Deflate,
    Inflate,
}

/// What happens when a fault fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    /// The codec panics (before running the real call).
    Panic,
    /// The call returns this error without running.
    Fail(CodecError),
    /// The real call runs, then one bit of its output is flipped; the call still reports success.
    CorruptOutput,
}

/// When a fault fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultTrigger {
    /// Every call whose input starts with these bytes (deterministic under concurrency).
    InputPrefix(Vec<u8>),
    /// Only the call with this 0-based sequence number among calls of its [`FaultOp`], counted over
    /// all codecs of the backend.
    NthCall(u64),
}

/// One fault rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub op: FaultOp,
    pub trigger: FaultTrigger,
    pub action: FaultAction,
}

/// Shared, mutable fault plan and counters of a [`FaultBackend`].
#[derive(Default)]
pub struct FaultControl {
    faults: Mutex<Vec<Fault>>,
    opens: AtomicUsize,
    deflate_calls: AtomicU64,
    inflate_calls: AtomicU64,
    fired: AtomicU64,
    skip_verification: AtomicBool,
    gate: Mutex<GateState>,
    gate_cond: Condvar,
}

#[derive(Default)]
struct GateState {
    closed: bool,
    /// Calls that reached the gate while it was closed and are waiting.
    waiting: usize,
}

impl FaultControl {
    /// Adds a fault rule.
    pub fn add(&self, fault: Fault) {
        self.faults.lock().push(fault);
    }

    /// Removes all fault rules.
    pub fn clear(&self) {
        self.faults.lock().clear();
    }

    /// Codecs opened so far (one per queue, plus one per reopen after a panic).
    pub fn opens(&self) -> usize {
        self.opens.load(Ordering::SeqCst)
    }

    /// Whether engines created after this call verify the backend's compressed streams (default:
    /// yes, as for any non-reference backend). Turn it off to let `CorruptOutput` on deflate reach
    /// the caller.
    pub fn set_verification(&self, on: bool) {
        self.skip_verification.store(!on, Ordering::SeqCst);
    }

    /// Faults fired so far.
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::SeqCst)
    }

    /// Makes every later codec call wait until [`FaultControl::open_gate`].
    pub fn close_gate(&self) {
        self.gate.lock().closed = true;
    }

    /// Lets waiting and later calls run.
    pub fn open_gate(&self) {
        self.gate.lock().closed = false;
        self.gate_cond.notify_all();
    }

    /// Calls currently waiting at the closed gate.
    pub fn waiting_at_gate(&self) -> usize {
        self.gate.lock().waiting
    }

    /// Waits until at least `n` calls wait at the gate (polling; for tests).
    pub fn wait_for_gate_waiters(&self, n: usize) {
        while self.waiting_at_gate() < n {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    fn pass_gate(&self) {
        let mut gate = self.gate.lock();
        if gate.closed {
            gate.waiting += 1;
            while gate.closed {
                self.gate_cond.wait(&mut gate);
            }
            gate.waiting -= 1;
        }
    }

    fn action_for(&self, op: FaultOp, input: &[u8]) -> Option<FaultAction> {
        let counter = match op {
            FaultOp::Deflate => &self.deflate_calls,
            FaultOp::Inflate => &self.inflate_calls,
        };
        let seq = counter.fetch_add(1, Ordering::SeqCst);
        let faults = self.faults.lock();
        let action = faults
            .iter()
            .find(|f| {
                f.op == op
                    && match &f.trigger {
                        FaultTrigger::InputPrefix(prefix) => input.starts_with(prefix),
                        FaultTrigger::NthCall(n) => *n == seq,
                    }
            })
            .map(|f| f.action.clone());
        if action.is_some() {
            self.fired.fetch_add(1, Ordering::SeqCst);
        }
        action
    }
}

/// A backend that runs `inner`'s codecs under the faults of its [`FaultControl`]. Named
/// "fault(<inner>)".
pub struct FaultBackend {
    inner: Arc<dyn Backend>,
    control: Arc<FaultControl>,
}

impl FaultBackend {
    /// Wraps `inner`; returns the backend and its control handle.
    pub fn new(inner: Arc<dyn Backend>) -> (FaultBackend, Arc<FaultControl>) {
        let control = Arc::new(FaultControl::default());
        (
            FaultBackend {
                inner,
                control: Arc::clone(&control),
            },
            control,
        )
    }
}

impl Backend for FaultBackend {
    fn name(&self) -> String {
        format!("fault({})", self.inner.name())
    }

    fn open_queue(&self) -> Result<Box<dyn Codec>, CodecError> {
        let inner = self.inner.open_queue()?;
        self.control.opens.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(FaultCodec {
            inner,
            control: Arc::clone(&self.control),
        }))
    }

    fn needs_verification(&self) -> bool {
        !self.control.skip_verification.load(Ordering::SeqCst)
    }
}

struct FaultCodec {
    inner: Box<dyn Codec>,
    control: Arc<FaultControl>,
}

impl FaultCodec {
    fn run(
        &mut self,
        op: FaultOp,
        input: &[u8],
        out: &mut [u8],
        real: impl FnOnce(&mut dyn Codec, &[u8], &mut [u8]) -> Result<usize, CodecError>,
    ) -> Result<usize, CodecError> {
        self.control.pass_gate();
        match self.control.action_for(op, input) {
            None => real(self.inner.as_mut(), input, out),
            Some(FaultAction::Panic) => panic!("injected {op:?} panic"),
            Some(FaultAction::Fail(e)) => Err(e),
            Some(FaultAction::CorruptOutput) => {
                let n = real(self.inner.as_mut(), input, out)?;
                if n > 0 {
                    out[n / 2] ^= 0x10;
                }
                Ok(n)
            }
        }
    }
}

impl Codec for FaultCodec {
    fn deflate(&mut self, level: u32, input: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
        self.run(FaultOp::Deflate, input, out, |c, i, o| {
            c.deflate(level, i, o)
        })
    }

    fn inflate(&mut self, input: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
        self.run(FaultOp::Inflate, input, out, |c, i, o| c.inflate(i, o))
    }

    fn window_log2(&self) -> u8 {
        self.inner.window_log2()
    }
}
