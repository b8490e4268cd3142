//! Mount options (`-o chunk=128k,level=1,...`): parsing and validation.
//!
//! Every option the user can give is listed in [`OPTION_HELP`]; anything else is an error that names
//! the option, so nothing is mounted with a typo silently ignored.

use std::fmt;

use crate::engine::accel::Accel;

/// Default chunk size: 128 KiB (see docs/FORMAT.md; the same record size btrfs and ZFS use).
pub const DEFAULT_CHUNK_LOG2: u8 = 17;
/// Default compression level. Level 1 of libdeflate compresses ~250 MB/s per core with a ratio
/// close to zlib level 6 (docs/PLATFORM.md); higher levels cost 2-5x the CPU for a few
/// percent of ratio, which a filesystem on the write path cannot afford by default.
pub const DEFAULT_LEVEL: u32 = 1;

/// Default for `fds=N`: well under common descriptor limits, and enough that the inodes a
/// working set touches stay open (a reopen costs one or two system calls).
pub const DEFAULT_FDS: usize = 4096;

/// Everything a mount can be configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// log2 of the chunk size for new files (12..=22).
    pub chunk_log2: u8,
    /// Compression level, 0..=12 (0 stores without compressing).
    pub level: u32,
    /// Engine queue pairs (worker threads); default = number of CPUs.
    pub queues: usize,
    /// Decompressed-chunk cache, bytes.
    pub cache_bytes: usize,
    /// Most unwritten (dirty) data buffered, bytes.
    pub dirty_bytes: usize,
    /// Engine buffer pool, bytes.
    pub pool_bytes: usize,
    /// Most descriptors held for inodes the kernel caches (`fds=N`); the mount lowers it to half
    /// the descriptor limit it got if that is less.
    pub fds: usize,
    /// Compression backend (`accel=auto|sw|zlib:PATH`).
    pub accel: Accel,
    /// Verify a non-reference backend's compressed streams against libdeflate (`verify=on|off`).
    pub verify: bool,
    /// Backend faults after which the backend is disabled (`fault_limit=N`, 0 = never).
    pub fault_limit: u64,
    /// Pin queue workers to CPUs (`affinity`).
    pub affinity: bool,
    /// Testing only: wrap the backend in random faults (`fault=SPEC`, see `FaultSpec`).
    pub fault: Option<crate::engine::fault::FaultSpec>,
    /// FUSE worker threads.
    pub threads: usize,
    pub read_only: bool,
    /// Let users other than the mount's owner (and root) reach the mount (`allow_other`).
    pub allow_other: bool,
    /// Mount with the kernel's `default_permissions`: the kernel checks every access against the
    /// file modes, as ext4 does. On unless `no_default_permissions` is given (README,
    /// "Permissions"; docs/SECURITY.md).
    pub default_permissions: bool,
    /// Mount with MS_NOEXEC (`noexec`, also implied by fstab's `user`).
    pub noexec: bool,
    /// Log verbosity: error, warn, info, debug, trace.
    pub log_level: String,
    /// Log file instead of syslog/stderr.
    pub log_file: Option<String>,
    /// Also serve `user.shatag.sha256` / `user.shatag.ts` (the cshatag bit-rot checker's).
    pub shatag: bool,
    /// Compute the integrity digests' state on the write path (`digests=on|off`): the running
    /// SHA-256 and each chunk's BLAKE3 chaining value. Off, `user.deflatefs.sha256` and
    /// `user.deflatefs.blake3` are computed by reading the file when they are asked for.
    pub digests: bool,
    /// When reading moves a file's access time (`relatime` default, `strictatime`, `noatime`).
    pub atime: AtimeMode,
    /// Listing a directory never moves its access time (`nodiratime`).
    pub nodiratime: bool,
    /// `lazytime`: passed to the kernel and shown by findmnt; the backing filesystem already
    /// decides when its inode times reach the disk, so the daemon does nothing more.
    pub lazytime: bool,
    /// Honour device nodes (`dev`) and setuid/setgid bits (`suid`); root mounts only.
    pub dev: bool,
    pub suid: bool,
}

/// When a read moves the access time, as the same ext4 mount options decide it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtimeMode {
    /// Only when the access time is not after the modification or change time, or is a day old.
    Relatime,
    /// At every read.
    Strict,
    /// Never (`touch -a` and utimensat still set it).
    Never,
}

