//! The dump pipeline: seize & freeze -> check for unsupported state -> collect each kind ->
//! write the image -> kill (or resume with `-R`).
//!
//! "Nothing lost": until the inventory is committed, every error path detaches from the target
//! with its original registers and signal mask, so a failed dump leaves it running as if
//! nothing happened. Syscall injection (the only moment the target's registers are not its
//! own) is kept to one short window before page data is written; if ferry itself is killed
//! outside that window, the kernel detaches the target and it simply continues.

use crate::error::{Ctx, Error};
use crate::freeze::{borrow, give_back, precheck, tree_pids, Frozen};
use crate::procfs::{self, children_of};
use crate::state::snapshot::Snapshot;
use crate::state::tracked;
use crate::state::{cpu, creds, files, memory, rseq, seccomp, signals, task, timers, tty};
use ferry_image::{ImageWriter, Inventory, Mm, Process, Thread, Vma};
use ferry_sys::consts::PTRACE_O_TRACESYSGOOD;
use ferry_sys::ptrace;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What to dump and how.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    pub pid: i32,
    pub dir: PathBuf,
    /// Leave the process running after the dump (`-R`).
    pub leave_running: bool,
    /// Restore TCP connections as closed sockets instead of refusing them (`--tcp-close`).
    pub tcp_close: bool,
    /// `--tcp-established`: keep established TCP connections (TCP_REPAIR).
    pub tcp_established: bool,
    /// `--skip-in-flight`: connections waiting in a listener's accept queue are left out (a
    /// warning) instead of refusing the dump.
    pub skip_in_flight: bool,
    /// The tree was started from a terminal outside it (`--shell-job`): record, not refuse.
    pub shell_job: bool,
    /// CRIU's `orphan_pts_master` (runc sends it): a pty slave whose master is outside the tree
    /// (a container's console) is kept as an orphan pair instead of refused (state/tty.rs).
    pub orphan_pts_master: bool,
    /// With `leave_running`: leave every process of the tree stopped (SIGSTOP) instead of
    /// running (`--leave-stopped`).
    pub leave_stopped: bool,
    /// How long every thread of the tree may take to stop (`--timeout`, CRIU's default 10 s).
    pub freeze_timeout: Duration,
    /// `--sign`: sign the image with this node key (`signature.img`).
    pub sign: Option<ferry_image::sign::SigningKey>,
    /// External namespaces and mounts (state/namespaces.rs).
    pub ns: crate::state::namespaces::DumpNs,
    /// `--external` (CRIU's forms, any number): `unix[INO]` lets a unix socket connected to a
    /// peer outside the tree be dumped (restore then needs `--inherit-fd fd[N]:socket:[INO]`);
    /// the namespace forms (`mnt[..]`, `net[..]`, `veth[..]`, `macvlan[..]`) are kept here for
    /// the namespace code (state/external.rs).
    pub external: Vec<crate::state::external::External>,
    /// With `leave_running` (not `leave_stopped`): let the tree run again as soon as its state
    /// and a copy-on-write snapshot of its memory are taken, and write the pages from the
    /// snapshot (state/snapshot.rs). Off: the tree stays frozen until the image is committed.
    pub snapshot: bool,
}

/// Figures about a finished dump.
#[derive(Debug, Clone, Default)]
pub struct DumpReport {
    pub pages_bytes: u64,
    pub vmas: usize,
    pub fds: usize,
    /// Time the tree was frozen: from the freeze to the image being committed, or with a
    /// snapshot, to the tree running again (plus the moment each process is frozen again to
    /// reap its snapshot, or the moment it was frozen to start tracking its writes: state/tracked.rs).
    pub frozen: Duration,
    pub total: Duration,
    /// Network locks (nftables tables) left blocking the dumped TCP connections on this node,
    /// in ferry's own network namespace (one made in the tree's own namespace is not listed: it
    /// went away with it, or stays in it for a restore that joins it again).
    pub locks: Vec<String>,
    /// From the first process seized to every process frozen.
    pub freezing: Duration,
    /// Reading the pages and writing them to the image (one pass).
    pub memdump: Duration,
    /// Committing the image (fsync, rename into place).
    pub commit: Duration,
    /// Pages of every mapping the dump looked at, and pages it wrote.
    pub pages_scanned: u64,
    pub pages_written: u64,
    /// Of `pages_written`, the pages whose copy is a pre-dump's (the parent image: copied
    /// from its page file, not read again from the tree, predump.rs).
    pub pages_from_parent: u64,
}

/// The record of child `c` of `parent` if it is a zombie (what its parent's waitpid() will see).
fn zombie_record(c: i32, parent: i32) -> Result<Option<Process>, Error> {
    let text = procfs::read_string(c, "stat").unwrap_or_default();
    let state = text.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
    if !matches!(state, Some('Z')) {
        return Ok(None);
    }
    let stat = procfs::parse(c, "stat", ferry_proc::parse_stat(&text))?;
    Ok(Some(Process {
        pid: c,
        ppid: parent,
        pgid: stat.pgrp,
        sid: stat.session,
        comm: stat.comm.clone(),
        zombie: true,
        exit_status: stat.exit_code,
        exit_signal: stat.exit_signal,
        ..Default::default()
    }))
}

