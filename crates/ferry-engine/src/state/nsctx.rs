//! What the namespace framework (state/namespaces.rs) and its modules, one a kind of namespace
//! (state/uts.rs, state/netns.rs, state/mounts.rs ...), share: the dump and restore options
//! about namespaces, the context a module's dump and restore get, and what modules hand on to
//! the forked tree. It sits below both: the framework lists the modules, and the modules take
//! their context from here, not from the framework.

use ferry_image::{ImageReader, ImageWriter, MountRecord, TmpfsContent};
use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;

/// Every kind of namespace but pid (`Inventory.pidns`), with its `CLONE_NEW*` flag.
pub const KINDS: [(&str, i32); 7] = [
    ("mnt", libc::CLONE_NEWNS),
    ("net", libc::CLONE_NEWNET),
    ("uts", libc::CLONE_NEWUTS),
    ("ipc", libc::CLONE_NEWIPC),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("time", libc::CLONE_NEWTIME),
    ("user", libc::CLONE_NEWUSER),
];

/// A namespace of the dumped tree that is not recreated but joined at restore (CRIU's
/// `--external net[INO]:KEY`, runc's "extRootNetNS").
#[derive(Debug, Clone)]
pub struct ExternalNs {
    /// "net", "ipc", "uts", ...
    pub kind: String,
    /// The namespace's inode number (as in `/proc/PID/ns/net -> net:[INO]`).
    pub inode: u64,
    pub key: String,
}

/// Dump options about namespaces and mounts.
#[derive(Debug, Clone, Default)]
pub struct DumpNs {
    /// Namespaces to record as external.
    pub external: Vec<ExternalNs>,
    /// Mounts not to recreate but to take from the restoring node: (mountpoint as the tree sees
    /// it, key) (`--external mnt[MOUNTPOINT]:KEY`; runc sends its bind mounts with key =
    /// destination).
    pub external_mounts: Vec<(String, String)>,
    /// veth devices of the tree's network namespace whose peer is outside it
    /// (`--external veth[INSIDE]:OUTSIDE[@BRIDGE]`, state/netns.rs).
    pub veths: Vec<ExternalVeth>,
    /// macvlan devices of the tree's network namespace whose lower device is outside it
    /// (`--external macvlan[INSIDE]:LOWER`, state/netns.rs).
    pub macvlans: Vec<ExternalMacvlan>,
    /// A process in each network namespace of the tree whose content is recorded (the root's
    /// when it is recreated, and the nested ones): where a veth's peer may be (filled by the
    /// dump, not an option; state/netns.rs).
    pub tree_netns: Vec<i32>,
}

/// `--external macvlan[INSIDE]:LOWER` (CRIU's form): the tree's macvlan INSIDE sits on the
/// device LOWER of ferry's network namespace (at restore: made again on LOWER there).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalMacvlan {
    pub inside: String,
    pub lower: String,
}

/// `--external veth[INSIDE]:OUTSIDE[@BRIDGE]`: the tree's veth INSIDE has its peer OUTSIDE in
/// the network namespace of ferry (at restore: made there, a port of BRIDGE if given).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalVeth {
    pub inside: String,
    pub outside: String,
    pub bridge: Option<String>,
}

/// Restore options about namespaces and mounts.
#[derive(Debug, Clone, Default)]
pub struct RestoreNs {
    /// External namespaces: (key, fd number of a namespace file in ferry) (`--inherit-fd
    /// fd[N]:KEY`). The caller keeps the fd open during the restore.
    pub inherit: Vec<(String, i32)>,
    /// The directory that becomes the tree's root mount when its root was external (`--root`);
    /// without it, a root that was ferry's own "/" at dump is "/" again.
    pub root: Option<PathBuf>,
    /// External mounts: (key, path on this node) (`--external mnt[KEY]:PATH`).
    pub external_mounts: Vec<(String, PathBuf)>,
    /// Where the outside ends of the tree's external veths go on this node, overriding the
    /// names the image recorded (`--external veth[INSIDE]:OUTSIDE[@BRIDGE]`).
    pub veths: Vec<ExternalVeth>,
    /// The lower devices of the tree's external macvlans on this node, overriding the names
    /// the image recorded (`--external macvlan[INSIDE]:LOWER`).
    pub macvlans: Vec<ExternalMacvlan>,
    /// (local, peer) of the image's TCP connections (filled by the restore from the image, not
    /// an option): held back by a network lock in the tree's network namespace until the tree
    /// runs (state/netlock.rs).
    pub locked: Vec<(std::net::SocketAddr, std::net::SocketAddr)>,
    /// The veth pairs across two of the tree's network namespaces, made with the first of them
    /// and handed to the second (made by the restore, not an option; state/netns.rs).
    pub veth_pairs: VethPairs,
}

