//! A tree's user namespace (kind "user", a namespace module, see state/namespaces.rs): its
//! uid_map, gid_map and setgroups, which of the tree's other namespaces it owns, and the
//! credentials of its processes as seen from inside it.
//!
//! Dump: the maps as ferry (the parent user namespace) reads them; a user namespace nested in
//! another one than ferry's is refused. Every other namespace of the tree that differs from
//! ferry's is owned either by ferry's user namespace or by the tree's (`owned`). A process's
//! uids, gids and groups are recorded as seen from inside (state/creds.rs calls
//! [`creds_inside`]): restore sets them with injected calls made inside.
//!
//! Restore ([`make`]): `unshare(CLONE_NEWUSER)` fails in a multi-threaded process, and ferry's
//! restoring thread must keep its privileges in its own user namespace. So a helper process,
//! forked from that thread, makes the namespaces: (the cgroup namespace, state/cgroupns.rs,
//! after it joined its root cgroups), then the user namespace, whose maps ferry writes from
//! outside, then, from inside it, the namespaces it owns. ferry's thread joins all of these but
//! the user namespace (as root of the parent namespace it may configure them) and a time
//! namespace (its offsets written from outside before anyone is in it; the tree's init joins
//! it: state/timens.rs), the helper ends, and every process of the tree joins the user namespace itself, in its forked child,
//! once it has created its own children (`clone3` with `set_tid` needs privileges in the pid
//! namespace's owner, which is ferry's). A pid namespace the tree's user namespace owned is
//! made from inside the new one ([`fork_init`]): then the whole tree runs inside from the
//! start, and its processes (threads included) choose their ids there.

use super::nsctx::{DumpCtx, Handover, RestoreCtx, KINDS};
use super::nsfile::{fd_inode as inode, ns_link, own_link};
use crate::error::{Ctx, Error};
use ferry_image::{Creds, Namespaces, UsernsExtent, UsernsRec};
use ferry_sys::process::Fork;
use ferry_sys::raw;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

fn parse_map(pid: i32, file: &str) -> Result<Vec<UsernsExtent>, Error> {
    let text = crate::procfs::read_string(pid, file)?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let n: Vec<u32> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        let [inside, outside, count] = n[..] else {
            return Err(Error::Invalid { object: format!("/proc/{pid}/{file}"), what: format!("bad line {line:?}") });
        };
        out.push(UsernsExtent { inside, outside, count });
    }
    Ok(out)
}

/// An id of the parent namespace as seen inside (None: not mapped).
fn to_inside(map: &[UsernsExtent], id: u32) -> Option<u32> {
    map.iter().find(|e| id >= e.outside && (id - e.outside) < e.count).map(|e| e.inside + (id - e.outside))
}

/// Mount options (`uid=N`, `gid=N` of tmpfs or devpts) as given by a process inside the user
/// namespace `rec`: ferry read them translated into its own namespace. An unmapped id stays
/// as it is (the mount then fails, naming it).
pub(crate) fn mount_options_inside(rec: &UsernsRec, opts: &str) -> String {
    let one = |o: &str| -> String {
        let (map, key) = match o.split_once('=') {
            Some(("uid", v)) => (&rec.uid_map, ("uid", v)),
            Some(("gid", v)) => (&rec.gid_map, ("gid", v)),
            _ => return o.to_string(),
        };
        match key.1.parse().ok().and_then(|id| to_inside(map, id)) {
            Some(id) => format!("{}={id}", key.0),
            None => o.to_string(),
        }
    };
    opts.split(',').map(one).collect::<Vec<_>>().join(",")
}

/// The owners of a tmpfs's files as given by a process inside the user namespace `rec` (ferry
/// read them in its own). An unmapped id stays as it is (setting it then fails, naming the file).
pub(crate) fn tmpfs_owners_inside(rec: &UsernsRec, c: &mut ferry_image::TmpfsContent) {
    for e in &mut c.entries {
        e.uid = to_inside(&rec.uid_map, e.uid).unwrap_or(e.uid);
        e.gid = to_inside(&rec.gid_map, e.gid).unwrap_or(e.gid);
    }
}

/// Whether `pid` is in a user namespace other than ferry's.
fn in_own_userns(pid: i32) -> bool {
    ns_link(pid, "user").is_some_and(|l| Some(l) != own_link("user"))
}

