//! Nested namespaces: processes of the tree in a net, uts, ipc, time or cgroup namespace that
//! is not the root's (a process that unshared its own after fork, a container's init whose
//! child runs in a further one), and processes in pid namespaces nested below the tree's.
//!
//! Dump: every namespace of those five kinds in which a process is not in the root's is
//! recorded once (`Inventory.nested_ns`, identity by inode, content by the kind's module as for
//! a root namespace), and each process lists the inodes of its own (`Process.ns_inodes`), so
//! processes that shared one share it again. Pid levels below the tree's pid namespace are
//! recorded per process and thread (`Process.ns_pid`, `Thread.ns_tid`, outermost first); each
//! nested pid namespace's init must be in the tree ([`check_pid_levels`]).
//!
//! Restore ([`make`]): before the root's namespaces, ferry's restoring thread creates each
//! nested namespace (unshare, the module's restore inside, an fd kept, back into its own; a
//! time namespace is made for the thread's children, with its offsets, and kept by fd too; a
//! cgroup namespace by a helper process that joined its recorded root cgroups, state/userns.rs).
//! Every forked process joins, first thing in `restore::child_main` and before it forks its
//! own children (who inherit them), those of its namespaces that differ from its creator's
//! ([`Plan::join_in_child`]; setns into a time namespace needs a single-threaded caller, which
//! it is then). Sockets of a process in a nested network namespace are created there
//! ([`Plan::enter_net`]); each unix socket in the namespace it was in ([`Plan::enter_netns`]).
//! A process in a nested pid namespace is forked with `clone3` and a `set_tid` array with its
//! pid at every level (`CLONE_NEWPID` for a namespace's init).
//!
//! Namespaces for a process's future children: a `pid_for_children` that is not its own is
//! that of a child of it, the init of a nested pid namespace (`unshare -p -f`), or a new one
//! nobody is in yet (`Process.pidns_for_children`); the restored process joins that child's
//! (setns on a pidfd) or unshares a new one once its children exist. A `time_for_children`
//! nobody of the tree is in yet (`unshare -T` before any fork) is recorded with its clocks
//! (`Process.time_for_children`) and made again by the restored process, offsets written to
//! its own `timens_offsets` before any process is in it. One that a child is already in stays
//! refused: setns into a time namespace would move the process itself too.
//!
//! Not nested: mnt (the tree's mount tree is built under a temporary root then pivot_root in
//! ferry's thread, and every file of the tree is opened through it; a second mount tree would
//! need files opened per mount namespace and mounts copied from the parent namespace, not done
//! yet), user namespaces, and any nested namespace in a tree that has a user
//! namespace of its own (it would be owned by that user namespace, made from inside it).

use crate::error::{Ctx, Error};
use crate::state::nsfile::{inode_of, ns_link, own_link};
use ferry_image::{ImageReader, ImageWriter, NestedNs, Process};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// The kinds that may be nested, in the order a process joins them.
pub const KINDS: [(&str, i32); 6] = [
    ("mnt", libc::CLONE_NEWNS),
    ("uts", libc::CLONE_NEWUTS),
    ("ipc", libc::CLONE_NEWIPC),
    ("net", libc::CLONE_NEWNET),
    ("time", libc::CLONE_NEWTIME),
    // (made by a helper that joined its root cgroups: see `make`)
    ("cgroup", libc::CLONE_NEWCGROUP),
];

fn flag_of(kind: &str) -> Option<i32> {
    KINDS.iter().find(|k| k.0 == kind).map(|k| k.1)
}

/// At dump, for every process of the tree: refuse one whose namespaces are not the root's,
/// except those kinds a nested namespace of which ferry recreates (state/nested_ns.rs).
pub fn check_same_as_root(pid: i32, root: i32) -> Result<(), Error> {
    if pid == root {
        return Ok(());
    }
    for (kind, _) in crate::state::nsctx::KINDS {
        let (mine, theirs) = (ns_link(pid, kind), ns_link(root, kind));
        if mine != theirs {
            check(pid, root, kind)?;
        }
    }
    Ok(())
}

