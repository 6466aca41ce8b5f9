"""LAF (label-agnostic forgetting): never reads a label, forgets at the representation level,
and the pieces it is built from (the embedding VAE, the extractor/head split)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import unlearnkit
from helpers import same_weights
from unlearnkit.components.penultimate import extractor_parameters, logits_and_embeddings, resolve_head
from unlearnkit.components.vae import fit_embedding_vae, standardisation
from unlearnkit.data import DataSplit
from unlearnkit.errors import DataContractError, InvalidHyperparameterError, InvalidModelError, InvalidRequestError
from unlearnkit.methods import LAF
from unlearnkit.metrics.features import extract_features, feature_layer
from unlearnkit.models import SmallCNN

#: Short schedule for the tests that check plumbing rather than forgetting.
QUICK = {"epochs": 3, "min_pairs": 0, "vae_min_steps": 20, "vae_epochs": 2}


def _retain(digits: DataSplit, rows: int = 400) -> tuple[Tensor, Tensor]:
    """Training rows 200.. (the forget fixture's indices are drawn from all of them; a few
    overlapping rows do not matter for these checks)."""
    return digits.x_train[200 : 200 + rows], digits.y_train[200 : 200 + rows]


# -- labels are never read --------------------------------------------------------------------------


def test_weights_do_not_depend_on_the_forget_labels(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    """THE defining property: given, permuted or absent labels give bit-identical weights."""
    x, y = forget
    retain = _retain(digits, 200)
    runs = [
        unlearnkit.unlearn(trained_cnn, (x, labels), method="laf", retain=retain, seed=3, **QUICK)
        for labels in (y, y.flip(0), (y + 1) % 10, None)
    ]
    assert not same_weights(runs[0].model, trained_cnn)
    for other in runs[1:]:
        assert same_weights(runs[0].model, other.model)
        assert other.steps == runs[0].steps
    assert runs[-1].details["labels"] == "predicted_by_original"
    assert "labels" not in runs[0].details


def test_retain_labels_are_not_read_unless_the_head_is_refitted(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    x_r, y_r = _retain(digits, 200)
    runs = [
        unlearnkit.unlearn(trained_cnn, (forget[0], None), method="laf", retain=(x_r, labels), seed=1, **QUICK)
        for labels in (y_r, y_r.roll(7), None)
    ]
    assert all(same_weights(runs[0].model, r.model) for r in runs[1:])
    assert runs[-1].retain_used == 200


def test_refit_head_needs_labelled_retain_data(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    x_r, _ = _retain(digits, 100)
    with pytest.raises(DataContractError, match=r"refit_head=True .* needs its labels"):
        unlearnkit.unlearn(trained_cnn, forget, method="laf", retain=(x_r, None), refit_head=True, **QUICK)
    with pytest.raises(DataContractError, match="needs retain data"):
        unlearnkit.unlearn(trained_cnn, forget, method="laf", **QUICK)
    with pytest.raises(DataContractError, match="retain data: .*NaN"):
        bad = x_r.clone()
        bad[0, 0, 0, 0] = float("nan")
        unlearnkit.unlearn(trained_cnn, forget, method="laf", retain=(bad, None), **QUICK)


def test_relabeling_is_refused(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], new_labels: Tensor, digits: DataSplit
) -> None:
    with pytest.raises(InvalidRequestError, match="does not support relabeling"):
        unlearnkit.unlearn(trained_cnn, forget, method="laf", new_labels=new_labels, retain=_retain(digits), **QUICK)


# -- what changes -----------------------------------------------------------------------------------


def test_only_the_extractor_changes_unless_the_head_is_refitted(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    retain = _retain(digits, 200)
    plain = unlearnkit.unlearn(trained_cnn, (forget[0], None), method="laf", retain=retain, **QUICK)
    head = trained_cnn.head[2]
    assert torch.equal(plain.model.head[2].weight, head.weight) and torch.equal(plain.model.head[2].bias, head.bias)
    assert not torch.equal(plain.model.features[0].weight, trained_cnn.features[0].weight)
    # BatchNorm statistics stay frozen: the model runs in eval mode throughout.
    assert torch.equal(plain.model.features[1].running_mean, trained_cnn.features[1].running_mean)

    refit = unlearnkit.unlearn(trained_cnn, (forget[0], None), method="laf", retain=retain, refit_head=True, **QUICK)
    assert not torch.equal(refit.model.head[2].weight, head.weight)
    # The refit starts from LAF's extractor and leaves it as it is.
    assert torch.equal(refit.model.features[0].weight, plain.model.features[0].weight)
    assert refit.details["head_refit_steps"] == 5 and refit.steps == plain.steps + 5  # head_epochs=5


def test_default_settings_forget_on_digits_and_keep_the_test_accuracy(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    """Measured (these 400 retain rows, the 4-instance forget fixture, seeds 0-5): Acc(D_f)
    100 -> 0 on five seeds and 25 on one; Acc(D_test) 98.9 -> 92.5 ... 94.4 (a drop of 4.4 to
    6.4 points); Acc(D_r) 100 -> 96.0 ... 98.5. With 4 forget instances against batches of 32
    retain ones the forget term dominates and the forget set ends up misclassified; on larger
    forget sets LAF stops short of that (see the class docstring)."""
    retain = _retain(digits)
    splits = {"forget": forget, "retain": retain, "test": (digits.x_test, digits.y_test)}
    before = unlearnkit.evaluate(trained_cnn, splits)
    for seed in (0, 1):
        result = unlearnkit.unlearn(trained_cnn, (forget[0], None), method="laf", retain=retain, seed=seed)
        after = unlearnkit.evaluate(result.model, splits)
        assert result.steps == 200 and result.passes == 100  # min_pairs=100 pairs of one forget batch
        assert after["acc/forget"] <= 25.0  # measured 0.0 and 0.0
        assert after["acc/test"] >= before["acc/test"] - 9.0  # measured drops 4.4 and 6.1
        assert after["acc/retain"] >= 92.0  # measured 97.5 and 96.75
        assert result.converged == (after["acc/forget"] == 0.0)


def test_the_paper_preset_is_gentle(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    """The published schedule (20 epochs of one forget batch, lr 5e-5) barely moves a model on a
    small forget set: this is why the default preset takes more and larger steps."""
    params = LAF(preset="paper").get_params()
    chosen = (params["lr"], params["lr_align"], params["epochs"], params["tau"], params["min_pairs"])
    assert chosen == (5e-5, 1e-4, 20, 5.0, 0)
    retain = _retain(digits)
    result = unlearnkit.unlearn(trained_cnn, (forget[0], None), method="laf", retain=retain, preset="paper")
    after = unlearnkit.evaluate(result.model, {"forget": forget, "test": (digits.x_test, digits.y_test)})
    before = unlearnkit.evaluate(trained_cnn, {"test": (digits.x_test, digits.y_test)})
    assert result.steps == 40
    assert after["acc/test"] >= before["acc/test"] - 1.0
    assert not same_weights(result.model, trained_cnn)


def test_hyperparameters_are_checked() -> None:
    with pytest.raises(InvalidHyperparameterError, match="tau must be > 0"):
        LAF(tau=0.0)
    with pytest.raises(InvalidHyperparameterError, match="refit_head must be one of"):
        LAF(refit_head=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidHyperparameterError, match="vae_max_rows must be > 0"):
        LAF(vae_max_rows=0)
    with pytest.raises(InvalidHyperparameterError, match="min_pairs must be >= 0"):
        LAF(min_pairs=-1)
    with pytest.raises(InvalidHyperparameterError, match="head must be a module name"):
        LAF(head=3)  # type: ignore[arg-type]
    assert LAF().get_params()["vae_kld_weight"] == 0.025


def test_a_named_head_that_is_not_linear_is_refused(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    with pytest.raises(InvalidHyperparameterError, match="not an nn.Linear"):
        unlearnkit.unlearn(trained_cnn, forget, method="laf", retain=_retain(digits, 50), head="head.1", **QUICK)
    with pytest.raises(InvalidHyperparameterError, match="no module named 'nope'"):
        unlearnkit.unlearn(trained_cnn, forget, method="laf", retain=_retain(digits, 50), head="nope", **QUICK)


def test_vae_rows_are_capped(trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit) -> None:
    result = unlearnkit.unlearn(
        trained_cnn, (forget[0], None), method="laf", retain=_retain(digits, 300), vae_max_rows=64, **QUICK
    )
    assert result.details["vae_rows"] == 64 and result.retain_used == 300
    assert result.details["embedding_dim"] == trained_cnn.head[2].in_features


# -- components -------------------------------------------------------------------------------------


def test_embedding_vae_learns_its_data_and_flags_other_embeddings(trained_cnn: SmallCNN, digits: DataSplit) -> None:
    """Fitted on the embeddings of digits 0-4, the VAE's loss falls, and it reconstructs held-out
    0-4 digits better than digits 5-9 (out of its distribution)."""
    feats_train = extract_features(trained_cnn, digits.x_train)
    feats_test = extract_features(trained_cnn, digits.x_test)
    low_train, low_test = feats_train[digits.y_train < 5], feats_test[digits.y_test < 5]
    high_test = feats_test[digits.y_test >= 5]
    vae, losses = fit_embedding_vae(low_train, generator=torch.Generator().manual_seed(0), epochs=30)
    assert len(losses) == 30 and losses[-1] < 0.2 * losses[0]  # measured 125 -> 5.6
    with torch.no_grad():
        err_train = vae.reconstruction_error(low_train).mean()
        err_in = vae.reconstruction_error(low_test).mean()
        err_out = vae.reconstruction_error(high_test).mean()
    assert err_out > 3 * err_in and err_out > 3 * err_train  # measured 0.32 vs 0.044 and 0.035
    # Gradients reach the inputs (the VAE itself is frozen).
    e = low_test[:3].clone().requires_grad_(True)
    vae.reconstruction_error(e).sum().backward()
    assert e.grad is not None and e.grad.abs().sum() > 0
    assert all(p.grad is None for p in vae.parameters())


def test_embedding_vae_fit_is_seeded_and_leaves_the_global_rng_alone() -> None:
    data = torch.randn(50, 5)
    state = torch.random.get_rng_state()
    a, _ = fit_embedding_vae(data, generator=torch.Generator().manual_seed(4), latent_dim=2, epochs=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(99)
    b, _ = fit_embedding_vae(data, generator=torch.Generator().manual_seed(4), latent_dim=2, epochs=2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    # min_steps extends a small set's fit: 50 rows are 2 batches, so 10 steps are 5 passes.
    gen = torch.Generator().manual_seed(4)
    _, losses = fit_embedding_vae(data, generator=gen, latent_dim=2, epochs=2, min_steps=10)
    assert len(losses) == 5


def test_standardisation_of_a_constant_set() -> None:
    center, scale = standardisation(torch.ones(3, 4))
    assert torch.equal(center, torch.ones(4)) and float(scale) == 1.0


class _TwoHeads(nn.Module):
    """Uses its last Linear twice: no single embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.out = nn.Linear(64, 10), nn.Linear(10, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.out(self.body(x.flatten(1)))))


def test_the_head_split_matches_the_feature_layer_of_the_metrics(trained_cnn: SmallCNN, digits: DataSplit) -> None:
    name, head = resolve_head(trained_cnn)
    assert f"{name}:input" == feature_layer(trained_cnn)
    x = digits.x_test[:20]
    model = copy.deepcopy(trained_cnn).eval()
    logits, emb = logits_and_embeddings(model, x, head=dict(model.named_modules())[name])
    assert torch.allclose(emb, extract_features(trained_cnn, x), atol=1e-6)
    assert torch.allclose(logits, trained_cnn.eval()(x), atol=1e-6)
    assert emb.requires_grad
    params = extractor_parameters(model, model.head[2])
    assert len(params) == len(list(model.parameters())) - 2
    with pytest.raises(InvalidModelError, match="ran 2 times"):
        two = _TwoHeads()
        logits_and_embeddings(two, x, two.out)
