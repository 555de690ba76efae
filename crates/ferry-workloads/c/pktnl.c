/*
 * pktnl MODE: packet and netlink sockets.
 *   packet:  P1 (SOCK_RAW, ethertype E = 0xa000 + pid % 4096, bound to lo, PACKET_AUXDATA and
 *            PACKET_IGNORE_OUTGOING on, member of multicast 01:00:5e:7f:P:P on lo) and P2
 *            (SOCK_DGRAM, no protocol, SO_RCVBUF 64 KiB). After go: P1 is bound to E on lo,
 *            its options are set, lo lists its multicast address in /proc/net/dev_mcast, P2's
 *            buffer is as set, and a frame P2 sends to E on lo reaches P1 with its payload.
 *   netlink: N1 (NETLINK_ROUTE, autobound, groups 26 and 33 joined, NETLINK_EXT_ACK on,
 *            SO_RCVBUF 96 KiB); N2 (NETLINK_USERSOCK bound to port 0x7e000000 + pid) and N3
 *            (NETLINK_USERSOCK, connected to N2, autobound). After go: every port id, group,
 *            option and peer is as before, N1 answers an RTM_GETLINK dump, and N3's message
 *            reaches N2 from N3's port.
 *   ring:    a packet socket with a PACKET_RX_RING (no protocol: nothing arrives): dump must
 *            refuse it; after go the ring is still there (PACKET_VERSION cannot change: EBUSY).
 *   fanout:  F1 and F2, packet sockets bound to an unused ethertype E on lo, in one fanout
 *            group (PACKET_FANOUT_LB with the ROLLOVER flag, id pid & 0xffff); F3 bound to E too,
 *            alone in a group whose id the kernel chose (PACKET_FANOUT_FLAG_UNIQUEID). After go
 *            each reads back its PACKET_FANOUT value (id, type, flags), and of 8 frames sent to E
 *            on lo F1 and F2 share the 8 (round robin: both get some, neither all) while F3
 *            gets all 8 (a group of its own): sockets restored outside their group, or each in a
 *            group of its own, would each get all 8.
 *   fanout_bpf: a packet socket in a PACKET_FANOUT_CBPF group (its program steers the frames
 *            and cannot be read back): dump must refuse it; after go it is still in the group.
 *   audit:   a NETLINK_AUDIT socket: dump must refuse it; after go it is still one.
 */
#include "common.h"
#include <arpa/inet.h>
#include <linux/filter.h>
#include <linux/if_packet.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <poll.h>
#include <sys/socket.h>

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif

static int geti(int fd, int level, int name)
{
	int v = -1;
	socklen_t l = sizeof v;
	if (getsockopt(fd, level, name, &v, &l) < 0)
		return -1000 - errno;
	return v;
}

static int readable(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	return poll(&p, 1, ms) == 1 && (p.revents & POLLIN);
}

/* Whether /proc/net/dev_mcast lists `hex` on lo. */
static int lo_has_mcast(const char *hex)
{
	FILE *f = fopen("/proc/net/dev_mcast", "r");
	if (!f)
		return 0;
	char line[256], dev[64], addr[64];
	int idx, users, global, found = 0;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "%d %63s %d %d %63s", &idx, dev, &users, &global, addr) == 5 && strcmp(dev, "lo") == 0 &&
		    strcmp(addr, hex) == 0)
			found = 1;
	fclose(f);
	return found;
}

