//! A mount namespace's mount tree (a namespace module, see state/namespaces.rs).
//!
//! Dump: the root process's /proc/PID/mountinfo, one `MountRecord` per mount, parents first.
//! The tree's root mount and the mounts given with `--external mnt[MOUNTPOINT]:KEY` are
//! external: never copied, taken from the restoring node (`--root DIR`, `--external
//! mnt[KEY]:PATH`). Another mount of a super-block already recorded is a bind of it (`bind_of`,
//! with its `root` sub-directory). Other mounts are recreated fresh: proc, sysfs, devpts,
//! mqueue, cgroup2, and tmpfs with its content (files, directories, symbolic links, device
//! nodes, FIFOs; modes, owners, times), read from a detached copy of the mount
//! (`open_tree(OPEN_TREE_CLONE)`), so what mounts below it hide is kept too; the regular files'
//! data is streamed into its own image file and back (`read_tmpfs`, `fill`: a MiB at a time,
//! holes kept), so a tmpfs of any size that the image's file system has room for is carried.
//! Anything else is refused by name.
//!
//! An external cgroup v1 mount is given back showing the directory of its hierarchy that the
//! image recorded, also when the source given is another one of the same hierarchy (runc names
//! its own cgroup: [`cgroup_v1_sources`]).
//!
//! Restore, in ferry's restoring thread inside the new mount namespace (a copy of ferry's, made
//! private first so nothing propagates back): the root directory is bound onto itself, every
//! mount is made below it (parents and bind sources first), then the per-mount flags and the
//! read-only super-blocks are set (last, so that mountpoints below could still be created), and
//! `pivot_root` makes it the root; shared and unbindable propagation is set after that.
//!
//! Mounts that come from the host (a mount namespace made by `unshare -m` or `ferry run
//! --mntns` starts as a copy of its maker's): in a tree whose root mount is ferry's own, a
//! mount that is a copy of one of the dumping ferry's own mounts (same device, root, mountpoint and file system type), other than
//! proc and sysfs (made fresh), is external automatically, with key `host:MOUNTPOINT` (as
//! CRIU's `--external mnt[]`): restore binds the same path of the restoring ferry's mount
//! tree there (`--external mnt[host:MOUNTPOINT]:PATH` names another), and refuses by name a
//! path this node lacks; a namespace file (nsfs, such as `ip netns` bindings under /run/netns)
//! that is gone is left out with a warning. With a
//! new pid namespace, proc mounts (and what is mounted below them) are made again by the
//! tree's root process, pid 1 of that namespace ([`Deferred`]): proc shows the pid namespace of
//! whoever mounts it. Until then ferry's own view of proc sits there, for the prepare step's
//! /proc/self/fd.

use super::nsctx::{Content, Deferred, DumpCtx, Handover, RestoreCtx};
use super::nsfile::in_ns;
use crate::error::{Ctx, Error};
use crate::procfs;
use ferry_image::{MountNs, MountRecord, Namespaces, TmpfsContent, TmpfsEntry};
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// File systems recreated fresh (tmpfs with its content).
const FRESH: [&str; 6] = ["proc", "sysfs", "devpts", "mqueue", "cgroup2", "tmpfs"];

const MS_RDONLY: u64 = libc::MS_RDONLY;
const MS_BIND: u64 = libc::MS_BIND;
const MS_REMOUNT: u64 = libc::MS_REMOUNT;

/// Per-mount flags from mountinfo's options ("rw,nosuid,relatime").
fn mount_flags(opts: &str) -> u64 {
    let mut f = 0u64;
    for o in opts.split(',') {
        f |= match o {
            "ro" => libc::MS_RDONLY,
            "nosuid" => libc::MS_NOSUID,
            "nodev" => libc::MS_NODEV,
            "noexec" => libc::MS_NOEXEC,
            "noatime" => libc::MS_NOATIME,
            "nodiratime" => libc::MS_NODIRATIME,
            "relatime" => libc::MS_RELATIME,
            _ => 0,
        };
    }
    if f & (libc::MS_NOATIME | libc::MS_RELATIME) == 0 {
        f |= libc::MS_STRICTATIME;
    }
    f
}

/// Whether directory `root` (a mountinfo root field) is `outer` or below it.
fn under(root: &str, outer: &str) -> Option<String> {
    if outer == "/" {
        return Some(root.to_string());
    }
    let rest = root.strip_prefix(outer)?;
    (rest.is_empty() || rest.starts_with('/')).then(|| if rest.is_empty() { "/".into() } else { rest.into() })
}

pub(crate) fn dump(ctx: &mut DumpCtx<'_>, out: &mut Namespaces) -> Result<(), Error> {
    // (Only in a tree whose root is ferry's own: a container's mounts under its own root are
    // its runtime's business, named by it.)
    let own = read_mountinfo(Path::new("/proc/self/mountinfo"))?;
    out.mnt = Some(dump_tree(ctx, &own, None)?);
    Ok(())
}

/// A nested mount namespace (state/nested_ns.rs): that of `ctx.pid`, made by `unshare` from
/// the one `parent` (a process of the tree) is in. `root`: the tree's root process.
pub(crate) fn dump_nested(ctx: &mut DumpCtx<'_>, parent: i32, root: i32) -> Result<MountNs, Error> {
    let theirs = read_mountinfo(&procfs::path(parent, "mountinfo"))?;
    dump_tree(ctx, &theirs, Some(root))
}

fn read_mountinfo(path: &Path) -> Result<Vec<ferry_proc::MountInfo>, Error> {
    let text = std::fs::read_to_string(path).ctx(|| format!("cannot read {}", path.display()))?;
    ferry_proc::parse_mountinfo(&text)
        .map_err(|e| Error::Invalid { object: path.display().to_string(), what: e.to_string() })
}

