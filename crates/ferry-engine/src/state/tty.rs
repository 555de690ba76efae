//! Terminals: pseudo-terminal pairs inside the tree, and jobs started from the user's terminal
//! (`--shell-job`).
//!
//! A pty pair whose master (/dev/ptmx) is held by the tree belongs to the image: its settings
//! (termios, window size, packet mode, lock, exclusive mode), the session it is the controlling
//! terminal of and its foreground group are read through a `pidfd_getfd` copy of the master
//! (the kernel routes termios and window-size ioctls on a master to its slave). Restore opens a
//! new pair in ferry before forking, sets it up, hands the master and new slave descriptions
//! (`TIOCGPTPEER`) to the processes, and in the restored session leader makes the slave its
//! controlling terminal (`TIOCSCTTY`); the first process of the foreground group gives it the
//! terminal (`TIOCSPGRP`, with every signal blocked so SIGTTOU cannot stop it).
//! The new pair gets whatever /dev/pts index the kernel hands out: it may differ from the old one.
//! The slave node gets the old one's owner, group and mode (its times are not kept).
//!
//! Bytes queued in the pair are kept in both directions (`Pty.output`: written by the slave
//! side, not yet read by the master; `Pty.input`: written by the master side, not yet read by
//! the slave). A terminal buffer cannot be peeked, so, as CRIU does, the dump reads them (the
//! output from the master copy; the input through a new slave description, with the pair put
//! in non-canonical mode for the moment so that the line being typed is read too) and at once
//! queues them again, through the other end, under settings that do not process them a second
//! time (no echo, no signals, no CR/NL translation, no output processing; canonical mode as it
//! was, so line boundaries and the line being typed are recreated); then the pair's own
//! settings are put back. Restore queues them the same way into the new pair. An end-of-file
//! mark (^D) pending in canonical input is read as such (a read of 0 bytes, or a line without
//! its line end) and queued again as the VEOF character. Not kept: in packet mode the status
//! bytes waiting for the master (only the data), and a character made literal with VLNEXT
//! (^V) is processed again when queued.
//!
//! A terminal outside the tree (the user's terminal a job was started from: its fds 0-2 and its
//! controlling terminal) cannot be saved; with `--shell-job` it is recorded as such and restore
//! puts the job onto the terminal ferry runs on: the fds 0-2 become ferry's own, the tree joins
//! ferry's session (and so its controlling terminal), its process group is recreated when the
//! tree led it, and it becomes the foreground group when it was at dump time. The job's terminal
//! settings are applied to ferry's terminal when the job owned it (was in the foreground): a
//! full-screen program that switched the terminal to raw mode finds it in raw mode again.
//! Without `--shell-job` such a tree is refused.

use crate::error::{Ctx, Error};
use ferry_image::{File, FileKind, Process, Pty, TtyShellJob};
use ferry_sys::tty as sys;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

/// Terminal devices: /dev/ttyN and serial lines (4), /dev/tty, /dev/console, /dev/ptmx (5),
/// /dev/pts/N (136-143).
pub fn is_tty_major(major: u32) -> bool {
    matches!(major, 4 | 5 | 136..=143)
}

fn pts_index(rdev: u64) -> Option<u32> {
    let (maj, min) = (libc::major(rdev), libc::minor(rdev));
    (136..=143).contains(&maj).then(|| (maj - 136) * 256 + min)
}

fn is_ptmx(rdev: u64) -> bool {
    (libc::major(rdev), libc::minor(rdev)) == (5, 2)
}

/// A terminal's name from its device number (`tty_nr` of /proc/PID/stat).
pub fn tty_name(rdev: u64) -> String {
    let (maj, min) = (libc::major(rdev), libc::minor(rdev));
    match (maj, min) {
        _ if pts_index(rdev).is_some() => format!("/dev/pts/{}", pts_index(rdev).unwrap_or(0)),
        (4, 0..=63) => format!("/dev/tty{min}"),
        (4, _) => format!("/dev/ttyS{}", min - 64),
        (5, 0) => "/dev/tty".into(),
        (5, 1) => "/dev/console".into(),
        _ => format!("terminal {maj}:{min}"),
    }
}

/// An fd of the tree on a terminal that is not a pty master.
struct TermFd {
    name: String,
    /// pts index, for a pty slave.
    index: Option<u32>,
    /// The terminal's settings, read through the fd.
    termios: Vec<u8>,
    /// TIOCGEXCL through the fd.
    exclusive: bool,
    /// The window size (rows, cols, xpixel, ypixel), read through the fd.
    winsize: [u16; 4],
    /// The process that holds it.
    pid: i32,
    /// Its devpts instance, for a pty slave (`Pty.devpts_dev`: 0 for the tree root's).
    devpts_dev: u64,
}

/// What the fd tables of the tree hold on terminals, gathered while collecting.
#[derive(Default)]
pub struct TreeTty {
    /// The tree's root process (its devpts instances are the root's: `Pty.devpts_dev` 0).
    pub root: i32,
    /// Masters seen, by devpts instance (`Pty.devpts_dev`) and pts index.
    masters: HashMap<(u64, u32), Pty>,
    /// Slaves and other terminals, in the order they were seen.
    terms: Vec<TermFd>,
}

fn copy_fd(pid: i32, fd: i32) -> Result<OwnedFd, Error> {
    let pidfd = ferry_sys::process::pidfd_open(pid).ctx(|| format!("pid {pid}: pidfd_open"))?;
    ferry_sys::process::pidfd_getfd(pidfd.as_fd(), fd).ctx(|| format!("pid {pid} fd {fd}: pidfd_getfd"))
}

