//! `deflatefs engines`: the backends this machine has, each with its self-test result and a quick
//! single-thread throughput figure, like `cryptsetup benchmark`.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::accel::{self, Accel};
use super::backend::{Backend, CodecError};
use super::selftest::{sample, self_test};
use crate::container::stored::stored_stream_len;

/// Throughput of one backend on one thread.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    /// Uncompressed MB/s (10^6 bytes) of compression.
    pub compress_mbs: f64,
    /// Uncompressed MB/s of decompression.
    pub decompress_mbs: f64,
    /// Uncompressed / compressed bytes (stored chunks counted at their stored size).
    pub ratio: f64,
}

/// The data `deflatefs engines` measures on by default: 8 MiB of generated text-like lines and
/// up to 8 MiB of the running executable (machine code), so both kinds of data count.
pub fn default_corpus() -> (Vec<u8>, String) {
    let mut data = sample(8 << 20, 1);
    let exe = std::fs::read("/proc/self/exe").unwrap_or_default();
    let take = exe.len().min(8 << 20);
    data.extend_from_slice(&exe[..take]);
    let what = format!(
        "{:.1} MiB: 8 MiB of generated text and {:.1} MiB of the deflatefs executable",
        data.len() as f64 / (1 << 20) as f64,
        take as f64 / (1 << 20) as f64
    );
    (data, what)
}

/// Compresses and decompresses `data` in `chunk`-byte chunks at `level` with one codec of
/// `backend`, each for at least `time` (and at least one pass).
pub fn measure(
    backend: &dyn Backend,
    level: u32,
    chunk: usize,
    data: &[u8],
    time: Duration,
) -> Result<Figures, CodecError> {
    let mut codec = backend.open_queue()?;
    let chunks: Vec<&[u8]> = data.chunks(chunk.max(1)).collect();
    let mut out = vec![0u8; stored_stream_len(chunk)];
    // Compression, keeping the streams for the decompression pass.
    let mut streams: Vec<Option<Vec<u8>>> = Vec::with_capacity(chunks.len());
    let mut compressed = 0usize;
    let mut bytes = 0u64;
    let start = Instant::now();
    let mut first = true;
    while first || start.elapsed() < time {
        for c in &chunks {
            let limit = stored_stream_len(c.len()) - 1;
            let r = if level == 0 {
                Err(CodecError::NoSpace)
            } else {
                codec.deflate(level, c, &mut out[..limit])
            };
            if first {
                match r {
                    Ok(n) => {
                        compressed += n;
                        streams.push(Some(out[..n].to_vec()));
                    }
                    Err(CodecError::NoSpace) => {
                        compressed += stored_stream_len(c.len());
                        streams.push(None);
                    }
                    Err(e) => return Err(e),
                }
            }
            bytes += c.len() as u64;
        }
        first = false;
    }
    let compress_mbs = bytes as f64 / start.elapsed().as_secs_f64() / 1e6;

    let mut back = vec![0u8; chunk];
    let mut bytes = 0u64;
    let start = Instant::now();
    let mut first = true;
    while first || start.elapsed() < time {
        for (c, s) in chunks.iter().zip(&streams) {
            if let Some(s) = s {
                let n = codec.inflate(s, &mut back[..c.len()])?;
                if first && back[..n] != c[..] {
                    return Err(CodecError::Failed("decompressed data differs".into()));
                }
            }
            // Stored chunks would be copied, not inflated: count them as the engine does.
            bytes += c.len() as u64;
        }
        first = false;
    }
    let decompress_mbs = bytes as f64 / start.elapsed().as_secs_f64() / 1e6;
    Ok(Figures {
        compress_mbs,
        decompress_mbs,
        ratio: data.len() as f64 / compressed.max(1) as f64,
    })
}