/// At dump (precheck): process `pid` is in another `kind` namespace than the root: fine for the
/// kinds recreated here, else refused with the reason.
pub fn check(pid: i32, root: i32, kind: &str) -> Result<(), Error> {
    let why = match kind {
        "user" => "nested user namespaces are not recreated yet",
        _ if flag_of(kind).is_none() => "not recreated",
        _ => {
            if ns_link(root, "user") != own_link("user") {
                "a nested namespace in a tree with its own user namespace is not recreated yet"
            } else {
                return Ok(());
            }
        }
    };
    Err(Error::Unsupported {
        pid,
        what: format!("a process in another {kind} namespace than the tree's root {root} ({why})"),
    })
}

/// At dump, under the freeze, with `procs` still holding ferry's pids: record every nested
/// namespace once, with its content, and each process's (`ns_inodes`). `tree_netns`: a
/// process in each network namespace of the tree whose content is recorded.
pub fn collect(
    procs: &mut [Process],
    root: i32,
    tree_netns: &[i32],
    img: &mut ImageWriter,
) -> Result<Vec<NestedNs>, Error> {
    let ns = ns_link;
    let mut out: Vec<NestedNs> = Vec::new();
    // (Content dumped for a nested namespace: no external veths or mounts apply to it; a veth
    // may have its peer in another namespace of the tree.)
    let opts = crate::state::namespaces::DumpNs { tree_netns: tree_netns.to_vec(), ..Default::default() };
    // (pid -> parent pid, for a nested mount namespace's parent)
    let ppids: HashMap<i32, i32> = procs.iter().map(|p| (p.pid, p.ppid)).collect();
    for p in procs.iter_mut().filter(|p| !p.zombie) {
        for (kind, _) in KINDS {
            let Some(mine) = ns(p.pid, kind) else { continue };
            if Some(&mine) == ns(root, kind).as_ref() {
                continue;
            }
            let inode = inode_of(&mine);
            if !out.iter().any(|n| n.kind == kind && n.inode == inode) {
                if kind == "ipc" {
                    refuse_sysv_attached(p.pid)?;
                }
                let mut parent = 0;
                let content = if kind == "mnt" {
                    refuse_unix_paths(p)?;
                    let from = mnt_parent(p.pid, root, &ppids);
                    parent = ns(from, kind).filter(|l| Some(l) != ns(root, kind).as_ref()).map_or(0, |l| inode_of(&l));
                    crate::state::namespaces::dump_nested_mnt(p.pid, from, root, inode, img)?
                } else {
                    crate::state::namespaces::dump_one(p.pid, kind, inode, &opts, img)?
                };
                out.push(NestedNs { kind: kind.into(), inode, content: Some(content), parent });
            }
            p.ns_inodes.push(inode);
        }
    }
    Ok(out)
}

/// The process a nested mount namespace of `pid` was copied from: its nearest ancestor in
/// another mount namespace (`ppids`: the tree's), else the tree's root.
fn mnt_parent(pid: i32, root: i32, ppids: &HashMap<i32, i32>) -> i32 {
    let ns = crate::state::nsfile::ns_link;
    let mine = ns(pid, "mnt");
    let mut cur = pid;
    while let Some(&up) = ppids.get(&cur) {
        if !ppids.contains_key(&up) {
            break;
        }
        if ns(up, "mnt") != mine {
            return up;
        }
        cur = up;
    }
    root
}

/// A unix socket named by a path, in a nested mount namespace: sockets are made in the tree's
/// root mount namespace (state/unix.rs), so such a process is refused.
fn refuse_unix_paths(p: &Process) -> Result<(), Error> {
    for u in p.files.iter().filter_map(|f| f.unix.as_ref()) {
        if u.name.first().is_some_and(|&c| c != 0) {
            return Err(Error::Unsupported {
                pid: p.pid,
                what: format!(
                    "a unix socket named by a path ({}) in a nested mount namespace",
                    String::from_utf8_lossy(&u.name)
                ),
            });
        }
    }
    Ok(())
}

/// SysV shared memory attached in a nested ipc namespace: the segments are looked up in the
/// root's (state/sysvshm.rs), so such a process is refused.
fn refuse_sysv_attached(pid: i32) -> Result<(), Error> {
    if crate::state::sysvshm::any_attached(pid, &crate::procfs::read_string(pid, "maps")?)? {
        return Err(Error::Unsupported { pid, what: "SysV shared memory attached in a nested ipc namespace".into() });
    }
    Ok(())
}

