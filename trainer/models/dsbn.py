"""Domain-specific BatchNorm (DSBN, Chang et al., CVPR 2019) for source → target adaptation.

Every BN layer gets a source and a target copy (statistics *and* affine parameters); a training
batch is ``[source half | target half]`` and each half is normalised by its own copy, so the
shared convolutions learn domain-invariant features while each domain keeps its own statistics.
Evaluation and the exported model use the target copy (the deployed camera domain), hence
:func:`collapse_dsbn` / :func:`plain_state_dict` for export.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar

import torch
from torch import nn

__all__ = [
    "DOMAINS",
    "DSBN1d",
    "DSBN2d",
    "collapse_dsbn",
    "convert_dsbn",
    "dsbn_domain",
    "is_dsbn",
    "plain_state_dict",
    "set_domain",
]

DOMAINS: tuple[str, ...] = ("split", "source", "target")


class _DSBN(nn.Module):
    """Two BatchNorm layers, ``source`` and ``target``, with their own statistics and affine.

    Routing by ``domain``: ``"split"`` (default) normalises the first half of a training batch
    with ``source`` and the second half with ``target``, and uses ``target`` in eval mode (the
    deployed domain); ``"source"`` / ``"target"`` send the whole batch through that branch in
    both modes (e.g. the memory-initialisation passes of the engine).
    """

    _bn_type: ClassVar[type[nn.modules.batchnorm._BatchNorm]]

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        self.source = self._bn_type(num_features, eps, momentum, affine, track_running_stats)
        self.target = self._bn_type(num_features, eps, momentum, affine, track_running_stats)
        self.domain: str = "split"

    @classmethod
    def from_bn(cls, bn: nn.modules.batchnorm._BatchNorm) -> _DSBN:
        """Both branches start as copies of ``bn`` (weights, statistics, requires_grad flags)."""
        module = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        module.source = copy.deepcopy(bn)
        module.target = copy.deepcopy(bn)
        module.train(bn.training)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.domain == "source":
            return self.source(x)
        if self.domain == "target" or not self.training:
            return self.target(x)
        n = x.shape[0]
        if n % 2:
            raise ValueError(
                f"DSBN split mode needs an even batch [source half | target half], got {n}; "
                "use set_domain(model, 'source'|'target') for single-domain batches"
            )
        half = n // 2
        return torch.cat((self.source(x[:half]), self.target(x[half:])), dim=0)

    def extra_repr(self) -> str:
        return f"domain={self.domain!r}"


class DSBN2d(_DSBN):
    """Domain-specific ``BatchNorm2d`` (feature maps)."""

    _bn_type = nn.BatchNorm2d


class DSBN1d(_DSBN):
    """Domain-specific ``BatchNorm1d`` (the embedding neck)."""

    _bn_type = nn.BatchNorm1d


def _check_domain(domain: str, allowed: Sequence[str] = DOMAINS) -> None:
    if domain not in allowed:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(allowed)}")


def convert_dsbn(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm1d/2d of ``model`` (in place) by its DSBN version.

    Both branches are initialised from the original layer. Build the optimizer *after* this, as
    the parameters are new objects. Returns ``model`` (or the new module if ``model`` is a BN).
    """
    if isinstance(model, nn.BatchNorm2d):
        return DSBN2d.from_bn(model)
    if isinstance(model, nn.BatchNorm1d):
        return DSBN1d.from_bn(model)
    for name, child in list(model.named_children()):
        if isinstance(child, _DSBN):
            continue
        if isinstance(child, nn.BatchNorm2d):
            setattr(model, name, DSBN2d.from_bn(child))
        elif isinstance(child, nn.BatchNorm1d):
            setattr(model, name, DSBN1d.from_bn(child))
        else:
            convert_dsbn(child)
    return model


def collapse_dsbn(model: nn.Module, domain: str = "target") -> nn.Module:
    """Replace every DSBN layer (in place) by its ``domain`` branch: a plain-BN model for export."""
    _check_domain(domain, ("source", "target"))
    if isinstance(model, _DSBN):
        return getattr(model, domain)
    for name, child in list(model.named_children()):
        if isinstance(child, _DSBN):
            setattr(model, name, getattr(child, domain))
        else:
            collapse_dsbn(child, domain)
    return model


def set_domain(model: nn.Module, domain: str) -> int:
    """Route every DSBN layer of ``model`` to ``domain``; returns how many layers were set.

    A plain model (no DSBN) is left alone and 0 is returned, so the engine can call this
    unconditionally.
    """
    _check_domain(domain)
    count = 0
    for module in model.modules():
        if isinstance(module, _DSBN):
            module.domain = domain
            count += 1
    return count


@contextmanager
def dsbn_domain(model: nn.Module, domain: str) -> Iterator[nn.Module]:
    """Temporarily route the DSBN layers of ``model`` to ``domain``, restoring them afterwards."""
    _check_domain(domain)
    layers = [m for m in model.modules() if isinstance(m, _DSBN)]
    previous = [m.domain for m in layers]
    for m in layers:
        m.domain = domain
    try:
        yield model
    finally:
        for m, old in zip(layers, previous, strict=True):
            m.domain = old


def plain_state_dict(
    model: nn.Module, domain: str = "target", *, only_dsbn: bool = False
) -> dict[str, torch.Tensor]:
    """State dict of ``model`` as if collapsed to ``domain``, without copying the model.

    Tensors are detached CPU copies, so the result can be saved while training goes on.
    ``only_dsbn`` keeps just the entries of the DSBN layers (what differs between branches).
    """
    _check_domain(domain, ("source", "target"))
    prefixes = {name for name, m in model.named_modules() if isinstance(m, _DSBN)}
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        head, _, param = key.rpartition(".")
        owner, _, branch = head.rpartition(".")
        if head and branch in ("source", "target") and owner in prefixes:
            if branch != domain:
                continue
            key = f"{owner}.{param}" if owner else param
        elif only_dsbn:
            continue
        out[key] = value.detach().to("cpu", copy=True)
    return out


def is_dsbn(module: nn.Module) -> bool:
    """Whether ``module`` is a DSBN layer (either dimensionality)."""
    return isinstance(module, _DSBN)
