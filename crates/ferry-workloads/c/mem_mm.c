/*
 * mem_mm: the process's mm fields and special mappings.
 *   brk          the program break (moved up, the new area filled) is where it was, still works
 *   mm fields    /proc/self/stat's code/data/brk/stack/arg/env addresses, /proc/self/cmdline
 *                (with an argument rewritten in place) and /proc/self/environ read the same,
 *                /proc/self/auxv is unchanged
 *   exe          /proc/self/exe names the same file
 *   vDSO         [vdso] (and [vvar]) are at their old addresses; the time functions still work
 *   labels       the stack and brk areas are still labelled [stack] and [heap]
 * Run it with extra arguments: argv[2] is rewritten in place (uppercased) before ready.
 */
#include "common.h"
#include <ctype.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/time.h>

#define BRK_GROW (256UL << 10)

/* stat fields (1-based numbering of proc(5)) that hold mm addresses */
static const int mm_fields[] = { 26, 27, 28, 45, 46, 47, 48, 49, 50, 51 };
#define NFIELDS (sizeof mm_fields / sizeof mm_fields[0])

static int read_mm_fields(unsigned long long *out)
{
	char buf[4096];
	if (read_file("/proc/self/stat", buf, sizeof buf) < 0)
		return -1;
	char *p = strrchr(buf, ')');
	if (!p)
		return -1;
	/* field 3 starts after ") " */
	p += 2;
	unsigned long long vals[64] = { 0 };
	int field = 3;
	while (*p && field < 64) {
		vals[field] = strtoull(p, &p, 10);
		if (*p == ' ')
			p++;
		else if (*p && *p != '\n') { /* field 3 is the state letter */
			while (*p && *p != ' ')
				p++;
			if (*p)
				p++;
		}
		field++;
	}
	for (size_t i = 0; i < NFIELDS; i++)
		out[i] = vals[mm_fields[i]];
	return 0;
}

/* Find the maps line naming `name` (e.g. "[vdso]"); return its start and end. */
static int find_named(const char *name, uintptr_t *lo, uintptr_t *hi)
{
	static char buf[1 << 17];
	if (read_file("/proc/self/maps", buf, sizeof buf) < 0)
		return -1;
	for (char *line = buf; line && *line;) {
		char *nl = strchr(line, '\n');
		if (nl)
			*nl = 0;
		size_t len = strlen(line), nlen = strlen(name);
		if (len >= nlen && strcmp(line + len - nlen, name) == 0) {
			char *p;
			*lo = strtoull(line, &p, 16);
			*hi = strtoull(p + 1, NULL, 16);
			return 0;
		}
		line = nl ? nl + 1 : NULL;
	}
	return -1;
}

/* The name column of the maps line containing addr ("" if anonymous, NULL if unmapped). */
static const char *name_at(uintptr_t addr)
{
	static char buf[1 << 17];
	static char name[512];
	if (read_file("/proc/self/maps", buf, sizeof buf) < 0)
		return NULL;
	for (char *line = buf; line && *line;) {
		char *nl = strchr(line, '\n');
		if (nl)
			*nl = 0;
		char *p;
		uintptr_t lo = strtoull(line, &p, 16), hi = strtoull(p + 1, &p, 16);
		if (lo <= addr && addr < hi) {
			/* skip perms, offset, dev, inode */
			for (int i = 0; i < 4; i++) {
				while (*p == ' ')
					p++;
				while (*p && *p != ' ')
					p++;
			}
			while (*p == ' ')
				p++;
			snprintf(name, sizeof name, "%s", p);
			return name;
		}
		line = nl ? nl + 1 : NULL;
	}
	return NULL;
}

static char cmdline0[8192], environ0[65536], auxv0[4096], exe0[4096];
static ssize_t cmdline0_len, environ0_len, auxv0_len;

