//! The packet filtering rules of a network namespace of the tree (part of its content,
//! state/netns.rs): its nftables tables, including those Debian's iptables (iptables-nft)
//! keeps in nftables. CRIU carries them the same way, with `iptables-save` and `nft list
//! ruleset`.
//!
//! Two tools, because neither writes back the other's tables whole: iptables-nft puts some
//! matches in its tables as xtables extensions (`xt` expressions: `-m comment`, `-m conntrack`
//! ...), which `nft list` prints partly (a comment not at all) and `nft -f` cannot make; and a
//! table written back by nft is one iptables no longer reads. So a table of iptables' (family
//! ip or ip6, named filter, nat, mangle, raw or security) that `iptables-nft-save` prints whole
//! is saved with `iptables-nft-save -c -t NAME` (ip6tables' for ip6) and written back with
//! `iptables-nft-restore -c`; every other table with `nft list table` and `nft -f`, unless a
//! rule of it holds an `xt` expression, which is refused by name. So is a table owned by a
//! process (`flags owner`, which goes with its owner). Legacy (x_tables) iptables and ip6tables
//! tables (filter, nat, mangle, raw, security: the kernel lists them in
//! /proc/net/ip{,6}_tables_names) are saved with `iptables-legacy-save -c -t NAME`
//! (ip6tables-legacy's for ip6) and written back with `iptables-legacy-restore -c` before the
//! nftables tables (a namespace may have both: each hook sees both); legacy arptables tables
//! (and any other table x_tables lists) are refused by name. Read and written by the namespace
//! module's thread, in the namespace.
//!
//! Restore writes the tables after the devices exist (a rule may name one by index) and before
//! any is up, so no packet passes the namespace unfiltered; the restore's own network lock
//! (state/netlock.rs) is already there and stays (the saved text never flushes the ruleset).
//! Then it reads them back: each must be what the dump saved, counters included (no packet
//! passed in between), else the restore fails naming the table. Kept: tables, chains with their
//! hooks, priorities and policies, rules, sets and maps with their elements, named objects
//! (counters, quotas with what they used), flags, comments. Not kept: the time a set element
//! had left (`expires`) starts again from its dumped value (the time in the image does not
//! count), and state the kernel keeps without printing it (a `limit`'s tokens, a `ct count`'s
//! connections). An iptables table comes back with every base chain iptables knows for it (an
//! empty one accepts everything, as iptables shows it anyway). ferry's own network locks
//! (`inet ferry_lock_*`) are not saved: they are ferry's, not the tree's.

use super::nettools::{tool, tool_input};
use crate::error::Error;
use ferry_image::NftTable;
use serde_json::Value;

/// Families nftables has.
const FAMILIES: &[&str] = &["ip", "ip6", "inet", "arp", "bridge", "netdev"];

/// The tables iptables makes (in families ip and ip6).
const IPTABLES_TABLES: &[&str] = &["filter", "nat", "mangle", "raw", "security"];

/// iptables-nft's save and restore tools for a table of `family`, if it has them.
fn iptables_tools(family: &str) -> Option<(&'static str, &'static str)> {
    match family {
        "ip" => Some(("iptables-nft-save", "iptables-nft-restore")),
        "ip6" => Some(("ip6tables-nft-save", "ip6tables-nft-restore")),
        _ => None,
    }
}

/// The family and iptables-legacy's save and restore tools of legacy (x_tables) tables of
/// `which` (as ferry names the kernel's list of them), if ferry carries them.
fn legacy_tools(which: &str) -> Option<(&'static str, (&'static str, &'static str))> {
    match which {
        "iptables" => Some(("ip", ("iptables-legacy-save", "iptables-legacy-restore"))),
        "ip6tables" => Some(("ip6", ("ip6tables-legacy-save", "ip6tables-legacy-restore"))),
        _ => None,
    }
}

/// The legacy tools of a table of `family` in the image.
fn legacy_tools_of(family: &str) -> Option<(&'static str, &'static str)> {
    match family {
        "ip" => legacy_tools("iptables").map(|t| t.1),
        "ip6" => legacy_tools("ip6tables").map(|t| t.1),
        _ => None,
    }
}

