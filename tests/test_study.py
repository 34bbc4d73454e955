"""The training study: the MLP's hand-written backward (normbench kernels for the norms) against central
finite differences, and a tiny `normbench study lr` run that writes its table, CSVs and PNG."""
import math

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the study needs scikit-learn (pip install 'normbench[study]')")
pytest.importorskip("matplotlib", reason="the study needs matplotlib (pip install 'normbench[study]')")

from normbench import study  # noqa: E402


def _loss(model, X, y):
    logits, cache = model.forward(X, training=True)
    loss, dlogits = study.cross_entropy(logits, y)
    return loss, cache, dlogits


@pytest.mark.parametrize("norm", study.NORMS)
def test_mlp_backward_matches_finite_differences(norm):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((8, 5))
    y = rng.integers(0, 3, 8)
    model = study.MLP(5, (6, 6), 3, norm, rng, dtype=np.float64, groups=2)
    for name, p in model.params.items():  # move gamma/beta/bias off their trivial initial values
        p += 0.3 * rng.standard_normal(p.shape)
    _, cache, dlogits = _loss(model, X, y)
    grads = model.backward(cache, dlogits)
    assert sorted(grads) == sorted(model.params)
    h = 1e-6
    for name, p in model.params.items():
        # central differences on up to 6 entries of every parameter (all of them would cost ~250 forwards)
        flat = rng.permutation(p.size)[:6]
        for i in (np.unravel_index(k, p.shape) for k in flat):
            old = p[i]
            p[i] = old + h
            up = _loss(model, X, y)[0]
            p[i] = old - h
            down = _loss(model, X, y)[0]
            p[i] = old
            fd = (up - down) / (2 * h)
            assert grads[name][i] == pytest.approx(fd, rel=1e-5, abs=1e-7), f"{norm}: d loss / d {name}{i}"


def test_cross_entropy_gradient_closed_form():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    loss, d = study.cross_entropy(logits, np.array([0, 2]))
    p0 = np.exp(logits[0]) / np.exp(logits[0]).sum()
    assert loss == pytest.approx((-math.log(p0[0]) + math.log(3)) / 2)
    np.testing.assert_allclose(d[1], (np.full(3, 1 / 3) - [0, 0, 1]) / 2)