/// Processes created with clone() flags that share kernel state (CLONE_VM, CLONE_FS,
/// CLONE_SIGHAND, vfork) would come back separate: refused. Compared pairwise with kcmp. A
/// shared fd table (CLONE_FILES) is kept when a process shares it with its parent (restore
/// creates it with CLONE_FILES): the result maps each such process to its parent. `parents`:
/// each frozen process's parent (0 for the root).
fn check_unshared(frozen: &[Frozen], parents: &HashMap<i32, i32>) -> Result<HashMap<i32, i32>, Error> {
    // (KCMP_SYSVSEM is left out: two processes without undo lists compare equal.)
    const KINDS: [(i32, &str); 4] = [
        (1, "its address space (CLONE_VM / vfork)"),
        (KCMP_FILES, "its fd table (CLONE_FILES)"),
        (3, "its cwd/root/umask (CLONE_FS)"),
        (4, "its signal handlers (CLONE_SIGHAND)"),
    ];
    const KCMP_FILES: i32 = 2;
    let same = |a: i32, b: i32, kind: i32| ferry_sys::process::kcmp(a, b, kind, 0, 0).ok() == Some(0);
    let mut fd_table_of = HashMap::new();
    for (i, a) in frozen.iter().enumerate() {
        let parent = parents.get(&a.pid).copied().unwrap_or(0);
        let with_parent = parent > 0 && same(a.pid, parent, KCMP_FILES);
        if with_parent {
            fd_table_of.insert(a.pid, parent);
        }
        for b in &frozen[..i] {
            for (kind, what) in KINDS {
                // (Sharing with the parent implies sharing with whoever else shares it.)
                if kind == KCMP_FILES && with_parent {
                    continue;
                }
                if same(a.pid, b.pid, kind) {
                    let how = if kind == KCMP_FILES { ", which is not its parent" } else { "" };
                    return Err(Error::Unsupported {
                        pid: a.pid,
                        what: format!("a process sharing {what} with pid {}{how}", b.pid),
                    });
                }
            }
        }
    }
    Ok(fd_table_of)
}

/// Collect everything of one frozen process but its pages (and its pipes' bytes, which need
/// the whole tree).
fn dump_process(
    f: &mut Frozen,
    img: &mut ImageWriter,
    done: &mut [Process],
    tree: &mut files::TreeFiles,
    pidns_root: Option<i32>,
    mut snaps: Option<&mut Vec<Snapshot>>,
    (root, ns, flags_elsewhere, stopped): (i32, &crate::state::namespaces::DumpNs, bool, &[i32]),
) -> Result<(Process, Vec<i32>), Error> {
    let pid = f.pid;
    let _span = tracing::info_span!("process", pid).entered();
    let t = Instant::now();
    // Re-read under the freeze: nothing can change now.
    let (st, stat) = precheck(pid, root, pidns_root, ns)?;
    let mut p = Process { stop_signal: f.stop_signal, ..Default::default() };
    task::collect(pid, &st, &stat, &mut p)?;
    let tids: Vec<i32> = f.threads.iter().map(|t| t.tid).collect();
    crate::state::cgroup::collect(pid, &tids, &mut p)?;
    files::collect(pid, img, &mut p, done, tree)?;
    let t_maps = Instant::now();
    // (With a snapshot to come, the VmFlags may be read from it once the tree runs again.)
    // (`flags_elsewhere`: the VmFlags were read before the freeze with the pages copied while the
    // tree ran, state/tracked.rs.)
    let flags_later = flags_elsewhere || (snaps.is_some() && crate::state::snapshot::flags_later(pid)?);
    let (mut vmas, maps) = memory::scan(pid, img, &mut p.ghosts, !flags_later)?;
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    let t_window = Instant::now();
    tracing::info!(
        vmas = vmas.len(),
        fds = p.fds.len(),
        threads = f.threads.len(),
        state_ms = ms(t, t_maps),
        maps_ms = ms(t_maps, t_window),
        flags_later,
        "collected fds and mappings"
    );

    // The injection window, one thread at a time: signals blocked, registers borrowed — with
    // a sigreturn safety net on the thread's stack so that a SIGKILL of ferry now cannot harm
    // it (inject.rs). The main thread answers for the process; every thread for itself.
    let mut mm = None;
    let mut collected = Vec::new();
    for i in 0..f.threads.len() {
        let tid = f.threads[i].tid;
        let comm = procfs::read_string(pid, &format!("task/{tid}/comm")).unwrap_or_default().trim_end().to_string();
        let sched = task::collect_thread_sched(pid, tid, &p)?;
        let mut t = Thread { tid, comm, sched, ..Default::default() };
        cpu::collect(tid, &mut t)?;
        seccomp::collect(pid, &mut p, &mut t)?;
        let (inj, scratch) = borrow(pid, &mut f.threads[i], &maps, &t.xstate)?;
        let sigmask = f.threads[i].sigmask;
        let injected = (|| -> Result<(), Error> {
            signals::collect_thread(&inj, scratch, sigmask, &mut t)?;
            rseq::collect(&inj, scratch, &mut t)?;
            if tid == pid {
                signals::collect_actions(&inj, scratch, &st, &mut p)?;
                timers::collect(&inj, scratch, &mut p)?;
                creds::collect(&inj, &st, &mut p)?;
                task::collect_injected(&inj, scratch, &mut p)?;
                task::collect_rlimits(&inj, scratch, &mut p)?;
                collected = crate::state::jobstop::collected_stops(&inj, scratch, pid, stopped)?;
                let mut m = memory::collect_mm(&inj, &stat, std::mem::take(&mut vmas))?;
                crate::state::aio::collect(&inj, scratch, &mut m)?;
                mm = Some(m);
                if let Some(snaps) = snaps.as_deref_mut() {
                    // Last in the window: the memory as frozen, with nothing of ferry's in it
                    // but this thread's safety net below its stack pointer.
                    match (Snapshot::take(&inj, PTRACE_O_TRACESYSGOOD), mm.as_mut()) {
                        (Ok(s), Some(mm)) => {
                            snaps.push(s);
                            if let Some(s) = snaps.last_mut() {
                                s.settle(mm, flags_later)?;
                            }
                            crate::inject::fault_point_named("kill-after-snapshot");
                        }
                        (Ok(s), None) => snaps.push(s),
                        (Err(e), mm) => {
                            tracing::warn!(error = %e, "no snapshot: the tree stays frozen for the whole dump");
                            if let Some(mm) = mm.filter(|_| flags_later) {
                                crate::state::snapshot::read_flags_frozen(pid, mm)?;
                            }
                        }
                    }
                }
            }
            Ok(())
        })();
        give_back(pid, &f.threads[i])?;
        injected?;
        p.threads.push(t);
    }
    tracing::info!(window_ms = t_window.elapsed().as_secs_f64() * 1e3, "injection window closed");
    p.mm =
        Some(mm.ok_or_else(|| Error::Invalid { object: format!("pid {pid}"), what: "main thread not found".into() })?);
    p.shared_pending = signals::peek(pid, true)?;
    Ok((p, collected))
}