/// The mount tree of `ctx.pid`'s mount namespace. `from`: the mounts copies of which are
/// external: the dumping ferry's own (`nested` None) or, for a nested namespace (`nested`:
/// the tree's root process), its parent namespace's.
fn dump_tree(ctx: &mut DumpCtx<'_>, from: &[ferry_proc::MountInfo], nested: Option<i32>) -> Result<MountNs, Error> {
    let pid = ctx.pid;
    let text = procfs::read_string(pid, "mountinfo")?;
    let infos = procfs::parse(pid, "mountinfo", ferry_proc::parse_mountinfo(&text))?;
    let ids: HashSet<u32> = infos.iter().map(|m| m.mnt_id).collect();
    let tops: Vec<&ferry_proc::MountInfo> = infos.iter().filter(|m| !ids.contains(&m.parent_id)).collect();
    if tops.len() != 1 || tops[0].mount_point != "/" {
        return Err(Error::Unsupported { pid, what: "a mount tree whose root is not one mount at /".into() });
    }
    let mut recs: Vec<MountRecord> = Vec::new();
    // (major, minor) of each record, for binds.
    let mut devs: Vec<(u32, u32)> = Vec::new();
    let own: HashMap<HostKey, &ferry_proc::MountInfo> = from.iter().map(|m| (host_key(m), m)).collect();
    let host_copy = own.contains_key(&host_key(tops[0]));
    if nested.is_some() && !host_copy {
        return Err(Error::Unsupported {
            pid,
            what:
                "a nested mount namespace whose root mount is not a copy of its parent namespace's (pivot_root in it)"
                    .into(),
        });
    }
    if nested.is_none() && host_copy && owned_by_tree_userns(ctx.ns)? {
        return Err(Error::Unsupported {
            pid,
            what: format!(
                "a mount namespace owned by its user namespace whose root mount ({} {}) is a copy of ferry's (the kernel locks such copies there, MNT_LOCKED, and ferry would give them back unlocked; a container's own root, given with --root at restore, is fine)",
                tops[0].fs_type, tops[0].root
            ),
        });
    }
    let prefix = if nested.is_some() { PARENT_KEY } else { HOST_KEY };
    let tree_pidns =
        nested.is_some_and(|root| crate::state::nsfile::ns_link(root, "pid") != crate::state::nsfile::own_link("pid"));
    for m in &infos {
        let mp = &m.mount_point;
        let mut r = MountRecord {
            id: m.mnt_id,
            parent: if std::ptr::eq(m, tops[0]) { 0 } else { m.parent_id },
            mountpoint: mp.clone(),
            fstype: m.fs_type.clone(),
            source: m.source.clone(),
            root: m.root.clone(),
            flags: mount_flags(&m.mount_options),
            options: m.super_options.split(',').filter(|o| *o != "rw" && *o != "ro").collect::<Vec<_>>().join(","),
            sb_ro: m.super_options.split(',').any(|o| o == "ro"),
            ..Default::default()
        };
        (r.shared, r.master, r.unbindable) = propagation(m);
        let dev = (m.dev_major, m.dev_minor);
        let refuse = |what: String| Error::Unsupported { pid, what };
        let copy_of = own.get(&host_key(m)).filter(|_| host_copy);
        if let Some(root) = nested {
            r.ns_inode = nested_check(pid, root, m, copy_of.copied(), from)?;
            r.pidns_proc = tree_pidns && m.fs_type == "proc";
            if let Some(p) = recs.iter().find(|p| p.pidns_proc && p.id == m.parent_id) {
                return Err(Error::Unsupported {
                    pid,
                    what: format!(
                        "mount {mp} in a nested mount namespace, below {} (a proc of the tree's own pid namespace, mounted again by a process of it after the restore)",
                        p.mountpoint
                    ),
                });
            }
            if m.fs_type == "devpts" && copy_of.is_none() {
                r.devpts_dev = libc::makedev(m.dev_major, m.dev_minor);
            }
        }
        if r.parent == 0 && nested.is_none() {
            r.external = "/".into();
        } else if let Some((_, key)) = ctx.opts.external_mounts.iter().find(|(p, _)| p == mp) {
            r.external = key.clone();
        } else if let Some(theirs) =
            copy_of.filter(|_| nested.is_some() || !matches!(m.fs_type.as_str(), "proc" | "sysfs"))
        {
            r.external = format!("{prefix}{mp}");
            if nested.is_some() {
                r.parent_peer = parent_peer(&r, theirs);
            }
        } else if let Some(first) =
            recs.iter().zip(&devs).find(|(e, d)| **d == dev && under(&m.root, &e.root).is_some())
        {
            r.bind_of = first.0.id;
        } else if devs.contains(&dev) {
            return Err(refuse(format!(
                "mount {mp} (a bind of {} of a file system the tree shows elsewhere; give it with --external mnt[{mp}]:KEY)",
                m.root
            )));
        } else if !FRESH.contains(&m.fs_type.as_str()) {
            return Err(refuse(format!(
                "mount {mp} ({} from {}; ferry recreates only proc, sysfs, devpts, mqueue, cgroup2 and tmpfs: give it with --external mnt[{mp}]:KEY)",
                m.fs_type, m.source
            )));
        } else if m.fs_type == "tmpfs" {
            let data = format!("mnt-{}-data.img", m.mnt_id);
            let content = read_tmpfs(ctx, mp, &data)?;
            let name = format!("mnt-{}.img", m.mnt_id);
            ctx.img.write_file(&name, &content.encode_to_vec())?;
            (r.content, r.content_data) = (name, data);
        }
        recs.push(r);
        devs.push(dev);
    }
    Ok(MountNs { mounts: recs })
}

/// Whether the mount namespace `ns` is owned by another user namespace than ferry's (the tree's:
/// state/userns.rs checked that it is no other).
fn owned_by_tree_userns(ns: std::os::fd::BorrowedFd<'_>) -> Result<bool, Error> {
    use crate::state::nsfile::fd_inode;
    let own = std::fs::File::open("/proc/self/ns/user").ctx(|| "cannot open /proc/self/ns/user".into())?;
    let owner = ferry_sys::ns::owner_userns(ns).ctx(|| "cannot find the owner of the tree's mount namespace".into())?;
    Ok(fd_inode(std::os::fd::AsFd::as_fd(&owner))? != fd_inode(std::os::fd::AsFd::as_fd(&own))?)
}

/// mountinfo's propagation: (peer group, master group, unbindable).
fn propagation(m: &ferry_proc::MountInfo) -> (u32, u32, bool) {
    let (mut shared, mut master, mut unbindable) = (0, 0, false);
    for o in &m.optional_fields {
        match o.split_once(':') {
            Some(("shared", n)) => shared = n.parse().unwrap_or(0),
            Some(("master", n)) => master = n.parse().unwrap_or(0),
            _ if o == "unbindable" => unbindable = true,
            _ => {}
        }
    }
    (shared, master, unbindable)
}

/// A copy `r` (in a nested namespace) of its parent namespace's mount `theirs`: in its peer
/// group (1), a slave of it (2), or neither (0) ([`nested_check`] refused the rest).
fn parent_peer(r: &MountRecord, theirs: &ferry_proc::MountInfo) -> u32 {
    let (shared, _, _) = propagation(theirs);
    match (r.shared, r.master) {
        (s, 0) if s != 0 && s == shared => 1,
        (0, m) if m != 0 && m == shared => 2,
        _ => 0,
    }
}

/// What a nested mount namespace (of process `pid`; `root`: the tree's root) may hold: proc
/// only when it shows the right pid namespace; sysfs, mqueue and cgroup2 made in it only when
/// they show the network, ipc or cgroup namespace of `pid` or of the root (returned: the
/// namespace's inode, 0 for the root's, in which restore mounts them); a fresh devpts (a new
/// instance: restore makes the tree's ptys of it there, state/tty.rs); no other fresh file
/// system than tmpfs; and no peer group or master shared
/// with its parent namespace (`from`) other than a copy's with its origin (`copy_of`).
fn nested_check(
    pid: i32,
    root: i32,
    m: &ferry_proc::MountInfo,
    copy_of: Option<&ferry_proc::MountInfo>,
    from: &[ferry_proc::MountInfo],
) -> Result<u64, Error> {
    let ns = crate::state::nsfile::ns_link;
    let ferry_pid = std::fs::read_link("/proc/self/ns/pid").ok().map(|l| l.display().to_string());
    let mp = &m.mount_point;
    let mut shows = 0;
    let tree_pid = ns(root, "pid");
    let what = match (m.fs_type.as_str(), copy_of) {
        // In a tree with its own pid namespace, made again by a process of it (`pidns_proc`):
        // a copy of the root's proc as the root's own is (state/mounts.rs `Deferred`), a fresh
        // one when it showed that pid namespace.
        ("proc", Some(theirs)) if tree_pid != ferry_pid && propagation(theirs).0 != 0 => {
            Some("a copy of the proc mount of a tree with its own pid namespace, in a peer group")
        }
        ("proc", Some(_)) if tree_pid != ferry_pid => None,
        ("proc", None) if tree_pid != ferry_pid => match proc_shows(pid, mp) {
            Some(l) if Some(&l) == tree_pid.as_ref() => None,
            _ => Some("a proc mount of another pid namespace than the tree's"),
        },
        ("proc", None) if ns(pid, "pid") != ferry_pid => Some("a proc mount of another pid namespace than ferry's"),
        ("tmpfs" | "proc" | "devpts", None) => None,
        (fs @ ("sysfs" | "mqueue" | "cgroup2"), None) => match fresh_shows(pid, root, m, fs)? {
            Some(inode) => {
                shows = inode;
                None
            }
            None if fs == "sysfs" => Some("a sysfs of another network namespace than its process's or the tree root's"),
            None if fs == "cgroup2" => Some(
                "a cgroup2 of another cgroup namespace than its process's or the tree root's (or of a sub-directory)",
            ),
            None => Some("an mqueue of another ipc namespace than its process's or the tree root's"),
        },
        (_, None) if FRESH.contains(&m.fs_type.as_str()) => Some("made in the nested namespace (not carried)"),
        _ => None,
    };
    let (shared, master, _) = propagation(m);
    let what = what.or_else(|| {
        let theirs = copy_of.map(propagation).unwrap_or_default();
        let peer_elsewhere = shared != 0 && from.iter().any(|f| propagation(f).0 == shared);
        if master != 0 && !(shared == 0 && master == theirs.0) {
            Some("a slave of a peer group other than that of the parent namespace's mount it is a copy of")
        } else if peer_elsewhere && !(master == 0 && shared == theirs.0 && theirs.1 == 0) {
            Some("in a peer group with mounts of its parent namespace other than the one it is a copy of, or with a slave")
        } else {
            None
        }
    });
    match what {
        Some(w) => Err(Error::Unsupported {
            pid,
            what: format!("mount {mp} ({}) in a nested mount namespace: {w}", m.fs_type),
        }),
        None => Ok(shows),
    }
}

