/*
 * dirtier: a process that keeps writing its memory, for live migration.
 *   argv[2] = N   MiB of anonymous memory (default 64), every page filled with a pattern that
 *                 depends on the page's index and its generation
 *   argv[3] = K   KiB written per second (default 10240, about 10 MB/s): every 10 ms a few
 *                 pages picked at random get their generation bumped and are rewritten
 * It writes ready after the first fill, then writes until go (it is migrated meanwhile, maybe
 * frozen in the middle of a page). On go it checks every page against its generation (kept in
 * a separate array, itself in memory) and that it kept writing after ready (W/rounds holds the
 * number of write rounds done, for the harness to see progress after the move).
 *   argv[4] = "churn": also keep 8 small mappings changing under the migration: every round one
 *                 of them is unmapped and mapped anew, grown with mremap (which may move it), or
 *                 rewritten, each time with a new generation; they are checked on go too.
 *   argv[4] = "fork": also fork (at most 16 times, one at a time, a new one once the previous
 *                 one is done and 200 ms have passed) a child that checks every page of its
 *                 copy of the memory against its copy of the generations, writes its verdict
 *                 (one byte) to a pipe and waits to be killed: children never exit on their own
 *                 while the tree may be migrated (a process exiting during a dump fails it).
 *                 On go the parent requires that every child passed and some ran.
 *   argv[4] = "drop": also, every few rounds, drop a few pages of the memory (MADV_DONTNEED: they
 *                 must read as zeros from then on, until written again);
 *   argv[4] = "remap": also, every few rounds, map a few pages anew at the same address (munmap,
 *                 then mmap MAP_FIXED: a new mapping in the middle of the old one) with new
 *                 content. With either, pages pre-copied before must come back as they are at
 *                 the freeze, not as they were sent.
 *   argv[4] = "threads": the writes are done by 4 threads instead (thread t owns the pages
 *                 i % 4 == t); each round each thread also has the kernel read one of its pages
 *                 (pwrite to a scratch file) and write it back in place (pread): faults taken
 *                 in kernel mode, from several threads at once.
 *   argv[4] = "tree": before ready, fork two children (a tree of three processes sharing the
 *                 memory copy-on-write). Each child zeroes 8 pages of it and drops 8 others
 *                 (MADV_DONTNEED), fills a private mapping of its own (a quarter of the size),
 *                 then, like the parent, rewrites random pages of both at the same rate until
 *                 the parent passes go on (a pipe); it then checks both against its own
 *                 generations, sends its verdict (one byte) and waits to be killed. On go the
 *                 parent requires both verdicts good.
 *   argv[4] = "noreserve" (or "noreserve,drop"): the memory is mapped MAP_NORESERVE (as
 *                 jemalloc maps its heaps); on go its mapping (bounds, permissions, the whole
 *                 VmFlags line of smaps: "nr", no "ac") must be the one recorded at ready.
 */
#include "common.h"
#include <sys/mman.h>
#include <sys/wait.h>
#include <pthread.h>
#include <poll.h>

#define PAGE 4096UL
#define WORDS (PAGE / 8)

/* The mapping holding addr, as "lo-hi perms [VmFlags]" (empty if none). */
static void mapping_of(const void *addr, char *out, size_t cap)
{
	static char smaps[1 << 20];
	out[0] = 0;
	if (read_file("/proc/self/smaps", smaps, sizeof smaps) < 0)
		die_setup("read /proc/self/smaps: %s", strerror(errno));
	int in = 0;
	for (char *line = smaps; line && *line;) {
		char *nl = strchr(line, '\n');
		if (nl)
			*nl = 0;
		unsigned long lo, hi;
		char perms[8];
		if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3 && strncmp(line, "VmFlags:", 8) != 0) {
			in = (unsigned long)addr >= lo && (unsigned long)addr < hi;
			if (in)
				snprintf(out, cap, "%lx-%lx %s", lo, hi, perms);
		} else if (in && strncmp(line, "VmFlags:", 8) == 0) {
			size_t o = strlen(out);
			snprintf(out + o, cap - o, " [%s]", line + 8);
		}
		line = nl ? nl + 1 : NULL;
	}
}

