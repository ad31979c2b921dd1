"""Tables and verdicts from sweep results: each cell's best-validation run, paired differences, the paper's claims."""

from __future__ import annotations

import numpy as np

from .methods import ALPHA_METHODS, METHODS

__all__ = ["select", "method_of", "uniform_and_md", "best_alpha", "paired_difference", "summary_table", "claim_check",
           "fraction_check", "ablation_table", "ablation_runs_table", "markdown_sweep", "markdown_ablation",
           "method_cells", "methods_table", "markdown_methods"]


def method_of(row: dict) -> str:
    """A row's method; rows without one (built by hand) are uniform at alpha 0, else MD."""
    return row.get("method") or ("uniform" if row["alpha"] == 0 else "md")


def uniform_and_md(rows: list[dict]) -> list[dict]:
    """The rows of the uniform baseline and of MD: what the alpha tables and claims read."""
    return [r for r in rows if method_of(r) in ("uniform", "md")]


def select(rows: list[dict]) -> list[dict]:
    """Each cell's run with the best validation MSE (cells: dataset, model, method, budget,
    alpha, factor, blocks, seed)."""
    best: dict[tuple, dict] = {}
    for row in rows:
        if row.get("status") != "ok":
            continue
        cell = (method_of(row), row.get("factor") or 0) + tuple(
            row[k] for k in ("dataset", "model", "budget", "alpha", "blocks", "seed"))
        if cell not in best or row["val_mse"] < best[cell]["val_mse"]:
            best[cell] = row
    return list(best.values())


def best_alpha(cells: dict[float, list[dict]]) -> float:
    """The alpha whose cell has the lowest mean validation MSE over seeds (never test)."""
    return min(cells, key=lambda a: float(np.mean([r["val_mse"] for r in cells[a]])))


def paired_difference(rows: list[dict], baseline: list[dict], key: str = "test_mse") -> list[float]:
    """``rows[key] - baseline[key]`` per seed the two share (the same split): the spread
    of the difference, not of the splits."""
    by_seed = {r["seed"]: r[key] for r in baseline}
    return [r[key] - by_seed[r["seed"]] for r in rows if r["seed"] in by_seed]


def summary_table(rows: list[dict]) -> str:
    """Per budget: uniform against the best MD alpha (chosen on validation), mean over seeds."""
    rows = uniform_and_md(rows)
    chosen = select(rows)
    lines = [f"{'budget':>10} | {'uniform params':>14} {'test MSE':>9} | {'best MD alpha':>13} {'MD params':>10} "
             f"{'test MSE':>9} {'(val MSE)':>9} | {'MD - uniform':>12}"]
    for budget in sorted({r["budget"] for r in rows}):
        cells = [r for r in chosen if r["budget"] == budget]
        by_alpha: dict[float, list[dict]] = {}
        for r in cells:
            by_alpha.setdefault(r["alpha"], []).append(r)
        uniform = by_alpha.get(0.0)
        md = {a: rs for a, rs in by_alpha.items() if a > 0}
        mean = lambda rs, k: float(np.mean([r[k] for r in rs]))  # noqa: E731
        u_text = f"{int(mean(uniform, 'params')):>14,} {mean(uniform, 'test_mse'):>9.4f}" if uniform else f"{'-':>14} {'-':>9}"
        if md:
            alpha = best_alpha(md)
            m_text = (f"{alpha:>13g} {int(mean(md[alpha], 'params')):>10,} {mean(md[alpha], 'test_mse'):>9.4f} "
                      f"{mean(md[alpha], 'val_mse'):>9.4f}")
            diff = f"{mean(md[alpha], 'test_mse') - mean(uniform, 'test_mse'):>+12.4f}" if uniform else f"{'-':>12}"
        else:
            m_text, diff = f"{'-':>13} {'-':>10} {'-':>9} {'-':>9}", f"{'-':>12}"
        lines.append(f"{budget:>10,} | {u_text} | {m_text} | {diff}")
    return "\n".join(lines)


