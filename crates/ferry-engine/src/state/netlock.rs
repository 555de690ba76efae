//! The network lock for established TCP connections (`--tcp-established`): while a connection
//! has no socket that may answer — from the moment ferry starts reading its queues until the
//! restored socket leaves repair mode — the packets of its 4-tuple are dropped by netfilter
//! in the node's network namespace, both ways. Without it, data the peer sends meanwhile
//! would be acknowledged by the frozen socket after its queue was saved (and lost), or, once
//! the socket is gone, answered with a RST that kills the connection. The peer just
//! retransmits until the connection is back.
//!
//! The lock is an nftables table (`inet ferry_lock_*`, chains at the raw priority of the
//! input and output hooks), made with the `nft` tool (package nftables), in the network
//! namespace the connections live in: the tree's own (a `ferry run --netns` job, a
//! container), where their packets go through its input and output hooks, else ferry's.
//! A lock made in the tree's own namespace goes away with it when the dump kills the tree. A dump that fails, or
//! leaves the tree running (`-R`), removes it; a dump that kills the tree keeps it and names it
//! in the image, and the restore that brings the connections back on this node removes it
//! once they are out of repair mode, in the restored tree's network namespace (the same one
//! when it outlived the tree and the restore joined it again, `--external net[INO]:KEY`). After a migration the table stays on the source node,
//! where the connection's address may still route: remove it once the address has moved
//! (`ferry migrate` prints the command).
//!
//! At restore, when the tree's network namespace is not ferry's ([`Lock::hold_here`]): the
//! dump's lock went away with the dumped namespace (or is in another node's), and from the
//! moment the new namespace carries packets (its veth up, its addresses set) to the moment the
//! restored sockets exist, a peer's retransmission would meet no socket there and be answered
//! with a RST. So the restore makes a lock of its own in that namespace for the image's
//! connections, before the namespace module brings any device up (or, for a namespace the
//! restore joins, e.g. Podman's, right after joining it), lets ferry's marked segments through
//! (the FINs it gives back), and removes it once the tree runs, with the dump's own lock if the
//! joined namespace is the one the tree was dumped in (it kept it). A restore that fails leaves a
//! namespace it made to go with the lock (the peers keep waiting rather than being reset
//! meanwhile); from a namespace it joined, the lock is removed.

use crate::error::Error;
use std::io::Write;
use std::net::SocketAddr;

/// One lock (one nftables table), removed when dropped unless kept.
pub struct Lock {
    table: String,
    /// The tree's network namespace when it is not ferry's (the table is made there).
    netns: Option<std::os::fd::OwnedFd>,
    kept: bool,
}

/// A restore's lock in the network namespace of the tree ([`Lock::hold_here`]).
pub struct RestoreLock {
    lock: Lock,
    /// The namespace was made by the restore: dropped without [`RestoreLock::release`] (a failed
    /// restore), the table is left to go with it.
    ns_made: bool,
}

impl RestoreLock {
    /// Remove the lock, and the dump's locks `dumped` if this namespace has them (a namespace the
    /// restore joined may be the one the tree was dumped in, which kept the dump's lock): the
    /// restored connections take packets again.
    pub fn release<'a>(mut self, dumped: impl IntoIterator<Item = &'a str>) -> Result<(), Error> {
        self.lock.kept = true;
        unlock_in(self.lock.netns.as_ref(), &self.lock.table)?;
        for t in dumped {
            unlock_in(self.lock.netns.as_ref(), t)?;
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.lock.table
    }
}

impl Drop for RestoreLock {
    fn drop(&mut self) {
        if self.ns_made {
            self.lock.kept = true;
        }
    }
}

/// The network namespace of `pid` (the tree's root), where its locks are, when it is not
/// ferry's own.
fn netns_of(pid: i32) -> Result<Option<std::os::fd::OwnedFd>, Error> {
    let path = format!("/proc/{pid}/ns/net");
    let theirs =
        std::fs::read_link(&path).map_err(|e| Error::Sys { object: format!("cannot read link {path}"), source: e })?;
    if std::fs::read_link("/proc/self/ns/net").ok().as_ref() == Some(&theirs) {
        return Ok(None);
    }
    let f = std::fs::File::open(&path).map_err(|e| Error::Sys { object: format!("cannot open {path}"), source: e })?;
    Ok(Some(std::os::fd::OwnedFd::from(f)))
}

