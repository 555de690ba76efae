/*
 * epoll_fork: one epoll instance inherited by a child with its targets, which both processes
 * still hold at the same numbers (one file description registered once, reached from two
 * processes); with argv[2] "closed", also registrations that outlived their fd number:
 *   fd 10  eventfd A, registered (data 0xa); parent and child both hold it
 *   closed: fd 12  eventfd C registered (data 0xc), then dup'ed to 13 and fd 12 closed; a pipe's
 *                  read end now sits at fd 12 (not registered)
 *           fd 14  eventfd D registered edge-triggered (data 0xd), dup'ed to 15, fd 14 closed and left free
 * Before ready, the instance's fdinfo "tfd" lines (number, events, data) are recorded; after
 * restore both processes must see the same lines (the registration keys are (file, number)),
 * EPOLL_CTL_ADD of fd 10 must fail with EEXIST (registered once), EPOLL_CTL_MOD of the pipe at
 * fd 12 with ENOENT (not registered), fd 14 must still be free, and once A, C and D are written
 * (C and D through fds 13 and 15) epoll_wait reports exactly a, c and d, in either process.
 */
#include "common.h"
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/wait.h>

static char before[4096];
static int closed_mode;

static int by_text(const void *a, const void *b)
{
	return strcmp((const char *)a, (const char *)b);
}

/* The "tfd:" lines of the fdinfo of fd `ep`, with the fields that make a registration
 * (number, events, data), sorted (the kernel lists them in the order of its tree, keyed by
 * file addresses), into buf. */
static void tfds(int ep, char *buf, size_t len)
{
	char path[64], line[512], items[16][64];
	int n = 0;
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", ep);
	FILE *f = fopen(path, "re");
	buf[0] = 0;
	if (!f)
		return;
	while (fgets(line, sizeof line, f) && n < 16) {
		int fd;
		unsigned events;
		unsigned long long data;
		if (sscanf(line, "tfd: %d events: %x data: %llx", &fd, &events, &data) == 3)
			snprintf(items[n++], sizeof items[0], "%d %x %llx;", fd, events, data);
	}
	fclose(f);
	qsort(items, (size_t)n, sizeof items[0], by_text);
	size_t off = 0;
	for (int i = 0; i < n && off < len; i++)
		off += (size_t)snprintf(buf + off, len - off, "%s", items[i]);
}

static unsigned seen_set(int ep, int *n)
{
	struct epoll_event ev[8];
	*n = epoll_wait(ep, ev, 8, 2000);
	unsigned seen = 0;
	for (int i = 0; i < *n; i++)
		seen |= ev[i].data.u64 == 0xa ? 1 : ev[i].data.u64 == 0xc ? 2 : ev[i].data.u64 == 0xd ? 4 : 8;
	return seen;
}

/* Checks both processes make after restore. */
static void check(int ep, const char *who)
{
	char now[4096];
	tfds(ep, now, sizeof now);
	CHECK(strcmp(now, before) == 0, "%s: registrations are \"%s\", were \"%s\"", who, now, before);
	struct epoll_event e = { .events = EPOLLIN, .data.u64 = 0x99 };
	CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, 10, &e) < 0 && errno == EEXIST,
	      "%s: adding fd 10 again did not fail with EEXIST (%s)", who, strerror(errno));
	if (closed_mode) {
		CHECK(epoll_ctl(ep, EPOLL_CTL_MOD, 12, &e) < 0 && errno == ENOENT,
		      "%s: the pipe at fd 12 is registered (MOD: %s)", who, strerror(errno));
		CHECK(fcntl(14, F_GETFD) < 0 && errno == EBADF, "%s: fd 14 is open", who);
	}
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	closed_mode = argc > 2 && strcmp(argv[2], "closed") == 0;
	int ep = epoll_create1(EPOLL_CLOEXEC);
	SETUP(ep);
	SETUP(dup2(eventfd(0, EFD_NONBLOCK), 10));
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0xa };
	SETUP(epoll_ctl(ep, EPOLL_CTL_ADD, 10, &ev));
	unsigned want = 1;
	if (closed_mode) {
		SETUP(dup2(eventfd(0, EFD_NONBLOCK), 12));
		ev.data.u64 = 0xc;
		SETUP(epoll_ctl(ep, EPOLL_CTL_ADD, 12, &ev));
		SETUP(dup2(12, 13));
		SETUP(close(12));
		int pp[2];
		SETUP(pipe(pp));
		SETUP(dup2(pp[0], 12));
		SETUP(dup2(eventfd(0, EFD_NONBLOCK), 14));
		ev.data.u64 = 0xd;
		ev.events = EPOLLIN | EPOLLET;
		SETUP(epoll_ctl(ep, EPOLL_CTL_ADD, 14, &ev));
		SETUP(dup2(14, 15));
		SETUP(close(14));
		want = 7;
	}
	tfds(ep, before, sizeof before);
	if (!strstr(before, "10 "))
		die_setup("no registration in fdinfo: \"%s\"", before);
	int tochild[2];
	SETUP(pipe(tochild));
	pid_t c = fork();
	SETUP(c);
	if (c == 0) {
		char cmd;
		if (read(tochild[0], &cmd, 1) != 1)
			_exit(3);
		check(ep, "child");
		int n;
		unsigned seen = seen_set(ep, &n);
		/* D is edge-triggered: the parent's epoll_wait took its one event */
		unsigned cwant = want & ~4u;
		CHECK(seen == cwant && n == __builtin_popcount(cwant), "child: epoll_wait: %d events, set %#x, want %#x",
		      n, seen, cwant);
		_exit(failures ? 1 : 0);
	}
	signal_ready();
	wait_go();
	check(ep, "parent");
	uint64_t one = 1;
	CHECK(write(10, &one, 8) == 8, "write A: %s", strerror(errno));
	if (closed_mode) {
		CHECK(write(13, &one, 8) == 8, "write C through fd 13: %s", strerror(errno));
		CHECK(write(15, &one, 8) == 8, "write D through fd 15: %s", strerror(errno));
	}
	int n;
	unsigned seen = seen_set(ep, &n);
	CHECK(seen == want && n == __builtin_popcount(want), "parent: epoll_wait: %d events, set %#x, want %#x", n, seen,
	      want);
	CHECK(write(tochild[1], "g", 1) == 1, "tell the child");
	int st;
	CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child: status %#x", st);
	finish();
}