def _cells_by(rows, alpha_filter):
    chosen = select(rows)
    out: dict[tuple[int, float], list[dict]] = {}
    for r in chosen:
        if alpha_filter(r["alpha"]):
            out.setdefault((r["budget"], r["alpha"]), []).append(r)
    return out


def claim_check(rows: list[dict]) -> str:
    """The paper's claim, tested on these results: does MD at a budget match or beat
    uniform at larger budgets (up to 8x)? Mean +- std over seeds of each cell's
    best-validation run, the per-seed (paired) difference MD - uniform at the same
    budget, and 'matches' when the MD mean is at most the uniform mean."""
    rows = uniform_and_md(rows)
    uniform = {b: rs for (b, a), rs in _cells_by(rows, lambda a: a == 0).items()}
    md = _cells_by(rows, lambda a: a > 0)
    mean = lambda rs: float(np.mean([r["test_mse"] for r in rs]))  # noqa: E731
    std = lambda rs: float(np.std([r["test_mse"] for r in rs]))  # noqa: E731
    lines = []
    for budget in sorted(uniform):
        cells = {a: rs for (b, a), rs in md.items() if b == budget}
        if not cells:
            lines.append(f"budget {budget:>9,}: no MD model fits")
            continue
        alpha = best_alpha(cells)
        best = cells[alpha]
        ratios = [b / budget for b in uniform if b > budget and b <= 8.5 * budget and mean(best) <= mean(uniform[b])]
        verdict = (f"matches or beats uniform at up to {max(ratios):.1f}x the parameters" if ratios
                   else "does not match uniform at any larger budget")
        paired = paired_difference(best, uniform[budget])
        lines.append(
            f"budget {budget:>9,}: uniform {mean(uniform[budget]):.4f} +- {std(uniform[budget]):.4f}, "
            f"MD alpha {alpha:g} {mean(best):.4f} +- {std(best):.4f}; MD - uniform per seed "
            f"{np.mean(paired):+.4f} +- {np.std(paired):.4f} (n={len(paired)}); MD {verdict}")
    return "\n".join(lines)


def fraction_check(rows: list[dict], factor: float = 8.0) -> str:
    """The abstract's form of the claim: for each uniform budget, the best MD model
    (alpha chosen on validation) at the largest sweep budget with at most
    ``1/factor`` of its parameters, against it, with the per-seed paired difference."""
    rows = uniform_and_md(rows)
    uniform = {b: rs for (b, a), rs in _cells_by(rows, lambda a: a == 0).items()}
    md = _cells_by(rows, lambda a: a > 0)
    md_budgets = sorted({b for b, _ in md})
    mean = lambda rs: float(np.mean([r["test_mse"] for r in rs]))  # noqa: E731
    lines = []
    for budget in sorted(uniform):
        smaller = [b for b in md_budgets if b * factor <= budget]
        if not smaller:
            continue
        small = max(smaller)
        cells = {a: rs for (b, a), rs in md.items() if b == small}
        alpha = best_alpha(cells)
        best = cells[alpha]
        paired = paired_difference(best, uniform[budget])
        verdict = "matches or beats it" if np.mean(paired) <= 0 else "is worse"
        unit = "bytes" if best[0].get("budget_unit") == "bytes" else "params"
        lines.append(
            f"uniform at {budget:>9,} {unit} {mean(uniform[budget]):.4f}; MD alpha {alpha:g} at {small:,} {unit} "
            f"({budget / small:.1f}x fewer) {mean(best):.4f}; MD - uniform per seed {np.mean(paired):+.4f} "
            f"+- {np.std(paired):.4f} (n={len(paired)}): MD {verdict}")
    if not lines:
        return f"no MD budget in this sweep is 1/{factor:g} of a uniform budget or less"
    return "\n".join(lines)


