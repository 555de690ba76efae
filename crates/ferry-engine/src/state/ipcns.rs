//! The content of an ipc namespace: SysV semaphore sets (with their values), message queues
//! (with their queued messages, read with `msgrcv(MSG_COPY)`, which leaves them queued), shared
//! memory segments no process of the tree has attached (with their content), and the
//! namespace's limits (kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*). Segments the tree
//! has attached are the processes' (state/sysvshm.rs), which reads and recreates them inside
//! the tree's namespace too.
//!
//! Dump reads everything from a thread that joined the namespace (/proc/sysvipc/* and the
//! sysctls show the reader's namespace). Restore runs in ferry's restoring thread, already in
//! the new namespace, and gives every object its old id the way CRIU does: the id is written
//! to /proc/sys/kernel/{sem,msg,shm}_next_id before the object is created. Owners and modes
//! are kept; times, last pids and creator ids are not (the kernel sets them).
//!
//! POSIX message queues (with their attributes, owner, mode and queued messages) live in the
//! namespace's mqueue file system: dump mounts it privately to list them, and reads each with
//! `mq_receive`, putting every message back at once (see `posix_mqueues`). A queue some
//! process registered for notification (`mq_notify`) is refused by name.

use super::nsctx::{DumpCtx, Handover, RestoreCtx};
use super::nsfile::in_ns;
use crate::error::{Ctx, Error};
use ferry_image::{Namespaces, NsxIpcns, NsxMsg, NsxMsgQueue, NsxPosixMq, NsxPosixMsg, NsxSemSet, NsxSysctl, SysvShm};
use ferry_sys::sysvipc;

const SYSCTLS: &[&str] = &[
    "kernel/shmmax",
    "kernel/shmall",
    "kernel/shmmni",
    "kernel/shm_rmid_forced",
    "kernel/msgmax",
    "kernel/msgmnb",
    "kernel/msgmni",
    "kernel/sem",
    "fs/mqueue/queues_max",
    "fs/mqueue/msg_max",
    "fs/mqueue/msgsize_max",
    "fs/mqueue/msg_default",
    "fs/mqueue/msgsize_default",
];

/// The rows of a /proc/sysvipc table, split in words (header skipped).
fn table(name: &str) -> Result<Vec<Vec<String>>, Error> {
    let p = format!("/proc/sysvipc/{name}");
    let text = std::fs::read_to_string(&p).ctx(|| format!("cannot read {p}"))?;
    Ok(text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .filter(|r: &Vec<String>| r.len() >= 9)
        .collect())
}

fn num<T: std::str::FromStr>(row: &[String], i: usize, what: &str) -> Result<T, Error> {
    row.get(i).and_then(|v| v.parse().ok()).ok_or_else(|| Error::Invalid {
        object: format!("/proc/sysvipc/{what}"),
        what: format!("unreadable row {:?}", row.join(" ")),
    })
}

fn mode(row: &[String], what: &str) -> Result<u32, Error> {
    row.get(2).and_then(|v| u32::from_str_radix(v, 8).ok()).ok_or_else(|| Error::Invalid {
        object: format!("/proc/sysvipc/{what}"),
        what: format!("unreadable mode in {:?}", row.join(" ")),
    })
}

/// Dump: read the namespace's objects from inside it.
pub(crate) fn dump(ctx: &mut DumpCtx<'_>, out: &mut Namespaces) -> Result<(), Error> {
    let pid = ctx.pid;
    let (mut ns, shm_data) = in_ns(ctx.ns, libc::CLONE_NEWIPC, || collect(pid))?;
    for (seg, content) in ns.shms.iter_mut().zip(shm_data) {
        seg.data = format!("ipcns-shm-{}.img", seg.shmid);
        ctx.img.write_file(&seg.data, &content)?;
    }
    ns.mqueues = posix_mqueues(ctx)?;
    ns.sysctls.sort_by_key(|s| SYSCTLS.iter().position(|p| *p == s.path));
    out.nsx_ipc = Some(ns);
    Ok(())
}

