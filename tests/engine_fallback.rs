//! A backend that is not the reference gets jobs wrong: each such job is redone in software, the
//! fault is counted, and after `fault_limit` faults the backend is disabled. The submitter only
//! sees the right result.

use std::sync::Arc;

use deflatefs::engine::fault::{
    Fault, FaultAction, FaultBackend, FaultControl, FaultOp, FaultTrigger,
};
use deflatefs::engine::{
    stored_stream_len, BufferPool, CodecError, Completion, Engine, EngineConfig, EngineError,
    EngineOptions, Op, SoftwareBackend,
};

fn text(n: usize) -> Vec<u8> {
    b"fallback to software when the device gets it wrong\n"
        .iter()
        .cycle()
        .take(n)
        .copied()
        .collect()
}

fn faulty(options: EngineOptions) -> (Arc<Engine>, Arc<FaultControl>) {
    let (backend, control) = FaultBackend::new(Arc::new(SoftwareBackend::new()));
    let engine = Engine::with_options(
        EngineConfig {
            queues: 1,
            queue_depth: 4,
            backend: Arc::new(backend),
        },
        options,
    )
    .unwrap();
    (engine, control)
}

fn compress(engine: &Engine, pool: &Arc<BufferPool>, data: &[u8]) -> Completion {
    let [mut input, output] = pool
        .take_many([data.len(), stored_stream_len(data.len())])
        .unwrap();
    input.copy_from_slice(data);
    let op = Op::Compress {
        level: 6,
        headroom: 0,
        tailroom: 0,
    };
    engine.submit_with_ticket(op, input, output).wait()
}

fn decompress(engine: &Engine, pool: &Arc<BufferPool>, c: &Completion, len: usize) -> Completion {
    let done = c.result.as_ref().unwrap();
    let mut input = pool.take(done.len).unwrap();
    input.copy_from_slice(&c.output[..done.len]);
    let op = Op::Decompress {
        stream: 0..done.len,
        expected_crc: done.crc32,
        stored: done.stored,
    };
    engine
        .submit_with_ticket(op, input, pool.take(len).unwrap())
        .wait()
}

/// Compresses and decompresses `data`; asserts the round trip is right; returns whether the
/// stream was stored.
fn round_trip(engine: &Engine, pool: &Arc<BufferPool>, data: &[u8]) -> bool {
    let c = compress(engine, pool, data);
    let stored = c.result.as_ref().expect("compress").stored;
    let d = decompress(engine, pool, &c, data.len());
    d.result.expect("decompress");
    assert!(d.output[..] == data[..]);
    stored
}

#[test]
fn corrupt_stream_is_recompressed_in_software_not_stored() {
    let (engine, control) = faulty(EngineOptions::default());
    control.add(Fault {
        op: FaultOp::Deflate,
        trigger: FaultTrigger::NthCall(0),
        action: FaultAction::CorruptOutput,
    });
    let pool = BufferPool::new(1 << 20);
    let data = text(60_000);
    assert!(
        !round_trip(&engine, &pool, &data),
        "compressed, by software"
    );
    let s = engine.stats();
    assert_eq!(
        (s.faults(), s.verify_failures(), s.software_jobs()),
        (1, 1, 1)
    );
    assert!(!s.backend_disabled);
    assert!(engine.verifies() && engine.falls_back());
}

#[test]
fn codec_errors_and_panics_are_redone_in_software() {
    let (engine, control) = faulty(EngineOptions::default());
    control.add(Fault {
        op: FaultOp::Deflate,
        trigger: FaultTrigger::NthCall(0),
        action: FaultAction::Fail(CodecError::Failed("device error".into())),
    });
    control.add(Fault {
        op: FaultOp::Deflate,
        trigger: FaultTrigger::NthCall(1),
        action: FaultAction::Panic,
    });
    control.add(Fault {
        op: FaultOp::Inflate,
        trigger: FaultTrigger::NthCall(0),
        action: FaultAction::Panic,
    });
    let pool = BufferPool::new(1 << 20);
    let data = text(30_000);
    assert!(!round_trip(&engine, &pool, &data)); // deflate 0 fails, inflate 0 panics
    assert!(!round_trip(&engine, &pool, &data)); // deflate 1 panics
    assert!(!round_trip(&engine, &pool, &data)); // clean
    let s = engine.stats();
    assert_eq!(s.faults(), 3);
    assert_eq!(s.jobs_failed(), 0);
    assert_eq!(control.opens(), 3, "the codec is reopened after each panic");
}

