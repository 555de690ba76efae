//! A restored tree holds exactly the fds of its image: nothing of the `ferry restore` that made
//! it (its image files, /proc, pipes to its helpers) and nothing ferry inherited from its caller
//! (a CI runner's pipe; here a FIFO at fd 9, open and not close-on-exec). nginx (a master and two
//! workers) is dumped and restored by a `ferry restore` given that stray fd, staying the parent
//! and with `-d`: every restored process has the fds its image lists (`ferry inspect`), none of
//! them the FIFO, and once a `restore -d` is gone nobody holds the FIFO (its reader sees EOF).
//! (`ferry serve` gets one too in every `apps::migrate` test: see `Move`.)

use super::nginx::Nginx;
use super::*;

#[test]
fn restored_nginx_holds_only_its_image_fds() {
    for detach in [false, true] {
        let mut n = Nginx::start(if detach { "realapps-fds-d" } else { "realapps-fds" });
        // Settled first: the older worker holds the younger one's channel, which the master
        // sends it with SCM_RIGHTS. (Dumped before it read that message, the restored worker
        // would take the fd afterwards: one more than its image lists, rightly.)
        wait_for("each worker to hold the other's channel", Duration::from_secs(30), || {
            let w = children(n.pid);
            w.len() == 2 && fds(w[0]).len() == fds(w[1]).len()
        });
        let img = dump(&n.w, n.pid, "img", &[]);
        reap_dumped(&mut n.child, &img);
        let image = image_fds(&img);
        assert_eq!(image.len(), 3, "nginx is not a master and two workers: {image:?}");
        let mut stray = Stray::new(&n.w);
        let wrapper = stray.wrapper();
        let mut cmd = Command::new(&wrapper[0]);
        cmd.args(&wrapper[1..]).arg(ferry_bin()).args(["restore", "-D", &path_str(&img)]);
        if detach {
            cmd.arg("-d");
        }
        let mut restore = cmd
            .stdin(Stdio::null())
            .stdout(File::create(n.w.join("restore.out")).expect("restore stdout"))
            .stderr(File::create(n.w.join("restore.err")).expect("restore stderr"))
            .spawn()
            .expect("start ferry restore");
        // (Without -d ferry stays the tree's parent, waited for at the end.)
        let gone = detach.then(|| wait_exit(&mut restore, "ferry restore -d", || n.log()));
        if let Some(st) = gone {
            assert!(st.success(), "ferry restore -d {}\n{}", describe(st), n.log());
        }
        wait_for("the restored nginx to answer", Duration::from_secs(30), || n.fresh_get().is_ok());
        for (p, want) in &image {
            let now: Vec<i32> = fds(*p).into_keys().collect();
            let missing: Vec<&i32> = want.iter().filter(|f| !now.contains(f)).collect();
            assert!(missing.is_empty(), "pid {p}: the restored process lacks fds {missing:?} of its image");
            // (An fd above them may be nginx's own since the restore: a worker takes a sibling's
            // channel from a message, SCM_RIGHTS, that waited in its queue at the dump.)
            let extra: Vec<&i32> = now.iter().filter(|f| !want.contains(f)).collect();
            if !extra.is_empty() {
                eprintln!("pid {p}: fds {extra:?} beyond its image's {want:?} (taken after the restore?)");
            }
        }
        let held = stray.holders(n.pid);
        assert!(held.is_empty(), "the restored tree holds ferry's inherited fd: {held:?}");
        if detach {
            // ferry is gone: nothing else of the restore (a helper) may still hold it.
            assert!(stray.writers_gone(), "after restore -d something still holds ferry's inherited fd");
            send_signal(n.pid, "QUIT").expect("stop nginx");
            wait_for("nginx to stop", Duration::from_secs(30), || !pid_alive(n.pid));
        } else {
            assert!(!stray.writers_gone(), "ferry restore (the parent) does not hold its own fd");
            send_signal(n.pid, "QUIT").expect("stop nginx");
            let st = wait_exit(&mut restore, "nginx", || n.log());
            assert!(st.success(), "nginx {} on SIGQUIT\n{}", describe(st), n.log());
        }
        drop(n.guard);
    }
}

/// The fd numbers of every process of the image (`ferry inspect --json`), by pid.
fn image_fds(img: &Path) -> Vec<(i32, Vec<i32>)> {
    let out = Command::new(ferry_bin()).args(["inspect", "--json"]).arg(img).output().expect("run ferry inspect");
    assert!(out.status.success(), "ferry inspect: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ferry inspect --json prints JSON");
    let procs = v["processes"].as_array().cloned().unwrap_or_default();
    procs
        .iter()
        .map(|p| {
            let mut fds: Vec<i32> =
                p["fds"].as_array().into_iter().flatten().filter_map(|f| f["fd"].as_i64()).map(|f| f as i32).collect();
            fds.sort_unstable();
            (p["pid"].as_i64().unwrap_or(0) as i32, fds)
        })
        .collect()
}
