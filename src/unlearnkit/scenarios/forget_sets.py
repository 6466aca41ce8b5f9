"""Which instances to forget: random, worst-case, easiest and one-class forget sets.

An evaluation scenario, not an unlearning method: the worst-case forget set of Fan, Liu, Hero and
Liu, "Challenging Forgets: Unveiling the Worst-Case Forget Sets in Machine Unlearning", ECCV 2024,
https://arxiv.org/abs/2403.07362 (code: https://github.com/OPTML-Group/Unlearn-WorstCase), is
the set of ``m`` training instances whose loss stays lowest after fine-tuning on the rest, i.e. the
set that is hardest to erase. It is found by a bi-level search over soft weights
``w in [0, 1]^N`` with ``sum(w) = m``:

1. ``w`` starts as a seeded random ``m``-subset (ones on it, zeros elsewhere).
2. For ``rounds`` upper rounds: reload the original weights ``theta_0``; run ``lower_epochs``
   epochs of sign-SGD (``theta <- theta - lr * sign(grad)``) on
   ``sum_i (1 - w_i) CE(z_i)`` (fine-tuning on what is kept); compute the per-instance losses
   ``l_i`` under the result; step ``w <- Proj(w - weight_lr * (l + 2 gamma w))``, where ``Proj``
   is the Euclidean projection onto ``{w in [0, 1]^N : sum(w) = m}``
   (:func:`project_capped_simplex`).
3. Every ``binarise_every`` rounds and at the end, ``w`` is binarised to its top ``m`` entries.

Ascent (``w <- Proj(w + weight_lr * (l - 2 gamma w))``, ``kind="easiest"``) gives the easiest set:
the instances whose loss grows most when the rest is fine-tuned on.

Differences from the paper: the upper gradient is the direct one, ``l + 2 gamma w`` (the recipe
of the protocol, no implicit gradient through ``theta``); with ``candidates`` the whole search
(lower-level training included) runs on a pool of rows rather than on the full training set, so
that it stays cheap on large data (e.g. a seeded 2,000 of MNIST's 60,000); the chosen set is then
the hardest ``m`` rows *of that pool*.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from unlearnkit.utils.hashing import array_sha256, file_sha256, state_dict_sha256, tensor_sha256
from unlearnkit.utils.io import write_atomic, write_json_atomic
from unlearnkit.utils.modules import copy_model, eval_mode, model_device

#: Kinds :func:`select_forget_set` accepts.
SelectionKind = Literal["worst", "easiest", "random"]
#: Kinds :func:`draw_forget_set` accepts: the axis of a benchmark.
ForgetSetKind = Literal["random", "worst", "easiest", "one-class"]
FORGET_SET_KINDS: tuple[str, ...] = ("random", "worst", "easiest", "one-class")

#: Version of the cache format; bump it when the search itself changes, so old files are ignored.
_CACHE_VERSION = 1


def project_capped_simplex(w: np.ndarray | Sequence[float], m: float, *, iterations: int = 100) -> np.ndarray:
    """Euclidean projection of ``w`` onto ``{x in [0, 1]^N : sum(x) = m}``.

    The projection is ``clip(w - mu, 0, 1)`` for the ``mu`` at which the sum equals ``m``; the sum
    is non-increasing in ``mu``, so ``mu`` is found by bisection, then made exact by solving the
    linear piece it lies on (the bisection alone leaves an error of the order of its tolerance).

    Args:
        w: The point to project, shape ``(N,)``.
        m: The target sum, ``0 <= m <= N``.
        iterations: Bisection steps (each halves the bracket), 100.

    Returns:
        A new float64 array in ``[0, 1]`` with sum ``m`` (to rounding).

    Raises:
        ValueError: If ``w`` is not 1-D and finite, or ``m`` is outside ``[0, N]``.

    Example:
        >>> project_capped_simplex([0.9, 0.8, 0.1], 1.0).round(3).tolist()
        [0.55, 0.45, 0.0]
        >>> project_capped_simplex([5.0, -1.0], 2.0).tolist()
        [1.0, 1.0]
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 1 or not np.all(np.isfinite(w)):
        raise ValueError(f"w must be a finite 1-D array, got shape {w.shape}")
    n = w.shape[0]
    if not 0 <= m <= n:
        raise ValueError(f"m must be in [0, {n}], got {m}")
    # The two ends have a unique answer that bisection would only approach.
    if m == 0:
        return np.zeros(n)
    if m == n:
        return np.ones(n)
    lo, hi = float(w.min()) - 1.0, float(w.max())  # sum(lo) = n >= m >= 0 = sum(hi)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if np.clip(w - mid, 0.0, 1.0).sum() > m:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * max(1.0, abs(lo)):
            break
    mu = 0.5 * (lo + hi)
    # On the piece around mu the sum is n_upper + sum_free (w_i - mu): solve it for mu exactly.
    shifted = w - mu
    free = (shifted > 0.0) & (shifted < 1.0)
    if free.any():
        exact = (w[free].sum() + np.count_nonzero(shifted >= 1.0) - m) / np.count_nonzero(free)
        # Keep the solve only if it is no worse (it could leave the piece if mu sits on a kink).
        if abs(np.clip(w - exact, 0.0, 1.0).sum() - m) <= abs(np.clip(shifted, 0.0, 1.0).sum() - m):
            mu = exact
    return np.clip(w - mu, 0.0, 1.0)


