//! The `ferry` command line: a thin layer over `ferry-engine`.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

use ferry::{inspect, migrate};

/// Checkpoint a running Linux process to an image and restore it, with the same PID,
/// exactly where it stopped.
#[derive(Parser)]
#[command(name = "ferry", version, about)]
struct Cli {
    /// Print progress logs to stderr (repeat for more detail).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
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
        /// The process was started from a terminal (a shell job): its terminal stays outside the
        /// image, and restore puts it onto the terminal `ferry restore --shell-job` runs on.
        #[arg(short = 'j', long = "shell-job")]
        shell_job: bool,
        /// Compress the page data with zstd at this level (default 3), using every CPU: for
        /// disks and networks slower than the CPU. Restore decompresses it first.
        #[arg(long, value_name = "LEVEL", num_args = 0..=1, default_missing_value = "3", require_equals = true)]
        compress: Option<i32>,
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
    },
    /// Start a job ready to be checkpointed: in a session of its own, or with --pidns in a new
    /// pid namespace under a minimal init, so that it can be restored on any host without pid
    /// clashes (dump the init's pid to take the whole namespace).
    Run {
        /// Run the job in a new pid namespace (its init is `ferry __init`).
        #[arg(long)]
        pidns: bool,
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
        /// Exit after this many connections (for tests).
        #[arg(long, hide = true)]
        max_migrations: Option<u64>,
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
    },
    /// Show what an image holds: process, mappings with sizes, fds, signals, timers.
    Inspect {
        /// Image directory.
        dir: PathBuf,
        /// Print the complete content as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn init_logs(verbose: u8) {
    let level = match verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
        Cmd::Dump { pid, dir, leave_running, tcp_close, tcp_established, shell_job, compress } => {
            ferry_engine::state::memory::set_page_compression(compress.unwrap_or(0).clamp(0, 22));
            let opts = ferry_engine::dump::DumpOptions {
                pid,
                dir: dir.clone(),
                leave_running,
                tcp_close,
                tcp_established,
                shell_job,
            };
            let r = ferry_engine::dump::dump(&opts).with_context(|| format!("dump of pid {pid} failed"))?;
            tracing::info!(
                "dumped pid {pid} to {}: {} MiB of pages, {} mappings, {} fds in {:.1} ms (frozen {:.1} ms)",
                dir.display(),
                r.pages_bytes >> 20,
                r.vmas,
                r.fds,
                r.total.as_secs_f64() * 1e3,
                r.frozen.as_secs_f64() * 1e3
            );
            Ok(0)
        }
        Cmd::Restore { dir, detached, pidfile, shell_job } => {
            let opts = ferry_engine::restore::RestoreOptions { dir: dir.clone(), pidfile, shell_job };
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
        Cmd::Run { pidns, detach, pidfile, cmd } => {
            let opts = ferry_engine::launch::RunOptions { cmd, pidns, detach, pidfile };
            let (pid, status) = ferry_engine::launch::run(&opts).context("ferry run failed")?;
            if detach {
                println!("{pid}");
            }
            Ok(status.unwrap_or(0))
        }
        Cmd::Init { cmd } => ferry_engine::launch::init(&cmd),
        Cmd::Keygen { dir } => {
            let public = migrate::keygen(&dir)?;
            println!("{public}");
            Ok(0)
        }
        Cmd::Serve { listen, auth, staging, max_image_mib, max_files, max_processes, max_migrations } => {
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
            })?;
            Ok(0)
        }
        Cmd::Migrate { pid, to, auth, pre_copy, post_copy, timeout, tcp_established, tcp_close } => {
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
            })?;
            Ok(0)
        }
        Cmd::Inspect { dir, json } => {
            inspect::run(&dir, json)?;
            Ok(0)
        }
    }
}

fn main() {
    let cli = Cli::parse();
    init_logs(cli.verbose);
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("ferry: {}", chain.join(": "));
            std::process::exit(1);
        }
    }
}
