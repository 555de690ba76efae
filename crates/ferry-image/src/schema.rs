//! The image's records. `proto/ferry.proto` is the language-neutral copy of this schema (field
//! numbers and types are identical), so other tools can decode an image without ferry.
//! Field numbers are never reused; new fields are added with new numbers, which older readers
//! skip. A change that older readers would misread bumps [`crate::FORMAT_VERSION`].

use serde::Serialize;

/// `inventory.img`: written last. An image directory without it is incomplete.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Inventory {
    #[prost(uint32, tag = "1")]
    pub format_version: u32,
    #[prost(string, tag = "2")]
    pub tool_version: String,
    #[prost(int32, tag = "3")]
    pub root_pid: i32,
    #[prost(int32, repeated, tag = "4")]
    pub pids: Vec<i32>,
    #[prost(string, tag = "5")]
    pub kernel_release: String,
    #[prost(uint64, tag = "6")]
    pub created_unix_ms: u64,
    /// Every other file of the image with its size and checksum.
    #[prost(message, repeated, tag = "7")]
    pub files: Vec<FileDigest>,
    /// The tree is a whole pid namespace (its root is the namespace's init, `ferry run --pidns`):
    /// every pid in the image is as that namespace sees it, and restore creates a new one.
    #[prost(bool, tag = "30")]
    pub pidns: bool,
    /// Set when the tree was dumped with `--shell-job`: its terminal was outside the tree.
    #[prost(message, optional, tag = "22")]
    pub shell_job: Option<TtyShellJob>,
    /// `dump -R` with a copy-on-write snapshot: the tree ran again once its state and a snapshot
    /// of its memory were taken; the pages are those at the freeze (but see
    /// `Vma.content_at_end`).
    #[prost(bool, tag = "471")]
    pub snapshot: bool,
    /// The namespaces the tree has apart from ferry's (every process of the tree is in the
    /// root's set); None: all shared with ferry. See state/namespaces.rs.
    #[prost(message, optional, tag = "440")]
    pub namespaces: Option<Namespaces>,
    /// Namespaces of processes of the tree that differ from the root's (nested: a process that
    /// unshared its own net, uts, ipc or time namespace), each once with its content;
    /// `Process.ns_inodes` says who is in which (state/nested_ns.rs).
    #[prost(message, repeated, tag = "660")]
    pub nested_ns: Vec<NestedNs>,
    /// Set in a pre-dump's image (`criu pre-dump`, the RPC's PRE_DUMP): memory only, no
    /// process record; restore refuses it. A later dump names it as its parent (predump.rs).
    #[prost(message, optional, tag = "1000")]
    pub pre_dump: Option<PreDump>,
}

/// What a pre-dump copied while the tree ran, and where the write tracking it started lives on.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct PreDump {
    /// The unix socket of the keeper holding the tracking (userfaultfds) until the next dump
    /// takes it (empty: none, the next dump copies everything).
    #[prost(string, tag = "1001")]
    pub keeper_socket: String,
    /// The keeper's pid (checked with SO_PEERCRED when the next dump connects).
    #[prost(int32, tag = "1002")]
    pub keeper_pid: i32,
    #[prost(message, repeated, tag = "1003")]
    pub procs: Vec<PreDumpProc>,
}

/// The pages of one process a pre-dump copied into its `pages-PID.img` (PID: `image_pid`).
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct PreDumpProc {
    /// Its pid on this node and its start time (clock ticks after boot, /proc/PID/stat): the
    /// next dump uses the copies only for this very process.
    #[prost(int32, tag = "1004")]
    pub pid: i32,
    #[prost(uint64, tag = "1005")]
    pub start_time: u64,
    #[prost(int32, tag = "1006")]
    pub image_pid: i32,
    /// Whether its writes are still tracked (its userfaultfd is with the keeper): without it,
    /// the copies cannot be trusted and the next dump copies everything.
    #[prost(bool, tag = "1007")]
    pub tracked: bool,
    /// The pages copied, at their offset in the page file (the latest copy of each page).
    #[prost(message, repeated, tag = "1008")]
    pub runs: Vec<PageRun>,
    /// Pages found all zeros (`offset` unused).
    #[prost(message, repeated, tag = "1009")]
    pub zeros: Vec<PageRun>,
}

/// A namespace of some processes of the tree that is not the root's (state/nested_ns.rs).
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct NestedNs {
    /// "net", "uts", "ipc", "time" or "mnt".
    #[prost(string, tag = "1")]
    pub kind: String,
    /// Its inode number at dump (its identity in `Process.ns_inodes`).
    #[prost(uint64, tag = "2")]
    pub inode: u64,
    /// Its content, as the kind's module records it for a root namespace (`kinds` names this
    /// one namespace; the message of its kind is set).
    #[prost(message, optional, tag = "3")]
    pub content: Option<Namespaces>,
    /// A mount namespace: the inode of the nested mount namespace it is a copy of (made by
    /// `unshare` from it), 0 for the tree's root's. Restore makes the parent first.
    #[prost(uint64, tag = "760")]
    pub parent: u64,
}

/// The tree's own namespaces (other than pid, which `Inventory.pidns` covers) and their
/// contents, one optional message per kind that has a module.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Namespaces {
    /// Every kind in which the tree's namespace differs from ferry's.
    #[prost(message, repeated, tag = "1")]
    pub kinds: Vec<NsKind>,
    /// Host and domain name (kind "uts").
    #[prost(message, optional, tag = "2")]
    pub uts: Option<UtsNs>,
    /// The mount tree (kind "mnt").
    #[prost(message, optional, tag = "3")]
    pub mnt: Option<MountNs>,
    /// The clocks (kind "time", state/timens.rs).
    #[prost(message, optional, tag = "450")]
    pub nsx_time: Option<NsxTimens>,
    /// Devices, addresses, routes, sysctls (kind "net", state/netns.rs).
    #[prost(message, optional, tag = "451")]
    pub nsx_net: Option<NsxNetns>,
    /// SysV objects and limits (kind "ipc", state/ipcns.rs).
    #[prost(message, optional, tag = "452")]
    pub nsx_ipc: Option<NsxIpcns>,
    /// The user namespace's maps and what it owns (kind "user", state/userns.rs).
    #[prost(message, optional, tag = "510")]
    pub userns: Option<UsernsRec>,
    /// The cgroup namespace's root in every hierarchy (kind "cgroup", state/cgroupns.rs).
    #[prost(message, optional, tag = "511")]
    pub cgroupns: Option<CgroupnsRec>,
}

/// A user namespace (a child of ferry's): its maps as ferry's sees them, setgroups, and the
/// tree's other namespaces it owns (made from inside it).
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct UsernsRec {
    #[prost(message, repeated, tag = "1")]
    pub uid_map: Vec<UsernsExtent>,
    #[prost(message, repeated, tag = "2")]
    pub gid_map: Vec<UsernsExtent>,
    /// /proc/PID/setgroups was "deny".
    #[prost(bool, tag = "3")]
    pub setgroups_deny: bool,
    /// Kinds ("net", "uts", "ipc", "cgroup", ...) of the tree's namespaces this one owns.
    #[prost(string, repeated, tag = "4")]
    pub owned: Vec<String>,
}

/// One line of a uid_map or gid_map: `count` ids from `inside` are `outside` in the parent.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct UsernsExtent {
    #[prost(uint32, tag = "1")]
    pub inside: u32,
    #[prost(uint32, tag = "2")]
    pub outside: u32,
    #[prost(uint32, tag = "3")]
    pub count: u32,
}

/// A cgroup namespace: the cgroup it was made at, per hierarchy (paths as ferry sees them).
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct CgroupnsRec {
    #[prost(message, repeated, tag = "1")]
    pub roots: Vec<Cgroup>,
}

/// One namespace of the tree: its kind ("mnt", "net", "uts", "ipc", "cgroup", "time") and, if
/// it was given as external at dump (`--external net[INO]:KEY`), the key restore joins it by
/// (`--inherit-fd fd[N]:KEY`) instead of creating a new one.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct NsKind {
    #[prost(string, tag = "1")]
    pub kind: String,
    /// The namespace's inode number at dump time (informational).
    #[prost(uint64, tag = "2")]
    pub inode: u64,
    #[prost(string, tag = "3")]
    pub external: String,
}

/// A uts namespace's names.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct UtsNs {
    #[prost(string, tag = "1")]
    pub hostname: String,
    #[prost(string, tag = "2")]
    pub domainname: String,
}

/// A mount namespace: its mounts as the root process sees them (/proc/PID/mountinfo), parents
/// before children.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct MountNs {
    #[prost(message, repeated, tag = "1")]
    pub mounts: Vec<MountRecord>,
}

/// One mount.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct MountRecord {
    /// mountinfo's mount id and parent id (the root mount's parent is not in the list).
    #[prost(uint32, tag = "1")]
    pub id: u32,
    /// A fresh sysfs or mqueue of a nested mount namespace: the nested network (sysfs) or ipc
    /// (mqueue) namespace it shows, by its inode at dump, in which restore mounts it; 0: the
    /// tree root's (state/mounts.rs `nested_check`).
    #[prost(uint64, tag = "934")]
    pub ns_inode: u64,
    /// A fresh devpts of a nested mount namespace: its device at dump (`Pty.devpts_dev` of
    /// the pairs restore makes in it, with their indexes); 0 otherwise (state/tty.rs).
    #[prost(uint64, tag = "1040")]
    pub devpts_dev: u64,
    /// A proc of a nested mount namespace in a tree with its own pid namespace (made fresh
    /// there, or its copy of the root's): it shows the tree's pid namespace, so the first
    /// restored process of that pid namespace in that mount namespace mounts it again
    /// (ferry's own view of proc sits there until then; state/mounts.rs).
    #[prost(bool, tag = "1042")]
    pub pidns_proc: bool,
    #[prost(uint32, tag = "2")]
    pub parent: u32,
    /// Where it is mounted, as the root process sees it ("/" for its root).
    #[prost(string, tag = "3")]
    pub mountpoint: String,
    #[prost(string, tag = "4")]
    pub fstype: String,
    #[prost(string, tag = "5")]
    pub source: String,
    /// The directory of the file system this mount shows ("/" unless a bind of a sub-directory).
    #[prost(string, tag = "6")]
    pub root: String,
    /// Per-mount flags: MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_NOATIME, MS_NODIRATIME,
    /// MS_RELATIME, MS_STRICTATIME.
    #[prost(uint64, tag = "7")]
    pub flags: u64,
    /// Super-block options (mountinfo's last field) without "rw"/"ro".
    #[prost(string, tag = "8")]
    pub options: String,
    /// The super-block is read-only.
    #[prost(bool, tag = "9")]
    pub sb_ro: bool,
    /// Peer group if shared (0: not), master group if a slave (0: not).
    #[prost(uint32, tag = "10")]
    pub shared: u32,
    #[prost(uint32, tag = "11")]
    pub master: u32,
    #[prost(bool, tag = "12")]
    pub unbindable: bool,
    /// Not recreated but taken from the restoring node: the key (`--external mnt[KEY]:PATH`
    /// at restore, `--root` for "/").
    #[prost(string, tag = "13")]
    pub external: String,
    /// Another mount of the same super-block recorded earlier (its id; 0: the first): this one
    /// is a bind of it.
    #[prost(uint32, tag = "14")]
    pub bind_of: u32,
    /// tmpfs: the image file with its content (`mnt-ID.img`, a `TmpfsContent`).
    #[prost(string, tag = "15")]
    pub content: String,
    /// tmpfs: the image file with its regular files' data (`mnt-ID-data.img`): the bytes of
    /// each file's `extents`, one after the other, in the order of `content`'s entries. Empty
    /// (an older image): each entry's `data` holds its whole file.
    #[prost(string, tag = "1100")]
    pub content_data: String,
    /// In a nested mount namespace, a copy of its parent namespace's mount (`external` =
    /// "parent:MOUNTPOINT"): 1 when it is in that mount's peer group, 2 when a slave of it,
    /// 0 when private to the nested namespace (state/mounts.rs, `restore_nested`).
    #[prost(uint32, tag = "761")]
    pub parent_peer: u32,
}

