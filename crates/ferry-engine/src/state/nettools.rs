//! Running the network tools ferry leans on (`ip`, `nft`, `iptables-save`/`-restore`) in the
//! calling thread's network namespace, for state/netns.rs and state/nftables.rs.

use crate::error::{Ctx, Error};
use std::process::Command;

/// Run `ip ARGS` (or another tool) in the calling thread's network namespace; its stdout.
pub(crate) fn tool(prog: &str, args: &[&str]) -> Result<String, Error> {
    tool_input(prog, args, None)
}

/// [`tool`] with `input` on its standard input.
pub(crate) fn tool_input(prog: &str, args: &[&str], input: Option<&str>) -> Result<String, Error> {
    use std::io::Write;
    use std::process::Stdio;
    let package = match prog {
        "nft" => "nftables",
        "ip" => "iproute2",
        p if p.contains("tables") => "iptables",
        _ => prog,
    };
    let cant = || format!("cannot run {prog} (install {package})");
    let mut child = Command::new(prog)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ctx(cant)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).ctx(|| format!("cannot write to {prog}"))?;
    }
    let out = child.wait_with_output().ctx(cant)?;
    if !out.status.success() {
        return Err(Error::Invalid {
            object: format!("{prog} {}", args.join(" ")),
            what: format!("failed: {}", String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
