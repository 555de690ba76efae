//! tun/tap devices of the tree's network namespace and the fds of /dev/net/tun attached to
//! them (CRIU's criu/tun.c).
//!
//! Dump: a device of kind "tun" is recorded with the namespace's other devices (state/netns.rs:
//! name, index, hardware address, MTU, up, addresses) and its tun settings as `ip -d link`
//! shows them (tun or tap, packet information, virtio header, multi-queue, persistent, owner
//! and group) and the number of fds attached to it (queues, enabled or detached). An fd of
//! /dev/net/tun is recorded with the device it is attached to (`TUNGETIFF`), whether its queue
//! is detached (`IFF_DETACH_QUEUE`), and the device's virtio header size and byte order and
//! send buffer (`TUNGETVNETHDRSZ`, `TUNGETVNETLE`, `TUNGETSNDBUF`); one never attached as such.
//! Every fd attached to a device must be the tree's (one held outside would not be attached
//! again), the device in its process's network namespace, which must be the tree's root's
//! and not ferry's own (a device of the host is not the tree's to make). Refused by name: a
//! device whose queues are not all the tree's, a tap device with a socket filter
//! (`TUNATTACHFILTER`), a tun fd of another network namespace than the tree's root's.
//!
//! Restore: the namespace module makes each device again, persistent, with its index, flags,
//! owner and group (`TUNSETIFINDEX`, `TUNSETIFF`, `TUNSETOWNER`, `TUNSETGROUP`,
//! `TUNSETPERSIST`), then its hardware address, MTU, addresses and up state as any device's.
//! Each fd is opened again (in the tree's namespaces, as every file: state/files.rs) and
//! attached to its device with the same flags (`TUNSETIFF`), its virtio header size, byte
//! order and send buffer set, its queue detached again if it was (`TUNSETQUEUE`); a device
//! that was not persistent is made so no longer once an fd holds it (`TUNSETPERSIST` 0), so it
//! goes with its last fd, as before. Not kept: the packets queued in the device (CRIU does not
//! keep them either), the order of the queues of a multi-queue device (which queue a flow is
//! steered to), offloads (`TUNSETOFFLOAD`), a MAC filter (`TUNSETTXFILTER`), steering and
//! filter eBPF programs, a link type changed with `TUNSETLINK`, and the carrier set with
//! `TUNSETCARRIER`; the kernel has no call that reads these back. The kernel counts the fds
//! of a multi-queue device only: a persistent single-queue device that is down and held by a
//! process outside the tree cannot be told from one held by none, and comes back held by none.
//! The device's RFC 2863 operational state may read UP where it read UNKNOWN (the kernel leaves
//! UNKNOWN while the carrier never changed since the device was made; the restore makes it
//! with no fd, then the tree's fds bring the carrier up): an operating device either way.

use crate::error::{Ctx, Error};
use crate::state::nsfile::{fd_inode, inode_of, ns_link, own_link};
use ferry_image::{File, FileKind, NsxNetns, Process, TunFile, TunLink};
use serde_json::Value;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// /dev/net/tun's device number (misc, minor 200).
pub(crate) const TUN_DEVICE: (u32, u32) = (10, 200);

/// The flags `TUNSETIFF` takes that say what device an fd attaches to.
const DEVICE_FLAGS: u32 = (libc::IFF_TUN
    | libc::IFF_TAP
    | libc::IFF_NO_PI
    | libc::IFF_VNET_HDR
    | libc::IFF_MULTI_QUEUE
    | libc::IFF_NAPI
    | libc::IFF_NAPI_FRAGS) as u32;

