"""Data-parallel unlearning (``components/distributed.py``, the shared loops, ``distributed_run``).

Two CPU processes launched by ``torchrun`` (gloo) must end with the weights one process gets
for the same effective batch size, up to float rounding; without a process group nothing may
change at all, bit for bit.

The two-process runs use small models without BatchNorm (an MLP, and a convolutional net that
runs channels-last): train-mode BatchNorm normalises with
each rank's own share of the batch, so its results legitimately differ from one process (as
with plain DistributedDataParallel); see the module docstring of ``components/distributed.py``.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from click.testing import CliRunner
from safetensors.torch import load_file
from torch import nn

from unlearnkit.components import distributed
from unlearnkit.components.attacks import calibrated_targeted_pgd, targeted_pgd
from unlearnkit.components.batching import shuffled_batches
from unlearnkit.components.loop import take_step, train_for_epochs
from unlearnkit.data import DataSplit
from unlearnkit.distributed_run import main, unlearn_request
from unlearnkit.models import TrainRecipe, train_classifier
from unlearnkit.sources.model import load_model
from unlearnkit.utils.checkpoint import save_state_dict

needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)

MODEL_MODULE = '''
from torch import nn


class DigitsMLP(nn.Module):
    """An 8x8-digits classifier without BatchNorm."""

    def __init__(self, hidden: int = 32, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


class DigitsConv(nn.Module):
    """A convolutional 8x8-digits classifier without BatchNorm (runs channels-last)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(16 * 4 * 4, num_classes),
        )

    def forward(self, x):
        return self.net(x)
