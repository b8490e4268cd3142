//! The filesystem: core operations on the backing tree, open-file write-back, caches, and the
//! adapter to fuser.
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
pub mod namelock;
pub mod namespace;
pub mod recovery;
pub mod sys;
pub mod xattr;

pub use self::core::DeflateFs;
pub use self::error::{FsError, FsResult};
