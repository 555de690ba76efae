//! Cgroup membership: which cgroup each process is in, in every hierarchy (cgroup v1
//! controllers, named v1 hierarchies, the v2 tree).
//!
//! Dump reads /proc/PID/cgroup (and refuses a process whose threads sit in different v1
//! cgroups). Restore creates the cgroup's directory if this machine does not have it, and each
//! forked process joins its cgroups itself (writing to `cgroup.procs`) before it maps any
//! memory, so pages and threads are charged where they belong
//! (without limits: the limits of a cgroup are its owner's business, not the process's). A
//! hierarchy that is not mounted here, or a cgroup that will not take the process, fails the
//! restore with an error naming it. Where ferry itself is in the same cgroup nothing is done.

use crate::error::{Ctx, Error};
use crate::procfs;
use ferry_image::{Cgroup, Process};
use ferry_proc::MountInfo;

pub(crate) fn read(pid: i32, file: &str) -> Result<Vec<Cgroup>, Error> {
    let text = procfs::read_string(pid, file)?;
    let lines = procfs::parse(pid, file, ferry_proc::parse_cgroup(&text))?;
    Ok(lines.into_iter().map(|l| Cgroup { controllers: l.controllers, path: l.path }).collect())
}

/// Record the cgroups of `pid` (threads `tids`) into `p`.
pub fn collect(pid: i32, tids: &[i32], p: &mut Process) -> Result<(), Error> {
    p.cgroups = read(pid, "cgroup")?;
    for &tid in tids.iter().filter(|&&t| t != pid) {
        if read(pid, &format!("task/{tid}/cgroup"))? != p.cgroups {
            return Err(Error::Unsupported {
                pid,
                what: format!("thread {tid} is in other cgroups than its process (threaded cgroup v1)"),
            });
        }
    }
    Ok(())
}

/// The directory of cgroup `c` in this machine's mounts, if its hierarchy is mounted.
fn dir_of(c: &Cgroup, mounts: &[MountInfo]) -> Option<std::path::PathBuf> {
    let want: Vec<&str> = c.controllers.split(',').filter(|s| !s.is_empty()).collect();
    let m = mounts.iter().find(|m| {
        if want.is_empty() {
            return m.fs_type == "cgroup2";
        }
        let opts: Vec<&str> = m.super_options.split(',').collect();
        m.fs_type == "cgroup" && want.iter().all(|w| opts.contains(w))
    })?;
    // A mount of a subtree (bind mount, cgroup namespace) holds only what is below its root.
    let rel = match m.root.as_str() {
        "/" => c.path.as_str(),
        root => c.path.strip_prefix(root).filter(|r| r.is_empty() || r.starts_with('/'))?,
    };
    Some(std::path::Path::new(&m.mount_point).join(rel.trim_start_matches('/')))
}

/// Whether `path` is a plain absolute cgroup path (no `.` or `..` component, no empty one
/// but the root): an image's paths are joined to this machine's mount points.
pub fn plain_path(path: &str) -> bool {
    path == "/" || (path.starts_with('/') && path[1..].split('/').all(|c| !c.is_empty() && c != "." && c != ".."))
}

/// Before the tree is forked: for each process of `procs` (by index), the cgroup directories
/// it must join, created if missing. Each process joins them itself in its forked child, before
/// it maps any memory (so everything it uses is charged there).
pub fn prepare(procs: &[Process]) -> Result<Vec<Vec<std::path::PathBuf>>, Error> {
    let mut out = vec![Vec::new(); procs.len()];
    if procs.iter().all(|p| p.cgroups.is_empty()) {
        return Ok(out); // (an image from before cgroups were recorded)
    }
    let own = read(std::process::id() as i32, "cgroup")?;
    for (i, p) in procs.iter().enumerate().filter(|(_, p)| !p.zombie) {
        let other: Vec<Cgroup> = p.cgroups.iter().filter(|c| !own.contains(c)).cloned().collect();
        let dirs = host_dirs(&other, &|| format!("pid {}", p.pid))?;
        out[i] = dirs.into_iter().map(|d| d.join("cgroup.procs")).collect();
    }
    Ok(out)
}

/// The directories of cgroups `cgs` in this machine's mounts, created if missing (`who`
/// names their user in errors).
pub(crate) fn host_dirs(cgs: &[Cgroup], who: &dyn Fn() -> String) -> Result<Vec<std::path::PathBuf>, Error> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ctx(|| "cannot read /proc/self/mountinfo".into())?;
    let mounts = ferry_proc::parse_mountinfo(&text)
        .map_err(|e| Error::Invalid { object: "/proc/self/mountinfo".into(), what: e.to_string() })?;
    let mut out = Vec::new();
    for c in cgs {
        let obj = || {
            let h = if c.controllers.is_empty() { "cgroup2" } else { &c.controllers };
            format!("{}: cgroup {h}:{}", who(), c.path)
        };
        if !plain_path(&c.path) {
            return Err(Error::Invalid { object: obj(), what: "not a plain cgroup path".into() });
        }
        let dir = dir_of(c, &mounts)
            .ok_or_else(|| Error::Invalid { object: obj(), what: "this hierarchy is not mounted here".into() })?;
        std::fs::create_dir_all(&dir).ctx(|| format!("{}: cannot create {}", obj(), dir.display()))?;
        out.push(dir);
    }
    Ok(out)
}

/// In the forked child: join the cgroups `prepare` listed for it.
pub fn join_in_child(procs_files: &[std::path::PathBuf]) -> Result<(), String> {
    for f in procs_files {
        // "0": the writer itself.
        std::fs::write(f, "0").map_err(|e| format!("cannot join cgroup {}: {e}", f.display()))?;
    }
    Ok(())
}
