"""Sweeps over the ways to shrink tables: exact budgets per method, int8 bytes, results layout, tables, plots."""

import csv
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdcf import data, embeddings, models, plots, sweep
from mdcf.embeddings import quantize

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ratings():
    return data.synthetic(1_500, 800, 12_000, rank=4, noise=0.5, seed=0)[0]


def config(**overrides):
    settings = dict(dataset="synthetic", model="mf", dims=(4,), alphas=(0.0, 0.5), blocks=3, l2_grid=(0.05, 0.2),
                    epochs=2, patience=1, batch_size=512, base_dims=(32, 16, 8), factors=(2,))
    settings.update(overrides)
    return sweep.SweepConfig(**settings)


@pytest.mark.parametrize("kind", ["mf", "neumf"])
def test_every_method_fits_its_budget_exactly_where_its_steps_allow(ratings, kind):
    kwargs = dict(layers=(8, 4)) if kind == "neumf" else {}
    uniform_dim = 6
    budget = sweep.natural_budgets(ratings, kind, (uniform_dim,), **kwargs)[0]
    expected_type = dict(hash=embeddings.HashSpec, qr=embeddings.QRSpec, tt=embeddings.TTSpec,
                         lowrank=embeddings.MDSpec)
    for method in ("uniform", "md", "hash", "qr", "lowrank", "tt", "md-qr"):
        for alpha, factor in sweep.methods.settings(method, (0.0, 0.4), (2, 3)):
            model, reason = sweep.model_for_method(ratings, kind, budget, method, alpha, factor, blocks=3,
                                                   base_dims=(32, 16, 8), **kwargs)
            assert model is not None, (method, reason)
            total = models.num_params(model.config)
            assert total <= budget, method
            if method in ("md", "hash", "md-qr"):
                assert total >= 0.99 * budget, (method, total, budget)
            if method == "tt":  # small tables: the closest ranks below where none land within 1%
                assert total >= 0.98 * budget, (method, total, budget)
            if method == "uniform":
                assert total == budget
            if method in expected_type:
                assert isinstance(model.config.user, expected_type[method])
                assert isinstance(model.config.item, expected_type[method])
            if method in ("hash", "lowrank", "tt"):  # the factor scales the uniform dimension
                assert model.config.user.base_dim == factor * uniform_dim
            if method == "lowrank":
                assert model.config.user.n_blocks == 1 and model.config.user.dims[0] < factor * uniform_dim
            if method == "qr":  # the factor is the collision count, the dimension the largest that fits
                assert model.config.user.collisions == factor == model.config.item.collisions
                wider = sweep.methods._qr_model(ratings, kind, budget + 10**9, factor, kwargs)[0]
                assert wider.config.user.base_dim > model.config.user.base_dim
            if method == "md-qr":
                assert isinstance(model.config.user, embeddings.QRSpec)
                assert isinstance(model.config.item, embeddings.MDSpec) and model.config.item.n_blocks == 3
                assert model.config.user.base_dim == model.config.item.base_dim


def test_byte_budgets_count_float32_parameters_and_int8_rows(ratings):
    budget = 4 * sweep.natural_budgets(ratings, "mf", (8,))[0]
    for method, alpha in (("uniform", 0.0), ("md", 0.5), ("uniform-int8", 0.0), ("md-int8", 0.5), ("hash", 0.0)):
        model, reason = sweep.model_for_method(ratings, "mf", budget, method, alpha, 2 if method == "hash" else 0,
                                               unit="bytes", blocks=3, base_dims=(64, 32, 16, 8))
        assert model is not None, reason
        size = sweep.model_nbytes(model, method)
        assert size <= budget and (method == "uniform" or size >= 0.99 * budget), (method, size, budget)
        if method in ("uniform", "md", "hash"):
            assert size == 4 * models.num_params(model.config)
        else:  # by hand: int8 codes, a float32 scale and offset per row, float32 for everything else
            by_hand = 4 * models.num_params(model.config)
            for _, _, spec in model.config.embeddings:
                for n, d in zip(spec.sizes, spec.dims):
                    by_hand += n * d + 8 * n - 4 * n * d
            assert size == by_hand
    int8, _ = sweep.model_for_method(ratings, "mf", budget, "uniform-int8", unit="bytes")
    assert int8.config.user.base_dim == 24  # a row of d int8 codes, scale, offset and bias: d + 12 <= 4 * (8 + 1)
    with pytest.raises(ValueError, match="compare it with unit='bytes'"):
        sweep.model_for_method(ratings, "mf", budget, "md-int8", 0.5)
    with pytest.raises(ValueError, match="needs an alpha > 0"):
        sweep.model_for_method(ratings, "mf", budget, "md", 0.0)
    with pytest.raises(ValueError, match="needs a factor >= 1"):
        sweep.model_for_method(ratings, "mf", budget, "hash", 0.0, 0)
    with pytest.raises(ValueError, match="method must be one of"):
        sweep.model_for_method(ratings, "mf", budget, "pca")


