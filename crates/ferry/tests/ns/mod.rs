//! Namespaces (state/namespaces.rs) and mount trees (state/mounts.rs): a process in namespaces
//! of its own comes back in new ones with the same content, and checks its own view.

use crate::common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn nsview(mode: &str) -> Spec {
    Spec::c("nsview").args(&[mode])
}

#[test]
fn ns_uts_control() {
    control(&nsview("uts"));
}

/// A process in its own uts namespace keeps its host and domain name.
#[test]
fn ns_uts_names_restored() {
    cycle(&nsview("uts"));
}

/// A root file system in W for `nsview mnt`: the workload's executable at W/nsview and its
/// shared libraries at their own paths below W (found with ldd), so that after pivot_root into
/// W everything the process maps is inside its root, as in a container.
fn populate_root(w: &WorkDir, program: &Path) {
    need("ldd", "libc-bin");
    fs::copy(program, w.join("nsview")).unwrap_or_else(|e| panic!("cannot copy {}: {e}", program.display()));
    let out = Command::new("ldd").arg(program).output().expect("run ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    for word in text.split_whitespace().filter(|w| w.starts_with('/')) {
        let dst = w.join(word.trim_start_matches('/'));
        fs::create_dir_all(dst.parent().expect("a parent")).expect("mkdir in the root");
        fs::copy(word, &dst).unwrap_or_else(|e| panic!("cannot copy {word}: {e}"));
    }
}

#[test]
fn ns_mnt_control() {
    let spec = nsview("mnt");
    let w = WorkDir::new("nsview-mnt");
    populate_root(&w, &spec.program);
    let mut run = Run::start_in(&spec, w);
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload");
}

/// A container-like mount tree (an external root, proc, sysfs, tmpfs with content, devpts,
/// mqueue, a read-only bind of a sub-directory, a /dev/null mask over /proc/timer_list, a shared
/// mount) comes back the same, seen from inside (mountinfo, files, behaviour).
#[test]
fn ns_mnt_tree_restored() {
    mnt_cycle(|_| {}, |_| {});
}

/// `ferry restore --root DIR` of the "mnt" tree: `before_dump` and `before_go` see the run.
fn mnt_cycle(before_dump: impl FnOnce(&Run), before_go: impl FnOnce(&Run)) {
    let spec = nsview("mnt");
    let w = WorkDir::new("nsview-mnt");
    populate_root(&w, &spec.program);
    let mut run = Run::start_in(&spec, w);
    before_dump(&run);
    run.dump_ok(&[]);
    run.reap_dumped();
    let img = run.img();
    let root = path_str(&run.w.path);
    let pidfile = run.spawn_restore("restore", &img, &["--root", &root]);
    run.wait_pidfile(&pidfile);
    before_go(&run);
    run.go();
    let status = run.wait_restore_exit();
    run.expect_pass(status, "ferry restore");
}

/// Removes a cgroup directory when dropped (its processes are gone by then).
struct CgroupDir(String);

impl Drop for CgroupDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

/// A tree in its own mount tree, in a cgroup that is not ferry's, joins it again at restore
/// (through a cgroup.procs fd ferry opened: the tree's own mount tree has no cgroup file system).
#[test]
fn ns_mnt_cgroup_joined() {
    let dir = format!("/sys/fs/cgroup/unified/ferry-e2e-ns-{}", std::process::id());
    fs::create_dir(&dir).unwrap_or_else(|e| panic!("cannot create {dir}: {e}"));
    let _cg = CgroupDir(dir.clone());
    let name = dir.trim_start_matches("/sys/fs/cgroup/unified").to_string();
    mnt_cycle(
        |run| fs::write(format!("{dir}/cgroup.procs"), run.pid.to_string()).expect("move into the cgroup"),
        |run| {
            let cg = fs::read_to_string(format!("/proc/{}/cgroup", run.pid)).unwrap_or_default();
            if !cg.lines().any(|l| l == format!("0::{name}")) {
                run.fail(&format!("not back in cgroup {name}: {cg}"));
            }
        },
    );
}

