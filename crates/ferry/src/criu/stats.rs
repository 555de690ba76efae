//! CRIU's statistics files, `stats-dump` and `stats-restore`: what CRIU writes in its work
//! directory after a dump or a restore, and what Podman reads for `container checkpoint
//! --print-stats` / `container restore --print-stats` (through go-criu's `stats` package). The
//! messages are CRIU's `images/stats.proto` (proto2, same wire numbers), filled with ferry's
//! own figures; the file is a CRIU "service" image: two little-endian magics
//! (`IMG_SERVICE_MAGIC`, `STATS_MAGIC`), the message's length (u32), the message.
//!
//! What ferry's figures mean in CRIU's fields (docs/criu-compat.md):
//! - dump: `freezing_time` from the first process seized to all frozen; `frozen_time` the time
//!   the tree was frozen (with the copy-on-write snapshot of an RPC dump, until it ran again);
//!   `memdump_time` reading the pages and writing them to the image (one pass in ferry);
//!   `memwrite_time` committing the image (fsync, rename); `pages_scanned` the pages of every
//!   mapping looked at; `pages_written` the pages in the image less `pages_skipped_parent`,
//!   those whose copy is the parent pre-dump's (`parent_img`, not read again); `pages_lazy` 0
//!   (no lazy pages through the RPC). Times in microseconds.
//! - restore: `forking_time` from the start until every process exists, `restore_time` the
//!   whole restore; `pages_restored` the pages of the image's page files; `pages_compared` and
//!   `pages_skipped_cow` 0.

use anyhow::{Context, Result};
use prost::Message;
use std::path::Path;
use std::time::Duration;

/// `IMG_SERVICE_MAGIC` (CRIU's criu/include/magic.h).
pub const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
/// `STATS_MAGIC`.
pub const STATS_MAGIC: u32 = 0x5709_3306;

/// `dump_stats_entry`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DumpStatsEntry {
    #[prost(uint32, required, tag = "1")]
    pub freezing_time: u32,
    #[prost(uint32, required, tag = "2")]
    pub frozen_time: u32,
    #[prost(uint32, required, tag = "3")]
    pub memdump_time: u32,
    #[prost(uint32, required, tag = "4")]
    pub memwrite_time: u32,
    #[prost(uint64, required, tag = "5")]
    pub pages_scanned: u64,
    #[prost(uint64, required, tag = "6")]
    pub pages_skipped_parent: u64,
    #[prost(uint64, required, tag = "7")]
    pub pages_written: u64,
    #[prost(uint32, optional, tag = "8")]
    pub irmap_resolve: Option<u32>,
    #[prost(uint64, required, tag = "9")]
    pub pages_lazy: u64,
    #[prost(uint64, optional, tag = "10")]
    pub page_pipes: Option<u64>,
    #[prost(uint64, optional, tag = "11")]
    pub page_pipe_bufs: Option<u64>,
    #[prost(uint64, optional, tag = "12")]
    pub shpages_scanned: Option<u64>,
    #[prost(uint64, optional, tag = "13")]
    pub shpages_skipped_parent: Option<u64>,
    #[prost(uint64, optional, tag = "14")]
    pub shpages_written: Option<u64>,
}

/// `restore_stats_entry`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RestoreStatsEntry {
    #[prost(uint64, required, tag = "1")]
    pub pages_compared: u64,
    #[prost(uint64, required, tag = "2")]
    pub pages_skipped_cow: u64,
    #[prost(uint32, required, tag = "3")]
    pub forking_time: u32,
    #[prost(uint32, required, tag = "4")]
    pub restore_time: u32,
    #[prost(uint64, optional, tag = "5")]
    pub pages_restored: Option<u64>,
}

/// `stats_entry`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatsEntry {
    #[prost(message, optional, tag = "1")]
    pub dump: Option<DumpStatsEntry>,
    #[prost(message, optional, tag = "2")]
    pub restore: Option<RestoreStatsEntry>,
}

/// Microseconds, as CRIU's u32 fields (saturating).
pub fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// The file's bytes: the two magics, the length, the message.
pub fn encode(entry: &StatsEntry) -> Vec<u8> {
    let msg = entry.encode_to_vec();
    let mut out = Vec::with_capacity(12 + msg.len());
    out.extend_from_slice(&IMG_SERVICE_MAGIC.to_le_bytes());
    out.extend_from_slice(&STATS_MAGIC.to_le_bytes());
    out.extend_from_slice(&(msg.len() as u32).to_le_bytes());
    out.extend_from_slice(&msg);
    out
}

/// Read a stats file's bytes back (for tests and tools), or None if they are not one.
pub fn decode(bytes: &[u8]) -> Option<StatsEntry> {
    let word = |i: usize| Some(u32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?));
    if word(0)? != IMG_SERVICE_MAGIC || word(4)? != STATS_MAGIC {
        return None;
    }
    let len = word(8)? as usize;
    StatsEntry::decode(bytes.get(12..12usize.checked_add(len)?)?).ok()
}

/// Write `stats-NAME` (`dump` or `restore`) in `dir` (written aside, then renamed: Podman may
/// read it at once).
pub fn write(dir: &Path, name: &str, entry: &StatsEntry) -> Result<()> {
    let path = dir.join(format!("stats-{name}"));
    let tmp = dir.join(format!(".stats-{name}.tmp"));
    std::fs::write(&tmp, encode(entry)).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_criu_header() {
        let e = StatsEntry {
            dump: Some(DumpStatsEntry { frozen_time: 1234, pages_written: 7, ..Default::default() }),
            restore: None,
        };
        let b = encode(&e);
        assert_eq!(&b[..8], &[0x40, 0x59, 0x10, 0x55, 0x06, 0x33, 0x09, 0x57]);
        assert_eq!(decode(&b), Some(e));
        assert_eq!(decode(&b[..10]), None);
        assert_eq!(decode(&[0u8; 16]), None);
    }
}
