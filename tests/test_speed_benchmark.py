"""Smoke test of benchmarks/speed.py and its plain reference loop (benchmarks/paper_loop.py).

Runs the whole benchmark on the digits model with k = 2 and tiny settings (two adversarial copies
per instance, five PGD steps, one retraining epoch) and checks that (a) unlearnkit's l2ul and (b)
the plain reference loop reach the same outcome (every forget instance misclassified), and that
the JSON report is written with every timing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def speed(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """benchmarks/speed.py imported as a module (the benchmarks directory is not a package)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    # speed.py sets OMP_NUM_THREADS when it is absent: keep the test session's environment as it was.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    spec = importlib.util.spec_from_file_location("speed_benchmark", BENCHMARKS / "speed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "speed_benchmark", module)
    spec.loader.exec_module(module)
    return module


def test_both_implementations_forget_and_the_json_is_written(
    speed: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "speed.json"
    report = speed.main([
        "--dataset", "digits", "-k", "2", "--seed", "0", "--preset", "default",
        "--hp", "n_adv=2", "--hp", "pgd_steps=5", "--hp", "max_steps=300",
        "--retrain-epochs", "1", "--throughput-repeats", "1", "-o", str(output),
    ])
    out = capsys.readouterr().out
    assert "not the released code" in out and "set_num_threads(1)" in out

    a, b = report["a_unlearnkit"], report["b_paper_loop"]
    for run in (a, b):
        assert run["converged"] is True
        assert run["stop_reason"] == "goal_reached"
        assert run["acc_forget"] == 0.0  # every forget instance misclassified
        assert run["seconds"] > 0 and run["steps"] >= 1
    # (b) took (a)'s resolved attack and loop settings.
    assert b["config"]["n_adv"] == 2 and b["config"]["pgd_steps"] == 5
    assert b["config"]["pgd_eps"] == pytest.approx(a["hyperparams"]["pgd_eps"])
    assert b["config"]["pgd_step_size"] == pytest.approx(a["hyperparams"]["pgd_step_size"])

    written = json.loads(output.read_text())
    assert written["seed"] == 0 and written["device"] == "cpu"
    assert written["threads"]["before"]["torch_num_threads"] == 1
    assert {"torch", "unlearnkit"} <= set(written["versions"])
    assert written["config"]["hyperparams"] == {"n_adv": 2, "pgd_steps": 5, "max_steps": 300}
    retrain = written["c_retrain"]
    assert retrain["extrapolated"] and retrain["epochs_run"] == 1
    assert retrain["seconds"] == pytest.approx(retrain["train_seconds_measured"] * retrain["epochs_full"])
    attack = written["d_attack"]
    assert attack["batch"] == 4 and attack["fraction"] > 0
    assert written["ratios"]["b_over_a"] == pytest.approx(b["seconds"] / a["seconds"])
    assert written["ratios"]["c_over_a"] == pytest.approx(retrain["seconds"] / a["seconds"])


def test_hyperparameter_parsing(speed: ModuleType) -> None:
    assert speed.parse_hyperparams(["lr=1e-3", "optimizer=sgd", "anchor_weight=None"]) == {
        "lr": 1e-3, "optimizer": "sgd", "anchor_weight": None,
    }
    with pytest.raises(ValueError, match="NAME=VALUE"):
        speed.parse_hyperparams(["n_adv"])


def test_reference_loop_with_two_forward_passes_also_forgets(speed: ModuleType) -> None:
    """The released code's structure (anchor and forget batches in separate forward passes)."""
    import torch

    from unlearnkit.demo import draw_request
    from unlearnkit.models.pretrained import load_pretrained

    paper_loop = sys.modules["paper_loop"]
    default = load_pretrained("digits")
    request, _ = draw_request(default.data, 2, 0, "misclassify")
    config = paper_loop.PaperLoopConfig(
        n_adv=2, anchor_targets="balanced", pgd_eps=0.58, pgd_steps=5, pgd_step_size=0.29, pgd_rounds=2,
        drop_unreached=True, optimizer="adam", lr=1e-4, weight_decay=0.0, forget_loss="hinge",
        stop_margin=0.1, bn_mode="freeze", max_steps=300, two_forward_passes=True,
    )
    before = {k: v.clone() for k, v in default.model.state_dict().items()}
    result = paper_loop.paper_unlearn(default.model, request.inputs, request.labels, config, num_classes=10, seed=0)
    assert result.converged and result.stop_reason == "goal_reached"
    assert bool((result.model(request.inputs).argmax(dim=1) != request.labels).all())
    assert set(result.phase_seconds) == {"attack", "importance", "loop", "checks"}
    # The caller's model is untouched.
    assert all(torch.equal(before[k], v) for k, v in default.model.state_dict().items())
