/*
 * procattrs MODE: one process attribute per mode, set before ready, checked after go.
 *   oom          oom_score_adj set to 345 (/proc/self/oom_score_adj reads 345; `oom_score` follows)
 *   loginuid     /proc/self/loginuid written to 4242 (root with CAP_AUDIT_CONTROL): reads 4242
 *   thp          prctl(PR_SET_THP_DISABLE, 1): PR_GET_THP_DISABLE returns 1 and /proc/self/status
 *                says THP_enabled: 0
 *   membarrier   registered for PRIVATE_EXPEDITED, GLOBAL_EXPEDITED and PRIVATE_EXPEDITED_SYNC_CORE:
 *                MEMBARRIER_CMD_GET_REGISTRATIONS returns the same bits, and the private expedited
 *                barriers (plain and SYNC_CORE) succeed (they fail with EPERM unregistered)
 *   timerfd      a periodic timerfd (10 ms) left unread for 300 ms before ready: after go, the
 *                first read returns at least the 30 expirations that happened before ready, and
 *                the timer keeps running (a later read within 1 s returns at least 1 more); and a
 *                one-shot timerfd armed for 1 h is still armed (remaining time between 1 h minus
 *                the time since it was armed, and 1 h)
 *   pty          a pty pair (posix_openpt) whose slave node is given to uid 1234, gid 5678, mode
 *                0620 (fchown/fchmod on the slave fd): after go the slave fd and the /dev/pts node
 *                of the master's pair (TIOCGPTN: its index may change) have that owner and mode
 *   status       nothing set: every line of /proc/self/status must read the same after restore,
 *                but those that change by design (PPid: the restored process's parent is ferry;
 *                State; memory sizes and high-water marks; context switch counts; FDSize, the fd
 *                table's capacity; SigQ's first number, the signals queued for the whole real
 *                uid, which other processes of root change), which docs/ARCHITECTURE.md names
 *   timens       unshare(CLONE_NEWTIME): its future children would be in another time namespace
 *                (the check after go is that it still is so; the namespace is a new one then)
 *   pidns        the same with unshare(CLONE_NEWPID) (pid_for_children, pending: the same)
 */
#include "common.h"
#include <linux/membarrier.h>
#include <poll.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/ioctl.h>
#include <sys/timerfd.h>

#ifndef MEMBARRIER_CMD_GET_REGISTRATIONS
#define MEMBARRIER_CMD_GET_REGISTRATIONS (1 << 9)
#endif
#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

static int membarrier(int cmd, unsigned flags)
{
	return (int)syscall(SYS_membarrier, cmd, flags, 0);
}

