//! The destination's receive loop (`ferry serve`) against a peer that holds a trusted key and
//! sends bad messages: each is refused with an error naming what is wrong, never a panic or an
//! arithmetic wrap. The cases were found while fuzzing (the `frame` target in fuzz/, see
//! docs/reliability.md). No root, no processes: a loopback connection and a scratch directory.

use ferry::migrate::channel::{Auth, Secure};
use ferry::migrate::kind;
use ferry::migrate::serve::{receive, receive_in_place, Limits};
use ferry_image::{encode_record, Inventory, Mm, PageRun, Process, RecordKind, Thread, Vma, VmaKind};
use std::io::Read;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

const PAGE: u64 = 4096;

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(what: &str) -> Scratch {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("ferry-wire-{what}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    Scratch(dir)
}

fn msg(k: u8, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![k];
    m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    m.extend_from_slice(payload);
    m
}

/// What a source sends for one file of the image.
fn file(id: u32, name: &str, data: &[u8]) -> Vec<u8> {
    let mut out = msg(kind::FILE_BEGIN, &[&id.to_le_bytes()[..], name.as_bytes()].concat());
    out.extend(msg(kind::FILE_DATA, &[&id.to_le_bytes()[..], data].concat()));
    let end =
        [&id.to_le_bytes()[..], &(data.len() as u64).to_le_bytes(), &crc32fast::hash(data).to_le_bytes()].concat();
    out.extend(msg(kind::FILE_END, &end));
    out
}

/// Pre-copy: pages of host pid `host` at `addr`.
fn pages(host: u32, addr: u64, n: usize) -> Vec<u8> {
    msg(kind::PAGES, &[&host.to_le_bytes()[..], &addr.to_le_bytes(), &vec![0x5a; n * PAGE as usize]].concat())
}

/// Pre-copy: the image of `pid` leaves out `[start, end)`, sent as PAGES of `host`.
fn keep(host: u32, pid: u32, start: u64, end: u64) -> Vec<u8> {
    msg(kind::KEEP, &[&host.to_le_bytes()[..], &pid.to_le_bytes(), &start.to_le_bytes(), &end.to_le_bytes()].concat())
}

/// An image of one process, pid 100, with one anonymous mapping and `runs`; its files as a
/// source sends them, then `keeps`, then COMMIT.
fn image_stream(runs: Vec<PageRun>, pages_bytes: u64, pre: &[u8], keeps: &[u8]) -> Vec<u8> {
    let p = Process {
        pid: 100,
        threads: vec![Thread { tid: 100, ..Default::default() }],
        mm: Some(Mm {
            vmas: vec![Vma { start: 0x10000, end: 0x20000, kind: VmaKind::Anon as i32, runs, ..Default::default() }],
            pages_bytes,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut page_file = ferry_image::pages_header();
    page_file.extend_from_slice(&[0x11; PAGE as usize]);
    let mut out = pre.to_vec();
    out.extend(file(0, "process-100.img", &encode_record(RecordKind::Process, &p)));
    out.extend(file(1, "pages-100.img", &page_file));
    out.extend_from_slice(keeps);
    let inv = Inventory {
        pids: vec![100],
        root_pid: 100,
        files: ["process-100.img", "pages-100.img"]
            .iter()
            .map(|n| ferry_image::FileDigest { name: n.to_string(), ..Default::default() })
            .collect(),
        ..Default::default()
    };
    out.extend(msg(kind::COMMIT, &encode_record(RecordKind::Inventory, &inv)));
    out
}

/// Send `plain` over an authenticated channel to `receive` into `dir`; its result.
fn receive_stream(plain: Vec<u8>, dir: &Path) -> anyhow::Result<()> {
    receive_stream_with(plain, dir, &Limits::default(), false)
}

/// [`receive_stream`] with `limits`, pages put in place (in this process) if `in_place`.
fn receive_stream_with(plain: Vec<u8>, dir: &Path, limits: &Limits, in_place: bool) -> anyhow::Result<()> {
    let keys = scratch("keys");
    ferry::migrate::keygen(&keys.0).expect("keygen");
    let auth = Auth::load(&keys.0).expect("keys");
    let listener = TcpListener::bind("127.0.0.1:0").expect("loopback listener");
    let client = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    for s in [&client, &server] {
        s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    }
    let peer_auth = Auth::load(&keys.0).expect("keys");
    let peer = std::thread::spawn(move || {
        let mut sec = Secure::handshake(client, &peer_auth).expect("handshake");
        let _ = sec.write(&plain).and_then(|()| sec.flush());
        let mut raw = sec.socket().try_clone().expect("socket");
        let _ = raw.shutdown(Shutdown::Write);
        let mut buf = [0u8; 4096];
        while matches!(raw.read(&mut buf), Ok(n) if n > 0) {}
    });
    let mut sec = Secure::accept(server, &auth).expect("handshake");
    let r = match in_place {
        true => receive_in_place(&mut sec, limits, dir),
        false => receive(&mut sec, limits, dir),
    };
    drop(sec);
    peer.join().expect("peer");
    r
}

fn expect_refused(r: anyhow::Result<()>, what: &str) {
    match r {
        Ok(()) => panic!("accepted; expected an error mentioning {what:?}"),
        Err(e) => assert!(format!("{e:#}").contains(what), "error {e:#} does not mention {what:?}"),
    }
}

#[test]
fn the_receive_loop_takes_a_sound_pre_copy_image() {
    // (the cases below differ from this one by one field)
    let dir = scratch("sound");
    let stage = dir.0.join("stage");
    let runs = vec![PageRun { addr: 0x10000, nr_pages: 1, offset: PAGE }];
    receive_stream(image_stream(runs, PAGE, &pages(7, 0x11000, 1), &keep(7, 100, 0x11000, 0x12000)), &stage)
        .expect("a sound image is received");
    let raw = std::fs::read(stage.join("process-100.img")).expect("record");
    let p: Process = ferry_image::decode_record("p", RecordKind::Process, &raw).expect("record decodes");
    let runs = &p.mm.expect("mm").vmas[0].runs;
    // the kept page is read from its pre-copied copy, right after the store's header page
    assert_eq!(runs[1], PageRun { addr: 0x11000, nr_pages: 1, offset: PAGE });
}

#[test]
fn pre_copy_pages_of_more_processes_than_allowed_are_refused_in_place_too() {
    // Pages put in place (as `ferry serve` does) opened no staging file, which was what the
    // limit on processes counted: any number of processes got through.
    let limits = Limits { max_processes: 2, ..Limits::default() };
    // (high addresses, free in this test process, 2 MiB apart)
    let plain: Vec<u8> = (0..4u32).flat_map(|h| pages(h, 0x7e00_0000_0000 + u64::from(h) * (2 << 20), 1)).collect();
    for in_place in [false, true] {
        let dir = scratch(&format!("hosts-{in_place}"));
        match receive_stream_with(plain.clone(), &dir.0.join("stage"), &limits, in_place) {
            Ok(()) => panic!("in place {in_place}: accepted"),
            Err(e) => {
                assert!(format!("{e:#}").contains("pages of more than 2 processes"), "in place {in_place}: {e:#}")
            }
        }
    }
}

#[test]
fn pre_copy_pages_past_the_end_of_the_address_space_are_refused() {
    // The index of the page store added addr + i * 4096 unchecked (an overflow panic with
    // overflow checks, as the frame target runs, a wrap to page 0 without).
    let dir = scratch("pages-top");
    expect_refused(receive_stream(pages(7, u64::MAX - PAGE + 1, 2), &dir.0.join("stage")), "past the end");
}

#[test]
fn a_kept_page_moving_a_run_offset_past_u64_is_refused() {
    // The final round's page runs move by where its page file lands in the pre-copy store:
    // a record whose run offset is near 2^64 wrapped to a small, valid-looking offset.
    let dir = scratch("offset-top");
    let runs = vec![PageRun { addr: 0x10000, nr_pages: 1, offset: u64::MAX - PAGE + 1 }];
    let r = receive_stream(
        image_stream(runs, PAGE, &pages(7, 0x11000, 1), &keep(7, 100, 0x11000, 0x12000)),
        &dir.0.join("stage"),
    );
    expect_refused(r, "offset is out of range");
}

#[test]
fn a_kept_page_after_a_run_of_absurd_length_does_not_overflow() {
    // A run whose end is beyond 2^64, and pages_bytes at the top: filling a kept page after
    // them overflowed (a panic with overflow checks). The page gets a run of its own, which
    // restore's checks then refuse with the rest of the record.
    let dir = scratch("absurd-run");
    let stage = dir.0.join("stage");
    let runs = vec![PageRun { addr: 0x10000, nr_pages: (1 << 52) + 1, offset: PAGE }];
    receive_stream(image_stream(runs, u64::MAX, &pages(7, 0x11000, 1), &keep(7, 100, 0x11000, 0x12000)), &stage)
        .expect("received (the record is refused later, by restore's checks)");
    let raw = std::fs::read(stage.join("process-100.img")).expect("record");
    let p: Process = ferry_image::decode_record("p", RecordKind::Process, &raw).expect("record decodes");
    let mm = p.mm.expect("mm");
    assert_eq!(mm.vmas[0].runs.len(), 2, "{:?}", mm.vmas[0].runs);
    assert_eq!(mm.pages_bytes, u64::MAX);
}
