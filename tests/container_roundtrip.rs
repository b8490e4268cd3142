//! Create/append/commit/open round trips, replay rules on disk, checkpoint policy, reset,
//! rebuild (compaction), error handling.

mod container_common;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;

use container_common::{commits_in, read_all, rw, Scratch, Writer};
use deflatefs::container::{
    build_stored_member, header_member, Container, ContainerError, IndexEntry, COMMIT_MEMBER_LEN,
    HEADER_MEMBER_LEN,
};
use deflatefs::fs::error::ToErrno;

/// Incompressible bytes.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed as u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

fn text(n: usize, seed: u8) -> Vec<u8> {
    format!("line {seed} of some log text that compresses well\n")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(n)
        .collect()
}

#[test]
fn create_writes_header_and_empty_checkpoint() {
    let s = Scratch::new();
    let c = s.create("f", 12);
    assert_eq!(
        c.container_len(),
        (HEADER_MEMBER_LEN + COMMIT_MEMBER_LEN) as u64
    );
    assert_eq!(c.size(), 0);
    assert!(!c.has_pending());
    let bytes = std::fs::read(s.path("f")).unwrap();
    assert_eq!(bytes[..46], header_member(12));
    let commits = commits_in(&bytes);
    assert_eq!(commits.len(), 1);
    assert!(commits[0].checkpoint);
    assert_eq!(commits[0].seq, 1);
    let c = s.open("f");
    assert_eq!(c.size(), 0);
    assert_eq!(c.index().chunk_count(), 0);
    assert_eq!(Container::read_logical_size(c.file()).unwrap(), 0);
}

#[test]
fn create_refuses_non_empty_file_and_bad_chunk_size() {
    let s = Scratch::new();
    std::fs::write(s.path("x"), b"data").unwrap();
    assert!(Container::create(rw(&s.path("x")), 12).is_err());
    assert!(Container::create(rw(&s.path("y")), 11).is_err());
    assert!(Container::create(rw(&s.path("z")), 23).is_err());
}

#[test]
fn append_commit_open_round_trip_over_several_commits() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 12));
    w.append(&text(10_000, 1));
    w.c.commit().unwrap();
    w.append(&pattern(3000, 2));
    w.c.commit().unwrap();
    w.write_at(5000, &pattern(6000, 3));
    w.c.commit().unwrap();
    w.write_at(40_000, b"far away"); // holes in between
    w.c.commit().unwrap();
    w.check();
    let seq = w.c.last_seq();
    assert_eq!(seq, 5);
    let live: Vec<IndexEntry> = w.c.index().live_entries().cloned().collect();

    let c = s.open("f");
    assert_eq!(c.size(), w.model.len() as u64);
    assert_eq!(c.last_seq(), seq);
    assert_eq!(c.index().live_entries().cloned().collect::<Vec<_>>(), live);
    assert_eq!(c.container_len(), w.c.container_len());
    assert!(read_all(&c) == w.model);
    assert!(c.index().hole_count() > 0);
    assert_eq!(
        Container::read_logical_size(c.file()).unwrap(),
        w.model.len() as u64
    );

    // Keep going on the reopened container.
    let mut w2 = Writer::new(c);
    w2.append(&text(5000, 4));
    w2.truncate(7777);
    w2.c.commit().unwrap();
    w2.check();
    let c = s.open("f");
    assert!(read_all(&c) == w2.model);
}

#[test]
fn commit_without_changes_is_a_no_op() {
    let s = Scratch::new();
    let mut c = s.create("f", 12);
    let len = c.container_len();
    c.commit().unwrap();
    assert_eq!(c.container_len(), len);
    c.set_size(0);
    assert!(!c.has_pending());
    c.set_size(100);
    assert!(c.has_pending());
    c.set_size(0);
    assert!(!c.has_pending());
}

#[test]
fn size_only_commit_creates_a_sparse_file() {
    let s = Scratch::new();
    let mut c = s.create("f", 12);
    c.set_size(1 << 40);
    c.commit().unwrap();
    let c = s.open("f");
    assert_eq!(c.size(), 1 << 40);
    assert_eq!(c.index().chunk_count(), 0);
    assert_eq!(c.index().hole_count(), 1 << 28);
}

