/*
 * nestedns: processes of one tree in namespaces of their own below the root's (nested).
 *
 *   nestedns W sets  the root R stays in its namespaces; child A unshares uts, net and ipc
 *                    (host name "nested-a", lo up, a TCP listener on 127.0.0.1:7007 in its
 *                    network namespace, a SysV message queue with a message), then forks A1,
 *                    which shares them; child B unshares uts ("nested-b") and a time namespace
 *                    with CLOCK_MONOTONIC 1000 s ahead, forks B1 into it, and goes back to its
 *                    own time namespace for its future children. On go each checks from inside:
 *                    host names, namespace inodes equal where shared and different where not,
 *                    the listener accepts a connection made in that namespace, the message is
 *                    queued, B1's monotonic clock is still 1000 s ahead and never went back.
 *   nestedns W pid   (started by `ferry run --pidns`) child U unshares a pid namespace for its
 *                    children (`unshare -p -f`) and forks N, pid 1 there; N forks N1, which
 *                    starts a thread. On go each checks its pids at every level below ferry's
 *                    (NSpid of /proc/self/status and of the thread), N that it is pid 1, and U
 *                    that a child it forks now lands in N's namespace.
 *   nestedns W timekids  child C unshares a time namespace for its future children only (500 s
 *                    ahead) and forks none; on go it forks one, which must be in it.
 *   nestedns W timebusy  the same with a child of C already in that namespace (refused).
 *
 * Each process but R writes W/child-NAME ("PASS" or "FAIL: why"); R forwards go to them, waits
 * for their verdicts and writes the result.
 */
#include "common.h"
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/msg.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <sys/wait.h>

#define PORT 7007
#define MSG_KEY 0x6e657374
#define OFFSET_S 1000

static int read_file_path_ok(const char *name)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", W, name);
	return access(path, F_OK) == 0;
}

static char names[8][16];
static pid_t pids[8];
static int nproc;

/* Publish this process's pid (as R's namespace sees it: R reads it back) under its name. */
static void publish(const char *name)
{
	char file[64], text[32];
	snprintf(file, sizeof file, "pid-%s", name);
	snprintf(text, sizeof text, "%d\n", (int)getpid());
	if (write_file_atomic(file, text) < 0)
		die_setup("write %s", file);
}

static void ns_link(pid_t pid, const char *kind, char *out, size_t cap)
{
	char path[64];
	if (pid)
		snprintf(path, sizeof path, "/proc/%d/ns/%s", (int)pid, kind);
	else
		snprintf(path, sizeof path, "/proc/self/ns/%s", kind);
	ssize_t n = readlink(path, out, cap - 1);
	out[n < 0 ? 0 : n] = 0;
}

static void check_host(const char *want)
{
	struct utsname u;
	CHECK(uname(&u) == 0, "uname: %s", strerror(errno));
	CHECK(strcmp(u.nodename, want) == 0, "host name %s, expected %s", u.nodename, want);
}

static void lo_up(void)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	SETUP(s);
	struct ifreq r = { 0 };
	strcpy(r.ifr_name, "lo");
	SETUP(ioctl(s, SIOCGIFFLAGS, &r));
	r.ifr_flags |= IFF_UP;
	SETUP(ioctl(s, SIOCSIFFLAGS, &r));
	close(s);
}

/* A connection from this namespace to its listener, accepted. */
static void check_listener(int lfd)
{
	int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(PORT) };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a) < 0) {
		fail("connect to 127.0.0.1:%d in the nested network namespace: %s", PORT, strerror(errno));
		return;
	}
	int s = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	CHECK(s >= 0, "accept on the restored listener: %s", strerror(errno));
	if (s >= 0) {
		CHECK(write(c, "x", 1) == 1, "write: %s", strerror(errno));
		char b = 0;
		CHECK(read(s, &b, 1) == 1 && b == 'x', "the accepted connection did not carry a byte");
		close(s);
	}
	close(c);
}

struct msgbuf1 {
	long mtype;
	char text[16];
};

