//! Fuzz-style property tests: whatever the bytes, parsing never panics, never hangs and never
//! allocates beyond what the file length justifies. Errors are fine.

mod container_common;

use std::fs::File;
use std::sync::OnceLock;

use container_common::{rw, Scratch, Writer};
use deflatefs::container::{
    decode_piece, decode_stored_blocks, header_member, parse_data_member, CommitRecord, Container,
    IndexEntry, PieceKind,
};
use proptest::prelude::*;

/// A small real container: several commits, stored and deflate pieces, appends, a hole, a
/// truncation, and a checkpoint-free chain.
fn sample() -> &'static [u8] {
    static SAMPLE: OnceLock<Vec<u8>> = OnceLock::new();
    SAMPLE.get_or_init(|| {
        let s = Scratch::new();
        let mut w = Writer::new(s.create("s", 12));
        w.append(b"first line\n");
        w.c.commit().unwrap();
        w.append(b"second line\n");
        w.c.commit().unwrap();
        w.write_at(4096, &[0x5a; 3000]);
        w.c.commit().unwrap();
        w.write_at(9000, b"tail");
        w.c.append_hole(1).unwrap();
        w.c.commit().unwrap();
        w.truncate(9002);
        w.c.commit().unwrap();
        std::fs::read(s.path("s")).unwrap()
    })
}

/// Runs every reader on `bytes`; if the container opens, reads and decodes every piece.
fn exercise(bytes: &[u8]) {
    let s = Scratch::new();
    let path = s.path("f");
    std::fs::write(&path, bytes).unwrap();
    let f: File = rw(&path);
    let _ = Container::probe(&f);
    let _ = Container::read_logical_size(&f);
    if let Ok(c) = Container::open(f) {
        let _ = c.index().hole_count();
        let _ = c.stale_bytes();
        let _ = c.needs_compaction();
        let mut d = libdeflater::Decompressor::new();
        let chunks: Vec<u64> = c.index().data_chunks().take(64).collect();
        for chunk in chunks {
            for e in c.index().pieces(chunk) {
                // Validated entries: stored_len fits in the file.
                assert!(e.member_offset + e.stored_len as u64 <= bytes.len() as u64);
                let mut m = vec![0u8; e.stored_len as usize];
                if c.read_member(e, &mut m).is_ok() {
                    let mut out = vec![0u8; e.logical_len as usize];
                    let _ = decode_piece(&m, e, &mut d, &mut out);
                }
            }
        }
    }
}

fn index_member(entries: &[[u8; 64]]) -> Vec<u8> {
    let payload_len = 4 + 64 * entries.len() + 4;
    let mut m = vec![0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff];
    m.extend_from_slice(&((payload_len + 4) as u16).to_le_bytes());
    m.extend_from_slice(b"Di");
    m.extend_from_slice(&(payload_len as u16).to_le_bytes());
    let start = m.len();
    m.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        m.extend_from_slice(e);
    }
    let crc = libdeflater::crc32(&m[start..]);
    m.extend_from_slice(&crc.to_le_bytes());
    m.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    m
}