/// The tables this ferry made ([`table_name`]): only these are ferry's locks to a dump that
/// lists a namespace's tables, not any table a tree may name `ferry_lock_*` itself.
static MADE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Whether `line` of `nft list tables` is a lock this ferry made.
pub fn is_lock_table(line: &str) -> bool {
    let made = MADE.lock().unwrap_or_else(|p| p.into_inner());
    line.trim().strip_prefix("table inet ").is_some_and(|t| made.iter().any(|m| m == t))
}

/// Run `nft -f -` with `script`, in network namespace `netns` if given (from a thread that
/// joined it: nft's process inherits it). While a restore's thread is in the tree's mount
/// namespace (a container's root, which has no nft), from a thread back in ferry's own.
fn nft_in(netns: Option<&std::os::fd::OwnedFd>, script: &str) -> Result<(), Error> {
    use std::os::fd::AsFd;
    match (netns, crate::state::nsfile::ferry_mnt_if_left()) {
        (Some(ns), None) => crate::state::nsfile::in_ns(ns.as_fd(), libc::CLONE_NEWNET, || nft(script)),
        (None, None) => nft(script),
        (ns, Some(mnt)) => crate::state::nsfile::in_ns(mnt, libc::CLONE_NEWNS, || match ns {
            Some(ns) => ferry_sys::ns::setns(ns.as_fd(), libc::CLONE_NEWNET)
                .map_err(|e| Error::Sys {
                    object: "cannot join the tree's network namespace (setns)".into(),
                    source: e,
                })
                .and_then(|()| nft(script)),
            None => nft(script),
        }),
    }
}

fn nft(script: &str) -> Result<(), Error> {
    let obj = || "network lock (nft)".to_string();
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::Invalid {
            object: obj(),
            what: format!("cannot run nft ({e}): install nftables, which --tcp-established needs to block the connections while they move"),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| Error::Sys { object: obj(), source: e })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Invalid { object: obj(), what: err.lines().next().unwrap_or("failed").trim().to_string() });
    }
    Ok(())
}

/// A fresh table name (`ferry_lock_PID_NANOS_N`), recorded as this ferry's. The scripts make
/// it with `create table`, which fails rather than add chains to a table of the same name that
/// is already there (a tree's own, or a lock left by another run).
fn table_name() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let mut made = MADE.lock().unwrap_or_else(|p| p.into_inner());
    let name = format!("ferry_lock_{}_{nanos}_{}", std::process::id(), made.len());
    made.push(name.clone());
    name
}

fn matcher(src: &SocketAddr, dst: &SocketAddr) -> String {
    // A dual-stack socket's IPv4 peer (::ffff:a.b.c.d) is IPv4 on the wire.
    let v4 = |a: &SocketAddr| match a {
        SocketAddr::V6(s) => s.ip().to_ipv4_mapped().map_or(*a, |ip| SocketAddr::new(ip.into(), s.port())),
        _ => *a,
    };
    let (src, dst) = (&v4(src), &v4(dst));
    let fam = if src.is_ipv4() { "ip" } else { "ip6" };
    format!("{fam} saddr {} {fam} daddr {} tcp sport {} tcp dport {} drop", src.ip(), dst.ip(), src.port(), dst.port())
}

impl Lock {
    /// An empty lock (a table whose chains drop nothing yet) in the network namespace of
    /// `pid`, the tree's root.
    pub fn new(pid: i32) -> Result<Lock, Error> {
        let netns = netns_of(pid)?;
        let table = table_name();
        nft_in(netns.as_ref(), &format!(
            "create table inet {table}\ntable inet {table} {{\n chain in {{ type filter hook input priority raw; policy accept; }}\n chain out {{ type filter hook output priority raw; policy accept; }}\n}}\n"
        ))?;
        Ok(Lock { table, netns, kept: false })
    }

    pub fn name(&self) -> &str {
        &self.table
    }

