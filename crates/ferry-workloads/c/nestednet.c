/*
 * nestednet: unix sockets and cgroups of processes in nested network and cgroup namespaces.
 *
 *   nestednet W unix    the root R makes a socketpair (in its network namespace), then forks
 *                       child A, which keeps one end and unshares a network namespace. Both R
 *                       (in the root's namespace) and A (in its own) bind the SAME abstract
 *                       name (@ferry-nestednet-same-R) to a stream listener with one accepted
 *                       connection, and A makes a seqpacket pair and a datagram socket bound to
 *                       another abstract name in its namespace, with a datagram queued. On go
 *                       each checks from inside: every socket is in the network namespace it
 *                       was made in (SIOCGSKNS), a new connection to the abstract name reaches
 *                       its OWN listener, the connections and pairs carry bytes, the queued
 *                       datagram is there, and the pair made before the unshare still joins R
 *                       and A.
 *   nestednet W cgroup  child C creates cgroups ferry-nestednet-R (R's pid) in the v1 pids hierarchy
 *                       and in the v2 tree, moves into them and unshares a cgroup
 *                       namespace there, then forks C1, which moves into a sub-cgroup "inner"
 *                       (pids only). Each records /proc/self/cgroup; on go each checks it is
 *                       unchanged (C's shows "/" where its namespace is rooted, C1's "/inner"),
 *                       that C and C1 share a cgroup namespace that is not R's, and R that its
 *                       own /proc/self/cgroup is unchanged. R removes the cgroups at the end.
 *   nestednet W inet-moved  R binds a UDP socket on 127.0.0.1, then unshares a network
 *                       namespace: the socket stays in the namespace it was made in. ferry
 *                       must refuse it by name (restore would make it in R's new one); on go
 *                       R checks the socket kept its address and still reaches itself there.
 *   nestednet W veth    R unshares a network namespace (the tree's), forks A, which unshares
 *                       another; R makes a veth pair npa0 (index 17, MTU 1400) in its own and
 *                       npb0 (index 23, MTU 1300) in A's, addresses 10.93.0.1/24 and .2/24, up.
 *                       A listens on 10.93.0.2, R connects (an established connection across the
 *                       pair: dump with --tcp-established). Each records its end (index, hardware
 *                       address, MTU, up); on go each checks it from inside, the connection
 *                       carries bytes both ways, and a new connection from R reaches A's listener.
 *
 * Each process but R writes W/child-NAME ("PASS" or "FAIL: why"); R forwards go to them, waits
 * for their verdicts and writes the result.
 */
#include "common.h"
#include <arpa/inet.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <poll.h>
#include <stddef.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

/* the shared abstract name, with R's pid (workloads run in parallel in the host's namespace) */
static char NAME[64];
#define DGRAM_NAME "ferry-nestednet-dgram"

static void wait_file(const char *name)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", W, name);
	for (int t = 0; t < 3000; t++) {
		if (access(path, F_OK) == 0)
			return;
		usleep(10000);
	}
	die_setup("no %s after 30 s", name);
}

static socklen_t abstract(struct sockaddr_un *a, const char *name)
{
	memset(a, 0, sizeof *a);
	a->sun_family = AF_UNIX;
	strcpy(a->sun_path + 1, name);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));
}

/* The inode of the network namespace socket `fd` is in, or 0. */
static unsigned long sock_netns(int fd)
{
	int ns = ioctl(fd, SIOCGSKNS);
	if (ns < 0)
		return 0;
	struct stat st;
	int r = fstat(ns, &st);
	close(ns);
	return r == 0 ? (unsigned long)st.st_ino : 0;
}

static unsigned long own_netns(void)
{
	struct stat st;
	return stat("/proc/self/ns/net", &st) == 0 ? (unsigned long)st.st_ino : 0;
}

/* One byte each way between a and b. */
static void check_pair(int a, int b, const char *what)
{
	char x = 0;
	CHECK(write(a, "p", 1) == 1 && read(b, &x, 1) == 1 && x == 'p', "%s: no byte from one end to the other: %s", what,
	      strerror(errno));
	x = 0;
	CHECK(write(b, "q", 1) == 1 && read(a, &x, 1) == 1 && x == 'q', "%s: no byte back: %s", what, strerror(errno));
}

