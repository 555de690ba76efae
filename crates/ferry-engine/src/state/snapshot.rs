//! `dump -R` without keeping the tree frozen while its memory is written: a copy-on-write
//! snapshot of each process's memory (DMTCP's forked checkpointing, driven from outside).
//!
//! While the tree is frozen, ferry injects into each process a `clone` with no flags and exit
//! signal 0 (a fork whose end sends no SIGCHLD and that a plain `wait()` does not see), with
//! PTRACE_O_TRACECLONE: the child is attached to ferry, stopped before it runs a single
//! instruction, and holds the parent's memory as it was at the freeze (copy-on-write). It gets
//! PTRACE_O_EXITKILL (it dies with ferry) and never runs. Everything but memory is still taken
//! while frozen, as are the registers; then the tree runs again and the pages are read from the
//! snapshot's /proc/PID/mem (which, unlike `process_vm_readv`, leaves the pages shared).
//!
//! What a fork does not copy is taken while frozen (into ferry's memory):
//! - mappings with MADV_DONTFORK (absent from the child), MADV_WIPEONFORK and MAP_DROPPABLE
//!   (zeroed in it): their resident pages;
//! - shared memory (MAP_SHARED anonymous, shared memfd), which the child shares rather than
//!   copies: whole, up to [`shared_hold`] bytes per dump (8 MiB). A larger one is read at the end of the
//!   dump instead, and marked `content_at_end` in the image (`ferry inspect` says so). (SysV
//!   segments are read while frozen by state/sysvshm.rs; file mappings keep their file's bytes
//!   as in any dump.)
//!
//! At the end ferry kills the snapshot and waits for it (its tracer); the kernel then hands the
//! dead child to its real parent, the target, as a zombie: ferry freezes the target once more
//! for a moment and has it reap it (an injected `wait4(pid, __WALL | WNOHANG)`). What the target
//! could see meanwhile: one more child in /proc (`task/*/children`, its pid taken), which a
//! `wait` with `__WALL` or `__WCLONE` would report as stopped (ptrace stops are not reported to
//! a real parent; only its exit). If ferry is killed during the dump, the kernel kills the
//! snapshot (PTRACE_O_EXITKILL) and it stays a zombie child of the target until the target
//! reaps with `__WALL`/`__WCLONE` or exits.

use crate::error::{Ctx, Error};
use crate::inject::Injector;
use crate::procfs;
use crate::state::memory::{FrozenMemory, Held};
use ferry_image::{Mm, VmaKind};
use ferry_sys::consts::nr;
use ferry_sys::ptrace::{self, WaitStatus};
use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// The most shared memory (bytes, per dump) copied while frozen; more is read at the end.
/// `FERRY_SNAPSHOT_SHARED_HOLD=BYTES` sets another limit (for tests, and for a service whose
/// shared memory must be exact even if it costs frozen time).
pub fn shared_hold() -> u64 {
    std::env::var("FERRY_SNAPSHOT_SHARED_HOLD").ok().and_then(|v| v.parse().ok()).unwrap_or(8 << 20)
}

/// A stack pointer no process has mapped (below `vm.mmap_min_addr`), for the snapshot.
const NO_STACK: u64 = 8;

/// A copy-on-write snapshot of one process's memory: a stopped child of the process.
pub struct Snapshot {
    /// The snapshot process, as ferry sees it.
    pub pid: i32,
    /// Its id in the target's pid namespace (what the target's `wait4` takes).
    inner: i32,
    /// The process it is a copy of.
    pub target: i32,
    held: HashMap<u64, Held>,
    copies: Vec<Vec<u8>>,
    ended: bool,
}

impl Snapshot {
    /// Fork the target (its thread `inj` drives, borrowed for injection, `options` its ptrace
    /// options) into a stopped snapshot.
    pub fn take(inj: &Injector, options: u32) -> Result<Snapshot, Error> {
        let target = inj.pid();
        let t = Instant::now();
        let pid = inj
            .fork_traced(options, NO_STACK)
            .ctx(|| format!("pid {target}: cannot take a copy-on-write snapshot (injected clone)"))?;
        let mut snap = Snapshot { pid, inner: pid, target, held: HashMap::new(), copies: Vec::new(), ended: false };
        let st =
            procfs::read_string(pid, "status").and_then(|t| procfs::parse(pid, "status", ferry_proc::parse_status(&t)));
        snap.inner = st?.ns_pid.last().copied().unwrap_or(pid);
        tracing::debug!(target, snapshot = pid, fork_ms = t.elapsed().as_secs_f64() * 1e3, "snapshot taken");
        Ok(snap)
    }

