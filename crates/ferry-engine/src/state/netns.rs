//! The content of a network namespace: its devices, addresses, routes and the sysctls that
//! change how it behaves. The sockets in it are the socket modules' (unix.rs, inet.rs); they
//! are recreated inside the new namespace because restore prepares them from a thread that
//! has entered it.
//!
//! Read and written with iproute2's `ip` (as CRIU does with `ip addr save` / `ip route save`),
//! run from a thread that entered the namespace (dump: `setns` into /proc/PID/ns/net; restore:
//! the thread that created or entered the new one), so its children inherit that namespace;
//! the sysctls are read and written under /proc/sys/net by the same thread (they are per
//! network namespace of the opener).
//!
//! Devices: `lo`, bridges and veth pairs with both ends inside are recreated (name, index,
//! hardware address, MTU, bridge port, up/down; a bridge's own settings, such as STP, are left
//! at their defaults). A veth whose peer is in another network namespace of the tree (the
//! root's and a nested one, state/nested_ns.rs) is recorded with that namespace (found by the
//! id this one gives it, `RTM_GETNSID`) and made again by whichever of the two is made first,
//! the peer held in a namespace of ferry's until the other is made and takes it
//! ([`VethPairs`]). A veth whose peer is outside (the link of a job or container to its
//! node) is refused unless named with `--external veth[INSIDE]:OUTSIDE[@BRIDGE]` (CRIU's
//! form): the image then records the inside end and OUTSIDE/BRIDGE, and restore makes the
//! pair with the inside end in the new namespace and the outside end, named OUTSIDE, in the
//! restoring ferry's own network namespace, up, a port of BRIDGE if given (a restore's own
//! `--external veth[..]`, e.g. `ferry serve --external` on a migration's destination, names
//! them for that node instead). A macvlan is recreated on its lower device: one of the same
//! namespace, or, named with `--external macvlan[INSIDE]:LOWER` (CRIU's form), the device
//! LOWER of the restoring ferry's namespace, from where it is made straight into the new one
//! (mode and flags kept; `source` mode refused). A tun/tap device is made again persistent
//! with its tun settings, and the tree's fds attach to it later (state/tun.rs). Other kinds
//! (vlan, sit, ipip ...) are refused by name. The packet filtering rules (nftables, iptables
//! of either backend) are state/nftables.rs's, written back after the devices are made and
//! before any is up. Addresses: every IPv4 one and every IPv6 one but the
//! link-local addresses the kernel makes itself. Routes: those of the main table that the
//! kernel did not add itself (a "proto kernel" route comes back with its address).

use super::nettools::tool;
use super::nsctx::{DumpCtx, DumpNs, ExternalVeth, Handover, RestoreCtx, VethPairs};
use super::nsfile::in_ns;
use crate::error::{Ctx, Error};
use ferry_image::{Namespaces, NsxAddr, NsxLink, NsxNetns, NsxSysctl};
use serde_json::Value;

/// Namespace-wide sysctls worth keeping (paths below /proc/sys); written in this order, so
/// that `ip_forward` (which resets every device's `forwarding`) comes before the rest.
const SYSCTLS: &[&str] = &[
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/forwarding",
    "net/ipv4/conf/default/forwarding",
    "net/ipv4/ping_group_range",
    "net/ipv4/ip_local_port_range",
    "net/ipv4/ip_unprivileged_port_start",
    "net/ipv4/tcp_syncookies",
    "net/ipv6/conf/all/disable_ipv6",
    "net/ipv6/conf/default/disable_ipv6",
    "net/ipv6/conf/all/forwarding",
    "net/ipv6/conf/default/forwarding",
];
/// Per-device sysctls (DEV replaced by each device's name).
const DEV_SYSCTLS: &[&str] = &["net/ipv4/conf/DEV/forwarding", "net/ipv6/conf/DEV/disable_ipv6"];

/// Address flags `ip -j address` reports and `ip address add` takes.
const ADDR_FLAGS: &[&str] = &["nodad", "noprefixroute", "home", "mngtmpaddr", "autojoin"];

