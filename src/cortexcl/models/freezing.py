"""Freezing named layers of a network (the "layers frozen" tuning option)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cortexcl.errors import InputError


def freeze_layers(module: nn.Module, names: Sequence[str]) -> list[str]:
    """Stop the training of the parameters under the named submodules.

    A name selects every parameter whose full name equals it or starts with ``name + "."``,
    so ``"features.0"`` freezes the first AlexNet convolution and ``"features"`` the whole
    convolutional part. Frozen parameters get ``requires_grad = False``; build the optimiser
    from the parameters that still require gradients. Batch-norm layers under a frozen name
    keep their running statistics too: they always normalise in eval mode (a forward pre-hook),
    so a frozen stage computes exactly what it computed before tuning.

    Parameters
    ----------
    module : nn.Module
        The network, e.g. a torchvision AlexNet.
    names : sequence of str
        Submodule names or prefixes, as in ``module.named_parameters()``.

    Returns
    -------
    list of str
        Names of the frozen parameters, in the module's order.

    Raises
    ------
    InputError
        If a name selects no parameter.
    """
    parameters = dict(module.named_parameters())
    selected = _selected(list(parameters), names)
    for name in selected:
        parameters[name].requires_grad_(False)
    for name, submodule in module.named_modules():
        if isinstance(submodule, _BatchNorm) and any(
                name == frozen or name.startswith(f"{frozen}.") for frozen in names):
            submodule.register_forward_pre_hook(_running_statistics_kept)
    return [p for p in parameters if p in selected]


def check_frozen(backbone: str, names: Sequence[str]) -> None:
    """Refuse frozen names that select no parameter of the backbone ``backbone`` (before any
    work; `freeze_layers` applies the same rule).

    Raises
    ------
    InputError
        Naming the first such name and the top-level parts a name may start with.
    """
    from cortexcl.models.backbones import parameter_names

    _selected(parameter_names(backbone), names)


def _selected(parameters: Sequence[str], names: Sequence[str]) -> set[str]:
    """Parameters whose name equals a frozen name or starts with it plus a dot."""
    selected: set[str] = set()
    for name in names:
        matched = {p for p in parameters if p == name or p.startswith(f"{name}.")}
        if not matched:
            parts = ", ".join(dict.fromkeys(
                ".".join((p.rpartition(".")[0] or p).split(".")[:2]) for p in parameters))
            raise InputError(f"frozen layers: {name!r} selects no parameters; parts with "
                             f"parameters: {parts}")
        selected |= matched
    return selected


def _running_statistics_kept(module: nn.Module, _: object) -> None:
    """Normalise with the running statistics and leave them unchanged (eval-mode batch norm)."""
    module.training = False
