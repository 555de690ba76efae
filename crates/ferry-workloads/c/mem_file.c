/*
 * mem_file: file-backed mappings.
 *   private   a MAP_PRIVATE read-write mapping of W/private.bin with two copy-on-write pages:
 *             after restore the written pages hold the private data and the others still come
 *             from the file (a pwrite to the file shows through an untouched page)
 *   read-only a PROT_READ private mapping of part of the same file at a page offset
 *   shared    a MAP_SHARED mapping of W/shared.bin, written through the mapping: after restore it
 *             is still backed by the file in both directions (mapping -> pread, pwrite -> mapping)
 * The /proc/self/maps line of each mapping (range, perms, offset, inode, path) must not change.
 */
#include "common.h"
#include <sys/mman.h>

#define PAGE 4096UL
#define PRIV_PAGES 16
#define SHARED_PAGES 8

static int make_file(const char *name, size_t len, uint64_t seed)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", W, name);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		die_setup("open %s: %s", path, strerror(errno));
	void *buf = malloc(len);
	if (!buf)
		die_setup("malloc");
	fill_prng(buf, len, seed);
	if (pwrite(fd, buf, len, 0) != (ssize_t)len || fsync(fd) < 0)
		die_setup("write %s: %s", path, strerror(errno));
	free(buf);
	return fd;
}

static void *map(size_t len, int prot, int flags, int fd, off_t off)
{
	void *p = mmap(NULL, len, prot, flags, fd, off);
	if (p == MAP_FAILED)
		die_setup("mmap: %s", strerror(errno));
	return p;
}

static void check_line(const char *what, void *addr, const char *before)
{
	char now[1024];
	if (maps_line_at((uintptr_t)addr, now, sizeof now) < 0)
		fail("%s: no mapping starts at %p after restore (was: %s)", what, addr, before);
	else
		CHECK(strcmp(now, before) == 0, "%s: maps line is \"%s\", was \"%s\"", what, now, before);
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	char line_priv[1024], line_ro[1024], line_shared[1024];

	int pfd = make_file("private.bin", PRIV_PAGES * PAGE, 0xf11e);
	unsigned char *priv = map(PRIV_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, pfd, 0);
	volatile unsigned char sink = 0;
	for (int i = 0; i < PRIV_PAGES; i++) /* fault every page in (read): file-backed, not COW */
		sink ^= priv[i * PAGE];
	(void)sink;
	fill_prng(priv + 1 * PAGE, PAGE, 0xc0e1); /* copy-on-write pages */
	fill_prng(priv + 5 * PAGE, PAGE, 0xc0e5);
	unsigned char *ro = map(4 * PAGE, PROT_READ, MAP_PRIVATE, pfd, 2 * PAGE);

	int sfd = make_file("shared.bin", SHARED_PAGES * PAGE, 0);
	unsigned char *shared = map(SHARED_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
	fill_prng(shared, SHARED_PAGES * PAGE, 0x5a4ed); /* dirty page cache, not synced */

	if (maps_line_at((uintptr_t)priv, line_priv, sizeof line_priv) < 0 ||
	    maps_line_at((uintptr_t)ro, line_ro, sizeof line_ro) < 0 ||
	    maps_line_at((uintptr_t)shared, line_shared, sizeof line_shared) < 0)
		die_setup("cannot find the mappings in /proc/self/maps");
	/* the mappings are reached through their addresses only */
	close(pfd);
	close(sfd);
	fprintf(stderr, "mem_file:\n  %s\n  %s\n  %s\n", line_priv, line_ro, line_shared);

	signal_ready();
	wait_go();

	check_line("private mapping", priv, line_priv);
	check_line("read-only mapping", ro, line_ro);
	check_line("shared mapping", shared, line_shared);

	/* private: file pages and COW pages */
	unsigned char *want = malloc(PRIV_PAGES * PAGE);
	if (!want) {
		fail("malloc");
		finish();
	}
	fill_prng(want, PRIV_PAGES * PAGE, 0xf11e);
	for (int i = 0; i < PRIV_PAGES; i++) {
		ssize_t off;
		if (i == 1 || i == 5)
			off = check_prng(priv + i * PAGE, PAGE, i == 1 ? 0xc0e1 : 0xc0e5);
		else
			off = memcmp(priv + i * PAGE, want + i * PAGE, PAGE) ? 0 : -1;
		CHECK(off < 0, "private mapping page %d (%s) differs", i, i == 1 || i == 5 ? "copy-on-write" : "from the file");
	}
	CHECK(memcmp(ro, want + 2 * PAGE, 4 * PAGE) == 0, "read-only mapping differs from the file");
	ssize_t off = check_prng(shared, SHARED_PAGES * PAGE, 0x5a4ed);
	CHECK(off < 0, "shared mapping differs at offset %zd", off);

	char path[4096];
	/* private: a change to the file shows through an untouched page, not through a COW page */
	snprintf(path, sizeof path, "%s/private.bin", W);
	pfd = open(path, O_RDWR | O_CLOEXEC);
	if (pfd < 0)
		fail("open %s: %s", path, strerror(errno));
	else {
		unsigned char page[PAGE];
		fill_prng(page, PAGE, 0x9e3);
		if (pwrite(pfd, page, PAGE, 3 * PAGE) != (ssize_t)PAGE || pwrite(pfd, page, PAGE, 1 * PAGE) != (ssize_t)PAGE)
			fail("pwrite %s: %s", path, strerror(errno));
		CHECK(memcmp(priv + 3 * PAGE, page, PAGE) == 0,
		      "private mapping page 3 does not show a write to the file (no longer backed by it)");
		CHECK(check_prng(priv + 1 * PAGE, PAGE, 0xc0e1) < 0,
		      "private mapping's copy-on-write page 1 shows a write to the file");
		close(pfd);
	}

	/* shared: both directions */
	snprintf(path, sizeof path, "%s/shared.bin", W);
	sfd = open(path, O_RDWR | O_CLOEXEC);
	if (sfd < 0)
		fail("open %s: %s", path, strerror(errno));
	else {
		unsigned char page[PAGE];
		if (pread(sfd, page, PAGE, 2 * PAGE) != (ssize_t)PAGE)
			fail("pread %s: %s", path, strerror(errno));
		CHECK(memcmp(page, shared + 2 * PAGE, PAGE) == 0, "shared.bin does not hold what the mapping shows");
		memset(shared + 4 * PAGE, 0x77, PAGE);
		if (pread(sfd, page, PAGE, 4 * PAGE) != (ssize_t)PAGE)
			fail("pread %s: %s", path, strerror(errno));
		CHECK(page[0] == 0x77 && page[PAGE - 1] == 0x77, "a write through the shared mapping does not reach the file");
		memset(page, 0x33, PAGE);
		if (pwrite(sfd, page, PAGE, 6 * PAGE) != (ssize_t)PAGE)
			fail("pwrite %s: %s", path, strerror(errno));
		CHECK(shared[6 * PAGE] == 0x33 && shared[7 * PAGE - 1] == 0x33,
		      "a write to shared.bin does not show in the shared mapping");
		close(sfd);
	}
	finish();
}