fn collect(pid: i32) -> Result<(NsxIpcns, Vec<Vec<u8>>), Error> {
    let mut ns = NsxIpcns::default();
    // sem: key semid perms nsems uid gid ...
    for r in table("sem")? {
        let id: i32 = num(&r, 1, "sem")?;
        let nsems: usize = num(&r, 3, "sem")?;
        let values = sysvipc::sem_getall(id, nsems).ctx(|| format!("pid {pid}: cannot read semaphore set {id}"))?;
        ns.sems.push(NsxSemSet {
            key: num(&r, 0, "sem")?,
            id,
            mode: mode(&r, "sem")?,
            uid: num(&r, 4, "sem")?,
            gid: num(&r, 5, "sem")?,
            values: values.into_iter().map(u32::from).collect(),
        });
    }
    // msg: key msqid perms cbytes qnum lspid lrpid uid gid ...
    for r in table("msg")? {
        let id: i32 = num(&r, 1, "msg")?;
        let qnum: usize = num(&r, 4, "msg")?;
        let qbytes = sysvipc::msg_qbytes(id).ctx(|| format!("pid {pid}: cannot read message queue {id}"))?;
        let mut messages = Vec::with_capacity(qnum);
        for n in 0..qnum {
            let m = sysvipc::msg_copy(id, n, qbytes.max(1) as usize)
                .ctx(|| format!("pid {pid}: cannot copy message {n} of queue {id} (msgrcv MSG_COPY)"))?;
            let Some((mtype, data)) = m else { break };
            messages.push(NsxMsg { mtype, data });
        }
        ns.queues.push(NsxMsgQueue {
            key: num(&r, 0, "msg")?,
            id,
            mode: mode(&r, "msg")?,
            uid: num(&r, 7, "msg")?,
            gid: num(&r, 8, "msg")?,
            qbytes,
            messages,
        });
    }
    // shm: key shmid perms size cpid lpid nattch uid gid ...; attached ones are sysvshm.rs's.
    let mut contents = Vec::new();
    for r in table("shm")? {
        let nattch: u64 = num(&r, 6, "shm")?;
        if nattch != 0 {
            continue;
        }
        let mut seg = SysvShm {
            key: num(&r, 0, "shm")?,
            shmid: num(&r, 1, "shm")?,
            size: num(&r, 3, "shm")?,
            mode: mode(&r, "shm")?,
            uid: num(&r, 7, "shm")?,
            gid: num(&r, 8, "shm")?,
            ..Default::default()
        };
        let mut content = vec![0u8; seg.size as usize];
        seg.huge_page_size = ferry_sys::objects::shm_read(seg.shmid, &mut content)
            .ctx(|| format!("pid {pid}: cannot read SysV shared memory id {}", seg.shmid))?;
        ns.shms.push(seg);
        contents.push(content);
    }
    for path in SYSCTLS {
        if let Ok(v) = std::fs::read_to_string(format!("/proc/sys/{path}")) {
            ns.sysctls.push(NsxSysctl { path: path.to_string(), value: v.trim().to_string() });
        }
    }
    Ok((ns, contents))
}

