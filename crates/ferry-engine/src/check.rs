//! `ferry check`: probe each kernel feature ferry relies on, by trying it.

use ferry_sys::process;

/// One probed feature.
#[derive(Debug, Clone)]
pub struct Feature {
    pub name: &'static str,
    pub present: bool,
    /// Whether dump/restore cannot work without it.
    pub required: bool,
    pub detail: String,
}

fn probe_child<F: FnOnce(i32) -> Result<String, String>>(f: F) -> Result<String, String> {
    // A sleeping child to poke at.
    let mut child = std::process::Command::new("/bin/sleep")
        .arg("30")
        .spawn()
        .map_err(|e| format!("cannot start /bin/sleep: {e}"))?;
    let pid = child.id() as i32;
    let r = f(pid);
    let _ = child.kill();
    let _ = child.wait();
    r
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = rel.trim().split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse::<u32>().ok());
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// The capabilities dump and restore need (bit, name): ptrace of any process and its
/// /proc/PID/map_files, /proc/sys/kernel/ns_last_pid and clone3 with set_tid, PR_SET_MM_MAP,
/// SysV ids. A process without them gets EPERM somewhere in the middle, so ferry says which
/// ones are missing before it starts.
pub const NEEDED_CAPS: &[(u32, &str)] =
    &[(19, "CAP_SYS_PTRACE"), (21, "CAP_SYS_ADMIN"), (40, "CAP_CHECKPOINT_RESTORE")];

/// The effective capability set of this process (CapEff in /proc/self/status).
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The names of the needed capabilities this process lacks (all of them if it cannot tell).
pub fn missing_caps() -> Vec<&'static str> {
    missing_from(effective_caps())
}

fn missing_from(eff: Option<u64>) -> Vec<&'static str> {
    NEEDED_CAPS.iter().filter(|(bit, _)| eff.is_none_or(|e| e & (1u64 << bit) == 0)).map(|&(_, name)| name).collect()
}

/// Refuses `what` (e.g. "dump") at once, naming the capabilities that are missing.
pub fn require_caps(what: &str) -> Result<(), crate::Error> {
    let missing = missing_caps();
    if missing.is_empty() {
        return Ok(());
    }
    Err(crate::Error::Invalid {
        object: format!("ferry {what}"),
        what: format!(
            "needs {} (missing from this process's effective capabilities): run it as root",
            missing.join(", ")
        ),
    })
}

