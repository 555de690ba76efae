# Hostile clients of `ferry serve` (tests/migrate/serve.rs): many connections that never
# authenticate, from source addresses of 127.0.0.0/8 (every one of them is local).
#   hostile.py MODE HOST PORT GROUPS HOLD OUT
# MODE: idle (connect, send nothing), loris (the start of a valid handshake, one byte a
# second) or churn (idle, and each connection the server closes is opened again at once);
# GROUPS: "count@addresses,...": group g connects `count` times from `addresses`
# addresses 127.(g+1).x.y, round robin; HOLD: seconds to keep going; OUT: a JSON status file,
# rewritten every 0.2 s: per group, connections established and still open, and how long after
# its connect each closed one was closed by the server.
import json, os, resource, select, socket, sys, time

mode, host, port, groups, hold, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]), sys.argv[6]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
# header "FRYM" v2, then a 32-byte first handshake message: what a source sends, slowly
loris = b"FRYM\x00\x02\x00\x00" + b"\x00\x20" + os.urandom(32)

start = time.monotonic()
conns = []
by_fd = {}
p = select.poll()
reopened = 0


def connect(g, src):
    s = socket.socket()
    s.setblocking(False)
    s.bind((src, 0))
    try:
        s.connect((host, port))
    except BlockingIOError:
        pass
    c = {"s": s, "g": g, "src": src, "t0": time.monotonic(), "up": False, "closed": None, "sent": 0}
    conns.append(c)
    by_fd[s.fileno()] = c
    p.register(s, select.POLLIN | select.POLLOUT)


for g, spec in enumerate(groups.split(",")):
    n, naddr = map(int, spec.split("@"))
    for i in range(n):
        a = i % naddr
        connect(g, "127.%d.%d.%d" % (g + 1, a // 250, a % 250 + 1))

ngroups = len(groups.split(","))


def status(final):
    st = {"t": time.monotonic() - start, "final": final, "reopened": reopened, "groups": []}
    for g in range(ngroups):
        cs = [c for c in conns if c["g"] == g]
        st["groups"].append({
            "connected": sum(1 for c in cs if c["up"]),
            "open": sum(1 for c in cs if c["up"] and c["closed"] is None),
            "closed_after": [c["closed"] for c in cs if c["closed"] is not None],
        })
    with open(out + ".tmp", "w") as f:
        json.dump(st, f)
    os.rename(out + ".tmp", out)


def close(c):
    global reopened
    c["closed"] = time.monotonic() - c["t0"]
    p.unregister(c["s"])
    if mode == "churn":
        del by_fd[c["s"].fileno()]
        c["s"].close()
        conns.remove(c)
        reopened += 1
        connect(c["g"], c["src"])


last_status = last_byte = 0.0
while time.monotonic() - start < hold:
    for fd, ev in p.poll(100):
        c = by_fd.get(fd)
        if c is None or c["closed"] is not None:
            continue
        if not c["up"] and ev & (select.POLLOUT | select.POLLERR | select.POLLHUP):
            if c["s"].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                c["t0"] = 0.0
                close(c)
                continue
            c["up"] = True
            p.modify(c["s"], select.POLLIN)
        if ev & (select.POLLIN | select.POLLERR | select.POLLHUP):
            try:
                if c["s"].recv(4096) == b"":
                    close(c)
            except BlockingIOError:
                pass
            except OSError:
                close(c)
    now = time.monotonic()
    if mode == "loris" and now - last_byte >= 1.0:
        last_byte = now
        for c in conns:
            if c["up"] and c["closed"] is None and c["sent"] < len(loris):
                try:
                    c["s"].send(loris[c["sent"]:c["sent"] + 1])
                    c["sent"] += 1
                except BlockingIOError:
                    pass
                except OSError:
                    close(c)
    if now - last_status >= 0.2:
        last_status = now
        status(False)
status(True)
