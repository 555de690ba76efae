/*
 * pidfd: pidfds of every kind a process of the tree can hold.
 *   fd 20  pidfd of child C (PIDFD_NONBLOCK, no FD_CLOEXEC), and fd 21 a dup of it
 *   fd 22  pidfd of the process itself (FD_CLOEXEC)
 *   fd 23  pidfd of one of its threads (PIDFD_THREAD)
 *   fd 24  pidfd of a child that exited and was reaped ("Pid: -1")
 *   in C, fd 25: a pidfd of its parent
 * With argv[2] "outside": only fd 20, a pidfd of the test's parent (outside the tree): the
 * dump must be refused.
 * After restore: fdinfo names the same pids and flags; 20 and 21 are one description; waitid()
 * on the non-blocking one says EAGAIN while C runs; a signal sent through fd 23 reaches that
 * very thread; fd 24 is readable and signals through it fail with ESRCH; C's pidfd of its parent
 * works; then C is told to exit 7 and the parent collects that through waitid(P_PIDFD).
 */
#include "common.h"
#include <poll.h>
#include <pthread.h>
#include <sys/wait.h>

#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL
#endif
#ifndef PIDFD_NONBLOCK
#define PIDFD_NONBLOCK O_NONBLOCK
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif

static int pidfd_open(pid_t pid, unsigned flags)
{
	return (int)syscall(SYS_pidfd_open, pid, flags);
}

static int pidfd_signal(int fd, int sig)
{
	return (int)syscall(SYS_pidfd_send_signal, fd, sig, NULL, 0);
}

/* The "Pid:" of fdinfo of `fd` (INT_MIN if none) and its flags. */
static int fdinfo_pid(int fd, unsigned *flags)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
	FILE *f = fopen(path, "re");
	int pid = -99999;
	if (!f)
		return pid;
	while (fgets(line, sizeof line, f)) {
		sscanf(line, "Pid: %d", &pid);
		if (flags)
			sscanf(line, "flags: %o", flags);
	}
	fclose(f);
	return pid;
}

static void check_pidfd(int fd, int want_pid, unsigned want_flags, const char *what)
{
	unsigned flags = 0;
	int pid = fdinfo_pid(fd, &flags);
	CHECK(pid == want_pid, "%s (fd %d): Pid %d, want %d", what, fd, pid, want_pid);
	CHECK((flags & (O_NONBLOCK | O_EXCL)) == want_flags, "%s (fd %d): flags %o, want %o set of %o", what, fd, flags,
	      want_flags, O_NONBLOCK | O_EXCL);
	char link[64], target[64];
	snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, target, sizeof target - 1);
	target[n > 0 ? n : 0] = 0;
	CHECK(strcmp(target, "anon_inode:[pidfd]") == 0, "%s (fd %d) is %s", what, fd, target);
}

static volatile pid_t got_in = 0;
static volatile pid_t thread_tid = 0;
static int hold[2];

static void on_usr1(int sig)
{
	(void)sig;
	got_in = (pid_t)syscall(SYS_gettid);
}

static void *thread_main(void *arg)
{
	(void)arg;
	thread_tid = (pid_t)syscall(SYS_gettid);
	for (;;)
		pause();
	return NULL;
}