/// The files of a tmpfs mount, parents before children (`mnt-ID.img`).
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct TmpfsContent {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<TmpfsEntry>,
}

/// One file of a tmpfs: path relative to the mount's root ("" for the root itself).
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct TmpfsEntry {
    #[prost(string, tag = "1")]
    pub path: String,
    /// st_mode (type and permission bits).
    #[prost(uint32, tag = "2")]
    pub mode: u32,
    #[prost(uint32, tag = "3")]
    pub uid: u32,
    #[prost(uint32, tag = "4")]
    pub gid: u32,
    #[prost(int64, tag = "5")]
    pub atime_ns: i64,
    #[prost(int64, tag = "6")]
    pub mtime_ns: i64,
    /// Device number of a device node.
    #[prost(uint64, tag = "7")]
    pub rdev: u64,
    /// Target of a symbolic link.
    #[prost(string, tag = "8")]
    pub target: String,
    /// Content of a regular file (an older image, without `MountRecord::content_data`).
    #[prost(bytes = "vec", tag = "9")]
    #[serde(skip)]
    pub data: Vec<u8>,
    /// A regular file's data ranges (SEEK_DATA/SEEK_HOLE), whose bytes are in the mount's
    /// `content_data` file; the rest up to `size` is holes.
    #[prost(message, repeated, tag = "1100")]
    pub extents: Vec<Extent>,
    /// A regular file's size.
    #[prost(uint64, tag = "1101")]
    pub size: u64,
}

/// A job started from the user's terminal (`--shell-job`): what restore needs to put it back
/// onto the terminal ferry runs on.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct TtyShellJob {
    /// The terminal at dump time ("/dev/pts/3"), for messages.
    #[prost(string, tag = "1")]
    pub terminal: String,
    /// The root's process group was the terminal's foreground group.
    #[prost(bool, tag = "2")]
    pub foreground: bool,
    /// The terminal's `struct termios2` at dump time (x86_64 layout, 44 bytes).
    #[prost(bytes = "vec", tag = "3")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub termios: Vec<u8>,
    /// The root's process group at dump time.
    #[prost(int32, tag = "4")]
    pub pgid: i32,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct FileDigest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, tag = "2")]
    pub size: u64,
    #[prost(uint32, tag = "3")]
    pub crc32: u32,
    /// BLAKE3 hash (32 bytes) of the whole file; empty in images written before it existed.
    #[prost(bytes = "vec", tag = "210")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub blake3: Vec<u8>,
}

/// `signature.img` (record kind 3): a node's signature over the image digest (the BLAKE3 hash
/// of the whole `inventory.img`), see `sign.rs`.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct ImageSignature {
    /// "xeddsa-25519-sha512".
    #[prost(string, tag = "1")]
    pub scheme: String,
    /// The signer's X25519 public key (its `node.pub`, 32 bytes).
    #[prost(bytes = "vec", tag = "2")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub public_key: Vec<u8>,
    /// The image digest signed (32 bytes), for tools: verification recomputes it.
    #[prost(bytes = "vec", tag = "3")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub digest: Vec<u8>,
    /// XEdDSA signature (64 bytes) of "ferry image signature v1\0" followed by the digest.
    #[prost(bytes = "vec", tag = "4")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub signature: Vec<u8>,
}

/// `process-PID.img`: everything about one process except its page contents.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Process {
    #[prost(int32, tag = "1")]
    pub pid: i32,
    #[prost(int32, tag = "2")]
    pub ppid: i32,
    #[prost(int32, tag = "3")]
    pub pgid: i32,
    #[prost(int32, tag = "4")]
    pub sid: i32,
    #[prost(string, tag = "5")]
    pub comm: String,
    #[prost(string, tag = "6")]
    pub cwd: String,
    #[prost(string, tag = "7")]
    pub root: String,
    #[prost(uint32, tag = "8")]
    pub umask: u32,
    #[prost(uint64, tag = "9")]
    pub personality: u64,
    #[prost(message, optional, tag = "10")]
    pub creds: Option<Creds>,
    #[prost(message, repeated, tag = "11")]
    pub rlimits: Vec<Rlimit>,
    #[prost(message, repeated, tag = "12")]
    pub threads: Vec<Thread>,
    #[prost(message, optional, tag = "13")]
    pub mm: Option<Mm>,
    #[prost(message, repeated, tag = "14")]
    pub fds: Vec<Fd>,
    #[prost(message, repeated, tag = "15")]
    pub files: Vec<File>,
    #[prost(message, repeated, tag = "16")]
    pub pipes: Vec<Pipe>,
    #[prost(message, repeated, tag = "17")]
    pub sigactions: Vec<SigAction>,
    #[prost(message, repeated, tag = "18")]
    pub shared_pending: Vec<Siginfo>,
    #[prost(message, repeated, tag = "19")]
    pub itimers: Vec<ITimer>,
    #[prost(message, repeated, tag = "20")]
    pub posix_timers: Vec<PosixTimer>,
    #[prost(int32, tag = "21")]
    pub dumpable: i32,
    #[prost(int32, tag = "22")]
    pub pdeathsig: i32,
    #[prost(bool, tag = "23")]
    pub child_subreaper: bool,
    /// `exit_signal` from /proc/PID/stat (SIGCHLD for a normal fork).
    #[prost(int32, tag = "24")]
    pub exit_signal: i32,
    #[prost(uint32, tag = "25")]
    pub tty_nr: u32,
    /// Scheduling: nice value, policy (SCHED_*; reset-on-fork flag included), static priority,
    /// CPU affinity mask.
    #[prost(int32, tag = "26")]
    pub nice: i32,
    #[prost(int32, tag = "27")]
    pub sched_policy: i32,
    #[prost(int32, tag = "28")]
    pub sched_priority: i32,
    #[prost(bytes = "vec", tag = "29")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub cpu_affinity: Vec<u8>,
    /// An exited process its parent has not reaped yet: only ids and `exit_status` are kept.
    #[prost(bool, tag = "30")]
    pub zombie: bool,
    /// For a zombie: the status its parent's waitpid() will report.
    #[prost(int32, tag = "31")]
    pub exit_status: i32,
    /// The process was stopped by job control (group stop) at dump time: the signal that
    /// stopped it (SIGSTOP, SIGTSTP, SIGTTIN or SIGTTOU), 0 if it was running. Restore stops
    /// it again with that signal before it runs a single instruction.
    #[prost(int32, tag = "320")]
    pub stop_signal: i32,
    /// In a stop (`stop_signal`), and its parent, in the tree, had already collected the stop
    /// report (`waitpid(WUNTRACED)`): restore collects the new one in the parent, so that it
    /// is not reported twice. False: the report was still pending, and is again.
    #[prost(bool, tag = "910")]
    pub stop_collected: bool,
    /// SysV shared memory segments this process is the first of the tree to attach.
    #[prost(message, repeated, tag = "45")]
    pub sysv_shm: Vec<SysvShm>,
    /// The cgroup the process is in, in every hierarchy (v1 and v2).
    #[prost(message, repeated, tag = "50")]
    pub cgroups: Vec<Cgroup>,
    /// /proc/PID/oom_score_adj (-1000..1000).
    #[prost(int32, tag = "300")]
    pub oom_score_adj: i32,
    /// /proc/PID/loginuid (the audit login uid; 4294967295: never set). None in an image
    /// written before it was kept: left as the restored process inherits it.
    #[prost(uint32, optional, tag = "301")]
    pub loginuid: Option<u32>,
    /// prctl(PR_GET_THP_DISABLE): 0, or 1 with its flags (PR_THP_DISABLE_EXCEPT_ADVISED, 1 << 1).
    #[prost(uint32, tag = "302")]
    pub thp_disable: u32,
    /// membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS): the MEMBARRIER_CMD_REGISTER_* commands the
    /// process has done.
    #[prost(uint32, tag = "303")]
    pub membarrier: u32,
    /// Attributes (and data layout) of the deleted files, device nodes and memfds this process
    /// is the first of the tree to hold; `GhostFile.name` ties each to its content file.
    #[prost(message, repeated, tag = "280")]
    pub ghosts: Vec<GhostFile>,
    /// The seccomp filters of this process's threads, each once (`Thread.seccomp_chain` points
    /// into this list).
    #[prost(message, repeated, tag = "420")]
    pub seccomp_filters: Vec<SeccompFilter>,
    /// The cwd was removed (rmdir) while the process was in it: `cwd` is its old path.
    #[prost(message, optional, tag = "423")]
    pub cwd_ghost: Option<GhostInode>,
    /// Non-zero: this process shares the fd table of process `fd_table_of` (its parent, which
    /// created it with clone(CLONE_FILES)); restore creates it with CLONE_FILES and only the
    /// parent applies the table. Its `fds`/`files` are the same table, recorded again.
    #[prost(int32, tag = "400")]
    pub fd_table_of: i32,
    /// The nested namespaces (`Inventory.nested_ns`, by inode) this process is in, for the
    /// kinds in which it is not in the root's.
    #[prost(uint64, repeated, tag = "661")]
    pub ns_inodes: Vec<u64>,
    /// Its pids in the pid namespaces nested below the tree's, outermost first (empty in the
    /// tree's own; `[1]` for the init of a nested one). `pid` stays its pid in the tree's.
    #[prost(int32, repeated, tag = "662")]
    pub ns_pid: Vec<i32>,
    /// Its future children's pid namespace is not its own (unshare(CLONE_NEWPID), `unshare -p
    /// -f`): > 0, that of its child with this pid (the namespace's init); -1: a new one no
    /// process is in yet.
    #[prost(int32, tag = "664")]
    pub pidns_for_children: i32,
    /// Its future children's time namespace is a new one nobody is in yet
    /// (unshare(CLONE_NEWTIME) before any fork): its clocks, as for a root one.
    #[prost(message, optional, tag = "665")]
    pub time_for_children: Option<NsxTimens>,
}

