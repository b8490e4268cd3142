//! The backing-file format: containers of RFC 1952 gzip members (docs/FORMAT.md, version 1).
//!
//! Layout of this module:
//! - [`record`]: the fixed records (member framing, header, index entries, index members, commits);
//! - [`stored`]: deflate stored blocks, the one codec of them (the engine's stored op uses it);
//! - [`member`]: data members (framing around a deflate stream, validation, decoding, stored
//!   pieces read in place);
//! - [`index`]: the in-memory chunk index and its replay rules;
//! - [`file`]: [`Container`], one open container file (recovery, appends, commits, compaction);
//! - [`salvage`]: damaged containers read member by member, reporting damage instead of stopping
//!   (what `deflatefs fsck` checks and rebuilds from).
//!
//! Parsing never panics, never loops forever and never allocates more than the file length
//! justifies, whatever the input bytes are: every length and count read from a file is validated
//! before it is used, and every error names what was wrong and at which container offset.

pub mod file;
pub mod index;
pub mod member;
pub mod record;
pub mod salvage;
pub mod stored;

pub use file::{AppendSlot, Container, OpenMode};
pub use index::{check_piece_order, ChunkIndex};
pub use member::{
    build_deflate_member, build_stored_member, data_member_header, data_member_len, decode_piece,
    frame_data_member, member_trailer, parse_data_member, relocate_data_member, PieceStream,
    StoredLayout,
};
pub use record::{
    header_member, index_member_len, AuxRecord, CommitRecord, IndexEntry, PieceKind,
    FORMAT_VERSION, MAGIC,
};
pub use stored::{
    decode_stored_blocks, encode_stored_blocks, stored_stream_len, try_encode_stored_blocks,
    StoredStreamError, MAX_STORED_BLOCK, STORED_BLOCK_OVERHEAD,
};

/// Length of the header member: 16 framing + 20 payload + 2 (`03 00`) + 8 trailer.
pub const HEADER_MEMBER_LEN: usize = 46;
/// Length of a commit member: 16 framing + 68 payload + 2 (`03 00`) + 8 trailer.
pub const COMMIT_MEMBER_LEN: usize = 94;
/// Length of an auxiliary member: 16 framing + 112 payload + 2 (`03 00`) + 8 trailer.
pub const AUX_MEMBER_LEN: usize = 138;
/// Length of a data member's header: 16 framing + 16 payload.
pub const DATA_HEADER_LEN: usize = 32;
/// Length of every member's trailer (CRC32, ISIZE).
pub const MEMBER_TRAILER_LEN: usize = 8;
/// Length of a data member holding `n` bytes as stored blocks: the longest a data member of `n`
/// bytes can be (a writer stores a piece whose deflate stream would be longer), so what a
/// buffer for any member of `n` bytes needs.
pub const fn stored_member_len(n: usize) -> usize {
    DATA_HEADER_LEN + stored_stream_len(n) + MEMBER_TRAILER_LEN
}

/// Names in a backing directory beginning with this belong to deflatefs itself (a compaction's
/// or fsck's temporary copy of a file): never shown through the mount, skipped by fsck and
/// `deflatefs stat`.
pub const INTERNAL_NAME_PREFIX: &str = ".deflatefs-";

/// Length of an encoded index entry.
pub const INDEX_ENTRY_LEN: usize = 64;
/// Maximum number of entries in one index member.
pub const MAX_INDEX_ENTRIES_PER_MEMBER: usize = 1000;
/// Smallest chunk size (log2): 4 KiB.
pub const MIN_CHUNK_LOG2: u8 = 12;
/// Largest chunk size (log2): 4 MiB.
pub const MAX_CHUNK_LOG2: u8 = 22;
/// Compaction is only considered for containers at least this long.
pub const COMPACTION_MIN_LEN: u64 = 1 << 20;
/// A writer lays overlay pieces over a chunk only while it holds fewer than this many pieces
/// (docs/FORMAT.md, "Writing"); compaction is due when the chunks hold more than this many
/// pieces on average, which only appended pieces reach (a log fsync'd after every line).
pub const MAX_CHUNK_PIECES: u64 = 16;
/// Checkpoint policy: a checkpoint is written after this many delta commits, and when the
/// entries written since the last checkpoint exceed `max(live entries, CHECKPOINT_MIN_ENTRIES)`.
pub const CHECKPOINT_MAX_DELTAS: u64 = 1024;
/// See [`CHECKPOINT_MAX_DELTAS`].
pub const CHECKPOINT_MIN_ENTRIES: u64 = 1024;

/// Errors of the container layer.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt container: {what} (at offset {offset})")]
    Corrupt { what: String, offset: u64 },
    #[error("unsupported container format version {0}")]
    UnsupportedVersion(u16),
    #[error("not a deflatefs container")]
    NotAContainer,
}

/// Result type of the container layer.
pub type Result<T> = std::result::Result<T, ContainerError>;

/// Shorthand for a [`ContainerError::Corrupt`].
pub(crate) fn corrupt(what: impl Into<String>, offset: u64) -> ContainerError {
    ContainerError::Corrupt {
        what: what.into(),
        offset,
    }
}
