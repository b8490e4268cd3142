//! deflatefs: a transparent-compression FUSE overlay that stores files as chunked gzip.
//!
//! - [`container`]: the backing-file format (docs/FORMAT.md).
//! - [`digest`]: content digests and file descriptions served as extended attributes.
//! - [`engine`]: queue pairs, buffer pool and codec backends (docs/ENGINE.md).
//! - [`fs`]: the filesystem core and its fuser adapter.
//! - [`options`], [`cli`], [`mount`]: configuration, command line, mounting and the daemon;
//!   [`source_lock`]: one read-write mount per source.
//! - [`stat`]: the `deflatefs stat` command.
//! - [`fsck`]: the `deflatefs fsck` command.
// Every unsafe block says why it is sound (issue 18); CI runs clippy with -D warnings.
#![deny(clippy::undocumented_unsafe_blocks)]
pub mod cli;
pub mod container;
pub mod digest;
pub mod engine;
pub mod fs;
pub mod fsck;
pub mod fusermount;
pub mod logging;
pub mod mount;
pub mod options;
pub mod panics;
pub mod remount;
pub mod source_lock;
pub mod stat;