/// At dump, under the freeze, with `procs` (and `zombies`) still holding ferry's pids: each
/// process's and thread's ids in the pid namespaces nested below the tree's (`tree_level`: the
/// index of the tree's pid namespace in /proc/PID/status's NSpid), and its
/// `pidns_for_children`. Refuses a nested pid namespace whose init is not in the tree.
pub fn collect_pid_levels(procs: &mut [Process], zombies: &mut [Process], tree_level: usize) -> Result<(), Error> {
    let status = |pid: i32, rel: &str| -> Result<ferry_proc::Status, Error> {
        let text = crate::procfs::read_string(pid, rel)?;
        crate::procfs::parse(pid, rel, ferry_proc::parse_status(&text))
    };
    for p in procs.iter_mut().chain(zombies.iter_mut()) {
        let st = status(p.pid, "status")?;
        p.ns_pid = st.ns_pid.get(tree_level + 1..).unwrap_or_default().to_vec();
        if p.ns_pid.is_empty() || p.zombie {
            continue;
        }
        for t in p.threads.iter_mut() {
            let ts = status(p.pid, &format!("task/{}/status", t.tid))?;
            t.ns_tid = ts.ns_pid.get(tree_level + 1..).unwrap_or_default().to_vec();
        }
    }
    check_pid_levels(procs.iter().chain(zombies.iter()))?;
    for p in procs.iter_mut() {
        p.pidns_for_children = pidns_for_children(p)?;
    }
    Ok(())
}

/// Every process in a nested pid namespace descends from that namespace's init, a process of
/// the tree (ferry forks it with CLONE_NEWPID and its descendants inside).
fn check_pid_levels<'a>(procs: impl Iterator<Item = &'a Process> + Clone) -> Result<(), Error> {
    let by_pid: HashMap<i32, &Process> = procs.clone().map(|p| (p.pid, p)).collect();
    for p in procs.filter(|p| !p.ns_pid.is_empty()) {
        // Up the tree, the depth drops by one at each nested init and nowhere else.
        let mut cur = p;
        while !cur.ns_pid.is_empty() {
            let up = by_pid.get(&cur.ppid).copied();
            let ok = match up {
                Some(u) if u.ns_pid.len() == cur.ns_pid.len() => true,
                Some(u) => u.ns_pid.len() + 1 == cur.ns_pid.len() && cur.ns_pid.last() == Some(&1),
                None => false,
            };
            let Some(u) = up.filter(|_| ok) else {
                return Err(Error::Unsupported {
                    pid: p.pid,
                    what: format!(
                        "a process in a nested pid namespace (pid {} there) whose init is not its ancestor in the dumped tree",
                        p.ns_pid.last().copied().unwrap_or(0)
                    ),
                });
            };
            cur = u;
        }
    }
    Ok(())
}

/// A process whose future children's pid namespace is not its own (`/proc/PID/ns/
/// pid_for_children`): the pid of its child that is that namespace's init, or -1 for a new one
/// no process is in yet. A multi-threaded one is refused (threads can only be created while it
/// is its own).
fn pidns_for_children(p: &Process) -> Result<i32, Error> {
    let pid = p.pid;
    let own = std::fs::read_link(crate::procfs::path(pid, "ns/pid")).ok();
    let children = std::fs::read_link(crate::procfs::path(pid, "ns/pid_for_children"));
    let pending = matches!(&children, Err(e) if e.kind() == std::io::ErrorKind::NotFound);
    let Some(own) = own else { return Ok(0) };
    let target = match children {
        Ok(c) if c == own => return Ok(0),
        Ok(c) => Some(c),
        Err(_) if pending => None,
        Err(e) => return Err(Error::Sys { object: format!("pid {pid}: ns/pid_for_children"), source: e }),
    };
    if p.threads.len() > 1 {
        return Err(Error::Unsupported {
            pid,
            what: "a multi-threaded process that unshared a pid namespace for its future children".into(),
        });
    }
    let Some(target) = target else { return Ok(-1) };
    for c in crate::procfs::children_of(pid)? {
        let theirs = std::fs::read_link(crate::procfs::path(c, "ns/pid")).ok();
        let st = crate::procfs::read_string(c, "status").ok().and_then(|t| ferry_proc::parse_status(&t).ok());
        if theirs.as_ref() == Some(&target) && st.is_some_and(|s| s.ns_pid.last() == Some(&1)) {
            return Ok(c);
        }
    }
    Err(Error::Unsupported {
        pid,
        what: "a process that unshared a pid namespace for its future children whose init is not its child".into(),
    })
}