/// Translate ids read by ferry (uid, gid, groups lines of /proc/PID/status) into `pid`'s user
/// namespace. An unmapped id is refused, or with `overflow` becomes 65534, as the kernel shows
/// it inside.
fn ids_inside(pid: i32, uids: &mut [u32], gids: &mut [u32], groups: &mut [u32], overflow: bool) -> Result<(), Error> {
    let (umap, gmap) = (parse_map(pid, "uid_map")?, parse_map(pid, "gid_map")?);
    let inside = |map: &[UsernsExtent], what: &str, id: u32| match to_inside(map, id) {
        Some(i) => Ok(i),
        None if overflow => Ok(65534),
        None => Err(Error::Unsupported {
            pid,
            what: format!("a process whose {what} {id} is not mapped in its user namespace"),
        }),
    };
    for u in uids.iter_mut() {
        *u = inside(&umap, "uid", *u)?;
    }
    for g in gids.iter_mut().chain(groups.iter_mut()) {
        *g = inside(&gmap, "gid", *g)?;
    }
    Ok(())
}

/// At dump, for each process: its credentials as seen from inside its user namespace (when
/// not ferry's). A multi-threaded process there is refused: restore gives threads their ids
/// with `clone3(set_tid)`, which needs privileges that a process inside no longer has.
pub(crate) fn creds_inside(pid: i32, c: &mut Creds) -> Result<(), Error> {
    if !in_own_userns(pid) {
        return Ok(());
    }
    let threads = std::fs::read_dir(crate::procfs::path(pid, "task")).map_or(1, |d| d.count());
    if threads > 1 && !pidns_levels_owned(pid)? {
        return Err(Error::Unsupported {
            pid,
            what: "a multi-threaded process in a user namespace that does not own its pid namespace".into(),
        });
    }
    ids_inside(pid, &mut c.uids, &mut c.gids, &mut c.groups, false)
}

/// At restore, a restored process's current ids as seen from inside its user namespace (to
/// compare with its image's): ferry's own, which need not be mapped there.
pub(crate) fn status_inside(pid: i32, st: &mut ferry_proc::Status) -> Result<(), Error> {
    if !in_own_userns(pid) {
        return Ok(());
    }
    ids_inside(pid, &mut st.uid, &mut st.gid, &mut st.groups, true)
}

/// The kinds of `pid`'s namespaces (other than ferry's) that its user namespace owns, checking
/// that the user namespace is a child of ferry's and that ferry can recreate what it owns
/// (at dump, before the freeze too: state/namespaces.rs `check_root`).
pub(crate) fn owned_kinds(pid: i32) -> Result<Vec<String>, Error> {
    if !in_own_userns(pid) {
        return Ok(Vec::new());
    }
    let open = |path: &str| std::fs::File::open(path).ctx(|| format!("cannot open {path}"));
    let own_ino = inode(open("/proc/self/ns/user")?.as_fd())?;
    let tree = open(&format!("/proc/{pid}/ns/user"))?;
    let parent =
        ferry_sys::ns::parent_ns(tree.as_fd()).ctx(|| format!("pid {pid}: cannot find its user namespace's parent"))?;
    if inode(parent.as_fd())? != own_ino {
        return Err(Error::Unsupported { pid, what: "a user namespace nested in another one than ferry's".into() });
    }
    let tree_ino = inode(tree.as_fd())?;
    let mut owned = Vec::new();
    for (kind, _) in KINDS.iter().filter(|k| k.0 != "user") {
        let theirs = ns_link(pid, kind);
        if theirs.is_none() || theirs == own_link(kind) {
            continue;
        }
        let f = open(&format!("/proc/{pid}/ns/{kind}"))?;
        let owner = ferry_sys::ns::owner_userns(f.as_fd())
            .ctx(|| format!("pid {pid}: cannot find the owner of its {kind} namespace"))?;
        let owner = inode(owner.as_fd())?;
        if owner == own_ino {
            continue;
        }
        if owner != tree_ino {
            return Err(Error::Unsupported {
                pid,
                what: format!("a {kind} namespace owned by another user namespace than the tree's"),
            });
        }
        owned.push(kind.to_string());
    }
    // Its pid namespace (the tree's, when it is a whole one): made from inside it or not.
    if ns_link(pid, "pid") != own_link("pid") {
        let f = open(&format!("/proc/{pid}/ns/pid"))?;
        let owner = ferry_sys::ns::owner_userns(f.as_fd())
            .ctx(|| format!("pid {pid}: cannot find the owner of its pid namespace"))?;
        match inode(owner.as_fd())? {
            o if o == own_ino => {}
            o if o == tree_ino => owned.push("pid".into()),
            _ => {
                return Err(Error::Unsupported {
                    pid,
                    what: "a pid namespace owned by another user namespace than the tree's".into(),
                })
            }
        }
    }
    Ok(owned)
}

