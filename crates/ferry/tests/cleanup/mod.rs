//! A failed dump leaves nothing behind (issue 12 §3): out of space, a failure at each step of
//! writing and committing, ferry killed midway, a refused dump; an older image in the directory
//! stays intact and restores, and a dump over another image leaves only the new image's files.

use crate::common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// A small tmpfs of the test's own, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf, size: &str) -> Tmpfs {
        fs::create_dir_all(&at).unwrap_or_else(|e| panic!("cannot create {}: {e}", at.display()));
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "ferry-cleanup-test"])
            .arg(&at)
            .status()
            .expect("run mount");
        assert!(st.success(), "cannot mount a tmpfs on {}: {st}", at.display());
        Tmpfs(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Every entry of `dir` (hidden ones too) with its size; directories end in `/`.
fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .flatten()
        .map(|e| {
            let md = e.metadata().expect("stat directory entry");
            let mut name = e.file_name().to_string_lossy().into_owned();
            if md.is_dir() {
                name.push('/');
            }
            (name, if md.is_dir() { 0 } else { md.len() })
        })
        .collect();
    v.sort();
    v
}

/// The names `dir` must hold after a dump: the inventory and the files it lists.
fn inventory_names(dir: &Path) -> Vec<String> {
    let r =
        ferry_image::ImageReader::open(dir).unwrap_or_else(|e| panic!("cannot open the image {}: {e}", dir.display()));
    let mut v: Vec<String> = r.inventory().files.iter().map(|f| f.name.clone()).collect();
    v.push(ferry_image::INVENTORY.to_string());
    v.sort();
    v
}

/// The image in `dir` is complete and every file checks.
fn expect_valid(run: &Run, dir: &Path, when: &str) {
    if let Err(e) = ferry_image::ImageReader::open(dir).and_then(|r| r.verify_all()) {
        run.fail(&format!("{when}: the older image is damaged: {e}"));
    }
}

