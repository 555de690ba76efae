/*
 * rseq_busy: a thread that spends its whole time inside an rseq critical section (glibc's
 * registration), so that the checkpoint stops it there.
 *
 * The critical section reads cpu_id_start once, then spins comparing the area's cpu_id with it
 * until told to stop. The kernel guarantees that a thread preempted or migrated inside a
 * critical section resumes at its abort handler, never inside it: so the comparison must never
 * see another CPU ("violations" stays 0), and every migration shows as an abort. After go the
 * main thread moves the busy thread between two CPUs ten times (sched_setaffinity), then stops
 * it: no violation, at least one abort, and the section ran on after the restore.
 */
#include "common.h"
#include <pthread.h>
#include <sched.h>
#include <sys/rseq.h>

static volatile int stop = 0;
static volatile long loops = 0;
static volatile pid_t busy_tid = 0;
static long aborts = 0, violations = 0;

static void *busy(void *arg)
{
	(void)arg;
	struct rseq *rs = (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
	busy_tid = (pid_t)syscall(SYS_gettid);
	for (;;) {
		long v;
		__asm__ __volatile__(".pushsection __rseq_cs, \"aw\"\n\t"
				     ".balign 32\n\t"
				     "3:\n\t"
				     ".long 0, 0\n\t"
				     ".quad 1f, (2f - 1f), 4f\n\t"
				     ".popsection\n\t"
				     "leaq 3b(%%rip), %%rax\n\t"
				     "movq %%rax, 8(%[rs])\n\t"
				     "1:\n\t"
				     "movl 0(%[rs]), %%ecx\n\t"
				     "5:\n\t"
				     "movl 4(%[rs]), %%edx\n\t"
				     "cmpl %%ecx, %%edx\n\t"
				     "jne 6f\n\t"
				     "lock incq %[loops]\n\t"
				     "cmpl $0, %[stop]\n\t"
				     "je 5b\n\t"
				     "2:\n\t"
				     "movq $0, %[v]\n\t"
				     "jmp 7f\n\t"
				     ".long 0x53053053\n\t"
				     "4:\n\t"
				     "movq $1, %[v]\n\t"
				     "jmp 7f\n\t"
				     "6:\n\t"
				     "movq $2, %[v]\n\t"
				     "7:\n\t"
				     : [v] "=r"(v), [loops] "+m"(loops)
				     : [rs] "r"(rs), [stop] "m"(stop)
				     : "rax", "rcx", "rdx", "memory", "cc");
		if (v == 0)
			break;
		if (v == 1)
			aborts++;
		else
			violations++;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	if (__rseq_size == 0)
		die_setup("glibc did not register rseq");
	if (RSEQ_SIG != 0x53053053)
		die_setup("unexpected RSEQ_SIG %#x", RSEQ_SIG);
	cpu_set_t all;
	SETUP(sched_getaffinity(0, sizeof all, &all));
	int cpus[2], n = 0;
	for (int c = 0; c < CPU_SETSIZE && n < 2; c++)
		if (CPU_ISSET(c, &all))
			cpus[n++] = c;
	if (n < 2)
		die_setup("needs two CPUs to move the thread between");
	pthread_t th;
	if (pthread_create(&th, NULL, busy, NULL))
		die_setup("pthread_create");
	while (loops < 1000000)
		sched_yield();
	long v0 = violations;
	if (v0)
		die_setup("%ld violations before the checkpoint", v0);
	signal_ready();
	wait_go();

	long l0 = loops, a0 = aborts;
	for (int i = 0; i < 10; i++) {
		cpu_set_t one;
		CPU_ZERO(&one);
		CPU_SET(cpus[i % 2], &one);
		if (sched_setaffinity(busy_tid, sizeof one, &one) < 0)
			fail("sched_setaffinity of the busy thread: %s", strerror(errno));
		struct timespec ts = { 0, 20 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	stop = 1;
	pthread_join(th, NULL);
	CHECK(violations == 0, "the busy thread saw another CPU inside its critical section %ld times (no abort)",
	      violations);
	CHECK(aborts > a0, "no abort of the critical section in 10 migrations (%ld before, %ld after)", a0, aborts);
	CHECK(loops > l0, "the busy thread did not run after the restore");
	fprintf(stderr, "rseq_busy: %ld loops, %ld aborts, %ld violations\n", loops, aborts, violations);
	finish();
}