/// Dump: the tables of the calling thread's network namespace (the tree's), but ferry's locks.
pub(crate) fn collect(pid: i32) -> Result<Vec<NftTable>, Error> {
    let refuse = |what: String| Error::Unsupported { pid, what };
    let mut out = Vec::new();
    for (file, which) in
        [("ip_tables_names", "iptables"), ("ip6_tables_names", "ip6tables"), ("arp_tables_names", "arptables")]
    {
        // (this thread's namespace: /proc/net is the process's; no such file without the
        // x_tables modules, and then there is no such table)
        let names = std::fs::read_to_string(format!("/proc/thread-self/net/{file}")).unwrap_or_default();
        // (the kernel lists the newest table first: written back oldest first, they list the same)
        for t in names.split_whitespace().rev() {
            let Some((family, (save, _))) = legacy_tools(which).filter(|_| IPTABLES_TABLES.contains(&t)) else {
                return Err(refuse(format!(
                    "a legacy {which} table ({t}: x_tables, not nftables) in the tree's network namespace"
                )));
            };
            let text = tool(save, &["-c", "-t", t])?;
            out.push(NftTable {
                family: family.to_string(),
                name: t.to_string(),
                tool: "iptables-legacy".to_string(),
                text: without_comments(&text),
            });
        }
    }
    let listing = tool("nft", &["-j", "list", "ruleset"])?;
    let v: Value = serde_json::from_str(&listing).map_err(|e| Error::Invalid {
        object: format!("the nftables ruleset of the network namespace of pid {pid}"),
        what: format!("unreadable `nft -j list ruleset` output: {e}"),
    })?;
    let items = v["nftables"].as_array().cloned().unwrap_or_default();
    for t in items.iter().filter_map(|i| i.get("table")) {
        let family = t["family"].as_str().unwrap_or_default();
        let name = t["name"].as_str().unwrap_or_default();
        if crate::state::netlock::is_lock_table(&format!("table {family} {name}")) {
            continue;
        }
        let obj = format!("nftables table {family} {name}");
        if !FAMILIES.contains(&family) || !name_ok(name) {
            return Err(refuse(format!("{obj:?} in the tree's network namespace (an unknown family or name)")));
        }
        if t["flags"].as_array().is_some_and(|f| f.iter().any(|x| x == "owner")) || t["flags"].as_str() == Some("owner")
        {
            return Err(refuse(format!("{obj} in the tree's network namespace, owned by a process (flags owner)")));
        }
        let table = |tool: &str, text: String| NftTable {
            family: family.to_string(),
            name: name.to_string(),
            tool: tool.to_string(),
            text,
        };
        if let Some((save, _)) = iptables_tools(family).filter(|_| IPTABLES_TABLES.contains(&name)) {
            let text = tool(save, &["-c", "-t", name])?;
            if !text.lines().any(|l| l.starts_with('#') && l.contains("incompatible")) {
                out.push(table("iptables", without_comments(&text)));
                continue;
            }
        }
        let mut xt = Vec::new();
        for r in items.iter().filter_map(|i| i.get("rule")) {
            if r["family"] == family && r["table"] == name {
                xt_names(&r["expr"], &mut xt);
            }
        }
        if let Some(x) = xt.first() {
            return Err(refuse(format!(
                "{obj} in the tree's network namespace: a rule with the iptables extension {x} (an xt expression), which neither nft nor iptables-nft-save writes back whole"
            )));
        }
        out.push(table("nft", tool("nft", &["list", "table", family, name])?));
    }
    Ok(out)
}

/// The names of the `xt` expressions (iptables extensions) in `v`, a rule's expressions.
fn xt_names(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "xt" {
                    out.push(format!("{} {}", x["type"].as_str().unwrap_or("?"), x["name"].as_str().unwrap_or("?")));
                } else {
                    xt_names(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| xt_names(x, out)),
        _ => {}
    }
}