/// The same tree in a container's shape: its root process is pid 1 of a new pid namespace, so
/// restore recreates both, and proc must show the new pid namespace (mounted by that pid 1).
#[test]
fn ns_pidns_mnt_container_restored() {
    let spec = nsview("pidmnt");
    let w = WorkDir::new("nsview-pidmnt");
    populate_root(&w, &spec.program);
    let mut run = Run::start_in(&spec, w);
    let child: i32 = fs::read_to_string(run.w.join("child")).expect("child pid").trim().parse().expect("a pid");
    let root = path_str(&run.w.path);
    cycle_pidns_init(&mut run, child, &["--root", &root]);
}

/// A mount ferry cannot recreate (a ramfs of the process's own, next to the copies of the
/// host's mounts) is refused by name, with the way out (--external).
#[test]
fn ns_mnt_unknown_fs_refused() {
    let run = Run::start(&nsview("mnt-ramfs"));
    dump_refused(run.pid, &run.w.join("img"), "ferry recreates only proc, sysfs, devpts, mqueue, cgroup2 and tmpfs");
}

fn big_tmpfs() -> Spec {
    nsview("bigtmpfs").without_fingerprint().ready_timeout(Duration::from_secs(180))
}

/// A tmpfs of its own holding 300 MiB of files and a sparse 1 GiB file (a MiB of data at each
/// end), one file held open at an offset: its data is streamed into the image and back, so
/// ferry's own peak resident set stays far below it (dump and restore), and the process finds
/// every byte, the holes (SEEK_DATA/SEEK_HOLE, blocks), the attributes and its fd's offset.
/// (ferry used to hold the content in memory, and refused a tmpfs over 256 MiB.)
#[test]
fn ns_mnt_big_tmpfs_streamed() {
    let _heavy = heavy_lock();
    let time = need("time", "time");
    let mut run = Run::start(&big_tmpfs());
    let img = run.img();
    let peak = run.w.join("dump.peak");
    let out = Command::new(time)
        .args(["-f", "%M", "-o"])
        .arg(&peak)
        .args([ferry_bin(), "dump", "-t"])
        .arg(run.pid.to_string())
        .arg("-D")
        .arg(&img)
        .output()
        .expect("run ferry dump");
    if !out.status.success() {
        run.fail(&format!("ferry dump failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    run.reap_dumped();
    let dump_kib: u64 = fs::read_to_string(&peak)
        .ok()
        .and_then(|t| t.lines().last().and_then(|l| l.trim().parse().ok()))
        .expect("ferry dump's peak RSS from time -f %M");
    let pidfile = run.spawn_restore("restore", &img, &[]);
    run.wait_pidfile(&pidfile);
    // ferry restore (without -d) waits for the process: it is still alive, its VmHWM final.
    let restore_kib = vm_hwm_kib(run.restore.as_ref().map(|c| c.id()).expect("ferry restore is running"));
    run.go();
    let status = run.wait_restore_exit();
    run.expect_pass(status, "ferry restore");
    eprintln!("tmpfs of 302 MiB of data: ferry dump peak RSS {dump_kib} KiB, ferry restore {restore_kib} KiB");
    if dump_kib > 64 << 10 || restore_kib > 64 << 10 {
        run.fail(&format!(
            "ferry's peak RSS: dump {} MiB, restore {} MiB (limit 64 MiB, for 302 MiB of tmpfs data)",
            dump_kib >> 10,
            restore_kib >> 10
        ));
    }
}

/// Unmounts a mount of the test's when dropped.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The same tmpfs dumped into an image directory on a file system too small for it: refused by
/// name (how much it holds, how much is free), nothing left behind, and the process runs on
/// unharmed.
#[test]
fn ns_mnt_big_tmpfs_no_room_refused() {
    let _heavy = heavy_lock();
    let mut run = Run::start(&big_tmpfs());
    let small = run.w.join("small");
    fs::create_dir(&small).expect("mkdir small");
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "ferry-e2e-tmpfs-small"])
        .arg(&small)
        .status()
        .expect("run mount");
    assert!(st.success(), "cannot mount a small tmpfs on {}", small.display());
    let _umount = Unmount(small.clone());
    dump_refused(run.pid, &small.join("img"), "MiB free");
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload after the refused dump");
}

/// A plain `unshare -m`: a copy of the host's whole mount tree (cgroup v1, devtmpfs, ...), whose
/// mounts are external automatically (copies of the dumping ferry's) and bound from the same
/// places at restore.
#[test]
fn ns_mnt_host_copy_restored() {
    // No fingerprint: the copy's mounts are bound again from the host's as they are at restore
    // (other tests add /run/netns mounts meanwhile), and its /proc is a new instance (another
    // device number in mountinfo).
    cycle(&nsview("mnt-host").without_fingerprint());
}

/// A work directory outside /tmp (which a `ferry run --mntns` job has of its own): in
/// /dev/shm, a copy of the host's mount in the job's namespace. Removed on drop.
struct ShmDir(PathBuf);

impl Drop for ShmDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `ferry run --mntns --pidns` job (`nsview runmnt`: a file in its private /tmp, a tmpfs of
/// its own with a file) dumped and restored on this host: every other mount of its namespace
/// is a copy of the host's (external automatically); it checks its files and mounts after go.
#[test]
fn ns_run_mntns_job_restored() {
    let d = ShmDir(PathBuf::from(format!("/dev/shm/ferry-e2e-runmnt-{}", std::process::id())));
    fs::create_dir_all(&d.0).expect("work dir");
    let dir = path_str(&d.0);
    // (stdout and stderr to a file: the detached job keeps them)
    let log = d.0.join("ferry.log");
    // (ferry too, from the work dir: the job's init is ferry, whose file must be reachable in
    // the job's mount namespace, and a checkout under /tmp is not: the dump would refuse it)
    let bin = d.0.join("ferry");
    fs::copy(ferry_bin(), &bin).expect("copy ferry");
    let ferry = |args: &[&str]| {
        let f = fs::OpenOptions::new().create(true).append(true).open(&log).expect("log");
        let st = Command::new(&bin)
            .args(args)
            .current_dir(&d.0) // (the job's cwd, also reachable from its mount namespace)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log"))
            .stderr(f)
            .status()
            .expect("run ferry");
        assert!(st.success(), "ferry {}: {}", args.join(" "), read_tail(&log, 3000));
    };
    // (A copy in the work dir: the job's /tmp is its own, so a checkout under /tmp, as a CI
    // clone may be, would hide the workload's binary from it.)
    let nsview = d.0.join("nsview");
    fs::copy(ferry_workloads::path("nsview"), &nsview).expect("copy the workload");
    let pidfile = format!("{dir}/init.pid");
    ferry(&["run", "--mntns", "--pidns", "-d", "--pidfile", &pidfile, "--", &path_str(&nsview), &dir, "runmnt"]);
    let pid: i32 = fs::read_to_string(&pidfile).expect("pidfile").trim().parse().expect("pid");
    let guard = ProcGuard::new();
    guard.add(pid);
    wait_for("the job's ready", Duration::from_secs(60), || d.0.join("ready").exists());
    let img = format!("{dir}/img");
    ferry(&["dump", "-t", &pid.to_string(), "-D", &img]);
    wait_for("the dumped tree to go", Duration::from_secs(20), || !pid_alive(pid));
    let restored_pidfile = format!("{dir}/restored.pid");
    ferry(&["restore", "-d", "-D", &img, "--pidfile", &restored_pidfile]);
    let restored: i32 = fs::read_to_string(&restored_pidfile).expect("pidfile").trim().parse().expect("pid");
    guard.add(restored);
    send_signal(restored, "USR2").expect("send go");
    wait_for("the job's result", Duration::from_secs(60), || d.0.join("result").exists());
    let result = fs::read_to_string(d.0.join("result")).unwrap_or_default();
    assert_eq!(result.trim(), "PASS", "the job's result");
}

/// A user namespace without maps (its uid 0 is nobody inside) is refused by name.
#[test]
fn ns_user_refused() {
    let run = Run::start(&nsview("user"));
    let child: i32 = fs::read_to_string(run.w.join("child")).expect("child pid").trim().parse().expect("a pid");
    dump_refused(child, &run.w.join("img"), "is not mapped in its user namespace");
}
