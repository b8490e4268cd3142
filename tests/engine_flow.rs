//! Flow control: the pool bounds memory however much data streams through, and queues push back
//! with short submit counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use deflatefs::engine::fault::FaultBackend;
use deflatefs::engine::{
    stored_stream_len, BufferPool, Completion, Engine, EngineConfig, Job, Op, SoftwareBackend,
};

/// Deterministic chunk content, half compressible, half not, so both paths are exercised.
fn chunk_data(producer: u64, seq: u64, out: &mut [u8]) {
    let mut x = (producer << 32 | seq).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let compressible = seq.is_multiple_of(2);
    for (i, b) in out.iter_mut().enumerate() {
        if compressible {
            *b = b"flow control keeps memory bounded; "[i % 35] ^ (seq as u8 & 1);
        } else {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x >> 24) as u8;
        }
    }
}

fn sender_callback(
    tx: crossbeam_channel::Sender<Completion>,
) -> Box<dyn FnOnce(Completion) + Send> {
    // An unbounded send never blocks: safe in a completion callback.
    Box::new(move |c| tx.send(c).expect("receiver alive"))
}

/// Producers compress chunks, a relay turns each compressed chunk into a decompress job that reuses
/// the chunk's own input buffer as output, and a checker verifies the bytes. 16x the pool's capacity
/// flows through; the pool's high water mark never exceeds it.
#[test]
fn pool_bounds_memory_while_16x_capacity_streams_through() {
    const CAPACITY: usize = 1 << 20;
    const CHUNK: usize = 64 << 10;
    const PRODUCERS: u64 = 4;
    const CHUNKS_PER_PRODUCER: u64 = (16 * CAPACITY / CHUNK) as u64 / PRODUCERS;

    let engine = Engine::new(EngineConfig {
        queues: 2,
        queue_depth: 4,
        backend: Arc::new(SoftwareBackend::new()),
    })
    .unwrap();
    let pool = BufferPool::new(CAPACITY);
    let (compressed_tx, compressed_rx) = crossbeam_channel::unbounded::<Completion>();
    let (checked_tx, checked_rx) = crossbeam_channel::unbounded::<Completion>();

    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let engine = Arc::clone(&engine);
            let pool = Arc::clone(&pool);
            let tx = compressed_tx.clone();
            thread::spawn(move || {
                for seq in 0..CHUNKS_PER_PRODUCER {
                    // Input and output together: never hold one while waiting for the other.
                    let [mut input, output] =
                        pool.take_many([CHUNK, stored_stream_len(CHUNK)]).unwrap();
                    chunk_data(p, seq, &mut input);
                    input[..16].copy_from_slice(&[p.to_le_bytes(), seq.to_le_bytes()].concat());
                    engine.submit(vec![Job {
                        op: Op::Compress {
                            level: 1 + (seq % 9) as u32,
                            headroom: 0,
                            tailroom: 0,
                        },
                        input,
                        output,
                        on_complete: sender_callback(tx.clone()),
                    }]);
                }
            })
        })
        .collect();
    drop(compressed_tx);

    let relay = {
        let engine = Arc::clone(&engine);
        thread::spawn(move || {
            for c in compressed_rx {
                let done = c.result.expect("compress");
                // Decompress back into the original input buffer: no new memory needed.
                engine.submit(vec![Job {
                    op: Op::Decompress {
                        stream: 0..done.len,
                        expected_crc: done.crc32,
                        stored: done.stored,
                    },
                    input: c.output,
                    output: c.input,
                    on_complete: sender_callback(checked_tx.clone()),
                }]);
            }
        })
    };

    let verified = Arc::new(AtomicU64::new(0));
    let checker = {
        let verified = Arc::clone(&verified);
        thread::spawn(move || {
            let mut expected = vec![0u8; CHUNK];
            for c in checked_rx {
                c.result.expect("decompress");
                let out = &c.output[..];
                let p = u64::from_le_bytes(out[..8].try_into().unwrap());
                let seq = u64::from_le_bytes(out[8..16].try_into().unwrap());
                chunk_data(p, seq, &mut expected);
                assert!(out[16..] == expected[16..], "producer {p} chunk {seq}");
                verified.fetch_add(out.len() as u64, Ordering::SeqCst);
            }
        })
    };

    for p in producers {
        p.join().unwrap();
    }
    relay.join().unwrap();
    engine.shutdown(); // drains; drops the last checked_tx clones held by callbacks
    checker.join().unwrap();

    assert_eq!(verified.load(Ordering::SeqCst), 16 * CAPACITY as u64);
    assert!(pool.high_water() <= CAPACITY, "{}", pool.high_water());
    // The pool, not luck, was the limit: it filled up.
    assert!(pool.high_water() > CAPACITY / 2, "{}", pool.high_water());
    assert_eq!(pool.in_use(), 0);
    let stats = engine.stats();
    assert_eq!(
        stats.jobs_completed(),
        2 * 16 * CAPACITY as u64 / CHUNK as u64
    );
    assert_eq!(stats.jobs_failed(), 0);
    assert!(stats.queues.iter().all(|q| q.jobs_completed > 0));
    assert!(stats.max_occupancy() <= 4 + 1);
}

