/*
 * nestedmnt: a process of the tree in a mount namespace of its own below the root's (a nested
 * one, state/nested_ns.rs), with mounts only it sees.
 *
 *   nestedmnt W one   the root R stays in its mount namespace; child C unshares one (made
 *                     private, as `unshare -m` does), mounts a tmpfs on W/tmp with a file it
 *                     keeps open (offset 5000) and maps shared, enters it (cwd), and binds
 *                     W/src read-only on W/ro. On go C checks from inside: its mount tree
 *                     (mountinfo relative to its root: mountpoints, roots, file systems,
 *                     per-mount and super-block options, propagation kinds, parents) is the
 *                     one it had, the file's content, offset and inode through the path, the
 *                     mapping still shares the file, its cwd, and that W/ro is read-only with
 *                     W/src's file. R checks it sees neither mount and its own tree is intact.
 *   nestedmnt W deep  the same, and C's child D unshares a further one from C's, mounts a
 *                     second tmpfs on W/tmp/deep (inside C's) with a file it keeps open; D
 *                     checks its tree and both files, C that it does not see D's mount.
 *   nestedmnt W peer  R unshares a mount namespace of its own (private) with a shared tmpfs on
 *                     W/shr; C's plain unshare(CLONE_NEWNS) leaves C's copy of it in its peer
 *                     group. On go C mounts a tmpfs on W/shr/sub with a file: R must see it
 *                     (the peer group was kept), then C unmounts it.
 *   nestedmnt W fresh C unshares mount, network and ipc namespaces, makes a veth pair npfa0/npfb0
 *                     in its network namespace and a POSIX queue with a message in its ipc one,
 *                     and mounts a fresh sysfs on W/sys and mqueue on W/mq. On go C checks its
 *                     mount tree is the one it had, W/sys/class/net lists exactly the devices of
 *                     its own network namespace (lo, npfa0, npfb0), and W/mq shows its queue,
 *                     whose message is still there.
 *   nestedmnt W devpts C mounts a fresh devpts (newinstance, ptmxmode=0666, mode=0620) on
 *                     W/tmp in its own and keeps a pty pair of it with index 1 (index 0 taken
 *                     first and given back: a pair made in the first free index would be 0),
 *                     in raw mode, its slave node made mode 0640, and bytes written both ways
 *                     left unread. On go C checks its mount tree, the master's index (TIOCGPTN)
 *                     is 1, its slave fd is 136:1 of the devpts on W/tmp and the node W/tmp/1,
 *                     W/tmp/0 does not exist, the node's mode, the unread bytes of each side,
 *                     and new bytes both ways.
 *   nestedmnt W cgroup C moves into a cgroup v2 of its own, CG = ferry-nestedmnt-PID (PID: R's)
 *                     below the cgroup2 mount (/sys/fs/cgroup/unified, else /sys/fs/cgroup),
 *                     unshares mount and cgroup namespaces there and mounts a fresh cgroup2 on
 *                     W/cg (rooted in CG). On go C checks its mount tree (inside, the mount's
 *                     root is "/"), that W/cg is CG (same directory, its own pid in
 *                     cgroup.procs) and that /proc/self/cgroup reads "0::/".
 *   nestedmnt W pidproc  run by `ferry run --pidns --mntns` (W outside /tmp): C unshares a
 *                     mount namespace and mounts a fresh proc on W/proc, of the job's pid
 *                     namespace. On go C checks its mount tree and that W/proc/self is its own
 *                     pid (the proc shows its pid namespace).
 *
 * Each child writes W/child-NAME ("PASS" or "FAIL: why"); R forwards go to them, waits for
 * their verdicts and writes the result.
 */
#include "common.h"
#include <dirent.h>
#include <mqueue.h>
#include <net/if.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/statfs.h>
#include <sys/ioctl.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <poll.h>
#include <termios.h>
#include <linux/magic.h>

#define FILE_LEN 12288
#define OFFSET 5000

static char tree_before[65536];

static void path_in(char *out, size_t cap, const char *rel)
{
	snprintf(out, cap, "%s/%s", W, rel);
}