static inline uint64_t mix(uint64_t page, uint64_t gen, uint64_t word)
{
	uint64_t x = page * 0x9E3779B97F4A7C15ULL ^ (gen + 1) * 0xC2B2AE3D27D4EB4FULL ^ word * 0x165667B19E3779F9ULL;
	x ^= x >> 31;
	x *= 0xD6E8FEB86659FD93ULL;
	x ^= x >> 29;
	return x;
}

static void fill(uint64_t *mem, uint64_t page, uint32_t gen)
{
	uint64_t *p = mem + page * WORDS;
	for (uint64_t w = 0; w < WORDS; w++)
		p[w] = mix(page, gen, w);
}

#define NSLOT 8
struct slot {
	uint64_t *p;
	size_t pages;
	uint32_t gen;
};
static struct slot slots[NSLOT];

static void slot_fill(int k)
{
	for (size_t i = 0; i < slots[k].pages; i++)
		for (uint64_t w = 0; w < WORDS; w++)
			slots[k].p[i * WORDS + w] = mix(1000003ULL * (k + 1) + i, slots[k].gen, w);
}

static void slot_new(int k, size_t pages)
{
	void *p = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die_setup("mmap slot: %s", strerror(errno));
	slots[k].p = p;
	slots[k].pages = pages;
	slots[k].gen++;
	slot_fill(k);
}

static void churn(uint64_t round, uint64_t rng)
{
	int k = (int)(round % NSLOT);
	switch ((round / NSLOT) % 3) {
	case 0:
		munmap(slots[k].p, slots[k].pages * PAGE);
		slot_new(k, 16 + (rng >> 40) % 64);
		break;
	case 1: {
		void *p = mremap(slots[k].p, slots[k].pages * PAGE, (slots[k].pages + 16) * PAGE, MREMAP_MAYMOVE);
		if (p == MAP_FAILED)
			die_setup("mremap: %s", strerror(errno));
		slots[k].p = p;
		slots[k].pages += 16;
		slots[k].gen++;
		slot_fill(k);
		break;
	}
	default:
		slots[k].gen++;
		slot_fill(k);
	}
}

