/*
 * mem_anon: private anonymous memory.
 *   heap    small brk-heap allocations and one large malloc'd buffer (its address goes to W/addr
 *           so a test can corrupt it through /proc/PID/mem and see the check fail)
 *   stack   a 512 KiB frame filled with pseudo-random data
 *   sparse  a 1 GiB MAP_NORESERVE reservation with a handful of touched pages: after restore the
 *           touched pages hold their data, the rest read as zero and are not resident (only
 *           touched pages are stored)
 *   r/o     a filled region made read-only; a filled region made PROT_NONE (data must survive);
 *           an untouched PROT_NONE guard region
 *   big     with argv[2] = N, an N MiB anonymous region of pseudo-random data (64 MiB, 1 GiB tests)
 */
#include "common.h"
#include <sys/mman.h>

#define PAGE 4096UL
#define NSMALL 300
#define SMALL_SIZE 1000
#define HEAP_BUF (8UL << 20)
#define STACK_BUF (512UL << 10)
#define SPARSE (1UL << 30)
#define RO_LEN (64UL << 10)

static const size_t sparse_off[] = {
	0, PAGE, 5 * PAGE, 1UL << 20, (300UL << 20) + 123 * PAGE, 512UL << 20, SPARSE - PAGE,
};
#define NSPARSE (sizeof sparse_off / sizeof sparse_off[0])

/* Check that every page of [addr, addr+len) is mapped with permissions perms ("rw-p"). */
static void check_perms(const char *what, uintptr_t addr, size_t len, const char *perms)
{
	static char buf[1 << 17];
	if (read_file("/proc/self/maps", buf, sizeof buf) < 0) {
		fail("%s: cannot read /proc/self/maps: %s", what, strerror(errno));
		return;
	}
	uintptr_t covered = addr, end = addr + len;
	for (char *line = buf; line && *line && covered < end;) {
		char *nl = strchr(line, '\n');
		char *p;
		uintptr_t lo = strtoull(line, &p, 16);
		uintptr_t hi = strtoull(p + 1, &p, 16);
		if (lo <= covered && covered < hi) {
			if (strncmp(p + 1, perms, 4) != 0) {
				fail("%s: %#lx is mapped %.4s, expected %s", what, (unsigned long)covered, p + 1, perms);
				return;
			}
			covered = hi;
		}
		line = nl ? nl + 1 : NULL;
	}
	if (covered < end)
		fail("%s: %#lx..%#lx is not mapped (mapped up to %#lx)", what, (unsigned long)addr,
		     (unsigned long)end, (unsigned long)covered);
}

static size_t resident_pages(void *addr, size_t len)
{
	static unsigned char vec[SPARSE / PAGE];
	if (mincore(addr, len, vec) < 0) {
		fail("mincore: %s", strerror(errno));
		return 0;
	}
	size_t n = 0;
	for (size_t i = 0; i < len / PAGE; i++)
		n += vec[i] & 1;
	return n;
}

static void *map_anon(size_t len, int prot, int extra)
{
	void *p = mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | extra, -1, 0);
	if (p == MAP_FAILED)
		die_setup("mmap %zu bytes: %s", len, strerror(errno));
	return p;
}

