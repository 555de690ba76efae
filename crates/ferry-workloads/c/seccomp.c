/*
 * seccomp: filters per thread, shared across threads and with a child, and strict mode.
 *
 * Mode "filter" (default):
 *   threads T1 and T2 are created first; then the main thread installs F1 (getppid -> ERRNO 42)
 *   with SECCOMP_FILTER_FLAG_TSYNC, so all three threads share it; T1 adds F2 for itself
 *   (sysinfo -> ERRNO 43); a child is forked (it inherits F1) and adds F3 (times -> ERRNO 44);
 *   the main thread then adds F4 (sched_get_priority_max -> ERRNO 45) with
 *   SECCOMP_FILTER_FLAG_LOG, and F5 (getppid -> ERRNO 46, which wins over F1's 42 only if the
 *   order of the chain is kept: the newest filter's errno counts), for itself only.
 *   After go every thread and the child check the exact errno of each filtered call and that
 *   the calls the others filter still work; the main thread checks each thread's
 *   Seccomp/Seccomp_filters lines, then that a TSYNC filter is refused because of T1 (its
 *   chain is not the main thread's), and, once T1 has exited, that a TSYNC filter succeeds:
 *   which needs T2's F1 to be the very filter object the main thread has (shared, not a copy).
 * Mode "strict": a child enters strict mode (PR_SET_SECCOMP) and blocks in read() on a pipe.
 *   After go the parent checks the child's Seccomp line, sends it a byte, which it echoes back
 *   (read and write are allowed), then the child calls getpid(): it must die of SIGKILL.
 * Mode "notif": a filter returning SECCOMP_RET_USER_NOTIF (its listener fd closed): the dump
 *   must refuse it by name (no go is sent; the test kills it).
 */
#include "common.h"
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/sysinfo.h>
#include <sys/times.h>
#include <sys/wait.h>

static pthread_mutex_t fail_mu = PTHREAD_MUTEX_INITIALIZER;
static volatile int stage; /* 1: T1 installs F2; 2: checks; 3: T1 exits; 4: T2 exits */
static volatile int t1_done, t2_done;
static pid_t tid1, tid2;

#define LOCKED_FAIL(...)                          \
	do {                                      \
		pthread_mutex_lock(&fail_mu);     \
		fail(__VA_ARGS__);                \
		pthread_mutex_unlock(&fail_mu);   \
	} while (0)

static int filter_one(long nr, int err, unsigned flags)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (err & SECCOMP_RET_DATA)),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof f / sizeof f[0], .filter = f };
	return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

static long allow_all(unsigned flags)
{
	struct sock_filter f[] = { BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW) };
	struct sock_fprog prog = { .len = 1, .filter = f };
	return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

static void nap(void)
{
	struct timespec ts = { 0, 5 * 1000 * 1000 };
	nanosleep(&ts, NULL);
}

/* Call nr (no arguments that matter): expect errno `err`, or success when err == 0. */
static void expect(const char *who, const char *name, long nr, int err)
{
	struct tms t;
	struct sysinfo si;
	long r;
	errno = 0;
	if (nr == SYS_times)
		r = syscall(nr, &t);
	else if (nr == SYS_sysinfo)
		r = syscall(nr, &si);
	else if (nr == SYS_sched_get_priority_max)
		r = syscall(nr, SCHED_FIFO);
	else
		r = syscall(nr);
	if (err && !(r == -1 && errno == err))
		LOCKED_FAIL("%s: %s returned %ld (errno %d), expected errno %d from the filter", who, name, r, errno, err);
	if (!err && r == -1)
		LOCKED_FAIL("%s: %s failed with errno %d, but no filter of this thread covers it", who, name, errno);
}

static void check_set(const char *who, int f2, int f3, int f4)
{
	/* (F5, newer than F1, wins over it: among equal actions the newest filter's counts) */
	expect(who, "getppid", SYS_getppid, f4 ? 46 : 42);
	expect(who, "sysinfo", SYS_sysinfo, f2 ? 43 : 0);
	expect(who, "times", SYS_times, f3 ? 44 : 0);
	expect(who, "sched_get_priority_max", SYS_sched_get_priority_max, f4 ? 45 : 0);
}

static void *t1_main(void *arg)
{
	(void)arg;
	tid1 = (pid_t)syscall(SYS_gettid);
	while (stage < 1)
		nap();
	if (filter_one(SYS_sysinfo, 43, 0) < 0)
		die_setup("T1: seccomp F2: %s", strerror(errno));
	t1_done = 1;
	while (stage < 2)
		nap();
	check_set("thread T1", 1, 0, 0);
	t1_done = 2;
	while (stage < 3)
		nap();
	return NULL;
}

static void *t2_main(void *arg)
{
	(void)arg;
	tid2 = (pid_t)syscall(SYS_gettid);
	while (stage < 2)
		nap();
	check_set("thread T2", 0, 0, 0);
	t2_done = 2;
	while (stage < 4)
		nap();
	return NULL;
}

/* "Seccomp" and "Seccomp_filters" of /proc/self/task/TID/status. */
static void seccomp_status(pid_t pid, pid_t tid, int *mode, int *filters)
{
	char path[128], buf[4096];
	snprintf(path, sizeof path, "/proc/%d/task/%d/status", (int)pid, (int)tid);
	*mode = *filters = -1;
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return;
	buf[n] = 0;
	char *p = strstr(buf, "\nSeccomp:");
	if (p)
		*mode = atoi(p + 9);
	p = strstr(buf, "\nSeccomp_filters:");
	if (p)
		*filters = atoi(p + 17);
}