/// What a module's dump gets.
pub struct DumpCtx<'a> {
    /// The root process, as ferry sees it.
    pub pid: i32,
    /// Its namespace of the module's kind (`/proc/PID/ns/KIND`).
    pub ns: BorrowedFd<'a>,
    pub opts: &'a DumpNs,
    /// For contents too large for the inventory (tmpfs files).
    pub img: &'a mut ImageWriter,
}

/// What a module's restore gets. It runs in ferry's restoring thread, which is already in the
/// new namespace of the module's kind (and of every kind: all are created before any module
/// runs); modules run in `MODULES` order.
pub struct RestoreCtx<'a> {
    pub img: &'a ImageReader,
    pub opts: &'a RestoreNs,
    /// The tree is a whole pid namespace: its init (the root) is forked into a new one.
    pub pidns: bool,
    /// ferry's own network namespace, which the restoring thread left (outside ends of veths
    /// go there); None when the tree's is not recreated.
    pub own_net: Option<BorrowedFd<'a>>,
    /// The tree's user namespace when it owns the tree's mount namespace: the mount tree is
    /// built in a mount namespace of ferry's, then handed over into one owned by it
    /// (state/userns.rs `hand_over_mnt`).
    pub mnt_owner: Option<BorrowedFd<'a>>,
}

/// What modules hand on to the forked tree (the root process of a new pid namespace mounts
/// the proc file systems: proc shows the pid namespace of whoever mounts it).
#[derive(Default)]
pub struct Handover {
    pub mounts: Option<Deferred>,
    /// The network lock made in a new network namespace before its devices came up (netns.rs),
    /// removed once the tree runs.
    pub netlock: Option<crate::state::netlock::RestoreLock>,
}

/// A tmpfs's content at restore (state/mounts.rs `load_content`): its files, and its data file
/// open (read once, in order).
#[derive(Debug)]
pub struct Content {
    pub(super) files: TmpfsContent,
    pub(super) data: Option<std::fs::File>,
}

/// Mounts the root process of a new pid namespace makes itself, before it forks
/// (state/mounts.rs `mount_deferred`): the proc mounts (ferry's own view of proc sits there
/// meanwhile) and everything mounted below them.
#[derive(Debug, Default)]
pub struct Deferred {
    pub(super) mounts: Vec<(MountRecord, Option<Content>)>,
    /// Every mount already made, for binds of them: id -> record.
    pub(super) made: HashMap<u32, MountRecord>,
    /// External mounts' sources as the root process sees them (after pivot_root): where a
    /// mount of the same key was already made in the tree (runc binds /dev/null at /dev/null
    /// and over its masked paths under /proc), that mount; else the path given.
    pub(super) external: Vec<(String, PathBuf)>,
}

/// At restore: the veth pairs whose ends are in two network namespaces of the tree, from the
/// moment the first of them is made to the moment the second is. The end made first makes
/// the pair with its peer in a namespace of ferry's own that only holds it (new and empty: the
/// peer's index is free there); the peer's namespace, once made, takes it from there (moved
/// into a new namespace, a device keeps its index, address and MTU). Clones share the state.
/// (Made by state/netns.rs, `VethPairs::make`.)
#[derive(Debug, Clone, Default)]
pub struct VethPairs(pub(super) std::sync::Arc<std::sync::Mutex<Held>>);

#[derive(Debug, Default)]
pub(super) struct Held {
    /// The holding namespace (made with the first pair).
    pub(super) ns: Option<std::os::fd::OwnedFd>,
    /// The ends it holds: (the inode at dump of the namespace each goes to, its name).
    pub(super) ends: Vec<(u64, String)>,
}
