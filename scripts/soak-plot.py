"""Plots a soak's samples (cairn-chaos --samples) and prints each series' slope.

Usage: soak-plot.py SAMPLES.csv OUT.png
The slope is a least-squares fit per hour over the second half of the run (the
first half includes warm-up: caches filling, the first segments written).
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SERIES = [
    ("rss_kib", "RSS (MiB)", 1 / 1024),
    ("fds", "open file descriptors", 1),
    ("redis_used_memory", "Redis used_memory (MiB)", 1 / 2**20),
    ("data_dir_bytes", "data dir (MiB)", 1 / 2**20),
    ("p99_ms", "POST p99 (ms)", 1),
    ("backlog", "turns accepted, not ended", 1),
    ("redis_keys", "Redis keys", 1),
]


def slope(xs, ys):
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var


def main():
    rows = list(csv.DictReader(open(sys.argv[1])))
    t = [float(r["seconds"]) for r in rows]
    # Older sample files lack the later columns.
    series = [s for s in SERIES if rows and s[0] in rows[0]]
    fig, axes = plt.subplots(len(series), 1, figsize=(8, 2.2 * len(series)), sharex=True)
    half = len(rows) // 2
    for ax, (key, label, scale) in zip(axes, series):
        ys = [float(r[key] or 0) * scale for r in rows]
        ax.plot([x / 60 for x in t], ys)
        ax.set_ylabel(label, fontsize=8)
        per_hour = slope(t[half:], ys[half:]) * 3600
        last = ys[-1] if ys else 0
        print(f"{key}: last {last:.2f}, slope over the second half {per_hour:+.3f} per hour ({label})")
    axes[-1].set_xlabel("minutes")
    accepted = int(rows[-1]["accepted"]) if rows else 0
    fig.suptitle(f"{sys.argv[1]}: {accepted} messages accepted")
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=90)
    print(f"plot: {sys.argv[2]}")


main()
