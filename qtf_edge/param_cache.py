"""Reuse of values that depend only on parameters, at inference.

A circuit's unitary, DARUAN's per-channel matrices or a TT layer's materialised weight
are rebuilt from the parameters on every call, which costs tens of microseconds (or, for
W, a matmul chain) each; at inference the parameters do not change between calls. With
autograd on, always rebuild (so gradients reach the parameters); with it off, reuse the value while
every parameter has the same storage and version counter (an in-place update such as an
optimizer step or load_state_dict bumps the version; .to() or reassignment changes the
storage). While torch.export or torch.compile traces, always rebuild: fake tensors have
no storage, and the traced graph should hold the build, which the exporter folds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


class ParameterCache:
    def __init__(self) -> None:
        self._key, self._value = None, None

    def get(self, params: Sequence[torch.Tensor], build: Callable[[], Any]) -> Any:
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return build()  # traced graphs (export, compile) have no storage to key on
        key = tuple((p.data_ptr(), p._version) for p in params)
        if key != self._key:
            # The key is taken first: if build() itself were to bump a version, the next
            # call would just rebuild rather than reuse a stale value.
            self._value, self._key = build(), key
        return self._value

    def clear(self) -> None:
        self._key, self._value = None, None
