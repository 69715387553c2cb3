#!/usr/bin/env python3
"""Summarises bench/compare.sh results: medians per scenario and broker, and Switchboard's
ratios (msg/s ratio: Switchboard / other, higher is better; CPU ratio: other / Switchboard
CPU-s per million, higher is better). Usage: table.py results.jsonl
or table.py --connections connections.jsonl"""
import json
import statistics
import sys
from collections import OrderedDict


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def main(path):
    runs = OrderedDict()
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            runs.setdefault(r["label"], OrderedDict()).setdefault(r["target"], []).append(r)
    print("| scenario | broker | runs | msg/s | broker CPU-s per million | latency p50 / p99 µs "
          "| peak RSS MiB | missing / dup | Switchboard × (msg/s, CPU) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, brokers in runs.items():
        med = {}
        for b, rs in brokers.items():
            med[b] = dict(
                rate=median([r["consume_rate"] for r in rs]),
                cpu=median([r["broker"]["cpu_seconds_per_million"] for r in rs]),
                p50=median([(r["latency"] or {}).get("p50_us") for r in rs]),
                p99=median([(r["latency"] or {}).get("p99_us") for r in rs]),
                rss=median([r["broker"]["rss_peak_bytes"] for r in rs]),
                missing=sum(r["missing"] for r in rs if r["loss_is_defect"]),
                dup=sum(r["duplicates"] for r in rs),
                n=len(rs),
            )
        sb = med.get("switchboard")
        for b, m in med.items():
            ratio = ""
            if sb and b != "switchboard" and m["rate"] and sb["rate"]:
                cpu = (m["cpu"] / sb["cpu"]) if m["cpu"] and sb["cpu"] else None
                ratio = f'{sb["rate"] / m["rate"]:.2f}×, {fmt(cpu, ".2f")}×'
            print(f'| {label} | {b} | {m["n"]} | {fmt(m["rate"], ",.0f")} | {fmt(m["cpu"], ".2f")} '
                  f'| {fmt(m["p50"], ".0f")} / {fmt(m["p99"], ".0f")} '
                  f'| {fmt(m["rss"] and m["rss"] / 2**20, ".0f")} | {m["missing"]} / {m["dup"]} | {ratio} |')


def connections(path):
    print("| broker | idle MQTT connections | connect rate /s | broker RSS per connection |")
    print("|---|---|---|---|")
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            c = r["connections"]
            per = c["rss_bytes_per_connection"]
            print(f'| {r["target"]} | {c["opened"]:,} | {c["per_second"]:,.0f} '
                  f'| {fmt(per and per / 1024, ".1f")} KiB |')


if __name__ == "__main__":
    if sys.argv[1] == "--connections":
        connections(sys.argv[2])
    else:
        main(sys.argv[1])
