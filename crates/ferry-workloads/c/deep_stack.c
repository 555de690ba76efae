/*
 * deep_stack: a process checkpointed while its main thread waits at the very bottom of its stack
 * (a 64 KiB local array touched down to its last byte, then a raw pause(2) with no frame below
 * it), so that the stack pointer is a few bytes above the lowest mapped page of [stack]. ferry
 * writes its injection frame (several KiB, the XSAVE area in it) below the stack pointer, which
 * process_vm_writev cannot do below a stack's mapped start: it must have the stack grown first,
 * and the dump must still describe the stack as it was. Checks, after go: both arrays' bytes,
 * and that the stack still ends where it did.
 */
#include "common.h"

#define BIG (512 << 10)
#define PAD (64 << 10)

static unsigned long stack_end(void)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	unsigned long s, e, end = 0;
	if (!f)
		return 0;
	while (fgets(line, sizeof line, f))
		if (strstr(line, "[stack]") && sscanf(line, "%lx-%lx", &s, &e) == 2)
			end = e;
	fclose(f);
	return end;
}

static __attribute__((noinline)) int wait_deep(unsigned seed)
{
	volatile unsigned char pad[PAD];
	for (long i = PAD - 1; i >= 0; i--)
		pad[i] = (unsigned char)(i * 7 + seed);
	while (!go)
		syscall(SYS_pause);
	int bad = 0;
	for (long i = 0; i < PAD; i++)
		bad += pad[i] != (unsigned char)(i * 7 + seed);
	return bad;
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	static volatile unsigned char *big;
	volatile unsigned char arr[BIG];
	big = arr;
	for (long i = BIG - 1; i >= 0; i--)
		big[i] = (unsigned char)(i * 13 + 5);
	unsigned long end = stack_end();
	if (!end)
		die_setup("no [stack] in /proc/self/maps");
	signal_ready();
	int bad = wait_deep(42);
	CHECK(bad == 0, "%d bytes of the deepest frame differ", bad);
	long off = -1;
	for (long i = 0; i < BIG && off < 0; i++)
		if (big[i] != (unsigned char)(i * 13 + 5))
			off = i;
	CHECK(off < 0, "the 512 KiB stack array differs at offset %ld", off);
	unsigned long now = stack_end();
	CHECK(now == end, "[stack] ends at %#lx, it ended at %#lx", now, end);
	finish();
}
