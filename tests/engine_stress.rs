//! Many submitters, mixed operations, injected faults, a shutdown in the middle of traffic: every job
//! completes exactly once, no buffer leaks, and every successful result is right.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use deflatefs::engine::fault::{Fault, FaultAction, FaultBackend, FaultOp, FaultTrigger};
use deflatefs::engine::{
    stored_stream_len, BufferPool, CodecError, Completion, Engine, EngineConfig, EngineError,
    EngineOptions, Job, Op, SoftwareBackend,
};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn fill(rng: &mut Rng, buf: &mut [u8]) {
    let kind = rng.below(3);
    for (i, b) in buf.iter_mut().enumerate() {
        *b = match kind {
            0 => 0,
            1 => b"stress test words repeat "[i % 25],
            _ => rng.next() as u8,
        };
    }
}

#[test]
fn every_job_completes_exactly_once_under_injected_faults() {
    let (backend, control) = FaultBackend::new(Arc::new(SoftwareBackend::new()));
    for n in (3..400).step_by(37) {
        let action = match n % 3 {
            0 => FaultAction::Panic,
            1 => FaultAction::Fail(CodecError::Failed("injected".into())),
            _ => FaultAction::CorruptOutput,
        };
        for op in [FaultOp::Deflate, FaultOp::Inflate] {
            control.add(Fault {
                op,
                trigger: FaultTrigger::NthCall(n),
                action: action.clone(),
            });
        }
    }
    // Containment without repair: the faults must surface as failed jobs, never as wrong data.
    let engine = Engine::with_options(
        EngineConfig {
            queues: 3,
            queue_depth: 2,
            backend: Arc::new(backend),
        },
        EngineOptions::without_fallback(),
    )
    .unwrap();
    let pool = BufferPool::new(2 << 20);
    let submitted = Arc::new(AtomicUsize::new(0));
    let completed = Arc::new(AtomicUsize::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let (tx, rx) = crossbeam_channel::unbounded::<(Completion, Vec<u8>)>();

    let submitters: Vec<_> = (0..4u64)
        .map(|t| {
            let engine = Arc::clone(&engine);
            let pool = Arc::clone(&pool);
            let submitted = Arc::clone(&submitted);
            let tx = tx.clone();
            thread::spawn(move || {
                let mut rng = Rng(0x1234_5678 + t * 7919);
                for i in 0..150 {
                    let len = rng.below(80_000) as usize;
                    let [mut input, output] =
                        pool.take_many([len, stored_stream_len(len)]).unwrap();
                    fill(&mut rng, &mut input);
                    let original = input.to_vec();
                    let tx = tx.clone();
                    let job = Job {
                        op: Op::Compress {
                            level: rng.below(13) as u32,
                            headroom: 0,
                            tailroom: 0,
                        },
                        input,
                        output,
                        on_complete: Box::new(move |c| tx.send((c, original)).unwrap()),
                    };
                    submitted.fetch_add(1, Ordering::SeqCst);
                    if i % 2 == 0 {
                        engine.submit(vec![job]);
                    } else {
                        let mut jobs = vec![job];
                        let q = rng.below(engine.queue_count() as u64) as usize;
                        while engine.try_submit(q, &mut jobs) == 0 {
                            thread::yield_now();
                        }
                    }
                }
            })
        })
        .collect();
    drop(tx);

    // The relay turns each compressed chunk into a decompress job (reusing both buffers); the
    // checker verifies the decompressed bytes and so returns the buffers to the pool.
    let (dtx, drx) = crossbeam_channel::unbounded::<(Completion, Vec<u8>)>();
    let relay = {
        let engine = Arc::clone(&engine);
        let completed = Arc::clone(&completed);
        let wrong = Arc::clone(&wrong);
        thread::spawn(move || {
            let mut relayed = 0usize;
            for (c, original) in rx {
                completed.fetch_add(1, Ordering::SeqCst);
                let Ok(done) = c.result else {
                    continue;
                };
                if done.crc32 != libdeflater::crc32(&original) {
                    wrong.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let dtx = dtx.clone();
                relayed += 1;
                engine.submit(vec![Job {
                    op: Op::Decompress {
                        stream: 0..done.len,
                        expected_crc: done.crc32,
                        stored: done.stored,
                    },
                    input: c.output,
                    output: c.input,
                    on_complete: Box::new(move |c| dtx.send((c, original)).unwrap()),
                }]);
            }
            relayed
        })
    };
    let checker = {
        let wrong = Arc::clone(&wrong);
        thread::spawn(move || {
            let mut decompressed = 0usize;
            for (c, original) in drx {
                decompressed += 1;
                match c.result {
                    Ok(_) if c.output[..] == original[..] => {}
                    Ok(_) => {
                        wrong.fetch_add(1, Ordering::SeqCst);
                    }
                    // Injected faults, or a silently corrupted stream caught by the crc.
                    Err(EngineError::Codec(_) | EngineError::Corrupt(_)) => {}
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            decompressed
        })
    };

    for s in submitters {
        s.join().unwrap();
    }
    let decompress_jobs = relay.join().unwrap();
    engine.shutdown(); // runs the last decompress jobs; their callbacks drop the last senders
    assert_eq!(checker.join().unwrap(), decompress_jobs);
    assert_eq!(
        wrong.load(Ordering::SeqCst),
        0,
        "a wrong result was reported as success"
    );
    assert_eq!(
        completed.load(Ordering::SeqCst),
        submitted.load(Ordering::SeqCst)
    );
    assert!(control.fired() > 0);
    let stats = engine.stats();
    assert_eq!(stats.jobs_completed(), 600 + decompress_jobs as u64);
    assert_eq!(pool.in_use(), 0, "every buffer came back");
    assert!(pool.high_water() <= pool.capacity());
}

#[test]
fn shutdown_in_the_middle_completes_every_job_exactly_once() {
    let engine = Engine::new(EngineConfig {
        queues: 2,
        queue_depth: 3,
        backend: Arc::new(SoftwareBackend::new()),
    })
    .unwrap();
    let pool = BufferPool::new(1 << 20);
    let ok = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let submitters: Vec<_> = (0..4u64)
        .map(|t| {
            let engine = Arc::clone(&engine);
            let pool = Arc::clone(&pool);
            let (ok, refused) = (Arc::clone(&ok), Arc::clone(&refused));
            thread::spawn(move || {
                let mut rng = Rng(99 + t);
                for _ in 0..300 {
                    let len = rng.below(20_000) as usize;
                    let [mut input, output] =
                        pool.take_many([len, stored_stream_len(len)]).unwrap();
                    fill(&mut rng, &mut input);
                    let (ok, refused) = (Arc::clone(&ok), Arc::clone(&refused));
                    engine.submit(vec![Job {
                        op: Op::Compress {
                            level: 1 + rng.below(6) as u32,
                            headroom: 0,
                            tailroom: 0,
                        },
                        input,
                        output,
                        on_complete: Box::new(move |c| match c.result {
                            Ok(_) => {
                                ok.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(EngineError::Shutdown) => {
                                refused.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => panic!("unexpected {e}"),
                        }),
                    }]);
                }
            })
        })
        .collect();
    while engine.stats().jobs_completed() < 100 {
        thread::yield_now();
    }
    engine.shutdown();
    let completed_at_shutdown = engine.stats().jobs_completed();
    for s in submitters {
        s.join().unwrap();
    }
    let (ok, refused) = (ok.load(Ordering::SeqCst), refused.load(Ordering::SeqCst));
    assert_eq!(ok + refused, 1200);
    assert_eq!(
        ok as u64, completed_at_shutdown,
        "nothing runs after shutdown returns"
    );
    assert_eq!(engine.stats().jobs_completed(), completed_at_shutdown);
    assert_eq!(pool.in_use(), 0);
}
