"""A user's own model and data, written to disk for the workspace CLI tests (imported as
``user_model`` by ``test_workspace_cli.py`` and ``test_bad_inputs.py``)."""

from __future__ import annotations

import importlib.util
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from unlearnkit.data import DataSplit
from unlearnkit.models import TrainRecipe, train_classifier
from unlearnkit.utils.modules import predict_logits

USER_MODULE = '''
from torch import nn


class DigitsNet(nn.Module):
    """A user's own classifier of 8x8 digits."""

    def __init__(self, hidden: int = 32, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(self.body(x))
'''


@dataclass
class UserFiles:
    """What a user brings: code, weights, TorchScript archive and data, plus test facts."""

    root: Path
    code: Path
    module: str
    weights: Path
    torchscript: Path
    data: Path
    model: nn.Module
    correct: list[int]  # training rows the model classifies correctly (forgettable)
    labels: list[int]  # every training label
    template: Path = field(default=Path())  # a prepared workspace, for tests that want one


def write_user_files(root: Path, digits: DataSplit, *, prefix: str, rows: int) -> UserFiles:
    """Writes the user's module (under a unique name: the CLI imports it into this process),
    trains ``DigitsNet`` through a private copy of it (so the CLI's import by name is the first
    one), and saves safetensors weights, a TorchScript archive and the digits rows as npz.
    ``correct`` lists the first ``rows`` training rows the model classifies correctly."""
    code = root / "code"
    code.mkdir()
    module = f"{prefix}_{uuid.uuid4().hex[:10]}"
    (code / f"{module}.py").write_text(USER_MODULE)
    spec = importlib.util.spec_from_file_location(f"_train_{module}", code / f"{module}.py")
    assert spec is not None and spec.loader is not None
    private = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(private)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = private.DigitsNet()
    train_classifier(model, digits.x_train, digits.y_train, TrainRecipe(epochs=10, lr=1e-2, seed=0))
    save_file(model.state_dict(), str(root / "weights.safetensors"))
    torch.jit.save(torch.jit.script(model), str(root / "model.pt"))
    np.savez(root / "data.npz", x=digits.x_train.numpy(), y=digits.y_train.numpy())
    preds = predict_logits(model, digits.x_train[:rows]).argmax(1)
    correct = [i for i in range(rows) if int(preds[i]) == int(digits.y_train[i])]
    return UserFiles(
        root, code, module, root / "weights.safetensors", root / "model.pt", root / "data.npz", model,
        correct, digits.y_train.tolist(),
    )
