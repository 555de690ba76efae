//! SysV semaphore sets and message queues (`semctl`, `msgrcv(MSG_COPY)` ...), for the content of
//! an ipc namespace (ferry-engine's state/ipcns.rs). Calls act in the calling thread's ipc
//! namespace.

use crate::cvt_i;
use std::io;

/// `MSG_COPY` (linux/msg.h): msgrcv copies message number `msgtyp` without removing it.
pub const MSG_COPY: i32 = 0o40000;

/// `semget(2)`.
pub fn semget(key: i32, nsems: i32, flags: i32) -> io::Result<i32> {
    // SAFETY: plain integers.
    cvt_i(unsafe { libc::semget(key, nsems, flags) })
}

/// `semctl(GETALL)`: the values of the `nsems` semaphores of set `id`.
pub fn sem_getall(id: i32, nsems: usize) -> io::Result<Vec<u16>> {
    let mut vals = vec![0u16; nsems];
    // SAFETY: GETALL writes nsems unsigned shorts to the array passed as the semun argument.
    cvt_i(unsafe { libc::semctl(id, 0, libc::GETALL, vals.as_mut_ptr()) })?;
    Ok(vals)
}

/// `semctl(SETALL)`.
pub fn sem_setall(id: i32, vals: &[u16]) -> io::Result<()> {
    // SAFETY: SETALL reads as many unsigned shorts as the set has, which the caller created
    // with vals.len() semaphores.
    cvt_i(unsafe { libc::semctl(id, 0, libc::SETALL, vals.as_ptr()) }).map(drop)
}

/// `semctl(IPC_SET)`: owner, group and permission bits of a semaphore set.
pub fn sem_set_owner(id: i32, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
    // SAFETY: an all-zero semid_ds is a valid value.
    let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT fills the semid_ds passed as the semun argument.
    cvt_i(unsafe { libc::semctl(id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) })?;
    ds.sem_perm.uid = uid;
    ds.sem_perm.gid = gid;
    ds.sem_perm.mode = (mode & 0o777) as _;
    // SAFETY: IPC_SET reads the filled semid_ds.
    cvt_i(unsafe { libc::semctl(id, 0, libc::IPC_SET, &mut ds as *mut libc::semid_ds) }).map(drop)
}

/// `msgget(2)`.
pub fn msgget(key: i32, flags: i32) -> io::Result<i32> {
    // SAFETY: plain integers.
    cvt_i(unsafe { libc::msgget(key, flags) })
}

/// `msgrcv(IPC_NOWAIT | MSG_COPY)`: a copy of message number `n` (from 0) of queue `id`, with
/// its type, without taking it off the queue; None past the last one. `max` bounds its size.
pub fn msg_copy(id: i32, n: usize, max: usize) -> io::Result<Option<(i64, Vec<u8>)>> {
    let mut buf = vec![0u8; 8 + max];
    // SAFETY: buf holds a long (mtype) followed by `max` bytes, as msgrcv requires.
    let r = unsafe {
        libc::msgrcv(id, buf.as_mut_ptr().cast::<libc::c_void>(), max, n as libc::c_long, libc::IPC_NOWAIT | MSG_COPY)
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENOMSG) { Ok(None) } else { Err(e) };
    }
    let mut t = [0u8; 8];
    t.copy_from_slice(&buf[..8]);
    buf.truncate(8 + r as usize);
    Ok(Some((i64::from_ne_bytes(t), buf.split_off(8))))
}

/// `msgsnd(IPC_NOWAIT)` one message of type `mtype`.
pub fn msgsnd(id: i32, mtype: i64, data: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(8 + data.len());
    buf.extend_from_slice(&mtype.to_ne_bytes());
    buf.extend_from_slice(data);
    // SAFETY: buf holds a long followed by data.len() bytes.
    cvt_i(unsafe { libc::msgsnd(id, buf.as_ptr().cast::<libc::c_void>(), data.len(), libc::IPC_NOWAIT) }).map(drop)
}

/// `msgctl(IPC_SET)`: owner, group, permission bits and byte limit of a queue.
pub fn msg_set_owner(id: i32, uid: u32, gid: u32, mode: u32, qbytes: u64) -> io::Result<()> {
    // SAFETY: an all-zero msqid_ds is a valid value.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a valid out-pointer.
    cvt_i(unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) })?;
    ds.msg_perm.uid = uid;
    ds.msg_perm.gid = gid;
    ds.msg_perm.mode = (mode & 0o777) as _;
    if qbytes != 0 {
        ds.msg_qbytes = qbytes as _;
    }
    // SAFETY: ds is a valid, filled msqid_ds.
    cvt_i(unsafe { libc::msgctl(id, libc::IPC_SET, &mut ds) }).map(drop)
}

/// `msgctl(IPC_STAT)`: the queue's byte limit.
pub fn msg_qbytes(id: i32) -> io::Result<u64> {
    // SAFETY: an all-zero msqid_ds is a valid value.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a valid out-pointer.
    cvt_i(unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) })?;
    Ok(ds.msg_qbytes as u64)
}