'''

#: k = 16 forget rows leave 1,421 retain rows: with the global batch of 64 the last batch of
#: every pass has 13 rows, split 7 / 6 between the two ranks (the uneven case of the weighting).
K = 16
#: Per method: short runs; the batch sizes are the methods' defaults, i.e. the effective (global)
#: batch size whatever the number of processes. The goal-driven runs use SGD: Adam divides each
#: gradient entry by its own magnitude, so on entries whose gradient is ~0 it turns float
#: rounding into steps of size ~lr, which would measure Adam, not the sharding.
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "finetune": {},  # 1 epoch: 23 steps
    "l1_sparse": {"epochs": 1},
    "retrain": {"epochs": 1},
    "scrub": {"epochs": 1},
    "bad_teacher": {"epochs": 2},
    "neggrad_plus": {"optimizer": "sgd", "lr": 0.05, "alpha": 0.5, "max_steps": 300},  # goal reached (~37 steps)
    "salun": {"optimizer": "sgd", "lr": 0.05, "max_steps": 40},
    # l2ul's anchors from the sharded attack can differ from one process's by a few ulps (a
    # matrix product over 62 rows rounds differently from one over 124; see the attack test).
    # The training that follows is replicated on both ranks, bit-identical for identical
    # anchors. At the default anchor_weight 50 and lr 0.05 the SGD steps are unstable enough to
    # grow such a difference ~4x per step (measured: 3e-8 after 1 step, 8e-6 after 5, 3e-5
    # after 22), which would measure the dynamics, not the sharding; at weight 5 it stays ~1e-7.
    "l2ul": {"optimizer": "sgd", "lr": 0.05, "n_adv": 4, "pgd_steps": 10, "anchor_weight": 5.0, "max_steps": 60},
}
#: The convolutional model (channels-last gradients in the all-reduce): two methods suffice.
CONV_SETTINGS: dict[str, dict[str, Any]] = {
    "finetune": {},
    "neggrad_plus": {"optimizer": "sgd", "lr": 0.05, "alpha": 0.5, "max_steps": 100},
}
#: Largest allowed |w_2proc - w_1proc| over every weight (fp32). Measured: <= 2.4e-7 for every
#: method and model here (float rounding of sums split over two processes).
ATOL = 1e-5
#: Largest allowed difference of the adversarial inputs of the sharded attack (a few fp32 ulps).
ATTACK_ATOL = 1e-6

WORKER = textwrap.dedent(
    '''
    """Runs under torchrun: the sharded attack, then every method through unlearnkit.distributed_run."""
    import json
    import sys
    from pathlib import Path

    import torch
    import torch.distributed as dist

    from unlearnkit.components import distributed
    from unlearnkit.components.attacks import calibrated_targeted_pgd
    from unlearnkit.distributed_run import load_model_and_data, main

    out = Path(sys.argv[1])
    plan = json.loads((out / "plan.json").read_text())  # [[model source, output folder, arguments], ...]
    distributed.init_from_env()
    assert distributed.world_size() == 2, distributed.world_size()
    model, data = load_model_and_data("digits", Path(plan[0][0]))
    # 45 copies (shares of 23 and 22 rows); a small radius, so that later rounds have work to do.
    x = data.x_train[:15].repeat_interleave(3, dim=0)
    t = (data.y_train[:15].repeat_interleave(3, dim=0) + torch.arange(45) % 9 + 1) % 10
    generator = torch.Generator().manual_seed(0)
    attack = calibrated_targeted_pgd(
        model, x, t, eps=0.3, rounds=3, steps=10, generator=generator, stop_margin=3.0, data_parallel=True
    )
    if distributed.is_main_process():
        torch.save(
            {"x": x, "t": t, "adversarial": attack.adversarial, "reached": attack.reached, "eps": attack.eps,
             "after": torch.rand(4, generator=generator)},
            out / "attack.pt",
        )
    for source, folder, arguments in plan:
        main(["--model-source", source, "--out-dir", str(out / folder), *arguments], standalone_mode=False)
    dist.destroy_process_group()
    '''
)


def _settings_args(settings: dict[str, dict[str, Any]]) -> list[str]:
    args = ["--methods", ",".join(settings), "-k", str(K), "--seed", "0"]
    for method, values in settings.items():
        for name, value in values.items():
            args += ["--set", f"{method}.{name}={json.dumps(value)}"]
    return args


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())


def _model_source(folder: Path, digits: DataSplit, name: str, recipe: TrainRecipe) -> Path:
    """Trains ``MODEL_MODULE``'s class ``name`` on digits and describes it as a JSON model source."""
    # One module file for both classes: a process imports a module name once, from one folder.
    (folder / "ddp_digits_net.py").write_text(MODEL_MODULE)
    namespace: dict[str, Any] = {}
    exec(MODEL_MODULE, namespace)  # the same class the workers import from the file
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = namespace[name]()
    train_classifier(model, digits.x_train, digits.y_train, recipe)
    save_state_dict(model, folder / f"{name}.safetensors")
    source = {"kind": "state_dict", "path": f"{name}.safetensors", "class": f"ddp_digits_net:{name}", "python_path": "."}
    (folder / f"{name}.json").write_text(json.dumps(source))
    return folder / f"{name}.json"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the models' module file, weights and JSON sources."""
    return tmp_path_factory.mktemp("ddp_models")


@pytest.fixture(scope="module")
def mlp_source(model_folder: Path, digits: DataSplit) -> Path:
    """A JSON model source of a trained BatchNorm-free MLP on digits (~94 % test accuracy)."""
    return _model_source(model_folder, digits, "DigitsMLP", TrainRecipe(epochs=10, batch_size=64, lr=1e-2, seed=0))


@pytest.fixture(scope="module")
def conv_source(model_folder: Path, digits: DataSplit) -> Path:
    """A JSON model source of a trained BatchNorm-free convolutional net on digits."""
    return _model_source(model_folder, digits, "DigitsConv", TrainRecipe(epochs=5, batch_size=64, lr=2e-3, seed=0))


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory, mlp_source: Path, conv_source: Path) -> Path:
    """One ``torchrun --nproc_per_node 2`` launch of the worker; returns rank 0's output folder."""
    out = tmp_path_factory.mktemp("ddp_out")
    worker = out / "worker.py"
    worker.write_text(WORKER)
    plan = [
        [str(mlp_source), "methods", _settings_args(METHOD_SETTINGS)],
        [str(conv_source), "conv", _settings_args(CONV_SETTINGS)],
    ]
    (out / "plan.json").write_text(json.dumps(plan))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker), str(out)
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=out)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return out


# -- without a process group: nothing changes ----------------------------------------------------


def test_helpers_are_the_identity_without_a_process_group() -> None:
    assert not distributed.is_distributed()
    assert (distributed.world_size(), distributed.rank(), distributed.is_main_process()) == (1, 0, True)
    rows = torch.tensor([4, 1, 3])
    assert distributed.shard_rows(rows) is rows
    seen: list[torch.Tensor] = []
    value = distributed.sharded_mean(rows, lambda r: seen.append(r) or torch.tensor(2.5))
    assert seen[0] is rows and value.item() == 2.5
    layer = nn.Linear(2, 1)
    layer(torch.ones(1, 2)).sum().backward()
    grad = layer.weight.grad.clone()
    assert distributed.average_gradients(list(layer.parameters()), 1.25) == 1.25
    assert torch.equal(layer.weight.grad, grad)
    assert distributed.broadcast_values([1.0, 0.5]) == [1.0, 0.5]
    local = torch.rand(3, 2)
    assert distributed.gather_rows(local, 3) is local
    assert distributed.init_from_env() is False  # no WORLD_SIZE in a plain pytest run


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_bounds_split_rows_in_order_into_nearly_equal_shares(world: int) -> None:
    for n in range(0, 20):
        bounds = [distributed.shard_bounds(n, r, world) for r in range(world)]
        assert [i for start, stop in bounds for i in range(start, stop)] == list(range(n))
        sizes = [stop - start for start, stop in bounds]
        assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(("batch", "world"), [(13, 2), (13, 3), (1, 2), (64, 2)])
def test_weighted_shares_average_to_the_full_batch_gradient(batch: int, world: int) -> None:
    """The weighting of ``sharded_mean`` (``world * n_r / batch``) with averaged gradients gives
    the gradient of the mean over the whole batch, also for uneven and empty shares (the ranks
    are simulated here, with the same arithmetic the process group does)."""
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x, y = torch.randn(batch, 5), torch.randint(0, 3, (batch,))
    full = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    total = [torch.zeros_like(p) for p in model.parameters()]
    for r in range(world):
        start, stop = distributed.shard_bounds(batch, r, world)
        if stop == start:
            continue  # an empty share contributes nothing (its zero loss has no gradient)
        loss = F.cross_entropy(model(x[start:stop]), y[start:stop]) * (world * (stop - start) / batch)
        for acc, g in zip(total, torch.autograd.grad(loss, list(model.parameters()))):
            acc.add_(g)
    for acc, g in zip(total, full):
        torch.testing.assert_close(acc / world, g, rtol=0, atol=1e-6)


def test_take_step_without_a_process_group_is_a_plain_step() -> None:
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    b = copy.deepcopy(a)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    opt_a, opt_b = torch.optim.Adam(a.parameters(), lr=0.1), torch.optim.Adam(b.parameters(), lr=0.1)
    for step in range(3):
        value = take_step(a, opt_a, lambda: F.cross_entropy(a(x), y), nn.Module.train, step + 1)
        b.train()
        loss = F.cross_entropy(b(x), y)
        opt_b.zero_grad(set_to_none=True)
        loss.backward()
        opt_b.step()
        assert value == float(loss.detach())
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_train_for_epochs_without_a_process_group_is_the_plain_loop() -> None:
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    b = copy.deepcopy(a)
    x, y = torch.randn(29, 4), torch.randint(0, 3, (29,))
    params_a = list(a.parameters())
    opt_a = torch.optim.SGD(params_a, lr=0.1, momentum=0.9)
    steps, _ = train_for_epochs(
        a, opt_a, x, y, epochs=2, batch_size=8, generator=torch.Generator().manual_seed(3),
        penalty=lambda epoch: (epoch + 1) * 1e-3 * sum(p.abs().sum() for p in params_a),
    )
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(3)
    for epoch in range(2):
        for idx in shuffled_batches(29, 8, generator):
            loss = F.cross_entropy(b(x[idx]), y[idx]) + (epoch + 1) * 1e-3 * sum(p.abs().sum() for p in b.parameters())
            opt_b.zero_grad(set_to_none=True)
            loss.backward()
            opt_b.step()
    assert steps == 8
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_data_parallel_attack_without_a_process_group_changes_nothing() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    x, t = torch.rand(9, 1, 4, 4), torch.randint(0, 4, (9,))
    results = []
    for flag in (False, True):
        generator = torch.Generator().manual_seed(1)
        adv = targeted_pgd(model, x, t, eps=0.5, steps=4, generator=generator, batch_size=4, data_parallel=flag)
        results.append((adv, torch.rand(2, generator=generator)))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_entry_point_without_torchrun_is_one_process(tmp_path: Path, mlp_source: Path) -> None:
    """``python -m unlearnkit.distributed_run`` without torchrun: a plain run; files are written."""
    out = tmp_path / "one"
    outcome = CliRunner().invoke(
        main, ["--model-source", str(mlp_source), "--out-dir", str(out), "-k", str(K), "--methods", "finetune"]
    )
    assert outcome.exit_code == 0, outcome.output
    record = json.loads((out / "finetune.json").read_text())
    assert (record["world_size"], record["backend"], record["steps"]) == (1, None, 23)
    assert set(load_file(str(out / "finetune.safetensors"))) == set(load_model(json.loads(mlp_source.read_text()), mlp_source.parent).state_dict())


# -- two processes under torchrun match one process -------------------------------------------


def _check_against_one_process(
    method: str, settings: dict[str, Any], source: Path, folder: Path, digits: DataSplit
) -> None:
    model = load_model(json.loads(source.read_text()), source.parent)
    reference = unlearn_request(model, digits, method, k=K, seed=0, hyperparams=settings)
    record = json.loads((folder / f"{method}.json").read_text())
    assert (record["world_size"], record["backend"]) == (2, "gloo")
    # The same steps and the same stop: every rank saw the whole forget set and took rank 0's decision.
    assert (record["steps"], record["stop_reason"], record["converged"]) == (
        reference.steps, reference.stop_reason, reference.converged
    )
    weights = load_file(str(folder / f"{method}.safetensors"))
    one = {k: v.detach() for k, v in reference.model.state_dict().items()}
    difference = _max_difference(weights, one)
    assert difference <= ATOL, f"{method}: max |w_2proc - w_1proc| = {difference:.3g}"
    assert _max_difference(one, {k: v.detach() for k, v in model.state_dict().items()}) > 100 * ATOL  # it did train


@needs_gloo
@pytest.mark.parametrize("method", list(METHOD_SETTINGS))
def test_two_processes_match_one_process(method: str, two_process_run: Path, mlp_source: Path, digits: DataSplit) -> None:
    _check_against_one_process(method, METHOD_SETTINGS[method], mlp_source, two_process_run / "methods", digits)


@needs_gloo
@pytest.mark.parametrize("method", list(CONV_SETTINGS))
def test_two_processes_match_one_process_on_a_conv_net(
    method: str, two_process_run: Path, conv_source: Path, digits: DataSplit
) -> None:
    """Convolutions run channels-last (``memory_format="auto"``): their gradients are reduced too."""
    _check_against_one_process(method, CONV_SETTINGS[method], conv_source, two_process_run / "conv", digits)


@needs_gloo
def test_two_process_attack_matches_one_process(two_process_run: Path, mlp_source: Path) -> None:
    saved = torch.load(two_process_run / "attack.pt", weights_only=True)
    model = load_model(json.loads(mlp_source.read_text()), mlp_source.parent)
    generator = torch.Generator().manual_seed(0)
    attack = calibrated_targeted_pgd(
        model, saved["x"], saved["t"], eps=0.3, rounds=3, steps=10, generator=generator, stop_margin=3.0
    )
    assert 0 < attack.first_round_success < 1  # later rounds attacked a subset
    assert torch.equal(saved["reached"], attack.reached) and torch.equal(saved["eps"], attack.eps)
    torch.testing.assert_close(saved["adversarial"], attack.adversarial, rtol=0, atol=ATTACK_ATOL)
    # The random starts of every row were drawn on every rank: the generator ends where it does in one process.
    assert torch.equal(saved["after"], torch.rand(4, generator=generator))