struct listener {
	int l, cli, srv;
};

/* A stream listener bound to @NAME with one connection accepted. */
static struct listener make_listener(void)
{
	struct listener s;
	struct sockaddr_un a;
	socklen_t len = abstract(&a, NAME);
	s.l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	SETUP(s.l);
	SETUP(bind(s.l, (struct sockaddr *)&a, len));
	SETUP(listen(s.l, 4));
	s.cli = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	SETUP(s.cli);
	SETUP(connect(s.cli, (struct sockaddr *)&a, len));
	s.srv = accept4(s.l, NULL, NULL, SOCK_CLOEXEC);
	SETUP(s.srv);
	return s;
}

/* After restore: the sockets are in this namespace, @NAME reaches this listener. */
static void check_listener(struct listener *s, const char *who)
{
	unsigned long mine = own_netns();
	CHECK(sock_netns(s->l) == mine, "%s: its listener is in network namespace %lu, the process in %lu", who,
	      sock_netns(s->l), mine);
	CHECK(sock_netns(s->srv) == mine && sock_netns(s->cli) == mine, "%s: its connection is in another network namespace",
	      who);
	check_pair(s->cli, s->srv, "the accepted connection");
	struct sockaddr_un a;
	socklen_t len = abstract(&a, NAME);
	int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&a, len) < 0) {
		fail("%s: connect to @%s in its network namespace: %s", who, NAME, strerror(errno));
		return;
	}
	struct pollfd p = { .fd = s->l, .events = POLLIN };
	/* (a connection to its own listener is queued at once: the wait only bounds a failure) */
	CHECK(poll(&p, 1, 5000) == 1, "%s: a connection to @%s did not reach its own listener", who, NAME);
	int n = accept4(s->l, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	CHECK(n >= 0, "%s: accept on its listener of @%s: %s", who, NAME, strerror(errno));
	if (n >= 0) {
		check_pair(c, n, "a new connection to the listener");
		close(n);
	}
	close(c);
}

static void run_unix(void)
{
	snprintf(NAME, sizeof NAME, "ferry-nestednet-same-%d", (int)getpid());
	int pair[2];
	SETUP(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair));
	unsigned long root_net = own_netns();
	pid_t a = fork();
	SETUP(a);
	if (a == 0) {
		close(pair[0]);
		SETUP(unshare(CLONE_NEWNET));
		struct listener s = make_listener();
		int inner[2];
		SETUP(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, inner));
		struct sockaddr_un da;
		socklen_t dlen = abstract(&da, DGRAM_NAME);
		int d = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		SETUP(d);
		SETUP(bind(d, (struct sockaddr *)&da, dlen));
		int snd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		SETUP(snd);
		SETUP(sendto(snd, "dgram", 5, 0, (struct sockaddr *)&da, dlen) < 0 ? -1 : 0);
		close(snd);
		write_file_atomic("ready-a", "");
		wait_go();
		check_listener(&s, "A (nested)");
		unsigned long mine = own_netns();
		CHECK(mine != root_net, "A is in the root's network namespace");
		CHECK(sock_netns(inner[0]) == mine && sock_netns(d) == mine, "A's pair or datagram socket is not in its namespace");
		check_pair(inner[0], inner[1], "A's socketpair");
		char buf[16] = "";
		CHECK(recv(d, buf, sizeof buf, MSG_DONTWAIT) == 5 && memcmp(buf, "dgram", 5) == 0,
		      "the datagram queued on @%s is not there: %s", DGRAM_NAME, strerror(errno));
		CHECK(sock_netns(pair[1]) == root_net, "the pair made before the unshare left the root's network namespace");
		CHECK(write(pair[1], "a", 1) == 1, "write to the pair shared with R: %s", strerror(errno));
		child_report("a");
		_exit(0);
	}
	close(pair[1]);
	wait_file("ready-a");
	struct listener s = make_listener();
	signal_ready();
	wait_go();
	kill(a, SIGUSR2);
	check_listener(&s, "R (root)");
	char x = 0;
	CHECK(read(pair[0], &x, 1) == 1 && x == 'a', "no byte from A over the pair made before its unshare");
	CHECK(sock_netns(pair[0]) == own_netns(), "R's end of the pair is in another network namespace");
	child_verdict("a");
	waitpid(a, NULL, 0);
}

