//! Real programs from Debian, checkpointed as a CRIU user would: redis-server with clients
//! connected (a MULTI half queued, a client blocked in BLPOP, a subscriber, a background save in
//! progress), nginx with a master and two workers under a load of keep-alive connections,
//! PostgreSQL 15 with a client inside a transaction, a python3 `ThreadingHTTPServer` with its
//! keep-alive clients, a `yes | head | gzip | sha256sum` pipeline, sqlite3 in WAL mode
//! mid-transaction, and redis moved with `ferry migrate --pre-copy` between two network
//! namespaces while a client keeps writing to it.
//!
//! Each test dumps (also with `-R`), kills, restores and then checks from outside (the clients
//! the test holds keep their connections and get the answers that follow, byte for byte) and from
//! inside (the program's own view: redis's `DEBUG DIGEST`, run id and client ids, a reload of
//! its AOF; nginx serving on the same connections and reloading its workers; postgres committing
//! the transaction; the pipeline's checksum equal to an uninterrupted run's).
//!
//! Every program is started through `closefds` (no fd of the test runner leaks into the tree)
//! and restored with `ferry restore` as its parent, so its exit status comes back to the test.

use crate::common::*;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

mod inherited;
mod migrate;
mod nginx;
mod pipeline;
mod postgres;
mod pyhttp;
mod redis;
mod sqlite;

/// A free TCP port on 127.0.0.1 (bound and released: the program binds it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// Start `program args` through closefds (which execs in place: the pid is the program's), its
/// stdout and stderr to W/<label>.out and W/<label>.err.
fn start(w: &WorkDir, label: &str, program: &Path, args: &[&str]) -> Child {
    workload_command(&ferry_workloads::path("closefds"))
        .arg(program)
        .args(args)
        .current_dir(&w.path)
        .stdin(Stdio::null())
        .stdout(File::create(w.join(&format!("{label}.out"))).expect("stdout file"))
        .stderr(File::create(w.join(&format!("{label}.err"))).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()))
}

/// A FIFO in W that a command started through [`Stray::wrapper`] inherits, as ferry's caller's
/// stray fd (a CI runner's pipe: open, not close-on-exec) at fd 9; the test holds its read end.
struct Stray {
    path: PathBuf,
    reader: File,
}

impl Stray {
    fn new(w: &WorkDir) -> Stray {
        let path = w.join("realapps-stray.fifo");
        let out = Command::new("mkfifo").arg(&path).output().expect("run mkfifo");
        assert!(out.status.success(), "mkfifo: {}", String::from_utf8_lossy(&out.stderr));
        use std::os::unix::fs::OpenOptionsExt;
        let reader = fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&path).expect("open FIFO");
        Stray { path, reader }
    }

    /// `sh -c 'exec "$@" 9>FIFO' sh`: a prefix that runs the rest with the FIFO at fd 9.
    fn wrapper(&self) -> Vec<String> {
        let exec = format!("exec \"$@\" 9>'{}'", path_str(&self.path));
        ["sh".to_string(), "-c".to_string(), exec, "sh".to_string()].to_vec()
    }

    /// The processes of the tree under `root` (itself included) that hold the FIFO.
    fn holders(&self, root: i32) -> Vec<String> {
        let mut found = Vec::new();
        for p in tree(root) {
            for (fd, link) in fds(p) {
                if link == path_str(&self.path) {
                    found.push(format!("pid {p} fd {fd}"));
                }
            }
        }
        found
    }

    /// Whether every writer is gone (the reader sees EOF; nothing was written).
    fn writers_gone(&mut self) -> bool {
        let mut b = [0u8; 16];
        matches!(self.reader.read(&mut b), Ok(0))
    }
}

/// `root` and every process below it (through every thread's children).
fn tree(root: i32) -> Vec<i32> {
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        for t in fs::read_dir(format!("/proc/{p}/task")).into_iter().flatten().flatten() {
            let kids = fs::read_to_string(t.path().join("children")).unwrap_or_default();
            all.extend(kids.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
        }
        i += 1;
    }
    all
}

