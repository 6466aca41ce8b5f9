"""Low-rank adapters (LoRA) for the Conv2d and Linear layers of any model: add, merge, remove.

:func:`add_lora` replaces each chosen layer of a model by a wrapper that holds the layer itself
(frozen: ``requires_grad=False``) and a rank-``r`` adapter whose output is added to the
layer's, so that training only the adapters changes the model's function while its weights
stay bit for bit as they were. :func:`merge_lora` folds every adapter into its layer's weight
and puts the plain layer back where the wrapper was (the merged model is a plain model with
its original ``state_dict`` keys); :func:`remove_lora` puts the plain layers back without
the adapters, which restores the original model exactly. :func:`group_sparse_penalty` is the
group lasso over adapter groups used by GS-LoRA.

The adapters (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022,
https://arxiv.org/abs/2106.09685):

- ``Linear(in, out)``: ``y = W x + b + B (A x)`` with ``A`` of shape ``(r, in)`` and ``B`` of
  shape ``(out, r)``; merged weight ``W + B A``.
- ``Conv2d(in, out, k, stride, padding, dilation)``: ``A`` is a conv to ``r`` channels with
  the layer's kernel, stride, padding, dilation and padding mode (no bias), ``B`` a 1x1 conv
  from ``r`` to ``out`` channels (no bias). A 1x1 conv after a ``k x k`` conv is a ``k x k``
  conv whose weight is ``einsum("or,rikl->oikl", B, A)``, so the merge is exact (to float
  rounding) and leaves the bias alone.

``A`` gets the default initialisation of its layer type (Kaiming-uniform with ``a=sqrt(5)``,
as ``loralib`` does), drawn from the given generator; ``B`` starts at zero, so a model with
fresh adapters computes exactly what it computed before. There is no ``alpha / r`` output
scale (``loralib``'s ``scaling``): with Adam it only rescales the effective step size.

Layers that cannot take an adapter are skipped and listed with the reason in
:attr:`LoraHandles.skipped`: grouped and depthwise convolutions (a full-rank ``B A`` delta is
not a grouped kernel, so it could not be merged back into the layer), layers whose weight is
shared with another module (merging would silently change the other one), and the
projections inside ``nn.MultiheadAttention`` (which reads their ``.weight`` directly and never
calls them).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = [
    "LoraConv2d",
    "LoraHandles",
    "LoraLayer",
    "LoraLinear",
    "add_lora",
    "group_norms",
    "group_sparse_penalty",
    "lora_layers",
    "merge_lora",
    "remove_lora",
]


class LoraLayer(nn.Module):
    """A frozen layer plus a low-rank adapter: ``base(x) + lora_B(lora_A(x))``.

    Attributes:
        base: The original layer; its parameters are frozen while wrapped.
        lora_A: The down-projection (to ``rank`` features or channels).
        lora_B: The up-projection (back to the layer's outputs), zero at the start.
        rank: The adapter's rank.
    """

    base: nn.Linear | nn.Conv2d
    lora_A: nn.Linear | nn.Conv2d
    lora_B: nn.Linear | nn.Conv2d

    def __init__(self, base: nn.Linear | nn.Conv2d, rank: int) -> None:
        super().__init__()
        self.base = base
        self.rank = rank
        # The caller's flags, put back by merge_lora / remove_lora.
        self._base_requires_grad = {name: p.requires_grad for name, p in base.named_parameters()}
        for p in base.parameters():
            p.requires_grad_(False)

    # The wrapped layer's tensors stay reachable under their usual names, for code that reads
    # ``layer.weight`` (shapes, initialisers, inspection). They are the *base* tensors: the
    # adapter's contribution is in :meth:`delta_weight`.
    @property
    def weight(self) -> Tensor:
        """The frozen base weight (without the adapter)."""
        return self.base.weight

    @property
    def bias(self) -> Tensor | None:
        """The base bias (adapters have none)."""
        return self.base.bias

    def forward(self, x: Tensor) -> Tensor:
        """The layer's output plus the adapter's."""
        return self.base(x) + self.lora_B(self.lora_A(x))

    def adapter_parameters(self) -> list[Tensor]:
        """``[A, B]``: the adapter's trainable weights."""
        return [self.lora_A.weight, self.lora_B.weight]

    def delta_weight(self) -> Tensor:
        """The change ``B A`` the adapter makes to the base weight, shaped like it."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"rank={self.rank}"


class LoraLinear(LoraLayer):
    """A ``nn.Linear`` with a rank-``r`` adapter ``B (A x)``.

    Example:
        >>> layer = LoraLinear(nn.Linear(4, 3), rank=2, generator=torch.Generator().manual_seed(0))
        >>> layer.lora_A.weight.shape, layer.lora_B.weight.shape, layer.delta_weight().abs().max().item()
        (torch.Size([2, 4]), torch.Size([3, 2]), 0.0)
    """

    def __init__(self, base: nn.Linear, rank: int, generator: torch.Generator | None = None) -> None:
        super().__init__(base, rank)
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        _init_adapter(self, base.weight, generator)

    def delta_weight(self) -> Tensor:
        return self.lora_B.weight @ self.lora_A.weight


class LoraConv2d(LoraLayer):
    """A ``nn.Conv2d`` (``groups=1``) with a rank-``r`` adapter: a conv to ``r`` channels with
    the layer's kernel, stride, padding, dilation and padding mode, then a 1x1 conv to its
    outputs.

    Example:
        >>> conv = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        >>> layer = LoraConv2d(conv, rank=3, generator=torch.Generator().manual_seed(0))
        >>> layer.lora_A.weight.shape, layer.lora_B.weight.shape, layer.delta_weight().shape
        (torch.Size([3, 2, 3, 3]), torch.Size([4, 3, 1, 1]), torch.Size([4, 2, 3, 3]))
    """

    def __init__(self, base: nn.Conv2d, rank: int, generator: torch.Generator | None = None) -> None:
        if base.groups != 1:
            raise ValueError(f"a LoRA adapter needs a conv with groups=1, got groups={base.groups}")
        super().__init__(base, rank)
        self.lora_A = nn.Conv2d(
            base.in_channels, rank, base.kernel_size, stride=base.stride, padding=base.padding,
            dilation=base.dilation, bias=False, padding_mode=base.padding_mode,
        )
        self.lora_B = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        _init_adapter(self, base.weight, generator)

    def delta_weight(self) -> Tensor:
        # (out, r, 1, 1) x (r, in, kh, kw) -> (out, in, kh, kw): the 1x1 conv after the kxk one.
        return torch.einsum("or,rikl->oikl", self.lora_B.weight[:, :, 0, 0], self.lora_A.weight)


def _init_adapter(layer: LoraLayer, like: Tensor, generator: torch.Generator | None) -> None:
    """Seeded Kaiming-uniform ``A`` (drawn on the CPU, so every device draws the same numbers),
    zero ``B``, both on ``like``'s device and dtype (and 4-D ones in its memory layout)."""
    with torch.no_grad():
        a = torch.empty(layer.lora_A.weight.shape, dtype=torch.float32)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        layer.lora_A.weight.copy_(a)
        nn.init.zeros_(layer.lora_B.weight)
    layer.lora_A.to(device=like.device, dtype=like.dtype)
    layer.lora_B.to(device=like.device, dtype=like.dtype)
    if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        layer.lora_A.to(memory_format=torch.channels_last)
        layer.lora_B.to(memory_format=torch.channels_last)


@dataclass
class LoraHandles:
    """What :func:`add_lora` did.

    Attributes:
        layers: Qualified name of every adapted layer -> its wrapper, in module order.
        skipped: Name of every Conv2d / Linear layer left alone -> why.
    """

    layers: dict[str, LoraLayer] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def parameters(self) -> list[Tensor]:
        """Every adapter weight (``A`` and ``B`` of each layer), in layer order."""
        return [p for layer in self.layers.values() for p in layer.adapter_parameters()]

    def groups(self, depth: int | None = None) -> dict[str, list[Tensor]]:
        """Adapter weights grouped for the group lasso.

        Args:
            depth: ``None``: one group per adapted layer (named after it). An integer ``d >= 1``:
                layers whose names share their first ``d`` dot-separated parts form one group
                named by that prefix (``d=2`` groups a ResNet's ``layer1.0.conv1``,
                ``layer1.0.conv2`` and ``layer1.0.shortcut.0`` into the block ``layer1.0``;
                a name with fewer parts is its own group).

        Example:
            >>> model = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), nn.Linear(2, 2))
            >>> handles = add_lora(model, rank=1)
            >>> {name: len(ps) for name, ps in handles.groups(depth=1).items()}
            {'0': 4, '1': 2}
        """
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
            raise ValueError(f"depth must be None or a whole number >= 1, got {depth!r}")
        grouped: dict[str, list[Tensor]] = {}
        for name, layer in self.layers.items():
            key = name if depth is None else ".".join(name.split(".")[:depth])
            grouped.setdefault(key, []).extend(layer.adapter_parameters())
        return grouped

    def num_parameters(self) -> int:
        """Number of adapter weights (scalars) added to the model."""
        return sum(p.numel() for p in self.parameters())


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """Every LoRA wrapper in ``model``, by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def add_lora(
    model: nn.Module,
    rank: int,
    *,
    targets: Sequence[str] | None = None,
    generator: torch.Generator | None = None,
) -> LoraHandles:
    """Gives ``model``'s Conv2d and Linear layers rank-``rank`` adapters, in place.

    Each chosen layer is replaced (in its parent, under every name it is registered under) by a
    :class:`LoraLinear` or :class:`LoraConv2d` wrapping it; its parameters are frozen
    (``requires_grad=False``, restored by :func:`merge_lora` / :func:`remove_lora`). Other
    parameters of the model are left as they are: freezing them is the caller's choice.

    Args:
        model: Any eager ``nn.Module`` (not TorchScript: its submodules cannot be replaced).
        rank: The adapters' rank, >= 1.
        targets: ``fnmatch`` patterns of qualified module names to adapt (e.g.
            ``["features.*", "head.0"]``); ``None`` adapts every eligible layer.
        generator: Seeds the ``A`` initialisation.

    Returns:
        The adapted layers and the skipped ones with reasons.

    Raises:
        ValueError: If ``rank`` is not a whole number >= 1, the model is TorchScript or
            already holds adapters, or no layer could be adapted.

    Example:
        >>> torch.manual_seed(0) and None
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3, groups=4), nn.Flatten(), nn.Linear(16, 2))
        >>> x = torch.rand(2, 1, 6, 6)
        >>> before = model(x)
        >>> handles = add_lora(model, rank=2)
        >>> sorted(handles.layers), handles.skipped["1"].split(" (")[0]
        (['0', '3'], 'depthwise convolution')
        >>> torch.equal(model(x), before)  # B starts at zero
        True
        >>> sorted(model.state_dict())[:4]
        ['0.base.bias', '0.base.weight', '0.lora_A.weight', '0.lora_B.weight']
        >>> merge_lora(model)
        2
        >>> sorted(model.state_dict())
        ['0.bias', '0.weight', '1.bias', '1.weight', '3.bias', '3.weight']
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a whole number >= 1, got {rank!r}")
    if isinstance(model, torch.jit.ScriptModule):
        raise ValueError(
            "a TorchScript module cannot take adapters (its submodules cannot be replaced); pass the eager model"
        )
    if lora_layers(model):
        raise ValueError(
            "the model already holds LoRA adapters: merge them with merge_lora(model) or drop them with "
            "remove_lora(model) before adding new ones"
        )
    patterns = None if targets is None else list(targets)
    registrations = _registrations(model)
    shared = _shared_parameter_owners(model)
    handles = LoraHandles()
    # Listed before any replacement: the walk must not descend into the new wrappers (whose
    # adapters are Conv2d / Linear layers too).
    for name, module in list(model.named_modules()):
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or not name:
            continue
        if patterns is not None and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        reason = _skip_reason(module, registrations, shared)
        if reason is not None:
            handles.skipped[name] = reason
            continue
        wrapper: LoraLayer
        if isinstance(module, nn.Conv2d):
            wrapper = LoraConv2d(module, rank, generator)
        else:
            wrapper = LoraLinear(module, rank, generator)
        wrapper.train(module.training)
        for parent, attr in registrations[id(module)]:
            setattr(parent, attr, wrapper)
        handles.layers[name] = wrapper
    if not handles.layers:
        why = "; ".join(f"{n}: {r}" for n, r in handles.skipped.items()) or "none matched"
        raise ValueError(f"no Conv2d or Linear layer of the model can take an adapter ({why})")
    return handles


