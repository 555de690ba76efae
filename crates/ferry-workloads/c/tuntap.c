/*
 * tuntap: tun/tap devices and the fds of /dev/net/tun attached to them. Run in a network
 * namespace of its own (`ferry run --netns`).
 *
 *   ftap0  a tap device, IFF_NO_PI, multi-queue with two queues (fds QA and QB), QB detached
 *          (TUNSETQUEUE IFF_DETACH_QUEUE), persistent (TUNSETPERSIST) with owner 1234 and
 *          group 4321, hardware address 02:00:00:91:00:01, address 10.91.0.1/24, up.
 *   ftun1  a tun device with packet information and a virtio header (IFF_VNET_HDR, header size
 *          12 set with TUNSETVNETHDRSZ), send buffer 65536 (TUNSETSNDBUF), not persistent,
 *          MTU 1400, address 10.92.0.1/24, up (fd T).
 *   and an fd of /dev/net/tun never attached (fd U).
 *
 * Before ready and again on go: TUNGETIFF on each fd names its device with the same flags as
 * before the dump (QB's with IFF_DETACH_QUEUE; U still attached to nothing), the header size
 * and send buffer are as set; an ARP request for 10.91.0.1 written to QA gets the kernel's
 * reply on QA, and an ICMP echo request from 10.92.0.2 to 10.92.0.1 written to T (behind its
 * packet information and virtio header) gets the kernel's echo reply on T.
 */
#include "common.h"
#include <arpa/inet.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <poll.h>
#include <sys/ioctl.h>

struct seen {
	char name[IFNAMSIZ];
	int flags;
};

static int qa, qb, t, u;
static struct seen qa_was, qb_was, t_was;

static int tun_open(const char *name, int flags)
{
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	SETUP(fd);
	struct ifreq r;
	memset(&r, 0, sizeof r);
	snprintf(r.ifr_name, sizeof r.ifr_name, "%s", name);
	r.ifr_flags = (short)flags;
	SETUP(ioctl(fd, TUNSETIFF, &r));
	return fd;
}

static struct seen iff(int fd)
{
	struct seen s = { "", -1 };
	struct ifreq r;
	memset(&r, 0, sizeof r);
	if (ioctl(fd, TUNGETIFF, &r) == 0) {
		snprintf(s.name, sizeof s.name, "%s", r.ifr_name);
		s.flags = r.ifr_flags & 0xffff;
	}
	return s;
}

static void shell(const char *cmd)
{
	int st = system(cmd);
	if (st != 0)
		die_setup("%s: exit status %d", cmd, st);
}

/* One frame from `fd` that `want` accepts, within 5 s (the wait only bounds a failure). */
static int read_matching(int fd, unsigned char *buf, size_t cap, int (*want)(const unsigned char *, ssize_t))
{
	double end = mono_now() + 5;
	while (mono_now() < end) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 200) != 1)
			continue;
		ssize_t n = read(fd, buf, cap);
		if (n > 0 && want(buf, n))
			return 1;
	}
	return 0;
}

static const unsigned char TAP_MAC[6] = { 2, 0, 0, 0x91, 0, 1 }, PEER_MAC[6] = { 2, 0, 0, 0x91, 0, 2 };

static int arp_reply(const unsigned char *f, ssize_t n)
{
	/* ethernet: type 0x0806; arp: op 2, sender 10.91.0.1 at the tap's address, target 10.91.0.2 */
	static const unsigned char spa[4] = { 10, 91, 0, 1 }, tpa[4] = { 10, 91, 0, 2 };
	return n >= 42 && f[12] == 8 && f[13] == 6 && f[20] == 0 && f[21] == 2 && memcmp(f + 22, TAP_MAC, 6) == 0 &&
	       memcmp(f + 28, spa, 4) == 0 && memcmp(f + 38, tpa, 4) == 0 && memcmp(f, PEER_MAC, 6) == 0;
}

static const char *arp_exchange(void)
{
	unsigned char f[64] = { 0 };
	memset(f, 0xff, 6);
	memcpy(f + 6, PEER_MAC, 6);
	f[12] = 8, f[13] = 6;                    /* ARP */
	f[14] = 0, f[15] = 1, f[16] = 8, f[17] = 0; /* ethernet, IPv4 */
	f[18] = 6, f[19] = 4, f[20] = 0, f[21] = 1; /* request */
	memcpy(f + 22, PEER_MAC, 6);
	f[28] = 10, f[29] = 91, f[30] = 0, f[31] = 2;
	f[38] = 10, f[39] = 91, f[40] = 0, f[41] = 1;
	if (write(qa, f, 42) != 42)
		return "cannot write an ARP request to ftap0's queue";
	unsigned char buf[2048];
	return read_matching(qa, buf, sizeof buf, arp_reply) ? NULL : "no ARP reply from the kernel on ftap0's queue";
}

static unsigned short csum(const unsigned char *p, size_t n)
{
	unsigned long s = 0;
	for (size_t i = 0; i + 1 < n; i += 2)
		s += (unsigned)(p[i] << 8 | p[i + 1]);
	if (n & 1)
		s += (unsigned)(p[n - 1] << 8);
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return (unsigned short)~s;
}

