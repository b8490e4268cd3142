//! A fault-injecting backend for tests: wraps another backend and, on request, panics, fails,
//! silently corrupts output, or holds calls at a gate.
//!
//! It exists so that the engine, and the layers above it, can be tested against the failures real
//! devices have: a crashing driver, an error completion, a compressor that returns wrong bytes
//! (hardware compressors have shipped such bugs), a queue that stalls.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    /// A random share of calls: this many in a million (see [`FaultControl::seed`]).
    Random(u32),
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
    /// Calls to `open_queue` still to panic (see [`FaultControl::panic_on_open`]).
    open_panics: AtomicUsize,
    deflate_calls: AtomicU64,
    inflate_calls: AtomicU64,
    fired: AtomicU64,
    skip_verification: AtomicBool,
    gate: Mutex<GateState>,
    gate_cond: Condvar,
    /// State of the generator behind [`FaultTrigger::Random`] and the delays.
    rng: Mutex<u64>,
    /// Delay rules: (op, probability in millionths, longest delay).
    delays: Mutex<Vec<(FaultOp, u32, Duration)>>,
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

    /// Removes all fault rules (delays included).
    pub fn clear(&self) {
        self.faults.lock().clear();
        self.delays.lock().clear();
    }

    /// Seeds the generator behind random faults and delays (the same seed gives the same
    /// sequence of decisions for the same sequence of calls).
    pub fn seed(&self, seed: u64) {
        *self.rng.lock() = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    }

    /// Makes a random share (`per_million` in a million) of `op` calls wait up to `max` before
    /// they run. Delayed jobs complete after later ones on other queues: completions reorder.
    pub fn add_delay(&self, op: FaultOp, per_million: u32, max: Duration) {
        self.delays.lock().push((op, per_million, max));
    }

    /// A pseudo-random number (xorshift64*).
    fn random(&self) -> u64 {
        let mut x = self.rng.lock();
        if *x == 0 {
            *x = 0x2545_F491_4F6C_DD1D;
        }
        *x ^= *x >> 12;
        *x ^= *x << 25;
        *x ^= *x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn chance(&self, per_million: u32) -> bool {
        per_million > 0 && self.random() % 1_000_000 < per_million as u64
    }

    fn delay_for(&self, op: FaultOp) -> Option<Duration> {
        let rules = self.delays.lock().clone();
        for (o, p, max) in rules {
            if o == op && self.chance(p) {
                let ms = max.as_millis().max(1) as u64;
                return Some(Duration::from_millis(1 + self.random() % ms));
            }
        }
        None
    }

    /// Makes the next `n` calls to the backend's `open_queue` panic, as a driver might when asked
    /// for a fresh queue after a crash: the engine must complete the job at hand anyway.
    pub fn panic_on_open(&self, n: usize) {
        self.open_panics.store(n, Ordering::SeqCst);
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
                        FaultTrigger::Random(p) => self.chance(*p),
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
        let panics = &self.control.open_panics;
        if panics
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            panic!("injected open_queue panic");
        }
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
        if let Some(d) = self.control.delay_for(op) {
            std::thread::sleep(d);
        }
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

/// A random fault plan for a whole mount: the `fault=SPEC` mount option, for testing how the
/// filesystem copes with a misbehaving compression device. Never on unless asked for.
///
/// SPEC is a `:`-separated list of `key=value` items (no commas: they separate mount options):
/// `fail=P` (calls return an error), `corrupt=P` (output silently damaged), `panic=P` (the codec
/// panics), `delay=P` (calls wait up to `delay_ms`, default 20, so completions come back out of
/// order), where P is a percentage such as `5` or `0.5`; `ops=deflate|inflate|all` (default all),
/// `seed=N`, and `fallback=on|off`: whether the engine redoes failed jobs in software (default on;
/// off lets the failures reach the filesystem).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FaultSpec {
    /// Probabilities in millionths.
    pub fail: u32,
    pub corrupt: u32,
    pub panic: u32,
    pub delay: u32,
    pub delay_ms: u64,
    pub deflate: bool,
    pub inflate: bool,
    pub seed: u64,
    pub fallback: bool,
}

