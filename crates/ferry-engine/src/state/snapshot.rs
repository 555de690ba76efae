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
//! snapshot (PTRACE_O_EXITKILL) and the guard (`ferry __snapshot-guard`, below) has the target
//! reap it.
//!
//! The VmFlags (smaps, a walk of every page table) are read from the snapshot once the tree runs
//! again, when the fork kept them all ([`flags_later`], [`Snapshot::settle`]).

use crate::error::{Ctx, Error};
use crate::inject::Injector;
use crate::procfs;
use crate::state::memory::{FrozenMemory, Holds};
use ferry_image::{Mm, VmaKind};
use ferry_sys::consts::nr;
use ferry_sys::ptrace::{self, WaitStatus};
use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// The most shared memory (bytes, per dump) copied while frozen; more is read at the end.
/// `FERRY_SNAPSHOT_SHARED_HOLD=BYTES` sets another limit (for tests, and for a service whose
/// shared memory must be exact even if it costs frozen time).
pub fn shared_hold() -> u64 {
    std::env::var("FERRY_SNAPSHOT_SHARED_HOLD").ok().and_then(|v| v.parse().ok()).unwrap_or(8 << 20)
}

// ---- The guard: the snapshots reaped even if ferry is killed ----------------------------------
//
// A snapshot that dies with ferry (PTRACE_O_EXITKILL) would stay a zombie child of its target
// (exit signal 0: only a `wait` with __WALL reaps it) until the target exits. So before the
// freeze, a dump that takes snapshots starts `ferry __snapshot-guard` (its own process group:
// a Ctrl-C of ferry does not reach it), and tells it, down a pipe, each snapshot taken
// ("take TARGET STARTTIME SNAPSHOT INNER") and each one ferry reaped ("done SNAPSHOT"). When the
// pipe closes (ferry exited, however), the guard waits for each snapshot not reaped to die and
// has its target reap it, as ferry would have (`Snapshot::end`: a moment's freeze and an
// injected wait4).

static GUARD: std::sync::Mutex<Option<std::process::ChildStdin>> = std::sync::Mutex::new(None);

/// Start the guard (before the freeze: it costs a fork and exec). Without it (it cannot be
/// started) the dump goes on, and a snapshot ferry cannot reap stays a zombie, with a warning.
pub fn start_guard() {
    let Ok(mut guard) = GUARD.lock() else { return };
    if guard.is_some() {
        return;
    }
    use std::os::unix::process::CommandExt;
    let started = std::fs::read_link("/proc/self/exe").and_then(|exe| {
        std::process::Command::new(exe)
            .arg("__snapshot-guard")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
    });
    match started {
        Ok(mut child) => {
            // (Its start, an exec of ferry, would otherwise compete for the CPUs with the
            // freeze: wait for its first byte, or its end.)
            if let Some(mut out) = child.stdout.take() {
                use std::io::Read;
                let _ = out.read(&mut [0u8; 1]);
            }
            *guard = child.stdin.take();
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the snapshot guard: a snapshot left by a killed ferry stays a zombie")
        }
    }
}

fn tell_guard(line: &str) {
    use std::io::Write;
    if let Ok(mut guard) = GUARD.lock() {
        if let Some(pipe) = guard.as_mut() {
            let _ = pipe.write_all(format!("{line}\n").as_bytes());
        }
    }
}

/// `ferry __snapshot-guard`: read ferry's messages until it exits, then reap what it left.
pub fn guard_main() {
    use std::io::{BufRead, Write};
    let _ = std::io::stdout().write_all(b"r").and_then(|_| std::io::stdout().flush());
    let mut left: HashMap<i32, (i32, u64, i32)> = HashMap::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let w: Vec<i64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        match (line.split_whitespace().next(), w.as_slice()) {
            (Some("take"), &[t, st, s, i]) => {
                left.insert(s as i32, (t as i32, st as u64, i as i32));
            }
            (Some("done"), &[s]) => {
                left.remove(&(s as i32));
            }
            _ => {}
        }
    }
    for (snap, (target, start, inner)) in left {
        if let Err(e) = reap_orphan(snap, target, start, inner) {
            tracing::warn!(pid = target, snapshot = snap, error = %e, "snapshot left as a zombie");
        }
    }
}

/// Have `target` reap its dead snapshot `snap` (`inner` in its namespace): a moment's freeze
/// and an injected `wait4(inner, __WALL | WNOHANG)`, whose result is returned.
fn reap_in(target: i32, snap: i32, inner: i32) -> Result<u64, Error> {
    let flags = (libc::__WALL | libc::WNOHANG) as u64;
    crate::freeze::with_injector(target, |inj, _| {
        inj.call(nr::WAIT4, &[inner as u64, 0, flags, 0])
            .ctx(|| format!("pid {target}: cannot reap its snapshot {snap} (injected wait4)"))
    })
}

