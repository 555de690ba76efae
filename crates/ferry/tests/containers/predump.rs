//! Incremental images through the real clients: `runc checkpoint --pre-dump` then
//! `runc checkpoint --parent-path ../pre`, and Podman's `--pre-checkpoint` / `--with-previous`
//! (CRIU's PRE_DUMP, parent_img, track_mem: ferry-engine's predump.rs). The container's job
//! (workload memjob, built static into the busybox root filesystem) keeps 64 MiB it checks
//! itself after the restore, and a counter.

use super::criu_dir;
use super::runtimes::{busybox_rootfs, counter, run_cmd, runc_bundle, wait_counter, Podman, Runc};
use crate::common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Pages of the job's memory (64 MiB).
const JOB_PAGES: u64 = 64 * 256;

/// memjob, static, as /bin/memjob of the root filesystem `rootfs`.
fn install_memjob(rootfs: &Path) {
    let cc = need("cc", "gcc");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ferry-workloads/c/memjob.c");
    run_cmd(
        Command::new(cc).args(["-static", "-O2", "-o"]).arg(rootfs.join("bin/memjob")).arg(&src),
        "cc -static memjob.c",
    );
}

/// A runc bundle whose job is `memjob 64`.
fn memjob_bundle(w: &WorkDir) -> PathBuf {
    let bundle = runc_bundle(w);
    install_memjob(&bundle.join("rootfs"));
    let path = bundle.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&fs::read(&path).expect("read config.json")).expect("json");
    c["process"]["args"] = serde_json::json!(["/bin/memjob", "64"]);
    fs::write(&path, serde_json::to_vec_pretty(&c).expect("json")).expect("write config.json");
    bundle
}

/// Wait for the job of `pid` to create /tmp/NAME; its content.
fn wait_file(pid: i32, name: &str, what: &str) -> String {
    let path = format!("/proc/{pid}/root/tmp/{name}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(s) = fs::read_to_string(&path) {
            return s.trim().to_string();
        }
        assert!(Instant::now() < deadline, "{what}: no {path}");
        sleep(Duration::from_millis(50));
    }
}

/// Have the job of `pid` rewrite its first `pages` pages ("all": every one).
fn dirty(pid: i32, pages: &str) {
    let _ = fs::remove_file(format!("/proc/{pid}/root/tmp/dirty.done"));
    fs::write(format!("/proc/{pid}/root/tmp/dirty"), pages).expect("write /tmp/dirty");
    wait_file(pid, "dirty.done", "the job's writes");
}

/// The job of `pid` checks its memory: its verdict.
fn check(pid: i32) -> String {
    let _ = fs::remove_file(format!("/proc/{pid}/root/tmp/verdict"));
    fs::write(format!("/proc/{pid}/root/tmp/check"), "").expect("write /tmp/check");
    wait_file(pid, "verdict", "the job's check")
}

/// (pages_written, pages_skipped_parent) of the stats-dump in `work`.
fn dump_stats(work: &Path) -> (u64, u64) {
    let path = work.join("stats-dump");
    let bytes = fs::read(&path).unwrap_or_else(|e| panic!("no {}: {e}", path.display()));
    let d = ferry::criu::stats::decode(&bytes).and_then(|s| s.dump).expect("stats-dump holds dump statistics");
    (d.pages_written, d.pages_skipped_parent)
}

/// The pid of the keeper holding the write tracking of the tree rooted at `root`.
fn keeper_of(root: i32) -> Option<i32> {
    let want = format!("/track-{root}-");
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = fs::read(e.path().join("cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        (cmd.contains("track-keeper") && cmd.contains(&want)).then_some(pid)
    })
}

/// What happens between the pre-dump and the dump.
enum Between {
    /// The job rewrites its first 2048 pages (8 MiB of 64).
    Some,
    /// The job rewrites every page.
    All,
    /// The keeper is killed (the tracking is gone), then the job rewrites 2048 pages.
    KeeperKilled,
}