/// Route flags `ip route` prints but `ip route add` does not take.
const ROUTE_STATE_WORDS: &[&str] =
    &["linkdown", "dead", "offload", "trap", "rt_offload", "rt_trap", "rt_offload_failed"];

/// Dump (a namespace module, state/namespaces.rs): read the content from a thread that joined
/// the tree's network namespace.
pub(crate) fn dump(ctx: &mut DumpCtx<'_>, out: &mut Namespaces) -> Result<(), Error> {
    let (pid, opts) = (ctx.pid, ctx.opts);
    out.nsx_net = Some(in_ns(ctx.ns, libc::CLONE_NEWNET, || collect(pid, opts))?);
    Ok(())
}

/// Restore: ferry's restoring thread is in the new network namespace.
pub(crate) fn restore(ctx: &RestoreCtx<'_>, ns: &Namespaces, h: &mut Handover) -> Result<(), Error> {
    // The image's connections are held back before any device of the new namespace can carry
    // a packet to them (state/netlock.rs).
    if !ctx.opts.locked.is_empty() {
        h.netlock = Some(crate::state::netlock::Lock::hold_here(&ctx.opts.locked, true)?);
    }
    match &ns.nsx_net {
        Some(n) => apply(n, ctx),
        None => Ok(()),
    }
}

/// At dump: refuse an inet, packet or netlink socket at fd `fd` of `pid` that lives in another
/// network namespace than its process (made before the process moved, or passed to it from
/// another one): restore creates those sockets in the process's namespace, so it would come
/// back elsewhere without a word. (Unix sockets are made in their own namespace: state/unix.rs.)
pub fn refuse_socket_elsewhere(pid: i32, fd: i32, copy: std::os::fd::BorrowedFd<'_>) -> Result<(), Error> {
    use std::os::fd::AsFd;
    let obj = || format!("pid {pid} fd {fd}");
    let domain = ferry_sys::sockopt::get_int(copy, libc::SOL_SOCKET, libc::SO_DOMAIN).ctx(obj)?;
    if domain == libc::AF_UNIX {
        return Ok(());
    }
    let ns = ferry_sys::ns::socket_netns(copy).ctx(|| format!("{}: cannot find its network namespace", obj()))?;
    let theirs = ferry_sys::process::fstat(ns.as_fd()).ctx(obj)?.st_ino;
    let path = format!("/proc/{pid}/ns/net");
    let own = std::fs::File::open(&path).ctx(|| format!("cannot open {path}"))?;
    if ferry_sys::process::fstat(own.as_fd()).ctx(obj)?.st_ino != theirs {
        return Err(Error::Unsupported {
            pid,
            what: format!(
                "fd {fd}: a socket in another network namespace (net:[{theirs}]) than its process's (made before the process moved, or passed from another namespace)"
            ),
        });
    }
    Ok(())
}

/// At dump: one process of `pids` (the tree's, as ferry sees them) in each network namespace
/// whose content is recorded (not ferry's own, not one given as external).
pub fn tree_netns(pids: &[i32], opts: &DumpNs) -> Vec<i32> {
    use crate::state::nsfile::{inode_of, ns_link, own_link};
    let own = own_link("net");
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for &pid in pids {
        let Some(l) = ns_link(pid, "net") else { continue };
        let external = opts.external.iter().any(|e| e.kind == "net" && e.inode == inode_of(&l));
        if Some(&l) == own.as_ref() || external || seen.contains(&l) {
            continue;
        }
        seen.push(l);
        out.push(pid);
    }
    out
}

/// Run `f` in the network namespace of `pid`: in ferry's thread when it is ferry's own, else
/// in a thread that joined it (sock_diag queries, which list the asker's namespace).
pub fn in_netns_of<T: Send>(pid: i32, f: impl FnOnce() -> Result<T, Error> + Send) -> Result<T, Error> {
    let path = format!("/proc/{pid}/ns/net");
    let ns = std::fs::File::open(&path).ctx(|| format!("cannot open {path}"))?;
    use std::os::fd::AsFd;
    in_netns(ns.as_fd(), f)
}