/// At dump, before the freeze: a process whose pid_for_children differs from its own is kept
/// when [`pidns_for_children`] can say which (checked again under the freeze).
pub fn pid_for_children_ok(pid: i32) -> bool {
    let threads = std::fs::read_dir(crate::procfs::path(pid, "task")).map(|d| d.count()).unwrap_or(0);
    threads <= 1
}

/// At dump (precheck): a process whose `time_for_children` is not its own time namespace. None
/// when it is carried (a new one nobody of the tree is in yet, made again by the restored
/// process for its future children, [`collect_time_for_children`]); else why not, for the
/// refusal.
pub fn time_for_children_refusal(pid: i32) -> Option<String> {
    let link = |p: &str| std::fs::read_link(p).ok();
    let target = link(&format!("/proc/{pid}/ns/time_for_children"));
    if link(&format!("/proc/{pid}/ns/time")) != link("/proc/self/ns/time") {
        return Some(" (carried only for a process in ferry's own time namespace)".into());
    }
    let kids = crate::procfs::children_of(pid).unwrap_or_default();
    if let Some(c) = kids.iter().find(|c| link(&format!("/proc/{c}/ns/time")) == target) {
        return Some(format!(
            " (its child {c} is in it: the process could not be given it back without moving itself into it)"
        ));
    }
    None
}

/// At dump, under the freeze, with `procs` still holding ferry's pids: the clocks of every
/// pending time namespace for children (`Process.time_for_children`).
pub fn collect_time_for_children(procs: &mut [Process]) -> Result<(), Error> {
    let link = |p: String| std::fs::read_link(p).ok();
    for p in procs.iter_mut().filter(|p| !p.zombie) {
        let pid = p.pid;
        if link(format!("/proc/{pid}/ns/time_for_children")) != link(format!("/proc/{pid}/ns/time")) {
            if let Some(why) = time_for_children_refusal(pid) {
                return Err(Error::Unsupported {
                    pid,
                    what: format!("a process that unshared a time namespace for its future children{why}"),
                });
            }
            p.time_for_children = Some(crate::state::timens::record(pid)?);
        }
    }
    Ok(())
}

/// At restore, before the fork: the offsets (as `/proc/PID/timens_offsets` takes them) of each
/// process's pending time namespace for children, which the process makes itself once it has
/// forked its own children.
pub fn time_for_children_offsets(procs: &[Process]) -> Result<Vec<Option<String>>, Error> {
    procs
        .iter()
        .map(|p| match &p.time_for_children {
            Some(rec) => Ok(Some(crate::state::timens::format_offsets(&crate::state::timens::plan(rec)?))),
            None => Ok(None),
        })
        .collect()
}

/// In a forked process, once its children exist: a new time namespace for its future children
/// with `offsets` (`host_proc`: ferry's /proc, where "self" is this process).
pub fn make_time_for_children(host_proc: i32, offsets: &str) -> Result<(), String> {
    ferry_sys::ns::unshare(libc::CLONE_NEWTIME).map_err(|e| format!("unshare(CLONE_NEWTIME): {e}"))?;
    let fd = ferry_sys::ns::openat_number(host_proc, c"self/timens_offsets", libc::O_WRONLY | libc::O_CLOEXEC)
        .map_err(|e| format!("cannot open its timens_offsets: {e}"))?;
    ferry_sys::raw::write_all(std::os::fd::AsRawFd::as_raw_fd(&fd), offsets.as_bytes())
        .map_err(|e| format!("cannot set the offsets of its time namespace for children: {e}"))
}

