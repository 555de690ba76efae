//! Images whose records are well-formed (valid checksums) but make no sense — hand-edited, or
//! built by a hostile migration peer: restore refuses each with one line, never a panic, and
//! leaves no process behind (crates/ferry-engine/src/validate.rs).

use crate::common::*;
use ferry_image::{decode_record, encode_record, Inventory, Process, RecordKind};
use std::fs;
use std::path::Path;
use std::time::Duration;

/// Copy image `from` to `to`, changing the root's process record with `edit` and fixing the
/// checksums and digests so that only the meaning is wrong.
fn tampered_copy(from: &Path, to: &Path, pid: i32, edit: impl FnOnce(&mut Process)) {
    fs::create_dir_all(to).expect("mkdir");
    for e in fs::read_dir(from).expect("read image").flatten() {
        fs::copy(e.path(), to.join(e.file_name())).expect("copy image file");
    }
    let name = ferry_image::process_file(pid);
    let bytes = fs::read(to.join(&name)).expect("read process record");
    let mut p: Process = decode_record(&name, RecordKind::Process, &bytes).expect("decode process record");
    edit(&mut p);
    let rec = encode_record(RecordKind::Process, &p);
    fs::write(to.join(&name), &rec).expect("write process record");
    let inv_bytes = fs::read(to.join(ferry_image::INVENTORY)).expect("read inventory");
    let mut inv: Inventory =
        decode_record(ferry_image::INVENTORY, RecordKind::Inventory, &inv_bytes).expect("decode inventory");
    let d = inv.files.iter_mut().find(|d| d.name == name).expect("record in the inventory");
    (d.size, d.crc32, d.blake3) = (rec.len() as u64, crc32fast::hash(&rec), blake3::hash(&rec).as_bytes().to_vec());
    fs::write(to.join(ferry_image::INVENTORY), encode_record(RecordKind::Inventory, &inv)).expect("write inventory");
}

type Edit = fn(&mut Process);

#[test]
fn nonsensical_records_refused() {
    let mut run = Run::start(&Spec::c("anonfds"));
    run.dump_ok(&[]);
    run.reap_dumped();
    wait_image_pids_gone(&run.img());
    let cases: [(&str, Edit, &str); 7] = [
        ("fd-index", |p| p.fds[0].file = 999, "not recorded"),
        ("fd-twice", |p| p.fds[1].fd = p.fds[0].fd, "appears twice"),
        ("fd-huge", |p| p.fds[0].fd = i32::MAX, "open-file limit"),
        (
            "vma-overlap",
            |p| {
                let vmas = &mut p.mm.as_mut().expect("mm").vmas;
                vmas[1].start = vmas[0].start;
            },
            "overlaps",
        ),
        (
            "run-outside",
            |p| {
                let v = p.mm.as_mut().expect("mm").vmas.iter_mut().find(|v| !v.runs.is_empty()).expect("a run");
                v.runs[0].nr_pages = u64::MAX / 2;
            },
            "outside",
        ),
        ("cgroup-escape", |p| p.cgroups[0].path = "/../../tmp".into(), "not a plain path"),
        (
            "cow-root",
            |p| {
                let v = p.mm.as_mut().expect("mm").vmas.iter_mut().find(|v| !v.runs.is_empty()).expect("a run");
                v.cow = true;
            },
            "parent",
        ),
    ];
    for (label, edit, expect) in cases {
        let dir = run.w.join(&format!("img-{label}"));
        tampered_copy(&run.img(), &dir, run.pid, edit);
        let res = run.ferry(label, &["restore".to_string(), "-D".to_string(), path_str(&dir)], Duration::from_secs(60));
        if res.status.success() {
            run.fail(&format!("{label}: the restore succeeded"));
        }
        let lines = res.stderr_lines();
        if lines.len() != 1 || !lines[0].contains(expect) || res.stderr.contains("panicked") {
            run.fail(&format!("{label}: expected one line mentioning {expect:?}, got {:?}", res.stderr));
        }
        if pid_alive(run.pid) {
            run.fail(&format!("{label}: pid {} exists after the refused restore", run.pid));
        }
    }
    // The untouched image still restores.
    run.restore_and_verify("ferry restore of the untouched image");
}