/// Whether `pid` is in a pid namespace below ferry's and every pid namespace of it below
/// ferry's is owned by `pid`'s user namespace (so
/// that a process inside, with capabilities there, may choose ids in all of them with
/// `clone3(set_tid)`).
fn pidns_levels_owned(pid: i32) -> Result<bool, Error> {
    let open = |path: &str| std::fs::File::open(path).ctx(|| format!("cannot open {path}"));
    let own_pidns = inode(open("/proc/self/ns/pid")?.as_fd())?;
    let user = inode(open(&format!("/proc/{pid}/ns/user"))?.as_fd())?;
    let mut ns: OwnedFd = open(&format!("/proc/{pid}/ns/pid"))?.into();
    if inode(ns.as_fd())? == own_pidns {
        return Ok(false);
    }
    while inode(ns.as_fd())? != own_pidns {
        let owned = ferry_sys::ns::owner_userns(ns.as_fd()).is_ok_and(|o| inode(o.as_fd()).is_ok_and(|i| i == user));
        if !owned {
            return Ok(false);
        }
        match ferry_sys::ns::parent_ns(ns.as_fd()) {
            Ok(p) => ns = p,
            Err(_) => return Ok(false),
        }
    }
    Ok(true)
}

/// At restore: whether the tree's init is forked into a new pid namespace made from inside its
/// new user namespace (owned by it, as at dump), by [`fork_init`].
pub(crate) fn owns_pidns(ns: Option<&Namespaces>, pidns: bool) -> bool {
    let rec = ns.and_then(|n| n.userns.as_ref());
    let made = ns.is_some_and(|n| n.kinds.iter().any(|k| k.kind == "user" && k.external.is_empty()));
    pidns && made && rec.is_some_and(|r| r.owned.iter().any(|o| o == "pid"))
}

/// Fork the tree's init into a new pid namespace owned by the tree's user namespace `userns`:
/// an intermediate process joins `userns`, unshares the pid namespace there and forks the init
/// with `CLONE_PARENT`, so that the init is a child of ferry (with `sibling`, of ferry's parent,
/// as the intermediate is). The init starts in the user namespace, with all capabilities in it
/// (it may choose its children's ids with `clone3(set_tid)` there). Returns what a fork does;
/// the parent gets the init's pid.
pub(crate) fn fork_init(userns: BorrowedFd<'_>, sibling: bool) -> Result<Fork, Error> {
    let (r, w) = ferry_sys::process::pipe2(libc::O_CLOEXEC).ctx(|| "cannot create a pipe".into())?;
    let obj = || "the tree's init (forked from inside its user namespace)".to_string();
    let mid = if sibling { ferry_sys::process::clone3_sibling(None, 0) } else { ferry_sys::process::fork() };
    match mid.ctx(obj)? {
        Fork::Child => {
            drop(r);
            let made = ferry_sys::ns::setns(userns, libc::CLONE_NEWUSER)
                .and_then(|()| ferry_sys::ns::unshare(libc::CLONE_NEWPID))
                .and_then(|()| ferry_sys::process::clone3_sibling(None, 0));
            let report = match made {
                Ok(Fork::Child) => {
                    drop(w);
                    return Ok(Fork::Child);
                }
                Ok(Fork::Parent(init)) => format!("{init}"),
                Err(e) => format!("e{}", e.raw_os_error().unwrap_or(0)),
            };
            let _ = raw::write_all(w.as_raw_fd(), report.as_bytes());
            raw::exit_now(0)
        }
        Fork::Parent(mid) => {
            drop(w);
            let mut buf = [0u8; 16];
            let n = raw::read_once(r.as_raw_fd(), &mut buf).ctx(obj);
            if !sibling {
                let _ = ferry_sys::ptrace::wait(mid, false);
            }
            let text = String::from_utf8_lossy(&buf[..n?]).into_owned();
            match text.strip_prefix('e') {
                _ if text.is_empty() => Err(Error::Invalid { object: obj(), what: "its maker ended early".into() }),
                Some(errno) => Err(Error::Sys {
                    object: format!("{}: joining it, unshare(CLONE_NEWPID) or clone3", obj()),
                    source: std::io::Error::from_raw_os_error(errno.parse().unwrap_or(0)),
                }),
                None => text.parse().map(Fork::Parent).map_err(|_| Error::Invalid { object: obj(), what: text }),
            }
        }
    }
}

