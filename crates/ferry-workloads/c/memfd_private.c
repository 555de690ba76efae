/*
 * memfd_private: MAP_PRIVATE mappings of memfds.
 *  - M: a memfd held through an fd, mapped privately (at offset one page); some pages written
 *    (copied on write), others only read, others never touched;
 *  - N: a memfd mapped privately and read-only, its fd closed (the mapping alone keeps it).
 * After restore: the maps lines are the same (but for the inode number), written pages keep their private bytes, the others
 * show the memfd's; and pages never written still share the memfd's page cache: a write through
 * the fd shows in them (and not in the copied ones).
 */
#include "common.h"
#include <sys/mman.h>

#define PAGES 16
#define PG 4096

/* The maps line at addr without its inode column (a restored memfd is a new inode). */
static int maps_no_ino(void *addr, char *out, size_t cap)
{
	char line[512], range[64], perms[8], off[32], dev[16], ino[32], path[256] = "";
	if (maps_line_at((uintptr_t)addr, line, sizeof line) < 0)
		return -1;
	if (sscanf(line, "%63s %7s %31s %15s %31s %255[^\n]", range, perms, off, dev, ino, path) < 5)
		return -1;
	snprintf(out, cap, "%s %s %s %s %s", range, perms, off, dev, path);
	return 0;
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	int m = memfd_create("priv-m", 0);
	SETUP(m);
	SETUP(ftruncate(m, (PAGES + 1) * PG));
	static unsigned char ref[(PAGES + 1) * PG];
	fill_prng(ref, sizeof ref, 51);
	SETUP(pwrite(m, ref, sizeof ref, 0) == (ssize_t)sizeof ref ? 0 : -1);
	unsigned char *pm = mmap(NULL, PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, m, PG);
	if (pm == MAP_FAILED)
		die_setup("mmap M: %s", strerror(errno));
	volatile unsigned sum = 0;
	for (int i = 0; i < PAGES; i++) {
		if (i % 4 == 0)
			memset(pm + i * PG, 0x40 + i, 100); /* copied on write */
		else if (i % 4 == 1)
			sum += pm[i * PG]; /* only read */
	}
	(void)sum;
	int n = memfd_create("priv-n", 0);
	SETUP(n);
	SETUP(ftruncate(n, 2 * PG));
	static unsigned char refn[2 * PG];
	fill_prng(refn, sizeof refn, 52);
	SETUP(pwrite(n, refn, sizeof refn, 0) == (ssize_t)sizeof refn ? 0 : -1);
	unsigned char *pn = mmap(NULL, 2 * PG, PROT_READ, MAP_PRIVATE, n, 0);
	if (pn == MAP_FAILED)
		die_setup("mmap N: %s", strerror(errno));
	close(n);
	char lm[512], ln[512];
	SETUP(maps_no_ino(pm, lm, sizeof lm));
	SETUP(maps_no_ino(pn, ln, sizeof ln));
	signal_ready();
	wait_go();

	char now[512];
	CHECK(maps_no_ino(pm, now, sizeof now) == 0 && strcmp(now, lm) == 0, "M maps: %s, was %s", now, lm);
	CHECK(maps_no_ino(pn, now, sizeof now) == 0 && strcmp(now, ln) == 0, "N maps: %s, was %s", now, ln);
	for (int i = 0; i < PAGES; i++) {
		unsigned char want[PG];
		memcpy(want, ref + (i + 1) * PG, PG);
		if (i % 4 == 0)
			memset(want, 0x40 + i, 100);
		CHECK(memcmp(pm + i * PG, want, PG) == 0, "M page %d differs", i);
	}
	CHECK(memcmp(pn, refn, sizeof refn) == 0, "N differs");
	/* the fd writes into every page; only the copied ones keep their own bytes */
	for (int i = 0; i < PAGES; i++)
		CHECK(pwrite(m, "FD", 2, (i + 1) * PG + 2000) == 2, "pwrite M");
	for (int i = 0; i < PAGES; i++) {
		int shared = memcmp(pm + i * PG + 2000, "FD", 2) == 0;
		CHECK(shared == (i % 4 != 0), "M page %d: %s the memfd's page cache", i,
		      shared ? "shares" : "does not share");
	}
	finish();
}
