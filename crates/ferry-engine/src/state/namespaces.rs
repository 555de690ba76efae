//! Namespaces of a tree: which of them differ from ferry's, and the framework that dumps and
//! recreates their contents, one module per kind (`MODULES`; the uts names in state/uts.rs,
//! the mount tree in state/mounts.rs). /work/notes/s16/ns-interface.md explains how a module
//! plugs in. What this framework and its modules share (the options, the context a module's
//! dump and restore get, what is handed on to the tree) is in state/nsctx.rs, below both: the
//! kinds' modules do not import this file.
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
use crate::state::nsctx::{DumpCtx, Handover, RestoreCtx, KINDS};
pub use crate::state::nsctx::{DumpNs, ExternalMacvlan, ExternalNs, ExternalVeth, RestoreNs};
pub use crate::state::nsfile::ns_link;
use crate::state::nsfile::{inode_of, own_link, FERRY_MNT, IN_TREE_MNT};
use ferry_image::{ImageReader, ImageWriter, Namespaces, NsKind};
use std::os::fd::{AsFd, OwnedFd};

/// One kind of namespace whose content ferry carries.
struct Module {
    kind: &'static str,
    dump: fn(&mut DumpCtx<'_>, &mut Namespaces) -> Result<(), Error>,
    restore: fn(&RestoreCtx<'_>, &Namespaces, &mut Handover) -> Result<(), Error>,
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
