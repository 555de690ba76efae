/*
 * nsjob: a job in its own network and time namespaces (ferry run --pidns --netns --timens).
 *
 * Before ready it waits for W/setup (the harness configures the namespace from outside, then
 * creates that file), then records its view of the namespace: every interface with its index,
 * flags, MTU, hardware address and addresses (getifaddrs; IPv6 link-local addresses, which
 * the kernel makes itself, left out), the IPv4 and IPv6 routes (/proc/net/route and
 * /proc/net/ipv6_route without their use counters; lines sorted), a few sysctls. It listens on 127.0.0.1 (TCP, port chosen
 * by the kernel), holds a UDP socket bound there and a unix socket pair with a byte queued.
 * Then it reads CLOCK_MONOTONIC, CLOCK_BOOTTIME and CLOCK_REALTIME every 20 ms and writes
 * W/rounds ("N longest_step_ms") every 0.5 s until go.
 *
 * On go: its view must read the same, a client must connect to its listener through lo, a
 * datagram sent to its UDP socket must come back, the queued byte must be there, and no step of
 * CLOCK_MONOTONIC or CLOCK_BOOTTIME may have gone backwards or differed from the same step of
 * CLOCK_REALTIME by more than 1 s. A restore that copies the namespace's offsets to a machine
 * whose clocks read otherwise (booted at another time) makes them jump by the difference; one
 * that leaves the time namespace out makes them jump to the host's values.
 */
#include "common.h"
#include <ifaddrs.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

static int by_line(const void *x, const void *y)
{
	return strcmp(*(char *const *)x, *(char *const *)y);
}

/* The lines of the view in order (the kernel lists IPv6 routes in the order of its tree, which
 * depends on when each was added). */
static char *sorted(char *buf)
{
	static char out[65536];
	char *lines[2048], *save = NULL, *l;
	size_t n = 0, o = 0;
	for (l = strtok_r(buf, "\n", &save); l && n < 2048; l = strtok_r(NULL, "\n", &save))
		lines[n++] = l;
	qsort(lines, n, sizeof lines[0], by_line);
	out[0] = 0;
	for (size_t i = 0; i < n && o < sizeof out; i++)
		o += (size_t)snprintf(out + o, sizeof out - o, "%s\n", lines[i]);
	return out;
}

static char *view(void)
{
	static char buf[65536];
	size_t n = 0;
	buf[0] = 0;
#define ADD(...) n += (size_t)snprintf(buf + n, n < sizeof buf ? sizeof buf - n : 0, __VA_ARGS__)
	struct ifaddrs *ifa, *i;
	if (getifaddrs(&ifa) < 0) {
		ADD("getifaddrs: %s\n", strerror(errno));
		return buf;
	}
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	for (i = ifa; i; i = i->ifa_next) {
		char a[INET6_ADDRSTRLEN] = "-";
		int fam = i->ifa_addr ? i->ifa_addr->sa_family : -1;
		if (fam == AF_INET)
			inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, a, sizeof a);
		else if (fam == AF_INET6) {
			struct in6_addr *x = &((struct sockaddr_in6 *)i->ifa_addr)->sin6_addr;
			if (IN6_IS_ADDR_LINKLOCAL(x))
				continue;
			inet_ntop(AF_INET6, x, a, sizeof a);
		} else if (fam != AF_PACKET)
			continue;
		struct ifreq r;
		memset(&r, 0, sizeof r);
		snprintf(r.ifr_name, sizeof r.ifr_name, "%s", i->ifa_name);
		int mtu = (s >= 0 && ioctl(s, SIOCGIFMTU, &r) == 0) ? r.ifr_mtu : -1;
		if (fam == AF_PACKET) {
			/* the hardware address */
			struct sockaddr_ll *ll = (struct sockaddr_ll *)i->ifa_addr;
			size_t o = 0;
			for (int b = 0; b < ll->sll_halen && b < 8; b++)
				o += (size_t)snprintf(a + o, sizeof a - o, "%02x%s", ll->sll_addr[b],
						      b + 1 < ll->sll_halen ? ":" : "");
		}
		ADD("if %s index %u flags %#x mtu %d family %d addr %s\n", i->ifa_name, if_nametoindex(i->ifa_name),
		    i->ifa_flags, mtu, fam, a);
	}
	if (s >= 0)
		close(s);
	freeifaddrs(ifa);
	const char *files[] = { "/proc/net/route", "/proc/net/ipv6_route", "/proc/sys/net/ipv4/ip_forward",
				"/proc/sys/net/ipv4/ping_group_range" };
	for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
		FILE *fp = fopen(files[f], "r");
		if (!fp) {
			ADD("%s: %s\n", files[f], strerror(errno));
			continue;
		}
		char line[512];
		while (fgets(line, sizeof line, fp)) {
			/* drop the use counters: route RefCnt/Use (words 5, 6), ipv6_route refcnt/use (7, 8) */
			char out[512] = "", *save = NULL, *w;
			int k = 0;
			for (w = strtok_r(line, " \t\n", &save); w; w = strtok_r(NULL, " \t\n", &save), k++) {
				if ((f == 0 && (k == 4 || k == 5)) || (f == 1 && (k == 6 || k == 7)))
					continue;
				strncat(out, w, sizeof out - strlen(out) - 2);
				strcat(out, " ");
			}
			ADD("%s: %s\n", files[f], out);
		}
		fclose(fp);
	}
	return sorted(buf);
}

