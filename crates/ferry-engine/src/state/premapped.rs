//! Memory a restore receives already in place: private anonymous regions that the caller mapped
//! in its own address space at the addresses of an image process's mappings, holding that
//! process's content except its page runs (`ferry serve` puts pre-copied pages there while the
//! tree still runs on the source: docs/migration.md, "Where does a pre-copied page go").
//!
//! The restored root is forked from the caller, so it inherits them copy-on-write (page tables
//! only, no data). While the tree is forked, each process keeps the regions that are its own
//! (and reads its page runs on top, as for memory shared copy-on-write, state/cow.rs), hands the
//! regions of the processes it creates (directly or through helpers) down to them, and unmaps
//! the rest; the tracer then leaves the kept ranges alone, as it does for premapped memory.

use crate::state::memory::{apply_here, Layer, Premapped};
use crate::state::session::{Plan, Role};
use ferry_image::{Process, VmaKind};

/// Whether node `n` of the plan creates (itself, or through the nodes it creates) the node of
/// image process `pid`.
fn creates(plan: &Plan, procs: &[Process], n: usize, pid: i32) -> bool {
    let Some(mut at) = plan.nodes.iter().position(|x| matches!(x.role, Role::Image(i) if procs[i].pid == pid)) else {
        return false;
    };
    for _ in 0..plan.nodes.len() {
        match plan.nodes[at].creator {
            Some(c) if c == n => return true,
            Some(c) => at = c,
            None => return false,
        }
    }
    false
}

/// What a forked process does with the regions it inherited: `(kept, carried)`. `kept`: its
/// own (filled with its page runs) and those of its parent (memory shared copy-on-write, for
/// `cow::premap`); `carried`: those of the processes it creates, to unmap once they are
/// forked. Everything else is unmapped here.
pub fn sort(
    procs: &[Process],
    plan: &Plan,
    pages: &[Option<(i32, u64)>],
    n: usize,
    idx: Option<usize>,
    inherited: Vec<Premapped>,
) -> Result<(Vec<Premapped>, Vec<Premapped>), String> {
    let me = idx.map(|i| &procs[i]);
    let (mut kept, mut carried) = (Vec::new(), Vec::new());
    for p in inherited {
        let (start, end) = (p.region.start(), p.region.end());
        if let (Some(i), Some(me)) = (idx, me.filter(|m| m.pid == p.owner)) {
            let vmas = me.mm.as_ref().map(|m| m.vmas.as_slice()).unwrap_or_default();
            let v = vmas.iter().find(|v| (v.start, v.end) == (start, end) && v.kind == VmaKind::Anon as i32);
            let v =
                v.ok_or_else(|| format!("memory in place at {start:#x}-{end:#x} is no mapping of pid {}", me.pid))?;
            // (its own layer: the pages that changed since they were put in place)
            apply_here(&p.region, me.pid, &Layer { pages: pages[i], holes: &[], vma: v })?;
            kept.push(p);
        } else if me.is_some_and(|m| m.ppid == p.owner) {
            kept.push(p);
        } else if creates(plan, procs, n, p.owner) {
            carried.push(p);
        } else {
            p.region.unmap().map_err(|e| format!("cannot unmap memory in place at {start:#x}: {e}"))?;
        }
    }
    Ok((kept, carried))
}

/// Without premapping (`FERRY_COW_PREMAP=0`): keep only the regions that are this process's
/// own (`pid`), unmap the rest (the tracer rebuilds shared memory from its layers).
pub fn own_only(pid: Option<i32>, kept: Vec<Premapped>) -> Result<Vec<Premapped>, String> {
    let mut out = Vec::new();
    for p in kept {
        if Some(p.owner) == pid {
            out.push(p);
        } else {
            p.region.unmap().map_err(|e| format!("cannot unmap an inherited mapping: {e}"))?;
        }
    }
    Ok(out)
}

/// Once the process forked everything it creates: the regions it carried for them go.
pub fn drop_carried(carried: Vec<Premapped>) -> Result<(), String> {
    for p in carried {
        let start = p.region.start();
        p.region.unmap().map_err(|e| format!("cannot unmap memory in place at {start:#x}: {e}"))?;
    }
    Ok(())
}
