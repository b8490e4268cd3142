//! The filesystem: core operations on the backing tree ([`DeflateFs`], one module per concern:
//! `core`, `open`, `namespace`, `xattr`, `recovery`, `compaction`, `flusher`, `copy`, `ioctl`),
//! open-file write-back and reads (`file`), bounded background workers (`background`), caches,
//! and the adapter to fuser (`fuse`).
pub mod atime;
pub mod background;
pub mod cache;
pub mod caller;
pub mod compaction;
pub mod copy;
pub mod core;
pub mod digests;
pub mod error;
pub mod file;
pub mod flusher;
pub mod fuse;
pub mod inode;
pub mod ioctl;
pub mod live;
pub mod namelock;
pub mod namespace;
pub mod open;
pub mod recovery;
pub mod sys;
pub mod test_hooks;
pub mod xattr;

pub use self::core::DeflateFs;
pub use self::error::{FsError, FsResult};