static int64_t now_ns(clockid_t c)
{
	struct timespec ts;
	clock_gettime(c, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	char setup[4096];
	snprintf(setup, sizeof setup, "%s/setup", W);
	for (int t = 0; access(setup, F_OK) != 0; t++) {
		if (t > 6000)
			die_setup("no %s after 60 s", setup);
		usleep(10000);
	}
	char *before = strdup(view());
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof sa;
	SETUP(l);
	SETUP(bind(l, (struct sockaddr *)&sa, sizeof sa));
	SETUP(listen(l, 4));
	SETUP(getsockname(l, (struct sockaddr *)&sa, &sl));
	/* a UDP socket bound on lo and a unix pair with a byte queued: ferry looks both up with
	 * sock_diag, which must ask in the job's namespace */
	int u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in ua = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t ul = sizeof ua;
	SETUP(u);
	SETUP(bind(u, (struct sockaddr *)&ua, sizeof ua));
	SETUP(getsockname(u, (struct sockaddr *)&ua, &ul));
	int up[2];
	SETUP(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, up));
	SETUP(write(up[0], "n", 1));
	fprintf(stderr, "view:\n%s", before);
	signal_ready();

	int64_t pm = now_ns(CLOCK_MONOTONIC), pb = now_ns(CLOCK_BOOTTIME), pr = now_ns(CLOCK_REALTIME);
	int64_t worst = 0, longest = 0, last_write = pr;
	unsigned long rounds = 0;
	char what[256] = "";
	while (!go) {
		struct timespec ts = { 0, 20 * 1000 * 1000 };
		nanosleep(&ts, NULL);
		int64_t m = now_ns(CLOCK_MONOTONIC), b = now_ns(CLOCK_BOOTTIME), r = now_ns(CLOCK_REALTIME);
		int64_t dm = m - pm, db = b - pb, dr = r - pr;
		int64_t em = llabs(dm - dr), eb = llabs(db - dr);
		if (dm < 0 || db < 0 || em > worst || eb > worst) {
			if (em > worst || eb > worst)
				worst = em > eb ? em : eb;
			snprintf(what, sizeof what,
				 "a clock step of monotonic %+.3f s, boottime %+.3f s while realtime moved %+.3f s",
				 dm / 1e9, db / 1e9, dr / 1e9);
			if (dm < 0 || db < 0 || worst > 1000000000LL)
				fprintf(stderr, "%s\n", what);
		}
		if (dm > longest)
			longest = dm;
		pm = m, pb = b, pr = r;
		rounds++;
		if (r - last_write > 500000000LL) {
			char line[64];
			snprintf(line, sizeof line, "%lu %lld\n", rounds, (long long)(longest / 1000000));
			write_file_atomic("rounds", line);
			last_write = r;
		}
	}
	CHECK(worst <= 1000000000LL, "%s", what);
	char *after = view();
	if (strcmp(before, after) != 0) {
		/* the first line that differs, in the result; both views in the log */
		const char *b = before, *a = after;
		while (*b && *b == *a)
			b++, a++;
		while (b > before && b[-1] != '\n')
			b--, a--;
		fprintf(stderr, "view after:\n%s", after);
		fail("the network namespace changed: %.*s became %.*s", (int)strcspn(b, "\n"), b, (int)strcspn(a, "\n"), a);
	}
	int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&sa, sizeof sa) < 0)
		fail("cannot connect to my listener 127.0.0.1:%d: %s", ntohs(sa.sin_port), strerror(errno));
	else {
		int a = accept(l, NULL, NULL);
		CHECK(a >= 0, "accept on my listener: %s", strerror(errno));
	}
	if (sendto(u, "d", 1, 0, (struct sockaddr *)&ua, sizeof ua) != 1)
		fail("sendto my UDP socket 127.0.0.1:%d: %s", ntohs(ua.sin_port), strerror(errno));
	else {
		char d = 0;
		CHECK(recv(u, &d, 1, MSG_DONTWAIT) == 1 && d == 'd', "no datagram back on my UDP socket");
	}
	char nb = 0;
	CHECK(read(up[1], &nb, 1) == 1 && nb == 'n', "the byte queued in my unix pair is gone");
	fprintf(stderr, "longest clock step %.3f s, worst clock disagreement %.3f s\n", longest / 1e9, worst / 1e9);
	finish();
}
