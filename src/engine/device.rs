//! A simulated DMA-queue device, for tests: a ring of N descriptor slots shared by every queue of
//! the engine, with an adjustable latency per job.
//!
//! Each codec call posts a descriptor to the ring; when all N slots are in flight the post is
//! refused (counted: that is the device's backpressure, a short `enqueue_burst` count) and the
//! queue worker waits for a completion to free a slot, exactly as a worker driving real hardware
//! would poll its completion ring. The work itself is done by the wrapped backend, then the
//! descriptor is held for the latency before it completes. Nothing in here grows without bound:
//! the tests that use it show that the whole pipeline stays bounded when the device is the
//! bottleneck (tests/engine_device.rs).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::backend::{Backend, Codec, CodecError};

/// The shared state of a simulated device: its ring and counters.
pub struct DeviceRing {
    slots: usize,
    latency_us: AtomicU64,
    in_flight: Mutex<usize>,
    freed: Condvar,
    max_in_flight: AtomicUsize,
    posted: AtomicU64,
    refused: AtomicU64,
}

impl DeviceRing {
    /// Descriptor slots of the ring.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Changes the per-job latency (takes effect for the next descriptor).
    pub fn set_latency(&self, latency: Duration) {
        self.latency_us
            .store(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// Largest number of descriptors in flight at once: never above [`DeviceRing::slots`].
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::Relaxed)
    }

    /// Descriptors in flight now.
    pub fn in_flight(&self) -> usize {
        *self.in_flight.lock()
    }

    /// Descriptors the device accepted.
    pub fn posted(&self) -> u64 {
        self.posted.load(Ordering::Relaxed)
    }

    /// Posts refused because the ring was full (each made a worker wait for a completion).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Takes a slot, waiting for a completion while the ring is full.
    fn post(&self) {
        let mut n = self.in_flight.lock();
        if *n >= self.slots {
            self.refused.fetch_add(1, Ordering::Relaxed);
            while *n >= self.slots {
                self.freed.wait(&mut n);
            }
        }
        *n += 1;
        self.max_in_flight.fetch_max(*n, Ordering::Relaxed);
        self.posted.fetch_add(1, Ordering::Relaxed);
    }

    /// Holds the descriptor for the latency, then completes it.
    fn complete(&self) {
        let us = self.latency_us.load(Ordering::Relaxed);
        if us > 0 {
            std::thread::sleep(Duration::from_micros(us));
        }
        *self.in_flight.lock() -= 1;
        self.freed.notify_one();
    }
}

/// A backend that runs `inner`'s codecs as jobs of a simulated device with a ring of `slots`
/// descriptors. Named "device(<inner>)". Not the reference: its output is verified.
pub struct DeviceBackend {
    inner: Arc<dyn Backend>,
    ring: Arc<DeviceRing>,
}

impl DeviceBackend {
    /// A device with `slots` descriptors (at least 1) and the given latency per job.
    pub fn new(
        inner: Arc<dyn Backend>,
        slots: usize,
        latency: Duration,
    ) -> (DeviceBackend, Arc<DeviceRing>) {
        let ring = Arc::new(DeviceRing {
            slots: slots.max(1),
            latency_us: AtomicU64::new(latency.as_micros() as u64),
            in_flight: Mutex::new(0),
            freed: Condvar::new(),
            max_in_flight: AtomicUsize::new(0),
            posted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        (
            DeviceBackend {
                inner,
                ring: Arc::clone(&ring),
            },
            ring,
        )
    }
}

impl Backend for DeviceBackend {
    fn name(&self) -> String {
        format!("device({})", self.inner.name())
    }

    fn open_queue(&self) -> Result<Box<dyn Codec>, CodecError> {
        Ok(Box::new(DeviceCodec {
            inner: self.inner.open_queue()?,
            ring: Arc::clone(&self.ring),
        }))
    }
}

struct DeviceCodec {
    inner: Box<dyn Codec>,
    ring: Arc<DeviceRing>,
}

/// Completes the descriptor even if the inner codec panics.
struct Slot<'a>(&'a DeviceRing);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.complete();
    }
}

impl Codec for DeviceCodec {
    fn deflate(&mut self, level: u32, input: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
        self.ring.post();
        let _slot = Slot(&self.ring);
        self.inner.deflate(level, input, out)
    }

    fn inflate(&mut self, input: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
        self.ring.post();
        let _slot = Slot(&self.ring);
        self.inner.inflate(input, out)
    }

    fn window_log2(&self) -> u8 {
        self.inner.window_log2()
    }
}