/// One seccomp filter: its classic BPF program and the flags the kernel keeps for it.
/// Threads whose chains hold the same filter at the same place (the same program, installed
/// on the same older chain) share it: one thread installed it with SECCOMP_FILTER_FLAG_TSYNC,
/// or the threads were created after it was installed.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct SeccompFilter {
    /// `struct sock_filter` array, 8 bytes per instruction (PTRACE_SECCOMP_GET_FILTER).
    #[prost(bytes = "vec", tag = "1")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub program: Vec<u8>,
    /// SECCOMP_FILTER_FLAG_LOG (PTRACE_SECCOMP_GET_METADATA), else 0.
    #[prost(uint64, tag = "2")]
    pub flags: u64,
}

/// A file recreated at restore (deleted while open, a deleted device node, or a memfd): what
/// `fstat` reports of it besides its identity, and where its data is.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct GhostFile {
    /// The image file that holds its data ("ghost-DEV-INO.img", "memfd-INO.img").
    #[prost(string, tag = "1")]
    pub name: String,
    /// st_size: the recreated file is truncated to it (trailing holes included).
    #[prost(uint64, tag = "2")]
    pub size: u64,
    /// st_mode: file type and permission bits (setuid, setgid, sticky included).
    #[prost(uint32, tag = "3")]
    pub mode: u32,
    #[prost(uint32, tag = "4")]
    pub uid: u32,
    #[prost(uint32, tag = "5")]
    pub gid: u32,
    /// st_atim and st_mtim in nanoseconds since the epoch.
    #[prost(int64, tag = "6")]
    pub atime_ns: i64,
    #[prost(int64, tag = "7")]
    pub mtime_ns: i64,
    /// A device node: st_rdev (recreated with mknod).
    #[prost(uint64, tag = "8")]
    pub rdev: u64,
    /// The data extents (SEEK_DATA/SEEK_HOLE), in order; the content file holds their bytes one
    /// after the other and everything else is a hole. Whole file in one extent when the file
    /// system does not report holes.
    #[prost(message, repeated, tag = "9")]
    pub data: Vec<Extent>,
    /// The content is in the page file (a memfd only mapped shared): attributes only.
    #[prost(bool, tag = "10")]
    pub attrs_only: bool,
}

/// A byte range of a file.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Extent {
    #[prost(uint64, tag = "1")]
    pub offset: u64,
    #[prost(uint64, tag = "2")]
    pub len: u64,
}

/// Who receives SIGIO/SIGURG for an open file description (F_GETOWN_EX, F_GETSIG).
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct FileOwner {
    /// F_OWNER_TID (0), F_OWNER_PID (1) or F_OWNER_PGRP (2).
    #[prost(int32, tag = "1")]
    pub kind: i32,
    /// The thread, process or process group id (as the dumped tree saw it).
    #[prost(int32, tag = "2")]
    pub id: i32,
    /// F_GETSIG: the signal sent instead of SIGIO (0: SIGIO).
    #[prost(int32, tag = "3")]
    pub signum: i32,
}

