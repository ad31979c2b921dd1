"""Equal-budget experiments: uniform against mixed dimensions at exactly matched parameter counts.

One *cell* is (budget, alpha, seed). Alpha 0 is the uniform baseline: one table
per side of the largest dimension that fits the budget. Alpha > 0 is an MD model
(frequency equipartition into ``blocks`` blocks, popularity-based dimensions
solved by :func:`mdcf.sizing.solve_budget`) whose *total* parameter count,
projections, biases and MLP included, lies within 1% below the same budget.
Every cell trains each point of the same small grid of regularisation
strengths (and learning rates) with early stopping on a validation split
carved from the training data, so no configuration wins by being better
tuned; the grid point with the best validation MSE is the cell's result.

Results go to a CSV with one row per training run, appended atomically as runs
finish; a rerun skips the runs already there, so a killed sweep loses at most
the run in flight. :func:`select` picks each cell's best-validation run.

Besides MD, a sweep can compare the other ways to shrink tables at the same budgets
(``methods``: hashing, quotient-remainder, low-rank, tensor-train, MD users with QR
items, int8 rows; :mod:`mdcf.sweep.methods`), in parameters or in bytes
(``budget_unit``), each method's setting tuned on validation like alpha;
:func:`methods_table` pairs every method with uniform and MD per seed.

The click sweep (:func:`run_ctr_sweep`, :mod:`mdcf.sweep.ctr`) compares DLRM with
uniform tables against MD tables, one block per field, at the uniform tables'
embedding budgets, and the other ways to shrink them per field (hashing, QR, low-rank,
tensor-train; int8 rows in bytes), each at its validation-chosen setting.
"""

from .analysis import (
    ablation_runs_table,
    ablation_table,
    best_alpha,
    claim_check,
    fraction_check,
    markdown_ablation,
    markdown_methods,
    markdown_sweep,
    method_cells,
    method_of,
    methods_table,
    paired_difference,
    select,
    summary_table,
    uniform_and_md,
)
from .budget import (
    PAPER_ABLATION_BUDGET,
    PAPER_ABLATION_ROWS,
    ablation_budget,
    ablation_model_budget,
    model_for_budget,
    natural_budgets,
)
from .ctr import (CTR_BYTES_ONLY, CTR_COLUMNS, CTR_FACTOR_METHODS, CTR_METHODS, CTRSweepConfig, ctr_cells,
                  ctr_fast_mode, ctr_method_cells, ctr_methods_table, ctr_model, ctr_table, embedding_nbytes,
                  load_clicks, read_ctr_results, run_ctr_sweep)
from .config import SweepConfig, add_device_arguments, check_dataset, fast_mode, load_dataset, mesh_from_arguments
from .methods import BYTES_ONLY, FACTOR_METHODS, METHODS, model_for_method, model_nbytes, quantized_params
from .runs import COLUMNS, append_result, read_results, run_sweep

__all__ = [
    "COLUMNS",
    "SweepConfig",
    "METHODS",
    "FACTOR_METHODS",
    "BYTES_ONLY",
    "model_for_method",
    "model_nbytes",
    "quantized_params",
    "method_of",
    "uniform_and_md",
    "method_cells",
    "methods_table",
    "markdown_methods",
    "fast_mode",
    "check_dataset",
    "load_dataset",
    "mesh_from_arguments",
    "add_device_arguments",
    "natural_budgets",
    "model_for_budget",
    "ablation_budget",
    "ablation_model_budget",
    "PAPER_ABLATION_BUDGET",
    "PAPER_ABLATION_ROWS",
    "run_sweep",
    "read_results",
    "append_result",
    "select",
    "best_alpha",
    "paired_difference",
    "summary_table",
    "claim_check",
    "fraction_check",
    "ablation_table",
    "ablation_runs_table",
    "markdown_sweep",
    "markdown_ablation",
    "CTRSweepConfig",
    "CTR_COLUMNS",
    "run_ctr_sweep",
    "read_ctr_results",
    "load_clicks",
    "ctr_fast_mode",
    "ctr_cells",
    "ctr_table",
    "CTR_METHODS",
    "CTR_FACTOR_METHODS",
    "CTR_BYTES_ONLY",
    "ctr_model",
    "embedding_nbytes",
    "ctr_method_cells",
    "ctr_methods_table",
]
