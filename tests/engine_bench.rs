//! Throughput of one engine queue against libdeflate called directly, on 128 KiB chunks of text.
//!
//! Ignored by default; run in release mode:
//! `cargo test --release --test engine_bench -- --ignored --nocapture`
//! The workload is the text files under /usr/share/doc (or the file named by `DFS_BENCH_FILE`),
//! concatenated, up to 64 MiB.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deflatefs::engine::{
    stored_stream_len, BufferPool, Completion, Done, Engine, EngineConfig, Job, Op, SoftwareBackend,
};

const CHUNK: usize = 128 << 10;
const LIMIT: usize = 64 << 20;

fn collect_text(dir: &Path, out: &mut Vec<u8>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        if out.len() >= LIMIT {
            return;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            collect_text(&path, out);
        } else if meta.is_file() && path.extension().is_none_or(|e| e != "gz") {
            if let Ok(bytes) = std::fs::read(&path) {
                if !bytes[..bytes.len().min(8192)].contains(&0) {
                    out.extend_from_slice(&bytes);
                }
            }
        }
    }
}

fn workload() -> Vec<u8> {
    let mut data = match std::env::var_os("DFS_BENCH_FILE") {
        Some(path) => std::fs::read(path).expect("DFS_BENCH_FILE"),
        None => {
            let mut v = Vec::new();
            collect_text(Path::new("/usr/share/doc"), &mut v);
            v
        }
    };
    data.truncate(LIMIT);
    data.truncate(data.len() / CHUNK * CHUNK);
    assert!(data.len() >= 8 * CHUNK, "not enough text for the benchmark");
    data
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The kernel thread id of the (only) worker of `engine`, learnt from a completion callback, which
/// runs on the worker thread.
fn worker_tid(engine: &Engine, pool: &Arc<BufferPool>) -> i32 {
    let [input, output] = pool.take_many([0, stored_stream_len(0)]).unwrap();
    let (tx, rx) = crossbeam_channel::bounded(1);
    engine.submit(vec![Job {
        op: Op::Compress {
            level: 0,
            headroom: 0,
            tailroom: 0,
        },
        input,
        output,
        on_complete: Box::new(move |_| {
            // SAFETY: gettid has no preconditions.
            let _ = tx.send(unsafe { libc::gettid() });
        }),
    }]);
    rx.recv().unwrap()
}

/// CPU time of thread `tid` of this process (schedstat: ns on CPU). The machine may be shared, so
/// CPU time is a steadier measure than wall time.
fn task_cpu(tid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).unwrap();
    Duration::from_nanos(stat.split_whitespace().next().unwrap().parse().unwrap())
}

fn mbps(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e6
}

/// libdeflate alone, one thread, same chunks: the reference.
fn direct(data: &[u8], level: i32) -> (Duration, Duration, usize) {
    let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(level).unwrap());
    let mut out = vec![0u8; stored_stream_len(CHUNK)];
    let t = Instant::now();
    let cpu = thread_cpu();
    let mut total = 0;
    for chunk in data.chunks(CHUNK) {
        total += c
            .deflate_compress(chunk, &mut out[..stored_stream_len(CHUNK) - 1])
            .unwrap_or(stored_stream_len(CHUNK));
        std::hint::black_box(libdeflater::crc32(chunk));
    }
    (t.elapsed(), thread_cpu() - cpu, total)
}

/// The same through a one-queue engine, fed by one submitter thread.
fn through_engine(
    engine: &Arc<Engine>,
    pool: &Arc<BufferPool>,
    data: &[u8],
    level: u32,
) -> (Duration, Duration, usize) {
    let out_bytes = Arc::new(AtomicU64::new(0));
    let (tx, rx) = crossbeam_channel::unbounded::<()>();
    let t = Instant::now();
    let tid = worker_tid(engine, pool);
    let cpu = task_cpu(tid);
    let chunks = data.len() / CHUNK;
    for chunk in data.chunks(CHUNK) {
        let [mut input, output] = pool.take_many([CHUNK, stored_stream_len(CHUNK)]).unwrap();
        input.copy_from_slice(chunk);
        let out_bytes = Arc::clone(&out_bytes);
        let tx = tx.clone();
        engine.submit(vec![Job {
            op: Op::Compress {
                level,
                headroom: 0,
                tailroom: 0,
            },
            input,
            output,
            on_complete: Box::new(move |c: Completion| {
                out_bytes.fetch_add(c.result.unwrap().len as u64, Ordering::Relaxed);
                let _ = tx.send(());
            }),
        }]);
    }
    for _ in 0..chunks {
        rx.recv().unwrap();
    }
    (
        t.elapsed(),
        task_cpu(tid) - cpu,
        out_bytes.load(Ordering::Relaxed) as usize,
    )
}

/// Compressed streams of every chunk (made through the engine, untimed).
fn streams_of(
    engine: &Arc<Engine>,
    pool: &Arc<BufferPool>,
    data: &[u8],
    level: u32,
) -> Vec<(Vec<u8>, Done)> {
    data.chunks(CHUNK)
        .map(|chunk| {
            let [mut input, output] = pool.take_many([CHUNK, stored_stream_len(CHUNK)]).unwrap();
            input.copy_from_slice(chunk);
            let c = engine
                .submit_with_ticket(
                    Op::Compress {
                        level,
                        headroom: 0,
                        tailroom: 0,
                    },
                    input,
                    output,
                )
                .wait();
            let done = c.result.unwrap();
            (c.output[..done.len].to_vec(), done)
        })
        .collect()
}