/// A SysV shared memory segment (`shmget`), recreated with the same key and id.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct SysvShm {
    #[prost(int32, tag = "1")]
    pub key: i32,
    #[prost(int32, tag = "2")]
    pub shmid: i32,
    #[prost(uint64, tag = "3")]
    pub size: u64,
    /// Permission bits, with SHM_DEST (0o1000) when IPC_RMID was done (the segment goes away
    /// with its last detach).
    #[prost(uint32, tag = "4")]
    pub mode: u32,
    #[prost(uint32, tag = "5")]
    pub uid: u32,
    #[prost(uint32, tag = "6")]
    pub gid: u32,
    /// The file of the image holding the segment's content (`sysvshm-ID.img`).
    #[prost(string, tag = "7")]
    pub data: String,
    /// Made of huge pages of this many bytes (`SHM_HUGETLB`); 0: ordinary pages.
    #[prost(uint64, tag = "1102")]
    pub huge_page_size: u64,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Creds {
    /// real, effective, saved, filesystem
    #[prost(uint32, repeated, tag = "1")]
    pub uids: Vec<u32>,
    #[prost(uint32, repeated, tag = "2")]
    pub gids: Vec<u32>,
    #[prost(uint32, repeated, tag = "3")]
    pub groups: Vec<u32>,
    #[prost(uint64, tag = "4")]
    pub cap_inh: u64,
    #[prost(uint64, tag = "5")]
    pub cap_prm: u64,
    #[prost(uint64, tag = "6")]
    pub cap_eff: u64,
    #[prost(uint64, tag = "7")]
    pub cap_bnd: u64,
    #[prost(uint64, tag = "8")]
    pub cap_amb: u64,
    #[prost(uint32, tag = "9")]
    pub securebits: u32,
    #[prost(bool, tag = "10")]
    pub no_new_privs: bool,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Rlimit {
    #[prost(uint32, tag = "1")]
    pub resource: u32,
    #[prost(uint64, tag = "2")]
    pub cur: u64,
    #[prost(uint64, tag = "3")]
    pub max: u64,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Thread {
    #[prost(int32, tag = "1")]
    pub tid: i32,
    /// Its ids in the pid namespaces nested below the tree's, outermost first (as
    /// `Process.ns_pid`).
    #[prost(int32, repeated, tag = "663")]
    pub ns_tid: Vec<i32>,
    #[prost(message, optional, tag = "2")]
    pub regs: Option<Regs>,
    /// The raw XSAVE area as PTRACE_GETREGSET(NT_X86_XSTATE) returns it.
    #[prost(bytes = "vec", tag = "3")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub xstate: Vec<u8>,
    #[prost(uint64, tag = "4")]
    pub sigmask: u64,
    #[prost(message, repeated, tag = "5")]
    pub pending: Vec<Siginfo>,
    #[prost(message, optional, tag = "6")]
    pub altstack: Option<SigAltStack>,
    #[prost(message, optional, tag = "7")]
    pub rseq: Option<Rseq>,
    #[prost(uint64, tag = "8")]
    pub robust_list_head: u64,
    #[prost(uint64, tag = "9")]
    pub robust_list_len: u64,
    #[prost(uint64, tag = "10")]
    pub clear_child_tid: u64,
    #[prost(string, tag = "11")]
    pub comm: String,
    /// What the thread was doing when frozen, for `inspect` ("running", "in syscall 35 (restarted)").
    #[prost(string, tag = "12")]
    pub stopped_in: String,
    /// Frozen inside a syscall the kernel would restart: its restart code (ERESTARTSYS 512,
    /// ERESTARTNOINTR 513, ERESTARTNOHAND 514), else 0. `regs` are then already rewound to
    /// re-execute the call (rip at the `syscall` instruction, rax its number); restore hands
    /// the kernel the interrupted state instead, so that a signal arriving as the thread resumes
    /// ends the call (EINTR) or restarts it by the kernel's own rules, as it would have.
    #[prost(uint32, tag = "13")]
    pub restart: u32,
    /// /proc/PID/task/TID/status `Seccomp`: 0 none, 1 strict, 2 filters.
    #[prost(uint32, tag = "421")]
    pub seccomp_mode: u32,
    /// The thread's seccomp filters, oldest first, as indices into `Process.seccomp_filters`.
    #[prost(uint32, repeated, tag = "422")]
    pub seccomp_chain: Vec<u32>,
    /// The thread's own nice value, scheduling policy and CPU affinity, when any of them
    /// differs from the process's (`Process.nice` ..., the main thread's); absent when the same.
    #[prost(message, optional, tag = "811")]
    pub sched: Option<ThreadSched>,
}

/// A thread's scheduling settings (`Thread.sched`), as `Process.nice` ... are the process's.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct ThreadSched {
    #[prost(int32, tag = "1")]
    pub nice: i32,
    #[prost(int32, tag = "2")]
    pub sched_policy: i32,
    #[prost(int32, tag = "3")]
    pub sched_priority: i32,
    #[prost(bytes = "vec", tag = "4")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub cpu_affinity: Vec<u8>,
}

/// x86_64 general registers in `struct user_regs_struct` terms. The instruction pointer and
/// rax are already adjusted for syscall restart at dump time; orig_rax is kept for reference.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Regs {
    #[prost(uint64, tag = "1")]
    pub r15: u64,
    #[prost(uint64, tag = "2")]
    pub r14: u64,
    #[prost(uint64, tag = "3")]
    pub r13: u64,
    #[prost(uint64, tag = "4")]
    pub r12: u64,
    #[prost(uint64, tag = "5")]
    pub rbp: u64,
    #[prost(uint64, tag = "6")]
    pub rbx: u64,
    #[prost(uint64, tag = "7")]
    pub r11: u64,
    #[prost(uint64, tag = "8")]
    pub r10: u64,
    #[prost(uint64, tag = "9")]
    pub r9: u64,
    #[prost(uint64, tag = "10")]
    pub r8: u64,
    #[prost(uint64, tag = "11")]
    pub rax: u64,
    #[prost(uint64, tag = "12")]
    pub rcx: u64,
    #[prost(uint64, tag = "13")]
    pub rdx: u64,
    #[prost(uint64, tag = "14")]
    pub rsi: u64,
    #[prost(uint64, tag = "15")]
    pub rdi: u64,
    #[prost(uint64, tag = "16")]
    pub orig_rax: u64,
    #[prost(uint64, tag = "17")]
    pub rip: u64,
    #[prost(uint64, tag = "18")]
    pub cs: u64,
    #[prost(uint64, tag = "19")]
    pub eflags: u64,
    #[prost(uint64, tag = "20")]
    pub rsp: u64,
    #[prost(uint64, tag = "21")]
    pub ss: u64,
    #[prost(uint64, tag = "22")]
    pub fs_base: u64,
    #[prost(uint64, tag = "23")]
    pub gs_base: u64,
    #[prost(uint64, tag = "24")]
    pub ds: u64,
    #[prost(uint64, tag = "25")]
    pub es: u64,
    #[prost(uint64, tag = "26")]
    pub fs: u64,
    #[prost(uint64, tag = "27")]
    pub gs: u64,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct SigAltStack {
    #[prost(uint64, tag = "1")]
    pub sp: u64,
    #[prost(int32, tag = "2")]
    pub flags: i32,
    #[prost(uint64, tag = "3")]
    pub size: u64,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Rseq {
    #[prost(uint64, tag = "1")]
    pub addr: u64,
    #[prost(uint32, tag = "2")]
    pub len: u32,
    #[prost(uint32, tag = "3")]
    pub signature: u32,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct SigAction {
    #[prost(int32, tag = "1")]
    pub sig: i32,
    #[prost(uint64, tag = "2")]
    pub handler: u64,
    #[prost(uint64, tag = "3")]
    pub flags: u64,
    #[prost(uint64, tag = "4")]
    pub restorer: u64,
    #[prost(uint64, tag = "5")]
    pub mask: u64,
}

/// A queued signal: its number and the raw 128-byte siginfo (what PTRACE_PEEKSIGINFO returns).
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Siginfo {
    #[prost(int32, tag = "1")]
    pub signo: i32,
    #[prost(bytes = "vec", tag = "2")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub raw: Vec<u8>,
}

/// An interval timer (`which`: 0 real, 1 virtual, 2 prof), times in microseconds.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct ITimer {
    #[prost(int32, tag = "1")]
    pub which: i32,
    #[prost(uint64, tag = "2")]
    pub interval_us: u64,
    #[prost(uint64, tag = "3")]
    pub value_us: u64,
}

/// A POSIX timer (timer_create), times in nanoseconds.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct PosixTimer {
    #[prost(int32, tag = "1")]
    pub id: i32,
    #[prost(int32, tag = "2")]
    pub clock_id: i32,
    #[prost(int32, tag = "3")]
    pub signo: i32,
    #[prost(uint64, tag = "4")]
    pub sigev_value: u64,
    /// SIGEV_SIGNAL (0), SIGEV_NONE (1), SIGEV_THREAD_ID (4)
    #[prost(int32, tag = "5")]
    pub notify: i32,
    #[prost(int32, tag = "6")]
    pub notify_tid: i32,
    #[prost(uint64, tag = "7")]
    pub interval_ns: u64,
    #[prost(uint64, tag = "8")]
    pub value_ns: u64,
    #[prost(int32, tag = "9")]
    pub overrun: i32,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Mm {
    #[prost(uint64, tag = "1")]
    pub start_code: u64,
    #[prost(uint64, tag = "2")]
    pub end_code: u64,
    #[prost(uint64, tag = "3")]
    pub start_data: u64,
    #[prost(uint64, tag = "4")]
    pub end_data: u64,
    #[prost(uint64, tag = "5")]
    pub start_brk: u64,
    #[prost(uint64, tag = "6")]
    pub brk: u64,
    #[prost(uint64, tag = "7")]
    pub start_stack: u64,
    #[prost(uint64, tag = "8")]
    pub arg_start: u64,
    #[prost(uint64, tag = "9")]
    pub arg_end: u64,
    #[prost(uint64, tag = "10")]
    pub env_start: u64,
    #[prost(uint64, tag = "11")]
    pub env_end: u64,
    /// /proc/PID/auxv as u64 words.
    #[prost(uint64, repeated, tag = "12")]
    pub auxv: Vec<u64>,
    #[prost(string, tag = "13")]
    pub exe_path: String,
    #[prost(message, repeated, tag = "14")]
    pub vmas: Vec<Vma>,
    /// crc32 and size of the vDSO text the process ran with; restore refuses a different one.
    #[prost(uint32, tag = "15")]
    pub vdso_crc32: u32,
    #[prost(uint64, tag = "16")]
    pub vdso_size: u64,
    /// Bytes of page data stored for this process in `pages-PID.img`.
    #[prost(uint64, tag = "17")]
    pub pages_bytes: u64,
}

/// What backs a mapping, which decides how restore recreates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration, Serialize)]
#[repr(i32)]
pub enum VmaKind {
    Invalid = 0,
    /// Private anonymous memory (heap, stack, malloc arenas): stored pages only.
    Anon = 1,
    /// Private file mapping: the file supplies clean pages, COW-modified pages are stored.
    FilePrivate = 2,
    /// Shared file mapping: the file is the storage; no pages stored.
    FileShared = 3,
    /// Shared anonymous memory: all touched pages stored.
    SharedAnon = 4,
    Vdso = 5,
    Vvar = 6,
    VvarVclock = 7,
    Vsyscall = 8,
    /// The ring of an `io_setup` context (`/[aio]`): recreated with `io_setup` and moved to its
    /// old address (its address is the context id); its state is in `Vma.aio`.
    AioRing = 550,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Vma {
    #[prost(uint64, tag = "1")]
    pub start: u64,
    #[prost(uint64, tag = "2")]
    pub end: u64,
    /// PROT_* bits
    #[prost(uint32, tag = "3")]
    pub prot: u32,
    #[prost(enumeration = "VmaKind", tag = "4")]
    pub kind: i32,
    /// File offset in bytes.
    #[prost(uint64, tag = "5")]
    pub offset: u64,
    /// Backing file path, or the pseudo name ("[heap]", "[stack]", "[anon:...]").
    #[prost(string, tag = "6")]
    pub path: String,
    /// For a deleted backing file: the ghost file in the image holding its content.
    #[prost(string, tag = "7")]
    pub ghost: String,
    /// The two-letter VmFlags codes from smaps (gd, lo, dd, hg ...).
    #[prost(string, repeated, tag = "8")]
    pub vm_flags: Vec<String>,
    /// Runs of stored pages.
    #[prost(message, repeated, tag = "9")]
    pub runs: Vec<PageRun>,
    /// Size and mtime of the backing file at dump time, to detect a changed file at restore.
    #[prost(uint64, tag = "10")]
    pub file_size: u64,
    #[prost(int64, tag = "11")]
    pub file_mtime_ns: i64,
    /// Whether the file must be opened for writing (shared writable mapping).
    #[prost(bool, tag = "12")]
    pub file_writable: bool,
    /// For shared anonymous memory: the shmem object's inode. Mappings with the same id (in one
    /// or several processes) are one object; its pages are stored once, with the first mapping.
    #[prost(uint64, tag = "13")]
    pub shmem_id: u64,
    /// Private anonymous memory this process shares copy-on-write with its parent (whose image
    /// has a mapping with the same bounds): a page not in `runs` holds the parent's content,
    /// except in `cow_holes`, where this process has no page (reads zeros).
    #[prost(bool, tag = "14")]
    pub cow: bool,
    #[prost(message, repeated, tag = "15")]
    pub cow_holes: Vec<PageRange>,
    /// A SysV shared memory attachment (`/SYSV%08x`): restored with `shmat` of segment
    /// `sysv_shmid` (see `Process.sysv_shm`), not `mmap`.
    #[prost(bool, tag = "20")]
    pub sysv: bool,
    #[prost(int32, tag = "21")]
    pub sysv_shmid: i32,
    /// Post-copy migration: the pages of this private anonymous mapping that `runs` does not
    /// hold are not in the image; the restored process gets them from the migration source
    /// on fault (userfaultfd). Only `ferry serve` restores such an image.
    #[prost(bool, tag = "30")]
    pub lazy: bool,
    /// `dump -R` with a snapshot: this shared mapping's content (too large to copy while the
    /// tree was frozen) is the one at the end of the dump, not at the freeze.
    #[prost(bool, tag = "470")]
    pub content_at_end: bool,
    /// For an `AioRing` mapping: the ring's header and its completed events not yet reaped.
    #[prost(message, optional, tag = "550")]
    pub aio: Option<AioRing>,
}

/// The state of one AIO context (state/aio.rs): `nr` event slots, `head` and `tail` as in the
/// ring's header, and the `tail - head` completed events not yet reaped (32 bytes each, as
/// `struct io_event`). Requests still in flight are refused at dump.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct AioRing {
    #[prost(uint32, tag = "1")]
    pub nr: u32,
    #[prost(uint32, tag = "2")]
    pub head: u32,
    #[prost(uint32, tag = "3")]
    pub tail: u32,
    /// The kernel's index of the context in the process's table (the header's `id`).
    #[prost(uint32, tag = "4")]
    pub id: u32,
    #[prost(bytes = "vec", tag = "5")]
    pub events: Vec<u8>,
}

/// `nr_pages` pages starting at `addr`, stored at byte `offset` of `pages-PID.img`.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct PageRun {
    #[prost(uint64, tag = "1")]
    pub addr: u64,
    #[prost(uint64, tag = "2")]
    pub nr_pages: u64,
    #[prost(uint64, tag = "3")]
    pub offset: u64,
}

/// Membership of one cgroup hierarchy: `controllers` as in /proc/PID/cgroup (`memory`,
/// `cpu,cpuacct`, `name=systemd`; empty for cgroup v2) and the cgroup's path in it.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Cgroup {
    #[prost(string, tag = "1")]
    pub controllers: String,
    #[prost(string, tag = "2")]
    pub path: String,
}

/// `nr_pages` pages starting at `addr` (no data).
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct PageRange {
    #[prost(uint64, tag = "1")]
    pub addr: u64,
    #[prost(uint64, tag = "2")]
    pub nr_pages: u64,
}

/// One entry of the fd table: the number and which open file description it refers to.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Fd {
    #[prost(int32, tag = "1")]
    pub fd: i32,
    #[prost(bool, tag = "2")]
    pub cloexec: bool,
    /// Index into `Process.files`; fds that share a file description share the index.
    #[prost(uint32, tag = "3")]
    pub file: u32,
    /// File locks this process holds through this fd.
    #[prost(message, repeated, tag = "4")]
    pub locks: Vec<FileLock>,
}