/// Run `f` in the network namespace `ns`: in the calling thread when it is already there,
/// else in a thread that joined it.
pub fn in_netns<T: Send>(
    ns: std::os::fd::BorrowedFd<'_>,
    f: impl FnOnce() -> Result<T, Error> + Send,
) -> Result<T, Error> {
    let theirs = ferry_sys::process::fstat(ns).ctx(|| "cannot stat a network namespace".into())?;
    let own = std::fs::metadata("/proc/thread-self/ns/net").ctx(|| "cannot stat /proc/thread-self/ns/net".into())?;
    use std::os::unix::fs::MetadataExt;
    if (theirs.st_dev, theirs.st_ino) == (own.dev(), own.ino()) {
        return f();
    }
    in_ns(ns, libc::CLONE_NEWNET, f)
}

fn json(args: &[&str]) -> Result<Vec<Value>, Error> {
    let text = tool("ip", args)?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::Invalid {
        object: format!("ip {}", args.join(" ")),
        what: format!("unreadable output: {e}"),
    })?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

fn collect(pid: i32, opts: &DumpNs) -> Result<NsxNetns, Error> {
    let (veths, macvlans) = (&opts.veths, &opts.macvlans);
    let refuse = |what: String| Error::Unsupported { pid, what };
    let mut ns = NsxNetns { inode: thread_netns()?, ..Default::default() };
    for l in json(&["-j", "-d", "link", "show"])? {
        let name = l["ifname"].as_str().unwrap_or_default().to_string();
        let kind = if l["link_type"] == "loopback" {
            "loopback".to_string()
        } else {
            l["linkinfo"]["info_kind"].as_str().unwrap_or("unknown").to_string()
        };
        let mut peer = l["link"].as_str().unwrap_or_default().to_string();
        let mut outside = None;
        let (mut macvlan, mut lower, mut macvlan_lower) = (Vec::new(), String::new(), None);
        let mut across = None;
        let mut tun = None;
        match kind.as_str() {
            "loopback" | "bridge" => {}
            // (state/tun.rs: its fds are the tree's, checked once they are all read)
            "tun" => tun = Some(crate::state::tun::link_settings(&name, &l).map_err(refuse)?),
            // A pair with both ends inside is recreated; one whose other end is in another
            // network namespace of the tree too, with each end in its namespace; one whose
            // other end is outside (in the host, typically) with that end in the restoring
            // ferry's namespace, if the dump was told its name there.
            "veth" if l.get("link_netnsid").is_none() && !peer.is_empty() => {}
            "veth" if {
                across = peer_in_tree(&name, &l, &opts.tree_netns)?;
                across.is_some()
            } =>
            {
                peer = across.as_ref().map(|a| a.name.clone()).unwrap_or_default();
            }
            "veth" => match veths.iter().find(|v| v.inside == name) {
                Some(v) => {
                    peer.clear();
                    outside = Some(v);
                }
                None => {
                    return Err(refuse(format!(
                        "network device {name} (veth) in the tree's network namespace, its peer outside it (name it with --external veth[{name}]:OUTSIDE[@BRIDGE])"
                    )))
                }
            },
            // A macvlan on a device of the same namespace is made again on it; one whose lower
            // device is outside (the node's NIC, typically) on that device of the restoring
            // ferry's namespace, if the dump was told its name.
            "macvlan" => {
                macvlan = macvlan_settings(&name, &l["linkinfo"]["info_data"]).map_err(refuse)?;
                if l.get("link_netnsid").is_none() && !peer.is_empty() {
                    lower = std::mem::take(&mut peer);
                } else {
                    peer.clear();
                    match macvlans.iter().find(|m| m.inside == name) {
                        Some(m) => macvlan_lower = Some(m.lower.clone()),
                        None => {
                            return Err(refuse(format!(
                                "network device {name} (macvlan) in the tree's network namespace, its lower device outside it (name it with --external macvlan[{name}]:LOWER)"
                            )))
                        }
                    }
                }
            }
            _ => return Err(refuse(format!("network device {name} ({kind}) in the tree's network namespace"))),
        }
        let up = l["flags"].as_array().is_some_and(|f| f.iter().any(|x| x == "UP"));
        ns.links.push(NsxLink {
            name,
            kind,
            mtu: l["mtu"].as_u64().unwrap_or(0) as u32,
            up,
            address: l["address"].as_str().unwrap_or_default().to_string(),
            ifindex: l["ifindex"].as_u64().unwrap_or(0) as u32,
            peer,
            master: l["master"].as_str().unwrap_or_default().to_string(),
            outside: outside.map(|v| v.outside.clone()).or(macvlan_lower).unwrap_or_default(),
            outside_bridge: outside.and_then(|v| v.bridge.clone()).unwrap_or_default(),
            macvlan,
            lower,
            peer_netns: across.as_ref().map_or(0, |a| a.netns),
            peer_ifindex: across.as_ref().map_or(0, |a| a.ifindex),
            peer_address: across.map(|a| a.address).unwrap_or_default(),
            tun,
        });
    }
    for l in json(&["-j", "addr", "show"])? {
        let dev = l["ifname"].as_str().unwrap_or_default();
        for a in l["addr_info"].as_array().into_iter().flatten() {
            let family = a["family"].as_str().unwrap_or_default();
            let scope = a["scope"].as_str().unwrap_or_default();
            if family == "inet6" && scope == "link" {
                continue;
            }
            ns.addrs.push(NsxAddr {
                dev: dev.to_string(),
                family: family.to_string(),
                local: a["local"].as_str().unwrap_or_default().to_string(),
                prefixlen: a["prefixlen"].as_u64().unwrap_or(0) as u32,
                broadcast: a["broadcast"].as_str().unwrap_or_default().to_string(),
                scope: scope.to_string(),
                flags: ADDR_FLAGS.iter().filter(|f| a[**f] == true).map(|f| f.to_string()).collect(),
            });
        }
    }
    for family in ["inet", "inet6"] {
        let flag = if family == "inet" { "-4" } else { "-6" };
        for line in tool("ip", &[flag, "route", "show", "table", "main"])?.lines() {
            if line.trim().is_empty() || line.contains("proto kernel") {
                continue;
            }
            ns.routes.push(format!("{family} {}", line.trim()));
        }
    }
    let mut paths: Vec<String> = SYSCTLS.iter().map(|s| s.to_string()).collect();
    for l in &ns.links {
        paths.extend(DEV_SYSCTLS.iter().map(|s| s.replace("DEV", &l.name)));
    }
    for path in paths {
        // A sysctl this kernel lacks (no IPv6) is simply not recorded.
        if let Ok(v) = std::fs::read_to_string(format!("/proc/sys/{path}")) {
            ns.sysctls.push(NsxSysctl { path, value: v.trim().to_string() });
        }
    }
    ns.nft_tables = crate::state::nftables::collect(pid)?;
    Ok(ns)
}