impl FaultSpec {
    /// Parses SPEC (see [`FaultSpec`]).
    pub fn parse(text: &str) -> Result<FaultSpec, String> {
        let mut f = FaultSpec {
            delay_ms: 20,
            deflate: true,
            inflate: true,
            seed: 1,
            fallback: true,
            ..FaultSpec::default()
        };
        let percent = |k: &str, v: &str| -> Result<u32, String> {
            let p: f64 = v
                .trim_end_matches('%')
                .parse()
                .map_err(|_| format!("fault: {k}={v}: not a percentage"))?;
            if !(0.0..=100.0).contains(&p) {
                return Err(format!("fault: {k}={v}: must be between 0 and 100"));
            }
            Ok((p * 10_000.0).round() as u32)
        };
        for item in text.split(':').filter(|s| !s.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| format!("fault: '{item}' is not key=value"))?;
            match k {
                "fail" => f.fail = percent(k, v)?,
                "corrupt" => f.corrupt = percent(k, v)?,
                "panic" => f.panic = percent(k, v)?,
                "delay" => f.delay = percent(k, v)?,
                "delay_ms" => {
                    f.delay_ms = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=60_000).contains(n))
                        .ok_or_else(|| format!("fault: delay_ms={v}: must be 1..60000"))?
                }
                "seed" => {
                    f.seed = v
                        .parse()
                        .map_err(|_| format!("fault: seed={v}: not a number"))?
                }
                "ops" => {
                    (f.deflate, f.inflate) = match v {
                        "deflate" => (true, false),
                        "inflate" => (false, true),
                        "all" => (true, true),
                        _ => {
                            return Err(format!("fault: ops={v}: must be deflate, inflate or all"))
                        }
                    }
                }
                "fallback" => {
                    f.fallback = match v {
                        "on" => true,
                        "off" => false,
                        _ => return Err(format!("fault: fallback={v}: must be on or off")),
                    }
                }
                _ => return Err(format!("fault: unknown item '{k}'")),
            }
        }
        Ok(f)
    }
}

impl std::fmt::Display for FaultSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = |p: u32| p as f64 / 10_000.0;
        write!(
            f,
            "fail={}:corrupt={}:panic={}:delay={}:delay_ms={}:ops={}:seed={}:fallback={}",
            pct(self.fail),
            pct(self.corrupt),
            pct(self.panic),
            pct(self.delay),
            self.delay_ms,
            match (self.deflate, self.inflate) {
                (true, false) => "deflate",
                (false, true) => "inflate",
                _ => "all",
            },
            self.seed,
            if self.fallback { "on" } else { "off" }
        )
    }
}

impl FaultBackend {
    /// Wraps `inner` in the random faults of `spec`.
    pub fn from_spec(inner: Arc<dyn Backend>, spec: &FaultSpec) -> FaultBackend {
        let (backend, control) = FaultBackend::new(inner);
        control.seed(spec.seed);
        let mut ops = Vec::new();
        if spec.deflate {
            ops.push(FaultOp::Deflate);
        }
        if spec.inflate {
            ops.push(FaultOp::Inflate);
        }
        for op in ops {
            if spec.delay > 0 {
                control.add_delay(op, spec.delay, Duration::from_millis(spec.delay_ms));
            }
            for (p, action) in [
                (spec.panic, FaultAction::Panic),
                (
                    spec.fail,
                    FaultAction::Fail(CodecError::Failed("injected failure".into())),
                ),
                (spec.corrupt, FaultAction::CorruptOutput),
            ] {
                if p > 0 {
                    control.add(Fault {
                        op,
                        trigger: FaultTrigger::Random(p),
                        action,
                    });
                }
            }
        }
        backend
    }
}

#[cfg(test)]
mod spec_tests {
    use super::*;

    #[test]
    fn spec_parses_and_prints_back() {
        let s = FaultSpec::parse(
            "fail=5:corrupt=0.5:delay=20:delay_ms=7:seed=9:fallback=off:ops=deflate",
        )
        .unwrap();
        assert_eq!(s.fail, 50_000);
        assert_eq!(s.corrupt, 5_000);
        assert_eq!(s.delay, 200_000);
        assert_eq!(s.delay_ms, 7);
        assert!(!s.fallback && s.deflate && !s.inflate);
        assert_eq!(FaultSpec::parse(&s.to_string()).unwrap(), s);
        assert!(FaultSpec::parse("fail=101").is_err());
        assert!(FaultSpec::parse("bogus=1").is_err());
        assert!(FaultSpec::parse("fail").is_err());
        assert_eq!(FaultSpec::parse("").unwrap().fail, 0);
    }

    #[test]
    fn random_faults_fire_at_about_their_rate() {
        let spec = FaultSpec::parse("fail=25:seed=3").unwrap();
        let b = FaultBackend::from_spec(Arc::new(crate::engine::SoftwareBackend::new()), &spec);
        let control = Arc::clone(&b.control);
        let mut codec = b.open_queue().unwrap();
        let mut out = vec![0u8; 1000];
        let mut failed = 0;
        for _ in 0..2000 {
            if codec.deflate(1, b"hello hello hello", &mut out).is_err() {
                failed += 1;
            }
        }
        assert!(
            (350..650).contains(&failed),
            "{failed} of 2000 failed at 25%"
        );
        assert_eq!(control.fired(), failed);
    }
}
