/*
 * memjob: a container's job (no harness: it runs alone in a busybox root filesystem, built
 * static by the tests that use it) that keeps memory it can check itself.
 *   argv[1] = N   MiB of anonymous memory (default 64), every page filled with a pattern that
 *                 depends on the page's index and its generation (kept in a separate array,
 *                 itself in memory).
 * Every 100 ms it writes its counter (in memory) to /tmp/count. Commands, as files in /tmp:
 *   /tmp/dirty holding K: the first K pages (or every page for "all") get a new generation and
 *                 are rewritten; then /tmp/dirty.done holds the number of pages written and
 *                 /tmp/dirty is removed.
 *   /tmp/check: every page is checked against its generation; /tmp/verdict then holds
 *                 "PASS pages=N" or "FAIL page=P" and /tmp/check is removed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <unistd.h>
#include <sys/mman.h>

#define PAGE 4096UL
#define WORDS (PAGE / 8)

static uint64_t pattern(uint64_t page, uint64_t gen, uint64_t word)
{
	uint64_t x = (page + 1) * 0x9e3779b97f4a7c15ULL ^ (gen + 7) * 0xc2b2ae3d27d4eb4fULL ^ word;
	x ^= x >> 31;
	x *= 0xbf58476d1ce4e5b9ULL;
	return x ^ (x >> 29);
}

static void fill(uint64_t *mem, uint64_t page, uint64_t gen)
{
	for (uint64_t w = 0; w < WORDS; w++)
		mem[page * WORDS + w] = pattern(page, gen, w);
}

static void put(const char *path, const char *text)
{
	char tmp[256];
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f)
		return;
	fputs(text, f);
	fclose(f);
	rename(tmp, path);
}

int main(int argc, char **argv)
{
	uint64_t mib = argc > 1 ? strtoull(argv[1], NULL, 10) : 64;
	uint64_t pages = mib * 1024 * 1024 / PAGE;
	uint64_t *mem = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t *gen = calloc(pages, sizeof(uint64_t));
	if (mem == MAP_FAILED || !gen) {
		perror("memjob: memory");
		return 1;
	}
	for (uint64_t p = 0; p < pages; p++)
		fill(mem, p, 0);
	uint64_t count = 0;
	char buf[64];
	for (;;) {
		count++;
		snprintf(buf, sizeof(buf), "%llu\n", (unsigned long long)count);
		put("/tmp/count", buf);
		FILE *d = fopen("/tmp/dirty", "r");
		if (d) {
			char what[32] = "";
			if (!fgets(what, sizeof(what), d))
				what[0] = 0;
			fclose(d);
			uint64_t k = strncmp(what, "all", 3) == 0 ? pages : strtoull(what, NULL, 10);
			if (k > pages)
				k = pages;
			for (uint64_t p = 0; p < k; p++)
				fill(mem, p, ++gen[p]);
			snprintf(buf, sizeof(buf), "%llu\n", (unsigned long long)k);
			put("/tmp/dirty.done", buf);
			unlink("/tmp/dirty");
		}
		if (access("/tmp/check", F_OK) == 0) {
			uint64_t bad = pages;
			for (uint64_t p = 0; p < pages && bad == pages; p++)
				for (uint64_t w = 0; w < WORDS; w++)
					if (mem[p * WORDS + w] != pattern(p, gen[p], w)) {
						bad = p;
						break;
					}
			if (bad == pages)
				snprintf(buf, sizeof(buf), "PASS pages=%llu\n", (unsigned long long)pages);
			else
				snprintf(buf, sizeof(buf), "FAIL page=%llu\n", (unsigned long long)bad);
			put("/tmp/verdict", buf);
			unlink("/tmp/check");
		}
		usleep(100 * 1000);
	}
}