/// A failed dump: one stderr line naming `file` (its real name, not a hidden temporary one),
/// not a bare "i/o error".
fn expect_failure_naming(run: &Run, res: &Finished, file: &Path, what: &str) {
    if res.status.success() {
        run.fail(&format!("{what}: the dump succeeded"));
    }
    let lines = res.stderr_lines();
    if lines.len() != 1 {
        run.fail(&format!("{what}: expected one line on stderr, got {:?}", res.stderr));
    }
    let line = lines[0];
    if !line.contains(&format!("{}:", path_str(file))) {
        run.fail(&format!("{what}: the error does not name {}: {line:?}", file.display()));
    }
    if line.contains(".tmp") || line.contains("/.") || line.contains("i/o error") {
        run.fail(&format!("{what}: the error names a hidden temporary or a bare i/o error: {line:?}"));
    }
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Kill the workload that a `dump -R` left running, and wait until its pid is free (to restore
/// its image).
fn kill_original(run: &mut Run) {
    send_signal(run.pid, "KILL").expect("kill the workload");
    run.reap_dumped();
}

/// Out of space on a small tmpfs holding an older image: the dump of a bigger process fails
/// with one line naming the page file; the process runs on; the directory is exactly as it was
/// (nothing of the failed dump, hidden or not) and the older image restores.
#[test]
fn out_of_space_keeps_the_older_image() {
    let mut old = Run::start(&Spec::c("mem_anon"));
    let fs_root = Tmpfs::mount(old.w.join("small"), "24m");
    let img = fs_root.0.join("img");
    let res = old.dump_to("dump-old", &img, &[]);
    if !res.status.success() {
        old.fail(&format!("the dump of the older image failed: {}", res.stderr));
    }
    old.reap_dumped();
    let before = listing(&img);
    let root_before = listing(&fs_root.0);

    let mut big = Run::start(&Spec::c("mem_anon").args(&["64"]));
    let res = big.dump_to("dump-big", &img, &[]);
    expect_failure_naming(&big, &res, &img.join(format!("pages-{}.img", big.pid)), "dump out of space");
    if !res.stderr.contains("No space left") {
        big.fail(&format!("the error does not say the file system is full: {:?}", res.stderr));
    }
    big.expect_running_untraced("after the dump that ran out of space");
    if listing(&img) != before || listing(&fs_root.0) != root_before {
        big.fail(&format!("the failed dump changed the file system: {before:?} -> {:?}", listing(&img)));
    }
    expect_valid(&big, &img, "after the dump that ran out of space");

    // Into a new directory: nothing stays, not even the directory.
    let fresh = fs_root.0.join("fresh");
    let res = big.dump_to("dump-big-fresh", &fresh, &[]);
    expect_failure_naming(&big, &res, &fresh.join(format!("pages-{}.img", big.pid)), "dump out of space (new dir)");
    if fresh.exists() {
        big.fail(&format!("the failed dump left {:?} behind", listing(&fresh)));
    }
    big.expect_running_untraced("after the second dump that ran out of space");

    let pidfile = old.spawn_restore("restore", &img, &[]);
    old.wait_pidfile(&pidfile);
    old.go();
    let status = old.wait_restore_exit();
    old.expect_pass(status, "restore of the older image");
    big.go();
    let status = big.wait_child_exit();
    big.expect_pass(status, "the workload whose dump ran out of space");
}

/// A dump of the same process over its older image (same file names) fails at each step of
/// writing and committing in turn (`FERRY_FAULT`: a full file system at the page file, the
/// process record, the inventory; a failed move into place of the first file and of the
/// inventory, after the older files were moved aside), and a dump refused after the freeze: each
/// time one line naming the real file, the process runs on, and the older image is there byte
/// for byte and restores.
#[test]
fn failure_at_each_step_keeps_the_older_image() {
    let mut run = Run::start(&Spec::c("mem_anon"));
    run.dump_ok(&["-R"]);
    let img = run.img();
    let before = listing(&img);
    let inventory = fs::read(img.join(ferry_image::INVENTORY)).expect("read the inventory");
    let pid = run.pid;
    let steps = [
        ("fail-write", format!("pages-{pid}.img")),
        ("fail-write", format!("process-{pid}.img")),
        ("fail-write", ferry_image::INVENTORY.to_string()),
        ("fail-move", format!("pages-{pid}.img")),
        ("fail-move", ferry_image::INVENTORY.to_string()),
    ];
    for (kind, name) in steps {
        let label = format!("dump-{kind}-{name}");
        run.ferry_env = vec![("FERRY_FAULT", leak(format!("{kind}:{name}")))];
        let res = run.dump_to(&label, &img, &["-R"]);
        expect_failure_naming(&run, &res, &img.join(&name), &label);
        run.expect_running_untraced(&format!("after {label}"));
        if listing(&img) != before {
            run.fail(&format!("{label} changed the directory: {before:?} -> {:?}", listing(&img)));
        }
        if fs::read(img.join(ferry_image::INVENTORY)).ok().as_ref() != Some(&inventory) {
            run.fail(&format!("{label} changed the older inventory"));
        }
        expect_valid(&run, &img, &label);
    }
    run.ferry_env.clear();

    // Refused after the freeze (an io_uring is found while collecting the fds).
    let mut uring = Run::start(&Spec::c("uring"));
    let res = uring.dump_to("dump-uring", &img, &[]);
    if res.status.success() || !res.stderr.contains("io_uring") {
        uring.fail(&format!("the dump of an io_uring holder was not refused as such: {:?}", res.stderr));
    }
    uring.expect_running_untraced("after the refused dump");
    if listing(&img) != before {
        uring.fail(&format!("the refused dump changed the directory: {before:?} -> {:?}", listing(&img)));
    }
    expect_valid(&uring, &img, "after the dump refused after the freeze");
    uring.go();
    let status = uring.wait_child_exit();
    uring.expect_pass(status, "the io_uring workload");

    kill_original(&mut run);
    run.restore_and_verify("restore of the older image after the failed dumps");
}

/// ferry SIGKILLed in the middle of a dump (the process frozen, its page file allocated) into a
/// directory with an older image: the process runs on and the older image is intact; the next
/// dump into the directory removes what the killed one left, and the directory then holds only
/// the new image's files.
#[test]
fn killed_dump_leaves_nothing_for_the_next() {
    let mut small = Run::start(&Spec::c("mem_anon"));
    small.dump_ok(&["-R"]);
    let img = small.img();
    let before = listing(&img);

    let _heavy = heavy_lock();
    let mut big = Run::start(&Spec::c("mem_anon").args(&["256"]));
    let args = vec!["dump".to_string(), "-t".to_string(), big.pid.to_string(), "-D".to_string(), path_str(&img)];
    let (mut ferry, _, _) = big.spawn_ferry("dump-killed", &args);
    // Wait until the dump holds the process frozen (traced) and has files of its own there.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let traced = big.proc_state().is_some_and(|(_, tracer)| tracer != 0);
        if traced && listing(&img).len() > before.len() {
            break;
        }
        if let Ok(Some(st)) = ferry.try_wait() {
            big.fail(&format!("the dump ended before it could be killed: {}", describe(st)));
        }
        if Instant::now() > deadline {
            big.fail("the dump did not freeze the process within 60 s");
        }
        sleep(Duration::from_millis(2));
    }
    let _ = ferry.kill();
    let status = ferry.wait().expect("reap ferry");
    if status.success() || img.join(format!("process-{}.img", big.pid)).exists() {
        big.fail("the dump completed before it was killed (kill it earlier)");
    }
    big.expect_running_untraced("after ferry was killed mid-dump");
    let left = listing(&img);
    eprintln!("the killed dump left {left:?}");
    expect_valid(&big, &img, "after the killed dump");

    let res = small.dump_to("dump-again", &img, &["-R"]);
    if !res.status.success() {
        small.fail(&format!("the dump after the killed one failed: {:?}", res.stderr));
    }
    let names: Vec<String> = listing(&img).into_iter().map(|(n, _)| n).collect();
    if names != inventory_names(&img) {
        small.fail(&format!("the directory holds other files than the new image's: {names:?}"));
    }
    big.go();
    let status = big.wait_child_exit();
    big.expect_pass(status, "the workload whose dump was killed");
    kill_original(&mut small);
    small.restore_and_verify("restore of the image dumped after the killed dump");
}

/// A dump into a directory holding the image of another process (other pids) replaces it: the
/// directory then holds only the new image's files, which restore.
#[test]
fn dump_over_another_image_replaces_it() {
    let mut a = Run::start(&Spec::c("mem_anon"));
    let img = a.img();
    a.dump_ok(&[]);
    a.reap_dumped();
    let mut b = Run::start(&Spec::c("counter"));
    let res = b.dump_to("dump-over", &img, &[]);
    if !res.status.success() {
        b.fail(&format!("the dump over another image failed: {:?}", res.stderr));
    }
    b.reap_dumped();
    let names: Vec<String> = listing(&img).into_iter().map(|(n, _)| n).collect();
    let wanted = inventory_names(&img);
    if names != wanted || names.iter().any(|n| n.contains(&a.pid.to_string())) {
        b.fail(&format!("the directory holds {names:?}, the new image only {wanted:?}"));
    }
    let pidfile = b.spawn_restore("restore", &img, &[]);
    b.wait_pidfile(&pidfile);
    b.go();
    let status = b.wait_restore_exit();
    b.expect_pass(status, "restore of the image that replaced another");
}

/// A dump refused into a directory that did not exist leaves no directory (before the freeze:
/// a process traced by another; after it: an io_uring).
#[test]
fn refused_dump_leaves_no_new_directory() {
    let mut run = Run::start(&Spec::c("uring"));
    let fresh = run.w.join("new-img");
    let res = run.dump_to("dump-uring", &fresh, &[]);
    if res.status.success() || !res.stderr.contains("io_uring") {
        run.fail(&format!("the dump of an io_uring holder was not refused as such: {:?}", res.stderr));
    }
    if fresh.exists() {
        run.fail(&format!("the refused dump left {} behind: {:?}", fresh.display(), listing(&fresh)));
    }
    let held = HeldTraced::new(run.pid);
    let res = run.dump_to("dump-traced", &fresh, &[]);
    drop(held);
    if res.status.success() || !res.stderr.contains("already traced") {
        run.fail(&format!("the dump of a traced process was not refused as such: {:?}", res.stderr));
    }
    if fresh.exists() {
        run.fail(&format!("the refused dump left {} behind", fresh.display()));
    }
    run.expect_running_untraced("after the refused dumps");
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload after the refused dumps");
}