/// Record the tree's user namespace: maps, setgroups, and which of the tree's namespaces it owns.
pub(crate) fn dump(ctx: &mut DumpCtx<'_>, out: &mut Namespaces) -> Result<(), Error> {
    let pid = ctx.pid;
    let owned = owned_kinds(pid)?;
    let setgroups = crate::procfs::read_string(pid, "setgroups")?;
    out.userns = Some(UsernsRec {
        uid_map: parse_map(pid, "uid_map")?,
        gid_map: parse_map(pid, "gid_map")?,
        setgroups_deny: setgroups.trim() == "deny",
        owned,
    });
    Ok(())
}

/// Nothing to do in ferry's thread: [`make`] made the namespace (the tree joins it).
pub(crate) fn restore(_ctx: &RestoreCtx<'_>, _ns: &Namespaces, _h: &mut Handover) -> Result<(), Error> {
    Ok(())
}

/// What the helper made, for ferry's restoring thread to join.
pub(crate) struct Made {
    /// The tree's user namespace (each forked process joins it).
    pub userns: Option<OwnedFd>,
    /// (flag, namespace) for ferry's thread to join.
    pub join: Vec<(i32, OwnedFd)>,
    /// The tree's time namespace when its user namespace owns it (with its offsets written):
    /// not joined by ferry's thread (`setns(CLONE_NEWTIME)` needs a single-threaded caller,
    /// EUSERS otherwise) but by the tree's init before it forks (restore.rs).
    pub timens: Option<OwnedFd>,
    /// The `CLONE_NEW*` flags of the kinds made here.
    pub flags: i32,
}

fn map_text(map: &[UsernsExtent]) -> String {
    map.iter().map(|e| format!("{} {} {}\n", e.inside, e.outside, e.count)).collect()
}

/// What the helper does, in order.
struct Steps {
    cgroup_procs: Vec<OwnedFd>,
    cgroup_before: bool,
    user: bool,
    inner: i32,
}

/// The forked helper: only raw system calls. Reports 'u' once in its user namespace (and
/// waits for its maps), 'k' when done, or 'e' with the step and errno.
fn helper(s: &Steps, rep: i32, go: i32) -> i32 {
    let fail = |step: u8, e: std::io::Error| {
        let _ = raw::write_all(rep, &[b'e', step, e.raw_os_error().unwrap_or(0) as u8]);
        1
    };
    let _ = raw::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as u64, 0, 0, 0);
    for fd in &s.cgroup_procs {
        if let Err(e) = raw::write_all(fd.as_raw_fd(), b"0") {
            return fail(1, e);
        }
    }
    if s.cgroup_before {
        if let Err(e) = ferry_sys::ns::unshare(libc::CLONE_NEWCGROUP) {
            return fail(2, e);
        }
    }
    let mut b = [0u8; 1];
    if s.user {
        if let Err(e) = ferry_sys::ns::unshare(libc::CLONE_NEWUSER) {
            return fail(3, e);
        }
        let _ = raw::write_all(rep, b"u");
        if !matches!(raw::read_once(go, &mut b), Ok(1)) {
            return 1;
        }
    }
    if s.inner != 0 {
        if let Err(e) = ferry_sys::ns::unshare(s.inner) {
            return fail(4, e);
        }
    }
    let _ = raw::write_all(rep, b"k");
    let _ = raw::read_once(go, &mut b);
    0
}

