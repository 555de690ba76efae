//! Sessions and process groups: who forks whom at restore, and which short-lived helper
//! processes stand in for leaders that have exited.
//!
//! The kernel offers no way to put a process into an existing session: a process inherits its
//! session at fork or creates a new one with `setsid()`. A process group can be joined
//! (`setpgid`) only while some member of it exists, in the same session. So, like CRIU:
//! - a child whose session is the one its parent was born in (the parent called `setsid()`
//!   after forking it) is forked before the parent's `setsid()`;
//! - an orphan reparented to the subreaper root whose session leader has exited is forked by a
//!   *session helper*: a process with the leader's old pid that calls `setsid()`, forks the
//!   orphan and dies; the orphan falls back to the root as before;
//! - a process group whose leader has exited gets a *group helper* with the leader's pid, forked
//!   by the group's first member, which creates the group; every member joins it (an injected
//!   `setpgid`) once the whole tree exists, then the helper dies and its parent reaps it before
//!   it is released.
//!
//! The same plan runs at dump time, so a tree that cannot be recreated is refused there.

use ferry_image::Process;
use std::collections::HashMap;

/// What a node of the restore tree is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `procs[i]` (a live process or a zombie of the image).
    Image(usize),
    /// A helper creating a session (`setsid`) for orphans.
    SessionHelper,
    /// A helper creating a process group (`setpgid(0, 0)`) whose members join it later.
    GroupHelper,
}

/// One process to create at restore.
#[derive(Debug, Clone)]
pub struct Node {
    pub pid: i32,
    pub role: Role,
    /// Index of the node that forks this one (`None` for the root).
    pub creator: Option<usize>,
    /// Forked before the creator's own `setsid()`: it stays in the creator's birth session.
    pub before_setsid: bool,
    /// Calls `setsid()` itself.
    pub setsid: bool,
    /// Calls `setpgid(0, 0)` itself (a group leader that is not a session leader).
    pub own_group: bool,
    /// The group it must join once every process exists (`None`: it is already right).
    pub join: Option<i32>,
}

/// The restore tree: image processes and helpers (find nodes by pid or role, not position).
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub nodes: Vec<Node>,
}

impl Plan {
    /// Whether the process `pid` is forked by the process `creator` (not by a helper): what a
    /// process sharing its parent's fd table (CLONE_FILES) needs, since it is created sharing
    /// its creator's table.
    pub fn created_by_pid(&self, pid: i32, creator: i32) -> bool {
        let node = self.nodes.iter().find(|n| n.pid == pid && matches!(n.role, Role::Image(_)));
        node.and_then(|n| n.creator)
            .is_some_and(|c| self.nodes[c].pid == creator && matches!(self.nodes[c].role, Role::Image(_)))
    }
}

/// What a node's session and group are right after its own setup in `child_main`.
#[derive(Clone, Copy)]
struct Ids {
    born_sid: i32,
    born_pgid: i32,
    sid: i32,
    pgid: i32,
}

/// Marker for "the session or group ferry itself runs in" (the root's outside ids).
const OUTSIDE: i32 = -1;

impl Plan {
    /// Nodes created by node `i`, in the order they must be forked: first those that stay in
    /// `i`'s birth session, then the others.
    pub fn created_by(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        let first = self.nodes.iter().enumerate().filter(move |(_, n)| n.creator == Some(i) && n.before_setsid);
        let then = self.nodes.iter().enumerate().filter(move |(_, n)| n.creator == Some(i) && !n.before_setsid);
        first.chain(then).map(|(j, _)| j)
    }

    pub fn helpers(&self) -> impl Iterator<Item = &Node> + '_ {
        self.nodes.iter().filter(|n| !matches!(n.role, Role::Image(_)))
    }

    pub fn node_of(&self, pid: i32) -> Option<&Node> {
        self.nodes.iter().find(|n| n.pid == pid)
    }
}

