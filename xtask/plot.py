#!/usr/bin/env python3
"""Plots for BENCHMARKS.md from the bench's results.json: plot.py RESULTS OUTDIR."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(results_path, out):
    r = json.load(open(results_path))

    rows = r["per_packet"]["rows"]
    names = [x["case"] for x in rows]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    ys = range(len(rows))
    ax.barh([y + 0.2 for y in ys], [x["knockgate_ns"] for x in rows], 0.4, label="knockgate (floor rows: the reference program)")
    ax.barh([y - 0.2 for y in ys], [x["empty_ns"] for x in rows], 0.4, label="empty XDP_PASS program")
    ax.set_yticks(list(ys), names)
    ax.invert_yaxis()
    ax.set_xlabel("ns per packet (BPF_PROG_TEST_RUN, median)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(f"{out}/per_packet.png", dpi=100)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    bd = r["per_packet"]["by_doors"]

    def ratio(x):
        # Resets are timed one run at a time; the bench calibrated them (BENCHMARKS.md).
        return x.get("calibrated_ratio", x["ratio"])

    for case in dict.fromkeys(x["case"] for x in bd if not x["case"].startswith("first knock, timed as")):
        pts = [x for x in bd if x["case"] == case]
        label = case + (" (calibrated)" if case.startswith("reset") else "")
        ax.plot([x["doors"] for x in pts], [ratio(x) for x in pts], "o-", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 8, 32], ["1", "2", "8", "32"])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("doors configured")
    ax.set_ylabel("x the empty program (median)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f"{out}/by_doors.png", dpi=100)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(15, 3.8))
    fl = r["flood"]
    labels = [
        x["daemon"]
        + (" stealth" if x.get("stealth") else "")
        + ("\nmax rate" if x["paced_pps"] == 0 else f"\n{x['paced_pps'] // 1000}k pps")
        for x in fl
    ]
    colors = ["tab:blue" if x["daemon"] == "knockgate" else "tab:cyan" if x["daemon"].startswith("knockgate") else "tab:green" if x["daemon"].startswith("nftables") else "tab:red" for x in fl]
    a1.bar(labels, [x["opened"] for x in fl], color=colors)
    a1.set_ylim(0, max(x["knocks"] for x in fl))
    a1.set_title(f"legitimate opens of {fl[0]['knocks']} under a SYN flood")
    a2.bar(labels, [x["daemon_cpu_percent"] for x in fl], color=colors, label="daemon")
    a2.bar(labels, [x.get("softirq_cpu_percent", 0) for x in fl], bottom=[x["daemon_cpu_percent"] for x in fl], color="lightgray", label="softirq, whole machine")
    a2.set_title("CPU, % of one core")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(f"{out}/flood.png", dpi=100)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    lat = r["latency"] + [dict(r["gate_latency"], daemon="knockgate gate"), dict(r["spawn_floor"], daemon="floor: spawn only")]
    labels = [f"{x['daemon']}" for x in lat]
    xs = range(len(lat))
    ax.bar([x - 0.2 for x in xs], [x["p50_ms"] for x in lat], 0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], [x["p99_ms"] for x in lat], 0.4, label="p99")
    ax.set_xticks(list(xs), labels)
    ax.set_yscale("log")
    ax.set_ylabel("ms, last knock to open")
    ax.legend()
    fig.tight_layout()
    fig.savefig(f"{out}/latency.png", dpi=100)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    sc = r["scale"]["rows"]
    a1.plot([x["sources"] for x in sc], [x["knock_step_ratio"] for x in sc], "o-", label="knockgate knock step")
    a1.plot([x["sources"] for x in sc], [x["non_knock_syn_ratio"] for x in sc], "o-", label="knockgate non-knock SYN")
    a1.set_xscale("log")
    a1.set_ylim(bottom=0)
    a1.set_xlabel("tracked sources")
    a1.set_ylabel("x the empty program")
    a1.legend(fontsize=8)
    ks = r["knockd_scale"]["rows"]
    a2.plot([x["pending_attempts"] for x in ks], [x["cpu_us_per_packet"] * 1000 for x in ks], "o-", color="tab:red", label="knockd 0.8 (ns CPU)")
    a2.plot([x["sources"] for x in sc], [x["knock_step_ns"] for x in sc], "o-", label="knockgate (ns)")
    a2.set_xscale("log")
    a2.set_yscale("log")
    a2.set_xlabel("pending attempts / tracked sources")
    a2.set_ylabel("ns per packet")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(f"{out}/scale.png", dpi=100)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
