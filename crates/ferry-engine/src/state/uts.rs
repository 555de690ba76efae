//! A uts namespace's host and domain name (a namespace module, see state/namespaces.rs).

use super::nsctx::{DumpCtx, Handover, RestoreCtx};
use super::nsfile::in_ns;
use crate::error::{Ctx, Error};
use ferry_image::{Namespaces, UtsNs};

/// Read the names from inside the tree's uts namespace.
pub(crate) fn dump(ctx: &mut DumpCtx<'_>, out: &mut Namespaces) -> Result<(), Error> {
    let pid = ctx.pid;
    let (host, domain) = in_ns(ctx.ns, libc::CLONE_NEWUTS, || {
        ferry_sys::ns::uts_names().ctx(|| format!("pid {pid}: cannot read its host name (uname)"))
    })?;
    out.uts = Some(UtsNs {
        hostname: String::from_utf8_lossy(&host).into_owned(),
        domainname: String::from_utf8_lossy(&domain).into_owned(),
    });
    Ok(())
}

/// Set them in the new uts namespace (ferry's restoring thread is in it).
pub(crate) fn restore(_ctx: &RestoreCtx<'_>, ns: &Namespaces, _h: &mut Handover) -> Result<(), Error> {
    let Some(u) = &ns.uts else { return Ok(()) };
    ferry_sys::ns::sethostname(u.hostname.as_bytes()).ctx(|| format!("cannot set the host name {:?}", u.hostname))?;
    ferry_sys::ns::setdomainname(u.domainname.as_bytes())
        .ctx(|| format!("cannot set the domain name {:?}", u.domainname))?;
    Ok(())
}
