"""pythreads: a python3 interpreter running several threads, checkpointed mid-flight.

Usage: pythreads.py WORKDIR. Four worker threads hash their own data in a loop, handing
results to a collector thread through a queue.Queue (locks and condition variables, so futex
waits) while the main thread sleeps; one more thread waits on a threading.Event. On SIGUSR2 the
main thread stops the workers, recomputes every worker's chain from its seed for the number of
rounds it did and checks the collected results, then writes WORKDIR/result.
"""
import hashlib
import os
import queue
import signal
import sys
import threading
import time

os.closerange(3, 65536)
work = sys.argv[1]
WORKERS = 4


def write_atomic(name, text):
    tmp = os.path.join(work, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(work, name))


go = threading.Event()
stop = threading.Event()
results = queue.Queue()
rounds = [0] * WORKERS
finals = [b""] * WORKERS
event_seen = []


def worker(i):
    h = hashlib.sha256(b"seed-%d" % i).digest()
    n = 0
    while not stop.is_set():
        h = hashlib.sha256(h).digest()
        n += 1
        if n % 1000 == 0:
            results.put((i, n, h))
    rounds[i] = n
    finals[i] = h


collected = {}


def collector():
    while True:
        item = results.get()
        if item is None:
            return
        i, n, h = item
        collected[(i, n)] = h


def waiter():
    go.wait()
    event_seen.append(threading.get_ident())


signal.signal(signal.SIGUSR2, lambda s, f: go.set())
threads = [threading.Thread(target=worker, args=(i,), name="worker%d" % i) for i in range(WORKERS)]
coll = threading.Thread(target=collector, name="collector")
wt = threading.Thread(target=waiter, name="waiter")
for t in threads + [coll, wt]:
    t.start()
time.sleep(0.3)
sys.stderr.write("pythreads: %d threads\n" % threading.active_count())
sys.stderr.flush()
write_atomic("ready", "%d\n" % os.getpid())
while not go.is_set():
    time.sleep(0.05)

stop.set()
for t in threads:
    t.join()
results.put(None)
coll.join()
wt.join(5)

failures = []
for i in range(WORKERS):
    h = hashlib.sha256(b"seed-%d" % i).digest()
    for n in range(1, rounds[i] + 1):
        h = hashlib.sha256(h).digest()
        if n % 1000 == 0 and collected.get((i, n)) not in (None, h):
            failures.append("worker %d: result of round %d differs" % (i, n))
            break
    if h != finals[i]:
        failures.append("worker %d: chain diverged after %d rounds" % (i, rounds[i]))
    if rounds[i] < 1000:
        failures.append("worker %d did only %d rounds" % (i, rounds[i]))
if not event_seen:
    failures.append("the Event waiter did not wake up")
sys.stderr.write("pythreads: rounds %s, %d results collected\n" % (rounds, len(collected)))
result = "PASS\n" if not failures else "FAIL: " + "; ".join(failures[:3]) + "\n"
sys.stderr.write("result: " + result)
write_atomic("result", result)
sys.exit(0 if not failures else 1)
