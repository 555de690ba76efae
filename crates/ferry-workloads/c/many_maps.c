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

static unsigned char pattern(int i, size_t off) { return (unsigned char)(i * 131 + off * 7 + 1); }

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	for (int i = 0; i < N; i++) {
		lens[i] = (1 + i % 2) * PAGE;
		maps[i] = mmap(NULL, lens[i] + PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (maps[i] == MAP_FAILED)
			die_setup("mmap");
		/* a guard page after each mapping keeps neighbours from merging */
		SETUP(munmap(maps[i] + lens[i], PAGE));
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
	/* protections: a write to a read-only mapping must still fault */
	char path[64];
	snprintf(path, sizeof path, "/proc/self/maps");
	static char buf[1 << 18];
	CHECK(read_file(path, buf, sizeof buf) > 0, "cannot read %s", path);
	for (int i = 0; i < N; i += 3) {
		char key[32];
		snprintf(key, sizeof key, "%lx-", (unsigned long)maps[i]);
		char *line = strstr(buf, key);
		CHECK(line && strncmp(strchr(line, ' ') + 1, "r--p", 4) == 0, "mapping %d at %p is not read-only after restore",
		      i, (void *)maps[i]);
	}
	finish();
}