/// At restore: the nested namespaces, made, and which process goes into which.
pub struct Plan {
    /// Per kind in use: (flag, the root's namespace fd number in every forked process).
    kinds: Vec<(i32, i32)>,
    /// Per process (image order): per kind of `kinds`, the fd number of its namespace.
    per_proc: Vec<Vec<i32>>,
    /// Per process: its nested network namespace, if any.
    net: Vec<Option<i32>>,
    root_net: Option<i32>,
    /// Each nested network namespace's fd number, by its inode in the image.
    net_by_inode: HashMap<u64, i32>,
    /// Per process: its nested mount namespace, if any; the root's; ferry's thread's cwd.
    mnt: Vec<Option<i32>>,
    root_mnt: Option<i32>,
    cwd: Option<OwnedFd>,
    /// Per process: the procs of the tree's pid namespace it mounts in its nested mount
    /// namespace (the first process of that pid namespace there).
    procs_later: Vec<Option<crate::state::nsctx::Deferred>>,
    /// The fds above (the forked tree inherits them).
    _owned: Vec<OwnedFd>,
}

/// The nested namespaces, created (before the root's: see the module doc).
pub struct Made {
    /// (inode, kind, fd)
    ns: Vec<(u64, String, OwnedFd)>,
    /// Per nested mount namespace (inode): its procs of the tree's pid namespace, mounted
    /// again by a process of it (`Plan::procs_later`).
    procs_later: Vec<(u64, Vec<ferry_image::MountRecord>)>,
}

/// At restore, before `namespaces::enter`: create every nested namespace, from ferry's own.
pub fn make(img: &ImageReader, opts: &crate::state::namespaces::RestoreNs) -> Result<Made, Error> {
    let mut made = Made { ns: Vec::new(), procs_later: Vec::new() };
    for n in &img.inventory().nested_ns {
        let bad = |what: &str| Error::Invalid {
            object: format!("nested {} namespace {}", n.kind, n.inode),
            what: what.into(),
        };
        let flag = flag_of(&n.kind).ok_or_else(|| bad("is of a kind ferry does not nest"))?;
        if flag == libc::CLONE_NEWNS {
            continue; // (after the root's: `Made::make_mnt`)
        }
        let content = n.content.as_ref().ok_or_else(|| bad("has no content"))?;
        let fd = if flag == libc::CLONE_NEWCGROUP {
            // A cgroup namespace's root is the cgroup its maker was in: made by a helper
            // process that joins the recorded roots first (state/userns.rs, cgroupns.rs), as
            // for the root's; ferry's thread cannot move alone.
            let made = crate::state::userns::make(content, flag)?;
            let fd = made.and_then(|mut m| m.join.pop()).map(|(_, fd)| fd);
            fd.ok_or_else(|| bad("was not made"))?
        } else if flag == libc::CLONE_NEWTIME {
            // (made for the thread's children, with its offsets: state/timens.rs)
            crate::state::namespaces::restore_one(img, opts, content, "time")?;
            open("/proc/thread-self/ns/time_for_children")?
        } else {
            let own = open(&format!("/proc/thread-self/ns/{}", n.kind))?;
            ferry_sys::ns::unshare(flag).ctx(|| format!("cannot create a nested {} namespace", n.kind))?;
            let r = crate::state::namespaces::restore_one(img, opts, content, &n.kind)
                .and_then(|()| open(&format!("/proc/thread-self/ns/{}", n.kind)));
            ferry_sys::ns::setns(own.as_fd(), flag)
                .ctx(|| format!("cannot go back into ferry's {} namespace", n.kind))?;
            r?
        };
        made.ns.push((n.inode, n.kind.clone(), fd));
    }
    Ok(made)
}

fn open(path: &str) -> Result<OwnedFd, Error> {
    Ok(std::fs::File::open(path).ctx(|| format!("cannot open {path}"))?.into())
}

