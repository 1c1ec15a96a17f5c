//! Layers built to exhaust the node rather than escape it: a 10 GB sparse
//! file and tens of thousands of files. Each is contained: the sparse file
//! takes the disk space of its data only, the many files unpack with
//! memory that does not grow per file.

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use berth_image::unpack::{Limits, unpack, usage};

const GIB: u64 = 1024 * 1024 * 1024;

#[test]
fn a_10_gb_sparse_file_takes_the_space_of_its_data() {
    let work = tempfile::tempdir().unwrap();
    let big = work.path().join("big");
    let file = std::fs::File::create(&big).unwrap();
    file.set_len(10 * GIB).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"data in the middle", 5 * GIB).unwrap();
    drop(file);
    let tar = work.path().join("layer.tar");
    let status = Command::new("tar")
        .args(["--sparse", "--format=gnu", "-cf"])
        .arg(&tar)
        .arg("-C")
        .arg(work.path())
        .arg("big")
        .status()
        .expect("GNU tar runs");
    assert!(status.success());
    assert!(std::fs::metadata(&tar).unwrap().len() < 1024 * 1024);

    let dest = work.path().join("diff");
    std::fs::create_dir(&dest).unwrap();
    unpack(
        std::fs::File::open(&tar).unwrap(),
        &dest,
        &Limits::default(),
    )
    .unwrap();
    let unpacked = dest.join("big");
    let meta = std::fs::metadata(&unpacked).unwrap();
    assert_eq!(meta.len(), 10 * GIB);
    assert!(
        meta.blocks() * 512 <= 1024 * 1024,
        "{} blocks",
        meta.blocks()
    );
    let mut middle = [0u8; 18];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(&unpacked).unwrap(),
        &mut middle,
        5 * GIB,
    )
    .unwrap();
    assert_eq!(&middle, b"data in the middle");
    assert!(usage(&dest).unwrap().bytes <= 1024 * 1024);
}

#[test]
fn thirty_thousand_files_unpack() {
    const FILES: usize = 30_000;
    let mut builder = tar::Builder::new(Vec::new());
    for i in 0..FILES {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(0);
        header.set_mode(0o644);
        header.set_mtime(0);
        builder
            .append_data(&mut header, format!("d{}/f{i}", i % 100), std::io::empty())
            .unwrap();
    }
    let bytes = builder.into_inner().unwrap();
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("diff");
    std::fs::create_dir(&dest).unwrap();
    unpack(bytes.as_slice(), &dest, &Limits::default()).unwrap();
    // The files, their 100 parent dirs and the layer dir.
    assert_eq!(usage(&dest).unwrap().inodes, (FILES + 100 + 1) as u64);
}
