//! One module per kind of process state. Each knows how to collect its state from a frozen
//! process at dump time and how to recreate it at restore time, in up to three places:
//!
//! * `prepare`: in ferry, before the process is forked (open files, create pipes) — errors
//!   here are cheap because nothing exists yet;
//! * `apply_in_child`: in the forked child, still running ferry's code, for state a process
//!   sets on itself (fd table, cwd, umask, signal handlers);
//! * `restore`: by the tracer, with injected syscalls after the address space is rebuilt
//!   (memory, timers, credentials, registers last).

pub mod aio;
pub mod cgroup;
pub mod cgroupns;
pub mod cow;
pub mod cpu;
pub mod creds;
pub mod epoll;
pub mod eventfd;
pub mod external;
pub mod fanotify;
pub mod fifo;
pub mod files;
pub mod fown;
pub mod ghost_node;
pub mod inet;
pub mod inflight;
pub mod inotify;
pub mod ipcns;
pub mod jobstop;
pub mod locks;
pub mod memfd_seals;
pub mod memory;
pub mod mounts;
pub mod namespaces;
pub mod nested_ns;
pub mod netlink;
pub mod netlock;
pub mod netns;
pub mod nettools;
pub mod nftables;
pub mod nsctx;
pub mod nsfile;
pub mod packet;
pub mod peercred;
pub mod pidfd;
pub mod pipes;
pub mod premapped;
pub mod rseq;
pub mod seccomp;
pub mod session;
pub mod signalfd;
pub mod signals;
pub mod snapshot;
pub mod sockfilter;
pub mod sockopts;
pub mod sysvshm;
pub mod task;
pub mod tcp_repair;
pub mod timens;
pub mod timerfd;
pub mod timers;
pub mod tracked;
pub mod tty;
pub mod tun;
pub mod unix;
pub mod userns;
pub mod uts;
