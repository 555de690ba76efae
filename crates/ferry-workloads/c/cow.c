/*
 * cow: memory shared copy-on-write across three generations.
 *
 * The parent fills a private anonymous mapping (argv[2] MiB, default 64) and a heap buffer
 * with a per-page pattern, then forks a child. The child rewrites every 16th page (i % 16 == 1),
 * writes zeros over page 5, drops pages 10-19 (MADV_DONTNEED: they read as zeros), and forks a
 * grandchild, which rewrites the pages i % 16 == 2 and drops pages 30-39. After the fork the
 * parent rewrites the pages i % 16 == 3. Pages nobody rewrote stay shared by the three.
 * After restore (go) each process checks every page of its own view; the parent tells the
 * others to check over a pipe and collects their verdicts through their exit statuses.
 * The harness compares the tree's PSS before and after (sharing kept) from outside.
 */
#include "common.h"
#include <sys/mman.h>
#include <sys/wait.h>

#define PAGE 4096u

static size_t npages;
static unsigned char *m;
static uint64_t *heap;
#define HEAP_WORDS (1u << 18) /* 2 MiB */

static uint64_t pattern(size_t page, unsigned who)
{
	return (page + 1) * 0x9E3779B97F4A7C15ull ^ ((uint64_t)who << 56);
}

static void fill(size_t page, unsigned who)
{
	uint64_t *p = (uint64_t *)(m + page * PAGE), v = pattern(page, who);
	for (unsigned k = 0; k < PAGE / 8; k++)
		p[k] = v + k;
}

/* Which writer's pattern page i holds in the view of `gen` (0 parent, 1 child, 2 grandchild),
 * or -1 for zeros. */
static int expected(size_t i, int gen)
{
	if (gen == 0)
		return i % 16 == 3 ? 3 : 0;
	if (gen == 2) {
		if (i >= 30 && i <= 39)
			return -1;
		if (i % 16 == 2)
			return 2;
	}
	if (i >= 10 && i <= 19)
		return -1;
	if (i == 5)
		return -1;
	return i % 16 == 1 ? 1 : 0;
}

/* Check every page and the heap; returns the number of bad pages (first one reported). */
static int check(int gen)
{
	int bad = 0;
	for (size_t i = 0; i < npages; i++) {
		int want = expected(i, gen);
		const uint64_t *p = (const uint64_t *)(m + i * PAGE);
		uint64_t v = want < 0 ? 0 : pattern(i, (unsigned)want);
		for (unsigned k = 0; k < PAGE / 8; k++) {
			uint64_t w = want < 0 ? 0 : v + k;
			if (p[k] != w) {
				if (!bad)
					fail("generation %d page %zu word %u: %#llx, expected %#llx (writer %d)", gen, i, k,
					     (unsigned long long)p[k], (unsigned long long)w, want);
				bad++;
				break;
			}
		}
	}
	for (unsigned k = 0; k < HEAP_WORDS; k++)
		if (heap[k] != k * 31 + (unsigned)gen * (k % 7 == 0)) {
			fail("generation %d heap word %u", gen, k);
			bad++;
			break;
		}
	return bad;
}

/* A descendant: wait for the word, check, exit with the verdict. */
static void wait_and_check(int rfd, int gen, pid_t child)
{
	char b;
	if (read(rfd, &b, 1) != 1)
		_exit(3);
	int bad = check(gen);
	if (child > 0) {
		int st;
		if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
			_exit(4);
	}
	_exit(bad ? 1 : 0);
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	size_t mib = argc > 2 ? (size_t)atoi(argv[2]) : 64;
	npages = mib * 256;
	if (npages < 64)
		die_setup("at least 1 MiB");
	m = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		die_setup("mmap: %s", strerror(errno));
	heap = malloc(HEAP_WORDS * 8);
	if (!heap)
		die_setup("malloc");
	for (unsigned k = 0; k < HEAP_WORDS; k++)
		heap[k] = k * 31;
	for (size_t i = 0; i < npages; i++)
		fill(i, 0);
	int go_pipe[2], up[2];
	SETUP(pipe(go_pipe));
	SETUP(pipe(up));
	pid_t c = fork();
	SETUP(c);
	if (c == 0) {
		for (size_t i = 0; i < npages; i++)
			if (i % 16 == 1)
				fill(i, 1);
		memset(m + 5 * PAGE, 0, PAGE);
		if (madvise(m + 10 * PAGE, 10 * PAGE, MADV_DONTNEED))
			_exit(5);
		for (unsigned k = 0; k < HEAP_WORDS; k += 7)
			heap[k] += 1;
		pid_t g = fork();
		if (g < 0)
			_exit(6);
		if (g == 0) {
			for (size_t i = 0; i < npages; i++)
				if (i % 16 == 2)
					fill(i, 2);
			if (madvise(m + 30 * PAGE, 10 * PAGE, MADV_DONTNEED))
				_exit(5);
			for (unsigned k = 0; k < HEAP_WORDS; k += 7)
				heap[k] += 1;
			if (write(up[1], "g", 1) != 1)
				_exit(7);
			wait_and_check(go_pipe[0], 2, 0);
		}
		if (write(up[1], "c", 1) != 1)
			_exit(7);
		wait_and_check(go_pipe[0], 1, g);
	}
	char b[2];
	SETUP(read(up[0], b, 1));
	SETUP(read(up[0], b + 1, 1));
	for (size_t i = 0; i < npages; i++)
		if (i % 16 == 3)
			fill(i, 3);
	signal_ready();
	wait_go();
	check(0);
	/* Two words: the child and the grandchild each take one. */
	CHECK(write(go_pipe[1], "gg", 2) == 2, "tell the others to check");
	int st;
	CHECK(waitpid(c, &st, 0) == c, "waitpid");
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child (or grandchild) found its memory wrong: status %#x", st);
	finish();
}
