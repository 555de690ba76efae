/*
 * sleeps: threads checkpointed inside timed blocking calls that Linux itself restarts after a
 * stop (signal(7)): nanosleep with and without rem, clock_nanosleep (relative), sleep(3),
 * poll, ppoll and select with a timeout, and a futex wait with a relative timeout.
 *
 * A restored thread must not see an EINTR that no signal explains, nor return early: each
 * thread loops on its call and counts every return before go as a failure (an EINTR without
 * go, or the call ending although its hour-long timeout cannot have passed). On go the main
 * thread interrupts each worker with SIGUSR1 (a handler without SA_RESTART), which must end
 * its call with EINTR; for nanosleep with rem, the remaining time must be sane.
 */
#include "common.h"
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <sys/select.h>

#define HOUR 3600
enum { NANO_REM, NANO_NOREM, CLOCK_REL, SLEEP3, POLL, PPOLL, SELECT, FUTEX, NKINDS };
static const char *names[NKINDS] = { "nanosleep(req, rem)", "nanosleep(req, NULL)", "clock_nanosleep(MONOTONIC, rel)",
				     "sleep(3)", "poll", "ppoll", "select", "futex(FUTEX_WAIT, timeout)" };
static pid_t tids[NKINDS];
static volatile int early[NKINDS + 1], done[NKINDS + 1];
static volatile int entered[NKINDS];
static int futex_word;
static double rem_left = -1;

static void on_usr1(int s) { (void)s; }

static void *worker(void *arg)
{
	unsigned k = (unsigned)(uintptr_t)arg;
	if (k >= NKINDS)
		return NULL;
	tids[k] = (pid_t)syscall(SYS_gettid);
	for (;;) {
		entered[k]++;
		int r = 0, e = 0;
		struct timespec req = { HOUR, 0 }, rem = { 0, 0 };
		switch (k) {
		case NANO_REM: r = nanosleep(&req, &rem); e = errno; break;
		case NANO_NOREM: r = nanosleep(&req, NULL); e = errno; break;
		case CLOCK_REL: e = clock_nanosleep(CLOCK_MONOTONIC, 0, &req, &rem); r = e ? -1 : 0; break;
		case SLEEP3: r = (int)sleep(HOUR); e = r ? EINTR : 0; r = r ? -1 : 0; break;
		case POLL: r = poll(NULL, 0, HOUR * 1000); e = errno; break;
		case PPOLL: r = ppoll(NULL, 0, &req, NULL); e = errno; break;
		case SELECT: {
			struct timeval tv = { HOUR, 0 };
			r = select(0, NULL, NULL, NULL, &tv);
			e = errno;
			break;
		}
		case FUTEX: r = (int)syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, 0, &req, NULL, 0); e = errno; break;
		}
		if (go) {
			if (k == NANO_REM)
				rem_left = (double)rem.tv_sec + (double)rem.tv_nsec / 1e9;
			done[k] = 1;
			return NULL;
		}
		early[k]++;
		fprintf(stderr, "sleeps: %s returned %d (%s) before go\n", names[k], r, r ? strerror(e) : "no error");
	}
}

/* Whether thread tid is blocked in a syscall (first field of /proc/self/task/TID/syscall). */
static int in_syscall(pid_t tid)
{
	char path[64], buf[128];
	snprintf(path, sizeof path, "/proc/self/task/%d/syscall", (int)tid);
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	return buf[0] != '-' && strncmp(buf, "running", 7) != 0;
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	struct sigaction sa = { .sa_handler = on_usr1 };
	sigemptyset(&sa.sa_mask);
	SETUP(sigaction(SIGUSR1, &sa, NULL));
	/* Only the main thread takes go: the workers block it. */
	sigset_t usr2;
	sigemptyset(&usr2);
	sigaddset(&usr2, SIGUSR2);
	pthread_sigmask(SIG_BLOCK, &usr2, NULL);
	pthread_t th[NKINDS];
	for (long k = 0; k < NKINDS; k++)
		if (pthread_create(&th[k], NULL, worker, (void *)k))
			die_setup("pthread_create failed");
	pthread_sigmask(SIG_UNBLOCK, &usr2, NULL);
	for (int i = 0; i < 5000; i++) {
		int all = 1;
		for (int k = 0; k < NKINDS; k++)
			all &= tids[k] && in_syscall(tids[k]);
		if (all)
			break;
		usleep(1000);
	}
	usleep(20 * 1000);
	double t0 = mono_now();
	signal_ready();
	wait_go();
	double elapsed = mono_now() - t0;
	/* Interrupt every worker until it is done (a signal between two calls is lost). */
	for (int round = 0; round < 500; round++) {
		int all = 1;
		for (int k = 0; k < NKINDS; k++)
			if (!done[k]) {
				all = 0;
				pthread_kill(th[k], SIGUSR1);
			}
		if (all)
			break;
		usleep(10 * 1000);
	}
	for (int k = 0; k < NKINDS; k++) {
		CHECK(done[k], "%s did not end on SIGUSR1 after go", names[k]);
		CHECK(early[k] == 0, "%s returned %d time(s) before go (spurious EINTR or ended early)", names[k],
		      early[k]);
		CHECK(entered[k] >= 1, "%s never called", names[k]);
	}
	CHECK(rem_left > HOUR - elapsed - 5 && rem_left <= HOUR, "nanosleep's remaining time %.3f s after %.1f s",
	      rem_left, elapsed);
	fprintf(stderr, "sleeps: %.1f s between ready and go, nanosleep had %.1f s left\n", elapsed, rem_left);
	finish();
}