impl Made {
    /// At restore, after `namespaces::enter` (ferry's thread is in the tree's root mount
    /// namespace): make every nested mount namespace, parents first, each by `unshare` from
    /// its parent with the mounts of state/mounts.rs `restore_nested`. The thread keeps an
    /// fs_struct of its own (setns into a mount namespace needs it), back in the root's.
    /// `host_proc`: ferry's /proc. `ptys`: the pairs of nested devpts instances
    /// (state/tty.rs `instance_pairs`), made in them.
    pub fn make_mnt(&mut self, img: &ImageReader, host_proc: BorrowedFd<'_>, ptys: &[(u64, u32)]) -> Result<(), Error> {
        let mut left: Vec<&NestedNs> = img.inventory().nested_ns.iter().filter(|n| n.kind == "mnt").collect();
        if left.is_empty() {
            return Ok(());
        }
        ferry_sys::ns::unshare(libc::CLONE_FS).ctx(|| "cannot unshare CLONE_FS".into())?;
        let thread_mnt = || {
            ferry_sys::ns::openat(host_proc, c"thread-self/ns/mnt", libc::O_RDONLY | libc::O_CLOEXEC)
                .ctx(|| "cannot open /proc/thread-self/ns/mnt".into())
        };
        let own = thread_mnt()?;
        let cwd = open(".")?;
        // (The nested network, ipc and cgroup namespaces, made already: a fresh sysfs, mqueue
        // or cgroup2 of a nested mount namespace is mounted from inside the one it showed.)
        let others: Vec<(u64, i32)> = self
            .ns
            .iter()
            .filter(|m| matches!(m.1.as_str(), "net" | "ipc" | "cgroup"))
            .map(|m| (m.0, m.2.as_raw_fd()))
            .collect();
        let mut made = || -> Result<(), Error> {
            while !left.is_empty() {
                let ready =
                    left.iter().position(|n| n.parent == 0 || self.ns.iter().any(|m| m.1 == "mnt" && m.0 == n.parent));
                let Some(i) = ready else {
                    return Err(Error::Invalid {
                        object: format!("nested mount namespace {}", left[0].inode),
                        what: format!("its parent namespace {} is not in the image", left[0].parent),
                    });
                };
                let n = left.remove(i);
                let parent = match n.parent {
                    0 => own.try_clone(),
                    p => self
                        .ns
                        .iter()
                        .find(|m| m.1 == "mnt" && m.0 == p)
                        .map_or_else(|| own.try_clone(), |m| m.2.try_clone()),
                }
                .ctx(|| "cannot duplicate an fd".into())?;
                ferry_sys::ns::setns(parent.as_fd(), libc::CLONE_NEWNS)
                    .ctx(|| format!("cannot join the parent of nested mount namespace {}", n.inode))?;
                ferry_sys::ns::unshare(libc::CLONE_NEWNS).ctx(|| "cannot create a nested mount namespace".into())?;
                let mnt = n.content.as_ref().and_then(|c| c.mnt.as_ref()).ok_or_else(|| Error::Invalid {
                    object: format!("nested mount namespace {}", n.inode),
                    what: "has no mount tree".into(),
                })?;
                let later = crate::state::mounts::restore_nested(img, mnt, host_proc, &others, ptys)?;
                if !later.is_empty() {
                    self.procs_later.push((n.inode, later));
                }
                self.ns.push((n.inode, n.kind.clone(), thread_mnt()?));
            }
            Ok(())
        };
        let r = made();
        let back = ferry_sys::ns::setns(own.as_fd(), libc::CLONE_NEWNS)
            .ctx(|| "cannot go back into the tree's mount namespace".into());
        let _ = ferry_sys::raw::fchdir(cwd.as_fd());
        r.and(back)
    }