/// The snapshot `snap` (`inner` in its target's namespace) of `target` (started at `start`),
/// whose ferry died: once it is dead (ferry's death kills it), its target reaps it.
fn reap_orphan(snap: i32, target: i32, start: u64, inner: i32) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = procfs::read_string(snap, "stat").ok().and_then(|t| t.rsplit_once(") ")?.1.chars().next());
        if procfs::start_time(target) != Some(start) || state.is_none() {
            return Ok(()); // (the target is gone, or the snapshot was reaped)
        }
        let reaped = match state {
            Some('Z' | 'X') => reap_in(target, snap, inner),
            _ => Ok(0),
        };
        match reaped {
            Ok(r) if r == inner as u64 => return Ok(()),
            // (Still traced by the dying ferry, or the snapshot not dead yet: again.)
            Ok(_) | Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(r) => {
                return Err(Error::Invalid {
                    object: format!("pid {target}"),
                    what: format!("its snapshot {snap} was not reaped (wait4 returned {r})"),
                })
            }
            Err(e) => return Err(e),
        }
    }
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
    /// What was taken while frozen.
    holds: Holds,
    ended: bool,
    /// The target's VmFlags are still to be read (from the snapshot, once the tree runs).
    flags_pending: bool,
    /// With `flags_pending`: the anonymous mappings the fork did not copy (MADV_WIPEONFORK,
    /// MAP_DROPPABLE), found from their pages, by start.
    wiped: HashSet<u64>,
}

/// Whether the VmFlags of `pid` may be left out of the freeze (`memory::scan` without them) and
/// read from its snapshot once the tree runs again. A fork gives the child the parent's flags
/// but `lo`/`lf` (mlock) and the userfaultfd ones, and leaves the DONTFORK mappings out: so only
/// without locked memory (`VmLck` 0), nor SysV segments (whose `mw` is read under the freeze);
/// DONTFORK mappings are found after the fork ([`Snapshot::settle`]).
/// `FERRY_SNAPSHOT_FLAGS=frozen` reads them under the freeze as before (to compare).
pub fn flags_later(pid: i32) -> Result<bool, Error> {
    if std::env::var("FERRY_SNAPSHOT_FLAGS").is_ok_and(|v| v == "frozen") {
        return Ok(false);
    }
    let status = procfs::read_string(pid, "status")?;
    let locked = status.lines().find_map(|l| l.strip_prefix("VmLck:")).map(|v| v.trim_end_matches("kB").trim());
    if locked != Some("0") {
        return Ok(false);
    }
    Ok(!crate::state::sysvshm::any_attached(pid, &procfs::read_string(pid, "maps")?)?)
}

/// The VmFlags of `pid`'s mappings `mm`, read now (the tree frozen): for a process whose flags
/// were left for a snapshot that could not be taken.
pub fn read_flags_frozen(pid: i32, mm: &mut Mm) -> Result<(), Error> {
    apply_flags(pid, pid, mm, crate::state::memory::vm_flags(pid)?)
}

