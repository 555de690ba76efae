/* copybench MIB DIR: the ways page data can travel between a process's memory and a tmpfs
 * file, timed on the same MIB MiB of random bytes (a child process holds them, as a frozen
 * target would). Prints one "name ms" line per way. Used by scripts/bench.sh (COPIES=1).
 *
 * dump (memory -> file):
 *   write        the owner write()s its memory into the file (the floor: one copy)
 *   readv+write  process_vm_readv into a page-aligned 2 MiB buffer, then write() (ferry's
 *                way: two copies, of which the second is from cache)
 *   readv+write(16B-off)  the same into a buffer 16 bytes past a page boundary, where malloc
 *                puts large blocks (ferry before: the kernel's copy is far slower there)
 *   vmsplice     the owner vmsplice()s its memory into a pipe, the other side splice()s it into
 *                the file (zero-copy into the pipe, one copy into the file)
 * restore (file -> fresh memory of a process):
 *   read         the owner read()s the file into its fresh memory (the floor: one copy)
 *   mmap+writev  process_vm_writev into the owner from an mmap of the file (ferry before)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void die(const char *w) { perror(w); exit(1); }
static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static size_t len;
static char path[4096];

static char *fresh(void)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	return p;
}

static char *random_mem(void)
{
	uint64_t *p = (uint64_t *)fresh(), s = 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();
	for (size_t i = 0; i < len / 8; i++) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		p[i] = s;
	}
	return (char *)p;
}

static int newfile(void)
{
	unlink(path);
	int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		die(path);
	return fd;
}

/* A child holding random memory; runs `job` (if any) on it when told through `go`. */
struct holder {
	pid_t pid;
	char *mem;
	int go, done;
};

static struct holder hold(void (*job)(char *, int), int arg)
{
	int a[2], b[2];
	if (pipe(a) || pipe(b))
		die("pipe");
	char *mem = random_mem(); /* same address in the child, which inherits it */
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		char c;
		/* Make the child's copy its own (no copy-on-write sharing with the parent). */
		for (size_t i = 0; i < len; i += 4096)
			mem[i] ^= 0;
		if (write(b[1], "r", 1) != 1 || read(a[0], &c, 1) != 1)
			_exit(1);
		if (job)
			job(mem, arg);
		if (write(b[1], "d", 1) != 1)
			_exit(1);
		pause();
		_exit(0);
	}
	munmap(mem, len);
	char c;
	if (read(b[0], &c, 1) != 1)
		die("holder");
	return (struct holder){ pid, mem, a[1], b[0] };
}

static void release(struct holder *h)
{
	kill(h->pid, SIGKILL);
	waitpid(h->pid, NULL, 0);
	close(h->go);
	close(h->done);
}

static double run_job(struct holder *h)
{
	char c;
	double t0 = now_ms();
	if (write(h->go, "g", 1) != 1 || read(h->done, &c, 1) != 1)
		die("job");
	return now_ms() - t0;
}

static void job_write(char *mem, int fd)
{
	for (size_t done = 0; done < len;) {
		ssize_t n = write(fd, mem + done, len - done);
		if (n <= 0)
			_exit(1);
		done += n;
	}
}

static void job_vmsplice(char *mem, int pipefd)
{
	for (size_t done = 0; done < len;) {
		struct iovec iov = { mem + done, len - done };
		ssize_t n = vmsplice(pipefd, &iov, 1, 0);
		if (n <= 0)
			_exit(1);
		done += n;
	}
}

static void job_read(char *unused, int fd)
{
	(void)unused;
	char *dst = fresh();
	for (size_t done = 0; done < len;) {
		ssize_t n = pread(fd, dst + done, len - done, done);
		if (n <= 0)
			_exit(1);
		done += n;
	}
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	len = strtoul(argv[1], NULL, 10) << 20;
	snprintf(path, sizeof path, "%s/copybench.bin", argv[2]);

	/* dump: the owner writes */
	int fd = newfile();
	struct holder h = hold(job_write, fd);
	printf("dump:write %.1f\n", run_job(&h));
	release(&h);
	close(fd);

	/* dump: process_vm_readv + write, into a page-aligned buffer (ferry's way) and into one 16
	 * bytes past a page boundary (where malloc puts large blocks: ferry's way before) */
	size_t chunk = 2 << 20;
	char *block = aligned_alloc(4096, chunk + 4096);
	if (!block)
		die("aligned_alloc");
	memset(block, 1, chunk + 4096);
	double t0;
	for (int off = 0; off <= 16; off += 16) {
		char *buf = block + off;
		fd = newfile();
		h = hold(NULL, 0);
		t0 = now_ms();
		for (size_t done = 0; done < len; done += chunk) {
			struct iovec l = { buf, chunk }, r = { h.mem + done, chunk };
			if (process_vm_readv(h.pid, &l, 1, &r, 1, 0) != (ssize_t)chunk ||
			    write(fd, buf, chunk) != (ssize_t)chunk)
				die("readv+write");
		}
		printf("dump:readv+write%s %.1f\n", off ? "(16B-off)" : "", now_ms() - t0);
		release(&h);
		close(fd);
	}

	/* dump: vmsplice by the owner, splice into the file by us */
	fd = newfile();
	int p[2];
	if (pipe(p))
		die("pipe");
	fcntl(p[1], F_SETPIPE_SZ, 1 << 20);
	h = hold(job_vmsplice, p[1]);
	t0 = now_ms();
	if (write(h.go, "g", 1) != 1)
		die("go");
	for (size_t done = 0; done < len;) {
		ssize_t n = splice(p[0], NULL, fd, NULL, len - done, SPLICE_F_MOVE);
		if (n <= 0)
			die("splice");
		done += n;
	}
	printf("dump:vmsplice+splice %.1f\n", now_ms() - t0);
	release(&h);
	close(p[0]);
	close(p[1]);

	/* restore: the owner reads into fresh memory (fd still holds the data) */
	h = hold(job_read, fd);
	printf("restore:read %.1f\n", run_job(&h));
	release(&h);

	/* restore: process_vm_writev from an mmap of the file into fresh memory of a process */
	char *src = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
	if (src == MAP_FAILED)
		die("mmap file");
	char *dst = NULL;
	{
		/* a process with fresh memory, which tells us where */
		int a[2], b[2];
		if (pipe(a) || pipe(b))
			die("pipe");
		pid_t pid = fork();
		if (pid == 0) {
			char c;
			char *m = fresh();
			if (write(b[1], &m, sizeof m) != sizeof m || read(a[0], &c, 1) != 1)
				_exit(1);
			_exit(0);
		}
		if (read(b[0], &dst, sizeof dst) != sizeof dst)
			die("child");
		t0 = now_ms();
		for (size_t done = 0; done < len; done += chunk) {
			struct iovec l = { src + done, chunk }, r = { dst + done, chunk };
			if (process_vm_writev(pid, &l, 1, &r, 1, 0) != (ssize_t)chunk)
				die("process_vm_writev");
		}
		printf("restore:mmap+writev %.1f\n", now_ms() - t0);
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	munmap(src, len);
	close(fd);
	unlink(path);
	return 0;
}
