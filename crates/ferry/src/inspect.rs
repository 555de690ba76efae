//! `ferry inspect`: decode an image into text or JSON (the role CRIU's crit plays).

/// Print a line; a closed stdout (`ferry inspect | head`) is not an error worth a panic.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

use anyhow::Result;
use ferry_image::{FileKind, ImageReader, VmaKind};
use std::path::Path;

fn prot(p: u32) -> String {
    let f = |b: i32, c: char| if p & b as u32 != 0 { c } else { '-' };
    [f(libc::PROT_READ, 'r'), f(libc::PROT_WRITE, 'w'), f(libc::PROT_EXEC, 'x')].iter().collect()
}

/// A byte count in human units: "812 B", "92.0 KiB", "1.5 MiB", "4.0 GiB".
pub fn size(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// `trusted`: `--verify`, check the signature against these keys and every file's digests.
pub fn run(dir: &Path, json: bool, trusted: Option<&[[u8; 32]]>) -> Result<()> {
    let img = ImageReader::open(dir)?;
    // Every file a regular file of its listed size, before anything is printed (cheap: no
    // file is read); with --verify, the signature and every digest (reads the whole image).
    img.check_sizes()?;
    let signature = img.signature()?;
    let verified = match trusted {
        Some(keys) => {
            let key = img.verify_signature(keys)?;
            img.verify_all()?;
            Some(key)
        }
        None => None,
    };
    let inv = img.inventory().clone();
    let mut procs = Vec::new();
    for pid in &inv.pids {
        procs.push(img.read_process(*pid)?);
    }
    let digest = ferry_image::hex::hex(&img.digest());
    if json {
        let v = serde_json::json!({
            "digest": digest,
            "signature": signature,
            "verified": verified.is_some(),
            "inventory": inv,
            "processes": procs,
        });
        out!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    out!(
        "image {} (format {}, ferry {}, kernel {}), root pid {}",
        dir.display(),
        inv.format_version,
        inv.tool_version,
        inv.kernel_release,
        inv.root_pid
    );
    out!("  digest blake3 {digest}");
    if inv.snapshot {
        out!("  memory from a copy-on-write snapshot taken at the freeze (dump -R; the tree ran on meanwhile)");
    }
    match (&signature, verified) {
        (_, Some(key)) => {
            out!("  signed by {} (verified: trusted key, every file matches)", ferry_image::hex::hex(&key))
        }
        (Some(s), None) => {
            out!("  signed by {} (not verified: use --verify KEYDIR)", ferry_image::hex::hex(&s.public_key))
        }
        (None, _) => out!("  not signed"),
    }
    for f in &inv.files {
        let b3 = if f.blake3.is_empty() { "-".to_string() } else { ferry_image::hex::hex(&f.blake3[..8]) };
        out!("  file {:<28} {:>10}  crc32 {:08x}  blake3 {b3}", f.name, size(f.size), f.crc32);
    }
    for p in &procs {
        out!("process {} ({}) ppid {} pgid {} sid {}", p.pid, p.comm, p.ppid, p.pgid, p.sid);
        if p.fd_table_of != 0 {
            out!("  shares the fd table of process {} (CLONE_FILES)", p.fd_table_of);
        }
        if p.stop_signal != 0 {
            out!("  stopped by job control (signal {}): restored stopped", p.stop_signal);
        }
        out!("  cwd {}  root {}  umask {:03o}  personality {:#x}", p.cwd, p.root, p.umask, p.personality);
        if let Some(c) = &p.creds {
            out!("  uids {:?} gids {:?} groups {:?} capeff {:#x}", c.uids, c.gids, c.groups, c.cap_eff);
        }
        for t in &p.threads {
            if let Some(r) = &t.regs {
                out!(
                    "  thread {}: rip {:#x} rsp {:#x} fs_base {:#x}, {}",
                    t.tid,
                    r.rip,
                    r.rsp,
                    r.fs_base,
                    t.stopped_in
                );
            }
            out!("    sigmask {:#x}, {} pending, xstate {} bytes", t.sigmask, t.pending.len(), t.xstate.len());
        }
        if let Some(mm) = &p.mm {
            out!(
                "  exe {}  brk {:#x}..{:#x}  {} of pages stored",
                mm.exe_path,
                mm.start_brk,
                mm.brk,
                size(mm.pages_bytes)
            );
            for v in &mm.vmas {
                let kind = VmaKind::try_from(v.kind).map(|k| format!("{k:?}")).unwrap_or_default();
                // (the record is not checked here: sums and sizes saturate instead of wrapping)
                let stored = v.runs.iter().fold(0u64, |s, r| s.saturating_add(r.nr_pages.saturating_mul(4096)));
                out!(
                    "    {:#014x}-{:#014x} {} {:>10} {:<11} stored {:>10}  {}{}{}{}",
                    v.start,
                    v.end,
                    prot(v.prot),
                    size(v.end.saturating_sub(v.start)),
                    kind,
                    size(stored),
                    v.path,
                    if v.ghost.is_empty() { String::new() } else { format!(" (deleted, content in {})", v.ghost) },
                    if v.cow { " (the rest shared with the parent)" } else { "" },
                    if v.content_at_end { " (content as at the end of the dump, not at the freeze)" } else { "" }
                );
            }
        }
        for fd in &p.fds {
            let Some(f) = p.files.get(fd.file as usize) else {
                out!("  fd {:>4} refers to open file {}, which is not recorded", fd.fd, fd.file);
                continue;
            };
            let kind = FileKind::try_from(f.kind).map(|k| format!("{k:?}")).unwrap_or_default();
            out!(
                "  fd {:>4} {:<10} flags {:#o} pos {}{} {}",
                fd.fd,
                kind,
                f.flags,
                f.pos,
                if fd.cloexec { " cloexec" } else { "" },
                f.describe
            );
        }
        // Files no fd refers to: only a queued unix message holds them (SCM_RIGHTS).
        for (i, f) in p.files.iter().enumerate().filter(|(i, _)| !p.fds.iter().any(|d| d.file as usize == *i)) {
            let kind = FileKind::try_from(f.kind).map(|k| format!("{k:?}")).unwrap_or_default();
            out!("  file {i:>2} {kind:<10} flags {:#o} pos {} {}", f.flags, f.pos, f.describe);
        }
        for a in &p.sigactions {
            out!("  signal {:>2}: handler {:#x} flags {:#x} mask {:#x}", a.sig, a.handler, a.flags, a.mask);
        }
        for s in &p.shared_pending {
            out!("  pending (shared) signal {}", s.signo);
        }
        for t in &p.itimers {
            out!("  itimer {}: value {} us interval {} us", t.which, t.value_us, t.interval_us);
        }
        for t in &p.posix_timers {
            out!(
                "  posix timer {}: clock {} signal {} value {} ns interval {} ns",
                t.id,
                t.clock_id,
                t.signo,
                t.value_ns,
                t.interval_ns
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::size;

    #[test]
    fn sizes_in_human_units() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(812), "812 B");
        assert_eq!(size(92 * 1024), "92.0 KiB");
        assert_eq!(size(3 << 19), "1.5 MiB");
        assert_eq!(size(4 << 30), "4.0 GiB");
    }

    use ferry_image::{Fd, ImageWriter, Inventory, Mm, PageRun, Process, Thread, Vma};

    #[test]
    fn a_nonsensical_record_is_printed_not_a_panic() {
        // Found by the image_dir fuzz target: inspect reads records without restore's checks,
        // and a mapping ending before it starts, runs of absurd length or an fd naming an open
        // file that is not recorded made it panic (overflow, index out of bounds).
        let dir = std::env::temp_dir().join(format!("ferry-inspect-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let p = Process {
            pid: 5,
            threads: vec![Thread { tid: 5, ..Default::default() }],
            fds: vec![Fd { fd: 3, file: 7, ..Default::default() }],
            mm: Some(Mm {
                vmas: vec![Vma {
                    start: 0x3000,
                    end: 0x1000,
                    runs: vec![PageRun { addr: 0, nr_pages: u64::MAX, offset: 0 }; 2],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut w = ImageWriter::create(&dir).expect("image writer");
        w.write_process(&p).expect("process record");
        w.commit(Inventory { pids: vec![5], root_pid: 5, ..Default::default() }).expect("inventory");
        let r = (super::run(&dir, false, None), super::run(&dir, true, None));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(r.0.is_ok() && r.1.is_ok(), "{r:?}");
    }
}
