//! The restore pipeline, driven by a tracer instead of a position-independent blob:
//!
//! 1. read the image and verify every checksum — before any process exists;
//! 2. open every file, pipe and mapping file in ferry (errors are cheap here);
//! 3. fork with `clone3(set_tid)` so the child gets its old PID; the child, still running
//!    ferry's code, arranges its fd table, session, cwd, umask, personality and signal
//!    handlers, maps a tiny `syscall` trampoline, and stops itself;
//! 4. ferry, as its tracer, injects syscalls through the trampoline: unmap ferry's memory,
//!    move the vDSO to its old address, map the image's mappings and copy their pages in,
//!    set mm fields, rseq, timers, signals, credentials; then unmaps the trampoline, loads
//!    the final registers and XSAVE state, and detaches.
//!
//! The child carries PR_SET_PDEATHSIG(SIGKILL) and PTRACE_O_EXITKILL until it is released, and
//! every error path kills it: a failed or interrupted restore leaves no half-restored process.

use crate::error::{Ctx, Error};
use crate::inject::{wait_stopped, Injector};
use crate::state::cow;
use crate::state::memory::{Premapped, Trampoline, TRAMPOLINE_PAGES};
use crate::state::session::{self, Role};
use crate::state::{cpu, creds, epoll, files, jobstop, memory, pipes, rseq, seccomp, signals, task, timers, tty};
use ferry_image::{ImageReader, Process, PAGE_SIZE};
use ferry_sys::consts::{nr, PTRACE_O_EXITKILL, PTRACE_O_TRACESYSGOOD};
use ferry_sys::process::{clone3_with_pid, Fork};
use ferry_sys::{ptrace, raw};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What to restore and how.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub dir: PathBuf,
    /// Write the restored root PID here (atomically) once it runs.
    pub pidfile: Option<PathBuf>,
    /// Put a job dumped with `--shell-job` onto ferry's own terminal.
    pub shell_job: bool,
    /// `--tcp-close`: restore the TCP connections the image keeps as closed sockets.
    pub tcp_close: bool,
    /// Leave every restored process stopped (SIGSTOP) instead of running (`--leave-stopped`).
    pub leave_stopped: bool,
    /// Put every process back into the cgroups it was in (creating missing ones, without
    /// limits); false: leave them in ferry's (`--manage-cgroups=ignore`).
    pub cgroups: bool,
    /// `--verify`: the image must be signed by one of these X25519 public keys (a node's
    /// trusted list), and every file must match its signed BLAKE3 digest.
    pub trusted: Option<Vec<[u8; 32]>>,
    /// `--inherit-fd fd[N]:KEY` (any number): the image's file description with key KEY
    /// (`pipe:[INO]`, `socket:[INO]`, a path relative to the root) becomes ferry's own fd N in
    /// every restored process that had it (state/external.rs). CRIU RPC's `inherit_fd`.
    pub inherit_fds: Vec<crate::state::external::InheritFd>,
    /// `--external` values given at restore (CRIU's forms; kept for the namespace code, see
    /// `DumpOptions::external`). CRIU RPC's `external`.
    pub external: Vec<crate::state::external::External>,
    /// External namespaces, the root directory and external mounts (state/namespaces.rs).
    pub ns: crate::state::namespaces::RestoreNs,
    /// CRIU's `rst_sibling` (`ferry swrk`): the restored root becomes a child of ferry's parent
    /// (the RPC client, e.g. runc, which waits for it), not of ferry (`clone3(CLONE_PARENT)`).
    pub sibling: bool,
    /// CRIU's `orphan_pts_master`: the caller takes the master of every orphan pty pair of the
    /// image (a container's console) at [`Stage::OrphanPtsMaster`]; without it such an image is
    /// refused (state/tty.rs).
    pub orphan_pts_master: bool,
}

/// A point of the restore at which a caller may act: CRIU's notifications, which `ferry swrk`
/// forwards to its client (runc runs the container's hooks at "setup-namespaces").
#[derive(Debug, Clone, Copy)]
pub enum Stage<'a> {
    /// Every process of the tree exists (in its namespaces), stopped before any of its own
    /// state is rebuilt; `pid` is the root's pid as this host sees it.
    SetupNamespaces { pid: i32 },
    /// Every process of the tree runs (released); the restore's network lock in the tree's
    /// network namespace, if any, is removed right after this returns (CRIU's "post-restore"
    /// and "network-unlock" come here). `pid` is the root's pid as this host sees it.
    Released { pid: i32 },
    /// The new master of an orphan pty pair (its master was outside the dumped tree: a
    /// container's console), before any process of the tree exists: `fd` is ferry's, valid
    /// during the call (the caller passes it on, e.g. over CRIU's RPC to runc's console socket).
    OrphanPtsMaster { index: u32, fd: std::os::fd::BorrowedFd<'a> },
}

/// A restored, running process.
#[derive(Debug, Clone)]
pub struct Restored {
    pub pid: i32,
    pub verify: Duration,
    pub total: Duration,
    /// From the start until every process of the tree exists (forked, its own mappings in).
    pub forked: Duration,
}

/// Verify an image without restoring it: inventory, every file's size and checksum, every
/// record's header. Returns the reader and the process records, root first, parents before
/// their children.
pub fn open_verified(dir: &Path) -> Result<(ImageReader, Vec<Process>), Error> {
    let (img, procs) = open_verified_but_pages(dir, None)?;
    img.verify_where(is_pages_file)?;
    Ok((img, procs))
}

fn is_pages_file(name: &str) -> bool {
    name.starts_with("pages-")
}

/// [`open_verified`], except the page files' checksums, which restore checks on another core
/// while it rebuilds the tree (and before it lets any process run). With `trusted`, the
/// image's signature is checked first, before any other file is opened.
fn open_verified_but_pages(dir: &Path, trusted: Option<&[[u8; 32]]>) -> Result<(ImageReader, Vec<Process>), Error> {
    let img = ImageReader::open(dir)?;
    if img.inventory().pre_dump.is_some() {
        return Err(Error::Invalid {
            object: dir.display().to_string(),
            what: "a pre-dump (memory only): restore the dump taken with it as its parent".into(),
        });
    }
    if let Some(keys) = trusted {
        let key = img.verify_signature(keys)?;
        tracing::info!(key = %ferry_image::hex::hex(&key), "image signed by a trusted key");
    }
    img.verify_where(|n| !is_pages_file(n))?;
    for d in img.inventory().files.iter().filter(|d| is_pages_file(&d.name)) {
        img.open_file(&d.name)?; // a regular file of the right size (not read yet)
    }
    let mut procs = Vec::new();
    for &pid in &img.inventory().pids {
        let p = img.read_process(pid)?;
        if p.zombie {
            if p.pid != pid {
                return Err(Error::Invalid { object: format!("pid {pid}"), what: "record of another pid".into() });
            }
            procs.push(p);
            continue;
        }
        let pages = ferry_image::pages_file(pid);
        let mut head = vec![0u8; PAGE_SIZE as usize];
        let mut f = img.open_file(&pages)?;
        let n = f.read(&mut head).ctx(|| format!("cannot read {}", img.path(&pages).display()))?;
        ferry_image::check_pages_header(&img.path(&pages).display().to_string(), &head[..n])?;
        if p.threads.first().map(|t| t.tid) != Some(p.pid) || p.pid != pid {
            return Err(Error::Invalid {
                object: format!("pid {pid}"),
                what: "the image's first thread is not the main thread".into(),
            });
        }
        procs.push(p);
    }
    crate::validate::processes(&procs)?;
    if procs.first().map(|p| p.pid) != Some(img.inventory().root_pid) {
        return Err(Error::Invalid { object: dir.display().to_string(), what: "the root process is not first".into() });
    }
    for (i, p) in procs.iter().enumerate().skip(1) {
        if !procs[..i].iter().any(|q| q.pid == p.ppid) {
            return Err(Error::Invalid {
                object: format!("pid {}", p.pid),
                what: format!("its parent {} is not restored before it", p.ppid),
            });
        }
    }
    Ok((img, procs))
}

fn pid_state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rfind(')')?;
    s[after + 1..].trim_start().chars().next()
}

/// How long a restore waits for a pid held by a zombie (the dumped process, killed, that its
/// parent has not reaped yet) before it gives up.
pub const ZOMBIE_WAIT: Duration = Duration::from_secs(10);

/// Checks that the pids a restore needs are free. A pid held by a running process fails at
/// once; one held by a zombie (typically the dumped process itself, killed by the dump, whose
/// parent has not reaped it yet) is waited for, up to `ZOMBIE_WAIT` over the whole restore,
/// with one message.
struct PidCheck {
    deadline: Option<Instant>,
}

impl PidCheck {
    fn new() -> PidCheck {
        PidCheck { deadline: None }
    }

