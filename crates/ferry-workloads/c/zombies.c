/*
 * zombies: a parent with two unreaped children (zombies) and one live child.
 *   A exits with status 42, B dies of SIGTERM, C sleeps until the parent kills it.
 * After restore the parent reaps A and B with waitpid() and must see exactly those statuses
 * (and no SIGCHLD it did not have: its handler counts them), then stops and reaps C.
 */
#include "common.h"
#include <sys/wait.h>

static volatile sig_atomic_t chld;
static void on_chld(int s) { (void)s; chld++; }

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	struct sigaction sa = { .sa_handler = on_chld, .sa_flags = SA_RESTART };
	sigemptyset(&sa.sa_mask);
	SETUP(sigaction(SIGCHLD, &sa, NULL));
	pid_t a = fork();
	SETUP(a);
	if (a == 0)
		_exit(42);
	pid_t b = fork();
	SETUP(b);
	if (b == 0) {
		signal(SIGTERM, SIG_DFL);
		raise(SIGTERM);
		_exit(1);
	}
	pid_t c = fork();
	SETUP(c);
	if (c == 0) {
		for (;;)
			pause();
	}
	/* wait until A and B are zombies */
	for (int i = 0; i < 2000; i++) {
		siginfo_t si;
		int za = waitid(P_PID, a, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == a;
		int zb = waitid(P_PID, b, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == b;
		if (za && zb)
			break;
		usleep(1000);
	}
	int chld_before = chld;
	fprintf(stderr, "zombies: a %d b %d c %d, %d SIGCHLD so far\n", a, b, c, chld_before);
	signal_ready();
	wait_go();
	CHECK(chld == chld_before, "%d SIGCHLD arrived across the checkpoint", chld - chld_before);
	int st;
	CHECK(waitpid(a, &st, WNOHANG) == a && WIFEXITED(st) && WEXITSTATUS(st) == 42, "zombie A: status %#x", st);
	CHECK(waitpid(b, &st, WNOHANG) == b && WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM, "zombie B: status %#x", st);
	kill(c, SIGKILL);
	CHECK(waitpid(c, &st, 0) == c && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "child C: status %#x", st);
	finish();
}