/// The pid namespace the proc mounted at `mp` in `pid`'s mount namespace shows: that of the
/// task that is pid 1 there (None: it has none).
fn proc_shows(pid: i32, mp: &str) -> Option<String> {
    let path = format!("/proc/{pid}/root{}/1/ns/pid", mp.trim_end_matches('/'));
    std::fs::read_link(path).ok().map(|l| l.display().to_string())
}

/// The namespace kind a fresh `fs` shows (that of whoever mounts it): sysfs the network
/// namespace, mqueue the ipc one, cgroup2 the cgroup one (its root is that namespace's root).
fn shown_kind(fs: &str) -> (&'static str, i32) {
    match fs {
        "sysfs" => ("net", libc::CLONE_NEWNET),
        "cgroup2" => ("cgroup", libc::CLONE_NEWCGROUP),
        _ => ("ipc", libc::CLONE_NEWIPC),
    }
}

/// The namespace a fresh sysfs (network), mqueue (ipc) or cgroup2 (cgroup) mount `m` of
/// `pid`'s nested mount namespace shows: Some(its inode) if `pid`'s own (not the root's),
/// Some(0) if the tree root's, None if neither. The kernel keeps one sysfs and mqueue
/// super-block per namespace: the mount shows a namespace when a fresh one made from inside it
/// has the mount's device; cgroup2 has one super-block, and a fresh mount's root is the
/// cgroup namespace's root: also compared (as ferry sees it).
fn fresh_shows(pid: i32, root: i32, m: &ferry_proc::MountInfo, fs: &str) -> Result<Option<u64>, Error> {
    let (kind, flag) = shown_kind(fs);
    let ns = crate::state::nsfile::ns_link;
    let dev = (m.dev_major, m.dev_minor, if fs == "cgroup2" { m.root.clone() } else { String::new() });
    let mut candidates = vec![(root, 0)];
    if ns(pid, kind) != ns(root, kind) {
        candidates.insert(0, (pid, ns(pid, kind).map_or(0, |l| crate::state::nsfile::inode_of(&l))));
    }
    for (p, inode) in candidates {
        let path = format!("/proc/{p}/ns/{kind}");
        let f = std::fs::File::open(&path).ctx(|| format!("cannot open {path}"))?;
        if fresh_dev(std::os::fd::AsFd::as_fd(&f), flag, fs)? == dev {
            return Ok(Some(inode));
        }
    }
    Ok(None)
}

/// The device of a fresh `fs` mounted from inside the namespace `ns` (of kind `flag`), by a
/// short-lived thread in a private mount namespace of its own; for cgroup2 also its root as
/// ferry's cgroup namespace shows it (the thread goes back into it to read it), else "".
fn fresh_dev(ns: std::os::fd::BorrowedFd<'_>, flag: i32, fs: &str) -> Result<(u32, u32, String), Error> {
    let fstype = CString::new(fs).map_err(|_| Error::Invalid { object: fs.into(), what: "bad fs type".into() })?;
    let obj = || format!("a fresh {fs} to compare with");
    std::thread::scope(|s| {
        s.spawn(|| {
            ferry_sys::ns::unshare(libc::CLONE_FS).ctx(|| "cannot unshare CLONE_FS".into())?;
            ferry_sys::ns::unshare(libc::CLONE_NEWNS).ctx(|| "cannot unshare a mount namespace".into())?;
            ferry_sys::ns::mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)
                .ctx(|| "cannot make a private mount namespace".into())?;
            let own = std::fs::File::open("/proc/thread-self/ns/cgroup")
                .ctx(|| "cannot open /proc/thread-self/ns/cgroup".into())?;
            ferry_sys::ns::setns(ns, flag).ctx(|| format!("{}: cannot join its namespace", obj()))?;
            let at = c"/tmp";
            ferry_sys::ns::mount(Some(&fstype), at, Some(&fstype), 0, None)
                .ctx(|| format!("cannot mount {}", obj()))?;
            let st = std::fs::metadata("/tmp").ctx(|| format!("cannot stat {}", obj()))?;
            let mut root = String::new();
            if flag == libc::CLONE_NEWCGROUP {
                ferry_sys::ns::setns(std::os::fd::AsFd::as_fd(&own), flag)
                    .ctx(|| "cannot go back into ferry's cgroup namespace".into())?;
                let infos = read_mountinfo(Path::new("/proc/thread-self/mountinfo"))?;
                root = infos.iter().rev().find(|i| i.mount_point == "/tmp").map(|i| i.root.clone()).unwrap_or_default();
            }
            Ok((libc::major(st.dev()), libc::minor(st.dev()), root))
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Invalid { object: obj(), what: "thread panicked".into() }))
    })
}

/// The key prefix of a mount that is a copy of the dumping ferry's mount at the same place.
const HOST_KEY: &str = "host:";

/// The key prefix of a nested mount namespace's copy of its parent namespace's mount.
const PARENT_KEY: &str = "parent:";

/// What makes a mount a copy of another: device, root, mountpoint, file system type.
type HostKey = (u32, u32, String, String, String);

fn host_key(m: &ferry_proc::MountInfo) -> HostKey {
    (m.dev_major, m.dev_minor, m.root.clone(), m.mount_point.clone(), m.fs_type.clone())
}

/// External mounts' sources, and the mounts left out.
type Sources = (Vec<(String, PathBuf)>, HashSet<u32>);

/// The sources of external mounts: those given, then the copies of the dumping ferry's mounts
/// (`host:MOUNTPOINT`) not given otherwise, from the same path here; the ids of such mounts
/// this node lacks and may leave out (namespace files), with what is mounted below them.
fn host_sources(mnt: &MountNs, given: &[(String, PathBuf)]) -> Result<Sources, Error> {
    let mut out = given.to_vec();
    let mut left_out = HashSet::new();
    for r in ordered(&mnt.mounts)? {
        if left_out.contains(&r.parent) {
            left_out.insert(r.id);
            continue;
        }
        let Some(path) = r.external.strip_prefix(HOST_KEY) else { continue };
        if out.iter().any(|(k, _)| *k == r.external) {
            continue;
        }
        if std::fs::symlink_metadata(path).is_ok() {
            out.push((r.external.clone(), PathBuf::from(path)));
        } else if r.fstype == "nsfs" {
            tracing::warn!(mount = %r.mountpoint, "a namespace file bound from the dumping host, gone here: left out");
            left_out.insert(r.id);
        } else {
            return Err(Error::Invalid {
                object: format!("mount {} ({})", r.mountpoint, r.fstype),
                what: format!(
                    "a copy of the dumping host's mount at {path}, which this node does not have (give one with --external mnt[{}]:PATH)",
                    r.external
                ),
            });
        }
    }
    cgroup_v1_sources(mnt, &mut out)?;
    Ok((out, left_out))
}