/// Make the tree's user and cgroup namespaces and the namespaces its user namespace owns
/// (among `create`, the kinds to create), in a helper process (see the module's doc).
pub(crate) fn make(ns: &Namespaces, create: i32) -> Result<Option<Made>, Error> {
    let user = create & libc::CLONE_NEWUSER != 0;
    let cgroup = create & libc::CLONE_NEWCGROUP != 0;
    if !user && !cgroup {
        return Ok(None);
    }
    let rec = ns.userns.clone().unwrap_or_default();
    // (An owned mount namespace is made later, with its tree: [`hand_over_mnt`].)
    let owned: Vec<(&str, i32)> = KINDS
        .iter()
        .filter(|k| user && create & k.1 != 0 && k.0 != "mnt" && rec.owned.iter().any(|o| o == k.0))
        .copied()
        .collect();
    let inner = owned.iter().fold(0, |a, k| a | k.1);
    // An owned time namespace's offsets: computed from ferry's clocks before it is made.
    let time_offsets = match inner & libc::CLONE_NEWTIME {
        0 => None,
        _ => Some(crate::state::timens::plan(crate::state::timens::recorded(ns)?)?),
    };
    let steps = Steps {
        cgroup_procs: if cgroup { crate::state::cgroupns::root_procs(ns)? } else { Vec::new() },
        cgroup_before: cgroup && inner & libc::CLONE_NEWCGROUP == 0,
        user,
        inner,
    };
    let (rep_r, rep_w) = ferry_sys::process::pipe2(libc::O_CLOEXEC).ctx(|| "cannot create a pipe".into())?;
    let (go_r, go_w) = ferry_sys::process::pipe2(libc::O_CLOEXEC).ctx(|| "cannot create a pipe".into())?;
    let child = match ferry_sys::process::fork().ctx(|| "cannot fork the namespace helper".into())? {
        Fork::Child => raw::exit_now(helper(&steps, rep_w.as_raw_fd(), go_r.as_raw_fd())),
        Fork::Parent(c) => c,
    };
    drop((rep_w, go_r));
    let r = (|| -> Result<Made, Error> {
        let obj = || format!("namespace helper {child}");
        let read = || -> Result<(), Error> {
            let mut b = [0u8; 3];
            let n = raw::read_once(rep_r.as_raw_fd(), &mut b[..1]).ctx(obj)?;
            match (n, b[0]) {
                (0, _) => Err(Error::Invalid { object: obj(), what: "ended early".into() }),
                (_, b'e') => {
                    let steps = [
                        "joining the root cgroups",
                        "unshare(CLONE_NEWCGROUP)",
                        "unshare(CLONE_NEWUSER)",
                        "unsharing the namespaces it owns",
                    ];
                    let _ = raw::read_once(rep_r.as_raw_fd(), &mut b[1..]);
                    let step = (b[1] as usize).checked_sub(1).and_then(|i| steps.get(i)).unwrap_or(&"?");
                    Err(Error::Sys {
                        object: format!("{}: {step}", obj()),
                        source: std::io::Error::from_raw_os_error(b[2] as i32),
                    })
                }
                _ => Ok(()),
            }
        };
        if user {
            read()?;
            let setgroups = if rec.setgroups_deny { "deny" } else { "allow" };
            for (file, text) in [
                ("setgroups", setgroups.to_string()),
                ("uid_map", map_text(&rec.uid_map)),
                ("gid_map", map_text(&rec.gid_map)),
            ] {
                let p = format!("/proc/{child}/{file}");
                std::fs::write(&p, &text).ctx(|| format!("cannot write {text:?} to {p}"))?;
            }
            raw::write_all(go_w.as_raw_fd(), b"g").ctx(obj)?;
        }
        read()?;
        let open = |kind: &str| -> Result<OwnedFd, Error> {
            let p = format!("/proc/{child}/ns/{kind}");
            Ok(std::fs::File::open(&p).ctx(|| format!("cannot open {p}"))?.into())
        };
        // (unshare(CLONE_NEWTIME) left the helper where it was: the new one is its children's,
        // whose offsets are written before anything enters it)
        let timens = match time_offsets {
            Some(o) => {
                crate::state::timens::write_offsets_of(child, &o)?;
                Some(open("time_for_children")?)
            }
            None => None,
        };
        let mut join = Vec::new();
        for (kind, flag) in owned.iter().filter(|k| k.1 != libc::CLONE_NEWTIME) {
            join.push((*flag, open(kind)?));
        }
        if cgroup && inner & libc::CLONE_NEWCGROUP == 0 {
            join.push((libc::CLONE_NEWCGROUP, open("cgroup")?));
        }
        let userns = if user { Some(open("user")?) } else { None };
        let flags = inner | if user { libc::CLONE_NEWUSER } else { 0 } | if cgroup { libc::CLONE_NEWCGROUP } else { 0 };
        Ok(Made { userns, join, timens, flags })
    })();
    let _ = ferry_sys::process::kill(child, libc::SIGKILL);
    let _ = ferry_sys::ptrace::wait(child, false);
    r.map(Some)
}

