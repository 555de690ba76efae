//! Parsers against files captured from a live process on Linux 6.18 (x86_64).
//!
//! `tests/fixtures/` was produced by a small C program that set up the awkward cases before
//! dumping its own `/proc/self/*`: a mapped file with spaces and `) (` in its name, a deleted
//! mapped file, a file name with a newline, shared anonymous memory, a memfd, a comm of
//! `a) (b\c) 1`, an eventfd, timerfd, signalfd, inotify and epoll fd, and four POSIX timers
//! covering every notify form. `status_restricted.txt` is from a process with dropped uids,
//! supplementary groups, no_new_privs and two seccomp filters; `status_nested_pidns.txt` from
//! inside a child pid namespace; `mountinfo.txt` from a mount namespace holding a mount point
//! with a space and a backslash, a tmpfs with an empty source, and shared/slave mounts. The
//! `*_kthread.txt` files are kthreadd's.

use ferry_proc::*;

fn maps() -> Vec<MapEntry> {
    parse_maps(include_str!("fixtures/maps.txt")).expect("maps parses")
}

fn by_path<'a>(maps: &'a [MapEntry], path: &str) -> &'a MapEntry {
    maps.iter().find(|m| m.path.as_deref() == Some(path)).unwrap_or_else(|| panic!("no mapping of {path:?}"))
}

#[test]
fn maps_fixture() {
    let maps = maps();
    assert_eq!(maps.len(), 29);
    for w in maps.windows(2) {
        assert!(w[0].start < w[0].end && w[0].end <= w[1].start, "{w:?}");
    }

    let exe = &maps[0];
    assert_eq!((exe.start, exe.end), (0x55fc_f463_f000, 0x55fc_f464_0000));
    assert_eq!((exe.dev_major, exe.dev_minor, exe.inode), (0xfe, 0, 10010782));
    assert_eq!(exe.path.as_deref(), Some("/tmp/cap/cap"));
    assert_eq!(maps[1].offset, 0x1000);
    assert!(maps[1].perms.exec && !maps[1].perms.write);

    let spaced = by_path(&maps, "/tmp/cap/with space ) (x).bin");
    assert!(spaced.perms.shared && spaced.perms.read && !spaced.perms.write);
    assert!(!spaced.deleted);

    let gone = by_path(&maps, "/tmp/cap/gone.bin");
    assert!(gone.deleted && !gone.perms.shared && gone.perms.write);

    let zero = by_path(&maps, "/dev/zero");
    assert!(zero.deleted && zero.perms.shared);
    assert_eq!((zero.dev_major, zero.dev_minor), (0, 1));

    let memfd = by_path(&maps, "/memfd:ferry memfd");
    assert!(memfd.deleted);

    assert!(!by_path(&maps, "/tmp/cap/new\nline").deleted);

    for name in ["[heap]", "[stack]", "[vvar]", "[vvar_vclock]", "[vdso]", "[vsyscall]"] {
        let m = by_path(&maps, name);
        assert_eq!((m.inode, m.deleted), (0, false), "{name}");
    }
    let vsyscall = by_path(&maps, "[vsyscall]");
    assert_eq!(vsyscall.start, 0xffff_ffff_ff60_0000);

    let anon: Vec<_> = maps.iter().filter(|m| m.path.is_none()).collect();
    assert_eq!(anon.len(), 3);
    assert!(anon.iter().all(|m| m.inode == 0 && !m.perms.shared));
}