def test_tiny_study_writes_table_csv_and_png(tmp_path):
    import numba

    threads = numba.get_num_threads()
    # the reference backend: this test is about the pipeline (training loop, table, CSV, PNG); the kernels in the
    # loop are the finite-difference test's business, and compiling more of them here would only cost time
    rc = study.main(["lr", "--epochs", "2", "--seeds", "1", "--lrs", "0.1", "1.0", "--norms", "none", "batch",
                     "--hidden", "16", "16", "--groups", "4", "--backend", "reference", "--out", str(tmp_path)])
    assert rc == 0
    assert numba.get_num_threads() == threads  # the study's single-threading is undone
    import pandas as pd

    runs = pd.read_csv(tmp_path / "lr_runs.csv")
    assert len(runs) == 4 and set(runs.norm) == {"none", "batch"} and set(runs.lr) == {0.1, 1.0}
    # two epochs at lr 0.1 already learn far beyond chance (10%) on digits
    assert (runs[runs.lr == 0.1].final_test_acc > 0.5).all()
    curves = pd.read_csv(tmp_path / "lr_curves.csv")
    assert len(curves) == 4 * 2
    table = (tmp_path / "lr_table.md").read_text()
    assert "epochs to 90%" in table and "| batch" in table and "lr=1" in table
    assert (tmp_path / "lr_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_usage_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        study.main([])
    assert exc.value.code == 2 and "required: command" in capsys.readouterr().err
    with pytest.raises(ValueError, match="norm="):
        study.MLP(4, (4,), 2, "batchnorm", np.random.default_rng(0))


TINY = ["lr", "--epochs", "1", "--seeds", "1", "--norms", "layer", "--hidden", "8", "--lrs", "0.1"]


@pytest.mark.parametrize("extra, message", [
    (["--seeds", "0"], "argument --seeds: expected an integer >= 1, got '0'"),
    (["--seeds", "-1"], "argument --seeds: expected an integer >= 1, got '-1'"),
    (["--seeds", "two"], "argument --seeds: expected an integer >= 1, got 'two'"),
    (["--epochs", "0"], "argument --epochs: expected an integer >= 1, got '0'"),
    (["--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got '0'"),
    (["--hidden", "8", "0"], "argument --hidden: expected an integer >= 1, got '0'"),
    (["--groups", "0"], "argument --groups: expected an integer >= 1, got '0'"),
    (["--lrs", "0.1", "nan"], "argument --lrs: expected a finite number > 0, got 'nan'"),
    (["--lrs", "inf"], "argument --lrs: expected a finite number > 0, got 'inf'"),
    (["--lrs", "-0.1"], "argument --lrs: expected a finite number > 0, got '-0.1'"),
    (["--norms", "batch", "--batch-size", "1"], "--batch-size 1: batch norm needs at least 2 samples per batch"),
    (["--batch-size", str(study.N_TRAIN + 1)],
     f"--batch-size {study.N_TRAIN + 1}: expected at most {study.N_TRAIN}, the training set size"),
    (["--norms", "group", "--groups", "3"], "--groups 3 with --hidden 8: group norm needs every hidden width "
                                            "divisible by the number of groups"),
])
def test_bad_options_exit_2_before_training(tmp_path, capsys, monkeypatch, extra, message):
    """Every bad option or combination: argparse's exit 2 and a message naming the option, the value and what
    was expected, before any training (run_study is not reached) and with nothing written."""
    monkeypatch.setattr(study, "run_study", lambda *a, **k: pytest.fail("trained despite a bad option"))
    out = tmp_path / "st"
    with pytest.raises(SystemExit) as exc:
        study.main(TINY + ["--out", str(out)] + extra)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"normbench study lr: error: {message}"
    assert not out.exists()


def test_out_is_a_file_and_cuda_unavailable_exit_2(tmp_path, capsys, monkeypatch):
    from normbench import cuda

    monkeypatch.setattr(study, "run_study", lambda *a, **k: pytest.fail("trained despite a bad option"))
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(SystemExit) as exc:
        study.main(TINY + ["--out", str(afile)])
    assert exc.value.code == 2 and f"--out {afile} is a file" in capsys.readouterr().err

    def no_gpu():
        raise cuda.CudaUnavailableError("backend='cuda' needs a CUDA GPU (none found)")

    monkeypatch.setattr(cuda, "require", no_gpu)  # whether or not this machine has a GPU
    out = tmp_path / "st"
    with pytest.raises(SystemExit) as exc:
        study.main(TINY + ["--backend", "cuda", "--out", str(out)])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == ("normbench study lr: error: --backend cuda: backend='cuda' "
                                                        "needs a CUDA GPU (none found)")
    assert not out.exists()


def test_training_set_size_is_the_split():
    assert len(study.load_digits_split()[0]) == study.N_TRAIN


def test_slow_learning_is_not_diverged_and_a_collapse_is():
    """'Diverged' means the loss became non-finite, or it blew up and the run ended at a guess (loss near ln 10).
    One epoch at a small rate ends above 0.9 ln 10 too, and was flagged, with its loss falling from the start."""
    data = study.load_digits_split()
    cfg = study.Config(lrs=(0.01,), norms=("none",), seeds=(0,), epochs=1, hidden=(32,), groups=4,
                       backend="reference")
    accs, losses, diverged = study.train_one(data, "none", 0.01, 0, cfg)
    assert losses[-1] > study.COLLAPSED  # the case: slow, still learning
    assert not diverged
    cfg = study.Config(lrs=(3.0,), norms=("none",), seeds=(0,), epochs=3, hidden=(32,), groups=4,
                       backend="reference")
    accs, losses, diverged = study.train_one(data, "none", 3.0, 0, cfg)  # a blow-up that ends at a guess
    assert diverged and losses[-1] > study.COLLAPSED and accs[-1] < 0.2


def test_repeated_list_options_extend_and_count_once(tmp_path, monkeypatch):
    """--lrs/--norms given twice extend the list (not keep the last), and a value given twice is trained once
    (the docs' rule for list options; duplicates were trained again and counted as more seeds)."""
    seen = []
    monkeypatch.setattr(study, "run_study", lambda cfg: seen.append(cfg) or (_ for _ in ()).throw(SystemExit(0)))
    with pytest.raises(SystemExit):
        study.main(["lr", "--norms", "batch", "--norms", "layer", "batch", "--lrs", "0.1", "0.1", "--lrs", "1",
                    "--out", str(tmp_path)])
    assert seen[0].norms == ("batch", "layer") and seen[0].lrs == (0.1, 1.0)
