//! A tree's cgroup namespace (kind "cgroup", a namespace module, see state/namespaces.rs): the
//! cgroup it was made at (its root), in every hierarchy.
//!
//! Dump: the root's /proc/PID/cgroup read by ferry (paths from ferry's root) and read from a
//! thread inside the namespace (paths from the namespace's root): the root is what the first
//! adds in front of the second. A process outside the namespace's root ("/..") is refused.
//!
//! Restore: a namespace's root is the cgroup its maker was in. The helper of
//! state/userns.rs joins the recorded roots (created if missing, like state/cgroup.rs does) and
//! unshares CLONE_NEWCGROUP there; ferry's restoring thread joins that namespace, and the tree
//! inherits it. Each process then moves to its own cgroups as usual (`--manage-cgroups`).

use super::nsctx::{DumpCtx, Handover, RestoreCtx};
use super::nsfile::in_ns;
use crate::error::{Ctx, Error};
use ferry_image::{Cgroup, CgroupnsRec, Namespaces};
use std::os::fd::OwnedFd;

/// The namespace's root in each hierarchy, from the root process's cgroups as ferry sees them
/// and as seen inside.
fn roots(pid: i32, host: &[Cgroup], inside: &[Cgroup]) -> Result<Vec<Cgroup>, Error> {
    let mut out = Vec::new();
    for h in host {
        let i = inside.iter().find(|i| i.controllers == h.controllers).ok_or_else(|| Error::Invalid {
            object: format!("pid {pid}: cgroup {}", h.controllers),
            what: "not listed inside its cgroup namespace".into(),
        })?;
        if i.path.starts_with("/..") {
            return Err(Error::Unsupported {
                pid,
                what: format!("a process outside its cgroup namespace's root ({}:{})", h.controllers, i.path),
            });
        }
        let root = match i.path.as_str() {
            "/" => h.path.as_str(),
            rel => h.path.strip_suffix(rel).ok_or_else(|| Error::Invalid {
                object: format!("pid {pid}: cgroup {}:{}", h.controllers, h.path),
                what: format!("does not end with its path inside the cgroup namespace {rel}"),
            })?,
        };
        let root = if root.is_empty() { "/" } else { root };
        out.push(Cgroup { controllers: h.controllers.clone(), path: root.to_string() });
    }
    Ok(out)
}

/// Record the namespace's root in every hierarchy.
pub(crate) fn dump(ctx: &mut DumpCtx<'_>, out: &mut Namespaces) -> Result<(), Error> {
    let pid = ctx.pid;
    let host = crate::state::cgroup::read(pid, "cgroup")?;
    let inside = in_ns(ctx.ns, libc::CLONE_NEWCGROUP, || crate::state::cgroup::read(pid, "cgroup"))?;
    out.cgroupns = Some(CgroupnsRec { roots: roots(pid, &host, &inside)? });
    Ok(())
}

/// Nothing to do in ferry's thread: the namespace was made by state/userns.rs's helper.
pub(crate) fn restore(_ctx: &RestoreCtx<'_>, _ns: &Namespaces, _h: &mut Handover) -> Result<(), Error> {
    Ok(())
}

/// At restore, before the helper forks: the `cgroup.procs` files of the namespace's roots
/// (created if missing), open for writing, for the helper to join.
pub(crate) fn root_procs(ns: &Namespaces) -> Result<Vec<OwnedFd>, Error> {
    let Some(rec) = &ns.cgroupns else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for dir in crate::state::cgroup::host_dirs(&rec.roots, &|| "the cgroup namespace's root".into())? {
        let f = dir.join("cgroup.procs");
        let o = std::fs::OpenOptions::new().write(true).open(&f).ctx(|| format!("cannot open {}", f.display()))?;
        out.push(o.into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cg(c: &str, p: &str) -> Cgroup {
        Cgroup { controllers: c.into(), path: p.into() }
    }

    #[test]
    fn root_is_the_host_path_without_the_inside_one() {
        let host = [cg("memory", "/a/b/c"), cg("cpu", "/a"), cg("", "/x")];
        let inside = [cg("memory", "/c"), cg("cpu", "/"), cg("", "/x")];
        let r = roots(1, &host, &inside).expect("roots");
        assert_eq!(r, vec![cg("memory", "/a/b"), cg("cpu", "/a"), cg("", "/")]);
        assert!(roots(1, &host, &[cg("memory", "/../d"), cg("cpu", "/"), cg("", "/")]).is_err());
    }
}