#[test]
fn hole_entries_survive_reopen() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 12));
    w.append(&pattern(3 * 4096, 9));
    w.c.commit().unwrap();
    w.c.append_hole(1).unwrap();
    w.model[4096..8192].fill(0);
    w.c.commit().unwrap();
    w.check();
    let c = s.open("f");
    assert!(c.index().pieces(1).is_empty());
    assert_eq!(c.index().hole_count(), 1);
    assert!(read_all(&c) == w.model);
}

#[test]
fn shrink_then_grow_before_commit_keeps_dropped_chunks_dropped() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 12));
    w.append(&pattern(5 * 4096, 5));
    w.c.commit().unwrap();
    // Shrink to one chunk and grow again without writing: chunks 1..5 must read as zeros.
    w.truncate(4096);
    w.truncate(5 * 4096);
    w.append(&pattern(100, 6));
    w.truncate(2 * 4096); // drops the new piece and chunk... again
    w.truncate(6 * 4096);
    w.c.commit().unwrap();
    w.check();
    let c = s.open("f");
    assert_eq!(c.size(), 6 * 4096);
    assert_eq!(c.index().chunk_count(), 1);
    assert!(read_all(&c) == w.model);

    // The same through a checkpoint.
    let mut w = Writer::new(c);
    w.append(&pattern(4096, 7));
    w.c.commit().unwrap();
    w.truncate(0);
    w.truncate(100);
    w.c.commit().unwrap();
    assert!(read_all(&s.open("f")) == w.model);
}

#[test]
fn checkpoint_policy_bounds_the_replayed_commits() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 12));
    for i in 0..1100u32 {
        w.append(format!("{i}\n").as_bytes());
        w.c.commit().unwrap();
        assert!(w.c.deltas_since_checkpoint() <= 1024);
    }
    w.check();
    let c = s.open("f");
    assert!(c.deltas_since_checkpoint() <= 1024);
    assert_eq!(c.last_seq(), 1101);
    assert!(read_all(&c) == w.model);
    let bytes = std::fs::read(s.path("f")).unwrap();
    let commits = commits_in(&bytes);
    assert_eq!(commits.len(), 1101);
    let checkpoints: Vec<u64> = commits
        .iter()
        .filter(|c| c.checkpoint)
        .map(|c| c.seq)
        .collect();
    assert!(checkpoints.len() >= 2, "{checkpoints:?}");
    assert_eq!(checkpoints[0], 1);
}

#[test]
fn checkpoint_after_entries_exceed_live_entries() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 12));
    // 2000 chunks, one entry each.
    w.write_at(0, &pattern(2000 * 4096, 1));
    w.c.commit().unwrap();
    assert_eq!(w.c.deltas_since_checkpoint(), 1);
    // 2000 + 2000 entries since the last checkpoint > 2000 live entries.
    w.write_at(0, &pattern(2000 * 4096, 2));
    w.c.commit().unwrap();
    assert_eq!(w.c.deltas_since_checkpoint(), 0);
    w.write_at(0, &pattern(4096, 3));
    w.c.commit().unwrap();
    assert_eq!(w.c.deltas_since_checkpoint(), 1);
    let c = s.open("f");
    assert_eq!(c.deltas_since_checkpoint(), 1);
    assert_eq!(c.index().live_entry_count(), 2000);
    assert!(read_all(&c) == w.model);
}