/// The `deflatefs engines` report: every backend found, its self-test, and its figures.
pub fn engines_report(
    level: u32,
    chunk: usize,
    data: Option<(Vec<u8>, String)>,
    time: Duration,
) -> String {
    let (data, what) = data.unwrap_or_else(default_corpus);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# level {level}, {} KiB chunks, one thread per backend, on {what}",
        chunk >> 10
    );
    let _ = writeln!(
        s,
        "# MB/s of uncompressed data (10^6 bytes/s); figures taken while other work runs are noisy"
    );
    let _ = writeln!(
        s,
        "{:<44} {:<10} {:>12} {:>12} {:>7}",
        "backend (accel=...)", "self-test", "compress", "decompress", "ratio"
    );
    for candidate in accel::discover() {
        let name = candidate.to_string();
        let backend = match accel::open_untested(&candidate) {
            Ok(b) => b,
            Err(e) => {
                let _ = writeln!(s, "{name:<44} {:<10} {e}", "unusable");
                continue;
            }
        };
        if let Err(e) = self_test(backend.as_ref()) {
            let _ = writeln!(s, "{name:<44} {:<10} {e}", "FAILED");
            continue;
        }
        match measure(backend.as_ref(), level, chunk, &data, time) {
            Ok(f) => {
                let _ = writeln!(
                    s,
                    "{name:<44} {:<10} {:>7.0} MB/s {:>7.0} MB/s {:>7.2}",
                    "ok", f.compress_mbs, f.decompress_mbs, f.ratio
                );
            }
            Err(e) => {
                let _ = writeln!(s, "{name:<44} {:<10} benchmark failed: {e}", "ok");
            }
        }
    }
    let auto = match accel::select(&Accel::Auto) {
        Ok(b) => b.name(),
        Err(e) => format!("nothing ({e})"),
    };
    let _ = writeln!(s, "accel=auto uses: {auto}");
    s
}

/// `deflatefs engines`: prints the report; returns the exit code.
pub fn engines_command(
    level: u32,
    chunk: &str,
    data: Option<&std::path::Path>,
    seconds: f64,
) -> i32 {
    let chunk = match crate::options::parse_size(chunk) {
        Ok(n) if n.is_power_of_two() && (4096..=4 << 20).contains(&n) => n,
        _ => {
            eprintln!("deflatefs: --chunk {chunk}: must be a power of two between 4k and 4m");
            return 2;
        }
    };
    if !(1..=12).contains(&level) {
        eprintln!("deflatefs: --level {level}: must be between 1 and 12");
        return 2;
    }
    let data = match data {
        None => None,
        Some(p) => {
            use std::io::Read;
            let mut buf = Vec::new();
            match std::fs::File::open(p).and_then(|f| f.take(64 << 20).read_to_end(&mut buf)) {
                Ok(_) if !buf.is_empty() => {
                    let what = format!(
                        "{:.1} MiB of {}",
                        buf.len() as f64 / (1 << 20) as f64,
                        p.display()
                    );
                    Some((buf, what))
                }
                Ok(_) => {
                    eprintln!("deflatefs: {} is empty", p.display());
                    return 1;
                }
                Err(e) => {
                    eprintln!("deflatefs: {}: {e}", p.display());
                    return 1;
                }
            }
        }
    };
    let time = Duration::from_secs_f64(seconds.clamp(0.0, 60.0));
    print!("{}", engines_report(level, chunk, data, time));
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::SoftwareBackend;

    #[test]
    fn measure_gives_plausible_figures() {
        let data = sample(1 << 20, 3);
        let f = measure(&SoftwareBackend::new(), 1, 64 << 10, &data, Duration::ZERO).unwrap();
        assert!(f.compress_mbs > 0.0 && f.decompress_mbs > 0.0);
        assert!(f.ratio > 1.5, "{f:?}");
        let f0 = measure(&SoftwareBackend::new(), 0, 64 << 10, &data, Duration::ZERO).unwrap();
        assert!(f0.ratio < 1.0, "stored blocks cost a few bytes: {f0:?}");
    }

    #[test]
    fn report_lists_software_and_the_system_zlib() {
        let data = sample(256 << 10, 4);
        let r = engines_report(
            1,
            128 << 10,
            Some((data, "test data".into())),
            Duration::ZERO,
        );
        let libz = accel::system_libz().unwrap();
        assert!(
            r.lines()
                .any(|l| l.starts_with("sw ") && l.contains(" ok ")),
            "{r}"
        );
        assert!(
            r.lines()
                .any(|l| l.starts_with(&format!("zlib:{libz} ")) && l.contains(" ok ")),
            "{r}"
        );
        assert!(r.contains("accel=auto uses: sw"), "{r}");
    }
}