static int mode_outside(void)
{
	int p = pidfd_open(getppid(), 0);
	SETUP(p);
	SETUP(dup2(p, 20));
	close(p);
	signal_ready();
	wait_go();
	CHECK(pidfd_signal(20, 0) == 0, "the parent's pidfd: %s", strerror(errno));
	finish();
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	if (argc > 2 && strcmp(argv[2], "outside") == 0)
		return mode_outside();
	signal(SIGUSR1, on_usr1);
	SETUP(pipe(hold));
	pid_t me = getpid();
	pid_t c = fork();
	SETUP(c);
	if (c == 0) {
		close(hold[1]);
		int pp = pidfd_open(getppid(), 0);
		if (pp < 0 || dup2(pp, 25) != 25)
			_exit(2);
		char b;
		if (read(hold[0], &b, 1) != 1)
			_exit(3);
		/* restored by now */
		if (fdinfo_pid(25, NULL) != me)
			_exit(4);
		if (pidfd_signal(25, 0) != 0)
			_exit(5);
		_exit(7);
	}
	close(hold[0]);
	SETUP(dup2(pidfd_open(c, PIDFD_NONBLOCK), 20));
	SETUP(dup2(20, 21));
	SETUP(dup3(pidfd_open(me, 0), 22, O_CLOEXEC));
	pthread_t th;
	if (pthread_create(&th, NULL, thread_main, NULL) != 0)
		die_setup("pthread_create");
	while (!thread_tid)
		usleep(1000);
	SETUP(dup2(pidfd_open(thread_tid, PIDFD_THREAD), 23));
	int gone[2];
	SETUP(pipe(gone));
	pid_t d = fork();
	SETUP(d);
	if (d == 0) {
		char b;
		close(gone[1]);
		(void)!read(gone[0], &b, 1);
		_exit(0);
	}
	SETUP(dup2(pidfd_open(d, 0), 24));
	close(gone[0]);
	close(gone[1]);
	SETUP(waitpid(d, NULL, 0));
	if (fdinfo_pid(24, NULL) != -1)
		die_setup("the dead child's pidfd shows Pid %d", fdinfo_pid(24, NULL));
	signal_ready();
	wait_go();

	check_pidfd(20, c, O_NONBLOCK, "child's pidfd");
	check_pidfd(21, c, O_NONBLOCK, "child's pidfd (dup)");
	check_pidfd(22, me, 0, "own pidfd");
	check_pidfd(23, thread_tid, O_EXCL, "thread's pidfd");
	check_pidfd(24, -1, 0, "dead child's pidfd");
	CHECK(fcntl(20, F_GETFD) == 0 && fcntl(22, F_GETFD) == FD_CLOEXEC, "FD_CLOEXEC: fd 20 %d, fd 22 %d",
	      fcntl(20, F_GETFD), fcntl(22, F_GETFD));
	/* 20 and 21: one description */
	SETUP(fcntl(21, F_SETFL, 0));
	CHECK(!(fcntl(20, F_GETFL) & O_NONBLOCK), "fds 20 and 21 are two descriptions");
	SETUP(fcntl(21, F_SETFL, O_NONBLOCK));
	siginfo_t si;
	memset(&si, 0, sizeof si);
	CHECK(waitid(P_PIDFD, 20, &si, WEXITED) < 0 && errno == EAGAIN,
	      "waitid on the non-blocking pidfd of a running child: %s", strerror(errno));
	CHECK(pidfd_signal(22, 0) == 0, "signal through the own pidfd: %s", strerror(errno));
	CHECK(pidfd_signal(24, 0) < 0 && errno == ESRCH, "signal through the dead child's pidfd: %s", strerror(errno));
	struct pollfd pf = { .fd = 24, .events = POLLIN };
	CHECK(poll(&pf, 1, 0) == 1 && (pf.revents & POLLIN), "the dead child's pidfd is not readable");
	CHECK(pidfd_signal(23, SIGUSR1) == 0, "signal through the thread's pidfd: %s", strerror(errno));
	for (int i = 0; i < 500 && !got_in; i++)
		usleep(2000);
	CHECK(got_in == thread_tid, "the signal sent through the thread's pidfd ran in %d, want thread %d",
	      (int)got_in, (int)thread_tid);
	CHECK(write(hold[1], "x", 1) == 1, "tell the child");
	pf.fd = 20;
	CHECK(poll(&pf, 1, 10000) == 1, "the child's pidfd did not become readable");
	memset(&si, 0, sizeof si);
	CHECK(waitid(P_PIDFD, 20, &si, WEXITED) == 0 && si.si_pid == c && si.si_code == CLD_EXITED && si.si_status == 7,
	      "waitid on the child's pidfd: pid %d code %d status %d (%s)", si.si_pid, si.si_code, si.si_status,
	      strerror(errno));
	finish();
}
