//! Images that can neither hang their reader nor lie to it: a FIFO (or a symbolic link) in
//! place of an image file is refused at once by `restore` and `inspect`; a page file changed
//! with its CRC-32 fixed up is refused by its BLAKE3 digest before any process runs; a signed
//! image (`dump --sign`) restores with `restore --verify`, and a tampered one, one signed by an
//! untrusted key, or an unsigned one is refused. Each refusal is one line, within seconds, and
//! leaves no process behind.

use crate::common::*;
use ferry_image::{decode_record, encode_record, Inventory, RecordKind};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Long enough for a loaded machine; a reader that hangs on a FIFO never finishes.
const HANG: Duration = Duration::from_secs(40);
/// A refusal must come this fast (it reads a few small files at most).
const FAST: Duration = Duration::from_secs(15);

fn copy_image(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for e in fs::read_dir(from).expect("read image").flatten() {
        fs::copy(e.path(), to.join(e.file_name())).expect("copy image file");
    }
}

fn mkfifo(path: &Path) {
    fs::remove_file(path).expect("remove image file");
    let st = Command::new("mkfifo").arg(path).status().expect("run mkfifo");
    assert!(st.success(), "mkfifo {} failed", path.display());
}

/// Rewrite `dir`'s inventory through `edit` (its record checksum recomputed).
fn edit_inventory(dir: &Path, edit: impl FnOnce(&mut Inventory)) {
    let path = dir.join(ferry_image::INVENTORY);
    let bytes = fs::read(&path).expect("read inventory");
    let mut inv: Inventory = decode_record("inventory", RecordKind::Inventory, &bytes).expect("decode inventory");
    edit(&mut inv);
    fs::write(&path, encode_record(RecordKind::Inventory, &inv)).expect("write inventory");
}

/// Change one byte of page data in `dir`'s page file of `pid` (the middle of the file, well
/// past the header page). Returns the file's name and its new content.
fn change_page_byte(dir: &Path, pid: i32) -> (String, Vec<u8>) {
    let name = ferry_image::pages_file(pid);
    let path = dir.join(&name);
    let f = fs::OpenOptions::new().read(true).write(true).open(&path).expect("open page file");
    let len = f.metadata().expect("stat page file").len();
    assert!(len > 3 * 4096, "page file of {len} bytes: too small to change");
    let at = 4096 + (len - 4096) / 2;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).expect("read page byte");
    b[0] ^= 0x5a;
    f.write_all_at(&b, at).expect("write page byte");
    drop(f);
    (name.clone(), fs::read(&path).expect("read page file"))
}

/// Run ferry `args`, which must fail within [`FAST`] with one line containing every `expect`,
/// and leave no process with the image's pid.
fn refused(run: &mut Run, label: &str, args: &[String], expect: &[&str]) {
    let t0 = Instant::now();
    let res = run.ferry(label, args, HANG);
    let took = t0.elapsed();
    if res.status.success() {
        run.fail(&format!("{label}: ferry {} succeeded", args.join(" ")));
    }
    let lines = res.stderr_lines();
    if lines.len() != 1 || res.stderr.contains("panicked") || !expect.iter().all(|e| lines[0].contains(e)) {
        run.fail(&format!("{label}: expected one line mentioning {expect:?}, got {:?}", res.stderr));
    }
    if took > FAST {
        run.fail(&format!("{label}: the refusal took {took:?}"));
    }
    if pid_alive(run.pid) {
        run.fail(&format!("{label}: a process with pid {} exists after the refusal", run.pid));
    }
}

