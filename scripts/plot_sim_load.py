"""Load per host from the fleet simulator's JSON, as a PNG: one panel per part, one line per strategy.

``python -m lbclient sim slow --json /tmp/sim-slow.json`` then
``python scripts/plot_sim_load.py /tmp/sim-slow.json docs/img/sim-slow-load.png`` (needs matplotlib, the ``plot``
extra). ``--metric host_peak`` plots the most requests each host held at once instead of its share of
the attempts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="python -m lbclient sim ... --json FILE")
    parser.add_argument("png", type=Path)
    parser.add_argument("--metric", choices=["host_attempts", "host_peak"], default="host_attempts")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    parts = [(s["name"], p) for s in json.loads(args.json.read_text()) for p in s["parts"]]
    figure, axes = plt.subplots(len(parts), 1, figsize=(10, 3.2 * len(parts)), squeeze=False)
    for axis, (name, part) in zip(axes[:, 0], parts, strict=True):
        for run in part["results"]:
            values = run[args.metric]
            if args.metric == "host_attempts":
                total = sum(values) or 1
                values = [100 * v / total for v in values]
            axis.plot(range(len(values)), values, marker="o", markersize=3, linewidth=1.2, label=run["label"])
        axis.set_xlabel("host")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel("% of attempts" if args.metric == "host_attempts" else "peak requests at once")
        axis.set_title(f"{name}: {part['title'][:90]}", fontsize=8)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.png, dpi=100)
    print(f"plot: {args.png}")


if __name__ == "__main__":
    main()