/// An external cgroup v1 mount shows one directory of its hierarchy, recorded as its root. The
/// source given at restore must show the same one: runc (1.1, as CRIU's client) names it from
/// its own /proc/self/cgroup at restore (`getCgroupMounts`), which is its caller's cgroup
/// (conmon's under Podman, the shell's), not the container's that the mount showed at dump.
/// Where the given source shows another directory of the same hierarchy, the recorded one is
/// bound instead if this node has it (runc made the container's cgroups before the restore),
/// with a warning naming both; else the mount is refused by name.
fn cgroup_v1_sources(mnt: &MountNs, out: &mut [(String, PathBuf)]) -> Result<(), Error> {
    if !mnt.mounts.iter().any(|r| r.fstype == "cgroup" && !r.external.is_empty()) {
        return Ok(());
    }
    let own = read_mountinfo(Path::new("/proc/self/mountinfo"))?;
    let mut fixed: HashMap<String, String> = HashMap::new();
    for r in mnt.mounts.iter().filter(|r| r.fstype == "cgroup" && !r.external.is_empty()) {
        let object = || format!("mount {} (cgroup {})", r.mountpoint, r.options);
        if let Some(root) = fixed.get(&r.external) {
            if *root != r.root {
                return Err(Error::Invalid {
                    object: object(),
                    what: format!("its key {} names a mount of cgroup {root} too", r.external),
                });
            }
            continue;
        }
        let Some(entry) = out.iter_mut().find(|(k, _)| *k == r.external) else { continue };
        let given = entry.1.canonicalize().ctx(|| format!("{}: cannot resolve {}", object(), entry.1.display()))?;
        let given_s = given.to_string_lossy();
        // The cgroup v1 mount of the same hierarchy (same controllers) that holds the given path.
        let same = |m: &&ferry_proc::MountInfo| {
            m.fs_type == "cgroup"
                && m.super_options.split(',').filter(|o| *o != "rw" && *o != "ro").eq(r.options.split(','))
        };
        let holder = own
            .iter()
            .filter(same)
            .filter_map(|m| under(&given_s, &m.mount_point).map(|rel| (m, rel)))
            .max_by_key(|(m, _)| m.mount_point.len());
        let Some((m, rel)) = holder else { continue };
        fixed.insert(r.external.clone(), r.root.clone());
        let shown = match (m.root.as_str(), rel.as_str()) {
            ("/", rel) => rel.to_string(),
            (root, "/") => root.to_string(),
            (root, rel) => format!("{root}{rel}"),
        };
        if shown == r.root {
            continue;
        }
        let recorded =
            under(&r.root, &m.root).filter(|rel| plain(rel)).map(|rel| inside(Path::new(&m.mount_point), &rel));
        let Some(p) = recorded.filter(|p| p.is_dir()) else {
            return Err(Error::Invalid {
                object: object(),
                what: format!(
                    "the source given, {}, shows cgroup {shown}; the image recorded {}, which this node does not have",
                    given.display(),
                    r.root
                ),
            });
        };
        tracing::warn!(
            mount = %r.mountpoint,
            "the source given, {}, shows cgroup {shown}, not the recorded {}: {} is bound instead (runc names its own cgroup at restore)",
            given.display(),
            r.root,
            p.display()
        );
        entry.1 = p;
    }
    Ok(())
}

/// The files of the tmpfs mounted at `mp` in the tree's mount namespace, from a detached copy
/// of that one mount (what mounts below it cover is included): their list, and their data
/// streamed into image file `data` (only the data extents: holes stay holes), so that ferry
/// never holds more than a MiB of it. Refused by name when the image's file system has not
/// the room for it.
fn read_tmpfs(ctx: &mut DumpCtx<'_>, mp: &str, data: &str) -> Result<TmpfsContent, Error> {
    let pid = ctx.pid;
    let cpath = CString::new(mp).map_err(|_| Error::Unsupported { pid, what: format!("mount {mp:?}") })?;
    let tree = in_ns(ctx.ns, libc::CLONE_NEWNS, || {
        ferry_sys::ns::open_tree_clone(&cpath, false)
            .ctx(|| format!("pid {pid}: cannot open the tmpfs at {mp} (open_tree)"))
    })?;
    let base = PathBuf::from(format!("/proc/self/fd/{}", tree.as_raw_fd()));
    let mut out = TmpfsContent::default();
    let mut used = 0u64;
    walk(&base, "", &mut out, &mut used).map_err(|(path, source)| Error::Sys {
        object: format!("pid {pid}: tmpfs {mp}: cannot read {path}"),
        source,
    })?;
    if ctx.img.dir().is_dir() {
        let free = ferry_sys::process::free_space(ctx.img.dir())
            .ctx(|| format!("cannot find the free space of {}", ctx.img.dir().display()))?;
        if used > free {
            return Err(Error::Invalid {
                object: format!("pid {pid}: tmpfs {mp}"),
                what: format!(
                    "its files hold {} MiB, and the image's file system ({}) has {} MiB free",
                    used.div_ceil(1 << 20),
                    ctx.img.dir().display(),
                    free >> 20
                ),
            });
        }
    }
    let mut stream = ctx.img.stream(data)?;
    for e in out.entries.iter_mut().filter(|e| e.mode & libc::S_IFMT == libc::S_IFREG) {
        let io = |source| Error::Sys { object: format!("pid {pid}: tmpfs {mp}: cannot read /{}", e.path), source };
        let f = open_noatime(&base.join(&e.path)).map_err(io)?;
        e.extents = crate::state::files::ghost::extents(std::os::fd::AsFd::as_fd(&f), e.size).map_err(io)?;
        crate::state::files::ghost::copy_out(&f, &e.extents, &mut stream).map_err(|source| Error::Sys {
            object: format!("pid {pid}: tmpfs {mp}: cannot copy /{} into {}", e.path, stream.path().display()),
            source,
        })?;
    }
    ctx.img.finish_stream(stream)?;
    Ok(out)
}

/// Open a regular file read-only without following a symbolic link, and without moving its
/// atime where the caller may (O_NOATIME).
fn open_noatime(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |flags| std::fs::OpenOptions::new().read(true).custom_flags(flags | libc::O_NOFOLLOW).open(path);
    match open(libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
        r => r,
    }
}

