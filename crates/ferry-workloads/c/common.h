/*
 * Shared helpers for ferry's self-verifying workloads.
 *
 * Protocol (every workload): argv[1] is an absolute work directory W. The workload sets up
 * its state, writes W/ready atomically, and waits for SIGUSR2 ("go"). Between ready and go
 * the harness checkpoints the process (ferry dump kills it) and restores it (same pid, new
 * parent). On go the workload reads its state back from the kernel, compares it with values
 * recorded BEFORE ready, writes W/result atomically ("PASS" or "FAIL: <first difference>")
 * and exits 0 on pass, 1 on fail (2 when the setup itself failed, before ready).
 *
 * Failures are collected with fail(): the first message goes to the result file, every
 * message goes to stderr (the harness keeps it in W/out.log).
 */
#ifndef FERRY_WORKLOADS_COMMON_H
#define FERRY_WORKLOADS_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>

static const char *W = NULL;             /* the work directory */
static volatile sig_atomic_t go = 0;     /* set by the SIGUSR2 handler */
static char first_failure[1024];
static int failures = 0;

static __attribute__((unused)) void die_setup(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static __attribute__((unused)) void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Write W/name atomically: W/name.tmp, then rename. Returns 0 or -1 (errno set). */
static __attribute__((unused)) int write_file_atomic(const char *name, const char *content)
{
	char tmp[4096], dst[4096];
	snprintf(tmp, sizeof tmp, "%s/%s.tmp", W, name);
	snprintf(dst, sizeof dst, "%s/%s", W, name);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	size_t len = strlen(content), off = 0;
	while (off < len) {
		ssize_t n = write(fd, content + off, len - off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			close(fd);
			return -1;
		}
		off += (size_t)n;
	}
	if (fsync(fd) < 0 || close(fd) < 0)
		return -1;
	return rename(tmp, dst);
}

/* A setup step failed before ready: report it and exit 2 (the harness sees no ready file). */
static __attribute__((unused)) void die_setup(const char *fmt, ...)
{
	char msg[1024], res[1100];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	fprintf(stderr, "setup failed: %s\n", msg);
	if (W) {
		snprintf(res, sizeof res, "FAIL: setup: %s\n", msg);
		write_file_atomic("result", res);
	}
	exit(2);
}

/* Record one verification failure (the first one becomes the result). */
static __attribute__((unused)) void fail(const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	fprintf(stderr, "FAIL: %s\n", msg);
	if (failures++ == 0)
		snprintf(first_failure, sizeof first_failure, "%s", msg);
}

#define CHECK(cond, ...)                 \
	do {                             \
		if (!(cond))             \
			fail(__VA_ARGS__); \
	} while (0)

/* setup helpers: abort the workload (exit 2) when a call that must succeed fails */
#define SETUP(call)                                                                  \
	do {                                                                         \
		if ((call) < 0)                                                      \
			die_setup("%s:%d: %s: %s", __FILE__, __LINE__, #call, strerror(errno)); \
	} while (0)

/* Write W/result and exit: 0 on pass, 1 on fail. */
static __attribute__((unused)) void finish(void) __attribute__((noreturn));
static __attribute__((unused)) void finish(void)
{
	char res[1100];
	if (failures == 0)
		snprintf(res, sizeof res, "PASS\n");
	else if (failures == 1)
		snprintf(res, sizeof res, "FAIL: %s\n", first_failure);
	else
		snprintf(res, sizeof res, "FAIL: %s (and %d more, see the log)\n", first_failure, failures - 1);
	fprintf(stderr, "result: %s", res);
	fflush(stdout);
	fflush(stderr);
	if (write_file_atomic("result", res) < 0) {
		fprintf(stderr, "cannot write %s/result: %s\n", W, strerror(errno));
		exit(3);
	}
	exit(failures == 0 ? 0 : 1);
}

static __attribute__((unused)) void on_go(int sig)
{
	(void)sig;
	go = 1;
}

/* Install the SIGUSR2 ("go") handler. extra_flags: e.g. SA_RESTART. */
static __attribute__((unused)) void install_go_handler(int extra_flags)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_go;
	sa.sa_flags = extra_flags;
	sigemptyset(&sa.sa_mask);
	SETUP(sigaction(SIGUSR2, &sa, NULL));
}

/*
 * Parse argv[1] (the work dir) and install the go handler. Also closes every fd above 2: a
 * workload must own all of its state, and fds inherited by accident (a test runner's jobserver
 * pipe, say) would be shared with processes outside the dump.
 */
static __attribute__((unused)) void workload_init(int argc, char **argv)
{
	syscall(SYS_close_range, 3, ~0U, 0);
	if (argc < 2 || argv[1][0] != '/') {
		fprintf(stderr, "usage: %s /absolute/work/dir [args]\n", argv[0]);
		exit(2);
	}
	W = argv[1];
	install_go_handler(0);
}

/* Announce that the state is set up. */
static __attribute__((unused)) void signal_ready(void)
{
	char buf[64];
	snprintf(buf, sizeof buf, "%d\n", (int)getpid());
	fflush(stdout);
	fflush(stderr);
	if (write_file_atomic("ready", buf) < 0)
		die_setup("cannot write %s/ready: %s", W, strerror(errno));
}

/*
 * Wait for go without a lost-wakeup race: block SIGUSR2, check the flag, sigsuspend with the
 * mask the process had before (SIGUSR2 unblocked there). While suspended the process's blocked
 * mask is exactly its normal mask, so a checkpoint taken now sees the real mask. Workloads that
 * verify their blocked mask must not use this (a restarted sigsuspend would re-apply the mask
 * and hide a restore bug): they use wait_go_polling().
 */
static __attribute__((unused)) void wait_go(void)
{
	sigset_t usr2, old;
	sigemptyset(&usr2);
	sigaddset(&usr2, SIGUSR2);
	sigprocmask(SIG_BLOCK, &usr2, &old);
	sigdelset(&old, SIGUSR2);
	while (!go)
		sigsuspend(&old);
	sigprocmask(SIG_SETMASK, &old, NULL);
}

/* Wait for go by polling the flag every 10 ms (nanosleep; interruptions are harmless). */
static __attribute__((unused)) void wait_go_polling(void)
{
	while (!go) {
		struct timespec ts = { 0, 10 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
}

/* Read a whole file (at most cap-1 bytes) into buf, NUL-terminated; returns length or -1. */
static __attribute__((unused)) ssize_t read_file(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t off = 0;
	while (off + 1 < cap) {
		ssize_t n = read(fd, buf + off, cap - 1 - off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			close(fd);
			return -1;
		}
		if (n == 0)
			break;
		off += (size_t)n;
	}
	close(fd);
	buf[off] = 0;
	return (ssize_t)off;
}

/* Copy the line of /proc/self/status that starts with key (e.g. "CapEff:") into out. */
static __attribute__((unused)) int status_line(const char *key, char *out, size_t cap)
{
	static char buf[16384];
	if (read_file("/proc/self/status", buf, sizeof buf) < 0)
		return -1;
	size_t klen = strlen(key);
	for (char *line = buf; line && *line;) {
		char *nl = strchr(line, '\n');
		if (strncmp(line, key, klen) == 0) {
			size_t len = nl ? (size_t)(nl - line) : strlen(line);
			if (len >= cap)
				len = cap - 1;
			memcpy(out, line, len);
			out[len] = 0;
			return 0;
		}
		line = nl ? nl + 1 : NULL;
	}
	out[0] = 0;
	return -1;
}

/* Find the /proc/self/maps line whose range starts at addr; copy it into out. */
static __attribute__((unused)) int maps_line_at(uintptr_t addr, char *out, size_t cap)
{
	static char buf[1 << 17];
	if (read_file("/proc/self/maps", buf, sizeof buf) < 0)
		return -1;
	for (char *line = buf; line && *line;) {
		char *nl = strchr(line, '\n');
		if (strtoull(line, NULL, 16) == addr) {
			size_t len = nl ? (size_t)(nl - line) : strlen(line);
			if (len >= cap)
				len = cap - 1;
			memcpy(out, line, len);
			out[len] = 0;
			return 0;
		}
		line = nl ? nl + 1 : NULL;
	}
	out[0] = 0;
	return -1;
}

/* Deterministic pseudo-random stream (xorshift64*) for filling and re-checking memory. */
static inline uint64_t prng_next(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1DULL;
}

static __attribute__((unused)) void fill_prng(void *p, size_t len, uint64_t seed)
{
	uint64_t s = seed | 1, *q = p;
	for (size_t i = 0; i < len / 8; i++)
		q[i] = prng_next(&s);
}

/* Compare p against the stream fill_prng wrote; returns the first differing byte offset or -1. */
static __attribute__((unused)) ssize_t check_prng(const void *p, size_t len, uint64_t seed)
{
	uint64_t s = seed | 1;
	const uint64_t *q = p;
	for (size_t i = 0; i < len / 8; i++) {
		uint64_t want = prng_next(&s);
		if (q[i] != want) {
			const unsigned char *a = (const unsigned char *)&q[i], *b = (const unsigned char *)&want;
			for (int j = 0; j < 8; j++)
				if (a[j] != b[j])
					return (ssize_t)(i * 8 + (size_t)j);
		}
	}
	return -1;
}

/* 64-bit FNV-1a-style checksum over 8-byte words (for memory we do not regenerate). */
static __attribute__((unused)) uint64_t checksum(const void *p, size_t len)
{
	const unsigned char *b = p;
	uint64_t h = 0xcbf29ce484222325ULL;
	size_t i = 0;
	for (; i + 8 <= len; i += 8) {
		uint64_t w;
		memcpy(&w, b + i, 8);
		h = (h ^ w) * 0x100000001b3ULL;
		h ^= h >> 29;
	}
	for (; i < len; i++)
		h = (h ^ b[i]) * 0x100000001b3ULL;
	return h;
}

static __attribute__((unused)) double mono_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
 * A tree of processes with verdicts of their own: each child writes W/child-NAME ("PASS" or
 * "FAIL: NAME: why", its first failure) with child_report(); the root waits for it (up to
 * 30 s) with child_verdict(), which records a failure of the root's if it is not PASS.
 */
static __attribute__((unused)) void child_report(const char *name)
{
	char file[64], res[1100];
	snprintf(file, sizeof file, "child-%s", name);
	if (failures)
		snprintf(res, sizeof res, "FAIL: %s: %s\n", name, first_failure);
	else
		snprintf(res, sizeof res, "PASS\n");
	write_file_atomic(file, res);
}

static __attribute__((unused)) void child_verdict(const char *name)
{
	char path[4096], buf[1200];
	snprintf(path, sizeof path, "%s/child-%s", W, name);
	int ok = 0;
	for (int t = 0; t < 3000 && !(ok = access(path, F_OK) == 0); t++)
		usleep(10000);
	if (!ok) {
		fail("no verdict from %s", name);
		return;
	}
	read_file(path, buf, sizeof buf);
	if (strncmp(buf, "PASS", 4) != 0)
		fail("%s", buf);
}

/* Write string s to the file at path (a cgroup or /proc file); a failure ends the set-up. */
static __attribute__((unused)) void write_str(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, s, strlen(s)) != (ssize_t)strlen(s))
		die_setup("write %s to %s: %s", s, path, strerror(errno));
	close(fd);
}

/* Move this process into the cgroup at directory dir. */
static __attribute__((unused)) void cgroup_join(const char *dir)
{
	char p[400], me[32];
	snprintf(p, sizeof p, "%s/cgroup.procs", dir);
	snprintf(me, sizeof me, "%d", (int)getpid());
	write_str(p, me);
}

/* send_with_fds: send `data` on socket `s` with `n` (at most 253, SCM_MAX_FD) fds in flight
 * (SCM_RIGHTS). */
static __attribute__((unused)) void send_with_fds(int s, const char *data, const int *fds, int n)
{
	struct iovec iov = { (void *)data, strlen(data) };
	union {
		char buf[CMSG_SPACE(253 * sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (n > 0) {
		msg.msg_control = u.buf;
		msg.msg_controllen = CMSG_SPACE(n * sizeof(int));
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(n * sizeof(int));
		memcpy(CMSG_DATA(c), fds, n * sizeof(int));
	}
	if (sendmsg(s, &msg, 0) != (ssize_t)strlen(data))
		die_setup("sendmsg \"%s\": %s", data, strerror(errno));
}

#endif
