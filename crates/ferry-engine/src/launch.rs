//! `ferry run`: start a job so that it can be checkpointed and restored anywhere. With
//! `--pidns` the job gets its own pid namespace under a minimal init (`ferry __init`): its
//! processes see small pids of their own, so a restore on another host never clashes with the
//! pids in use there. Dumping that init dumps the whole namespace; restore recreates it.
//!
//! `--netns`, `--timens` and `--mntns` add a network namespace (with only `lo`, up), a time
//! namespace (offsets zero: the job's clocks read as the host's until it moves, after which
//! restore shifts them so that CLOCK_MONOTONIC and CLOCK_BOOTTIME continue) and a mount
//! namespace (every mount private, a fresh tmpfs on /tmp). `ferry run` makes the first two
//! with `unshare` in its own process before it forks the job, which inherits them (`ferry run`
//! itself only waits); the job makes its mount namespace itself, before exec.
//!
//! `--veth HOST[@BRIDGE][:ADDR/PFX]` (with `--netns`) gives the job a link to its node: a veth
//! pair whose inside end `eth0` (up, with address ADDR/PFX if given) is in the job's network
//! namespace and whose outside end HOST (up, a port of BRIDGE if given) is in the caller's. A
//! dump names it with `--external veth[eth0]:HOST[@BRIDGE]` (state/netns.rs).

use crate::error::{Ctx, Error};
use ferry_sys::process::{clone3_new_pidns, Fork};
use ferry_sys::{ptrace, raw};
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// What `ferry run` starts and how.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub cmd: Vec<OsString>,
    pub pidns: bool,
    /// A new network namespace (lo up), a new time namespace, a new mount namespace (private,
    /// with a tmpfs on /tmp).
    pub netns: bool,
    pub timens: bool,
    pub mntns: bool,
    /// A new user namespace with these maps (made by the job itself, after its mount namespace:
    /// the namespaces `ferry run` makes are owned by the caller's user namespace).
    pub userns: Option<UserMaps>,
    /// `--veth HOST[@BRIDGE][:ADDR/PFX]`: a link between the job's network namespace (`eth0`)
    /// and the caller's (HOST).
    pub veth: Option<String>,
    /// Print the pid and return at once instead of waiting for the job.
    pub detach: bool,
    pub pidfile: Option<PathBuf>,
}

/// The uid and gid maps of a `ferry run --userns` job: (inside, outside, count) each.
#[derive(Debug, Clone, Default)]
pub struct UserMaps {
    pub uid: Vec<(u32, u32, u32)>,
    pub gid: Vec<(u32, u32, u32)>,
}

impl UserMaps {
    /// Without maps given: every id is itself inside (root is root, with a full range).
    pub fn or_identity(mut self) -> UserMaps {
        for m in [&mut self.uid, &mut self.gid] {
            if m.is_empty() {
                m.push((0, 0, u32::MAX));
            }
        }
        self
    }
}

/// Start the job; returns (its pid as ferry sees it, its exit status if waited for).
pub fn run(opts: &RunOptions) -> Result<(i32, Option<i32>), Error> {
    let prog =
        opts.cmd.first().ok_or_else(|| Error::Invalid { object: "ferry run".into(), what: "no command".into() })?;
    // The job must own all of its state: fds ferry inherited by accident (a shell's or a test
    // runner's pipes) would be shared with processes outside a later dump.
    let _ = raw::close_range(3, u32::MAX);
    let stdin = || if opts.detach { Stdio::null() } else { Stdio::inherit() };
    // With --pidns the command runs under ferry's init, pid 1 of a new namespace.
    let mut cmd = if opts.pidns {
        let init = std::fs::read_link("/proc/self/exe").ctx(|| "cannot find ferry's own executable".into())?;
        // Executed through the link, not its path: with --mntns the job's private /tmp would
        // hide a ferry that lives under /tmp (a checkout, a CI clone). Its name stays the path.
        let mut c = Command::new("/proc/self/exe");
        std::os::unix::process::CommandExt::arg0(&mut c, &init);
        c.arg("__init").arg("--").args(&opts.cmd);
        c
    } else {
        let mut c = Command::new(prog);
        c.args(&opts.cmd[1..]);
        c
    };
    cmd.stdin(stdin());
    enter_new_namespaces(opts)?;
    // With --userns: the child reports once in its user namespace, and waits for its maps.
    let sync = match opts.userns {
        Some(_) => Some((
            ferry_sys::process::pipe2(libc::O_CLOEXEC).ctx(|| "cannot create a pipe".into())?,
            ferry_sys::process::pipe2(libc::O_CLOEXEC).ctx(|| "cannot create a pipe".into())?,
        )),
        None => None,
    };
    let forked = if opts.pidns { clone3_new_pidns() } else { ferry_sys::process::fork() };
    let pid = match forked.ctx(|| "cannot fork (clone3)".into())? {
        Fork::Child => {
            // A session of its own: no controlling terminal (which a dump would refuse without
            // --shell-job) and no group shared with the shell.
            let _ = raw::setsid();
            if opts.mntns {
                if let Err(e) = enter_new_mntns() {
                    eprintln!("ferry: {e}");
                    raw::exit_now(127)
                }
            }
            if let Some(((_, rep), (go, _))) = &sync {
                if let Err(e) = enter_new_userns(rep.as_raw_fd(), go.as_raw_fd()) {
                    eprintln!("ferry: {e}");
                    raw::exit_now(127)
                }
            }
            let e = cmd.exec();
            eprintln!("ferry: cannot start {}: {e}", prog.to_string_lossy());
            raw::exit_now(127)
        }
        Fork::Parent(pid) => pid,
    };
    if let (Some(((rep, rep_child), (go_child, go))), Some(maps)) = (sync, &opts.userns) {
        // (the child's ends closed here: a job that fails before it reports is seen to end)
        drop((rep_child, go_child));
        write_maps(pid, maps, rep, go)?;
    }
    if let Some(pf) = &opts.pidfile {
        crate::restore::write_pidfile(pf, pid)?;
    }
    if opts.detach {
        return Ok((pid, None));
    }
    Ok((pid, Some(crate::restore::wait_exit(pid)?)))
}

