//! Damaged input, invalid jobs and failing codecs: the job fails with the right error and the engine
//! keeps working. These tests pin down fault containment, so they run without the software
//! fallback (`EngineOptions::without_fallback`); tests/engine_fallback.rs covers the fallback.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use deflatefs::engine::fault::{Fault, FaultAction, FaultBackend, FaultOp, FaultTrigger};
use deflatefs::engine::{
    stored_stream_len, Backend, BufferPool, Codec, CodecError, Completion, Done, Engine,
    EngineConfig, EngineError, EngineOptions, Job, Op, SoftwareBackend,
};

fn text(n: usize) -> Vec<u8> {
    b"a deflatefs engine test line, compressible enough.\n"
        .iter()
        .cycle()
        .take(n)
        .copied()
        .collect()
}

fn engine_with(backend: Arc<dyn Backend>, queues: usize) -> Arc<Engine> {
    Engine::with_options(
        EngineConfig {
            queues,
            queue_depth: 4,
            backend,
        },
        EngineOptions::without_fallback(),
    )
    .unwrap()
}

fn compress(engine: &Engine, pool: &Arc<BufferPool>, data: &[u8], level: u32) -> Completion {
    let [mut input, output] = pool
        .take_many([data.len(), stored_stream_len(data.len())])
        .unwrap();
    input.copy_from_slice(data);
    engine
        .submit_with_ticket(
            Op::Compress {
                level,
                headroom: 0,
                tailroom: 0,
            },
            input,
            output,
        )
        .wait()
}

fn decompress(
    engine: &Engine,
    pool: &Arc<BufferPool>,
    stream: &[u8],
    out_len: usize,
    expected_crc: u32,
    stored: bool,
) -> Completion {
    let mut input = pool.take(stream.len()).unwrap();
    input.copy_from_slice(stream);
    engine
        .submit_with_ticket(
            Op::Decompress {
                stream: 0..stream.len(),
                expected_crc,
                stored,
            },
            input,
            pool.take(out_len).unwrap(),
        )
        .wait()
}

/// Compresses `data` and checks it decompresses: the engine still works.
fn assert_engine_works(engine: &Engine, pool: &Arc<BufferPool>, data: &[u8]) {
    let c = compress(engine, pool, data, 6);
    let done = c.result.expect("compress after a failure");
    let d = decompress(
        engine,
        pool,
        &c.output[..done.len],
        data.len(),
        done.crc32,
        done.stored,
    );
    d.result.expect("decompress after a failure");
    assert!(d.output[..] == data[..]);
}

fn stream_of(c: &Completion) -> (Vec<u8>, Done) {
    let done = c.result.as_ref().unwrap();
    (c.output[..done.len].to_vec(), *done)
}

