"""Swapping a submodule by its dotted path (what factorisation and quantisation both do)."""

from torch import nn


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
