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
use crate::state::memory::{Trampoline, TRAMPOLINE_PAGES};
use crate::state::{cpu, creds, epoll, files, memory, pipes, rseq, signals, task, timers};
use ferry_image::{ImageReader, Process, PAGE_SIZE};
use ferry_sys::consts::{nr, PTRACE_O_EXITKILL, PTRACE_O_TRACESYSGOOD};
use ferry_sys::process::{clone3_with_pid, Fork, Mmap};
use ferry_sys::{ptrace, raw};
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
}

/// A restored, running process.
#[derive(Debug, Clone)]
pub struct Restored {
    pub pid: i32,
    pub verify: Duration,
    pub total: Duration,
}

/// Verify an image without restoring it: inventory, every file's size and checksum, every
/// record's header. Returns the reader and the root process record.
pub fn open_verified(dir: &Path) -> Result<(ImageReader, Process), Error> {
    let img = ImageReader::open(dir)?;
    img.verify_all()?;
    let root = img.inventory().root_pid;
    let p = img.read_process(root)?;
    let pages = ferry_image::pages_file(root);
    let mut head = vec![0u8; PAGE_SIZE as usize];
    let mut f = std::fs::File::open(img.path(&pages)).ctx(|| format!("cannot open {}", img.path(&pages).display()))?;
    let n = f.read(&mut head).ctx(|| format!("cannot read {}", img.path(&pages).display()))?;
    ferry_image::check_pages_header(&img.path(&pages).display().to_string(), &head[..n])?;
    if p.threads.first().map(|t| t.tid) != Some(p.pid) {
        return Err(Error::Invalid {
            object: format!("pid {}", p.pid),
            what: "the image's first thread is not the main thread".into(),
        });
    }
    Ok((img, p))
}

fn pid_state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rfind(')')?;
    s[after + 1..].trim_start().chars().next()
}

fn check_pid_free(pid: i32) -> Result<(), Error> {
    match pid_state(pid) {
        None => Ok(()),
        Some('Z') | Some('X') => Err(Error::PidZombie { pid }),
        Some(_) => Err(Error::PidTaken { pid }),
    }
}

fn max_own_fd() -> i32 {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).max().unwrap_or(2))
        .unwrap_or(1024)
}

/// Everything opened in ferry for one process before it is forked.
struct Prepared {
    base: i32,
    files: files::Prepared,
    mem: memory::Prepared,
    cwd: OwnedFd,
    _pipes: pipes::Prepared,
}

fn prepare(img: &ImageReader, p: &Process) -> Result<Prepared, Error> {
    let max_target = p.fds.iter().map(|f| f.fd).max().unwrap_or(2);
    let base = max_target.max(max_own_fd()).max(2) + 16;
    let pipes = pipes::prepare(p.pid, &p.pipes)?;
    let files = files::prepare(p, img, &pipes, base)?;
    let mem = memory::prepare(p, img, base)?;
    let cwd = std::fs::File::open(&p.cwd).ctx(|| format!("pid {}: cannot open cwd {}", p.pid, p.cwd))?;
    let cwd = raw::dup_above(cwd.as_fd(), base).ctx(|| format!("pid {}: cwd", p.pid))?;
    Ok(Prepared { base, files, mem, cwd, _pipes: pipes })
}

/// Runs in the forked child; never returns. Errors go to `err_fd` as text.
fn child_main(p: &Process, prep: &Prepared, tr: &Trampoline, err_fd: i32) -> ! {
    let r = (|| -> Result<(), String> {
        raw::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as u64, 0, 0, 0).map_err(|e| format!("pdeathsig: {e}"))?;
        raw::set_sigmask_self(!0).map_err(|e| format!("sigprocmask: {e}"))?;
        files::apply_in_child(p, &prep.files.numbers, prep.base)?;
        epoll::apply_in_child(p)?;
        task::apply_in_child(p, prep.cwd.as_fd())?;
        signals::apply_in_child(p)?;
        let len = TRAMPOLINE_PAGES * PAGE_SIZE;
        raw::map_trampoline(tr.code, len, &[0x0f, 0x05, 0xcc])
            .map_err(|e| format!("cannot map the trampoline at {:#x}: {e}", tr.code))?;
        ptrace::traceme().map_err(|e| format!("PTRACE_TRACEME: {e}"))?;
        raw::raise_raw(libc::SIGSTOP).map_err(|e| format!("SIGSTOP: {e}"))?;
        Err("resumed without being restored".into())
    })();
    if let Err(msg) = r {
        let _ = raw::write_all(err_fd, msg.as_bytes());
    }
    raw::exit_now(1)
}

