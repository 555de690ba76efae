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

/// A network namespace of the test's (`ip netns add`), deleted on drop.
struct NamedNetns(String);

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).stdin(Stdio::null()).output();
    }
}

fn ip_ok(args: &[&str]) {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn nft_tables(ns_file: &str) -> String {
    let out = Command::new("nsenter").arg(format!("--net={ns_file}")).args(["nft", "list", "tables"]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

/// A tree in an external network namespace that outlives it (a pod's, held by its infra
/// container; runc's `external net[INO]:extRootNetNS`, given back at restore as the
/// `inherit_fd` "extRootNetNS"), with an established connection to the node: the dump's
/// network lock stays in that namespace (the connection must not be reset while no process
/// has it), and the restore, which joins the namespace again, must lift it once the tree runs,
/// or the restored connection stays blocked for good. No lock is left there; the stream goes on.
#[test]
fn rpc_external_netns_tcp_established() {
    need("nft", "nftables");
    let node = Node::new("rpcextnet");
    let w = WorkDir::new("rpc-extnet");
    let ns = NamedNetns(format!("ferry-extnet-{}", std::process::id()));
    ip_ok(&["netns", "add", &ns.0]);
    let outside = format!("fxe{}", std::process::id() % 100_000);
    ip_ok(&["-n", &node.name, "link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &ns.0]);
    ip_ok(&["-n", &node.name, "link", "set", &outside, "master", "br0", "up"]);
    ip_ok(&["-n", &ns.0, "link", "set", "lo", "up"]);
    ip_ok(&["-n", &ns.0, "addr", "add", &format!("{JOB_ADDR}/24"), "dev", "eth0"]);
    ip_ok(&["-n", &ns.0, "link", "set", "eth0", "up"]);
    let ns_file = format!("/run/netns/{}", ns.0);
    let mut launcher = Command::new("nsenter");
    launcher.arg(format!("--net={ns_file}")).arg("--").arg(ferry_bin());
    let (pid, guard) = crate::nsx::run_detached(&w, launcher, &["--pidns"], "tcpstream", &["netpeer", "20"]);
    let port = job_port(&w);
    let peer = PeerStream::start(node.connect(format!("{JOB_ADDR}:{port}")));
    wait_for("the job's ready", Duration::from_secs(60), || w.join("ready").exists());
    let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&ns_file).expect("the namespace file"));
    let (img, work) = (w.join("img"), w.join("work"));
    let (img_fd, work_fd) = (dir_fd(&img), dir_fd(&work));
    let in_node = format!("--net=/run/netns/{}", node.name);
    let swrk = || Swrk::start_as(Path::new("nsenter"), &[in_node.as_str(), "--", ferry_bin(), "swrk"], &w);
    let opts = CriuOpts {
        images_dir_fd: img_fd.as_raw_fd(),
        work_dir_fd: Some(work_fd.as_raw_fd()),
        pid: Some(pid),
        log_level: Some(4),
        log_file: Some("dump.log".into()),
        notify_scripts: Some(true),
        tcp_established: Some(true),
        external: vec![format!("net[{ino}]:extRootNetNS")],
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
    assert_eq!(seen.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), ["pre-dump", "post-dump"]);
    drop(s);
    wait_for("the dumped tree to go", Duration::from_secs(20), || !pid_alive(pid));
    let tables = nft_tables(&ns_file);
    assert!(tables.contains("ferry_lock_"), "the dump's lock is not in the external namespace: {tables:?}");

    // The namespace's fd, inherited by the server at the same number (as runc passes it).
    let ns_fd = OwnedFd::from(File::open(&ns_file).expect("open the namespace file"));
    ferry_sys::raw::set_cloexec(ns_fd.as_raw_fd(), false).expect("clear FD_CLOEXEC");
    let restore_opts = CriuOpts {
        pid: None,
        log_file: Some("restore.log".into()),
        inherit_fd: vec![InheritFd { key: "extRootNetNS".into(), fd: ns_fd.as_raw_fd() }],
        ..opts
    };
    let s = swrk();
    drop(ns_fd);
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
    assert_eq!(seen.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), ["setup-namespaces", "post-restore"]);
    drop(s);
    let ns_of =
        |p: i32| fs::metadata(format!("/proc/{p}/ns/net")).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).ok();
    assert_eq!(ns_of(restored), Some(ino), "the restored job is not in the external namespace");
    let tables = nft_tables(&ns_file);
    assert!(!tables.contains("ferry_lock_"), "a network lock is left in the external namespace: {tables:?}");
    send_signal(restored, "USR2").expect("send go");
    finish_stream(&w, peer, 20);
}