/// A caller that must not hold the container across an fdatasync asks first: the commit that
/// would be a checkpoint over unsynced data says so, and once the data is synced (and marked) it
/// no longer does; a delta commit never needs one.
#[test]
fn commit_needs_sync_exactly_before_a_checkpoint_over_unsynced_data() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 12));
    // 2000 chunks, one entry each: a delta commit (as in the test above).
    w.write_at(0, &pattern(2000 * 4096, 1));
    assert!(
        !w.c.commit_needs_sync(),
        "a delta commit needs no fdatasync"
    );
    w.c.commit().unwrap();
    assert_eq!(w.c.deltas_since_checkpoint(), 1);
    // 2000 + 2000 entries since the last checkpoint > 2000 live: the next commit is one.
    w.write_at(0, &pattern(2000 * 4096, 2));
    assert!(w.c.commit_needs_sync());
    w.c.file().sync_data().unwrap();
    w.c.mark_synced(w.c.container_len());
    assert!(!w.c.commit_needs_sync(), "synced and marked");
    w.c.commit().unwrap();
    assert_eq!(w.c.deltas_since_checkpoint(), 0, "it was a checkpoint");
    assert!(!w.c.commit_needs_sync(), "nothing pending");
    assert!(read_all(&s.open("f")) == w.model);
}

/// An append split in two halves, its bytes written by the caller in between: nothing changes
/// until the second half, a failed write changes nothing (and the bytes after the last good
/// append go at the next write), and a good one is applied and replays after reopening.
#[test]
fn begin_and_finish_append_apply_a_member_only_once_it_is_written() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 12));
    w.append(&pattern(4096, 1));
    w.c.commit().unwrap();
    let len = w.c.container_len();
    let data = pattern(4096, 2);
    let (member, entry) = w.member(4096, true, &data);
    let slot = w.c.begin_append(&member, entry.clone()).unwrap();
    assert_eq!(slot.offset(), len);
    assert_eq!(
        w.c.container_len(),
        len,
        "nothing changes before finish_append"
    );
    assert!(w.c.index().pieces(1).is_empty());
    // A write that failed half way: some bytes landed, the append is not applied.
    w.c.file()
        .write_all_at(&member[..10], slot.offset())
        .unwrap();
    let failed = std::io::Error::from_raw_os_error(libc::ENOSPC);
    assert!(w.c.finish_append(slot, Err(failed)).is_err());
    assert_eq!(w.c.container_len(), len);
    assert!(w.c.index().pieces(1).is_empty());
    // The next append cuts the torn bytes away first and goes where they were.
    let slot = w.c.begin_append(&member, entry).unwrap();
    assert_eq!(slot.offset(), len);
    assert_eq!(w.c.file().metadata().unwrap().len(), len);
    w.c.file().write_all_at(&member, slot.offset()).unwrap();
    w.c.finish_append(slot, Ok(())).unwrap();
    assert_eq!(w.c.container_len(), len + member.len() as u64);
    w.c.set_size(8192);
    w.model.extend_from_slice(&data);
    w.c.commit().unwrap();
    assert!(read_all(&s.open("f")) == w.model);
}

#[test]
fn a_checkpoint_of_more_than_a_mebibyte_of_index_is_written_in_pieces_and_replays() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 12));
    // 20,000 one-entry chunks: a checkpoint of 20 index members, about 1.3 MB, more than the
    // 1 MiB the writer holds before writing.
    w.write_at(0, &pattern(20_000 * 4096, 1));
    w.c.commit().unwrap();
    w.write_at(0, &pattern(20_000 * 4096, 2));
    w.c.commit().unwrap();
    assert_eq!(
        w.c.deltas_since_checkpoint(),
        0,
        "the second commit is a checkpoint"
    );
    let bytes = std::fs::read(s.path("f")).unwrap();
    let last = commits_in(&bytes).pop().unwrap();
    assert!(last.checkpoint && last.entry_count == 20_000);
    assert!(last.offset - last.first_index > 1 << 20, "{last:?}");
    let c = s.open("f");
    assert_eq!(c.index().live_entry_count(), 20_000);
    assert!(read_all(&c) == w.model);
}

#[test]
fn reset_empties_the_container_in_place() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 13));
    w.append(&text(50_000, 1));
    w.c.commit().unwrap();
    w.c.reset().unwrap();
    assert_eq!(w.c.size(), 0);
    assert_eq!(w.c.container_len(), 140);
    assert_eq!(std::fs::metadata(s.path("f")).unwrap().len(), 140);
    let mut w = Writer::new(w.c);
    w.append(b"again");
    w.c.commit().unwrap();
    let c = s.open("f");
    assert_eq!(c.chunk_log2(), 13);
    assert_eq!(read_all(&c), b"again");
}

