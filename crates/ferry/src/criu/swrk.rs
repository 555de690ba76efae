//! `ferry swrk FD` (and `criu swrk FD`): CRIU's RPC service over an inherited SOCK_SEQPACKET
//! socket, the way runc, Podman (through runc), crun and go-criu start and drive CRIU.
//!
//! One request is read, answered, and the server exits (with `keep_open` it reads the next);
//! the socket closed by the client ends it too. A DUMP or RESTORE may be interleaved with
//! NOTIFY messages (CRIU's "action scripts") that the client must acknowledge. Every request
//! ferry cannot serve, and every option of `criu_opts` that ferry cannot honour, is answered
//! with `success = false` and a `cr_errmsg` naming it, never ignored: see [`check_opts`] and
//! docs/criu-compat.md.
//!
//! Fds in the request: `images_dir_fd` and `work_dir_fd` are numbers in the CLIENT's fd table
//! (reached through /proc/CLIENT/fd/N, the client being the socket's peer), `inherit_fd` and
//! `status_fd` are numbers in the server's own table, as in CRIU.

use super::rpc::*;
use super::stats;
use super::{CRIU_MAJOR, CRIU_MINOR};
use anyhow::{anyhow, bail, Context, Result};
use ferry_engine::state::external::{External, InheritFd as EngineInheritFd};
use ferry_engine::state::namespaces::DumpNs;
use prost::Message;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

/// The largest request accepted (CRIU's requests are a few hundred bytes).
const MAX_MSG: usize = 1 << 20;

/// Serve the CRIU RPC on inherited fd `fd`; returns the exit code.
pub fn serve(fd: i32) -> Result<i32> {
    let sock = ferry_sys::unixsock::adopt_inherited(fd, libc::SOCK_SEQPACKET)
        .with_context(|| format!("swrk: fd {fd} is not a unix SOCK_SEQPACKET socket"))?;
    let peer = ferry_sys::unixsock::peer_pid(sock.as_fd()).context("swrk: cannot read the client's pid")?;
    let conn = Conn { sock: UnixDatagram::from(sock), peer };
    logs::init();
    loop {
        let Some(bytes) = conn.recv().context("swrk: cannot read a request")? else {
            return Ok(0);
        };
        let req = match CriuReq::decode(bytes.as_slice()) {
            Ok(r) => r,
            Err(e) => {
                let msg = format!("cannot decode the request ({} bytes) as a criu_req: {e}", bytes.len());
                conn.send(&error_resp(CriuReqType::Empty as i32, &msg, None))?;
                return Ok(1);
            }
        };
        let keep_open = req.keep_open.unwrap_or(false);
        let resp = handle(&conn, req);
        let ok = resp.success;
        if let (false, Some(msg)) = (ok, resp.cr_errmsg.as_deref()) {
            logs::error(msg);
        }
        // A client that went away meanwhile has nobody to read the answer: not an error of ours.
        let sent = conn.send(&resp);
        logs::close();
        sent?;
        if !keep_open {
            return Ok(if ok { 0 } else { 1 });
        }
    }
}

/// The connection to the client.
struct Conn {
    sock: UnixDatagram,
    /// The pid that made the socket pair: the process whose fd table `images_dir_fd` is in.
    peer: i32,
}