#[test]
fn smaps_fixture_matches_maps() {
    let maps = maps();
    let smaps = parse_smaps(include_str!("fixtures/smaps.txt")).expect("smaps parses");
    assert_eq!(smaps.len(), maps.len());
    for (s, m) in smaps.iter().zip(&maps) {
        assert_eq!((s.start, s.end), (m.start, m.end));
        assert!(!s.vm_flags.is_empty());
        assert!(s.anonymous <= s.rss && s.rss <= s.end - s.start);
        assert_eq!(s.rss % 1024, 0);
    }
    let find = |path: &str| {
        let m = by_path(&maps, path);
        smaps.iter().find(|s| s.start == m.start).expect("smaps entry")
    };
    let stack = find("[stack]");
    assert_eq!((stack.rss, stack.anonymous, stack.swap), (28 * 1024, 28 * 1024, 0));
    assert!(stack.vm_flags.iter().any(|f| f == "gd"));
    assert_eq!(find("[vvar]").vm_flags, ["rd", "mr", "pf", "io", "de", "dd"]);
    assert_eq!(find("[vsyscall]").vm_flags, ["ex"]);
    assert_eq!(find("/dev/zero").vm_flags, ["rd", "wr", "sh", "mr", "mw", "me", "ms"]);
    assert_eq!(find("/tmp/cap/gone.bin").anonymous, 4096);
}

#[test]
fn status_fixture() {
    let s = parse_status(include_str!("fixtures/status.txt")).expect("status parses");
    assert_eq!(s.name, r"a) (b\c) 1");
    assert_eq!(s.umask, Some(0o022));
    assert_eq!(s.state, 'R');
    assert_eq!((s.tgid, s.pid, s.ppid, s.tracer_pid), (3317, 3317, 3307, 0));
    assert_eq!((s.uid, s.gid), ([0; 4], [0; 4]));
    assert!(s.groups.is_empty());
    assert_eq!((s.ns_tgid.as_slice(), s.ns_pid.as_slice()), (&[3317][..], &[3317][..]));
    assert_eq!((s.ns_pgid.as_slice(), s.ns_sid.as_slice()), (&[3307][..], &[1694][..]));
    assert_eq!(s.threads, 1);
    assert_eq!(s.sig_q, (4, 96365));
    // SIGUSR1 and SIGCHLD, blocked for the signalfd.
    assert_eq!(s.sig_blk, (1 << (10 - 1)) | (1 << (17 - 1)));
    assert_eq!((s.sig_pnd, s.shd_pnd, s.sig_ign, s.sig_cgt), (0, 0, 0, 0));
    assert_eq!((s.cap_inh, s.cap_amb), (0, 0));
    assert_eq!((s.cap_prm, s.cap_eff, s.cap_bnd), (0x1ff_feff_ffff, 0x1ff_feff_ffff, 0x1ff_feff_ffff));
    assert!(!s.no_new_privs);
    assert_eq!((s.seccomp, s.seccomp_filters), (0, 0));
}

#[test]
fn status_fixture_restricted() {
    let s = parse_status(include_str!("fixtures/status_restricted.txt")).expect("parses");
    assert_eq!(s.name, "cap2");
    assert_eq!(s.umask, Some(0o027));
    assert_eq!(s.uid, [1000, 1003, 1004, 1003]);
    assert_eq!(s.gid, [1000, 1001, 1002, 1001]);
    assert_eq!(s.groups, [4, 24, 27, 1000]);
    assert_eq!(s.threads, 2);
    assert_eq!(s.sig_q, (1, 96365));
    // SIGWINCH raised while blocked; SIGUSR1 and SIGTERM ignored; SIGHUP and glibc's SIGCANCEL
    // (32) caught.
    assert_eq!((s.sig_pnd, s.sig_blk), (1 << 27, 1 << 27));
    assert_eq!(s.sig_ign, (1 << 9) | (1 << 14));
    assert_eq!(s.sig_cgt, 1 | (1 << 32));
    assert_eq!((s.cap_prm, s.cap_eff, s.cap_bnd), (0, 0, 0x1ff_feff_ffff));
    assert!(s.no_new_privs);
    assert_eq!((s.seccomp, s.seccomp_filters), (2, 2));
}

#[test]
fn status_fixture_nested_pid_namespace() {
    let s = parse_status(include_str!("fixtures/status_nested_pidns.txt")).expect("parses");
    assert_eq!(s.pid, 3441);
    assert_eq!(s.ns_tgid, [3441, 2]);
    assert_eq!(s.ns_pid, [3441, 2]);
    assert_eq!(s.ns_pgid, [3437, 0]);
    assert_eq!(s.ns_sid, [1694, 0]);
}