def _registrations(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """For every submodule, each (parent, attribute) it is registered under (a layer reused
    in two places has two)."""
    found: dict[int, list[tuple[nn.Module, str]]] = {}
    for parent in model.modules():
        # _modules, not named_children(): that one lists a child registered twice only once.
        for attr, child in parent._modules.items():
            if child is not None:
                found.setdefault(id(child), []).append((parent, attr))
    return found


def _shared_parameter_owners(model: nn.Module) -> dict[int, set[int]]:
    """For every parameter, the ids of the modules that hold it directly (tied weights have
    several)."""
    owners: dict[int, set[int]] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), set()).add(id(module))
    return owners


def _skip_reason(
    module: nn.Module,
    registrations: Mapping[int, list[tuple[nn.Module, str]]],
    shared: Mapping[int, set[int]],
) -> str | None:
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        kind = "depthwise" if module.groups == module.in_channels else "grouped"
        return (
            f"{kind} convolution (groups={module.groups}): a low-rank delta is a full kernel, which "
            "could not be merged back into a grouped layer"
        )
    if any(isinstance(parent, nn.MultiheadAttention) for parent, _ in registrations.get(id(module), [])):
        return "a projection of nn.MultiheadAttention, which reads its .weight directly instead of calling it"
    for p in module.parameters(recurse=False):
        if len(shared.get(id(p), ())) > 1:
            return "its weight is shared with another module (tied weights): merging would change that one too"
    return None