#[test]
fn rebuild_compacts_to_header_members_and_one_checkpoint() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 12));
    w.write_at(0, &pattern(64 * 4096, 1));
    w.c.commit().unwrap();
    for round in 0..4u8 {
        w.write_at(0, &pattern(64 * 4096, 10 + round));
        w.c.commit().unwrap();
    }
    w.truncate(64 * 4096 - 100);
    w.c.commit().unwrap();
    assert!(w.c.container_len() >= 1 << 20);
    assert!(w.c.stale_bytes() > w.c.container_len() / 2);
    assert!(w.c.needs_compaction());

    let members: Vec<(Vec<u8>, IndexEntry)> =
        w.c.index()
            .live_entries()
            .map(|e| {
                let mut m = vec![0u8; e.stored_len as usize];
                w.c.read_member(e, &mut m).unwrap();
                (m, e.clone())
            })
            .collect();
    let live_bytes: u64 = members.iter().map(|(m, _)| m.len() as u64).sum();
    let n = members.len() as u64;
    let new = Container::rebuild(rw(&s.path("g")), 12, w.c.size(), members.into_iter()).unwrap();
    assert_eq!(
        new.container_len(),
        46 + live_bytes + n.div_ceil(1000) * 34 + 64 * n + 94
    );
    assert_eq!(new.stale_bytes(), 0);
    assert!(!new.needs_compaction());
    assert!(read_all(&new) == w.model);
    let g = s.open("g");
    assert!(read_all(&g) == w.model);
    assert_eq!(g.last_seq(), 1);
    assert_eq!(g.deltas_since_checkpoint(), 0);
}

#[test]
fn many_pieces_per_chunk_trigger_compaction() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 22));
    let line = pattern(1000, 3);
    for _ in 0..1100 {
        w.append(&line);
    }
    w.c.commit().unwrap();
    assert!(w.c.container_len() >= 1 << 20);
    assert!(w.c.index().live_entry_count() > 2 * w.c.index().chunk_count());
    assert!(w.c.needs_compaction());
}

#[test]
fn small_containers_never_need_compaction() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 12));
    for i in 0..50u8 {
        w.write_at(0, &pattern(4096, i));
        w.c.commit().unwrap();
    }
    assert!(w.c.stale_bytes() > w.c.container_len() / 2);
    assert!(!w.c.needs_compaction());
}

#[test]
fn failed_writes_leave_state_unchanged() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 12));
    w.append(&text(9000, 1));
    w.c.commit().unwrap();
    drop(w);
    // A read-only handle: every write fails (EBADF).
    let ro = OpenOptions::new().read(true).open(s.path("f")).unwrap();
    let mut c = Container::open(ro).unwrap();
    let before_len = c.container_len();
    let before: Vec<IndexEntry> = c.index().live_entries().cloned().collect();
    let (m, e) = build_stored_member(9000, false, b"more");
    let err = c.append_member(&m, e).unwrap_err();
    assert_eq!(err.to_errno(), libc::EBADF);
    assert_eq!(c.container_len(), before_len);
    assert_eq!(
        c.index().live_entries().cloned().collect::<Vec<_>>(),
        before
    );
    assert!(!c.has_pending());
    c.set_size(100_000);
    assert!(c.commit().is_err());
    assert!(c.has_pending());
    assert_eq!(c.container_len(), before_len);
    assert_eq!(c.last_seq(), 2);
    assert_eq!(Container::read_logical_size(c.file()).unwrap(), 9000);
    // A failed reset (the ftruncate fails) changes nothing either.
    assert!(c.reset().is_err());
    assert_eq!(c.size(), 100_000);
    assert_eq!(c.container_len(), before_len);
    assert_eq!(
        c.index().live_entries().cloned().collect::<Vec<_>>(),
        before
    );
    drop(c);
    let c = s.open("f");
    assert_eq!(c.size(), 9000);
    assert_eq!(read_all(&c), text(9000, 1));
}