    fn free(&mut self, pid: i32) -> Result<(), Error> {
        loop {
            match pid_state(pid) {
                None => return Ok(()),
                Some('Z') | Some('X') => {}
                Some(_) => return Err(Error::PidTaken { pid }),
            }
            let deadline = *self.deadline.get_or_insert_with(|| {
                tracing::warn!(
                    "waiting for pid {pid} to be reaped (an exited process whose parent has not reaped it yet; up to {} s)",
                    ZOMBIE_WAIT.as_secs()
                );
                Instant::now() + ZOMBIE_WAIT
            });
            if Instant::now() >= deadline {
                return Err(Error::PidZombie { pid, waited_s: ZOMBIE_WAIT.as_secs() });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn max_own_fd() -> i32 {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).max().unwrap_or(2))
        .unwrap_or(1024)
}

/// Everything opened in ferry for one process before the tree is forked.
struct Prepared {
    files: files::Prepared,
    mem: memory::Prepared,
    cwd: OwnedFd,
}

/// What every forked process of the tree needs while it still runs ferry's code.
struct TreeCtx<'a> {
    procs: &'a [Process],
    plan: &'a session::Plan,
    prep: &'a [Option<Prepared>],
    base: i32,
    tr: Trampoline,
    /// Each process writes "ok PID" or "err PID: why" here, then blocks reading `hold_fd`.
    status_fd: i32,
    hold_fd: i32,
    tty: &'a tty::Restore,
    /// Each process's page file (fd number in every forked process, length), for the memory
    /// shared copy-on-write that processes map and fill before they fork (state/cow.rs).
    pages: Vec<Option<(i32, u64)>>,
    /// Whether processes premap that memory (`FERRY_COW_PREMAP=0` leaves it all to the tracer,
    /// without sharing: a way out should premapping ever misbehave, and the tests' way to
    /// exercise the tracer's path).
    premap: bool,
    /// Per process: the `cgroup.procs` files of the cgroups it joins (state/cgroup.rs).
    cgroups: Vec<Vec<PathBuf>>,
    /// Per process: `cgroup.procs` fds to write "0" to, when the tree has its own mount tree.
    cgroup_fds: Vec<Vec<i32>>,
    /// ferry's /proc (its pid namespace's view), open in every forked process.
    host_proc: i32,
    /// Mounts the root of a new pid namespace makes before it forks (state/mounts.rs).
    mounts: Option<&'a crate::state::nsctx::Deferred>,
    /// The tree's user namespace, joined by each process once it forked its children
    /// (state/userns.rs).
    userns: Option<i32>,
    /// The tree's time namespace owned by its user namespace, which the tree's init joins
    /// first (its descendants inherit it; state/userns.rs `make`).
    timens: Option<i32>,
    /// Nested namespaces, which processes join before they fork (state/nested_ns.rs).
    nested: Option<&'a crate::state::nested_ns::Plan>,
    /// Per process: the offsets of the time namespace it makes for its future children.
    time_for_children: Vec<Option<String>>,
}

/// How many pid namespaces below the tree's node `n` of the plan is in (a helper: its
/// creator's).
fn pid_depth(ctx: &TreeCtx<'_>, mut n: usize) -> usize {
    loop {
        match ctx.plan.nodes[n].role {
            Role::Image(i) => return ctx.procs[i].ns_pid.len(),
            _ => match ctx.plan.nodes[n].creator {
                Some(c) => n = c,
                None => return 0,
            },
        }
    }
}

/// The nearest image process above node `n` of the plan (its creator, or a helper's).
fn image_creator(ctx: &TreeCtx<'_>, n: usize) -> Option<usize> {
    let mut c = ctx.plan.nodes[n].creator?;
    loop {
        match ctx.plan.nodes[c].role {
            Role::Image(i) => return Some(i),
            _ => c = ctx.plan.nodes[c].creator?,
        }
    }
}

/// The `set_tid` array and clone flag that give node `c` of the plan its pid at every level,
/// forked by a process `depth` pid namespaces below the tree's (state/nested_ns.rs).
fn pid_levels(ctx: &TreeCtx<'_>, c: usize, depth: usize) -> Result<(Vec<i32>, u64), String> {
    let node = &ctx.plan.nodes[c];
    let levels: &[i32] = match node.role {
        Role::Image(i) => &ctx.procs[i].ns_pid,
        _ => &[],
    };
    let mut tids: Vec<i32> = levels.iter().rev().copied().collect();
    tids.push(node.pid);
    let flags = match levels.len() {
        d if d == depth => 0,
        d if d == depth + 1 && levels.last() == Some(&1) => libc::CLONE_NEWPID as u64,
        _ if levels.is_empty() => 0,
        d => {
            return Err(format!(
                "cannot create process {} {d} pid namespace(s) below the tree's from one {depth} below",
                node.pid
            ))
        }
    };
    Ok((tids, flags))
}

/// Runs in a forked process of the tree (node `n` of the plan); never returns. Forks the
/// nodes it creates (with their old PIDs), sets itself up, reports, then waits in `read()` for
/// the tracer. A helper (see state/session.rs) only creates its session or group and children.
///
/// `inherited`: the shared mappings its creator premapped (this process's copies of them).
fn child_main(ctx: &TreeCtx<'_>, n: usize, inherited: Vec<Premapped>) -> ! {
    let node = &ctx.plan.nodes[n];
    let r = (|| -> Result<(), String> {
        let idx = match node.role {
            Role::Image(i) => Some(i),
            _ => None,
        };
        if let (0, Some(fd)) = (n, ctx.timens) {
            // (Before anything of its memory: setns moves its vvar page to the namespace's.)
            ferry_sys::ns::setns_number(fd, libc::CLONE_NEWTIME)
                .map_err(|e| format!("cannot join the tree's time namespace: {e}"))?;
        }
        if let (Some(i), Some(nested)) = (idx, ctx.nested) {
            // Into its own nested namespaces first: its children inherit them.
            nested.join_in_child(i, image_creator(ctx, n))?;
            nested.mount_procs_in_child(i)?;
        }
        if let (0, Some(d)) = (n, ctx.mounts) {
            // pid 1 of the tree's new pid namespace: its own proc (state/mounts.rs).
            crate::state::mounts::mount_deferred(d)?;
        }
        if let Some(i) = idx {
            // First into its cgroups, so that all the memory it gets is charged there.
            crate::state::cgroup::join_in_child(&ctx.cgroups[i])?;
            for &fd in &ctx.cgroup_fds[i] {
                raw::write_all(fd, b"0").map_err(|e| format!("cannot join a cgroup (fd {fd}): {e}"))?;
            }
        }
        // Memory in place (state/premapped.rs): its own gets its page runs, that of the
        // processes it creates is carried down to them.
        let (inherited, carried) = crate::state::premapped::sort(ctx.procs, ctx.plan, &ctx.pages, n, idx, inherited)?;
        let carried = std::cell::RefCell::new(carried);
        // Memory shared copy-on-write goes in before any child is forked, so they inherit it.
        let mine = std::cell::RefCell::new(match idx {
            Some(i) if ctx.premap => {
                // (A zombie has nothing prepared, and no mapping to premap.)
                let none = HashMap::new();
                let fds = ctx.prep[i].as_ref().map_or(&none, |p| &p.mem.vma_fd);
                cow::premap(ctx.procs, &ctx.pages, fds, i, inherited)?
            }
            _ => crate::state::premapped::own_only(idx.map(|i| ctx.procs[i].pid), inherited)?,
        });
        // An orphan's creator is a helper that dies during restore: it must not take it along.
        let creator_is_helper = node.creator.is_some_and(|c| !matches!(ctx.plan.nodes[c].role, Role::Image(_)));
        if !creator_is_helper {
            raw::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as u64, 0, 0, 0).map_err(|e| format!("pdeathsig: {e}"))?;
        }
        raw::set_sigmask_self(!0).map_err(|e| format!("sigprocmask: {e}"))?;
        let depth = pid_depth(ctx, n);
        // (tree pid -> pid as this process sees it, for `pidns_for_children`)
        let forked = std::cell::RefCell::new(HashMap::new());
        let fork = |c: usize| -> Result<(), String> {
            let pid = ctx.plan.nodes[c].pid;
            // A child that shared this process's fd table (CLONE_FILES) shares it again.
            let shares = match (&ctx.plan.nodes[c].role, idx) {
                (Role::Image(ci), Some(i)) => {
                    ctx.procs[*ci].fd_table_of != 0 && ctx.procs[*ci].fd_table_of == ctx.procs[i].pid
                }
                _ => false,
            };
            let flags = if shares { libc::CLONE_FILES as u64 } else { 0 };
            let (tids, newpid) = pid_levels(ctx, c, depth)?;
            match ferry_sys::process::clone3_with_pids(&tids, flags | newpid) {
                // (The child's own copy of `mine`: fork duplicated the value with the memory.)
                Ok(Fork::Child) => {
                    let mut all = mine.take();
                    all.extend(carried.take());
                    child_main(ctx, c, all)
                }
                Ok(Fork::Parent(seen)) => {
                    forked.borrow_mut().insert(pid, seen);
                    Ok(())
                }
                Err(e) => Err(format!("cannot create child {pid} (clone3 with set_tid {tids:?}): {e}")),
            }
        };
        let mut created = ctx.plan.created_by(n).peekable();
        // Orphans fall back to their subreaper when their helper dies: it must be one by then.
        if matches!(node.role, Role::Image(i) if ctx.procs[i].child_subreaper) {
            raw::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0).map_err(|e| format!("subreaper: {e}"))?;
        }
        while let Some(c) = created.next_if(|&c| ctx.plan.nodes[c].before_setsid) {
            fork(c)?;
        }
        if node.setsid {
            raw::setsid().map_err(|e| format!("setsid: {e}"))?;
        } else if node.own_group {
            raw::setpgid(0, 0).map_err(|e| format!("setpgid: {e}"))?;
        }
        if let Some(p) = idx.map(|i| &ctx.procs[i]) {
            tty::apply_in_child(ctx.tty, p, ctx.procs)?;
        }
        if let Some(p) = idx.map(|i| &ctx.procs[i]).filter(|p| p.zombie) {
            // Its name is what `ps` shows of a zombie ("[NAME] <defunct>").
            raw::set_comm(p.comm.as_bytes()).map_err(|e| format!("cannot set the zombie's name: {e}"))?;
            become_zombie(p.exit_status);
        }
        for c in created {
            fork(c)?;
        }
        crate::state::premapped::drop_carried(carried.take())?;
        if let Some(p) = idx.map(|i| &ctx.procs[i]) {
            // Its future children's pid namespace, when not its own (state/nested_ns.rs).
            match p.pidns_for_children {
                0 => {}
                -1 => raw_unshare_pid()?,
                c => {
                    let seen = forked.borrow().get(&c).copied().ok_or_else(|| {
                        format!("its children's pid namespace is that of pid {c}, which it did not create")
                    })?;
                    let fd = ferry_sys::process::pidfd_open(seen).map_err(|e| format!("pidfd_open {seen}: {e}"))?;
                    ferry_sys::ns::setns(fd.as_fd(), libc::CLONE_NEWPID)
                        .map_err(|e| format!("cannot join the pid namespace of pid {c} for its children: {e}"))?;
                }
            }
        }
        if let Some(offsets) = idx.and_then(|i| ctx.time_for_children[i].as_deref()) {
            crate::state::nested_ns::make_time_for_children(ctx.host_proc, offsets)?;
        }
        if let Some(idx) = idx {
            let p = &ctx.procs[idx];
            let prep = ctx.prep[idx].as_ref().ok_or("no prepared state")?;
            // A process sharing its parent's fd table leaves it to the parent (the same table).
            if p.fd_table_of == 0 {
                files::apply_in_child(p, &prep.files.numbers, ctx.base)?;
                crate::state::fown::async_in_child(p)?;
                // Any fd of the tree, by its prepared number (all still open here, above the base).
                let prepared = |pid: i32, fd: i32| -> Option<i32> {
                    let q = ctx.procs.iter().position(|q| q.pid == pid)?;
                    let d = ctx.procs[q].fds.iter().find(|d| d.fd == fd)?;
                    ctx.prep[q].as_ref()?.files.numbers.get(d.file as usize).copied()
                };
                epoll::apply_in_child(p, &prep.files.numbers, &prepared)?;
            }
            task::apply_in_child(p, prep.cwd.as_fd())?;
            signals::apply_in_child(p)?;
            let len = TRAMPOLINE_PAGES * PAGE_SIZE;
            match raw::map_trampoline(ctx.tr.code, len, &crate::inject::TRAMPOLINE_CODE) {
                Ok(()) => {}
                Err(e) => return Err(format!("cannot map the trampoline at {:#x}: {e}", ctx.tr.code)),
            }
        }
        // The pid ferry sees (different inside a new pid namespace), from ferry's /proc.
        let host = ferry_sys::ns::readlinkat_number(ctx.host_proc, c"self")
            .map_err(|e| format!("readlink /proc/self: {e}"))?;
        let host = String::from_utf8_lossy(&host).into_owned();
        if let (Some(fd), Some(_)) = (ctx.userns, idx) {
            ferry_sys::ns::setns_number(fd, libc::CLONE_NEWUSER)
                .map_err(|e| format!("cannot join the tree's user namespace: {e}"))?;
        }
        // Premapped ranges first, a few per line: each write stays below PIPE_BUF, so lines of
        // different processes never mix.
        if idx.is_some() {
            for chunk in mine.borrow().chunks(64) {
                let mut line = format!("cow {}", node.pid);
                for m in chunk {
                    line.push_str(&format!(" {:x}-{:x}", m.region.start(), m.region.end()));
                }
                line.push('\n');
                raw::write_all(ctx.status_fd, line.as_bytes()).map_err(|e| format!("status: {e}"))?;
            }
        }
        let line = format!("ok {} {}\n", node.pid, host);
        raw::write_all(ctx.status_fd, line.as_bytes()).map_err(|e| format!("status: {e}"))?;
        let mut b = [0u8; 1];
        // The tracer interrupts this read (a helper is killed instead); EOF means ferry is gone.
        let _ = raw::read_once(ctx.hold_fd, &mut b);
        Err("resumed without being restored".into())
    })();
    if let Err(msg) = r {
        let msg = msg.replace('\n', " ");
        let _ = raw::write_all(ctx.status_fd, format!("err {}: {msg}\n", node.pid).as_bytes());
    }
    raw::exit_now(1)
}