@pytest.mark.parametrize("bits", [8, 4])
def test_quantised_bytes_from_a_spec_match_the_quantised_layer(bits):
    for spec in (embeddings.MDSpec((100, 900), (16, 5), 16), embeddings.MDSpec.uniform(37, 7),
                 embeddings.lowrank.low_rank(50, 3, 8)):
        q = quantize.quantize(spec, embeddings.init(jax.random.key(1), spec), bits=bits)
        assert quantize.spec_nbytes(spec, bits) == quantize.nbytes(q)


def test_quantized_params_predict_as_the_quantised_lookup(ratings):
    model = models.build_model(ratings, "mf", dim=8, alpha=0.5, blocks=3)
    params = models.init(jax.random.key(2), model.config, model.global_mean)
    ids = jnp.arange(model.config.item.n_rows)
    quantised = sweep.quantized_params(model, params)
    layer = models.core.layer_params(quantised, "item")
    q = quantize.quantize(model.config.item, models.core.layer_params(params, "item"))
    np.testing.assert_allclose(embeddings.lookup(layer, model.config.item, ids, None),
                               quantize.lookup(q, model.config.item, ids), rtol=1e-6, atol=1e-6)
    assert not np.allclose(embeddings.lookup(layer, model.config.item, ids, None),
                           embeddings.lookup(models.core.layer_params(params, "item"), model.config.item, ids, None))
    assert quantised["tables"]["user_bias"] is params["tables"]["user_bias"]  # biases stay float


def test_a_methods_sweep_records_every_method_and_resumes(ratings, tmp_path):
    methods = ("uniform", "md", "hash", "qr", "lowrank", "tt", "md-qr")
    rows = sweep.run_sweep(config(methods=methods, l2_grid=(0.1,)), tmp_path, ratings=ratings, progress=False)
    assert len(rows) == 7  # one budget: seven cells of one setting each
    assert [r["method"] for r in rows] == list(methods)
    assert all(r["status"] == "ok" for r in rows), [r["status"] for r in rows]
    assert all(r["budget_unit"] == "params" and r["nbytes"] == 4 * r["params"] for r in rows)
    assert {r["factor"] for r in rows if r["method"] in ("hash", "qr", "lowrank", "tt")} == {2}
    assert {r["item_dims"] for r in rows if r["method"] == "qr"} == {"qr m=2"}
    again = sweep.run_sweep(config(methods=methods, l2_grid=(0.1,)), tmp_path, ratings=ratings, progress=False)
    assert [r["seconds"] for r in again] == [r["seconds"] for r in rows]  # nothing retrained
    # More methods and factors extend the folder; another budget unit is refused.
    more = sweep.run_sweep(config(methods=("hash",), factors=(2, 3), l2_grid=(0.1,)), tmp_path, ratings=ratings,
                           progress=False)
    assert len(more) == len(rows) + 1 and more[-1]["factor"] == 3 and more[-1]["method"] == "hash"
    with pytest.raises(ValueError, match="other settings .*budget_unit"):
        sweep.run_sweep(config(budget_unit="bytes"), tmp_path, ratings=ratings, progress=False)
    table = sweep.methods_table(more).splitlines()
    assert len(table) == 1 + 7 and "hash" in table[3]  # one line per method, its factor chosen on validation
    markdown = sweep.markdown_methods(more).splitlines()
    assert len(markdown) == 2 + 7
    assert len(sweep.select(sweep.uniform_and_md(more))) == 2  # the MD tables see uniform and MD only
    assert len(sweep.summary_table(more).splitlines()) == 2


def test_a_byte_sweep_quantises_the_int8_methods(ratings, tmp_path):
    rows = sweep.run_sweep(config(methods=("uniform", "md", "uniform-int8", "md-int8"), budget_unit="bytes",
                                  dims=(8,), l2_grid=(0.1,), base_dims=(64, 32, 16)), tmp_path, ratings=ratings,
                           progress=False)
    assert [r["method"] for r in rows] == ["uniform", "md", "uniform-int8", "md-int8"]
    assert all(r["status"] == "ok" for r in rows), [r["status"] for r in rows]
    budget = rows[0]["budget"]
    train_all, _ = data.split(ratings, "random", 0.1, seed=0)
    fit_part, _ = data.split(train_all, "random", 0.1, seed=1)
    assert budget == 4 * sweep.natural_budgets(fit_part, "mf", (8,))[0]  # the uniform model's float32 bytes
    for r in rows:
        assert r["nbytes"] <= budget and r["budget_unit"] == "bytes"
    assert rows[2]["base_dim"] == 24 and rows[2]["params"] > 2.5 * rows[0]["params"]  # int8 rows hold more
    with pytest.raises(ValueError, match="budget_unit='bytes'"):
        config(methods=("md-int8",))


