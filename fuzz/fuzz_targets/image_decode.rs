//! One record file of an image, as `ferry restore` and `ferry inspect` read it: the header
//! checks, the protobuf payload, the sanity checks on a process record, its JSON rendering.
//!
//! The fuzzer cannot forge a CRC-32, so the payload after the 32-byte header is also decoded
//! as if the header were right: that reaches the protobuf decoder and the validator with any
//! bytes, while the first pass covers the header checks.

#![no_main]

use ferry_image::{Inventory, Process, RecordKind, HEADER_LEN};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn check_process(p: &Process) {
    let _ = serde_json::to_string(p);
    if let Err(e) = ferry_engine::validate::processes(std::slice::from_ref(p)) {
        let _ = e.to_string();
    }
    // What restore (and a migration's destination) re-encodes must decode to the same record.
    let again = Process::decode(p.encode_to_vec().as_slice());
    assert_eq!(again.as_ref().ok(), Some(p), "a decoded process record does not survive re-encoding");
}

fn check_inventory(inv: &Inventory) {
    let _ = serde_json::to_string(inv);
    let again = Inventory::decode(inv.encode_to_vec().as_slice());
    assert_eq!(again.as_ref().ok(), Some(inv), "a decoded inventory does not survive re-encoding");
}

fuzz_target!(|data: &[u8]| {
    match ferry_image::decode_record::<Process>("process-1.img", RecordKind::Process, data) {
        Ok(p) => check_process(&p),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match ferry_image::decode_record::<Inventory>("inventory.img", RecordKind::Inventory, data) {
        Ok(inv) => check_inventory(&inv),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if ferry_image::check_pages_header("pages-1.img", data).is_ok() {
        let _ = ferry_image::pages_compressed(data);
    }
    if let Some(payload) = data.get(HEADER_LEN..) {
        if let Ok(p) = Process::decode(payload) {
            check_process(&p);
        }
        if let Ok(inv) = Inventory::decode(payload) {
            check_inventory(&inv);
        }
    }
});