impl Conn {
    /// The next message, or None when the client closed its end.
    fn recv(&self) -> Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; MAX_MSG + 1];
        let n = self.sock.recv(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        if n > MAX_MSG {
            bail!("a request larger than {MAX_MSG} bytes");
        }
        buf.truncate(n);
        Ok(Some(buf))
    }

    fn send(&self, resp: &CriuResp) -> Result<()> {
        self.sock.send(&resp.encode_to_vec()).context("swrk: cannot send the response")?;
        Ok(())
    }

    /// Send a notification ("post-dump" ...) and wait for the client's acknowledgement.
    fn notify(&self, script: &str, pid: Option<i32>) -> Result<()> {
        self.notify_with(script, pid, None)
    }

    /// [`Conn::notify`], with `fd` attached (SCM_RIGHTS) when given: CRIU's "orphan-pts-master"
    /// carries the new master of a container's console this way.
    fn notify_with(&self, script: &str, pid: Option<i32>, fd: Option<std::os::fd::BorrowedFd<'_>>) -> Result<()> {
        tracing::info!(script, ?pid, with_fd = fd.is_some(), "notify");
        let resp = CriuResp {
            r#type: CriuReqType::Notify as i32,
            success: true,
            notify: Some(CriuNotify { script: Some(script.into()), pid }),
            ..Default::default()
        };
        match fd {
            Some(fd) => {
                ferry_sys::unixsock::send_with(self.sock.as_fd(), &resp.encode_to_vec(), None, &[fd], None)
                    .with_context(|| format!("notification {script}: cannot send it with its fd"))?;
            }
            None => self.send(&resp)?,
        }
        let bytes = self
            .recv()
            .with_context(|| format!("notification {script}: cannot read the client's answer"))?
            .ok_or_else(|| anyhow!("notification {script}: the client closed the connection"))?;
        let ack = CriuReq::decode(bytes.as_slice())
            .with_context(|| format!("notification {script}: the client's answer is not a criu_req"))?;
        if ack.r#type != CriuReqType::Notify as i32 {
            bail!("notification {script}: the client answered with request type {} instead of NOTIFY", ack.r#type);
        }
        if !ack.notify_success.unwrap_or(false) {
            bail!("notification {script}: the client reported a failure");
        }
        Ok(())
    }
}

