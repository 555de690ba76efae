//! FIFOs, inotify, SysV shared memory and memfd seals: each workload verifies itself after a
//! dump/restore cycle; the error tests check what must fail, and fail with a clear message.

use crate::common::*;
use std::fs;
use std::process::Command;

/// Dump (kills the tree), wait until every pid is free, run `between`, restore, go, PASS.
fn tree_cycle(spec: &Spec, between: impl FnOnce(&mut Run)) {
    let mut run = Run::start(spec);
    run.dump_ok(&[]);
    run.reap_dumped();
    wait_image_pids_gone(&run.img());
    between(&mut run);
    run.restore_and_verify("ferry restore");
}

/// `ferry dump` of the workload must fail with one line naming `expect` and the pid, leave no
/// image, and leave the workload running: it still passes on go.
fn dump_refused(spec: &Spec, expect: &str) {
    let mut run = Run::start(spec);
    let img = run.img();
    let res = run.dump_to("dump", &img, &[]);
    let err = res.stderr.clone();
    if res.status.success() {
        run.fail(&format!("the dump should have been refused ({expect})"));
    }
    if !(err.contains(expect) && err.contains(&run.pid.to_string())) {
        run.fail(&format!("the error does not name {expect:?} and pid {}: {err}", run.pid));
    }
    if err.trim().lines().count() != 1 {
        run.fail(&format!("the error is not one line: {err}"));
    }
    if img.join("inventory.img").exists() {
        run.fail("a refused dump left a complete-looking image");
    }
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload after a refused dump");
}

/// Restore must fail, with `expect` in its error, and leave none of the image's pids behind.
fn restore_fails(run: &mut Run, expect: &str) {
    let img = run.img();
    let out = Command::new(ferry_bin()).args(["restore", "-D", &path_str(&img)]).output().expect("run ferry restore");
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        run.fail(&format!("restore should have failed ({expect})"));
    }
    if !err.contains(expect) {
        run.fail(&format!("the restore error does not say {expect:?}: {err}"));
    }
    wait_image_pids_gone(&img);
}

mod control {
    use crate::common::{control, Spec};
    #[test]
    fn fifo() {
        control(&Spec::c("fifo"));
    }
    #[test]
    fn inotify() {
        control(&Spec::c("inotify"));
    }
    #[test]
    fn sysvshm() {
        control(&Spec::c("sysvshm"));
    }
    #[test]
    fn memfd_seals() {
        control(&Spec::c("memfd_seals"));
    }
    #[test]
    fn memfd_private() {
        control(&Spec::c("memfd_private"));
    }
}

/// FIFOs held by a parent and a child (one blocked in read() on its FIFO), with unread bytes
/// (one FIFO beyond the default capacity), O_NONBLOCK and O_RDWR ends.
#[test]
fn fifo_tree() {
    tree_cycle(&Spec::c("fifo"), |_| {});
}

/// A FIFO deleted between dump and restore: restore names it and creates nothing.
#[test]
fn fifo_missing_at_restore() {
    let mut run = Run::start(&Spec::c("fifo"));
    run.dump_ok(&[]);
    run.reap_dumped();
    wait_image_pids_gone(&run.img());
    let f1 = run.w.join("f1");
    fs::remove_file(&f1).expect("remove f1");
    restore_fails(&mut run, &format!("the FIFO {} does not exist", f1.display()));
}

/// A FIFO that is a regular file at restore, and one that already holds bytes written by a
/// process outside the image: both refused.
#[test]
fn fifo_replaced_or_busy_at_restore() {
    let mut run = Run::start(&Spec::c("fifo"));
    run.dump_ok(&[]);
    run.reap_dumped();
    wait_image_pids_gone(&run.img());
    let f3 = run.w.join("f3");
    fs::remove_file(&f3).expect("remove f3");
    fs::write(&f3, b"not a fifo").expect("write f3");
    restore_fails(&mut run, "is not a FIFO any more");
    fs::remove_file(&f3).expect("remove f3");
    let st = Command::new("mkfifo").arg(&f3).status().expect("mkfifo");
    assert!(st.success());
    // Someone else holds f1 with bytes in it.
    let f1 = run.w.join("f1");
    let holder = fs::OpenOptions::new().read(true).write(true).open(&f1).expect("open f1 O_RDWR");
    std::io::Write::write_all(&mut &holder, b"stranger").expect("write into f1");
    restore_fails(&mut run, "already holds 8 unread bytes");
    drop(holder);
}

/// inotify watches with non-trivial wd numbers and masks on two instances; events after restore
/// arrive with the old wds.
#[test]
fn inotify_watches() {
    cycle(&Spec::c("inotify"));
}

/// A watched file deleted between dump and restore: restore names it.
#[test]
fn inotify_watched_file_missing_at_restore() {
    let mut run = Run::start(&Spec::c("inotify"));
    run.dump_ok(&[]);
    run.reap_dumped();
    let b = run.w.join("b");
    fs::remove_file(&b).expect("remove b");
    restore_fails(&mut run, &format!("cannot watch {} again", b.display()));
}