#[test]
fn status_fixture_kthread() {
    let s = parse_status(include_str!("fixtures/status_kthread.txt")).expect("parses");
    assert_eq!((s.name.as_str(), s.pid, s.ppid, s.state), ("kthreadd", 2, 0, 'S'));
}

#[test]
fn stat_fixture_matches_status_and_maps() {
    let st = parse_stat(include_str!("fixtures/stat.txt")).expect("stat parses");
    assert_eq!(st.pid, 3317);
    assert_eq!(st.comm, r"a) (b\c) 1");
    assert_eq!(st.state, 'R');
    assert_eq!((st.ppid, st.pgrp, st.session, st.tty_nr, st.tpgid), (3307, 3307, 1694, 0, -1));
    assert_eq!(st.flags, 4194304);
    assert_eq!((st.nice, st.num_threads), (0, 1));
    assert_eq!((st.start_time, st.vsize, st.rss), (160612, 2576384, 330));
    assert_eq!((st.exit_signal, st.processor, st.exit_code), (17, 1, 0));
    assert_eq!(
        (st.arg_start, st.arg_end, st.env_start, st.env_end),
        (140729954519796, 140729954519806, 140729954519806, 140729954521074)
    );

    let maps = maps();
    let text = &maps[1];
    assert!(text.start <= st.start_code && st.end_code <= text.end);
    assert_eq!(st.start_brk, by_path(&maps, "[heap]").start);
    // .data starts in the RELRO page (read-only after relocation) and ends in the rw one.
    let (relro, data) = (&maps[3], &maps[4]);
    assert!(relro.start <= st.start_data && st.start_data < relro.end);
    assert!(data.start < st.end_data && st.end_data <= data.end);
    let stack = by_path(&maps, "[stack]");
    for addr in [st.start_stack, st.arg_start, st.env_end] {
        assert!(stack.start <= addr && addr < stack.end);
    }
    assert_eq!(
        st.vsize,
        maps.iter().filter(|m| m.path.as_deref() != Some("[vsyscall]")).map(|m| m.end - m.start).sum::<u64>()
    );
}

#[test]
fn stat_fixture_kthread() {
    let st = parse_stat(include_str!("fixtures/stat_kthread.txt")).expect("parses");
    assert_eq!((st.pid, st.comm.as_str(), st.ppid), (2, "kthreadd", 0));
    assert_eq!((st.vsize, st.start_code, st.start_brk), (0, 0, 0));
}

#[test]
fn fdinfo_fixtures() {
    let maps = maps();
    let file = parse_fdinfo(include_str!("fixtures/fdinfo_file.txt")).expect("parses");
    assert_eq!((file.pos, file.flags, file.mnt_id), (100, 0o100002, 27));
    assert_eq!(file.ino, Some(by_path(&maps, "/tmp/cap/with space ) (x).bin").inode));

    let memfd = parse_fdinfo(include_str!("fixtures/fdinfo_memfd.txt")).expect("parses");
    assert_eq!((memfd.mnt_id, memfd.ino), (0, Some(by_path(&maps, "/memfd:ferry memfd").inode)));

    let get = |fi: &FdInfo, key: &str| -> Vec<String> {
        fi.raw.iter().filter(|(k, _)| k == key).map(|(_, v)| v.clone()).collect()
    };

    let efd = parse_fdinfo(include_str!("fixtures/fdinfo_eventfd.txt")).expect("parses");
    assert_eq!(efd.flags, 0o4002);
    assert_eq!(get(&efd, "eventfd-count"), ["5"]);
    assert_eq!(get(&efd, "eventfd-semaphore"), ["0"]);
    assert_eq!(efd.raw.len(), 7);

    let tfd = parse_fdinfo(include_str!("fixtures/fdinfo_timerfd.txt")).expect("parses");
    assert_eq!(get(&tfd, "clockid"), ["1"]);
    assert_eq!(get(&tfd, "settime flags"), ["00"]);
    assert_eq!(get(&tfd, "it_interval"), ["(1, 0)"]);

    let sfd = parse_fdinfo(include_str!("fixtures/fdinfo_signalfd.txt")).expect("parses");
    assert_eq!(get(&sfd, "sigmask"), ["0000000000010200"]);

    let ifd = parse_fdinfo(include_str!("fixtures/fdinfo_inotify.txt")).expect("parses");
    let wd = get(&ifd, "inotify wd");
    assert_eq!(wd.len(), 1);
    assert!(wd[0].starts_with("1 ino:98c097 sdev:fe00000 mask:300 "), "{wd:?}");

    let ep = parse_fdinfo(include_str!("fixtures/fdinfo_epoll.txt")).expect("parses");
    let tfds = get(&ep, "tfd");
    assert_eq!(tfds.len(), 2);
    assert!(tfds[1].starts_with("7 events:       19 data:             1234 "), "{tfds:?}");
}