static void mode_packet(void)
{
	int lo = (int)if_nametoindex("lo");
	if (lo <= 0)
		die_setup("no lo");
	uint16_t eth = (uint16_t)(0xa000 + getpid() % 4096);
	int p1 = socket(AF_PACKET, SOCK_RAW, htons(eth));
	SETUP(p1);
	struct sockaddr_ll ll = { .sll_family = AF_PACKET, .sll_protocol = htons(eth), .sll_ifindex = lo };
	SETUP(bind(p1, (struct sockaddr *)&ll, sizeof ll));
	int one = 1;
	SETUP(setsockopt(p1, SOL_PACKET, PACKET_AUXDATA, &one, sizeof one));
	SETUP(setsockopt(p1, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one));
	unsigned char mc[6] = { 0x01, 0x00, 0x5e, 0x7f, (unsigned char)(getpid() >> 8), (unsigned char)getpid() };
	struct packet_mreq mr = { .mr_ifindex = lo, .mr_type = PACKET_MR_MULTICAST, .mr_alen = 6 };
	memcpy(mr.mr_address, mc, 6);
	SETUP(setsockopt(p1, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr));
	char hex[16];
	snprintf(hex, sizeof hex, "%02x%02x%02x%02x%02x%02x", mc[0], mc[1], mc[2], mc[3], mc[4], mc[5]);
	if (!lo_has_mcast(hex))
		die_setup("lo does not list %s after PACKET_ADD_MEMBERSHIP", hex);
	int p2 = socket(AF_PACKET, SOCK_DGRAM, 0);
	SETUP(p2);
	int buf = 64 * 1024;
	SETUP(setsockopt(p2, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf));
	int rcvbuf = geti(p2, SOL_SOCKET, SO_RCVBUF);

	signal_ready();
	wait_go();

	struct sockaddr_ll got;
	socklen_t len = sizeof got;
	CHECK(getsockname(p1, (struct sockaddr *)&got, &len) == 0 && got.sll_ifindex == lo &&
		      got.sll_protocol == htons(eth),
	      "P1: bound to ifindex %d protocol %#x, want %d %#x", got.sll_ifindex, ntohs(got.sll_protocol), lo, eth);
	CHECK(geti(p1, SOL_SOCKET, SO_TYPE) == SOCK_RAW, "P1: not SOCK_RAW");
	CHECK(geti(p1, SOL_PACKET, PACKET_AUXDATA) == 1, "P1: PACKET_AUXDATA lost");
	CHECK(geti(p1, SOL_PACKET, PACKET_IGNORE_OUTGOING) == 1, "P1: PACKET_IGNORE_OUTGOING lost");
	CHECK(lo_has_mcast(hex), "P1: lo no longer lists the multicast address %s", hex);
	CHECK(geti(p2, SOL_SOCKET, SO_TYPE) == SOCK_DGRAM, "P2: not SOCK_DGRAM");
	CHECK(geti(p2, SOL_SOCKET, SO_RCVBUF) == rcvbuf, "P2: SO_RCVBUF %d, want %d", geti(p2, SOL_SOCKET, SO_RCVBUF),
	      rcvbuf);
	struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_protocol = htons(eth), .sll_ifindex = lo, .sll_halen = 6 };
	CHECK(sendto(p2, "ferry-frame", 11, 0, (struct sockaddr *)&to, sizeof to) == 11, "P2: sendto: %s",
	      strerror(errno));
	int seen = 0;
	for (int i = 0; i < 20 && !seen; i++) {
		if (!readable(p1, 100))
			continue;
		unsigned char frame[256];
		ssize_t n = recv(p1, frame, sizeof frame, MSG_DONTWAIT);
		if (n >= 14 + 11 && memcmp(frame + 14, "ferry-frame", 11) == 0)
			seen = 1;
	}
	CHECK(seen, "P1: the frame sent to its ethertype on lo did not arrive");
	finish();
}

static uint32_t nl_port(int fd, int peer)
{
	struct sockaddr_nl a;
	socklen_t len = sizeof a;
	memset(&a, 0, sizeof a);
	if ((peer ? getpeername(fd, (struct sockaddr *)&a, &len) : getsockname(fd, (struct sockaddr *)&a, &len)) < 0)
		return 0;
	return a.nl_pid;
}

/* The membership words of fd (2 words: groups 1-64). */
static void memberships(int fd, uint32_t w[2])
{
	w[0] = w[1] = 0;
	socklen_t len = 2 * sizeof(uint32_t);
	getsockopt(fd, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, w, &len);
}

