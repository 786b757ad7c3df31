"""p50/p99 latency in microseconds from `dnsperf -v` output on stdin."""

import sys

latencies = sorted(
    float(line.split()[-1]) for line in sys.stdin if line.startswith("> ") and len(line.split()) >= 5
)
if not latencies:
    print("nan nan 0")
else:
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e6
    print(f"{pick(0.50):.0f} {pick(0.99):.0f} {len(latencies)}")
