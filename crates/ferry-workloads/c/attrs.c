/*
 * attrs: per-process attributes.
 *   comm           PR_SET_NAME "ferry-attrs"
 *   cwd            W/cwd dir (a name with a space)
 *   umask          027
 *   rlimits        soft values lowered (NOFILE, STACK, CORE, CPU, MEMLOCK, FSIZE, NPROC, MSGQUEUE);
 *                  all 16 limits must read the same
 *   personality    ADDR_NO_RANDOMIZE | UNAME26
 *   no_new_privs   1
 *   dumpable       0
 */
#include "common.h"
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/utsname.h>

static void lower_soft(int res, rlim_t soft)
{
	struct rlimit rl;
	SETUP(getrlimit(res, &rl));
	if (rl.rlim_max != RLIM_INFINITY && soft > rl.rlim_max)
		soft = rl.rlim_max;
	rl.rlim_cur = soft;
	SETUP(setrlimit(res, &rl));
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	char dir[4096];
	snprintf(dir, sizeof dir, "%s/cwd dir", W);
	SETUP(mkdir(dir, 0755));
	SETUP(chdir(dir));
	SETUP(prctl(PR_SET_NAME, "ferry-attrs", 0, 0, 0));
	umask(027);
	lower_soft(RLIMIT_NOFILE, 900);
	lower_soft(RLIMIT_STACK, 6UL << 20);
	lower_soft(RLIMIT_CORE, 1UL << 20);
	lower_soft(RLIMIT_CPU, 100000);
	lower_soft(RLIMIT_MEMLOCK, 32UL << 10);
	lower_soft(RLIMIT_FSIZE, 1UL << 40);
	lower_soft(RLIMIT_NPROC, 4321);
	lower_soft(RLIMIT_MSGQUEUE, 400000);
	int pers0 = ADDR_NO_RANDOMIZE | UNAME26;
	SETUP(personality((unsigned long)pers0));
	SETUP(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
	SETUP(prctl(PR_SET_DUMPABLE, 0, 0, 0, 0));

	struct rlimit lim0[RLIM_NLIMITS];
	for (int r = 0; r < RLIM_NLIMITS; r++)
		SETUP(getrlimit(r, &lim0[r]));
	char cwd0[4096], umask0[64], limits0[8192], comm0[64];
	struct stat cwd_st0;
	if (!getcwd(cwd0, sizeof cwd0))
		die_setup("getcwd: %s", strerror(errno));
	SETUP(stat(".", &cwd_st0));
	SETUP(status_line("Umask:", umask0, sizeof umask0));
	SETUP(read_file("/proc/self/limits", limits0, sizeof limits0));
	SETUP(read_file("/proc/self/comm", comm0, sizeof comm0));
	struct utsname uts0;
	SETUP(uname(&uts0));
	fprintf(stderr, "attrs: cwd %s, %s, personality %#x, uname release %s\n", cwd0, umask0, pers0, uts0.release);

	signal_ready();
	wait_go();

	char name[17] = { 0 };
	prctl(PR_GET_NAME, name, 0, 0, 0);
	CHECK(strcmp(name, "ferry-attrs") == 0, "comm is \"%s\", was \"ferry-attrs\"", name);
	char buf[8192];
	CHECK(read_file("/proc/self/comm", buf, sizeof buf) >= 0 && strcmp(buf, comm0) == 0,
	      "/proc/self/comm is \"%s\", was \"%s\"", buf, comm0);

	char cwd[4096];
	struct stat st;
	if (!getcwd(cwd, sizeof cwd))
		fail("getcwd: %s", strerror(errno));
	else
		CHECK(strcmp(cwd, cwd0) == 0, "cwd is %s, was %s", cwd, cwd0);
	CHECK(stat(".", &st) == 0 && st.st_ino == cwd_st0.st_ino && st.st_dev == cwd_st0.st_dev,
	      "cwd is not the same directory");

	CHECK(status_line("Umask:", buf, sizeof buf) == 0 && strcmp(buf, umask0) == 0, "%s, was %s", buf, umask0);
	mode_t um = umask(0);
	umask(um);
	CHECK(um == 027, "umask is %03o, was 027", um);

	for (int r = 0; r < RLIM_NLIMITS; r++) {
		struct rlimit rl;
		if (getrlimit(r, &rl) < 0)
			fail("getrlimit(%d): %s", r, strerror(errno));
		else
			CHECK(rl.rlim_cur == lim0[r].rlim_cur && rl.rlim_max == lim0[r].rlim_max,
			      "rlimit %d is %llu/%llu, was %llu/%llu", r, (unsigned long long)rl.rlim_cur,
			      (unsigned long long)rl.rlim_max, (unsigned long long)lim0[r].rlim_cur,
			      (unsigned long long)lim0[r].rlim_max);
	}
	CHECK(read_file("/proc/self/limits", buf, sizeof buf) >= 0 && strcmp(buf, limits0) == 0,
	      "/proc/self/limits differs");

	int pers = personality(0xffffffff);
	CHECK(pers == pers0, "personality is %#x, was %#x", pers, pers0);
	struct utsname uts;
	CHECK(uname(&uts) == 0 && strcmp(uts.release, uts0.release) == 0, "uname release is %s, was %s", uts.release,
	      uts0.release);
	int nnp = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
	CHECK(nnp == 1, "no_new_privs is %d, was 1", nnp);
	int dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
	CHECK(dumpable == 0, "dumpable is %d, was 0", dumpable);
	finish();
}
