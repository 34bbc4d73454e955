"""Training studies with normbench's kernels in a hand-written NumPy network (no PyTorch).

``normbench study lr``: does normalization let a network train at a larger learning rate? The batch norm paper
(Ioffe & Szegedy, 2015) and the d2l text (which trains LeNet with batch norm at lr = 1.0) say so for batch
norm. We train an MLP, ``64 -> [Linear -> Norm -> ReLU] x 2 -> 10``, on scikit-learn's bundled digits dataset
(1797 8x8 images, shipped with the package: no download) with plain minibatch SGD at several learning rates,
for no normalization and batch / layer / group / RMS norm, a few seeds each (seeds vary the initialisation and
the batch order; the train/test split is fixed). Every norm's forward and backward is normbench's public
functional API; the rest of the backward (linear layers, ReLU, softmax cross-entropy) is written out here and
checked against finite differences in tests/test_study.py.

Output under ``--out`` (default results/study/): ``lr_runs.csv`` (one row per run), ``lr_curves.csv`` (test
accuracy per epoch), ``lr_table.md`` (the summary table) and ``lr_curves.png`` (learning curves). Needs the
``study`` extra (scikit-learn, matplotlib).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import functional as nb
from .cli import MANY, output_dir_error, positive_float, positive_int, unique

NORMS = ("none", "batch", "layer", "group", "rms")
LRS = (0.03, 0.1, 0.3, 1.0, 3.0)
EPS = 1e-5
COLLAPSED = 0.9 * math.log(10)  # a final train loss above this is close to ln(10), the uniform guess
BLOWUP = 2.0  # a collapse blew up first: its largest batch loss was at least this many times its first batch's
#   (measured over the grid's collapses and beyond: 3.1 to 1e14; runs still learning slowly: 1.00-1.12)
N_TRAIN = 1347  # training images in load_digits_split(): 1797 digits, a quarter held out for the test


@dataclass
class Config:
    lrs: tuple = LRS
    norms: tuple = NORMS
    seeds: tuple = (0, 1, 2)
    epochs: int = 20
    batch_size: int = 64
    hidden: tuple = (128, 128)
    groups: int = 8  # group norm: 8 groups of 16 features
    momentum: float = 0.1  # batch norm running statistics (PyTorch convention)
    target: float = 0.9  # "epochs to 90%": first epoch whose test accuracy reaches this
    dtype: str = "float32"
    backend: str | None = None  # normbench backend for the norms (None: the default pick)
    out: str = "results/study"


# ------------------------------------------------------------------------------------------------ the network
class MLP:
    """``[Linear -> Norm -> ReLU] * len(hidden) -> Linear`` with softmax cross-entropy; explicit backward.

    Parameters live in ``self.params`` (name -> array) and gradients come back under the same names, so SGD
    and the finite-difference test treat every parameter alike. ``norm="none"`` skips the Norm layer.
    """

    def __init__(self, n_in, hidden, n_out, norm, rng, *, dtype=np.float32, groups=8, momentum=0.1, backend=None):
        if norm not in NORMS:
            raise ValueError(f"norm={norm!r}; expected one of {list(NORMS)}")
        self.norm, self.groups, self.momentum, self.backend = norm, groups, momentum, backend
        self.dtype = np.dtype(dtype)
        self.params, self.buffers = {}, {}
        sizes = (n_in, *hidden, n_out)
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            self.params[f"W{i}"] = (rng.standard_normal((a, b)) * math.sqrt(2.0 / a)).astype(self.dtype)  # He
            self.params[f"b{i}"] = np.zeros(b, self.dtype)
            if i < len(hidden) and norm != "none":
                self.params[f"gamma{i}"] = np.ones(b, self.dtype)
                if norm != "rms":  # RMS norm has no shift
                    self.params[f"beta{i}"] = np.zeros(b, self.dtype)
                if norm == "batch":
                    self.buffers[f"running_mean{i}"] = np.zeros(b, self.dtype)
                    self.buffers[f"running_var{i}"] = np.ones(b, self.dtype)
        self.n_hidden = len(hidden)

    # ------------------------------------------------------------------ norm layer: normbench's kernels
    def _norm_forward(self, i, h, training):
        g, b = self.params.get(f"gamma{i}"), self.params.get(f"beta{i}")
        kw = dict(backend=self.backend)
        if self.norm == "batch":
            y, m, r = nb.batch_norm_forward(h, g, b, self.buffers[f"running_mean{i}"], self.buffers[f"running_var{i}"],
                                            training=training, momentum=self.momentum, eps=EPS, **kw)
            return y, (m, r, training)
        if self.norm == "layer":
            y, m, r = nb.layer_norm_forward(h, h.shape[1], g, b, eps=EPS, **kw)
            return y, (m, r)
        if self.norm == "group":
            y, m, r = nb.group_norm_forward(h, self.groups, g, b, eps=EPS, **kw)
            return y, (m, r)
        y, r = nb.rms_norm_forward(h, h.shape[1], g, eps=EPS, **kw)
        return y, (r,)

    def _norm_backward(self, i, dy, h, saved):
        g, b = self.params.get(f"gamma{i}"), self.params.get(f"beta{i}")
        kw = dict(backend=self.backend)
        if self.norm == "batch":
            m, r, training = saved
            return nb.batch_norm_backward(dy, h, g, b, m, r, training=training, eps=EPS, **kw)
        if self.norm == "layer":
            return nb.layer_norm_backward(dy, h, h.shape[1], *saved, g, b, eps=EPS, **kw)
        if self.norm == "group":
            return nb.group_norm_backward(dy, h, self.groups, *saved, g, b, eps=EPS, **kw)
        dx, dg = nb.rms_norm_backward(dy, h, h.shape[1], *saved, g, eps=EPS, **kw)
        return dx, dg, None

    # ------------------------------------------------------------------ whole network
    def forward(self, X, training=True):
        """Logits and the cache the backward needs."""
        a, cache = X, []
        for i in range(self.n_hidden):
            h = a @ self.params[f"W{i}"] + self.params[f"b{i}"]
            if self.norm != "none":
                z, saved = self._norm_forward(i, h, training)
                z = np.asarray(z, self.dtype)  # the reference backend returns float64
            else:
                z, saved = h, None
            cache.append((a, h, saved, z))
            a = np.maximum(z, 0)
        k = self.n_hidden
        return a @ self.params[f"W{k}"] + self.params[f"b{k}"], (cache, a)

    def backward(self, cache, dlogits):
        """Gradients of the loss for every parameter, given d loss / d logits."""
        layers, a_last = cache
        k = self.n_hidden
        grads = {f"W{k}": a_last.T @ dlogits, f"b{k}": dlogits.sum(0)}
        da = dlogits @ self.params[f"W{k}"].T
        for i in reversed(range(self.n_hidden)):
            a_in, h, saved, z = layers[i]
            dz = da * (z > 0)
            if self.norm != "none":
                dh, dg, db = self._norm_backward(i, np.ascontiguousarray(dz, self.dtype), h, saved)
                dh = np.asarray(dh, self.dtype)
                grads[f"gamma{i}"] = np.asarray(dg, self.dtype)
                if db is not None:
                    grads[f"beta{i}"] = np.asarray(db, self.dtype)
            else:
                dh = dz
            grads[f"W{i}"], grads[f"b{i}"] = a_in.T @ dh, dh.sum(0)
            da = dh @ self.params[f"W{i}"].T
        return grads

    def sgd_step(self, grads, lr):
        for name, g in grads.items():
            self.params[name] -= self.dtype.type(lr) * g.astype(self.dtype, copy=False)


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy and its gradient with respect to the logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = len(labels)
    loss = -logp[np.arange(n), labels].mean()
    dlogits = np.exp(logp)
    dlogits[np.arange(n), labels] -= 1
    return float(loss), (dlogits / n).astype(logits.dtype)


# ------------------------------------------------------------------------------------------------ the study
def load_digits_split(dtype=np.float32, test_size=0.25, seed=0):
    """scikit-learn's bundled digits (no download), pixels scaled to [0, 1], a fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(dtype)
    return train_test_split(X, y, test_size=test_size, random_state=seed, stratify=y)


