"""S3T: exact deletion from a model trained by sequence-aware sharded sliced training."""

from __future__ import annotations

from unlearnkit.errors import InvalidHyperparameterError, InvalidModelError, InvalidRequestError
from unlearnkit.methods.base import MethodRun, UnlearnContext, UnlearningMethod
from unlearnkit.s3t.model import S3TModel


class S3T(UnlearningMethod):
    """S3T deletion: drop every prefix holding a deleted row's slice, serve the survivors.

    Basu Roy Chowdhury, Choromanski, Sehanobish, Dubey and Chaturvedi, "Towards Scalable Exact
    Machine Unlearning Using Parameter-Efficient Fine-Tuning", ICLR 2025,
    https://arxiv.org/abs/2406.16257.

    S3T is a training-time design (:mod:`unlearnkit.s3t`): the model must be an
    :class:`~unlearnkit.s3t.model.S3TModel` built by :func:`~unlearnkit.s3t.train.train_s3t`,
    whose shards each hold one checkpoint per prefix of several slice orders. This method only
    performs the deletion: it marks the slices of the request's ids as deleted and switches
    every affected shard to its longest surviving prefix (:meth:`S3TModel.delete`). No
    optimiser runs (``steps = passes = 0``) and the result equals a model trained without the
    deleted slices, bit for bit. Any other model is refused with ``InvalidModelError``.

    Data (``data_access = "forget"``): the request's ``ids`` must be the training row indices
    the S3T model was trained with (its deletable ids), and its inputs and labels those rows:
    they are checked against the content hashes recorded at training. No retain data.
    Misclassification requests only (a deletion cannot relabel).

    ``converged`` is ``context.goal_holds()``: whether every deleted row is misclassified
    afterwards, which exact deletion does not promise (a model trained without a row often
    still classifies it correctly). ``result.details``: ``exact`` (True), ``optimizer_steps``
    (0), ``dropped_prefixes``, ``served_before`` / ``served_after``, ``needs_retraining``
    (shards left with no surviving prefix, which must be retrained) and
    ``remaining_capacity`` (slice deletions surely absorbed before a shard dies).

    Not registered: the registry contract hands every method a plain ``SmallCNN`` and requires
    optimiser steps, which an S3T deletion can never satisfy. Create it directly (``S3T()``).

    Args:
        allow_dead_shards: If ``True`` (default), a deletion that leaves a shard with no
            surviving prefix is performed and the shard reported in ``needs_retraining``
            (the other shards keep serving); if ``False`` it is refused with
            ``InvalidRequestError`` and the model is left as it was.

    Example:
        >>> import tempfile, torch
        >>> from unlearnkit.request import ForgetRequest
        >>> from unlearnkit.s3t import S3TConfig, train_s3t
        >>> gen = torch.Generator().manual_seed(0)
        >>> x, y = torch.rand(40, 1, 2, 2, generator=gen), torch.randint(0, 3, (40,), generator=gen)
        >>> backbone = torch.nn.Flatten()  # stands in for a frozen feature extractor
        >>> tmp = tempfile.TemporaryDirectory()
        >>> config = S3TConfig(shards=2, slices=3, orders=2, epochs=1)
        >>> model = train_s3t(backbone, (x, y), list(range(10, 40)), config, seed=0, directory=tmp.name, num_classes=3)
        >>> result = S3T().unlearn(model, ForgetRequest(x[[12]], y[[12]], ids=[12]))
        >>> result.steps, result.details["exact"], result.details["needs_retraining"]
        (0, True, [])
        >>> tmp.cleanup()
    """

    name = "s3t"
    summary = "S3T: exact deletion by switching sharded sliced models to their surviving prefixes."
    data_access = "forget"
    supports_relabel = False
    supports_unseen = False
    goal_driven = False
    gradient_based = False  # switches checkpoints: wrappers of optimiser steps must refuse it

    def __init__(self, *, allow_dead_shards: bool = True) -> None:
        if not isinstance(allow_dead_shards, bool):
            raise InvalidHyperparameterError(f"allow_dead_shards must be a bool, got {allow_dead_shards!r}")
        self.allow_dead_shards = allow_dead_shards

    def _unlearn(self, context: UnlearnContext) -> MethodRun:
        model, request = context.model, context.request
        if not isinstance(model, S3TModel):
            raise InvalidModelError(
                f"s3t deletes from an S3TModel (trained with unlearnkit.s3t.train_s3t), got {type(model).__name__}"
            )
        ids = list(request.ids)
        if any(not isinstance(i, int) for i in ids):
            raise InvalidRequestError("s3t needs the training row indices (ints) as the request's ids")
        model.check_rows(ids, request.inputs, request.labels)
        report = model.delete(ids, allow_dead_shards=self.allow_dead_shards)
        return MethodRun(0, 0, context.goal_holds(), "exact_deletion", report.to_dict())
