//! The address space: every mapping with its protection and backing, the pages that only
//! memory holds, the mm fields (brk, arg/env bounds, auxv, exe link) and the vDSO.
//!
//! Primitives, a file each. The pipelines compose them from above (dump.rs, with
//! state/snapshot.rs for `dump -R`; precopy.rs and postcopy.rs; restore.rs, with state/cow.rs),
//! and none of these files imports a pipeline: what a pipeline decides comes down as data (the
//! pages a pre-copy round sent or post-copy sends later, the snapshot to read from, the ranges
//! the restored processes premapped themselves).
//!
//! Dump. [`scan`] (scan.rs) describes the mappings and the mm fields, and finds per mapping the
//! resident pages that go into the image: only pages the kernel reports present or swapped
//! (PAGEMAP_SCAN, one ioctl per mapping instead of 8 bytes of pagemap per page), clean file
//! pages and the shared zero page skipped by category. [`sharing`] finds the pages a child
//! shares copy-on-write with its parent (stored once, with the parent). [`dump_pages`]
//! (pages_out.rs) reads the pages out of the process, or of its snapshot, drops those that read
//! back as all zeros and writes the rest as page runs, plain or compressed.
//!
//! Restore. [`prepare`] and [`restore`] (rebuild.rs) open the files the mappings need, map
//! everything at its old address with injected `mmap(MAP_FIXED)`, then apply the final
//! protections, flags and mm fields. Where each stored page goes is pages_in.rs: the process
//! reads its own pages with injected `preadv` calls from the page file (one copy, out of the
//! page cache, none of it through ferry's memory); shared memory goes into the memfd that
//! recreates it; memory shared copy-on-write (state/cow.rs decides which) and memory received
//! in place (state/premapped.rs) are premapped layer by layer by the process itself.

mod held;
mod pages_in;
mod pages_out;
mod rebuild;
mod scan;
pub mod sharing;

pub use held::Holds;
pub(crate) use pages_in::apply_here;
pub use pages_in::{decompress_pages, Layer, Premapped, Tracer};
pub use pages_out::{dump_pages, set_page_compression, FrozenMemory, Held, PagesFrom};
pub(crate) use pages_out::{page_compression, zero_runs};
pub(crate) use rebuild::TASK_SIZE;
pub use rebuild::{choose_trampoline, own_vdso, prepare, restore, Prepared, Trampoline, TRAMPOLINE_PAGES};
pub(crate) use scan::{check_flags, regions_to_store, resident, subtract, vm_flags};
pub use scan::{collect_mm, scan};
pub use sharing::Sharing;