/// Dump (a namespace's device list, state/netns.rs): the tun settings of device `name` of
/// kind "tun", from its `ip -d -j link` record `l`; an error text for a refusal.
pub(crate) fn link_settings(name: &str, l: &Value) -> Result<TunLink, String> {
    let data = &l["linkinfo"]["info_data"];
    let on = |k: &str| data[k] == true;
    let mut flags = match data["type"].as_str() {
        Some("tun") => libc::IFF_TUN,
        Some("tap") => libc::IFF_TAP,
        other => return Err(format!("network device {name} (tun of type {other:?}) in the tree's network namespace")),
    } as u32;
    for (key, flag, when) in [
        ("pi", libc::IFF_NO_PI, false),
        ("vnet_hdr", libc::IFF_VNET_HDR, true),
        ("multi_queue", libc::IFF_MULTI_QUEUE, true),
        ("persist", libc::IFF_PERSIST, true),
    ] {
        if on(key) == when {
            flags |= flag as u32;
        }
    }
    let id = |key: &str, file: &str| -> Result<Option<u32>, String> {
        let Some(v) = data.get(key) else { return Ok(None) };
        let text = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
        id_of(&text, file)
            .map(Some)
            .ok_or_else(|| format!("network device {name} (tun): its {key} {text}, which ferry cannot find in {file}"))
    };
    // The kernel counts the queues of a multi-queue device only. A single-queue one has its fd
    // if it is not persistent (else it would be gone), or if it is up with a carrier (which
    // the kernel sets on attaching it); one that is persistent and down tells nothing, and is
    // taken as held by no fd.
    let carrier = l["flags"].as_array().is_some_and(|f| f.iter().any(|x| x == "LOWER_UP"));
    let queues = match (on("multi_queue"), on("persist")) {
        (true, _) => data["numqueues"].as_u64().unwrap_or(0) + data["numdisabled"].as_u64().unwrap_or(0),
        (false, false) => 1,
        (false, true) => u64::from(carrier),
    };
    Ok(TunLink { flags, owner: id("user", "/etc/passwd")?, group: id("group", "/etc/group")?, queues: queues as u32 })
}

/// A user or group id from what `ip` prints: the number, or the name it found in `file`.
fn id_of(text: &str, file: &str) -> Option<u32> {
    if let Ok(n) = text.parse() {
        return Some(n);
    }
    let db = std::fs::read_to_string(file).ok()?;
    db.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.len() > 2 && f[0] == text)?[2].parse().ok()
}

/// Dump: fd `fd` of `pid`, an fd of /dev/net/tun (`file.path`), into `file`; `root_net` the
/// tree's root's network namespace (inode).
pub(crate) fn collect(pid: i32, pidfd: BorrowedFd<'_>, fd: i32, root_net: u64, file: &mut File) -> Result<(), Error> {
    let refuse = |what: String| Error::Unsupported { pid, what: format!("fd {fd}: {what}") };
    let path = file.path.clone();
    let obj = || format!("pid {pid} fd {fd} ({path})");
    let copy = ferry_sys::process::pidfd_getfd(pidfd, fd).ctx(|| format!("{}: cannot take a copy", obj()))?;
    file.kind = FileKind::Tun as i32;
    let Some(iff) = ferry_sys::tun::get_iff(copy.as_fd()).ctx(|| format!("{}: TUNGETIFF", obj()))? else {
        file.tun = Some(TunFile::default());
        return Ok(());
    };
    let name = iff.name;
    let dev_ns = ferry_sys::tun::dev_netns(copy.as_fd()).ctx(|| format!("{}: TUNGETDEVNETNS", obj()))?;
    let dev_net = fd_inode(dev_ns.as_fd())?;
    if own_link("net").is_some_and(|l| inode_of(&l) == dev_net) {
        return Err(refuse(format!(
            "tun device {name} of ferry's own network namespace (the host's, not the tree's to make again: run the tree in a network namespace of its own)"
        )));
    }
    if dev_net != root_net || ns_link(pid, "net").map(|l| inode_of(&l)) != Some(dev_net) {
        return Err(refuse(format!(
            "tun device {name} of another network namespace than the tree's root's (net:[{dev_net}])"
        )));
    }
    if ferry_sys::tun::filter_len(copy.as_fd()).ctx(|| format!("{}: TUNGETFILTER", obj()))? != 0 {
        return Err(refuse(format!("tap device {name} with a socket filter (TUNATTACHFILTER)")));
    }
    // (TUNGETIFF's IFF_NO_PI bit also means "no filter": the device's flags are ip's.)
    let data = crate::state::nsfile::in_ns(dev_ns.as_fd(), libc::CLONE_NEWNET, || {
        crate::state::nettools::tool("ip", &["-j", "-d", "link", "show", "dev", &name])
    })?;
    let v: Value = serde_json::from_str(&data).unwrap_or_default();
    let link = link_settings(&name, &v[0]).map_err(refuse)?;
    let mut flags = link.flags | (iff.flags & (libc::IFF_NAPI | libc::IFF_NAPI_FRAGS) as u32);
    if iff.flags & libc::IFF_DETACH_QUEUE as u32 != 0 {
        flags |= libc::IFF_DETACH_QUEUE as u32;
    }
    let get = |what: &str, r: std::io::Result<i32>| r.ctx(|| format!("{}: {what}", obj()));
    file.tun = Some(TunFile {
        name,
        flags,
        vnet_hdr_sz: get("TUNGETVNETHDRSZ", ferry_sys::tun::vnet_hdr_sz(copy.as_fd()))?,
        sndbuf: get("TUNGETSNDBUF", ferry_sys::tun::sndbuf(copy.as_fd()))?,
        vnet_le: ferry_sys::tun::vnet_le(copy.as_fd()).unwrap_or(false),
    });
    Ok(())
}

