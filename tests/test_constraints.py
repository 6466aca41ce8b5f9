"""Update constraints: masks and projections applied to any optimiser's steps, and the penalty hook
of the fixed-schedule training loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unlearnkit.components.constraints import constrained_updates, masked, orthogonal_to, orthonormal_basis
from unlearnkit.components.loop import train_for_epochs


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _steps(model: nn.Module, optimizer: torch.optim.Optimizer, n: int = 5) -> None:
    x, y = torch.randn(16, 6, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 3
    for _ in range(n):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize("kind", ["sgd-momentum-decay", "adam", "adamw"])
def test_masked_updates_leave_every_unmasked_entry_bit_identical(kind: str) -> None:
    model = _mlp()
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(3)
    masks = [torch.rand(p.shape, generator=gen) < 0.5 for p in params]
    optimizer = {
        "sgd-momentum-decay": lambda: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01),
        "adam": lambda: torch.optim.Adam(params, lr=0.01),
        "adamw": lambda: torch.optim.AdamW(params, lr=0.01, weight_decay=0.1),
    }[kind]()
    with constrained_updates(params, masked(masks)) as count:
        _steps(model, optimizer)
    assert count[0] == 5
    for p, old, mask in zip(params, before, masks):
        assert torch.equal(p[~mask], old[~mask])
        assert not torch.equal(p[mask], old[mask])


def test_orthogonal_updates_are_orthogonal_to_the_basis_under_adam() -> None:
    model = _mlp()
    params = list(model.parameters())
    d = sum(p.numel() for p in params)
    basis = orthonormal_basis(torch.randn(d, 4, generator=torch.Generator().manual_seed(2)))
    assert basis.shape == (d, 4)
    assert torch.allclose(basis.T @ basis, torch.eye(4), atol=1e-5)
    start = torch.cat([p.detach().reshape(-1) for p in params])
    optimizer = torch.optim.Adam(params, lr=0.01)
    with constrained_updates(params, orthogonal_to(basis)):
        _steps(model, optimizer)
    change = torch.cat([p.detach().reshape(-1) for p in params]) - start
    assert change.norm() > 1e-3
    assert (basis.T @ change).abs().max() < 1e-5 * change.norm()


def test_hooks_are_removed_and_other_optimisers_untouched() -> None:
    watched, other = _mlp(), _mlp()
    freeze_all = masked([torch.zeros_like(p, dtype=torch.bool) for p in watched.parameters()])
    before_other = [p.detach().clone() for p in other.parameters()]
    with constrained_updates(list(watched.parameters()), freeze_all) as count:
        _steps(other, torch.optim.SGD(other.parameters(), lr=0.1))  # holds none of the watched
    assert count[0] == 0
    assert not all(torch.equal(p, b) for p, b in zip(other.parameters(), before_other))
    before = [p.detach().clone() for p in watched.parameters()]
    _steps(watched, torch.optim.SGD(watched.parameters(), lr=0.1))  # after the block: free again
    assert not all(torch.equal(p, b) for p, b in zip(watched.parameters(), before))


def test_hooks_are_removed_when_the_block_raises() -> None:
    model = _mlp()
    freeze_all = masked([torch.zeros_like(p, dtype=torch.bool) for p in model.parameters()])
    with pytest.raises(RuntimeError, match="boom"), constrained_updates(list(model.parameters()), freeze_all):
        raise RuntimeError("boom")
    before = [p.detach().clone() for p in model.parameters()]
    _steps(model, torch.optim.SGD(model.parameters(), lr=0.1), n=1)
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_orthonormal_basis_drops_dependent_and_zero_directions() -> None:
    a = torch.randn(10, generator=torch.Generator().manual_seed(0))
    b = torch.randn(10, generator=torch.Generator().manual_seed(1))
    vectors = torch.stack([a, 2 * a, b, torch.zeros(10), a + b], dim=1)
    basis = orthonormal_basis(vectors)
    assert basis.shape == (10, 2)
    projected = basis @ (basis.T @ vectors)
    assert torch.allclose(projected, vectors, atol=1e-5)
    with pytest.raises(ValueError, match=r"vectors must be \(d, k\)"):
        orthonormal_basis(a)


def test_train_for_epochs_adds_the_penalty_with_the_epoch() -> None:
    model = _mlp()
    x, y = torch.randn(8, 6), torch.arange(8) % 3
    seen: list[int] = []

    def penalty(epoch: int) -> torch.Tensor:
        seen.append(epoch)
        return 100.0 * sum(p.abs().sum() for p in model.parameters())

    start = sum(float(p.detach().abs().sum()) for p in model.parameters())
    steps, losses = train_for_epochs(
        model, torch.optim.SGD(model.parameters(), lr=1e-3), x, y, epochs=2, batch_size=4,
        generator=torch.Generator().manual_seed(0), penalty=penalty,
    )
    assert steps == 4 and seen == [0, 0, 1, 1]
    assert losses[0] > 100.0 * start * 0.9  # the penalty is part of the loss
    assert sum(float(p.detach().abs().sum()) for p in model.parameters()) < start  # and shrinks the weights