def accuracy(model, X, y):
    logits, _ = model.forward(X, training=False)
    return float((logits.argmax(axis=1) == y).mean())


def train_one(data, norm, lr, seed, cfg: Config):
    """Train one model; returns (per-epoch test accuracy, per-epoch mean train loss, diverged). Diverged: the
    loss became non-finite, or it blew up (a batch loss at least ``BLOWUP`` times the first batch's) and the run
    ended no better than a uniform guess (final train loss above ``COLLAPSED``): the ReLUs dead and the output
    constant.  A run still learning slowly (loss above ``COLLAPSED`` after few epochs or at a small rate, but
    falling from the start) is not diverged."""
    Xtr, Xte, ytr, yte = data
    rng = np.random.default_rng(seed)
    model = MLP(Xtr.shape[1], cfg.hidden, 10, norm, np.random.default_rng(seed), dtype=np.dtype(cfg.dtype),
                groups=cfg.groups, momentum=cfg.momentum, backend=cfg.backend)
    accs, losses, diverged = [], [], False
    first = peak = math.nan  # the first batch's loss and the largest batch loss: a collapse blows up first
    nb_batches = len(Xtr) // cfg.batch_size  # drop the last partial batch: batch norm needs > 1 sample
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for epoch in range(cfg.epochs):
            order = rng.permutation(len(Xtr))
            total = 0.0
            for j in range(nb_batches):
                idx = order[j * cfg.batch_size:(j + 1) * cfg.batch_size]
                logits, cache = model.forward(Xtr[idx], training=True)
                loss, dlogits = cross_entropy(logits, ytr[idx])
                if not math.isfinite(loss):
                    diverged = True
                    break
                first = loss if math.isnan(first) else first
                peak = loss if not peak >= loss else peak
                model.sgd_step(model.backward(cache, dlogits), lr)
                total += loss
            if diverged or not all(np.isfinite(p).all() for p in model.params.values()):
                diverged = True
                # the model is broken from here on: its (chance-level) accuracy fills the remaining epochs
                acc = accuracy(model, Xte, yte)
                accs += [acc] * (cfg.epochs - epoch)
                losses += [math.nan] * (cfg.epochs - epoch)
                break
            losses.append(total / nb_batches)
            accs.append(accuracy(model, Xte, yte))
    return accs, losses, diverged or (not losses[-1] <= COLLAPSED and peak >= BLOWUP * first)


