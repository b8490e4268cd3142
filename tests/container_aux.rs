//! The auxiliary member (docs/FORMAT.md, record `a`): the per-file SHA-256 state a commit records.
//! It survives reopening, is recorded only for the size it hashes, is invisible to zcat and to
//! the replay of older readers, and a damaged one only loses the state.

mod container_common;

use container_common::*;
use deflatefs::container::{AuxRecord, Container, AUX_MEMBER_LEN, COMMIT_MEMBER_LEN};
use deflatefs::digest::Sha256State;

/// Decompresses every gzip member in order, as `zcat` does.
fn gunzip_all(data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out)?;
    Ok(out)
}

fn aux_for(data: &[u8]) -> AuxRecord {
    let mut s = Sha256State::new();
    s.update(data);
    let (sha256_len, sha256_state, sha256_tail) = s.to_parts();
    AuxRecord {
        sha256_len,
        sha256_state,
        sha256_tail,
    }
}

#[test]
fn aux_state_survives_commit_and_reopen() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 12));
    w.append(&[7u8; 10_000]);
    w.c.set_aux(Some(aux_for(&w.model)));
    assert!(w.c.has_pending());
    w.c.commit().unwrap();
    assert!(!w.c.has_pending());
    let c = s.open("f");
    assert_eq!(c.aux(), Some(&aux_for(&[7u8; 10_000])));
    let restored = c.aux().unwrap();
    let st = Sha256State::from_parts(
        restored.sha256_len,
        &restored.sha256_state,
        &restored.sha256_tail,
    );
    let mut direct = Sha256State::new();
    direct.update(&[7u8; 10_000]);
    assert_eq!(st.finalize(), direct.finalize());
}

#[test]
fn only_aux_changes_make_a_commit_of_their_own() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 12));
    w.append(b"hello");
    w.c.commit().unwrap();
    let seq = w.c.last_seq();
    w.c.set_aux(Some(aux_for(b"hello")));
    w.c.commit().unwrap();
    assert_eq!(w.c.last_seq(), seq + 1);
    let c = s.open("f");
    assert_eq!(c.aux(), Some(&aux_for(b"hello")));
    assert_eq!(c.size(), 5);
}

#[test]
fn a_later_commit_without_aux_clears_it() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 12));
    w.append(b"hello");
    w.c.set_aux(Some(aux_for(b"hello")));
    w.c.commit().unwrap();
    w.write_at(1, b"E");
    w.c.set_aux(None);
    w.c.commit().unwrap();
    let c = s.open("f");
    assert_eq!(c.aux(), None);
    w.check();
}

#[test]
fn aux_whose_length_is_not_the_size_is_not_recorded() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 12));
    w.append(b"hello world");
    w.c.set_aux(Some(aux_for(b"hello")));
    w.c.commit().unwrap();
    assert_eq!(w.c.aux(), None);
    assert!(!w.c.has_pending());
    assert_eq!(s.open("f").aux(), None);
}

#[test]
fn aux_member_lies_before_the_index_members_and_zcat_ignores_it() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 12));
    let text = b"line one\nline two\n".repeat(500);
    w.append(&text);
    w.c.set_aux(Some(aux_for(&text)));
    w.c.commit().unwrap();
    let bytes = std::fs::read(s.path("f")).unwrap();
    let commits = commits_in(&bytes);
    let last = commits.last().unwrap();
    assert_ne!(last.aux, u64::MAX);
    assert_eq!(last.aux + AUX_MEMBER_LEN as u64, last.first_index);
    let a = last.aux as usize;
    assert_eq!(&bytes[a + 12..a + 14], b"Da");
    assert_eq!(
        AuxRecord::decode(&bytes[a..a + AUX_MEMBER_LEN], last.aux).unwrap(),
        aux_for(&text)
    );
    assert_eq!(gunzip_all(&bytes).unwrap(), text);
    w.check();
}

#[test]
fn checkpoints_and_rebuilds_carry_the_aux_state() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 12));
    // Enough overwrites of one chunk to force a checkpoint.
    for i in 0..1100u32 {
        w.write_at(0, &i.to_le_bytes());
        w.c.commit().unwrap();
    }
    w.c.set_aux(Some(aux_for(&w.model)));
    w.c.commit().unwrap();
    let bytes = std::fs::read(s.path("f")).unwrap();
    assert!(commits_in(&bytes).iter().any(|c| c.checkpoint && c.seq > 1));
    assert_eq!(s.open("f").aux(), Some(&aux_for(&w.model)));

    let members: Vec<_> =
        w.c.index()
            .live_entries()
            .map(|e| {
                let mut m = vec![0u8; e.stored_len as usize];
                w.c.read_member(e, &mut m).unwrap();
                (m, e.clone())
            })
            .collect();
    let size = w.c.size();
    let rebuilt = Container::rebuild_with_aux(
        rw(&s.path("g")),
        12,
        size,
        Some(aux_for(&w.model)),
        members.into_iter(),
    )
    .unwrap();
    assert_eq!(rebuilt.aux(), Some(&aux_for(&w.model)));
    assert_eq!(s.open("g").aux(), Some(&aux_for(&w.model)));
    assert_eq!(read_all(&s.open("g")), w.model);
}

#[test]
fn torn_tail_inside_a_commit_with_aux_opens_as_the_previous_commit() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 12));
    w.append(b"first");
    w.c.set_aux(Some(aux_for(b"first")));
    w.c.commit().unwrap();
    let good = std::fs::read(s.path("f")).unwrap();
    w.append(b" second");
    w.c.set_aux(Some(aux_for(b"first second")));
    w.c.commit().unwrap();
    let full = std::fs::read(s.path("f")).unwrap();
    for cut in good.len()..full.len() {
        std::fs::write(s.path("t"), &full[..cut]).unwrap();
        let c = Container::open(rw(&s.path("t"))).unwrap();
        assert_eq!(c.size(), 5, "cut {cut}");
        assert_eq!(c.aux(), Some(&aux_for(b"first")), "cut {cut}");
    }
    std::fs::write(s.path("t"), &full).unwrap();
    assert_eq!(
        Container::open(rw(&s.path("t"))).unwrap().aux(),
        Some(&aux_for(b"first second"))
    );
}

#[test]
fn damaged_aux_member_loses_only_the_state() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 12));
    w.append(b"hello");
    w.c.set_aux(Some(aux_for(b"hello")));
    w.c.commit().unwrap();
    let mut bytes = std::fs::read(s.path("f")).unwrap();
    let aux_at = bytes.len() - COMMIT_MEMBER_LEN - 98 - AUX_MEMBER_LEN;
    assert_eq!(&bytes[aux_at + 12..aux_at + 14], b"Da");
    bytes[aux_at + 30] ^= 0xff;
    std::fs::write(s.path("f"), &bytes).unwrap();
    let c = s.open("f");
    assert_eq!(c.aux(), None);
    assert_eq!(read_all(&c), b"hello");
}
