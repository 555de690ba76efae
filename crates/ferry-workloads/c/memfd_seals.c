/*
 * memfd_seals: three memfds with seals.
 *  - A: F_SEAL_FUTURE_WRITE | F_SEAL_GROW | F_SEAL_SHRINK, with a writable shared mapping
 *    made before the seal (it stays writable; new writable mappings and write() are refused);
 *  - B: F_SEAL_WRITE | F_SEAL_SEAL with a read-only shared mapping;
 *  - C: created without MFD_ALLOW_SEALING (the kernel reports F_SEAL_SEAL).
 * After restore: F_GET_SEALS are the same, the contents are, and the seals are enforced.
 */
#include "common.h"
#include <sys/mman.h>

#define LEN (64 * 1024)

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	int a = memfd_create("sealed-a", MFD_ALLOW_SEALING);
	int b = memfd_create("sealed-b", MFD_ALLOW_SEALING);
	int c = memfd_create("unsealable-c", 0);
	SETUP(a);
	SETUP(b);
	SETUP(c);
	SETUP(ftruncate(a, LEN));
	SETUP(ftruncate(b, LEN));
	SETUP(ftruncate(c, 4096));
	unsigned char *ma = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, a, 0);
	if (ma == MAP_FAILED)
		die_setup("mmap a: %s", strerror(errno));
	fill_prng(ma, LEN, 31);
	unsigned char *tmp = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, b, 0);
	if (tmp == MAP_FAILED)
		die_setup("mmap b: %s", strerror(errno));
	fill_prng(tmp, LEN, 32);
	SETUP(munmap(tmp, LEN));
	SETUP(fcntl(a, F_ADD_SEALS, F_SEAL_FUTURE_WRITE | F_SEAL_GROW | F_SEAL_SHRINK));
	SETUP(fcntl(b, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SEAL));
	unsigned char *mb = mmap(NULL, LEN, PROT_READ, MAP_SHARED, b, 0);
	if (mb == MAP_FAILED)
		die_setup("mmap b read-only: %s", strerror(errno));
	int sa = fcntl(a, F_GET_SEALS), sb = fcntl(b, F_GET_SEALS), sc = fcntl(c, F_GET_SEALS);
	fprintf(stderr, "seals %#x %#x %#x\n", sa, sb, sc);
	signal_ready();
	wait_go();

	CHECK(fcntl(a, F_GET_SEALS) == sa, "a: seals %#x, were %#x", fcntl(a, F_GET_SEALS), sa);
	CHECK(fcntl(b, F_GET_SEALS) == sb, "b: seals %#x, were %#x", fcntl(b, F_GET_SEALS), sb);
	CHECK(fcntl(c, F_GET_SEALS) == sc, "c: seals %#x, were %#x", fcntl(c, F_GET_SEALS), sc);
	ssize_t off = check_prng(ma, LEN, 31);
	CHECK(off < 0, "a: content differs at %zd", off);
	off = check_prng(mb, LEN, 32);
	CHECK(off < 0, "b: content differs at %zd", off);
	/* the mapping made before F_SEAL_FUTURE_WRITE still writes, and the fd sees it */
	ma[10] ^= 0xff;
	unsigned char x = 0;
	CHECK(pread(a, &x, 1, 10) == 1 && x == ma[10], "a: write through the old mapping not seen by the fd");
	ma[10] ^= 0xff;
	CHECK(write(a, "x", 1) < 0 && errno == EPERM, "a: write() is allowed despite F_SEAL_FUTURE_WRITE");
	void *p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, a, 0);
	CHECK(p == MAP_FAILED && errno == EPERM, "a: a new writable mapping is allowed");
	CHECK(ftruncate(a, LEN * 2) < 0 && errno == EPERM, "a: grow allowed");
	CHECK(ftruncate(a, 4096) < 0 && errno == EPERM, "a: shrink allowed");
	CHECK(pwrite(b, "x", 1, 0) < 0 && errno == EPERM, "b: write allowed despite F_SEAL_WRITE");
	CHECK(fcntl(b, F_ADD_SEALS, F_SEAL_GROW) < 0 && errno == EPERM, "b: F_SEAL_SEAL not enforced");
	CHECK(fcntl(c, F_ADD_SEALS, F_SEAL_GROW) < 0 && errno == EPERM, "c: can be sealed");
	CHECK(pwrite(c, "y", 1, 0) == 1, "c: write refused");
	finish();
}
