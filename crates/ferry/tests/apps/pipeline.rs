//! `sh -c 'yes | head -c N | gzip | sha256sum > sum'` in a session and process group of its
//! own: five processes, three pipes full of data, checkpointed mid-stream. The checksum at the
//! end must equal that of an uninterrupted run.

use super::*;

/// 300 MB through gzip: a few seconds on a loaded machine, so the checkpoint falls mid-stream.
const PIPELINE: &str = "yes ferry-realapps-pipeline | head -c 300000000 | gzip -1 -n | sha256sum > sum.txt";

/// The checksum of an uninterrupted run (in W/control).
fn control_sum(w: &WorkDir) -> String {
    let dir = w.join("control");
    fs::create_dir(&dir).expect("control dir");
    let st = Command::new("sh").args(["-c", PIPELINE]).current_dir(&dir).status().expect("run the pipeline");
    assert!(st.success(), "the uninterrupted pipeline failed");
    let sum = fs::read_to_string(dir.join("sum.txt")).expect("sum");
    assert_eq!(sum.len(), 64 + 4, "not a sha256sum line: {sum:?}");
    sum
}

/// (pgid, sid) of `pid` from /proc/PID/stat.
fn pgid_sid(pid: i32) -> Option<(i32, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
}

/// The pipeline under `setsid sh -c`, started once every stage runs; returns the shell's child
/// and pid and the pids of the 4 stages.
fn start_pipeline(w: &WorkDir) -> (Child, i32, Vec<i32>) {
    let setsid = need("setsid", "util-linux");
    let child = start(w, "sh", &setsid, &["sh", "-c", PIPELINE]);
    let pid = child.id() as i32;
    let stages = || -> Vec<i32> {
        let c = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        c.split_whitespace().filter_map(|p| p.parse().ok()).collect()
    };
    wait_for("the 4 stages", Duration::from_secs(20), || stages().len() == 4);
    // (let the pipes fill)
    sleep(Duration::from_millis(400));
    let stages = stages();
    assert_eq!(stages.len(), 4, "the pipeline ended before the checkpoint: make it longer");
    for &s in &stages {
        assert_eq!(pgid_sid(s), Some((pid, pid)), "stage {s} is not in the shell's group and session");
    }
    (child, pid, stages)
}

/// Dump mid-stream, kill, restore: the same five processes in the same group and session
/// finish the stream, and the checksum is that of an uninterrupted run.
#[test]
fn pipeline_yes_gzip_sha256sum_checksum_unchanged() {
    let w = WorkDir::new("gzpipe");
    let want = control_sum(&w);
    let (child, pid, stages) = start_pipeline(&w);
    let guard = ProcGuard::new();
    guard.add(pid);
    let img = dump(&w, pid, "img", &[]);
    assert_eq!(fs::read_to_string(w.join("sum.txt")).unwrap_or_default(), "", "the stream ended before the dump");
    reap_dumped(&mut Some(child), &img);
    let mut restore = spawn_restore(&w, &img, "restore", &[]);
    wait_for("the restored stages", Duration::from_secs(30), || {
        stages.iter().all(|&s| pid_alive(s)) || !pid_alive(pid)
    });
    for &s in &stages {
        // (a stage may have finished already: only live ones are checked)
        if let Some(ids) = pgid_sid(s) {
            assert_eq!(ids, (pid, pid), "restored stage {s} is not in the shell's group and session");
        }
    }
    let st = wait_exit(&mut restore, "the restored pipeline", || read_tail(&w.join("restore.err"), 3000));
    assert!(st.success(), "the restored pipeline {}: {}", describe(st), read_tail(&w.join("restore.err"), 3000));
    assert_eq!(fs::read_to_string(w.join("sum.txt")).unwrap_or_default(), want, "the checksum differs");
}

/// `dump -R` mid-stream: the pipeline runs on to the right checksum. The image, restored after
/// that run finished, streams the rest again from the checkpoint to the same checksum.
#[test]
fn pipeline_leave_running_then_restore() {
    let w = WorkDir::new("gzpipe-R");
    let want = control_sum(&w);
    let (mut child, pid, _) = start_pipeline(&w);
    let guard = ProcGuard::new();
    guard.add(pid);
    let img = dump(&w, pid, "img", &["-R"]);
    let st = wait_exit(&mut child, "the pipeline left running", String::new);
    assert!(st.success(), "the pipeline left running {}", describe(st));
    assert_eq!(fs::read_to_string(w.join("sum.txt")).unwrap_or_default(), want, "the checksum after dump -R differs");
    wait_image_pids_gone(&img);
    let mut restore = spawn_restore(&w, &img, "restore", &[]);
    let st = wait_exit(&mut restore, "the restored pipeline", || read_tail(&w.join("restore.err"), 3000));
    assert!(st.success(), "the restored pipeline {}: {}", describe(st), read_tail(&w.join("restore.err"), 3000));
    assert_eq!(fs::read_to_string(w.join("sum.txt")).unwrap_or_default(), want, "the restored checksum differs");
}
