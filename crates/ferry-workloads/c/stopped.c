/*
 * stopped: a child stopped by job control (SIGTSTP, in a process group of its own so that the
 * signal is not discarded), with a second thread that was busy when the stop came.
 *
 * After restore the parent checks that the child (every thread) is still stopped and stays
 * stopped, then sends SIGCONT: the child checks its memory and that its busy thread runs again,
 * and exits 0. The parent also checks the child's stop signal with waitid(WSTOPPED|WNOWAIT)
 * before the checkpoint, and the exit status after.
 */
#include "common.h"
#include <dirent.h>
#include <pthread.h>
#include <sys/wait.h>

#define PATTERN_WORDS (1 << 16)
static uint64_t *pattern;
static volatile uint64_t spins;

static void *busy(void *arg)
{
	(void)arg;
	for (;;)
		spins++;
	return NULL;
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

static int child_main(void)
{
	pattern = malloc(PATTERN_WORDS * sizeof *pattern);
	for (uint64_t i = 0; i < PATTERN_WORDS; i++)
		pattern[i] = i * 0x9e3779b97f4a7c15ULL;
	pthread_t t;
	if (pthread_create(&t, NULL, busy, NULL))
		_exit(2);
	while (spins < 1000)
		;
	setpgid(0, 0);
	raise(SIGTSTP); /* stopped here until the parent's SIGCONT, after the restore */
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
	_exit(0);
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	pid_t c = fork();
	SETUP(c);
	if (c == 0)
		child_main();
	siginfo_t si;
	memset(&si, 0, sizeof si);
	SETUP(waitid(P_PID, c, &si, WSTOPPED | WNOWAIT));
	if (si.si_code != CLD_STOPPED || si.si_status != SIGTSTP)
		die_setup("child not stopped by SIGTSTP (code %d status %d)", si.si_code, si.si_status);
	int n;
	for (int i = 0; i < 1000 && !all_threads_stopped(c, &n); i++)
		usleep(1000);
	if (!all_threads_stopped(c, &n) || n != 2)
		die_setup("child's %d threads not all stopped", n);
	signal_ready();
	wait_go();
	CHECK(all_threads_stopped(c, &n), "the child is not stopped after the restore");
	CHECK(n == 2, "the child has %d threads, not 2", n);
	usleep(100 * 1000);
	CHECK(all_threads_stopped(c, &n), "the child did not stay stopped");
	/* Its stop is reported to the parent as a stop by SIGTSTP. */
	memset(&si, 0, sizeof si);
	if (waitid(P_PID, c, &si, WSTOPPED | WNOHANG | WNOWAIT) == 0 && si.si_pid == c)
		CHECK(si.si_code == CLD_STOPPED && si.si_status == SIGTSTP, "stop reported with code %d status %d",
		      si.si_code, si.si_status);
	kill(c, SIGCONT);
	int st;
	CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child after SIGCONT: status %#x", st);
	finish();
}
