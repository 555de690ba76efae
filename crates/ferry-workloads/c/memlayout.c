/*
 * memlayout SEED [fork]: a random memory layout, built from SEED, compared byte for byte and flag
 * for flag after restore.
 *
 * The process maps 6-14 regions one unmapped page apart at a fixed address (so nothing else of
 * the process lands among them): private and shared anonymous, private and shared mappings of a
 * file in W, MAP_DROPPABLE; 1-48 pages each. Each page is left untouched, filled with
 * pseudo-random bytes, zeroed, or filled then dropped (MADV_DONTNEED); then random sub-ranges get
 * advice (SEQUENTIAL, RANDOM, DONTFORK, WIPEONFORK, DONTDUMP, HUGEPAGE, NOHUGEPAGE, MERGEABLE),
 * mlock or mlock2(MLOCK_ONFAULT), MAP_NORESERVE at mmap, a final protection (rw, r, none), and
 * sometimes mseal of a sub-range.
 *
 * SEED 0 is a fixed layout instead: a private anonymous region with MADV_WIPEONFORK, a
 * MAP_DROPPABLE one and a plain private anonymous one, 16 pages each, every page filled; with
 * "fork", after the fork the parent gives the third one MADV_WIPEONFORK and the child
 * MADV_DONTFORK (they still share its pages).
 *
 * With "fork" a child is forked afterwards (it inherits the layout copy-on-write, minus DONTFORK
 * ranges, with WIPEONFORK ranges zeroed), and both write and drop some pages of their own.
 *
 * Recorded before ready, by every process for itself: a checksum of every page of the span (read
 * through /proc/self/mem, which reads PROT_NONE pages too), and for every mapping of the span its
 * bounds, permissions, offset, file name and the whole VmFlags line of smaps. After go each
 * process records them again and compares; the child reports through its exit status.
 */
#include "common.h"
#include <sys/mman.h>
#include <sys/wait.h>

#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE 0x08
#endif
#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 1
#endif

#define PAGE 4096ul
#define BASE 0x200000000000ul
#define MAXPAGES 48
#define MAXREG 14
#define FILE_PAGES 256
#define SPAN ((unsigned long)MAXREG * (MAXPAGES + 1) * PAGE)

enum kind { PRIV_ANON, SHARED_ANON, PRIV_FILE, SHARED_FILE, DROPPABLE, NKINDS };
static const char *kind_name[] = { "private anon", "shared anon", "private file", "shared file", "droppable" };

struct region {
	unsigned long start, pages;
	int kind;
};
static struct region reg[MAXREG];
static int nreg;
static uint64_t seed, rng;
static char file_path[4096];

static unsigned pick(unsigned n)
{
	return (unsigned)(prng_next(&rng) % n);
}

/* Per-page checksums of the whole span, and the smaps description of its mappings. */
struct snap {
	uint64_t sum[SPAN / PAGE];
	char maps[64 * 1024];
};
static struct snap before, after;

static int take(struct snap *s)
{
	int fd = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	static unsigned char page[PAGE];
	for (unsigned long i = 0; i < SPAN / PAGE; i++) {
		unsigned long a = BASE + i * PAGE;
		ssize_t n = pread(fd, page, PAGE, (off_t)a);
		/* (an unmapped page fails with EIO: its own value) */
		s->sum[i] = n == (ssize_t)PAGE ? checksum(page, PAGE) : (n < 0 ? 1 : 2);
	}
	close(fd);
	static char smaps[1 << 20];
	if (read_file("/proc/self/smaps", smaps, sizeof smaps) < 0)
		return -1;
	/* Mappings of the span; two adjacent ones alike in everything (perms, name, contiguous
	 * offset, flags) are one: the kernel keeps such a split only by history (a child inherits
	 * the splits of its parent's mlock, which it does not inherit), and merges them when they
	 * are made anew. */
	struct ent {
		unsigned long lo, hi, off;
		char perms[8], name[512], flags[256];
	};
	static struct ent e[512];
	int n = 0, in = 0;
	for (char *line = smaps; line && *line;) {
		char *nl = strchr(line, '\n');
		if (nl)
			*nl = 0;
		unsigned long lo, hi, off;
		char perms[8], dev[32], ino[32], path[4096] = "";
		int k = sscanf(line, "%lx-%lx %7s %lx %31s %31s %4095[^\n]", &lo, &hi, perms, &off, dev, ino, path);
		if (k >= 6 && line[0] != 'V') {
			in = lo >= BASE && lo < BASE + SPAN && n < 512;
			if (in) {
				struct ent *x = &e[n++];
				x->lo = lo, x->hi = hi, x->off = off;
				snprintf(x->perms, sizeof x->perms, "%s", perms);
				/* the file name only for the file (shared anonymous memory is another
				 * object after restore) */
				snprintf(x->name, sizeof x->name, "%.511s", strstr(path, "memlayout.dat") ? path : "");
				x->flags[0] = 0;
			}
		} else if (in && strncmp(line, "VmFlags:", 8) == 0) {
			struct ent *x = &e[n - 1];
			snprintf(x->flags, sizeof x->flags, "%s", line + 8);
			struct ent *y = n >= 2 ? &e[n - 2] : NULL;
			int anon = x->name[0] == 0 && x->perms[3] == 'p';
			if (y && y->hi == x->lo && strcmp(y->perms, x->perms) == 0 && strcmp(y->name, x->name) == 0 &&
			    strcmp(y->flags, x->flags) == 0 && (anon || y->off + (y->hi - y->lo) == x->off)) {
				y->hi = x->hi;
				n--;
			}
		}
		line = nl ? nl + 1 : NULL;
	}
	size_t o = 0;
	s->maps[0] = 0;
	for (int i = 0; i < n; i++) {
		o += (size_t)snprintf(s->maps + o, sizeof s->maps - o, "%lx-%lx %s %lx %s [%s]\n", e[i].lo, e[i].hi,
				      e[i].perms, e[i].off, e[i].name, e[i].flags);
		if (o >= sizeof s->maps - 1)
			return -1;
	}
	return 0;
}