/// A file lock (/proc/PID/fdinfo "lock:" lines).
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct FileLock {
    /// 1: POSIX (fcntl), 2: FLOCK, 3: OFD (open file description)
    #[prost(int32, tag = "1")]
    pub kind: i32,
    #[prost(bool, tag = "2")]
    pub write: bool,
    #[prost(uint64, tag = "3")]
    pub start: u64,
    /// Last byte, or u64::MAX for "to the end of the file".
    #[prost(uint64, tag = "4")]
    pub end: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration, Serialize)]
#[repr(i32)]
pub enum FileKind {
    Invalid = 0,
    Regular = 1,
    Directory = 2,
    /// /dev/null, /dev/zero, /dev/urandom and friends: reopened by path.
    CharDevice = 3,
    /// One end of a pipe whose both ends belong to the image (see `Process.pipes`).
    Pipe = 4,
    /// Not owned by the image (a terminal or a pipe of the parent at fd 0-2): restore hands
    /// over ferry's own fd of the same number, like CRIU's --shell-job/--inherit-fd.
    Inherited = 5,
    /// eventfd: `counter`, `semaphore`.
    Eventfd = 6,
    /// timerfd: `clockid`, `ticks`, `settime_flags`, `value_ns`, `interval_ns`.
    Timerfd = 7,
    /// signalfd: `sigmask`.
    Signalfd = 8,
    /// epoll instance: `epoll_targets`.
    Epoll = 9,
    /// memfd: `path` holds its name, `ino` its identity, `ghost` its content, `seals` its seals.
    Memfd = 10,
    /// A unix domain socket: `unix`.
    UnixSocket = 11,
    /// The master end of a pseudo-terminal pair (/dev/ptmx): `pty` holds the pair's state.
    PtyMaster = 15,
    /// The slave end (/dev/pts/N) of a pair whose master is in the image: `pty.index` names it.
    PtySlave = 16,
    /// An AF_INET/AF_INET6 TCP or UDP socket: `inet`.
    InetSocket = 12,
    /// inotify instance: `inotify_watches`.
    Inotify = 13,
    /// A named pipe (FIFO) reopened by `path`; `ino` identifies it, `fifo_data` (on one of its
    /// descriptions) holds the unread bytes.
    Fifo = 14,
    /// An AF_PACKET socket: `packet`.
    PacketSocket = 430,
    /// An AF_NETLINK socket: `netlink`.
    NetlinkSocket = 431,
    /// A fanotify group: `fanotify`.
    Fanotify = 432,
    /// A pidfd (`anon_inode:[pidfd]`): `pidfd`.
    Pidfd = 410,
    /// An fd of /dev/net/tun, reopened by `path` and attached again: `tun`.
    Tun = 1121,
}

/// One inotify watch: its descriptor number, event mask and the watched file.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct InotifyWatch {
    #[prost(int32, tag = "1")]
    pub wd: i32,
    #[prost(uint32, tag = "2")]
    pub mask: u32,
    #[prost(string, tag = "3")]
    pub path: String,
    #[prost(uint64, tag = "4")]
    pub ino: u64,
}

/// One file registered in an epoll instance, by its fd number in the process.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct EpollTarget {
    #[prost(int32, tag = "1")]
    pub fd: i32,
    #[prost(uint32, tag = "2")]
    pub events: u32,
    #[prost(uint64, tag = "3")]
    pub data: u64,
    /// The process whose fd `fd` is the target (an epoll instance shared across processes can
    /// hold targets registered by each of them); it registers it again at restore.
    #[prost(int32, tag = "4")]
    pub owner: i32,
    /// Where the registered file is: fd `src_fd` of process `src_pid` of the image (0 in older
    /// images: fd `fd` of `owner`). Not `fd` itself when the registration outlived its fd (the
    /// file stayed open at another number) or when that number names another file in `owner`.
    #[prost(int32, tag = "410")]
    pub src_pid: i32,
    #[prost(int32, tag = "411")]
    pub src_fd: i32,
}

/// An open file description.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct File {
    #[prost(enumeration = "FileKind", tag = "1")]
    pub kind: i32,
    #[prost(string, tag = "2")]
    pub path: String,
    /// open(2) flags as fdinfo shows them (access mode, O_APPEND, O_NONBLOCK ...), without O_CLOEXEC.
    #[prost(uint32, tag = "3")]
    pub flags: u32,
    #[prost(uint64, tag = "4")]
    pub pos: u64,
    /// For a file deleted while open: the ghost file in the image holding its content.
    #[prost(string, tag = "5")]
    pub ghost: String,
    #[prost(uint32, tag = "6")]
    pub mode: u32,
    #[prost(uint64, tag = "7")]
    pub size: u64,
    /// Pipe inode (for `Pipe`), to find the `Pipe` record.
    #[prost(uint64, tag = "8")]
    pub pipe_ino: u64,
    /// A human description for `inspect` and errors ("pipe:[1234]", "/dev/pts/0").
    #[prost(string, tag = "9")]
    pub describe: String,
    #[prost(uint64, tag = "10")]
    pub counter: u64,
    #[prost(bool, tag = "11")]
    pub semaphore: bool,
    #[prost(int32, tag = "12")]
    pub clockid: i32,
    #[prost(uint64, tag = "13")]
    pub ticks: u64,
    #[prost(uint32, tag = "14")]
    pub settime_flags: u32,
    /// Remaining time to the next expiration.
    #[prost(uint64, tag = "15")]
    pub value_ns: u64,
    #[prost(uint64, tag = "16")]
    pub interval_ns: u64,
    #[prost(uint64, tag = "17")]
    pub sigmask: u64,
    #[prost(message, repeated, tag = "18")]
    pub epoll_targets: Vec<EpollTarget>,
    /// Non-zero when other processes of the image hold the same open file description (same
    /// offset, same flags): they all carry this id and restore opens it once.
    #[prost(uint32, tag = "19")]
    pub shared_id: u32,
    /// For a memfd: its inode, shared with the mappings (`Vma.shmem_id`) of the same object.
    #[prost(uint64, tag = "20")]
    pub ino: u64,
    #[prost(message, repeated, tag = "40")]
    pub inotify_watches: Vec<InotifyWatch>,
    /// For a FIFO: the bytes in flight (stored with one description per FIFO).
    #[prost(bytes = "vec", tag = "43")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub fifo_data: Vec<u8>,
    /// For a FIFO (with `fifo_data`): a process outside the tree held it open at dump, so the
    /// kernel's pipe, bytes and all, outlives the tree while that process keeps it.
    #[prost(bool, tag = "812")]
    pub fifo_held_outside: bool,
    /// For a FIFO held outside: the processes outside the tree that held it at dump. Restore
    /// takes the pipe for the dump's only while one of them still holds it (state/fifo.rs).
    #[prost(message, repeated, tag = "970")]
    pub fifo_holders: Vec<FifoHolder>,
    /// For a memfd: F_GET_SEALS.
    #[prost(uint32, tag = "44")]
    pub seals: u32,
    /// For an `InetSocket`.
    #[prost(message, optional, tag = "35")]
    pub inet: Option<InetSocket>,
    /// For `PtyMaster` and `PtySlave`: the pair this end belongs to, and its state.
    #[prost(message, optional, tag = "45")]
    pub pty: Option<Pty>,
    /// For a unix socket: everything about it, its queue included.
    #[prost(message, optional, tag = "30")]
    pub unix: Option<UnixSocket>,
    /// F_SETOWN / F_SETOWN_EX / F_SETSIG of this description, if it has an owner or a signal.
    #[prost(message, optional, tag = "281")]
    pub owner: Option<FileOwner>,
    /// For a FIFO: st_atim and st_mtim (ns since the epoch), put back after its bytes are.
    #[prost(int64, tag = "282")]
    pub atime_ns: i64,
    #[prost(int64, tag = "283")]
    pub mtime_ns: i64,
    /// A directory or FIFO removed while open: recreated at restore, opened, removed again.
    #[prost(message, optional, tag = "424")]
    pub ghost_inode: Option<GhostInode>,
    /// For an `Inherited` file that only a supervisor can give back (a pipe or socket whose
    /// peer is outside the dumped tree, kept at fd 3 or above; a unix socket named with `dump
    /// --external unix[INO]`): the key `restore --inherit-fd fd[N]:KEY` must name
    /// ("pipe:[INO]", "socket:[INO]"). Empty for fds 0-2, which fall back to ferry's own.
    #[prost(string, tag = "401")]
    pub external_key: String,
    /// For a `PacketSocket`.
    #[prost(message, optional, tag = "433")]
    pub packet: Option<PacketSocket>,
    /// For a `NetlinkSocket`.
    #[prost(message, optional, tag = "434")]
    pub netlink: Option<NetlinkSocket>,
    /// For `Fanotify`.
    #[prost(message, optional, tag = "435")]
    pub fanotify: Option<FanotifyGroup>,
    /// For a pidfd: the process (or thread) it refers to.
    #[prost(message, optional, tag = "413")]
    pub pidfd: Option<PidfdTarget>,
    /// For `Tun`: the device the fd is attached to.
    #[prost(message, optional, tag = "1120")]
    pub tun: Option<TunFile>,
}

/// An fd of /dev/net/tun (state/tun.rs): what `TUNGETIFF` and the device's getters said of it.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct TunFile {
    /// The device (in its process's network namespace, the tree's); empty for an fd never
    /// attached.
    #[prost(string, tag = "1122")]
    pub name: String,
    /// IFF_TUN or IFF_TAP, IFF_NO_PI, IFF_VNET_HDR, IFF_MULTI_QUEUE, IFF_NAPI(_FRAGS),
    /// IFF_PERSIST (the device's) and IFF_DETACH_QUEUE (this fd's queue detached).
    #[prost(uint32, tag = "1123")]
    pub flags: u32,
    /// The device's `TUNGETVNETHDRSZ`, `TUNGETSNDBUF` and `TUNGETVNETLE`.
    #[prost(int32, tag = "1124")]
    pub vnet_hdr_sz: i32,
    #[prost(int32, tag = "1125")]
    pub sndbuf: i32,
    #[prost(bool, tag = "1126")]
    pub vnet_le: bool,
}

