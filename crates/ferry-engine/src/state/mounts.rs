//! A mount namespace's mount tree (a namespace module, see state/namespaces.rs).

use super::namespaces::{DumpCtx, Handover, RestoreCtx};
use crate::error::Error;
use ferry_image::Namespaces;

/// Mounts the root process of a new pid namespace makes itself.
#[derive(Debug, Default)]
pub struct Deferred {}

pub(crate) fn dump(ctx: &mut DumpCtx<'_>, _out: &mut Namespaces) -> Result<(), Error> {
    Err(Error::Unsupported { pid: ctx.pid, what: "a process in its own mount namespace".into() })
}

pub(crate) fn restore(_ctx: &RestoreCtx<'_>, _ns: &Namespaces, _h: &mut Handover) -> Result<(), Error> {
    Err(Error::Invalid { object: "mount namespace".into(), what: "not recreated yet".into() })
}
