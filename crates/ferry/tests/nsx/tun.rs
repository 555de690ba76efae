//! tun/tap devices and the fds of /dev/net/tun attached to them (state/tun.rs). `tuntap` (see
//! its header), in a network namespace of its own (`ferry run --netns`), holds a multi-queue
//! persistent tap with a detached queue, a tun with packet information and a virtio header,
//! and an fd never attached; after the restore it checks each fd (TUNGETIFF, header size, send
//! buffer) and exchanges packets with the kernel through both devices (ARP on the tap, ICMP
//! echo on the tun); the devices read the same from outside (index, flags, MTU, hardware
//! address, tun settings with owner and group, addresses).

use super::{dump_and_restore, run_detached, run_ok};
use crate::common::*;
use std::fs;
use std::process::Command;
use std::time::Duration;

/// The devices ftap0 and ftun1 of the network namespace of `pid`, as `ip -d` shows them (but
/// their counters and queue counts, which the restore's attaching changes on the way), and
/// their addresses.
fn devices(pid: i32) -> String {
    let ip =
        |args: &[&str]| run_ok(Command::new("nsenter").arg(format!("--net=/proc/{pid}/ns/net")).arg("ip").args(args));
    let mut text = String::new();
    for dev in ["ftap0", "ftun1"] {
        let links: serde_json::Value =
            serde_json::from_str(&ip(&["-j", "-d", "link", "show", "dev", dev])).expect("ip -j");
        let l = &links[0];
        for key in ["ifindex", "ifname", "flags", "mtu", "address"] {
            text += &format!("{dev} {key} {}\n", l[key]);
        }
        // (operating either way: UNKNOWN while the device's carrier never changed since it was
        // made, UP once it did, as it does when the restore attaches the tree's fds)
        let operating = matches!(l["operstate"].as_str(), Some("UP" | "UNKNOWN"));
        text += &format!("{dev} operating {operating}\n");
        for (key, v) in l["linkinfo"]["info_data"].as_object().into_iter().flatten() {
            text += &format!("{dev} {key} {v}\n");
        }
        text += &ip(&["-o", "-4", "addr", "show", "dev", dev]);
    }
    text
}

/// `tuntap` under `ferry run --netns -d`, ready: its pid, killed with its tree on drop.
fn start_tuntap(w: &WorkDir) -> (i32, ProcGuard) {
    let (pid, g) = run_detached(w, Command::new(ferry_bin()), &["--netns"], "tuntap", &[]);
    wait_for("tuntap to be ready", Duration::from_secs(60), || w.join("ready").exists() || w.join("result").exists());
    assert!(w.join("ready").exists(), "tuntap's setup failed: {}", read_tail(&w.join("out.log"), 2000));
    (pid, g)
}

/// Send go to `pid` and expect tuntap's PASS.
fn tuntap_pass(w: &WorkDir, pid: i32, when: &str) {
    send_signal(pid, "USR2").expect("send go");
    wait_for("tuntap's result", Duration::from_secs(60), || w.join("result").exists());
    let result = fs::read_to_string(w.join("result")).unwrap_or_default();
    assert_eq!(result.trim(), "PASS", "tuntap's result {when}; its log:\n{}", read_tail(&w.join("out.log"), 4000));
}

#[test]
fn tuntap_devices_restored() {
    need("ip", "iproute2");
    need("nsenter", "util-linux");
    let w = WorkDir::new("nsx-tun");
    let (pid, g) = start_tuntap(&w);
    let before = devices(pid);
    for want in [
        "ftap0 user",
        "ftap0 group",
        "ftap0 multi_queue true",
        "ftap0 persist true",
        "ftun1 vnet_hdr true",
        "ftun1 persist false",
    ] {
        assert!(before.contains(want), "{want:?} not in {before}");
    }
    let restored = dump_and_restore(&w, pid, &g, Duration::ZERO);
    assert_eq!(devices(restored), before, "the devices after the restore (left) and before the dump (right)");
    tuntap_pass(&w, restored, "after the restore");
}

/// A process outside the tree holding a queue of the tree's tap (its network namespace entered
/// from outside): the restore could not attach it again, so the dump is refused by name, and
/// the job goes on.
#[test]
fn tun_fd_outside_tree_refused() {
    need("ip", "iproute2");
    need("nsenter", "util-linux");
    let python = need("python3", "python3");
    let w = WorkDir::new("nsx-tun-out");
    let (pid, _g) = start_tuntap(&w);
    // TUNSETIFF ftap0 IFF_TAP|IFF_NO_PI|IFF_MULTI_QUEUE, then hold it.
    let script = "import fcntl,os,struct,sys,time\n\
        fd=os.open('/dev/net/tun',os.O_RDWR)\n\
        fcntl.ioctl(fd,0x400454ca,struct.pack('16sH22x',b'ftap0',0x1102))\n\
        print('attached',flush=True)\n\
        time.sleep(600)\n";
    let mut holder = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .arg(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the holder");
    let guard = ProcGuard::new();
    guard.add(holder.id() as i32);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(holder.stdout.take().expect("stdout")), &mut line)
        .expect("read the holder's line");
    assert_eq!(line.trim(), "attached");
    dump_refused(pid, &w.join("img"), "network device ftap0 (tun) with 3 fds attached, 2 of them the tree's");
    assert!(pid_alive(pid), "a refused dump killed the job");
    drop(guard);
    let _ = holder.wait();
    tuntap_pass(&w, pid, "after a refused dump");
}