/// A directory or FIFO that was removed while a process had it open (or as its cwd): the
/// restore creates one at its old path (or a hidden name beside it, or in /tmp), opens it, and
/// removes it again, so that the process holds an inode with no name again.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct GhostInode {
    /// Identity at dump time: every fd (and cwd) of one inode gets the same new one.
    #[prost(uint64, tag = "1")]
    pub dev: u64,
    #[prost(uint64, tag = "2")]
    pub ino: u64,
    /// st_mode (type and permissions), st_uid, st_gid.
    #[prost(uint32, tag = "3")]
    pub mode: u32,
    #[prost(uint32, tag = "4")]
    pub uid: u32,
    #[prost(uint32, tag = "5")]
    pub gid: u32,
}

/// An AF_PACKET socket: its protocol and interface, options, filter and memberships.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct PacketSocket {
    /// SOCK_RAW (3) or SOCK_DGRAM (2).
    #[prost(int32, tag = "1")]
    pub sock_type: i32,
    /// The ethertype it receives (host order; 0: none), as getsockname reports it.
    #[prost(uint32, tag = "2")]
    pub protocol: u32,
    /// The interface it is bound to (0: every interface), and its name at dump time.
    #[prost(int32, tag = "3")]
    pub ifindex: i32,
    #[prost(string, tag = "4")]
    pub ifname: String,
    /// Options whose value differs from a fresh socket's.
    #[prost(message, repeated, tag = "5")]
    pub opts: Vec<SockOpt>,
    #[prost(bytes = "vec", tag = "6")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub filter: Vec<u8>,
    #[prost(bool, tag = "7")]
    pub filter_locked: bool,
    #[prost(uint32, tag = "8")]
    pub uid: u32,
    /// PACKET_ADD_MEMBERSHIP entries (promiscuous mode, multicast addresses ...).
    #[prost(message, repeated, tag = "9")]
    pub memberships: Vec<PacketSocketMembership>,
    /// Its fanout group (PACKET_FANOUT as getsockopt reads it back: id | type << 16 | flags <<
    /// 24, also what setsockopt takes to join it); absent when in none.
    #[prost(uint32, optional, tag = "810")]
    pub fanout: Option<u32>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct PacketSocketMembership {
    #[prost(int32, tag = "1")]
    pub ifindex: i32,
    /// PACKET_MR_MULTICAST (0), PACKET_MR_PROMISC (1), PACKET_MR_ALLMULTI (2), PACKET_MR_UNICAST (3).
    #[prost(uint32, tag = "2")]
    pub kind: u32,
    #[prost(bytes = "vec", tag = "3")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub address: Vec<u8>,
    /// How many times the socket took it.
    #[prost(uint32, tag = "4")]
    pub count: u32,
}

/// An AF_NETLINK socket: protocol, port id, groups, peer and options.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct NetlinkSocket {
    /// SOCK_RAW (3) or SOCK_DGRAM (2).
    #[prost(int32, tag = "1")]
    pub sock_type: i32,
    /// NETLINK_ROUTE (0), NETLINK_USERSOCK (2), NETLINK_SOCK_DIAG (4), NETLINK_GENERIC (16) ...
    #[prost(int32, tag = "2")]
    pub protocol: i32,
    /// Its port id (0: never bound).
    #[prost(uint32, tag = "3")]
    pub portid: u32,
    /// Multicast groups joined (NETLINK_LIST_MEMBERSHIPS: bit g-1 of the words for group g).
    #[prost(uint32, repeated, tag = "4")]
    pub groups: Vec<u32>,
    /// connect(2)ed destination (both 0: not connected).
    #[prost(uint32, tag = "5")]
    pub dst_portid: u32,
    #[prost(uint32, tag = "6")]
    pub dst_group: u32,
    #[prost(message, repeated, tag = "7")]
    pub opts: Vec<SockOpt>,
    #[prost(bytes = "vec", tag = "8")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub filter: Vec<u8>,
    #[prost(bool, tag = "9")]
    pub filter_locked: bool,
    #[prost(uint32, tag = "10")]
    pub uid: u32,
}

/// A fanotify group: fanotify_init flags and every mark.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct FanotifyGroup {
    /// fanotify_init flags and event_f_flags, as fdinfo reports them.
    #[prost(uint32, tag = "1")]
    pub flags: u32,
    #[prost(uint32, tag = "2")]
    pub event_flags: u32,
    #[prost(message, repeated, tag = "3")]
    pub marks: Vec<FanotifyMark>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct FanotifyMark {
    /// 0 an inode, 1 a mount, 2 a filesystem.
    #[prost(uint32, tag = "1")]
    pub kind: u32,
    /// The marked file, the mount point, or a path on the filesystem.
    #[prost(string, tag = "2")]
    pub path: String,
    /// fdinfo's mflags (FAN_MARK_IGNORED_SURV_MODIFY ...), mask and ignored mask.
    #[prost(uint32, tag = "3")]
    pub mflags: u32,
    #[prost(uint64, tag = "4")]
    pub mask: u64,
    #[prost(uint64, tag = "5")]
    pub ignored_mask: u64,
}

/// A file descriptor in flight (SCM_RIGHTS): fd `fd` of process `pid` of the image is the
/// same open file description; or, when `file` is set, the file no process holds any more
/// (its sender closed it): entry `file` of `Process.files` of process `pid`, which no fd of
/// that process refers to (`fd` is -1), opened at restore only to go into the message.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct InFlightFd {
    #[prost(int32, tag = "1")]
    pub pid: i32,
    #[prost(int32, tag = "2")]
    pub fd: i32,
    #[prost(uint32, optional, tag = "640")]
    pub file: Option<u32>,
}

/// What a pidfd refers to (its flags, PIDFD_NONBLOCK and PIDFD_THREAD, are the file's).
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct PidfdTarget {
    /// A process (or with PIDFD_THREAD, a thread) of the image; 0 if `dead`.
    #[prost(int32, tag = "1")]
    pub pid: i32,
    /// The process exited (and was reaped) before the dump: fdinfo shows "Pid: -1".
    #[prost(bool, tag = "2")]
    pub dead: bool,
}

/// A unix domain socket. Names are raw `sun_path` bytes: a leading NUL byte marks an abstract
/// name, a path name keeps its trailing NUL.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct UnixSocket {
    /// Inode number at dump time (its identity in the image: peers refer to it).
    #[prost(uint32, tag = "1")]
    pub ino: u32,
    /// SOCK_STREAM (1), SOCK_DGRAM (2) or SOCK_SEQPACKET (5).
    #[prost(uint32, tag = "2")]
    pub sock_type: u32,
    /// TCP_ESTABLISHED (1), TCP_CLOSE (7) or TCP_LISTEN (10), as sock_diag reports it.
    #[prost(uint32, tag = "3")]
    pub state: u32,
    /// getsockname(): the bound name, or the listener's name for an accepted socket.
    #[prost(bytes = "vec", tag = "4")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub name: Vec<u8>,
    /// The socket holds `name` itself (bind); false for an accepted socket, whose name is its
    /// listener's.
    #[prost(bool, tag = "5")]
    pub bound: bool,
    /// Inode of the connected peer when it is in the image; 0 otherwise.
    #[prost(uint32, tag = "6")]
    pub peer: u32,
    /// Connected, but the peer was closed (stream: it can still read what the peer sent).
    #[prost(bool, tag = "7")]
    pub peer_dead: bool,
    /// A datagram socket connected to a socket outside the image: reconnected to this name.
    #[prost(bytes = "vec", tag = "8")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub peer_name: Vec<u8>,
    /// listen() backlog.
    #[prost(uint32, tag = "9")]
    pub backlog: u32,
    /// A listener: the clients (inodes, in the image) of the connections waiting in its accept
    /// queue, oldest first.
    #[prost(uint32, repeated, tag = "10")]
    pub pending: Vec<u32>,
    /// A client whose connection waits in a listener's accept queue: the listener's inode.
    #[prost(uint32, tag = "11")]
    pub listener: u32,
    /// sk_shutdown bits: 1 = no more receives, 2 = no more sends.
    #[prost(uint32, tag = "12")]
    pub shutdown: u32,
    #[prost(bool, tag = "13")]
    pub passcred: bool,
    /// SO_PEEK_OFF (-1: disabled).
    #[prost(int32, tag = "14")]
    pub peek_off: i32,
    /// SO_RCVBUF and SO_SNDBUF as getsockopt reports them.
    #[prost(uint32, tag = "15")]
    pub rcvbuf: u32,
    #[prost(uint32, tag = "16")]
    pub sndbuf: u32,
    /// The receive queue, oldest first: one entry per datagram/record (a stream's bytes in one).
    #[prost(message, repeated, tag = "17")]
    pub queue: Vec<UnixMessage>,
    /// The socket file was unlinked (or replaced) after bind: restore unlinks it again.
    #[prost(bool, tag = "18")]
    pub unlinked: bool,
    /// Found at fd 0-2 and kept because its peer is in the image (else it would be `Inherited`).
    #[prost(bool, tag = "19")]
    pub stdio: bool,
    /// The socket file of a path-bound socket: permission bits, owner and group.
    #[prost(uint32, tag = "20")]
    pub file_mode: u32,
    #[prost(uint32, tag = "21")]
    pub file_uid: u32,
    #[prost(uint32, tag = "22")]
    pub file_gid: u32,
    /// SO_RCVTIMEO and SO_SNDTIMEO in microseconds (0: none).
    #[prost(uint64, tag = "23")]
    pub rcvtimeo_us: u64,
    #[prost(uint64, tag = "24")]
    pub sndtimeo_us: u64,
    /// A classic BPF filter (`SO_ATTACH_FILTER`): `struct sock_filter` entries; locked with
    /// `SO_LOCK_FILTER` if `filter_locked`.
    #[prost(bytes = "vec", tag = "25")]
    pub filter: Vec<u8>,
    #[prost(bool, tag = "26")]
    pub filter_locked: bool,
    /// For a name that is a relative path: the directory it was bound in (the process's working
    /// directory or root where the socket file was found at dump), where restore binds it again.
    #[prost(string, tag = "412")]
    pub name_dir: String,
    /// SO_PEERCRED (and SO_PEERGROUPS): the credentials the kernel took for the peer at
    /// socketpair(), connect() or, for a listener, its own at listen(). None if it took none.
    #[prost(message, optional, tag = "641")]
    pub peer_cred: Option<PeerCred>,
    /// The socket's owner (its inode's uid and gid, fstat; the uid is also `sk_uid`, which
    /// sock_diag reports): the creator's fsuid/fsgid, or what fchown() made it. 0 and 0 (root,
    /// what the restore makes sockets with) are left as they come.
    #[prost(uint32, tag = "642")]
    pub owner_uid: u32,
    #[prost(uint32, tag = "643")]
    pub owner_gid: u32,
    /// The network namespace the socket is in (where it was created: an abstract name is
    /// bound and looked up there), by inode: one of `Inventory.nested_ns`; 0 for the tree's
    /// root's.
    #[prost(uint64, tag = "780")]
    pub netns: u64,
    /// The socket file of a path-bound socket (not unlinked): its device and inode (`stat`).
    /// A migration's restore on the same machine finds this very file at the name, bound to
    /// the source's frozen socket, and takes it over (state/unix.rs, `free_path`). 0: unknown
    /// (an older image).
    #[prost(uint64, tag = "800")]
    pub file_dev: u64,
    #[prost(uint64, tag = "801")]
    pub file_ino: u64,
}