/// Read a master's pair state (index, settings, session, foreground group); refuse unread
/// output. Only read-only ioctls: the master is a copy of the target's own description.
fn read_pair(pid: i32, fd: i32, master: BorrowedFd<'_>, root: i32) -> Result<Pty, Error> {
    let what = || format!("pid {pid} fd {fd}: pty master");
    let unsupported = |what: String| Error::Unsupported { pid, what: format!("fd {fd}: {what}") };
    let index = sys::get_int(master, libc::TIOCGPTN).ctx(what)? as u32;
    let termios = sys::get_termios(master).ctx(what)?;
    if termios.get(16).copied().unwrap_or(0) != 0 {
        return Err(unsupported(format!("pty /dev/pts/{index} with line discipline {}", termios[16])));
    }
    let ws = sys::get_winsize(master).ctx(what)?;
    let pty = Pty {
        index,
        termios,
        rows: ws[0].into(),
        cols: ws[1].into(),
        xpixel: ws[2].into(),
        ypixel: ws[3].into(),
        packet: sys::get_int(master, libc::TIOCGPKT).ctx(what)? != 0,
        locked: sys::get_int(master, libc::TIOCGPTLCK).ctx(what)? != 0,
        session: sys::get_int(master, libc::TIOCGSID).unwrap_or(0),
        foreground_pgrp: sys::get_int(master, libc::TIOCGPGRP).unwrap_or(0),
        ..Default::default()
    };
    // The slave node's owner and mode (grantpt, or a chown by the process): from /dev/pts in
    // the tree root's devpts instance; in another one (a nested mount namespace's), through a
    // new slave description of the pair, whose device names the instance.
    let slave = peer(master).ctx(|| format!("pid {pid} fd {fd}: pty /dev/pts/{index}: cannot open its slave"))?;
    let smd = std::fs::File::from(slave).metadata().ctx(what)?;
    let devpts_dev = instance(pid, smd.dev(), root)?;
    let md = if devpts_dev != 0 {
        smd
    } else {
        let node = format!("/dev/pts/{index}");
        std::fs::metadata(crate::procfs::in_root(pid, &node))
            .ctx(|| format!("pid {pid} fd {fd}: cannot stat {node}"))?
    };
    let pty = Pty { slave_mode: Some(md.mode() & 0o7777), slave_uid: md.uid(), slave_gid: md.gid(), devpts_dev, ..pty };
    let mut pty = pty;
    take_queued(master, &mut pty)
        .ctx(|| format!("pid {pid} fd {fd}: pty /dev/pts/{index}: cannot save its queued bytes"))?;
    Ok(pty)
}

// struct termios2 (x86_64): c_iflag, c_oflag, c_cflag, c_lflag (u32 each), c_line, c_cc[19].
const C_IFLAG: usize = 0;
const C_OFLAG: usize = 4;
const C_LFLAG: usize = 12;
const C_CC: usize = 17;

