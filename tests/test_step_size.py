"""The automatic learning rate: the search component and ``lr="auto"`` in the methods."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import unlearnkit
from unlearnkit.components.step_size import DEFAULT_CANDIDATES, search_learning_rate
from unlearnkit.errors import InvalidHyperparameterError
from unlearnkit.models import SmallCNN

from helpers import fast_params, same_state, snapshot


def _quadratic(model: nn.Linear, x: Tensor):  # type: ignore[no-untyped-def]
    def objective() -> float:
        return float(model(x).detach().square().sum())

    def step(optimizer: torch.optim.Optimizer) -> float:
        optimizer.zero_grad()
        loss = model(x).square().sum()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return objective, step


def test_search_takes_the_largest_rate_that_keeps_the_proxy_and_restores_weights() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x = torch.rand(4, 3)
    objective, step = _quadratic(model, x)
    start = snapshot(model)
    seen: list[float] = []

    def agreement() -> float:
        # A proxy that tolerates only small moves away from the start.
        moved = sum(float((p.detach() - start[n]).abs().max()) for n, p in model.named_parameters())
        seen.append(moved)
        return 1.0 if moved < 0.05 else 0.5

    lr, trials = search_learning_rate(
        model, make_optimizer=lambda r: torch.optim.SGD(model.parameters(), lr=r), take_step=step,
        forget_objective=objective, proxy_agreement=agreement, candidates=(1.0, 1e-1, 1e-2, 1e-3),
        probe_steps=2,
    )
    assert [t.lr for t in trials] == sorted((1.0, 1e-1, 1e-2, 1e-3), reverse=True)[: len(trials)]
    assert trials[-1].accepted and not any(t.accepted for t in trials[:-1])
    assert lr == trials[-1].lr < 1.0
    assert trials[-1].forget_loss_after < trials[-1].forget_loss_before
    assert same_state(model, start)


def test_search_returns_the_smallest_rate_when_none_is_accepted_and_survives_nan() -> None:
    model = nn.Linear(2, 1)
    x = torch.ones(1, 2)
    objective, _ = _quadratic(model, x)
    start = snapshot(model)
    lr, trials = search_learning_rate(
        model, make_optimizer=lambda r: torch.optim.SGD(model.parameters(), lr=r),
        take_step=lambda opt: math.nan, forget_objective=objective, proxy_agreement=lambda: 1.0,
        candidates=(1e-1, 1e-2), probe_steps=1,
    )
    assert lr == 1e-2 and not any(t.accepted for t in trials) and len(trials) == 2
    assert same_state(model, start)


@pytest.mark.parametrize("kwargs", [{"candidates": ()}, {"probe_steps": 0}])
def test_search_rejects_bad_settings(kwargs: dict) -> None:
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError):
        search_learning_rate(
            model, make_optimizer=lambda r: torch.optim.SGD(model.parameters(), lr=r),
            take_step=lambda opt: 0.0, forget_objective=lambda: 0.0, proxy_agreement=lambda: 1.0,
            **kwargs,
        )


def test_neggrad_has_no_proxy_for_auto() -> None:
    with pytest.raises(InvalidHyperparameterError, match="no retain proxy"):
        unlearnkit.create_method("neggrad", lr="auto")


@pytest.mark.parametrize("name", ["l2ul_adv", "l2ul"])
def test_auto_lr_is_chosen_recorded_and_used(name: str, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]) -> None:
    result = unlearnkit.unlearn(trained_cnn, forget, method=name, **fast_params(name, lr="auto", max_steps=200))
    chosen = result.details["lr/chosen"]
    trials = result.details["lr/trials"]
    assert chosen in DEFAULT_CANDIDATES
    assert [t["lr"] for t in trials] == list(DEFAULT_CANDIDATES[: len(trials)])
    accepted = [t for t in trials if t["accepted"]]
    assert (accepted and accepted[0]["lr"] == chosen and trials[-1]["accepted"]) or chosen == min(DEFAULT_CANDIDATES)
    for t in accepted:
        assert t["proxy_agreement"] >= 0.99 and t["forget_loss_after"] < t["forget_loss_before"]
    assert result.hyperparams["lr"] == "auto"
    assert result.converged