    /// While the tree is still frozen: take what the fork did not copy of the target's
    /// mappings `mm` (see the module's notes). `shared_seen` and `budget` are the dump's: each
    /// range of a shared object is taken once, and at most [`shared_hold`] bytes in all.
    pub fn hold(
        &mut self,
        mm: &mut Mm,
        sharing: &crate::state::memory::Sharing,
        shared_seen: &mut HashSet<(u64, u64, u64)>,
        budget: &mut u64,
    ) -> Result<(), Error> {
        let pid = self.target;
        let mem = procfs::open(pid, "mem")?;
        let pagemap = procfs::open(pid, "pagemap")?;
        for v in mm.vmas.iter_mut() {
            let kind = VmaKind::try_from(v.kind).unwrap_or(VmaKind::Invalid);
            let len = v.end - v.start;
            if kind == VmaKind::SharedAnon && !v.sysv {
                if !shared_seen.insert((v.shmem_id, v.offset, len)) {
                    continue;
                }
                let mf = procfs::path(pid, &format!("map_files/{:x}-{:x}", v.start, v.end));
                let obj = std::fs::File::open(&mf)
                    .ctx(|| format!("pid {pid}: cannot open shared memory at {:#x}", v.start))?;
                if len > *budget {
                    v.content_at_end = true;
                    self.held.insert(v.start, Held::Object(obj));
                    continue;
                }
                *budget -= len;
                let mut buf = vec![0u8; len as usize];
                obj.read_exact_at(&mut buf, v.offset)
                    .ctx(|| format!("pid {pid}: cannot read shared memory at {:#x}", v.start))?;
                self.copies.push(buf);
                self.held.insert(v.start, Held::Copied(vec![(v.start, self.copies.len() - 1)]));
                continue;
            }
            let not_forked = v.vm_flags.iter().any(|f| matches!(f.as_str(), "dc" | "wf" | "dp"));
            if !not_forked || !matches!(kind, VmaKind::Anon | VmaKind::FilePrivate) || v.sysv {
                continue;
            }
            let mut parts = Vec::new();
            for r in crate::state::memory::regions_to_store(pagemap.as_fd(), pid, v, &sharing.exclude)? {
                let mut buf = vec![0u8; (r.end - r.start) as usize];
                mem.read_exact_at(&mut buf, r.start)
                    .ctx(|| format!("pid {pid}: cannot read memory at {:#x}", r.start))?;
                self.copies.push(buf);
                parts.push((r.start, self.copies.len() - 1));
            }
            self.held.insert(v.start, Held::Copied(parts));
        }
        Ok(())
    }

    /// Kill the snapshot and reap it: ferry first (its tracer), then the target (its parent),
    /// frozen once more for that. Returns how long the target was frozen for it.
    pub fn end(mut self) -> Result<Duration, Error> {
        self.finish()
    }

    fn finish(&mut self) -> Result<Duration, Error> {
        if self.ended {
            return Ok(Duration::ZERO);
        }
        self.ended = true;
        let (pid, target, inner) = (self.pid, self.target, self.inner);
        ferry_sys::process::kill(pid, libc::SIGKILL).ctx(|| format!("pid {pid}: cannot kill the snapshot"))?;
        loop {
            match ptrace::wait(pid, false) {
                Ok(Some((_, WaitStatus::Exited(_) | WaitStatus::Signaled(_)))) => break,
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => break,
                Err(e) => {
                    return Err(Error::Sys { object: format!("pid {pid}: cannot wait for the snapshot"), source: e })
                }
            }
        }
        let t = Instant::now();
        let flags = (libc::__WALL | libc::WNOHANG) as u64;
        let got = crate::freeze::with_injector(target, |inj, _| {
            inj.call(nr::WAIT4, &[inner as u64, 0, flags, 0])
                .ctx(|| format!("pid {target}: cannot reap its snapshot {pid} (injected wait4)"))
        });
        let frozen = t.elapsed();
        match got {
            Ok(r) if r == inner as u64 => Ok(frozen),
            // (The target exited meanwhile: the zombie went to its new parent.)
            Err(Error::NoProcess { .. } | Error::Exited { .. }) => Ok(frozen),
            Ok(r) => Err(Error::Invalid {
                object: format!("pid {target}"),
                what: format!("its snapshot {pid} was not reaped (wait4 returned {r})"),
            }),
            Err(e) => Err(e),
        }
    }
}

impl FrozenMemory for Snapshot {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn held(&self, start: u64) -> Option<&Held> {
        self.held.get(&start)
    }

    fn copy(&self, i: usize) -> &[u8] {
        self.copies.get(i).map_or(&[][..], |c| &c[..])
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!(pid = self.target, snapshot = self.pid, error = %e, "snapshot not cleaned up");
        }
    }
}