/// A table name as nft prints it bare (anything else would be quoted, or be no name of a table ferry saved).
fn name_ok(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// iptables-save's text without its comments (the lines saying when it was generated).
fn without_comments(text: &str) -> String {
    text.lines().filter(|l| !l.starts_with('#')).map(|l| format!("{l}\n")).collect()
}

/// nft's text without the time its set elements have left (`expires 12s`), which goes on
/// between the dump and the read back, words separated by one space.
fn without_expiry(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let mut kept: Vec<String> = Vec::new();
        while let Some(w) = words.next() {
            if w == "expires" {
                // (what ends the element stays: "12s," or "12s }")
                let end = words.next().and_then(|t| t.find([',', '}']).map(|i| &t[i..])).unwrap_or_default();
                if let Some(last) = kept.last_mut() {
                    last.push_str(end);
                }
                continue;
            }
            kept.push(w.to_string());
        }
        out.push_str(&kept.join(" "));
        out.push('\n');
    }
    out
}

/// How `t` reads in the calling thread's network namespace, in the form its image holds it.
fn read_back(t: &NftTable) -> Result<String, Error> {
    Ok(match t.tool.as_str() {
        "iptables" => {
            let (save, _) = iptables_tools(&t.family).unwrap_or(("iptables-nft-save", ""));
            without_comments(&tool(save, &["-c", "-t", &t.name])?)
        }
        "iptables-legacy" => {
            let (save, _) = legacy_tools_of(&t.family).unwrap_or(("iptables-legacy-save", ""));
            without_comments(&tool(save, &["-c", "-t", &t.name])?)
        }
        _ => tool("nft", &["list", "table", &t.family, &t.name])?,
    })
}

/// Restore: write `tables` in the calling thread's network namespace (new, its devices made and
/// still down), then check they read back as saved.
pub(crate) fn apply(tables: &[NftTable]) -> Result<(), Error> {
    let bad = |t: &NftTable, what: String| {
        let kind = if t.tool == "iptables-legacy" { "legacy (x_tables) iptables table" } else { "nftables table" };
        Error::Invalid { object: format!("{kind} {} {}", t.family, t.name), what }
    };
    for t in tables {
        if !FAMILIES.contains(&t.family.as_str()) || !name_ok(&t.name) {
            return Err(bad(t, "an unknown family or name in the image".into()));
        }
        let legacy = legacy_tools_of(&t.family).filter(|_| IPTABLES_TABLES.contains(&t.name.as_str()));
        match (t.tool.as_str(), iptables_tools(&t.family), legacy) {
            ("nft", _, _) => tool_input("nft", &["-f", "-"], Some(&t.text)).map(drop),
            ("iptables", Some((_, restore)), _) => tool_input(restore, &["-c"], Some(&t.text)).map(drop),
            // (-w: x_tables has one lock for the whole machine: wait while another holds it)
            ("iptables-legacy", _, Some((_, restore))) => {
                tool_input(restore, &["-c", "-w", "30"], Some(&t.text)).map(drop)
            }
            (other, _, _) => {
                return Err(bad(t, format!("written by {other:?} in the image, which ferry does not know")))
            }
        }
        .map_err(|e| bad(t, format!("cannot write it back: {e}")))?;
    }
    for t in tables {
        let now = read_back(t)?;
        let (now, saved) = match t.tool.as_str() {
            "nft" => (without_expiry(&now), without_expiry(&t.text)),
            _ => (now, t.text.clone()),
        };
        if now != saved {
            let diff = saved.lines().zip(now.lines()).find(|(a, b)| a != b).map_or_else(
                || "a different number of lines".to_string(),
                |(a, b)| format!("{:?} became {:?}", a.trim(), b.trim()),
            );
            return Err(bad(t, format!("reads back different from the image after it was written back: {diff}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_left_out() {
        let t = "\t\telements = { 10.0.0.1 timeout 30s expires 29s12ms, 10.0.0.2 timeout 1m expires 3s }\n";
        assert_eq!(without_expiry(t), "elements = { 10.0.0.1 timeout 30s, 10.0.0.2 timeout 1m }\n");
        assert_eq!(without_expiry("a  b\n"), "a b\n");
    }

    #[test]
    fn xt_expressions_found() {
        let v: Value = serde_json::from_str(
            r#"[{"match": {"left": 1}}, {"xt": {"type": "match", "name": "comment"}}, {"counter": null}]"#,
        )
        .expect("json");
        let mut out = Vec::new();
        xt_names(&v, &mut out);
        assert_eq!(out, ["match comment"]);
    }
}
