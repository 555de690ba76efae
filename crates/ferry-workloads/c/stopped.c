/*
 * stopped: a child in a job-control stop, with a second thread that was busy when the stop
 * came, in a process group of its own (so that SIGTSTP is not discarded).
 *
 * Words after the work directory choose the variant:
 *   sigstop  the parent stops the child with SIGSTOP from outside (default: the child raises
 *            SIGTSTP itself);
 *   reaped   the parent consumes the stop report (waitpid WUNTRACED) before the checkpoint: after
 *            restore, waitid(WSTOPPED) must not report it again (default: the report is left
 *            pending, WNOWAIT, and must be reported once, and only once, after restore);
 *   signal   a SIGUSR1 with a handler is sent to the stopped child before the checkpoint: it
 *            stays pending, unhandled, as long as the child is stopped, and is handled once
 *            after SIGCONT;
 *   ptraced  the parent holds the child in a ptrace stop (PTRACE_SEIZE + PTRACE_INTERRUPT)
 *            instead: the dump must be refused, and after it the parent still holds the child
 *            stopped, then lets it go.
 *
 * After restore the parent checks that the child (every thread) is still stopped and stays
 * stopped, that it got no SIGCHLD the original did not get (its handler counts them), the stop
 * report as above, then sends SIGCONT: the child checks its memory, that its busy thread runs
 * again and the pending signal, and exits 0. The parent checks the exit status.
 */
#include "common.h"
#include <dirent.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/wait.h>

#define PATTERN_WORDS (1 << 16)
static uint64_t *pattern;
static volatile uint64_t spins;

/* Shared by parent and child (MAP_SHARED): the child's progress and its handler's count. */
struct shared {
	volatile int child_ready;
	volatile int handled; /* SIGUSR1 handler runs in the child */
};
static struct shared *sh;
static volatile sig_atomic_t chld_count; /* SIGCHLD handler runs in the parent */

static void *busy(void *arg)
{
	(void)arg;
	for (;;)
		spins++;
	return NULL;
}

static void on_usr1(int sig)
{
	(void)sig;
	__atomic_add_fetch(&sh->handled, 1, __ATOMIC_SEQ_CST);
}

static void on_chld(int sig)
{
	(void)sig;
	chld_count++;
}

/* The state letter of every thread of pid (from /proc/PID/task/TID/stat): 1 if all are 'T'. */
static int all_threads_stopped(pid_t pid, int *nthreads)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
	DIR *d = opendir(path);
	if (!d)
		return 0;
	struct dirent *e;
	int all = 1, n = 0;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char p2[512], buf[512];
		snprintf(p2, sizeof p2, "/proc/%d/task/%s/stat", (int)pid, e->d_name);
		int fd = open(p2, O_RDONLY);
		if (fd < 0)
			continue;
		ssize_t r = read(fd, buf, sizeof buf - 1);
		close(fd);
		if (r <= 0)
			continue;
		buf[r] = 0;
		char *paren = strrchr(buf, ')');
		n++;
		if (!paren || paren[2] != 'T')
			all = 0;
	}
	closedir(d);
	*nthreads = n;
	return all;
}

/* The child's process-wide pending signals (ShdPnd in /proc/PID/status), or 0. */
static uint64_t shared_pending(pid_t pid)
{
	char path[64], buf[4096];
	snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return 0;
	ssize_t r = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (r <= 0)
		return 0;
	buf[r] = 0;
	char *p = strstr(buf, "ShdPnd:");
	return p ? strtoull(p + 7, NULL, 16) : 0;
}

