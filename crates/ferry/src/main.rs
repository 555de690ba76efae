//! The `ferry` command line: a thin layer over `ferry-engine`.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

use ferry::{criu, inspect, migrate};

/// Checkpoint a running Linux process to an image and restore it, with the same PID,
/// exactly where it stopped.
#[derive(Parser)]
#[command(name = "ferry", version, about)]
struct Cli {
    /// Print progress logs to stderr (repeat for more detail; CRIU's -v0 .. -v4 work too).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// CRIU's `-vN` (rewritten from `-v0` .. `-v4`): 0-1 errors, 2 warnings, 3 info, 4 debug.
    #[arg(long, global = true, hide = true, value_parser = clap::value_parser!(u8).range(0..=4))]
    log_level: Option<u8>,
    /// Write the logs to this file (created mode 0600) instead of stderr; error messages still
    /// go to stderr.
    #[arg(short = 'o', long, global = true, value_name = "FILE")]
    log_file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// CRIU's `--manage-cgroups[=MODE]`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CgroupMode {
    /// Put each process back into its cgroups, creating missing ones without limits (ferry's
    /// default; CRIU's soft mode).
    Soft,
    /// Leave the restored processes in ferry's own cgroups.
    Ignore,
    /// As ignore.
    None,
    /// Also restore the cgroups' properties (limits): not supported yet.
    Props,
    /// As props: not supported yet.
    Full,
    /// As props: not supported yet.
    Strict,
}