/// `unshare(CLONE_NEWPID)` in a forked process: its future children go to a new pid namespace.
fn raw_unshare_pid() -> Result<(), String> {
    ferry_sys::ns::unshare(libc::CLONE_NEWPID).map_err(|e| format!("unshare(CLONE_NEWPID): {e}"))
}

/// End this process with `status` (as waitpid() reports it) so that its parent finds it as the
/// zombie it was: exit with the same code, or die of the same signal.
fn become_zombie(status: i32) -> ! {
    let sig = status & 0x7f;
    if sig != 0 {
        let _ = raw::rt_sigaction(sig, &raw::KernelSigaction::default());
        let _ = raw::set_sigmask_self(0);
        let _ = raw::raise_raw(sig);
    }
    raw::exit_now((status >> 8) & 0xff)
}

/// The forked tree: every process is killed unless released.
struct Tree {
    pids: Vec<i32>,
    released: bool,
}

impl Drop for Tree {
    fn drop(&mut self) {
        if !self.released {
            for &pid in &self.pids {
                let _ = ferry_sys::process::kill(pid, libc::SIGKILL);
            }
            // Reap the root, and meanwhile every traced process ferry must reap first (a
            // namespace's init waits for them before it can die).
            if let Some(&root) = self.pids.first() {
                while let Ok(Some((pid, st))) = ptrace::wait(-1, false) {
                    if pid == root && matches!(st, ptrace::WaitStatus::Exited(_) | ptrace::WaitStatus::Signaled(_)) {
                        break;
                    }
                }
            }
        }
    }
}

pub(crate) fn write_pidfile(path: &Path, pid: i32) -> Result<(), Error> {
    let tmp = path.with_extension("ferry-tmp");
    let mut f = std::fs::File::create(&tmp).ctx(|| format!("cannot create {}", tmp.display()))?;
    writeln!(f, "{pid}").ctx(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).ctx(|| format!("cannot rename {} into place", path.display()))
}

/// What each forked process reported: its host pid (the same unless the tree has its own pid
/// namespace) and the ranges it premapped itself (state/cow.rs).
type Ready = HashMap<i32, (i32, Vec<(u64, u64)>)>;

/// Read "ok PID HOSTPID" lines (after "cow PID START-END ..." lines) from the status pipe until
/// every process reported (or one failed). Only whole lines count.
fn wait_tree_ready(status: OwnedFd, n: usize, root: i32) -> Result<Ready, Error> {
    let mut f = std::fs::File::from(status);
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 4096];
    let bad = |line: &str| Error::Invalid {
        object: format!("restore of pid {root}"),
        what: format!("garbled status line from the forked tree: {line:?}"),
    };
    loop {
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        if let Some(line) = whole.lines().find(|l| l.starts_with("err ")) {
            return Err(Error::Invalid { object: format!("restore of pid {root}"), what: line[4..].to_string() });
        }
        if whole.lines().filter(|l| l.starts_with("ok ")).count() >= n {
            let mut hosts: Ready = HashMap::new();
            let mut cow: HashMap<i32, Vec<(u64, u64)>> = HashMap::new();
            for l in whole.lines() {
                let w: Vec<&str> = l.split(' ').collect();
                let num = |s: &str| s.parse::<i32>().ok().filter(|&p| p > 0);
                match w.as_slice() {
                    ["ok", pid, host] => {
                        let (pid, host) = num(pid).zip(num(host)).ok_or_else(|| bad(l))?;
                        hosts.insert(pid, (host, Vec::new()));
                    }
                    ["cow", pid, ranges @ ..] => {
                        let pid = num(pid).ok_or_else(|| bad(l))?;
                        for r in ranges {
                            let (a, b) = r.split_once('-').ok_or_else(|| bad(l))?;
                            let a = u64::from_str_radix(a, 16).map_err(|_| bad(l))?;
                            let b = u64::from_str_radix(b, 16).map_err(|_| bad(l))?;
                            cow.entry(pid).or_default().push((a, b));
                        }
                    }
                    _ => return Err(bad(l)),
                }
            }
            for (pid, ranges) in cow {
                hosts.entry(pid).or_default().1 = ranges;
            }
            return Ok(hosts);
        }
        match f.read(&mut buf) {
            Ok(0) => {
                return Err(Error::Invalid {
                    object: format!("restore of pid {root}"),
                    what: "the forked tree died while setting up".into(),
                })
            }
            Ok(k) => text.push_str(&String::from_utf8_lossy(&buf[..k])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(Error::Invalid {
                        object: format!("restore of pid {root}"),
                        what: "the forked tree did not get ready in 60 s".into(),
                    });
                }
                if let Ok(Some((_, st))) = ptrace::wait(root, true) {
                    return Err(Error::Invalid {
                        object: format!("restore of pid {root}"),
                        what: format!("the root process ended while setting up ({st:?})"),
                    });
                }
                // (A sleep here cost up to its length at each line; the pipe wakes us at once.)
                ferry_sys::process::poll_readable(&[f.as_fd()], 10).ctx(|| "restore status pipe: poll".into())?;
            }
            Err(e) => return Err(Error::Sys { object: "restore status pipe".into(), source: e }),
        }
    }
}