static int time_offset_s(void)
{
	char buf[256];
	if (read_file("/proc/self/timens_offsets", buf, sizeof buf) < 0)
		return -1;
	long s = 0, ns = 0;
	char *p = strstr(buf, "monotonic");
	if (!p || sscanf(p, "monotonic %ld %ld", &s, &ns) != 2)
		return -1;
	return (int)s;
}

static double mono(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static void run_a1(void)
{
	publish("a1");
	char a_net[64], a_uts[64], a_ipc[64];
	write_file_atomic("ready-a1", "");
	wait_go();
	ns_link(getppid(), "net", a_net, sizeof a_net);
	ns_link(getppid(), "uts", a_uts, sizeof a_uts);
	ns_link(getppid(), "ipc", a_ipc, sizeof a_ipc);
	char mine[64];
	check_host("nested-a");
	ns_link(0, "net", mine, sizeof mine);
	CHECK(strcmp(mine, a_net) == 0, "net namespace %s, its parent A's %s", mine, a_net);
	ns_link(0, "uts", mine, sizeof mine);
	CHECK(strcmp(mine, a_uts) == 0, "uts namespace %s, its parent A's %s", mine, a_uts);
	ns_link(0, "ipc", mine, sizeof mine);
	CHECK(strcmp(mine, a_ipc) == 0, "ipc namespace %s, its parent A's %s", mine, a_ipc);
	CHECK(msgget(MSG_KEY, 0) >= 0, "the SysV queue of A's ipc namespace: %s", strerror(errno));
	child_report("a1");
	_exit(0);
}

static void run_a(pid_t r)
{
	SETUP(unshare(CLONE_NEWUTS | CLONE_NEWNET | CLONE_NEWIPC));
	SETUP(sethostname("nested-a", 8));
	lo_up();
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	SETUP(lfd);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(PORT) };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	SETUP(bind(lfd, (struct sockaddr *)&a, sizeof a));
	SETUP(listen(lfd, 4));
	int q = msgget(MSG_KEY, IPC_CREAT | 0600);
	SETUP(q);
	struct msgbuf1 m = { .mtype = 3 };
	strcpy(m.text, "nested");
	SETUP(msgsnd(q, &m, sizeof m.text, 0));
	publish("a");
	pid_t a1 = fork();
	SETUP(a1);
	if (a1 == 0)
		run_a1();
	write_file_atomic("ready-a", "");
	wait_go();
	check_host("nested-a");
	char mine[64], root[64];
	for (const char *k = "net"; k; k = strcmp(k, "net") == 0 ? "uts" : strcmp(k, "uts") == 0 ? "ipc" : NULL) {
		ns_link(0, k, mine, sizeof mine);
		ns_link(r, k, root, sizeof root);
		CHECK(strcmp(mine, root) != 0, "in the root's %s namespace %s", k, root);
	}
	check_listener(lfd);
	struct msgbuf1 got = { 0 };
	CHECK(msgrcv(q, &got, sizeof got.text, 3, IPC_NOWAIT) == (ssize_t)sizeof got.text && strcmp(got.text, "nested") == 0,
	      "the queued SysV message: %s", strerror(errno));
	/* (A1 looks the queue up too: the message is put back) */
	msgsnd(q, &m, sizeof m.text, 0);
	int st;
	CHECK(waitpid(a1, &st, 0) == a1, "wait for A1: %s", strerror(errno));
	msgctl(q, IPC_RMID, NULL);
	child_report("a");
	_exit(0);
}

static void run_b1(void)
{
	publish("b1");
	double before = mono();
	int off = time_offset_s();
	if (off < OFFSET_S - 2 || off > OFFSET_S + 2)
		die_setup("monotonic offset %d s, expected %d", off, OFFSET_S);
	write_file_atomic("ready-b1", "");
	wait_go();
	double after = mono();
	check_host("nested-b");
	off = time_offset_s();
	CHECK(off >= OFFSET_S - 5 && off <= OFFSET_S + 5, "monotonic offset %d s after restore, expected about %d", off, OFFSET_S);
	CHECK(after >= before, "CLOCK_MONOTONIC went back: %.3f then %.3f", before, after);
	char mine[64], parent[64];
	ns_link(0, "time", mine, sizeof mine);
	ns_link(getppid(), "time", parent, sizeof parent);
	CHECK(strcmp(mine, parent) != 0, "in its parent's time namespace %s", parent);
	ns_link(0, "uts", mine, sizeof mine);
	ns_link(getppid(), "uts", parent, sizeof parent);
	CHECK(strcmp(mine, parent) == 0, "uts namespace %s, its parent B's %s", mine, parent);
	child_report("b1");
	_exit(0);
}