/// The credentials a unix socket reports for its peer (SO_PEERCRED, SO_PEERGROUPS).
#[derive(Clone, PartialEq, Eq, prost::Message, Serialize)]
pub struct PeerCred {
    /// A process of the image (by its image pid) when `in_tree`; else the pid as the dumping
    /// ferry saw it.
    #[prost(int32, tag = "1")]
    pub pid: i32,
    #[prost(uint32, tag = "2")]
    pub uid: u32,
    #[prost(uint32, tag = "3")]
    pub gid: u32,
    #[prost(uint32, repeated, tag = "4")]
    pub groups: Vec<u32>,
    #[prost(bool, tag = "5")]
    pub in_tree: bool,
}

/// One queued message of a unix socket.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct UnixMessage {
    #[prost(bytes = "vec", tag = "1")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub data: Vec<u8>,
    /// The sender's address (datagrams), empty if it had none.
    #[prost(bytes = "vec", tag = "2")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub from: Vec<u8>,
    /// The file descriptors this message carries (SCM_RIGHTS), in order: each names an fd of a
    /// process of the image holding the same open file description.
    #[prost(message, repeated, tag = "414")]
    pub rights: Vec<InFlightFd>,
    /// The sender's credentials (SCM_CREDENTIALS) were read: `sender_pid` (a process of the
    /// image, by its image pid, when `sender_in_tree`; else the pid as the dumping ferry saw it),
    /// `sender_uid`, `sender_gid` (as the dumping ferry saw them). Without it the restoring
    /// ferry's own credentials go with the message.
    #[prost(bool, tag = "560")]
    pub has_cred: bool,
    #[prost(int32, tag = "561")]
    pub sender_pid: i32,
    #[prost(uint32, tag = "562")]
    pub sender_uid: u32,
    #[prost(uint32, tag = "563")]
    pub sender_gid: u32,
    #[prost(bool, tag = "564")]
    pub sender_in_tree: bool,
}

/// A pseudo-terminal pair with its master in the image, as seen through either end.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Pty {
    /// /dev/pts index at dump time (restore gets whatever index the kernel hands out).
    #[prost(uint32, tag = "1")]
    pub index: u32,
    /// The slave's `struct termios2` (x86_64 layout, 44 bytes).
    #[prost(bytes = "vec", tag = "2")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub termios: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub rows: u32,
    #[prost(uint32, tag = "4")]
    pub cols: u32,
    #[prost(uint32, tag = "5")]
    pub xpixel: u32,
    #[prost(uint32, tag = "6")]
    pub ypixel: u32,
    /// TIOCPKT packet mode on the master.
    #[prost(bool, tag = "7")]
    pub packet: bool,
    /// TIOCSPTLCK: the slave cannot be opened.
    #[prost(bool, tag = "8")]
    pub locked: bool,
    /// TIOCEXCL on the slave.
    #[prost(bool, tag = "9")]
    pub exclusive: bool,
    /// The session that has the slave as its controlling terminal (0: none).
    #[prost(int32, tag = "10")]
    pub session: i32,
    /// The slave's foreground process group (0: none).
    #[prost(int32, tag = "11")]
    pub foreground_pgrp: i32,
    /// Owner, group and permission bits of the slave's /dev/pts node (None: not recorded, in an
    /// image written before they were kept).
    #[prost(uint32, optional, tag = "300")]
    pub slave_mode: Option<u32>,
    #[prost(uint32, tag = "301")]
    pub slave_uid: u32,
    #[prost(uint32, tag = "302")]
    pub slave_gid: u32,
    /// Bytes the slave side wrote that the master had not read yet (after output processing).
    #[prost(bytes = "vec", tag = "425")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub output: Vec<u8>,
    /// Bytes the master side wrote that the slave had not read yet (after input processing;
    /// in canonical mode, complete lines and the line being typed).
    #[prost(bytes = "vec", tag = "426")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub input: Vec<u8>,
    /// The master was outside the tree (a container's console, held by runc's console socket
    /// or conmon; CRIU's `orphan_pts_master`): only the slave side was saved (settings, window
    /// size, node, session), no queued bytes. Restore opens a new pair and hands its master to
    /// the client that asked for it.
    #[prost(bool, tag = "530")]
    pub orphan: bool,
    /// The device at dump of the devpts instance of the pair when it is not the tree root's
    /// (a fresh devpts of a nested mount namespace, `MountRecord.devpts_dev`): restore makes the
    /// pair in that instance, with the same index; 0: the root's instance.
    #[prost(uint64, tag = "1041")]
    pub devpts_dev: u64,
}

/// A TCP or UDP socket over IPv4 or IPv6: what restore needs to recreate it with socket(),
/// setsockopt(), bind(), listen() / connect().
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct InetSocket {
    /// AF_INET (2) or AF_INET6 (10).
    #[prost(int32, tag = "1")]
    pub family: i32,
    /// SOCK_STREAM (1) or SOCK_DGRAM (2).
    #[prost(int32, tag = "2")]
    pub sock_type: i32,
    /// IPPROTO_TCP (6) or IPPROTO_UDP (17).
    #[prost(int32, tag = "3")]
    pub protocol: i32,
    /// The kernel's socket state: TCP_ESTABLISHED (1), TCP_CLOSE (7), TCP_LISTEN (10) ...; a
    /// connected UDP socket is 1, another 7.
    #[prost(uint32, tag = "4")]
    pub state: u32,
    /// Local address ("127.0.0.1:8080", "[::1]:8080", "[fe80::1%2]:53"); empty when unbound.
    #[prost(string, tag = "5")]
    pub local: String,
    /// Peer address of a connected socket; empty otherwise.
    #[prost(string, tag = "6")]
    pub peer: String,
    /// listen(2) backlog of a listening socket.
    #[prost(uint32, tag = "7")]
    pub backlog: u32,
    /// Options whose value differs from a fresh socket's, set again before bind.
    #[prost(message, repeated, tag = "8")]
    pub opts: Vec<SockOpt>,
    /// A TCP connection dropped with `dump --tcp-close`: restored as a fresh socket that is
    /// neither bound nor connected (`local`/`peer` say what it was).
    #[prost(bool, tag = "9")]
    pub closed: bool,
    /// Owner of the socket (the creator's fsuid): restore creates it with this fsuid.
    #[prost(uint32, tag = "10")]
    pub uid: u32,
    /// An established TCP connection saved with `dump --tcp-established` (TCP_REPAIR).
    #[prost(message, optional, tag = "11")]
    pub repair: Option<TcpRepair>,
    /// A classic BPF filter, as in `UnixSocket`.
    #[prost(bytes = "vec", tag = "12")]
    pub filter: Vec<u8>,
    #[prost(bool, tag = "13")]
    pub filter_locked: bool,
    /// sk_shutdown of a UDP socket or an established TCP connection: 1 reading (SHUT_RD), 2
    /// writing (SHUT_WR), 3 both; applied again with shutdown(2).
    #[prost(uint32, tag = "260")]
    pub shutdown: u32,
}

/// What TCP_REPAIR needs to put an established connection back: sequence numbers, the data
/// in both queues, negotiated options, window and timestamp.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct TcpRepair {
    #[prost(uint32, tag = "1")]
    pub send_seq: u32,
    #[prost(uint32, tag = "2")]
    pub recv_seq: u32,
    /// Sent but not acknowledged, then not yet sent.
    #[prost(bytes = "vec", tag = "3")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub send_queue: Vec<u8>,
    /// Received, not yet read by the process.
    #[prost(bytes = "vec", tag = "4")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub recv_queue: Vec<u8>,
    #[prost(uint32, tag = "5")]
    pub mss: u32,
    #[prost(uint32, tag = "6")]
    pub snd_wscale: u32,
    #[prost(uint32, tag = "7")]
    pub rcv_wscale: u32,
    /// tcpi_options: 1 timestamps, 2 SACK, 4 window scaling.
    #[prost(uint32, tag = "8")]
    pub options: u32,
    /// struct tcp_repair_window as TCP_REPAIR_WINDOW gives it (20 bytes).
    #[prost(bytes = "vec", tag = "9")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub window: Vec<u8>,
    #[prost(uint32, tag = "10")]
    pub timestamp: u32,
    /// The network lock (nftables table `inet NAME`) blocking the connection on the node that
    /// dumped it, which a restore there removes (state/netlock.rs).
    #[prost(string, tag = "11")]
    pub lock: String,
}

/// One socket option: setsockopt(level, name, value).
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct SockOpt {
    #[prost(int32, tag = "1")]
    pub level: i32,
    #[prost(int32, tag = "2")]
    pub name: i32,
    /// The raw value as getsockopt(2) returned it (an int is 4 bytes, native endian).
    #[prost(bytes = "vec", tag = "3")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub value: Vec<u8>,
    /// Its symbolic name, for people ("SO_REUSEADDR").
    #[prost(string, tag = "4")]
    pub what: String,
}

/// A pipe with both ends in the image, and the bytes that were in flight.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Pipe {
    #[prost(uint64, tag = "1")]
    pub ino: u64,
    #[prost(uint32, tag = "2")]
    pub capacity: u32,
    #[prost(bytes = "vec", tag = "3")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub data: Vec<u8>,
    /// One end belongs to a process outside the dumped tree: restore creates the pipe and
    /// closes that end (the restored reader sees EOF once drained, the writer EPIPE), unless
    /// `--inherit-fd` hands a supervisor's pipe back. `data` is only there when the image holds
    /// the read end.
    #[prost(bool, tag = "402")]
    pub external: bool,
}