/*
 * The mount tree as this process sees it, one sorted line per mount: mountpoint, root, file
 * system, per-mount options, super-block options, whether shared/slave/unbindable, and the
 * parent's mountpoint (ids and device numbers change with a restore).
 */
static int only_w; /* R: only the mounts at or below W (others on the host come and go) */

static void mount_tree(char *out, size_t cap)
{
	static char text[65536];
	static char lines[512][1200];
	char ids[512][2][16];
	char mps[512][256];
	int n = 0;
	if (read_file("/proc/self/mountinfo", text, sizeof text) < 0)
		die_setup("read mountinfo");
	for (char *save = NULL, *l = strtok_r(text, "\n", &save); l && n < 512; l = strtok_r(NULL, "\n", &save)) {
		char id[16], parent[16], dev[32], root[256], mp[256], opts[256], rest[1024];
		if (sscanf(l, "%15s %15s %31s %255s %255s %255s %1023[^\n]", id, parent, dev, root, mp, opts, rest) != 7)
			continue;
		if (only_w && strncmp(mp, W, strlen(W)) != 0)
			continue;
		char *dash = strstr(rest, " - ");
		if (!dash)
			continue;
		*dash = 0;
		char fstype[64], source[256], sopts[512] = "";
		sscanf(dash + 3, "%63s %255s %511s", fstype, source, sopts);
		const char *prop = strstr(rest, "shared:") ? (strstr(rest, "master:") ? "shared+slave" : "shared")
				   : strstr(rest, "master:")  ? "slave"
							      : "private";
		snprintf(ids[n][0], 16, "%s", id);
		snprintf(ids[n][1], 16, "%s", parent);
		snprintf(mps[n], sizeof mps[n], "%s", mp);
		snprintf(lines[n], sizeof lines[n], "%s %s %s %s %s %s%s", mp, root, fstype, opts, sopts, prop,
			 strstr(rest, "unbindable") ? "+unbindable" : "");
		n++;
	}
	/* the parent's mountpoint */
	for (int i = 0; i < n; i++) {
		const char *pm = "-";
		for (int j = 0; j < n; j++)
			if (strcmp(ids[j][0], ids[i][1]) == 0)
				pm = mps[j];
		size_t len = strlen(lines[i]);
		snprintf(lines[i] + len, sizeof lines[i] - len, " on %s", pm);
	}
	qsort(lines, (size_t)n, sizeof lines[0], (int (*)(const void *, const void *))strcmp);
	out[0] = 0;
	for (int i = 0; i < n; i++) {
		size_t len = strlen(out);
		snprintf(out + len, cap - len, "%s\n", lines[i]);
	}
}

static void check_tree(const char *before, const char *who)
{
	static char now[65536];
	mount_tree(now, sizeof now);
	if (strcmp(now, before) != 0) {
		/* name the first line that differs */
		const char *a = before, *b = now;
		while (*a && *a == *b)
			a++, b++;
		while (a > before && a[-1] != '\n')
			a--;
		while (b > now && b[-1] != '\n')
			b--;
		fail("%s: its mount tree changed: was \"%.200s\", now \"%.200s\"", who, a, b);
	}
}

static int is_tmpfs(const char *path)
{
	struct statfs s;
	return statfs(path, &s) == 0 && s.f_type == TMPFS_MAGIC;
}

static void fill(char *buf, size_t len, char seed)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (char)(seed + (char)(i * 7 % 61));
}

/* A tmpfs on W/REL with W/REL/data (FILE_LEN bytes from seed), kept open at OFFSET and mapped. */
struct kept {
	int fd;
	char *map;
	char seed;
	char path[4200];
	struct stat st;
};