/// The second entry of an `NS*` status line: the id as the tree's pid namespace (a child of
/// ferry's) sees it (a process in a pid namespace nested below has more entries).
fn inner_id(ids: &[i32], host: i32, what: &str) -> Result<i32, Error> {
    ids.get(1).copied().ok_or_else(|| Error::Invalid {
        object: format!("/proc/{host}/status"),
        what: format!("no {what} line (kernel without pid namespace ids)"),
    })
}

/// Rewrite every pid of a tree that is a whole pid namespace into that namespace's own ids
/// (`NSpid`, `NSpgid`, `NSsid` of /proc/PID/status): processes, parents, groups, sessions,
/// threads, and the threads POSIX timers signal.
fn to_namespace_ids(procs: &mut [Process], zombies: &mut [Process]) -> Result<(), Error> {
    let mut map = std::collections::HashMap::new();
    for p in procs.iter().chain(zombies.iter()) {
        let host = p.pid;
        let st = procfs::parse(host, "status", ferry_proc::parse_status(&procfs::read_string(host, "status")?))?;
        map.insert(
            host,
            (
                inner_id(&st.ns_pid, host, "NSpid")?,
                inner_id(&st.ns_pgid, host, "NSpgid")?,
                inner_id(&st.ns_sid, host, "NSsid")?,
            ),
        );
        for t in &p.threads {
            let text = procfs::read_string(host, &format!("task/{}/status", t.tid))?;
            let ts = procfs::parse(host, "task status", ferry_proc::parse_status(&text))?;
            map.entry(t.tid).or_insert((inner_id(&ts.ns_pid, host, "NSpid")?, 0, 0));
        }
    }
    let tid = |t: i32| map.get(&t).map(|m| m.0).unwrap_or(0);
    for p in procs.iter_mut().chain(zombies.iter_mut()) {
        let (pid, pgid, sid) = map.get(&p.pid).copied().unwrap_or_default();
        p.ppid = tid(p.ppid);
        if p.fd_table_of != 0 {
            p.fd_table_of = tid(p.fd_table_of);
        }
        if p.pidns_for_children > 0 {
            p.pidns_for_children = tid(p.pidns_for_children);
        }
        (p.pid, p.pgid, p.sid) = (pid, pgid, sid);
        for t in p.threads.iter_mut() {
            t.tid = tid(t.tid);
        }
        for pt in p.posix_timers.iter_mut().filter(|pt| pt.notify_tid != 0) {
            pt.notify_tid = tid(pt.notify_tid);
        }
        for t in p.files.iter_mut().flat_map(|f| f.epoll_targets.iter_mut()) {
            t.owner = tid(t.owner);
            t.src_pid = tid(t.src_pid);
        }
        for t in p.files.iter_mut().filter_map(|f| f.pidfd.as_mut()).filter(|t| !t.dead) {
            t.pid = tid(t.pid);
        }
        for c in p.files.iter_mut().filter_map(|f| f.unix.as_mut()?.peer_cred.as_mut()).filter(|c| c.in_tree) {
            c.pid = tid(c.pid);
        }
        let queues = p.files.iter_mut().filter_map(|f| f.unix.as_mut()).flat_map(|u| u.queue.iter_mut());
        for m in queues {
            for r in m.rights.iter_mut() {
                r.pid = tid(r.pid);
            }
            if m.sender_in_tree {
                m.sender_pid = tid(m.sender_pid);
            }
        }
    }
    Ok(())
}

/// Freeze the tree rooted at `opts.pid`, write its image to `opts.dir`, then kill it (or let
/// it run with `-R`).
pub fn dump(opts: &DumpOptions) -> Result<DumpReport, Error> {
    // (Checked before the directory is touched: a wrong pid must not cost an older image there.)
    if opts.pid <= 0 || !procfs::path(opts.pid, "").exists() {
        return Err(Error::NoProcess { pid: opts.pid });
    }
    // The writer is prepared now (for the reservations); an older image in the directory is
    // only replaced when the new one is committed, and a dump that fails before leaves it as it
    // was, and nothing of its own (ImageWriter's Drop).
    let mut img = ImageWriter::prepare(&opts.dir)?;
    if let Some(key) = &opts.sign {
        img.sign_with(key.clone());
    }
    reserve_pages(&mut img, opts.pid)?;
    let tracked = opts.leave_running && opts.snapshot && !opts.leave_stopped && tracked::wanted();
    if !tracked {
        return dump_with(opts, move || Ok(img), |_| Ok(()));
    }
    let pres = start_tracked(opts.pid, &mut img, &mut HashMap::new());
    if let Some(r) = dump_inner(opts, move || Ok(img), |_| Ok(()), pres)? {
        return Ok(r);
    }
    // (The VmFlags of a mapping changed during the dump: again, with the fork snapshot.)
    let mut img = ImageWriter::prepare(&opts.dir)?;
    if let Some(key) = &opts.sign {
        img.sign_with(key.clone());
    }
    reserve_pages(&mut img, opts.pid)?;
    dump_with(opts, move || Ok(img), |_| Ok(()))
}

