//! CRIU's RPC with a veth whose host end is outside the tree: `criu_opts.veths`
//! (`criu_veth_pair {if_in, if_out}`, CRIU's older form) at DUMP and the `external`
//! `veth[IN]:OUT@BR` string at RESTORE, as a client such as a runtime sends them, with an
//! established TCP connection to a peer on the node (`tcp_established`): the notifications a
//! runtime waits for around the network (network-lock at dump, post-restore then
//! network-unlock at restore), and CRIU's statistics files in the work directory.
//!
//! The job is `tcpstream netpeer` under `ferry run --pidns --netns --veth` in a node (a network
//! namespace with a bridge, nsx/veth.rs); the RPC server runs in the node too, so the host end
//! of the veth is made there at restore.

use super::*;
use crate::inet::PeerStream;
use crate::nsx::veth::{finish_stream, job_port, start_linked_job, Node, JOB_ADDR};

fn stats_in(dir: &Path, name: &str) -> ferry::criu::stats::StatsEntry {
    let path = dir.join(format!("stats-{name}"));
    let bytes = fs::read(&path).unwrap_or_else(|e| panic!("no {}: {e}", path.display()));
    ferry::criu::stats::decode(&bytes).unwrap_or_else(|| panic!("{} is not CRIU's stats file", path.display()))
}

#[test]
fn rpc_veth_pairs_tcp_established() {
    need("nft", "nftables");
    let node = Node::new("rpcveth");
    let w = WorkDir::new("rpc-veth");
    let host = format!("fxv{}", std::process::id() % 100_000);
    let (pid, guard) = start_linked_job(&w, node.cmd(ferry_bin()), &host, "20");
    let port = job_port(&w);
    let peer = PeerStream::start(node.connect(format!("{JOB_ADDR}:{port}")));
    wait_for("the job's ready", Duration::from_secs(60), || w.join("ready").exists());
    let (img, work) = (w.join("img"), w.join("work"));
    let (img_fd, work_fd) = (dir_fd(&img), dir_fd(&work));
    let in_node = format!("--net=/run/netns/{}", node.name);
    let swrk = || {
        let args = [in_node.as_str(), "--", ferry_bin(), "swrk"];
        Swrk::start_as(Path::new("nsenter"), &args, &w)
    };
    let opts = CriuOpts {
        images_dir_fd: img_fd.as_raw_fd(),
        work_dir_fd: Some(work_fd.as_raw_fd()),
        pid: Some(pid),
        log_level: Some(4),
        log_file: Some("dump.log".into()),
        notify_scripts: Some(true),
        tcp_established: Some(true),
        veths: vec![CriuVethPair { if_in: "eth0".into(), if_out: format!("{host}@br0") }],
        ..Default::default()
    };
    let s = swrk();
    let mut seen = Vec::new();
    let resp = s.call_notified(&CriuReq { opts: Some(opts.clone()), ..req(CriuReqType::Dump) }, &mut seen);
    assert!(
        resp.success,
        "RPC DUMP failed: {}\n{}",
        errmsg(&resp),
        fs::read_to_string(work.join("dump.log")).unwrap_or_default()
    );
    let scripts: Vec<&str> = seen.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(scripts, ["pre-dump", "network-lock", "post-dump"]);
    let d = stats_in(&work, "dump").dump.expect("stats-dump holds dump statistics");
    assert!(d.frozen_time > 0 && d.freezing_time > 0, "{d:?}");
    assert!(d.pages_written > 0 && d.pages_scanned >= d.pages_written, "{d:?}");
    drop(s);
    wait_for("the dumped tree to go", Duration::from_secs(20), || !pid_alive(pid));

    let restore_opts = CriuOpts {
        pid: None,
        log_file: Some("restore.log".into()),
        veths: Vec::new(),
        external: vec![format!("veth[eth0]:{host}@br0")],
        ..opts
    };
    let s = swrk();
    let mut seen = Vec::new();
    let resp = s.call_notified(&CriuReq { opts: Some(restore_opts), ..req(CriuReqType::Restore) }, &mut seen);
    assert!(
        resp.success,
        "RPC RESTORE failed: {}\n{}",
        errmsg(&resp),
        fs::read_to_string(work.join("restore.log")).unwrap_or_default()
    );
    let restored = resp.restore.map(|r| r.pid).unwrap_or(0);
    guard.add(restored);
    let scripts: Vec<&str> = seen.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(scripts, ["setup-namespaces", "post-restore", "network-unlock"]);
    let r = stats_in(&work, "restore").restore.expect("stats-restore holds restore statistics");
    assert!(r.restore_time >= r.forking_time && r.forking_time > 0, "{r:?}");
    assert!(r.pages_restored.unwrap_or(0) > 0, "{r:?}");
    drop(s);
    let link = node.link(&host);
    assert!(link.contains("master br0") && link.contains(",UP"), "outside end after the restore: {link:?}");
    send_signal(restored, "USR2").expect("send go");
    finish_stream(&w, peer, 20);
}