/// The inode of the calling thread's network namespace.
fn thread_netns() -> Result<u64, Error> {
    use std::os::unix::fs::MetadataExt;
    let p = "/proc/thread-self/ns/net";
    Ok(std::fs::metadata(p).ctx(|| format!("cannot stat {p}"))?.ino())
}

/// The other end of a veth, in another network namespace of the tree.
struct Across {
    name: String,
    netns: u64,
    ifindex: u32,
    address: String,
}

/// The other end of the veth `name` (`l`: its `ip -j -d link` record, with a `link_netnsid`)
/// if it is in one of the tree's network namespaces whose content is recorded (`tree`: a
/// process in each; the calling thread is in the veth's own): found by the id this namespace
/// gives each of them (`RTM_GETNSID`), then by index in the one that matches.
fn peer_in_tree(name: &str, l: &Value, tree: &[i32]) -> Result<Option<Across>, Error> {
    use std::os::fd::AsFd;
    let (Some(nsid), Some(index)) = (l["link_netnsid"].as_i64(), l["link_index"].as_u64()) else { return Ok(None) };
    let here = thread_netns()?;
    for &pid in tree {
        let path = format!("/proc/{pid}/ns/net");
        let f = std::fs::File::open(&path).ctx(|| format!("cannot open {path}"))?;
        let inode = crate::state::nsfile::fd_inode(f.as_fd())?;
        if inode == here {
            continue;
        }
        let id = ferry_sys::nsctl::netns_id(f.as_fd())
            .ctx(|| format!("network device {name} (veth): cannot ask the id of {path}"))?;
        if id != Some(nsid as i32) {
            continue;
        }
        let links = in_netns(f.as_fd(), || json(&["-j", "link", "show"]))?;
        let Some(p) = links.iter().find(|p| p["ifindex"].as_u64() == Some(index)) else {
            return Err(Error::Invalid {
                object: format!("network device {name} (veth)"),
                what: format!("its peer {index} is not in {path}"),
            });
        };
        return Ok(Some(Across {
            name: p["ifname"].as_str().unwrap_or_default().to_string(),
            netns: inode,
            ifindex: index as u32,
            address: p["address"].as_str().unwrap_or_default().to_string(),
        }));
    }
    Ok(None)
}