#[derive(Subcommand)]
enum Cmd {
    /// List the kernel features ferry relies on, present or missing.
    Check,
    /// Freeze a process, write its image to DIR, then kill it (or leave it running with -R).
    Dump {
        /// PID of the process to dump.
        #[arg(short = 't', long = "tree")]
        pid: i32,
        /// Image directory (created mode 0700).
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// Leave the process running after the dump.
        #[arg(short = 'R', long = "leave-running")]
        leave_running: bool,
        /// Restore established TCP connections (and connections waiting to be accepted) as
        /// closed sockets instead of refusing the dump.
        #[arg(long = "tcp-close")]
        tcp_close: bool,
        /// Keep established TCP connections (TCP_REPAIR): the peer sees no error if it stays
        /// quiet until the restore.
        #[arg(long)]
        tcp_established: bool,
        /// Leave connections waiting in a listener's accept queue out of the image (their
        /// clients see a reset; CRIU's --skip-in-flight) instead of refusing the dump.
        #[arg(long)]
        skip_in_flight: bool,
        /// The process was started from a terminal (a shell job): its terminal stays outside the
        /// image, and restore puts it onto the terminal `ferry restore --shell-job` runs on.
        #[arg(short = 'j', long = "shell-job")]
        shell_job: bool,
        /// Compress the page data with zstd at this level (default 3), using every CPU: for
        /// disks and networks slower than the CPU. Restore decompresses it first.
        #[arg(long, value_name = "LEVEL", num_args = 0..=1, default_missing_value = "3", require_equals = true)]
        compress: Option<i32>,
        /// Leave the processes stopped (SIGSTOP) after the dump instead of killing them (or,
        /// with -R, instead of running), as CRIU's -s/--leave-stopped.
        #[arg(short = 's', long)]
        leave_stopped: bool,
        /// With -R: keep the tree frozen until the image is written, instead of letting it run
        /// again as soon as a copy-on-write snapshot of its memory is taken (an injected fork
        /// per process, see docs/ARCHITECTURE.md).
        #[arg(long, requires = "leave_running")]
        no_snapshot: bool,
        /// The most data a file deleted while open may carry into the image (CRIU's
        /// --ghost-limit; K, M, G suffixes); a larger one fails the dump. Unlimited by default.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        ghost_limit: Option<u64>,
        /// Seconds to wait for every thread of the tree to stop (CRIU's --timeout); a thread
        /// that does not (an uninterruptible sleep) fails the dump, the tree running on.
        #[arg(long, value_name = "SECONDS", default_value_t = 10)]
        timeout: u64,
        /// Accepted for CRIU's command line (cgroup membership is always saved).
        #[arg(long, value_enum, value_name = "MODE", num_args = 0..=1, default_missing_value = "soft", require_equals = true)]
        manage_cgroups: Option<CgroupMode>,
        #[command(flatten)]
        criu: CriuDefaults,
        /// Let a resource outside the tree be dumped, named in CRIU's form (repeatable):
        /// unix[INO] (a unix socket of the tree, inode INO, connected to a peer outside: restore
        /// needs --inherit-fd fd[N]:socket:[INO]); mnt[..], net[..], veth[..], macvlan[..] are
        /// accepted for the namespace code.
        #[arg(long, value_name = "KIND[KEY][:VALUE]")]
        external: Vec<ferry_engine::state::external::External>,
        /// Sign the image with this node's key (a `ferry keygen` directory): `restore --verify`
        /// on any node that trusts the key then refuses the image if anything in it changed.
        #[arg(long, value_name = "KEYDIR")]
        sign: Option<PathBuf>,
        /// A pre-dump (CRIU's `criu pre-dump`): copy the tree's memory while it runs, keep
        /// tracking its writes (a keeper process holds the tracking), write a memory-only image
        /// a later dump names with --prev-images-dir. The tree is not frozen (but for the
        /// moment its mappings are registered) and runs on.
        #[arg(long, conflicts_with_all = ["leave_running", "leave_stopped", "compress"])]
        pre_dump: bool,
        /// The pre-dump this dump starts from (relative to the images directory, as CRIU's):
        /// its copies of the pages not written since are used, not read again.
        #[arg(long, value_name = "DIR")]
        prev_images_dir: Option<PathBuf>,
        /// Accepted for CRIU's command line (a pre-dump always tracks the writes).
        #[arg(long)]
        track_mem: bool,
    },
    /// Recreate a process from an image, with its old PID.
    Restore {
        /// Image directory.
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// Return as soon as the process runs instead of waiting for it to exit.
        #[arg(short = 'd', long = "restore-detached")]
        detached: bool,
        /// Write the restored PID to this file once it runs.
        #[arg(long)]
        pidfile: Option<PathBuf>,
        /// Restore a job dumped with --shell-job onto ferry's own terminal: it joins ferry's
        /// session, uses ferry's fds 0-2 and becomes the foreground job if it was one.
        #[arg(short = 'j', long = "shell-job")]
        shell_job: bool,
        /// Leave the restored processes stopped (SIGSTOP): they run once sent SIGCONT.
        #[arg(short = 's', long)]
        leave_stopped: bool,
        /// Cgroups (CRIU's modes): soft (default: each process back into its cgroups, missing
        /// ones created without limits), ignore/none (stay in ferry's); props/full/strict
        /// (limits too) are not supported yet.
        #[arg(long, value_enum, value_name = "MODE", num_args = 0..=1, default_missing_value = "soft", require_equals = true)]
        manage_cgroups: Option<CgroupMode>,
        /// Accepted for CRIU's command line: established TCP connections in the image are
        /// restored (the dump decided, with --tcp-established) unless --tcp-close.
        #[arg(long, conflicts_with = "tcp_close")]
        tcp_established: bool,
        /// Restore the TCP connections the image keeps as closed sockets (CRIU's restore
        /// --tcp-close): reads fail with ENOTCONN, writes with EPIPE; their peers are reset.
        #[arg(long = "tcp-close")]
        tcp_close: bool,
        #[command(flatten)]
        criu: CriuDefaults,
        /// Give the restored process ferry's own fd N in place of the file whose key is KEY
        /// (CRIU's fd[N]:KEY, repeatable): pipe:[INO], socket:[INO], or a path relative to /.
        #[arg(long, value_name = "fd[N]:KEY")]
        inherit_fd: Vec<ferry_engine::state::external::InheritFd>,
        /// CRIU's --external at restore (repeatable; see dump --external).
        #[arg(long, value_name = "KIND[KEY][:VALUE]")]
        external: Vec<ferry_engine::state::external::External>,
        /// Restore only an image signed by a key in this directory's `trusted` list (a `ferry
        /// keygen` directory), every file matching its signed digest.
        #[arg(long, value_name = "KEYDIR")]
        verify: Option<PathBuf>,
        /// The directory that becomes the root of a tree whose root mount was external (a
        /// container's root file system); without it, a root that was ferry's "/" is "/".
        #[arg(short = 'r', long = "root", value_name = "DIR")]
        root: Option<PathBuf>,
    },
    /// Start a job ready to be checkpointed: in a session of its own, or with --pidns in a new
    /// pid namespace under a minimal init, so that it can be restored on any host without pid
    /// clashes (dump the init's pid to take the whole namespace).
    Run {
        /// Run the job in a new pid namespace (its init is `ferry __init`).
        #[arg(long)]
        pidns: bool,
        /// Run the job in a new network namespace holding only lo (up).
        #[arg(long)]
        netns: bool,
        /// Run the job in a new time namespace, so that a restore elsewhere can keep its
        /// CLOCK_MONOTONIC and CLOCK_BOOTTIME going on from where they were.
        #[arg(long)]
        timens: bool,
        /// Run the job in a new mount namespace: every mount private, a fresh tmpfs on /tmp.
        #[arg(long)]
        mntns: bool,
        /// Run the job in a new user namespace, as root inside (every id mapped to itself
        /// unless --uid-map/--gid-map are given).
        #[arg(long)]
        userns: bool,
        /// A line of the job's uid_map, INSIDE:OUTSIDE:COUNT (repeatable; implies --userns).
        #[arg(long = "uid-map", value_name = "INSIDE:OUTSIDE:COUNT", value_parser = parse_id_map)]
        uid_map: Vec<(u32, u32, u32)>,
        /// A line of the job's gid_map, INSIDE:OUTSIDE:COUNT (repeatable; implies --userns).
        #[arg(long = "gid-map", value_name = "INSIDE:OUTSIDE:COUNT", value_parser = parse_id_map)]
        gid_map: Vec<(u32, u32, u32)>,
        /// With --netns: link the job to this namespace by a veth pair, eth0 inside (with
        /// address ADDR/PFX if given), HOST outside (a port of BRIDGE if given), both up.
        /// Dump it with --external veth[eth0]:HOST[@BRIDGE].
        #[arg(long, value_name = "HOST[@BRIDGE][:ADDR/PFX]", requires = "netns")]
        veth: Option<String>,
        /// Print the pid (the init's, with --pidns) and return instead of waiting for the job.
        #[arg(short = 'd', long)]
        detach: bool,
        /// Write that pid to this file.
        #[arg(long)]
        pidfile: Option<PathBuf>,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true)]
        cmd: Vec<std::ffi::OsString>,
    },
    /// Reaps the snapshots of a `dump -R` whose ferry was killed (internal, started by the dump).
    #[command(name = "__snapshot-guard", hide = true)]
    SnapshotGuard,
    /// The init of a `ferry run --pidns` namespace (internal).
    #[command(name = "__init", hide = true)]
    Init {
        #[arg(required = true, trailing_var_arg = true)]
        cmd: Vec<std::ffi::OsString>,
    },
    /// Create this node's migration credentials in DIR (a key pair and a list of trusted peer
    /// keys, files mode 0600). Copy the same DIR to every node, or give each node its own and
    /// append the peers' node.pub lines to its `trusted` file.
    Keygen { dir: PathBuf },
    /// Receive migrations: authenticate each peer, restore the tree it sends, keep serving.
    Serve {
        /// Address and port to listen on.
        #[arg(long)]
        listen: String,
        /// Credentials directory (ferry keygen).
        #[arg(long)]
        auth: PathBuf,
        /// Staging area for arriving images; must be in memory (tmpfs).
        #[arg(long, default_value = "/dev/shm")]
        staging: PathBuf,
        /// Largest image one peer may send, in MiB.
        #[arg(long, default_value_t = 16384)]
        max_image_mib: u64,
        /// Most files one image may have.
        #[arg(long, default_value_t = 4096)]
        max_files: usize,
        /// Most processes one tree may have.
        #[arg(long, default_value_t = 512)]
        max_processes: usize,
        /// Most connections in their handshake (not authenticated yet) at once; past it, the
        /// oldest is closed.
        #[arg(long, default_value_t = 256)]
        max_handshakes: usize,
        /// Most connections in their handshake at once from one address (IPv6: one /64).
        #[arg(long, default_value_t = 8)]
        max_handshakes_per_addr: usize,
        /// Seconds a peer has for the whole handshake.
        #[arg(long, default_value_t = 10)]
        handshake_timeout: u64,
        /// Exit after this many authenticated connections (for tests).
        #[arg(long, hide = true)]
        max_migrations: Option<u64>,
        /// This node's side of what arriving trees had outside (repeatable):
        /// veth[INSIDE]:OUTSIDE[@BRIDGE] names the outside end made here for a tree's veth
        /// INSIDE, and the bridge it joins; macvlan[INSIDE]:LOWER the device here a tree's
        /// macvlan INSIDE is made on (else the names the source recorded are used).
        #[arg(long, value_name = "veth[INSIDE]:OUTSIDE[@BRIDGE]")]
        external: Vec<ferry_engine::state::external::External>,
    },
    /// Move a running process tree to the node serving at ADDR:PORT; it stays here, frozen,
    /// until the destination confirms it runs there, and resumes here on any failure.
    Migrate {
        /// PID of the root of the tree.
        #[arg(short = 't', long = "tree")]
        pid: i32,
        /// Destination ADDR:PORT (ferry serve).
        #[arg(long)]
        to: String,
        /// Credentials directory (ferry keygen).
        #[arg(long)]
        auth: PathBuf,
        /// Send memory while the tree runs, then only what was written since; freeze at the end.
        #[arg(long, conflicts_with = "post_copy")]
        pre_copy: bool,
        /// Resume at once on the destination; private anonymous memory follows, pages fetched on
        /// fault first (userfaultfd). A connection lost meanwhile loses the process.
        #[arg(long)]
        post_copy: bool,
        /// Seconds to wait for the destination at any step.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Move established TCP connections with the tree (TCP_REPAIR; their local address must
        /// exist on the destination, e.g. moved there with the service).
        #[arg(long)]
        tcp_established: bool,
        /// Restore established TCP connections closed on the destination.
        #[arg(long = "tcp-close")]
        tcp_close: bool,
        /// What the tree has outside it, as for dump (repeatable): veth[INSIDE]:OUTSIDE[@BRIDGE]
        /// for a veth of the tree's network namespace whose peer is this node's OUTSIDE,
        /// macvlan[INSIDE]:LOWER for a macvlan of it on this node's device LOWER.
        #[arg(long, value_name = "KIND[KEY][:VALUE]")]
        external: Vec<ferry_engine::state::external::External>,
    },
    /// Serve CRIU's RPC on the inherited SOCK_SEQPACKET socket FD, as `criu swrk FD` does: what
    /// runc, Podman, crun and go-criu start (docs/containers.md).
    Swrk {
        /// The socket's fd number.
        fd: i32,
    },
    /// Hold a pre-dump's write tracking until the next dump takes it over SOCKET (started by
    /// the pre-dump itself, fd 0 its socketpair).
    #[command(hide = true)]
    TrackKeeper { socket: PathBuf },
    /// Show what an image holds: process, mappings with sizes, fds, signals, timers.
    Inspect {
        /// Image directory.
        dir: PathBuf,
        /// Print the complete content as JSON.
        #[arg(long)]
        json: bool,
        /// Also verify the signature against this directory's `trusted` list and every file's
        /// digests (reads the whole image).
        #[arg(long, value_name = "KEYDIR")]
        verify: Option<PathBuf>,
    },
}

