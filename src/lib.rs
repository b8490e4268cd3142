//! deflatefs: a transparent-compression FUSE overlay that stores files as chunked gzip.
pub mod container;
pub mod engine;