/// [`dump`] from a pre-dump's copies (`dump --parent`, CRIU's `parent_img`; predump.rs):
/// every process in `parents` starts from its pre-dump's page file and write tracking, the
/// others are tracked now; more rounds while the tree runs, then as `dump -R` under the freeze
/// (the tree stays frozen until the image is committed unless `leave_running`). Whatever cannot
/// be taken so is copied as in a plain dump.
pub fn dump_from_parent(
    opts: &DumpOptions,
    mut parents: HashMap<i32, tracked::FromParent>,
) -> Result<DumpReport, Error> {
    if opts.pid <= 0 || !procfs::path(opts.pid, "").exists() {
        return Err(Error::NoProcess { pid: opts.pid });
    }
    if !tracked::wanted() {
        tracing::info!("compressed page files: the pre-dump's copies are not used");
        return dump(opts);
    }
    let mut img = ImageWriter::prepare(&opts.dir)?;
    if let Some(key) = &opts.sign {
        img.sign_with(key.clone());
    }
    reserve_pages(&mut img, opts.pid)?;
    let pres = start_tracked(opts.pid, &mut img, &mut parents);
    if let Some(r) = dump_inner(opts, move || Ok(img), |_| Ok(()), pres)? {
        return Ok(r);
    }
    // (The VmFlags of a mapping changed during the dump: the tree runs, nothing is committed.)
    dump(opts)
}

/// The VmFlags of a process, by the end of each mapping (see `memory::vm_flags`).
type VmFlags = HashMap<u64, Vec<String>>;

/// What the VmFlags reader of [`FlagsApart`] found, per pid.
type FlagsRead = Vec<(i32, Result<VmFlags, Error>)>;

/// The VmFlags of the processes of a dump without snapshots, read on another thread while this
/// one goes on with the dump: smaps walks every page table (~10-15 ms per GiB of 4 KiB pages on
/// a quiet machine), and this was most of a pre-copy migration's downtime at 1 GiB. The thread
/// starts once every injection window of the tree is closed (started at the freeze, reading
/// during the windows, it made their preparation fail now and then with EFAULT:
/// docs/performance.md), and a process's flags are applied (and checked: refused flags) before
/// its record is written: its page dump and the tree's other passes do not need them. (The
/// copy-on-write sharing search asks only for `dp`, MAP_DROPPABLE, whose pages a fork never
/// shares: without the flag it finds none there either.) Not for processes mapping SysV
/// segments (`memory::scan` and sysvshm.rs need their flags), nor with
/// `FERRY_DUMP_FLAGS=inline` (read in line, under the freeze, as before).
struct FlagsApart {
    pids: Vec<i32>,
    thread: Option<std::thread::JoinHandle<FlagsRead>>,
    got: HashMap<i32, Result<VmFlags, Error>>,
}

impl FlagsApart {
    fn new(mut pids: Vec<i32>) -> FlagsApart {
        if std::env::var("FERRY_DUMP_FLAGS").is_ok_and(|v| v == "inline") {
            pids.clear();
        }
        // (A process whose maps cannot be read keeps its flags in line: its dump fails there.)
        pids.retain(|&p| procfs::read_string(p, "maps").is_ok_and(|m| !m.lines().any(|l| l.contains(" /SYSV"))));
        FlagsApart { pids, thread: None, got: HashMap::new() }
    }

    fn start(&mut self) {
        if self.pids.is_empty() {
            return;
        }
        let pids = self.pids.clone();
        self.thread = Some(std::thread::spawn(move || {
            let t = Instant::now();
            let got: FlagsRead = pids.into_iter().map(|p| (p, memory::vm_flags(p))).collect();
            tracing::info!(smaps_ms = t.elapsed().as_secs_f64() * 1e3, "VmFlags read (on another thread)");
            got
        }));
    }

    /// Set (and check) the VmFlags of `pid`'s mappings `mm`, if they were read apart.
    fn apply(&mut self, pid: i32, mm: &mut Mm) -> Result<(), Error> {
        if !self.pids.contains(&pid) {
            return Ok(());
        }
        if let Some(th) = self.thread.take() {
            let t = Instant::now();
            let got = th
                .join()
                .map_err(|_| Error::Invalid { object: "ferry".into(), what: "the VmFlags reader panicked".into() })?;
            self.got = got.into_iter().collect();
            tracing::info!(waited_ms = t.elapsed().as_secs_f64() * 1e3, "VmFlags of the tree applied");
        }
        let flags = self.got.remove(&pid).unwrap_or_else(|| memory::vm_flags(pid))?;
        // (By end: a stack the injection window grew down since the maps were read keeps it.)
        crate::state::snapshot::apply_flags(pid, pid, mm, flags)
    }
}