/// CRIU options whose behaviour is ferry's default: accepted so that CRIU's command lines work,
/// changing nothing (docs/criu-compat.md).
#[derive(clap::Args)]
struct CriuDefaults {
    /// Accepted: file locks are always saved and restored.
    #[arg(long, hide = true)]
    file_locks: bool,
    /// Accepted: the content of deleted (unlinked) files is always carried in the image.
    #[arg(long, hide = true)]
    link_remap: bool,
    /// Accepted: inotify watches are always resolved to paths.
    #[arg(long, hide = true)]
    force_irmap: bool,
    /// Accepted: a unix stream socket whose peer is outside the tree is still refused by name
    /// unless named with --external unix[INO] (a datagram socket connected to a named socket
    /// outside is reconnected by name).
    #[arg(long, hide = true)]
    ext_unix_sk: bool,
}

/// The keys `--verify KEYDIR` trusts (its `trusted` list), or none without the flag.
fn trusted_keys(verify: Option<&std::path::Path>) -> Result<Option<Vec<[u8; 32]>>> {
    let Some(keys) = verify else { return Ok(None) };
    let auth = migrate::channel::Auth::load(keys)
        .with_context(|| format!("cannot read the trusted keys in {}", keys.display()))?;
    Ok(Some(auth.trusted_keys()))
}

