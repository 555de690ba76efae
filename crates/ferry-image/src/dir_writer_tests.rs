//! The writer's promises on a plain directory: a failed image leaves nothing, a committed one
//! replaces an older image as a whole, stale leftovers are removed, one writer per directory.

use super::*;
use crate::{FileDigest, Inventory};

fn scratch(label: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "ferry-image-writer-{label}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&d);
    d
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).expect("test step").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn image(dir: &Path, pid: i32) {
    let mut w = ImageWriter::prepare(dir).expect("test step");
    w.write_file(&crate::pages_file(pid), &[7u8; 8192]).expect("test step");
    w.write_process(&Process { pid, ..Default::default() }).expect("test step");
    w.commit(Inventory { root_pid: pid, pids: vec![pid], ..Default::default() }).expect("test step");
}

#[test]
fn a_writer_dropped_uncommitted_leaves_nothing() {
    let parent = scratch("drop");
    fs::create_dir(&parent).expect("test step");
    let dir = parent.join("img");
    let mut w = ImageWriter::prepare(&dir).expect("test step");
    w.reserve("pages-1.img", 1 << 20).expect("test step");
    w.write_file("process-1.img", b"x").expect("test step");
    let s = w.stream("pages-2.img").expect("test step");
    drop(s);
    drop(w);
    assert!(!dir.exists(), "the directory the writer created is left: {:?}", names(&dir));

    // An older image and other files stay as they were.
    image(&dir, 5);
    fs::write(dir.join("notes.txt"), b"mine").expect("test step");
    let before = names(&dir);
    let mut w = ImageWriter::prepare(&dir).expect("test step");
    w.write_file("pages-5.img", b"new").expect("test step");
    drop(w);
    assert_eq!(names(&dir), before);
    ImageReader::open(&dir).expect("test step").verify_all().expect("test step");
    fs::remove_dir_all(&parent).expect("test step");
}

#[test]
fn a_commit_replaces_the_older_image_as_a_whole() {
    let dir = scratch("replace");
    image(&dir, 5);
    fs::write(dir.join("notes.txt"), b"mine").expect("test step");
    fs::write(dir.join("ghost-1-2.img"), b"orphan of an older image").expect("test step");
    image(&dir, 6);
    assert_eq!(names(&dir), ["inventory.img", "notes.txt", "pages-6.img", "process-6.img"]);
    let r = ImageReader::open(&dir).expect("test step");
    r.verify_all().expect("test step");
    assert_eq!(r.inventory().root_pid, 6);
    assert_eq!(
        r.inventory().files.iter().map(|f: &FileDigest| f.name.as_str()).collect::<Vec<_>>(),
        ["pages-6.img", "process-6.img"]
    );
    fs::remove_dir_all(&dir).expect("test step");
}

#[test]
fn stale_leftovers_are_removed_and_one_writer_at_a_time() {
    let dir = scratch("stale");
    image(&dir, 5);
    fs::create_dir(dir.join(".ferry-dump-999999")).expect("test step");
    fs::write(dir.join(".ferry-dump-999999/pages-9.img"), [0u8; 4096]).expect("test step");
    fs::create_dir(dir.join(".ferry-old-999999")).expect("test step");
    fs::write(dir.join(".pages-9.img.tmp"), [0u8; 4096]).expect("test step");
    fs::write(dir.join(".hidden-of-the-user"), b"").expect("test step");
    let w = ImageWriter::prepare(&dir).expect("test step");
    let second = ImageWriter::prepare(&dir);
    assert!(
        matches!(&second, Err(ImageError::Invalid { what, .. }) if what.contains("another ferry dump")),
        "a second writer was not refused"
    );
    drop(second);
    let mut left = names(&dir);
    left.retain(|n| !n.starts_with(STAGING)); // (the live writer's own)
    assert_eq!(left, [".hidden-of-the-user", "inventory.img", "pages-5.img", "process-5.img"]);
    drop(w);
    assert_eq!(names(&dir), [".hidden-of-the-user", "inventory.img", "pages-5.img", "process-5.img"]);
    fs::remove_dir_all(&dir).expect("test step");
}

#[test]
fn image_file_names() {
    for n in ["inventory.img", "pages-1.img", "process-22.img", "memfd-3.img", "ghost-fd00-12.img", "sysvshm-0.img"] {
        assert!(is_image_file_name(n), "{n}");
    }
    for n in ["pages-.img", "notes.txt", "pages-1.img.tmp", "disk.img", ".pages-1.img"] {
        assert!(!is_image_file_name(n), "{n}");
    }
}
