/*
 * cow_file [MIB]: a private file mapping whose written (copied-on-write) pages a parent shares
 * with its child.
 *
 * W/cow_file.dat (MIB MiB, default 32) holds a per-page pattern; the parent maps it MAP_PRIVATE
 * read+write and rewrites every page but those i % 4 == 0 (which stay the file's), then forks a
 * child. The child rewrites the pages i % 16 == 1, drops pages 8-15 (MADV_DONTNEED: the file's
 * bytes again) and zeroes page 3; after the fork the parent rewrites the pages i % 16 == 5. Pages
 * nobody rewrote after the fork stay shared by both. After restore (go) each process checks
 * every page of its view; the parent tells the child to check over a pipe and gets its verdict
 * through its exit status. The harness compares the tree's anonymous PSS before and after
 * (sharing kept) from outside.
 */
#include "common.h"
#include <sys/mman.h>
#include <sys/wait.h>

#define PAGE 4096u

static size_t npages;
static unsigned char *m;

static uint64_t pattern(size_t page, unsigned who)
{
	return (page + 1) * 0x9E3779B97F4A7C15ull ^ ((uint64_t)who << 56);
}

static void fill(unsigned char *at, size_t page, unsigned who)
{
	uint64_t *p = (uint64_t *)(at + page * PAGE), v = pattern(page, who);
	for (unsigned k = 0; k < PAGE / 8; k++)
		p[k] = v + k;
}

/* Whose pattern page i holds in the view of gen (0 parent, 1 child): 9 is the file's, -1 zeros. */
static int expected(size_t i, int gen)
{
	if (gen == 0)
		return i % 16 == 5 ? 5 : i % 4 == 0 ? 9 : 0;
	if (i == 3)
		return -1;
	if (i >= 8 && i <= 15)
		return 9;
	if (i % 16 == 1)
		return 1;
	return i % 4 == 0 ? 9 : 0;
}

static int check(int gen)
{
	int bad = 0;
	for (size_t i = 0; i < npages; i++) {
		int want = expected(i, gen);
		const uint64_t *p = (const uint64_t *)(m + i * PAGE);
		uint64_t v = want < 0 ? 0 : pattern(i, (unsigned)want);
		for (unsigned k = 0; k < PAGE / 8; k++) {
			if (p[k] != (want < 0 ? 0 : v + k)) {
				if (bad++ == 0)
					fail("%s: page %zu word %u is %#llx, expected %s %d", gen ? "child" : "parent", i, k,
					     (unsigned long long)p[k], want < 0 ? "zeros" : "the pattern of", want);
				break;
			}
		}
	}
	return bad;
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	size_t mib = argc > 2 ? (size_t)atoi(argv[2]) : 32;
	npages = mib * 256;
	if (npages < 32)
		die_setup("at least 1 MiB");
	char path[4096];
	snprintf(path, sizeof path, "%s/cow_file.dat", W);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	SETUP(fd);
	SETUP(ftruncate(fd, (off_t)(npages * PAGE)));
	unsigned char *w = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (w == MAP_FAILED)
		die_setup("mmap shared: %s", strerror(errno));
	for (size_t i = 0; i < npages; i++)
		fill(w, i, 9);
	SETUP(msync(w, npages * PAGE, MS_SYNC));
	SETUP(munmap(w, npages * PAGE));
	m = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (m == MAP_FAILED)
		die_setup("mmap private: %s", strerror(errno));
	close(fd);
	for (size_t i = 0; i < npages; i++)
		if (i % 4 != 0)
			fill(m, i, 0);
	int go_pipe[2], up[2];
	SETUP(pipe(go_pipe));
	SETUP(pipe(up));
	pid_t c = fork();
	SETUP(c);
	if (c == 0) {
		for (size_t i = 0; i < npages; i++)
			if (i % 16 == 1)
				fill(m, i, 1);
		memset(m + 3 * PAGE, 0, PAGE);
		if (madvise(m + 8 * PAGE, 8 * PAGE, MADV_DONTNEED))
			_exit(5);
		if (write(up[1], "c", 1) != 1)
			_exit(7);
		char b;
		if (read(go_pipe[0], &b, 1) != 1)
			_exit(3);
		_exit(check(1) ? 1 : 0);
	}
	char b;
	SETUP(read(up[0], &b, 1));
	for (size_t i = 0; i < npages; i++)
		if (i % 16 == 5)
			fill(m, i, 5);
	if (check(0))
		die_setup("the parent's view is wrong before the checkpoint");
	signal_ready();
	wait_go();
	check(0);
	CHECK(write(go_pipe[1], "g", 1) == 1, "tell the child to check");
	int st;
	CHECK(waitpid(c, &st, 0) == c, "waitpid");
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child found its memory wrong: status %#x", st);
	finish();
}