/// Move ferry's restoring thread, which has built the tree's mounts in a mount namespace of
/// ferry's and pivoted into them, into a new mount namespace owned by the tree's user
/// namespace `userns`, holding the same mounts. A mount namespace made from inside the user
/// namespace is a copy whose mounts the kernel locks (`MNT_LOCKED`, with their flags), and
/// building the tree in it meets two walls: a bind of a mount with locked mounts below it fails
/// (EINVAL), and proc can be mounted only while a full proc is visible. So the tree is built
/// outside, then a helper process joins `userns`, unshares a mount namespace, attaches there an
/// unlocked detached copy of the built tree (`open_tree(OPEN_TREE_CLONE|AT_RECURSIVE)`, taken
/// by ferry's thread) on top of its root (`move_mount`), pivots into it and detaches the locked
/// copy below; ferry's thread joins that namespace. The mounts are then unlocked, as the mounts
/// a container runtime makes inside its user namespace are (state/mounts.rs refuses copies of
/// the dumping ferry's mounts there, which were locked). Unbindable mounts are not copied:
/// propagation is set after this.
pub(crate) fn hand_over_mnt(userns: BorrowedFd<'_>) -> Result<(), Error> {
    let tree =
        ferry_sys::ns::open_tree_clone(c"/", true).ctx(|| "cannot copy the tree's mounts (open_tree of /)".into())?;
    let (rep_r, rep_w) = ferry_sys::process::pipe2(libc::O_CLOEXEC).ctx(|| "cannot create a pipe".into())?;
    let (go_r, go_w) = ferry_sys::process::pipe2(libc::O_CLOEXEC).ctx(|| "cannot create a pipe".into())?;
    let child = match ferry_sys::process::fork().ctx(|| "cannot fork the mount namespace helper".into())? {
        Fork::Child => raw::exit_now(mnt_helper(userns, tree.as_fd(), rep_w.as_raw_fd(), go_r.as_raw_fd())),
        Fork::Parent(c) => c,
    };
    drop((rep_w, go_r));
    let r = (|| -> Result<(), Error> {
        let obj = || format!("mount namespace helper {child}");
        let mut b = [0u8; 3];
        let n = raw::read_once(rep_r.as_raw_fd(), &mut b).ctx(obj)?;
        if n == 0 {
            return Err(Error::Invalid { object: obj(), what: "ended early".into() });
        }
        if b[0] == b'e' {
            let steps = [
                "joining the tree's user namespace",
                "unshare(CLONE_NEWNS)",
                "move_mount of the tree's mounts onto its root",
                "entering them",
                "pivot_root into them",
                "detaching the locked copy",
            ];
            let step = (b[1] as usize).checked_sub(1).and_then(|i| steps.get(i)).unwrap_or(&"?");
            return Err(Error::Sys {
                object: format!("{}: {step}", obj()),
                source: std::io::Error::from_raw_os_error(b[2] as i32),
            });
        }
        let p = format!("/proc/{child}/ns/mnt");
        let ns = std::fs::File::open(&p).ctx(|| format!("cannot open {p}"))?;
        ferry_sys::ns::setns(ns.as_fd(), libc::CLONE_NEWNS)
            .ctx(|| "cannot join the tree's mount namespace owned by its user namespace".into())
    })();
    drop(go_w);
    let _ = ferry_sys::process::kill(child, libc::SIGKILL);
    let _ = ferry_sys::ptrace::wait(child, false);
    r
}

/// The forked helper of [`hand_over_mnt`]: only raw system calls. Reports 'k' when done (and
/// waits, so that its namespace can be opened), or 'e' with the step and errno.
fn mnt_helper(userns: BorrowedFd<'_>, tree: BorrowedFd<'_>, rep: i32, go: i32) -> i32 {
    let _ = raw::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as u64, 0, 0, 0);
    let dot = c".";
    let steps: [&dyn Fn() -> std::io::Result<()>; 6] = [
        &|| ferry_sys::ns::setns(userns, libc::CLONE_NEWUSER),
        &|| ferry_sys::ns::unshare(libc::CLONE_NEWNS),
        &|| ferry_sys::ns::move_mount_onto(tree, c"/"),
        &|| raw::fchdir(tree),
        &|| ferry_sys::ns::pivot_root(dot, dot),
        &|| ferry_sys::ns::umount2(dot, libc::MNT_DETACH),
    ];
    for (i, step) in steps.iter().enumerate() {
        if let Err(e) = step() {
            let _ = raw::write_all(rep, &[b'e', i as u8 + 1, e.raw_os_error().unwrap_or(0) as u8]);
            return 1;
        }
    }
    let _ = raw::write_all(rep, b"k");
    let mut b = [0u8; 1];
    let _ = raw::read_once(go, &mut b);
    0
}
