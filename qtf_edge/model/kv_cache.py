"""KV cache for incremental decoding: what each block keeps of the tokens already seen."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LayerCache:
    keys: torch.Tensor | None = None        # (B, H, S, head_dim)
    values: torch.Tensor | None = None      # (B, H, S, head_dim)
    key_states: torch.Tensor | None = None  # (B, H, S, 2**n_qubits): QKSAM key circuits' states

    @staticmethod
    def _append(old: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
        return new if old is None else torch.cat([old, new], dim=2)

    def extend(self, keys, values, key_states=None):
        """Append this step's entries; return everything cached so far (keys, values, states)."""
        self.keys = self._append(self.keys, keys)
        self.values = self._append(self.values, values)
        if key_states is not None:
            self.key_states = self._append(self.key_states, key_states)
        return self.keys, self.values, self.key_states


@dataclass
class KVCache:
    layers: list[LayerCache] = field(default_factory=list)

    @classmethod
    def empty(cls, n_layers: int) -> "KVCache":
        return cls([LayerCache() for _ in range(n_layers)])

    @property
    def length(self) -> int:
        keys = self.layers[0].keys if self.layers else None
        return 0 if keys is None else keys.shape[2]