/// List the entries of the tree at `base`/`rel` (parents first) into `out`, adding the bytes
/// its regular files take (their blocks) to `used`. Error: (path, what failed).
fn walk(base: &Path, rel: &str, out: &mut TmpfsContent, used: &mut u64) -> Result<(), (String, std::io::Error)> {
    let path = if rel.is_empty() { base.to_path_buf() } else { base.join(rel) };
    let io = |e| (format!("/{rel}"), e);
    // (The root itself through the fd's magic link, which lstat would not follow.)
    let md = if rel.is_empty() { std::fs::metadata(&path) } else { std::fs::symlink_metadata(&path) }.map_err(io)?;
    let ft = md.file_type();
    if ft.is_socket() {
        return Ok(()); // (a bound socket's name is made again by the socket's own restore)
    }
    let mut e = TmpfsEntry {
        path: rel.to_string(),
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        atime_ns: md.atime() * 1_000_000_000 + md.atime_nsec(),
        mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
        ..Default::default()
    };
    if ft.is_symlink() {
        e.target = std::fs::read_link(&path).map_err(io)?.to_string_lossy().into_owned();
    } else if ft.is_file() {
        e.size = md.len();
        *used += md.blocks() * 512;
    } else if ft.is_block_device() || ft.is_char_device() {
        e.rdev = md.rdev();
    }
    out.entries.push(e);
    if ft.is_dir() {
        let mut names: Vec<String> = std::fs::read_dir(&path)
            .map_err(io)?
            .filter_map(|d| d.ok().map(|d| d.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        for n in names {
            let child = if rel.is_empty() { n } else { format!("{rel}/{n}") };
            walk(base, &child, out, used)?;
        }
    }
    Ok(())
}

/// The content of mount `r` in image `img`, if it has any (a tmpfs's).
fn load_content(img: &ferry_image::ImageReader, r: &MountRecord) -> Result<Option<Content>, Error> {
    if r.content.is_empty() {
        return Ok(None);
    }
    let files = TmpfsContent::decode(img.read_file(&r.content)?.as_slice())
        .map_err(|e| Error::Invalid { object: r.content.clone(), what: e.to_string() })?;
    // (Its digests were checked with the image's other files before the restore began.)
    let data = if r.content_data.is_empty() { None } else { Some(img.open_file(&r.content_data)?) };
    Ok(Some(Content { files, data }))
}

/// A relative, plain path from the image (no "..", not absolute).
fn plain(p: &str) -> bool {
    Path::new(p).components().all(|c| matches!(c, Component::Normal(_) | Component::RootDir | Component::CurDir))
}

fn cstr(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| format!("{} holds a NUL byte", p.display()))
}

/// `root` + an absolute path of the tree.
fn inside(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

/// Makes mounts below `root` and remembers what must be set once all are made.
struct Builder<'a> {
    root: PathBuf,
    made: HashMap<u32, MountRecord>,
    /// (target, flags for mount(NULL, target, NULL, flags, options), options): per-mount flags
    /// and read-only super-blocks, set last.
    finals: Vec<(PathBuf, u64, String)>,
    external: &'a [(String, PathBuf)],
}

impl Builder<'_> {
    fn target(&self, r: &MountRecord) -> PathBuf {
        inside(&self.root, &r.mountpoint)
    }

    /// Make mount `r` (its parent and bind source exist).
    fn make(&mut self, r: &MountRecord, content: Option<&Content>) -> Result<(), String> {
        let target = self.target(r);
        let t = cstr(&target)?;
        let src: Option<PathBuf> = if !r.external.is_empty() {
            let host = self.external.iter().find(|(k, _)| *k == r.external).map(|x| x.1.clone()).ok_or_else(|| {
                format!("external mount with key {:?}: give it with --external mnt[{}]:PATH", r.external, r.external)
            })?;
            Some(host)
        } else if r.bind_of != 0 {
            let of =
                self.made.get(&r.bind_of).ok_or_else(|| format!("bind of mount {} that was not made", r.bind_of))?;
            let rel = under(&r.root, &of.root).ok_or_else(|| format!("{} is not below {}", r.root, of.root))?;
            let src = inside(&inside(&self.root, &of.mountpoint), &rel);
            if of.fstype == "devpts" && std::fs::symlink_metadata(&src).is_err() {
                // A pty slave bound elsewhere (runc's /dev/console): its pair is made now, in
                // the new devpts instance, and restore's terminal code takes it (state/tty.rs).
                crate::state::tty::open_for_bind(&inside(&self.root, &of.mountpoint), &rel)?;
            }
            Some(src)
        } else {
            None
        };
        let is_dir = src.as_ref().is_none_or(|s| s.is_dir());
        if std::fs::symlink_metadata(&target).is_err() {
            if is_dir {
                std::fs::create_dir_all(&target).map_err(|e| format!("cannot create mountpoint: {e}"))?;
            } else {
                if let Some(d) = target.parent() {
                    std::fs::create_dir_all(d).map_err(|e| format!("cannot create mountpoint: {e}"))?;
                }
                std::fs::File::create(&target).map_err(|e| format!("cannot create mountpoint: {e}"))?;
            }
        }
        if let Some(src) = src {
            let s = cstr(&src)?;
            ferry_sys::ns::mount(Some(&s), &t, None, MS_BIND, None)
                .map_err(|e| format!("cannot bind {} there: {e}", src.display()))?;
            self.finals.push((target.clone(), MS_REMOUNT | MS_BIND | r.flags, String::new()));
        } else {
            let fstype = CString::new(r.fstype.as_str()).map_err(|_| "bad fs type".to_string())?;
            let source = CString::new(if r.source.is_empty() { r.fstype.as_str() } else { r.source.as_str() })
                .map_err(|_| "bad source".to_string())?;
            let opts = CString::new(r.options.as_str()).map_err(|_| "bad options".to_string())?;
            let tmpfs = r.fstype == "tmpfs";
            let ro_now = r.sb_ro && !tmpfs;
            let flags = (r.flags & !MS_RDONLY) | if ro_now { MS_RDONLY } else { 0 };
            ferry_sys::ns::mount(Some(&source), &t, Some(&fstype), flags, Some(&opts))
                .map_err(|e| format!("cannot mount {} ({}): {e}", r.fstype, r.options))?;
            if let Some(c) = content {
                fill(&target, c)?;
            }
            if tmpfs && r.sb_ro {
                self.finals.push((target.clone(), MS_REMOUNT | MS_RDONLY | (r.flags & !MS_RDONLY), r.options.clone()));
            }
            if r.flags & MS_RDONLY != 0 && !r.sb_ro {
                self.finals.push((target.clone(), MS_REMOUNT | MS_BIND | r.flags, String::new()));
            }
        }
        self.made.insert(r.id, r.clone());
        Ok(())
    }

    /// Per-mount flags and read-only super-blocks, children first.
    fn finish(&mut self) -> Result<(), String> {
        for (target, flags, opts) in self.finals.drain(..).rev() {
            let t = cstr(&target)?;
            let o = CString::new(opts).map_err(|_| "bad options".to_string())?;
            ferry_sys::ns::mount(None, &t, None, flags, Some(&o))
                .map_err(|e| format!("mount {}: cannot set its flags ({flags:#x}): {e}", target.display()))?;
        }
        Ok(())
    }
}

/// Write a tmpfs's files under `dir` (its fresh mount). Entries come parents first; a path
/// through one of the content's own symbolic links is refused, as is any ".." (the image says
/// where to write). Regular files' data is streamed from the data file, holes kept.
fn fill(dir: &Path, c: &Content) -> Result<(), String> {
    let mut links: HashSet<&str> = HashSet::new();
    let mut done: Vec<(CString, &TmpfsEntry)> = Vec::new();
    let mut data = c.data.as_ref();
    for e in &c.files.entries {
        if !plain(&e.path) || e.path.starts_with('/') {
            return Err(format!("tmpfs content: bad path {:?}", e.path));
        }
        let mut prefix = String::new();
        for part in e.path.split('/') {
            if links.contains(prefix.as_str()) && !prefix.is_empty() {
                return Err(format!("tmpfs content: {:?} goes through a symbolic link", e.path));
            }
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
        }
        let path = if e.path.is_empty() { dir.to_path_buf() } else { dir.join(&e.path) };
        let cp = cstr(&path)?;
        let err = |what: &str, err: std::io::Error| format!("tmpfs content {}: cannot {what}: {err}", e.path);
        match e.mode & libc::S_IFMT {
            libc::S_IFDIR => {
                if !e.path.is_empty() {
                    std::fs::create_dir(&path).map_err(|x| err("create the directory", x))?;
                }
            }
            libc::S_IFREG => {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|x| err("create the file", x))?;
                match data.as_mut() {
                    Some(src) => crate::state::files::ghost::write_extents(src, &e.extents, e.size, &f)
                        .map_err(|x| format!("tmpfs content {}: {x}", e.path))?,
                    None => f.write_all(&e.data).map_err(|x| err("write", x))?,
                }
            }
            libc::S_IFLNK => {
                std::os::unix::fs::symlink(&e.target, &path).map_err(|x| err("create the symbolic link", x))?;
                links.insert(e.path.as_str());
            }
            libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO => {
                ferry_sys::ns::mknod(&cp, e.mode, e.rdev).map_err(|x| err("create the node", x))?;
            }
            _ => return Err(format!("tmpfs content {}: unknown file type {:o}", e.path, e.mode)),
        }
        ferry_sys::ns::lchown(&cp, e.uid, e.gid).map_err(|x| err("set its owner", x))?;
        if e.mode & libc::S_IFMT != libc::S_IFLNK {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(e.mode & 0o7777))
                .map_err(|x| err("set its mode", x))?;
        }
        done.push((cp, e));
    }
    if let Some(src) = data.as_mut() {
        if std::io::Read::read(src, &mut [0u8; 1]).map_err(|x| format!("tmpfs data: cannot read: {x}"))? != 0 {
            return Err("tmpfs data: longer than its files' extents".into());
        }
    }
    // Times last, children first: creating an entry changes its directory's times.
    for (cp, e) in done.iter().rev() {
        ferry_sys::ns::set_times_nofollow(cp, e.atime_ns, e.mtime_ns)
            .map_err(|x| format!("tmpfs content {}: cannot set its times: {x}", e.path))?;
    }
    Ok(())
}

