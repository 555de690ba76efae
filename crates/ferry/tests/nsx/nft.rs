//! Packet filtering rules of a job's own network namespace (state/nftables.rs): nftables
//! tables with sets and maps with elements, a named counter, a quota, chains with policies,
//! a comment, a NAT rule, and iptables rules (iptables-nft, one with an xtables comment, a
//! DNAT rule). Probes from inside the namespace show that the drop rules drop, that a port
//! no rule names is refused (so a probe tells the two apart) and that both NAT rules lead to
//! their target, before the dump and after the restore; and the tables read back the same,
//! counters included, as iptables and nft show them. Legacy (x_tables) iptables rules too.

use super::{configure_netns, dump_and_restore, expect_progress, go_and_pass, run_ok, start_nsjob};
use crate::common::*;
use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

const RULES: &str = r#"table inet nsxf {
  counter seen { packets 5 bytes 300 }
  quota q { over 10 mbytes used 1000 bytes }
  set ports { type inet_service; elements = { 7777, 7787 } }
  set nets { type ipv4_addr; flags interval; elements = { 10.200.0.0/16, 192.0.2.7 } }
  map verdicts { type ipv4_addr : verdict; elements = { 192.0.2.8 : drop } }
  chain input { type filter hook input priority 0; policy accept;
    tcp dport @ports counter drop
    ip saddr @nets drop
    ip saddr vmap @verdicts
    tcp dport 7799 counter name "seen" accept comment "the test's"
  }
  chain forw { type filter hook forward priority 0; policy drop; }
}
table ip nsxnat {
  chain out { type nat hook output priority -100; policy accept;
    ip daddr 10.77.0.99 tcp dport 80 dnat to 10.77.0.5:8080
  }
}
"#;

/// Each probe: a TCP connection from inside the job's namespace to ADDR PORT (with a listener
/// on LISTEN first, the target of a NAT rule, or 0) and what it met.
const PROBES: &[(&str, u16, u16, &str)] = &[
    ("127.0.0.1", 7777, 0, "dropped"), // nft: a port of the set
    ("127.0.0.1", 7778, 0, "dropped"), // iptables
    ("127.0.0.1", 7790, 0, "refused"), // no rule: the probe tells
    ("10.77.0.99", 80, 8080, "open"),  // nft: DNAT to 10.77.0.5:8080
    ("10.77.0.98", 80, 8081, "open"),  // iptables: DNAT to 10.77.0.5:8081
];

const PROBE: &str = "import socket,sys\n\
    addr,port,listen=sys.argv[1],int(sys.argv[2]),int(sys.argv[3])\n\
    if listen:\n\
    \x20   l=socket.socket(); l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); l.bind(('0.0.0.0',listen)); l.listen(1)\n\
    s=socket.socket(); s.settimeout(2)\n\
    try:\n\
    \x20   s.connect((addr,port)); print('open')\n\
    except socket.timeout: print('dropped')\n\
    except ConnectionRefusedError: print('refused')\n\
    except OSError as e: print('error', e)\n";

fn in_net(pid: i32, prog: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/proc/{pid}/ns/net")).arg(prog);
    c
}

fn probe_all(pid: i32, when: &str) {
    for (addr, port, listen, expect) in PROBES {
        let got = run_ok(in_net(pid, "python3").args(["-c", PROBE, addr, &port.to_string(), &listen.to_string()]));
        assert_eq!(got.trim(), *expect, "{when}: a connection to {addr}:{port}");
    }
}

/// The rules as nft and iptables show them (iptables-save without its dated comments, and
/// without its base chains' counters: the restore makes every base chain of iptables' tables,
/// and those that did not exist before, counting nothing then, count the packets of the
/// restored namespace).
fn rules(pid: i32) -> String {
    let mut text = String::new();
    for (family, name) in [("inet", "nsxf"), ("ip", "nsxnat")] {
        text += &run_ok(in_net(pid, "nft").args(["list", "table", family, name]));
    }
    text + &saved(pid, &["iptables-save", "ip6tables-save"])
}

/// What the `save` tools print with `-c`, but their dated comments and their base chains'
/// counters.
fn saved(pid: i32, tools: &[&str]) -> String {
    let mut text = String::new();
    for save in tools {
        for l in run_ok(in_net(pid, save).arg("-c")).lines().filter(|l| !l.starts_with('#')) {
            let l = if l.starts_with(':') { l.split(" [").next().unwrap_or(l) } else { l };
            text += &format!("{l}\n");
        }
    }
    text
}

#[test]
fn netns_nftables_iptables_rules_restored() {
    need("nft", "nftables");
    need("iptables", "iptables");
    need("python3", "python3");
    let w = WorkDir::new("nsx-nft");
    let (pid, _g) = start_nsjob(&w, Command::new(ferry_bin()));
    configure_netns(&w, pid);
    let mut nft = in_net(pid, "nft");
    nft.args(["-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::null());
    let mut child = nft.spawn().expect("nft");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), RULES.as_bytes()).expect("nft input");
    assert!(child.wait().expect("nft").success(), "nft -f");
    for args in [
        &[
            "iptables",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            "7778",
            "-m",
            "comment",
            "--comment",
            "nsx test",
            "-j",
            "DROP",
        ][..],
        &[
            "iptables",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-d",
            "10.77.0.98",
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "DNAT",
            "--to-destination",
            "10.77.0.5:8081",
        ],
        &["ip6tables", "-A", "INPUT", "-p", "tcp", "--dport", "7778", "-j", "DROP"],
    ] {
        run_ok(in_net(pid, args[0]).args(&args[1..]));
    }
    probe_all(pid, "before the dump");
    let before = rules(pid);
    expect_progress(&w, "before the dump");
    let restored = dump_and_restore(&w, pid, &_g, Duration::ZERO);
    assert_eq!(rules(restored), before, "the rules after the restore (left) and before the dump (right)");
    probe_all(restored, "after the restore");
    expect_progress(&w, "after the restore");
    go_and_pass(&w, restored);
}