static long read_long(const char *path)
{
	char buf[64];
	if (read_file(path, buf, sizeof buf) < 0)
		return -1;
	return strtol(buf, NULL, 10);
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	const char *mode = argc > 2 ? argv[2] : "";
	int tfd = -1, ofd = -1, pm = -1, ps = -1;
	double armed_at = 0;
	int want_regs = 0;
	char ns0[256] = { 0 }, nsc0[256] = { 0 };
	static char status0[16384];

	if (strcmp(mode, "oom") == 0) {
		int fd = open("/proc/self/oom_score_adj", O_WRONLY);
		SETUP(fd);
		SETUP((int)write(fd, "345", 3));
		close(fd);
		if (read_long("/proc/self/oom_score_adj") != 345)
			die_setup("oom_score_adj did not take");
	} else if (strcmp(mode, "loginuid") == 0) {
		int fd = open("/proc/self/loginuid", O_WRONLY);
		SETUP(fd);
		SETUP((int)write(fd, "4242", 4));
		close(fd);
		if (read_long("/proc/self/loginuid") != 4242)
			die_setup("loginuid did not take");
	} else if (strcmp(mode, "thp") == 0) {
		SETUP(prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0));
		if (prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) != 1)
			die_setup("PR_SET_THP_DISABLE did not take");
	} else if (strcmp(mode, "membarrier") == 0) {
		int cmds[] = { MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED,
			       MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE };
		for (unsigned i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
			SETUP(membarrier(cmds[i], 0));
			want_regs |= cmds[i];
		}
		int regs = membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS, 0);
		if (regs != want_regs)
			die_setup("GET_REGISTRATIONS %#x, registered %#x", regs, want_regs);
	} else if (strcmp(mode, "timerfd") == 0) {
		tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
		SETUP(tfd);
		struct itimerspec its = { { 0, 10 * 1000 * 1000 }, { 0, 10 * 1000 * 1000 } };
		SETUP(timerfd_settime(tfd, 0, &its, NULL));
		ofd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
		SETUP(ofd);
		struct itimerspec one = { { 0, 0 }, { 3600, 0 } };
		SETUP(timerfd_settime(ofd, 0, &one, NULL));
		armed_at = mono_now();
		struct timespec ts = { 0, 300 * 1000 * 1000 };
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
	} else if (strcmp(mode, "pty") == 0) {
		pm = posix_openpt(O_RDWR | O_NOCTTY);
		SETUP(pm);
		SETUP(grantpt(pm));
		SETUP(unlockpt(pm));
		ps = open(ptsname(pm), O_RDWR | O_NOCTTY);
		SETUP(ps);
		SETUP(fchown(ps, 1234, 5678));
		SETUP(fchmod(ps, 0620));
	} else if (strcmp(mode, "status") == 0) {
		SETUP(read_file("/proc/self/status", status0, sizeof status0));
	} else if (strcmp(mode, "timens") == 0 || strcmp(mode, "pidns") == 0) {
		int pid = strcmp(mode, "pidns") == 0;
		SETUP(unshare(pid ? CLONE_NEWPID : CLONE_NEWTIME));
		SETUP((int)readlink(pid ? "/proc/self/ns/pid" : "/proc/self/ns/time", ns0, sizeof ns0 - 1));
		/* (a new pid namespace has no link until its first process: ENOENT) */
		if (readlink(pid ? "/proc/self/ns/pid_for_children" : "/proc/self/ns/time_for_children", nsc0,
			     sizeof nsc0 - 1) < 0) {
			if (!pid || errno != ENOENT)
				die_setup("readlink ns for children: %s", strerror(errno));
			strcpy(nsc0, "(none)");
		}
		if (strcmp(ns0, nsc0) == 0)
			die_setup("unshare(%s) left the namespace for children as it was", mode);
	} else {
		die_setup("unknown mode %s", mode);
	}

	signal_ready();
	wait_go();

	if (strcmp(mode, "oom") == 0) {
		long v = read_long("/proc/self/oom_score_adj");
		CHECK(v == 345, "oom_score_adj is %ld, was 345", v);
	} else if (strcmp(mode, "loginuid") == 0) {
		long v = read_long("/proc/self/loginuid");
		CHECK(v == 4242, "loginuid is %ld, was 4242", v);
	} else if (strcmp(mode, "thp") == 0) {
		int v = prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0);
		CHECK(v == 1, "PR_GET_THP_DISABLE is %d, was 1", v);
		char line[128];
		CHECK(status_line("THP_enabled:", line, sizeof line) == 0 && strstr(line, "0"), "/proc/self/status: %s",
		      line);
	} else if (strcmp(mode, "membarrier") == 0) {
		int regs = membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS, 0);
		CHECK(regs == want_regs, "membarrier registrations are %#x, were %#x", regs, want_regs);
		CHECK(membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0) == 0, "MEMBARRIER_CMD_PRIVATE_EXPEDITED: %s",
		      strerror(errno));
		CHECK(membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE, 0) == 0,
		      "MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE: %s", strerror(errno));
	} else if (strcmp(mode, "timerfd") == 0) {
		uint64_t n = 0;
		ssize_t r = read(tfd, &n, sizeof n);
		CHECK(r == 8 && n >= 30, "the periodic timerfd read gives %llu expirations (%zd), at least 30 expired before ready",
		      (unsigned long long)n, r);
		struct pollfd pfd = { tfd, POLLIN, 0 };
		int p = poll(&pfd, 1, 1000);
		n = 0;
		r = p == 1 ? read(tfd, &n, sizeof n) : -1;
		CHECK(p == 1 && r == 8 && n >= 1, "the periodic timerfd did not expire again within 1 s (poll %d, read %zd)",
		      p, r);
		struct itimerspec cur;
		SETUP(timerfd_gettime(ofd, &cur));
		double left = (double)cur.it_value.tv_sec + (double)cur.it_value.tv_nsec / 1e9;
		double since = mono_now() - armed_at;
		CHECK(left <= 3600 && left >= 3600 - since - 1, "the one-shot timerfd has %.3f s left, armed for 1 h %.3f s ago",
		      left, since);
	} else if (strcmp(mode, "pty") == 0) {
		struct stat st;
		CHECK(fstat(ps, &st) == 0 && st.st_uid == 1234 && st.st_gid == 5678 && (st.st_mode & 07777) == 0620,
		      "the pty slave is %u:%u mode %o, was 1234:5678 mode 620", st.st_uid, st.st_gid, st.st_mode & 07777);
		int n = -1;
		char node[64];
		SETUP(ioctl(pm, TIOCGPTN, &n));
		snprintf(node, sizeof node, "/dev/pts/%d", n);
		CHECK(stat(node, &st) == 0 && st.st_uid == 1234 && st.st_gid == 5678 && (st.st_mode & 07777) == 0620,
		      "%s is %u:%u mode %o, was 1234:5678 mode 620", node, st.st_uid, st.st_gid, st.st_mode & 07777);
	} else if (strcmp(mode, "status") == 0) {
		static char now[16384];
		SETUP(read_file("/proc/self/status", now, sizeof now));
		static const char *skip[] = { "PPid:", "State:", "Vm", "Rss", "voluntary_ctxt_switches:",
					      "nonvoluntary_ctxt_switches:", "FDSize:", "SigQ:", NULL };
		for (char *a = status0, *b = now; a && *a;) {
			char *na = strchr(a, '\n'), *nb = b ? strchr(b, '\n') : NULL;
			if (na)
				*na = 0;
			if (nb)
				*nb = 0;
			int skipped = 0;
			for (int i = 0; skip[i]; i++)
				skipped |= strncmp(a, skip[i], strlen(skip[i])) == 0;
			if (!skipped)
				CHECK(b && strcmp(a, b) == 0, "/proc/self/status: \"%s\" was \"%s\"", b ? b : "(none)", a);
			a = na ? na + 1 : NULL;
			b = nb ? nb + 1 : NULL;
		}
	} else if (strcmp(mode, "timens") == 0 || strcmp(mode, "pidns") == 0) {
		int pid = strcmp(mode, "pidns") == 0;
		char ns[256] = { 0 }, nsc[256] = { 0 };
		CHECK(readlink(pid ? "/proc/self/ns/pid" : "/proc/self/ns/time", ns, sizeof ns - 1) > 0 &&
			      strcmp(ns, ns0) == 0,
		      "ns %s, was %s", ns, ns0);
		if (readlink(pid ? "/proc/self/ns/pid_for_children" : "/proc/self/ns/time_for_children", nsc,
			     sizeof nsc - 1) < 0)
			strcpy(nsc, "(none)");
		/* (a time namespace for children is made again: a new inode, still not its own) */
		if (pid)
			CHECK(strcmp(nsc, nsc0) == 0, "ns for children %s, was %s", nsc, nsc0);
		else
			CHECK(strcmp(nsc, ns) != 0, "ns for children %s is its own again (was %s)", nsc, nsc0);
	}
	finish();
}