/// A thread other than the main one, created and waiting for its final registers:
/// (tid, its record, the registers it was created with).
type RestoredThread = (i32, ferry_image::Thread, ferry_sys::UserRegs);

/// What a process being rebuilt must reap, absorb or close: whether it has zombie children
/// (their SIGCHLD), the helpers it forked for sessions and groups, and whether ferry's helper
/// fds go from its fd table now (not while a process rebuilt later shares that table).
struct Reap<'a> {
    has_zombies: bool,
    helpers: &'a [i32],
    close_helper_fds: bool,
}

/// The tracer's work on one stopped process: memory, threads, per-thread and process state.
/// Returns the threads (other than the main one) to load and release at the end.
fn rebuild(
    p: &Process,
    host: i32,
    prep: &memory::Prepared,
    shared: &memory::Tracer<'_>,
    tr: &Trampoline,
    reap: Reap<'_>,
    pin: &Pin,
) -> Result<(ferry_sys::UserRegs, Vec<RestoredThread>), Error> {
    let Reap { has_zombies, helpers, close_helper_fds } = reap;
    let pid = host;
    let _span = tracing::info_span!("process", pid).entered();
    let base_regs = ptrace::get_regs(pid).ctx(|| format!("pid {pid}: cannot read registers"))?;
    let inj = Injector::with_int3(pid, tr.code, base_regs);
    let t = &p.threads[0];
    cpu::check_compatible(pid, pid, &t.xstate)?;
    rseq::unregister_inherited(&inj)?;
    memory::restore(&inj, tr, p, prep, shared)?;
    crate::postcopy::create_uffd(&inj, p)?; // post-copy: registered just before the release
    tracing::debug!("memory restored");
    // (An fd table shared with processes rebuilt after this one keeps their helper fds until
    // the last of them.)
    if close_helper_fds {
        let max_target = p.fds.iter().map(|f| f.fd).max().unwrap_or(2);
        inj.call(nr::CLOSE_RANGE, &[(max_target + 1) as u64, u32::MAX as u64, 0])
            .ctx(|| format!("pid {pid}: cannot close ferry's helper fds"))?;
    }
    let scratch = tr.data;
    crate::state::aio::restore(&inj, scratch, p)?;
    crate::state::locks::restore(&inj, scratch, p)?;
    for &h in helpers {
        // A helper it forked (state/session.rs), dead by now: reap it.
        inj.call(nr::WAIT4, &[h as u64, 0, libc::__WALL as u64, 0])
            .ctx(|| format!("pid {pid}: cannot reap helper process {h}"))?;
    }
    if has_zombies || !helpers.is_empty() {
        // Recreating its zombie children (or its helpers' deaths) queued a SIGCHLD the original
        // did not have pending (if it had one, the image re-queues it below): consume it.
        let mut b = Vec::with_capacity(24);
        b.extend_from_slice(&(1u64 << (libc::SIGCHLD - 1)).to_le_bytes());
        b.extend_from_slice(&[0u8; 16]);
        ferry_sys::process::vm_write(pid, scratch, &b).ctx(|| format!("pid {pid}: cannot write sigset"))?;
        while inj
            .raw(nr::RT_SIGTIMEDWAIT, &[scratch, 0, scratch + 8, 8])
            .ctx(|| format!("pid {pid}: rt_sigtimedwait"))?
            > 0
        {}
    }
    seccomp::restore_shared(&inj, scratch, p)?;
    let threads = restore_threads(&inj, tr, p)?;
    seccomp::restore_own(&inj, scratch, p, t)?;
    crate::state::pidfd::restore(&inj, pid, p)?;
    let tids: Vec<i32> = std::iter::once(pid).chain(threads.iter().map(|t| t.0)).collect();
    rseq::restore(&inj, t)?;
    signals::restore_thread(&inj, scratch, p, t, true)?;
    timers::create_posix(&inj, scratch, p)?;
    task::restore_rlimits(pid, p)?;
    task::restore_oom_score_adj(pid, p)?;
    task::restore_mm_attrs(&inj, p)?;
    if let Some(c) = &p.creds {
        let now = crate::procfs::read_string(pid, "status")?;
        let mut now = crate::procfs::parse(pid, "status", ferry_proc::parse_status(&now))?;
        crate::state::userns::status_inside(pid, &mut now)?;
        creds::restore(&inj, scratch, c, &now)?;
    }
    task::restore_late(&inj, p)?;
    timers::arm(&inj, scratch, p)?;
    // Every `int3` of the trampoline raised a forced SIGTRAP while SIGTRAP was blocked, which
    // resets its disposition to SIG_DFL: put the image's back, with a call that traps no more.
    signals::restore_sigtrap(&inj, scratch, p)?;
    inj.call_exit_stop(nr::MUNMAP, &[tr.code, TRAMPOLINE_PAGES * PAGE_SIZE])
        .ctx(|| format!("pid {pid}: cannot unmap the trampoline"))?;
    let sched: Vec<(i32, Option<&ferry_image::ThreadSched>)> =
        std::iter::once((pid, None)).chain(threads.iter().map(|(tid, th, _)| (*tid, th.sched.as_ref()))).collect();
    task::restore_sched(pid, &sched, p, &pin.mask)?; // last: it unpins the process
    for &tid in &tids {
        cpu::park(tid)?;
    }
    for (tid, th, base) in &threads {
        cpu::restore(*tid, th, base)?;
        ptrace::set_sigmask(*tid, th.sigmask).ctx(|| format!("pid {pid} thread {tid}: cannot set the signal mask"))?;
    }
    cpu::restore(pid, t, &base_regs)?;
    ptrace::set_sigmask(pid, t.sigmask).ctx(|| format!("pid {pid}: cannot set the signal mask"))?;
    Ok((base_regs, threads))
}

/// Restore the image in `opts.dir`. The tree runs when this returns; ferry is the root's parent.
pub fn restore(opts: &RestoreOptions) -> Result<Restored, Error> {
    restore_notify(opts, &mut |_| Ok(()))
}

/// [`restore`], calling `notify` at each [`Stage`]; an error from it fails the restore (the
/// tree is killed, nothing of it runs).
pub fn restore_notify(
    opts: &RestoreOptions,
    notify: &mut dyn for<'a> FnMut(Stage<'a>) -> Result<(), String>,
) -> Result<Restored, Error> {
    restore_in_place(opts, &mut Vec::new(), notify)
}