static void compare(const char *who)
{
	if (strcmp(before.maps, after.maps) != 0) {
		/* the first differing line */
		const char *a = before.maps, *b = after.maps;
		while (*a && *a == *b)
			a++, b++;
		while (a > before.maps && a[-1] != '\n')
			a--;
		b = after.maps + (a - before.maps);
		char la[256] = "", lb[256] = "";
		sscanf(a, "%255[^\n]", la);
		sscanf(b, "%255[^\n]", lb);
		fail("seed %llu %s: mapping was \"%s\", is \"%s\"", (unsigned long long)seed, who, la, lb);
	}
	for (unsigned long i = 0; i < SPAN / PAGE; i++) {
		if (before.sum[i] == after.sum[i])
			continue;
		const char *k = "none";
		for (int r = 0; r < nreg; r++)
			if (BASE + i * PAGE >= reg[r].start && BASE + i * PAGE < reg[r].start + reg[r].pages * PAGE)
				k = kind_name[reg[r].kind];
		fail("seed %llu %s: page %#lx (%s) has other content", (unsigned long long)seed, who, BASE + i * PAGE, k);
		break;
	}
}

/* Write, zero or drop some pages of the private writable-at-setup regions (after a fork). */
static void scribble(uint64_t tag)
{
	for (int r = 0; r < nreg; r++) {
		unsigned long len = reg[r].pages * PAGE;
		unsigned char *p = (unsigned char *)reg[r].start;
		if (reg[r].kind == SHARED_FILE || reg[r].kind == SHARED_ANON)
			continue;
		for (unsigned long i = 0; i < reg[r].pages; i++) {
			unsigned what = pick(6);
			/* through mprotect: the region may be read-only or PROT_NONE by now */
			if (what >= 2)
				continue;
			if (mprotect(p + i * PAGE, PAGE, PROT_READ | PROT_WRITE) < 0)
				continue; /* (a DONTFORK range: not in the child) */
			if (what == 0)
				fill_prng(p + i * PAGE, PAGE, tag ^ (reg[r].start + i * PAGE));
			else
				madvise(p + i * PAGE, PAGE, MADV_DONTNEED);
		}
		(void)len;
	}
}

