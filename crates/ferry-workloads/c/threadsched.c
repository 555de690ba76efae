/*
 * threadsched: threads with scheduling settings of their own (nice value, policy, CPU
 * affinity are per thread in Linux; a thread pool that deprioritises its background workers or
 * pins them to CPUs has them).
 *   main: nice 2, SCHED_OTHER, every CPU it may use.
 *   T1:   nice 7, SCHED_BATCH.
 *   T2:   SCHED_IDLE with SCHED_RESET_ON_FORK, pinned to its first allowed CPU (when the process
 *         may use more than one).
 *   T3:   nice -3 (root only lowers it), SCHED_OTHER, pinned to its last allowed CPU.
 * Each thread sets its own and sleeps until go. After go the main thread reads every thread's
 * nice value, policy (with the reset-on-fork flag), priority and affinity mask back through its
 * tid and compares them with what was read before ready.
 */
#include "common.h"
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>

#ifndef SCHED_RESET_ON_FORK
#define SCHED_RESET_ON_FORK 0x40000000
#endif

#define NT 4 /* the main thread and T1..T3 */

struct sched_of {
	int nice, policy, prio;
	cpu_set_t cpus;
};

static pid_t tids[NT];
static volatile int set_up[NT], stop_threads;
static cpu_set_t allowed;
static int first_cpu = -1, last_cpu = -1;

static void read_sched(pid_t tid, struct sched_of *s)
{
	errno = 0;
	s->nice = getpriority(PRIO_PROCESS, (id_t)tid);
	if (errno)
		s->nice = -1000 - errno;
	s->policy = sched_getscheduler(tid);
	struct sched_param p = { 0 };
	s->prio = sched_getparam(tid, &p) == 0 ? p.sched_priority : -1;
	CPU_ZERO(&s->cpus);
	if (sched_getaffinity(tid, sizeof s->cpus, &s->cpus) < 0)
		CPU_ZERO(&s->cpus);
}

static void pin(int cpu)
{
	if (cpu < 0 || first_cpu == last_cpu)
		return;
	cpu_set_t one;
	CPU_ZERO(&one);
	CPU_SET(cpu, &one);
	SETUP(sched_setaffinity(0, sizeof one, &one));
}

static void *thread_fn(void *arg)
{
	int k = (int)(intptr_t)arg;
	tids[k] = (pid_t)syscall(SYS_gettid);
	struct sched_param zero = { 0 };
	switch (k) {
	case 1:
		SETUP(setpriority(PRIO_PROCESS, 0, 7));
		SETUP(sched_setscheduler(0, SCHED_BATCH, &zero));
		break;
	case 2:
		SETUP(sched_setscheduler(0, SCHED_IDLE | SCHED_RESET_ON_FORK, &zero));
		pin(first_cpu);
		break;
	default:
		SETUP(setpriority(PRIO_PROCESS, 0, -3));
		pin(last_cpu);
		break;
	}
	set_up[k] = 1;
	while (!stop_threads)
		usleep(10000);
	return NULL;
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	SETUP(sched_getaffinity(0, sizeof allowed, &allowed));
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &allowed)) {
			if (first_cpu < 0)
				first_cpu = c;
			last_cpu = c;
		}
	SETUP(setpriority(PRIO_PROCESS, 0, 2));
	tids[0] = getpid();
	pthread_t t[NT];
	for (int k = 1; k < NT; k++) {
		SETUP(-pthread_create(&t[k], NULL, thread_fn, (void *)(intptr_t)k));
		while (!set_up[k])
			usleep(1000);
	}
	struct sched_of before[NT], after[NT];
	for (int k = 0; k < NT; k++)
		read_sched(tids[k], &before[k]);
	if (before[1].nice != 7 || before[1].policy != SCHED_BATCH ||
	    before[2].policy != (SCHED_IDLE | SCHED_RESET_ON_FORK) || before[3].nice != -3 || before[0].nice != 2)
		die_setup("the threads' settings did not take: nice %d %d %d, policy %#x %#x", before[0].nice,
			  before[1].nice, before[3].nice, before[1].policy, before[2].policy);
	fprintf(stderr, "threadsched: CPUs %d..%d allowed (%d)\n", first_cpu, last_cpu, CPU_COUNT(&allowed));

	signal_ready();
	wait_go();

	for (int k = 0; k < NT; k++) {
		read_sched(tids[k], &after[k]);
		const char *who = k == 0 ? "main" : k == 1 ? "T1" : k == 2 ? "T2" : "T3";
		CHECK(after[k].nice == before[k].nice, "%s: nice %d, was %d", who, after[k].nice, before[k].nice);
		CHECK(after[k].policy == before[k].policy, "%s: policy %#x, was %#x", who, after[k].policy,
		      before[k].policy);
		CHECK(after[k].prio == before[k].prio, "%s: priority %d, was %d", who, after[k].prio, before[k].prio);
		CHECK(CPU_EQUAL(&after[k].cpus, &before[k].cpus), "%s: CPU affinity of %d CPUs, was %d", who,
		      CPU_COUNT(&after[k].cpus), CPU_COUNT(&before[k].cpus));
	}
	stop_threads = 1;
	for (int k = 1; k < NT; k++)
		pthread_join(t[k], NULL);
	finish();
}