static int child_main(int by_sigstop, int with_signal)
{
	pattern = malloc(PATTERN_WORDS * sizeof *pattern);
	for (uint64_t i = 0; i < PATTERN_WORDS; i++)
		pattern[i] = i * 0x9e3779b97f4a7c15ULL;
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGUSR1, &sa, NULL);
	pthread_t t;
	if (pthread_create(&t, NULL, busy, NULL))
		_exit(2);
	while (spins < 1000)
		;
	setpgid(0, 0);
	if (by_sigstop) {
		sh->child_ready = 1;
		/* stopped in here by the parent's SIGSTOP, until its SIGCONT after the restore */
		struct timespec ts = { 0, 1000 * 1000 };
		while (sh->child_ready != 2)
			nanosleep(&ts, NULL);
	} else {
		raise(SIGTSTP); /* stopped here until the parent's SIGCONT, after the restore */
	}
	int bad = 0;
	for (uint64_t i = 0; i < PATTERN_WORDS; i++)
		bad += pattern[i] != i * 0x9e3779b97f4a7c15ULL;
	if (bad) {
		fprintf(stderr, "child: %d words of memory differ\n", bad);
		_exit(1);
	}
	uint64_t s0 = spins;
	usleep(50 * 1000);
	if (spins == s0) {
		fprintf(stderr, "child: the busy thread does not run after SIGCONT\n");
		_exit(1);
	}
	if (sh->handled != with_signal) {
		fprintf(stderr, "child: SIGUSR1 handled %d times after SIGCONT, not %d\n", sh->handled, with_signal);
		_exit(1);
	}
	_exit(0);
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	int by_sigstop = 0, reaped = 0, with_signal = 0, ptraced = 0;
	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "sigstop"))
			by_sigstop = 1;
		else if (!strcmp(argv[i], "reaped"))
			reaped = 1;
		else if (!strcmp(argv[i], "signal"))
			with_signal = 1;
		else if (!strcmp(argv[i], "ptraced"))
			ptraced = by_sigstop = 1;
		else
			die_setup("unknown variant %s", argv[i]);
	}
	int stopsig = by_sigstop ? SIGSTOP : SIGTSTP;
	sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		die_setup("mmap: %s", strerror(errno));
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_chld;
	sa.sa_flags = SA_RESTART;
	SETUP(sigaction(SIGCHLD, &sa, NULL));
	pid_t c = fork();
	SETUP(c);
	if (c == 0)
		child_main(by_sigstop, with_signal);
	if (by_sigstop) {
		while (!sh->child_ready)
			usleep(1000);
	}
	if (ptraced) {
		int st;
		SETUP(ptrace(PTRACE_SEIZE, c, 0, 0));
		SETUP(ptrace(PTRACE_INTERRUPT, c, 0, 0));
		if (waitpid(c, &st, __WALL) != c || !WIFSTOPPED(st))
			die_setup("the traced child did not stop: %#x", st);
		signal_ready();
		wait_go();
		char path[64], buf[512] = "";
		snprintf(path, sizeof path, "/proc/%d/stat", (int)c);
		int fd = open(path, O_RDONLY);
		if (fd >= 0) {
			ssize_t r = read(fd, buf, sizeof buf - 1);
			buf[r > 0 ? r : 0] = 0;
			close(fd);
		}
		char *paren = strrchr(buf, ')');
		CHECK(paren && paren[2] == 't', "the child is not in its ptrace stop after the refused dump: %s", buf);
		SETUP(ptrace(PTRACE_DETACH, c, 0, 0));
		sh->child_ready = 2;
		pid_t w;
		while ((w = waitpid(c, &st, 0)) < 0 && errno == EINTR)
			;
		CHECK(w == c && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child after the detach: status %#x", st);
		finish();
	}
	if (by_sigstop)
		SETUP(kill(c, SIGSTOP));
	siginfo_t si;
	memset(&si, 0, sizeof si);
	SETUP(waitid(P_PID, c, &si, WSTOPPED | (reaped ? 0 : WNOWAIT)));
	if (si.si_code != CLD_STOPPED || si.si_status != stopsig)
		die_setup("child not stopped by signal %d (code %d status %d)", stopsig, si.si_code, si.si_status);
	int n;
	for (int i = 0; i < 1000 && !all_threads_stopped(c, &n); i++)
		usleep(1000);
	if (!all_threads_stopped(c, &n) || n != 2)
		die_setup("child's %d threads not all stopped", n);
	if (with_signal) {
		SETUP(kill(c, SIGUSR1));
		for (int i = 0; i < 1000 && !(shared_pending(c) & (1ULL << (SIGUSR1 - 1))); i++)
			usleep(1000);
		if (!(shared_pending(c) & (1ULL << (SIGUSR1 - 1))))
			die_setup("SIGUSR1 not pending in the stopped child");
	}
	/* (every SIGCHLD of the stop handled: the parent ran since, in waitid) */
	usleep(10 * 1000);
	int chld_before = chld_count;
	signal_ready();
	wait_go();
	CHECK(all_threads_stopped(c, &n), "the child is not stopped after the restore");
	CHECK(n == 2, "the child has %d threads, not 2", n);
	usleep(100 * 1000);
	CHECK(all_threads_stopped(c, &n), "the child did not stay stopped");
	CHECK(sh->handled == 0, "the stopped child handled SIGUSR1 %d times while stopped", sh->handled);
	CHECK(!with_signal || (shared_pending(c) & (1ULL << (SIGUSR1 - 1))),
	      "SIGUSR1 is no longer pending in the stopped child");
	CHECK(chld_count == chld_before, "the parent got %d SIGCHLD after the restore, with no change in its child",
	      chld_count - chld_before);
	/* Its stop is reported to the parent once, as a stop by its signal, unless the parent had
	 * consumed the report before the checkpoint. */
	memset(&si, 0, sizeof si);
	int r = waitid(P_PID, c, &si, WSTOPPED | WNOHANG);
	if (reaped) {
		CHECK(r == 0 && si.si_pid == 0, "the stop consumed before the checkpoint is reported again (code %d status %d)",
		      si.si_code, si.si_status);
	} else {
		CHECK(r == 0 && si.si_pid == c, "the pending stop report is gone after the restore (%d, %s)", r,
		      strerror(errno));
		if (si.si_pid == c)
			CHECK(si.si_code == CLD_STOPPED && si.si_status == stopsig, "stop reported with code %d status %d",
			      si.si_code, si.si_status);
		memset(&si, 0, sizeof si);
		r = waitid(P_PID, c, &si, WSTOPPED | WNOHANG);
		CHECK(r == 0 && si.si_pid == 0, "the stop is reported twice after the restore");
	}
	if (by_sigstop)
		sh->child_ready = 2;
	kill(c, SIGCONT);
	int st;
	pid_t w;
	while ((w = waitpid(c, &st, 0)) < 0 && errno == EINTR)
		;
	CHECK(w == c && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child after SIGCONT: status %#x", st);
	finish();
}