    /// A restore's lock for `conns` ((local, peer) of each connection of the image) in the
    /// calling thread's network namespace (the tree's, made by the restore when `ns_made`, else
    /// joined), letting ferry's marked segments through (module doc).
    pub fn hold_here(conns: &[(SocketAddr, SocketAddr)], ns_made: bool) -> Result<RestoreLock, Error> {
        let path = "/proc/thread-self/ns/net";
        let f =
            std::fs::File::open(path).map_err(|e| Error::Sys { object: format!("cannot open {path}"), source: e })?;
        let table = table_name();
        let mut script = format!(
            "create table inet {table}\ntable inet {table} {{\n chain in {{ type filter hook input priority raw; policy accept; meta mark {PASS_MARK:#x} accept; }}\n chain out {{ type filter hook output priority raw; policy accept; meta mark {PASS_MARK:#x} accept; }}\n}}\n"
        );
        for (local, peer) in conns {
            script.push_str(&format!(
                "add rule inet {table} in {}\nadd rule inet {table} out {}\n",
                matcher(peer, local),
                matcher(local, peer)
            ));
        }
        // (This thread is in the namespace; nft runs from one in ferry's own mount namespace.)
        let netns = Some(std::os::fd::OwnedFd::from(f));
        nft_in(netns.as_ref(), &script)?;
        tracing::info!(table, connections = conns.len(), "network lock in the restored tree's network namespace");
        Ok(RestoreLock { lock: Lock { table, netns, kept: false }, ns_made })
    }

    /// Drop the packets of the connection between `local` (this node's end) and `peer`.
    pub fn add(&mut self, local: &SocketAddr, peer: &SocketAddr) -> Result<(), Error> {
        let t = &self.table;
        nft_in(
            self.netns.as_ref(),
            &format!("add rule inet {t} in {}\nadd rule inet {t} out {}\n", matcher(peer, local), matcher(local, peer)),
        )
    }

    /// Leave the lock in place (the connections moved into an image).
    pub fn keep(mut self) -> String {
        self.kept = true;
        self.table.clone()
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if !self.kept {
            if let Err(e) = unlock_in(self.netns.as_ref(), &self.table) {
                tracing::error!(table = %self.table, error = %e, "cannot remove the network lock");
            }
        }
    }
}

/// Remove lock `table` from the network namespace of `pid` (the restored tree's root), if it is
/// there: the dump made it in the tree's namespace, which the restore joined again when it
/// outlived the tree (`--external net[INO]:KEY`); a new namespace, or another node, has none.
pub fn unlock(pid: i32, table: &str) -> Result<(), Error> {
    unlock_in(netns_of(pid)?.as_ref(), table)
}

fn unlock_in(netns: Option<&std::os::fd::OwnedFd>, table: &str) -> Result<(), Error> {
    unlock_name_ok(table)?;
    match nft_in(
        netns,
        &format!(
            "delete table inet {table}
"
        ),
    ) {
        Err(Error::Invalid { what, .. }) if what.contains("No such file") || what.contains("cannot run nft") => Ok(()),
        r => r,
    }
}

/// The SO_MARK of the segments ferry itself sends to a locked connection (a peer's FIN given
/// back in repair mode, `tcp_repair::give_fin`); CRIU's SOCCR_MARK.
pub const PASS_MARK: u32 = 0xc114;

/// Let packets marked `PASS_MARK` through lock `table` (both ways), if this node has it.
pub fn pass_marked(table: &str) -> Result<(), Error> {
    unlock_name_ok(table)?;
    let script = format!(
        "insert rule inet {table} in meta mark {PASS_MARK:#x} accept\ninsert rule inet {table} out meta mark {PASS_MARK:#x} accept\n"
    );
    // (In this thread's network namespace; nft runs from one in ferry's own mount namespace.)
    let here = std::fs::File::open("/proc/thread-self/ns/net").ok().map(std::os::fd::OwnedFd::from);
    match nft_in(here.as_ref(), &script) {
        Err(Error::Invalid { what, .. }) if what.contains("No such file") || what.contains("cannot run nft") => Ok(()),
        r => r,
    }
}

/// Refuse a lock name from an image that is not one ferry makes (it goes into an nft script).
fn unlock_name_ok(table: &str) -> Result<(), Error> {
    if !table.starts_with("ferry_lock_") || !table.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(Error::Invalid { object: format!("network lock {table:?}"), what: "not a ferry lock name".into() });
    }
    Ok(())
}