/// The modes of a macvlan ferry makes again (not "source", whose list of source addresses it
/// does not read).
const MACVLAN_MODES: &[&str] = &["private", "vepa", "bridge", "passthru"];

/// A macvlan's settings (`ip -d`'s "info_data") as `ip link add ... type macvlan` takes them.
fn macvlan_settings(name: &str, info: &Value) -> Result<Vec<String>, String> {
    let mode = info["mode"].as_str().unwrap_or_default();
    if !MACVLAN_MODES.contains(&mode) {
        return Err(format!("network device {name} (macvlan in mode {mode:?}) in the tree's network namespace"));
    }
    let mut args = vec!["mode".to_string(), mode.to_string()];
    for flag in ["nopromisc", "nodst"] {
        if info[flag] == true {
            args.push(flag.to_string());
        }
    }
    // (1000 is the kernel's default; an `ip` that does not print it does not take it either)
    if let Some(n) = info["bcqueuelen"].as_u64().filter(|&n| n != 1000) {
        args.extend(["bcqueuelen".to_string(), n.to_string()]);
    }
    Ok(args)
}

/// Recreate the recorded content in the calling thread's network namespace (new, holding only
/// a down `lo`), before any socket of the tree is made.
fn apply(ns: &NsxNetns, ctx: &RestoreCtx<'_>) -> Result<(), Error> {
    // Devices first (a veth pair at its first end), then bridge ports, then MTUs (a bridge's
    // follows its ports unless set after them).
    let spec = |l: &NsxLink| -> Vec<String> {
        let mut a = vec![l.name.clone()];
        if l.ifindex != 0 {
            a.extend(["index".to_string(), l.ifindex.to_string()]);
        }
        if !l.address.is_empty() {
            a.extend(["address".to_string(), l.address.clone()]);
        }
        a
    };
    for l in &ns.links {
        let mut args: Vec<String> = vec!["link".into(), "add".into()];
        match l.kind.as_str() {
            "loopback" => continue,
            "bridge" => {
                args.extend(spec(l));
                args.extend(["type".into(), "bridge".into()]);
            }
            "veth" if !l.outside.is_empty() => {
                make_external_veth(l, &spec(l), ctx)?;
                continue;
            }
            "veth" if l.peer_netns != 0 => {
                ctx.opts.veth_pairs.make(l, &spec(l), ns.inode)?;
                continue;
            }
            // (after every other device: its lower one may be a bridge or veth made here)
            "macvlan" => continue,
            "tun" => {
                let t = l.tun.as_ref().ok_or_else(|| Error::Invalid {
                    object: format!("network device {}", l.name),
                    what: "a tun device without its settings in the image".into(),
                })?;
                crate::state::tun::make(&l.name, l.ifindex, t)?;
                if !l.address.is_empty() && t.flags & libc::IFF_TAP as u32 != 0 {
                    tool("ip", &["link", "set", "dev", &l.name, "address", &l.address])?;
                }
                continue;
            }
            "veth" => {
                let Some(p) = ns.links.iter().find(|p| p.name == l.peer && p.peer == l.name) else {
                    return Err(Error::Invalid {
                        object: format!("network device {}", l.name),
                        what: format!("veth without its peer {} in the image", l.peer),
                    });
                };
                if p.name < l.name {
                    continue;
                }
                args.extend(spec(l));
                args.extend(["type".into(), "veth".into(), "peer".into(), "name".into()]);
                args.extend(spec(p));
            }
            other => {
                return Err(Error::Invalid {
                    object: format!("network device {}", l.name),
                    what: format!("unknown kind {other}"),
                })
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tool("ip", &args)?;
    }
    for l in ns.links.iter().filter(|l| l.kind == "macvlan") {
        make_macvlan(l, &spec(l), ctx)?;
    }
    for l in ns.links.iter().filter(|l| !l.master.is_empty()) {
        tool("ip", &["link", "set", "dev", &l.name, "master", &l.master])?;
    }
    for l in ns.links.iter().filter(|l| l.mtu != 0) {
        tool("ip", &["link", "set", "dev", &l.name, "mtu", &l.mtu.to_string()])?;
    }
    // (before any device is up: no packet passes unfiltered)
    crate::state::nftables::apply(&ns.nft_tables)?;
    for s in &ns.sysctls {
        let p = format!("/proc/sys/{}", s.path);
        let cur = std::fs::read_to_string(&p).unwrap_or_default();
        if cur.trim() != s.value {
            std::fs::write(&p, format!("{}\n", s.value)).ctx(|| format!("cannot set {p} to {}", s.value))?;
        }
    }
    for l in ns.links.iter().filter(|l| l.up) {
        link_up(l)?;
    }
    for a in &ns.addrs {
        let local = format!("{}/{}", a.local, a.prefixlen);
        let flag = if a.family == "inet6" { "-6" } else { "-4" };
        let mut args = vec![flag, "addr", "add", local.as_str(), "dev", a.dev.as_str()];
        if !a.broadcast.is_empty() {
            args.extend(["broadcast", a.broadcast.as_str()]);
        }
        if !a.scope.is_empty() {
            args.extend(["scope", a.scope.as_str()]);
        }
        args.extend(a.flags.iter().filter(|f| ADDR_FLAGS.contains(&f.as_str())).map(String::as_str));
        // `lo`'s own addresses come back when it goes up: one already there is fine.
        match tool("ip", &args) {
            Err(Error::Invalid { what, .. }) if what.contains("File exists") || what.contains("already assigned") => {}
            r => r.map(drop)?,
        }
    }
    for r in &ns.routes {
        let (family, spec) = r.split_once(' ').unwrap_or(("inet", r));
        let flag = if family == "inet6" { "-6" } else { "-4" };
        let mut args = vec![flag, "route", "add"];
        args.extend(spec.split_whitespace().filter(|w| !ROUTE_STATE_WORDS.contains(w)));
        match tool("ip", &args) {
            Err(Error::Invalid { what, .. }) if what.contains("File exists") => {}
            r => r.map(drop)?,
        }
    }
    Ok(())
}

impl VethPairs {
    /// Make the end `l` (its `spec`: name, index, address) of a pair across namespaces in the
    /// calling thread's network namespace (`here`: its inode at dump).
    fn make(&self, l: &NsxLink, spec: &[String], here: u64) -> Result<(), Error> {
        use std::os::fd::{AsFd, AsRawFd};
        let obj = || format!("network device {} (veth, its peer {} in net:[{}])", l.name, l.peer, l.peer_netns);
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let held = &mut *held;
        if let Some(i) = held.ends.iter().position(|(ns, name)| *ns == here && *name == l.name) {
            // Made with its peer: take it into this namespace.
            let dest = std::fs::File::open("/proc/thread-self/ns/net")
                .ctx(|| "cannot open /proc/thread-self/ns/net".into())?;
            let dest_path = format!("/proc/{}/fd/{}", std::process::id(), dest.as_raw_fd());
            let from = held.ns.as_ref().ok_or_else(|| Error::Invalid { object: obj(), what: "not held".into() })?;
            in_ns(from.as_fd(), libc::CLONE_NEWNET, || {
                tool("ip", &["link", "set", "dev", &l.name, "netns", &dest_path])
            })
            .map_err(|e| Error::Invalid { object: obj(), what: format!("cannot move it into its namespace: {e}") })?;
            held.ends.remove(i);
            return Ok(());
        }
        if held.ns.is_none() {
            held.ns = Some(std::thread::scope(|s| {
                s.spawn(|| -> Result<std::os::fd::OwnedFd, Error> {
                    ferry_sys::ns::unshare(libc::CLONE_NEWNET)
                        .ctx(|| "cannot create a network namespace to hold veth ends".into())?;
                    let p = "/proc/thread-self/ns/net";
                    Ok(std::fs::File::open(p).ctx(|| format!("cannot open {p}"))?.into())
                })
                .join()
                .unwrap_or_else(|_| Err(Error::Invalid { object: obj(), what: "holding thread panicked".into() }))
            })?);
        }
        let hold = held.ns.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
        let hold_path = format!("/proc/{}/fd/{hold}", std::process::id());
        let (index, address) = (l.peer_ifindex.to_string(), l.peer_address.clone());
        let mut args: Vec<&str> = vec!["link", "add"];
        args.extend(spec.iter().map(String::as_str));
        args.extend(["type", "veth", "peer", "name", l.peer.as_str()]);
        if l.peer_ifindex != 0 {
            args.extend(["index", index.as_str()]);
        }
        if !address.is_empty() {
            args.extend(["address", address.as_str()]);
        }
        args.extend(["netns", hold_path.as_str()]);
        tool("ip", &args).map_err(|e| Error::Invalid { object: obj(), what: format!("cannot make the pair: {e}") })?;
        held.ends.push((l.peer_netns, l.peer.clone()));
        Ok(())
    }

    /// Once every network namespace of the tree is made: none of the pairs is left half-way
    /// (its other end would go with the holding namespace).
    pub fn check_done(&self) -> Result<(), Error> {
        let held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match held.ends.first() {
            None => Ok(()),
            Some((ns, name)) => Err(Error::Invalid {
                object: format!("network device {name} (veth) of network namespace net:[{ns}]"),
                what: "its namespace is not in the image: its pair was made but cannot be completed".into(),
            }),
        }
    }
}

/// Where the outside end of the tree's veth `l` goes on this node: the restore's own
/// `--external veth[..]` for it, else what the dump recorded.
fn outside_of(l: &NsxLink, ctx: &RestoreCtx<'_>) -> ExternalVeth {
    ctx.opts.veths.iter().find(|v| v.inside == l.name).cloned().unwrap_or_else(|| ExternalVeth {
        inside: l.name.clone(),
        outside: l.outside.clone(),
        bridge: (!l.outside_bridge.is_empty()).then(|| l.outside_bridge.clone()),
    })
}

/// Make the veth pair of `l` (its `spec`: name, index, address) with its inside end here and
/// its outside end in ferry's own network namespace, up there, a port of its bridge.
fn make_external_veth(l: &NsxLink, spec: &[String], ctx: &RestoreCtx<'_>) -> Result<(), Error> {
    use std::os::fd::AsRawFd;
    let out = outside_of(l, ctx);
    let obj = || format!("network device {} (veth, its peer {} outside)", l.name, out.outside);
    let own = ctx.own_net.ok_or_else(|| Error::Invalid {
        object: obj(),
        what: "ferry's own network namespace is unknown (the tree's was not recreated)".into(),
    })?;
    // `ip` opens the namespace by path: ferry's fd, seen through /proc (the mount tree is
    // still ferry's while the network module runs).
    let own_path = format!("/proc/{}/fd/{}", std::process::id(), own.as_raw_fd());
    let mut args: Vec<&str> = vec!["link", "add"];
    args.extend(spec.iter().map(String::as_str));
    args.extend(["type", "veth", "peer", "name", out.outside.as_str(), "netns", own_path.as_str()]);
    // The dumped tree's namespace, whose end had this name, may still be going away (the
    // kernel cleans up network namespaces asynchronously): wait for the name to be free.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match tool("ip", &args) {
            Err(Error::Invalid { what, .. })
                if what.contains("File exists") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => {
                r.map_err(|e| Error::Invalid { object: obj(), what: format!("cannot make the pair: {e}") })?;
                break;
            }
        }
    }
    let mut set: Vec<&str> = vec!["link", "set", "dev", out.outside.as_str()];
    if let Some(br) = &out.bridge {
        set.extend(["master", br.as_str()]);
    }
    set.push("up");
    in_ns(own, libc::CLONE_NEWNET, || tool("ip", &set))
        .map_err(|e| Error::Invalid { object: obj(), what: format!("cannot set up its outside end: {e}") })?;
    Ok(())
}