/// [`restore_notify`] with memory already in place: `in_place` are private anonymous regions
/// mapped in this process at the addresses of image processes' mappings, each exactly one
/// mapping of its `owner`, holding that process's content but for its page runs (which are
/// read on top). The restored root is forked from this process and inherits them; they stay
/// mapped here (the caller unmaps them, best once the tree runs: until then a page written by
/// the tree is copied). See state/premapped.rs.
pub fn restore_in_place(
    opts: &RestoreOptions,
    in_place: &mut Vec<Premapped>,
    notify: &mut dyn FnMut(Stage) -> Result<(), String>,
) -> Result<Restored, Error> {
    let t0 = Instant::now();
    let (img, mut procs) = open_verified_but_pages(&opts.dir, opts.trusted.as_deref())?;
    let verify = t0.elapsed();
    if opts.tcp_close {
        crate::state::inet::close_connections(&mut procs);
    }
    tty::check_orphans(&procs, opts.orphan_pts_master)?;
    let root = procs[0].pid;
    let _span = tracing::info_span!("restore", pid = root).entered();
    tracing::info!(?verify, processes = procs.len(), "image verified");
    let own_vdso = memory::own_vdso()?;
    let mut pids = PidCheck::new();
    let mut all_vmas = Vec::new();
    for p in procs.iter().filter(|p| !p.zombie) {
        let pid = p.pid;
        let mm =
            p.mm.as_ref()
                .ok_or_else(|| Error::Invalid { object: format!("pid {pid}"), what: "no memory record".into() })?;
        if mm.vdso_size != 0 && (mm.vdso_crc32, mm.vdso_size) != own_vdso {
            return Err(Error::Invalid {
                object: format!("pid {pid}"),
                what: format!(
                    "the image was dumped on a kernel with a different vDSO ({} bytes, crc {:#x}; here {} bytes, crc {:#x}); restoring across kernels is not supported yet",
                    mm.vdso_size, mm.vdso_crc32, own_vdso.1, own_vdso.0
                ),
            });
        }
        all_vmas.extend(mm.vmas.iter().cloned());
        for t in p.threads.iter().filter(|_| !img.inventory().pidns) {
            pids.free(t.tid)?;
        }
    }
    // Open everything in ferry; the forked tree inherits it all at numbers >= base.
    let max_target = procs.iter().flat_map(|p| p.fds.iter().map(|f| f.fd)).max().unwrap_or(2);
    let base = max_target.max(max_own_fd()).max(2) + 16;
    // Cgroup files are ferry's (looked up in its mount namespace), opened before it leaves it.
    let mut cgroups = match opts.cgroups {
        true => crate::state::cgroup::prepare(&procs)?,
        false => vec![Vec::new(); procs.len()],
    };
    // In a mount namespace of its own the tree cannot reach ferry's cgroup file system: each
    // process joins through a `cgroup.procs` fd opened here instead.
    let mut cgroup_open = Vec::new();
    let mut cgroup_fds = vec![Vec::new(); procs.len()];
    let nested_mnt = img.inventory().nested_ns.iter().any(|n| n.kind == "mnt");
    if nested_mnt || img.inventory().namespaces.as_ref().is_some_and(|n| n.mnt.is_some()) {
        for (i, files) in cgroups.iter_mut().enumerate() {
            for f in files.drain(..) {
                let o =
                    std::fs::OpenOptions::new().write(true).open(&f).ctx(|| format!("cannot open {}", f.display()))?;
                let o = raw::dup_above(o.as_fd(), base).ctx(|| "cannot move an fd".into())?;
                cgroup_fds[i].push(o.as_raw_fd());
                cgroup_open.push(o);
            }
        }
    }
    // ferry's own /proc, for the forked processes to tell ferry their pids as it sees them.
    let host_proc = std::fs::File::open("/proc").ctx(|| "cannot open /proc".into())?;
    let host_proc = raw::dup_above(host_proc.as_fd(), base).ctx(|| "cannot move an fd".into())?;
    // From here to the fork, ferry's thread is in the tree's namespaces: its files, sockets
    // and terminals are opened there, and the tree inherits them (state/namespaces.rs).
    tty::forget_early_masters();
    // Nested namespaces first, from ferry's own (state/nested_ns.rs), then the root's.
    // (A veth pair across two of them is made with the first and handed to the second.)
    let veth_pairs = crate::state::nsctx::VethPairs::default();
    let nested_opts = crate::state::namespaces::RestoreNs { veth_pairs: veth_pairs.clone(), ..opts.ns.clone() };
    let mut nested_made = crate::state::nested_ns::make(&img, &nested_opts)?;
    let ns_opts = crate::state::namespaces::RestoreNs {
        locked: crate::state::tcp_repair::connections(&procs),
        veth_pairs: veth_pairs.clone(),
        ..opts.ns.clone()
    };
    let mut entered = crate::state::namespaces::enter(&img, &ns_opts)?;
    veth_pairs.check_done()?;
    // (Nested mount namespaces are copies of the root's: made once it is.)
    nested_made.make_mnt(&img, host_proc.as_fd(), &tty::instance_pairs(&procs))?;
    let nested = nested_made.plan(&procs, host_proc.as_fd(), base)?;
    // The image's connections are held back in the tree's network namespace until it runs:
    // one the restore made was locked before its devices came up; one it joined is locked now.
    let mut net_hold = entered.as_mut().and_then(|e| e.handover.netlock.take());
    let joined_net = img
        .inventory()
        .namespaces
        .as_ref()
        .is_some_and(|n| n.kinds.iter().any(|k| k.kind == "net" && !k.external.is_empty()));
    if joined_net && !ns_opts.locked.is_empty() {
        net_hold = Some(crate::state::netlock::Lock::hold_here(&ns_opts.locked, false)?);
    }
    if let Some(pause) = crate::inject::fault_pause_named("pause-before-sockets") {
        std::thread::sleep(pause);
    }
    let userns = match entered.as_ref().and_then(|e| e.userns.as_ref()) {
        Some(fd) => Some(raw::dup_above(fd.as_fd(), base).ctx(|| "cannot move an fd".into())?),
        None => None,
    };
    let timens = match entered.as_ref().and_then(|e| e.timens.as_ref()) {
        Some(fd) => Some(raw::dup_above(fd.as_fd(), base).ctx(|| "cannot move an fd".into())?),
        None => None,
    };
    let all_pipes: Vec<ferry_image::Pipe> = procs.iter().flat_map(|p| p.pipes.iter().cloned()).collect();
    let inherit = crate::state::external::Inherit::new(&opts.inherit_fds)?;
    // (An external namespace's key names the namespace joined above, not a file.)
    for k in img.inventory().namespaces.iter().flat_map(|n| n.kinds.iter()).filter(|k| !k.external.is_empty()) {
        inherit.mark_used(&k.external);
    }
    let pipes = pipes::prepare(root, &all_pipes, &|ino| inherit.has_pipe(ino))?;
    let ttys = tty::prepare(&img, &procs, base, opts.shell_job)?;
    for (index, fd) in ttys.orphan_masters() {
        notify(Stage::OrphanPtsMaster { index, fd }).map_err(|what| Error::Invalid {
            object: format!("pty /dev/pts/{index}"),
            what: format!("handing its new master to the client failed: {what}"),
        })?;
    }
    // (A tree with a pid namespace of its own: its pids do not exist yet to make the sockets'
    // peer credentials with.)
    let creators = crate::state::peercred::Creators::new(!img.inventory().pidns);
    // (Each unix socket in its network namespace: a nested one's, state/nested_ns.rs.)
    let net_now = std::cell::Cell::new(0u64);
    let enter_net = |inode: u64| -> Result<(), Error> {
        if net_now.get() == inode {
            return Ok(());
        }
        match &nested {
            Some(n) => n.enter_netns(inode)?,
            None => {
                return Err(Error::Invalid {
                    object: format!("network namespace net:[{inode}]"),
                    what: "holds a unix socket of the image, which records no nested network namespace".into(),
                })
            }
        }
        net_now.set(inode);
        Ok(())
    };
    let mut unix = crate::state::unix::prepare(&procs, &creators, &enter_net)?;
    let mut shared = std::collections::HashMap::new();
    let mut shmem = std::collections::HashMap::new();
    for z in procs.iter().filter(|p| p.zombie && !img.inventory().pidns) {
        pids.free(z.pid)?;
    }
    let plan = session::plan(&procs).map_err(|(pid, what)| Error::Invalid {
        object: format!("pid {pid}"),
        what: format!("cannot recreate its session or process group: {what}"),
    })?;
    for p in procs.iter().filter(|p| p.fd_table_of != 0 && !p.zombie) {
        if !plan.created_by_pid(p.pid, p.fd_table_of) {
            return Err(Error::Invalid {
                object: format!("pid {}", p.pid),
                what: format!("shares the fd table of pid {}, which does not create it", p.fd_table_of),
            });
        }
    }
    for h in plan.helpers().filter(|_| !img.inventory().pidns) {
        pids.free(h.pid)?;
    }
    let objects = files::Objects { pipes: &pipes, unix: &unix, ttys: &ttys, inherit: &inherit };
    let mut prep = Vec::new();
    let mut ghosts = files::ghost::Ghosts::new(&procs);
    for (i, p) in procs.iter().enumerate() {
        if p.zombie {
            prep.push(None);
            continue;
        }
        // (Its files, cwd and mappings through its own mount namespace, its sockets in its own
        // network namespace, if nested.)
        let in_mnt = match &nested {
            Some(n) => n.enter_mnt(i)?,
            None => false,
        };
        let prepared = (|| {
            let in_net = match &nested {
                Some(n) => n.enter_net(i)?,
                None => false,
            };
            let files = files::prepare(p, &img, &objects, base, &mut shared, &mut shmem, &mut ghosts);
            if let (true, Some(n)) = (in_net, &nested) {
                n.leave_net()?;
            }
            let files = files?;
            let mem = memory::prepare(p, &img, base, &mut shmem, &mut ghosts)?;
            let cwd: OwnedFd = match &p.cwd_ghost {
                // Removed while the process was in it: recreated, opened, removed (state/ghost_node.rs).
                Some(g) => ghosts.nodes.open(&p.cwd, g, libc::O_RDONLY | libc::O_DIRECTORY)?,
                None => std::fs::File::open(&p.cwd).ctx(|| format!("pid {}: cannot open cwd {}", p.pid, p.cwd))?.into(),
            };
            let cwd = raw::dup_above(cwd.as_fd(), base).ctx(|| format!("pid {}: cwd", p.pid))?;
            Ok::<_, Error>(Prepared { files, mem, cwd })
        })();
        if let (true, Some(n)) = (in_mnt, &nested) {
            n.leave_mnt()?;
        }
        prep.push(Some(prepared?));
    }
    drop(ghosts); // (the fds and mappings hold the recreated files now)
    inherit.warn_unused();
    // The pipes' ends the image uses are held by the prepared fds now; what is left is the
    // outside end of each external pipe, closed here as if its process had exited.
    drop(pipes);
    let numbers: Vec<Option<&[i32]>> = prep.iter().map(|p| p.as_ref().map(|p| p.files.numbers.as_slice())).collect();
    let fds: std::collections::HashMap<i32, std::os::fd::BorrowedFd<'_>> = prep
        .iter()
        .flatten()
        .flat_map(|p| p.files.owned.iter())
        .map(|o| (std::os::fd::AsRawFd::as_raw_fd(o), o.as_fd()))
        .collect();
    // Queued unix data goes in once every file is open: messages carry fds in flight.
    // (A file only in flight is no fd's: named by its index in its process's files.)
    let fd_of = |r: &ferry_image::InFlightFd| -> Option<std::os::fd::BorrowedFd<'_>> {
        let q = procs.iter().position(|q| q.pid == r.pid)?;
        let file = match r.file {
            Some(i) => i,
            None => procs[q].fds.iter().find(|d| d.fd == r.fd)?.file,
        };
        fds.get(numbers[q]?.get(file as usize)?).copied()
    };
    crate::state::inet::connect_all(&procs, &numbers, &fds)?;
    crate::state::tcp_repair::release_all(&procs, &numbers)?;
    files::ghost::memfd_attrs(&procs, &shmem)?;
    crate::state::memfd_seals::apply_early(&procs, &shmem)?;
    let sysv = crate::state::sysvshm::prepare(&procs, &img)?;
    tracing::debug!(elapsed = ?t0.elapsed(), "files prepared");
    let tr = memory::choose_trampoline(&all_vmas)?;
    let (status_r, status_w) =
        ferry_sys::process::pipe2(libc::O_CLOEXEC | libc::O_NONBLOCK).ctx(|| "cannot create a pipe".into())?;
    let status_w = raw::dup_above(status_w.as_fd(), base).ctx(|| "cannot move a pipe".into())?;
    ferry_sys::process::set_status_flags(status_w.as_fd(), 0).ctx(|| "status pipe".into())?;
    let (hold_r, hold_w) = ferry_sys::process::pipe2(libc::O_CLOEXEC).ctx(|| "cannot create a pipe".into())?;
    let hold_r = raw::dup_above(hold_r.as_fd(), base).ctx(|| "cannot move a pipe".into())?;
    let pages: Vec<Option<(i32, u64)>> =
        prep.iter().map(|p| p.as_ref().and_then(|p| Some((p.mem.pages_fd?, p.mem.pages_len)))).collect();
    let init_in_userns = crate::state::userns::owns_pidns(img.inventory().namespaces.as_ref(), img.inventory().pidns);
    let in_userns = userns.as_ref().map(|fd| fd.as_fd()).filter(|_| init_in_userns);
    let ctx = TreeCtx {
        procs: &procs,
        plan: &plan,
        prep: &prep,
        base,
        tr,
        status_fd: status_w.as_raw_fd(),
        hold_fd: hold_r.as_raw_fd(),
        tty: &ttys,
        pages: pages.clone(),
        premap: std::env::var_os("FERRY_COW_PREMAP").is_none_or(|v| v != "0"),
        cgroups,
        cgroup_fds,
        host_proc: host_proc.as_raw_fd(),
        mounts: entered.as_ref().and_then(|e| e.handover.mounts.as_ref()),
        // (An init forked inside the user namespace: the whole tree is in it from the start.)
        userns: userns.as_ref().map(|fd| fd.as_raw_fd()).filter(|_| !init_in_userns),
        timens: timens.as_ref().map(|fd| fd.as_raw_fd()),
        nested: nested.as_ref(),
        time_for_children: crate::state::nested_ns::time_for_children_offsets(&procs)?,
    };

    // The page files' checksums, on the other CPU, while the tree is rebuilt; no process runs
    // before the result is in (a mismatch drops `tree`, which kills it). The thread is created
    // now but waits until the tree is forked: a fork while another thread of ferry runs (and
    // faults in its buffers) took 1.5-3 ms instead of 0.1-0.3 ms here, and so did pinning
    // ferry's thread. (Not created earlier: with a second thread sharing the fd table, every
    // growth of it — the fds moved above `base` above — waits for an RCU grace period, ~20 ms.)
    let (start_check, go) = std::sync::mpsc::channel::<()>();
    let pages_check = {
        let img = img.clone();
        std::thread::Builder::new()
            .name("verify-pages".into())
            .spawn(move || match go.recv() {
                Ok(()) => img.verify_where(is_pages_file),
                Err(_) => Ok(()), // the restore failed before the tree was forked
            })
            .ctx(|| "cannot start a thread".into())?
    };
    // From here on ferry's thread and the tree it forks share one CPU (the tree inherits it).
    let pin = Pin::here()?;
    // A tree that was a whole pid namespace gets a new one: its init is created by a plain
    // clone3(CLONE_NEWPID) and every other pid is chosen inside it.
    let pidns = img.inventory().pidns;
    let forked = match (in_userns, pidns, opts.sibling) {
        // (Its pid namespace made from inside its user namespace, owned by it: state/userns.rs.)
        (Some(fd), _, _) => Ok(crate::state::userns::fork_init(fd, opts.sibling)?),
        (None, true, false) => ferry_sys::process::clone3_new_pidns(),
        (None, false, false) => clone3_with_pid(root),
        (None, true, true) => ferry_sys::process::clone3_sibling(None, libc::CLONE_NEWPID as u64),
        (None, false, true) => ferry_sys::process::clone3_sibling(Some(root), 0),
    };
    let mut tree = match forked {
        Ok(Fork::Child) => child_main(&ctx, 0, std::mem::take(in_place)),
        Ok(Fork::Parent(c)) => Tree { pids: vec![c], released: false },
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            return Err(pids.free(root).err().unwrap_or(Error::PidTaken { pid: root }))
        }
        Err(e) => {
            return Err(Error::Sys { object: format!("cannot create process {root} (clone3 with set_tid)"), source: e })
        }
    };
    let root_host = tree.pids[0];
    if !pidns {
        // (Inside a new namespace, killing its init takes everything along.)
        tree.pids = plan.nodes.iter().map(|n| n.pid).collect();
    }
    drop(status_w);
    drop(hold_r);
    drop(cgroup_open);
    let mem_numbers: Vec<Option<memory::Prepared>> = prep
        .iter()
        .map(|pr| {
            pr.as_ref().map(|pr| memory::Prepared {
                vma_fd: pr.mem.vma_fd.clone(),
                exe_fd: pr.mem.exe_fd,
                pages_fd: pr.mem.pages_fd,
                pages_len: pr.mem.pages_len,
                owned: Vec::new(),
            })
        })
        .collect();
    let mut hosts =
        wait_tree_ready(status_r, procs.iter().filter(|p| !p.zombie).count() + plan.helpers().count(), root)?;
    hosts.entry(root).or_default().0 = root_host;
    for z in procs.iter().filter(|p| p.zombie) {
        hosts.entry(z.pid).or_insert((z.pid, Vec::new()));
    }
    let host = |pid: i32| hosts.get(&pid).map_or(pid, |h| h.0);
    // Queued unix data goes in now that the tree's processes exist (each message with its
    // sender's pid), from ferry's thread still in the tree's namespaces (names are looked up
    // there), before any process of the tree runs its own code.
    let stand_ins = StandIns::default();
    let sender_of = |m: &ferry_image::UnixMessage| sender_cred(m, &host, pidns, &stand_ins);
    let filled = crate::state::unix::fill(&mut unix, &procs, &fd_of, &sender_of, &enter_net);
    stand_ins.end();
    filled?;
    drop(unix);
    drop(fds);
    drop(prep);
    if let Some(e) = entered.as_mut() {
        e.leave();
    }
    tree.pids = plan.nodes.iter().map(|n| host(n.pid)).collect();
    let forked = t0.elapsed();
    tracing::debug!(elapsed = ?forked, "tree forked and ready");
    notify(Stage::SetupNamespaces { pid: root_host }).map_err(|what| Error::Invalid {
        object: format!("restore of pid {root}"),
        what: format!("setup-namespaces callback failed: {what}"),
    })?;
    let _ = start_check.send(());
    // Take every process over: each sits in read() on the hold pipe.
    for p in procs.iter().filter(|p| !p.zombie) {
        let pid = host(p.pid);
        ptrace::seize(pid, trace_options(p)).ctx(|| format!("pid {pid}: cannot attach"))?;
        ptrace::interrupt(pid).ctx(|| format!("pid {pid}: cannot interrupt"))?;
        wait_stopped(pid).ctx(|| format!("pid {pid}: did not stop"))?;
    }
    let t_tracer = Instant::now();
    join_groups(&plan, &tr, &host)?;
    end_helpers(&plan, &host)?;
    let mut rebuilt = Vec::new();
    for (i, p) in procs.iter().enumerate() {
        let Some(mem) = &mem_numbers[i] else { continue };
        let has_zombies = procs.iter().any(|z| z.zombie && z.ppid == p.pid);
        let me = plan.nodes.iter().position(|n| n.role == Role::Image(i));
        let helpers: Vec<i32> =
            plan.helpers().filter(|h| h.creator.is_some() && h.creator == me).map(|h| h.pid).collect();
        let kept = hosts.get(&p.pid).map(|h| h.1.clone()).unwrap_or_default();
        let shared = cow::for_tracer(&procs, &pages, i, kept)?;
        let table = fd_table_root(&procs, p.pid);
        let close = !procs[i + 1..].iter().any(|q| !q.zombie && fd_table_root(&procs, q.pid) == table);
        let reap = Reap { has_zombies, helpers: &helpers, close_helper_fds: close };
        rebuilt.push((p, rebuild(p, host(p.pid), mem, &shared, &tr, reap, &pin)?));
    }
    drop(pin);
    match pages_check.join() {
        Ok(r) => r?,
        Err(_) => return Err(Error::Invalid { object: "page files".into(), what: "checksum thread failed".into() }),
    }
    tracing::debug!(elapsed = ?t0.elapsed(), "page files verified");
    crate::state::memfd_seals::apply_late(&procs, &shmem)?;
    // ferry's own writable descriptions of the memfds go before the tree runs: a writer keeps
    // a file from being executed (ETXTBSY) on kernels that deny exec to written files.
    drop(shmem);
    sysv.finish()?;
    crate::state::fown::restore(&procs, &host)?;
    tty::finish_shell_job(&ttys, &procs[0], &procs)?;
    crate::postcopy::register_all()?;
    if let Some(sig) = crate::inject::fault_signal_at_release() {
        let _ = ferry_sys::process::kill(root_host, sig);
    }
    // Processes that were in a job-control stop (or all, with --leave-stopped) run no
    // instruction before they stop again.
    // Those that were in one are put in it by the tracer, before the release, and their parents
    // are left with the reports and SIGCHLDs they had (state/jobstop.rs).
    let mut stops: Vec<(i32, i32)> = Vec::new();
    for (p, (_, threads)) in &rebuilt {
        if p.stop_signal == 0 {
            continue;
        }
        let pid = host(p.pid);
        let threads = std::iter::once((pid, p.threads[0].sigmask))
            .chain(threads.iter().map(|(tid, th, _)| (*tid, th.sigmask)))
            .collect();
        let sig = jobstop::enter(&jobstop::Stop { pid, sig: p.stop_signal, threads })?;
        stops.push((pid, sig));
    }
    for (q, _) in &rebuilt {
        let children: Vec<&Process> =
            rebuilt.iter().map(|(p, _)| *p).filter(|p| p.ppid == q.pid && p.stop_signal != 0).collect();
        if !children.is_empty() {
            let collect: Vec<i32> = children.iter().filter(|c| c.stop_collected).map(|c| host(c.pid)).collect();
            jobstop::tidy_parent(q, host(q.pid), &collect)?;
        }
    }
    // With --leave-stopped, the others stop as CRIU stops them: SIGSTOP queued now, taken by
    // each thread as it is released, before it returns to user space.
    for (p, _) in rebuilt.iter().filter(|(p, _)| p.stop_signal == 0 && opts.leave_stopped) {
        let pid = host(p.pid);
        ferry_sys::process::kill(pid, libc::SIGSTOP).ctx(|| format!("pid {pid}: cannot stop it (SIGSTOP)"))?;
        stops.push((pid, libc::SIGSTOP));
    }
    // Each thread's count of turns on a CPU while it is still held (`task::wait_released_ran`).
    let held: Vec<(i32, i32, Option<u64>)> = rebuilt
        .iter()
        .flat_map(|(p, (_, threads))| {
            let pid = host(p.pid);
            std::iter::once(pid)
                .chain(threads.iter().map(|t| t.0))
                .map(move |tid| (pid, tid, task::timeslices(pid, tid)))
        })
        .collect();
    // Release everything together, leaves first.
    for (p, (_, threads)) in rebuilt.iter().rev() {
        for (tid, _, _) in threads {
            ptrace::detach(*tid, 0).ctx(|| format!("pid {} thread {tid}: cannot release", p.pid))?;
        }
        ptrace::detach(host(p.pid), 0).ctx(|| format!("pid {}: cannot release", p.pid))?;
    }
    tree.released = true;
    drop(hold_w);
    for &(pid, sig) in &stops {
        ensure_stopped(pid, sig);
    }
    task::wait_released_ran(&held);
    if let Some(sig) = crate::inject::fault_signal_after_release() {
        let _ = ferry_sys::process::kill(root_host, sig);
    }
    let unlocked = notify(Stage::Released { pid: root_host });
    if let Some(l) = net_hold.take() {
        let name = l.name().to_string();
        let dumped: Vec<&str> = procs.iter().flat_map(crate::state::tcp_repair::lock_names).collect();
        if let Err(e) = l.release(dumped) {
            tracing::warn!(table = name, error = %e, "the restored connections stay blocked by the network lock");
        }
    }
    if let Err(e) = crate::state::tcp_repair::unlock_all(&procs, root_host) {
        tracing::warn!(error = %e, "the restored connections stay blocked by the network lock");
    }
    unlocked.map_err(|what| Error::Invalid {
        object: format!("restore of pid {root}"),
        what: format!("the tree runs, but a callback failed: {what}"),
    })?;
    tracing::info!(tracer = ?t_tracer.elapsed(), total = ?t0.elapsed(), "released");
    if let Some(pf) = &opts.pidfile {
        write_pidfile(pf, root_host)?;
    }
    Ok(Restored { pid: root_host, verify, total: t0.elapsed(), forked })
}

