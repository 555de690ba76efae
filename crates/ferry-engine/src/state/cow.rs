//! Pages shared copy-on-write between a parent and the children it forked, brought back at
//! restore. (Found at dump time by state/memory/sharing.rs: such a mapping of a child is marked
//! `cow`, its image leaves out the pages on its parent's frames, and its `cow_holes` list the
//! pages the parent has and it does not, which must read as zeros, or for a private file mapping
//! as the file's bytes.)
//!
//! While the tree is forked, a process whose children need one of its mappings maps it itself
//! (still running ferry's code, `MAP_FIXED_NOREPLACE`) and fills it *before* it forks them, so
//! they inherit it copy-on-write, exactly as before. A child that inherited such a mapping only
//! applies its own layer (its holes, then its stored pages; where they go is
//! state/memory/pages_in.rs's answer, `Layer::places`, as for the tracer). The tracer leaves these premapped
//! ranges alone. If a range cannot be premapped (ferry's own memory happens to sit there in the
//! forked copy), the tracer builds it afterwards from the chain of layers (the parent's, then
//! the child's): same content, without the sharing. A hole of a private file mapping is dropped
//! with MADV_DONTNEED (which gives the file's bytes back), and a premapped file mapping maps the
//! file (the fd opened for it before the fork).

use crate::error::Error;
use crate::state::memory::sharing::{is_file, same_mapping, shareable};
use crate::state::memory::{apply_here, Layer, Premapped, Tracer};
use ferry_image::{Process, Vma};
use ferry_sys::raw::RawRegion;

/// The index in `procs` of `p`'s parent, if it is in the image.
fn parent_of(procs: &[Process], p: &Process) -> Option<usize> {
    procs.iter().position(|q| q.pid == p.ppid && !q.zombie && q.pid != p.pid)
}

fn same_bounds<'a>(p: &'a Process, v: &Vma) -> Option<&'a Vma> {
    p.mm.as_ref()?.vmas.iter().find(|w| same_mapping(v, w) && shareable(w))
}

/// The layers that make mapping `v` of `procs[idx]`, the oldest ancestor's first, its own last.
pub fn chain<'a>(
    procs: &'a [Process],
    pages: &[Option<(i32, u64)>],
    idx: usize,
    v: &'a Vma,
) -> Result<Vec<Layer<'a>>, Error> {
    let mut out = vec![Layer { pages: pages[idx], holes: &v.cow_holes, vma: v }];
    let (mut cur, mut w) = (idx, v);
    while w.cow {
        let p = &procs[cur];
        let bad = |what: &str| Error::Invalid {
            object: format!("pid {} mapping {:#x}-{:#x}", p.pid, w.start, w.end),
            what: what.into(),
        };
        let up = parent_of(procs, p).ok_or_else(|| bad("shares pages with a parent that is not in the image"))?;
        if out.len() > procs.len() {
            return Err(bad("its parents form a loop"));
        }
        w = same_bounds(&procs[up], w).ok_or_else(|| bad("shares pages with a parent that has no such mapping"))?;
        out.push(Layer { pages: pages[up], holes: &w.cow_holes, vma: w });
        cur = up;
    }
    out.reverse();
    Ok(out)
}

/// Mappings of `procs[idx]` that are premapped at restore: shared with its parent, or with one
/// of its children.
fn wanted<'a>(procs: &'a [Process], idx: usize) -> impl Iterator<Item = &'a Vma> + 'a {
    let me = &procs[idx];
    let vmas = me.mm.as_ref().map(|m| m.vmas.as_slice()).unwrap_or_default();
    vmas.iter().filter(move |v| {
        shareable(v)
            && (v.cow
                || procs.iter().any(|c| {
                    c.ppid == me.pid && c.pid != me.pid && !c.zombie && same_bounds(c, v).is_some_and(|w| w.cow)
                }))
    })
}

/// In the restore child of `procs[idx]`, before it forks anything: keep the mappings it
/// inherited from its parent that it shares (applying its own layer), drop the other inherited
/// ones, and map and fill the rest of what it or its children share. A mapping that cannot be
/// placed (EEXIST: ferry's own memory is there) is left to the tracer.
pub fn premap(
    procs: &[Process],
    pages: &[Option<(i32, u64)>],
    vma_fds: &std::collections::HashMap<usize, i32>,
    idx: usize,
    inherited: Vec<Premapped>,
) -> Result<Vec<Premapped>, String> {
    let me = &procs[idx];
    // Its own content already (memory in place, state/premapped.rs): kept as it is.
    let (mut out, inherited): (Vec<Premapped>, Vec<Premapped>) = inherited.into_iter().partition(|p| p.owner == me.pid);
    let mut inherited: Vec<Option<Premapped>> = inherited.into_iter().map(Some).collect();
    let mut todo = Vec::new();
    for v in wanted(procs, idx) {
        if out.iter().any(|p| (p.region.start(), p.region.end()) == (v.start, v.end)) {
            continue;
        }
        let slot = inherited.iter_mut().find(|s| {
            s.as_ref().is_some_and(|s| s.owner == me.ppid && (s.region.start(), s.region.end()) == (v.start, v.end))
        });
        match slot.and_then(|s| s.take()) {
            Some(p) if v.cow => {
                apply_here(&p.region, me.pid, &Layer { pages: pages[idx], holes: &v.cow_holes, vma: v })?;
                out.push(Premapped { region: p.region, owner: me.pid });
            }
            Some(p) => {
                // The parent's, but not shared with it after all: map this process's own.
                p.region.unmap().map_err(|e| format!("cannot unmap an inherited mapping: {e}"))?;
                todo.push(v);
            }
            None => todo.push(v),
        }
    }
    for p in inherited.into_iter().flatten() {
        p.region.unmap().map_err(|e| format!("cannot unmap an inherited mapping: {e}"))?;
    }
    for v in todo {
        let has = |flag: &str| v.vm_flags.iter().any(|f| f == flag);
        let mapped = match is_file(v) {
            true => {
                // (The file opened for this mapping, at its number in every restored process.)
                let vmas = me.mm.as_ref().map(|m| m.vmas.as_slice()).unwrap_or_default();
                let fd = vmas.iter().position(|w| std::ptr::eq(w, v)).and_then(|i| vma_fds.get(&i));
                match fd {
                    Some(&fd) => RawRegion::map_file(v.start, v.end, fd, v.offset, has("nr")),
                    None => return Err(format!("mapping {:#x}-{:#x}: no open file for {}", v.start, v.end, v.path)),
                }
            }
            false => RawRegion::map(v.start, v.end, has("gd"), has("nr")),
        };
        let region = match mapped {
            Ok(r) => r,
            Err(_) => continue, // the tracer rebuilds it
        };
        let layers = chain(procs, pages, idx, v).map_err(|e| e.to_string())?;
        for l in &layers {
            apply_here(&region, me.pid, l)?;
        }
        out.push(Premapped { region, owner: me.pid });
    }
    Ok(out)
}

pub fn for_tracer<'a>(
    procs: &'a [Process],
    pages: &[Option<(i32, u64)>],
    idx: usize,
    kept: Vec<(u64, u64)>,
) -> Result<Tracer<'a>, Error> {
    let mut chains = Vec::new();
    let vmas = procs[idx].mm.as_ref().map(|m| m.vmas.as_slice()).unwrap_or_default();
    for (i, v) in vmas.iter().enumerate() {
        if v.cow && !kept.contains(&(v.start, v.end)) {
            chains.push((i, chain(procs, pages, idx, v)?));
        }
    }
    Ok(Tracer { kept, chains })
}