static void mode_netlink(void)
{
	int n1 = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	SETUP(n1);
	struct sockaddr_nl a = { .nl_family = AF_NETLINK };
	SETUP(bind(n1, (struct sockaddr *)&a, sizeof a));
	int g = 26;
	SETUP(setsockopt(n1, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g, sizeof g));
	g = 33;
	SETUP(setsockopt(n1, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g, sizeof g));
	int one = 1;
	SETUP(setsockopt(n1, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one));
	int buf = 96 * 1024;
	SETUP(setsockopt(n1, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf));
	int rcvbuf = geti(n1, SOL_SOCKET, SO_RCVBUF);
	uint32_t port1 = nl_port(n1, 0), groups[2];
	memberships(n1, groups);

	int n2 = socket(AF_NETLINK, SOCK_DGRAM, NETLINK_USERSOCK);
	SETUP(n2);
	uint32_t port2 = 0x7e000000U + (uint32_t)getpid();
	struct sockaddr_nl a2 = { .nl_family = AF_NETLINK, .nl_pid = port2 };
	SETUP(bind(n2, (struct sockaddr *)&a2, sizeof a2));
	int n3 = socket(AF_NETLINK, SOCK_DGRAM, NETLINK_USERSOCK);
	SETUP(n3);
	SETUP(connect(n3, (struct sockaddr *)&a2, sizeof a2));
	uint32_t port3 = nl_port(n3, 0);
	if (port3 == 0)
		die_setup("N3 was not autobound");

	signal_ready();
	wait_go();

	CHECK(nl_port(n1, 0) == port1, "N1: port %u, want %u", nl_port(n1, 0), port1);
	uint32_t now[2];
	memberships(n1, now);
	CHECK(now[0] == groups[0] && now[1] == groups[1] && (groups[0] & (1U << 25)) && (groups[1] & 1U),
	      "N1: groups %#x %#x, want %#x %#x", now[0], now[1], groups[0], groups[1]);
	CHECK(geti(n1, SOL_NETLINK, NETLINK_EXT_ACK) == 1, "N1: NETLINK_EXT_ACK lost");
	CHECK(geti(n1, SOL_SOCKET, SO_RCVBUF) == rcvbuf, "N1: SO_RCVBUF %d, want %d", geti(n1, SOL_SOCKET, SO_RCVBUF),
	      rcvbuf);
	CHECK(geti(n1, SOL_SOCKET, SO_PROTOCOL) == NETLINK_ROUTE, "N1: protocol changed");
	struct {
		struct nlmsghdr h;
		struct ifinfomsg i;
	} req = { .h = { .nlmsg_len = sizeof req, .nlmsg_type = RTM_GETLINK, .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP,
			 .nlmsg_seq = 7 },
		  .i = { .ifi_family = AF_UNSPEC } };
	CHECK(send(n1, &req, sizeof req, 0) == (ssize_t)sizeof req, "N1: send: %s", strerror(errno));
	int answered = 0;
	while (!answered && readable(n1, 2000)) {
		char b[16384];
		ssize_t n = recv(n1, b, sizeof b, 0);
		if (n < (ssize_t)sizeof(struct nlmsghdr))
			break;
		for (struct nlmsghdr *h = (struct nlmsghdr *)b; NLMSG_OK(h, (unsigned)n); h = NLMSG_NEXT(h, n))
			if (h->nlmsg_seq == 7 && h->nlmsg_type == RTM_NEWLINK && h->nlmsg_pid == port1)
				answered = 1;
	}
	CHECK(answered, "N1: no RTM_NEWLINK answer to its dump request");
	CHECK(nl_port(n2, 0) == port2, "N2: port %u, want %u", nl_port(n2, 0), port2);
	CHECK(nl_port(n3, 0) == port3, "N3: port %u, want %u", nl_port(n3, 0), port3);
	CHECK(nl_port(n3, 1) == port2, "N3: connected to %u, want %u", nl_port(n3, 1), port2);
	CHECK(send(n3, "hello", 5, 0) == 5, "N3: send: %s", strerror(errno));
	struct sockaddr_nl from;
	socklen_t fl = sizeof from;
	char got[8] = { 0 };
	ssize_t n = readable(n2, 2000) ? recvfrom(n2, got, sizeof got, 0, (struct sockaddr *)&from, &fl) : -1;
	CHECK(n == 5 && memcmp(got, "hello", 5) == 0 && from.nl_pid == port3, "N2: got %zd bytes from port %u", n,
	      n >= 0 ? from.nl_pid : 0);
	finish();
}

#ifndef PACKET_FANOUT_FLAG_UNIQUEID
#define PACKET_FANOUT_FLAG_UNIQUEID 0x2000
#endif

/* A SOCK_RAW packet socket bound to ethertype `eth` on lo. */
static int packet_on_lo(uint16_t eth)
{
	int fd = socket(AF_PACKET, SOCK_RAW, htons(eth));
	SETUP(fd);
	struct sockaddr_ll ll = { .sll_family = AF_PACKET, .sll_protocol = htons(eth),
				  .sll_ifindex = (int)if_nametoindex("lo") };
	SETUP(bind(fd, (struct sockaddr *)&ll, sizeof ll));
	return fd;
}

/* How many frames of ethertype `eth` `fd` reads within ~300 ms of the last one. */
static int count_frames(int fd, uint16_t eth)
{
	int n = 0;
	unsigned char frame[256];
	while (readable(fd, 300)) {
		ssize_t r = recv(fd, frame, sizeof frame, MSG_DONTWAIT);
		if (r >= 14 && frame[12] == (eth >> 8) && frame[13] == (eth & 0xff))
			n++;
	}
	return n;
}