#[test]
fn corrupt_stream_or_wrong_crc_is_reported_as_corrupt() {
    let engine = engine_with(Arc::new(SoftwareBackend::new()), 1);
    let pool = BufferPool::new(8 << 20);
    let data = text(100_000);
    let (stream, done) = stream_of(&compress(&engine, &pool, &data, 6));
    assert!(!done.stored);
    let n = data.len();

    let mut cases: Vec<(&str, Vec<u8>, usize, u32, bool)> = vec![
        ("wrong crc", stream.clone(), n, done.crc32 ^ 1, false),
        (
            "truncated",
            stream[..stream.len() / 2].to_vec(),
            n,
            done.crc32,
            false,
        ),
        (
            "expects more bytes",
            stream.clone(),
            n + 1,
            done.crc32,
            false,
        ),
        (
            "expects fewer bytes",
            stream.clone(),
            n - 1,
            done.crc32,
            false,
        ),
        ("empty stream", Vec::new(), n, done.crc32, false),
        (
            "not stored but flagged stored",
            stream.clone(),
            n,
            done.crc32,
            true,
        ),
        ("garbage", vec![0xff; 1000], n, done.crc32, false),
    ];
    let mut flipped = Vec::new();
    for pos in 0..stream.len() {
        let mut bad = stream.clone();
        bad[pos] ^= 0x5a;
        flipped.push(bad);
    }

    let raw = text(70_000);
    let (stored_stream, stored_done) = stream_of(&compress(&engine, &pool, &raw, 0));
    assert!(stored_done.stored);
    let mut bad = stored_stream.clone();
    bad[10] ^= 1; // payload byte: only the crc can tell
    cases.push((
        "stored payload flipped",
        bad,
        raw.len(),
        stored_done.crc32,
        true,
    ));
    let mut bad = stored_stream.clone();
    bad[1] ^= 1; // LEN
    cases.push((
        "stored LEN damaged",
        bad,
        raw.len(),
        stored_done.crc32,
        true,
    ));
    cases.push((
        "stored truncated",
        stored_stream[..stored_stream.len() - 1].to_vec(),
        raw.len(),
        stored_done.crc32,
        true,
    ));

    for (what, bad, len, crc, stored) in cases {
        let d = decompress(&engine, &pool, &bad, len, crc, stored);
        match d.result {
            Err(EngineError::Corrupt(msg)) => assert!(!msg.is_empty()),
            other => panic!("{what}: expected Corrupt, got {other:?}"),
        }
        assert_engine_works(&engine, &pool, &data);
    }

    // A damaged byte is detected, or (in padding bits, or in a way that decodes to the same bytes)
    // harmless: never wrong data.
    let mut detected = 0;
    for bad in &flipped {
        let d = decompress(&engine, &pool, bad, n, done.crc32, false);
        match d.result {
            Err(EngineError::Corrupt(_)) => detected += 1,
            Ok(_) => assert!(d.output[..] == data[..]),
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(
        detected >= flipped.len() * 9 / 10,
        "{detected} of {}",
        flipped.len()
    );
    assert_engine_works(&engine, &pool, &data);
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn invalid_jobs_are_rejected_without_running() {
    let engine = engine_with(Arc::new(SoftwareBackend::new()), 1);
    let pool = BufferPool::new(1 << 20);
    let data = text(1000);

    let [input, output] = pool.take_many([1000, 100]).unwrap();
    let c = engine
        .submit_with_ticket(
            Op::Compress {
                level: 6,
                headroom: 60,
                tailroom: 41,
            },
            input,
            output,
        )
        .wait();
    assert!(
        matches!(c.result, Err(EngineError::InvalidJob(_))),
        "{:?}",
        c.result
    );

    let [input, output] = pool.take_many([100, 1000]).unwrap();
    let c = engine
        .submit_with_ticket(
            Op::Decompress {
                stream: 50..101,
                expected_crc: 0,
                stored: false,
            },
            input,
            output,
        )
        .wait();
    assert!(
        matches!(c.result, Err(EngineError::InvalidJob(_))),
        "{:?}",
        c.result
    );

    let c = compress(&engine, &pool, &data, 13);
    assert!(
        matches!(
            c.result,
            Err(EngineError::Codec(CodecError::InvalidLevel(13)))
        ),
        "{:?}",
        c.result
    );
    assert_engine_works(&engine, &pool, &data);
}

#[test]
fn output_smaller_than_stored_size_fails_only_when_deflate_does_not_fit() {
    let engine = engine_with(Arc::new(SoftwareBackend::new()), 1);
    let pool = BufferPool::new(1 << 20);
    let data = text(10_000);
    // Compressible: fits in a small buffer even though stored blocks would not.
    let [mut input, output] = pool.take_many([data.len(), 2000]).unwrap();
    input.copy_from_slice(&data);
    let op = Op::Compress {
        level: 6,
        headroom: 0,
        tailroom: 0,
    };
    let c = engine.submit_with_ticket(op.clone(), input, output).wait();
    assert!(!c.result.unwrap().stored);
    // Level 0 (stored) cannot fit.
    let [mut input, output] = pool.take_many([data.len(), 2000]).unwrap();
    input.copy_from_slice(&data);
    let c = engine
        .submit_with_ticket(
            Op::Compress {
                level: 0,
                headroom: 0,
                tailroom: 0,
            },
            input,
            output,
        )
        .wait();
    assert!(
        matches!(c.result, Err(EngineError::Codec(CodecError::NoSpace))),
        "{:?}",
        c.result
    );
}

#[test]
fn panicking_codec_fails_its_job_and_later_jobs_succeed() {
    let (backend, control) = FaultBackend::new(Arc::new(SoftwareBackend::new()));
    control.add(Fault {
        op: FaultOp::Deflate,
        trigger: FaultTrigger::InputPrefix(b"PANIC".to_vec()),
        action: FaultAction::Panic,
    });
    control.add(Fault {
        op: FaultOp::Inflate,
        trigger: FaultTrigger::NthCall(1),
        action: FaultAction::Panic,
    });
    let engine = engine_with(Arc::new(backend), 1);
    assert_eq!(engine.backend_name(), "fault(sw)");
    let pool = BufferPool::new(1 << 20);
    assert_eq!(control.opens(), 1);

    let mut poisoned = b"PANIC".to_vec();
    poisoned.extend(text(5000));
    let c = compress(&engine, &pool, &poisoned, 6);
    assert!(
        matches!(c.result, Err(EngineError::Codec(CodecError::Panicked(ref m))) if m.contains("injected")),
        "{:?}",
        c.result
    );
    assert_eq!(control.opens(), 2, "the codec is reopened after a panic");

    let data = text(5000);
    assert_engine_works(&engine, &pool, &data); // inflate call 0
    let (stream, done) = stream_of(&compress(&engine, &pool, &data, 6));
    let d = decompress(&engine, &pool, &stream, data.len(), done.crc32, false); // inflate call 1
    assert!(matches!(
        d.result,
        Err(EngineError::Codec(CodecError::Panicked(_)))
    ));
    assert_engine_works(&engine, &pool, &data);
    assert_eq!(control.fired(), 2);
    assert_eq!(engine.stats().jobs_failed(), 2);
    drop((c, d));
    assert_eq!(pool.in_use(), 0, "buffers of failed jobs come back");
}

/// A codec panics, and so does the backend when the worker asks it for a fresh codec: the job
/// still completes (with the codec's panic), and the worker, which keeps its old codec, runs
/// later jobs. Before the reopen was guarded, the second panic killed the worker with the job's
/// completion unsent, and its submitter waited forever.
#[test]
fn a_panic_reopening_the_codec_fails_the_job_and_keeps_the_worker() {
    let (backend, control) = FaultBackend::new(Arc::new(SoftwareBackend::new()));
    control.add(Fault {
        op: FaultOp::Deflate,
        trigger: FaultTrigger::InputPrefix(b"PANIC".to_vec()),
        action: FaultAction::Panic,
    });
    let engine = engine_with(Arc::new(backend), 1);
    let pool = BufferPool::new(1 << 20);
    control.panic_on_open(1);

    let mut poisoned = b"PANIC".to_vec();
    poisoned.extend(text(5000));
    let [mut input, output] = pool
        .take_many([poisoned.len(), stored_stream_len(poisoned.len())])
        .unwrap();
    input.copy_from_slice(&poisoned);
    let ticket = engine.submit_with_ticket(
        Op::Compress {
            level: 6,
            headroom: 0,
            tailroom: 0,
        },
        input,
        output,
    );
    let c = ticket
        .wait_timeout(std::time::Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("the job never completed: the worker died"));
    assert!(
        matches!(c.result, Err(EngineError::Codec(CodecError::Panicked(ref m))) if m.contains("injected Deflate")),
        "{:?}",
        c.result
    );
    assert_eq!(
        control.opens(),
        1,
        "the reopen panicked: the old codec stays"
    );
    drop(c);

    let data = text(5000);
    assert_engine_works(&engine, &pool, &data);
    assert_eq!(engine.stats().jobs_failed(), 1);
    assert_eq!(pool.in_use(), 0, "buffers of the failed job come back");
}

#[test]
fn failing_codec_error_is_passed_through() {
    let (backend, control) = FaultBackend::new(Arc::new(SoftwareBackend::new()));
    control.add(Fault {
        op: FaultOp::Deflate,
        trigger: FaultTrigger::NthCall(0),
        action: FaultAction::Fail(CodecError::Failed("device error".into())),
    });
    let engine = engine_with(Arc::new(backend), 1);
    let pool = BufferPool::new(1 << 20);
    let data = text(5000);
    let c = compress(&engine, &pool, &data, 6);
    assert!(matches!(
        c.result,
        Err(EngineError::Codec(CodecError::Failed(_)))
    ));
    assert_engine_works(&engine, &pool, &data);
}

#[test]
fn silently_corrupting_inflate_is_caught_by_the_crc() {
    let (backend, control) = FaultBackend::new(Arc::new(SoftwareBackend::new()));
    control.add(Fault {
        op: FaultOp::Inflate,
        trigger: FaultTrigger::NthCall(0),
        action: FaultAction::CorruptOutput,
    });
    let engine = engine_with(Arc::new(backend), 1);
    let pool = BufferPool::new(1 << 20);
    let data = text(5000);
    let (stream, done) = stream_of(&compress(&engine, &pool, &data, 6));
    let d = decompress(&engine, &pool, &stream, data.len(), done.crc32, false);
    assert!(
        matches!(d.result, Err(EngineError::Corrupt(_))),
        "{:?}",
        d.result
    );
    assert_engine_works(&engine, &pool, &data);
}

#[test]
fn panicking_callback_does_not_kill_the_worker() {
    let engine = engine_with(Arc::new(SoftwareBackend::new()), 1);
    let pool = BufferPool::new(1 << 20);
    let data = text(5000);
    let [mut input, output] = pool
        .take_many([data.len(), stored_stream_len(data.len())])
        .unwrap();
    input.copy_from_slice(&data);
    let ran = Arc::new(AtomicUsize::new(0));
    let ran2 = Arc::clone(&ran);
    engine.submit(vec![Job {
        op: Op::Compress {
            level: 1,
            headroom: 0,
            tailroom: 0,
        },
        input,
        output,
        on_complete: Box::new(move |_c| {
            ran2.fetch_add(1, Ordering::SeqCst);
            panic!("callback panic (expected by this test)");
        }),
    }]);
    assert_engine_works(&engine, &pool, &data);
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert_eq!(
        pool.in_use(),
        0,
        "the panicking callback's buffers come back"
    );
}

#[test]
fn corrupt_compressed_stream_from_a_non_reference_backend_is_caught_and_stored() {
    let (backend, control) = FaultBackend::new(Arc::new(SoftwareBackend::new()));
    control.add(Fault {
        op: FaultOp::Deflate,
        trigger: FaultTrigger::NthCall(0),
        action: FaultAction::CorruptOutput,
    });
    let engine = engine_with(Arc::new(backend), 1);
    let pool = BufferPool::new(1 << 20);
    let data = text(50_000);
    let c = compress(&engine, &pool, &data, 6);
    let (stream, done) = stream_of(&c);
    assert_eq!(control.fired(), 1);
    assert!(done.stored, "the bad stream was replaced by stored blocks");
    assert_eq!(engine.stats().queues[0].verify_failures, 1);
    let d = decompress(&engine, &pool, &stream, data.len(), done.crc32, true);
    assert!(d.result.is_ok() && d.output[..] == data[..]);
    // Later streams are compressed and verified normally.
    let (_, done) = stream_of(&compress(&engine, &pool, &data, 6));
    assert!(!done.stored);
    assert_eq!(engine.stats().queues[0].verify_failures, 1);
}

#[test]
fn without_verification_a_corrupt_stream_is_caught_by_the_crc_on_read() {
    let (backend, control) = FaultBackend::new(Arc::new(SoftwareBackend::new()));
    control.set_verification(false);
    control.add(Fault {
        op: FaultOp::Deflate,
        trigger: FaultTrigger::NthCall(0),
        action: FaultAction::CorruptOutput,
    });
    let engine = engine_with(Arc::new(backend), 1);
    let pool = BufferPool::new(1 << 20);
    let data = text(50_000);
    let (stream, done) = stream_of(&compress(&engine, &pool, &data, 6));
    assert!(!done.stored);
    assert_eq!(done.crc32, libdeflater::crc32(&data), "crc is of the input");
    let d = decompress(&engine, &pool, &stream, data.len(), done.crc32, false);
    assert!(
        matches!(d.result, Err(EngineError::Corrupt(_))),
        "{:?}",
        d.result
    );
}

/// A backend written outside the engine module: it never compresses (so every chunk is stored) and
/// panics when asked to inflate. Shows the traits are enough to plug a backend in.
struct StoreOnlyBackend;

struct StoreOnlyCodec;

impl Backend for StoreOnlyBackend {
    fn name(&self) -> String {
        "store-only".into()
    }
    fn open_queue(&self) -> Result<Box<dyn Codec>, CodecError> {
        Ok(Box::new(StoreOnlyCodec))
    }
}

impl Codec for StoreOnlyCodec {
    fn deflate(
        &mut self,
        _level: u32,
        _input: &[u8],
        _out: &mut [u8],
    ) -> Result<usize, CodecError> {
        Err(CodecError::NoSpace)
    }
    fn inflate(&mut self, _input: &[u8], _out: &mut [u8]) -> Result<usize, CodecError> {
        panic!("StoreOnlyCodec cannot inflate");
    }
    fn window_log2(&self) -> u8 {
        12
    }
}

#[test]
fn external_backend_plugs_in_and_its_panics_are_contained() {
    let engine = engine_with(Arc::new(StoreOnlyBackend), 2);
    assert_eq!(engine.backend_name(), "store-only");
    let pool = BufferPool::new(1 << 20);
    let data = text(100_000);
    for round in 0..3 {
        let (stream, done) = stream_of(&compress(&engine, &pool, &data, 9));
        assert!(done.stored);
        // Stored streams are copied, never inflated: works despite the codec.
        let d = decompress(&engine, &pool, &stream, data.len(), done.crc32, true);
        assert!(
            d.result.is_ok() && d.output[..] == data[..],
            "round {round}"
        );
        // Asking the codec to inflate panics: that job fails, the queue survives.
        let d = decompress(&engine, &pool, &stream, data.len(), done.crc32, false);
        assert!(
            matches!(d.result, Err(EngineError::Codec(CodecError::Panicked(_)))),
            "{:?}",
            d.result
        );
    }
    assert_eq!(engine.stats().jobs_failed(), 3);
}

/// A backend that counts the input bytes its codecs are asked to deflate.
struct CountingBackend(Arc<AtomicUsize>);

struct CountingCodec(Box<dyn Codec>, Arc<AtomicUsize>);

impl Backend for CountingBackend {
    fn name(&self) -> String {
        "counting".into()
    }
    fn open_queue(&self) -> Result<Box<dyn Codec>, CodecError> {
        Ok(Box::new(CountingCodec(
            SoftwareBackend::new().open_queue()?,
            self.0.clone(),
        )))
    }
    fn needs_verification(&self) -> bool {
        false
    }
}

impl Codec for CountingCodec {
    fn deflate(&mut self, level: u32, input: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
        self.1.fetch_add(input.len(), Ordering::SeqCst);
        self.0.deflate(level, input, out)
    }
    fn inflate(&mut self, input: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
        self.0.inflate(input, out)
    }
}

/// Early abort: a 128 KiB chunk of random bytes is stored after compressing two 8 KiB samples
/// (1/8 of the work), while compressible data, or data whose second half compresses, is
/// compressed whole.
#[test]
fn incompressible_input_is_stored_after_probing_an_eighth_of_it() {
    let pool = BufferPool::new(4 << 20);
    let counted = Arc::new(AtomicUsize::new(0));
    let engine = engine_with(Arc::new(CountingBackend(counted.clone())), 1);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let random: Vec<u8> = (0..128 << 10)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let c = compress(&engine, &pool, &random, 1);
    let done = c.result.as_ref().unwrap();
    assert!(done.stored);
    assert_eq!(counted.swap(0, Ordering::SeqCst), 16 << 10);
    assert_engine_works(&engine, &pool, &random);

    let mut half = random.clone();
    half[64 << 10..].copy_from_slice(&text(64 << 10));
    for (what, data) in [("text", text(128 << 10)), ("half text", half)] {
        counted.store(0, Ordering::SeqCst);
        let c = compress(&engine, &pool, &data, 1);
        let done = c.result.as_ref().unwrap();
        assert!(!done.stored, "{what}");
        assert!(
            counted.load(Ordering::SeqCst) >= data.len(),
            "{what}: compressed whole"
        );
        assert!(done.len < data.len() * 3 / 4, "{what}: {} bytes", done.len);
    }
}
