#!/usr/bin/env python3
"""Summarize scripts/bench-compare results: medians per case and server, street/streetjs
ratios against the targets of issue 3, the machine, and a PNG chart.

usage: bench_report.py RAW.jsonl OUTDIR   (prints Markdown; writes OUTDIR/chart.png)
"""
import json
import os
import platform
import statistics
import subprocess
import sys

raw, outdir = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(raw) if l.strip()]


def med(case, label, key):
    vals = [r[key] for r in rows if r.get("case") == case and r.get("label") == label and key in r]
    return statistics.median(vals) if vals else None


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return f"{os.cpu_count()} cores ({cpu}), {mem} RAM, Linux {platform.release()}, {rustc}, Node {node}"


# (case, metric, label, higher_is_better, target ratio street/streetjs or absolute)
TARGETS = [
    ("fanout-1k", "deliveries_per_s", "deliveries/s", True, 3.0),
    ("fanout-1k", "server_cpu_us_per_op", "server CPU µs/delivery", False, 1 / 3),
    ("fanout-1k", "completion_p99_us", "completion p99 µs", False, 1 / 2),
    ("fanout-10k", "deliveries_per_s", "deliveries/s", True, 3.0),
    ("fanout-10k", "server_cpu_us_per_op", "server CPU µs/delivery", False, 1 / 3),
    ("fanout-10k", "completion_p99_us", "completion p99 µs", False, 1 / 2),
    ("echo", "round_trips_per_s", "round trips/s", True, 2.0),
    ("echo", "server_cpu_us_per_op", "server CPU µs/round trip", False, 0.4),
    ("echo", "rtt_p99_us", "RTT p99 µs", False, 1 / 2),
    ("idle", "handshakes_per_s", "handshakes/s (256 concurrent)", True, 2.5),
    ("idle", "server_cpu_us_per_op", "server CPU µs/handshake", False, 1 / 4),
]

rounds = max((r.get("round", 1) for r in rows), default=0)
print(f"# street vs @streetjs/websocket 1.0.0\n")
print(f"Machine: {machine()}  ")
print(f"Medians of {rounds} interleaved round(s); load generator: street-bench (same machine).\n")
print("| case | metric | street | streetjs | ratio | target | met |")
print("|---|---|---:|---:|---:|---:|:-:|")


def fmt(v):
    if v is None:
        return "–"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"


for case, key, name, higher, target in TARGETS:
    s, j = med(case, "street", key), med(case, "streetjs", key)
    ratio = (s / j) if (s is not None and j) else None
    if ratio is None:
        met = "?"
    else:
        met = "yes" if (ratio >= target if higher else ratio <= target) else "no"
    tgt = f"≥ {target:.2f}×" if higher else f"≤ {target:.2f}×"
    print(f"| {case} | {name} | {fmt(s)} | {fmt(j)} | {fmt(ratio) if ratio is None else f'{ratio:.2f}×'} | {tgt} | {met} |")

rss_s, rss_j = med("idle", "street", "server_rss_per_conn_bytes"), med("idle", "streetjs", "server_rss_per_conn_bytes")
met = "?" if rss_s is None else ("yes" if rss_s <= 2048 else "no")
print(f"| idle | server RSS bytes/connection | {fmt(rss_s)} | {fmt(rss_j)} | "
      f"{'–' if not (rss_s and rss_j) else f'{rss_s / rss_j:.2f}×'} | ≤ 2048 B | {met} |")
ov = [r.get("listen_overflows") for r in rows if r.get("case") == "idle" and r.get("label") == "street"]
print(f"| idle | listen-queue overflows (street, all rounds) | {sum(o for o in ov if o is not None)} | | | 0 | "
      f"{'yes' if ov and sum(o for o in ov if o is not None) == 0 else '?'} |")

print("\nLoad generator CPU (% of one core, median): " + ", ".join(
    f"{case}/{label} {fmt(med(case, label, 'loadgen_cpu_pct_of_one_core'))}"
    for case in ("echo", "fanout-1k", "fanout-10k", "idle") for label in ("street", "streetjs")))
print("\nServer CPU (% of one core, median): " + ", ".join(
    f"{case}/{label} {fmt(med(case, label, 'server_cpu_pct_of_one_core'))}"
    for case in ("echo", "fanout-1k", "fanout-10k", "idle") for label in ("street", "streetjs")))
print("\n(idle: CPU over the connect phase. A load generator at or above 100% of a core while the "
      "server is below it means the handshake rate is the load generator's limit, not the server's.)")

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("fanout-1k", "deliveries_per_s", "fan-out 1k: deliveries/s"),
        ("fanout-10k", "deliveries_per_s", "fan-out 10k: deliveries/s"),
        ("echo", "round_trips_per_s", "echo (64 conns): round trips/s"),
        ("idle", "server_rss_per_conn_bytes", "idle 10k: server RSS bytes/conn (lower is better)"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    for ax, (case, key, title) in zip(axes, panels):
        vals = [med(case, "street", key) or 0, med(case, "streetjs", key) or 0]
        bars = ax.bar(["street", "streetjs"], vals, color=["#d9480f", "#868e96"])
        ax.set_title(title, fontsize=10)
        for b, v in zip(bars, vals):
            ax.annotate(f"{v:,.0f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=9)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle("street vs @streetjs/websocket 1.0.0 (same machine, medians)", fontsize=12)
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, "chart.png"), dpi=110)
except ImportError:
    print("\n(matplotlib not available: no chart)")