def top_m_mask(w: np.ndarray, m: int) -> np.ndarray:
    """A 0/1 float array with ones on the ``m`` largest entries of ``w``.

    Ties are broken by position (the lower index wins), so the result is deterministic.

    Example:
        >>> top_m_mask(np.array([0.2, 0.7, 0.7, 0.1]), 2).tolist()
        [0.0, 1.0, 1.0, 0.0]
    """
    order = np.argsort(-np.asarray(w, dtype=np.float64), kind="stable")
    mask = np.zeros(len(w))
    mask[order[:m]] = 1.0
    return mask


@dataclass
class ForgetSetSelection:
    """A chosen forget set and how it was found.

    Attributes:
        indices: The ``m`` chosen rows of the data (sorted, unique, long tensor).
        kind: ``"random"``, ``"worst"``, ``"easiest"`` or ``"one-class"``.
        weights: The final weights over the pool (0/1 after the last binarisation), float64.
        pool: The rows the search ran on (the ``candidates``, or every row), sorted.
        history: One entry per upper round (empty for random and one-class sets): ``round``,
            ``sum``, ``min`` and ``max`` of the weights after that round's step (and binarisation,
            if ``binarised``), and ``mean_loss`` of the pool under that round's lower-level model.
        seed: The seed of every random choice.
        recipe: The settings of the search (everything that changes the result, with the seed).
        from_cache: Whether the result was read from the cache rather than computed.
    """

    indices: Tensor
    kind: str
    weights: np.ndarray
    pool: Tensor
    history: list[dict[str, Any]] = field(default_factory=list)
    seed: int = 0
    recipe: dict[str, Any] = field(default_factory=dict)
    from_cache: bool = False

    @property
    def m(self) -> int:
        """The size of the forget set."""
        return int(self.indices.numel())


def lower_level_losses(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    weights: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
) -> np.ndarray:
    """The lower level of the search: per-instance losses after fine-tuning on what is kept.

    A copy of ``model`` (``model`` itself is untouched: every round restarts from ``theta_0``) is
    trained for ``epochs`` epochs of sign-SGD on ``sum_i (1 - w_i) CE(z_i)`` over shuffled batches,
    then the cross-entropy of every instance is measured in eval mode.

    Args:
        model: The original classifier.
        inputs: The pool's inputs ``(N, ...)``, on the model's device.
        labels: The pool's labels ``(N,)``.
        weights: Forget weights ``w`` ``(N,)`` in ``[0, 1]``.
        epochs: Passes over the pool.
        lr: Sign-SGD step size.
        batch_size: Instances per step.
        generator: Seeded generator of the shuffling.

    Returns:
        The per-instance losses, float64 array ``(N,)``.
    """
    trained = copy_model(model)
    trained.train()
    keep = torch.as_tensor(1.0 - weights, dtype=torch.float32, device=inputs.device)
    params = [p for p in trained.parameters() if p.requires_grad]
    n = inputs.shape[0]
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(inputs.device)
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            per_instance = F.cross_entropy(trained(inputs[batch]), labels[batch], reduction="none")
            # The scale of the loss does not matter: sign-SGD only reads the gradient's signs.
            loss = (keep[batch] * per_instance).sum()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    if g is not None:
                        p.sub_(lr * torch.sign(g))
    losses = []
    with torch.no_grad(), eval_mode(trained):
        for start in range(0, n, 1024):
            logits = trained(inputs[start : start + 1024])
            losses.append(F.cross_entropy(logits, labels[start : start + 1024], reduction="none"))
    return torch.cat(losses).double().cpu().numpy()


