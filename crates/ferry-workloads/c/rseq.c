/*
 * rseq: per-thread kernel registrations made by glibc at thread start.
 *   rseq              glibc's registration (__rseq_offset from the thread pointer): after restore
 *                     the area's cpu_id must follow the CPU the thread runs on (checked after
 *                     moving to another CPU with sched_setaffinity, against the getcpu syscall),
 *                     and registering the same area again must fail with EBUSY (it is registered,
 *                     at the same address, length and signature)
 *   robust list       get_robust_list(0) returns the same head and length
 *   clear_child_tid   prctl(PR_GET_TID_ADDRESS) returns the same address, which holds our tid
 */
#include "common.h"
#include <sched.h>
#include <linux/rseq.h>
#include <sys/prctl.h>
#include <sys/rseq.h>
#include <sys/syscall.h>

static struct rseq *area(void)
{
	return (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
}

static int rseq_len = 0;

/* Register glibc's area again: -1/EBUSY when it is registered with these arguments. */
static int reregister(int len)
{
	return (int)syscall(SYS_rseq, area(), len, 0, RSEQ_SIG);
}

static unsigned kernel_cpu(void)
{
	unsigned cpu = ~0u;
	syscall(SYS_getcpu, &cpu, NULL, NULL);
	return cpu;
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	if (__rseq_size == 0)
		die_setup("glibc did not register rseq (glibc.pthread.rseq=0?)");
	/* find the registered length: EBUSY with the right one, EINVAL with a wrong one */
	int lens[2] = { (int)__rseq_size, 32 };
	for (int i = 0; i < 2 && !rseq_len; i++) {
		if (reregister(lens[i]) == 0)
			die_setup("rseq registration with length %d succeeded: glibc's area was not registered", lens[i]);
		if (errno == EBUSY)
			rseq_len = lens[i];
	}
	if (!rseq_len)
		die_setup("cannot find glibc's rseq registration length (__rseq_size %u): %s", __rseq_size, strerror(errno));
	struct rseq *rs0 = area();
	if ((int)rs0->cpu_id != (int)kernel_cpu())
		die_setup("rseq cpu_id %d is not the current cpu %u", (int)rs0->cpu_id, kernel_cpu());

	struct robust_list_head *head0;
	size_t len0;
	SETUP((int)syscall(SYS_get_robust_list, 0, &head0, &len0));
	if (!head0)
		die_setup("glibc registered no robust list");
	int *tidaddr0 = NULL;
	SETUP(prctl(PR_GET_TID_ADDRESS, &tidaddr0, 0, 0, 0));
	if (!tidaddr0 || *tidaddr0 != gettid())
		die_setup("the clear_child_tid address %p does not hold our tid", (void *)tidaddr0);
	cpu_set_t all;
	SETUP(sched_getaffinity(0, sizeof all, &all));
	fprintf(stderr, "rseq: area %p (offset %td, registered length %d), cpu %u, robust list %p/%zu, tid address %p\n",
		(void *)rs0, __rseq_offset, rseq_len, rs0->cpu_id, (void *)head0, len0, (void *)tidaddr0);

	signal_ready();
	wait_go();

	struct rseq *rs = area();
	CHECK(rs == rs0, "the rseq area moved from %p to %p (thread pointer changed)", (void *)rs0, (void *)rs);
	errno = 0;
	int r = reregister(rseq_len);
	if (r == 0)
		fail("registering glibc's rseq area succeeded: it was not registered after restore");
	else if (errno == EINVAL)
		fail("rseq: another area or length is registered (EINVAL)");
	else if (errno == EPERM)
		fail("rseq: registered with another signature (EPERM)");
	else
		CHECK(errno == EBUSY, "rseq re-registration: %s, expected EBUSY", strerror(errno));

	/* move to another CPU: a registered area follows, a stale one keeps the old number */
	unsigned before_cpu = kernel_cpu(), target = before_cpu;
	for (unsigned c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &all) && c != before_cpu) {
			target = c;
			break;
		}
	if (target != before_cpu) {
		cpu_set_t one;
		CPU_ZERO(&one);
		CPU_SET(target, &one);
		if (sched_setaffinity(0, sizeof one, &one) < 0)
			fail("sched_setaffinity(cpu %u): %s", target, strerror(errno));
		usleep(1000);
	} else
		fprintf(stderr, "rseq: only one CPU is allowed: cannot check that cpu_id follows a migration\n");
	unsigned cpu = kernel_cpu();
	CHECK(rs->cpu_id == cpu, "rseq cpu_id is %d but the thread runs on cpu %u", (int)rs->cpu_id, cpu);
	CHECK(rs->cpu_id_start == cpu, "rseq cpu_id_start is %u but the thread runs on cpu %u", rs->cpu_id_start, cpu);
	CHECK(rs->rseq_cs == 0, "rseq_cs is %#llx outside a critical section", (unsigned long long)rs->rseq_cs);
	sched_setaffinity(0, sizeof all, &all);

	struct robust_list_head *head;
	size_t len;
	if (syscall(SYS_get_robust_list, 0, &head, &len) < 0)
		fail("get_robust_list: %s", strerror(errno));
	else
		CHECK(head == head0 && len == len0, "robust list is %p/%zu, was %p/%zu", (void *)head, len, (void *)head0, len0);
	int *tidaddr = NULL;
	if (prctl(PR_GET_TID_ADDRESS, &tidaddr, 0, 0, 0) < 0)
		fail("PR_GET_TID_ADDRESS: %s", strerror(errno));
	else
		CHECK(tidaddr == tidaddr0, "clear_child_tid address is %p, was %p", (void *)tidaddr, (void *)tidaddr0);
	CHECK(*tidaddr0 == gettid(), "the tid field holds %d, expected %d", *tidaddr0, (int)gettid());
	finish();
}