/// Dump, once the tree's fds and network namespace are read: every fd attached to a tun device
/// of `ns` must be the tree's (refused by name otherwise: the restore attaches only the tree's).
pub(crate) fn check_queues(root: i32, procs: &[Process], ns: Option<&NsxNetns>) -> Result<(), Error> {
    for l in ns.iter().flat_map(|n| n.links.iter()) {
        let Some(t) = &l.tun else { continue };
        let mut shared = std::collections::HashSet::new();
        let mut held = 0u32;
        for f in procs.iter().flat_map(|p| p.files.iter()) {
            if f.tun.as_ref().is_some_and(|x| x.name == l.name) && (f.shared_id == 0 || shared.insert(f.shared_id)) {
                held += 1;
            }
        }
        // (a single-queue device's count is a lower bound: see link_settings)
        let multi = t.flags & libc::IFF_MULTI_QUEUE as u32 != 0;
        if (multi && held != t.queues) || (!multi && held < t.queues) {
            return Err(Error::Unsupported {
                pid: root,
                what: format!(
                    "network device {} (tun) with {} fds attached, {held} of them the tree's (the others held outside it)",
                    l.name, t.queues
                ),
            });
        }
    }
    Ok(())
}

/// Restore (the namespace module, in the new network namespace): make the device of `name`.
pub(crate) fn make(name: &str, ifindex: u32, t: &TunLink) -> Result<(), Error> {
    ferry_sys::tun::create(name, t.flags & DEVICE_FLAGS, ifindex, t.owner, t.group)
        .ctx(|| format!("network device {name} (tun): cannot make it"))
}

/// Restore: open `f` (an fd of /dev/net/tun at `f.path`) with `flags` and attach it to its
/// device, as it was.
pub(crate) fn open(f: &File, flags: i32, obj: &dyn Fn() -> String) -> Result<OwnedFd, Error> {
    let path = std::ffi::CString::new(f.path.as_str())
        .map_err(|_| Error::Invalid { object: obj(), what: "a path with a NUL byte".into() })?;
    let t = f.tun.as_ref().ok_or_else(|| Error::Invalid { object: obj(), what: "no tun record".into() })?;
    if t.name.is_empty() {
        return ferry_sys::tun::open(&path, flags).ctx(|| format!("{}: cannot open {}", obj(), f.path));
    }
    let on = |what: &str| format!("{}: tun device {}: cannot {what}", obj(), t.name);
    let fd = ferry_sys::tun::attach(&path, &t.name, t.flags & DEVICE_FLAGS, flags).ctx(|| on("attach (TUNSETIFF)"))?;
    let fd_ref = fd.as_fd();
    ferry_sys::tun::set_vnet_hdr_sz(fd_ref, t.vnet_hdr_sz).ctx(|| on("set its virtio header size"))?;
    ferry_sys::tun::set_sndbuf(fd_ref, t.sndbuf).ctx(|| on("set its send buffer"))?;
    if t.vnet_le {
        ferry_sys::tun::set_vnet_le(fd_ref, true).ctx(|| on("set its virtio header little-endian"))?;
    }
    if t.flags & libc::IFF_DETACH_QUEUE as u32 != 0 {
        ferry_sys::tun::detach_queue(fd_ref).ctx(|| on("detach its queue (TUNSETQUEUE)"))?;
    }
    if t.flags & libc::IFF_PERSIST as u32 == 0 {
        ferry_sys::tun::set_persist(fd_ref, false).ctx(|| on("make it not persistent"))?;
    }
    Ok(fd)
}