static void compare_file(const char *path, const char *before, ssize_t before_len)
{
	static char now[65536];
	ssize_t n = read_file(path, now, sizeof now);
	if (n < 0)
		fail("cannot read %s: %s", path, strerror(errno));
	else if (n != before_len || memcmp(now, before, (size_t)n) != 0) {
		ssize_t i = 0;
		while (i < n && i < before_len && now[i] == before[i])
			i++;
		fail("%s differs: %zd bytes now, %zd before, first difference at byte %zd", path, n, before_len, i);
	}
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	if (argc > 2)
		for (char *c = argv[2]; *c; c++)
			*c = (char)toupper((unsigned char)*c);
	if (setenv("FERRY_MM_TEST", "1", 1) < 0) /* (copied to the heap: environ reads the original area) */
		die_setup("setenv");

	/* brk: grow and fill */
	char *brk0 = sbrk(0);
	if (sbrk(BRK_GROW) == (void *)-1)
		die_setup("sbrk: %s", strerror(errno));
	char *brk1 = sbrk(0);
	fill_prng(brk0, BRK_GROW, 0xb4c);

	unsigned long long fields0[NFIELDS];
	if (read_mm_fields(fields0) < 0)
		die_setup("cannot parse /proc/self/stat");
	if ((cmdline0_len = read_file("/proc/self/cmdline", cmdline0, sizeof cmdline0)) < 0 ||
	    (environ0_len = read_file("/proc/self/environ", environ0, sizeof environ0)) < 0 ||
	    (auxv0_len = read_file("/proc/self/auxv", auxv0, sizeof auxv0)) < 0)
		die_setup("cannot read /proc/self/{cmdline,environ,auxv}: %s", strerror(errno));
	if (readlink("/proc/self/exe", exe0, sizeof exe0 - 1) < 0)
		die_setup("readlink /proc/self/exe: %s", strerror(errno));

	uintptr_t vdso_lo, vdso_hi, vvar_lo = 0, vvar_hi = 0;
	if (find_named("[vdso]", &vdso_lo, &vdso_hi) < 0)
		die_setup("no [vdso] in /proc/self/maps");
	uintptr_t vclock_lo = 0, vclock_hi = 0;
	find_named("[vvar]", &vvar_lo, &vvar_hi);
	find_named("[vvar_vclock]", &vclock_lo, &vclock_hi); /* newer kernels */
	unsigned long at_vdso = getauxval(AT_SYSINFO_EHDR);
	if (at_vdso != vdso_lo)
		die_setup("AT_SYSINFO_EHDR %#lx is not the [vdso] start %#lx", at_vdso, (unsigned long)vdso_lo);
	uint64_t vdso_sum = checksum((void *)vdso_lo, vdso_hi - vdso_lo);
	struct timespec rt0, mono0;
	clock_gettime(CLOCK_REALTIME, &rt0);
	clock_gettime(CLOCK_MONOTONIC, &mono0);
	int local;
	const char *stack_name = name_at((uintptr_t)&local);
	if (!stack_name || strcmp(stack_name, "[stack]") != 0)
		die_setup("the stack is labelled %s", stack_name ? stack_name : "(unmapped)");
	const char *heap_name = name_at((uintptr_t)brk1 - 1);
	if (!heap_name || strcmp(heap_name, "[heap]") != 0)
		die_setup("the brk area is labelled %s", heap_name ? heap_name : "(unmapped)");
	fprintf(stderr, "mem_mm: brk %p..%p vdso %#lx-%#lx vvar %#lx-%#lx exe %s\n", brk0, brk1,
		(unsigned long)vdso_lo, (unsigned long)vdso_hi, (unsigned long)vvar_lo, (unsigned long)vvar_hi, exe0);

	signal_ready();
	wait_go();

	char *brk_now = sbrk(0);
	CHECK(brk_now == brk1, "brk is %p, was %p", brk_now, brk1);
	ssize_t off = check_prng(brk0, BRK_GROW, 0xb4c);
	CHECK(off < 0, "brk area differs at offset %zd", off);

	unsigned long long fields1[NFIELDS];
	if (read_mm_fields(fields1) < 0)
		fail("cannot parse /proc/self/stat");
	else
		for (size_t i = 0; i < NFIELDS; i++)
			CHECK(fields0[i] == fields1[i], "/proc/self/stat field %d is %#llx, was %#llx", mm_fields[i],
			      fields1[i], fields0[i]);
	compare_file("/proc/self/cmdline", cmdline0, cmdline0_len);
	compare_file("/proc/self/environ", environ0, environ0_len);
	compare_file("/proc/self/auxv", auxv0, auxv0_len);
	char exe1[4096] = { 0 };
	if (readlink("/proc/self/exe", exe1, sizeof exe1 - 1) < 0)
		fail("readlink /proc/self/exe: %s", strerror(errno));
	else
		CHECK(strcmp(exe0, exe1) == 0, "/proc/self/exe is %s, was %s", exe1, exe0);

	uintptr_t lo, hi;
	if (find_named("[vdso]", &lo, &hi) < 0)
		fail("no [vdso] mapping after restore");
	else {
		CHECK(lo == vdso_lo && hi == vdso_hi, "[vdso] is at %#lx-%#lx, was %#lx-%#lx", (unsigned long)lo,
		      (unsigned long)hi, (unsigned long)vdso_lo, (unsigned long)vdso_hi);
		if (lo == vdso_lo && hi == vdso_hi)
			CHECK(checksum((void *)lo, hi - lo) == vdso_sum, "[vdso] contents differ");
	}
	uintptr_t vclock_lo2, vclock_hi2;
	if (vclock_lo) {
		if (find_named("[vvar_vclock]", &vclock_lo2, &vclock_hi2) < 0)
			fail("no [vvar_vclock] mapping after restore");
		else
			CHECK(vclock_lo2 == vclock_lo && vclock_hi2 == vclock_hi, "[vvar_vclock] is at %#lx-%#lx, was %#lx-%#lx",
			      (unsigned long)vclock_lo2, (unsigned long)vclock_hi2, (unsigned long)vclock_lo,
			      (unsigned long)vclock_hi);
	}
	if (vvar_lo) {
		if (find_named("[vvar]", &lo, &hi) < 0)
			fail("no [vvar] mapping after restore");
		else
			CHECK(lo == vvar_lo && hi == vvar_hi, "[vvar] is at %#lx-%#lx, was %#lx-%#lx", (unsigned long)lo,
			      (unsigned long)hi, (unsigned long)vvar_lo, (unsigned long)vvar_hi);
	}
	CHECK(getauxval(AT_SYSINFO_EHDR) == at_vdso, "getauxval(AT_SYSINFO_EHDR) changed");
	struct timespec rt1, mono1;
	struct timeval tv;
	clock_gettime(CLOCK_REALTIME, &rt1);
	clock_gettime(CLOCK_MONOTONIC, &mono1);
	gettimeofday(&tv, NULL);
	CHECK(mono1.tv_sec >= mono0.tv_sec && mono1.tv_sec < mono0.tv_sec + 3600,
	      "CLOCK_MONOTONIC went from %ld to %ld", (long)mono0.tv_sec, (long)mono1.tv_sec);
	CHECK(rt1.tv_sec >= rt0.tv_sec && rt1.tv_sec < rt0.tv_sec + 3600, "CLOCK_REALTIME went from %ld to %ld",
	      (long)rt0.tv_sec, (long)rt1.tv_sec);
	CHECK(tv.tv_sec >= rt0.tv_sec && tv.tv_sec < rt0.tv_sec + 3600, "gettimeofday went from %ld to %ld",
	      (long)rt0.tv_sec, (long)tv.tv_sec);

	stack_name = name_at((uintptr_t)&local);
	CHECK(stack_name && strcmp(stack_name, "[stack]") == 0, "the stack is labelled %s after restore",
	      stack_name ? stack_name : "(unmapped)");
	heap_name = name_at((uintptr_t)brk1 - 1);
	CHECK(heap_name && strcmp(heap_name, "[heap]") == 0, "the brk area is labelled %s after restore",
	      heap_name ? heap_name : "(unmapped)");

	/* brk still moves */
	if (sbrk(BRK_GROW) == (void *)-1)
		fail("sbrk(+%lu) after restore: %s", BRK_GROW, strerror(errno));
	else {
		memset(brk1, 0x5a, BRK_GROW);
		if (sbrk(-(intptr_t)BRK_GROW) == (void *)-1)
			fail("sbrk(-%lu) after restore: %s", BRK_GROW, strerror(errno));
	}
	finish();
}