def ablation_table(rows) -> str:
    """Per alpha: train and test MSE on the popular and rare thirds of items, mean +- std over seeds."""
    rows = uniform_and_md(rows)
    chosen = select(rows)
    lines = [f"{'alpha':>6} {'params':>8} | {'train popular':>14} {'train rare':>14} | {'test popular':>14} "
             f"{'test rare':>14} | {'test all':>14}"]
    for alpha in sorted({r["alpha"] for r in chosen}):
        cell = [r for r in chosen if r["alpha"] == alpha]
        stat = lambda key: f"{np.mean([r[key] for r in cell]):.4f}+-{np.std([r[key] for r in cell]):.4f}"  # noqa: E731
        lines.append(f"{alpha:>6g} {int(np.mean([r['params'] for r in cell])):>8,} | {stat('train_mse_popular'):>14} "
                     f"{stat('train_mse_rare'):>14} | {stat('test_mse_popular'):>14} {stat('test_mse_rare'):>14} | "
                     f"{stat('test_mse'):>14}")
    return "\n".join(lines)


def _stat(cell, key) -> str:
    values = [r[key] for r in cell]
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def markdown_sweep(rows) -> str:
    """Every (budget, alpha) cell's test MSE (mean ± std over seeds, best l2 on
    validation), and the validation-chosen MD alpha against uniform, paired per seed."""
    rows = uniform_and_md(rows)
    chosen = select(rows)
    alphas = sorted({r["alpha"] for r in chosen})
    names = ["uniform" if a == 0 else f"MD α={a:g}" for a in alphas]
    lines = ["| budget | exact params | " + " | ".join(names) + " | MD (α on validation) − uniform, per seed |",
             "|---:|---|" + "---|" * len(alphas) + "---|"]
    for budget in sorted({r["budget"] for r in chosen}):
        cells = {a: [r for r in chosen if r["budget"] == budget and r["alpha"] == a] for a in alphas}
        cells = {a: c for a, c in cells.items() if c}
        params = sorted({r["params"] for c in cells.values() for r in c})
        span = f"{params[0]:,}" if len(params) == 1 else f"{params[0]:,} – {params[-1]:,}"
        row = [f"{budget:,}", span] + [_stat(cells[a], "test_mse") if a in cells else "–" for a in alphas]
        md = {a: c for a, c in cells.items() if a > 0}
        if md and 0.0 in cells:
            alpha = best_alpha(md)
            paired = paired_difference(md[alpha], cells[0.0])
            row.append(f"α={alpha:g}: {np.mean(paired):+.4f} ± {np.std(paired):.4f} (n={len(paired)})")
        else:
            row.append("–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def markdown_ablation(rows) -> str:
    """The ablation table in markdown, with each alpha's per-seed difference from alpha 0."""
    rows = uniform_and_md(rows)
    chosen = select(rows)
    keys = ("train_mse_popular", "train_mse_rare", "test_mse_popular", "test_mse_rare", "test_mse")
    lines = ["| α | params | train MSE popular | train MSE rare | test MSE popular | test MSE rare | test MSE all "
             "| test popular − α=0, per seed | test rare − α=0, per seed |",
             "|---:|---:|---|---|---|---|---|---|---|"]
    base = [r for r in chosen if r["alpha"] == 0]
    for alpha in sorted({r["alpha"] for r in chosen}):
        cell = [r for r in chosen if r["alpha"] == alpha]
        paired = []
        for key in ("test_mse_popular", "test_mse_rare"):
            diffs = paired_difference(cell, base, key)
            paired.append(f"{np.mean(diffs):+.4f} ± {np.std(diffs):.4f}" if diffs and alpha != 0 else "–")
        lines.append(f"| {alpha:g} | {int(np.mean([r['params'] for r in cell])):,} | "
                     + " | ".join([_stat(cell, k) for k in keys] + paired) + " |")
    return "\n".join(lines)


def ablation_runs_table(rows) -> str:
    """Each (alpha, seed) cell's best-validation run: MSE on the popular and rare thirds of items."""
    rows = uniform_and_md(rows)
    chosen = sorted(select(rows), key=lambda r: (r["alpha"], r["seed"]))
    lines = [f"{'alpha':>6} {'seed':>4} {'params':>9} {'train pop':>9} {'train rare':>10} {'test pop':>9} "
             f"{'test rare':>9} {'test all':>9}"]
    for r in chosen:
        lines.append(f"{r['alpha']:>6g} {r['seed']:>4} {r['params']:>9,} {r['train_mse_popular']:>9.4f} "
                     f"{r['train_mse_rare']:>10.4f} {r['test_mse_popular']:>9.4f} {r['test_mse_rare']:>9.4f} "
                     f"{r['test_mse']:>9.4f}")
    return "\n".join(lines)


def method_cells(rows: list[dict]) -> dict[tuple[int, str], tuple[str, list[dict]]]:
    """Per ``(budget, method)``: the setting chosen on validation (lowest mean validation
    MSE over seeds, never test) as text, and its best-validation run per seed."""
    settings: dict[tuple[int, str], dict[tuple, list[dict]]] = {}
    for r in select(rows):
        key = (r["budget"], method_of(r))
        settings.setdefault(key, {}).setdefault((r["alpha"], r.get("factor") or 0), []).append(r)
    out = {}
    for key, by_setting in settings.items():
        (alpha, factor), cell = min(by_setting.items(), key=lambda kv: float(np.mean([r["val_mse"] for r in kv[1]])))
        method = key[1]
        label = (f"α={alpha:g}" if method in ALPHA_METHODS else f"m={factor}" if method == "qr"
                 else f"×{factor}" if factor else "")
        out[key] = (label, cell)
    return out


def _size_of(row: dict) -> int:
    return row["nbytes"] if row.get("budget_unit") == "bytes" else row["params"]


def _method_lines(rows: list[dict]):
    """``(budget, method, setting, size, fill, test, paired-uniform, paired-md)`` per cell."""
    cells = method_cells(rows)
    order = {m: i for i, m in enumerate(METHODS)}
    for budget, method in sorted(cells, key=lambda k: (k[0], order.get(k[1], 99))):
        label, cell = cells[budget, method]
        size = float(np.mean([_size_of(r) for r in cell]))
        paired = []
        for reference in ("uniform", "md"):
            other = cells.get((budget, reference))
            diffs = paired_difference(cell, other[1]) if other and reference != method else []
            paired.append(diffs)
        yield budget, method, label, size, size / budget, cell, paired


def methods_table(rows: list[dict]) -> str:
    """Per budget, every method at its validation-chosen setting: exact size (and its share
    of the budget), test MSE mean +- std over seeds, and the per-seed (paired) differences
    from uniform and from MD on the same splits."""
    unit = "bytes" if any(r.get("budget_unit") == "bytes" for r in rows) else "params"
    lines = [f"{'budget':>10} {'method':>12} {'setting':>8} {unit:>10} {'fill':>6} | {'test MSE':>16} | "
             f"{'- uniform':>16} {'- MD':>16}"]
    fmt = lambda d: f"{np.mean(d):+.4f}+-{np.std(d):.4f}" if d else "-"  # noqa: E731
    for budget, method, label, size, fill, cell, (vs_uniform, vs_md) in _method_lines(rows):
        test = [r["test_mse"] for r in cell]
        lines.append(f"{budget:>10,} {method:>12} {label:>8} {int(size):>10,} {fill:>6.1%} | "
                     f"{np.mean(test):.4f}+-{np.std(test):.4f} | {fmt(vs_uniform):>16} {fmt(vs_md):>16}")
    return "\n".join(lines)


def markdown_methods(rows: list[dict]) -> str:
    """:func:`methods_table` in markdown."""
    unit = "bytes" if any(r.get("budget_unit") == "bytes" for r in rows) else "params"
    lines = [f"| budget ({unit}) | method | setting (on validation) | exact {unit} | test MSE | − uniform, per seed "
             "| − MD, per seed |", "|---:|---|---|---:|---|---|---|"]
    fmt = lambda d: f"{np.mean(d):+.4f} ± {np.std(d):.4f} (n={len(d)})" if d else "–"  # noqa: E731
    for budget, method, label, size, fill, cell, (vs_uniform, vs_md) in _method_lines(rows):
        share = "" if fill >= 0.99 else f" ({fill:.0%})"
        lines.append(f"| {budget:,} | {method} | {label or '–'} | {int(size):,}{share} | {_stat(cell, 'test_mse')} | "
                     f"{fmt(vs_uniform)} | {fmt(vs_md)} |")
    return "\n".join(lines)
