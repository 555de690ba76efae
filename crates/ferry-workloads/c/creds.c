/*
 * creds: credentials (needs root to set up).
 *   groups        27 1001 1002 1003
 *   gids          real 1000, effective 1001, saved 1002
 *   uids          real 1000, effective 1001, saved 1002 (kept capabilities: PR_SET_KEEPCAPS)
 *   capabilities  permitted {CHOWN, KILL, NET_BIND_SERVICE, NET_RAW}, effective {KILL,
 *                 NET_BIND_SERVICE}, inheritable {NET_BIND_SERVICE}, ambient {NET_BIND_SERVICE},
 *                 CAP_SYS_BOOT dropped from the bounding set
 *   securebits    keep-caps set
 *   dumpable      set back to 1 after the uid change (a restorer must set it after the creds)
 * The result file is written as uid 1001: the harness makes W mode 0777.
 */
#include "common.h"
#include <grp.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

static const char *status_keys[] = { "Uid:", "Gid:", "Groups:", "CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:", "NoNewPrivs:" };
#define NKEYS (sizeof status_keys / sizeof status_keys[0])

static int get_caps(struct __user_cap_data_struct d[2])
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	memset(d, 0, 2 * sizeof d[0]);
	return (int)syscall(SYS_capget, &h, d);
}

#define BIT(c) (1u << (c))

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	if (geteuid() != 0)
		die_setup("creds must start as root (euid %d)", (int)geteuid());
	const gid_t groups0[] = { 27, 1001, 1002, 1003 }; /* the kernel keeps them sorted */
	SETUP(setgroups(4, groups0));
	SETUP(setresgid(1000, 1001, 1002));
	SETUP(prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0));
	SETUP(prctl(PR_CAPBSET_DROP, CAP_SYS_BOOT, 0, 0, 0));
	SETUP(setresuid(1000, 1001, 1002));
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];
	memset(d, 0, sizeof d);
	d[0].permitted = BIT(CAP_CHOWN) | BIT(CAP_KILL) | BIT(CAP_NET_BIND_SERVICE) | BIT(CAP_NET_RAW);
	d[0].effective = BIT(CAP_KILL) | BIT(CAP_NET_BIND_SERVICE);
	d[0].inheritable = BIT(CAP_NET_BIND_SERVICE);
	SETUP((int)syscall(SYS_capset, &h, d));
	SETUP(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0));
	SETUP(prctl(PR_SET_DUMPABLE, 1, 0, 0, 0));

	char status0[NKEYS][512];
	for (size_t i = 0; i < NKEYS; i++)
		SETUP(status_line(status_keys[i], status0[i], sizeof status0[i]));
	struct __user_cap_data_struct caps0[2];
	SETUP(get_caps(caps0));
	int securebits0 = prctl(PR_GET_SECUREBITS, 0, 0, 0, 0);
	SETUP(securebits0);
	for (size_t i = 0; i < NKEYS; i++)
		fprintf(stderr, "creds: %s\n", status0[i]);
	fprintf(stderr, "creds: securebits %#x\n", securebits0);

	signal_ready();
	wait_go();

	char line[512];
	for (size_t i = 0; i < NKEYS; i++) {
		if (status_line(status_keys[i], line, sizeof line) < 0)
			fail("no %s line in /proc/self/status", status_keys[i]);
		else
			CHECK(strcmp(line, status0[i]) == 0, "\"%s\", was \"%s\"", line, status0[i]);
	}
	uid_t ru, eu, su;
	gid_t rg, eg, sg;
	CHECK(getresuid(&ru, &eu, &su) == 0 && ru == 1000 && eu == 1001 && su == 1002, "uids are %d/%d/%d, were 1000/1001/1002",
	      (int)ru, (int)eu, (int)su);
	CHECK(getresgid(&rg, &eg, &sg) == 0 && rg == 1000 && eg == 1001 && sg == 1002, "gids are %d/%d/%d, were 1000/1001/1002",
	      (int)rg, (int)eg, (int)sg);
	CHECK(setfsuid((uid_t)-1) == 1001, "fsuid is %d, was 1001", setfsuid((uid_t)-1));
	CHECK(setfsgid((gid_t)-1) == 1001, "fsgid is %d, was 1001", setfsgid((gid_t)-1));
	gid_t groups[64];
	int ng = getgroups(64, groups);
	CHECK(ng == 4 && memcmp(groups, groups0, sizeof groups0) == 0, "%d supplementary groups, expected 27 1001 1002 1003", ng);
	struct __user_cap_data_struct caps[2];
	if (get_caps(caps) < 0)
		fail("capget: %s", strerror(errno));
	else
		CHECK(memcmp(caps, caps0, sizeof caps) == 0, "capabilities: effective %#x permitted %#x inheritable %#x, were %#x %#x %#x",
		      caps[0].effective, caps[0].permitted, caps[0].inheritable, caps0[0].effective, caps0[0].permitted,
		      caps0[0].inheritable);
	CHECK(prctl(PR_CAPBSET_READ, CAP_SYS_BOOT, 0, 0, 0) == 0, "CAP_SYS_BOOT is back in the bounding set");
	CHECK(prctl(PR_CAPBSET_READ, CAP_CHOWN, 0, 0, 0) == 1, "CAP_CHOWN is missing from the bounding set");
	CHECK(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, CAP_NET_BIND_SERVICE, 0, 0) == 1, "ambient CAP_NET_BIND_SERVICE lost");
	int sb = prctl(PR_GET_SECUREBITS, 0, 0, 0, 0);
	CHECK(sb == securebits0, "securebits are %#x, were %#x", sb, securebits0);
	CHECK(prctl(PR_GET_KEEPCAPS, 0, 0, 0, 0) == 1, "keep-caps is not set");
	CHECK(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 1, "dumpable is %d, was 1", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
	/* behaviour: CAP_KILL lets uid 1001 signal pid 1 (root); without it, EPERM */
	CHECK(kill(1, 0) == 0, "kill(1, 0) failed (%s): CAP_KILL not effective", strerror(errno));
	finish();
}