static char cg_v1[256], cg_v2[256];

static void ns_link(pid_t pid, char *out, size_t cap)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/ns/cgroup", (int)pid);
	ssize_t n = readlink(path, out, cap - 1);
	out[n < 0 ? 0 : n] = 0;
}

/* This process's /proc/self/cgroup line of hierarchy `key` ("pids", "" for v2). */
static void cgroup_line(const char *key, char *out, size_t cap)
{
	char buf[4096];
	out[0] = 0;
	if (read_file("/proc/self/cgroup", buf, sizeof buf) < 0)
		return;
	for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
		char *c = strchr(line, ':');
		if (!c)
			continue;
		size_t k = strlen(key);
		if (strncmp(c + 1, key, k) == 0 && c[1 + k] == ':') {
			snprintf(out, cap, "%s", c + 2 + k);
			return;
		}
	}
}

static void check_cgroups(const char *who, const char *want, const char *before)
{
	char now[4096], v1[256], v2[256];
	read_file("/proc/self/cgroup", now, sizeof now);
	CHECK(strcmp(now, before) == 0, "%s: /proc/self/cgroup is\n%s, was\n%s", who, now, before);
	cgroup_line("pids", v1, sizeof v1);
	cgroup_line("", v2, sizeof v2);
	CHECK(strcmp(v1, want) == 0, "%s: pids cgroup %s inside its namespace, expected %s", who, v1, want);
	CHECK(strcmp(v2, "/") == 0, "%s: cgroup v2 %s inside its namespace, expected /", who, v2);
}

static void run_c1(void)
{
	char inner[300], before[4096];
	snprintf(inner, sizeof inner, "%s/inner", cg_v1);
	if (mkdir(inner, 0755) < 0 && errno != EEXIST)
		die_setup("mkdir %s: %s", inner, strerror(errno));
	cgroup_join(inner);
	read_file("/proc/self/cgroup", before, sizeof before);
	write_file_atomic("ready-c1", "");
	wait_go();
	check_cgroups("C1", "/inner", before);
	char mine[64], parent[64];
	ns_link(getpid(), mine, sizeof mine);
	ns_link(getppid(), parent, sizeof parent);
	CHECK(strcmp(mine, parent) == 0, "C1: cgroup namespace %s, its parent C's %s", mine, parent);
	child_report("c1");
	_exit(0);
}

static void run_c(pid_t r)
{
	mkdir(cg_v1, 0755);
	mkdir(cg_v2, 0755);
	cgroup_join(cg_v1);
	cgroup_join(cg_v2);
	SETUP(unshare(CLONE_NEWCGROUP));
	char before[4096];
	read_file("/proc/self/cgroup", before, sizeof before);
	pid_t c1 = fork();
	SETUP(c1);
	if (c1 == 0)
		run_c1();
	wait_file("ready-c1");
	write_file_atomic("ready-c", "");
	wait_go();
	kill(c1, SIGUSR2);
	check_cgroups("C", "/", before);
	char mine[64], root[64];
	ns_link(getpid(), mine, sizeof mine);
	ns_link(r, root, sizeof root);
	CHECK(strcmp(mine, root) != 0, "C: in the root's cgroup namespace %s", root);
	int st;
	CHECK(waitpid(c1, &st, 0) == c1, "wait for C1: %s", strerror(errno));
	child_report("c");
	_exit(0);
}