class single_threaded:
    """Tiny matrices (64 x 128): BLAS and Numba threads only add overhead, and on a shared machine a spinning
    OpenBLAS pool made a 64x128 matmul 70x slower. Limits both for the study and restores them after."""

    def __enter__(self):
        import numba
        from threadpoolctl import threadpool_limits

        self._numba_threads = numba.get_num_threads()
        numba.set_num_threads(1)
        self._blas = threadpool_limits(1, user_api="blas")
        return self

    def __exit__(self, *exc):
        import numba

        self._blas.unregister()
        numba.set_num_threads(self._numba_threads)


def run_study(cfg: Config, progress=print):
    """Train every (norm, lr, seed); returns (runs DataFrame, curves DataFrame)."""
    import pandas as pd

    data = load_digits_split(np.dtype(cfg.dtype))
    runs, curves = [], []
    for norm in cfg.norms:
        for lr in cfg.lrs:
            for seed in cfg.seeds:
                t0 = time.perf_counter()
                accs, losses, diverged = train_one(data, norm, lr, seed, cfg)
                hit = next((e + 1 for e, a in enumerate(accs) if a >= cfg.target), None)
                peak = max(losses) if all(map(math.isfinite, losses)) else math.inf
                runs.append(dict(norm=norm, lr=lr, seed=seed, final_test_acc=accs[-1], best_test_acc=max(accs),
                                 epochs_to_target=hit, diverged=diverged, final_train_loss=losses[-1],
                                 peak_train_loss=peak, seconds=time.perf_counter() - t0))
                curves += [dict(norm=norm, lr=lr, seed=seed, epoch=e + 1, test_acc=a, train_loss=l)
                           for e, (a, l) in enumerate(zip(accs, losses))]
            done = [r for r in runs if r["norm"] == norm and r["lr"] == lr]
            progress(f"  {norm:6s} lr={lr:<5g} final acc "
                     f"{np.mean([r['final_test_acc'] for r in done]):.3f}  diverged "
                     f"{sum(r['diverged'] for r in done)}/{len(done)}")
    return pd.DataFrame(runs), pd.DataFrame(curves)