impl AtimeMode {
    /// The option that selects this mode, as findmnt shows it.
    pub fn option_name(self) -> &'static str {
        match self {
            AtimeMode::Relatime => "relatime",
            AtimeMode::Strict => "strictatime",
            AtimeMode::Never => "noatime",
        }
    }
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            chunk_log2: DEFAULT_CHUNK_LOG2,
            level: DEFAULT_LEVEL,
            queues: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cache_bytes: 64 << 20,
            dirty_bytes: 64 << 20,
            pool_bytes: 32 << 20,
            fds: DEFAULT_FDS,
            accel: Accel::Auto,
            verify: true,
            fault_limit: crate::engine::DEFAULT_FAULT_LIMIT,
            affinity: false,
            fault: None,
            threads: 4,
            read_only: false,
            allow_other: false,
            default_permissions: true,
            noexec: false,
            log_level: "info".into(),
            log_file: None,
            shatag: false,
            digests: true,
            atime: AtimeMode::Relatime,
            nodiratime: false,
            lazytime: false,
            dev: false,
            suid: false,
        }
    }
}

/// One line per option, printed by `deflatefs --help` and kept in step with the README.
pub const OPTION_HELP: &str = "\
Mount options (-o OPT[,OPT...]):
  chunk=SIZE           chunk size for new files: power of two, 4k..4m (default 128k)
  level=N              compression level 0..12, 0 = store only (default 1)
  queues=N             compression queue pairs / worker threads (default: number of CPUs)
  cache=SIZE           decompressed-chunk cache (default 64m)
  dirty=SIZE           most unwritten data buffered before writers wait (default 64m)
  pool=SIZE            compression engine buffer pool (default 32m)
  fds=N                most descriptors held for cached inodes, at most half the
                       descriptor limit (default 4096)
  accel=BACKEND        auto (default: first accelerator passing its self-test, else sw), sw
                       (libdeflate) or zlib:PATH (a library with the zlib API, e.g. libnxz);
                       `deflatefs engines` lists what this machine has
  verify=on|off        check a non-reference backend's output in software (default on)
  fault_limit=N        backend faults before it is disabled for the mount, 0 = never (default 8)
  affinity             pin compression queue N to the N-th CPU
  fault=SPEC           testing only: inject random backend faults, e.g.
                       fail=5:corrupt=5:delay=20:delay_ms=30:seed=1:fallback=off (docs/ROBUSTNESS.md)
  threads=N            FUSE request worker threads (default 4)
  ro                   read-only mount
  rw                   read-write mount (default)
  allow_other          let other users access the mount (permissions are checked as on ext4)
  default_permissions  the kernel checks permissions against file modes, as ext4 does (default)
  no_default_permissions
                       the kernel checks no permissions: every user who can reach the mount
                       gets the mount owner's access (README, Permissions); logged as a warning
  shatag               also serve user.shatag.sha256 and user.shatag.ts (cshatag's attributes)
  digests=on|off       keep the digests' state while writing (default on); off saves write CPU,
                       and the first read of user.deflatefs.sha256 / .blake3 reads the whole file
  log=FILE             log to FILE instead of syslog (daemon) or stderr (-f)
  log_level=LEVEL      error, warn, info (default), debug or trace
  noexec / exec        forbid / allow executing files on the mount (default exec)
  relatime             a read moves the access time only when it is not after the modification
                       or change time, or is a day old, as on ext4 (default; also `atime`)
  strictatime          every read moves the access time (also `norelatime`)
  noatime              reads never move the access time
  nodiratime / diratime  listing a directory never / does (default) move its access time
  lazytime / nolazytime  accepted and shown; the backing filesystem's own policy applies
  dev / nodev          honour device nodes on the mount (root only; default nodev)
  suid / nosuid        honour setuid and setgid bits (root only; default nosuid)
  Accepted and ignored, as passed by mount(8)/mount.fuse3: async, defaults.
  remount              (mount -o remount,...) change ro/rw, the atime options, exec, dev and
                       suid of a live mount; other options are refused (README, Remount)
SIZE takes a suffix k, m or g (powers of 1024).";

/// How the error for an option nobody knows begins.
const UNKNOWN_OPTION: &str = "unknown mount option";

/// A malformed or unknown option, with the text that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError(pub String);

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OptionError {}

/// Parses a size such as `128k`, `4m`, `1g` or `65536`.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let (digits, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1usize << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size (examples: 65536, 128k, 4m, 1g)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{text}' is too large"))
}

fn parse_count(name: &str, value: &str, min: usize, max: usize) -> Result<usize, OptionError> {
    let n: usize = value
        .parse()
        .map_err(|_| OptionError(format!("option {name}={value}: not a number")))?;
    if n < min || n > max {
        return Err(OptionError(format!(
            "option {name}={value}: must be between {min} and {max}"
        )));
    }
    Ok(n)
}