/// The sender's credentials a queued unix message goes back with (None: ferry's own, for an
/// image without them). A process of the tree: its restored pid (as ferry sees it). A sender
/// outside the tree: the same pid if a process has it here and the tree has no pid namespace of
/// its own (a supervisor that still runs); else, gone, the pid of a stand-in process made for it
/// (`StandIns`), with its old pid if that is free, killed once the queues are filled, so the
/// reader finds the sender gone as it was. (It once went with ferry's own pid, which a reader
/// found alive as long as `ferry restore` waited for the tree.) In a tree with its own pid
/// namespace a gone sender goes with ferry's pid, which a reader inside sees as 0 (as it saw a
/// sender outside the namespace). Uid and gid always as dumped.
fn sender_cred(
    m: &ferry_image::UnixMessage,
    host: &dyn Fn(i32) -> i32,
    pidns: bool,
    stand_ins: &StandIns,
) -> Option<libc::ucred> {
    if !m.has_cred {
        return None;
    }
    // (kill(pid, 0), not /proc: ferry's thread is in the tree's mount namespace here.)
    let exists = |pid: i32| {
        pid > 0 && ferry_sys::process::kill(pid, 0).map_or_else(|e| e.raw_os_error() != Some(libc::ESRCH), |()| true)
    };
    let pid = if m.sender_in_tree {
        host(m.sender_pid)
    } else if pidns {
        std::process::id() as i32
    } else if exists(m.sender_pid) {
        m.sender_pid
    } else {
        stand_ins.for_sender(m.sender_pid)
    };
    Some(libc::ucred { pid, uid: m.sender_uid, gid: m.sender_gid })
}