/// Legacy (x_tables) iptables and ip6tables rules (iptables-legacy) of a job's own network
/// namespace, beside an nftables table: a DROP and a REJECT rule with counters, a DNAT rule in
/// the legacy nat table, an ip6tables DROP rule, a chain of the test's. Probes from inside the
/// namespace show each rule does what it says before the dump and after the restore (a port no
/// rule names is refused, so a probe tells them apart), and iptables-legacy-save shows the same
/// rules with the same counters (the rules' counters not zero: the probes before the dump hit
/// them).
#[test]
fn netns_legacy_iptables_rules_restored() {
    need("iptables-legacy", "iptables");
    need("nft", "nftables");
    need("python3", "python3");
    let w = WorkDir::new("nsx-legacy");
    let (pid, _g) = start_nsjob(&w, Command::new(ferry_bin()));
    configure_netns(&w, pid);
    for args in [
        &["iptables-legacy", "-N", "nsxchain"][..],
        &["iptables-legacy", "-A", "INPUT", "-p", "tcp", "--dport", "7781", "-j", "nsxchain"],
        &["iptables-legacy", "-A", "nsxchain", "-j", "DROP"],
        &[
            "iptables-legacy",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            "7782",
            "-j",
            "REJECT",
            "--reject-with",
            "icmp-host-prohibited",
        ],
        &[
            "iptables-legacy",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-d",
            "10.77.0.97",
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "DNAT",
            "--to-destination",
            "10.77.0.5:8082",
        ],
        &["ip6tables-legacy", "-A", "INPUT", "-p", "tcp", "--dport", "7781", "-j", "DROP"],
        &["nft", "add", "table", "inet", "nsxbeside"],
        &["nft", "add", "chain", "inet", "nsxbeside", "input", "{ type filter hook input priority 10; }"],
        &["nft", "add", "rule", "inet", "nsxbeside", "input", "tcp", "dport", "7783", "counter", "drop"],
    ] {
        run_ok(in_net(pid, args[0]).args(&args[1..]));
    }
    let probes: &[(&str, u16, u16, &str)] = &[
        ("127.0.0.1", 7781, 0, "dropped"), // legacy, through nsxchain
        ("127.0.0.1", 7782, 0, "error [Errno 113] No route to host"), // legacy REJECT
        ("127.0.0.1", 7783, 0, "dropped"), // nft beside them
        ("127.0.0.1", 7790, 0, "refused"), // no rule: the probe tells
        ("10.77.0.97", 80, 8082, "open"),  // legacy DNAT to 10.77.0.5:8082
    ];
    let probe = |pid: i32, when: &str| {
        for (addr, port, listen, expect) in probes {
            let got = run_ok(in_net(pid, "python3").args(["-c", PROBE, addr, &port.to_string(), &listen.to_string()]));
            assert_eq!(got.trim(), *expect, "{when}: a connection to {addr}:{port}");
        }
    };
    probe(pid, "before the dump");
    let before = legacy_rules(pid);
    for rule in ["--dport 7781 -j nsxchain", "--dport 7782 -j REJECT", "-j DNAT"] {
        assert!(
            before.lines().any(|l| l.contains(rule) && l.starts_with('[') && !l.starts_with("[0:0]")),
            "no counted rule {rule:?} before the dump: {before}"
        );
    }
    expect_progress(&w, "before the dump");
    let restored = dump_and_restore(&w, pid, &_g, Duration::ZERO);
    assert_eq!(legacy_rules(restored), before, "the legacy rules after the restore (left) and before the dump (right)");
    probe(restored, "after the restore");
    expect_progress(&w, "after the restore");
    go_and_pass(&w, restored);
}

/// The legacy tables as iptables-legacy-save and ip6tables-legacy-save show them, counters
/// included, but the base chains' (they count every packet of the restored namespace too) and
/// the dated comments.
fn legacy_rules(pid: i32) -> String {
    saved(pid, &["iptables-legacy-save", "ip6tables-legacy-save"])
}

/// What ferry cannot write back whole is refused by name: a rule with an xtables extension in
/// a table iptables-nft-save cannot print (a base chain of nft's in iptables' table). (Legacy
/// arptables tables are refused by name too, but this machine has no arptables-legacy to
/// make one.)
#[test]
fn netns_nft_rules_refused() {
    need("nft", "nftables");
    need("iptables-nft", "iptables");
    let w = WorkDir::new("nsx-nft-refused");
    let (pid, _g) = start_nsjob(&w, Command::new(ferry_bin()));
    for args in [
        &["iptables-nft", "-A", "INPUT", "-m", "comment", "--comment", "nsx", "-j", "ACCEPT"][..],
        &["nft", "add", "chain", "ip", "filter", "nsxown", "{ type filter hook input priority 10; }"],
    ] {
        run_ok(in_net(pid, args[0]).args(&args[1..]));
    }
    fs::write(w.join("setup"), "").expect("setup file");
    wait_for("nsjob to be ready", Duration::from_secs(60), || w.join("ready").exists());
    dump_refused(
        pid,
        &w.join("img"),
        "nftables table ip filter in the tree's network namespace: a rule with the iptables extension match comment",
    );
    assert!(pid_alive(pid), "a refused dump killed the job");
}