/// Probe everything; the caller prints.
pub fn run() -> Vec<Feature> {
    use ferry_sys::ptrace;
    let mut out = Vec::new();
    let mut add = |name, required, r: Result<String, String>| {
        let (present, detail) = match r {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        out.push(Feature { name, present, required, detail });
    };
    let missing = missing_caps();
    add(
        "capabilities (CAP_SYS_PTRACE, CAP_SYS_ADMIN, CAP_CHECKPOINT_RESTORE)",
        true,
        if missing.is_empty() {
            Ok("all in the effective set".into())
        } else {
            Err(format!("missing {} (run as root)", missing.join(", ")))
        },
    );
    add(
        "ptrace seize/interrupt + registers + xstate + rseq config",
        true,
        probe_child(|pid| {
            ptrace::seize(pid, 0).map_err(|e| format!("PTRACE_SEIZE: {e}"))?;
            ptrace::interrupt(pid).map_err(|e| format!("PTRACE_INTERRUPT: {e}"))?;
            crate::inject::wait_stopped(pid).map_err(|e| format!("wait: {e}"))?;
            ptrace::get_regs(pid).map_err(|e| format!("PTRACE_GETREGS: {e}"))?;
            let x = ptrace::get_xstate(pid).map_err(|e| format!("NT_X86_XSTATE: {e}"))?;
            ptrace::peek_siginfo(pid, true).map_err(|e| format!("PTRACE_PEEKSIGINFO: {e}"))?;
            ptrace::get_sigmask(pid).map_err(|e| format!("PTRACE_GETSIGMASK: {e}"))?;
            let r = ptrace::get_rseq_config(pid).map_err(|e| format!("PTRACE_GET_RSEQ_CONFIGURATION: {e}"))?;
            let _ = ptrace::detach(pid, 0);
            Ok(format!(
                "xstate {} bytes (xfeatures {:#x}), rseq at {:#x}",
                x.len(),
                crate::state::cpu::xstate_features(&x),
                r.rseq_abi_pointer
            ))
        }),
    );
    add(
        "process_vm_readv/writev",
        true,
        probe_child(|pid| {
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|e| e.to_string())?;
            let maps = ferry_proc::parse_maps(&maps).map_err(|e| e.to_string())?;
            let m = maps.iter().find(|m| m.perms.read).ok_or("no readable mapping")?;
            let mut b = [0u8; 64];
            process::vm_read(pid, m.start, &mut b).map_err(|e| format!("process_vm_readv: {e}"))?;
            Ok("ok".into())
        }),
    );
    add(
        "pidfd_open + pidfd_getfd",
        true,
        probe_child(|pid| {
            let fd = process::pidfd_open(pid).map_err(|e| format!("pidfd_open: {e}"))?;
            process::pidfd_getfd(std::os::fd::AsFd::as_fd(&fd), 0).map_err(|e| format!("pidfd_getfd: {e}"))?;
            Ok("ok".into())
        }),
    );
    add(
        "kcmp",
        true,
        process::kcmp(std::process::id() as i32, std::process::id() as i32, 0, 0, 0)
            .map(|_| "ok".into())
            .map_err(|e| e.to_string()),
    );
    add(
        "PAGEMAP_SCAN",
        true,
        std::fs::File::open("/proc/self/pagemap").map_err(|e| e.to_string()).and_then(|f| {
            let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| e.to_string())?;
            let maps = ferry_proc::parse_maps(&maps).map_err(|e| e.to_string())?;
            let m = maps.first().ok_or("no mapping")?;
            process::pagemap_scan(
                std::os::fd::AsFd::as_fd(&f),
                m.start,
                m.end,
                process::page_is::PRESENT,
                process::page_is::PRESENT,
            )
            .map(|r| format!("{} regions", r.len()))
            .map_err(|e| format!("PAGEMAP_SCAN: {e} (Linux 6.7+)"))
        }),
    );
    add(
        "clone3 with set_tid",
        true,
        if kernel_at_least(5, 5) && std::path::Path::new("/proc/sys/kernel/ns_last_pid").exists() {
            Ok("kernel >= 5.5, CONFIG_CHECKPOINT_RESTORE".into())
        } else {
            Err("needs Linux 5.5+ with CONFIG_CHECKPOINT_RESTORE".into())
        },
    );
    add(
        "PR_SET_MM_MAP / PR_GET_TID_ADDRESS (CONFIG_CHECKPOINT_RESTORE)",
        true,
        std::fs::metadata("/proc/self/map_files")
            .map(|_| "ok (/proc/PID/map_files present)".into())
            .map_err(|_| "kernel built without CONFIG_CHECKPOINT_RESTORE".into()),
    );
    add(
        "PR_TIMER_CREATE_RESTORE_IDS (POSIX timer ids)",
        false,
        ferry_sys::raw::prctl(ferry_sys::consts::PR_TIMER_CREATE_RESTORE_IDS, 2, 0, 0, 0)
            .map(|_| "ok".into())
            .map_err(|e| format!("{e} (Linux 6.16+); POSIX timers cannot be restored")),
    );
    add(
        "userfaultfd (lazy restore, pre-copy tracking)",
        false,
        std::fs::metadata("/dev/userfaultfd").map(|_| "/dev/userfaultfd present".into()).or_else(|_| {
            if kernel_at_least(4, 3) {
                Ok("syscall (kernel >= 4.3)".into())
            } else {
                Err("missing".into())
            }
        }),
    );
    add(
        "time namespaces",
        false,
        std::fs::metadata("/proc/self/ns/time").map(|_| "ok".into()).map_err(|e| e.to_string()),
    );
    add(
        "TCP_REPAIR (needs CAP_NET_ADMIN)",
        false,
        std::net::TcpListener::bind("127.0.0.1:0")
            .map(|_| "sockets available (probed at dump time)".into())
            .map_err(|e| e.to_string()),
    );
    add(
        "nftables (network lock for --tcp-established)",
        false,
        std::process::Command::new("nft")
            .args(["list", "tables"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("nft: {e} (install nftables)"))
            .and_then(|st| if st.success() { Ok("nft works".into()) } else { Err(format!("nft list tables: {st}")) }),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::missing_from;

    #[test]
    fn missing_capabilities_are_named() {
        assert!(missing_from(Some(0x000001ffffffffff)).is_empty());
        assert_eq!(missing_from(Some(0)), ["CAP_SYS_PTRACE", "CAP_SYS_ADMIN", "CAP_CHECKPOINT_RESTORE"]);
        assert_eq!(missing_from(Some(1 << 21 | 1 << 40)), ["CAP_SYS_PTRACE"]);
        assert_eq!(missing_from(None).len(), 3);
    }
}