/// Put ferry run's own process into the namespaces the job is to have; the job inherits them.
fn enter_new_namespaces(opts: &RunOptions) -> Result<(), Error> {
    use ferry_sys::nsctl;
    let fail = |what: &str| format!("cannot create the job's {what} namespace");
    if opts.timens {
        // Only future children enter it; its offsets stay zero.
        nsctl::unshare(nsctl::CLONE_NEWTIME).ctx(|| fail("time"))?;
    }
    if opts.netns {
        let outer =
            std::fs::File::open("/proc/thread-self/ns/net").ctx(|| "cannot open ferry's network namespace".into())?;
        nsctl::unshare(libc::CLONE_NEWNET).ctx(|| fail("network"))?;
        nsctl::link_set_up("lo", true).ctx(|| "cannot bring up lo in the job's network namespace".into())?;
        if let Some(spec) = &opts.veth {
            make_veth(spec, &outer)?;
        }
    } else if opts.veth.is_some() {
        return Err(Error::Invalid { object: "ferry run --veth".into(), what: "needs --netns".into() });
    }
    Ok(())
}

/// The name of the inside end of `--veth`.
pub const VETH_INSIDE: &str = "eth0";

/// `--veth HOST[@BRIDGE][:ADDR/PFX]`, from the job's new network namespace; `outer` is the
/// caller's.
fn make_veth(spec: &str, outer: &std::fs::File) -> Result<(), Error> {
    use std::os::fd::{AsFd, AsRawFd};
    let (dev, addr) = match spec.split_once(':') {
        Some((d, a)) => (d, Some(a)),
        None => (spec, None),
    };
    let (host, bridge) = match dev.split_once('@') {
        Some((h, b)) => (h, Some(b)),
        None => (dev, None),
    };
    let bad = |what: &str| Error::Invalid { object: format!("ferry run --veth {spec}"), what: what.into() };
    if host.is_empty() || bridge.is_some_and(str::is_empty) || addr.is_some_and(|a| !a.contains('/')) {
        return Err(bad("not HOST[@BRIDGE][:ADDR/PFX]"));
    }
    let ip = |args: &[&str]| -> Result<(), Error> {
        let out = Command::new("ip")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ctx(|| "cannot run ip (install iproute2)".into())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(bad(&format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
        }
    };
    // (`ip` opens the caller's namespace by path: this process's fd, through /proc)
    let outer_path = format!("/proc/{}/fd/{}", std::process::id(), outer.as_raw_fd());
    ip(&["link", "add", VETH_INSIDE, "type", "veth", "peer", "name", host, "netns", &outer_path])?;
    let mut set = vec!["link", "set", "dev", host];
    if let Some(b) = bridge {
        set.extend(["master", b]);
    }
    set.push("up");
    // (in the caller's namespace, and back: `ferry run` is single-threaded)
    let inner =
        std::fs::File::open("/proc/thread-self/ns/net").ctx(|| "cannot open the job's network namespace".into())?;
    ferry_sys::ns::setns(outer.as_fd(), libc::CLONE_NEWNET)
        .ctx(|| "cannot go back to ferry's network namespace".into())?;
    let r = ip(&set);
    ferry_sys::ns::setns(inner.as_fd(), libc::CLONE_NEWNET)
        .ctx(|| "cannot enter the job's network namespace".into())?;
    r?;
    ip(&["link", "set", "dev", VETH_INSIDE, "up"])?;
    if let Some(a) = addr {
        ip(&["addr", "add", a, "dev", VETH_INSIDE])?;
    }
    Ok(())
}

/// In the forked job (before exec): its own mount namespace, every mount private, a fresh
/// tmpfs on /tmp. (Not in ferry run's process: the pidfile is written in the caller's /tmp.)
fn enter_new_mntns() -> Result<(), String> {
    use ferry_sys::nsctl;
    nsctl::unshare(libc::CLONE_NEWNS).map_err(|e| format!("cannot create the job's mount namespace: {e}"))?;
    nsctl::mount(c"none", c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)
        .map_err(|e| format!("cannot make the job's mounts private: {e}"))?;
    nsctl::mount(c"tmpfs", c"/tmp", Some(c"tmpfs"), 0, Some(c"mode=1777"))
        .map_err(|e| format!("cannot mount the job's private /tmp: {e}"))
}

/// In the forked job: a user namespace of its own, in which it becomes root once `ferry run`
/// wrote its maps.
fn enter_new_userns(rep: i32, go: i32) -> Result<(), String> {
    ferry_sys::ns::unshare(libc::CLONE_NEWUSER).map_err(|e| format!("cannot create the job's user namespace: {e}"))?;
    raw::write_all(rep, b"u").map_err(|e| format!("user namespace: {e}"))?;
    let mut b = [0u8; 1];
    if !matches!(raw::read_once(go, &mut b), Ok(1)) {
        return Err("the job's user namespace got no maps".into());
    }
    ferry_sys::ns::become_root_inside().map_err(|e| format!("cannot become root in the job's user namespace: {e}"))
}

/// In `ferry run`: write the job's maps once it is in its user namespace.
fn write_maps(pid: i32, maps: &UserMaps, rep: OwnedFd, go: OwnedFd) -> Result<(), Error> {
    let mut b = [0u8; 1];
    if !matches!(raw::read_once(rep.as_raw_fd(), &mut b), Ok(1)) {
        return Err(Error::Invalid { object: format!("job {pid}"), what: "did not make its user namespace".into() });
    }
    for (file, m) in [("uid_map", &maps.uid), ("gid_map", &maps.gid)] {
        let text: String = m.iter().map(|(i, o, n)| format!("{i} {o} {n}\n")).collect();
        let p = format!("/proc/{pid}/{file}");
        std::fs::write(&p, &text).ctx(|| format!("cannot write {text:?} to {p}"))?;
    }
    raw::write_all(go.as_raw_fd(), b"g").ctx(|| format!("job {pid}: user namespace"))
}

const FORWARDED: [i32; 6] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2];