/// Work out who creates whom. `procs` is in image order: the root first, every process after
/// its parent. Fails (pid, reason) when the tree's sessions or groups cannot be recreated.
pub fn plan(procs: &[Process]) -> Result<Plan, (i32, String)> {
    let Some(root) = procs.first() else { return Ok(Plan::default()) };
    let idx: HashMap<i32, usize> = procs.iter().enumerate().map(|(i, p)| (p.pid, i)).collect();
    // Who adopts orphans: a subreaper, or the init of a pid namespace.
    let reaper = |q: &Process| q.child_subreaper || (q.pid == 1 && q.pid == root.pid);
    // The root's session and group, when led from outside, are whatever ferry runs in.
    let outside = |v: i32| if idx.contains_key(&v) { v } else { OUTSIDE };
    let mut nodes: Vec<Node> = Vec::new();
    let mut ids: Vec<Ids> = Vec::new();
    let mut node_of: HashMap<i32, usize> = HashMap::new();
    let root_sid = if root.sid == root.pid { root.pid } else { outside(root.sid) };
    let root_pgid = if root.pgid == root.pid { root.pid } else { outside(root.pgid) };
    if root_sid == OUTSIDE && root.sid != root.pid && idx.contains_key(&root.sid) {
        return Err((root.pid, format!("its session {} is led by a descendant", root.sid)));
    }
    nodes.push(Node {
        pid: root.pid,
        role: Role::Image(0),
        creator: None,
        before_setsid: false,
        setsid: root.sid == root.pid,
        own_group: root.pgid == root.pid && root.sid != root.pid,
        join: None,
    });
    ids.push(Ids { born_sid: OUTSIDE, born_pgid: OUTSIDE, sid: root_sid, pgid: root_pgid });
    node_of.insert(root.pid, 0);
    // Desired (sid, pgid) of each image process in the plan's terms.
    let want = |p: &Process| -> (i32, i32) {
        let sid = if p.sid == root.sid && root_sid == OUTSIDE { OUTSIDE } else { p.sid };
        let pgid = if p.pgid == root.pgid && root_pgid == OUTSIDE { OUTSIDE } else { p.pgid };
        (sid, pgid)
    };
    for (i, p) in procs.iter().enumerate().skip(1) {
        let (sid, _) = want(p);
        let parent = *node_of.get(&p.ppid).ok_or((p.pid, format!("its parent {} is not in the image", p.ppid)))?;
        let pids = ids[parent];
        let mut creator = parent;
        let mut before_setsid = false;
        if sid == p.pid || sid == pids.sid {
        } else if nodes[parent].setsid && sid == pids.born_sid {
            before_setsid = true;
        } else if reaper(&procs[idx[&p.ppid]]) && !idx.contains_key(&sid) {
            // An orphan whose session leader is gone: a session helper, forked by the subreaper
            // it was reparented to, forks it.
            creator = match node_of.get(&sid) {
                Some(&h) if nodes[h].creator == Some(parent) => h,
                Some(_) => return Err((p.pid, format!("its session {sid} has orphans under two subreapers"))),
                None => {
                    nodes.push(Node {
                        pid: sid,
                        role: Role::SessionHelper,
                        creator: Some(parent),
                        before_setsid: false,
                        setsid: true,
                        own_group: false,
                        join: None,
                    });
                    ids.push(Ids { born_sid: pids.sid, born_pgid: pids.pgid, sid, pgid: sid });
                    node_of.insert(sid, nodes.len() - 1);
                    nodes.len() - 1
                }
            };
        } else {
            let why = if idx.contains_key(&sid) {
                format!("its session {sid} is led by a process that is not its ancestor")
            } else if sid == OUTSIDE {
                format!("it is in the session of the tree's root ({}), which its parent left", root.sid)
            } else {
                format!("its session {sid} has no leader in the tree and it is not an orphan of a subreaper")
            };
            return Err((p.pid, why));
        }
        let c = ids[creator];
        let (born_sid, born_pgid) = if before_setsid { (c.born_sid, c.born_pgid) } else { (c.sid, c.pgid) };
        let setsid = p.sid == p.pid;
        let own_group = !setsid && p.pgid == p.pid;
        let (s, g) = if setsid {
            (p.pid, p.pid)
        } else if own_group {
            (born_sid, p.pid)
        } else {
            (born_sid, born_pgid)
        };
        nodes.push(Node {
            pid: p.pid,
            role: Role::Image(i),
            creator: Some(creator),
            before_setsid,
            setsid,
            own_group,
            join: None,
        });
        ids.push(Ids { born_sid, born_pgid, sid: s, pgid: g });
        node_of.insert(p.pid, nodes.len() - 1);
    }
    // Groups: a process whose group differs from the one it was born into joins it; a group
    // without a live leader gets a helper.
    for n in 0..nodes.len() {
        let Role::Image(i) = nodes[n].role else { continue };
        let p = &procs[i];
        let (sid, pgid) = want(p);
        if ids[n].pgid == pgid {
            continue;
        }
        if p.zombie {
            return Err((p.pid, format!("a zombie in process group {} it cannot be put back into", p.pgid)));
        }
        let leader = match node_of.get(&pgid) {
            Some(&l) if ids[l].pgid == pgid => l,
            Some(_) => return Err((p.pid, format!("its process group {pgid} is led by a process in another group"))),
            None if pgid == OUTSIDE => {
                return Err((p.pid, "it is in the root's outside process group, which its parent left".into()))
            }
            None => {
                nodes.push(Node {
                    pid: pgid,
                    role: Role::GroupHelper,
                    creator: Some(n),
                    before_setsid: false,
                    setsid: false,
                    own_group: true,
                    join: None,
                });
                ids.push(Ids { born_sid: ids[n].sid, born_pgid: ids[n].pgid, sid: ids[n].sid, pgid });
                node_of.insert(pgid, nodes.len() - 1);
                nodes.len() - 1
            }
        };
        if ids[leader].sid != ids[n].sid || ids[n].sid != sid {
            return Err((p.pid, format!("its process group {pgid} is in another session")));
        }
        nodes[n].join = Some(pgid);
    }
    Ok(Plan { nodes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, ppid: i32, pgid: i32, sid: i32) -> Process {
        Process { pid, ppid, pgid, sid, ..Default::default() }
    }

    #[test]
    fn simple_tree_needs_no_helper() {
        let procs = [p(10, 1, 5, 5), p(11, 10, 5, 5), p(12, 11, 12, 5)];
        let plan = plan(&procs).expect("plan");
        assert_eq!(plan.helpers().count(), 0);
        assert!(plan.nodes[2].own_group && plan.nodes.iter().all(|n| n.join.is_none()));
    }

    #[test]
    fn child_left_in_the_parents_birth_session() {
        // The root runs in an outside session 3; 21 forked 22, then called setsid.
        let procs = [p(20, 1, 3, 3), p(21, 20, 21, 21), p(22, 21, 3, 3)];
        let plan = plan(&procs).expect("plan");
        assert!(plan.nodes[2].before_setsid, "{plan:?}");
        assert_eq!(plan.created_by(1).collect::<Vec<_>>(), vec![2]);
        // A session left behind by a parent that is not a session leader cannot be recreated.
        assert!(plan_err(&[p(20, 1, 20, 20), p(21, 20, 21, 3)]).contains("session"));
    }

    #[test]
    fn dead_group_leader_gets_a_helper() {
        let procs = [p(10, 1, 10, 10), p(11, 10, 30, 10), p(12, 10, 30, 10)];
        let plan = plan(&procs).expect("plan");
        let h: Vec<_> = plan.helpers().collect();
        assert_eq!(h.len(), 1);
        assert_eq!((h[0].pid, h[0].role, h[0].creator), (30, Role::GroupHelper, Some(1)));
        assert_eq!(plan.nodes[1].join, Some(30));
        assert_eq!(plan.nodes[2].join, Some(30));
    }

    #[test]
    fn orphan_of_a_subreaper_gets_a_session_helper() {
        let mut root = p(10, 1, 10, 10);
        root.child_subreaper = true;
        let procs = [root.clone(), p(11, 10, 40, 40), p(12, 10, 41, 40)];
        let plan = plan(&procs).expect("plan");
        let h: Vec<_> = plan.helpers().map(|n| (n.pid, n.role)).collect();
        assert_eq!(h, vec![(40, Role::SessionHelper), (41, Role::GroupHelper)]);
        let helper = plan.nodes.iter().position(|n| n.pid == 40);
        assert_eq!(plan.node_of(11).and_then(|n| n.creator), helper);
        assert_eq!(plan.node_of(12).and_then(|n| n.join), Some(41));
        // Without the subreaper flag the orphan could not be where it is.
        root.child_subreaper = false;
        assert!(plan_err(&[root, p(11, 10, 40, 40)]).contains("not an orphan of a subreaper"));
        // A subreaper below the root, as in a pid namespace whose init started the job.
        let mut job = p(2, 1, 1, 1);
        job.child_subreaper = true;
        let ns = super::plan(&[p(1, 0, 1, 1), job, p(7, 2, 4, 4)]).expect("plan");
        let h = ns.node_of(4).expect("session helper");
        assert_eq!((h.role, h.creator), (Role::SessionHelper, Some(1)));
    }

    fn plan_err(procs: &[Process]) -> String {
        plan(procs).err().map(|e| e.1).unwrap_or_default()
    }
}