static void run_b(void)
{
	SETUP(unshare(CLONE_NEWUTS));
	SETUP(sethostname("nested-b", 8));
	int own = open("/proc/self/ns/time", O_RDONLY | O_CLOEXEC);
	SETUP(own);
	SETUP(unshare(CLONE_NEWTIME));
	char text[64];
	snprintf(text, sizeof text, "monotonic %d 0\n", OFFSET_S);
	int fd = open("/proc/self/timens_offsets", O_WRONLY | O_CLOEXEC);
	SETUP(fd);
	if (write(fd, text, strlen(text)) < 0)
		die_setup("write timens_offsets: %s", strerror(errno));
	close(fd);
	publish("b");
	pid_t b1 = fork();
	SETUP(b1);
	if (b1 == 0) {
		close(own);
		run_b1();
	}
	/* back into its own for its future children (ferry refuses a time namespace pending) */
	SETUP(setns(own, CLONE_NEWTIME));
	close(own);
	write_file_atomic("ready-b", "");
	wait_go();
	check_host("nested-b");
	char mine[64], kids[64];
	ns_link(0, "time", mine, sizeof mine);
	ns_link(0, "time_for_children", kids, sizeof kids);
	CHECK(strcmp(mine, kids) == 0, "time_for_children %s, its own %s", kids, mine);
	int st;
	CHECK(waitpid(b1, &st, 0) == b1, "wait for B1: %s", strerror(errno));
	child_report("b");
	_exit(0);
}

/* C: a time namespace for its future children only (unshare -T before any fork), 500 s ahead */
static void run_timekids(int busy)
{
	SETUP(unshare(CLONE_NEWTIME));
	int fd = open("/proc/self/timens_offsets", O_WRONLY | O_CLOEXEC);
	SETUP(fd);
	const char *text = "monotonic 500 0\n";
	if (write(fd, text, strlen(text)) < 0)
		die_setup("write timens_offsets: %s", strerror(errno));
	close(fd);
	pid_t kid = 0;
	if (busy) {
		/* a child already in it: refused (C could not be given it back) */
		kid = fork();
		SETUP(kid);
		if (kid == 0)
			for (;;)
				pause();
	}
	write_file_atomic("ready-c", "");
	wait_go();
	if (kid > 0) {
		kill(kid, SIGKILL);
		waitpid(kid, NULL, 0);
	}
	char own[64], kids[64], parent[64];
	ns_link(0, "time", own, sizeof own);
	ns_link(0, "time_for_children", kids, sizeof kids);
	ns_link(getppid(), "time", parent, sizeof parent);
	CHECK(strcmp(own, parent) == 0, "in time namespace %s, its parent's %s", own, parent);
	CHECK(strcmp(own, kids) != 0, "its children go to its own time namespace %s", own);
	int p[2];
	SETUP(pipe(p));
	double mine = mono();
	pid_t d = fork();
	if (d == 0) {
		char line[128], link[64];
		ns_link(0, "time", link, sizeof link);
		snprintf(line, sizeof line, "%.3f %d %s", mono(), time_offset_s(), link);
		if (write(p[1], line, strlen(line)) < 0)
			_exit(1);
		_exit(0);
	}
	CHECK(d > 0, "fork: %s", strerror(errno));
	close(p[1]);
	char got[128] = "";
	ssize_t k = read(p[0], got, sizeof got - 1);
	got[k < 0 ? 0 : k] = 0;
	waitpid(d, NULL, 0);
	double theirs = 0;
	int off = -1;
	char link[64] = "";
	sscanf(got, "%lf %d %63s", &theirs, &off, link);
	CHECK(strcmp(link, kids) == 0, "its child is in time namespace %s, not %s", link, kids);
	CHECK(off >= 495 && off <= 505, "its child's monotonic offset %d s, expected about 500", off);
	CHECK(theirs - mine > 490 && theirs - mine < 510, "its child's CLOCK_MONOTONIC is %.3f s ahead of its own, expected about 500",
	      theirs - mine);
	child_report("c");
	_exit(0);
}

