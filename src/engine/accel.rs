//! Choosing a backend: the `accel=` mount option, the self-test gate, and discovery of the
//! backends this machine has (for `accel=auto` and `deflatefs engines`).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use super::backend::Backend;
use super::selftest::self_test;
use super::software::SoftwareBackend;
use super::zlib::ZlibBackend;

/// The `accel=` mount option.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Accel {
    /// The first accelerator library found that passes its self-test, else software.
    #[default]
    Auto,
    /// libdeflate, the reference.
    Sw,
    /// A library exporting the zlib API, by path or by name (dlopen searches for it).
    Zlib(String),
}

impl Accel {
    /// Parses `auto`, `sw` or `zlib:PATH`.
    pub fn parse(text: &str) -> Result<Accel, String> {
        match text {
            "auto" => Ok(Accel::Auto),
            "sw" => Ok(Accel::Sw),
            _ => match text.strip_prefix("zlib:") {
                Some("") => Err("accel=zlib: needs a library (zlib:PATH)".into()),
                Some(path) => Ok(Accel::Zlib(path.to_string())),
                None => Err(format!(
                    "accel={text}: must be auto, sw or zlib:PATH (see deflatefs engines)"
                )),
            },
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Accel::Auto => f.write_str("auto"),
            Accel::Sw => f.write_str("sw"),
            Accel::Zlib(p) => write!(f, "zlib:{p}"),
        }
    }
}

/// Libraries that export the zlib API in front of a compression accelerator, in the order
/// `accel=auto` tries them: libnxz (POWER9/10 NX gzip), zlib-accel (Intel IAA/QAT), QATzip's zlib
/// shim. Stock zlib is not among them: it is slower than libdeflate.
pub const ACCELERATOR_LIBRARIES: &[&str] = &[
    "libnxz.so.0",
    "libnxz.so",
    "libzlib-accel.so",
    "libzlib-accel.so.1",
    "libqatzip-zlib.so",
];

/// The directories where the system's shared libraries live, multiarch first.
fn library_dirs() -> Vec<String> {
    let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
    vec![
        format!("/lib/{triplet}"),
        format!("/usr/lib/{triplet}"),
        "/lib64".into(),
        "/usr/lib64".into(),
        "/lib".into(),
        "/usr/lib".into(),
    ]
}

/// The path of the system zlib (`libz.so.1`), if installed.
pub fn system_libz() -> Option<String> {
    library_dirs()
        .into_iter()
        .map(|d| format!("{d}/libz.so.1"))
        .find(|p| Path::new(p).exists())
}

/// Opens the backend `accel` names and runs its self-test. `Auto` tries each accelerator library
/// that loads, in order, and settles for software. Every library skipped or refused is logged.
pub fn select(accel: &Accel) -> Result<Arc<dyn Backend>, String> {
    match accel {
        Accel::Auto => {
            for name in ACCELERATOR_LIBRARIES {
                match open_tested(&Accel::Zlib(name.to_string())) {
                    Ok(b) => return Ok(b),
                    Err(e) => tracing::debug!("accel=auto: {e}"),
                }
            }
            tracing::info!("accel=auto: no accelerator library passed its self-test; using sw");
            open_tested(&Accel::Sw)
        }
        other => open_tested(other),
    }
}

/// Opens one backend (not `Auto`) and runs its self-test.
pub fn open_tested(accel: &Accel) -> Result<Arc<dyn Backend>, String> {
    let backend = open_untested(accel)?;
    self_test(backend.as_ref()).map_err(|e| {
        format!(
            "backend {} failed its self-test ({e}); refusing it",
            backend.name()
        )
    })?;
    Ok(backend)
}

/// Opens one backend without the self-test.
pub fn open_untested(accel: &Accel) -> Result<Arc<dyn Backend>, String> {
    match accel {
        Accel::Auto => select(accel),
        Accel::Sw => Ok(Arc::new(SoftwareBackend::new())),
        Accel::Zlib(path) => match ZlibBackend::open(path) {
            Ok(b) => Ok(Arc::new(b)),
            Err(e) => Err(format!("backend zlib:{path}: {e}")),
        },
    }
}

/// The backends this machine has: software, the system zlib, and every accelerator library that
/// loads. Each with its `accel=` value.
pub fn discover() -> Vec<Accel> {
    let mut found = vec![Accel::Sw];
    if let Some(p) = system_libz() {
        found.push(Accel::Zlib(p));
    }
    for name in ACCELERATOR_LIBRARIES {
        if ZlibBackend::open(name).is_ok() {
            found.push(Accel::Zlib(name.to_string()));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accel_values_parse_and_print() {
        for text in [
            "auto",
            "sw",
            "zlib:/lib/x86_64-linux-gnu/libz.so.1",
            "zlib:libz.so.1",
        ] {
            assert_eq!(Accel::parse(text).unwrap().to_string(), text);
        }
        for bad in ["", "zlib:", "hw", "zlib"] {
            assert!(Accel::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn auto_settles_for_software_here_and_zlib_passes_its_self_test() {
        // No accelerator library on the test machines.
        assert_eq!(select(&Accel::Auto).unwrap().name(), "sw");
        let libz = system_libz().expect("zlib1g is installed");
        let b = select(&Accel::Zlib(libz.clone())).unwrap();
        assert_eq!(b.name(), format!("zlib:{libz}"));
        assert!(discover().contains(&Accel::Zlib(libz)));
    }

    #[test]
    fn a_library_without_the_zlib_api_is_refused_clearly() {
        let e = select(&Accel::Zlib("libc.so.6".into())).err().unwrap();
        assert!(
            e.contains("zlib:libc.so.6") && e.contains("does not export"),
            "{e}"
        );
    }
}