/// Queued inotify events cannot be saved: the dump refuses and the workload runs on.
#[test]
fn inotify_pending_events_refused() {
    dump_refused(&Spec::c("inotify").args(&["pending"]), "unread events");
}

/// The ids of the workload's segments (keyed, private), written by the workload to W/shmid.
fn shmids(run: &Run) -> (String, String) {
    let text = fs::read_to_string(run.w.join("shmid")).expect("read W/shmid");
    let mut it = text.split_whitespace().map(str::to_string);
    (it.next().expect("keyed id"), it.next().expect("private id"))
}

/// Whether a SysV shared memory segment with this id exists.
fn shm_exists(id: &str) -> bool {
    let table = fs::read_to_string("/proc/sysvipc/shm").expect("read /proc/sysvipc/shm");
    table.lines().skip(1).any(|l| l.split_whitespace().nth(1) == Some(id))
}

fn ipcrm(id: &str) {
    let st = Command::new("ipcrm").args(["-m", id]).status().expect("run ipcrm");
    assert!(st.success(), "ipcrm -m {id} failed");
}

/// Removes SysV shared memory segments on drop, also when the test fails (a keyed segment
/// outlives its processes).
struct ShmCleanup(Vec<String>);

impl Drop for ShmCleanup {
    fn drop(&mut self) {
        for id in &self.0 {
            if shm_exists(id) {
                let _ = Command::new("ipcrm").args(["-m", id]).status();
            }
        }
    }
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// A field of /proc/meminfo ("HugePages_Free").
fn meminfo(key: &str) -> u64 {
    let text = fs::read_to_string("/proc/meminfo").expect("read /proc/meminfo");
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/meminfo"))
}

/// Huge pages of the default size for a test: vm.nr_hugepages raised until `want` are free,
/// and put back as it was when dropped.
struct HugePages(String);

impl HugePages {
    fn reserve(want: u64) -> HugePages {
        let before = fs::read_to_string(NR_HUGEPAGES).expect("read vm.nr_hugepages").trim().to_string();
        let guard = HugePages(before);
        guard.free(want);
        guard
    }

    /// Make exactly `n` huge pages free (those in use stay).
    fn free(&self, n: u64) {
        let used = meminfo("HugePages_Total") - meminfo("HugePages_Free");
        fs::write(NR_HUGEPAGES, (used + n).to_string()).expect("write vm.nr_hugepages");
        assert_eq!(meminfo("HugePages_Free"), n, "cannot get {n} free huge pages (vm.nr_hugepages)");
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        let _ = fs::write(NR_HUGEPAGES, &self.0);
    }
}

/// A SysV shared memory segment in huge pages (SHM_HUGETLB, three of them, marked IPC_RMID):
/// made again in huge pages of the same size, with the same id, size, mode, address and
/// content. (ferry refused it at dump.)
#[test]
fn sysvshm_huge_pages() {
    let _heavy = heavy_lock(); // (vm.nr_hugepages is the node's)
    let _pages = HugePages::reserve(8);
    tree_cycle(&Spec::c("sysvshm_huge"), |_| {});
}

/// The same segment, with no huge page free at restore: the restore fails naming the segment,
/// the pages it needs and how many are free, and leaves nothing behind; with pages free
/// again, it works.
#[test]
fn sysvshm_huge_pages_none_free_refused() {
    let _heavy = heavy_lock();
    let pages = HugePages::reserve(8);
    let mut run = Run::start(&Spec::c("sysvshm_huge"));
    let id = fs::read_to_string(run.w.join("shmid")).expect("read W/shmid").trim().to_string();
    run.dump_ok(&[]);
    run.reap_dumped();
    wait_image_pids_gone(&run.img());
    assert!(!shm_exists(&id), "the IPC_RMID segment {id} outlived its process");
    pages.free(0);
    let kib = meminfo("Hugepagesize");
    let what = format!("SysV shared memory id {id} (key 0x0): cannot make it again in huge pages of {kib} kB (3 needed, 0 free on this node");
    restore_fails(&mut run, &what);
    assert!(!shm_exists(&id), "the failed restore left segment {id} behind");
    pages.free(8);
    run.restore_and_verify("ferry restore with huge pages free again");
}

/// The key (as /proc/sysvipc/shm prints it, decimal) of segment `id`.
fn shm_key(id: &str) -> String {
    let table = fs::read_to_string("/proc/sysvipc/shm").expect("read /proc/sysvipc/shm");
    table
        .lines()
        .skip(1)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&id)).then(|| f[0].to_string())
        })
        .unwrap_or_else(|| panic!("no SysV segment {id}"))
}

/// A python3 process that runs `code` (with `W` = the work dir), writes W/held, then sleeps;
/// killed on drop.
struct Holder(std::process::Child);