fn entry_bytes() -> impl Strategy<Value = [u8; 64]> {
    (
        prop::array::uniform32(any::<u8>()),
        prop::array::uniform32(any::<u8>()),
        0u8..3,
        0u8..2,
        0u64..20_000,
        0u64..(1 << 40),
    )
        .prop_map(|(a, b, kind, flags, member, logical)| {
            let mut e = [0u8; 64];
            e[..32].copy_from_slice(&a);
            e[32..].copy_from_slice(&b);
            e[28] = kind;
            e[29] = if kind == 2 { 1 } else { flags };
            // Mostly plausible offsets so decoding goes deep.
            e[0..8].copy_from_slice(&logical.to_le_bytes());
            let member = if kind == 2 { u64::MAX } else { member };
            e[12..20].copy_from_slice(&member.to_le_bytes());
            e[20] &= 0x7f;
            e[21] = 0;
            e[22] = 0;
            e[23] = 0;
            e
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        exercise(&bytes);
    }

    #[test]
    fn random_bytes_after_a_valid_header_never_panic(
        tail in prop::collection::vec(any::<u8>(), 0..3000),
        log2 in 12u8..=22,
    ) {
        let mut b = header_member(log2).to_vec();
        b.extend_from_slice(&tail);
        exercise(&b);
    }

    #[test]
    fn truncated_containers_never_panic(cut in 0usize..4000) {
        let s = sample();
        exercise(&s[..cut.min(s.len())]);
    }

    #[test]
    fn bit_flipped_containers_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..6),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut b = sample().to_vec();
        for (i, bit) in flips {
            let i = i.index(b.len());
            b[i] ^= 1 << bit;
        }
        if let Some(c) = cut {
            b.truncate(c.index(b.len() + 1));
        }
        exercise(&b);
    }

    #[test]
    fn crc_valid_hostile_commits_never_panic(
        seq in any::<u64>(),
        size in any::<u64>(),
        prev in prop_oneof![Just(u64::MAX), any::<u64>(), 0u64..5000],
        first_back in 0u64..5000,
        entry_count in prop_oneof![any::<u32>(), 0u32..10],
        index_members in prop_oneof![any::<u32>(), 0u32..3],
        checkpoint in any::<bool>(),
        entries in prop::collection::vec(entry_bytes(), 0..5),
    ) {
        // A real container, then an index member of random (crc-valid) entries, then a commit
        // with random fields (crc-valid, own offset right) at the very end.
        let mut b = sample().to_vec();
        let index_at = b.len() as u64;
        if !entries.is_empty() {
            b.extend_from_slice(&index_member(&entries));
        }
        let offset = b.len() as u64;
        let c = CommitRecord {
            seq,
            offset,
            size,
            prev,
            first_index: if first_back == 0 { index_at } else { offset.saturating_sub(first_back) },
            entry_count,
            checkpoint,
            index_members,
            aux: u64::MAX,
        };
        b.extend_from_slice(&c.encode());
        exercise(&b);
    }

    #[test]
    fn crc_valid_random_entries_in_a_consistent_commit_never_panic(
        entries in prop::collection::vec(entry_bytes(), 1..8),
        checkpoint in any::<bool>(),
        size in 0u64..(1 << 42),
    ) {
        let base = sample();
        let prev = base.len() as u64 - 94;
        let prev_seq = CommitRecord::decode(&base[base.len() - 94..], prev).unwrap().seq;
        let mut b = base.to_vec();
        let index_at = b.len() as u64;
        b.extend_from_slice(&index_member(&entries));
        let offset = b.len() as u64;
        let c = CommitRecord {
            seq: prev_seq + 1,
            offset,
            size,
            prev,
            first_index: index_at,
            entry_count: entries.len() as u32,
            checkpoint,
            index_members: 1,
            aux: u64::MAX,
        };
        b.extend_from_slice(&c.encode());
        exercise(&b);
    }

    #[test]
    fn parse_data_member_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        stored_len in prop_oneof![Just(None), any::<u32>().prop_map(Some)],
        kind in 0u8..3,
        reset in any::<bool>(),
        logical_offset in any::<u64>(),
        logical_len in any::<u32>(),
        crc32 in any::<u32>(),
    ) {
        let kind = [PieceKind::Deflate, PieceKind::Stored, PieceKind::Hole][kind as usize];
        let e = IndexEntry {
            logical_offset,
            logical_len,
            member_offset: 1234,
            stored_len: stored_len.unwrap_or(bytes.len() as u32),
            crc32,
            kind,
            reset,
            level: 0,
            window_log2: 0,
            chaining_value: [0; 32],
        };
        let _ = parse_data_member(&bytes, &e);
        let mut d = libdeflater::Decompressor::new();
        let mut out = vec![0u8; (logical_len % 4096) as usize];
        let _ = decode_piece(&bytes, &e, &mut d, &mut out);
    }

    #[test]
    fn data_member_header_with_random_body_never_panics(
        body in prop::collection::vec(any::<u8>(), 0..300),
        stored in any::<bool>(),
        out_len in 0usize..600,
    ) {
        let mut m = deflatefs::container::data_member_header(0, true, stored).to_vec();
        m.extend_from_slice(&body);
        let t = m.len().saturating_sub(8);
        let (crc, isize) = if m.len() >= 40 {
            (
                u32::from_le_bytes(m[t..t + 4].try_into().unwrap()),
                u32::from_le_bytes(m[t + 4..t + 8].try_into().unwrap()),
            )
        } else {
            (0, 0)
        };
        let e = IndexEntry {
            logical_offset: 0,
            logical_len: isize,
            member_offset: 100,
            stored_len: m.len() as u32,
            crc32: crc,
            kind: if stored { PieceKind::Stored } else { PieceKind::Deflate },
            reset: true,
            level: 0,
            window_log2: 0,
            chaining_value: [0; 32],
        };
        if parse_data_member(&m, &e).is_ok() {
            let mut out = vec![0u8; out_len];
            let mut d = libdeflater::Decompressor::new();
            let _ = decode_piece(&m, &e, &mut d, &mut out);
        }
    }

    #[test]
    fn decode_stored_blocks_never_panics(
        stream in prop::collection::vec(any::<u8>(), 0..400),
        out_len in 0usize..500,
    ) {
        let mut out = vec![0u8; out_len];
        if let Ok(n) = decode_stored_blocks(&stream, &mut out) {
            prop_assert!(n <= out_len);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn stored_block_streams_round_trip(data in prop::collection::vec(any::<u8>(), 0..140_000)) {
        let mut s = vec![0u8; deflatefs::container::stored_stream_len(data.len())];
        let n = deflatefs::container::encode_stored_blocks(&data, &mut s);
        prop_assert_eq!(n, s.len());
        let mut out = vec![0u8; data.len()];
        prop_assert_eq!(decode_stored_blocks(&s, &mut out).unwrap(), data.len());
        prop_assert!(out == data);
    }
}
