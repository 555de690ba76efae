/*
 * threads: a multi-threaded process checkpointed mid-flight.
 *
 * Threads, each with its own tid, name, TLS value and signal mask:
 *   spin0, spin1  compute a deterministic sequence until told to stop; afterwards the sequence is
 *                 recomputed from the seed for the same number of steps and must match
 *                 (registers, XSAVE and TLS of each thread survive)
 *   condwait      blocked in pthread_cond_wait until the main thread signals after go
 *   sleeper       loops in nanosleep (EINTR tolerated) until told to stop, then exits
 *   joiner        blocked in pthread_join(sleeper): wakes only if the kernel clears and wakes the
 *                 sleeper's tid word on exit (clear_child_tid restored)
 *   reader        blocked in read() on a pipe; the main thread writes after go
 * Each thread checks after go: gettid() unchanged, TLS value, comm, blocked mask, rseq cpu_id.
 * Only the main thread takes SIGUSR2 (go).
 */
#include "common.h"
#include <pthread.h>
#include <sys/syscall.h>
#include <sys/rseq.h>
#include <sched.h>

#define NT 6
static __thread uint64_t tls_value;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t fail_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int cond_flag;
static volatile int stop;
static int pipefd[2];
static pthread_t th[NT];
static pid_t tids[NT];
static volatile int started;

struct spin { uint64_t seed, steps, x; double d; };
static struct spin spins[2];

static void step(uint64_t *x, double *d)
{
	*x = *x * 6364136223846793005ULL + 1442695040888963407ULL;
	*d = *d * 0.999 + (double)(*x >> 40) * 1e-9;
}

static void tfail(const char *who, const char *what)
{
	pthread_mutex_lock(&fail_mu);
	fail("%s: %s", who, what);
	pthread_mutex_unlock(&fail_mu);
}

/* Per-thread identity set up before ready and checked after go. */
static void setup_self(int i, const char *name, int block_usr1)
{
	tids[i] = (pid_t)syscall(SYS_gettid);
	tls_value = 0x7000 + (uint64_t)i * 0x1111;
	pthread_setname_np(pthread_self(), name);
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, SIGUSR2);
	if (block_usr1)
		sigaddset(&s, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &s, NULL);
	__atomic_add_fetch(&started, 1, __ATOMIC_SEQ_CST);
}

static void check_self(int i, const char *name, int block_usr1)
{
	char what[256];
	pid_t now = (pid_t)syscall(SYS_gettid);
	if (now != tids[i]) {
		snprintf(what, sizeof what, "tid %d, was %d", now, tids[i]);
		tfail(name, what);
	}
	if (tls_value != 0x7000 + (uint64_t)i * 0x1111)
		tfail(name, "TLS value changed");
	char path[128], comm[64] = "";
	snprintf(path, sizeof path, "/proc/self/task/%d/comm", now);
	if (read_file(path, comm, sizeof comm) > 0) {
		comm[strcspn(comm, "\n")] = 0;
		if (strcmp(comm, name) != 0) {
			snprintf(what, sizeof what, "comm %s", comm);
			tfail(name, what);
		}
	}
	sigset_t cur;
	pthread_sigmask(SIG_BLOCK, NULL, &cur);
	if (!sigismember(&cur, SIGUSR2) || sigismember(&cur, SIGUSR1) != block_usr1)
		tfail(name, "blocked signal mask changed");
	struct rseq *rs = (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
	if (__rseq_size > 0 && (int)rs->cpu_id < 0)
		tfail(name, "rseq area not registered");
}

static void *spinner(void *arg)
{
	int i = (int)(intptr_t)arg;
	char name[16];
	snprintf(name, sizeof name, "spin%d", i);
	setup_self(i, name, 0);
	struct spin *s = &spins[i];
	uint64_t x = s->seed, n = 0;
	double d = 1.0;
	while (!stop) {
		step(&x, &d);
		n++;
	}
	s->steps = n;
	s->x = x;
	s->d = d;
	check_self(i, name, 0);
	return NULL;
}

static void *condwait(void *arg)
{
	(void)arg;
	setup_self(2, "condwait", 1);
	pthread_mutex_lock(&mu);
	while (!cond_flag)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
	check_self(2, "condwait", 1);
	return NULL;
}

static void *sleeper(void *arg)
{
	(void)arg;
	setup_self(3, "sleeper", 0);
	while (!stop) {
		struct timespec ts = { 0, 50 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	check_self(3, "sleeper", 0);
	return NULL;
}

static void *joiner(void *arg)
{
	(void)arg;
	setup_self(4, "joiner", 1);
	void *r;
	if (pthread_join(th[3], &r) != 0)
		tfail("joiner", "pthread_join(sleeper) failed");
	check_self(4, "joiner", 1);
	return NULL;
}

static void *reader(void *arg)
{
	(void)arg;
	setup_self(5, "reader", 0);
	char buf[16] = "";
	ssize_t n;
	do
		n = read(pipefd[0], buf, sizeof buf - 1);
	while (n < 0 && errno == EINTR);
	if (n != 5 || memcmp(buf, "hello", 5) != 0)
		tfail("reader", "read() did not return the bytes written after go");
	check_self(5, "reader", 0);
	return NULL;
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	SETUP(pipe(pipefd));
	spins[0].seed = 12345;
	spins[1].seed = 67890;
	SETUP(-pthread_create(&th[0], NULL, spinner, (void *)0));
	SETUP(-pthread_create(&th[1], NULL, spinner, (void *)1));
	SETUP(-pthread_create(&th[2], NULL, condwait, NULL));
	SETUP(-pthread_create(&th[3], NULL, sleeper, NULL));
	while (__atomic_load_n(&started, __ATOMIC_SEQ_CST) < 4)
		usleep(1000);
	SETUP(-pthread_create(&th[4], NULL, joiner, NULL));
	SETUP(-pthread_create(&th[5], NULL, reader, NULL));
	while (__atomic_load_n(&started, __ATOMIC_SEQ_CST) < NT)
		usleep(1000);
	usleep(100 * 1000); /* let everyone reach its blocking call */
	fprintf(stderr, "threads: %d threads running\n", NT + 1);
	signal_ready();
	wait_go();

	stop = 1;
	pthread_mutex_lock(&mu);
	cond_flag = 1;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
	if (write(pipefd[1], "hello", 5) != 5)
		fail("write to the reader's pipe: %s", strerror(errno));
	for (int i = 0; i < NT; i++)
		if (i != 3 && pthread_join(th[i], NULL) != 0)
			fail("pthread_join(%d) failed", i);
	for (int i = 0; i < 2; i++) {
		uint64_t x = spins[i].seed;
		double d = 1.0;
		for (uint64_t n = 0; n < spins[i].steps; n++)
			step(&x, &d);
		CHECK(x == spins[i].x && d == spins[i].d, "spin%d: sequence diverged after %llu steps", i,
		      (unsigned long long)spins[i].steps);
		CHECK(spins[i].steps > 0, "spin%d did not run", i);
	}
	finish();
}