#[test]
fn append_member_rejects_inconsistent_members() {
    let s = Scratch::new();
    let mut c = s.create("f", 12);
    let (m, mut e) = build_stored_member(0, true, b"hello");
    e.crc32 ^= 1;
    assert!(matches!(
        c.append_member(&m, e),
        Err(ContainerError::Corrupt { .. })
    ));
    // A piece crossing a chunk boundary.
    let (m, e) = build_stored_member(4000, true, &[1u8; 200]);
    assert!(c.append_member(&m, e).is_err());
    assert_eq!(c.container_len(), 140);
    assert!(!c.has_pending());
}

#[test]
fn probe_tells_containers_from_other_files() {
    let s = Scratch::new();
    let _ = s.create("c", 12);
    assert!(Container::probe(&rw(&s.path("c"))).unwrap());
    std::fs::write(s.path("empty"), b"").unwrap();
    assert!(!Container::probe(&rw(&s.path("empty"))).unwrap());
    std::fs::write(s.path("short"), &header_member(12)[..14]).unwrap();
    assert!(!Container::probe(&rw(&s.path("short"))).unwrap());
    // A longer prefix of a new container's first bytes is an interrupted creation (FORMAT.md).
    std::fs::write(s.path("short"), &header_member(12)[..45]).unwrap();
    assert!(Container::probe(&rw(&s.path("short"))).unwrap());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&text(5000, 1)).unwrap();
    std::fs::write(s.path("gz"), gz.finish().unwrap()).unwrap();
    assert!(!Container::probe(&rw(&s.path("gz"))).unwrap());
    assert!(matches!(
        Container::open(rw(&s.path("gz"))),
        Err(ContainerError::NotAContainer)
    ));
    // A valid header of another version is refused, not served as a plain file.
    let mut h = header_member(12);
    h[24] = 9;
    let crc = libdeflater::crc32(&h[16..32]);
    h[32..36].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(s.path("v9"), h).unwrap();
    let err = Container::probe(&rw(&s.path("v9"))).unwrap_err();
    assert!(matches!(err, ContainerError::UnsupportedVersion(9)));
    assert_eq!(err.to_errno(), libc::EIO);
}

#[test]
fn header_without_commit_is_damaged() {
    let s = Scratch::new();
    let mut b = header_member(12).to_vec();
    b.extend_from_slice(b"not a commit member");
    std::fs::write(s.path("h"), &b).unwrap();
    assert!(Container::probe(&rw(&s.path("h"))).unwrap());
    assert!(matches!(
        Container::open(rw(&s.path("h"))),
        Err(ContainerError::Corrupt { .. })
    ));
    assert!(Container::read_logical_size(&rw(&s.path("h"))).is_err());
}

#[test]
fn an_interrupted_creation_is_an_empty_container() {
    // Any prefix of a new container's header and first checkpoint from 16 bytes on (through the
    // header's subfield id and length; 15 ending in a non-zero byte) is what a crash during creation leaves: an empty
    // container, with its chunk size when the prefix reaches it (27 bytes), else 128 KiB.
    let s = Scratch::new();
    let _ = s.create("full", 13);
    let whole = std::fs::read(s.path("full")).unwrap();
    assert_eq!(whole.len(), 140);
    for cut in [16, 22, 26, 27, 45, 46, 100, 139] {
        std::fs::write(s.path("h"), &whole[..cut]).unwrap();
        assert!(Container::probe(&rw(&s.path("h"))).unwrap(), "cut {cut}");
        assert_eq!(Container::read_logical_size(&rw(&s.path("h"))).unwrap(), 0);
        let mut c = Container::open(rw(&s.path("h"))).unwrap();
        assert_eq!(
            (c.size(), c.chunk_log2()),
            (0, if cut >= 27 { 13 } else { 17 }),
            "cut {cut}"
        );
        let (m, e) = build_stored_member(0, true, b"again");
        c.append_member(&m, e).unwrap();
        c.set_size(5);
        c.commit().unwrap();
        drop(c);
        let c = Container::open(rw(&s.path("h"))).unwrap();
        assert_eq!(c.size(), 5, "cut {cut}");
    }
    // The same, followed by zeros: appends whose pages never reached the disk.
    let mut b = whole[..91].to_vec();
    b.resize(5000, 0);
    std::fs::write(s.path("h"), &b).unwrap();
    assert!(Container::probe(&rw(&s.path("h"))).unwrap());
    assert_eq!(Container::open(rw(&s.path("h"))).unwrap().size(), 0);
    let mut b = whole[..30].to_vec();
    b.resize(300, 0);
    std::fs::write(s.path("h"), &b).unwrap();
    assert!(Container::probe(&rw(&s.path("h"))).unwrap());
    // Zeros then data again: damaged, not an interrupted creation.
    let mut b = whole[..91].to_vec();
    b.resize(5000, 0);
    b[4000] = 1;
    std::fs::write(s.path("h"), &b).unwrap();
    assert!(Container::open(rw(&s.path("h"))).is_err());
    // Not a prefix (a byte changed): not ours, or damaged.
    let mut b = whole[..100].to_vec();
    b[60] ^= 1;
    std::fs::write(s.path("h"), &b).unwrap();
    assert!(Container::open(rw(&s.path("h"))).is_err());
}

