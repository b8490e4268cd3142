//! The zlib-ABI backend (`accel=zlib:PATH`): a shared library that exports the zlib API, loaded
//! with dlopen and driven with raw DEFLATE streams, one `z_stream` pair per queue.
//!
//! This is how accelerators that ship a zlib-compatible library are reached: libnxz (POWER9/10 NX
//! gzip), the zlib shims of Intel QAT and zlib-accel (IAA). Stock `libz.so.1` has the same ABI, so
//! the backend is tested on any machine. Its output is ordinary raw DEFLATE, so files written with
//! it read with any other backend.
//!
//! Used symbols: `zlibVersion`, `deflateInit2_`, `deflate`, `deflateEnd`, `inflateInit2_`,
//! `inflate`, `inflateEnd` (required), `deflateReset` and `inflateReset` (used when present;
//! otherwise a stream is ended and initialised again between jobs).

use std::ffi::{c_char, c_int, c_uint, c_ulong, c_void, CStr, CString};
use std::sync::Arc;

use super::backend::{Backend, Codec, CodecError};

/// zlib's `z_stream` (zlib.h), as laid out on LP64 and ILP32 Linux alike.
#[repr(C)]
struct ZStream {
    next_in: *const u8,
    avail_in: c_uint,
    total_in: c_ulong,
    next_out: *mut u8,
    avail_out: c_uint,
    total_out: c_ulong,
    msg: *const c_char,
    state: *mut c_void,
    zalloc: *const c_void,
    zfree: *const c_void,
    opaque: *mut c_void,
    data_type: c_int,
    adler: c_ulong,
    reserved: c_ulong,
}

impl ZStream {
    /// A stream with null allocators (zlib's own malloc/free).
    fn zeroed() -> Box<ZStream> {
        // SAFETY: all-zero is the documented initial state (Z_NULL pointers, zeroed counters).
        Box::new(unsafe { std::mem::zeroed() })
    }
}

const Z_OK: c_int = 0;
const Z_STREAM_END: c_int = 1;
const Z_FINISH: c_int = 4;
const Z_BUF_ERROR: c_int = -5;
const Z_DATA_ERROR: c_int = -3;
const Z_DEFLATED: c_int = 8;
const Z_DEFAULT_STRATEGY: c_int = 0;
/// Raw DEFLATE (no zlib header or trailer), 32 KiB window.
const RAW_WINDOW_BITS: c_int = -15;
const MEM_LEVEL: c_int = 8;
/// Highest level of the zlib API; higher requested levels are clamped to it.
pub const ZLIB_MAX_LEVEL: u32 = 9;

type VersionFn = unsafe extern "C" fn() -> *const c_char;
type DeflateInit2Fn = unsafe extern "C" fn(
    *mut ZStream,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    *const c_char,
    c_int,
) -> c_int;
type InflateInit2Fn = unsafe extern "C" fn(*mut ZStream, c_int, *const c_char, c_int) -> c_int;
type StepFn = unsafe extern "C" fn(*mut ZStream, c_int) -> c_int;
type StreamFn = unsafe extern "C" fn(*mut ZStream) -> c_int;

/// A loaded zlib-ABI library. Never unloaded while a codec uses it (codecs hold an `Arc`).
struct ZlibLib {
    handle: *mut c_void,
    version: CString,
    deflate_init2: DeflateInit2Fn,
    deflate: StepFn,
    deflate_end: StreamFn,
    deflate_reset: Option<StreamFn>,
    inflate_init2: InflateInit2Fn,
    inflate: StepFn,
    inflate_end: StreamFn,
    inflate_reset: Option<StreamFn>,
}

// SAFETY: the handle and function pointers are immutable after loading; zlib's functions are
// thread-safe on distinct streams, and each stream is used by one thread at a time.
unsafe impl Send for ZlibLib {}
// SAFETY: as for Send: shared references only read the immutable handle, version string and
// function pointers; calls through them from several threads each work on their own stream.
unsafe impl Sync for ZlibLib {}

impl Drop for ZlibLib {
    fn drop(&mut self) {
        // SAFETY: no codec is left (they hold an Arc to us), so nothing calls into the library.
        unsafe { libc::dlclose(self.handle) };
    }
}