/// runc: pre-dump, `between`, dump with the pre-dump as parent, restore: the job's memory and
/// counter are right. Returns the final dump's (pages_written, pages_skipped_parent).
fn runc_pre_dump_then_dump(tag: &str, between: Between) -> (u64, u64) {
    let w = WorkDir::new(tag);
    let bin = criu_dir(&w);
    let bundle = memjob_bundle(&w);
    let rc = Runc { state: w.join("state"), id: format!("ferry-{tag}-{}", std::process::id()), criu: bin.join("criu") };
    rc.detached(&["run", "-d", "-b", &path_str(&bundle), &rc.id], &w, "run");
    let pid = rc.pid();
    wait_counter(pid, 3, "before the pre-dump");
    let (pre, work_pre) = (w.join("pre"), w.join("work-pre"));
    let out = rc
        .cmd()
        .args(["checkpoint", "--pre-dump", "--image-path", &path_str(&pre), "--work-path", &path_str(&work_pre)])
        .arg(&rc.id)
        .stdin(Stdio::null())
        .output()
        .expect("run runc checkpoint --pre-dump");
    let log = |dir: &Path| fs::read_to_string(dir.join("dump.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "runc checkpoint --pre-dump: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        log(&work_pre)
    );
    assert!(pid_alive(pid), "the container does not run after the pre-dump");
    // A pre-dump alone is memory only: restore refuses it by name.
    let out = Command::new(ferry_bin()).args(["restore", "-d", "-D"]).arg(&pre).stdin(Stdio::null()).output();
    let out = out.expect("run ferry restore");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("a pre-dump"), "restore of a pre-dump: {err}");
    let (pre_written, _) = dump_stats(&work_pre);
    assert!(pre_written >= JOB_PAGES, "the pre-dump copied {pre_written} pages, less than the job's memory");
    match between {
        Between::Some => dirty(pid, "2048"),
        Between::All => dirty(pid, "all"),
        Between::KeeperKilled => {
            let keeper = keeper_of(pid).expect("a keeper holds the pre-dump's tracking");
            assert!(keeper != pid, "the keeper is not the container");
            let _ = Command::new("kill").args(["-9", &keeper.to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while pid_alive(keeper) && Instant::now() < deadline {
                sleep(Duration::from_millis(20));
            }
            dirty(pid, "2048");
        }
    }
    let (img, work) = (w.join("final"), w.join("work-final"));
    let out = rc
        .cmd()
        .args(["checkpoint", "--parent-path", "../pre", "--image-path", &path_str(&img), "--work-path"])
        .arg(&work)
        .arg(&rc.id)
        .stdin(Stdio::null())
        .output()
        .expect("run runc checkpoint --parent-path");
    assert!(
        out.status.success(),
        "runc checkpoint --parent-path: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        log(&work)
    );
    let at_dump = counter(pid).unwrap_or(0);
    assert!(!pid_alive(pid), "the container still runs after the checkpoint");
    let stats = dump_stats(&work);
    eprintln!("{tag}: final dump pages_written {} pages_skipped_parent {}", stats.0, stats.1);
    let (img_s, work_s) = (path_str(&img), path_str(&work));
    let restore = ["restore", "-d", "--image-path", &img_s, "--work-path", &work_s, "-b", &path_str(&bundle), &rc.id];
    rc.detached(&restore, &w, "restore");
    let pid2 = rc.pid();
    let c = wait_counter(pid2, at_dump + 3, "after the restore");
    assert!(c > at_dump, "the counter did not continue ({c} after {at_dump})");
    assert_eq!(check(pid2), format!("PASS pages={JOB_PAGES}"), "the restored job's memory");
    stats
}

/// The pages not written since the pre-dump are the pre-dump's copies (not read again), and
/// the restored job finds every page as it was at the checkpoint.
#[test]
fn runc_pre_dump_parent_path() {
    let (written, skipped) = runc_pre_dump_then_dump("runc-predump", Between::Some);
    assert!(skipped >= JOB_PAGES * 3 / 4, "only {skipped} pages taken from the pre-dump (of {JOB_PAGES})");
    assert!(written < skipped, "the final dump wrote {written} pages, {skipped} from the pre-dump");
}

/// Every page written since the pre-dump: none of its copies is used, the image is right.
#[test]
fn runc_pre_dump_every_page_written() {
    let (_, skipped) = runc_pre_dump_then_dump("runc-predump-all", Between::All);
    assert!(skipped < JOB_PAGES / 8, "{skipped} pages taken from the pre-dump though the job wrote every page");
}

/// The keeper killed between the pre-dump and the dump: the tracking is gone, everything is
/// copied again (a full dump), and the image is right.
#[test]
fn runc_pre_dump_keeper_killed() {
    let (written, skipped) = runc_pre_dump_then_dump("runc-predump-keeper", Between::KeeperKilled);
    assert_eq!(skipped, 0, "pages taken from a pre-dump whose tracking was gone");
    assert!(written >= JOB_PAGES, "the full dump wrote {written} pages");
}

/// Podman 4.3: `container checkpoint --pre-checkpoint`, the job writes, `--with-previous`,
/// `container restore`: the counter continues and the memory is right.
#[test]
fn podman_pre_checkpoint_with_previous() {
    let w = WorkDir::new("podman-predump");
    let pm = Podman::new(&w);
    let rootfs = w.join("rootfs");
    busybox_rootfs(&rootfs);
    install_memjob(&rootfs);
    let tar = w.join("rootfs.tar");
    run_cmd(Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg("."), "tar");
    pm.run(&["import", &path_str(&tar), &pm.image], "import");
    let mut args = vec!["run", "-d", "--name", &pm.name, "--network", "none"];
    args.extend(["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]);
    args.extend([pm.image.as_str(), "/bin/memjob", "64"]);
    pm.run(&args, "run");
    let pid = pm.pid();
    wait_counter(pid, 3, "before the pre-checkpoint");
    let out = pm.cmd().args(["container", "checkpoint", "--pre-checkpoint", &pm.name]).output().expect("podman");
    assert!(
        out.status.success(),
        "podman checkpoint --pre-checkpoint: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        pm.logs()
    );
    assert!(pid_alive(pid), "the container does not run after the pre-checkpoint");
    dirty(pid, "2048");
    let out = pm.cmd().args(["container", "checkpoint", "--with-previous", &pm.name]).output().expect("podman");
    assert!(
        out.status.success(),
        "podman checkpoint --with-previous: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        pm.logs()
    );
    let at_dump = counter(pid).unwrap_or(0);
    let out = pm.cmd().args(["container", "restore", &pm.name]).output().expect("podman restore");
    assert!(out.status.success(), "podman restore: {}\n{}", String::from_utf8_lossy(&out.stderr), pm.logs());
    let pid2 = pm.pid();
    let c = wait_counter(pid2, at_dump + 3, "after podman restore");
    assert!(c > at_dump, "the counter did not continue ({c} after {at_dump})");
    assert_eq!(check(pid2), format!("PASS pages={JOB_PAGES}"), "the restored job's memory");
}
