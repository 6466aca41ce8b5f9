"""A closed-form ridge-regression memory that can forget rows exactly.

Ridge regression of targets ``Y`` on features ``X`` (a column of ones appended for the bias) has
the closed form ``W = R X^T Y`` with ``R = (X^T X + gamma I)^-1``. ``R`` is all the memory of the
data a later update needs: removing rows ``(X_f, Y_f)`` gives, by the Woodbury identity,

    ``R' = R + R X_f^T (I - X_f R X_f^T)^-1 X_f R``
    ``W' = W - R' X_f^T (Y_f - X_f W)``

which equals refitting on the remaining rows (up to rounding), without those rows. Everything is
computed in float64. The bias column is regularised like every other weight (``gamma I`` over
the whole ``(d + 1)``-square), so a refit must use the same convention to match.
"""

from __future__ import annotations

import torch
from torch import Tensor


def with_bias(features: Tensor) -> Tensor:
    """``features`` as float64 with a column of ones appended: ``(N, d) -> (N, d + 1)``.

    Example:
        >>> with_bias(torch.tensor([[2.0], [3.0]])).tolist()
        [[2.0, 1.0], [3.0, 1.0]]
    """
    features = features.to(torch.float64)
    return torch.cat([features, features.new_ones(features.shape[0], 1)], dim=1)


def _design(features: Tensor, targets: Tensor, bias: bool, what: str) -> tuple[Tensor, Tensor]:
    """Checked float64 design matrix (with the bias column if asked) and targets."""
    if features.dim() != 2:
        raise ValueError(f"{what} features must be a matrix (N, d), got shape {tuple(features.shape)}")
    if targets.dim() != 2 or targets.shape[0] != features.shape[0]:
        raise ValueError(
            f"{what} targets must be a matrix (N, C) with one row per feature row; got features "
            f"{tuple(features.shape)} and targets {tuple(targets.shape)}"
        )
    x = with_bias(features) if bias else features.to(torch.float64)
    y = targets.to(torch.float64)
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError(f"{what} features or targets hold NaN or infinite values")
    return x, y


def ridge_fit(features: Tensor, targets: Tensor, gamma: float, *, bias: bool = True) -> tuple[Tensor, Tensor]:
    """Fits ridge regression in closed form: ``R = (X^T X + gamma I)^-1``, ``W = R X^T Y``.

    Args:
        features: ``(N, d)`` features (``N`` may be 0: then ``W = 0``).
        targets: ``(N, C)`` targets, e.g. one-hot labels.
        gamma: Ridge regularisation, > 0 (it keeps ``X^T X + gamma I`` invertible for any data).
        bias: Append a column of ones to the features (``W``'s last row is then the bias).

    Returns:
        ``(R, W)``: the ``(d', d')`` memory and the ``(d', C)`` weights, float64, on the
        features' device (``d' = d + 1`` with the bias, else ``d``).

    Raises:
        ValueError: If ``gamma`` is not > 0, the shapes do not match, or the data are not finite.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [2.0]])
        >>> r, w = ridge_fit(x, 2 * x + 1, gamma=1e-9)
        >>> [round(v, 6) for v in w.flatten().tolist()]  # slope 2, bias 1
        [2.0, 1.0]
    """
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    x, y = _design(features, targets, bias, "fit")
    gram = x.T @ x + gamma * torch.eye(x.shape[1], dtype=torch.float64, device=x.device)
    # X^T X + gamma I is symmetric positive definite: invert it through its Cholesky factor.
    memory = torch.cholesky_inverse(torch.linalg.cholesky(gram))
    # Exactly symmetric, so later updates stay symmetric; contiguous, so that a memory read back
    # from a checkpoint (stored contiguous) gives bit-identical updates.
    memory = ((memory + memory.T) / 2).contiguous()
    return memory, (memory @ (x.T @ y)).contiguous()


def ridge_remove(
    memory: Tensor,
    weights: Tensor,
    features: Tensor,
    targets: Tensor,
    *,
    bias: bool = True,
    rows: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Removes rows from a ridge fit by the Woodbury identity (no other data needed).

    ``R' = R + R X_f^T (I - X_f R X_f^T)^-1 X_f R`` and ``W' = W - R' X_f^T (Y_f - X_f W)``: the
    memory and weights of a fit on the remaining rows, with the same ``gamma``. Exact only if
    ``(memory, weights)`` came from a fit (or earlier removals) that held these rows with these
    targets.

    Args:
        memory: ``(d', d')`` memory ``R`` of the current fit.
        weights: ``(d', C)`` weights ``W`` of the current fit.
        features: ``(k, d)`` features of the rows to remove (``k >= 1``).
        targets: ``(k, C)`` their targets, as they were fitted.
        bias: Whether the fit appended a bias column (as in :func:`ridge_fit`).
        rows: Rows the current fit holds, if known: removing more than that is refused.

    Returns:
        ``(R', W')``, float64.

    Raises:
        ValueError: If the shapes do not fit the memory, more rows are removed than the fit
            holds, or ``I - X_f R X_f^T`` is not positive definite: the remaining gram matrix
            ``X^T X + gamma I - X_f^T X_f`` would then not be positive definite, which happens
            when the rows were not (all) in the fit, or were removed already.

    Example:
        >>> x, y = torch.rand(6, 2, dtype=torch.float64), torch.rand(6, 3, dtype=torch.float64)
        >>> r, w = ridge_fit(x, y, gamma=0.5)
        >>> r2, w2 = ridge_remove(r, w, x[4:], y[4:])
        >>> r_ref, w_ref = ridge_fit(x[:4], y[:4], gamma=0.5)
        >>> bool(torch.allclose(w2, w_ref)) and bool(torch.allclose(r2, r_ref))
        True
    """
    x, y = _design(features, targets, bias, "removed")
    k, dim = x.shape
    if k == 0:
        raise ValueError("nothing to remove: no rows were given")
    if memory.dim() != 2 or memory.shape != (dim, dim):
        raise ValueError(
            f"the memory is {tuple(memory.shape)} but the removed rows have {dim} columns"
            f"{' (bias included)' if bias else ''}"
        )
    if weights.dim() != 2 or weights.shape[0] != dim or weights.shape[1] != y.shape[1]:
        raise ValueError(
            f"the weights are {tuple(weights.shape)} but the removed rows need ({dim}, {y.shape[1]})"
        )
    if rows is not None and k > rows:
        raise ValueError(f"cannot remove {k} rows from a fit that holds {rows}")
    memory = memory.to(device=x.device, dtype=torch.float64).contiguous()
    weights = weights.to(device=x.device, dtype=torch.float64).contiguous()
    rx = memory @ x.T  # R X_f^T, (d', k)
    schur = torch.eye(k, dtype=torch.float64, device=x.device) - x @ rx
    schur = (schur + schur.T) / 2
    factor, info = torch.linalg.cholesky_ex(schur)
    if int(info) != 0:
        raise ValueError(
            f"removing these {k} rows leaves a ridge problem that is not positive definite "
            "(I - X_f R X_f^T is singular or indefinite): the rows were not all in the fitted "
            "data, or were removed already"
        )
    updated = memory + rx @ torch.cholesky_solve(rx.T, factor)
    updated = ((updated + updated.T) / 2).contiguous()
    return updated, (weights - updated @ (x.T @ (y - x @ weights))).contiguous()
