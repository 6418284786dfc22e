#!/usr/bin/env python3
"""bench/python_bench.py - the Python binding's throughput and latency
against a running ferryd (bench/run-python.sh runs it beside the C client).

  python_bench.py SERVER pub N SIZE WINDOW      pipelined publish, msg/s
  python_bench.py SERVER consume N SIZE WINDOW  consume + pipelined ack, msg/s
  python_bench.py SERVER sync N SIZE            one publish at a time: p50/p99 us

The workloads are those of `ferry bench pub` / `ferry bench consume`: SIZE
bytes of payload and, for sync, a 36-character random UUID-like id per
message made before the clock starts, and 100 untimed warm-up publishes.

Prints one line "KEY VALUE" per figure."""
import statistics
import sys
import time
import uuid

import ferry


def main():
    server, mode, n, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    window = int(sys.argv[5]) if len(sys.argv) > 5 else 1000
    payload = b"x" * size
    with ferry.connect(server, max_in_flight=window) as c:
        if mode == "pub":
            topic = f"py-pub-{time.monotonic_ns()}"
            t0 = time.perf_counter()
            for _ in range(n):
                c.publish_async(topic, payload)
            acks = c.flush()
            dt = time.perf_counter() - t0
            assert len(acks) == n
            print(f"pub_msgs_per_s {n / dt:.0f}")
        elif mode == "consume":
            topic = f"py-consume-{time.monotonic_ns()}"
            for _ in range(n):
                c.publish_async(topic, payload)
            c.flush()
            sub = c.subscribe(topic, "g", max_in_flight=window)
            t0 = time.perf_counter()
            got = 0
            for d in sub:
                d.ack(wait=False)
                got += 1
                if got == n:
                    break
            c.flush()
            dt = time.perf_counter() - t0
            print(f"consume_msgs_per_s {n / dt:.0f}")
        elif mode == "sync":
            topic = f"py-sync-{time.monotonic_ns()}"
            ids = [str(uuid.uuid4()) for _ in range(n + 100)]
            lat = [0.0] * n
            for i in range(100):
                c.publish(topic, payload, id=ids[n + i])
            clock = time.perf_counter_ns
            for i in range(n):
                t0 = clock()
                c.publish(topic, payload, id=ids[i])
                lat[i] = (clock() - t0) / 1000
            lat.sort()
            print(f"sync_p50_us {statistics.median(lat):.0f}")
            print(f"sync_p99_us {lat[int(len(lat) * 0.99)]:.0f}")
        else:
            sys.exit("mode is pub, consume or sync")


if __name__ == "__main__":
    main()
