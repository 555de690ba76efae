/*
 * sessions: a subreaper root with orphans whose session and group leaders have exited, and a
 * child left in its parent's birth session.
 *   L: setpgid(0,0), forks M1 and M2 (group L), exits     -> M1, M2 orphans in a leaderless group
 *   S: setsid(), forks O1 (group S) and O2 (own group), exits -> orphans in a leaderless session
 *   P: forks Q, then setsid()                             -> Q stays in the root's session/group
 * Every descendant answers "pid sid pgid ppid" on request; after restore the root asks again
 * and wants exactly the same answers, all orphans still its children, no SIGCHLD and no extra
 * child (a leftover helper) across the checkpoint.
 */
#include "common.h"
#include <sys/prctl.h>
#include <sys/wait.h>

#define N 6
static int ask[N][2], answer[2];
static volatile sig_atomic_t chld;
static void on_chld(int s) { (void)s; chld++; }

static void serve(int me)
{
	signal(SIGUSR2, SIG_DFL);
	for (;;) {
		char c;
		ssize_t n = read(ask[me][0], &c, 1);
		if (n == 1) {
			char line[128];
			int len = snprintf(line, sizeof line, "%d %d %d %d\n", (int)getpid(), (int)getsid(0),
					   (int)getpgid(0), (int)getppid());
			if (write(answer[1], line, (size_t)len) != len)
				_exit(3);
		} else if (n == 0 || errno != EINTR) {
			_exit(4);
		}
	}
}

/* Ask every descendant once; fill lines sorted by pid. */
static int poll_all(char out[N][128])
{
	char buf[N * 128];
	size_t got = 0;
	int lines = 0;
	for (int i = 0; i < N; i++)
		if (write(ask[i][1], "x", 1) != 1)
			return -1;
	while (lines < N) {
		ssize_t n = read(answer[0], buf + got, sizeof buf - 1 - got);
		if (n <= 0)
			return -1;
		for (ssize_t i = 0; i < n; i++)
			lines += buf[got + (size_t)i] == '\n';
		got += (size_t)n;
	}
	buf[got] = 0;
	char *save = NULL, *l = strtok_r(buf, "\n", &save);
	for (int i = 0; i < N && l; i++, l = strtok_r(NULL, "\n", &save))
		snprintf(out[i], 128, "%s", l);
	qsort(out, N, 128, (int (*)(const void *, const void *))strcmp);
	return 0;
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	SETUP(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0));
	for (int i = 0; i < N; i++)
		SETUP(pipe(ask[i]));
	SETUP(pipe(answer));
	pid_t l = fork();
	SETUP(l);
	if (l == 0) {
		setpgid(0, 0);
		if (fork() == 0)
			serve(0);
		if (fork() == 0)
			serve(1);
		_exit(0);
	}
	pid_t s = fork();
	SETUP(s);
	if (s == 0) {
		setsid();
		if (fork() == 0)
			serve(2);
		if (fork() == 0) {
			setpgid(0, 0);
			serve(3);
		}
		_exit(0);
	}
	int st;
	SETUP(waitpid(l, &st, 0));
	SETUP(waitpid(s, &st, 0));
	int sync[2];
	SETUP(pipe(sync));
	pid_t p = fork();
	SETUP(p);
	if (p == 0) {
		if (fork() == 0)
			serve(4);
		setsid();
		if (write(sync[1], "s", 1) != 1)
			_exit(3);
		serve(5);
	}
	char c;
	SETUP(read(sync[0], &c, 1));
	close(sync[0]);
	close(sync[1]);
	struct sigaction sa = { .sa_handler = on_chld, .sa_flags = SA_RESTART };
	sigemptyset(&sa.sa_mask);
	SETUP(sigaction(SIGCHLD, &sa, NULL));
	char before[N][128], after[N][128];
	if (poll_all(before) < 0)
		die_setup("asking the descendants failed");
	for (int i = 0; i < N; i++)
		fprintf(stderr, "before: %s\n", before[i]);
	int chld_before = chld;
	signal_ready();
	wait_go();
	if (poll_all(after) < 0) {
		fail("asking the descendants after restore failed");
		finish();
	}
	for (int i = 0; i < N; i++) {
		fprintf(stderr, "after: %s\n", after[i]);
		CHECK(strcmp(before[i], after[i]) == 0, "pid sid pgid ppid: was %s, now %s", before[i], after[i]);
	}
	CHECK(chld == chld_before, "%d SIGCHLD arrived across the checkpoint", chld - chld_before);
	CHECK(waitpid(-1, &st, WNOHANG) == 0, "an unexpected child could be reaped");
	CHECK(kill(-l, 0) == 0, "process group %d (leader gone) does not exist: %s", (int)l, strerror(errno));
	/* every orphan is still our child: kill and reap them all */
	for (int i = 0; i < N; i++) {
		int pid = atoi(after[i]);
		kill(pid, SIGKILL);
	}
	for (int i = 0; i < N; i++) {
		int pid = atoi(after[i]);
		/* Q is P's child, not ours */
		int ppid = 0;
		sscanf(after[i], "%*d %*d %*d %d", &ppid);
		if (ppid == getpid())
			CHECK(waitpid(pid, &st, 0) == pid, "cannot reap %d: %s", pid, strerror(errno));
	}
	finish();
}