fn parse_bytes(name: &str, value: &str, min: usize) -> Result<usize, OptionError> {
    let n = parse_size(value).map_err(|e| OptionError(format!("option {name}: {e}")))?;
    if n < min {
        return Err(OptionError(format!(
            "option {name}={value}: must be at least {}k",
            min >> 10
        )));
    }
    Ok(n)
}

impl MountOptions {
    /// Parses a list of comma-separated option strings (each `-o` argument is one element) on top
    /// of the defaults. The first bad option is reported, and nothing is applied.
    pub fn parse<S: AsRef<str>>(groups: &[S]) -> Result<MountOptions, OptionError> {
        let mut o = MountOptions::default();
        for group in groups {
            for opt in group.as_ref().split(',').filter(|s| !s.is_empty()) {
                o.apply(opt)?;
            }
        }
        Ok(o)
    }

    /// Like [`MountOptions::parse`], but unknown options are skipped and returned instead of
    /// failing (`mount -s`, "sloppy"). A known option with a bad value is still an error.
    pub fn parse_sloppy<S: AsRef<str>>(
        groups: &[S],
    ) -> Result<(MountOptions, Vec<String>), OptionError> {
        let mut o = MountOptions::default();
        let mut skipped = Vec::new();
        for group in groups {
            for opt in group.as_ref().split(',').filter(|s| !s.is_empty()) {
                match o.apply(opt) {
                    Err(e) if e.0.starts_with(UNKNOWN_OPTION) => skipped.push(opt.to_string()),
                    r => r?,
                }
            }
        }
        Ok((o, skipped))
    }