def summarize(runs, target=0.9):
    """One row per (norm, lr): mean and sd of the final test accuracy over seeds, the median epochs to the
    target among seeds that reached it (with how many did), and how many seeds diverged."""
    import pandas as pd

    rows = []
    for (norm, lr), g in runs.groupby(["norm", "lr"], sort=False):
        hit = g["epochs_to_target"].dropna()
        rows.append({
            "norm": norm, "lr": lr,
            # the sample sd over seeds (ddof=1; none for one seed)
            "final test acc": f"{g['final_test_acc'].mean():.3f}" + (
                f" ± {g['final_test_acc'].std(ddof=1):.3f}" if len(g) > 1 else ""),
            f"epochs to {target:.0%}": (f"{hit.median():g} ({len(hit)}/{len(g)})" if len(hit)
                                        else f"never (0/{len(g)})"),
            "diverged": f"{int(g['diverged'].sum())}/{len(g)}",
        })
    return pd.DataFrame(rows)


def accuracy_grid(runs):
    """Mean final test accuracy, norms x learning rates (a '*' marks cells where some seed diverged)."""
    mean = runs.pivot_table(index="norm", columns="lr", values="final_test_acc", aggfunc="mean", sort=False)
    div = runs.pivot_table(index="norm", columns="lr", values="diverged", aggfunc="sum", sort=False)
    grid = mean.map(lambda v: f"{v:.3f}") + div.map(lambda d: "*" if d else "")
    grid.columns = [f"lr={c:g}" for c in grid.columns]
    return grid


def plot_curves(curves, cfg: Config, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs = list(dict.fromkeys(curves["lr"]))
    fig, axes = plt.subplots(1, len(lrs), figsize=(3.2 * len(lrs), 3.2), sharey=True, squeeze=False)
    for ax, lr in zip(axes[0], lrs):
        for norm in dict.fromkeys(curves["norm"]):
            c = curves[(curves.lr == lr) & (curves.norm == norm)]
            m = c.groupby("epoch")["test_acc"].agg(["mean", "min", "max"])
            line, = ax.plot(m.index, m["mean"], label=norm)
            ax.fill_between(m.index, m["min"], m["max"], color=line.get_color(), alpha=0.15, lw=0)
        ax.axhline(cfg.target, color="grey", lw=0.6, ls=":")
        ax.set_title(f"lr = {lr:g}")
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("test accuracy (mean, min-max over seeds)")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"MLP {cfg.hidden} on digits, SGD batch {cfg.batch_size}, {len(cfg.seeds)} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(df, index=False):
    try:
        return df.to_markdown(index=index)
    except ImportError:  # tabulate is optional: a plain pipe table
        cols = ([df.index.name or ""] if index else []) + [str(c) for c in df.columns]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for key, row in df.iterrows():
            cells = ([str(key)] if index else []) + [str(v) for v in row.tolist()]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def write_outputs(runs, curves, cfg: Config, seconds):
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out / "lr_runs.csv", index=False)
    curves.to_csv(out / "lr_curves.csv", index=False)
    plot_curves(curves, cfg, out / "lr_curves.png")
    table = (f"MLP 64-{'-'.join(map(str, cfg.hidden))}-10 on scikit-learn digits (1347 train / 450 test), "
             f"SGD batch {cfg.batch_size}, {cfg.epochs} epochs, {cfg.dtype}, seeds {list(cfg.seeds)}, "
             f"backend {cfg.backend or 'cpu (the default)'}; "
             f"{seconds:.0f} s.\n\n"
             "Mean final test accuracy (`*`: at least one seed diverged):\n\n"
             + _markdown(accuracy_grid(runs), index=True) + "\n\n" + _markdown(summarize(runs, cfg.target)) + "\n")
    (out / "lr_table.md").write_text(table)
    return table


