/*
 * many_maps: 700 separate one-and-two-page mappings (protections alternate so that none merge),
 * each filled with its own pattern, a third of them made read-only and a few PROT_NONE after
 * filling. Restoring them takes well over a thousand calls (mmap, the page reads, mprotect):
 * ferry's batches of calls must fill, run and start again several times, in order. On go every
 * mapping must hold its pattern, with its protection.
 */
#include "common.h"
#include <sys/mman.h>

#define N 700
#define PAGE 4096UL

static unsigned char *maps[N];
static size_t lens[N];
static int prots[N];

/* Different for every mapping, page and byte (a swapped page or a shifted mapping shows). */
static unsigned char pattern(int i, size_t off)
{
	uint32_t x = (uint32_t)i * 0x9E3779B1u ^ (uint32_t)(off >> 12) * 0xC2B2AE35u ^ (uint32_t)off * 0x85EBCA6Bu;
	x ^= x >> 15;
	x *= 0x2C1B3C6Du;
	x ^= x >> 12;
	return (unsigned char)x;
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	for (int i = 0; i < N; i++) {
		lens[i] = (1 + i % 2) * PAGE;
		maps[i] = mmap(NULL, lens[i] + PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (maps[i] == MAP_FAILED)
			die_setup("mmap");
		/* an inaccessible guard page after each mapping keeps neighbours from merging (a hole
		 * would not: a later mapping may be placed in it) */
		SETUP(mprotect(maps[i] + lens[i], PAGE, PROT_NONE));
		for (size_t o = 0; o < lens[i]; o++)
			maps[i][o] = pattern(i, o);
		prots[i] = i % 3 == 0 ? PROT_READ : i % 50 == 7 ? PROT_NONE : PROT_READ | PROT_WRITE;
		if (prots[i] != (PROT_READ | PROT_WRITE))
			SETUP(mprotect(maps[i], lens[i], prots[i]));
	}
	signal_ready();
	wait_go();
	int bad = 0;
	for (int i = 0; i < N && bad < 5; i++) {
		if (prots[i] == PROT_NONE)
			SETUP(mprotect(maps[i], lens[i], PROT_READ));
		for (size_t o = 0; o < lens[i]; o++) {
			if (maps[i][o] != pattern(i, o)) {
				fail("mapping %d at %p: byte %zu is %#x, was %#x", i, (void *)maps[i], o, maps[i][o],
				     pattern(i, o));
				bad++;
				break;
			}
		}
	}
	/* every mapping with its own protection (the PROT_NONE ones were opened for reading above);
	 * a mapping may have merged with a neighbour of the same protection (e.g. libc's bss) */
	static char buf[1 << 18];
	CHECK(read_file("/proc/self/maps", buf, sizeof buf) > 0, "cannot read /proc/self/maps");
	for (int i = 0; i < N; i++) {
		uintptr_t a = (uintptr_t)maps[i];
		const char *want = prots[i] == (PROT_READ | PROT_WRITE) ? "rw-p" : "r--p";
		const char *got = NULL;
		for (char *line = buf; line && *line; line = strchr(line, '\n'), line = line ? line + 1 : NULL) {
			char *p;
			uintptr_t lo = strtoull(line, &p, 16);
			uintptr_t hi = strtoull(p + 1, &p, 16);
			if (lo <= a && a + lens[i] <= hi) {
				got = p + 1;
				break;
			}
		}
		CHECK(got && strncmp(got, want, 4) == 0, "mapping %d at %p: %.4s, expected %s", i, (void *)maps[i],
		      got ? got : "none", want);
	}
	finish();
}