/// The fds of `pid`: number and link, with the inode of an anonymous object left out (a
/// restored pipe or socket is a new one).
fn fds(pid: i32) -> std::collections::BTreeMap<i32, String> {
    let mut out = std::collections::BTreeMap::new();
    for e in fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten() {
        let Ok(fd) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let link = fs::read_link(e.path()).map(|l| path_str(&l)).unwrap_or_default();
        let anon = link.split_once(":[").filter(|_| !link.starts_with('/')).map(|(k, _)| format!("{k}:[]"));
        out.insert(fd, anon.unwrap_or(link));
    }
    out
}

/// The children of `pid` (host pids).
fn children(pid: i32) -> Vec<i32> {
    let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children.split_whitespace().filter_map(|c| c.parse().ok()).collect()
}

/// `ferry dump -t PID -D W/<img> extra...`, which must succeed; returns the image dir.
fn dump(w: &WorkDir, pid: i32, img: &str, extra: &[&str]) -> PathBuf {
    let dir = w.join(img);
    let started = Instant::now();
    let out = Command::new(ferry_bin())
        .args(["dump", "-t", &pid.to_string(), "-D", &path_str(&dir)])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run ferry dump");
    assert!(
        out.status.success(),
        "ferry dump {} of pid {pid} {}: {}",
        extra.join(" "),
        describe(out.status),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("dump {} of pid {pid} took {:?}", extra.join(" "), started.elapsed());
    dir
}

/// The original program after a dump without -R: dead (killed by ferry) and reaped, and every
/// pid of the image free again.
fn reap_dumped(child: &mut Option<Child>, img: &Path) {
    if let Some(mut c) = child.take() {
        let st = wait_timeout(&mut c, Duration::from_secs(20)).expect("the dumped program is still running");
        assert!(!st.success(), "the dumped program exited 0 on its own");
    }
    wait_image_pids_gone(img);
}

/// `ferry restore -D IMG extra...`, ferry staying the parent; stderr to W/<label>.err.
fn spawn_restore(w: &WorkDir, img: &Path, label: &str, extra: &[&str]) -> Child {
    Command::new(ferry_bin())
        .args(["restore", "-D", &path_str(img)])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(File::create(w.join(&format!("{label}.out"))).expect("restore stdout"))
        .stderr(File::create(w.join(&format!("{label}.err"))).expect("restore stderr"))
        .spawn()
        .expect("start ferry restore")
}

/// Wait for a program's exit (the original, or `ferry restore` passing on the restored one's).
fn wait_exit(child: &mut Child, what: &str, log: impl Fn() -> String) -> std::process::ExitStatus {
    wait_timeout(child, Duration::from_secs(60)).unwrap_or_else(|| panic!("{what} did not exit\n{}", log()))
}

/// One HTTP/1.1 keep-alive connection: requests and their answers (status and body).
struct Http {
    r: BufReader<TcpStream>,
}

impl Http {
    fn connect(addr: (&str, u16)) -> Http {
        Http::try_connect(addr).unwrap_or_else(|e| panic!("connect to {addr:?}: {e}"))
    }

    fn try_connect(addr: (&str, u16)) -> std::io::Result<Http> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_nodelay(true)?;
        Ok(Http { r: BufReader::new(s) })
    }

    /// GET `path`: (status line, body), or what went wrong.
    fn get(&mut self, path: &str) -> Result<(String, Vec<u8>), String> {
        self.r
            .get_mut()
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let mut status = String::new();
        self.r.read_line(&mut status).map_err(|e| format!("status line: {e}"))?;
        if status.is_empty() {
            return Err("the connection was closed".into());
        }
        let mut len = None;
        loop {
            let mut h = String::new();
            self.r.read_line(&mut h).map_err(|e| format!("header: {e}"))?;
            if h == "\r\n" || h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse::<usize>().ok();
                }
            }
        }
        let len = len.ok_or_else(|| format!("no content-length after {status:?}"))?;
        let mut body = vec![0; len];
        self.r.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
        Ok((status.trim_end().to_string(), body))
    }
}