#define NTHREADS 4
struct writer {
	pthread_t th;
	uint64_t *mem;
	uint32_t *gen;
	size_t npages, per_round;
	int idx, fd;
	unsigned long errors;
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	uint64_t rng = 0x9E3779B97F4A7C15ULL * (uint64_t)(w->idx + 1);
	size_t mine = w->npages / NTHREADS;
	while (!go && mine > 0) {
		for (size_t k = 0; k < w->per_round / NTHREADS + 1; k++) {
			rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
			uint64_t i = ((rng >> 33) % mine) * NTHREADS + (uint64_t)w->idx;
			w->gen[i]++;
			fill(w->mem, i, w->gen[i]);
		}
		uint64_t j = ((rng >> 13) % mine) * NTHREADS + (uint64_t)w->idx;
		void *page = w->mem + j * WORDS;
		off_t at = (off_t)w->idx * (off_t)PAGE;
		if (pwrite(w->fd, page, PAGE, at) != (ssize_t)PAGE || pread(w->fd, page, PAGE, at) != (ssize_t)PAGE)
			w->errors++;
		struct timespec ts = { 0, 10 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	return NULL;
}

/* Generation of a page dropped with MADV_DONTNEED ("drop"): it reads as zeros. */
#define DROPPED 0xFFFFFFFFu

/* Pages of `mem` that do not match their generation. */
static size_t check_pages(const uint64_t *mem, const uint32_t *gen, size_t npages, int report)
{
	size_t bad = 0;
	for (size_t i = 0; i < npages; i++) {
		const uint64_t *p = mem + i * WORDS;
		for (uint64_t w = 0; w < WORDS; w++) {
			uint64_t want = gen[i] == DROPPED ? 0 : mix(i, gen[i], w);
			if (p[w] != want) {
				if (bad++ == 0 && report)
					fail("page %zu word %llu: %#llx, expected %#llx (generation %u)", i,
					     (unsigned long long)w, (unsigned long long)p[w], (unsigned long long)want,
					     gen[i]);
				break;
			}
		}
	}
	return bad;
}

/* A child of "tree": see the top. Never returns. */
static void tree_child(uint64_t *mem, uint32_t *gen, size_t npages, size_t per_round, int c, int go_r, int verdict_w)
{
	pid_t parent = getppid();
	size_t nown = npages / 4 + 1;
	uint64_t *own = mmap(NULL, nown * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint32_t *own_gen = calloc(nown, sizeof *own_gen);
	if (own == MAP_FAILED || !own_gen)
		_exit(10);
	for (size_t i = 0; i < nown; i++) {
		own_gen[i] = 100 + (uint32_t)c;
		fill(own, i, own_gen[i]);
	}
	uint64_t rng = 0xC0FFEEULL * (uint64_t)(c + 3) ^ (uint64_t)getpid();
	for (int k = 0; k < 8 && npages > 64; k++) {
		rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
		uint64_t z = (rng >> 33) % npages, d = (rng >> 13) % npages;
		memset(mem + z * WORDS, 0, PAGE); /* a page of zeros of its own */
		gen[z] = DROPPED;
		if (madvise(mem + d * WORDS, PAGE, MADV_DONTNEED) != 0)
			_exit(11);
		gen[d] = DROPPED;
	}
	for (;;) {
		char b;
		if (read(go_r, &b, 1) == 1)
			break;
		if (getppid() != parent)
			_exit(12); /* orphaned: the harness is gone */
		for (size_t k = 0; k < per_round; k++) {
			rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
			uint64_t i = (rng >> 33) % npages, j = (rng >> 13) % nown;
			gen[i] = gen[i] == DROPPED ? 1 : gen[i] + 1;
			fill(mem, i, gen[i]);
			own_gen[j]++;
			fill(own, j, own_gen[j]);
		}
		struct timespec ts = { 0, 10 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	size_t bad = check_pages(mem, gen, npages, 1) + check_pages(own, own_gen, nown, 1);
	char v = bad == 0 ? 'y' : 'n';
	if (bad)
		fprintf(stderr, "dirtier: tree child %d: %zu pages differ\n", c, bad);
	if (write(verdict_w, &v, 1) != 1)
		_exit(13);
	for (;;)
		pause();
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	size_t mib = argc > 2 ? strtoul(argv[2], NULL, 10) : 64;
	size_t kib_s = argc > 3 ? strtoul(argv[3], NULL, 10) : 10240;
	size_t npages = (mib << 20) / PAGE;
	int noreserve = argc > 4 && strstr(argv[4], "noreserve") != NULL;
	uint64_t *mem = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | (noreserve ? MAP_NORESERVE : 0), -1, 0);
	if (mem == MAP_FAILED)
		die_setup("mmap %zu MiB: %s", mib, strerror(errno));
	uint32_t *gen = calloc(npages, sizeof *gen);
	if (!gen)
		die_setup("calloc");
	for (size_t i = 0; i < npages; i++)
		fill(mem, i, 0);
	/* pages per 10 ms round */
	size_t per_round = kib_s * 1024 / PAGE / 100;
	if (per_round == 0)
		per_round = 1;
	uint64_t rng = 0x12345678ULL ^ (uint64_t)getpid();
	uint64_t rounds = 0;
	int churning = argc > 4 && strcmp(argv[4], "churn") == 0;
	int forking = argc > 4 && strcmp(argv[4], "fork") == 0;
	int threading = argc > 4 && strcmp(argv[4], "threads") == 0;
	int dropping = argc > 4 && (strcmp(argv[4], "drop") == 0 || strcmp(argv[4], "noreserve,drop") == 0);
	int remapping = argc > 4 && strcmp(argv[4], "remap") == 0;
	unsigned long dropped = 0, remapped = 0;
	struct writer writers[NTHREADS];
	if (threading) {
		char path[4096];
		snprintf(path, sizeof path, "%s/threads.scratch", W);
		int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (fd < 0)
			die_setup("open %s: %s", path, strerror(errno));
		for (int t = 0; t < NTHREADS; t++) {
			writers[t] = (struct writer){ .mem = mem, .gen = gen, .npages = npages, .per_round = per_round,
						      .idx = t, .fd = fd };
			if (pthread_create(&writers[t].th, NULL, writer_main, &writers[t]) != 0)
				die_setup("pthread_create");
		}
	}
#define NCHECKERS 16
	pid_t checkers[NCHECKERS];
	int nforked = 0, checking = 0;
	unsigned long checks_ok = 0, checks_bad = 0;
	int verdicts[2] = { -1, -1 };
	if (forking && pipe2(verdicts, O_CLOEXEC | O_NONBLOCK) < 0)
		die_setup("pipe2: %s", strerror(errno));
	if (churning)
		for (int k = 0; k < NSLOT; k++)
			slot_new(k, 32);
	int treeing = argc > 4 && strcmp(argv[4], "tree") == 0;
	pid_t kids[2] = { -1, -1 };
	int tree_go[2] = { -1, -1 }, tree_verdicts[2] = { -1, -1 };
	if (treeing) {
		if (pipe2(tree_go, O_CLOEXEC | O_NONBLOCK) < 0 || pipe2(tree_verdicts, O_CLOEXEC) < 0)
			die_setup("pipe2: %s", strerror(errno));
		for (int c = 0; c < 2; c++) {
			kids[c] = fork();
			if (kids[c] < 0)
				die_setup("fork: %s", strerror(errno));
			if (kids[c] == 0)
				tree_child(mem, gen, npages, per_round, c, tree_go[0], tree_verdicts[1]);
		}
	}
	char mapping[512] = "";
	if (noreserve) {
		mapping_of(mem, mapping, sizeof mapping);
		if (!strstr(mapping, " nr"))
			die_setup("MAP_NORESERVE memory without nr: %s", mapping);
	}
	signal_ready();
	while (!go) {
		for (size_t k = 0; !threading && k < per_round; k++) {
			rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
			uint64_t i = (rng >> 33) % npages;
			gen[i] = gen[i] == DROPPED ? 1 : gen[i] + 1;
			fill(mem, i, gen[i]);
		}
		if (dropping && rounds % 5 == 0 && npages > 64) {
			rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
			uint64_t i = (rng >> 33) % (npages - 16), n = 1 + (rng >> 20) % 16;
			if (madvise(mem + i * WORDS, n * PAGE, MADV_DONTNEED) != 0)
				die_setup("madvise: %s", strerror(errno));
			for (uint64_t k = i; k < i + n; k++)
				gen[k] = DROPPED;
			dropped += n;
		}
		if (remapping && rounds % 7 == 3 && npages > 64) {
			rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
			uint64_t i = (rng >> 33) % (npages - 8), n = 1 + (rng >> 20) % 8;
			void *at = mem + i * WORDS;
			if (munmap(at, n * PAGE) != 0 ||
			    mmap(at, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != at)
				die_setup("remap: %s", strerror(errno));
			for (uint64_t k = i; k < i + n; k++) {
				gen[k] = gen[k] == DROPPED ? 1 : gen[k] + 1;
				fill(mem, k, gen[k]);
			}
			remapped += n;
		}
		if (churning)
			churn(rounds, rng);
		if (forking && checking) {
			char v;
			if (read(verdicts[0], &v, 1) == 1) {
				checking = 0;
				if (v == 'y')
					checks_ok++;
				else if (checks_bad++ == 0)
					fail("a forked child found its copy of the memory wrong");
			}
		}
		if (forking && !checking && nforked < NCHECKERS && rounds % 20 == 0) {
			pid_t c = fork();
			if (c == 0) {
				char v = check_pages(mem, gen, npages, 0) == 0 ? 'y' : 'n';
				if (write(verdicts[1], &v, 1) != 1)
					_exit(1);
				for (;;)
					pause();
			}
			if (c < 0)
				die_setup("fork: %s", strerror(errno));
			checkers[nforked++] = c;
			checking = 1;
		}
		rounds++;
		if (rounds % 50 == 0) {
			char buf[64];
			snprintf(buf, sizeof buf, "%llu\n", (unsigned long long)rounds);
			write_file_atomic("rounds", buf);
		}
		struct timespec ts = { 0, 10 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	unsigned long thread_errors = 0;
	for (int t = 0; threading && t < NTHREADS; t++) {
		pthread_join(writers[t].th, NULL);
		thread_errors += writers[t].errors;
	}
	CHECK(thread_errors == 0, "%lu pwrite/pread round trips of a page failed", thread_errors);
	uint64_t dirtied = 0;
	for (size_t i = 0; i < npages; i++)
		dirtied += gen[i];
	size_t bad = check_pages(mem, gen, npages, 1);
	CHECK(bad == 0, "%zu of %zu pages differ", bad, npages);
	if (forking) {
		if (checking) {
			/* the last one's verdict: wait for it */
			struct pollfd pfd = { verdicts[0], POLLIN, 0 };
			char v = 0;
			if (poll(&pfd, 1, 120000) == 1 && read(verdicts[0], &v, 1) == 1 && v == 'y')
				checks_ok++;
			else
				checks_bad++;
		}
		for (int k = 0; k < nforked; k++) {
			kill(checkers[k], SIGKILL);
			waitpid(checkers[k], NULL, 0);
		}
		CHECK(checks_bad == 0, "%lu forked children found their memory wrong", checks_bad);
		CHECK(checks_ok > 0, "no forked child checked the memory");
		fprintf(stderr, "dirtier: %lu forked children checked their memory\n", checks_ok);
	}
	for (int k = 0; churning && k < NSLOT; k++)
		for (size_t i = 0; i < slots[k].pages; i++)
			if (slots[k].p[i * WORDS + 7] != mix(1000003ULL * (k + 1) + i, slots[k].gen, 7) ||
			    slots[k].p[i * WORDS + WORDS - 1] != mix(1000003ULL * (k + 1) + i, slots[k].gen, WORDS - 1)) {
				fail("churned mapping %d page %zu: wrong content for generation %u", k, i, slots[k].gen);
				break;
			}
	if (treeing) {
		if (write(tree_go[1], "gg", 2) != 2)
			fail("cannot pass go on to the children: %s", strerror(errno));
		int good = 0;
		for (int c = 0; c < 2; c++) {
			struct pollfd pfd = { tree_verdicts[0], POLLIN, 0 };
			char v = 0;
			if (poll(&pfd, 1, 120000) == 1 && read(tree_verdicts[0], &v, 1) == 1 && v == 'y')
				good++;
		}
		for (int c = 0; c < 2; c++) {
			kill(kids[c], SIGKILL);
			waitpid(kids[c], NULL, 0);
		}
		CHECK(good == 2, "%d of the 2 children found their memory right", good);
		fprintf(stderr, "dirtier: both children checked their memory\n");
	}
	CHECK(dirtied > 0, "no page was ever rewritten");
	if (noreserve) {
		char now[512];
		mapping_of(mem, now, sizeof now);
		CHECK(strcmp(now, mapping) == 0, "the memory's mapping is %s, it was %s", now, mapping);
	}
	if (dropping || remapping)
		fprintf(stderr, "dirtier: %lu pages dropped, %lu mapped anew\n", dropped, remapped);
	fprintf(stderr, "dirtier: %zu pages checked, %llu rewrites in %llu rounds\n", npages,
		(unsigned long long)dirtied, (unsigned long long)rounds);
	finish();
}