/// Make the macvlan `l` (its `spec`: name, index, address) here, on its lower device: one of
/// this namespace, or one of ferry's own network namespace (the restore's own `--external
/// macvlan[NAME]:LOWER` for it, else the name the dump recorded), where the kernel must look
/// it up: the device is then made from there, straight into this namespace.
/// Bring device `l` up. A macvlan whose hardware address another device on the same lower
/// device has (EADDRINUSE) is waited for up to 10 s: the dumped tree's copy goes only when the
/// kernel cleans its dead network namespace up, asynchronously, a moment after the tree died.
/// Still there after that (e.g. the tree was left running), the restore fails naming it.
fn link_up(l: &NsxLink) -> Result<(), Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match ferry_sys::nsctl::link_set_up(&l.name, true) {
            Err(e)
                if l.kind == "macvlan"
                    && e.raw_os_error() == Some(libc::EADDRINUSE)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) if l.kind == "macvlan" && e.raw_os_error() == Some(libc::EADDRINUSE) => {
                return Err(Error::Invalid {
                    object: format!("network device {}", l.name),
                    what: format!(
                        "cannot bring it up: another device on its lower device has its hardware address {} (still there after 10 s: the dumped tree left running?)",
                        l.address
                    ),
                })
            }
            r => return r.ctx(|| format!("cannot bring up network device {}", l.name)),
        }
    }
}