/// The namespace's init: starts the job as pid 2, forwards termination and user signals to it,
/// reaps every orphan, and exits with the job's status when it ends (which ends the namespace).
pub fn init(cmd: &[OsString]) -> ! {
    let _ = raw::setsid();
    let mut mask = 1u64 << (libc::SIGCHLD - 1);
    for s in FORWARDED {
        mask |= 1 << (s - 1);
    }
    // Start the job before blocking signals: it must not inherit init's mask. A job that
    // ends before the mask is set is found by the first sweep below.
    let Some(prog) = cmd.first() else { raw::exit_now(127) };
    let job = match Command::new(prog).args(&cmd[1..]).spawn() {
        Ok(c) => c.id() as i32,
        Err(e) => {
            eprintln!("ferry init: cannot start {}: {e}", prog.to_string_lossy());
            raw::exit_now(127)
        }
    };
    let _ = raw::set_sigmask_self(mask);
    let mut sig = libc::SIGCHLD;
    loop {
        if sig != libc::SIGCHLD && sig != 0 {
            let _ = ferry_sys::process::kill(job, sig);
        }
        while let Ok(Some((pid, st))) = ptrace::wait(-1, true) {
            if pid != job {
                continue;
            }
            match st {
                ptrace::WaitStatus::Exited(c) => raw::exit_now(c),
                ptrace::WaitStatus::Signaled(s) => raw::exit_now(128 + s),
                _ => {}
            }
        }
        sig = raw::sigwait(mask).unwrap_or(0);
    }
}