static void expect_status(const char *who, pid_t tid, int mode, int filters)
{
	int m, f;
	seccomp_status(getpid(), tid, &m, &f);
	if (m != mode || f != filters)
		fail("%s: Seccomp %d with %d filters, expected %d with %d", who, m, f, mode, filters);
}

static int child_filter(void)
{
	if (filter_one(SYS_times, 44, 0) < 0) {
		fprintf(stderr, "child: seccomp F3: %s\n", strerror(errno));
		_exit(2);
	}
	wait_go();
	check_set("child", 0, 1, 0);
	int m, f;
	seccomp_status(getpid(), getpid(), &m, &f);
	if (m != 2 || f != 2)
		fail("child: Seccomp %d with %d filters, expected 2 with 2", m, f);
	_exit(failures ? 1 : 0);
}

static void run_filter(void)
{
	pthread_t a, b;
	SETUP(pthread_create(&a, NULL, t1_main, NULL) == 0 ? 0 : -1);
	SETUP(pthread_create(&b, NULL, t2_main, NULL) == 0 ? 0 : -1);
	while (!tid1 || !tid2)
		nap();
	SETUP(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
	SETUP(filter_one(SYS_getppid, 42, SECCOMP_FILTER_FLAG_TSYNC));
	stage = 1;
	while (!t1_done)
		nap();
	pid_t child = fork();
	SETUP(child);
	if (child == 0)
		child_filter();
	SETUP(filter_one(SYS_sched_get_priority_max, 45, SECCOMP_FILTER_FLAG_LOG));
	SETUP(filter_one(SYS_getppid, 46, 0));
	int m, f = -1;
	for (int i = 0; i < 400 && f != 2; i++) {
		nap();
		seccomp_status(child, child, &m, &f);
	}
	if (f != 2)
		die_setup("the child did not install its filter");
	signal_ready();
	wait_go();
	SETUP(kill(child, SIGUSR2));

	stage = 2;
	check_set("main thread", 0, 0, 1);
	while (t1_done != 2 || t2_done != 2)
		nap();
	expect_status("main thread", getpid(), 2, 3);
	expect_status("thread T1", tid1, 2, 2);
	expect_status("thread T2", tid2, 2, 1);

	/* T1's chain is not an ancestor of ours: TSYNC names it. */
	long r = allow_all(SECCOMP_FILTER_FLAG_TSYNC);
	if (r != tid1)
		fail("TSYNC with thread T1 (own filter) alive returned %ld (errno %d), expected T1's tid %d", r, errno,
		     (int)tid1);
	stage = 3;
	pthread_join(a, NULL);
	/* T2's chain is our oldest filter itself: TSYNC succeeds and moves T2 onto our chain. */
	for (int i = 0; i < 200; i++) {
		r = allow_all(SECCOMP_FILTER_FLAG_TSYNC);
		if (r != tid1)
			break;
		nap(); /* (T1 may still be on its way out) */
	}
	if (r != 0)
		fail("TSYNC with threads main and T2 (%d) returned %ld (errno %d): T2 does not share the main thread's filter",
		     (int)tid2, r, errno);
	else
		expect_status("thread T2 after TSYNC", tid2, 2, 4);
	stage = 4;
	pthread_join(b, NULL);

	int st;
	if (waitpid(child, &st, 0) != child)
		fail("waitpid(child): %s", strerror(errno));
	else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail("the child's filter checks failed (status %#x, see the log)", st);
	finish();
}

static void run_strict(void)
{
	int req[2], rep[2];
	SETUP(pipe(req));
	SETUP(pipe(rep));
	pid_t child = fork();
	SETUP(child);
	if (child == 0) {
		char c;
		if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) < 0)
			_exit(3);
		if (read(req[0], &c, 1) != 1)
			_exit(4);
		c ^= 0x20;
		if (write(rep[1], &c, 1) != 1)
			_exit(5);
		syscall(SYS_getpid); /* must kill it */
		_exit(6);
	}
	int m = -1, f;
	for (int i = 0; i < 400 && m != 1; i++) {
		nap();
		seccomp_status(child, child, &m, &f);
	}
	if (m != 1)
		die_setup("the child is not in strict mode");
	signal_ready();
	wait_go();
	seccomp_status(child, child, &m, &f);
	CHECK(m == 1, "the child's Seccomp is %d, not 1 (strict)", m);
	char c = 'q';
	if (write(req[1], &c, 1) != 1)
		fail("write to the child: %s", strerror(errno));
	else if (read(rep[0], &c, 1) != 1)
		fail("no reply from the child");
	else
		CHECK(c == 'Q', "the child replied %#x, not 'Q'", c);
	int st;
	if (waitpid(child, &st, 0) != child)
		fail("waitpid(child): %s", strerror(errno));
	else if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL)
		fail("the strict-mode child was not killed by getpid() (status %#x): it is not in strict mode any more", st);
	finish();
}

static void run_notif(void)
{
	struct sock_filter flt[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = 4, .filter = flt };
	SETUP(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
	int lfd = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
	SETUP(lfd);
	close(lfd);
	signal_ready();
	wait_go();
	finish();
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	const char *mode = argc > 2 ? argv[2] : "filter";
	if (!strcmp(mode, "strict"))
		run_strict();
	else if (!strcmp(mode, "notif"))
		run_notif();
	run_filter();
}