/// Records in an order where every mount comes after its parent and its bind source.
fn ordered(mounts: &[MountRecord]) -> Result<Vec<&MountRecord>, Error> {
    let mut out: Vec<&MountRecord> = Vec::new();
    let mut done: HashSet<u32> = HashSet::new();
    while out.len() < mounts.len() {
        let before = out.len();
        for m in mounts {
            let ready = |id: u32| id == 0 || done.contains(&id);
            if !done.contains(&m.id) && ready(m.parent) && ready(m.bind_of) {
                done.insert(m.id);
                out.push(m);
            }
        }
        if out.len() == before {
            return Err(Error::Invalid {
                object: "image mount tree".into(),
                what: "a mount whose parent or bind source is missing".into(),
            });
        }
    }
    Ok(out)
}

/// Whether the tree's root mount was ferry's own "/" (same file system and directory).
fn is_own_root(r: &MountRecord) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let Ok(infos) = ferry_proc::parse_mountinfo(&text) else { return false };
    infos
        .iter()
        .rev()
        .find(|m| m.mount_point == "/")
        .is_some_and(|m| m.fs_type == r.fstype && m.root == r.root && m.source == r.source)
}

pub(crate) fn restore(ctx: &RestoreCtx<'_>, ns: &Namespaces, h: &mut Handover) -> Result<(), Error> {
    let Some(mnt) = &ns.mnt else { return Ok(()) };
    let obj = |r: &MountRecord| format!("mount {} ({})", r.mountpoint, r.fstype);
    let root_rec = mnt
        .mounts
        .iter()
        .find(|r| r.parent == 0)
        .ok_or_else(|| Error::Invalid { object: "image mount tree".into(), what: "no root mount".into() })?;
    for r in &mnt.mounts {
        if !plain(&r.mountpoint) || !r.mountpoint.starts_with('/') || !plain(&r.root) {
            return Err(Error::Invalid { object: obj(r), what: "not a plain path".into() });
        }
    }
    let root = match &ctx.opts.root {
        Some(d) => std::fs::canonicalize(d).ctx(|| format!("--root {}", d.display()))?,
        None if is_own_root(root_rec) => PathBuf::from("/"),
        None => {
            return Err(Error::Invalid {
                object: "the tree's root mount".into(),
                what: format!(
                    "was {} ({} {}), not ferry's own root: give its directory with --root DIR",
                    root_rec.source, root_rec.fstype, root_rec.root
                ),
            })
        }
    };
    let slash = c"/";
    ferry_sys::ns::mount(None, slash, None, libc::MS_REC | libc::MS_PRIVATE, None)
        .ctx(|| "cannot make the new mount namespace private".into())?;
    // ferry's own "/" is bound elsewhere first: bound onto itself, the paths below it would
    // still lead to the mounts of ferry's tree (a mount on top of the root is not crossed).
    let root = if root == Path::new("/") { own_root_holder()? } else { root };
    let rc = cstr(&root).map_err(|what| Error::Invalid { object: "--root".into(), what })?;
    ferry_sys::ns::mount(Some(&rc), &rc, None, MS_BIND, None)
        .ctx(|| format!("cannot bind the root directory {} onto itself", root.display()))?;
    let (externals, left_out) = host_sources(mnt, &ctx.opts.external_mounts)?;
    let mut b = Builder { root: root.clone(), made: HashMap::new(), finals: Vec::new(), external: &externals };
    b.made.insert(root_rec.id, root_rec.clone());
    b.finals.push((root.clone(), MS_REMOUNT | MS_BIND | root_rec.flags, String::new()));
    // With a new pid namespace: proc mounts and what is below them wait for its init.
    let mut deferred: HashSet<u32> = HashSet::new();
    let mut later = Deferred::default();
    let init_inside = ns.userns.as_ref().filter(|_| crate::state::userns::owns_pidns(Some(ns), ctx.pidns));
    for r in ordered(&mnt.mounts)? {
        if r.parent == 0 || left_out.contains(&r.id) {
            continue;
        }
        let content = load_content(ctx.img, r)?;
        if ctx.pidns && (r.fstype == "proc" && r.bind_of == 0 || deferred.contains(&r.parent)) {
            if !deferred.contains(&r.parent) {
                // ferry's own view of proc meanwhile (prepare uses /proc/self/fd).
                let temp = MountRecord { flags: r.flags & !MS_RDONLY, sb_ro: false, ..r.clone() };
                b.make(&temp, None).map_err(|what| Error::Invalid { object: obj(r), what })?;
            }
            deferred.insert(r.id);
            let (mut r, mut content) = (r.clone(), content);
            if let Some(rec) = init_inside {
                // (made by the tree's init, inside the user namespace: ids as seen there)
                r.options = crate::state::userns::mount_options_inside(rec, &r.options);
                if let Some(c) = content.as_mut() {
                    crate::state::userns::tmpfs_owners_inside(rec, &mut c.files);
                }
            }
            later.mounts.push((r, content));
            continue;
        }
        b.make(r, content.as_ref()).map_err(|what| Error::Invalid { object: obj(r), what })?;
    }
    b.finish().map_err(|what| Error::Invalid { object: "mount tree".into(), what })?;
    let dot = c".";
    ferry_sys::raw::fchdir(std::os::fd::AsFd::as_fd(
        &std::fs::File::open(&root).ctx(|| format!("cannot open {}", root.display()))?,
    ))
    .ctx(|| format!("cannot enter {}", root.display()))?;
    ferry_sys::ns::pivot_root(dot, dot).ctx(|| format!("cannot pivot_root into {}", root.display()))?;
    ferry_sys::ns::umount2(dot, libc::MNT_DETACH).ctx(|| "cannot detach the old root".into())?;
    std::env::set_current_dir("/").ctx(|| "cannot enter the new root".into())?;
    if let Some(userns) = ctx.mnt_owner {
        crate::state::userns::hand_over_mnt(userns)?;
    }
    propagate(mnt.mounts.iter().filter(|r| !deferred.contains(&r.id) && !left_out.contains(&r.id)))
        .map_err(|what| Error::Invalid { object: "mount tree".into(), what })?;
    if !later.mounts.is_empty() {
        later.external = externals
            .iter()
            .map(|(key, host)| {
                let made = b.made.values().find(|m| m.external == *key && !deferred.contains(&m.id));
                (key.clone(), made.map_or_else(|| host.clone(), |m| PathBuf::from(&m.mountpoint)))
            })
            .collect();
        later.made = b.made;
        h.mounts = Some(later);
    }
    Ok(())
}

/// A directory of this (new, private) mount namespace that will hold a copy of ferry's root:
/// a small tmpfs over a directory of the root file system that no mount of ferry's is at or
/// below (the host's files never change; pivot_root leaves the holder behind).
fn own_root_holder() -> Result<PathBuf, Error> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ctx(|| "cannot read /proc/self/mountinfo".into())?;
    let infos = ferry_proc::parse_mountinfo(&text)
        .map_err(|e| Error::Invalid { object: "/proc/self/mountinfo".into(), what: e.to_string() })?;
    let holder = ["/srv", "/media", "/opt", "/home", "/root", "/mnt"]
        .into_iter()
        .find(|d| Path::new(d).is_dir() && !infos.iter().any(|m| under(&m.mount_point, d).is_some()))
        .ok_or_else(|| Error::Invalid {
            object: "the tree's root mount (ferry's own root)".into(),
            what: "no directory of the root file system free of mounts to build it in".into(),
        })?;
    let h = CString::new(holder).map_err(|_| Error::Invalid { object: holder.into(), what: "bad path".into() })?;
    ferry_sys::ns::mount(Some(c"tmpfs"), &h, Some(c"tmpfs"), 0, Some(c"size=64k,mode=0700"))
        .ctx(|| format!("cannot mount a tmpfs on {holder} to build the tree's root"))?;
    let root = Path::new(holder).join("root");
    std::fs::create_dir(&root).ctx(|| format!("cannot create {}", root.display()))?;
    let r = cstr(&root).map_err(|what| Error::Invalid { object: "root holder".into(), what })?;
    ferry_sys::ns::mount(Some(c"/"), &r, None, MS_BIND, None)
        .ctx(|| format!("cannot bind / onto {}", root.display()))?;
    Ok(root)
}

