#!/usr/bin/env python3
"""Plot attnsink-train runs: loss and sink metrics against step, several runs
on one figure; optionally an attention heatmap from --dump-attention.

    python3 examples/plot_runs.py softmax.jsonl sigmoid.jsonl -o runs.png
    python3 examples/plot_runs.py --attention attn.npy -o attn.png

Needs matplotlib (Debian: python3-matplotlib, installed by .ci/install-deps.sh;
run it with /usr/bin/python3 if another python3 comes first on PATH).
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_run(path):
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"plot_runs: error: {path}:{n}: not a JSON line ({e})")
    if not rows:
        sys.exit(f"plot_runs: error: {path} holds no records")
    return rows


def series(rows, key):
    pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_runs(paths, out):
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for path in paths:
        rows = read_run(path)
        name = os.path.splitext(os.path.basename(path))[0]
        x, y = series(rows, "loss")
        line, = axes[0].plot(x, y, label=f"{name} train", alpha=0.8)
        x, y = series(rows, "val_loss")
        if x:
            axes[0].plot(x, y, "--", color=line.get_color(), label=f"{name} val")
        x, y = series(rows, "sink_rate")
        if x:
            axes[1].plot(x, y, "o-", color=line.get_color(), label=name)
        x, y = series(rows, "sink_star")
        if x:
            axes[1].plot(x, y, "s:", color=line.get_color(), label=f"{name} Sink*")
        x, y = series(rows, "alpha1")
        if x:
            axes[2].plot(x, y, "o-", color=line.get_color(), label=name)
        x, y = series(rows, "alpha_star")
        if x:
            axes[2].plot(x, y, "s:", color=line.get_color(), label=f"{name} α*")
    axes[0].set(xlabel="step", ylabel="loss", title="loss")
    axes[1].set(xlabel="step", ylabel="Sink_1^0.3", title="sink rate (first token)", ylim=(-0.02, 1.02))
    axes[2].set(xlabel="step", ylabel="α_1", title="importance of the first token α_1")
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def plot_attention(path, out):
    import numpy as np

    a = np.load(path)  # (layers, heads, T, keys) from attnsink-train --dump-attention
    if a.ndim != 4:
        sys.exit(f"plot_runs: error: {path}: expected (layers, heads, T, keys), got shape {a.shape}")
    layers, heads = a.shape[0], a.shape[1]
    fig, axes = plt.subplots(layers, heads, figsize=(3.2 * heads, 3.2 * layers), squeeze=False)
    for l in range(layers):
        for h in range(heads):
            ax = axes[l][h]
            ax.imshow(a[l, h], cmap="viridis", vmin=0, vmax=max(1e-9, float(a[l, h].max())))
            ax.set(title=f"layer {l}, head {h}", xlabel="key", ylabel="query")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help="JSONL logs from attnsink-train --log")
    p.add_argument("--attention", help="an attention map .npy from attnsink-train --dump-attention")
    p.add_argument("-o", "--out", required=True, help="output PNG")
    args = p.parse_args()
    if args.attention:
        plot_attention(args.attention, args.out)
    elif args.runs:
        plot_runs(args.runs, args.out)
    else:
        p.error("give JSONL runs or --attention FILE")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