fn compress_job(
    pool: &Arc<BufferPool>,
    tag: u8,
    on_complete: Box<dyn FnOnce(Completion) + Send>,
) -> Job {
    let [mut input, output] = pool.take_many([4096, stored_stream_len(4096)]).unwrap();
    input.fill(b'a');
    input[0] = tag;
    Job {
        op: Op::Compress {
            level: 6,
            headroom: 0,
            tailroom: 0,
        },
        input,
        output,
        on_complete,
    }
}

/// With the worker held inside a job and a ring of one slot, try_submit accepts exactly one more job
/// and then returns short counts; everything accepted completes once the worker is released.
#[test]
fn queue_depth_one_try_submit_returns_short_counts() {
    let (backend, control) = FaultBackend::new(Arc::new(SoftwareBackend::new()));
    let engine = Engine::new(EngineConfig {
        queues: 1,
        queue_depth: 1,
        backend: Arc::new(backend),
    })
    .unwrap();
    let pool = BufferPool::new(1 << 20);
    let (tx, rx) = crossbeam_channel::unbounded();
    let job = |tag| compress_job(&pool, tag, sender_callback(tx.clone()));

    control.close_gate();
    let mut first = vec![job(0)];
    assert_eq!(engine.try_submit(0, &mut first), 1);
    assert!(first.is_empty());
    control.wait_for_gate_waiters(1); // the worker holds job 0

    let mut batch: Vec<Job> = (1..=4).map(job).collect();
    assert_eq!(engine.try_submit(0, &mut batch), 1, "one free slot");
    assert_eq!(batch.len(), 3);
    assert_eq!(batch[0].input[0], 2, "refused jobs stay, in order");
    assert_eq!(engine.try_submit(0, &mut batch), 0, "ring full");
    assert_eq!(batch.len(), 3);
    assert_eq!(engine.stats().queues[0].occupancy, 2);

    control.open_gate();
    let mut tags = vec![rx.recv().unwrap().input[0], rx.recv().unwrap().input[0]];
    // Keep offering the rest until all are accepted.
    while !batch.is_empty() {
        if engine.try_submit(0, &mut batch) == 0 {
            thread::yield_now();
        }
    }
    for _ in 0..3 {
        tags.push(rx.recv().unwrap().input[0]);
    }
    assert_eq!(tags, [0, 1, 2, 3, 4], "one queue completes in order");
    let stats = engine.stats();
    assert_eq!(stats.queues[0].max_occupancy, 2);
    assert_eq!(stats.jobs_completed(), 5);
}

/// submit() waits while every ring is full instead of failing, and spreads work over all queues.
#[test]
fn submit_waits_for_space_and_spreads_over_queues() {
    let (backend, control) = FaultBackend::new(Arc::new(SoftwareBackend::new()));
    let engine = Engine::new(EngineConfig {
        queues: 3,
        queue_depth: 2,
        backend: Arc::new(backend),
    })
    .unwrap();
    let pool = BufferPool::new(4 << 20);
    let (tx, rx) = crossbeam_channel::unbounded();

    control.close_gate();
    // 3 running + 3*2 queued fit; the 10th..20th must wait.
    let jobs: Vec<Job> = (0..20)
        .map(|i| compress_job(&pool, i, sender_callback(tx.clone())))
        .collect();
    let submitter = {
        let engine = Arc::clone(&engine);
        thread::spawn(move || engine.submit(jobs))
    };
    control.wait_for_gate_waiters(3);
    thread::sleep(std::time::Duration::from_millis(50));
    assert!(
        !submitter.is_finished(),
        "submit must wait while all rings are full"
    );
    let stats = engine.stats();
    assert!(stats.queues.iter().all(|q| q.occupancy == 3), "{stats:?}");

    control.open_gate();
    submitter.join().unwrap();
    let mut seen: Vec<u8> = (0..20).map(|_| rx.recv().unwrap().input[0]).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..20).collect::<Vec<u8>>());
    let stats = engine.stats();
    assert!(
        stats.queues.iter().all(|q| q.jobs_completed >= 3),
        "{stats:?}"
    );
    assert_eq!(stats.max_occupancy(), 3);
}
