#!/usr/bin/env python3
"""Turns scripts/bench-peers.sh results into a Markdown report with Herald/peer ratios and a
gnuplot PNG of p99 latency against publish rate.   bench-peers-report.py OUT_DIR"""
import json
import os
import subprocess
import sys

out = sys.argv[1]


def load(name):
    path = os.path.join(out, name)
    if not os.path.exists(path):
        return []
    rows = []
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
    return rows


lines = []
idle = load("idle.jsonl")
if idle:
    lines += ["## Idle connections: server RSS per connection", "",
              "| server | protocol | connections | failed | RSS per connection | Herald is |",
              "|---|---|---|---|---|---|"]
    herald = {r["protocol"]: r["rss_per_connection_bytes"] for r in idle if r["target"] == "herald"}
    for r in idle:
        mine = herald.get(r["protocol"])
        theirs = r["rss_per_connection_bytes"]
        ratio = "" if r["target"] == "herald" or not mine or not theirs else f"{theirs / mine:.2f}x smaller"
        lines.append(f"| {r['target']} | {r['protocol']} | {r['connections']:,} | {r['failed']} | "
                     f"{theirs / 1000:.1f} KB | {ratio} |")
    lines.append("")

fan = load("fanout.jsonl")
if fan:
    lines += ["## Fan-out: one channel, every subscriber gets every message", "",
              "| server | protocol | subscribers | rate asked | rate achieved | deliveries/s | p50 ms | p99 ms | max ms | lost | dup | server CPU µs/delivery |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in fan:
        lat = r["latency_ms"]
        lines.append(
            f"| {r['target']} | {r['protocol']} | {r['subscribers']:,} | {r['rate']} | {r.get('publish_rate_achieved', '')} | "
            f"{r['deliveries_per_second']:,.0f} | {lat['p50']:.1f} | {lat['p99']:.1f} | {lat['max']:.1f} | "
            f"{r['lost']} | {r['duplicates']} | {r['server_cpu_us_per_delivery']:.1f} |")
    lines += ["", "### Herald / peer at the same rate and protocol", "",
              "| peer | protocol | rate | deliveries/s ratio | p99 ratio (peer / Herald) | CPU per delivery ratio (peer / Herald) |",
              "|---|---|---|---|---|---|"]
    key = {(r["target"], r["protocol"], r["rate"]): r for r in fan}
    for (t, p, rate), r in sorted(key.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        if t == "herald" or ("herald", p, rate) not in key:
            continue
        h = key[("herald", p, rate)]
        d = h["deliveries_per_second"] / r["deliveries_per_second"] if r["deliveries_per_second"] else float("inf")
        p99 = r["latency_ms"]["p99"] / h["latency_ms"]["p99"] if h["latency_ms"]["p99"] else float("nan")
        cpu = (r["server_cpu_us_per_delivery"] / h["server_cpu_us_per_delivery"]
               if h["server_cpu_us_per_delivery"] else float("nan"))
        lines.append(f"| {t} | {p} | {rate} | {d:.2f} | {p99:.2f} | {cpu:.2f} |")
    lines.append("")
    lines += ["### Peak: the most deliveries per second each server reached (any rate asked)", "",
              "| server | protocol | peak deliveries/s | p99 there | Herald peak / this peak | Herald's best deliveries/s at a p99 <= this p99 |",
              "|---|---|---|---|---|---|"]
    peaks = {}
    for r in fan:
        k = (r["target"], r["protocol"])
        if k not in peaks or r["deliveries_per_second"] > peaks[k]["deliveries_per_second"]:
            peaks[k] = r
    for (t, p), r in sorted(peaks.items()):
        h = peaks.get(("herald", p))
        ratio = f"{h['deliveries_per_second'] / r['deliveries_per_second']:.2f}" if h and t != "herald" else ""
        within = [x["deliveries_per_second"] for x in fan if x["target"] == "herald" and x["protocol"] == p
                  and x["latency_ms"]["p99"] <= r["latency_ms"]["p99"]]
        best = f"{max(within):,.0f}" if within and t != "herald" else ("none" if t != "herald" else "")
        lines.append(f"| {t} | {p} | {r['deliveries_per_second']:,.0f} | {r['latency_ms']['p99']:.1f} ms | {ratio} | {best} |")
    lines.append("")
    # Plot: p99 against rate, one line per server and protocol.
    series = {}
    for r in fan:
        series.setdefault(f"{r['target']} {r['protocol']}", []).append(
            (r["deliveries_per_second"] / 1000.0, r["latency_ms"]["p99"]))
    data = os.path.join(out, "fanout-p99.dat")
    with open(data, "w") as f:
        for name, pts in series.items():
            f.write(f'"{name}"\n')
            for x, y in sorted(pts):
                f.write(f"{x} {max(y, 0.1)}\n")
            f.write("\n\n")
    png = os.path.join(out, "fanout-p99.png")
    subs = fan[0]["subscribers"]
    script = f"""
set terminal pngcairo size 900,560 font ',11'
set output '{png}'
set title 'Fan-out to {subs:,} subscribers of one channel, server on 1 core: p99 latency vs deliveries/s'
set xlabel 'deliveries per second achieved (thousands); points: 1, 5, 10, 20, 40 publishes/s asked'
set ylabel 'p99 latency (ms, log)'
set logscale y
set key top left
set grid
plot for [i=0:{len(series) - 1}] '{data}' index i using 1:2 with linespoints lw 2 title columnheader(1)
"""
    try:
        subprocess.run(["gnuplot"], input=script.encode(), check=True)
        lines.append(f"Plot: `{png}`")
    except (OSError, subprocess.CalledProcessError) as e:
        lines.append(f"(no plot: {e})")

report = "\n".join(lines) + "\n"
open(os.path.join(out, "report.md"), "w").write(report)
print(report)