/// Shared and unbindable propagation (after pivot_root, which refuses a shared new root). A
/// peer group of several mounts becomes one group per mount; slaves become private.
fn propagate<'a>(mounts: impl Iterator<Item = &'a MountRecord>) -> Result<(), String> {
    for r in mounts {
        let t = cstr(Path::new(&r.mountpoint))?;
        if r.shared != 0 {
            ferry_sys::ns::mount(None, &t, None, libc::MS_SHARED, None)
                .map_err(|e| format!("mount {}: cannot make it shared: {e}", r.mountpoint))?;
        }
        if r.unbindable {
            ferry_sys::ns::mount(None, &t, None, libc::MS_UNBINDABLE, None)
                .map_err(|e| format!("mount {}: cannot make it unbindable: {e}", r.mountpoint))?;
        }
    }
    Ok(())
}

/// The proc mounts of a nested mount namespace that show the tree's pid namespace
/// (`MountRecord.pidns_proc`), made again by a process of it there ([`mount_deferred`]): fresh
/// ones, also for a copy of its parent namespace's.
pub(crate) fn deferred_procs(recs: Vec<MountRecord>) -> Deferred {
    let fresh = |r: MountRecord| MountRecord { external: String::new(), bind_of: 0, ..r };
    Deferred { mounts: recs.into_iter().map(|r| (fresh(r), None)).collect(), ..Default::default() }
}

/// In the tree's root process, pid 1 of its new pid namespace, before it forks: replace
/// ferry's view of proc with the namespace's own, and make what was mounted below it. (Also,
/// in the first process of that pid namespace in a nested mount namespace, its procs:
/// [`deferred_procs`].)
pub(crate) fn mount_deferred(d: &Deferred) -> Result<(), String> {
    let mut b = Builder { root: PathBuf::from("/"), made: d.made.clone(), finals: Vec::new(), external: &d.external };
    let ids: HashSet<u32> = d.mounts.iter().map(|m| m.0.id).collect();
    for (r, content) in &d.mounts {
        b.make(r, content.as_ref()).map_err(|e| format!("mount {} ({}): {e}", r.mountpoint, r.fstype))?;
        if !ids.contains(&r.parent) {
            replace_stacked(&r.mountpoint)?;
        }
    }
    b.finish()?;
    propagate(d.mounts.iter().map(|m| &m.0))
}

/// The proc just mounted at `mp` on top of ferry's view of proc takes that one's place: a
/// detached copy of it replaces both. (It is mounted while ferry's is still visible: in a mount
/// namespace owned by a user namespace other than the host's, proc can be mounted only while
/// another full proc is visible there.)
fn replace_stacked(mp: &str) -> Result<(), String> {
    let t = cstr(Path::new(mp))?;
    let copy = ferry_sys::ns::open_tree_clone(&t, false).map_err(|e| format!("open_tree {mp}: {e}"))?;
    for which in ["the new proc", "ferry's view of proc"] {
        ferry_sys::ns::umount2(&t, libc::MNT_DETACH).map_err(|e| format!("umount {mp} ({which}): {e}"))?;
    }
    ferry_sys::ns::move_mount_onto(std::os::fd::AsFd::as_fd(&copy), &t).map_err(|e| format!("move_mount {mp}: {e}"))
}

/// Restore a nested mount namespace `mnt` (state/nested_ns.rs) in ferry's restoring thread,
/// which has just made it with `unshare(CLONE_NEWNS)` from its parent namespace (restored
/// first): so it starts as a copy of the parent's, as the dumped one did. Each copy of the
/// parent's mounts (`parent:MOUNTPOINT`) is found by its mountpoint and given its
/// propagation (private, or a slave of its origin's peer group; a peer of it stays one), then
/// what the copy has beyond the image is detached, the copies' per-mount flags set, and the
/// namespace's own mounts made (tmpfs with its content, proc, binds) as for a root namespace.
/// Last the result is read back and compared with the image: a difference is an error naming
/// the mount, never a silently different tree.
/// `proc`: ferry's /proc (the tree's may show another pid namespace, or none).
/// `nested`: the nested network, ipc and cgroup namespaces made, (inode at dump, fd number), in
/// which a fresh sysfs, mqueue or cgroup2 that showed one is mounted. `ptys`: the image's pairs of devpts
/// instances other than the root's ((device at dump, index), state/tty.rs `instance_pairs`),
/// made in a fresh devpts as soon as it is mounted, with their indexes. Returned: the procs of
/// the tree's own pid namespace (`MountRecord.pidns_proc`), for [`deferred_procs`].
pub(crate) fn restore_nested(
    img: &ferry_image::ImageReader,
    mnt: &MountNs,
    proc: std::os::fd::BorrowedFd<'_>,
    nested: &[(u64, i32)],
    ptys: &[(u64, u32)],
) -> Result<Vec<MountRecord>, Error> {
    let obj = |r: &MountRecord| format!("mount {} ({}) of a nested mount namespace", r.mountpoint, r.fstype);
    for r in &mnt.mounts {
        if !plain(&r.mountpoint) || !r.mountpoint.starts_with('/') || !plain(&r.root) {
            return Err(Error::Invalid { object: obj(r), what: "not a plain path".into() });
        }
    }
    let here = thread_mountinfo(proc)?;
    let copies: Vec<&MountRecord> = mnt.mounts.iter().filter(|r| r.external.starts_with(PARENT_KEY)).collect();
    // Each copy of the image -> the mount of this copy of the parent's tree at its mountpoint
    // (stacked mounts in order).
    let mut matched: HashMap<u32, &ferry_proc::MountInfo> = HashMap::new();
    let mut used: HashSet<u32> = HashSet::new();
    // Copies of a namespace file the parent namespace left out (bound from the dumping host,
    // gone here: `host_sources`) are left out of the copy too, as in the parent.
    let mut left_out: HashSet<u32> = HashSet::new();
    for r in &copies {
        let found =
            here.iter().find(|m| !used.contains(&m.mnt_id) && m.mount_point == r.mountpoint && m.fs_type == r.fstype);
        match found {
            Some(m) => {
                used.insert(m.mnt_id);
                matched.insert(r.id, m);
            }
            None if r.fstype == "nsfs" => {
                tracing::warn!(mount = %r.mountpoint, "a nested mount namespace's copy of a namespace file its parent namespace left out: left out");
                left_out.insert(r.id);
            }
            None => {
                return Err(Error::Invalid {
                    object: obj(r),
                    what: "a copy of its parent namespace's mount, which the restored parent namespace does not have"
                        .into(),
                })
            }
        }
    }
    let copies: Vec<&MountRecord> = copies.into_iter().filter(|r| !left_out.contains(&r.id)).collect();
    let path_of = |mp: &str| cstr(Path::new(mp)).map_err(|what| Error::Invalid { object: mp.into(), what });
    let set = |mp: &str, flag: u64, what: &str| -> Result<(), Error> {
        ferry_sys::ns::mount(None, &path_of(mp)?, None, flag, None)
            .ctx(|| format!("nested mount namespace: cannot make {mp} {what}"))
    };
    // Propagation first: nothing made or detached below may reach the parent namespace.
    if copies.iter().all(|r| r.parent_peer == 0) {
        set("/", libc::MS_REC | libc::MS_PRIVATE, "private")?;
    } else {
        for m in here.iter().filter(|m| !used.contains(&m.mnt_id)) {
            set(&m.mount_point, libc::MS_PRIVATE, "private")?;
        }
        for r in &copies {
            match r.parent_peer {
                0 => set(&r.mountpoint, libc::MS_PRIVATE, "private")?,
                2 => set(&r.mountpoint, libc::MS_SLAVE, "a slave")?,
                _ => {}
            }
        }
    }
    // What this node's parent namespace has beyond the image: detached, children first, each
    // only from a parent mount that does not propagate it.
    let now = thread_mountinfo(proc)?;
    for m in now.iter().rev().filter(|m| !used.contains(&m.mnt_id)) {
        let parent = now.iter().find(|p| p.mnt_id == m.parent_id);
        if parent.is_some_and(|p| propagation(p).0 != 0) {
            return Err(Error::Invalid {
                object: format!("mount {} of the restored parent namespace", m.mount_point),
                what: "not in the image's nested mount namespace, and on a mount shared with the parent: it cannot be removed from the copy alone".into(),
            });
        }
        ferry_sys::ns::umount2(&path_of(&m.mount_point)?, libc::MNT_DETACH)
            .ctx(|| format!("nested mount namespace: cannot detach {}", m.mount_point))?;
    }
    let mut b = Builder { root: PathBuf::from("/"), made: HashMap::new(), finals: Vec::new(), external: &[] };
    for r in &copies {
        b.made.insert(r.id, (*r).clone());
        if matched.get(&r.id).is_some_and(|m| mount_flags(&m.mount_options) != r.flags) {
            b.finals.push((PathBuf::from(&r.mountpoint), MS_REMOUNT | MS_BIND | r.flags, String::new()));
        }
    }
    for r in ordered(&mnt.mounts)? {
        if b.made.contains_key(&r.id) || left_out.contains(&r.id) {
            continue;
        }
        let content = load_content(img, r)?;
        let fresh_in = (r.ns_inode != 0 && r.bind_of == 0 && r.external.is_empty()).then_some(r.ns_inode);
        in_nested(fresh_in, &r.fstype, nested, proc, || b.make(r, content.as_ref()))
            .map_err(|what| Error::Invalid { object: obj(r), what })?;
        if r.devpts_dev != 0 && r.fstype == "devpts" && r.bind_of == 0 && r.external.is_empty() {
            crate::state::tty::open_in_instance(Path::new(&r.mountpoint), r.devpts_dev, ptys)
                .map_err(|what| Error::Invalid { object: obj(r), what })?;
        }
    }
    b.finish().map_err(|what| Error::Invalid { object: "nested mount namespace".into(), what })?;
    // (A peer of its origin is shared already: MS_SHARED again keeps its group.)
    propagate(mnt.mounts.iter()).map_err(|what| Error::Invalid { object: "nested mount namespace".into(), what })?;
    let built = thread_mountinfo(proc)?;
    let kept: Vec<MountRecord> = mnt.mounts.iter().filter(|r| !left_out.contains(&r.id)).cloned().collect();
    same_tree(&kept, &built).map_err(|what| Error::Invalid { object: "nested mount namespace".into(), what })?;
    // (ferry's view of proc sits at those until a process of the tree's pid namespace mounts
    // its own there.)
    Ok(mnt.mounts.iter().filter(|r| r.pidns_proc).cloned().collect())
}

