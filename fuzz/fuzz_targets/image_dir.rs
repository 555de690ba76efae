//! A whole image directory, as `ferry inspect` prints it (text and JSON) and as `ferry restore`
//! opens it before it creates a single process (`ferry_engine::restore::open_verified`): the
//! inventory, every file's size and checksum, every process record, the page files' headers,
//! and the sanity checks on the records.
//!
//! Input: one flag byte, then files, each `name length (u8), name, data length (u32 LE), data`.
//! Flag bit 0: fix each record file's header (payload length and CRC-32); bit 1: fix the
//! inventory's size and checksum of every file it lists that is there. The fuzzer cannot forge
//! checksums: with the flags set it reaches the decoders and the validator behind them, with
//! them clear the checks that refuse a corrupted image. `scripts/fuzz.sh` seeds it from real
//! images.

#![no_main]

use ferry_image::{Inventory, RecordKind, HEADER_LEN, RECORD_MAGIC};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use std::path::PathBuf;
use std::sync::OnceLock;

/// A directory of this process's own (several fuzzers may run at once).
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
        PathBuf::from(format!("{base}/ferry-fuzz-image-dir-{}", std::process::id()))
    })
}

fn parse(mut rest: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    while let Some((&n, r)) = rest.split_first() {
        let n = n as usize;
        let (Some(name), Some(len)) = (r.get(..n), r.get(n..n + 4)) else { break };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let r = &r[n + 4..];
        let data = &r[..len.min(r.len())];
        rest = &r[data.len()..];
        let name = String::from_utf8_lossy(name).into_owned();
        // Only plain names the file system takes: the image is one directory.
        if name.is_empty() || name.len() > 255 || name == "." || name == ".." || name.contains(['/', '\0']) {
            continue;
        }
        files.retain(|(n, _)| *n != name);
        files.push((name, data.to_vec()));
    }
    files
}

fn fix_header(data: &mut [u8]) {
    if data.len() >= HEADER_LEN && data[..8] == RECORD_MAGIC {
        let len = (data.len() - HEADER_LEN) as u64;
        let crc = crc32fast::hash(&data[HEADER_LEN..]);
        data[16..24].copy_from_slice(&len.to_le_bytes());
        data[24..28].copy_from_slice(&crc.to_le_bytes());
    }
}

fn fix_inventory(files: &mut [(String, Vec<u8>)]) {
    let Some(at) = files.iter().position(|(n, _)| n == ferry_image::INVENTORY) else { return };
    let Some(Ok(mut inv)) = files[at].1.get(HEADER_LEN..).map(Inventory::decode) else { return };
    for d in inv.files.iter_mut() {
        if let Some((_, data)) = files.iter().find(|(n, _)| *n == d.name) {
            (d.size, d.crc32) = (data.len() as u64, crc32fast::hash(data));
            // (no BLAKE3 digest: the reader then checks the CRC-32 alone, as for images
            // written before digests; computing it here would only slow the fuzzer)
            d.blake3.clear();
        }
    }
    let mut bytes = ferry_image::encode_record(RecordKind::Inventory, &inv);
    // keep the version the input had (older formats are read too)
    bytes[8..12].copy_from_slice(&files[at].1[8..12]);
    files[at].1 = bytes;
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let mut files = parse(rest);
    if flags & 1 != 0 {
        for (_, d) in files.iter_mut() {
            fix_header(d);
        }
    }
    if flags & 2 != 0 {
        fix_inventory(&mut files);
    }
    let dir = scratch();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("scratch directory");
    for (name, d) in &files {
        std::fs::write(dir.join(name), d).expect("scratch file");
    }
    // `ferry inspect` reads the image without restore's checks (scripts/fuzz.sh closes the
    // fuzzer's stdout: -close_fd_mask=1)
    let _ = ferry::inspect::run(dir, false, None);
    let _ = ferry::inspect::run(dir, true, None);
    match ferry_engine::restore::open_verified(dir) {
        Ok((img, procs)) => {
            assert_eq!(procs.len(), img.inventory().pids.len());
            for p in &procs {
                let _ = serde_json::to_string(p);
                if let Some(mm) = &p.mm {
                    let _ = ferry_engine::state::memory::choose_trampoline(&mm.vmas);
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
