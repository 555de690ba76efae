/*
 * sysvshm_huge: a SysV shared memory segment in huge pages (SHM_HUGETLB, the default huge page
 * size): IPC_PRIVATE, two huge pages and 4096 bytes (so three pages), mode 0640, attached
 * read-write and filled with a pseudo-random pattern, then marked IPC_RMID (it goes with the
 * process). Its id goes to W/shmid. On go: the same id, size and mode, the same address, the
 * mapping still in huge pages (smaps KernelPageSize), every byte, and still writable.
 */
#include "common.h"
#include <sys/ipc.h>
#include <sys/shm.h>

/* The default huge page size, from /proc/meminfo (bytes; 0 if unknown). */
static long huge_page_size(void)
{
	char buf[8192];
	if (read_file("/proc/meminfo", buf, sizeof buf) < 0)
		return 0;
	char *l = strstr(buf, "Hugepagesize:");
	return l ? strtol(l + strlen("Hugepagesize:"), NULL, 10) * 1024 : 0;
}

/* KernelPageSize (bytes) of the mapping that starts at p, from /proc/self/smaps; -1 if none. */
static long kernel_page_size(void *p)
{
	FILE *f = fopen("/proc/self/smaps", "re");
	if (!f)
		return -1;
	char line[512], start[32];
	snprintf(start, sizeof start, "%lx-", (unsigned long)(uintptr_t)p);
	int in = 0;
	long out = -1;
	while (fgets(line, sizeof line, f)) {
		if (strchr(line, '-') && strncmp(line, start, strlen(start)) == 0)
			in = 1;
		else if (in && strncmp(line, "KernelPageSize:", 15) == 0) {
			out = strtol(line + 15, NULL, 10) * 1024;
			break;
		}
	}
	fclose(f);
	return out;
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	long huge = huge_page_size();
	if (huge <= 0)
		die_setup("no Hugepagesize in /proc/meminfo");
	size_t size = 2 * (size_t)huge + 4096;
	int id = shmget(IPC_PRIVATE, size, IPC_CREAT | SHM_HUGETLB | 0640);
	if (id < 0)
		die_setup("shmget SHM_HUGETLB of %zu bytes: %s (are huge pages free? vm.nr_hugepages)", size,
			  strerror(errno));
	unsigned char *p = shmat(id, NULL, 0);
	if (p == (void *)-1) {
		shmctl(id, IPC_RMID, NULL);
		die_setup("shmat: %s", strerror(errno));
	}
	SETUP(shmctl(id, IPC_RMID, NULL));
	char buf[32];
	snprintf(buf, sizeof buf, "%d\n", id);
	if (write_file_atomic("shmid", buf) < 0)
		die_setup("write shmid");
	fill_prng(p, size, 77);
	if (kernel_page_size(p) != huge)
		die_setup("the segment is not in huge pages of %ld bytes (%ld)", huge, kernel_page_size(p));
	signal_ready();
	wait_go();
	struct shmid_ds ds;
	CHECK(shmctl(id, IPC_STAT, &ds) == 0, "shmctl IPC_STAT %d: %s", id, strerror(errno));
	CHECK(ds.shm_segsz == size, "size %zu, not %zu", (size_t)ds.shm_segsz, size);
	CHECK((ds.shm_perm.mode & 0777) == 0640, "mode %o", ds.shm_perm.mode & 0777);
	CHECK(ds.shm_nattch == 1, "%lu attachments", (unsigned long)ds.shm_nattch);
	long k = kernel_page_size(p);
	CHECK(k == huge, "the segment is in pages of %ld bytes, not huge pages of %ld", k, huge);
	ssize_t bad = check_prng(p, size, 77);
	CHECK(bad < 0, "byte %zd of the segment differs", bad);
	p[size - 1] ^= 0xff; /* (still writable: a read-only attachment would fault here) */
	finish();
}