    /// At restore, in the tree's root namespaces (after `namespaces::enter`): the fds every
    /// forked process needs, moved above `base`. `host_proc`: ferry's /proc (the root's time
    /// namespace is the thread's children's; the others its own).
    pub fn plan(self, procs: &[Process], host_proc: BorrowedFd<'_>, base: i32) -> Result<Option<Plan>, Error> {
        if self.ns.is_empty() {
            return Ok(None);
        }
        let mut owned = Vec::new();
        let mut keep = |fd: BorrowedFd<'_>| -> Result<i32, Error> {
            let o = ferry_sys::raw::dup_above(fd, base).ctx(|| "cannot move an fd".into())?;
            let n = o.as_raw_fd();
            owned.push(o);
            Ok(n)
        };
        let mut kinds = Vec::new();
        for (kind, flag) in KINDS {
            if !self.ns.iter().any(|n| n.1 == kind) {
                continue;
            }
            let rel = if kind == "time" {
                "thread-self/ns/time_for_children".to_string()
            } else {
                format!("thread-self/ns/{kind}")
            };
            let c = std::ffi::CString::new(rel.clone())
                .map_err(|_| Error::Invalid { object: rel.clone(), what: "bad path".into() })?;
            let fd = ferry_sys::ns::openat(host_proc, &c, libc::O_RDONLY | libc::O_CLOEXEC)
                .ctx(|| format!("cannot open /proc/{rel}"))?;
            kinds.push((flag, kind, keep(fd.as_fd())?));
        }
        let mut by_inode = HashMap::new();
        for (inode, kind, fd) in &self.ns {
            by_inode.insert((*inode, kind.clone()), keep(fd.as_fd())?);
        }
        let mut per_proc = Vec::new();
        let mut net = Vec::new();
        let mut mnt = Vec::new();
        for p in procs {
            let mut set = Vec::new();
            let mut my_net = None;
            let mut my_mnt = None;
            for &(_, kind, root_fd) in &kinds {
                let mine = p.ns_inodes.iter().find_map(|&i| by_inode.get(&(i, kind.to_string())).copied());
                match kind {
                    "net" => my_net = mine,
                    "mnt" => my_mnt = mine,
                    _ => {}
                }
                set.push(mine.unwrap_or(root_fd));
            }
            if p.ns_inodes.iter().any(|&i| !self.ns.iter().any(|n| n.0 == i)) {
                return Err(Error::Invalid {
                    object: format!("pid {}", p.pid),
                    what: "is in a nested namespace the image does not record".into(),
                });
            }
            per_proc.push(set);
            net.push(my_net);
            mnt.push(my_mnt);
        }
        let mut procs_later: Vec<Option<crate::state::nsctx::Deferred>> = procs.iter().map(|_| None).collect();
        for (inode, recs) in self.procs_later {
            // (The first live process in it at the tree's pid level: proc shows the pid
            // namespace of whoever mounts it.)
            let i = procs
                .iter()
                .position(|p| p.ns_inodes.contains(&inode) && p.ns_pid.is_empty() && !p.zombie)
                .ok_or_else(|| Error::Invalid {
                    object: format!("nested mount namespace {inode}"),
                    what: "it has a proc of the tree's pid namespace, and no live process of that pid namespace to mount it"
                        .into(),
                })?;
            procs_later[i] = Some(crate::state::mounts::deferred_procs(recs));
        }
        let root_net = kinds.iter().find(|k| k.1 == "net").map(|k| k.2);
        let net_by_inode = by_inode.iter().filter(|(k, _)| k.1 == "net").map(|(k, &fd)| (k.0, fd)).collect();
        let root_mnt = kinds.iter().find(|k| k.1 == "mnt").map(|k| k.2);
        let cwd = match root_mnt {
            Some(_) => Some(open(".")?),
            None => None,
        };
        Ok(Some(Plan {
            kinds: kinds.iter().map(|k| (k.0, k.2)).collect(),
            per_proc,
            net,
            root_net,
            net_by_inode,
            mnt,
            root_mnt,
            cwd,
            procs_later,
            _owned: owned,
        }))
    }
}

impl Plan {
    /// In forked process `me` (image index) whose nearest image ancestor is `creator` (None:
    /// ferry's thread, in the root's namespaces): join its namespaces that differ.
    pub fn join_in_child(&self, me: usize, creator: Option<usize>) -> Result<(), String> {
        let mine = &self.per_proc[me];
        for (k, &(flag, root_fd)) in self.kinds.iter().enumerate() {
            let now = creator.map_or(root_fd, |c| self.per_proc[c][k]);
            if mine[k] != now {
                ferry_sys::ns::setns_number(mine[k], flag)
                    .map_err(|e| format!("cannot join its nested namespace {flag:#x} (setns): {e}"))?;
            }
        }
        Ok(())
    }

    /// In forked process `me` (image index), once in its namespaces: the procs of the tree's
    /// pid namespace of its nested mount namespace, if it is the one that mounts them.
    pub fn mount_procs_in_child(&self, me: usize) -> Result<(), String> {
        match self.procs_later.get(me) {
            Some(Some(d)) => crate::state::mounts::mount_deferred(d),
            _ => Ok(()),
        }
    }

