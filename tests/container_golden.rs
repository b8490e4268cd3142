//! Golden bytes: the worked example of docs/FORMAT.md, byte for byte. Any change to these bytes
//! is a format change: update docs/FORMAT.md (and very likely the format version) with it.

use std::fs::OpenOptions;

use deflatefs::container::{build_stored_member, Container};

/// The same annotated dump as in docs/FORMAT.md, "Worked example": `offset: bytes  # comment`.
const GOLDEN: &str = r#"
# member 1: header (offset 0, 46 bytes)
  0: 1f 8b 08 04 00 00 00 00 00 ff   # ID1 ID2, CM deflate, FLG FEXTRA, MTIME 0, XFL 0, OS unknown
 10: 18 00 44 48 14 00               # XLEN 24, subfield 'D' 'H', LEN 20
 16: 44 45 46 4c 41 54 46 53         # magic "DEFLATFS"
 24: 01 00 0c 00 00 00 00 00         # version 1, chunk log2 12 (4 KiB), reserved 0, flags 0
 32: 41 3f 76 71                     # crc32 of payload bytes 0..16 (0x71763f41)
 36: 03 00                           # empty deflate stream
 38: 00 00 00 00 00 00 00 00         # CRC32 0, ISIZE 0
# member 2: commit seq 1, the empty checkpoint written by create (offset 46, 94 bytes)
 46: 1f 8b 08 04 00 00 00 00 00 ff   # gzip header as above
 56: 48 00 44 63 44 00               # XLEN 72, subfield 'D' 'c', LEN 68
 62: 44 46 43 4d                     # magic "DFCM"
 66: 01 00 00 00 00 00 00 00         # sequence number 1
 74: 2e 00 00 00 00 00 00 00         # own offset 46
 82: 00 00 00 00 00 00 00 00         # logical size 0
 90: ff ff ff ff ff ff ff ff         # previous commit: none
 98: 2e 00 00 00 00 00 00 00         # first index member: 46 = own offset (no index members)
106: 00 00 00 00                     # 0 index entries
110: 01 00 00 00                     # kind 1 (checkpoint), reserved
114: 00 00 00 00                     # 0 index members
118: ff ff ff ff ff ff ff ff         # auxiliary member: none
126: fc e9 47 6e                     # crc32 of payload bytes 0..64
130: 03 00 00 00 00 00 00 00 00 00   # empty deflate stream, CRC32 0, ISIZE 0
# member 3: data, the piece "hello" (offset 140, 50 bytes)
140: 1f 8b 08 04 00 00 00 00 00 ff   # gzip header
150: 14 00 44 64 10 00               # XLEN 20, subfield 'D' 'd', LEN 16
156: 00 00 00 00 00 00 00 00         # logical offset 0
164: 03 00 00 00                     # flags RESET | STORED
168: 81 69 60 69                     # crc32 of payload bytes 0..12
172: 01 05 00 fa ff                  # stored block: BFINAL 1, BTYPE 00; LEN 5, NLEN 0xfffa
177: 68 65 6c 6c 6f                  # "hello"
182: 86 a6 10 36 05 00 00 00         # CRC32 of "hello" (0x3610a686), ISIZE 5
# member 4: index, one entry (offset 190, 98 bytes)
190: 1f 8b 08 04 00 00 00 00 00 ff   # gzip header
200: 4c 00 44 69 48 00               # XLEN 76, subfield 'D' 'i', LEN 72 (4 + 64 + 4)
206: 01 00 00 00                     # 1 entry
210: 00 00 00 00 00 00 00 00         # entry: logical offset 0
218: 05 00 00 00                     #   logical length 5
222: 8c 00 00 00 00 00 00 00         #   data member at 140
230: 32 00 00 00                     #   stored length 50
234: 86 a6 10 36                     #   crc32 of "hello"
238: 01 01 00 00                     #   kind 1 (stored), flags RESET, level 0, window 0
242: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00   #   chaining value: not computed
258: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
274: 6b 7a ea f3                     # crc32 of payload bytes 0..68
278: 03 00 00 00 00 00 00 00 00 00   # empty deflate stream, CRC32 0, ISIZE 0
# member 5: commit seq 2, a delta (offset 288, 94 bytes); the file ends at 382
288: 1f 8b 08 04 00 00 00 00 00 ff   # gzip header
298: 48 00 44 63 44 00               # XLEN 72, subfield 'D' 'c', LEN 68
304: 44 46 43 4d                     # magic "DFCM"
308: 02 00 00 00 00 00 00 00         # sequence number 2
316: 20 01 00 00 00 00 00 00         # own offset 288
324: 05 00 00 00 00 00 00 00         # logical size 5
332: 2e 00 00 00 00 00 00 00         # previous commit at 46
340: be 00 00 00 00 00 00 00         # first index member at 190
348: 01 00 00 00                     # 1 index entry
352: 00 00 00 00                     # kind 0 (delta), reserved
356: 01 00 00 00                     # 1 index member
360: ff ff ff ff ff ff ff ff         # auxiliary member: none
368: 6b 6e 8e b7                     # crc32 of payload bytes 0..64
372: 03 00 00 00 00 00 00 00 00 00   # empty deflate stream, CRC32 0, ISIZE 0
"#;

/// Parses the dump, checking that every line's offset is where the previous line ended.
fn golden_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    for line in GOLDEN.lines() {
        let line = line.split('#').next().unwrap().trim();
        if line.is_empty() {
            continue;
        }
        let (off, hex) = line.split_once(':').unwrap();
        assert_eq!(
            off.trim().parse::<usize>().unwrap(),
            out.len(),
            "offset of {line:?}"
        );
        for byte in hex.split_whitespace() {
            out.push(u8::from_str_radix(byte, 16).unwrap());
        }
    }
    out
}

fn hello_container() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hello");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let mut c = Container::create(f, 12).unwrap();
    let (member, entry) = build_stored_member(0, true, b"hello");
    c.append_member(&member, entry).unwrap();
    c.set_size(5);
    c.commit().unwrap();
    std::fs::read(&path).unwrap()
}

#[test]
fn hello_container_matches_the_worked_example_byte_for_byte() {
    let bytes = hello_container();
    let golden = golden_bytes();
    assert_eq!(golden.len(), 382);
    for (i, (a, b)) in bytes.iter().zip(&golden).enumerate() {
        assert_eq!(a, b, "byte {i} differs: wrote {a:02x}, golden {b:02x}");
    }
    assert_eq!(bytes.len(), golden.len());
}

#[test]
fn worked_example_in_format_md_is_the_golden_dump() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/FORMAT.md")).unwrap();
    let doc: Vec<&str> = doc.lines().map(str::trim_end).collect();
    let golden: Vec<&str> = GOLDEN.trim().lines().map(str::trim_end).collect();
    assert!(
        doc.windows(golden.len()).any(|w| w == golden.as_slice()),
        "docs/FORMAT.md does not contain the golden dump verbatim"
    );
}

#[test]
fn worked_example_opens_and_decompresses_to_hello() {
    let golden = golden_bytes();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g");
    std::fs::write(&path, &golden).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    assert!(Container::probe(&f).unwrap());
    assert_eq!(Container::read_logical_size(&f).unwrap(), 5);
    let c = Container::open(f).unwrap();
    assert_eq!(c.size(), 5);
    assert_eq!(c.index().pieces(0).len(), 1);
    let mut out = Vec::new();
    use std::io::Read;
    flate2::read::MultiGzDecoder::new(&golden[..])
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out, b"hello");
}