static void make_tmpfs(struct kept *k, const char *rel, char seed)
{
	char dir[4096];
	path_in(dir, sizeof dir, rel);
	SETUP(mount("nestedmnt", dir, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755"));
	snprintf(k->path, sizeof k->path, "%s/data", dir);
	k->fd = open(k->path, O_RDWR | O_CREAT | O_EXCL, 0640);
	SETUP(k->fd);
	char buf[FILE_LEN];
	k->seed = seed;
	fill(buf, sizeof buf, seed);
	if (write(k->fd, buf, sizeof buf) != (ssize_t)sizeof buf)
		die_setup("write %s", k->path);
	SETUP(lseek(k->fd, OFFSET, SEEK_SET));
	k->map = mmap(NULL, FILE_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, k->fd, 0);
	if (k->map == MAP_FAILED)
		die_setup("mmap %s", k->path);
	SETUP(fstat(k->fd, &k->st));
}

/* write: also check the mapping still shares the file (writes a byte through it). */
static void check_kept(struct kept *k, int write)
{
	char want[FILE_LEN], got[FILE_LEN];
	fill(want, sizeof want, k->seed);
	off_t off = lseek(k->fd, 0, SEEK_CUR);
	CHECK(off == OFFSET, "%s: offset %lld, not %d", k->path, (long long)off, OFFSET);
	CHECK(pread(k->fd, got, sizeof got, 0) == (ssize_t)sizeof got && memcmp(got, want, sizeof got) == 0,
	      "%s: content differs", k->path);
	CHECK(memcmp(k->map, want, FILE_LEN) == 0, "%s: mapped content differs", k->path);
	if (write) {
		k->map[100] = 'Z';
		char c = 0;
		CHECK(pread(k->fd, &c, 1, 100) == 1 && c == 'Z', "%s: a write through the mapping is not in the file",
		      k->path);
	}
	struct stat st, fst;
	CHECK(stat(k->path, &st) == 0, "%s: not there by its path: %s", k->path, strerror(errno));
	CHECK(fstat(k->fd, &fst) == 0 && st.st_ino == fst.st_ino && st.st_dev == fst.st_dev,
	      "%s: the open fd is not the file at its path", k->path);
	CHECK((fst.st_mode & 07777) == 0640, "%s: mode %o", k->path, fst.st_mode & 07777);
	CHECK(is_tmpfs(k->path), "%s: not on a tmpfs", k->path);
}

static void bind_ro(void)
{
	char src[4096], dst[4096];
	path_in(src, sizeof src, "src");
	path_in(dst, sizeof dst, "ro");
	SETUP(mount(src, dst, NULL, MS_BIND, NULL));
	SETUP(mount(NULL, dst, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL));
}

static void check_ro(void)
{
	char f[4096], buf[64] = "";
	path_in(f, sizeof f, "ro/hello");
	CHECK(read_file(f, buf, sizeof buf) > 0 && strcmp(buf, "from src\n") == 0, "W/ro/hello: %s", buf);
	int fd = open(f, O_WRONLY);
	CHECK(fd < 0 && errno == EROFS, "W/ro/hello opened for writing (%s)", fd < 0 ? strerror(errno) : "ok");
	if (fd >= 0)
		close(fd);
}

static void wait_file(const char *name)
{
	char path[4096];
	path_in(path, sizeof path, name);
	for (int t = 0; t < 3000; t++) {
		if (access(path, F_OK) == 0)
			return;
		usleep(10000);
	}
	die_setup("no %s after 30 s", name);
}

/* D: a further mount namespace from C's, a tmpfs inside C's. */
static void run_d(struct kept *ck)
{
	static char before[65536];
	struct kept k;
	SETUP(unshare(CLONE_NEWNS));
	SETUP(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL));
	char deep[4096];
	path_in(deep, sizeof deep, "tmp/deep");
	make_tmpfs(&k, "tmp/deep", 'd');
	mount_tree(before, sizeof before);
	write_file_atomic("ready-d", "");
	wait_go();
	check_tree(before, "D");
	check_kept(&k, 1);
	check_kept(ck, 0);
	child_report("d");
	exit(0);
}

/* C of mode peer: its copy of R's shared W/shr is a peer of it. */
static void run_c_peer(void)
{
	static char before[65536];
	char sub[4096], flag[4200];
	SETUP(unshare(CLONE_NEWNS));
	mount_tree(before, sizeof before);
	write_file_atomic("ready-c", "");
	wait_go();
	check_tree(before, "C");
	path_in(sub, sizeof sub, "shr/sub");
	if (mount("peer", sub, "tmpfs", 0, "size=64k") < 0) {
		fail("C: mount on W/shr/sub: %s", strerror(errno));
	} else {
		snprintf(flag, sizeof flag, "%s/flag", sub);
		int fd = open(flag, O_WRONLY | O_CREAT, 0644);
		CHECK(fd >= 0, "C: create %s: %s", flag, strerror(errno));
		if (fd >= 0)
			close(fd);
	}
	child_report("c");
	/* (R looks, then says done) */
	wait_file("peer-seen");
	umount2(sub, MNT_DETACH);
	exit(0);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The names in directory `dir`, sorted, joined by spaces (or the names of `if_nameindex()`). */
static void names(const char *dir, char *out, size_t cap)
{
	char *v[64];
	int n = 0;
	out[0] = 0;
	if (dir) {
		DIR *d = opendir(dir);
		if (!d) {
			snprintf(out, cap, "(cannot open %s: %s)", dir, strerror(errno));
			return;
		}
		for (struct dirent *e; (e = readdir(d)) && n < 64;)
			if (e->d_name[0] != '.')
				v[n++] = strdup(e->d_name);
		closedir(d);
	} else {
		struct if_nameindex *ifs = if_nameindex();
		for (struct if_nameindex *i = ifs; i && i->if_name && n < 64; i++)
			v[n++] = strdup(i->if_name);
		if (ifs)
			if_freenameindex(ifs);
	}
	qsort(v, (size_t)n, sizeof v[0], cmp_str);
	for (int i = 0; i < n; i++) {
		size_t len = strlen(out);
		snprintf(out + len, cap - len, "%s%s", i ? " " : "", v[i]);
		free(v[i]);
	}
}

/* C of mode fresh: sysfs and mqueue made in its own mount namespace, of its own net and ipc. */
static void run_c_fresh(void)
{
	static char before[65536];
	char sys[4096], mq[4096], qname[64], qpath[4200], got[1024];
	SETUP(unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC));
	SETUP(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL));
	if (system("ip link set lo up && ip link add npfa0 type veth peer name npfb0") != 0)
		die_setup("ip link add npfa0 failed");
	path_in(sys, sizeof sys, "sys");
	path_in(mq, sizeof mq, "mq");
	SETUP(mount("sysfs", sys, "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL));
	SETUP(mount("mqueue", mq, "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL));
	snprintf(qname, sizeof qname, "/ferry-nestedmnt-%d", (int)getppid());
	struct mq_attr attr = { .mq_maxmsg = 4, .mq_msgsize = 64 };
	mqd_t q = mq_open(qname, O_CREAT | O_EXCL | O_RDWR, 0600, &attr);
	if (q == (mqd_t)-1)
		die_setup("mq_open %s: %s", qname, strerror(errno));
	SETUP(mq_send(q, "kept", 4, 3));
	mq_close(q);
	mount_tree(before, sizeof before);
	write_file_atomic("ready-c", "");
	wait_go();
	check_tree(before, "C");
	char want[1024], classnet[4200];
	names(NULL, want, sizeof want);
	CHECK(strcmp(want, "lo npfa0 npfb0") == 0, "C: its network namespace has %s", want);
	snprintf(classnet, sizeof classnet, "%s/class/net", sys);
	names(classnet, got, sizeof got);
	CHECK(strcmp(got, want) == 0, "C: W/sys/class/net lists %s, its network namespace has %s", got, want);
	snprintf(qpath, sizeof qpath, "%s%s", mq, qname);
	CHECK(access(qpath, F_OK) == 0, "C: its queue is not in W/mq (%s): %s", qpath, strerror(errno));
	q = mq_open(qname, O_RDWR | O_NONBLOCK);
	CHECK(q != (mqd_t)-1, "C: mq_open %s: %s", qname, strerror(errno));
	if (q != (mqd_t)-1) {
		char buf[64] = "";
		unsigned prio = 0;
		CHECK(mq_receive(q, buf, sizeof buf, &prio) == 4 && memcmp(buf, "kept", 4) == 0 && prio == 3,
		      "C: the queued message is not there: %s", strerror(errno));
		mq_close(q);
	}
	mq_unlink(qname);
	child_report("c");
	exit(0);
}

/* Read exactly strlen(want) bytes from `fd` (waiting for them up to 10 s) and compare. */
static void expect(int fd, const char *want, const char *what)
{
	char got[256] = "";
	size_t n = 0, len = strlen(want);
	while (n < len) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 10000) <= 0)
			break;
		ssize_t r = read(fd, got + n, len - n);
		if (r <= 0)
			break;
		n += (size_t)r;
	}
	got[n] = 0;
	CHECK(n == len && memcmp(got, want, len) == 0, "C: %s: read \"%s\", not \"%s\"", what, got, want);
}

/* C of mode devpts: a fresh devpts instance in its own mount namespace, with a pty pair of it. */
static void run_c_devpts(void)
{
	static char before[65536];
	char pts[4096], ptmx[4200], node[4200], node0[4200];
	only_w = 0; /* (its own namespace: the whole tree) */
	SETUP(unshare(CLONE_NEWNS));
	SETUP(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL));
	path_in(pts, sizeof pts, "tmp");
	SETUP(mount("devpts", pts, "devpts", 0, "newinstance,ptmxmode=0666,mode=0620"));
	snprintf(ptmx, sizeof ptmx, "%s/ptmx", pts);
	snprintf(node, sizeof node, "%s/1", pts);
	snprintf(node0, sizeof node0, "%s/0", pts);
	int m0 = open(ptmx, O_RDWR | O_NOCTTY);
	SETUP(m0);
	int m = open(ptmx, O_RDWR | O_NOCTTY);
	SETUP(m);
	close(m0);
	int idx = -1, unlock = 0;
	SETUP(ioctl(m, TIOCGPTN, &idx));
	if (idx != 1)
		die_setup("the second pty of a fresh devpts is %d", idx);
	SETUP(ioctl(m, TIOCSPTLCK, &unlock));
	int s = open(node, O_RDWR | O_NOCTTY);
	SETUP(s);
	SETUP(fchmod(s, 0640));
	struct termios t;
	SETUP(tcgetattr(s, &t));
	cfmakeraw(&t);
	SETUP(tcsetattr(s, TCSANOW, &t));
	if (write(s, "out-before", 10) != 10 || write(m, "in-before", 9) != 9)
		die_setup("write to the pty");
	mount_tree(before, sizeof before);
	write_file_atomic("ready-c", "");
	wait_go();
	check_tree(before, "C");
	int now = -1;
	CHECK(ioctl(m, TIOCGPTN, &now) == 0 && now == 1, "C: the master's pty index is %d, not 1", now);
	struct stat st, dir, nst;
	CHECK(fstat(s, &st) == 0 && st.st_rdev == makedev(136, 1), "C: the slave fd is device %u:%u, not 136:1",
	      major(st.st_rdev), minor(st.st_rdev));
	CHECK(stat(pts, &dir) == 0 && st.st_dev == dir.st_dev, "C: the slave fd is not of the devpts on W/tmp");
	CHECK(stat(node, &nst) == 0 && nst.st_ino == st.st_ino && nst.st_rdev == st.st_rdev,
	      "C: W/tmp/1 is not the slave it holds (%s)", strerror(errno));
	CHECK((nst.st_mode & 07777) == 0640, "C: W/tmp/1 has mode %o, not 640", nst.st_mode & 07777);
	CHECK(access(node0, F_OK) != 0, "C: W/tmp/0 exists: a pair too many in the instance");
	expect(m, "out-before", "the master's unread bytes");
	expect(s, "in-before", "the slave's unread bytes");
	CHECK(write(m, "ping", 4) == 4, "C: write to the master: %s", strerror(errno));
	expect(s, "ping", "master to slave");
	CHECK(write(s, "pong", 4) == 4, "C: write to the slave: %s", strerror(errno));
	expect(m, "pong", "slave to master");
	child_report("c");
	exit(0);
}