static void run_cgroup(void)
{
	char before[4096];
	read_file("/proc/self/cgroup", before, sizeof before);
	snprintf(cg_v1, sizeof cg_v1, "/sys/fs/cgroup/pids/ferry-nestednet-%d", (int)getpid());
	snprintf(cg_v2, sizeof cg_v2, "/sys/fs/cgroup/unified/ferry-nestednet-%d", (int)getpid());
	pid_t r = getpid();
	pid_t c = fork();
	SETUP(c);
	if (c == 0)
		run_c(r);
	wait_file("ready-c");
	signal_ready();
	wait_go();
	kill(c, SIGUSR2);
	child_verdict("c1");
	child_verdict("c");
	waitpid(c, NULL, 0);
	char now[4096];
	read_file("/proc/self/cgroup", now, sizeof now);
	CHECK(strcmp(now, before) == 0, "R: /proc/self/cgroup is\n%s, was\n%s", now, before);
	char inner[300];
	snprintf(inner, sizeof inner, "%s/inner", cg_v1);
	rmdir(inner);
	rmdir(cg_v1);
	rmdir(cg_v2);
}

static void run_inet_moved(void)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	SETUP(s);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	SETUP(bind(s, (struct sockaddr *)&a, sizeof a));
	socklen_t len = sizeof a;
	SETUP(getsockname(s, (struct sockaddr *)&a, &len));
	SETUP(unshare(CLONE_NEWNET));
	signal_ready();
	wait_go();
	struct sockaddr_in now;
	len = sizeof now;
	CHECK(getsockname(s, (struct sockaddr *)&now, &len) == 0 && now.sin_port == a.sin_port &&
		      now.sin_addr.s_addr == a.sin_addr.s_addr,
	      "the UDP socket lost its address 127.0.0.1:%d", ntohs(a.sin_port));
	char buf[8] = "moved";
	CHECK(sendto(s, buf, 5, 0, (struct sockaddr *)&a, sizeof a) == 5, "sendto itself: %s", strerror(errno));
	CHECK(recv(s, buf, sizeof buf, 0) == 5, "recv from itself: %s", strerror(errno));
}

/* What a process sees of its end of the veth pair. */
struct link_seen {
	unsigned index, mtu, up;
	unsigned char mac[6];
};

static struct link_seen link_now(const char *dev)
{
	struct link_seen l = { 0 };
	struct ifreq r;
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return l;
	l.index = if_nametoindex(dev);
	memset(&r, 0, sizeof r);
	snprintf(r.ifr_name, sizeof r.ifr_name, "%s", dev);
	if (ioctl(s, SIOCGIFMTU, &r) == 0)
		l.mtu = (unsigned)r.ifr_mtu;
	if (ioctl(s, SIOCGIFHWADDR, &r) == 0)
		memcpy(l.mac, r.ifr_hwaddr.sa_data, 6);
	if (ioctl(s, SIOCGIFFLAGS, &r) == 0)
		l.up = (r.ifr_flags & IFF_UP) != 0;
	close(s);
	return l;
}

static void check_link(const char *who, const char *dev, const struct link_seen *was, unsigned index, unsigned mtu)
{
	struct link_seen now = link_now(dev);
	CHECK(now.index == was->index && now.index == index, "%s: %s has index %u, was %u", who, dev, now.index, was->index);
	CHECK(now.mtu == was->mtu && now.mtu == mtu, "%s: %s has MTU %u, was %u", who, dev, now.mtu, was->mtu);
	CHECK(memcmp(now.mac, was->mac, 6) == 0, "%s: %s has hardware address %02x:%02x:%02x:%02x:%02x:%02x", who, dev,
	      now.mac[0], now.mac[1], now.mac[2], now.mac[3], now.mac[4], now.mac[5]);
	CHECK(now.up, "%s: %s is down", who, dev);
}

