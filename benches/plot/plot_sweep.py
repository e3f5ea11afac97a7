#!/usr/bin/env python3
"""Plot the CSV of `compare sweep`: multicast throughput and p99 latency against subscribers.

Usage:

    cargo run --release -p benches --bin compare -- sweep --csv target/sweep.csv
    python3 benches/plot/plot_sweep.py target/sweep.csv docs/img/multicast-sweep.png

Reads the columns `subscribers,system,deliveries_per_s,events_per_s,p50_us,p99_us,lost` and
writes one PNG with two panels, one line per system: million deliveries per second (left) and
p99 latency under that load (right, log-scaled), both against the subscriber count on a
log-scaled axis. A point whose run lost deliveries is drawn hollow and the legend gives the
number lost.

Needs Python 3 and matplotlib (`pip install matplotlib`).
"""

import csv
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter  # noqa: E402

STYLE = {
    "relay": {"color": "tab:blue", "marker": "o"},
    "nats": {"color": "tab:orange", "marker": "s"},
}
LABEL = {"relay": "interrole relay", "nats": "NATS (nats-server, async-nats)"}


def read(path):
    """Rows of the CSV grouped by system, each sorted by subscriber count."""
    by_system = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            by_system[row["system"]].append(
                {
                    "subscribers": int(row["subscribers"]),
                    "deliveries_per_s": float(row["deliveries_per_s"]),
                    "p99_us": float(row["p99_us"]),
                    "lost": int(row["lost"]),
                }
            )
    for rows in by_system.values():
        rows.sort(key=lambda r: r["subscribers"])
    return by_system


def plot(by_system, out):
    """Draws both panels and writes them to `out`."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    counts = sorted({r["subscribers"] for rows in by_system.values() for r in rows})
    for system, rows in by_system.items():
        style = STYLE.get(system, {"marker": "^"})
        label = LABEL.get(system, system)
        lost = sum(r["lost"] for r in rows)
        if lost:
            label += f" ({lost} deliveries lost)"
        x = [r["subscribers"] for r in rows]
        panels = [
            (left, [r["deliveries_per_s"] / 1e6 for r in rows]),
            (right, [r["p99_us"] / 1000.0 for r in rows]),
        ]
        for ax, y in panels:
            ax.plot(x, y, label=label, linewidth=2, markersize=6, **style)
            for xi, yi, r in zip(x, y, rows):
                if r["lost"]:
                    ax.plot(xi, yi, marker=style["marker"], markersize=11,
                            markerfacecolor="white", color=style.get("color"))
    for ax in (left, right):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(counts))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(c) for c in counts])
        ax.set_xlabel("subscribers (log scale)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="best")
    left.set_ylim(bottom=0)
    right.set_yscale("log")
    right.yaxis.set_major_formatter(ScalarFormatter())
    left.set_ylabel("million deliveries per second")
    left.set_title("Throughput: events received over all subscribers")
    right.set_ylabel("p99 latency, ms (log scale)")
    right.set_title("p99 latency under that load, send to receive")
    fig.suptitle(
        "Multicast at max throughput: 1 publisher, 256-byte events, 127.0.0.1, 2 cores"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv):
    if len(argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    by_system = read(argv[1])
    if not by_system:
        sys.stderr.write(f"{argv[1]}: no rows\n")
        return 1
    plot(by_system, argv[2])
    print(f"wrote {argv[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
