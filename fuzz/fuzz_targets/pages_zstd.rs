//! The zstd stream of a compressed page file (`dump --compress`: what follows its header page),
//! as restore decompresses it (`state::memory::decompress_pages`): whatever the stream claims,
//! no more than the bound (where the process's last page run ends) may come out of it.

#![no_main]

use libfuzzer_sys::fuzz_target;

const LIMIT: u64 = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    match ferry_engine::state::memory::decompress_pages(data, &mut out, LIMIT, &|| "pages-1.img".into()) {
        Ok(n) => assert!(n == out.len() as u64 && n <= LIMIT, "{n} bytes out, {} written", out.len()),
        Err(e) => {
            assert!(out.len() as u64 <= LIMIT, "{} bytes written before the error", out.len());
            let _ = e.to_string();
        }
    }
});
