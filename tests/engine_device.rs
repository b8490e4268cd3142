//! Flow control against a device: a simulated DMA device with a ring of N slots shared by all
//! queues and an adjustable latency is the bottleneck, and every buffer, ring and channel in the
//! pipeline stays bounded while 16x the pool's capacity streams through it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use deflatefs::engine::device::DeviceBackend;
use deflatefs::engine::{
    stored_stream_len, BufferPool, Completion, Engine, EngineConfig, Job, Op, SoftwareBackend,
};

fn chunk_data(tag: u64, out: &mut [u8]) {
    let mut x = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for (i, b) in out.iter_mut().enumerate() {
        if i % 64 < 48 {
            *b = b"a device ring of n slots; "[i % 26];
        } else {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    out[..8].copy_from_slice(&tag.to_le_bytes());
}

/// Tracks the length of an unbounded channel: every item in it holds pool buffers, so the pool
/// bounds it; the test checks that bound.
struct Depth(AtomicUsize, AtomicUsize);

impl Depth {
    fn push(&self) {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        self.1.fetch_max(n, Ordering::SeqCst);
    }
    fn pop(&self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
    fn max(&self) -> usize {
        self.1.load(Ordering::SeqCst)
    }
}

#[test]
fn slow_device_with_few_slots_throttles_producers_and_nothing_grows() {
    const CAPACITY: usize = 1 << 20;
    const CHUNK: usize = 32 << 10;
    const SLOTS: usize = 2;
    const QUEUES: usize = 4;
    const DEPTH: usize = 2;
    let total_chunks = (16 * CAPACITY / CHUNK) as u64;

    let (device, ring) = DeviceBackend::new(
        Arc::new(SoftwareBackend::new()),
        SLOTS,
        Duration::from_micros(300),
    );
    let engine = Engine::new(EngineConfig {
        queues: QUEUES,
        queue_depth: DEPTH,
        backend: Arc::new(device),
    })
    .unwrap();
    assert_eq!(engine.backend_name(), "device(sw)");
    let pool = BufferPool::new(CAPACITY);
    let compressed_depth = Arc::new(Depth(AtomicUsize::new(0), AtomicUsize::new(0)));
    let checked_depth = Arc::new(Depth(AtomicUsize::new(0), AtomicUsize::new(0)));
    let (ctx, crx) = crossbeam_channel::unbounded::<Completion>();
    let (vtx, vrx) = crossbeam_channel::unbounded::<Completion>();

    let producers: Vec<_> = (0..2u64)
        .map(|p| {
            let (engine, pool, ctx, depth) = (
                Arc::clone(&engine),
                Arc::clone(&pool),
                ctx.clone(),
                Arc::clone(&compressed_depth),
            );
            thread::spawn(move || {
                for i in (p..total_chunks).step_by(2) {
                    let [mut input, output] =
                        pool.take_many([CHUNK, stored_stream_len(CHUNK)]).unwrap();
                    chunk_data(i, &mut input);
                    let (tx, depth) = (ctx.clone(), Arc::clone(&depth));
                    engine.submit(vec![Job {
                        op: Op::Compress {
                            level: 1,
                            headroom: 0,
                            tailroom: 0,
                        },
                        input,
                        output,
                        on_complete: Box::new(move |c| {
                            depth.push();
                            tx.send(c).unwrap()
                        }),
                    }]);
                }
            })
        })
        .collect();
    drop(ctx);
    let relay = {
        let (engine, depth, checked) = (
            Arc::clone(&engine),
            Arc::clone(&compressed_depth),
            Arc::clone(&checked_depth),
        );
        thread::spawn(move || {
            for c in crx {
                depth.pop();
                let done = c.result.expect("compress");
                let (tx, checked) = (vtx.clone(), Arc::clone(&checked));
                engine.submit(vec![Job {
                    op: Op::Decompress {
                        stream: 0..done.len,
                        expected_crc: done.crc32,
                        stored: done.stored,
                    },
                    input: c.output,
                    output: c.input,
                    on_complete: Box::new(move |c| {
                        checked.push();
                        tx.send(c).unwrap()
                    }),
                }]);
            }
        })
    };
    let mut expected = vec![0u8; CHUNK];
    let mut seen = 0u64;
    let mut sum = 0u64;
    let mut max_in_flight_during = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen < total_chunks {
        let c = vrx
            .recv_deadline(deadline)
            .expect("the pipeline keeps moving");
        checked_depth.pop();
        c.result.expect("decompress");
        let tag = u64::from_le_bytes(c.output[..8].try_into().unwrap());
        chunk_data(tag, &mut expected);
        assert!(c.output[..] == expected[..], "chunk {tag}");
        seen += 1;
        sum += tag;
        max_in_flight_during = max_in_flight_during.max(ring.in_flight());
        assert!(pool.in_use() <= CAPACITY);
    }
    for p in producers {
        p.join().unwrap();
    }
    relay.join().unwrap();
    assert_eq!(
        sum,
        total_chunks * (total_chunks - 1) / 2,
        "each chunk once"
    );

    // The device was the bottleneck: its ring filled and pushed back...
    assert_eq!(
        ring.max_in_flight(),
        SLOTS,
        "the ring never holds more than its slots"
    );
    assert!(max_in_flight_during <= SLOTS);
    assert!(ring.refused() > 0, "a full ring made workers wait");
    assert_eq!(ring.posted(), 2 * total_chunks);
    // ... and nothing else grew: engine rings, pool, and the channels between stages.
    let stats = engine.stats();
    assert!(stats.max_occupancy() <= DEPTH + 1, "{stats:?}");
    assert!(pool.high_water() <= CAPACITY);
    assert!(
        pool.high_water() > CAPACITY / 2,
        "the pool, not luck, was the limit"
    );
    let per_job = BufferPool::new(CAPACITY)
        .take_many([CHUNK, stored_stream_len(CHUNK)])
        .unwrap()
        .iter()
        .map(|b| b.capacity())
        .sum::<usize>();
    let bound = CAPACITY / per_job;
    assert!(
        compressed_depth.max() <= bound,
        "{}",
        compressed_depth.max()
    );
    assert!(checked_depth.max() <= bound, "{}", checked_depth.max());
    assert_eq!(stats.faults(), 0);
    assert_eq!(stats.jobs_failed(), 0);
    engine.shutdown();
    assert_eq!(ring.in_flight(), 0);
}

/// The latency can be changed while jobs run, and a slower device slows the submitter down
/// instead of letting work pile up.
#[test]
fn device_latency_is_adjustable_and_paces_the_submitter() {
    let (device, ring) = DeviceBackend::new(Arc::new(SoftwareBackend::new()), 1, Duration::ZERO);
    let engine = Engine::new(EngineConfig {
        queues: 2,
        queue_depth: 1,
        backend: Arc::new(device),
    })
    .unwrap();
    let pool = BufferPool::new(1 << 20);
    let run = |n: usize| {
        let start = Instant::now();
        let tickets: Vec<_> = (0..n)
            .map(|i| {
                let [mut input, output] = pool.take_many([4096, stored_stream_len(4096)]).unwrap();
                input.fill(i as u8);
                engine.submit_with_ticket(
                    Op::Compress {
                        level: 1,
                        headroom: 0,
                        tailroom: 0,
                    },
                    input,
                    output,
                )
            })
            .collect();
        for t in tickets {
            t.wait().result.unwrap();
        }
        start.elapsed()
    };
    let fast = run(20);
    ring.set_latency(Duration::from_millis(10));
    let slow = run(20);
    // One slot: 20 jobs take at least 20 latencies.
    assert!(slow >= Duration::from_millis(200), "{slow:?}");
    assert!(slow > fast, "{slow:?} vs {fast:?}");
    assert_eq!(ring.max_in_flight(), 1);
    assert!(engine.stats().max_occupancy() <= 2);
}