static int run(size_t big_mib)
{
	uint64_t stack_buf[STACK_BUF / 8];
	fill_prng(stack_buf, sizeof stack_buf, 0x5747ac);

	/* heap: small chunks on the brk heap, one large buffer */
	unsigned char **small = malloc(NSMALL * sizeof *small);
	if (!small)
		die_setup("malloc");
	for (int i = 0; i < NSMALL; i++) {
		small[i] = malloc(SMALL_SIZE);
		if (!small[i])
			die_setup("malloc");
		fill_prng(small[i], SMALL_SIZE, 1000 + (uint64_t)i);
	}
	unsigned char *heap = malloc(HEAP_BUF);
	if (!heap)
		die_setup("malloc %lu", HEAP_BUF);
	fill_prng(heap, HEAP_BUF, 0x4ea9);

	/* sparse reservation */
	unsigned char *sparse = map_anon(SPARSE, PROT_READ | PROT_WRITE, MAP_NORESERVE);
	madvise(sparse, SPARSE, MADV_NOHUGEPAGE);
	for (size_t i = 0; i < NSPARSE; i++)
		fill_prng(sparse + sparse_off[i], PAGE, 0x5ba55e + i);
	size_t resident_before = resident_pages(sparse, SPARSE);

	/* read-only and PROT_NONE regions */
	unsigned char *ro = map_anon(RO_LEN, PROT_READ | PROT_WRITE, 0);
	fill_prng(ro, RO_LEN, 0x40);
	SETUP(mprotect(ro, RO_LEN, PROT_READ));
	unsigned char *none = map_anon(RO_LEN, PROT_READ | PROT_WRITE, 0);
	fill_prng(none, RO_LEN, 0x404e);
	SETUP(mprotect(none, RO_LEN, PROT_NONE));
	unsigned char *guard = map_anon(1UL << 20, PROT_NONE, 0);

	/* optional big region */
	size_t big_len = big_mib << 20;
	unsigned char *big = NULL;
	if (big_len) {
		big = map_anon(big_len, PROT_READ | PROT_WRITE, 0);
		fill_prng(big, big_len, 0xb16);
	}

	char addr[128];
	if (big)
		snprintf(addr, sizeof addr, "%#lx %zu\n", (unsigned long)big, big_len);
	else
		snprintf(addr, sizeof addr, "%#lx %lu\n", (unsigned long)heap, HEAP_BUF);
	if (write_file_atomic("addr", addr) < 0)
		die_setup("write addr: %s", strerror(errno));
	fprintf(stderr, "mem_anon: heap %p sparse %p ro %p none %p guard %p big %p (%zu MiB); %zu sparse pages resident\n",
		heap, sparse, ro, none, guard, big, big_mib, resident_before);

	signal_ready();
	wait_go();

	/* residency first: reading untouched pages below would map them */
	size_t resident_after = resident_pages(sparse, SPARSE);
	CHECK(resident_after <= resident_before + 8,
	      "sparse 1 GiB region: %zu pages resident after restore, %zu before (untouched pages were populated)",
	      resident_after, resident_before);

	ssize_t off;
	if ((off = check_prng(stack_buf, sizeof stack_buf, 0x5747ac)) >= 0)
		fail("stack buffer %p differs at offset %zd", (void *)stack_buf, off);
	for (int i = 0; i < NSMALL; i++)
		if ((off = check_prng(small[i], SMALL_SIZE, 1000 + (uint64_t)i)) >= 0) {
			fail("small heap chunk %d (%p) differs at offset %zd", i, small[i], off);
			break;
		}
	if ((off = check_prng(heap, HEAP_BUF, 0x4ea9)) >= 0)
		fail("heap buffer %p differs at offset %zd", heap, off);

	check_perms("sparse region", (uintptr_t)sparse, SPARSE, "rw-p");
	for (size_t i = 0; i < NSPARSE; i++)
		if ((off = check_prng(sparse + sparse_off[i], PAGE, 0x5ba55e + i)) >= 0)
			fail("sparse page at +%#zx differs at offset %zd", sparse_off[i], off);
	static const size_t zero_probe[] = { 2 * PAGE, 100 * PAGE, 700UL << 20, SPARSE - 2 * PAGE };
	for (size_t i = 0; i < sizeof zero_probe / sizeof zero_probe[0]; i++) {
		const uint64_t *q = (const uint64_t *)(sparse + zero_probe[i]);
		for (size_t j = 0; j < PAGE / 8; j++)
			if (q[j]) {
				fail("untouched sparse page at +%#zx is not zero", zero_probe[i]);
				break;
			}
	}

	check_perms("read-only region", (uintptr_t)ro, RO_LEN, "r--p");
	if ((off = check_prng(ro, RO_LEN, 0x40)) >= 0)
		fail("read-only region differs at offset %zd", off);
	check_perms("PROT_NONE region with data", (uintptr_t)none, RO_LEN, "---p");
	check_perms("PROT_NONE guard", (uintptr_t)guard, 1UL << 20, "---p");
	if (mprotect(none, RO_LEN, PROT_READ) < 0)
		fail("mprotect PROT_NONE region readable: %s", strerror(errno));
	else if ((off = check_prng(none, RO_LEN, 0x404e)) >= 0)
		fail("PROT_NONE region differs at offset %zd", off);

	if (big) {
		check_perms("big region", (uintptr_t)big, big_len, "rw-p");
		if ((off = check_prng(big, big_len, 0xb16)) >= 0)
			fail("big region (%zu MiB at %p) differs at offset %zd", big_mib, big, off);
	}

	/* the allocator still works (arena and brk state consistent) */
	void *more[64] = { 0 };
	for (int i = 0; i < 64; i++) {
		more[i] = malloc(i % 2 ? 100000 : 64);
		if (!more[i]) {
			fail("malloc after restore failed");
			break;
		}
		memset(more[i], 0xa5, i % 2 ? 100000 : 64);
	}
	for (int i = 0; i < 64; i++)
		free(more[i]);
	return 0;
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	size_t mib = argc > 2 ? strtoul(argv[2], NULL, 10) : 0;
	run(mib);
	finish();
}