def test_first_layout_results_are_read_and_rewritten(ratings, tmp_path):
    rows = sweep.run_sweep(config(), tmp_path, ratings=ratings, progress=False)
    old = [c for c in sweep.COLUMNS if c not in ("method", "budget_unit", "nbytes", "factor")]
    with open(tmp_path / "results.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    with open(tmp_path / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=old, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(lines)
    text = (tmp_path / "results.csv").read_text()
    read = sweep.read_results(tmp_path / "results.csv")  # read in today's layout, the file untouched
    assert [(r["method"], r["factor"], r["nbytes"]) for r in read] == [
        ("uniform" if r["alpha"] == 0 else "md", 0, 4 * r["params"]) for r in rows]
    assert (tmp_path / "results.csv").read_text() == text
    again = sweep.run_sweep(config(), tmp_path, ratings=ratings, progress=False)  # a sweep rewrites it, nothing retrains
    assert [r["seconds"] for r in again] == [r["seconds"] for r in rows]
    assert (tmp_path / "results.csv.v1").read_text() == text
    with open(tmp_path / "results.csv") as f:
        assert tuple(next(csv.reader(f))) == sweep.COLUMNS


@pytest.mark.parametrize("field, value", [("methods", ("md", "pca")), ("methods", ()), ("factors", (0,)),
                                          ("budget_unit", "kb")])
def test_method_settings_out_of_range_are_refused(field, value):
    with pytest.raises(ValueError, match=rf"SweepConfig: {field} must be"):
        config(**{field: value})


def _row(budget, method, alpha, factor, seed, val, test, params=None):
    return {"dataset": "d", "model": "mf", "method": method, "budget_unit": "params", "budget": budget,
            "params": params or budget, "nbytes": 4 * (params or budget), "alpha": alpha, "factor": factor,
            "blocks": 8, "seed": seed, "val_mse": val, "test_mse": test, "status": "ok"}


def test_methods_table_picks_settings_on_validation_and_pairs_seeds(tmp_path):
    rows = []
    for seed, shift in ((0, 0.0), (1, 0.2)):
        rows += [
            _row(1000, "uniform", 0.0, 0, seed, 0.90 + shift, 0.90 + shift),
            _row(1000, "md", 0.3, 0, seed, 0.85 + shift, 0.86 + shift),
            # factor 4 has the better test MSE but the worse validation MSE: not chosen
            _row(1000, "hash", 0.0, 2, seed, 0.80 + shift, 0.95 + shift, params=990),
            _row(1000, "hash", 0.0, 4, seed, 0.99 + shift, 0.10),
            _row(1000, "qr", 0.0, 2, seed, 0.88 + shift, 0.80 + shift + 0.02 * seed, params=700),
        ]
    cells = sweep.method_cells(rows)
    assert cells[1000, "hash"][0] == "×2" and cells[1000, "qr"][0] == "m=2" and cells[1000, "md"][0] == "α=0.3"
    lines = sweep.methods_table(rows).splitlines()
    assert [line.split()[1] for line in lines[1:]] == ["uniform", "md", "hash", "qr"]
    assert "+0.0500+-0.0000" in lines[3] and "+0.0900+-0.0000" in lines[3]  # hash - uniform, hash - MD
    assert "-0.0900+-0.0100" in lines[4] and "70.0%" in lines[4]  # qr - uniform per seed: -0.10, -0.08
    markdown = sweep.markdown_methods(rows).splitlines()
    assert "| 1,000 | qr | m=2 | 700 (70%) |" in markdown[5] and "(n=2)" in markdown[5]
    import matplotlib

    matplotlib.use("Agg")
    figure = plots.method_curves(rows)
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["uniform", "md", "hash", "qr"]
    png, _ = plots.save(figure, tmp_path / "methods")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no finished run"):
        plots.method_curves([{**r, "status": "diverged"} for r in rows])


def test_budget_sweep_script_takes_methods_and_byte_budgets(ml100k_dir, tmp_path):
    env = {"MDCF_FAST": "1", "MDCF_DATA_DIR": str(ml100k_dir), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "HOME": str(tmp_path)}
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "budget_sweep.py"), "--methods", "md-int8",
                           "--budget-unit", "bytes", "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test MSE of each method at equal byte budgets" in done.stdout
    assert (out / "method_curves.png").is_file()
    rows = sweep.read_results(out / "results.csv")
    assert {r["method"] for r in rows} == {"uniform", "md-int8"}  # alpha 0 of fast mode: uniform
    report = subprocess.run([sys.executable, str(ROOT / "experiments" / "report.py"), "--markdown", str(out)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert report.returncode == 0 and "| budget (bytes) | method |" in report.stdout
    refused = subprocess.run([sys.executable, str(ROOT / "experiments" / "budget_sweep.py"), "--methods", "md-int8",
                              "--out", str(tmp_path / "other")], capture_output=True, text=True, env=env, timeout=300)
    assert refused.returncode == 2 and "budget_unit='bytes'" in refused.stderr and "Traceback" not in refused.stderr


def test_settings_of_each_method():
    assert sweep.methods.settings("md", (0.0, 0.2), (2,)) == [(0.2, 0)]
    assert sweep.methods.settings("tt", (0.0, 0.2), (2, 4)) == [(0.0, 2), (0.0, 4)]
    assert sweep.methods.settings("uniform-int8", (0.2,), (2,)) == [(0.0, 0)]
    with pytest.raises(ValueError, match="method must be one of"):
        sweep.methods.settings("pca", (0.2,), (2,))