/// A size with an optional K, M or G suffix (powers of 1024), as CRIU's `--ghost-limit` takes.
fn parse_size(s: &str) -> Result<u64, String> {
    let (num, shift) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size (a number, optionally with K, M or G)"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("{s:?} is too large"))
}

/// CRIU's `-v0` .. `-v4` (an optional level glued to `-v`) become `--log-level N` before clap
/// sees them; `-v`, `-vv` keep their meaning. A job's own arguments (after `--`, or after
/// `run`) are left alone.
fn criu_verbosity(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut args = args;
    while let Some(a) = args.next() {
        if a == "--" || a == "run" || a == "__init" {
            out.push(a);
            out.extend(args.by_ref());
            break;
        }
        match a.to_str().and_then(|s| s.strip_prefix("-v")) {
            Some(n) if n.len() == 1 && n.as_bytes()[0].is_ascii_digit() => {
                out.push("--log-level".into());
                out.push(n.into());
            }
            _ => out.push(a),
        }
    }
    out
}

fn init_logs(verbose: u8, log_level: Option<u8>, log_file: Option<&std::path::Path>) -> Result<()> {
    let level = match (log_level, verbose) {
        (Some(0 | 1), _) => tracing::Level::ERROR,
        (Some(2), _) | (None, 0) => tracing::Level::WARN,
        (Some(3), _) | (None, 1) => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    let builder = tracing_subscriber::fmt().with_max_level(level).with_target(false);
    match log_file {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot open the log file {}", path.display()))?;
            builder.with_writer(std::sync::Mutex::new(file)).with_ansi(false).init();
        }
        None => {
            builder.with_writer(std::io::stderr).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init()
        }
    }
    Ok(())
}