impl Holder {
    fn start(run: &Run, code: &str) -> Holder {
        let script = format!(
            "import ctypes, os, sys, time\nW = sys.argv[1]\nlibc = ctypes.CDLL(None, use_errno=True)\n\
             libc.shmat.restype = ctypes.c_void_p\n{code}\nopen(W + '/held', 'w').close()\ntime.sleep(120)\n"
        );
        let _ = fs::remove_file(run.w.join("held"));
        let child = Command::new(need("python3", "python3"))
            .args(["-c", &script, &path_str(&run.w.path)])
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("start python3");
        let h = Holder(child);
        wait_for("the python3 holder", std::time::Duration::from_secs(20), || run.w.join("held").exists());
        h
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SysV shared memory attached by a parent and its child (one segment with a key, one
/// IPC_PRIVATE marked IPC_RMID and attached twice, once read-only): same ids, keys, modes,
/// contents, attachments, and still shared. The keyed segment outlives the dump (nothing removes
/// it, as with PostgreSQL's): nobody is attached to it any more, so restore recreates it from the
/// image, with the content the tree saw (here: after the segment was scribbled on meanwhile).
#[test]
fn sysvshm_tree() {
    let mut run = Run::start(&Spec::c("sysvshm"));
    let (keyed, private) = shmids(&run);
    let _cleanup = ShmCleanup(vec![keyed.clone()]);
    run.dump_ok(&[]);
    run.reap_dumped();
    wait_image_pids_gone(&run.img());
    assert!(!shm_exists(&private), "the IPC_RMID segment {private} outlived its processes");
    assert!(shm_exists(&keyed), "the keyed segment {keyed} did not outlive the dump: the test does not test that");
    // Someone attaches the leftover, scribbles on it, and detaches: the image's content wins.
    drop(Holder::start(
        &run,
        &format!("p = libc.shmat({keyed}, None, 0)\nassert p not in (None, 2**64 - 1)\nctypes.memset(p, 0xee, 4096)\nlibc.shmdt(ctypes.c_void_p(p))"),
    ));
    run.restore_and_verify("ferry restore");
}

/// The keyed segment outlives the dump, and a process is still attached to it: restore refuses,
/// saying how many processes hold it and how to remove it, and leaves it alone; once the holder
/// is gone, restore works.
#[test]
fn sysvshm_leftover_in_use_refused() {
    let mut run = Run::start(&Spec::c("sysvshm"));
    let (keyed, _) = shmids(&run);
    let _cleanup = ShmCleanup(vec![keyed.clone()]);
    run.dump_ok(&[]);
    run.reap_dumped();
    wait_image_pids_gone(&run.img());
    let holder = Holder::start(&run, &format!("assert libc.shmat({keyed}, None, 0) not in (None, 2**64 - 1)"));
    restore_fails(&mut run, &format!("1 process(es) are attached to it (is the dumped tree still running?); stop them, or remove it with `ipcrm -m {keyed}`"));
    assert!(shm_exists(&keyed), "the refused restore removed a segment in use");
    drop(holder);
    run.restore_and_verify("ferry restore");
}

/// Another segment took the key after the dump: restore refuses naming it (`ipcrm -m ID`);
/// once it is removed, restore works.
#[test]
fn sysvshm_key_taken_by_another_segment_refused() {
    let mut run = Run::start(&Spec::c("sysvshm"));
    let (keyed, _) = shmids(&run);
    let mut cleanup = ShmCleanup(vec![keyed.clone()]);
    run.dump_ok(&[]);
    run.reap_dumped();
    wait_image_pids_gone(&run.img());
    let key = shm_key(&keyed);
    ipcrm(&keyed);
    let holder = Holder::start(
        &run,
        &format!("i = libc.shmget({key}, 8192, 0o1600)\nassert i >= 0\nopen(W + '/other', 'w').write(str(i))"),
    );
    drop(holder);
    let other = fs::read_to_string(run.w.join("other")).expect("the other segment's id");
    cleanup.0.push(other.clone());
    restore_fails(&mut run, &format!("is taken by another segment (id {other}, 8192 bytes, 0 process(es) attached); remove it with `ipcrm -m {other}`"));
    ipcrm(&other);
    run.restore_and_verify("ferry restore");
}

/// memfd seals (F_SEAL_WRITE with a read-only shared mapping, F_SEAL_FUTURE_WRITE with a
/// writable one, F_SEAL_GROW/SHRINK, a memfd without MFD_ALLOW_SEALING) come back exactly, and
/// are enforced.
#[test]
fn memfd_seals() {
    cycle(&Spec::c("memfd_seals"));
}

/// MAP_PRIVATE mappings of memfds (one whose fd was closed): copied pages keep their bytes, the
/// others are the memfd's page cache again (a write through the fd shows in them).
#[test]
fn memfd_private_mappings() {
    cycle(&Spec::c("memfd_private"));
}