/// Stand-in processes for the gone senders of queued unix messages, by the sender's old pid.
#[derive(Default)]
struct StandIns(std::cell::RefCell<HashMap<i32, i32>>);

impl StandIns {
    /// The pid of the stand-in of gone sender `old`: made now (pid `old` if free, else any),
    /// or ferry's own pid if none can be made.
    fn for_sender(&self, old: i32) -> i32 {
        if let Some(&pid) = self.0.borrow().get(&old) {
            return pid;
        }
        let made = ferry_sys::process::stand_in(Some(old)).or_else(|e| {
            tracing::info!(pid = old, error = %e, "a queued unix message's gone sender gets a stand-in with another pid");
            ferry_sys::process::stand_in(None)
        });
        let pid = match made {
            Ok(pid) => pid,
            Err(e) => {
                tracing::warn!(pid = old, error = %e, "a queued unix message's gone sender: it goes with ferry's pid");
                std::process::id() as i32
            }
        };
        self.0.borrow_mut().insert(old, pid);
        pid
    }

    /// Kill and reap every stand-in.
    fn end(self) {
        let me = std::process::id() as i32;
        for (_, pid) in self.0.into_inner().into_iter().filter(|&(_, p)| p != me) {
            let _ = ferry_sys::process::kill(pid, libc::SIGKILL);
            let _ = ptrace::wait(pid, false);
        }
    }
}

/// The process whose fd table `pid` uses: itself, or the first of its ancestors it shares
/// the table with (CLONE_FILES, `Process.fd_table_of`).
fn fd_table_root(procs: &[Process], pid: i32) -> i32 {
    let mut cur = pid;
    for _ in 0..procs.len() {
        match procs.iter().find(|p| p.pid == cur).map(|p| p.fd_table_of) {
            Some(up) if up != 0 => cur = up,
            _ => break,
        }
    }
    cur
}

