//! Torn tails: a container cut anywhere inside its last append opens as the previous commit.

mod container_common;

use container_common::{read_all, rw, Scratch, Writer};
use deflatefs::container::{Container, IndexEntry};

struct State {
    size: u64,
    live: Vec<IndexEntry>,
    content: Vec<u8>,
    seq: u64,
    len: u64,
}

fn state(c: &Container) -> State {
    State {
        size: c.size(),
        live: c.index().live_entries().cloned().collect(),
        content: read_all(c),
        seq: c.last_seq(),
        len: c.container_len(),
    }
}

fn assert_state(c: &Container, s: &State, cut: u64) {
    assert_eq!(c.size(), s.size, "size, cut at {cut}");
    assert_eq!(c.last_seq(), s.seq, "seq, cut at {cut}");
    assert_eq!(c.container_len(), s.len, "container_len, cut at {cut}");
    assert_eq!(
        c.index().live_entries().cloned().collect::<Vec<_>>(),
        s.live,
        "index, cut at {cut}"
    );
    assert!(read_all(c) == s.content, "content, cut at {cut}");
}

/// Writes `bytes[..cut]` into `name` and opens it.
fn cut_copy(s: &Scratch, name: &str, bytes: &[u8], cut: u64) -> Container {
    std::fs::write(s.path(name), &bytes[..cut as usize]).unwrap();
    Container::open(rw(&s.path(name))).unwrap()
}

/// Builds two commits, then `build_last` and a final commit; checks every cut; returns the file.
fn check_every_cut(build_last: impl FnOnce(&mut Writer)) -> Vec<u8> {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 12));
    w.append(&[7u8; 6000]);
    w.c.commit().unwrap();
    w.write_at(9000, b"sparse tail");
    w.c.commit().unwrap();
    let prev = state(&w.c);
    build_last(&mut w);
    w.c.commit().unwrap();
    w.check();
    let last = state(&w.c);
    assert!(last.len > prev.len);
    let bytes = std::fs::read(s.path("f")).unwrap();
    assert_eq!(bytes.len() as u64, last.len);

    for cut in prev.len..last.len {
        let c = cut_copy(&s, "cut", &bytes, cut);
        assert_state(&c, &prev, cut);
        assert_eq!(
            Container::read_logical_size(c.file()).unwrap(),
            prev.size,
            "read_logical_size, cut at {cut}"
        );
    }
    let c = cut_copy(&s, "cut", &bytes, last.len);
    assert_state(&c, &last, last.len);
    bytes
}

#[test]
fn every_cut_inside_an_append_and_commit_opens_as_the_previous_commit() {
    let bytes = check_every_cut(|w| {
        w.append(b"appended line\n");
        w.write_at(0, &[1u8; 100]);
    });
    assert!(
        !container_common::commits_in(&bytes)
            .pop()
            .unwrap()
            .checkpoint
    );
}

#[test]
fn every_cut_inside_a_size_only_commit_opens_as_the_previous_commit() {
    check_every_cut(|w| w.truncate(20_000));
}

#[test]
fn every_cut_inside_a_checkpoint_opens_as_the_previous_commit() {
    let bytes = check_every_cut(|w| {
        // Enough entries since the last checkpoint to force one (> 1024); hole entries keep the
        // checkpoint itself (live entries only) small.
        for chunk in 10..1110u64 {
            w.c.append_hole(chunk).unwrap();
        }
        w.write_at(0, &[1u8; 100]);
    });
    let last = container_common::commits_in(&bytes).pop().unwrap();
    assert!(last.checkpoint);
}

#[test]
fn every_cut_inside_a_multi_commit_shrink_and_grow_opens_as_a_committed_state() {
    // A shrink that drops data followed by growth is written as two commits; a cut between them
    // opens as the intermediate state, every other cut as the previous or the last state.
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 12));
    w.append(&[3u8; 3 * 4096]);
    w.c.commit().unwrap();
    let prev = state(&w.c);
    w.truncate(100);
    let mid_size = 100;
    w.append(&[4u8; 5000]);
    w.c.commit().unwrap();
    let last = state(&w.c);
    let bytes = std::fs::read(s.path("f")).unwrap();
    let mut seen_mid = false;
    for cut in prev.len..last.len {
        let c = cut_copy(&s, "cut", &bytes, cut);
        if c.last_seq() == prev.seq {
            assert_state(&c, &prev, cut);
        } else {
            assert_eq!(c.last_seq(), prev.seq + 1);
            assert_eq!(c.size(), mid_size, "cut at {cut}");
            let content = read_all(&c);
            assert_eq!(content, vec![3u8; 100]);
            seen_mid = true;
        }
    }
    assert!(seen_mid);
    assert_state(&cut_copy(&s, "cut", &bytes, last.len), &last, last.len);
}

#[test]
fn first_write_after_open_truncates_the_torn_tail() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 12));
    w.append(b"committed\n");
    w.c.commit().unwrap();
    let good_len = w.c.container_len();
    w.append(&[9u8; 3000]);
    w.c.commit().unwrap();
    let bytes = std::fs::read(s.path("f")).unwrap();
    let cut = good_len + (bytes.len() as u64 - good_len) / 2;

    let c = cut_copy(&s, "t", &bytes, cut);
    assert_eq!(c.container_len(), good_len);
    let mut w = Writer::new(c);
    assert_eq!(w.model, b"committed\n");
    w.append(b"after crash\n");
    let after_append = std::fs::metadata(s.path("t")).unwrap().len();
    assert_eq!(after_append, w.c.container_len());
    w.c.commit().unwrap();
    let c = Container::open(rw(&s.path("t"))).unwrap();
    assert_eq!(read_all(&c), b"committed\nafter crash\n");
    assert_eq!(
        c.container_len(),
        std::fs::metadata(s.path("t")).unwrap().len()
    );

    // A commit alone (size change only) truncates it too.
    let c = cut_copy(&s, "u", &bytes, cut);
    let mut c = c;
    c.set_size(5);
    c.commit().unwrap();
    assert_eq!(
        std::fs::metadata(s.path("u")).unwrap().len(),
        c.container_len()
    );
    assert_eq!(
        read_all(&Container::open(rw(&s.path("u"))).unwrap()),
        b"commi"
    );
}

#[test]
fn garbage_after_the_last_commit_is_ignored_and_scanned_past() {
    let s = Scratch::new();
    let mut w = Writer::new(s.create("f", 12));
    w.append(b"some data");
    w.c.commit().unwrap();
    let mut bytes = std::fs::read(s.path("f")).unwrap();
    let len = bytes.len();
    // More than one scan block of garbage, containing fake commit prefixes.
    let prefix = deflatefs::container::CommitRecord::prefix();
    for i in 0..(3 << 20) / 16 {
        if i % 1000 == 0 {
            bytes.extend_from_slice(&prefix);
        } else {
            bytes.extend_from_slice(&[i as u8; 16]);
        }
    }
    std::fs::write(s.path("g"), &bytes).unwrap();
    let c = Container::open(rw(&s.path("g"))).unwrap();
    assert_eq!(c.container_len() as usize, len);
    assert_eq!(read_all(&c), b"some data");
    assert_eq!(Container::read_logical_size(c.file()).unwrap(), 9);
}