/// `INSIDE:OUTSIDE:COUNT` (a line of a uid_map or gid_map).
fn parse_id_map(s: &str) -> std::result::Result<(u32, u32, u32), String> {
    let n: Vec<u32> = s
        .split(':')
        .map(|w| w.parse::<u32>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| format!("{s:?}: {e}"))?;
    match n[..] {
        [i, o, c] if c > 0 => Ok((i, o, c)),
        _ => Err(format!("{s:?}: expected INSIDE:OUTSIDE:COUNT")),
    }
}

fn run(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Check => {
            let feats = ferry_engine::check::run();
            let mut ok = true;
            for f in &feats {
                let mark = if f.present {
                    "present"
                } else if f.required {
                    "MISSING"
                } else {
                    "missing"
                };
                println!("{mark:8} {}: {}", f.name, f.detail);
                ok &= f.present || !f.required;
            }
            println!("{}", if ok { "dump and restore can work here" } else { "dump and restore cannot work here" });
            Ok(if ok { 0 } else { 1 })
        }
        Cmd::Dump {
            pid,
            dir,
            leave_running,
            tcp_close,
            tcp_established,
            skip_in_flight,
            shell_job,
            compress,
            leave_stopped,
            no_snapshot,
            timeout,
            ghost_limit,
            manage_cgroups: _,
            criu: _,
            external,
            sign,
            pre_dump,
            prev_images_dir,
            track_mem: _,
        } => {
            ferry_engine::state::files::ghost::set_limit(ghost_limit.unwrap_or(u64::MAX));
            ferry_engine::check::require_caps("dump").with_context(|| format!("dump of pid {pid} failed"))?;
            let sign = match sign {
                Some(keys) => Some(
                    migrate::channel::Auth::load(&keys)
                        .and_then(|a| a.signing_key())
                        .with_context(|| format!("cannot sign with the key in {}", keys.display()))?,
                ),
                None => None,
            };
            ferry_engine::state::memory::set_page_compression(compress.unwrap_or(0).clamp(0, 22));
            let opts = ferry_engine::dump::DumpOptions {
                pid,
                dir: dir.clone(),
                // (CRIU's --leave-stopped alone: the tree is not killed but left stopped.)
                leave_running: leave_running || leave_stopped,
                tcp_close,
                tcp_established,
                skip_in_flight,
                shell_job,
                orphan_pts_master: false,
                leave_stopped,
                freeze_timeout: std::time::Duration::from_secs(timeout),
                sign,
                ns: criu::dump_ns(&external, &[])?,
                external,
                snapshot: !no_snapshot,
            };
            let parents = match prev_images_dir.as_ref().map(|p| parent_dir(&dir, p)) {
                Some(p) => ferry_engine::predump::take_parent(&p)
                    .with_context(|| format!("dump of pid {pid} failed: parent {}", p.display()))?,
                None => Default::default(),
            };
            if pre_dump {
                let r = ferry_engine::predump::pre_dump(pid, &dir, parents)
                    .with_context(|| format!("pre-dump of pid {pid} failed"))?;
                tracing::info!(
                    "pre-dumped pid {pid} to {}: {} pages copied, {} from the parent, {} processes tracked",
                    dir.display(),
                    r.pages_written,
                    r.pages_from_parent,
                    r.tracked
                );
                return Ok(0);
            }
            let r = match &prev_images_dir {
                Some(_) => ferry_engine::dump::dump_from_parent(&opts, parents),
                None => ferry_engine::dump::dump(&opts),
            }
            .with_context(|| format!("dump of pid {pid} failed"))?;
            if prev_images_dir.is_some() {
                tracing::info!("{} pages taken from the pre-dump", r.pages_from_parent);
            }
            tracing::info!(
                "dumped pid {pid} to {}: {} of pages, {} mappings, {} fds in {:.1} ms (frozen {:.1} ms)",
                dir.display(),
                inspect::size(r.pages_bytes),
                r.vmas,
                r.fds,
                r.total.as_secs_f64() * 1e3,
                r.frozen.as_secs_f64() * 1e3
            );
            Ok(0)
        }
        Cmd::Restore {
            dir,
            detached,
            pidfile,
            shell_job,
            leave_stopped,
            manage_cgroups,
            tcp_established: _,
            tcp_close,
            criu: _,
            inherit_fd,
            external,
            verify,
            root,
        } => {
            ferry_engine::check::require_caps("restore")
                .with_context(|| format!("restore from {} failed", dir.display()))?;
            let cgroups = match manage_cgroups.unwrap_or(CgroupMode::Soft) {
                CgroupMode::Soft => true,
                CgroupMode::Ignore | CgroupMode::None => false,
                CgroupMode::Props | CgroupMode::Full | CgroupMode::Strict => anyhow::bail!(
                    "--manage-cgroups: restoring cgroup properties (limits) is not supported yet; use soft or ignore"
                ),
            };
            let trusted = trusted_keys(verify.as_deref())?;
            let opts = ferry_engine::restore::RestoreOptions {
                dir: dir.clone(),
                pidfile,
                shell_job,
                tcp_close,
                leave_stopped,
                cgroups,
                trusted,
                sibling: false,
                orphan_pts_master: false,
                ns: criu::restore_ns(&external, &[], &inherit_fd, root),
                inherit_fds: criu::unique_inherit(&inherit_fd),
                external,
            };
            let r = ferry_engine::restore::restore(&opts)
                .with_context(|| format!("restore from {} failed", dir.display()))?;
            tracing::info!(
                "restored pid {} in {:.1} ms (verify {:.1} ms)",
                r.pid,
                r.total.as_secs_f64() * 1e3,
                r.verify.as_secs_f64() * 1e3
            );
            if detached {
                return Ok(0);
            }
            Ok(ferry_engine::restore::wait_exit(r.pid)?)
        }
        Cmd::Run { pidns, netns, timens, mntns, userns, uid_map, gid_map, veth, detach, pidfile, cmd } => {
            let userns = (userns || !uid_map.is_empty() || !gid_map.is_empty())
                .then(|| ferry_engine::launch::UserMaps { uid: uid_map, gid: gid_map }.or_identity());
            let opts =
                ferry_engine::launch::RunOptions { cmd, pidns, netns, timens, mntns, userns, veth, detach, pidfile };
            let (pid, status) = ferry_engine::launch::run(&opts).context("ferry run failed")?;
            if detach {
                println!("{pid}");
            }
            Ok(status.unwrap_or(0))
        }
        Cmd::Init { cmd } => ferry_engine::launch::init(&cmd),
        Cmd::SnapshotGuard => {
            ferry_engine::state::snapshot::guard_main();
            Ok(0)
        }
        Cmd::Keygen { dir } => {
            let public = migrate::keygen(&dir)?;
            println!("{public}");
            Ok(0)
        }
        Cmd::Serve {
            listen,
            auth,
            staging,
            max_image_mib,
            max_files,
            max_processes,
            max_handshakes,
            max_handshakes_per_addr,
            handshake_timeout,
            max_migrations,
            external,
        } => {
            ferry_engine::check::require_caps("serve")?;
            let limits = migrate::serve::Limits {
                max_image_bytes: max_image_mib << 20,
                max_files,
                max_processes,
                ..Default::default()
            };
            migrate::serve::serve(&migrate::serve::ServeOptions {
                listen: &listen,
                auth: &auth,
                staging: &staging,
                limits,
                max_migrations,
                caps: migrate::serve::HandshakeCaps {
                    total: max_handshakes,
                    per_addr: max_handshakes_per_addr,
                    deadline: std::time::Duration::from_secs(handshake_timeout.max(1)),
                },
                ns: criu::restore_ns(&external, &[], &[], None),
            })?;
            Ok(0)
        }
        Cmd::Migrate { pid, to, auth, pre_copy, post_copy, timeout, tcp_established, tcp_close, external } => {
            ferry_engine::check::require_caps("migrate")?;
            let mode = if pre_copy {
                migrate::mode::PRE_COPY
            } else if post_copy {
                migrate::mode::POST_COPY
            } else {
                migrate::mode::STOP_AND_COPY
            };
            migrate::source::migrate(&migrate::source::MigrateOptions {
                pid,
                to: &to,
                auth: &auth,
                mode,
                timeout: std::time::Duration::from_secs(timeout),
                tcp_established,
                tcp_close,
                ns: criu::dump_ns(&external, &[])?,
            })?;
            Ok(0)
        }
        Cmd::Swrk { fd } => criu::swrk::serve(fd),
        Cmd::TrackKeeper { socket } => Ok(ferry_engine::predump::keeper_main(&socket)?),
        Cmd::Inspect { dir, json, verify } => {
            let trusted = trusted_keys(verify.as_deref())?;
            inspect::run(&dir, json, trusted.as_deref())?;
            Ok(0)
        }
    }
}