static void restore_prot(int *prots)
{
	for (int r = 0; r < nreg; r++)
		mprotect((void *)reg[r].start, reg[r].pages * PAGE, prots[r]);
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	seed = argc > 2 ? strtoull(argv[2], NULL, 10) : 1;
	int forking = argc > 3 && strcmp(argv[3], "fork") == 0;
	rng = seed * 0x9E3779B97F4A7C15ull + 1;

	snprintf(file_path, sizeof file_path, "%s/memlayout.dat", W);
	int ffd = open(file_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	SETUP(ffd);
	static unsigned char fbuf[FILE_PAGES * PAGE];
	fill_prng(fbuf, sizeof fbuf, seed ^ 0xf11e);
	if (write(ffd, fbuf, sizeof fbuf) != (ssize_t)sizeof fbuf)
		die_setup("write %s: %s", file_path, strerror(errno));

	int fixed = seed == 0;
	nreg = fixed ? 3 : 6 + (int)pick(MAXREG - 6 + 1);
	int prots[MAXREG];
	unsigned long at = BASE;
	for (int r = 0; r < nreg; r++) {
		struct region *g = &reg[r];
		g->pages = fixed ? 16 : 1 + pick(MAXPAGES);
		g->kind = fixed ? (r == 1 ? DROPPABLE : PRIV_ANON) : (int)pick(NKINDS);
		g->start = at;
		at += (g->pages + 1) * PAGE;
		int flags = MAP_FIXED_NOREPLACE, fd = -1;
		off_t off = 0;
		switch (g->kind) {
		case PRIV_ANON:
			flags |= MAP_PRIVATE | MAP_ANONYMOUS | (pick(4) == 0 ? MAP_NORESERVE : 0);
			break;
		case SHARED_ANON:
			flags |= MAP_SHARED | MAP_ANONYMOUS;
			break;
		case PRIV_FILE:
		case SHARED_FILE:
			flags |= g->kind == PRIV_FILE ? MAP_PRIVATE : MAP_SHARED;
			fd = ffd;
			off = (off_t)(pick(FILE_PAGES - (unsigned)g->pages + 1) * PAGE);
			break;
		case DROPPABLE:
			flags |= MAP_DROPPABLE | MAP_ANONYMOUS;
			break;
		}
		void *m = mmap((void *)g->start, g->pages * PAGE, PROT_READ | PROT_WRITE, flags, fd, off);
		if (m == MAP_FAILED)
			die_setup("seed %llu: mmap of region %d (%s, %lu pages): %s", (unsigned long long)seed, r,
				  kind_name[g->kind], g->pages, strerror(errno));
		unsigned char *p = m;
		for (unsigned long i = 0; i < g->pages; i++) {
			switch (fixed ? 1 : pick(4)) {
			case 0:
				break;
			case 1:
				fill_prng(p + i * PAGE, PAGE, seed ^ (g->start + i * PAGE));
				break;
			case 2:
				memset(p + i * PAGE, 0, PAGE);
				break;
			case 3:
				fill_prng(p + i * PAGE, PAGE, seed ^ (g->start + i * PAGE));
				madvise(p + i * PAGE, PAGE, MADV_DONTNEED);
				break;
			}
		}
		static const int advice[] = { MADV_SEQUENTIAL, MADV_RANDOM,   MADV_DONTFORK,  MADV_WIPEONFORK,
					      MADV_DONTDUMP,   MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_MERGEABLE,
					      -1 /* mlock */,  -2 /* mlock2 ONFAULT */ };
		unsigned nadv = fixed ? 0 : pick(4);
		if (fixed && r == 0)
			SETUP(madvise(p, g->pages * PAGE, MADV_WIPEONFORK));
		for (unsigned k = 0; k < nadv; k++) {
			int a = advice[pick(sizeof advice / sizeof advice[0])];
			unsigned long lo = pick((unsigned)g->pages), hi = lo + 1 + pick((unsigned)(g->pages - lo));
			void *s = p + lo * PAGE;
			size_t len = (hi - lo) * PAGE;
			if (a == -1)
				mlock(s, len);
			else if (a == -2)
				syscall(SYS_mlock2, s, len, MLOCK_ONFAULT);
			else
				madvise(s, len, a); /* (EINVAL where it does not apply: fine) */
		}
		static const int prot_of[] = { PROT_READ | PROT_WRITE, PROT_READ | PROT_WRITE, PROT_READ, PROT_NONE };
		prots[r] = fixed ? PROT_READ | PROT_WRITE : prot_of[pick(4)];
		SETUP(mprotect(m, g->pages * PAGE, prots[r]));
		if (!fixed && pick(8) == 0) {
			/* sealed (mseal, Linux 6.10): a sub-range */
			unsigned long lo = pick((unsigned)g->pages), hi = lo + 1 + pick((unsigned)(g->pages - lo));
			syscall(462 /* mseal */, p + lo * PAGE, (hi - lo) * PAGE, 0);
		}
	}

	pid_t child = 0;
	int go_pipe[2], up[2];
	if (forking) {
		SETUP(pipe(go_pipe));
		SETUP(pipe(up));
		child = fork();
		SETUP(child);
		if (child == 0) {
			rng ^= 0xc41d;
			if (fixed && madvise((void *)reg[2].start, reg[2].pages * PAGE, MADV_DONTFORK) < 0)
				_exit(3);
			scribble(seed ^ 0xc41d);
			restore_prot(prots);
			int ok = take(&before) == 0;
			if (write(up[1], ok ? "c" : "x", 1) != 1)
				_exit(3);
			char b;
			if (read(go_pipe[0], &b, 1) != 1)
				_exit(3);
			if (take(&after) < 0)
				_exit(3);
			compare("child");
			_exit(failures ? 1 : 0);
		}
		if (fixed)
			SETUP(madvise((void *)reg[2].start, reg[2].pages * PAGE, MADV_WIPEONFORK));
		scribble(seed ^ 0x9a7e);
		restore_prot(prots);
		char b;
		SETUP((int)read(up[0], &b, 1));
		if (b != 'c')
			die_setup("the child could not record its memory");
	}
	if (take(&before) < 0)
		die_setup("cannot record the memory: %s", strerror(errno));
	fprintf(stderr, "memlayout seed %llu: %d regions%s\n", (unsigned long long)seed, nreg, forking ? ", forked" : "");

	signal_ready();
	wait_go();

	if (take(&after) < 0)
		fail("cannot record the memory again: %s", strerror(errno));
	else
		compare("parent");
	if (forking) {
		CHECK(write(go_pipe[1], "g", 1) == 1, "tell the child to check");
		int st;
		CHECK(waitpid(child, &st, 0) == child, "waitpid");
		CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "seed %llu: the child found its memory different (status %#x)",
		      (unsigned long long)seed, st);
	}
	finish();
}