fn error_resp(ty: i32, msg: &str, errno: Option<i32>) -> CriuResp {
    CriuResp { r#type: ty, success: false, cr_errmsg: Some(msg.to_string()), cr_errno: errno, ..Default::default() }
}

/// The errno at the bottom of an error chain, if any (CRIU's `cr_errno`).
fn errno_of(e: &anyhow::Error) -> Option<i32> {
    e.chain().find_map(|c| c.downcast_ref::<std::io::Error>().and_then(|io| io.raw_os_error()))
}

fn handle(conn: &Conn, req: CriuReq) -> CriuResp {
    let ty = req.r#type;
    let Ok(kind) = CriuReqType::try_from(ty) else {
        return error_resp(CriuReqType::Empty as i32, &format!("unknown request type {ty}"), None);
    };
    let r: Result<CriuResp> = match kind {
        CriuReqType::Version => Ok(CriuResp {
            r#type: ty,
            success: true,
            version: Some(CriuVersion {
                major_number: CRIU_MAJOR,
                minor_number: CRIU_MINOR,
                // (No gitid: go-criu counts a git build as the next minor version.)
                name: Some(format!("ferry {}", env!("CARGO_PKG_VERSION"))),
                ..Default::default()
            }),
            ..Default::default()
        }),
        CriuReqType::Check => {
            let missing: Vec<String> = ferry_engine::check::run()
                .into_iter()
                .filter(|f| f.required && !f.present)
                .map(|f| format!("{}: {}", f.name, f.detail))
                .collect();
            if missing.is_empty() {
                Ok(CriuResp { r#type: ty, success: true, ..Default::default() })
            } else {
                Err(anyhow!("dump and restore cannot work here: missing {}", missing.join("; ")))
            }
        }
        CriuReqType::FeatureCheck => {
            // Answered per feature asked: memory tracking (pre-dumps) when userfaultfd's async
            // write-protection is there; no lazy-pages daemon, no pidfd store.
            let asked = req.features.unwrap_or_default();
            let no = |f: Option<bool>| f.map(|_| false);
            Ok(CriuResp {
                r#type: ty,
                success: true,
                features: Some(CriuFeatures {
                    mem_track: asked.mem_track.map(|_| ferry_engine::precopy::can_track()),
                    lazy_pages: no(asked.lazy_pages),
                    pidfd_store: no(asked.pidfd_store),
                }),
                ..Default::default()
            })
        }
        CriuReqType::Dump => with_opts(conn, req.opts, "dump.log", |o, dirs| dump(conn, o, dirs)),
        CriuReqType::Restore => with_opts(conn, req.opts, "restore.log", |o, dirs| restore(conn, o, dirs)),
        CriuReqType::PreDump | CriuReqType::SinglePreDump => {
            with_opts(conn, req.opts, "dump.log", |o, dirs| pre_dump(o, dirs, ty))
        }
        CriuReqType::PageServer | CriuReqType::PageServerChld => {
            Err(anyhow!("PAGE_SERVER is not supported: `ferry serve` and `ferry migrate` move images between nodes"))
        }
        CriuReqType::CpuinfoDump | CriuReqType::CpuinfoCheck => Err(anyhow!(
            "CPUINFO_DUMP/CPUINFO_CHECK are not supported: a restore checks the vDSO and the XSAVE layout itself"
        )),
        CriuReqType::WaitPid => Err(anyhow!("WAIT_PID is not supported")),
        CriuReqType::Notify => Err(anyhow!("NOTIFY without a pending notification")),
        CriuReqType::Empty => Err(anyhow!("EMPTY request")),
    };
    match r {
        Ok(resp) => resp,
        Err(e) => error_resp(ty, &format!("{e:#}"), errno_of(&e)),
    }
}

/// The directories of a DUMP or RESTORE request.
struct Dirs {
    images: PathBuf,
    /// Where the log and the statistics go (`work_dir_fd`, else the images directory).
    work: PathBuf,
}

/// Open the request's directories and log, check its options, then run `f`.
fn with_opts(
    _conn: &Conn,
    opts: Option<CriuOpts>,
    default_log: &str,
    f: impl FnOnce(&CriuOpts, &Dirs) -> Result<CriuResp>,
) -> Result<CriuResp> {
    let o = opts.ok_or_else(|| anyhow!("the request has no opts"))?;
    let peer = _conn.peer;
    let images = client_dir(peer, o.images_dir_fd).context("images_dir_fd")?;
    let work = match o.work_dir_fd {
        Some(fd) => client_dir(peer, fd).context("work_dir_fd")?,
        None => images.clone(),
    };
    let log_name = o.log_file.clone().unwrap_or_else(|| default_log.to_string());
    if log_name.contains('/') || log_name.is_empty() || log_name == "." || log_name == ".." {
        bail!("log_file {log_name:?}: a file name in the work directory is expected (no subdirectories)");
    }
    let log = work.join(&log_name);
    logs::open(&log, o.log_level.unwrap_or(2)).with_context(|| format!("log_file {}", log.display()))?;
    tracing::info!(images = %images.display(), work = %work.display(), "ferry {} serving CRIU's RPC", env!("CARGO_PKG_VERSION"));
    tracing::debug!(opts = ?o, "request options");
    check_opts(&o)?;
    f(&o, &Dirs { images, work })
}

/// The path of directory fd `fd` of process `pid`, checked to be that very directory.
fn client_dir(pid: i32, fd: i32) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let link = PathBuf::from(format!("/proc/{pid}/fd/{fd}"));
    let target = std::fs::read_link(&link).with_context(|| format!("fd {fd} of the client (pid {pid}) is not open"))?;
    let via_fd = std::fs::metadata(&link).with_context(|| format!("cannot stat {}", link.display()))?;
    if !via_fd.is_dir() {
        bail!("fd {fd} of the client (pid {pid}) is not a directory");
    }
    let same = std::fs::metadata(&target).is_ok_and(|m| m.dev() == via_fd.dev() && m.ino() == via_fd.ino());
    if !target.is_absolute() || !same {
        bail!("fd {fd} of the client (pid {pid}): directory {} is not reachable by its path here", target.display());
    }
    Ok(target)
}

/// Refuse, by name, every option ferry cannot honour. Options whose meaning is ferry's default
/// (or that only a restore or a dump uses) are accepted; see docs/criu-compat.md.
fn check_opts(o: &CriuOpts) -> Result<()> {
    let on = |b: Option<bool>| b.unwrap_or(false);
    let mut refused: Vec<String> = Vec::new();
    let mut no = |cond: bool, what: &str| {
        if cond {
            refused.push(what.to_string());
        }
    };
    no(o.ps.is_some(), "ps (page server)");
    // (parent_img and track_mem: incremental images, predump.rs; a pre-dump always tracks.)
    no(on(o.auto_dedup), "auto_dedup");
    no(!o.exec_cmd.is_empty(), "exec_cmd");
    no(on(o.auto_ext_mnt), "auto_ext_mnt");
    no(on(o.ext_sharing), "ext_sharing");
    no(on(o.ext_masters), "ext_masters");
    no(!o.skip_mnt.is_empty(), "skip_mnt");
    no(!o.enable_fs.is_empty(), "enable_fs");
    // runc always sends CLONE_NEWNET here ("runc does not manage network devices"): the net
    // namespace's links and addresses are not carried, which is what ferry does for any tree in
    // ferry's own net namespace. Other namespaces are refused.
    no(o.empty_ns.is_some_and(|n| n & !(libc::CLONE_NEWNET as u32) != 0), "empty_ns (other than net)");
    no(!o.join_ns.is_empty(), "join_ns");
    no(o.cgroup_props.is_some() || o.cgroup_props_file.is_some(), "cgroup_props/cgroup_props_file");
    no(!o.cgroup_dump_controller.is_empty(), "cgroup_dump_controller");
    no(on(o.lazy_pages), "lazy_pages");
    no(o.status_fd.is_some(), "status_fd");
    // runc names /etc/criu/runc.conf whether it exists or not; CRIU skips a missing one.
    no(
        o.config_file.as_deref().is_some_and(|c| !c.is_empty() && Path::new(c).exists()),
        "config_file (CRIU configuration files)",
    );
    no(o.lsm_profile.as_deref().is_some_and(|c| !c.is_empty()), "lsm_profile");
    no(o.lsm_mount_context.as_deref().is_some_and(|c| !c.is_empty()), "lsm_mount_context");
    no(on(o.tls) || o.tls_cacert.is_some() || o.tls_cert.is_some() || o.tls_key.is_some(), "tls (page server)");
    no(o.cgroup_yard.is_some(), "cgroup_yard");
    no(o.pidfd_store_sk.is_some(), "pidfd_store_sk");
    no(o.network_lock.is_some_and(|m| m != 1 && m != 2), "network_lock (other than iptables/nftables)");
    no(on(o.mntns_compat_mode), "mntns_compat_mode");
    no(on(o.unprivileged), "unprivileged");
    no(on(o.allow_uprobes), "allow_uprobes");
    no(o.cpu_cap.is_some_and(|c| c != u32::MAX && c != 0), "cpu_cap (other than all or none)");
    if let Some(m) = o.manage_cgroups_mode {
        match CriuCgMode::try_from(m) {
            Ok(CriuCgMode::Props | CriuCgMode::Full | CriuCgMode::Strict) => {
                refused.push("manage_cgroups_mode props/full/strict (cgroup limits)".into())
            }
            Ok(_) => {}
            Err(_) => refused.push(format!("manage_cgroups_mode {m}")),
        }
    }
    for e in &o.external {
        if let Err(why) = e.parse::<External>() {
            refused.push(why);
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        bail!("not supported by ferry: {}", refused.join(", "))
    }
}

fn dump(conn: &Conn, o: &CriuOpts, dirs: &Dirs) -> Result<CriuResp> {
    let pid = match o.pid {
        Some(p) if p > 0 => p,
        Some(p) => bail!("pid {p} is not a process id"),
        None => bail!("opts.pid is not set: dumping the requesting process itself is not supported"),
    };
    let on = |b: Option<bool>| b.unwrap_or(false);
    let notify = on(o.notify_scripts);
    ferry_engine::check::require_caps("dump").with_context(|| format!("dump of pid {pid} failed"))?;
    // CRIU's default ghost limit is 1 MiB; a client that says nothing gets ferry's (none).
    ferry_engine::state::files::ghost::set_limit(o.ghost_limit.map_or(u64::MAX, u64::from));
    let opts = ferry_engine::dump::DumpOptions {
        pid,
        dir: dirs.images.clone(),
        // (leave_stopped alone, as CRIU's final state TASK_STOPPED: not killed, left stopped.)
        leave_running: on(o.leave_running) || on(o.leave_stopped),
        tcp_close: on(o.tcp_close),
        tcp_established: on(o.tcp_established),
        skip_in_flight: on(o.tcp_skip_in_flight),
        shell_job: on(o.shell_job),
        orphan_pts_master: on(o.orphan_pts_master),
        leave_stopped: on(o.leave_stopped),
        // As `ferry dump -R`: the tree runs again once a copy-on-write snapshot is taken.
        snapshot: true,
        freeze_timeout: std::time::Duration::from_secs(o.timeout.filter(|&t| t > 0).map_or(10, u64::from)),
        sign: None,
        ns: super::dump_ns(&parsed_external(o)?, &ext_mnt_pairs(o))?,
        external: parsed_external(o)?
            .into_iter()
            .filter(|e| matches!(e, External::Unix(_)))
            .chain(o.unix_sk_ino.iter().map(|u| External::Unix(u.inode)))
            .collect(),
    };
    // The pre-dump's copies and tracking (parent_img), taken before the notifications: the
    // network is not locked while its page files are verified.
    let parents = match parent_dir(o, dirs)? {
        Some(p) => Some(ferry_engine::predump::take_parent(&p).with_context(|| format!("parent_img {}", p.display()))?),
        None => None,
    };
    // As CRIU: the client locks the network of a tree with its own (not external) net
    // namespace before the freeze (runc detaches its network strategies there), and unlocks it
    // after a dump that leaves the tree running.
    let own_net = notify && own_netns(pid, &opts.ns);
    if notify {
        conn.notify("pre-dump", None)?;
    }
    if own_net {
        conn.notify("network-lock", None)?;
    }
    let r = match parents {
        Some(parents) => ferry_engine::dump::dump_from_parent(&opts, parents),
        None => ferry_engine::dump::dump(&opts),
    };
    if own_net && (r.is_err() || opts.leave_running) {
        conn.notify("network-unlock", None)?;
    }
    let r = r.with_context(|| format!("dump of pid {pid} failed"))?;
    tracing::info!(pid, pages = r.pages_bytes, vmas = r.vmas, fds = r.fds, "dumped");
    let stats = stats::StatsEntry {
        dump: Some(stats::DumpStatsEntry {
            freezing_time: stats::micros(r.freezing),
            frozen_time: stats::micros(r.frozen),
            memdump_time: stats::micros(r.memdump),
            memwrite_time: stats::micros(r.commit),
            pages_scanned: r.pages_scanned,
            pages_skipped_parent: r.pages_from_parent,
            pages_written: r.pages_written.saturating_sub(r.pages_from_parent),
            ..Default::default()
        }),
        restore: None,
    };
    // (As CRIU: a statistics file that cannot be written is no failure of the dump.)
    if let Err(e) = stats::write(&dirs.work, "dump", &stats) {
        tracing::warn!(error = format!("{e:#}"), "no stats-dump");
    }
    if notify {
        conn.notify("post-dump", None)?;
    }
    Ok(CriuResp {
        r#type: CriuReqType::Dump as i32,
        success: true,
        dump: Some(CriuDumpResp { restored: Some(false) }),
        ..Default::default()
    })
}

/// The request's `parent_img` (relative to the images directory, as runc sends `../pre`).
fn parent_dir(o: &CriuOpts, dirs: &Dirs) -> Result<Option<PathBuf>> {
    match o.parent_img.as_deref().filter(|p| !p.is_empty()) {
        Some(p) => {
            let dir = dirs.images.join(p);
            if !dir.is_dir() {
                bail!("parent_img {p}: {} is not a directory", dir.display());
            }
            Ok(Some(dir))
        }
        None => Ok(None),
    }
}

/// PRE_DUMP: the tree's memory copied while it runs, its writes tracked on (predump.rs).
fn pre_dump(o: &CriuOpts, dirs: &Dirs, ty: i32) -> Result<CriuResp> {
    let pid = match o.pid {
        Some(p) if p > 0 => p,
        Some(p) => bail!("pid {p} is not a process id"),
        None => bail!("opts.pid is not set: pre-dumping the requesting process itself is not supported"),
    };
    ferry_engine::check::require_caps("pre-dump").with_context(|| format!("pre-dump of pid {pid} failed"))?;
    let parents = match parent_dir(o, dirs)? {
        Some(p) => ferry_engine::predump::take_parent(&p).with_context(|| format!("parent_img {}", p.display()))?,
        None => Default::default(),
    };
    let t = std::time::Instant::now();
    let r = ferry_engine::predump::pre_dump(pid, &dirs.images, parents)
        .with_context(|| format!("pre-dump of pid {pid} failed"))?;
    tracing::info!(pid, pages = r.pages_written, from_parent = r.pages_from_parent, tracked = r.tracked, "pre-dumped");
    let stats = stats::StatsEntry {
        dump: Some(stats::DumpStatsEntry {
            memdump_time: stats::micros(t.elapsed()),
            pages_scanned: r.pages_scanned,
            pages_skipped_parent: r.pages_from_parent,
            pages_written: r.pages_written,
            ..Default::default()
        }),
        restore: None,
    };
    if let Err(e) = stats::write(&dirs.work, "dump", &stats) {
        tracing::warn!(error = format!("{e:#}"), "no stats-dump");
    }
    Ok(CriuResp { r#type: ty, success: true, ..Default::default() })
}

fn restore(conn: &Conn, o: &CriuOpts, dirs: &Dirs) -> Result<CriuResp> {
    let on = |b: Option<bool>| b.unwrap_or(false);
    let notify = on(o.notify_scripts);
    ferry_engine::check::require_caps("restore")
        .with_context(|| format!("restore from {} failed", dirs.images.display()))?;
    let external = parsed_external(o)?;
    let inherit: Vec<EngineInheritFd> =
        o.inherit_fd.iter().map(|i| EngineInheritFd { key: i.key.clone(), fd: i.fd }).collect();
    let root = o.root.as_deref().filter(|r| !r.is_empty()).map(PathBuf::from);
    let ns = super::restore_ns(&external, &ext_mnt_pairs(o), &inherit, root);
    let inherit_fds = super::unique_inherit(&inherit);
    let cgroups = cgroup_mode(o, &dirs.images)?;
    let opts = ferry_engine::restore::RestoreOptions {
        dir: dirs.images.clone(),
        pidfile: None,
        shell_job: on(o.shell_job),
        leave_stopped: on(o.leave_stopped),
        tcp_close: on(o.tcp_close),
        cgroups,
        trusted: None,
        sibling: on(o.rst_sibling),
        orphan_pts_master: on(o.orphan_pts_master),
        ns,
        inherit_fds,
        external,
    };
    // As CRIU: "network-unlock" for a tree whose network namespace the restore made, before the
    // restore's own lock there is lifted (state/netlock.rs).
    let img_ns = ferry_image::ImageReader::open(&dirs.images).ok().and_then(|i| i.inventory().namespaces.clone());
    let own_net = img_ns.is_some_and(|ns| ns.kinds.iter().any(|k| k.kind == "net" && k.external.is_empty()));
    let mut hook = |stage: ferry_engine::restore::Stage<'_>| -> std::result::Result<(), String> {
        match stage {
            // (The tree runs already; a client that fails here keeps it, as CRIU's post-resume.)
            ferry_engine::restore::Stage::Released { pid } if notify => {
                conn.notify("post-restore", Some(pid)).map_err(|e| format!("{e:#}"))?;
                if own_net {
                    conn.notify("network-unlock", None).map_err(|e| format!("{e:#}"))?;
                }
                Ok(())
            }
            ferry_engine::restore::Stage::SetupNamespaces { pid } if notify => {
                conn.notify("setup-namespaces", Some(pid)).map_err(|e| format!("{e:#}"))
            }
            // (Sent whether or not the client asked for notifications, as CRIU does: runc
            // passes the master on to its console socket.)
            ferry_engine::restore::Stage::OrphanPtsMaster { fd, .. } => {
                conn.notify_with("orphan-pts-master", None, Some(fd)).map_err(|e| format!("{e:#}"))
            }
            _ => Ok(()),
        }
    };
    let r = ferry_engine::restore::restore_notify(&opts, &mut hook)
        .with_context(|| format!("restore from {} failed", dirs.images.display()))?;
    tracing::info!(pid = r.pid, "restored");
    let page = ferry_sys::process::page_size().max(1);
    let pages_restored = ferry_image::ImageReader::open(&dirs.images)
        .map(|i| i.inventory().files.iter().filter(|f| f.name.starts_with("pages-")).map(|f| f.size / page).sum())
        .ok();
    let stats = stats::StatsEntry {
        dump: None,
        restore: Some(stats::RestoreStatsEntry {
            forking_time: stats::micros(r.forked),
            restore_time: stats::micros(r.total),
            pages_restored,
            ..Default::default()
        }),
    };
    if let Err(e) = stats::write(&dirs.work, "restore", &stats) {
        tracing::warn!(error = format!("{e:#}"), "no stats-restore");
    }
    Ok(CriuResp {
        r#type: CriuReqType::Restore as i32,
        success: true,
        restore: Some(CriuRestoreResp { pid: r.pid }),
        ..Default::default()
    })
}

/// Whether `pid` is in a net namespace of its own that is not external (its content is the
/// tree's: the client locks its network around the dump).
fn own_netns(pid: i32, ns: &DumpNs) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &str| std::fs::metadata(p).map(|m| m.ino()).ok();
    match (ino(&format!("/proc/{pid}/ns/net")), ino("/proc/self/ns/net")) {
        (Some(theirs), Some(ours)) => {
            theirs != ours && !ns.external.iter().any(|e| e.kind == "net" && e.inode == theirs)
        }
        _ => false,
    }
}

/// The RPC's `ext_mnt` as (key, value) pairs: at dump (mount point, key), at restore (key,
/// host path).
fn ext_mnt_pairs(o: &CriuOpts) -> Vec<(String, String)> {
    o.ext_mnt.iter().map(|m| (m.key.clone(), m.val.clone())).collect()
}

/// `external` parsed (CRIU's forms; refused ones were named by [`check_opts`]), and each of
/// `veths` (CRIU's older `criu_veth_pair {if_in, if_out}`) as `veth[IF_IN]:IF_OUT`, as CRIU's
/// RPC server turns them into externals (`IF_OUT` may end with `@BRIDGE`).
fn parsed_external(o: &CriuOpts) -> Result<Vec<External>> {
    let veths = o.veths.iter().map(|v| {
        if v.if_in.is_empty() || v.if_out.is_empty() {
            bail!("veths: a pair with an empty name (if_in {:?}, if_out {:?})", v.if_in, v.if_out);
        }
        format!("veth[{}]:{}", v.if_in, v.if_out).parse::<External>().map_err(|why| anyhow!("veths: {why}"))
    });
    o.external.iter().map(|e| e.parse::<External>().map_err(|why| anyhow!(why))).chain(veths).collect()
}

/// Whether the restored tree goes back into its cgroups (true) or stays in ferry's own (false).
fn cgroup_mode(o: &CriuOpts, images: &Path) -> Result<bool> {
    let mode = match o.manage_cgroups_mode.map(CriuCgMode::try_from) {
        Some(Ok(m)) => m,
        Some(Err(_)) | None => {
            if o.manage_cgroups == Some(false) && o.manage_cgroups_mode.is_none() {
                CriuCgMode::Ignore
            } else {
                CriuCgMode::Soft
            }
        }
    };
    let soft = matches!(mode, CriuCgMode::Soft | CriuCgMode::Default);
    if o.cg_root.is_empty() || !soft {
        return Ok(soft);
    }
    // cg_root: the tree's root cgroup is moved to the given one. ferry does it when every
    // process of the image was in one set of cgroups and ferry runs in cg_root itself (runc
    // puts its criu there): then the tree stays where ferry is.
    let own = std::fs::read_to_string("/proc/self/cgroup").context("cannot read /proc/self/cgroup")?;
    let own: Vec<(String, String)> = own
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, ctrl, path) = (it.next()?, it.next()?, it.next()?);
            Some((ctrl.to_string(), path.to_string()))
        })
        .collect();
    for cg in &o.cg_root {
        let ctrl = cg.ctrl.as_deref().unwrap_or("");
        let wanted: Vec<&str> = ctrl.split(',').filter(|s| !s.is_empty()).collect();
        let here = own.iter().find(|(c, _)| {
            let have: Vec<&str> = c.split(',').filter(|s| !s.is_empty()).collect();
            if wanted.is_empty() {
                have.is_empty()
            } else {
                wanted.iter().all(|w| have.contains(w))
            }
        });
        match here {
            Some((_, p)) if p == &cg.path => {}
            Some((_, p)) => {
                bail!("cg_root {ctrl}:{}: ferry runs in {p}; it restores into cg_root only from there", cg.path)
            }
            None => bail!("cg_root {ctrl}:{}: no such hierarchy here", cg.path),
        }
    }
    let img = ferry_image::ImageReader::open(images)?;
    let mut sets = Vec::new();
    for &pid in &img.inventory().pids {
        let p = img.read_process(pid)?;
        if !p.zombie {
            sets.push((pid, p.cgroups));
        }
    }
    if let Some((pid, _)) = sets.iter().find(|(_, c)| Some(c) != sets.first().map(|(_, c)| c)) {
        bail!("cg_root: pid {pid} of the image is in other cgroups than the root; ferry moves only a tree in one set of cgroups");
    }
    Ok(false)
}