    /// Move ferry's restoring thread into the network namespace of process `i` (image index),
    /// if it has a nested one, until [`Plan::leave_net`]: its sockets are created there.
    pub fn enter_net(&self, i: usize) -> Result<bool, Error> {
        match self.net.get(i).copied().flatten() {
            Some(fd) => {
                ferry_sys::ns::setns_number(fd, libc::CLONE_NEWNET)
                    .ctx(|| "cannot join a nested network namespace".into())?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Move ferry's restoring thread into the network namespace of inode `inode` in the image
    /// (a unix socket's `netns`), 0: back into the root's.
    pub fn enter_netns(&self, inode: u64) -> Result<(), Error> {
        if inode == 0 {
            return self.leave_net();
        }
        let fd = self.net_by_inode.get(&inode).copied().ok_or_else(|| Error::Invalid {
            object: format!("network namespace net:[{inode}]"),
            what: "holds a socket of the image but is not among its nested namespaces".into(),
        })?;
        ferry_sys::ns::setns_number(fd, libc::CLONE_NEWNET).ctx(|| "cannot join a nested network namespace".into())
    }

    /// Move ferry's restoring thread into the mount namespace of process `i` (image index), if
    /// it has a nested one, until [`Plan::leave_mnt`]: its files, cwd, executable and mapped
    /// files are opened there.
    pub fn enter_mnt(&self, i: usize) -> Result<bool, Error> {
        match self.mnt.get(i).copied().flatten() {
            Some(fd) => {
                // (A thread ferry started meanwhile may share its fs_struct again.)
                ferry_sys::ns::unshare(libc::CLONE_FS).ctx(|| "cannot unshare CLONE_FS".into())?;
                ferry_sys::ns::setns_number(fd, libc::CLONE_NEWNS)
                    .ctx(|| "cannot join a nested mount namespace".into())?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Back into the root's mount namespace, and the thread's cwd there.
    pub fn leave_mnt(&self) -> Result<(), Error> {
        if let Some(fd) = self.root_mnt {
            ferry_sys::ns::setns_number(fd, libc::CLONE_NEWNS)
                .ctx(|| "cannot go back into the tree's mount namespace".into())?;
        }
        if let Some(fd) = &self.cwd {
            ferry_sys::raw::fchdir(fd.as_fd()).ctx(|| "cannot go back to ferry's cwd".into())?;
        }
        Ok(())
    }

    /// Back into the root's network namespace.
    pub fn leave_net(&self) -> Result<(), Error> {
        if let Some(fd) = self.root_net {
            ferry_sys::ns::setns_number(fd, libc::CLONE_NEWNET)
                .ctx(|| "cannot go back into the tree's network namespace".into())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, ppid: i32, ns_pid: &[i32]) -> Process {
        Process { pid, ppid, ns_pid: ns_pid.to_vec(), ..Default::default() }
    }

    #[test]
    fn nested_pid_levels_need_their_init_above() {
        // unshare -p -f: U forks N (pid 1 inside), N forks N1 (pid 2), N1 forks N2 (pid 3).
        let ok = [p(10, 1, &[]), p(11, 10, &[]), p(12, 11, &[1]), p(13, 12, &[2]), p(14, 13, &[3])];
        assert!(check_pid_levels(ok.iter()).is_ok());
        // Two levels: N's child M is the init of a namespace inside N's.
        let two = [p(10, 1, &[]), p(12, 10, &[1]), p(13, 12, &[2, 1]), p(14, 13, &[2, 3, 2])];
        assert!(check_pid_levels(two.iter()).is_err(), "a level skipped");
        let two = [p(10, 1, &[]), p(12, 10, &[1]), p(13, 12, &[2, 1]), p(14, 13, &[2, 2])];
        assert!(check_pid_levels(two.iter()).is_ok());
        // The init is not dumped (the root is already inside the nested namespace).
        let orphan = [p(20, 1, &[]), p(21, 20, &[5])];
        assert!(check_pid_levels(orphan.iter()).is_err());
        // A process joined the namespace with setns: its parent is outside, yet it is not pid 1.
        let joined = [p(10, 1, &[]), p(12, 10, &[1]), p(15, 10, &[7])];
        assert!(check_pid_levels(joined.iter()).is_err());
    }
}