#define HDRS (4 + 12) /* packet information, virtio header */

static int echo_reply(const unsigned char *f, ssize_t n)
{
	const unsigned char *ip = f + HDRS;
	return n >= HDRS + 28 && f[2] == 8 && f[3] == 0 && ip[9] == 1 && ip[12] == 10 && ip[13] == 92 && ip[15] == 1 &&
	       ip[20] == 0 /* echo reply */ && ip[24] == 0x46 && ip[25] == 0x54;
}

static const char *icmp_exchange(void)
{
	unsigned char f[HDRS + 36] = { 0 };
	f[2] = 8, f[3] = 0; /* packet information: IPv4 */
	unsigned char *ip = f + HDRS;
	ip[0] = 0x45, ip[3] = 36, ip[8] = 64, ip[9] = 1;
	ip[12] = 10, ip[13] = 92, ip[14] = 0, ip[15] = 2;
	ip[16] = 10, ip[17] = 92, ip[18] = 0, ip[19] = 1;
	unsigned short c = csum(ip, 20);
	ip[10] = (unsigned char)(c >> 8), ip[11] = (unsigned char)c;
	unsigned char *icmp = ip + 20;
	icmp[0] = 8, icmp[4] = 0x46, icmp[5] = 0x54, icmp[7] = 1;
	memcpy(icmp + 8, "ferrytun", 8);
	c = csum(icmp, 16);
	icmp[2] = (unsigned char)(c >> 8), icmp[3] = (unsigned char)c;
	if (write(t, f, sizeof f) != (ssize_t)sizeof f)
		return "cannot write an ICMP echo request to ftun1";
	unsigned char buf[2048];
	return read_matching(t, buf, sizeof buf, echo_reply) ? NULL : "no ICMP echo reply from the kernel on ftun1";
}

static void check_fd(const char *what, int fd, const struct seen *was, int expect)
{
	struct seen now = iff(fd);
	CHECK(strcmp(now.name, was->name) == 0 && now.flags == was->flags, "%s: TUNGETIFF %s flags %#x, was %s %#x", what,
	      now.name, now.flags, was->name, was->flags);
	CHECK((now.flags & expect) == expect, "%s: flags %#x lack %#x", what, now.flags, expect);
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	qa = tun_open("ftap0", IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE);
	qb = tun_open("ftap0", IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE);
	SETUP(ioctl(qa, TUNSETOWNER, 1234));
	SETUP(ioctl(qa, TUNSETGROUP, 4321));
	SETUP(ioctl(qa, TUNSETPERSIST, 1));
	struct ifreq r;
	memset(&r, 0, sizeof r);
	r.ifr_flags = IFF_DETACH_QUEUE;
	SETUP(ioctl(qb, TUNSETQUEUE, &r));
	t = tun_open("ftun1", IFF_TUN | IFF_VNET_HDR);
	int hdr = 12, sndbuf = 65536;
	SETUP(ioctl(t, TUNSETVNETHDRSZ, &hdr));
	SETUP(ioctl(t, TUNSETSNDBUF, &sndbuf));
	u = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
	SETUP(u);
	shell("ip link set lo up && ip link set ftap0 address 02:00:00:91:00:01 && "
	      "ip addr add 10.91.0.1/24 dev ftap0 && ip link set ftap0 up && "
	      "ip link set ftun1 mtu 1400 && ip addr add 10.92.0.1/24 dev ftun1 && ip link set ftun1 up");
	qa_was = iff(qa), qb_was = iff(qb), t_was = iff(t);
	const char *e;
	if ((e = arp_exchange()) || (e = icmp_exchange()))
		die_setup("before the dump: %s", e);
	signal_ready();
	wait_go();
	check_fd("QA", qa, &qa_was, IFF_TAP | IFF_MULTI_QUEUE | IFF_PERSIST);
	check_fd("QB", qb, &qb_was, IFF_TAP | IFF_MULTI_QUEUE | IFF_PERSIST | IFF_DETACH_QUEUE);
	check_fd("T", t, &t_was, IFF_TUN | IFF_VNET_HDR);
	CHECK((iff(qa).flags & IFF_DETACH_QUEUE) == 0, "QA's queue is detached");
	CHECK((iff(t).flags & IFF_PERSIST) == 0, "ftun1 became persistent");
	struct ifreq none;
	memset(&none, 0, sizeof none);
	CHECK(ioctl(u, TUNGETIFF, &none) < 0 && errno == EBADFD, "U is attached to %s", none.ifr_name);
	CHECK((fcntl(u, F_GETFL) & O_NONBLOCK) != 0, "U lost O_NONBLOCK");
	int now_hdr = 0, now_sndbuf = 0;
	CHECK(ioctl(t, TUNGETVNETHDRSZ, &now_hdr) == 0 && now_hdr == 12, "ftun1's virtio header size is %d", now_hdr);
	CHECK(ioctl(t, TUNGETSNDBUF, &now_sndbuf) == 0 && now_sndbuf == 65536, "ftun1's send buffer is %d", now_sndbuf);
	if ((e = arp_exchange()))
		fail("after the restore: %s", e);
	if ((e = icmp_exchange()))
		fail("after the restore: %s", e);
	finish();
}
