/*
 * shm: MAP_SHARED|MAP_ANONYMOUS memory shared by a parent and its forked child.
 * The parent fills the first half before the fork; after the fork the child fills the second
 * half (pages the parent never touches, so they are only in the child's page tables). After
 * restore: both halves hold their patterns, and the memory is still shared — the parent writes
 * a marker the child must see, the child answers with one the parent must see.
 */
#include "common.h"
#include <sys/mman.h>
#include <sys/wait.h>

#define LEN (4u << 20)

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	unsigned char *m = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		die_setup("mmap: %s", strerror(errno));
	fill_prng(m, LEN / 2, 11);
	volatile uint64_t *ping = (uint64_t *)(m + LEN / 2 - 64), *pong = (uint64_t *)(m + LEN - 64);
	pid_t child = fork();
	SETUP(child);
	if (child == 0) {
		fill_prng(m + LEN / 2, LEN / 2 - 4096, 22);
		*pong = 0;
		*ping = 0;
		/* wait (up to ~60 s after restore) for the parent's marker, then answer */
		for (int i = 0; i < 600000 && *ping != 0x5151; i++)
			usleep(1000);
		if (*ping != 0x5151)
			_exit(3);
		if (check_prng(m + LEN / 2, LEN / 2 - 4096, 22) >= 0)
			_exit(4);
		*pong = 0x7272;
		_exit(0);
	}
	usleep(200 * 1000);
	signal_ready();
	wait_go();
	ssize_t bad = check_prng(m, LEN / 2 - 4096, 11);
	CHECK(bad < 0, "first half differs at %zd", bad);
	bad = check_prng(m + LEN / 2, LEN / 2 - 4096, 22);
	CHECK(bad < 0, "second half (written by the child only) differs at %zd", bad);
	*ping = 0x5151;
	for (int i = 0; i < 5000 && *pong != 0x7272; i++)
		usleep(1000);
	CHECK(*pong == 0x7272, "the child did not answer through the shared memory: not shared any more");
	int st = 0;
	CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child ended with status %#x", st);
	finish();
}
