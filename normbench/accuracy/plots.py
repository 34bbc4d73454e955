"""PNG figures from the study CSVs in results/accuracy/ (matplotlib, Agg backend)."""
from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_offset(df, path):
    plt = _plt()
    variants = sorted(df.variant.unique())
    dtypes = sorted(df.dtype.unique())
    fig, axes = plt.subplots(len(dtypes), len(variants), figsize=(5 * len(variants), 3.6 * len(dtypes)),
                             squeeze=False)
    for i, dtype in enumerate(dtypes):
        for j, variant in enumerate(variants):
            ax = axes[i][j]
            d = df[(df.variant == variant) & (df.dtype == dtype) & (df.output == "y")]
            for (v, a), g in d.groupby(["variance", "accumulate"]):
                g = g.sort_values("offset")
                ax.plot(g.offset.clip(lower=1), g.max_err.clip(lower=1e-2), marker="o", ms=3,
                        ls="-" if a == "float64" else "--", label=f"{v}, acc {a}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{variant} y, {dtype} (cpu)")
            ax.set_xlabel("mean offset / spread (0 plotted at 1)")
            ax.set_ylabel("max error (units of eps)")
            ax.grid(True, which="major", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_eps_placement(df, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (variant, output), g in df.groupby(["variant", "output"]):
        g = g.sort_values("var_over_eps")
        ax.plot(g.var_over_eps, g.rel_diff, marker="o", ms=3, label=f"{variant} {output}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("var / eps")
    ax.set_ylabel("max |inside - outside| / max |inside|")
    ax.set_title("eps inside vs outside the square root (exact values)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_correction(df, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for output, g in df.groupby("output"):
        ax.plot(g.N, g.rel_diff, marker="o", ms=3, label=f"batch norm {output}")
    g = df[df.output == "y"]
    ax.plot(g.N, g.closed_form, ls=":", color="k", label="1 - sqrt((N-1)/N)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size N (values per channel)")
    ax.set_ylabel("max relative difference, correction 1 vs 0")
    ax.set_title("what correction does to small batches (exact values)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


FIGURES = {"offset_study": ("error_vs_offset.png", plot_offset),
           "eps_placement_study": ("eps_placement.png", plot_eps_placement),
           "correction_study": ("correction_vs_batch.png", plot_correction)}


def plot_all(out: Path):
    import pandas as pd

    out = Path(out)
    paths = []
    for study, (png, fn) in FIGURES.items():
        csv = out / f"{study}.csv"
        if csv.exists():
            fn(pd.read_csv(csv), out / png)
            paths.append(out / png)
    return paths