/// A time namespace: its clocks as the tree saw them when it was frozen, and when that was, so
/// that restore can pick offsets that make them continue (state/timens.rs).
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct NsxTimens {
    /// CLOCK_MONOTONIC inside the namespace at the dump, in nanoseconds.
    #[prost(int64, tag = "1")]
    pub monotonic_ns: i64,
    /// CLOCK_BOOTTIME inside the namespace at the dump, in nanoseconds.
    #[prost(int64, tag = "2")]
    pub boottime_ns: i64,
    /// CLOCK_REALTIME at the same moment, in nanoseconds since the epoch.
    #[prost(int64, tag = "3")]
    pub realtime_ns: i64,
    /// The namespace's offsets relative to the dumping ferry's clocks (for inspect).
    #[prost(int64, tag = "4")]
    pub monotonic_offset_ns: i64,
    #[prost(int64, tag = "5")]
    pub boottime_offset_ns: i64,
}

/// A network namespace's content (state/netns.rs).
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct NsxNetns {
    #[prost(message, repeated, tag = "1")]
    pub links: Vec<NsxLink>,
    #[prost(message, repeated, tag = "2")]
    pub addrs: Vec<NsxAddr>,
    /// Routes that are not the kernel's own (protocol kernel), as `ip route` prints them, each
    /// prefixed by its family ("inet " or "inet6 ").
    #[prost(string, repeated, tag = "3")]
    pub routes: Vec<String>,
    #[prost(message, repeated, tag = "4")]
    pub sysctls: Vec<NsxSysctl>,
    /// The namespace's inode at dump (`net:[INO]`): what a veth of another namespace of the
    /// tree names as its peer's (`NsxLink.peer_netns`).
    #[prost(uint64, tag = "930")]
    pub inode: u64,
    /// The packet filtering tables (nftables, iptables-nft's, and legacy x_tables tables of
    /// iptables and ip6tables), but ferry's own network locks (state/nftables.rs).
    #[prost(message, repeated, tag = "950")]
    pub nft_tables: Vec<NftTable>,
}

/// One nftables table of a network namespace, in the text of the tool that writes it back.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct NftTable {
    /// "ip", "ip6", "inet", "arp", "bridge" or "netdev".
    #[prost(string, tag = "951")]
    pub family: String,
    #[prost(string, tag = "952")]
    pub name: String,
    /// "nft" (`nft list table FAMILY NAME`, read back with `nft -f`) or "iptables" (a table of
    /// iptables-nft: `iptables-nft-save -c -t NAME`, or ip6tables' for family ip6, read back
    /// with `iptables-nft-restore -c`) or "iptables-legacy" (a legacy x_tables table, family ip
    /// or ip6: `iptables-legacy-save -c -t NAME`, read back with `iptables-legacy-restore -c`).
    #[prost(string, tag = "953")]
    pub tool: String,
    /// The table as that tool prints it, with its counters.
    #[prost(string, tag = "954")]
    pub text: String,
}

/// A network device.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct NsxLink {
    #[prost(string, tag = "1")]
    pub name: String,
    /// "loopback", "bridge", "veth", "macvlan" (the kinds restore recreates).
    #[prost(string, tag = "2")]
    pub kind: String,
    #[prost(uint32, tag = "3")]
    pub mtu: u32,
    #[prost(bool, tag = "4")]
    pub up: bool,
    /// The hardware address as `ip` prints it.
    #[prost(string, tag = "5")]
    pub address: String,
    /// The interface index (kept: programs look devices up by it).
    #[prost(uint32, tag = "6")]
    pub ifindex: u32,
    /// A veth's other end (in the same namespace, or in `peer_netns`).
    #[prost(string, tag = "7")]
    pub peer: String,
    /// The bridge this device is a port of.
    #[prost(string, tag = "8")]
    pub master: String,
    /// A veth whose peer is outside the tree's namespaces (`--external veth[NAME]:OUTSIDE`):
    /// the peer's name, made in the restoring ferry's network namespace. A macvlan whose lower
    /// device is outside (`--external macvlan[NAME]:LOWER`): that device's name in the
    /// restoring ferry's network namespace.
    #[prost(string, tag = "520")]
    pub outside: String,
    /// The bridge that outside end is a port of (`--external veth[NAME]:OUTSIDE@BRIDGE`).
    #[prost(string, tag = "521")]
    pub outside_bridge: String,
    /// A macvlan's settings as `ip link add ... type macvlan` takes them ("mode", "bridge",
    /// and "nopromisc", "nodst", "bcqueuelen", "N" when set).
    #[prost(string, repeated, tag = "820")]
    pub macvlan: Vec<String>,
    /// A macvlan's lower device when it is in the same namespace (else `outside`).
    #[prost(string, tag = "821")]
    pub lower: String,
    /// A veth whose peer is in another network namespace of the tree (the root's or a nested
    /// one): that namespace's inode at dump (`NsxNetns.inode`), and the peer's index and
    /// hardware address, with which the end made first makes the pair (state/netns.rs).
    #[prost(uint64, tag = "931")]
    pub peer_netns: u64,
    #[prost(uint32, tag = "932")]
    pub peer_ifindex: u32,
    #[prost(string, tag = "933")]
    pub peer_address: String,
    /// A tun or tap device (kind "tun").
    #[prost(message, optional, tag = "1127")]
    pub tun: Option<TunLink>,
}

/// A tun or tap device of a network namespace (state/tun.rs): made again persistent with
/// `flags`, its index, owner and group, before the tree's fds attach to it.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct TunLink {
    /// IFF_TUN or IFF_TAP, IFF_NO_PI, IFF_VNET_HDR, IFF_MULTI_QUEUE, IFF_PERSIST.
    #[prost(uint32, tag = "1128")]
    pub flags: u32,
    /// `TUNSETOWNER` and `TUNSETGROUP`, if set (ferry's ids).
    #[prost(uint32, optional, tag = "1129")]
    pub owner: Option<u32>,
    #[prost(uint32, optional, tag = "1130")]
    pub group: Option<u32>,
    /// The fds attached to it at dump (queues, enabled and detached): all the tree's.
    #[prost(uint32, tag = "1131")]
    pub queues: u32,
}

/// An interface address.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct NsxAddr {
    #[prost(string, tag = "1")]
    pub dev: String,
    /// "inet" or "inet6".
    #[prost(string, tag = "2")]
    pub family: String,
    #[prost(string, tag = "3")]
    pub local: String,
    #[prost(uint32, tag = "4")]
    pub prefixlen: u32,
    #[prost(string, tag = "5")]
    pub broadcast: String,
    #[prost(string, tag = "6")]
    pub scope: String,
    /// `ip address add` flags it had: nodad, noprefixroute, home, mngtmpaddr, autojoin.
    #[prost(string, repeated, tag = "7")]
    pub flags: Vec<String>,
}

/// A process outside the tree that held a FIFO of the tree at dump (`File.fifo_holders`).
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct FifoHolder {
    #[prost(int32, tag = "971")]
    pub pid: i32,
    /// Its start time (field 22 of /proc/PID/stat), so that another process given the same
    /// pid is not taken for it.
    #[prost(uint64, tag = "972")]
    pub start_time: u64,
    /// One of its fds on the FIFO could read (O_RDONLY or O_RDWR).
    #[prost(bool, tag = "973")]
    pub reads: bool,
}

/// A sysctl under /proc/sys/net, by its path below /proc/sys.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct NsxSysctl {
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// An ipc namespace's SysV objects that no process of the tree has attached (state/ipcns.rs;
/// attached shared memory is the processes', state/sysvshm.rs), and its limits.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct NsxIpcns {
    #[prost(message, repeated, tag = "1")]
    pub sems: Vec<NsxSemSet>,
    #[prost(message, repeated, tag = "2")]
    pub queues: Vec<NsxMsgQueue>,
    /// Shared memory segments attached by no process (content in the image file `data`).
    #[prost(message, repeated, tag = "3")]
    pub shms: Vec<SysvShm>,
    /// kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.* (paths below /proc/sys).
    #[prost(message, repeated, tag = "4")]
    pub sysctls: Vec<NsxSysctl>,
    /// POSIX message queues, with their queued messages.
    #[prost(message, repeated, tag = "822")]
    pub mqueues: Vec<NsxPosixMq>,
}

/// A POSIX message queue of an ipc namespace (its mqueue file system's file NAME).
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct NsxPosixMq {
    /// Without the leading '/'.
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint32, tag = "2")]
    pub mode: u32,
    #[prost(uint32, tag = "3")]
    pub uid: u32,
    #[prost(uint32, tag = "4")]
    pub gid: u32,
    #[prost(int64, tag = "5")]
    pub maxmsg: i64,
    #[prost(int64, tag = "6")]
    pub msgsize: i64,
    /// In the order they are received: highest priority first, oldest first within one.
    #[prost(message, repeated, tag = "7")]
    pub messages: Vec<NsxPosixMsg>,
}

/// A message of a POSIX message queue.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct NsxPosixMsg {
    #[prost(uint32, tag = "1")]
    pub prio: u32,
    #[prost(bytes = "vec", tag = "2")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub data: Vec<u8>,
}

/// A SysV semaphore set with its values.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct NsxSemSet {
    #[prost(int32, tag = "1")]
    pub key: i32,
    #[prost(int32, tag = "2")]
    pub id: i32,
    #[prost(uint32, tag = "3")]
    pub mode: u32,
    #[prost(uint32, tag = "4")]
    pub uid: u32,
    #[prost(uint32, tag = "5")]
    pub gid: u32,
    #[prost(uint32, repeated, tag = "6")]
    pub values: Vec<u32>,
}

/// A SysV message queue with its queued messages, oldest first.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct NsxMsgQueue {
    #[prost(int32, tag = "1")]
    pub key: i32,
    #[prost(int32, tag = "2")]
    pub id: i32,
    #[prost(uint32, tag = "3")]
    pub mode: u32,
    #[prost(uint32, tag = "4")]
    pub uid: u32,
    #[prost(uint32, tag = "5")]
    pub gid: u32,
    #[prost(uint64, tag = "6")]
    pub qbytes: u64,
    #[prost(message, repeated, tag = "7")]
    pub messages: Vec<NsxMsg>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct NsxMsg {
    #[prost(int64, tag = "1")]
    pub mtype: i64,
    #[prost(bytes = "vec", tag = "2")]
    #[serde(serialize_with = "crate::hex::serialize")]
    pub data: Vec<u8>,
}
