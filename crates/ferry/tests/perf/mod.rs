//! Performance choices that change how pages travel (issue 5): compressed page files, pages
//! read by the restored process itself, page checksums checked while the tree is rebuilt,
//! ferry's own memory bounded whatever the size of the process.

use crate::common::*;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

fn mem_anon(mib: &str) -> Spec {
    Spec::c("mem_anon").args(&[mib]).ready_timeout(Duration::from_secs(90))
}

/// `dump --compress`: the page file is a zstd stream (its header says so), and the restored
/// process finds every byte of its memory (64 MiB of random data, the heap, the stack...).
#[test]
fn compressed_cycle() {
    let mut run = Run::start(&mem_anon("64"));
    run.dump_ok(&["--compress"]);
    run.reap_dumped();
    let img = run.img();
    let mut head = [0u8; 8];
    fs::File::open(img.join(format!("pages-{}.img", run.pid)))
        .and_then(|mut f| f.read_exact(&mut head))
        .expect("read the page file header");
    if &head != b"FERRYPGZ" {
        run.fail(&format!("dump --compress wrote a page file with header {head:?}, not a compressed one"));
    }
    run.restore_and_verify("ferry restore of a compressed image");
}

#[test]
fn compressed_control() {
    control(&mem_anon("64"));
}

/// Zero pages are never stored: mem_anon's 1 GiB sparse reservation (a handful of touched
/// pages) and its untouched guard leave the image about as big as the data itself.
#[test]
fn zero_pages_not_stored() {
    let mut run = Run::start(&mem_anon("16"));
    run.dump_ok(&[]);
    run.reap_dumped();
    let size = fs::metadata(run.img().join(format!("pages-{}.img", run.pid))).expect("stat the page file").len();
    // 16 MiB of data + 8 MiB heap buffer + 512 KiB stack + small regions: well under 32 MiB.
    if size > 32 << 20 {
        run.fail(&format!("page file of {size} bytes: pages that were never written were stored"));
    }
    run.restore_and_verify("ferry restore");
}

/// One flipped byte in the middle of the page data: the page checksums are checked on another
/// thread while the tree is rebuilt, so the tree exists for a moment; the restore must still
/// fail naming the page file, and leave no process behind. The intact image still restores.
#[test]
fn flipped_page_byte_refused() {
    let mut run = Run::start(&mem_anon("16"));
    run.dump_ok(&[]);
    run.reap_dumped();
    let img = run.img();
    let bad = run.w.join("img-flipped-pages");
    fs::create_dir(&bad).expect("mkdir");
    for e in fs::read_dir(&img).expect("read image dir") {
        let e = e.expect("dir entry");
        fs::copy(e.path(), bad.join(e.file_name())).expect("copy image file");
    }
    let name = format!("pages-{}.img", run.pid);
    let mut f = fs::OpenOptions::new().read(true).write(true).open(bad.join(&name)).expect("open page file");
    let at = f.metadata().expect("stat").len() / 2;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.read_exact(&mut b).expect("read");
    b[0] ^= 0x40;
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.write_all(&b).expect("write");
    drop(f);
    let res = run.ferry("restore-flipped", &["restore".into(), "-D".into(), path_str(&bad)], Duration::from_secs(120));
    if res.status.success() {
        run.fail("ferry restore of an image with a corrupted page file succeeded");
    }
    if !res.stderr.contains(&name) {
        run.fail(&format!("the error does not name {name}: {:?}", res.stderr));
    }
    run.wait_pid_gone("after the refused restore");
    run.restore_and_verify("ferry restore of the intact image");
}

/// ferry's own memory does not grow with the process: restoring 512 MiB, its peak resident
/// set stays under 64 MiB (the process reads its pages from the page file itself; ferry used
/// to map the whole page file, which counted in its RSS).
#[test]
fn restore_rss_bounded() {
    let _heavy = heavy_lock();
    let mut run = Run::start(&mem_anon("512"));
    run.dump_ok(&[]);
    run.reap_dumped();
    let img = run.img();
    let pidfile = run.spawn_restore("restore", &img, &[]);
    run.wait_pidfile(&pidfile);
    // ferry restore (without -d) waits for the process: it is still alive, its VmHWM final.
    let ferry_pid = run.restore.as_ref().map(|c| c.id()).expect("ferry restore is running");
    let hwm = vm_hwm_kib(ferry_pid);
    run.go();
    let status = run.wait_restore_exit();
    run.expect_pass(status, "ferry restore");
    if hwm > 64 << 10 {
        run.fail(&format!("ferry restore of 512 MiB peaked at {} MiB of RSS (limit 64 MiB)", hwm >> 10));
    }
    eprintln!("ferry restore of 512 MiB: peak RSS {} KiB", hwm);
}