fn restore_args(dir: &Path, extra: &[&str]) -> Vec<String> {
    // (-d: should the restore wrongly succeed, it returns at once instead of waiting for the
    // workload)
    let mut a = vec!["restore".to_string(), "-d".to_string(), "-D".to_string(), path_str(dir)];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn inspect_args(dir: &Path) -> Vec<String> {
    vec!["inspect".to_string(), path_str(dir)]
}

fn dumped(spec: &Spec, extra: &[&str]) -> Run {
    let mut run = Run::start(spec);
    run.dump_ok(extra);
    run.reap_dumped();
    wait_image_pids_gone(&run.img());
    run
}

fn keygen(run: &mut Run, name: &str) -> PathBuf {
    let dir = run.w.join(name);
    let res = run.ferry(&format!("keygen-{name}"), &["keygen".to_string(), path_str(&dir)], Duration::from_secs(30));
    if !res.status.success() {
        run.fail(&format!("ferry keygen {name} failed: {}", res.stderr));
    }
    dir
}

/// A FIFO in place of `inventory.img` or of a page file, and a symbolic link in place of a
/// page file: restore and inspect refuse at once, naming the file and what it is (before the
/// fix, both blocked forever in open() of the FIFO).
#[test]
fn fifo_in_place_of_image_files() {
    let mut run = dumped(&Spec::c("mem_anon"), &[]);
    let img = run.img();
    let pages = ferry_image::pages_file(run.pid);
    for (label, name, symlink) in
        [("inventory", ferry_image::INVENTORY, false), ("pages", pages.as_str(), false), ("link", pages.as_str(), true)]
    {
        let dir = run.w.join(&format!("img-{label}"));
        copy_image(&img, &dir);
        let what = if symlink {
            fs::remove_file(dir.join(name)).expect("remove page file");
            std::os::unix::fs::symlink(img.join(name), dir.join(name)).expect("symlink");
            "symbolic link"
        } else {
            mkfifo(&dir.join(name));
            "FIFO"
        };
        refused(&mut run, &format!("restore-{label}"), &restore_args(&dir, &[]), &[name, what]);
        refused(&mut run, &format!("inspect-{label}"), &inspect_args(&dir), &[name, what]);
    }
}

/// One byte of page data changed and the file's CRC-32 fixed up in the inventory (as anyone
/// who can write the image can): the BLAKE3 digest catches it, restore refuses naming the page
/// file, and nothing is left (before the fix, the changed memory was restored without a word).
#[test]
fn page_change_with_crc_fixed_up_refused() {
    let mut run = dumped(&Spec::c("mem_anon"), &[]);
    let dir = run.w.join("img-changed");
    copy_image(&run.img(), &dir);
    let (name, bytes) = change_page_byte(&dir, run.pid);
    edit_inventory(&dir, |inv| {
        let d = inv.files.iter_mut().find(|d| d.name == name).expect("page file in the inventory");
        d.crc32 = crc32fast::hash(&bytes);
    });
    refused(&mut run, "restore-changed", &restore_args(&dir, &[]), &[&name, "BLAKE3"]);
}

/// `dump --sign` then `restore --verify`: the intact image restores (and the workload checks
/// its memory); a changed page file, a fully fixed-up inventory, a key that is not trusted and
/// an unsigned image are each refused before any process runs.
#[test]
fn signed_image_verified() {
    let mut run = Run::start(&Spec::c("mem_anon"));
    let keys = keygen(&mut run, "keys");
    let other = keygen(&mut run, "other");
    let keys_s = path_str(&keys);
    run.dump_ok(&["--sign", &keys_s]);
    run.reap_dumped();
    let img = run.img();
    wait_image_pids_gone(&img);
    if !img.join(ferry_image::SIGNATURE).is_file() {
        run.fail("dump --sign wrote no signature.img");
    }
    let verify = ["--verify", keys_s.as_str()];

    // A page byte changed, nothing else: the signature holds, the page file's digest does not.
    let dir = run.w.join("img-page");
    copy_image(&img, &dir);
    let (pages, _) = change_page_byte(&dir, run.pid);
    refused(&mut run, "verify-page", &restore_args(&dir, &verify), &[&pages, "BLAKE3"]);

    // Changed, and both digests fixed up in the inventory: the signature no longer matches.
    let dir = run.w.join("img-fixed");
    copy_image(&img, &dir);
    let (pages, bytes) = change_page_byte(&dir, run.pid);
    edit_inventory(&dir, |inv| {
        let d = inv.files.iter_mut().find(|d| d.name == pages).expect("page file in the inventory");
        d.crc32 = crc32fast::hash(&bytes);
        d.blake3 = blake3::hash(&bytes).as_bytes().to_vec();
    });
    refused(&mut run, "verify-fixed", &restore_args(&dir, &verify), &[ferry_image::SIGNATURE, "bad signature"]);
    // (without --verify the fixed-up image passes every check: that is what signing is for)

    // A key that is not trusted.
    let other_s = path_str(&other);
    refused(&mut run, "verify-other", &restore_args(&img, &["--verify", &other_s]), &["not in the trusted list"]);

    // Unsigned.
    let dir = run.w.join("img-unsigned");
    copy_image(&img, &dir);
    fs::remove_file(dir.join(ferry_image::SIGNATURE)).expect("remove signature");
    refused(&mut run, "verify-unsigned", &restore_args(&dir, &verify), &["not signed"]);

    // inspect --verify agrees.
    let res =
        run.ferry("inspect-verify", &[inspect_args(&img), vec!["--verify".into(), keys_s.clone()]].concat(), HANG);
    if !res.status.success() || !res.stdout.contains("verified") {
        run.fail(&format!("inspect --verify of the signed image: {} {:?}", describe(res.status), res.stderr));
    }

    // The intact, signed image restores with --verify, and its memory is right.
    let pidfile = run.spawn_restore("restore", &img, &verify);
    run.wait_pidfile(&pidfile);
    run.go();
    let status = run.wait_restore_exit();
    run.expect_pass(status, "ferry restore --verify of the signed image");
}