fn make_macvlan(l: &NsxLink, spec: &[String], ctx: &RestoreCtx<'_>) -> Result<(), Error> {
    use std::os::fd::AsRawFd;
    let settings = l.macvlan.iter().map(String::as_str);
    if l.outside.is_empty() {
        let mut args: Vec<&str> = vec!["link", "add", "link", l.lower.as_str(), "name"];
        args.extend(spec.iter().map(String::as_str));
        args.extend(["type", "macvlan"]);
        args.extend(settings);
        return tool("ip", &args).map(drop);
    }
    let lower = ctx.opts.macvlans.iter().find(|m| m.inside == l.name).map_or(l.outside.as_str(), |m| &m.lower);
    let obj = || format!("network device {} (macvlan, its lower device {lower} outside)", l.name);
    let own = ctx.own_net.ok_or_else(|| Error::Invalid {
        object: obj(),
        what: "ferry's own network namespace is unknown (the tree's was not recreated)".into(),
    })?;
    let here = std::fs::File::open("/proc/thread-self/ns/net").ctx(|| "cannot open /proc/thread-self/ns/net".into())?;
    // (`ip` opens the namespace by path: this thread's fd, seen through /proc)
    let here_path = format!("/proc/{}/fd/{}", std::process::id(), here.as_raw_fd());
    let mut args: Vec<&str> = vec!["link", "add", "link", lower, "name"];
    args.extend(spec.iter().map(String::as_str));
    args.extend(["netns", here_path.as_str(), "type", "macvlan"]);
    args.extend(settings);
    in_ns(own, libc::CLONE_NEWNET, || tool("ip", &args))
        .map_err(|e| Error::Invalid { object: obj(), what: format!("cannot make it: {e}") })?;
    Ok(())
}