/* "NSpid:\t5\t3\t1" -> the last `n` ids, space separated, of this thread (or process). */
static void nspid_tail(const char *status_path, int n, char *out, size_t cap)
{
	char buf[8192];
	out[0] = 0;
	if (read_file(status_path, buf, sizeof buf) < 0)
		return;
	char *p = strstr(buf, "NSpid:");
	if (!p)
		return;
	p += 6;
	int ids[16], k = 0;
	while (k < 16) {
		char *end;
		long v = strtol(p, &end, 10);
		if (end == p)
			break;
		ids[k++] = (int)v;
		p = end;
		if (*p == '\n')
			break;
	}
	size_t len = 0;
	for (int i = k - n < 0 ? 0 : k - n; i < k; i++)
		len += snprintf(out + len, cap - len, "%s%d", len ? " " : "", ids[i]);
}

static char thread_before[64];
static volatile int thread_verdict; /* 0: pending, 1: pass, 2: fail */
static volatile int thread_go;

static void *n1_thread(void *arg)
{
	(void)arg;
	/* (gettid() is this namespace's id; /proc is ferry's: thread-self resolves it) */
	const char *path = "/proc/thread-self/status";
	nspid_tail(path, 2, thread_before, sizeof thread_before);
	while (!thread_go)
		usleep(10000);
	char now[64];
	nspid_tail(path, 2, now, sizeof now);
	thread_verdict = strcmp(now, thread_before) == 0 ? 1 : 2;
	if (thread_verdict == 2)
		fprintf(stderr, "thread NSpid %s, was %s\n", now, thread_before);
	return NULL;
}

/* `levels`: how many trailing NSpid entries are the tree's and below (not ferry's host's). */
static void pid_process(const char *name, int levels, void (*before_ready)(void), void (*after_go)(void), pid_t forward)
{
	char before[64], now[64];
	nspid_tail("/proc/self/status", levels, before, sizeof before);
	if (before_ready)
		before_ready();
	char file[32];
	snprintf(file, sizeof file, "ready-%s", name);
	write_file_atomic(file, "");
	wait_go();
	if (forward > 0)
		kill(forward, SIGUSR2);
	nspid_tail("/proc/self/status", levels, now, sizeof now);
	CHECK(strcmp(now, before) == 0, "NSpid (tree's level and below) %s, was %s", now, before);
	if (after_go)
		after_go();
	child_report(name);
}

static pthread_t n1_t;
static void n1_start_thread(void)
{
	if (pthread_create(&n1_t, NULL, n1_thread, NULL) != 0)
		die_setup("pthread_create");
	while (!thread_before[0])
		usleep(1000);
}
static void n1_join_thread(void)
{
	thread_go = 1;
	pthread_join(n1_t, NULL);
	CHECK(thread_verdict == 1, "the thread's NSpid changed (was %s)", thread_before);
}

static void n_after_go(void)
{
	CHECK(getpid() == 1, "pid %d in its own pid namespace, expected 1", (int)getpid());
	char link[64];
	ns_link(0, "pid", link, sizeof link);
	write_file_atomic("ns-n", link);
}

static pid_t n1_pid;
static void n_wait(void)
{
	/* (alive until U forked into its namespace: a pid namespace whose init died takes no
	 * more processes) */
	for (int i = 0; i < 3000 && !read_file_path_ok("x-done"); i++)
		usleep(10000);
	int st;
	CHECK(waitpid(n1_pid, &st, 0) == n1_pid, "wait for N1: %s", strerror(errno));
}

