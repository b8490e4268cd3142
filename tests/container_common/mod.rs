//! Helpers shared by the container integration tests.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use deflatefs::container::{
    build_deflate_member, build_stored_member, decode_piece, Container, IndexEntry,
};

pub fn rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap()
}

pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn create(&self, name: &str, chunk_log2: u8) -> Container {
        Container::create(rw(&self.path(name)), chunk_log2).unwrap()
    }
    pub fn open(&self, name: &str) -> Container {
        Container::open(rw(&self.path(name))).unwrap()
    }
}

/// The logical content of a container, decoded through its index.
pub fn read_all(c: &Container) -> Vec<u8> {
    let size = c.size() as usize;
    let cs = c.index().chunk_size() as usize;
    let mut out = vec![0u8; size.div_ceil(cs) * cs];
    let mut d = libdeflater::Decompressor::new();
    for chunk in c.index().data_chunks().collect::<Vec<_>>() {
        for e in c.index().pieces(chunk) {
            let mut m = vec![0u8; e.stored_len as usize];
            c.read_member(e, &mut m).unwrap();
            let o = e.logical_offset as usize;
            decode_piece(&m, e, &mut d, &mut out[o..o + e.logical_len as usize]).unwrap();
        }
    }
    out.truncate(size);
    out
}

/// A simple model of a file written through a container: keeps the expected content and writes
/// pieces (whole-chunk RESET pieces for overwrites, non-RESET pieces for appends).
pub struct Writer {
    pub c: Container,
    pub model: Vec<u8>,
    comp: libdeflater::Compressor,
    pub toggle: bool,
}

impl Writer {
    pub fn new(c: Container) -> Self {
        let model = read_all(&c);
        Writer {
            c,
            model,
            comp: libdeflater::Compressor::new(libdeflater::CompressionLvl::new(6).unwrap()),
            toggle: false,
        }
    }

    /// A data member holding `data` at logical offset `off`, and its index entry.
    pub fn member(&mut self, off: u64, reset: bool, data: &[u8]) -> (Vec<u8>, IndexEntry) {
        self.toggle = !self.toggle;
        if self.toggle {
            build_stored_member(off, reset, data)
        } else {
            build_deflate_member(&mut self.comp, 6, off, reset, data)
        }
    }

    /// Appends `data` at the end of the file as non-RESET pieces (RESET at chunk starts).
    pub fn append(&mut self, data: &[u8]) {
        let cs = self.c.index().chunk_size() as usize;
        let mut pos = self.model.len();
        let mut rest = data;
        while !rest.is_empty() {
            let in_chunk = cs - pos % cs;
            let n = in_chunk.min(rest.len());
            let (m, e) = self.member(pos as u64, pos.is_multiple_of(cs), &rest[..n]);
            self.c.append_member(&m, e).unwrap();
            self.model.extend_from_slice(&rest[..n]);
            pos += n;
            rest = &rest[n..];
            self.c.set_size(pos as u64);
        }
    }

    /// Overwrites `data` at `off` (may extend the file): rewrites each touched chunk whole as a
    /// RESET piece.
    pub fn write_at(&mut self, off: usize, data: &[u8]) {
        let cs = self.c.index().chunk_size() as usize;
        if self.model.len() < off + data.len() {
            self.model.resize(off + data.len(), 0);
        }
        self.model[off..off + data.len()].copy_from_slice(data);
        let size = self.model.len();
        self.c.set_size(size as u64);
        let first = off / cs;
        let last = (off + data.len()).div_ceil(cs);
        for chunk in first..last {
            let s = chunk * cs;
            let e = (s + cs).min(size);
            let bytes = self.model[s..e].to_vec();
            let (m, ent) = self.member(s as u64, true, &bytes);
            self.c.append_member(&m, ent).unwrap();
        }
    }

    /// Truncates to `size` (rewriting a partial last chunk as a RESET piece).
    pub fn truncate(&mut self, size: usize) {
        let cs = self.c.index().chunk_size() as usize;
        let old = self.model.len();
        self.model.resize(size, 0);
        self.c.set_size(size as u64);
        if size < old
            && !size.is_multiple_of(cs)
            && !self.c.index().pieces((size / cs) as u64).is_empty()
        {
            let s = size / cs * cs;
            let bytes = self.model[s..size].to_vec();
            let (m, e) = self.member(s as u64, true, &bytes);
            self.c.append_member(&m, e).unwrap();
        }
    }

    pub fn check(&self) {
        assert_eq!(self.c.size() as usize, self.model.len());
        assert!(
            read_all(&self.c) == self.model,
            "content differs from model"
        );
    }
}

/// Every commit member in a container (by scanning and decoding), in file order.
pub fn commits_in(bytes: &[u8]) -> Vec<deflatefs::container::CommitRecord> {
    let prefix = deflatefs::container::CommitRecord::prefix();
    let mut v = Vec::new();
    let mut i = 0;
    while i + 94 <= bytes.len() {
        if bytes[i..i + 16] == prefix {
            if let Ok(c) = deflatefs::container::CommitRecord::decode(&bytes[i..i + 94], i as u64) {
                v.push(c);
            }
        }
        i += 1;
    }
    v
}