fn flags(t: &[u8], at: usize) -> u32 {
    t.get(at..at + 4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn clear(t: &mut [u8], at: usize, bits: u32) {
    let v = flags(t, at) & !bits;
    if let Some(b) = t.get_mut(at..at + 4) {
        b.copy_from_slice(&v.to_le_bytes());
    }
}

/// Settings under which queued bytes go back into a pair as they are: they were processed by
/// the line discipline once already, so no echo, no signals, no input or output translation;
/// canonical mode as it was, so that line boundaries (and the line being typed) are recreated.
fn put_back_termios(t: &[u8]) -> Vec<u8> {
    let mut t = t.to_vec();
    clear(&mut t, C_IFLAG, libc::ICRNL | libc::INLCR | libc::IGNCR | libc::IXON | libc::ISTRIP | libc::IUCLC);
    clear(&mut t, C_OFLAG, libc::OPOST);
    clear(
        &mut t,
        C_LFLAG,
        libc::ECHO
            | libc::ECHOE
            | libc::ECHOK
            | libc::ECHONL
            | libc::ECHOCTL
            | libc::ECHOKE
            | libc::ISIG
            | libc::IEXTEN,
    );
    t
}

fn canonical(termios: &[u8]) -> bool {
    flags(termios, C_LFLAG) & libc::ICANON != 0
}

/// Whether `c` ends a line in canonical mode (NL, or the VEOL / VEOL2 character if set).
fn ends_line(termios: &[u8], c: u8) -> bool {
    c == b'\n' || [libc::VEOL, libc::VEOL2].iter().any(|&i| c != 0 && termios.get(C_CC + i) == Some(&c))
}

/// A slave description of the pair of `master`, non-blocking (the pair unlocked for the moment
/// if it is locked).
fn peer(master: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    let locked = sys::get_int(master, libc::TIOCGPTLCK)? != 0;
    if locked {
        sys::set_int(master, libc::TIOCSPTLCK, 0)?;
    }
    let slave = sys::open_peer(master, libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC);
    if locked {
        sys::set_int(master, libc::TIOCSPTLCK, 1)?;
    }
    slave
}

/// Read every byte queued in either direction of the pair of `master` (a copy of the target's
/// own description) into `pty.output` and `pty.input`, then put them back: the pair is left as
/// it was (CRIU's "queued data" does the same: a terminal buffer cannot be peeked).
fn take_queued(master: BorrowedFd<'_>, pty: &mut Pty) -> std::io::Result<()> {
    // Output: what the slave side wrote, waiting in the master's buffer (FIONREAD counts it;
    // in packet mode each read starts with a status byte).
    let mut out_left = sys::get_int(master, libc::FIONREAD)? as usize;
    let mut buf = vec![0u8; 4097];
    while out_left > 0 {
        let n = ferry_sys::raw::read_once(master.as_raw_fd(), &mut buf[..out_left.min(4096) + 1])?;
        let data = if pty.packet { buf.get(1..n).unwrap_or(&[]) } else { &buf[..n] };
        if n == 0 {
            break;
        }
        out_left = out_left.saturating_sub(data.len());
        pty.output.extend_from_slice(data);
    }
    // Input: what the master side wrote, waiting for the slave's reader. In canonical mode the
    // complete lines first, one read each: a read of 0 bytes is an end-of-file mark, and a line
    // without its line end ended with one; both are kept as the VEOF character, which queues
    // the mark again. Then the line being typed, not readable in canonical mode:
    // non-canonical for the moment, everything is.
    let slave = peer(master)?;
    if canonical(&pty.termios) {
        let eof = pty.termios.get(C_CC + libc::VEOF).copied().unwrap_or(4);
        for _ in 0..8192 {
            match ferry_sys::raw::read_once(slave.as_raw_fd(), &mut buf[..4096]) {
                Ok(n) => {
                    pty.input.extend_from_slice(&buf[..n]);
                    if n == 0 || !ends_line(&pty.termios, buf[n - 1]) {
                        pty.input.push(eof);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
    let mut drain = put_back_termios(&pty.termios);
    clear(&mut drain, C_LFLAG, libc::ICANON);
    drain[C_CC + libc::VMIN] = 0;
    drain[C_CC + libc::VTIME] = 0;
    sys::set_termios(master, &drain)?;
    let r = (|| {
        loop {
            match ferry_sys::raw::read_once(slave.as_raw_fd(), &mut buf[..4096]) {
                Ok(0) => break,
                Ok(n) => pty.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        queue(master, slave.as_fd(), &pty.termios, &pty.input, &pty.output)
    })();
    // (The pair's own settings back, whatever happened.)
    let back = sys::set_termios(master, &pty.termios);
    r.and(back)
}

/// Queue `input` for the slave's reader and `output` for the master's reader of a pair, as
/// they were queued at dump time; the pair's settings are `termios` again afterwards.
fn queue(
    master: BorrowedFd<'_>,
    slave: BorrowedFd<'_>,
    termios: &[u8],
    input: &[u8],
    output: &[u8],
) -> std::io::Result<()> {
    if input.is_empty() && output.is_empty() {
        return Ok(());
    }
    sys::set_termios(master, &put_back_termios(termios))?;
    let before_out = sys::get_int(master, libc::FIONREAD)? as usize;
    ferry_sys::raw::write_all(master.as_raw_fd(), input)?;
    ferry_sys::raw::write_all(slave.as_raw_fd(), output)?;
    // The line discipline takes the bytes in asynchronously: wait until it has (in canonical
    // mode the slave counts complete lines only; a line being typed follows with its line).
    // (End-of-file marks are not counted.)
    let eof = termios.get(C_CC + libc::VEOF).copied().unwrap_or(4);
    let want_in = if canonical(termios) {
        match input.iter().rposition(|&c| ends_line(termios, c) || c == eof) {
            Some(i) => input[..=i].iter().filter(|&&c| c != eof).count(),
            None => 0,
        }
    } else {
        input.len()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        let inq = sys::get_int(slave, libc::FIONREAD)? as usize;
        let outq = sys::get_int(master, libc::FIONREAD)? as usize;
        if inq >= want_in && outq >= before_out + output.len() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    if want_in < input.len() {
        std::thread::sleep(std::time::Duration::from_millis(20)); // (a line being typed: not counted)
    }
    sys::set_termios(master, termios)
}

/// The devpts instance of device `dev` a pty of `pid` is in, as `Pty.devpts_dev`: 0 when the
/// tree root (`root`) shows a devpts of that device (its own instance, restored with its mount
/// tree; also when `root` is unknown, 0), else `dev` when `pid`'s mount namespace shows one (a
/// fresh devpts of a nested mount namespace: state/mounts.rs makes the pair there); a pty of an
/// instance mounted in neither is refused by name.
fn instance(pid: i32, dev: u64, root: i32) -> Result<u64, Error> {
    let shows = |p: i32| -> Result<bool, Error> {
        let text = crate::procfs::read_string(p, "mountinfo")?;
        let infos = crate::procfs::parse(p, "mountinfo", ferry_proc::parse_mountinfo(&text))?;
        Ok(infos
            .iter()
            .any(|m| m.fs_type == "devpts" && (m.dev_major, m.dev_minor) == (libc::major(dev), libc::minor(dev))))
    };
    if root == 0 || shows(root)? {
        return Ok(0);
    }
    if shows(pid)? {
        return Ok(dev);
    }
    Err(Error::Unsupported {
        pid,
        what: format!(
            "a pty of a devpts instance ({}:{}) mounted neither in its mount namespace nor in the tree root's",
            libc::major(dev),
            libc::minor(dev)
        ),
    })
}

/// Classify fd `fd` of `pid`, a terminal device `link` with device number `rdev`: a pty master
/// (its pair's state is saved), a pty slave (decided in [`finish`]: in the image when its master
/// is), or another terminal (only fds 0-2, handed over at restore with `--shell-job`).
pub fn collect(pid: i32, fd: i32, link: &str, rdev: u64, file: &mut File, tree: &mut TreeTty) -> Result<(), Error> {
    let copy = copy_fd(pid, fd)?;
    if is_ptmx(rdev) {
        let pty = read_pair(pid, fd, copy.as_fd(), tree.root)?;
        file.kind = FileKind::PtyMaster as i32;
        file.path = "/dev/ptmx".into();
        file.describe = format!("{link} (pty master of /dev/pts/{})", pty.index);
        tree.masters.insert((pty.devpts_dev, pty.index), pty.clone());
        file.pty = Some(pty);
        return Ok(());
    }
    let index = pts_index(rdev);
    let mut devpts_dev = 0;
    match index {
        Some(i) => {
            let md = std::fs::File::from(copy.try_clone().ctx(|| format!("pid {pid} fd {fd}"))?)
                .metadata()
                .ctx(|| format!("pid {pid} fd {fd}: cannot stat {link}"))?;
            devpts_dev = instance(pid, md.dev(), tree.root)?;
            file.kind = FileKind::PtySlave as i32;
            file.pty = Some(Pty { index: i, devpts_dev, ..Default::default() });
        }
        None => file.kind = FileKind::Inherited as i32,
    }
    tree.terms.push(TermFd {
        name: link.to_string(),
        index,
        termios: sys::get_termios(copy.as_fd()).unwrap_or_default(),
        exclusive: sys::get_int(copy.as_fd(), libc::TIOCGEXCL).unwrap_or(0) != 0,
        winsize: sys::get_winsize(copy.as_fd()).unwrap_or_default(),
        pid,
        devpts_dev,
    });
    Ok(())
}

fn shell_job_refusal(pid: i32, what: String) -> Error {
    Error::Invalid {
        object: format!("pid {pid}"),
        what: format!("{what} is outside the dump (a job started from a terminal): dump it with --shell-job"),
    }
}

/// Once every process is collected: slaves whose master is in the tree get the pair's state;
/// fds and controlling terminals on a terminal outside the tree need `shell_job` and are
/// recorded in the returned [`TtyShellJob`]. `procs[0]` is the root.
///
/// A terminal outside the tree named with `dump --external tty[RDEV:DEV]` (`external`: those
/// keys, state/external.rs) is kept on any fd as an `Inherited` file with that key: restore
/// takes it from `--inherit-fd fd[N]:tty[RDEV:DEV]`. (A controlling terminal outside still needs
/// `--shell-job`.)
///
/// With `orphan_pts` (CRIU's `orphan_pts_master`, sent by runc): a pty slave whose master is
/// outside the tree (a container's console) is kept as an orphan pair (see [`orphans`]).
pub fn finish(
    procs: &mut [Process],
    tree: &mut TreeTty,
    shell_job: bool,
    orphan_pts: bool,
    external: &std::collections::HashSet<String>,
) -> Result<Option<TtyShellJob>, Error> {
    if orphan_pts {
        orphans(procs, tree)?;
    }
    // What the slaves tell about their pair: exclusive mode, and input nobody has read.
    for t in &tree.terms {
        let Some(pty) = t.index.and_then(|i| tree.masters.get_mut(&(t.devpts_dev, i))) else { continue };
        pty.exclusive |= t.exclusive;
    }
    // Every fd on a terminal that is not a master of the tree, in every process (descriptions
    // shared across processes were collected once, in the first).
    let mut outside: Option<&TermFd> = None;
    for p in procs.iter_mut() {
        let pid = p.pid;
        for d in &p.fds {
            let f = &mut p.files[d.file as usize];
            let name = match FileKind::try_from(f.kind) {
                Ok(FileKind::PtySlave) => {
                    let key = f.pty.as_ref().map(|t| (t.devpts_dev, t.index)).unwrap_or((0, u32::MAX));
                    if let Some(pty) = tree.masters.get(&key) {
                        f.pty = Some(pty.clone());
                        continue;
                    }
                    f.describe.clone()
                }
                // /dev/tty of a process whose controlling terminal is a pair of the image: a
                // description of that pair's slave (what the kernel gives on open).
                Ok(FileKind::Inherited) if f.path == "/dev/tty" && ctty_pair(p.tty_nr, tree).is_some() => {
                    f.kind = FileKind::PtySlave as i32;
                    f.pty = ctty_pair(p.tty_nr, tree).cloned();
                    f.describe = format!("/dev/tty (controlling terminal {})", tty_name(p.tty_nr as u64));
                    continue;
                }
                // A terminal other than a pty slave (pipes and sockets have no path).
                Ok(FileKind::Inherited) if f.path.starts_with("/dev/") => f.path.clone(),
                _ => continue,
            };
            let md = std::fs::metadata(crate::procfs::path(pid, &format!("fd/{}", d.fd)));
            let key = md.map(|m| crate::state::external::tty_key(m.rdev(), m.dev())).unwrap_or_default();
            if external.contains(&key) {
                f.kind = FileKind::Inherited as i32;
                f.pty = None;
                f.describe = format!("{name} (external {key})");
                f.external_key = key;
                continue;
            }
            if d.fd > 2 {
                return Err(Error::Unsupported {
                    pid,
                    what: format!(
                        "fd {}: terminal {name} outside the dump (only fds 0-2 can be handed over, with --shell-job; or name it with --external {key})",
                        d.fd
                    ),
                });
            }
            if !shell_job {
                return Err(shell_job_refusal(pid, format!("fd {} is on terminal {name}, which", d.fd)));
            }
            f.kind = FileKind::Inherited as i32;
            f.pty = None;
            if outside.is_none() {
                outside = tree.terms.iter().find(|t| t.name == name);
            }
        }
    }
    // Controlling terminals.
    let mut ctty_outside = None;
    for p in procs.iter().filter(|p| p.tty_nr != 0) {
        let rdev = p.tty_nr as u64;
        if ctty_pair(p.tty_nr, tree).is_some() {
            continue;
        }
        if !shell_job {
            return Err(shell_job_refusal(p.pid, format!("controlling terminal {}", tty_name(rdev))));
        }
        ctty_outside.get_or_insert_with(|| tty_name(rdev));
    }
    // A pair that is a session's controlling terminal needs that session's leader.
    for ((_, index), pty) in tree.masters.iter() {
        if pty.session != 0 && !procs.iter().any(|p| p.pid == pty.session && p.sid == pty.session) {
            let pid = procs.iter().find(|p| p.sid == pty.session).map(|p| p.pid).unwrap_or(procs[0].pid);
            return Err(Error::Unsupported {
                pid,
                what: format!(
                    "pty /dev/pts/{index}: the controlling terminal of session {}, whose leader is outside the dump",
                    pty.session
                ),
            });
        }
        if pty.foreground_pgrp != 0 && !procs.iter().any(|p| p.pgid == pty.foreground_pgrp && !p.zombie) {
            tracing::warn!(
                pty = index,
                pgrp = pty.foreground_pgrp,
                "the pty's foreground process group has no live process in the dump; restore leaves the session leader's group in the foreground"
            );
        }
    }
    let (terminal, termios) = match (outside, ctty_outside) {
        (Some(t), _) => (t.name.clone(), t.termios.clone()),
        (None, Some(name)) => (name, Vec::new()),
        (None, None) => return Ok(None),
    };
    let root = &procs[0];
    let stat = crate::procfs::read_string(root.pid, "stat")?;
    let stat = crate::procfs::parse(root.pid, "stat", ferry_proc::parse_stat(&stat))?;
    let foreground = root.tty_nr != 0 && stat.tpgid == root.pgid;
    tracing::info!(terminal, foreground, "shell job");
    Ok(Some(TtyShellJob {
        terminal,
        foreground,
        termios: if foreground { termios } else { Vec::new() },
        pgid: root.pgid,
    }))
}

/// The image's pair that is controlling terminal `tty_nr` (of /proc/PID/stat), if any: the
/// device number names no devpts instance, so only a pair whose index no pair of another
/// instance has (else it counts as a terminal outside the dump, refused by name).
fn ctty_pair(tty_nr: u32, tree: &TreeTty) -> Option<&Pty> {
    let i = pts_index(tty_nr as u64).filter(|_| tty_nr != 0)?;
    let mut of = tree.masters.iter().filter(|((_, index), _)| *index == i);
    match (of.next(), of.next()) {
        (Some((_, pty)), None) => Some(pty),
        _ => None,
    }
}

/// Pty slaves of the tree whose master is outside it (a container's console: runc's console
/// socket or conmon holds the master) become orphan pairs of the image, as CRIU does with
/// `orphan_pts_master`: the slave's settings, window size and node, the session it is the
/// controlling terminal of and that session's foreground group. The bytes queued in the pair
/// cannot be read without the master and are not kept.
fn orphans(procs: &[Process], tree: &mut TreeTty) -> Result<(), Error> {
    for t in &tree.terms {
        let Some(index) = t.index.filter(|i| !tree.masters.contains_key(&(t.devpts_dev, *i))) else { continue };
        let is_ctty = |p: &&Process| p.tty_nr != 0 && pts_index(p.tty_nr as u64) == Some(index);
        let leader = procs.iter().filter(is_ctty).find(|p| p.sid == p.pid && !p.zombie);
        let foreground_pgrp = match leader {
            Some(l) => {
                let stat = crate::procfs::read_string(l.pid, "stat")?;
                crate::procfs::parse(l.pid, "stat", ferry_proc::parse_stat(&stat))?.tpgid.max(0)
            }
            None => 0,
        };
        let node = format!("/dev/pts/{index}");
        let md = match t.devpts_dev {
            0 => std::fs::metadata(crate::procfs::in_root(t.pid, &node)),
            _ => std::fs::metadata(crate::procfs::in_root(t.pid, &t.name)),
        }
        .ctx(|| format!("pid {}: pty slave {}: cannot stat {node}", t.pid, t.name))?;
        tracing::info!(
            index,
            session = leader.map(|l| l.pid),
            "pty slave whose master is outside the tree: kept as an orphan pair"
        );
        let [rows, cols, xpixel, ypixel] = t.winsize.map(u32::from);
        tree.masters.insert(
            (t.devpts_dev, index),
            Pty {
                index,
                termios: t.termios.clone(),
                rows,
                cols,
                xpixel,
                ypixel,
                session: leader.map_or(0, |l| l.pid),
                foreground_pgrp,
                slave_mode: Some(md.mode() & 0o7777),
                slave_uid: md.uid(),
                slave_gid: md.gid(),
                orphan: true,
                devpts_dev: t.devpts_dev,
                ..Default::default()
            },
        );
    }
    Ok(())
}

/// Masters opened before the terminals are set up, by devpts instance (`Pty.devpts_dev`) and
/// index: the mount code needs a slave node to exist to bind it (runc bind-mounts the console's
/// slave onto /dev/console) before [`prepare`] runs, and the pairs of a nested mount
/// namespace's devpts are made in it while ferry's thread is there ([`open_in_instance`]);
/// [`set_up_pair`] takes them.
static EARLY_MASTERS: std::sync::Mutex<Vec<((u64, u32), OwnedFd)>> = std::sync::Mutex::new(Vec::new());

/// Make slave `rel` ("N") of the devpts instance mounted at `devpts` exist: open that
/// instance's ptmx until it hands out index N (lower indexes opened on the way are closed
/// again), and keep the master for [`set_up_pair`].
pub fn open_for_bind(devpts: &std::path::Path, rel: &str) -> Result<(), String> {
    let index: u32 = rel.trim_matches('/').parse().map_err(|_| format!("devpts file {rel:?} is not a pty slave"))?;
    open_index(devpts, 0, index)
}

/// The pairs of the image in a devpts instance other than the tree root's (`Pty.devpts_dev`,
/// index), masters and orphans, for [`open_in_instance`].
pub fn instance_pairs(procs: &[Process]) -> Vec<(u64, u32)> {
    let mut v: Vec<(u64, u32)> = procs
        .iter()
        .flat_map(|p| p.files.iter())
        .filter_map(|f| f.pty.as_ref().filter(|t| t.devpts_dev != 0).map(|t| (t.devpts_dev, t.index)))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// In the nested mount namespace that has just mounted the fresh devpts of device `dev` at
/// dump at `devpts`: make the image's pairs of that instance (`pairs`: [`instance_pairs`])
/// there with their indexes, for [`set_up_pair`].
pub fn open_in_instance(devpts: &std::path::Path, dev: u64, pairs: &[(u64, u32)]) -> Result<(), String> {
    for (_, index) in pairs.iter().filter(|p| p.0 == dev) {
        open_index(devpts, dev, *index)?;
    }
    Ok(())
}

/// Open the ptmx of the devpts instance mounted at `devpts` until it hands out `index` (lower
/// ones are closed again) and keep that master as the early one of (`dev`, `index`).
fn open_index(devpts: &std::path::Path, dev: u64, index: u32) -> Result<(), String> {
    let ptmx = devpts.join("ptmx");
    let mut lower = Vec::new();
    for _ in 0..=index {
        let m = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&ptmx)
            .map_err(|e| format!("cannot open {} to make /dev/pts/{index}: {e}", ptmx.display()))?;
        let m = OwnedFd::from(m);
        let got = sys::get_int(m.as_fd(), libc::TIOCGPTN).map_err(|e| format!("{}: TIOCGPTN: {e}", ptmx.display()))?;
        match (got as u32).cmp(&index) {
            std::cmp::Ordering::Less => lower.push(m),
            std::cmp::Ordering::Equal => {
                EARLY_MASTERS.lock().unwrap_or_else(|p| p.into_inner()).push(((dev, index), m));
                return Ok(());
            }
            std::cmp::Ordering::Greater => break,
        }
    }
    Err(format!("{} did not hand out /dev/pts/{index} (it is taken)", ptmx.display()))
}

/// Before anything of a restore is done: an image with an orphan pair (a container's console)
/// needs a caller that takes the new master (`orphan_pts`: CRIU RPC's `orphan_pts_master`).
pub fn check_orphans(procs: &[Process], orphan_pts: bool) -> Result<(), Error> {
    let orphan = procs.iter().flat_map(|p| p.files.iter()).find_map(|f| f.pty.as_ref().filter(|t| t.orphan));
    match orphan {
        Some(pty) if !orphan_pts => Err(Error::Invalid {
            object: format!("pty /dev/pts/{}", pty.index),
            what: "its master was outside the dump (a container's console): only a client that takes the new master can restore it (CRIU RPC orphan_pts_master, as runc sends)".into(),
        }),
        _ => Ok(()),
    }
}

/// Drop the masters [`open_for_bind`] made that no pair took (a restore that failed midway, or
/// a bound slave of no pair of the image): each restore starts and ends with none.
pub fn forget_early_masters() {
    EARLY_MASTERS.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// A pair created for the restore: its master and a spare slave description, both at numbers at
/// or above the restore's fd base so every forked process inherits them.
struct Pair {
    master: OwnedFd,
    slave: OwnedFd,
    pty: Pty,
}

/// What restore needs from this module: the new pairs (by dump-time index), and for a shell job
/// ferry's own terminal.
#[derive(Default)]
pub struct Restore {
    pairs: HashMap<(u64, u32), Pair>,
    shell_job: Option<TtyShellJob>,
    /// ferry's controlling terminal (/dev/tty), for a shell job.
    own_tty: Option<OwnedFd>,
}

fn set_up_pair(pty: &Pty, base: i32) -> Result<Pair, Error> {
    let obj = || format!("pty /dev/pts/{} (new pair)", pty.index);
    let early = {
        let mut e = EARLY_MASTERS.lock().unwrap_or_else(|p| p.into_inner());
        e.iter().position(|(k, _)| *k == (pty.devpts_dev, pty.index)).map(|at| e.swap_remove(at).1)
    };
    let master = match early {
        Some(m) => m,
        None if pty.devpts_dev != 0 => {
            return Err(Error::Invalid {
                object: obj(),
                what: format!(
                    "its devpts instance (device {}:{} at dump, of a nested mount namespace) was not made",
                    libc::major(pty.devpts_dev),
                    libc::minor(pty.devpts_dev)
                ),
            })
        }
        None => ferry_sys::process::open_raw(c"/dev/ptmx", libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC, 0)
            .ctx(|| format!("{}: cannot open /dev/ptmx", obj()))?,
    };
    let master = ferry_sys::raw::dup_above(master.as_fd(), base).ctx(obj)?;
    sys::set_int(master.as_fd(), libc::TIOCSPTLCK, 0).ctx(|| format!("{}: unlock", obj()))?;
    let slave = sys::open_peer(master.as_fd(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC)
        .ctx(|| format!("{}: TIOCGPTPEER", obj()))?;
    let slave = ferry_sys::raw::dup_above(slave.as_fd(), base).ctx(obj)?;
    sys::set_termios(master.as_fd(), &pty.termios).ctx(|| format!("{}: cannot set termios", obj()))?;
    let ws = [pty.rows, pty.cols, pty.xpixel, pty.ypixel].map(|v| v as u16);
    sys::set_winsize(master.as_fd(), ws).ctx(|| format!("{}: cannot set the window size", obj()))?;
    if pty.packet {
        sys::set_int(master.as_fd(), libc::TIOCPKT, 1).ctx(|| format!("{}: packet mode", obj()))?;
    }
    if pty.exclusive {
        sys::no_arg(slave.as_fd(), libc::TIOCEXCL).ctx(|| format!("{}: exclusive mode", obj()))?;
    }
    if let Some(mode) = pty.slave_mode {
        std::os::unix::fs::fchown(&slave, Some(pty.slave_uid), Some(pty.slave_gid))
            .ctx(|| format!("{}: cannot give the slave to {}:{}", obj(), pty.slave_uid, pty.slave_gid))?;
        let f = std::fs::File::from(slave.try_clone().ctx(obj)?);
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
            .ctx(|| format!("{}: cannot set the slave's mode {mode:o}", obj()))?;
    }
    queue(master.as_fd(), slave.as_fd(), &pty.termios, &pty.input, &pty.output)
        .ctx(|| format!("{}: cannot queue its unread bytes again", obj()))?;
    if pty.locked {
        sys::set_int(master.as_fd(), libc::TIOCSPTLCK, 1).ctx(|| format!("{}: lock", obj()))?;
    }
    let now = sys::get_int(master.as_fd(), libc::TIOCGPTN).unwrap_or(-1);
    if now != pty.index as i32 {
        tracing::info!(old = pty.index, new = now, "pty restored under another /dev/pts index");
    }
    Ok(Pair { master, slave, pty: pty.clone() })
}

/// In ferry, before forking: create every pair of the image; check and prepare a shell job.
///
/// An orphan pair (its master was outside the tree) is created too (the client takes its
/// master: [`Restore::orphan_masters`]; [`check_orphans`] refused the image before if it cannot).
pub fn prepare(
    img: &ferry_image::ImageReader,
    procs: &[Process],
    base: i32,
    shell_job: bool,
) -> Result<Restore, Error> {
    let mut r = Restore::default();
    for f in procs.iter().flat_map(|p| p.files.iter()) {
        let Some(pty) = f.pty.as_ref() else { continue };
        if f.kind != FileKind::PtyMaster as i32 && !pty.orphan {
            continue;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = r.pairs.entry((pty.devpts_dev, pty.index)) {
            e.insert(set_up_pair(pty, base)?);
        }
    }
    forget_early_masters();
    let root = procs.first().map(|p| p.pid).unwrap_or(0);
    if let Some(job) = &img.inventory().shell_job {
        if !shell_job {
            return Err(Error::Invalid {
                object: format!("pid {root}"),
                what: format!(
                    "was dumped as a job of terminal {} (--shell-job); restore it with --shell-job onto the terminal ferry runs on",
                    job.terminal
                ),
            });
        }
        if procs.first().is_some_and(|p| p.pgid != p.pid && !procs.iter().any(|q| q.pid == p.pgid)) {
            tracing::warn!(
                pid = root,
                pgid = job.pgid,
                "the job's process group was led by a process outside the dump: it joins ferry's process group"
            );
        }
        match ferry_sys::process::open_raw(c"/dev/tty", libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC, 0) {
            Ok(fd) => r.own_tty = Some(fd),
            Err(e) => tracing::warn!(
                error = %e,
                "ferry has no controlling terminal: the restored job has none either and is not made the foreground job"
            ),
        }
        r.shell_job = Some(job.clone());
    }
    Ok(r)
}

impl Restore {
    /// The masters of the orphan pairs (dump-time index, fd in ferry), for the client.
    pub fn orphan_masters(&self) -> Vec<(u32, BorrowedFd<'_>)> {
        let mut v: Vec<_> =
            self.pairs.iter().filter(|(_, p)| p.pty.orphan).map(|(k, p)| (k.1, p.master.as_fd())).collect();
        v.sort_by_key(|(i, _)| *i);
        v
    }
}

/// Open a new description of a pty end for a `PtyMaster`/`PtySlave` file of the image.
pub fn open(obj: &str, f: &File, r: &Restore) -> Result<OwnedFd, Error> {
    let pty = f.pty.as_ref().ok_or_else(|| Error::Invalid { object: obj.into(), what: "pty state missing".into() })?;
    let pair = r.pairs.get(&(pty.devpts_dev, pty.index)).ok_or_else(|| Error::Invalid {
        object: obj.into(),
        what: format!("the master of /dev/pts/{} is missing from the image", pty.index),
    })?;
    let fd = if f.kind == FileKind::PtyMaster as i32 {
        pair.master.try_clone().ctx(|| obj.to_string())?
    } else {
        // Without O_CLOEXEC (TIOCGPTPEER keeps it in the description's flags, where F_GETFL and
        // fdinfo show it; the fd is made close-on-exec by the dup below), with O_LARGEFILE as
        // it was (open(2) sets it, TIOCGPTPEER does not).
        // (The kernel's O_LARGEFILE: libc's is 0 on x86-64, where open(2) adds it itself.)
        const O_LARGEFILE: i32 = 0o100000;
        let flags = (f.flags as i32 & (libc::O_ACCMODE | libc::O_NONBLOCK | O_LARGEFILE)) | libc::O_NOCTTY;
        if pair.pty.locked {
            sys::set_int(pair.master.as_fd(), libc::TIOCSPTLCK, 0).ctx(|| format!("{obj}: unlock"))?;
        }
        let fd = sys::open_peer(pair.master.as_fd(), flags);
        if pair.pty.locked {
            sys::set_int(pair.master.as_fd(), libc::TIOCSPTLCK, 1).ctx(|| format!("{obj}: lock"))?;
        }
        let fd = fd.ctx(|| format!("{obj}: cannot open the slave (TIOCGPTPEER)"))?;
        ferry_sys::raw::dup_above(fd.as_fd(), 0).ctx(|| obj.to_string())?
    };
    ferry_sys::process::set_status_flags(fd.as_fd(), f.flags as i32).ctx(|| obj.to_string())?;
    Ok(fd)
}

/// In a restored child, right after its session and group are set (signals are all blocked):
/// a session leader takes its pty as controlling terminal; the first live process of a pty's
/// foreground group gives the terminal to its group.
pub fn apply_in_child(r: &Restore, p: &Process, procs: &[Process]) -> Result<(), String> {
    for pair in r.pairs.values() {
        let pty = &pair.pty;
        if pty.session == p.pid && p.sid == p.pid {
            sys::set_ctty(pair.slave.as_raw_fd(), false)
                .map_err(|e| format!("cannot make /dev/pts/{} the controlling terminal (TIOCSCTTY): {e}", pty.index))?;
        }
        let first = procs.iter().find(|q| q.pgid == pty.foreground_pgrp && !q.zombie).map(|q| q.pid);
        if pty.foreground_pgrp != 0 && pty.foreground_pgrp == p.pgid && first == Some(p.pid) && p.sid == pty.session {
            sys::set_foreground(pair.slave.as_raw_fd(), p.pgid).map_err(|e| {
                format!("cannot make group {} the foreground of /dev/pts/{} (TIOCSPGRP): {e}", p.pgid, pty.index)
            })?;
        }
    }
    Ok(())
}

/// In ferry, once the tree is rebuilt and before it is released: a shell job that owned its
/// terminal gets ferry's terminal (its settings, and its group in the foreground when ferry
/// could recreate the group; a job that joined ferry's group is in the foreground with ferry).
pub fn finish_shell_job(r: &Restore, root: &Process, procs: &[Process]) -> Result<(), Error> {
    let (Some(job), Some(tty)) = (&r.shell_job, &r.own_tty) else { return Ok(()) };
    if !job.foreground {
        return Ok(());
    }
    if root.sid == root.pid {
        tracing::warn!(
            pid = root.pid,
            "the job led its own session: it is restored as a new session without a controlling terminal"
        );
        return Ok(());
    }
    let obj = || format!("pid {}: shell job terminal", root.pid);
    // ferry itself may be in the background now: block SIGTTOU (and everything else) around the
    // calls, so that the kernel lets them through instead of stopping ferry.
    let old = ferry_sys::raw::set_sigmask_self(!0).ctx(obj)?;
    let r = (|| -> Result<(), Error> {
        if !job.termios.is_empty() {
            sys::set_termios(tty.as_fd(), &job.termios).ctx(|| format!("{}: cannot set termios", obj()))?;
        }
        // The group was recreated when a process of the tree led it (else it is ferry's).
        if procs.iter().any(|p| p.pid == root.pgid) {
            sys::set_foreground(tty.as_raw_fd(), root.pgid)
                .ctx(|| format!("{}: cannot make group {} the foreground (TIOCSPGRP)", obj(), root.pgid))?;
        }
        Ok(())
    })();
    ferry_sys::raw::set_sigmask_self(old).ctx(obj)?;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_names() {
        assert_eq!(tty_name(libc::makedev(136, 3)), "/dev/pts/3");
        assert_eq!(tty_name(libc::makedev(137, 4)), "/dev/pts/260");
        assert_eq!(tty_name(libc::makedev(4, 1)), "/dev/tty1");
        assert_eq!(tty_name(libc::makedev(4, 64)), "/dev/ttyS0");
        assert_eq!(tty_name(libc::makedev(5, 1)), "/dev/console");
        assert_eq!(pts_index(libc::makedev(5, 2)), None);
        assert!(is_ptmx(libc::makedev(5, 2)));
        assert!(is_tty_major(136) && !is_tty_major(1));
    }
}