/// The POSIX message queues of the tree's ipc namespace, with their messages, from a helper
/// thread in it: their names, owners and modes from its mqueue file system, mounted in a
/// private mount namespace of the thread; their attributes and messages through `mq_open`.
/// A queue cannot be read without taking its messages off, so each is emptied with
/// `mq_receive` and filled again at once, in the order received (highest priority first,
/// oldest first within one), which gives the same queue back; this runs under the freeze,
/// where no process of the tree waits on the queue (ptrace's stop took it out of its wait).
fn posix_mqueues(ctx: &DumpCtx<'_>) -> Result<Vec<NsxPosixMq>, Error> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let pid = ctx.pid;
    in_ns(ctx.ns, libc::CLONE_NEWIPC, || {
        ferry_sys::nsctl::unshare(libc::CLONE_NEWNS).ctx(|| "cannot unshare a mount namespace".into())?;
        ferry_sys::nsctl::mount(c"none", c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)
            .ctx(|| "cannot make a private mount namespace".into())?;
        // (the mount shows the ipc namespace of the thread that makes it)
        ferry_sys::nsctl::mount(c"mqueue", c"/tmp", Some(c"mqueue"), 0, None)
            .ctx(|| format!("pid {pid}: cannot mount its ipc namespace's mqueue file system"))?;
        let mut names: Vec<String> = std::fs::read_dir("/tmp")
            .ctx(|| "cannot list the mqueue file system".into())?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let obj = || format!("POSIX message queue /{name} in the tree's ipc namespace");
            let path = format!("/tmp/{name}");
            let meta = std::fs::metadata(&path).ctx(|| format!("cannot stat {}", obj()))?;
            // "QSIZE:N NOTIFY:N SIGNO:N NOTIFY_PID:N": a process registered with mq_notify.
            let status = std::fs::read_to_string(&path).ctx(|| format!("cannot read {}", obj()))?;
            let notify_pid = status.split_whitespace().find_map(|w| w.strip_prefix("NOTIFY_PID:")).unwrap_or("0");
            if notify_pid != "0" {
                return Err(Error::Unsupported {
                    pid,
                    what: format!("{} with a notification registered by pid {notify_pid} (mq_notify)", obj()),
                });
            }
            let cname = std::ffi::CString::new(format!("/{name}"))
                .map_err(|_| Error::Invalid { object: obj(), what: "a name with a NUL byte".into() })?;
            let q = ferry_sys::posixmq::open(&cname, libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC, 0, None)
                .ctx(|| format!("cannot open {}", obj()))?;
            let attr =
                ferry_sys::posixmq::getattr(q.as_fd()).ctx(|| format!("cannot read the attributes of {}", obj()))?;
            let mut messages = Vec::with_capacity(attr.curmsgs.max(0) as usize);
            let mut failed = None;
            loop {
                match ferry_sys::posixmq::receive(q.as_fd(), attr.msgsize as usize) {
                    Ok(Some((data, prio))) => messages.push(NsxPosixMsg { prio, data }),
                    Ok(None) => break,
                    Err(e) => {
                        failed = Some(format!("cannot read a message: {e}"));
                        break;
                    }
                }
            }
            // Put every message taken back, even if reading the rest failed.
            let mut lost = 0;
            for m in &messages {
                if let Err(e) = ferry_sys::posixmq::send(q.as_fd(), &m.data, m.prio) {
                    lost += 1;
                    failed.get_or_insert(format!("cannot queue a message again: {e}"));
                }
            }
            if let Some(what) = failed {
                let what = if lost > 0 { format!("{what} ({lost} of its messages lost)") } else { what };
                return Err(Error::Invalid { object: obj(), what });
            }
            out.push(NsxPosixMq {
                name,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                maxmsg: attr.maxmsg,
                msgsize: attr.msgsize,
                messages,
            });
        }
        Ok(out)
    })
}

fn set_next_id(kind: &str, id: i32) -> Result<(), Error> {
    let p = format!("/proc/sys/kernel/{kind}_next_id");
    std::fs::write(&p, id.to_string()).ctx(|| format!("cannot write {p}"))
}

fn check_id(kind: &str, want: i32, got: i32) -> Result<(), Error> {
    if want != got {
        return Err(Error::Invalid {
            object: format!("SysV {kind} id {want}"),
            what: format!("recreated as id {got} ({kind}_next_id ignored)"),
        });
    }
    Ok(())
}

