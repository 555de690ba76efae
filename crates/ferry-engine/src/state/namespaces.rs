//! Namespaces of a tree: which of them differ from ferry's, and the framework that dumps and
//! recreates their contents, one module per kind (`MODULES`; the uts names in state/uts.rs,
//! the mount tree in state/mounts.rs). /work/notes/s16/ns-interface.md explains how a module
//! plugs in.
//!
//! Dump: every process of the tree must be in the root's namespaces (checked in
//! `dump::precheck`) but for nested net, uts, ipc and time namespaces (state/nested_ns.rs);
//! each kind in which the root's namespace is not ferry's is recorded
//! (`Namespaces.kinds`) and its module collects the content. A namespace given as external
//! (`--external net[INO]:KEY`) is recorded with its key only. A kind without a module is
//! refused by name.
//!
//! Restore ([`enter`]): ferry's restoring thread leaves the fs_struct it shares with ferry's
//! other threads (`unshare(CLONE_FS)`), joins the external namespaces, creates every other
//! kind with one `unshare`, and runs each module's `restore` in it, in `MODULES` order (the
//! mount tree last: it ends with `pivot_root`). Then ferry prepares the tree's files in those
//! namespaces and forks the tree, which inherits them; [`Entered::leave`] takes the thread
//! back into ferry's own namespaces.

use crate::error::{Ctx, Error};
pub use crate::state::nsfile::ns_link;
use crate::state::nsfile::{inode_of, own_link};
use ferry_image::{ImageReader, ImageWriter, Namespaces, NsKind};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
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
    pub veth_pairs: crate::state::netns::VethPairs,
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

