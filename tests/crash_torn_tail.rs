//! Torn tails of a file written through a mount: the backing container cut at every byte offset
//! of its last commit (everything it appended: data members, index members, the commit member)
//! opens as its previous complete commit. A sample of the cuts is mounted and read back, and
//! fsck reports each as a torn tail that `--repair` drops.

mod common;
mod container_common;

use std::fs::{self, File};
use std::io::Write;

use common::{run_deflatefs, varied_text, Mount};
use container_common::{commits_in, read_all, rw};
use deflatefs::container::Container;

#[test]
fn every_cut_inside_the_last_commit_opens_as_the_commit_before() {
    let mut m = Mount::with_opts(&["chunk=16k"]);
    let first = varied_text(60_000, 1);
    let second = varied_text(25_000, 2);
    File::create(m.path("f"))
        .unwrap()
        .write_all(&first)
        .unwrap();
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(m.path("f"))
        .unwrap();
    f.write_all(&second).unwrap();
    f.sync_all().unwrap();
    drop(f);
    m.unmount();
    let bytes = fs::read(m.backing("f")).unwrap();
    let commits = commits_in(&bytes);
    let prev = commits[commits.len() - 2];
    let prev_end = (prev.offset + 94) as usize;
    assert_eq!(commits.last().unwrap().offset as usize + 94, bytes.len());
    let scratch = tempfile::tempdir().unwrap();
    let cut_path = scratch.path().join("cut");
    for cut in prev_end..bytes.len() {
        fs::write(&cut_path, &bytes[..cut]).unwrap();
        let c = Container::open(rw(&cut_path)).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(c.last_seq(), prev.seq, "cut at {cut}");
        assert_eq!(c.size() as usize, first.len(), "cut at {cut}");
        assert!(read_all(&c) == first, "cut at {cut}: content");
    }
    eprintln!(
        "{} cut offsets checked ({prev_end}..{})",
        bytes.len() - prev_end,
        bytes.len()
    );
    // A sample through the mount, then fsck.
    let step = ((bytes.len() - prev_end) / 12).max(1);
    let cuts: Vec<usize> = (prev_end..bytes.len()).step_by(step).collect();
    for cut in &cuts {
        fs::write(m.backing(&format!("cut{cut}")), &bytes[..*cut]).unwrap();
    }
    m.mount();
    for cut in &cuts {
        assert!(
            fs::read(m.path(&format!("cut{cut}"))).unwrap() == first,
            "cut at {cut} through the mount"
        );
    }
    m.unmount();
    let src = m.src.to_str().unwrap().to_string();
    let (code, report) = run_deflatefs(&["fsck", &src]);
    assert_eq!(code, 1, "{report}");
    for cut in cuts.iter().filter(|c| **c > prev_end) {
        assert!(
            report.contains(&format!("cut{cut}: torn tail")),
            "cut{cut} not reported:\n{report}"
        );
    }
    let (code, report) = run_deflatefs(&["fsck", "--repair", &src]);
    assert_eq!(code, 1, "{report}");
    let (code, report) = run_deflatefs(&["fsck", &src]);
    assert_eq!(code, 0, "{report}");
    for cut in &cuts {
        assert_eq!(
            fs::metadata(m.backing(&format!("cut{cut}"))).unwrap().len() as usize,
            prev_end
        );
    }
}