#[test]
fn read_member_short_read_is_corrupt() {
    let s = Scratch::new();
    let mut c = s.create("f", 12);
    let (m, e) = build_stored_member(0, true, b"hello");
    c.append_member(&m, e).unwrap();
    c.set_size(5);
    c.commit().unwrap();
    let e = c.index().pieces(0)[0].clone();
    let mut buf = vec![0u8; e.stored_len as usize];
    c.read_member(&e, &mut buf).unwrap();
    assert_eq!(buf, m);
    c.file().set_len(e.member_offset + 10).unwrap();
    assert!(matches!(
        c.read_member(&e, &mut buf),
        Err(ContainerError::Corrupt { .. })
    ));
}

#[test]
fn damaged_index_member_fails_open_with_its_offset() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 12));
    w.append(&text(5000, 1));
    w.c.commit().unwrap();
    let bytes = std::fs::read(s.path("f")).unwrap();
    let last = commits_in(&bytes).pop().unwrap();
    let f = rw(&s.path("f"));
    let at = last.first_index + 30;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
    match Container::open(f) {
        Err(ContainerError::Corrupt { offset, what }) => {
            assert!(
                offset >= last.first_index && offset < last.offset,
                "{what} at {offset}"
            )
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// A power cut can keep the later pages of a never-fsync'd new container and lose the first: zeros
/// up to a page boundary, then raw members. That is an interrupted creation (an empty container,
/// FORMAT.md), not a plain file of bytes that were never written. Zeros ending off a page
/// boundary, or a page of zeros followed by something that is no member (an ISO image starts
/// with 32 KiB of zeros), stay plain files.
#[test]
fn a_creation_whose_first_pages_were_lost_is_an_empty_container() {
    let s = Scratch::new();
    let mut c = s.create("full", 12);
    for i in 0..6u64 {
        let (m, e) = build_stored_member(i << 12, true, &text(4096, i as u8));
        c.append_member(&m, e).unwrap();
    }
    c.commit().unwrap();
    let full = std::fs::read(s.path("full")).unwrap();
    // Pages 0 and 1 lost, 2.. kept: a member starts somewhere in page 2 or later.
    let mut lost = full.clone();
    lost[..8192].fill(0);
    std::fs::write(s.path("lost"), &lost).unwrap();
    assert!(Container::probe(&rw(&s.path("lost"))).unwrap());
    let opened = Container::open(rw(&s.path("lost"))).unwrap();
    assert_eq!(opened.size(), 0);
    assert_eq!(
        Container::read_logical_size(&rw(&s.path("lost"))).unwrap(),
        0
    );
    // Zeros that do not end at a page boundary: not what a lost page leaves.
    let mut odd = full.clone();
    odd[..8000].fill(0);
    std::fs::write(s.path("odd"), &odd).unwrap();
    assert!(!Container::probe(&rw(&s.path("odd"))).unwrap());
    // An ISO-like file: 32 KiB of zeros, then a volume descriptor.
    let mut iso = vec![0u8; 32768];
    iso.extend_from_slice(b"\x01CD001\x01\x00");
    iso.extend_from_slice(&pattern(100_000, 3));
    std::fs::write(s.path("iso"), &iso).unwrap();
    assert!(!Container::probe(&rw(&s.path("iso"))).unwrap());
}

/// A new container's backing file carries the user.deflatefs.container mark, metadata a
/// journaling filesystem keeps with the file's creation. After a power cut that lost the first
/// page and kept only the middle of a compressed stream (nothing left to recognise), the mark
/// still makes it an interrupted creation, an empty container; without the mark the same bytes
/// are a plain file.
#[test]
fn the_creation_mark_identifies_a_container_whose_first_page_was_lost() {
    let s = Scratch::new();
    let mut c = s.create("c", 15);
    let (m, e) = build_stored_member(0, true, &pattern(20_000, 5));
    c.append_member(&m, e).unwrap();
    c.commit().unwrap();
    drop(c);
    let mut bytes = std::fs::read(s.path("c")).unwrap();
    // Page 0 lost, page 1 (the middle of the data member) kept, the rest (commit) lost.
    bytes[..4096].fill(0);
    bytes[8192..].fill(0);
    std::fs::OpenOptions::new()
        .write(true)
        .open(s.path("c"))
        .unwrap()
        .write_all_at(&bytes, 0)
        .unwrap();
    let mut v = [0u8; 8];
    let p = std::ffi::CString::new(s.path("c").into_os_string().into_encoded_bytes()).unwrap();
    let n = unsafe {
        libc::getxattr(
            p.as_ptr(),
            c"user.deflatefs.container".as_ptr(),
            v.as_mut_ptr().cast(),
            8,
        )
    };
    assert_eq!((n, v[0]), (1, b'1'), "the mark");
    assert!(Container::probe(&rw(&s.path("c"))).unwrap());
    assert_eq!(Container::open(rw(&s.path("c"))).unwrap().size(), 0);
    unmark(&s.path("c"));
    assert!(!Container::probe(&rw(&s.path("c"))).unwrap());
}

/// A marked file gets the same answer at every length: empty, short zeros, or zeros then
/// anything, it is an interrupted creation. (Judged plain while it was 100 zero bytes, then
/// written as a plain file with a hole at its start, it turned into an empty container at the
/// next mount once it was longer than the 140-byte header: the power-cut test's "fsync'd file
/// reads as size 0".)
#[test]
fn a_marked_file_that_starts_with_zeros_is_a_container_at_every_length() {
    let s = Scratch::new();
    drop(s.create("m", 12));
    let p = std::ffi::CString::new(s.path("m").into_os_string().into_encoded_bytes()).unwrap();
    for len in [0usize, 1, 100, 139, 140, 5000, 200_000] {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(s.path("m"))
            .unwrap();
        f.set_len(0).unwrap();
        f.set_len(len as u64).unwrap();
        if len > 6000 {
            f.write_all_at(&pattern(1000, 9), 5854).unwrap();
        }
        drop(f);
        let mut v = [0u8; 1];
        assert_eq!(
            unsafe {
                libc::getxattr(
                    p.as_ptr(),
                    c"user.deflatefs.container".as_ptr(),
                    v.as_mut_ptr().cast(),
                    1,
                )
            },
            1
        );
        assert!(Container::probe(&rw(&s.path("m"))).unwrap(), "len {len}");
        assert_eq!(Container::open(rw(&s.path("m"))).unwrap().size(), 0);
    }
}

/// What seed 5 of the power-cut test left: a marked file re-created in place (truncated, header,
/// then data appended) whose first page the cut kept at its earlier version, a 112-byte prefix of
/// the first bytes, while later pages of new data were kept. No commit is complete anywhere, so
/// nothing in it was durable: an interrupted creation, not a damaged container (EIO). Unmarked,
/// the same bytes stay damage for fsck.
#[test]
fn a_marked_file_without_any_complete_commit_is_an_interrupted_creation() {
    let s = Scratch::new();
    let mut c = s.create("m", 14);
    let (m, e) = build_stored_member(0, true, &pattern(9000, 2));
    c.append_member(&m, e).unwrap();
    c.commit().unwrap();
    drop(c);
    let mut b = std::fs::read(s.path("m")).unwrap();
    b[112..140].fill(0);
    let n = b.len();
    b.truncate(n - 94); // no commit after the data either
    std::fs::write(s.path("m"), &b).unwrap();
    assert!(Container::probe(&rw(&s.path("m"))).unwrap());
    assert_eq!(Container::open(rw(&s.path("m"))).unwrap().size(), 0);
    unmark(&s.path("m"));
    assert!(Container::open(rw(&s.path("m"))).is_err());
}

/// Power-cut seed 5 (one run of four, 2026-12-03): a marked file re-created in place whose first
/// page the cut kept at an earlier version holding only the first 36 bytes of the header, while
/// its new length was kept. The header parsed up to its body (bytes 36..46, zeros) and the open
/// failed with EIO ("metadata member body is not the empty deflate stream"); nothing in it was
/// durable, so it is an interrupted creation. Unmarked, the same bytes stay an error.
#[test]
fn a_marked_file_whose_header_is_torn_at_its_body_is_an_interrupted_creation() {
    for len in [46usize, 140, 5000] {
        let s = Scratch::new();
        drop(s.create("m", 14));
        let mut b = std::fs::read(s.path("m")).unwrap();
        b.resize(len, 0);
        b[36..].fill(0);
        if len > 4096 {
            // A later page of new data the cut kept.
            b[4096..].copy_from_slice(&pattern(len - 4096, 3));
        }
        std::fs::write(s.path("m"), &b).unwrap();
        let c = Container::open(rw(&s.path("m"))).unwrap_or_else(|e| panic!("len {len}: {e}"));
        assert_eq!(c.size(), 0, "len {len}");
        drop(c);
        unmark(&s.path("m"));
        // Unmarked, only zeros after the prefix make it an interrupted creation (as for any
        // prefix of the first bytes); data after it is damage for fsck.
        let unmarked = Container::open(rw(&s.path("m")));
        if len > 4096 {
            assert!(unmarked.is_err(), "len {len}, unmarked");
        } else {
            assert_eq!(unmarked.unwrap().size(), 0, "len {len}, unmarked");
        }
    }
}

/// Power-cut seeds 7 and 8 (200 cuts each): a file that was an interrupted creation in the image
/// (its first page a short prefix of a new container's first bytes) was re-created in place and
/// written without an fsync; the next cut kept its first page at that earlier version and later
/// pages with a complete delta commit whose chain leads to the lost first checkpoint. Recovery
/// read EIO ("previous commit of the commit at 12332: bad gzip member header"); it is an
/// interrupted creation, an empty file. A strict open (damage found in this boot) and an
/// unmarked file stay errors.
#[test]
fn a_recovering_open_of_a_marked_file_whose_first_checkpoint_was_lost_is_an_interrupted_creation() {
    use deflatefs::container::OpenMode;
    for kept in [46usize, 98] {
        let s = Scratch::new();
        let mut c = s.create("m", 14);
        for i in 0..3u64 {
            let (m, e) = build_stored_member(i * 16384, true, &pattern(9000, i as u8));
            c.append_member(&m, e).unwrap();
            c.set_size(i * 16384 + 9000);
            c.commit().unwrap();
        }
        drop(c);
        let mut b = std::fs::read(s.path("m")).unwrap();
        b[kept..4096].fill(0);
        std::fs::write(s.path("m"), &b).unwrap();
        assert!(Container::open(rw(&s.path("m"))).is_err(), "kept {kept}");
        let c = Container::open_with(rw(&s.path("m")), OpenMode::Recover).unwrap();
        assert_eq!(c.size(), 0, "kept {kept}");
        unmark(&s.path("m"));
        assert!(Container::open_with(rw(&s.path("m")), OpenMode::Recover).is_err());
    }
}

/// Removes the creation mark (`user.deflatefs.container`) from `path`, leaving the file as a
/// backing filesystem without user xattrs would have it.
fn unmark(path: &std::path::Path) {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(
        unsafe { libc::removexattr(p.as_ptr(), c"user.deflatefs.container".as_ptr()) },
        0
    );
}