/// A forked child that is killed unless released.
struct Child {
    pid: i32,
    released: bool,
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.released {
            let _ = ferry_sys::process::kill(self.pid, libc::SIGKILL);
            let _ = ptrace::wait(self.pid, false);
        }
    }
}

fn write_pidfile(path: &Path, pid: i32) -> Result<(), Error> {
    let tmp = path.with_extension("ferry-tmp");
    let mut f = std::fs::File::create(&tmp).ctx(|| format!("cannot create {}", tmp.display()))?;
    writeln!(f, "{pid}").ctx(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).ctx(|| format!("cannot rename {} into place", path.display()))
}

/// Restore the image in `opts.dir`. The process runs when this returns; ferry is its parent.
pub fn restore(opts: &RestoreOptions) -> Result<Restored, Error> {
    let t0 = Instant::now();
    let (img, p) = open_verified(&opts.dir)?;
    let verify = t0.elapsed();
    let pid = p.pid;
    let _span = tracing::info_span!("restore", pid).entered();
    tracing::info!(?verify, "image verified");
    let mm =
        p.mm.as_ref()
            .ok_or_else(|| Error::Invalid { object: format!("pid {pid}"), what: "no memory record".into() })?;
    if mm.vdso_size != 0 {
        let (crc, size) = memory::own_vdso()?;
        if (crc, size) != (mm.vdso_crc32, mm.vdso_size) {
            return Err(Error::Invalid {
                object: format!("pid {pid}"),
                what: format!(
                    "the image was dumped on a kernel with a different vDSO ({} bytes, crc {:#x}; here {} bytes, crc {:#x}); restoring across kernels is not supported yet",
                    mm.vdso_size, mm.vdso_crc32, size, crc
                ),
            });
        }
    }
    check_pid_free(pid)?;
    let prep = prepare(&img, &p)?;
    tracing::debug!(elapsed = ?t0.elapsed(), "files prepared");
    let tr = memory::choose_trampoline(mm)?;
    let pages_path = img.path(&ferry_image::pages_file(pid));
    let pages_file = std::fs::File::open(&pages_path).ctx(|| format!("cannot open {}", pages_path.display()))?;
    let pages_len = img.file_size(&ferry_image::pages_file(pid)).unwrap_or(0) as usize;
    let pages =
        Mmap::map_readonly(pages_file.as_fd(), pages_len).ctx(|| format!("cannot map {}", pages_path.display()))?;
    pages.advise_sequential();
    let (err_r, err_w) = ferry_sys::process::pipe2(libc::O_CLOEXEC).ctx(|| "cannot create a pipe".into())?;
    let err_w = raw::dup_above(err_w.as_fd(), prep.base).ctx(|| "cannot move a pipe".into())?;

    let child = match clone3_with_pid(pid) {
        Ok(Fork::Child) => child_main(&p, &prep, &tr, err_w.as_raw_fd()),
        Ok(Fork::Parent(c)) => Child { pid: c, released: false },
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            return Err(check_pid_free(pid).err().unwrap_or(Error::PidTaken { pid }))
        }
        Err(e) => {
            return Err(Error::Sys { object: format!("cannot create process {pid} (clone3 with set_tid)"), source: e })
        }
    };
    drop(err_w);
    let mem_numbers = memory::Prepared { vma_fd: prep.mem.vma_fd.clone(), exe_fd: prep.mem.exe_fd, owned: Vec::new() };
    drop(prep);
    if child.pid != pid {
        return Err(Error::Invalid {
            object: format!("pid {pid}"),
            what: format!("the kernel gave pid {}", child.pid),
        });
    }
    if wait_stopped(pid).is_err() {
        let mut msg = String::new();
        let _ = std::fs::File::from(err_r).read_to_string(&mut msg);
        return Err(Error::Invalid { object: format!("pid {pid}"), what: format!("restore child failed: {msg}") });
    }
    tracing::debug!(elapsed = ?t0.elapsed(), "child stopped");
    ptrace::set_options(pid, PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL)
        .ctx(|| format!("pid {pid}: PTRACE_SETOPTIONS"))?;
    let t_tracer = Instant::now();
    let mut child = child;
    let base_regs = ptrace::get_regs(pid).ctx(|| format!("pid {pid}: cannot read registers"))?;
    let inj = Injector::new(pid, tr.code, base_regs);
    let t = &p.threads[0];
    cpu::check_compatible(pid, pid, &t.xstate)?;
    rseq::unregister_inherited(&inj)?;
    memory::restore(&inj, &tr, &p, &mem_numbers, pages.as_slice())?;
    drop(pages);
    tracing::debug!(elapsed = ?t0.elapsed(), "memory restored");
    let max_target = p.fds.iter().map(|f| f.fd).max().unwrap_or(2);
    inj.call(nr::CLOSE_RANGE, &[(max_target + 1) as u64, u32::MAX as u64, 0])
        .ctx(|| format!("pid {pid}: cannot close ferry's helper fds"))?;
    let scratch = tr.data;
    let threads = restore_threads(&inj, &tr, &p)?;
    rseq::restore(&inj, t)?;
    signals::restore_thread(&inj, scratch, &p, t, true)?;
    timers::create_posix(&inj, scratch, &p)?;
    task::restore_rlimits(pid, &p)?;
    task::restore_sched(pid, &p)?;
    if let Some(c) = &p.creds {
        let now = crate::procfs::read_string(pid, "status")?;
        let now = crate::procfs::parse(pid, "status", ferry_proc::parse_status(&now))?;
        creds::restore(&inj, scratch, c, &now)?;
    }
    task::restore_late(&inj, &p)?;
    timers::arm(&inj, scratch, &p)?;
    inj.call(nr::MUNMAP, &[tr.code, TRAMPOLINE_PAGES * PAGE_SIZE])
        .ctx(|| format!("pid {pid}: cannot unmap the trampoline"))?;
    for (tid, th, base) in &threads {
        cpu::restore(*tid, th, base)?;
        ptrace::set_sigmask(*tid, th.sigmask).ctx(|| format!("pid {pid} thread {tid}: cannot set the signal mask"))?;
    }
    cpu::restore(pid, t, &base_regs)?;
    ptrace::set_sigmask(pid, t.sigmask).ctx(|| format!("pid {pid}: cannot set the signal mask"))?;
    for (tid, _, _) in &threads {
        ptrace::detach(*tid, 0).ctx(|| format!("pid {pid} thread {tid}: cannot release"))?;
    }
    ptrace::detach(pid, 0).ctx(|| format!("pid {pid}: cannot release"))?;
    child.released = true;
    tracing::info!(tracer = ?t_tracer.elapsed(), total = ?t0.elapsed(), "released");
    if let Some(pf) = &opts.pidfile {
        write_pidfile(pf, pid)?;
    }
    Ok(Restored { pid, verify, total: t0.elapsed() })
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
    let pid = p.pid;
    let mut out = Vec::new();
    if p.threads.len() < 2 {
        return Ok(out);
    }
    ptrace::set_options(pid, PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL | ferry_sys::consts::PTRACE_O_TRACECLONE)
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
        let mut args = Vec::with_capacity(96);
        for w in [flags, 0, 0, 0, 0, 0, 0, 0, scratch + 88, 1, 0] {
            args.extend_from_slice(&w.to_le_bytes());
        }
        args.extend_from_slice(&(tid as i64).to_le_bytes());
        ferry_sys::process::vm_write(pid, scratch, &args).ctx(|| format!("pid {pid}: cannot write clone_args"))?;
        let got = inj
            .call(nr::CLONE3, &[scratch, 88])
            .ctx(|| format!("pid {pid}: cannot create thread {tid} (clone3 with set_tid)"))?;
        if got != tid as u64 {
            return Err(Error::Invalid {
                object: format!("pid {pid}"),
                what: format!("thread {tid} was created as {got}"),
            });
        }
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
        out.push((tid, t.clone(), base));
    }
    Ok(out)
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
