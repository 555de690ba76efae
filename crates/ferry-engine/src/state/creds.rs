//! Credentials: uids, gids, supplementary groups, capability sets (inheritable, permitted,
//! effective, bounding, ambient), securebits and no_new_privs.
//!
//! They are applied last, by injected syscalls, because dropping privileges earlier would stop
//! the restored process from doing the privileged parts of its own restore (PR_SET_MM_MAP,
//! opening files). The order follows the kernel's rules: bounding set and securebits while
//! still privileged, then gids before uids (KEEP_CAPS holds the permitted set across the uid
//! change), then capset, then ambient capabilities, then no_new_privs.

use crate::error::{Ctx, Error};
use crate::inject::Injector;
use ferry_image::{Creds, Process};
use ferry_proc::Status;
use ferry_sys::consts::nr;
use ferry_sys::process::vm_write;

const PR_CAPBSET_DROP: u64 = 24;
const PR_GET_SECUREBITS: u64 = 27;
const PR_SET_SECUREBITS: u64 = 28;
const PR_SET_KEEPCAPS: u64 = 8;
const PR_SET_NO_NEW_PRIVS: u64 = 38;
const PR_CAP_AMBIENT: u64 = 47;
const PR_CAP_AMBIENT_RAISE: u64 = 2;
const SECBIT_KEEP_CAPS: u32 = 1 << 4;
const CAP_VERSION_3: u32 = 0x2008_0522;

/// Collect credentials from /proc status plus an injected PR_GET_SECUREBITS.
pub fn collect(inj: &Injector, st: &Status, p: &mut Process) -> Result<(), Error> {
    let pid = inj.pid();
    let securebits = inj
        .call(nr::PRCTL, &[PR_GET_SECUREBITS, 0, 0, 0, 0])
        .ctx(|| format!("pid {pid}: cannot read securebits"))? as u32;
    let mut c = Creds {
        uids: st.uid.to_vec(),
        gids: st.gid.to_vec(),
        groups: st.groups.clone(),
        cap_inh: st.cap_inh,
        cap_prm: st.cap_prm,
        cap_eff: st.cap_eff,
        cap_bnd: st.cap_bnd,
        cap_amb: st.cap_amb,
        securebits,
        no_new_privs: st.no_new_privs,
    };
    // (ids as seen inside its user namespace: restore sets them from inside)
    crate::state::userns::creds_inside(pid, &mut c)?;
    p.creds = Some(c);
    Ok(())
}

fn same(c: &Creds, now: &Status) -> bool {
    c.uids == now.uid
        && c.gids == now.gid
        && c.groups == now.groups
        && c.cap_inh == now.cap_inh
        && c.cap_prm == now.cap_prm
        && c.cap_eff == now.cap_eff
        && c.cap_bnd == now.cap_bnd
        && c.cap_amb == now.cap_amb
}

/// Apply the saved credentials to the restored process (`now` is its current status).
pub fn restore(inj: &Injector, scratch: u64, c: &Creds, now: &Status) -> Result<(), Error> {
    let pid = inj.pid();
    let step = |what: &'static str| move || format!("pid {pid}: cannot restore credentials ({what})");
    if c.uids.len() != 4 || c.gids.len() != 4 {
        return Err(Error::Invalid { object: format!("pid {pid}"), what: "credentials record is malformed".into() });
    }
    if !same(c, now) {
        for cap in 0..64u64 {
            if now.cap_bnd & (1 << cap) != 0 && c.cap_bnd & (1 << cap) == 0 {
                inj.call(nr::PRCTL, &[PR_CAPBSET_DROP, cap, 0, 0, 0]).ctx(step("bounding set"))?;
            }
        }
        let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
        vm_write(pid, scratch, &groups).ctx(step("groups"))?;
        inj.call(nr::SETGROUPS, &[c.groups.len() as u64, scratch]).ctx(step("setgroups"))?;
        inj.call(nr::PRCTL, &[PR_SET_SECUREBITS, (c.securebits | SECBIT_KEEP_CAPS) as u64, 0, 0, 0])
            .ctx(step("securebits"))?;
        inj.call(nr::SETRESGID, &[c.gids[0] as u64, c.gids[1] as u64, c.gids[2] as u64]).ctx(step("setresgid"))?;
        inj.call(nr::SETFSGID, &[c.gids[3] as u64]).ctx(step("setfsgid"))?;
        inj.call(nr::SETRESUID, &[c.uids[0] as u64, c.uids[1] as u64, c.uids[2] as u64]).ctx(step("setresuid"))?;
        inj.call(nr::SETFSUID, &[c.uids[3] as u64]).ctx(step("setfsuid"))?;
        let mut data = Vec::with_capacity(32);
        data.extend_from_slice(&CAP_VERSION_3.to_le_bytes());
        data.extend_from_slice(&0i32.to_le_bytes());
        for half in 0..2 {
            let sh = 32 * half;
            data.extend_from_slice(&((c.cap_eff >> sh) as u32).to_le_bytes());
            data.extend_from_slice(&((c.cap_prm >> sh) as u32).to_le_bytes());
            data.extend_from_slice(&((c.cap_inh >> sh) as u32).to_le_bytes());
        }
        vm_write(pid, scratch, &data).ctx(step("capset data"))?;
        inj.call(nr::CAPSET, &[scratch, scratch + 8]).ctx(step("capset"))?;
        for cap in 0..64u64 {
            if c.cap_amb & (1 << cap) != 0 {
                inj.call(nr::PRCTL, &[PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0]).ctx(step("ambient"))?;
            }
        }
        if c.securebits & SECBIT_KEEP_CAPS == 0 {
            inj.call(nr::PRCTL, &[PR_SET_KEEPCAPS, 0, 0, 0, 0]).ctx(step("keepcaps"))?;
        }
    }
    if c.no_new_privs {
        inj.call(nr::PRCTL, &[PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0]).ctx(step("no_new_privs"))?;
    }
    Ok(())
}