static void shell(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void shell(const char *fmt, ...)
{
	char cmd[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof cmd, fmt, ap);
	va_end(ap);
	int st = system(cmd);
	if (st != 0)
		die_setup("%s: exit status %d", cmd, st);
}

#define VETH_PORT 9393

/* One byte from `fd` (-1 if none within 10 s: the wait only bounds a failure). */
static int read_byte(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	unsigned char x;
	if (poll(&p, 1, 10000) != 1 || read(fd, &x, 1) != 1)
		return -1;
	return x;
}

static void run_veth(void)
{
	SETUP(unshare(CLONE_NEWNET));
	shell("ip link set lo up");
	pid_t a = fork();
	SETUP(a);
	if (a == 0) {
		SETUP(unshare(CLONE_NEWNET));
		write_file_atomic("ready-a-ns", "");
		wait_file("veth-made");
		shell("ip link set lo up && ip addr add 10.93.0.2/24 dev npb0 && ip link set npb0 up");
		int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		SETUP(l);
		int one = 1;
		SETUP(setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
		struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(VETH_PORT) };
		inet_pton(AF_INET, "10.93.0.2", &sa.sin_addr);
		SETUP(bind(l, (struct sockaddr *)&sa, sizeof sa));
		SETUP(listen(l, 4));
		write_file_atomic("listening-a", "");
		int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
		SETUP(c);
		struct link_seen was = link_now("npb0");
		write_file_atomic("ready-a", "");
		wait_go();
		check_link("A", "npb0", &was, 23, 1300);
		char pns[64];
		struct stat pst;
		snprintf(pns, sizeof pns, "/proc/%d/ns/net", (int)getppid());
		CHECK(stat(pns, &pst) == 0 && (unsigned long)pst.st_ino != own_netns(), "A is in R's network namespace");
		CHECK(read_byte(c) == 'r', "A: no byte from R over the connection: %s", strerror(errno));
		CHECK(write(c, "a", 1) == 1, "A: write to R: %s", strerror(errno));
		struct pollfd p = { .fd = l, .events = POLLIN };
		/* (the wait only bounds a failure) */
		CHECK(poll(&p, 1, 10000) == 1, "A: no new connection from R reached its listener");
		int n = accept4(l, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		CHECK(n >= 0, "A: accept: %s", strerror(errno));
		if (n >= 0) {
			CHECK(read_byte(n) == 'n', "A: no byte over the new connection");
			CHECK(write(n, "m", 1) == 1, "A: write over the new connection: %s", strerror(errno));
			close(n);
		}
		child_report("a");
		_exit(0);
	}
	wait_file("ready-a-ns");
	shell("ip link add npa0 index 17 mtu 1400 type veth peer name npb0 index 23 mtu 1300 netns %d && "
	      "ip addr add 10.93.0.1/24 dev npa0 && ip link set npa0 up",
	      (int)a);
	write_file_atomic("veth-made", "");
	wait_file("listening-a");
	int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	SETUP(c);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(VETH_PORT) };
	inet_pton(AF_INET, "10.93.0.2", &sa.sin_addr);
	SETUP(connect(c, (struct sockaddr *)&sa, sizeof sa));
	struct link_seen was = link_now("npa0");
	wait_file("ready-a");
	signal_ready();
	wait_go();
	kill(a, SIGUSR2);
	check_link("R", "npa0", &was, 17, 1400);
	CHECK(write(c, "r", 1) == 1, "R: write to A: %s", strerror(errno));
	CHECK(read_byte(c) == 'a', "R: no byte back from A over the connection: %s", strerror(errno));
	int n = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	SETUP(n);
	CHECK(connect(n, (struct sockaddr *)&sa, sizeof sa) == 0, "R: a new connection to A: %s", strerror(errno));
	CHECK(write(n, "n", 1) == 1 && read_byte(n) == 'm', "R: no byte back over the new connection");
	close(n);
	child_verdict("a");
	waitpid(a, NULL, 0);
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	const char *mode = argc > 2 ? argv[2] : "unix";
	if (strcmp(mode, "unix") == 0)
		run_unix();
	else if (strcmp(mode, "cgroup") == 0)
		run_cgroup();
	else if (strcmp(mode, "inet-moved") == 0)
		run_inet_moved();
	else if (strcmp(mode, "veth") == 0)
		run_veth();
	else
		die_setup("unknown mode %s", mode);
	finish();
}