/* The cgroup v2 mount of this host and the test's cgroup below it (for R's pid `r`). */
static void cgroup_dir(pid_t r, char *out, size_t cap)
{
	struct statfs s;
	const char *base = statfs("/sys/fs/cgroup/unified", &s) == 0 && s.f_type == CGROUP2_SUPER_MAGIC
				   ? "/sys/fs/cgroup/unified"
				   : "/sys/fs/cgroup";
	snprintf(out, cap, "%s/ferry-nestedmnt-%d", base, (int)r);
}

/* C of mode cgroup: a fresh cgroup2 in its own mount namespace, of its own cgroup namespace. */
static void run_c_cgroup(void)
{
	static char before[65536];
	char cg[4096], dir[300], procs[4200], buf[4096], me[32];
	only_w = 0; /* (its own namespace: the whole tree) */
	cgroup_dir(getppid(), dir, sizeof dir);
	if (mkdir(dir, 0755) < 0 && errno != EEXIST)
		die_setup("mkdir %s: %s", dir, strerror(errno));
	cgroup_join(dir);
	SETUP(unshare(CLONE_NEWNS | CLONE_NEWCGROUP));
	SETUP(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL));
	path_in(cg, sizeof cg, "cg");
	SETUP(mount("cgroup2", cg, "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL));
	mount_tree(before, sizeof before);
	write_file_atomic("ready-c", "");
	wait_go();
	check_tree(before, "C");
	struct stat a, b;
	CHECK(stat(cg, &a) == 0 && stat(dir, &b) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev,
	      "C: W/cg is not its cgroup %s", dir);
	snprintf(procs, sizeof procs, "%s/cgroup.procs", cg);
	snprintf(me, sizeof me, "%d", (int)getpid());
	int found = 0;
	if (read_file(procs, buf, sizeof buf) >= 0)
		for (char *save = NULL, *l = strtok_r(buf, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
			found |= strcmp(l, me) == 0;
	CHECK(found, "C: its pid %s is not in W/cg/cgroup.procs", me);
	CHECK(read_file("/proc/self/cgroup", buf, sizeof buf) >= 0 && strstr(buf, "0::/\n") != NULL,
	      "C: /proc/self/cgroup reads %s", buf);
	child_report("c");
	exit(0);
}

/* C of mode pidproc: a fresh proc of its (the job's) pid namespace in its own mount namespace. */
static void run_c_pidproc(void)
{
	static char before[65536];
	char proc[4096], self[4200], got[64] = "", want[32];
	only_w = 0; /* (its own namespace: the whole tree) */
	SETUP(unshare(CLONE_NEWNS));
	SETUP(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL));
	path_in(proc, sizeof proc, "proc");
	SETUP(mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL));
	snprintf(self, sizeof self, "%s/self", proc);
	snprintf(want, sizeof want, "%d", (int)getpid());
	ssize_t n = readlink(self, got, sizeof got - 1);
	if (n < 0 || strncmp(got, want, (size_t)n) != 0 || (size_t)n != strlen(want))
		die_setup("W/proc/self is not %s", want);
	mount_tree(before, sizeof before);
	write_file_atomic("ready-c", "");
	wait_go();
	check_tree(before, "C");
	memset(got, 0, sizeof got);
	n = readlink(self, got, sizeof got - 1);
	CHECK(n > 0 && strcmp(got, want) == 0, "C: W/proc/self is %s (%s), not its pid %s", n > 0 ? got : "-",
	      n < 0 ? strerror(errno) : "", want);
	child_report("c");
	exit(0);
}

static void run_c(int deep)
{
	struct kept k;
	char tmp[4096];
	only_w = 0; /* (its own namespace: the whole tree) */
	SETUP(unshare(CLONE_NEWNS));
	SETUP(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL));
	make_tmpfs(&k, "tmp", 'c');
	bind_ro();
	path_in(tmp, sizeof tmp, "tmp");
	SETUP(chdir(tmp));
	pid_t d = 0;
	if (deep) {
		char dd[4096];
		path_in(dd, sizeof dd, "tmp/deep");
		SETUP(mkdir(dd, 0755));
		d = fork();
		SETUP(d);
		if (d == 0)
			run_d(&k);
		wait_file("ready-d");
	}
	mount_tree(tree_before, sizeof tree_before);
	char pidtext[32];
	snprintf(pidtext, sizeof pidtext, "%d\n", (int)d);
	write_file_atomic("pid-d", pidtext);
	write_file_atomic("ready-c", "");
	wait_go();
	if (deep) {
		/* (first: D reads C's file before C writes through its mapping) */
		char f[4096];
		path_in(f, sizeof f, "tmp/deep/data");
		CHECK(access(f, F_OK) != 0, "C sees D's tmpfs");
		kill(d, SIGUSR2);
		child_verdict("d");
		waitpid(d, NULL, 0);
	}
	check_tree(tree_before, "C");
	check_kept(&k, 1);
	check_ro();
	char cwd[4096] = "";
	CHECK(getcwd(cwd, sizeof cwd) && strcmp(cwd, tmp) == 0, "C: cwd %s, not %s", cwd, tmp);
	CHECK(access("data", F_OK) == 0, "C: no data in its cwd");
	child_report("c");
	exit(0);
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	const char *mode = argc > 2 ? argv[2] : "one";
	int deep = strcmp(mode, "deep") == 0, devpts = strcmp(mode, "devpts") == 0, peer = strcmp(mode, "peer") == 0;
	int fresh = strcmp(mode, "fresh") == 0, cgroup = strcmp(mode, "cgroup") == 0;
	int pidproc = strcmp(mode, "pidproc") == 0;
	if (!deep && !devpts && !peer && !fresh && !cgroup && !pidproc && strcmp(mode, "one") != 0)
		die_setup("unknown mode %s", mode);
	char p[4096];
	if (peer) {
		SETUP(unshare(CLONE_NEWNS));
		SETUP(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL));
		path_in(p, sizeof p, "shr");
		SETUP(mkdir(p, 0755));
		SETUP(mount("shr", p, "tmpfs", 0, "size=64k"));
		SETUP(mount(NULL, p, NULL, MS_SHARED, NULL));
		path_in(p, sizeof p, "shr/sub");
		SETUP(mkdir(p, 0755));
		mount_tree(tree_before, sizeof tree_before);
		pid_t c = fork();
		SETUP(c);
		if (c == 0)
			run_c_peer();
		wait_file("ready-c");
		signal_ready();
		wait_go();
		check_tree(tree_before, "R");
		kill(c, SIGUSR2);
		child_verdict("c");
		path_in(p, sizeof p, "shr/sub/flag");
		CHECK(access(p, F_OK) == 0, "R does not see C's mount on W/shr/sub: the peer group was lost");
		write_file_atomic("peer-seen", "");
		waitpid(c, NULL, 0);
		finish();
	}
	const char *dirs[] = { "tmp", "src", "ro", "sys", "mq", "cg", "proc" };
	for (int i = 0; i < 7; i++) {
		path_in(p, sizeof p, dirs[i]);
		SETUP(mkdir(p, 0755));
	}
	SETUP(write_file_atomic("src/hello", "from src\n"));
	only_w = 1;
	mount_tree(tree_before, sizeof tree_before);
	pid_t c = fork();
	SETUP(c);
	if (c == 0 && fresh)
		run_c_fresh();
	if (c == 0 && devpts)
		run_c_devpts();
	if (c == 0 && cgroup)
		run_c_cgroup();
	if (c == 0 && pidproc)
		run_c_pidproc();
	if (c == 0)
		run_c(deep);
	char pidtext[32];
	snprintf(pidtext, sizeof pidtext, "%d\n", (int)c);
	write_file_atomic("pid-c", pidtext);
	wait_file("ready-c");
	signal_ready();
	wait_go();
	check_tree(tree_before, "R");
	/* (W itself may be a tmpfs: W/tmp must be no mount of its own here) */
	struct stat wst, tst;
	path_in(p, sizeof p, "tmp");
	CHECK(stat(W, &wst) == 0 && stat(p, &tst) == 0 && wst.st_dev == tst.st_dev, "R: W/tmp is a mount here");
	path_in(p, sizeof p, "tmp/data");
	CHECK(access(p, F_OK) != 0, "R sees C's W/tmp/data");
	path_in(p, sizeof p, "ro/hello");
	CHECK(access(p, F_OK) != 0, "R sees C's bind on W/ro");
	kill(c, SIGUSR2);
	child_verdict("c");
	waitpid(c, NULL, 0);
	finish();
}