static void mode_fanout(void)
{
	uint16_t eth = (uint16_t)(0xb000 + getpid() % 4096);
	int f1 = packet_on_lo(eth), f2 = packet_on_lo(eth), f3 = packet_on_lo(eth);
	int lb = (getpid() & 0xffff) | ((PACKET_FANOUT_LB | PACKET_FANOUT_FLAG_ROLLOVER) << 16);
	SETUP(setsockopt(f1, SOL_PACKET, PACKET_FANOUT, &lb, sizeof lb));
	SETUP(setsockopt(f2, SOL_PACKET, PACKET_FANOUT, &lb, sizeof lb));
	int unique = (PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_UNIQUEID) << 16;
	SETUP(setsockopt(f3, SOL_PACKET, PACKET_FANOUT, &unique, sizeof unique));
	int want[3] = { geti(f1, SOL_PACKET, PACKET_FANOUT), geti(f2, SOL_PACKET, PACKET_FANOUT),
			geti(f3, SOL_PACKET, PACKET_FANOUT) };
	if (want[0] != want[1] || (want[0] & 0xffff) != (getpid() & 0xffff))
		die_setup("F1/F2 read back %#x and %#x", want[0], want[1]);
	int sender = socket(AF_PACKET, SOCK_DGRAM, 0);
	SETUP(sender);

	signal_ready();
	wait_go();

	int fds[3] = { f1, f2, f3 };
	for (int i = 0; i < 3; i++)
		CHECK(geti(fds[i], SOL_PACKET, PACKET_FANOUT) == want[i], "F%d: PACKET_FANOUT %#x, want %#x", i + 1,
		      geti(fds[i], SOL_PACKET, PACKET_FANOUT), want[i]);
	struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_protocol = htons(eth),
				  .sll_ifindex = (int)if_nametoindex("lo"), .sll_halen = 6 };
	for (int i = 0; i < 8; i++)
		CHECK(sendto(sender, "ferry-fanout", 12, 0, (struct sockaddr *)&to, sizeof to) == 12, "sendto: %s",
		      strerror(errno));
	int n1 = count_frames(f1, eth), n2 = count_frames(f2, eth), n3 = count_frames(f3, eth);
	CHECK(n1 + n2 == 8 && n1 > 0 && n2 > 0, "F1 and F2 got %d and %d of 8 frames: not one round-robin group", n1,
	      n2);
	CHECK(n3 == 8, "F3 (a group of its own) got %d of 8 frames", n3);
	finish();
}

static void mode_refused(const char *mode)
{
	int fd = -1, want = 0;
	if (strcmp(mode, "ring") == 0) {
		fd = socket(AF_PACKET, SOCK_RAW, 0);
		SETUP(fd);
		struct tpacket_req req = { .tp_block_size = 4096, .tp_block_nr = 1, .tp_frame_size = 2048, .tp_frame_nr = 2 };
		SETUP(setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof req));
	} else if (strcmp(mode, "fanout_bpf") == 0) {
		fd = packet_on_lo((uint16_t)(0xb000 + getpid() % 4096));
		want = (getpid() & 0xffff) | (PACKET_FANOUT_CBPF << 16);
		SETUP(setsockopt(fd, SOL_PACKET, PACKET_FANOUT, &want, sizeof want));
		struct sock_filter ret0 = BPF_STMT(BPF_RET | BPF_K, 0);
		struct sock_fprog prog = { .len = 1, .filter = &ret0 };
		SETUP(setsockopt(fd, SOL_PACKET, PACKET_FANOUT_DATA, &prog, sizeof prog));
	} else {
		fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_AUDIT);
		SETUP(fd);
	}
	signal_ready();
	wait_go();
	if (strcmp(mode, "ring") == 0) {
		int v = TPACKET_V2;
		CHECK(setsockopt(fd, SOL_PACKET, PACKET_VERSION, &v, sizeof v) < 0 && errno == EBUSY,
		      "the ring is gone (PACKET_VERSION could change: %s)", strerror(errno));
	} else if (strcmp(mode, "fanout_bpf") == 0) {
		CHECK(geti(fd, SOL_PACKET, PACKET_FANOUT) == want, "not in its fanout group any more (%#x, want %#x)",
		      geti(fd, SOL_PACKET, PACKET_FANOUT), want);
	} else {
		CHECK(geti(fd, SOL_SOCKET, SO_PROTOCOL) == NETLINK_AUDIT, "not a NETLINK_AUDIT socket");
	}
	finish();
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	const char *mode = argc > 2 ? argv[2] : "packet";
	if (strcmp(mode, "ring") == 0 || strcmp(mode, "fanout_bpf") == 0 || strcmp(mode, "audit") == 0)
		mode_refused(mode);
	if (strcmp(mode, "fanout") == 0)
		mode_fanout();
	if (strcmp(mode, "packet") == 0)
		mode_packet();
	if (strcmp(mode, "netlink") == 0)
		mode_netlink();
	die_setup("unknown mode %s", mode);
}