#[test]
fn inflate_faults_are_retried_in_software_but_corrupt_data_still_fails() {
    let (engine, control) = faulty(EngineOptions::default());
    control.add(Fault {
        op: FaultOp::Inflate,
        trigger: FaultTrigger::NthCall(0),
        action: FaultAction::CorruptOutput,
    });
    let pool = BufferPool::new(1 << 20);
    let data = text(30_000);
    assert!(!round_trip(&engine, &pool, &data));
    assert_eq!(engine.stats().faults(), 1);

    // Damaged data is not the backend's fault: software fails too, and the job fails.
    let mut c = compress(&engine, &pool, &data);
    let len = c.result.as_ref().unwrap().len;
    c.output[len / 2] ^= 0x55;
    let d = decompress(&engine, &pool, &c, data.len());
    assert!(
        matches!(d.result, Err(EngineError::Corrupt(_))),
        "{:?}",
        d.result
    );
    assert_eq!(engine.stats().faults(), 1, "no fault counted for bad data");
}

#[test]
fn backend_is_disabled_after_the_fault_limit() {
    let (engine, control) = faulty(EngineOptions {
        fault_limit: 3,
        ..EngineOptions::default()
    });
    control.add(Fault {
        op: FaultOp::Deflate,
        trigger: FaultTrigger::InputPrefix(b"fallback".to_vec()),
        action: FaultAction::CorruptOutput,
    });
    let pool = BufferPool::new(1 << 20);
    let data = text(20_000);
    for _ in 0..3 {
        assert!(!round_trip(&engine, &pool, &data));
    }
    let s = engine.stats();
    assert!(s.backend_disabled);
    assert_eq!(s.faults(), 3);
    // From now on the backend is not called at all.
    let fired = control.fired();
    control.add(Fault {
        op: FaultOp::Inflate,
        trigger: FaultTrigger::InputPrefix(vec![]),
        action: FaultAction::Panic,
    });
    for _ in 0..5 {
        assert!(!round_trip(&engine, &pool, &data));
    }
    assert_eq!(control.fired(), fired);
    let s = engine.stats();
    assert_eq!(s.faults(), 3);
    // Three recompressions, the third round's decompression (disabled by then), ten more jobs.
    assert_eq!(s.software_jobs(), 3 + 1 + 10);
}

#[test]
fn fault_limit_zero_never_disables() {
    let (engine, control) = faulty(EngineOptions {
        fault_limit: 0,
        ..EngineOptions::default()
    });
    control.add(Fault {
        op: FaultOp::Deflate,
        trigger: FaultTrigger::InputPrefix(b"fallback".to_vec()),
        action: FaultAction::CorruptOutput,
    });
    let pool = BufferPool::new(1 << 20);
    for _ in 0..20 {
        round_trip(&engine, &pool, &text(10_000));
    }
    let s = engine.stats();
    assert_eq!(s.faults(), 20);
    assert!(!s.backend_disabled);
}

#[test]
fn with_verification_off_a_corrupt_stream_reaches_the_reader_and_fails_its_crc() {
    let (engine, control) = faulty(EngineOptions {
        verify: false,
        ..EngineOptions::default()
    });
    assert!(!engine.verifies() && engine.falls_back());
    control.add(Fault {
        op: FaultOp::Deflate,
        trigger: FaultTrigger::NthCall(0),
        action: FaultAction::CorruptOutput,
    });
    let pool = BufferPool::new(1 << 20);
    let data = text(30_000);
    let c = compress(&engine, &pool, &data);
    assert!(!c.result.as_ref().unwrap().stored);
    let d = decompress(&engine, &pool, &c, data.len());
    assert!(
        matches!(d.result, Err(EngineError::Corrupt(_))),
        "{:?}",
        d.result
    );
}

#[test]
fn the_reference_backend_is_neither_verified_nor_backed() {
    let engine = Engine::new(EngineConfig {
        queues: 1,
        queue_depth: 1,
        backend: Arc::new(SoftwareBackend::new()),
    })
    .unwrap();
    assert!(!engine.verifies() && !engine.falls_back());
}