/// Set the VmFlags of `mm`'s mappings from `flags` (smaps of `from`), checked for `pid`.
pub(crate) fn apply_flags(pid: i32, from: i32, mm: &mut Mm, mut flags: HashMap<u64, Vec<String>>) -> Result<(), Error> {
    for v in mm.vmas.iter_mut() {
        v.vm_flags = flags.remove(&v.end).ok_or_else(|| Error::Invalid {
            object: format!("pid {pid}"),
            what: format!("mapping {:#x}-{:#x} not in the smaps of {from}", v.start, v.end),
        })?;
        crate::state::memory::check_flags(pid, v)?;
    }
    Ok(())
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
        let mut snap = Snapshot {
            pid,
            inner: pid,
            target,
            holds: Holds::default(),
            ended: false,
            flags_pending: false,
            wiped: HashSet::new(),
        };
        let st =
            procfs::read_string(pid, "status").and_then(|t| procfs::parse(pid, "status", ferry_proc::parse_status(&t)));
        snap.inner = st?.ns_pid.last().copied().unwrap_or(pid);
        tell_guard(&format!("take {target} {} {pid} {}", procfs::start_time(target).unwrap_or(0), snap.inner));
        tracing::info!(target, snapshot = pid, fork_ms = t.elapsed().as_secs_f64() * 1e3, "snapshot taken");
        Ok(snap)
    }

    /// Still frozen, right after the fork, for a target whose VmFlags were left out of the
    /// freeze (`later`, [`flags_later`]): what the fork did not copy is found without them. A
    /// mapping absent from the snapshot (MADV_DONTFORK) makes ferry read the flags now, as
    /// before; an anonymous mapping with pages in the target and none in the snapshot was wiped
    /// by the fork (MADV_WIPEONFORK, MAP_DROPPABLE: a fork copies the page tables of every
    /// other anonymous mapping), and is taken by [`Snapshot::hold`]. Both tests stop at the
    /// first page (`PAGEMAP_SCAN` with `max_pages` 1), so this costs no walk of the memory.
    pub fn settle(&mut self, mm: &mut Mm, later: bool) -> Result<(), Error> {
        let (pid, target) = (self.pid, self.target);
        if !later {
            return Ok(());
        }
        let t = Instant::now();
        let text = procfs::read_string(pid, "maps")?;
        // By end: a stack may have grown down under ferry's injected syscalls (see memory::vm_flags).
        let have: HashSet<u64> =
            procfs::parse(pid, "maps", ferry_proc::parse_maps(&text))?.iter().map(|m| m.end).collect();
        if let Some(v) = mm.vmas.iter().find(|v| !have.contains(&v.end)) {
            tracing::info!(
                target,
                at = v.start,
                "a mapping the fork did not copy (DONTFORK): VmFlags read while frozen"
            );
            return apply_flags(target, target, mm, crate::state::memory::vm_flags(target)?);
        }
        let (mine, theirs) = (procfs::open(pid, "pagemap")?, procfs::open(target, "pagemap")?);
        let any = |f: &std::fs::File, who: i32, v: &ferry_image::Vma| {
            let pages = ferry_sys::process::page_is::PRESENT | ferry_sys::process::page_is::SWAPPED;
            ferry_sys::process::pagemap_any(f.as_fd(), v.start, v.end, pages)
                .ctx(|| format!("pid {who}: PAGEMAP_SCAN of {:#x}-{:#x}", v.start, v.end))
        };
        for v in mm.vmas.iter().filter(|v| v.kind == VmaKind::Anon as i32 && !v.sysv) {
            if !any(&mine, pid, v)? && any(&theirs, target, v)? {
                self.wiped.insert(v.start);
            }
        }
        self.flags_pending = true;
        tracing::info!(
            target,
            wiped = self.wiped.len(),
            settle_ms = t.elapsed().as_secs_f64() * 1e3,
            "VmFlags left for the snapshot"
        );
        Ok(())
    }

    /// The target's VmFlags, if they are still to be read: from the snapshot once the tree
    /// runs again (`running`: the snapshot's are the target's at the freeze, see
    /// [`flags_later`]), or from the target itself while the tree is still frozen (a dump that
    /// keeps it frozen after all).
    pub fn read_flags(&mut self, mm: &mut Mm, running: bool) -> Result<(), Error> {
        if !self.flags_pending {
            return Ok(());
        }
        let t = Instant::now();
        let from = if running { self.pid } else { self.target };
        apply_flags(self.target, from, mm, crate::state::memory::vm_flags(from)?)?;
        self.flags_pending = false;
        tracing::info!(target = self.target, from, smaps_ms = t.elapsed().as_secs_f64() * 1e3, "VmFlags read");
        Ok(())
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
            if kind == VmaKind::SharedAnon && !v.sysv {
                self.holds.shared(pid, v, shared_seen, budget)?;
                continue;
            }
            let not_forked = match self.flags_pending {
                true => self.wiped.contains(&v.start),
                false => v.vm_flags.iter().any(|f| matches!(f.as_str(), "dc" | "wf" | "dp")),
            };
            if !not_forked || !matches!(kind, VmaKind::Anon | VmaKind::FilePrivate) || v.sysv {
                continue;
            }
            let regions = crate::state::memory::regions_to_store(pagemap.as_fd(), pid, v, &sharing.exclude)?;
            self.holds.copy_regions(&mem, pid, v.start, regions)?;
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
        let got = reap_in(target, pid, inner);
        let frozen = t.elapsed();
        if matches!(got, Ok(r) if r == inner as u64)
            || matches!(got, Err(Error::NoProcess { .. } | Error::Exited { .. }))
        {
            tell_guard(&format!("done {pid}"));
        }
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

    fn holds(&self) -> &Holds {
        &self.holds
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!(pid = self.target, snapshot = self.pid, error = %e, "snapshot not cleaned up");
        }
    }
}