def select_forget_set(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    m: int,
    *,
    kind: SelectionKind = "worst",
    rounds: int = 10,
    lower_epochs: int = 10,
    lr: float = 0.01,
    weight_lr: float = 0.01,
    gamma: float = 0.0,
    binarise_every: int | None = 5,
    batch_size: int = 256,
    seed: int = 0,
    candidates: Tensor | Sequence[int] | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> ForgetSetSelection:
    """Selects ``m`` training rows to forget: the worst-case, the easiest or a random set.

    See the module docstring for the recipe (Fan et al., ECCV 2024). The defaults are the paper's:
    10 upper rounds of 10 lower epochs, sign-SGD step 0.01, weight step 0.01, gamma 0. A weight
    step of 0.01 moves the weights by about ``0.01 * loss`` per round, so on a model whose losses
    are small the set drifts slowly away from its random start; raise ``weight_lr`` (or
    ``rounds``) to let it move further.

    Args:
        model: The trained classifier (not modified).
        inputs: Training inputs ``(N, ...)``.
        labels: Training labels ``(N,)``.
        m: The size of the forget set, ``1 <= m <= pool size``.
        kind: ``"worst"`` (descent on ``w``: lowest loss, hardest to erase), ``"easiest"``
            (ascent) or ``"random"`` (a seeded random ``m``-subset of the pool, no search).
        rounds: Upper rounds ``T``, 10.
        lower_epochs: Lower-level sign-SGD epochs ``K`` per round, 10.
        lr: Lower-level sign-SGD step ``eta``, 0.01.
        weight_lr: Upper step on the weights ``eta_w``, 0.01.
        gamma: Weight of the ``gamma * ||w||^2`` regulariser, 0.
        binarise_every: Binarise ``w`` to its top ``m`` every this many rounds, 5 (``None``: only
            at the end, which always happens).
        batch_size: Lower-level batch size, 256.
        seed: Seed of the initial subset and of the lower level's shuffling, 0.
        candidates: Rows the search runs on (lower-level training and the weights both live on
            this pool only, which keeps large data cheap), e.g.
            ``unlearnkit.data.draw_forget_indices(60000, 2000, seed)``; ``None``: every row.
        cache_dir: Directory of the result cache (one JSON + one npz file per result, keyed by the
            sha256 of the model's state dict, of the data, ``m``, the kind and the recipe); a
            missing or corrupt file is recomputed. ``None`` (default): no cache.
        progress: Show a progress bar over the rounds.

    Returns:
        The :class:`ForgetSetSelection`.

    Raises:
        ValueError: On an unknown kind, a malformed pool or ``m`` out of range, or non-positive
            settings.

    Example:
        >>> torch.manual_seed(0) and None
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> x, y = torch.rand(20, 4), torch.randint(0, 3, (20,))
        >>> chosen = select_forget_set(model, x, y, 5, rounds=2, lower_epochs=1, seed=0)
        >>> chosen.m, len(set(chosen.indices.tolist())), chosen.kind
        (5, 5, 'worst')
    """
    if kind not in ("worst", "easiest", "random"):
        raise ValueError(f"kind must be 'worst', 'easiest' or 'random', got {kind!r}")
    for name, value in (("rounds", rounds), ("lower_epochs", lower_epochs), ("batch_size", batch_size)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if not (lr > 0 and weight_lr > 0 and gamma >= 0):
        raise ValueError(f"need lr > 0, weight_lr > 0, gamma >= 0; got {lr}, {weight_lr}, {gamma}")
    if binarise_every is not None and (int(binarise_every) != binarise_every or binarise_every < 1):
        raise ValueError(f"binarise_every must be a positive integer or None, got {binarise_every}")
    inputs, labels = torch.as_tensor(inputs), torch.as_tensor(labels).long()
    if inputs.shape[0] != labels.shape[0] or labels.dim() != 1:
        raise ValueError(f"inputs {tuple(inputs.shape)} and labels {tuple(labels.shape)} do not match")
    pool = _pool(candidates, inputs.shape[0])
    if int(m) != m or not 1 <= m <= pool.numel():
        raise ValueError(f"m must be an integer in 1..{pool.numel()} (the pool size), got {m}")
    m = int(m)
    recipe: dict[str, Any] = {"kind": kind, "m": m, "seed": int(seed)}
    if kind != "random":
        recipe.update(
            rounds=int(rounds), lower_epochs=int(lower_epochs), lr=float(lr), weight_lr=float(weight_lr),
            gamma=float(gamma), binarise_every=binarise_every, batch_size=int(batch_size),
        )
    key = None
    if cache_dir is not None:
        key = _cache_key(model, inputs, labels, pool, recipe)
        cached = _read_cache(Path(cache_dir), key, m, inputs.shape[0])
        if cached is not None:
            return cached

    rng = np.random.default_rng(seed)
    start = np.zeros(pool.numel())
    start[rng.choice(pool.numel(), size=m, replace=False)] = 1.0
    history: list[dict[str, Any]] = []
    w = start
    if kind != "random":
        w, history = _search(model, inputs, labels, pool, m, w, recipe, progress)
    selection = ForgetSetSelection(
        indices=torch.sort(pool[torch.from_numpy(np.flatnonzero(w > 0.5))]).values,
        kind=kind, weights=w, pool=pool, history=history, seed=int(seed), recipe=recipe,
    )
    if key is not None:
        _write_cache(Path(cache_dir), key, selection)  # type: ignore[arg-type]
    return selection


def select_one_class(
    labels: Tensor, m: int, *, seed: int = 0, candidates: Tensor | Sequence[int] | None = None
) -> ForgetSetSelection:
    """``m`` seeded random rows of one seeded class (among the classes with at least ``m`` rows).

    Args:
        labels: Training labels ``(N,)``.
        m: The size of the forget set.
        seed: Seed of the class and of the rows, 0.
        candidates: Rows to choose from; ``None``: every row.

    Returns:
        The :class:`ForgetSetSelection` (``kind="one-class"``; ``recipe["class"]`` is the class).

    Raises:
        ValueError: If no class has ``m`` rows in the pool.

    Example:
        >>> chosen = select_one_class(torch.tensor([0, 1, 1, 2, 1, 0]), 2, seed=0)
        >>> len({int(c) for c in torch.tensor([0, 1, 1, 2, 1, 0])[chosen.indices]})
        1
    """
    labels = torch.as_tensor(labels).long()
    pool = _pool(candidates, labels.shape[0])
    pool_labels = labels[pool].numpy()
    classes, counts = np.unique(pool_labels, return_counts=True)
    eligible = classes[counts >= m]
    if int(m) != m or m < 1 or eligible.size == 0:
        raise ValueError(f"no class has {m} rows in the pool (largest: {counts.max(initial=0)})")
    rng = np.random.default_rng(seed)
    cls = int(rng.choice(eligible))
    rows = np.flatnonzero(pool_labels == cls)
    chosen = np.sort(rng.choice(rows, size=int(m), replace=False))
    weights = np.zeros(pool.numel())
    weights[chosen] = 1.0
    return ForgetSetSelection(
        indices=torch.sort(pool[torch.from_numpy(chosen)]).values, kind="one-class", weights=weights, pool=pool,
        seed=int(seed), recipe={"kind": "one-class", "m": int(m), "seed": int(seed), "class": cls},
    )


def draw_forget_set(
    kind: ForgetSetKind | str,
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    m: int,
    *,
    seed: int = 0,
    **settings: Any,
) -> ForgetSetSelection:
    """One forget set of a benchmark's axis random | worst | easiest | one-class.

    Args:
        kind: ``"random"``, ``"worst"`` (also ``"worst-case"``), ``"easiest"`` or ``"one-class"``.
        model: The trained classifier (read by ``"worst"`` and ``"easiest"`` only).
        inputs: Training inputs ``(N, ...)``.
        labels: Training labels ``(N,)``.
        m: The size of the forget set.
        seed: Seed of every random choice, 0.
        **settings: Further keyword arguments of :func:`select_forget_set` (``candidates`` also
            for ``"one-class"``; the search settings are ignored by ``"one-class"``).

    Returns:
        The :class:`ForgetSetSelection`.

    Raises:
        ValueError: On an unknown kind.

    Example:
        >>> x, y = torch.rand(12, 4), torch.tensor([0, 1, 2] * 4)
        >>> draw_forget_set("one-class", nn.Linear(4, 3), x, y, 3, seed=1).m
        3
    """
    kind = "worst" if kind == "worst-case" else kind
    if kind == "one-class":
        return select_one_class(labels, m, seed=seed, candidates=settings.get("candidates"))
    if kind not in ("random", "worst", "easiest"):
        raise ValueError(f"kind must be one of {FORGET_SET_KINDS}, got {kind!r}")
    return select_forget_set(model, inputs, labels, m, kind=kind, seed=seed, **settings)  # type: ignore[arg-type]


def _pool(candidates: Tensor | Sequence[int] | None, n: int) -> Tensor:
    """The sorted, unique, in-range candidate rows (every row for ``None``)."""
    if candidates is None:
        return torch.arange(n)
    pool = torch.as_tensor(candidates).long().reshape(-1)
    if pool.numel() == 0 or pool.unique().numel() != pool.numel() or pool.min() < 0 or pool.max() >= n:
        raise ValueError(f"candidates must be unique row indices in 0..{n - 1}")
    return torch.sort(pool).values


def _search(
    model: nn.Module, inputs: Tensor, labels: Tensor, pool: Tensor, m: int, w: np.ndarray,
    recipe: dict[str, Any], progress: bool,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The bi-level search of the worst-case (descent) or easiest (ascent) set."""
    device = model_device(model)
    x, y = inputs[pool].to(device), labels[pool].to(device)
    # Descent on sum_i w_i l_i picks the lowest losses (worst case); ascent the highest (easiest).
    direction = -1.0 if recipe["kind"] == "worst" else 1.0
    generator = torch.Generator().manual_seed(recipe["seed"])
    history: list[dict[str, Any]] = []
    every = recipe["binarise_every"]
    for t in tqdm(range(recipe["rounds"]), desc=f"{recipe['kind']} forget set", unit="round", disable=not progress):
        losses = lower_level_losses(
            model, x, y, w, epochs=recipe["lower_epochs"], lr=recipe["lr"], batch_size=recipe["batch_size"],
            generator=generator,
        )
        if not np.all(np.isfinite(losses)):
            # Sign-SGD can blow a model up; an infinite loss must not turn every weight into NaN.
            losses = np.nan_to_num(losses, nan=np.finfo(np.float64).max / 1e6, posinf=np.finfo(np.float64).max / 1e6)
        # Worst: w - eta_w (l + 2 gamma w); easiest: w + eta_w (l - 2 gamma w), i.e. ascent on the
        # loss while the regulariser still pulls the weights towards uniform in both cases.
        w = project_capped_simplex(w + recipe["weight_lr"] * (direction * losses - 2.0 * recipe["gamma"] * w), m)
        last = t == recipe["rounds"] - 1
        binarised = last or (every is not None and (t + 1) % every == 0)
        if binarised:
            w = top_m_mask(w, m)
        history.append({
            "round": t, "sum": float(w.sum()), "min": float(w.min()), "max": float(w.max()),
            "mean_loss": float(losses.mean()), "binarised": bool(binarised),
        })
    return w, history


def _cache_key(model: nn.Module, inputs: Tensor, labels: Tensor, pool: Tensor, recipe: dict[str, Any]) -> str:
    """sha256 of everything that determines the result."""
    parts = {
        "version": _CACHE_VERSION,
        "model": state_dict_sha256(model) if recipe["kind"] != "random" else None,
        "inputs": tensor_sha256(inputs),
        "labels": tensor_sha256(labels),
        "pool": tensor_sha256(pool),
        "recipe": recipe,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _cache_paths(directory: Path, key: str) -> tuple[Path, Path]:
    return directory / f"forget-set-{key}.json", directory / f"forget-set-{key}.npz"


def _write_cache(directory: Path, key: str, selection: ForgetSetSelection) -> None:
    """Writes the npz (weights, pool, indices) then the JSON naming the npz's sha256."""
    meta_path, arrays_path = _cache_paths(directory, key)

    def write_arrays(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file handle: np.savez would append ".npz" to a name
            np.savez(handle, weights=selection.weights, pool=selection.pool.numpy(), indices=selection.indices.numpy())

    write_atomic(arrays_path, write_arrays)
    write_json_atomic(meta_path, {
        "key": key, "kind": selection.kind, "seed": selection.seed, "recipe": selection.recipe,
        "indices": selection.indices.tolist(), "history": selection.history,
        "npz_sha256": file_sha256(arrays_path), "weights_sha256": array_sha256(selection.weights),
    })


def _read_cache(directory: Path, key: str, m: int, n: int) -> ForgetSetSelection | None:
    """The cached selection, or ``None`` if it is missing or fails any check (then recomputed)."""
    meta_path, arrays_path = _cache_paths(directory, key)
    if not (meta_path.is_file() and arrays_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta["key"] != key or file_sha256(arrays_path) != meta["npz_sha256"]:
            return None
        with np.load(arrays_path, allow_pickle=False) as arrays:
            weights, pool, indices = arrays["weights"], arrays["pool"], arrays["indices"]
        indices_list = [int(i) for i in meta["indices"]]
        if (
            array_sha256(weights) != meta["weights_sha256"]
            or indices.tolist() != indices_list
            or len(set(indices_list)) != m
            or not all(0 <= i < n for i in indices_list)
        ):
            return None
        return ForgetSetSelection(
            indices=torch.tensor(indices_list, dtype=torch.long), kind=meta["kind"], weights=weights,
            pool=torch.from_numpy(pool).long(), history=list(meta["history"]), seed=int(meta["seed"]),
            recipe=dict(meta["recipe"]), from_cache=True,
        )
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        # A torn, truncated or foreign file is recomputed, never trusted.
        return None