static void u_after_go(void)
{
	/* N's verdict (with its namespace's link) first */
	char nsn[64] = "";
	for (int i = 0; i < 2000 && read_file_path_ok("ns-n") == 0; i++)
		usleep(10000);
	char path[4096];
	snprintf(path, sizeof path, "%s/ns-n", W);
	read_file(path, nsn, sizeof nsn);
	int p[2];
	SETUP(pipe(p));
	pid_t x = fork();
	if (x < 0)
		write_file_atomic("x-done", "");
	if (x == 0) {
		char link[64] = "";
		ns_link(0, "pid", link, sizeof link);
		if (write(p[1], link, strlen(link)) < 0)
			_exit(1);
		_exit(0);
	}
	CHECK(x > 0, "fork: %s", strerror(errno));
	close(p[1]);
	char got[64] = "";
	ssize_t k = read(p[0], got, sizeof got - 1);
	got[k < 0 ? 0 : k] = 0;
	waitpid(x, NULL, 0);
	write_file_atomic("x-done", "");
	CHECK(strcmp(got, nsn) == 0, "a child forked now is in pid namespace %s, N's is %s", got, nsn);
}

static void run_pid(void)
{
	pid_t u = fork();
	SETUP(u);
	if (u == 0) {
		publish("u");
		SETUP(unshare(CLONE_NEWPID));
		pid_t n = fork();
		SETUP(n);
		if (n == 0) {
			/* N: pid 1 of the nested namespace */
			pid_t n1 = fork();
			SETUP(n1);
			if (n1 == 0) {
				pid_process("n1", 2, n1_start_thread, n1_join_thread, 0);
				_exit(0);
			}
			n1_pid = n1;
			pid_process("n", 2, NULL, n_after_go, n1);
			n_wait();
			_exit(0);
		}
		pid_process("u", 1, NULL, u_after_go, n);
		waitpid(n, NULL, 0);
		_exit(0);
	}
	strcpy(names[nproc], "u");
	pids[nproc++] = u;
}

static void wait_files(const char *const *files, int n)
{
	for (int i = 0; i < n; i++) {
		int ok = 0;
		for (int t = 0; t < 3000 && !(ok = read_file_path_ok(files[i])); t++)
			usleep(10000);
		if (!ok)
			die_setup("no %s after 30 s", files[i]);
	}
}

static pid_t read_pid(const char *name)
{
	char path[4096], buf[32];
	snprintf(path, sizeof path, "%s/pid-%s", W, name);
	if (read_file(path, buf, sizeof buf) < 0)
		die_setup("read %s", path);
	return (pid_t)atoi(buf);
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	const char *mode = argc > 2 ? argv[2] : "sets";
	char host_before[256] = "";
	struct utsname u;
	uname(&u);
	snprintf(host_before, sizeof host_before, "%s", u.nodename);
	if (strcmp(mode, "sets") == 0) {
		pid_t r = getpid();
		pid_t a = fork();
		SETUP(a);
		if (a == 0)
			run_a(r);
		pid_t b = fork();
		SETUP(b);
		if (b == 0)
			run_b();
		const char *ready[] = { "ready-a", "ready-a1", "ready-b", "ready-b1" };
		wait_files(ready, 4);
		const char *order[] = { "a1", "a", "b1", "b" };
		signal_ready();
		wait_go();
		for (int i = 0; i < 4; i++) {
			kill(read_pid(order[i]), SIGUSR2);
			child_verdict(order[i]);
		}
		check_host(host_before);
		waitpid(a, NULL, 0);
		waitpid(b, NULL, 0);
	} else if (strcmp(mode, "pid") == 0) {
		run_pid();
		const char *ready[] = { "ready-u", "ready-n", "ready-n1" };
		wait_files(ready, 3);
		signal_ready();
		wait_go();
		/* N1 and N are not visible from here by their inner pids: U forwards, see below */
		kill(pids[0], SIGUSR2);
		child_verdict("n1");
		child_verdict("n");
		child_verdict("u");
		waitpid(pids[0], NULL, 0);
	} else if (strcmp(mode, "timekids") == 0 || strcmp(mode, "timebusy") == 0) {
		pid_t c = fork();
		SETUP(c);
		if (c == 0)
			run_timekids(strcmp(mode, "timebusy") == 0);
		const char *ready[] = { "ready-c" };
		wait_files(ready, 1);
		signal_ready();
		wait_go();
		kill(c, SIGUSR2);
		child_verdict("c");
		waitpid(c, NULL, 0);
	} else {
		die_setup("unknown mode %s", mode);
	}
	finish();
}