def check_config(cfg: Config) -> None:
    """Raise ValueError naming the option for a combination the study cannot run (single values are checked by
    the parser's types); called before any training, so a bad run writes nothing."""
    if "batch" in cfg.norms and cfg.batch_size < 2:
        raise ValueError(f"--batch-size {cfg.batch_size}: batch norm needs at least 2 samples per batch")
    if cfg.batch_size > N_TRAIN:
        raise ValueError(f"--batch-size {cfg.batch_size}: expected at most {N_TRAIN}, the training set size")
    if "group" in cfg.norms and any(h % cfg.groups for h in cfg.hidden):
        raise ValueError(f"--groups {cfg.groups} with --hidden {' '.join(map(str, cfg.hidden))}: group norm "
                         "needs every hidden width divisible by the number of groups")
    problem = output_dir_error("--out", cfg.out)
    if problem:
        raise ValueError(problem)
    if cfg.backend == "cuda":
        from . import cuda

        try:
            cuda.require()
        except cuda.CudaUnavailableError as err:
            raise ValueError(f"--backend cuda: {err}") from None


def _parser():
    p = argparse.ArgumentParser(prog="normbench study", description=__doc__.split("\n\n")[0])
    commands = p.add_subparsers(dest="command", required=True)
    lr = commands.add_parser("lr", help="does normalization let the network train at a larger learning rate?",
                             usage="normbench study lr [options]   (normbench study lr --help)",
                             description=__doc__.split("\n\n")[1])
    d = Config()
    lr.add_argument("--lrs", type=positive_float, **MANY, help=f"learning rates (> 0; default {list(d.lrs)})")
    lr.add_argument("--norms", **MANY, choices=NORMS, help=f"default {list(d.norms)}")
    lr.add_argument("--seeds", type=positive_int, default=len(d.seeds), help="number of seeds, >= 1 (seeds 0, 1, ...)")
    lr.add_argument("--epochs", type=positive_int, default=d.epochs)
    lr.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    lr.add_argument("--hidden", type=positive_int, nargs="+", default=list(d.hidden), help="hidden layer widths")
    lr.add_argument("--groups", type=positive_int, default=d.groups, help="group norm: groups per hidden layer")
    lr.add_argument("--dtype", choices=("float32", "float64"), default=d.dtype)
    lr.add_argument("--backend", choices=("reference", "cpu", "cuda"), default=None)
    lr.add_argument("--out", default=d.out)
    return p, lr


def main(argv=None):
    """``normbench study lr [options]``; a bad option or combination exits 2 (argparse's message) before any
    training."""
    p, lr = _parser()
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    d = Config()
    cfg = Config(lrs=tuple(unique(a.lrs) or d.lrs), norms=tuple(unique(a.norms) or d.norms),
                 seeds=tuple(range(a.seeds)), epochs=a.epochs,
                 batch_size=a.batch_size, hidden=tuple(a.hidden), groups=a.groups, dtype=a.dtype,
                 backend=a.backend, out=a.out)
    try:
        check_config(cfg)
    except ValueError as err:
        lr.error(str(err))
    try:
        import matplotlib  # noqa: F401
        import sklearn  # noqa: F401
    except ModuleNotFoundError as err:
        print(f"normbench study needs {err.name!r}: pip install 'normbench[study]'", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    with single_threaded():
        runs, curves = run_study(cfg)
    table = write_outputs(runs, curves, cfg, time.perf_counter() - t0)
    print(table)
    print(f"wrote {cfg.out}/lr_runs.csv, lr_curves.csv, lr_table.md, lr_curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