def _unwrap(model: nn.Module, *, merge: bool) -> int:
    """Puts every wrapped layer back in place of its wrapper, first adding ``B A`` to its
    weight if ``merge``; returns how many layers were unwrapped."""
    registrations = _registrations(model)
    count = 0
    for wrapper in {id(m): m for m in model.modules() if isinstance(m, LoraLayer)}.values():
        base = wrapper.base
        if merge:
            with torch.no_grad():
                delta = wrapper.delta_weight()
                base.weight.add_(delta.to(base.weight.dtype))
        for pname, p in base.named_parameters():
            p.requires_grad_(wrapper._base_requires_grad.get(pname, True))
        base.train(wrapper.training)
        for parent, attr in registrations.get(id(wrapper), []):
            setattr(parent, attr, base)
        count += 1
    return count


def merge_lora(model: nn.Module) -> int:
    """Folds every adapter into its layer's weight and restores the plain layers, in place.

    Afterwards the model holds no adapters, its ``state_dict`` keys are its original ones, its
    parameters have their original ``requires_grad`` flags, and it computes what the adapted
    model computed (to float rounding: ``(W + B A) x`` instead of ``W x + B (A x)``).

    Returns:
        The number of adapters merged (0 for a model without any).
    """
    return _unwrap(model, merge=True)


