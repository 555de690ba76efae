//! ferry as the CRIU that container runtimes call: CRIU's RPC messages (`rpc.rs`), the
//! `swrk` server that runc, Podman (through runc), crun and go-criu speak to (`swrk.rs`), and
//! CRIU's command line when ferry is installed under the name `criu` (`cli.rs`).
//!
//! The CRIU version ferry reports is [`CRIU_MAJOR`].[`CRIU_MINOR`] (3.17): the release Debian 12
//! ships with runc 1.1.5 and Podman 4.3, the clients ferry is tested with. Clients pick their
//! code paths by this number: Podman refuses anything older than 3.11, runc uses the cgroup v2
//! freezer from 3.14 on and status notifications from 3.15 on; a newer number would make a
//! client send options of later CRIU releases that it was never tested against here.
//! docs/containers.md says more.

pub mod cli;
pub mod rpc;
pub mod stats;
pub mod swrk;

/// The CRIU major version ferry answers as.
pub const CRIU_MAJOR: i32 = 3;
/// The CRIU minor version ferry answers as.
pub const CRIU_MINOR: i32 = 17;

use ferry_engine::state::external::{External, InheritFd};
use ferry_engine::state::namespaces::{DumpNs, ExternalMacvlan, ExternalNs, ExternalVeth, RestoreNs};
use std::path::PathBuf;

/// The namespace part of a dump's CRIU externals (`--external` / RPC `external`, and the RPC's
/// `ext_mnt` pairs): `mnt[MOUNTPOINT]:KEY` mounts, `net[INO]:KEY` namespaces and
/// `veth[INSIDE]:OUTSIDE[@BRIDGE]` and `macvlan[INSIDE]:LOWER` devices.
pub fn dump_ns(external: &[External], ext_mnt: &[(String, String)]) -> anyhow::Result<DumpNs> {
    let mut ns = DumpNs { external_mounts: ext_mnt.to_vec(), ..Default::default() };
    for e in external {
        match e {
            External::Mount { key, value } => ns.external_mounts.push((key.clone(), value.clone())),
            External::Net { key, value } => {
                let inode =
                    key.parse().map_err(|_| anyhow::anyhow!("external net[{key}]: not a namespace inode number"))?;
                ns.external.push(ExternalNs { kind: "net".into(), inode, key: value.clone() });
            }
            External::Veth { .. } => ns.veths.extend(veth(e)),
            External::Macvlan { .. } => ns.macvlans.extend(macvlan(e)),
            _ => {}
        }
    }
    Ok(ns)
}

/// The namespace part of a restore's CRIU options: external mounts (`mnt[KEY]:PATH` and the
/// RPC's `ext_mnt`), the root directory, and every `inherit_fd` (a key that names an external
/// namespace, runc's `extRootNetNS`, is joined; the others are files, state/external.rs).
pub fn restore_ns(
    external: &[External],
    ext_mnt: &[(String, String)],
    inherit: &[InheritFd],
    root: Option<PathBuf>,
) -> RestoreNs {
    let mut external_mounts: Vec<(String, PathBuf)> = ext_mnt.iter().map(|(k, v)| (k.clone(), v.into())).collect();
    for e in external {
        if let External::Mount { key, value } = e {
            external_mounts.push((key.clone(), value.into()));
        }
    }
    RestoreNs {
        inherit: inherit.iter().map(|i| (i.key.clone(), i.fd)).collect(),
        root,
        external_mounts,
        veths: external.iter().filter_map(veth).collect(),
        macvlans: external.iter().filter_map(macvlan).collect(),
        locked: Vec::new(),
        veth_pairs: Default::default(),
    }
}

/// `veth[INSIDE]:OUTSIDE[@BRIDGE]`.
fn veth(e: &External) -> Option<ExternalVeth> {
    match e {
        External::Veth { inside, outside, bridge } => {
            Some(ExternalVeth { inside: inside.clone(), outside: outside.clone(), bridge: bridge.clone() })
        }
        _ => None,
    }
}

/// `macvlan[INSIDE]:LOWER`.
fn macvlan(e: &External) -> Option<ExternalMacvlan> {
    match e {
        External::Macvlan { inside, outside } => {
            Some(ExternalMacvlan { inside: inside.clone(), lower: outside.clone() })
        }
        _ => None,
    }
}

/// `inherit_fd` entries with one fd per key (the first): runc names the same pipe twice when
/// the container's stdout and stderr are one pipe.
pub fn unique_inherit(inherit: &[InheritFd]) -> Vec<InheritFd> {
    let mut seen = std::collections::HashSet::new();
    inherit.iter().filter(|i| seen.insert(i.key.clone())).cloned().collect()
}