/// Run `f` (the mount of a fresh `fs`) with the calling thread in the nested network (sysfs),
/// ipc (mqueue) or cgroup (cgroup2) namespace of inode `inode` at dump (`nested`: (inode, fd number)), then back;
/// None: where it is.
fn in_nested<T>(
    inode: Option<u64>,
    fs: &str,
    nested: &[(u64, i32)],
    proc: std::os::fd::BorrowedFd<'_>,
    f: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    let Some(inode) = inode else { return f() };
    let (kind, flag) = shown_kind(fs);
    let fd = nested.iter().find(|n| n.0 == inode).map(|n| n.1).ok_or_else(|| {
        format!("it shows the {kind} namespace {kind}:[{inode}], which is not among the image's nested namespaces")
    })?;
    let rel = CString::new(format!("thread-self/ns/{kind}")).map_err(|_| "bad path".to_string())?;
    let back = ferry_sys::ns::openat(proc, &rel, libc::O_RDONLY | libc::O_CLOEXEC)
        .map_err(|e| format!("cannot open /proc/thread-self/ns/{kind}: {e}"))?;
    ferry_sys::ns::setns_number(fd, flag).map_err(|e| format!("cannot join its {kind} namespace: {e}"))?;
    let r = f();
    ferry_sys::ns::setns(std::os::fd::AsFd::as_fd(&back), flag)
        .map_err(|e| format!("cannot go back into the tree's {kind} namespace: {e}"))?;
    r
}

/// The calling thread's mounts, through ferry's /proc `proc`.
fn thread_mountinfo(proc: std::os::fd::BorrowedFd<'_>) -> Result<Vec<ferry_proc::MountInfo>, Error> {
    let object = "/proc/thread-self/mountinfo";
    let fd = ferry_sys::ns::openat(proc, c"thread-self/mountinfo", libc::O_RDONLY | libc::O_CLOEXEC)
        .ctx(|| format!("cannot open {object}"))?;
    let text = std::io::read_to_string(std::fs::File::from(fd)).ctx(|| format!("cannot read {object}"))?;
    ferry_proc::parse_mountinfo(&text).map_err(|e| Error::Invalid { object: object.into(), what: e.to_string() })
}

/// Whether `built` (a mountinfo) is the tree `recs` records: the same mounts (mountpoint, file
/// system, per-mount flags, propagation kind) on the same parents, in any order of ids.
fn same_tree(recs: &[MountRecord], built: &[ferry_proc::MountInfo]) -> Result<(), String> {
    if recs.len() != built.len() {
        return Err(format!("came back with {} mounts instead of {}", built.len(), recs.len()));
    }
    let mp_of = |id: u32| recs.iter().find(|r| r.id == id).map(|r| r.mountpoint.as_str());
    let built_mp_of = |id: u32| built.iter().find(|m| m.mnt_id == id).map(|m| m.mount_point.as_str());
    let mut used: HashSet<u32> = HashSet::new();
    for r in recs {
        let kind = |shared: u32, master: u32| (shared != 0, master != 0);
        let found = built.iter().find(|m| {
            let (s, ms, u) = propagation(m);
            !used.contains(&m.mnt_id)
                && m.mount_point == r.mountpoint
                && m.fs_type == r.fstype
                && mount_flags(&m.mount_options) == r.flags
                && kind(s, ms) == kind(r.shared, r.master)
                && u == r.unbindable
                && built_mp_of(m.parent_id) == mp_of(r.parent)
        });
        match found {
            Some(m) => {
                used.insert(m.mnt_id);
            }
            None => return Err(format!("mount {} ({}) did not come back as it was", r.mountpoint, r.fstype)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u32, parent: u32, mp: &str, fstype: &str, opts: &str, shared: u32) -> MountRecord {
        MountRecord {
            id,
            parent,
            mountpoint: mp.into(),
            fstype: fstype.into(),
            flags: mount_flags(opts),
            shared,
            ..Default::default()
        }
    }

    #[test]
    fn read_back_tree_compared_with_the_image() {
        let recs = [
            rec(1, 0, "/", "ext4", "rw,relatime", 0),
            rec(2, 1, "/w/tmp", "tmpfs", "rw,nosuid,nodev,relatime", 0),
            rec(3, 1, "/w/ro", "ext4", "ro,relatime", 7),
        ];
        let built = "40 30 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n\
                     41 40 0:50 / /w/tmp rw,nosuid,nodev,relatime - tmpfs t rw\n\
                     42 40 8:1 /w/src /w/ro ro,relatime shared:9 - ext4 /dev/sda1 rw\n";
        let infos = ferry_proc::parse_mountinfo(built).expect("mountinfo");
        assert_eq!(same_tree(&recs, &infos), Ok(()));
        // Read-write where it was read-only, private where it was shared, another parent, a
        // mount too many: each is a difference.
        for bad in [
            built.replace("/w/ro ro,", "/w/ro rw,"),
            built.replace(" shared:9", ""),
            built.replace("42 40", "42 41"),
            format!("{built}43 40 0:51 / /w/x rw - tmpfs t rw\n"),
        ] {
            let infos = ferry_proc::parse_mountinfo(&bad).expect("mountinfo");
            assert!(same_tree(&recs, &infos).is_err(), "{bad}");
        }
    }
}