def remove_lora(model: nn.Module) -> int:
    """Drops every adapter and restores the plain layers, in place: the original model again,
    bit for bit (the base weights were never changed).

    Returns:
        The number of adapters removed.
    """
    return _unwrap(model, merge=False)


def _safe_sqrt(total: Tensor) -> Tensor:
    # sqrt has an infinite derivative at 0: a group driven to exactly zero would turn the
    # gradient into NaN. Its subgradient there is taken as 0 instead.
    positive = total > 0
    return torch.where(positive, total.clamp_min(torch.finfo(total.dtype).tiny).sqrt(), total.new_zeros(()))


def group_sparse_penalty(groups: Mapping[str, Iterable[Tensor]] | Iterable[Iterable[Tensor]]) -> Tensor:
    """The group lasso ``sum_g sqrt(sum_{P in g} ||P||_F^2)``: an L1 norm over groups of an L2
    norm within each, which drives whole groups to zero together.

    Args:
        groups: Group name -> tensors (as :meth:`LoraHandles.groups` returns), or an iterable
            of tensor groups.

    Example:
        >>> group_sparse_penalty({"a": [torch.tensor([3.0]), torch.tensor([4.0])], "b": [torch.zeros(2)]}).item()
        5.0
    """
    values = groups.values() if isinstance(groups, Mapping) else groups
    total: Tensor | None = None
    for group in values:
        tensors = list(group)
        if not tensors:
            continue
        squares = sum(t.square().sum() for t in tensors)
        term = _safe_sqrt(squares)  # type: ignore[arg-type]
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return total


@torch.no_grad()
def group_norms(groups: Mapping[str, Iterable[Tensor]]) -> dict[str, float]:
    """``sqrt(sum_{P in g} ||P||_F^2)`` of every group, by name (to see which groups the lasso
    switched off)."""
    return {name: sum(float(t.double().square().sum()) for t in group) ** 0.5 for name, group in groups.items()}