/// libdeflate inflate + crc32 alone, one thread: (wall, cpu).
fn direct_inflate(streams: &[(Vec<u8>, Done)]) -> (Duration, Duration) {
    let mut d = libdeflater::Decompressor::new();
    let mut out = vec![0u8; CHUNK];
    let t = Instant::now();
    let cpu = thread_cpu();
    for (stream, done) in streams {
        d.deflate_decompress(stream, &mut out).unwrap();
        assert_eq!(libdeflater::crc32(&out), done.crc32);
    }
    (t.elapsed(), thread_cpu() - cpu)
}

/// The same through a one-queue engine: (wall, worker cpu).
fn decompress_through_engine(
    engine: &Arc<Engine>,
    pool: &Arc<BufferPool>,
    streams: &[(Vec<u8>, Done)],
) -> (Duration, Duration) {
    let (tx, rx) = crossbeam_channel::unbounded::<()>();
    let tid = worker_tid(engine, pool);
    let t = Instant::now();
    let cpu = task_cpu(tid);
    for (stream, done) in streams {
        let [mut input, output] = pool.take_many([stream.len(), CHUNK]).unwrap();
        input.copy_from_slice(stream);
        let tx = tx.clone();
        engine.submit(vec![Job {
            op: Op::Decompress {
                stream: 0..stream.len(),
                expected_crc: done.crc32,
                stored: done.stored,
            },
            input,
            output,
            on_complete: Box::new(move |c: Completion| {
                c.result.unwrap();
                let _ = tx.send(());
            }),
        }]);
    }
    for _ in 0..streams.len() {
        rx.recv().unwrap();
    }
    (t.elapsed(), task_cpu(tid) - cpu)
}

#[test]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
fn single_queue_throughput_on_128k_text_chunks() {
    let data = workload();
    println!(
        "workload: {:.1} MiB of text in {} chunks of 128 KiB",
        data.len() as f64 / 1048576.0,
        data.len() / CHUNK
    );
    let engine = Engine::new(EngineConfig {
        queues: 1,
        queue_depth: 16,
        backend: Arc::new(SoftwareBackend::new()),
    })
    .unwrap();
    let pool = BufferPool::new(32 << 20);
    // The machine may be shared: alternate direct and engine runs and keep the best of each.
    const ROUNDS: usize = 5;
    for level in [1u32, 6] {
        // Warm up (first-use compressor allocation, page faults of fresh pool buffers).
        through_engine(&engine, &pool, &data[..64 * CHUNK], level);
        let (mut td, mut te) = (Duration::MAX, Duration::MAX);
        let (mut cd, mut ce) = (Duration::MAX, Duration::MAX);
        let (mut nd, mut ne) = (0, 0);
        for _ in 0..ROUNDS {
            let (t, c, n) = direct(&data, level as i32);
            (td, cd, nd) = (td.min(t), cd.min(c), n);
            let (t, c, n) = through_engine(&engine, &pool, &data, level);
            (te, ce, ne) = (te.min(t), ce.min(c), n);
        }
        let streams = streams_of(&engine, &pool, &data, level);
        let (mut tdi, mut cdi, mut tde, mut cde) =
            (Duration::MAX, Duration::MAX, Duration::MAX, Duration::MAX);
        for _ in 0..ROUNDS {
            let (t, c) = direct_inflate(&streams);
            (tdi, cdi) = (tdi.min(t), cdi.min(c));
            let (t, c) = decompress_through_engine(&engine, &pool, &streams);
            (tde, cde) = (tde.min(t), cde.min(c));
        }
        println!(
            "level {level} compress:   wall: libdeflate direct {:.0} MB/s, engine 1 queue {:.0} MB/s \
             ({:+.1}% time); cpu: direct {:.0} MB/s, engine worker {:.0} MB/s ({:+.1}%); \
             ratio {:.2} / {:.2}",
            mbps(data.len(), td),
            mbps(data.len(), te),
            (te.as_secs_f64() / td.as_secs_f64() - 1.0) * 100.0,
            mbps(data.len(), cd),
            mbps(data.len(), ce),
            (ce.as_secs_f64() / cd.as_secs_f64() - 1.0) * 100.0,
            data.len() as f64 / nd as f64,
            data.len() as f64 / ne as f64,
        );
        println!(
            "level {level} decompress: wall: libdeflate direct {:.0} MB/s, engine 1 queue {:.0} MB/s \
             ({:+.1}% time); cpu: direct {:.0} MB/s, engine worker {:.0} MB/s ({:+.1}%)",
            mbps(data.len(), tdi),
            mbps(data.len(), tde),
            (tde.as_secs_f64() / tdi.as_secs_f64() - 1.0) * 100.0,
            mbps(data.len(), cdi),
            mbps(data.len(), cde),
            (cde.as_secs_f64() / cdi.as_secs_f64() - 1.0) * 100.0,
        );
    }
    println!("{:?}", engine.stats());
    assert!(pool.high_water() <= pool.capacity());
}
