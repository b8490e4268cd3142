//! Compress/decompress round trips through the engine with the libdeflate backend.

use std::io::Read;
use std::sync::Arc;

use deflatefs::engine::{
    stored_stream_len, BufferPool, Completion, Engine, EngineConfig, Op, SoftwareBackend, Ticket,
};

const SIZES: [usize; 8] = [0, 1, 4095, 4096, 65535, 65536, 131072, 4 << 20];

fn engine(queues: usize) -> Arc<Engine> {
    Engine::new(EngineConfig {
        queues,
        queue_depth: 8,
        backend: Arc::new(SoftwareBackend::new()),
    })
    .unwrap()
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

fn text_bytes(n: usize) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "engine",
        "queue",
        "deflate",
        "chunk",
        "gzip",
        "the",
        "of",
        "buffer",
        "pool",
        "and",
        "completion",
        "stream",
    ];
    let mut out = Vec::with_capacity(n + 16);
    let mut i = 0usize;
    while out.len() < n {
        out.extend_from_slice(WORDS[(i * 7 + i / 5) % WORDS.len()].as_bytes());
        out.push(if i % 11 == 10 { b'\n' } else { b' ' });
        i += 1;
    }
    out.truncate(n);
    out
}

fn data_kinds(n: usize) -> [(&'static str, Vec<u8>); 3] {
    [
        ("random", random_bytes(n, n as u64 + 1)),
        ("zeros", vec![0u8; n]),
        ("text", text_bytes(n)),
    ]
}

const HEAD: usize = 10;
const TAIL: usize = 8;

fn start_compress(engine: &Engine, pool: &Arc<BufferPool>, data: &[u8], level: u32) -> Ticket {
    let [mut input, output] = pool
        .take_many([data.len(), HEAD + stored_stream_len(data.len()) + TAIL])
        .unwrap();
    input.copy_from_slice(data);
    engine.submit_with_ticket(
        Op::Compress {
            level,
            headroom: HEAD,
            tailroom: TAIL,
        },
        input,
        output,
    )
}

fn decompress(
    engine: &Engine,
    pool: &Arc<BufferPool>,
    compressed: &Completion,
    len: usize,
) -> Completion {
    let done = compressed.result.as_ref().unwrap();
    let mut input = pool.take(done.len).unwrap();
    input.copy_from_slice(&compressed.output[HEAD..HEAD + done.len]);
    let output = pool.take(len).unwrap();
    engine
        .submit_with_ticket(
            Op::Decompress {
                stream: 0..done.len,
                expected_crc: done.crc32,
                stored: done.stored,
            },
            input,
            output,
        )
        .wait()
}

#[test]
fn round_trip_every_level_size_and_data_kind() {
    let engine = engine(2);
    let pool = BufferPool::new(256 << 20);
    for size in SIZES {
        for (kind, data) in data_kinds(size) {
            // All levels of one (size, kind) in flight at once, over both queues.
            let tickets: Vec<_> = (0..=12u32)
                .map(|level| (level, start_compress(&engine, &pool, &data, level)))
                .collect();
            for (level, ticket) in tickets {
                let c = ticket.wait();
                let done = *c.result.as_ref().unwrap_or_else(|e| {
                    panic!("{kind} size {size} level {level}: compress failed: {e}")
                });
                assert_eq!(done.crc32, libdeflater::crc32(&data));
                assert!(done.len <= stored_stream_len(size), "{kind} {size} {level}");
                if level == 0 {
                    assert!(done.stored);
                }
                if done.stored {
                    assert_eq!(done.len, stored_stream_len(size));
                    assert_eq!((done.level, done.window_log2), (0, 0));
                } else {
                    assert_eq!(done.level as u32, level);
                    assert_eq!(done.window_log2, 15);
                }
                let d = decompress(&engine, &pool, &c, size);
                let dd = d.result.as_ref().unwrap_or_else(|e| {
                    panic!("{kind} size {size} level {level}: decompress failed: {e}")
                });
                assert_eq!(dd.len, size);
                assert_eq!(dd.stored, done.stored);
                assert!(d.output[..] == data[..], "{kind} size {size} level {level}");
            }
        }
    }
    let stats = engine.stats();
    assert_eq!(stats.jobs_failed(), 0);
    assert_eq!(stats.jobs_completed(), 2 * 13 * 3 * SIZES.len() as u64);
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn compressible_data_is_compressed() {
    let engine = engine(1);
    let pool = BufferPool::new(4 << 20);
    for level in 1..=12 {
        for data in [vec![0u8; 131072], text_bytes(131072)] {
            let c = start_compress(&engine, &pool, &data, level).wait();
            let done = c.result.unwrap();
            assert!(!done.stored, "level {level}");
            assert!(done.len < data.len() / 2, "level {level}: {}", done.len);
        }
    }
}

#[test]
fn incompressible_data_is_stored_and_read_back_by_copy() {
    let engine = engine(1);
    let pool = BufferPool::new(4 << 20);
    for size in [1usize, 100, 65535, 65536, 131072] {
        let data = random_bytes(size, 7);
        for level in [1, 6, 12] {
            let c = start_compress(&engine, &pool, &data, level).wait();
            let done = *c.result.as_ref().unwrap();
            assert!(done.stored, "size {size} level {level}");
            assert_eq!(done.len, stored_stream_len(size));
            let d = decompress(&engine, &pool, &c, size);
            assert!(d.result.as_ref().unwrap().stored);
            assert!(d.output[..] == data[..]);

            // The stored stream is ordinary DEFLATE too: inflating it gives the same bytes.
            let mut input = pool.take(done.len).unwrap();
            input.copy_from_slice(&c.output[HEAD..HEAD + done.len]);
            let d = engine
                .submit_with_ticket(
                    Op::Decompress {
                        stream: 0..done.len,
                        expected_crc: done.crc32,
                        stored: false,
                    },
                    input,
                    pool.take(size).unwrap(),
                )
                .wait();
            assert!(!d.result.as_ref().unwrap().stored);
            assert!(d.output[..] == data[..]);
        }
    }
}

/// Wraps the engine's stream in the gzip framing the container writes (fixed 10-byte header in the
/// head room, CRC32 and ISIZE in the tail room) and decodes it with an independent implementation.
#[test]
fn stream_in_gzip_framing_decodes_with_flate2() {
    let engine = engine(2);
    let pool = BufferPool::new(64 << 20);
    for size in SIZES {
        for (kind, data) in data_kinds(size) {
            for level in [0u32, 1, 6, 9, 12] {
                let mut c = start_compress(&engine, &pool, &data, level).wait();
                let done = c.result.unwrap();
                let member_len = HEAD + done.len + TAIL;
                let out = &mut c.output[..];
                out[..HEAD].copy_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
                out[HEAD + done.len..member_len - 4].copy_from_slice(&done.crc32.to_le_bytes());
                out[member_len - 4..member_len].copy_from_slice(&(size as u32).to_le_bytes());
                let mut back = Vec::new();
                flate2::read::GzDecoder::new(&out[..member_len])
                    .read_to_end(&mut back)
                    .unwrap_or_else(|e| panic!("{kind} size {size} level {level}: {e}"));
                assert!(back == data, "{kind} size {size} level {level}");
            }
        }
    }
}

#[test]
fn head_and_tail_room_are_left_untouched() {
    let engine = engine(1);
    let pool = BufferPool::new(1 << 20);
    let data = text_bytes(5000);
    let [mut input, mut output] = pool
        .take_many([data.len(), 100 + stored_stream_len(data.len()) + 50])
        .unwrap();
    input.copy_from_slice(&data);
    output.fill(0xAB);
    let c = engine
        .submit_with_ticket(
            Op::Compress {
                level: 6,
                headroom: 100,
                tailroom: 50,
            },
            input,
            output,
        )
        .wait();
    let done = c.result.unwrap();
    assert!(c.output[..100].iter().all(|&b| b == 0xAB));
    assert!(100 + done.len <= c.output.len() - 50);
    // Bytes between the stream's end and the tail room are scratch space for the codec; the tail
    // room itself is not touched.
    let tail = c.output.len() - 50;
    assert!(c.output[tail..].iter().all(|&b| b == 0xAB));
}

/// `run_now` with the software reference runs the job on the caller's thread (no queue sees it,
/// it is counted as inline) and gives the same bytes; a backend that does not run inline (here the
/// fault-injecting wrapper, as a device would) still goes through its queues.
#[test]
fn run_now_decodes_on_the_callers_thread_only_for_the_software_reference() {
    let pool = BufferPool::new(16 << 20);
    let data = text_bytes(100_000);
    let (fault, _control) =
        deflatefs::engine::fault::FaultBackend::new(Arc::new(SoftwareBackend::new()));
    let others: Arc<dyn deflatefs::engine::Backend> = Arc::new(fault);
    for (backend, inline) in [
        (
            Arc::new(SoftwareBackend::new()) as Arc<dyn deflatefs::engine::Backend>,
            true,
        ),
        (others, false),
    ] {
        let engine = Engine::new(EngineConfig {
            queues: 2,
            queue_depth: 8,
            backend,
        })
        .unwrap();
        let compressed = start_compress(&engine, &pool, &data, 1).wait();
        let done = compressed.result.as_ref().unwrap();
        let mut input = pool.take(done.len).unwrap();
        input.copy_from_slice(&compressed.output[HEAD..HEAD + done.len]);
        let before = engine.stats();
        let out = engine.run_now(
            Op::Decompress {
                stream: 0..done.len,
                expected_crc: done.crc32,
                stored: done.stored,
            },
            input,
            pool.take(data.len()).unwrap(),
        );
        assert_eq!(out.result.as_ref().unwrap().len, data.len());
        assert_eq!(&out.output[..], &data[..]);
        let after = engine.stats();
        let queued: u64 = after.queues.iter().map(|q| q.jobs_completed).sum::<u64>()
            - before.queues.iter().map(|q| q.jobs_completed).sum::<u64>();
        let ran_inline = after.inline.jobs_completed - before.inline.jobs_completed;
        assert_eq!(
            (queued, ran_inline),
            if inline { (0, 1) } else { (1, 0) },
            "{}",
            engine.backend_name()
        );
        assert_eq!(after.jobs_completed(), before.jobs_completed() + 1);
    }
}