/// Before the freeze, for `dump -R`: each process of the tree rooted at `root` tracked and its
/// pages copied while the tree runs (state/tracked.rs), parents first. Empty if one of them
/// cannot be: the dump then takes the fork snapshots.
fn start_tracked(
    root: i32,
    img: &mut ImageWriter,
    pre_dumped: &mut HashMap<i32, tracked::FromParent>,
) -> Vec<tracked::Pre> {
    let mut pres: Vec<tracked::Pre> = Vec::new();
    let mut parents = HashMap::from([(root, 0)]);
    for pid in tree_pids(root) {
        let ppid = parents.get(&pid).copied().unwrap_or(0);
        match tracked::Pre::start(root, pid, ppid, img, pre_dumped.remove(&pid)) {
            Ok(p) => pres.push(p),
            Err(e) => {
                tracing::info!(pid, error = %e, "dump -R: pages not copied ahead: fork snapshots instead");
                return Vec::new();
            }
        }
        for c in children_of(pid).unwrap_or_default() {
            parents.insert(c, pid);
        }
    }
    pres
}

/// Before the freeze: allocate each process's page file about as large as its resident
/// anonymous memory (`RssAnon`), so that writing the pages under the freeze only copies — on
/// tmpfs, allocating the pages is about half of what a write of fresh pages costs, and here it
/// moves out of the time the process is frozen. Too much is given back when the file is done,
/// too little is allocated by the writes as usual. Not for compressed page files, nor inside a
/// pid namespace (the files are named by the namespace's pids).
fn reserve_pages(img: &mut ImageWriter, root: i32) -> Result<(), Error> {
    if memory::page_compression() != 0 {
        return Ok(());
    }
    // At most half the file system's free space in all: memory a tree shares copy-on-write is
    // counted once per process here (and given back as each file is finished), and the writes
    // must still find room.
    let mut budget = ferry_sys::process::free_space(img.dir()).unwrap_or(0) / 2;
    for pid in tree_pids(root) {
        let Ok(text) = procfs::read_string(pid, "status") else { continue };
        let Ok(st) = ferry_proc::parse_status(&text) else { continue };
        if st.ns_pid.len() > 1 {
            return Ok(());
        }
        let len = (st.rss_anon_kib * 1024).min(budget);
        img.reserve(&ferry_image::pages_file(pid), len)?;
        budget -= len;
    }
    Ok(())
}

/// The pages each process of `procs` (whose memory ferry reads through the pids `host`) shares
/// copy-on-write with its parent: stored once, with the parent (state/memory/sharing.rs). None
/// in a post-copy dump: post-copy sends private anonymous memory page by page to each process's
/// uffd after the restore, nothing to premap, so each process gets its own copy (not shared).
fn find_sharing(procs: &mut [Process], host: &[i32]) -> Result<Vec<memory::Sharing>, Error> {
    if crate::postcopy::lazy_dump() {
        return Ok(procs.iter().map(|_| memory::Sharing::default()).collect());
    }
    memory::sharing::find(procs, host)
}

/// [`dump`] with the image going to the writer `make_img` gives (a migration stream), and a
/// last word: once the image is committed, with the tree still frozen, `confirm` is called with
/// the instant of the freeze. If it fails, the tree is resumed as if nothing happened and its
/// error returned; if it succeeds, the tree is killed (or resumed with `leave_running`).
pub fn dump_with(
    opts: &DumpOptions,
    make_img: impl FnOnce() -> Result<ImageWriter, Error>,
    confirm: impl FnOnce(Instant) -> Result<(), Error>,
) -> Result<DumpReport, Error> {
    dump_inner(opts, make_img, confirm, Vec::new())?
        .ok_or_else(|| Error::Invalid { object: format!("pid {}", opts.pid), what: "dump not taken".into() })
}