fn main() {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if criu::cli::called_as_criu(args.first()) {
        match criu::cli::parse(args) {
            criu::cli::Criu::Version => {
                print!("{}", criu::cli::version_text());
                std::process::exit(0);
            }
            criu::cli::Criu::Check { features } => std::process::exit(criu::cli::check(&features)),
            criu::cli::Criu::Swrk { fd } => args = vec!["ferry".into(), "swrk".into(), fd.to_string().into()],
            criu::cli::Criu::Ferry(a) => args = a,
            criu::cli::Criu::Bad(why) => {
                eprintln!("criu (ferry): {why}");
                std::process::exit(1);
            }
        }
    }
    let cli = Cli::parse_from(criu_verbosity(args.into_iter()));
    // (swrk logs into the log file each request names, never to stderr: on a restore its
    // stderr is the container's.)
    let logs = match cli.cmd {
        Cmd::Swrk { .. } => Ok(()),
        _ => init_logs(cli.verbose, cli.log_level, cli.log_file.as_deref()),
    };
    if let Err(e) = logs {
        eprintln!("ferry: {e:#}");
        std::process::exit(1);
    }
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            // An EPERM says which capability ferry lacks, when it lacks one.
            let eperm = e
                .chain()
                .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.raw_os_error() == Some(libc::EPERM)));
            let missing = ferry_engine::check::missing_caps();
            let hint = if eperm && !missing.is_empty() {
                format!(" (ferry lacks {}: run it as root)", missing.join(", "))
            } else {
                String::new()
            };
            eprintln!("ferry: {}{hint}", chain.join(": "));
            std::process::exit(1);
        }
    }
}

/// The directory `--prev-images-dir P` names: P itself when absolute, else P relative to the
/// images directory `dir`, which need not exist yet (`ferry dump -D new --prev-images-dir
/// ../pre`): the part of `dir` that exists is resolved by the kernel, the rest lexically.
fn parent_dir(dir: &std::path::Path, p: &std::path::Path) -> PathBuf {
    use std::path::Component;
    if p.is_absolute() || dir.exists() {
        return dir.join(p);
    }
    let mut base = dir.to_path_buf();
    let mut rest = Vec::new();
    while !base.as_os_str().is_empty() && !base.exists() {
        match base.file_name() {
            Some(name) => rest.push(name.to_os_string()),
            None => break,
        }
        base.pop();
    }
    let mut out = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
    for name in rest.into_iter().rev() {
        out.push(name);
    }
    for c in p.components() {
        match c {
            Component::ParentDir if !out.exists() => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}
