"""Row gathers, row scatters and block projections in the forms XLA's CPU backend runs fastest.

Every function gives exactly what its plain ``jnp`` counterpart gives; only the
emitted loops differ. Why each form is chosen, with the measurements, is in
``docs/performance.md`` ("Kernels").
"""

from __future__ import annotations

import jax

__all__ = ["take_rows", "scatter_rows", "project", "row_view", "view_width"]


def row_view(table: jax.Array) -> tuple[int, ...] | None:
    """The shape ``[n, d / b, b]`` through which rows of a 2-D ``[n, d]`` table are
    gathered and scattered, or ``None`` to use the table as it is.

    CPU only (:func:`view_width` chooses ``b``); other backends use the table as it
    is, since there a reshaped scatter copies the whole table.
    """
    if table.ndim != 2 or jax.default_backend() != "cpu":
        return None
    width = view_width(table.shape[1])
    return None if width is None else (table.shape[0], table.shape[1] // width, width)


def view_width(d: int) -> int | None:
    """The ``b`` of :func:`row_view`'s ``[d / b, b]`` view of a row of ``d``, or ``None``.

    Rows of up to 8 stay as they are; a longer row becomes ``[a, b]`` with ``a`` a
    power of two and ``b <= 8`` (``b = 4`` first) where ``d`` has that form, else
    ``[d / 2, 2]`` for even ``d``; odd ``d`` stays as it is.
    """
    if d <= 8:
        return None
    for width in (4, 8, 7, 6, 5):
        count, rest = divmod(d, width)
        if rest == 0 and count >= 2 and count & (count - 1) == 0:  # d / width: a power of two
            return width
    return 2 if d % 2 == 0 else None


def take_rows(table: jax.Array, rows: jax.Array, fill_value=0, unique_indices: bool = False) -> jax.Array:
    """``table[rows]`` for a batch of row ids ``[B]``; ids outside ``[0, n)`` (negative
    ones included) give ``fill_value``. Differentiable.

    ``fill_value=None``: ids outside ``[0, n)`` read the nearest row (clamped), for
    callers that never use the values of such ids; no bounds are checked per element.
    """
    view = row_view(table)
    source = table if view is None else table.reshape(view)
    if fill_value is None:
        out = source.at[rows].get(mode="clip", unique_indices=unique_indices, wrap_negative_indices=False)
    else:
        out = source.at[rows].get(mode="fill", fill_value=fill_value, unique_indices=unique_indices,
                                  wrap_negative_indices=False)
    return out if view is None else out.reshape(rows.shape[0], table.shape[1])


def scatter_rows(table: jax.Array, rows: jax.Array, values: jax.Array, op: str = "add",
                 unique_indices: bool = False) -> jax.Array:
    """``table.at[rows].add(values)`` (``op="add"``) or ``.set(values)`` (``op="set"``);
    ids outside ``[0, n)`` (negative ones included) are dropped. The same view of
    the rows as :func:`take_rows`."""
    view = row_view(table)
    target = table if view is None else table.reshape(view)
    update = values if view is None else values.reshape((values.shape[0],) + view[1:])
    ref = target.at[rows]
    if op == "add":
        out = ref.add(update, mode="drop", unique_indices=unique_indices, wrap_negative_indices=False)
    elif op == "set":
        out = ref.set(update, mode="drop", unique_indices=unique_indices, wrap_negative_indices=False)
    else:
        raise ValueError(f"op must be 'add' or 'set', got {op!r}")
    return out if view is None else out.reshape(table.shape)


@jax.custom_jvp
def project(vectors: jax.Array, projection: jax.Array) -> jax.Array:
    """``vectors @ projection`` (``[m, d_i] @ [d_i, d0]``), the same values through every
    transformation.

    On a CPU the projection's gradient ``vectors.T @ g`` runs as a plain product of
    a laid-out transpose (XLA's own path for a product contracting both operands'
    first axes is slow for these skinny shapes).
    """
    return vectors @ projection


@project.defjvp
def _project_jvp(primals, tangents):
    vectors, projection = primals
    d_vectors, d_projection = tangents
    if jax.default_backend() == "cpu":
        # Transposing ``transposed.T @ d_projection`` for reverse mode gives ``transposed @ g``;
        # the barrier keeps XLA from folding the transpose back into the product.
        transposed = jax.lax.optimization_barrier(vectors.T)
        d_out = transposed.T @ d_projection
    else:  # other backends' libraries take transposed operands as they are
        d_out = vectors @ d_projection
    return vectors @ projection, d_vectors @ projection + d_out