/// [`dump_with`], with `pres` the pages of the tree's processes copied while it ran
/// (state/tracked.rs; empty: none). `None` only with `pres`: the VmFlags of a mapping changed
/// during the dump, which must be taken again (the tree runs, nothing was committed).
fn dump_inner(
    opts: &DumpOptions,
    make_img: impl FnOnce() -> Result<ImageWriter, Error>,
    confirm: impl FnOnce(Instant) -> Result<(), Error>,
    mut pres: Vec<tracked::Pre>,
) -> Result<Option<DumpReport>, Error> {
    let t0 = pres.first().map_or_else(Instant::now, |p| p.started);
    let root = opts.pid;
    let _span = tracing::info_span!("dump", pid = root).entered();
    // A root that is pid 1 of a namespace below ferry's takes the whole namespace.
    let ns_pid = procfs::read_string(root, "status")
        .ok()
        .and_then(|t| ferry_proc::parse_status(&t).ok())
        .map(|st| st.ns_pid)
        .unwrap_or_default();
    let pidns_root = (ns_pid.len() == 2 && ns_pid.last() == Some(&1)).then_some(root);
    precheck(root, root, pidns_root, &opts.ns)?;
    // (where its network locks are: state/netlock.rs)
    let own_net =
        crate::state::nsfile::ns_link(root, "net") == crate::state::nsfile::ns_link(std::process::id() as i32, "net");
    // (Declared before `frozen`, so dropped after it: a snapshot is reaped by its target, which
    // must be let go first.)
    let mut snaps: Vec<Snapshot> = Vec::new();
    let want_snapshot = opts.leave_running && opts.snapshot && !opts.leave_stopped;
    if want_snapshot {
        crate::state::snapshot::start_guard();
    }
    let t_freeze = Instant::now();
    // Freeze top-down: once a process is stopped it cannot fork, so its children list is final.
    let mut frozen: Vec<Frozen> = Vec::new();
    let mut zombies: Vec<Process> = Vec::new();
    // (pid, its parent)
    let mut queue = std::collections::VecDeque::from([(root, 0)]);
    let mut parents = HashMap::new();
    let freeze_deadline = Instant::now() + opts.freeze_timeout;
    while let Some((pid, parent)) = queue.pop_front() {
        if pid != root {
            // A child that was exiting when its parent's children were listed may be a zombie
            // by now (its parent, frozen, cannot reap it): record it as one.
            if let Some(z) = zombie_record(pid, parent)? {
                zombies.push(z);
                continue;
            }
            precheck(pid, root, pidns_root, &opts.ns)?;
        }
        frozen.push(Frozen::seize(pid, freeze_deadline)?);
        parents.insert(pid, parent);
        let children = children_of(pid)?;
        let pause = crate::inject::fault_pause_after_children().filter(|_| !children.is_empty());
        for c in children {
            match zombie_record(c, pid)? {
                // Exited, not reaped: keep what its parent's waitpid() will see.
                Some(z) => zombies.push(z),
                None => queue.push_back((c, pid)),
            }
        }
        if let Some(pause) = pause {
            std::thread::sleep(pause);
        }
    }
    let fd_table_of = check_unshared(&frozen, &parents)?;
    let t_frozen = Instant::now();
    tracing::info!(processes = frozen.len(), "frozen");
    // (The moment the process was frozen to start tracking it counts too.)
    let mut frozen_before = Duration::ZERO;
    if !pres.is_empty() {
        frozen_before = pres.iter().map(|p| p.frozen_to_track).sum();
        // (A tree that forked or lost a process meanwhile, much written since the last round
        // in one of them, or a tracking that failed to end: the forks.) In the order of
        // `frozen`, as the processes are.
        let mut by_pid: HashMap<i32, tracked::Pre> = pres.drain(..).map(|p| (p.pid, p)).collect();
        pres = frozen.iter().filter_map(|f| by_pid.remove(&f.pid)).collect();
        if pres.len() != frozen.len() || !by_pid.is_empty() {
            pres.clear();
        }
        for p in pres.iter_mut() {
            let ended = p.finish().unwrap_or_else(|e| {
                tracing::warn!(pid = p.pid, error = %e, "dump -R: the tracking failed to end: a fork snapshot instead");
                false
            });
            if !ended {
                tracing::info!(pid = p.pid, "dump -R: fork snapshots for the whole tree");
                pres.clear();
                break;
            }
        }
    }
    let tracked = !pres.is_empty();
    // (From a pre-dump, without `leave_running`: the tree stays frozen, as in a plain dump.)
    let run_again = want_snapshot;
    let mut img = make_img()?;
    let mut procs: Vec<Process> = Vec::new();
    let mut tree = files::TreeFiles::default();
    tree.connections.close = opts.tcp_close;
    tree.connections.established = opts.tcp_established;
    tree.external_files = crate::state::external::file_keys(&opts.external);
    tree.connections.skip_in_flight = opts.skip_in_flight;
    tree.pids = frozen.iter().map(|f| f.pid).collect();
    tree.tty.root = root;
    tree.root_net = crate::state::nsfile::ns_link(root, "net").map_or(0, |l| crate::state::nsfile::inode_of(&l));
    let mut flags_apart = FlagsApart::new(match want_snapshot || tracked {
        true => Vec::new(),
        false => frozen.iter().map(|f| f.pid).collect(),
    });
    // (The processes in a job-control stop: whether their parent collected the stop is asked
    // in the parent's injection window, state/jobstop.rs.)
    let stopped: Vec<i32> = frozen.iter().filter(|f| f.stop_signal != 0).map(|f| f.pid).collect();
    let mut collected = Vec::new();
    for f in frozen.iter_mut() {
        let apart = flags_apart.pids.contains(&f.pid);
        let (mut p, c) = dump_process(
            f,
            &mut img,
            &mut procs,
            &mut tree,
            pidns_root,
            (want_snapshot && !tracked).then_some(&mut snaps),
            (root, &opts.ns, tracked || apart, &stopped),
        )?;
        p.fd_table_of = fd_table_of.get(&f.pid).copied().unwrap_or(0);
        procs.push(p);
        collected.extend(c);
    }
    for p in procs.iter_mut() {
        p.stop_collected = collected.contains(&p.pid);
    }
    // (Every injection window is closed now.)
    flags_apart.start();
    // (A process the snapshot could not be taken of: the whole tree stays frozen.)
    // (Tracked: the pages copied while it ran serve as the snapshot, frozen or not meanwhile.)
    let snapshot = tracked || (want_snapshot && snaps.len() == frozen.len());
    if !snapshot {
        // (VmFlags left for snapshots the dump will not use: read now, still frozen.)
        for s in snaps.iter_mut() {
            if let Some(mm) = procs.iter_mut().find(|p| p.pid == s.target).and_then(|p| p.mm.as_mut()) {
                s.read_flags(mm, false)?;
            }
        }
    }
    // (Before the pipes: a pipe end may be only in flight.)
    crate::state::inflight::collect(&mut procs, &mut img, &mut tree)?;
    files::finish_pipes(&mut procs, &mut tree)?;
    crate::state::epoll::assign_owners(&mut procs)?;
    crate::state::pidfd::finish(&procs, &zombies)?;
    // (in the tree's ipc namespace: the segments' ids are its)
    crate::state::ipcns::in_tree_ipc(root, || crate::state::sysvshm::collect(&mut procs, &mut img))?;
    let ext_ttys = crate::state::external::tty_keys(&opts.external);
    let shell_job = tty::finish(&mut procs, &mut tree.tty, opts.shell_job, opts.orphan_pts_master, &ext_ttys)?;
    crate::state::unix::finish(&mut procs, &mut tree.unix, &crate::state::external::unix_inodes(&opts.external))?;
    // Pids as ferry sees them, to read memory; the image keeps the namespace's own.
    let host_pids: Vec<i32> = frozen.iter().map(|f| f.pid).collect();
    // (Nested namespaces and pid levels: read with ferry's pids, still frozen.)
    // (One process in each network namespace of the tree whose content is recorded: where a
    // veth's peer may be, state/netns.rs.)
    let tree_netns = crate::state::netns::tree_netns(&host_pids, &opts.ns);
    let nested_ns = crate::state::nested_ns::collect(&mut procs, root, &tree_netns, &mut img)?;
    {
        use std::os::unix::fs::MetadataExt;
        let net = crate::procfs::path(root, "ns/net");
        let root_net = std::fs::metadata(&net).ctx(|| format!("cannot stat {}", net.display()))?.ino();
        crate::state::unix::place_in_netns(&mut procs, root_net, &nested_ns)?;
    }
    crate::state::nested_ns::collect_pid_levels(&mut procs, &mut zombies, usize::from(pidns_root.is_some()))?;
    crate::state::nested_ns::collect_time_for_children(&mut procs)?;
    if pidns_root.is_some() {
        to_namespace_ids(&mut procs, &mut zombies)?;
    }
    // Refuse a tree whose sessions and groups restore could not recreate.
    let all: Vec<Process> = procs
        .iter()
        .chain(zombies.iter())
        .map(|p| Process {
            pid: p.pid,
            ppid: p.ppid,
            pgid: p.pgid,
            sid: p.sid,
            zombie: p.zombie,
            child_subreaper: p.child_subreaper,
            ..Default::default()
        })
        .collect();
    let plan = crate::state::session::plan(&all).map_err(|(pid, why)| Error::Unsupported {
        pid,
        what: format!("a session or process group that cannot be recreated ({why})"),
    })?;
    for p in procs.iter().filter(|p| p.fd_table_of != 0) {
        if !plan.created_by_pid(p.pid, p.fd_table_of) {
            return Err(Error::Unsupported {
                pid: p.pid,
                what: format!(
                    "a process sharing its fd table (CLONE_FILES) with pid {}, which restore could not make its creator (sessions)",
                    p.fd_table_of
                ),
            });
        }
    }
    for z in &zombies {
        img.write_process(z)?;
    }
    let mut pages_bytes = 0;
    let mut vmas_n = 0;
    let mut shmem_done = std::collections::HashSet::new();
    // Pages shared copy-on-write with the parent are stored once, with the parent. Found before
    // any page is read: reading can unshare them. (With snapshots, once the tree runs again,
    // between the snapshots: they keep the frames the tree had at the freeze.)
    let mut sharing = match snapshot {
        false => find_sharing(&mut procs, &host_pids)?,
        true => Vec::new(),
    };
    let mut frozen_for = None;
    if snapshot {
        // What the snapshots lack is taken now, then the tree runs again. (Whole: a mapping a
        // snapshot lacks is not compared for sharing either.)
        let (mut seen, mut budget) = (std::collections::HashSet::new(), crate::state::snapshot::shared_hold());
        let t_hold = Instant::now();
        for (p, snap) in procs.iter_mut().zip(snaps.iter_mut()) {
            if let Some(mm) = p.mm.as_mut() {
                snap.hold(mm, &Default::default(), &mut seen, &mut budget)?;
            }
        }
        if tracked {
            // Copy-on-write sharing between the tree's processes, from what the rounds found
            // (no page table read under the freeze), then what each process must copy now.
            for (p, pre) in procs.iter_mut().zip(pres.iter()) {
                if let Some(mm) = p.mm.as_mut() {
                    pre.flags_before(mm)?;
                }
            }
            let t_sharing = Instant::now();
            let found: Vec<Vec<(u64, u64)>> = pres.iter().map(|p| p.found_shared().to_vec()).collect();
            let stable: Vec<Vec<(u64, u64)>> = pres.iter().map(|p| p.kept().to_vec()).collect();
            sharing = memory::sharing::from_rounds(&mut procs, &found, &stable);
            tracing::info!(sharing_ms = t_sharing.elapsed().as_secs_f64() * 1e3, "copy-on-write sharing found");
            for ((p, pre), sharing) in procs.iter_mut().zip(pres.iter_mut()).zip(&sharing) {
                if let Some(mm) = p.mm.as_mut() {
                    pre.hold(mm, sharing, &mut seen, &mut budget)?;
                }
            }
        }
        tracing::info!(hold_ms = t_hold.elapsed().as_secs_f64() * 1e3, "what the snapshots lack taken");
        if run_again {
            drop(std::mem::take(&mut tree.connections.repaired));
            for f in frozen.iter_mut() {
                f.resume()?;
            }
            frozen_for = Some(t_frozen.elapsed() + frozen_before);
            frozen.iter().for_each(Frozen::wait_ran);
            tracing::info!(
                frozen_ms = t_frozen.elapsed().as_secs_f64() * 1e3,
                frozen_to_track_ms = frozen_before.as_secs_f64() * 1e3,
                "running again; pages from the snapshots"
            );
        }
        crate::inject::fault_point_named("kill-after-resume");
        pres.iter_mut().for_each(tracked::Pre::end_tracking);
        for (p, pre) in procs.iter_mut().zip(pres.iter()) {
            if let Some(mm) = p.mm.as_mut() {
                if !pre.check_flags(mm)? {
                    return Ok(None);
                }
            }
        }
        for (p, snap) in procs.iter_mut().zip(snaps.iter_mut()) {
            if let Some(mm) = p.mm.as_mut() {
                snap.read_flags(mm, true)?;
            }
        }
        if !tracked {
            let snap_pids: Vec<i32> = snaps.iter().map(|s| s.pid).collect();
            sharing = find_sharing(&mut procs, &snap_pids)?;
        }
    }
    let t_memdump = Instant::now();
    let snap_of = |i: usize| match (tracked, snapshot) {
        (true, _) => pres.get(i).map(|p| p as &dyn memory::FrozenMemory),
        (false, true) => snaps.get(i).map(|s| s as &dyn memory::FrozenMemory),
        (false, false) => None,
    };
    for (i, ((p, &host), sharing)) in procs.iter_mut().zip(&host_pids).zip(&sharing).enumerate() {
        let mut mm =
            p.mm.take()
                .ok_or_else(|| Error::Invalid { object: format!("pid {}", p.pid), what: "no memory record".into() })?;
        let lazy = crate::postcopy::lazy_dump();
        if lazy {
            flags_apart.apply(host, &mut mm)?; // (`mark` needs them)
        }
        crate::postcopy::mark(host, p, &mut mm)?; // (post-copy migration only)
                                                  // Not stored now: pages a pre-copy round sent, and those post-copy sends later.
        let keep =
            |v: &Vma, regions| crate::postcopy::eager_only(host, v, crate::precopy::without_skipped(host, regions));
        let from = memory::PagesFrom { sharing, snap: snap_of(i), keep: &keep };
        pages_bytes += memory::dump_pages(host, p.pid, &mut mm, &mut img, &mut shmem_done, &from)?;
        vmas_n += mm.vmas.len();
        if !lazy {
            flags_apart.apply(host, &mut mm)?;
        }
        p.mm = Some(mm);
        img.write_process(p)?;
    }
    tracing::debug!(pages_bytes, "pages written");
    let memdump = t_memdump.elapsed();
    let ns_opts = crate::state::namespaces::DumpNs { tree_netns, ..opts.ns.clone() };
    let namespaces = crate::state::namespaces::collect(root, &ns_opts, &mut img)?;
    crate::state::tun::check_queues(root, &procs, namespaces.as_ref().and_then(|n| n.nsx_net.as_ref()))?;
    let inventory = Inventory {
        tool_version: env!("CARGO_PKG_VERSION").into(),
        root_pid: procs[0].pid,
        pidns: pidns_root.is_some(),
        pids: procs.iter().chain(zombies.iter()).map(|p| p.pid).collect(),
        kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().into(),
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        shell_job,
        snapshot: snapshot && run_again,
        namespaces,
        nested_ns,
        ..Default::default()
    };
    // (The older image's files, moved aside, are freed once the tree is killed or running.)
    let t_commit = Instant::now();
    let replaced = img.commit(inventory)?;
    let commit = t_commit.elapsed();
    tracing::info!(pages_bytes, "image committed");
    if let Err(e) = confirm(t_frozen) {
        // (A migration's destination on this machine may have taken the tree's socket files
        // over, and died before it gave them back.)
        crate::state::unix::give_back_taken(&procs);
        return Err(e);
    }
    let mut frozen_for = frozen_for.unwrap_or_else(|| t_frozen.elapsed());

    if snapshot && run_again {
        for s in snaps.drain(..) {
            let (pid, target) = (s.pid, s.target);
            match s.end() {
                Ok(d) => frozen_for += d,
                Err(e) => tracing::warn!(pid = target, snapshot = pid, error = %e, "snapshot not cleaned up"),
            }
        }
    } else if opts.leave_running {
        // Connections leave repair mode before the process can use them again.
        drop(std::mem::take(&mut tree.connections.repaired));
        for f in frozen.iter_mut() {
            f.leave_stopped = opts.leave_stopped;
            f.resume()?;
        }
        frozen.iter().for_each(Frozen::wait_ran);
    } else {
        // Connections in repair mode die with the tree without a FIN or RST.
        tree.connections.repaired.keep = true;
        for f in frozen.iter() {
            ferry_sys::process::kill(f.pid, libc::SIGKILL).ctx(|| format!("pid {}: cannot kill", f.pid))?;
        }
        for f in frozen.iter_mut().rev() {
            f.done = true;
            // Every thread reaped, in the order they end: the leader's exit is only reported
            // once the others are gone, and the last thread of a pid namespace's init waits in
            // the kernel (zap_pid_ns_processes) until its traced siblings, zombies, are reaped:
            // waiting for it first would wait for ever (redis as a container's init).
            let mut left: Vec<i32> = f.threads.iter().map(|t| t.tid).collect();
            while !left.is_empty() {
                let before = left.len();
                left.retain(|&tid| matches!(ptrace::wait(tid, true), Ok(None)));
                if left.len() == before {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
    }
    drop(replaced);
    let fds = procs.iter().map(|p| p.fds.len()).sum();
    let mut locks: Vec<String> = match opts.leave_running || !own_net {
        true => Vec::new(),
        false => procs.iter().flat_map(crate::state::tcp_repair::lock_names).map(String::from).collect(),
    };
    locks.dedup();
    let page = ferry_sys::process::page_size().max(1);
    let pages_from_parent: u64 = pres.iter().map(|p| p.kept_from_parent).sum();
    let pages_scanned = procs
        .iter()
        .filter_map(|p| p.mm.as_ref())
        .flat_map(|mm| mm.vmas.iter())
        .map(|v| v.end.saturating_sub(v.start) / page)
        .sum();
    Ok(Some(DumpReport {
        pages_bytes,
        vmas: vmas_n,
        fds,
        frozen: frozen_for,
        total: t0.elapsed(),
        locks,
        freezing: t_frozen.duration_since(t_freeze),
        memdump,
        commit,
        pages_scanned,
        pages_written: pages_bytes / page,
        pages_from_parent: pages_from_parent / page,
    }))
}