/// The request's log file (`log_file` in the work directory, at `log_level`): ferry's tracing
/// output goes there while a request is served, and the final error line too.
mod logs {
    use super::*;

    static FILE: Mutex<Option<std::fs::File>> = Mutex::new(None);
    static LEVEL: AtomicU8 = AtomicU8::new(2);

    struct Sink;

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            match FILE.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                Some(f) => f.write(buf),
                None => Ok(buf.len()),
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct Make;

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Make {
        type Writer = Box<dyn Write + 'a>;
        fn make_writer(&'a self) -> Self::Writer {
            Box::new(Sink)
        }
        fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
            // CRIU's levels: 0-1 errors, 2 warnings, 3 info, 4 debug.
            let want = match LEVEL.load(Ordering::Relaxed) {
                0 | 1 => tracing::Level::ERROR,
                2 => tracing::Level::WARN,
                3 => tracing::Level::INFO,
                _ => tracing::Level::DEBUG,
            };
            if *meta.level() <= want {
                Box::new(Sink)
            } else {
                Box::new(std::io::sink())
            }
        }
    }

    /// Install the subscriber (once); nothing is written until [`open`].
    pub fn init() {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_target(false)
            .with_ansi(false)
            .with_writer(Make)
            .try_init();
    }

    /// Log to `path` (created 0600, appended) at CRIU level `level`.
    pub fn open(path: &Path, level: i32) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        LEVEL.store(level.clamp(0, 4) as u8, Ordering::Relaxed);
        *FILE.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
        Ok(())
    }

    /// The request's final error, whatever the level (runc prints the log's path, not the message).
    pub fn error(msg: &str) {
        if let Some(f) = FILE.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            let _ = writeln!(f, "Error (ferry swrk): {msg}");
        }
    }

    pub fn close() {
        *FILE.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