fn dlerror() -> String {
    // SAFETY: dlerror returns a thread-local message or NULL.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown dlopen error".into()
    } else {
        // SAFETY: a non-null dlerror result is a NUL-terminated string that stays valid until
        // the next dl* call on this thread; it is copied out before any.
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

impl ZlibLib {
    fn load(path: &str) -> Result<ZlibLib, String> {
        let cpath = CString::new(path).map_err(|_| "path contains a NUL byte".to_string())?;
        // SAFETY: dlopen runs the library's initialisers; loading a zlib-ABI library is the point.
        // RTLD_LOCAL keeps its symbols out of the global namespace.
        let handle = unsafe { libc::dlopen(cpath.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(format!("cannot load {path}: {}", dlerror()));
        }
        let sym = |name: &str| -> Option<*mut c_void> {
            let cname = CString::new(name).expect("static name");
            // SAFETY: looking up a symbol of a handle we own.
            let p = unsafe { libc::dlsym(handle, cname.as_ptr()) };
            (!p.is_null()).then_some(p)
        };
        let need = |name: &str| {
            sym(name).ok_or_else(|| {
                format!("{path} does not export {name}: not a zlib-compatible library")
            })
        };
        let loaded = (|| {
            // SAFETY: each transmute turns a non-null symbol address into a function pointer of
            // the signature zlib.h documents for that name (the types above), the same size as
            // a data pointer on Linux. zlibVersion takes nothing and returns a static string,
            // read only after the null check. `handle` stays open as long as the ZlibLib the
            // pointers end up in (dlclose only in its Drop, or below if loading fails).
            unsafe {
                let version_fn =
                    std::mem::transmute::<*mut c_void, VersionFn>(need("zlibVersion")?);
                let v = version_fn();
                if v.is_null() {
                    return Err(format!("{path}: zlibVersion() returned NULL"));
                }
                let version = CStr::from_ptr(v).to_owned();
                Ok(ZlibLib {
                    handle,
                    version,
                    deflate_init2: std::mem::transmute::<*mut c_void, DeflateInit2Fn>(need(
                        "deflateInit2_",
                    )?),
                    deflate: std::mem::transmute::<*mut c_void, StepFn>(need("deflate")?),
                    deflate_end: std::mem::transmute::<*mut c_void, StreamFn>(need("deflateEnd")?),
                    deflate_reset: sym("deflateReset")
                        .map(|p| std::mem::transmute::<*mut c_void, StreamFn>(p)),
                    inflate_init2: std::mem::transmute::<*mut c_void, InflateInit2Fn>(need(
                        "inflateInit2_",
                    )?),
                    inflate: std::mem::transmute::<*mut c_void, StepFn>(need("inflate")?),
                    inflate_end: std::mem::transmute::<*mut c_void, StreamFn>(need("inflateEnd")?),
                    inflate_reset: sym("inflateReset")
                        .map(|p| std::mem::transmute::<*mut c_void, StreamFn>(p)),
                })
            }
        })();
        if loaded.is_err() {
            // SAFETY: nothing from the library is in use.
            unsafe { libc::dlclose(handle) };
        }
        loaded
    }

    fn stream_size() -> c_int {
        std::mem::size_of::<ZStream>() as c_int
    }
}

/// The `zlib:PATH` backend. `PATH` is a file or a library name dlopen searches for.
pub struct ZlibBackend {
    path: String,
    lib: Arc<ZlibLib>,
}

impl ZlibBackend {
    /// Loads the library and checks that it exports the zlib API (it does not run the self-test:
    /// see [`crate::engine::selftest`]).
    pub fn open(path: &str) -> Result<ZlibBackend, String> {
        let lib = ZlibLib::load(path)?;
        Ok(ZlibBackend {
            path: path.to_string(),
            lib: Arc::new(lib),
        })
    }

    /// The path the backend was opened with.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What the library's `zlibVersion()` says.
    pub fn library_version(&self) -> String {
        self.lib.version.to_string_lossy().into_owned()
    }
}

impl Backend for ZlibBackend {
    fn name(&self) -> String {
        format!("zlib:{}", self.path)
    }

    fn open_queue(&self) -> Result<Box<dyn Codec>, CodecError> {
        let mut inflater = ZStream::zeroed();
        // SAFETY: a zeroed stream, the library's own version string and our struct size.
        let r = unsafe {
            (self.lib.inflate_init2)(
                &mut *inflater,
                RAW_WINDOW_BITS,
                self.lib.version.as_ptr(),
                ZlibLib::stream_size(),
            )
        };
        if r != Z_OK {
            return Err(CodecError::Failed(format!(
                "{}: inflateInit2_ returned {r}",
                self.path
            )));
        }
        Ok(Box::new(ZlibCodec {
            lib: Arc::clone(&self.lib),
            deflater: None,
            inflater,
            inflater_dirty: false,
        }))
    }
}

/// One queue's pair of zlib streams. Boxed: zlib's state points back at its `z_stream`, which
/// therefore must not move.
struct ZlibCodec {
    lib: Arc<ZlibLib>,
    /// The deflate stream and the level it was initialised with; created on first use.
    deflater: Option<(Box<ZStream>, u32)>,
    inflater: Box<ZStream>,
    /// The inflate stream was used since its last reset.
    inflater_dirty: bool,
}

// SAFETY: the streams are owned by this codec and used by one thread at a time (Codec: Send).
unsafe impl Send for ZlibCodec {}

impl ZlibCodec {
    /// A deflate stream at `level`, reset and ready for a new raw stream.
    fn deflater(&mut self, level: u32) -> Result<&mut ZStream, CodecError> {
        let lib = &*self.lib;
        let reusable = match (&mut self.deflater, lib.deflate_reset) {
            (Some((strm, l)), Some(reset)) if *l == level => {
                // SAFETY: a stream initialised by this library's deflateInit2_, still in the
                // Box it was initialised in (zlib's state points back at it).
                (unsafe { reset(&mut **strm) }) == Z_OK
            }
            _ => false,
        };
        if reusable {
            return Ok(&mut *self.deflater.as_mut().expect("checked").0);
        }
        if let Some((mut old, _)) = self.deflater.take() {
            // SAFETY: an initialised stream, ended once.
            unsafe { (lib.deflate_end)(&mut *old) };
        }
        let mut strm = ZStream::zeroed();
        // SAFETY: a zeroed stream, the library's own version string and our struct size.
        let r = unsafe {
            (lib.deflate_init2)(
                &mut *strm,
                level as c_int,
                Z_DEFLATED,
                RAW_WINDOW_BITS,
                MEM_LEVEL,
                Z_DEFAULT_STRATEGY,
                lib.version.as_ptr(),
                ZlibLib::stream_size(),
            )
        };
        if r != Z_OK {
            return Err(CodecError::Failed(format!(
                "deflateInit2_(level {level}) returned {r}"
            )));
        }
        let (strm, _) = self.deflater.insert((strm, level));
        Ok(&mut **strm)
    }

    /// Makes the inflate stream ready for a new raw stream.
    fn reset_inflater(&mut self) -> Result<(), CodecError> {
        if !self.inflater_dirty {
            return Ok(());
        }
        let lib = &*self.lib;
        if let Some(reset) = lib.inflate_reset {
            // SAFETY: an initialised stream of this library.
            if unsafe { reset(&mut *self.inflater) } == Z_OK {
                self.inflater_dirty = false;
                return Ok(());
            }
        }
        // SAFETY: end the initialised stream, then initialise a fresh one in the same box.
        unsafe { (lib.inflate_end)(&mut *self.inflater) };
        *self.inflater = *ZStream::zeroed();
        // SAFETY: a zeroed stream at the Box's fixed address (it must not move once
        // initialised), this library's own version string and our struct size.
        let r = unsafe {
            (lib.inflate_init2)(
                &mut *self.inflater,
                RAW_WINDOW_BITS,
                lib.version.as_ptr(),
                ZlibLib::stream_size(),
            )
        };
        if r != Z_OK {
            return Err(CodecError::Failed(format!("inflateInit2_ returned {r}")));
        }
        self.inflater_dirty = false;
        Ok(())
    }
}

impl Drop for ZlibCodec {
    fn drop(&mut self) {
        // SAFETY: initialised streams of this library, ended once.
        unsafe {
            if let Some((strm, _)) = self.deflater.as_mut() {
                (self.lib.deflate_end)(&mut **strm);
            }
            (self.lib.inflate_end)(&mut *self.inflater);
        }
    }
}

/// `avail_in`/`avail_out` are 32-bit: chunks are at most 4 MiB, but refuse rather than truncate.
fn len32(n: usize) -> Result<c_uint, CodecError> {
    c_uint::try_from(n).map_err(|_| CodecError::Failed(format!("{n}-byte buffer too large")))
}

impl Codec for ZlibCodec {
    fn deflate(&mut self, level: u32, input: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
        let level = level.clamp(1, ZLIB_MAX_LEVEL);
        let (avail_in, avail_out) = (len32(input.len())?, len32(out.len())?);
        let deflate = self.lib.deflate;
        let strm = self.deflater(level)?;
        strm.next_in = input.as_ptr();
        strm.avail_in = avail_in;
        strm.next_out = out.as_mut_ptr();
        strm.avail_out = avail_out;
        // SAFETY: next_in/next_out point into live buffers of the given lengths.
        let r = unsafe { deflate(strm, Z_FINISH) };
        let written = (avail_out - strm.avail_out) as usize;
        strm.next_in = std::ptr::null();
        strm.next_out = std::ptr::null_mut();
        match r {
            Z_STREAM_END => Ok(written),
            // Output full before the end: the stream does not fit. The stream is reset before
            // its next use.
            Z_OK | Z_BUF_ERROR => Err(CodecError::NoSpace),
            r => {
                // A stream in an unknown state: start afresh next time.
                if let Some((mut s, _)) = self.deflater.take() {
                    // SAFETY: an initialised stream, ended once.
                    unsafe { (self.lib.deflate_end)(&mut *s) };
                }
                Err(CodecError::Failed(format!("deflate returned {r}")))
            }
        }
    }

    fn inflate(&mut self, input: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
        let (avail_in, avail_out) = (len32(input.len())?, len32(out.len())?);
        self.reset_inflater()?;
        self.inflater_dirty = true;
        let inflate = self.lib.inflate;
        let strm = &mut *self.inflater;
        strm.next_in = input.as_ptr();
        strm.avail_in = avail_in;
        strm.next_out = out.as_mut_ptr();
        strm.avail_out = avail_out;
        // SAFETY: next_in/next_out point into live buffers of the given lengths.
        let r = unsafe { inflate(strm, Z_FINISH) };
        let written = (avail_out - strm.avail_out) as usize;
        strm.next_in = std::ptr::null();
        strm.next_out = std::ptr::null_mut();
        match r {
            Z_STREAM_END if written == out.len() => Ok(written),
            // Ends early, runs past `out`, truncated, or invalid.
            Z_STREAM_END | Z_OK | Z_BUF_ERROR | Z_DATA_ERROR => Err(CodecError::Corrupt),
            r => Err(CodecError::Failed(format!("inflate returned {r}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::software::SoftwareCodec;

    /// The system zlib, which every Debian machine has (zlib1g).
    pub(crate) fn system_libz() -> Option<String> {
        crate::engine::accel::system_libz()
    }

    #[test]
    fn z_stream_has_zlibs_size() {
        assert_eq!(std::mem::size_of::<ZStream>(), 112);
    }

    #[test]
    fn system_zlib_round_trips_with_libdeflate_both_ways() {
        let path = system_libz().expect("the system zlib (zlib1g) is installed");
        let backend = ZlibBackend::open(&path).unwrap();
        assert!(backend.library_version().starts_with('1'));
        let mut z = backend.open_queue().unwrap();
        let mut sw = SoftwareCodec::new();
        let input: Vec<u8> = (0..200_000u32)
            .map(|i| b"zlib backend round trip "[(i % 24) as usize] ^ (i / 997) as u8)
            .collect();
        for level in [1, 6, 9, 12] {
            let mut out = vec![0u8; input.len()];
            let n = z.deflate(level, &input, &mut out).unwrap();
            let mut back = vec![0u8; input.len()];
            assert_eq!(sw.inflate(&out[..n], &mut back), Ok(input.len()));
            assert_eq!(back, input, "level {level}");
            // And back the other way, reusing the inflate stream.
            let n = sw.deflate(level.min(12), &input, &mut out).unwrap();
            back.fill(0);
            assert_eq!(z.inflate(&out[..n], &mut back), Ok(input.len()));
            assert_eq!(back, input);
        }
    }

    #[test]
    fn zlib_reports_no_space_and_corrupt_streams() {
        let path = system_libz().expect("the system zlib (zlib1g) is installed");
        let mut z = ZlibBackend::open(&path).unwrap().open_queue().unwrap();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let noise: Vec<u8> = (0..8192)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as u8
            })
            .collect();
        let mut small = vec![0u8; 4096];
        assert_eq!(z.deflate(6, &noise, &mut small), Err(CodecError::NoSpace));
        // The stream recovers for the next job.
        let text = vec![b'a'; 10_000];
        let mut out = vec![0u8; 1000];
        let n = z.deflate(6, &text, &mut out).unwrap();
        let mut back = vec![0u8; 10_000];
        assert_eq!(z.inflate(&out[..n], &mut back), Ok(10_000));
        let mut short = vec![0u8; 9_999];
        assert_eq!(z.inflate(&out[..n], &mut short), Err(CodecError::Corrupt));
        let mut long = vec![0u8; 10_001];
        assert_eq!(z.inflate(&out[..n], &mut long), Err(CodecError::Corrupt));
        assert_eq!(
            z.inflate(&out[..n / 2], &mut back),
            Err(CodecError::Corrupt)
        );
        assert_eq!(z.inflate(&[0xff; 16], &mut back), Err(CodecError::Corrupt));
        assert_eq!(z.inflate(&out[..n], &mut back), Ok(10_000));
    }

    #[test]
    fn missing_library_or_symbols_are_reported() {
        let e = ZlibBackend::open("/nonexistent/libz.so.1").err().unwrap();
        assert!(e.contains("cannot load"), "{e}");
        // libc exports none of the zlib API.
        let e = ZlibBackend::open("libc.so.6").err().unwrap();
        assert!(e.contains("does not export"), "{e}");
    }
}
