/*
 * sysvshm: SysV shared memory shared by a parent and its child (both attached across fork).
 *  - A: a key of its own, 3 pages + 100 bytes, mode 0640, attached read-write; its id is written
 *    to W/shmid, B's on the next line (the harness removes it between dump and restore, as on another machine);
 *  - B: IPC_PRIVATE, 2 pages, mode 0600, marked IPC_RMID, attached twice in the parent: read-write
 * *and read-only at another address (the child inherits both).
 *  - a third attachment of A in the parent with its first page detached, one page read-only.
 * After restore: the same ids, keys, sizes, modes, SHM_DEST on B, attach counts, contents,
 * read-only still read-only; and the memory is still shared: the parent raises a flag in A, the
 * child (polling) answers in B, the parent sees the answer through its read-only mapping of B.
 * Finally A is removed (B goes away with its last detach).
 */
#include "common.h"
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/wait.h>

#define SZA (3 * 4096 + 100)
#define SZB (2 * 4096)

static char maps_perms(void *addr, char out[5])
{
	char line[512];
	out[0] = 0;
	if (maps_line_at((uintptr_t)addr, line, sizeof line) < 0)
		return 0;
	char *sp = strchr(line, ' ');
	if (!sp)
		return 0;
	memcpy(out, sp + 1, 4);
	out[4] = 0;
	return 1;
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	key_t key = (key_t)(0x46000000 | (getpid() & 0xffffff));
	int ida = shmget(key, SZA, IPC_CREAT | IPC_EXCL | 0640);
	SETUP(ida);
	int idb = shmget(IPC_PRIVATE, SZB, IPC_CREAT | 0600);
	if (idb < 0) {
		shmctl(ida, IPC_RMID, NULL);
		die_setup("shmget B: %s", strerror(errno));
	}
	char buf[64];
	snprintf(buf, sizeof buf, "%d\n%d\n", ida, idb);
	if (write_file_atomic("shmid", buf) < 0)
		die_setup("write shmid");
	unsigned char *a = shmat(ida, NULL, 0);
	unsigned char *b = shmat(idb, NULL, 0);
	unsigned char *b_ro = shmat(idb, NULL, SHM_RDONLY);
	if (a == (void *)-1 || b == (void *)-1 || b_ro == (void *)-1)
		die_setup("shmat: %s", strerror(errno));
	SETUP(shmctl(idb, IPC_RMID, NULL));
	fill_prng(a, SZA - 100, 41);
	memset(a + SZA - 100, 0x5a, 100);
	fill_prng(b, SZB, 42);
	a[0] = 0;
	static unsigned char copy_a[SZA];
	memcpy(copy_a, a, SZA);
	pid_t child = fork();
	SETUP(child);
	if (child == 0) {
		/* wait for the parent's flag in A, answer in B */
		for (int i = 0; i < 600000; i++) {
			if (a[0] == 'g') {
				memcpy(b + 200, "ok", 2);
				_exit(shmdt(a) == 0 && shmdt(b) == 0 && shmdt(b_ro) == 0 ? 0 : 3);
			}
			usleep(1000);
		}
		_exit(4);
	}
	/* a third attachment of A in the parent only, its first page detached, one page read-only */
	unsigned char *a2 = shmat(ida, NULL, 0);
	if (a2 == (void *)-1)
		die_setup("shmat A again: %s", strerror(errno));
	SETUP(munmap(a2, 4096));
	SETUP(mprotect(a2 + 8192, 4096, PROT_READ));
	usleep(100 * 1000);
	struct shmid_ds ds;
	SETUP(shmctl(ida, IPC_STAT, &ds));
	unsigned long nattch_a = ds.shm_nattch;
	SETUP(shmctl(idb, IPC_STAT, &ds));
	unsigned long nattch_b = ds.shm_nattch;
	char maps_a2[3][5];
	for (int i = 0; i < 3; i++)
		maps_perms(a2 + 4096 * (i + 1), maps_a2[i]);
	char pa[5], pb[5], pbro[5];
	maps_perms(a, pa);
	maps_perms(b, pb);
	maps_perms(b_ro, pbro);
	signal_ready();
	wait_go();

	CHECK(shmget(key, 0, 0) == ida, "key %#x now names id %d, was %d", key, shmget(key, 0, 0), ida);
	if (shmctl(ida, IPC_STAT, &ds) == 0) {
		CHECK(ds.shm_perm.__key == key, "A: key %#x", ds.shm_perm.__key);
		CHECK(ds.shm_segsz == SZA, "A: size %zu", ds.shm_segsz);
		CHECK((ds.shm_perm.mode & 0777) == 0640, "A: mode %o", ds.shm_perm.mode);
		CHECK(!(ds.shm_perm.mode & SHM_DEST), "A: marked for removal");
		CHECK(ds.shm_perm.uid == getuid() && ds.shm_perm.gid == getgid(), "A: owner");
		CHECK(ds.shm_nattch == nattch_a, "A: %lu attaches, was %lu", (unsigned long)ds.shm_nattch, nattch_a);
	} else {
		fail("A: IPC_STAT of id %d: %s", ida, strerror(errno));
	}
	if (shmctl(idb, IPC_STAT, &ds) == 0) {
		CHECK(ds.shm_perm.__key == IPC_PRIVATE, "B: key %#x", ds.shm_perm.__key);
		CHECK(ds.shm_segsz == SZB, "B: size %zu", ds.shm_segsz);
		CHECK((ds.shm_perm.mode & 0777) == 0600, "B: mode %o", ds.shm_perm.mode);
		CHECK(ds.shm_perm.mode & SHM_DEST, "B: not marked for removal any more");
		CHECK(ds.shm_nattch == nattch_b && nattch_b == 4, "B: %lu attaches, was %lu (2 here, 2 in the child)",
		      (unsigned long)ds.shm_nattch, nattch_b);
	} else {
		fail("B: IPC_STAT of id %d: %s", idb, strerror(errno));
	}
	char na[5], nb[5], nbro[5];
	maps_perms(a, na);
	maps_perms(b, nb);
	maps_perms(b_ro, nbro);
	CHECK(strcmp(na, pa) == 0 && strcmp(nb, pb) == 0 && strcmp(nbro, pbro) == 0 && strcmp(nbro, "r--s") == 0,
	      "perms %s %s %s, were %s %s %s", na, nb, nbro, pa, pb, pbro);
	CHECK(memcmp(a, copy_a, SZA) == 0, "A: content differs");
	char line[512];
	CHECK(maps_line_at((uintptr_t)a2, line, sizeof line) < 0, "the detached first page of A's third attachment is back");
	for (int i = 0; i < 3; i++) {
		char now[5];
		maps_perms(a2 + 4096 * (i + 1), now);
		CHECK(strcmp(now, maps_a2[i]) == 0, "A's third attachment, page %d: %s, was %s", i + 1, now, maps_a2[i]);
	}
	CHECK(strcmp(maps_a2[1], "r--s") == 0, "A's third attachment, page 2 was %s", maps_a2[1]);
	CHECK(memcmp(a2 + 4096, a + 4096, SZA - 4096) == 0, "A's third attachment shows other bytes");
	ssize_t off = check_prng(b_ro, SZB, 42);
	CHECK(off < 0, "B: content differs at %zd", off);
	CHECK(memcmp(b, b_ro, SZB) == 0, "B: the two attachments differ");
	a[0] = 'g';
	for (int i = 0; i < 5000 && memcmp(b_ro + 200, "ok", 2) != 0; i++)
		usleep(1000);
	CHECK(memcmp(b_ro + 200, "ok", 2) == 0, "the child's answer did not show in the parent's B");
	int st = 0;
	CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x", st);
	CHECK(shmctl(ida, IPC_RMID, NULL) == 0, "cannot remove A: %s", strerror(errno));
	finish();
}