/// Restore: in the new ipc namespace (ferry's restoring thread is in it), limits first, then
/// every object with its id.
pub(crate) fn restore(ctx: &RestoreCtx<'_>, ns: &Namespaces, _h: &mut Handover) -> Result<(), Error> {
    let Some(ipc) = &ns.nsx_ipc else { return Ok(()) };
    for s in &ipc.sysctls {
        let p = format!("/proc/sys/{}", s.path);
        if std::fs::read_to_string(&p).unwrap_or_default().trim() != s.value {
            std::fs::write(&p, format!("{}\n", s.value)).ctx(|| format!("cannot set {p} to {}", s.value))?;
        }
    }
    let excl = libc::IPC_CREAT | libc::IPC_EXCL;
    for s in &ipc.sems {
        let obj = || format!("SysV semaphore set {} (key {:#x})", s.id, s.key);
        set_next_id("sem", s.id)?;
        let id =
            sysvipc::semget(s.key, s.values.len() as i32, excl | 0o600).ctx(|| format!("cannot create {}", obj()))?;
        check_id("sem", s.id, id)?;
        let vals: Vec<u16> = s.values.iter().map(|&v| v as u16).collect();
        sysvipc::sem_setall(id, &vals).ctx(|| format!("cannot set the values of {}", obj()))?;
        sysvipc::sem_set_owner(id, s.uid, s.gid, s.mode).ctx(|| format!("cannot set the owner of {}", obj()))?;
    }
    for q in &ipc.queues {
        let obj = || format!("SysV message queue {} (key {:#x})", q.id, q.key);
        set_next_id("msg", q.id)?;
        let id = sysvipc::msgget(q.key, excl | 0o600).ctx(|| format!("cannot create {}", obj()))?;
        check_id("msg", q.id, id)?;
        // The limit first: the messages must fit.
        sysvipc::msg_set_owner(id, 0, 0, 0o600, q.qbytes).ctx(|| format!("cannot set the size of {}", obj()))?;
        for m in &q.messages {
            sysvipc::msgsnd(id, m.mtype, &m.data).ctx(|| format!("cannot queue a message into {}", obj()))?;
        }
        sysvipc::msg_set_owner(id, q.uid, q.gid, q.mode, q.qbytes)
            .ctx(|| format!("cannot set the owner of {}", obj()))?;
    }
    for q in &ipc.mqueues {
        restore_posix_mqueue(q)?;
    }
    for s in &ipc.shms {
        let obj = || format!("SysV shared memory id {} (key {:#x})", s.shmid, s.key);
        let content = ctx.img.read_file(&s.data)?;
        if content.len() as u64 != s.size {
            return Err(Error::Invalid { object: obj(), what: format!("{} holds {} bytes", s.data, content.len()) });
        }
        set_next_id("shm", s.shmid)?;
        let huge = ferry_sys::objects::shm_huge_flags(s.huge_page_size);
        let id = ferry_sys::objects::shmget(s.key, s.size, excl | huge | 0o600).map_err(|e| match huge {
            0 => Error::Sys { object: format!("cannot create {}", obj()), source: e },
            _ => crate::state::sysvshm::no_huge_pages(&obj(), s, e),
        })?;
        check_id("shm", s.shmid, id)?;
        ferry_sys::objects::shm_write(id, &content).ctx(|| format!("cannot fill {}", obj()))?;
        ferry_sys::objects::shm_set_owner(id, s.uid, s.gid, s.mode)
            .ctx(|| format!("cannot set the owner of {}", obj()))?;
    }
    Ok(())
}

/// Make a POSIX message queue again in the calling thread's ipc namespace, with its
/// attributes, messages, owner and mode (after the namespace's limits: its size must fit them).
fn restore_posix_mqueue(q: &NsxPosixMq) -> Result<(), Error> {
    use std::os::fd::AsFd;
    let obj = || format!("POSIX message queue /{}", q.name);
    let name = std::ffi::CString::new(format!("/{}", q.name))
        .map_err(|_| Error::Invalid { object: obj(), what: "a name with a NUL byte".into() })?;
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC;
    let fd = ferry_sys::posixmq::open(&name, flags, 0o600, Some((q.maxmsg, q.msgsize)))
        .ctx(|| format!("cannot create {} ({} messages of {} bytes)", obj(), q.maxmsg, q.msgsize))?;
    for m in &q.messages {
        ferry_sys::posixmq::send(fd.as_fd(), &m.data, m.prio)
            .ctx(|| format!("cannot queue a message into {}", obj()))?;
    }
    let f = std::fs::File::from(fd);
    std::os::unix::fs::fchown(&f, Some(q.uid), Some(q.gid)).ctx(|| format!("cannot set the owner of {}", obj()))?;
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(q.mode)).ctx(|| format!("cannot set the mode of {}", obj()))
}

/// Run `f` in the ipc namespace of `root` (the tree's root): in ferry's thread when it is
/// ferry's own, else in a thread that joined it (state/sysvshm.rs reads the tree's attached
/// segments there).
pub fn in_tree_ipc<T: Send>(root: i32, f: impl FnOnce() -> Result<T, Error> + Send) -> Result<T, Error> {
    let path = format!("/proc/{root}/ns/ipc");
    let theirs = std::fs::read_link(&path).ctx(|| format!("cannot read link {path}"))?;
    if std::fs::read_link("/proc/self/ns/ipc").ok().as_ref() == Some(&theirs) {
        return f();
    }
    let ns = std::fs::File::open(&path).ctx(|| format!("cannot open {path}"))?;
    use std::os::fd::AsFd;
    in_ns(ns.as_fd(), libc::CLONE_NEWIPC, f)
}