/// One kind of namespace whose content ferry carries.
struct Module {
    kind: &'static str,
    dump: fn(&mut DumpCtx<'_>, &mut Namespaces) -> Result<(), Error>,
    restore: fn(&RestoreCtx<'_>, &Namespaces, &mut Handover) -> Result<(), Error>,
}

/// What modules hand on to the forked tree (the root process of a new pid namespace mounts
/// the proc file systems: proc shows the pid namespace of whoever mounts it).
#[derive(Default)]
pub struct Handover {
    pub mounts: Option<crate::state::mounts::Deferred>,
    /// The network lock made in a new network namespace before its devices came up (netns.rs),
    /// removed once the tree runs.
    pub netlock: Option<crate::state::netlock::RestoreLock>,
}

/// Restore order: mnt last (it ends with pivot_root, after which only the tree's files are
/// visible; sysfs and mqueue mounts take the net and ipc namespaces of the mounter).
const MODULES: &[Module] = &[
    // (made by a helper process before the others: state/userns.rs; their restore is empty)
    Module { kind: "user", dump: crate::state::userns::dump, restore: crate::state::userns::restore },
    Module { kind: "cgroup", dump: crate::state::cgroupns::dump, restore: crate::state::cgroupns::restore },
    Module { kind: "uts", dump: crate::state::uts::dump, restore: crate::state::uts::restore },
    // (net and ipc run `ip` and read /proc/sys: before the mount tree is swapped)
    Module { kind: "net", dump: crate::state::netns::dump, restore: crate::state::netns::restore },
    Module { kind: "ipc", dump: crate::state::ipcns::dump, restore: crate::state::ipcns::restore },
    // (makes its namespace itself: see state/timens.rs)
    Module { kind: "time", dump: crate::state::timens::dump, restore: crate::state::timens::restore },
    Module { kind: "mnt", dump: crate::state::mounts::dump, restore: crate::state::mounts::restore },
];

fn flag_of(kind: &str) -> i32 {
    KINDS.iter().find(|k| k.0 == kind).map_or(0, |k| k.1)
}

/// At dump, for every process of the tree: refuse one whose namespaces are not the root's,
/// except those kinds a nested namespace of which ferry recreates (state/nested_ns.rs).
pub fn check_same_as_root(pid: i32, root: i32) -> Result<(), Error> {
    if pid == root {
        return Ok(());
    }
    for (kind, _) in KINDS {
        let (mine, theirs) = (ns_link(pid, kind), ns_link(root, kind));
        if mine != theirs {
            crate::state::nested_ns::check(pid, root, kind)?;
        }
    }
    Ok(())
}

/// Dump one namespace of `kind` (one of `pid`'s, not the root's: a nested one) with the kind's
/// module, as the content of a [`Namespaces`] that names only it.
pub(crate) fn dump_one(
    pid: i32,
    kind: &str,
    inode: u64,
    opts: &DumpNs,
    img: &mut ImageWriter,
) -> Result<Namespaces, Error> {
    let mut out = Namespaces::default();
    out.kinds.push(NsKind { kind: kind.into(), inode, external: String::new() });
    dump_content(pid, kind, opts, img, &mut out)?;
    Ok(out)
}

/// Let the module of `kind`, if there is one, collect the content of `pid`'s namespace of that
/// kind into `out`.
fn dump_content(pid: i32, kind: &str, opts: &DumpNs, img: &mut ImageWriter, out: &mut Namespaces) -> Result<(), Error> {
    let Some(m) = MODULES.iter().find(|m| m.kind == kind) else { return Ok(()) };
    let path = format!("/proc/{pid}/ns/{kind}");
    let f = std::fs::File::open(&path).ctx(|| format!("cannot open {path}"))?;
    let fd: OwnedFd = f.into();
    let mut ctx = DumpCtx { pid, ns: fd.as_fd(), opts, img };
    (m.dump)(&mut ctx, out)
}

/// Dump the nested mount namespace `inode` of `pid`, made from that of `parent` (state/mounts.rs
/// `dump_nested`; `root`: the tree's root process).
pub(crate) fn dump_nested_mnt(
    pid: i32,
    parent: i32,
    root: i32,
    inode: u64,
    img: &mut ImageWriter,
) -> Result<Namespaces, Error> {
    let mut out = Namespaces::default();
    out.kinds.push(NsKind { kind: "mnt".into(), inode, external: String::new() });
    let path = format!("/proc/{pid}/ns/mnt");
    let fd: OwnedFd = std::fs::File::open(&path).ctx(|| format!("cannot open {path}"))?.into();
    let opts = DumpNs::default();
    let mut ctx = DumpCtx { pid, ns: fd.as_fd(), opts: &opts, img };
    out.mnt = Some(crate::state::mounts::dump_nested(&mut ctx, parent, root)?);
    Ok(out)
}

/// Restore the content of one nested namespace with its kind's module; the calling thread is
/// in the new namespace (for time: its children will be).
pub(crate) fn restore_one(img: &ImageReader, opts: &RestoreNs, content: &Namespaces, kind: &str) -> Result<(), Error> {
    let Some(m) = MODULES.iter().find(|m| m.kind == kind) else { return Ok(()) };
    let ctx = RestoreCtx { img, opts, pidns: false, own_net: None, mnt_owner: None };
    (m.restore)(&ctx, content, &mut Handover::default())
}

/// At dump (before the freeze and again under it): refuse a root in a namespace that ferry
/// can neither recreate nor join.
pub fn check_root(pid: i32, opts: &DumpNs) -> Result<(), Error> {
    for (kind, _) in KINDS {
        let theirs = ns_link(pid, kind);
        if theirs.is_none() || theirs == own_link(kind) {
            continue;
        }
        let ino = theirs.as_deref().map_or(0, inode_of);
        if opts.external.iter().any(|e| e.kind == kind && e.inode == ino) {
            continue;
        }
        if !MODULES.iter().any(|m| m.kind == kind) {
            return Err(Error::Unsupported {
                pid,
                what: format!(
                    "a process in its own {kind} namespace (not recreated by ferry yet; an existing one can be given with --external {kind}[{ino}]:KEY)"
                ),
            });
        }
    }
    // (what a user namespace owns decides what can be recreated: checked before any module runs)
    crate::state::userns::owned_kinds(pid)?;
    Ok(())
}

/// At dump, under the freeze: record the root's namespaces that differ from ferry's and let
/// each module collect its content. None if the tree shares all of ferry's.
pub fn collect(pid: i32, opts: &DumpNs, img: &mut ImageWriter) -> Result<Option<Namespaces>, Error> {
    check_root(pid, opts)?;
    let mut out = Namespaces::default();
    for (kind, _) in KINDS {
        let Some(theirs) = ns_link(pid, kind) else { continue };
        if Some(&theirs) == own_link(kind).as_ref() {
            continue;
        }
        let inode = inode_of(&theirs);
        let external = opts.external.iter().find(|e| e.kind == kind && e.inode == inode).map(|e| e.key.clone());
        out.kinds.push(NsKind { kind: kind.into(), inode, external: external.clone().unwrap_or_default() });
        if external.is_none() {
            dump_content(pid, kind, opts, img, &mut out)?;
        }
    }
    Ok((!out.kinds.is_empty()).then_some(out))
}

/// Run `f` in a short-lived thread that has joined the namespace `ns` of kind `flag` (for a
/// mount namespace, after leaving ferry's fs_struct): reads what only a member of the
/// namespace can see (uname, sysctls, ...) without moving ferry.
pub fn in_ns<T: Send>(ns: BorrowedFd<'_>, flag: i32, f: impl FnOnce() -> Result<T, Error> + Send) -> Result<T, Error> {
    std::thread::scope(|s| {
        s.spawn(|| {
            if flag == libc::CLONE_NEWNS {
                ferry_sys::ns::unshare(libc::CLONE_FS).ctx(|| "cannot unshare CLONE_FS".into())?;
            }
            ferry_sys::ns::setns(ns, flag).ctx(|| "cannot join the tree's namespace (setns)".into())?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Invalid { object: "namespace reader thread".into(), what: "panicked".into() }))
    })
}

/// ferry's own mount namespace, kept by the first [`enter`] that left it.
static FERRY_MNT: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();

/// ferry's own mount namespace while the calling thread is in another one (a restore inside
/// the tree's, between [`enter`] and [`Entered::leave`]): where ferry's helper programs (nft)
/// are found.
pub fn ferry_mnt_if_left() -> Option<BorrowedFd<'static>> {
    IN_TREE_MNT.load(std::sync::atomic::Ordering::SeqCst).then(|| FERRY_MNT.get().map(|f| f.as_fd())).flatten()
}

/// The restoring thread is in the tree's mount namespace ([`enter`] to [`Entered::leave`]).
static IN_TREE_MNT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// ferry's restoring thread, inside the tree's namespaces until [`Entered::leave`] (or drop).
pub struct Entered {
    /// ferry's own namespaces it left: (flag, fd).
    own: Vec<(i32, OwnedFd)>,
    cwd: Option<OwnedFd>,
    /// For the forked tree.
    pub handover: Handover,
    /// The tree's user namespace, which every forked process joins (state/userns.rs).
    pub userns: Option<OwnedFd>,
    /// The tree's time namespace when its user namespace owns it, which the tree's init joins
    /// before it forks (state/userns.rs `make`).
    pub timens: Option<OwnedFd>,
    left: bool,
}

impl Entered {
    /// Back into ferry's own namespaces and cwd. Idempotent; errors are logged (nothing of
    /// the tree depends on it).
    pub fn leave(&mut self) {
        if self.left {
            return;
        }
        self.left = true;
        // (A thread ferry started meanwhile shares this thread's fs_struct again, and setns into
        // a mount namespace needs one of its own.)
        if let Err(e) = ferry_sys::ns::unshare(libc::CLONE_FS) {
            tracing::warn!(error = %e, "cannot unshare CLONE_FS");
        }
        for (flag, fd) in &self.own {
            match ferry_sys::ns::setns(fd.as_fd(), *flag) {
                Err(e) => tracing::warn!(flag, error = %e, "cannot go back into ferry's own namespace"),
                Ok(()) if *flag == libc::CLONE_NEWNS => IN_TREE_MNT.store(false, std::sync::atomic::Ordering::SeqCst),
                Ok(()) => {}
            }
        }
        if let Some(cwd) = &self.cwd {
            let _ = ferry_sys::raw::fchdir(cwd.as_fd());
        }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        self.leave();
    }
}

/// At restore, before anything of the tree is opened: move ferry's restoring thread into new
/// namespaces of every kind the image records (or the external ones it names), with their
/// contents recreated. None if the image has none.
pub fn enter(img: &ImageReader, opts: &RestoreNs) -> Result<Option<Entered>, Error> {
    let kinds = img.inventory().namespaces.as_ref().map(|n| n.kinds.as_slice()).unwrap_or_default();
    // (A time namespace owned by the tree's user namespace is made by the user namespace's
    // helper and joined by the tree's init: ferry's thread does not make one either.)
    let time_owned = img.inventory().namespaces.as_ref().is_some_and(crate::state::timens::owned_by_tree);
    if time_owned || !kinds.iter().any(|k| k.kind == "time") {
        crate::state::timens::settle_children()?;
    }
    let Some(ns) = img.inventory().namespaces.as_ref().filter(|n| !n.kinds.is_empty()) else {
        return Ok(None);
    };
    let mut create = 0;
    let mut join = Vec::new();
    for k in &ns.kinds {
        let flag = flag_of(&k.kind);
        if flag == 0 || (flag == libc::CLONE_NEWUSER && !k.external.is_empty()) {
            return Err(Error::Invalid {
                object: "image namespaces".into(),
                what: format!("cannot recreate a {} namespace", k.kind),
            });
        }
        if k.external.is_empty() {
            // (the time module, or the user namespace's helper, makes the time namespace: its
            // offsets are computed before)
            create |= flag;
        } else {
            let fd =
                opts.inherit.iter().find(|(key, _)| *key == k.external).map(|x| x.1).ok_or_else(|| Error::Invalid {
                    object: format!("{} namespace", k.kind),
                    what: format!("external with key {:?}: give it with --inherit-fd fd[N]:{}", k.external, k.external),
                })?;
            join.push((flag, fd, k.kind.clone()));
        }
    }
    let mut own: Vec<(i32, OwnedFd)> = Vec::new();
    // (A thread cannot setns back into a time namespace while ferry has other threads, and
    // its own clocks never changed: only its future children's, which timens.rs settles.)
    // (ferry's thread never joins the tree's user namespace: the tree does, state/userns.rs.)
    for k in ns.kinds.iter().filter(|k| k.kind != "time" && k.kind != "user") {
        let path = format!("/proc/thread-self/ns/{}", k.kind);
        let f = std::fs::File::open(&path).ctx(|| format!("cannot open {path}"))?;
        own.push((flag_of(&k.kind), OwnedFd::from(f)));
    }
    if let Some((_, fd)) = own.iter().find(|(f, _)| *f == libc::CLONE_NEWNS) {
        if let Ok(fd) = fd.try_clone() {
            let _ = FERRY_MNT.set(fd);
        }
        IN_TREE_MNT.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let cwd = std::fs::File::open(".").ok().map(OwnedFd::from);
    ferry_sys::ns::unshare(libc::CLONE_FS).ctx(|| "cannot unshare CLONE_FS".into())?;
    let mut entered = Entered { own, cwd, handover: Handover::default(), userns: None, timens: None, left: false };
    for (flag, fd, kind) in &join {
        ferry_sys::ns::setns_number(*fd, *flag)
            .ctx(|| format!("cannot join the external {kind} namespace (fd {fd})"))?;
    }
    // The user and cgroup namespaces, and those the user namespace owns: made by a helper.
    if let Some(made) = crate::state::userns::make(ns, create)? {
        create &= !made.flags;
        for (flag, fd) in &made.join {
            ferry_sys::ns::setns(fd.as_fd(), *flag).ctx(|| format!("cannot join the tree's namespace {flag:#x}"))?;
        }
        entered.userns = made.userns;
        entered.timens = made.timens;
    }
    create &= !libc::CLONE_NEWTIME;
    if create != 0 {
        ferry_sys::ns::unshare(create).ctx(|| format!("cannot create the tree's namespaces (unshare {create:#x})"))?;
    }
    let own_net = entered.own.iter().find(|(f, _)| *f == libc::CLONE_NEWNET).map(|(_, fd)| fd.as_fd());
    let owns_mnt = ns.userns.as_ref().is_some_and(|u| u.owned.iter().any(|o| o == "mnt"));
    let mnt_owner = entered.userns.as_ref().filter(|_| owns_mnt).map(|fd| fd.as_fd());
    let ctx = RestoreCtx { img, opts, pidns: img.inventory().pidns, own_net, mnt_owner };
    for m in MODULES {
        let created = ns.kinds.iter().any(|k| k.kind == m.kind && k.external.is_empty());
        if created {
            (m.restore)(&ctx, ns, &mut entered.handover)?;
        }
    }
    Ok(Some(entered))
}