#[test]
fn timers_fixture() {
    let t = parse_timers(include_str!("fixtures/timers.txt")).expect("parses");
    let timer = |id, signo, sigev_value, notify: &str, thread, clock_id| PosixTimer {
        id,
        signo,
        sigev_value,
        notify: notify.into(),
        notify_tid: 3317,
        notify_thread_id: thread,
        clock_id,
    };
    assert_eq!(
        t,
        [
            // CLOCK_PROCESS_CPUTIME_ID of the caller is -6.
            timer(3, 12, 0, "signal", false, -6),
            timer(2, 35, 42, "signal", true, 7),
            timer(1, 14, 0xdead_beef, "none", false, 0),
            timer(0, 14, 0xdead_beef, "signal", false, 1),
        ]
    );
}

#[cfg(target_endian = "little")]
#[test]
fn auxv_fixture() {
    const AT_PAGESZ: u64 = 6;
    const AT_SYSINFO_EHDR: u64 = 33;
    let bytes = include_bytes!("fixtures/auxv.bin");
    let a = parse_auxv(bytes).expect("parses");
    assert_eq!(a.len() * 16, bytes.len());
    assert_eq!(a.last(), Some(&(AT_NULL, 0)));
    let get = |k| a.iter().find(|(t, _)| *t == k).map(|(_, v)| *v);
    assert_eq!(get(AT_PAGESZ), Some(4096));
    assert_eq!(get(AT_SYSINFO_EHDR), Some(by_path(&maps(), "[vdso]").start));
}

#[test]
fn mountinfo_fixture() {
    let m = parse_mountinfo(include_str!("fixtures/mountinfo.txt")).expect("parses");
    assert_eq!(m.len(), 25);
    let at = |p: &str| m.iter().find(|x| x.mount_point == p).unwrap_or_else(|| panic!("no {p}"));

    let root = at("/");
    assert_eq!((root.dev_major, root.dev_minor, root.fs_type.as_str()), (254, 0, "ext4"));
    assert_eq!(root.source, "/dev/vda");

    let odd = at(r"/tmp/cap/mnt a\b");
    assert_eq!((odd.fs_type.as_str(), odd.source.as_str()), ("tmpfs", "my src"));
    assert_eq!(odd.mount_options, "rw,relatime");
    assert!(odd.optional_fields.is_empty());

    let shared = at("/tmp/cap/shared");
    assert_eq!(shared.source, "");
    assert_eq!(shared.optional_fields, ["shared:1"]);
    assert_eq!(shared.super_options, "rw");
    let slave = at("/tmp/cap/slave");
    assert_eq!(slave.optional_fields, ["master:1"]);
    assert_eq!((slave.dev_major, slave.dev_minor), (shared.dev_major, shared.dev_minor));

    let sub = at("/tmp/cap/shared/sub");
    assert_eq!((sub.root.as_str(), sub.parent_id), ("/sub", shared.mnt_id));

    // Every parent but the root's is in the table.
    let orphans = m.iter().filter(|x| !m.iter().any(|p| p.mnt_id == x.parent_id)).count();
    assert_eq!(orphans, 1);
}