    fn apply(&mut self, opt: &str) -> Result<(), OptionError> {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        fn need<'a>(name: &str, v: Option<&'a str>) -> Result<&'a str, OptionError> {
            v.filter(|v| !v.is_empty())
                .ok_or_else(|| OptionError(format!("option {name} needs a value ({name}=...)")))
        }
        let flag = |v: Option<&str>| match v {
            None => Ok(()),
            Some(_) => Err(OptionError(format!("option {name} takes no value"))),
        };
        match name {
            "chunk" => {
                let v = need(name, value)?;
                let n = parse_size(v).map_err(|e| OptionError(format!("option chunk: {e}")))?;
                if !n.is_power_of_two() || !(4096..=4 << 20).contains(&n) {
                    return Err(OptionError(format!(
                        "option chunk={v}: must be a power of two between 4k and 4m"
                    )));
                }
                self.chunk_log2 = n.trailing_zeros() as u8;
            }
            "level" => self.level = parse_count(name, need(name, value)?, 0, 12)? as u32,
            "queues" => self.queues = parse_count(name, need(name, value)?, 1, 256)?,
            "threads" => self.threads = parse_count(name, need(name, value)?, 1, 64)?,
            "fds" => {
                self.fds = parse_count(
                    name,
                    need(name, value)?,
                    crate::fs::inode::MIN_FD_BOUND,
                    1 << 30,
                )?
            }
            "cache" => self.cache_bytes = parse_bytes(name, need(name, value)?, 0)?,
            "dirty" => self.dirty_bytes = parse_bytes(name, need(name, value)?, 8 << 20)?,
            "pool" => self.pool_bytes = parse_bytes(name, need(name, value)?, 1 << 20)?,
            "accel" => self.accel = Accel::parse(need(name, value)?).map_err(OptionError)?,
            "verify" => {
                self.verify = match need(name, value)? {
                    "on" => true,
                    "off" => false,
                    v => return Err(OptionError(format!("option verify={v}: must be on or off"))),
                }
            }
            "digests" => {
                self.digests = match need(name, value)? {
                    "on" => true,
                    "off" => false,
                    v => {
                        return Err(OptionError(format!(
                            "option digests={v}: must be on or off"
                        )))
                    }
                }
            }
            "fault_limit" => {
                self.fault_limit = parse_count(name, need(name, value)?, 0, 1 << 30)? as u64
            }
            "affinity" => {
                flag(value)?;
                self.affinity = true
            }
            "fault" => {
                let spec = crate::engine::fault::FaultSpec::parse(need(name, value)?)
                    .map_err(|e| OptionError(format!("option {e}")))?;
                self.fault = Some(spec)
            }
            "ro" => {
                flag(value)?;
                self.read_only = true
            }
            "rw" => {
                flag(value)?;
                self.read_only = false
            }
            "allow_other" => {
                flag(value)?;
                self.allow_other = true
            }
            "default_permissions" => {
                flag(value)?;
                self.default_permissions = true
            }
            "no_default_permissions" => {
                flag(value)?;
                self.default_permissions = false
            }
            "shatag" => {
                flag(value)?;
                self.shatag = true
            }
            "log" => self.log_file = Some(need(name, value)?.to_string()),
            "log_level" => {
                let v = need(name, value)?;
                if !["error", "warn", "info", "debug", "trace"].contains(&v) {
                    return Err(OptionError(format!(
                        "option log_level={v}: must be error, warn, info, debug or trace"
                    )));
                }
                self.log_level = v.to_string();
            }
            "noexec" => {
                flag(value)?;
                self.noexec = true
            }
            "exec" => {
                flag(value)?;
                self.noexec = false
            }
            "relatime" | "atime" | "nostrictatime" => {
                flag(value)?;
                self.atime = AtimeMode::Relatime
            }
            "strictatime" | "norelatime" => {
                flag(value)?;
                self.atime = AtimeMode::Strict
            }
            "noatime" => {
                flag(value)?;
                self.atime = AtimeMode::Never
            }
            "nodiratime" | "diratime" => {
                flag(value)?;
                self.nodiratime = name == "nodiratime"
            }
            "lazytime" | "nolazytime" => {
                flag(value)?;
                self.lazytime = name == "lazytime"
            }
            "dev" | "nodev" => {
                flag(value)?;
                self.dev = name == "dev"
            }
            "suid" | "nosuid" => {
                flag(value)?;
                self.suid = name == "suid"
            }
            "async" | "defaults" => flag(value)?,
            _ => {
                return Err(OptionError(format!(
                    "{UNKNOWN_OPTION} '{opt}' (see deflatefs --help)"
                )))
            }
        }
        Ok(())
    }

    /// Chunk size for new files, in bytes.
    pub fn chunk_size(&self) -> usize {
        1 << self.chunk_log2
    }

    /// The most memory the daemon's data buffers may take: cache + dirty + engine pool.
    pub fn memory_bound(&self) -> usize {
        self.cache_bytes + self.dirty_bytes + self.pool_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_without_options() {
        let o = MountOptions::parse::<&str>(&[]).unwrap();
        assert_eq!(o.chunk_size(), 128 << 10);
        assert_eq!(o.level, DEFAULT_LEVEL);
        assert_eq!(o.cache_bytes, 64 << 20);
    }

    #[test]
    fn chunk_accepts_powers_of_two_between_4k_and_4m() {
        for (text, log2) in [("4k", 12), ("128k", 17), ("4m", 22), ("65536", 16)] {
            let o = MountOptions::parse(&[format!("chunk={text}")]).unwrap();
            assert_eq!(o.chunk_log2, log2, "{text}");
        }
        for bad in ["3k", "2k", "8m", "100000", "x", ""] {
            assert!(
                MountOptions::parse(&[format!("chunk={bad}")]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn fds_takes_a_count_of_at_least_sixteen() {
        assert_eq!(MountOptions::parse::<&str>(&[]).unwrap().fds, DEFAULT_FDS);
        assert_eq!(MountOptions::parse(&["fds=100"]).unwrap().fds, 100);
        for bad in ["fds=8", "fds=x", "fds"] {
            let e = MountOptions::parse(&[bad]).unwrap_err();
            assert!(e.0.contains("fds"), "{bad}: {e}");
        }
    }

    #[test]
    fn atime_options_select_the_mode_last_one_wins() {
        assert_eq!(
            MountOptions::parse::<&str>(&[]).unwrap().atime,
            AtimeMode::Relatime
        );
        for (text, mode) in [
            ("noatime", AtimeMode::Never),
            ("strictatime", AtimeMode::Strict),
            ("norelatime", AtimeMode::Strict),
            ("noatime,relatime", AtimeMode::Relatime),
            ("strictatime,atime", AtimeMode::Relatime),
        ] {
            assert_eq!(MountOptions::parse(&[text]).unwrap().atime, mode, "{text}");
        }
        let o = MountOptions::parse(&["nodiratime,lazytime"]).unwrap();
        assert!(o.nodiratime && o.lazytime);
        assert!(MountOptions::parse(&["noatime=1"]).is_err());
    }

    #[test]
    fn dev_and_suid_are_off_unless_asked_for() {
        let o = MountOptions::parse::<&str>(&[]).unwrap();
        assert!(!o.dev && !o.suid);
        let o = MountOptions::parse(&["dev,suid"]).unwrap();
        assert!(o.dev && o.suid);
        let o = MountOptions::parse(&["dev,suid,nodev,nosuid"]).unwrap();
        assert!(!o.dev && !o.suid);
    }

    #[test]
    fn unknown_option_is_named_in_the_error() {
        let e = MountOptions::parse(&["ro,bogus=1"]).unwrap_err();
        assert!(e.0.contains("bogus=1"), "{e}");
    }

    #[test]
    fn engine_options_parse() {
        let o =
            MountOptions::parse(&["accel=zlib:/lib/libz.so.1,verify=off,fault_limit=0,affinity"])
                .unwrap();
        assert_eq!(o.accel, Accel::Zlib("/lib/libz.so.1".into()));
        assert!(!o.verify && o.affinity);
        assert_eq!(o.fault_limit, 0);
        let d = MountOptions::parse::<&str>(&[]).unwrap();
        assert_eq!((d.accel, d.verify, d.affinity), (Accel::Auto, true, false));
        for bad in [
            "accel=gpu",
            "accel=zlib:",
            "verify=yes",
            "affinity=1",
            "fault_limit=x",
        ] {
            assert!(MountOptions::parse(&[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn digests_option_is_on_by_default_and_takes_on_or_off() {
        assert!(MountOptions::default().digests);
        assert!(MountOptions::parse(&["digests=on"]).unwrap().digests);
        assert!(!MountOptions::parse(&["digests=off"]).unwrap().digests);
        for bad in ["digests", "digests=", "digests=no", "digests=1"] {
            assert!(MountOptions::parse(&[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn level_out_of_range_is_refused() {
        assert!(MountOptions::parse(&["level=13"]).is_err());
        assert_eq!(MountOptions::parse(&["level=0"]).unwrap().level, 0);
    }

    #[test]
    fn flags_refuse_values_and_mount_flags_are_ignored() {
        assert!(MountOptions::parse(&["ro=1"]).is_err());
        let o =
            MountOptions::parse(&["rw,nosuid,nodev,ro,allow_other,default_permissions"]).unwrap();
        assert!(o.read_only && o.allow_other && o.default_permissions);
    }

    #[test]
    fn permissions_are_checked_by_default_and_only_an_explicit_option_turns_that_off() {
        assert!(MountOptions::default().default_permissions);
        for opts in ["allow_other", "rw", "default_permissions", "allow_other,ro"] {
            assert!(
                MountOptions::parse(&[opts]).unwrap().default_permissions,
                "{opts}"
            );
        }
        let o = MountOptions::parse(&["allow_other,no_default_permissions"]).unwrap();
        assert!(o.allow_other && !o.default_permissions);
        // The last one given wins, as for ro/rw (an fstab line then the command line).
        assert!(
            MountOptions::parse(&["no_default_permissions", "default_permissions"])
                .unwrap()
                .default_permissions
        );
        // Sloppy parsing never skips it: it is a known option.
        let (o, skipped) = MountOptions::parse_sloppy(&["no_default_permissions"]).unwrap();
        assert!(!o.default_permissions && skipped.is_empty());
        assert!(MountOptions::parse(&["no_default_permissions=1"]).is_err());
    }

    #[test]
    fn noexec_is_a_real_flag_and_exec_clears_it() {
        assert!(MountOptions::parse(&["noexec"]).unwrap().noexec);
        assert!(!MountOptions::parse(&["noexec,exec"]).unwrap().noexec);
    }

    #[test]
    fn sloppy_parsing_skips_unknown_options_but_not_bad_values() {
        let (o, skipped) = MountOptions::parse_sloppy(&["chunk=64k,bogus,x=1"]).unwrap();
        assert_eq!(o.chunk_size(), 64 << 10);
        assert_eq!(skipped, vec!["bogus", "x=1"]);
        assert!(MountOptions::parse_sloppy(&["chunk=3k"]).is_err());
    }

    #[test]
    fn sizes_take_suffixes() {
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert!(parse_size("12q").is_err());
    }

    #[test]
    fn fault_option_takes_a_spec_and_rejects_a_bad_one() {
        let o = MountOptions::parse(&["fault=fail=5:seed=2:fallback=off"]).unwrap();
        let f = o.fault.unwrap();
        assert_eq!((f.fail, f.seed, f.fallback), (50_000, 2, false));
        assert!(MountOptions::default().fault.is_none());
        let e = MountOptions::parse(&["fault=explode=1"]).unwrap_err();
        assert!(e.0.contains("explode"), "{e}");
    }
}