/// Check that a process released with a stop signal queued is stopped. The kernel discards
/// SIGTSTP, SIGTTIN and SIGTTOU in an orphaned process group (no member has a parent in another
/// group of the session), which a restored tree can be when its root's old parent is gone:
/// then stop it with SIGSTOP (which is never discarded) and say so, since its parent's
/// `waitpid(WUNTRACED)` now reports SIGSTOP.
fn ensure_stopped(pid: i32, sig: i32) {
    let stopped = || pid_state(pid) == Some('T');
    let t = Instant::now();
    while !stopped() && t.elapsed() < Duration::from_millis(200) {
        std::thread::sleep(Duration::from_millis(1));
    }
    if !stopped() && sig != libc::SIGSTOP && pid_state(pid).is_some_and(|s| s != 'Z') {
        tracing::warn!(
            pid,
            sig,
            "the stop signal was discarded (orphaned process group): stopped with SIGSTOP instead"
        );
        let _ = ferry_sys::process::kill(pid, libc::SIGSTOP);
    }
}

/// ferry's tracing thread and the tree it forks and rebuilds on one CPU while they hand control
/// back and forth (status lines, then hundreds of ptrace stops): a hand-over that wakes the
/// other side on another, idle CPU costs 50-200 µs in this kind of VM (the idle vCPU is
/// halted; waking it is the host's work), and a freshly forked child sometimes waited 1-2 ms
/// to run there; on the same CPU a ptrace stop costs 10-20 µs. The tree inherits the pin when
/// forked. Dropping it gives ferry's thread its own mask back; each process gets its own at
/// the end of its rebuild ([`task::restore_sched`]). (The page-checksum thread is started
/// before the pin and runs on the other CPU.)
struct Pin {
    /// ferry's mask before (every CPU it may use): also the fallback for the processes.
    mask: Vec<u8>,
    /// The one CPU, or none if the pin could not be set (then nothing is pinned).
    one: Option<Vec<u8>>,
}

impl Pin {
    fn here() -> Result<Pin, Error> {
        let mask = ferry_sys::process::get_affinity(0).ctx(|| "cannot read ferry's CPU affinity".into())?;
        let one = ferry_sys::process::current_cpu()
            .map(ferry_sys::process::one_cpu_mask)
            .filter(|m| ferry_sys::process::set_affinity(0, m).is_ok());
        Ok(Pin { mask, one })
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        if self.one.is_some() {
            let _ = ferry_sys::process::set_affinity(0, &self.mask);
        }
    }
}

/// Once every process and helper exists: each process whose group's leader is elsewhere (or a
/// helper) joins it, from inside with an injected `setpgid(0, pgid)`.
fn join_groups(plan: &session::Plan, tr: &Trampoline, host: &dyn Fn(i32) -> i32) -> Result<(), Error> {
    for n in plan.nodes.iter().filter(|n| n.join.is_some()) {
        let (pid, pgid) = (host(n.pid), n.join.unwrap_or(0));
        let regs = ptrace::get_regs(pid).ctx(|| format!("pid {pid}: cannot read registers"))?;
        let inj = Injector::with_int3(pid, tr.code, regs);
        inj.call(nr::SETPGID, &[0, pgid as u64]).ctx(|| format!("pid {pid}: cannot join process group {pgid}"))?;
        ptrace::set_regs(pid, &regs).ctx(|| format!("pid {pid}: cannot put back registers"))?;
    }
    Ok(())
}

/// Kill the helpers and wait until each is a zombie, for its parent to reap during its rebuild.
fn end_helpers(plan: &session::Plan, host: &dyn Fn(i32) -> i32) -> Result<(), Error> {
    for h in plan.helpers() {
        ferry_sys::process::kill(host(h.pid), libc::SIGKILL)
            .ctx(|| format!("helper process {}: cannot kill", h.pid))?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for h in plan.helpers() {
        while !matches!(pid_state(host(h.pid)), Some('Z') | None) {
            if Instant::now() > deadline {
                return Err(Error::Invalid { object: format!("helper process {}", h.pid), what: "did not die".into() });
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    Ok(())
}

/// The ptrace options a restored process is seized with: killed if ferry dies, and, if it uses
/// seccomp, its filters suspended while ferry drives it (they are installed early,
/// state/seccomp.rs; the new threads inherit the suspension with the tracer).
fn trace_options(p: &Process) -> u32 {
    let suspend = if seccomp::used(p) { ferry_sys::consts::PTRACE_O_SUSPEND_SECCOMP } else { 0 };
    PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL | suspend
}

/// Create every thread but the main one with its old tid (an injected `clone3` with `set_tid`
/// in the main thread; PTRACE_O_TRACECLONE attaches each new thread, stopped before it runs a
/// single instruction) and give each its own per-thread state. Returns, per thread, what is
/// needed to load its final registers at release time.
fn restore_threads(
    inj: &Injector,
    tr: &Trampoline,
    p: &Process,
) -> Result<Vec<(i32, ferry_image::Thread, ferry_sys::UserRegs)>, Error> {
    let pid = inj.pid();
    let mut out = Vec::new();
    if p.threads.len() < 2 {
        return Ok(out);
    }
    ptrace::set_options(pid, trace_options(p) | ferry_sys::consts::PTRACE_O_TRACECLONE)
        .ctx(|| format!("pid {pid}: PTRACE_SETOPTIONS"))?;
    let scratch = tr.data;
    for t in &p.threads[1..] {
        let tid = t.tid;
        let flags = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM) as u64;
        // struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal, stack,
        // stack_size, tls, set_tid, set_tid_size, cgroup; then the set_tid array.
        // (Its id at every pid namespace level below the tree's too, innermost first.)
        let tids: Vec<i32> = t.ns_tid.iter().rev().copied().chain(std::iter::once(tid)).collect();
        let mut args = Vec::with_capacity(88 + 4 * tids.len());
        for w in [flags, 0, 0, 0, 0, 0, 0, 0, scratch + 88, tids.len() as u64, 0] {
            args.extend_from_slice(&w.to_le_bytes());
        }
        for t in &tids {
            args.extend_from_slice(&t.to_le_bytes());
        }
        ferry_sys::process::vm_write(pid, scratch, &args).ctx(|| format!("pid {pid}: cannot write clone_args"))?;
        let got = inj
            .call(nr::CLONE3, &[scratch, 88])
            .ctx(|| format!("pid {pid}: cannot create thread {tid} (clone3 with set_tid)"))?;
        if got != tids[0] as u64 {
            return Err(Error::Invalid {
                object: format!("pid {pid}"),
                what: format!("thread {tid} was created as {got}"),
            });
        }
        let tid = host_tid(pid, p.pid, tid)?;
        wait_stopped(tid).ctx(|| format!("pid {pid} thread {tid}: did not stop after creation"))?;
        let base = ptrace::get_regs(tid).ctx(|| format!("pid {pid} thread {tid}: cannot read registers"))?;
        let tinj = Injector::with_int3(tid, tr.code, base);
        cpu::check_compatible(pid, tid, &t.xstate)?;
        let mut name = t.comm.as_bytes().to_vec();
        name.truncate(15);
        name.push(0);
        ferry_sys::process::vm_write(pid, scratch, &name)
            .ctx(|| format!("pid {pid} thread {tid}: cannot write comm"))?;
        tinj.call(nr::PRCTL, &[libc::PR_SET_NAME as u64, scratch, 0, 0, 0])
            .ctx(|| format!("pid {pid} thread {tid}: cannot set comm"))?;
        rseq::restore(&tinj, t)?;
        signals::restore_thread(&tinj, scratch, p, t, false)?;
        seccomp::restore_own(&tinj, scratch, p, t)?;
        // Credentials (and no_new_privs) are per thread: each thread gets the process's, as
        // the main thread does at the end (this thread runs no injected call after this).
        if let Some(c) = &p.creds {
            let now = crate::procfs::read_string(pid, &format!("task/{tid}/status"))?;
            let mut now = crate::procfs::parse(pid, "task status", ferry_proc::parse_status(&now))?;
            crate::state::userns::status_inside(pid, &mut now)?;
            creds::restore(&tinj, scratch, c, &now)?;
        }
        out.push((tid, t.clone(), base));
    }
    Ok(out)
}

/// The id ferry sees for thread `tid` (as its own pid namespace sees it) of process `host`
/// (`pid` inside): the same unless the tree has its own pid namespace.
fn host_tid(host: i32, pid: i32, tid: i32) -> Result<i32, Error> {
    if host == pid {
        return Ok(tid);
    }
    let dir = crate::procfs::path(host, "task");
    for e in std::fs::read_dir(&dir).ctx(|| format!("cannot list {}", dir.display()))?.flatten() {
        let Some(t) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let text = crate::procfs::read_string(host, &format!("task/{t}/status"))?;
        let st = crate::procfs::parse(host, "task status", ferry_proc::parse_status(&text))?;
        if st.ns_pid.get(1) == Some(&tid) {
            return Ok(t);
        }
    }
    Err(Error::Invalid { object: format!("pid {host}"), what: format!("thread {tid} not found after its creation") })
}

/// Wait for a restored (child) process to end; returns its exit status (128+signal if killed).
pub fn wait_exit(pid: i32) -> Result<i32, Error> {
    loop {
        match ptrace::wait(pid, false).ctx(|| format!("pid {pid}: waitpid"))? {
            Some((_, ptrace::WaitStatus::Exited(c))) => return Ok(c),
            Some((_, ptrace::WaitStatus::Signaled(s))) => return Ok(128 + s),
            _ => continue,
        }
    }
}
