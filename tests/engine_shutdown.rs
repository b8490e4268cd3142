//! Shutdown: accepted jobs are finished, later submissions fail with `Shutdown`.

use std::sync::Arc;
use std::thread;

use deflatefs::engine::fault::FaultBackend;
use deflatefs::engine::{
    stored_stream_len, BufferPool, Completion, Engine, EngineConfig, EngineError, Job, Op,
    SoftwareBackend,
};

fn compress_op() -> Op {
    Op::Compress {
        level: 6,
        headroom: 0,
        tailroom: 0,
    }
}

fn job(pool: &Arc<BufferPool>, tx: &crossbeam_channel::Sender<Completion>) -> Job {
    let [mut input, output] = pool.take_many([8192, stored_stream_len(8192)]).unwrap();
    input.fill(b'z');
    let tx = tx.clone();
    Job {
        op: compress_op(),
        input,
        output,
        on_complete: Box::new(move |c| tx.send(c).unwrap()),
    }
}

#[test]
fn shutdown_drains_accepted_jobs() {
    let (backend, control) = FaultBackend::new(Arc::new(SoftwareBackend::new()));
    let engine = Engine::new(EngineConfig {
        queues: 2,
        queue_depth: 8,
        backend: Arc::new(backend),
    })
    .unwrap();
    let pool = BufferPool::new(4 << 20);
    let (tx, rx) = crossbeam_channel::unbounded();

    control.close_gate();
    let mut accepted = 0;
    for q in 0..2 {
        let mut jobs: Vec<Job> = (0..9).map(|_| job(&pool, &tx)).collect();
        accepted += engine.try_submit(q, &mut jobs);
    }
    control.wait_for_gate_waiters(2);
    assert!(accepted >= 16, "{accepted}");

    let shutter = {
        let engine = Arc::clone(&engine);
        thread::spawn(move || engine.shutdown())
    };
    thread::sleep(std::time::Duration::from_millis(20));
    assert!(!shutter.is_finished(), "shutdown waits for accepted jobs");
    control.open_gate();
    shutter.join().unwrap();

    let done: Vec<Completion> = rx.try_iter().collect();
    assert_eq!(done.len(), accepted);
    assert!(done.iter().all(|c| c.result.is_ok()));
    assert_eq!(engine.stats().jobs_completed(), accepted as u64);
}

#[test]
fn submissions_after_shutdown_complete_with_shutdown_error() {
    let engine = Engine::new(EngineConfig {
        queues: 1,
        queue_depth: 2,
        backend: Arc::new(SoftwareBackend::new()),
    })
    .unwrap();
    let pool = BufferPool::new(1 << 20);
    engine.shutdown();
    engine.shutdown(); // idempotent

    let [input, output] = pool.take_many([100, 200]).unwrap();
    let c = engine
        .submit_with_ticket(compress_op(), input, output)
        .wait();
    assert!(matches!(c.result, Err(EngineError::Shutdown)));

    let (tx, rx) = crossbeam_channel::unbounded();
    let mut jobs: Vec<Job> = (0..5).map(|_| job(&pool, &tx)).collect();
    assert_eq!(engine.try_submit(0, &mut jobs), 5);
    assert!(jobs.is_empty());
    engine.submit((0..3).map(|_| job(&pool, &tx)).collect());
    let refused: Vec<Completion> = rx.try_iter().collect();
    assert_eq!(refused.len(), 8);
    assert!(refused
        .iter()
        .all(|c| matches!(c.result, Err(EngineError::Shutdown))));
    drop((c, refused));
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn submitter_waiting_for_space_is_released_by_shutdown() {
    let (backend, control) = FaultBackend::new(Arc::new(SoftwareBackend::new()));
    let engine = Engine::new(EngineConfig {
        queues: 1,
        queue_depth: 1,
        backend: Arc::new(backend),
    })
    .unwrap();
    let pool = BufferPool::new(1 << 20);
    let (tx, rx) = crossbeam_channel::unbounded();
    control.close_gate();
    let jobs: Vec<Job> = (0..5).map(|_| job(&pool, &tx)).collect();
    let submitter = {
        let engine = Arc::clone(&engine);
        thread::spawn(move || engine.submit(jobs))
    };
    control.wait_for_gate_waiters(1);
    while engine.stats().queues[0].occupancy < 2 {
        thread::yield_now(); // until the ring's one slot is taken too
    }
    let shutter = {
        let engine = Arc::clone(&engine);
        thread::spawn(move || engine.shutdown())
    };
    // The waiting submitter sees the shutdown and completes its remaining jobs with an error.
    submitter.join().unwrap();
    control.open_gate();
    shutter.join().unwrap();
    let results: Vec<Completion> = rx.try_iter().collect();
    assert_eq!(results.len(), 5);
    let ok = results.iter().filter(|c| c.result.is_ok()).count();
    assert_eq!(ok, 2, "the running job and the queued one finish");
    assert!(results
        .iter()
        .filter(|c| c.result.is_err())
        .all(|c| matches!(c.result, Err(EngineError::Shutdown))));
}

#[test]
fn dropping_the_engine_joins_its_workers() {
    let engine = Engine::new(EngineConfig {
        queues: 4,
        queue_depth: 2,
        backend: Arc::new(SoftwareBackend::new()),
    })
    .unwrap();
    let pool = BufferPool::new(1 << 20);
    let (tx, rx) = crossbeam_channel::unbounded();
    engine.submit((0..10).map(|_| job(&pool, &tx)).collect());
    drop(engine);
    assert_eq!(rx.try_iter().filter(|c| c.result.is_ok()).count(), 10);
}
