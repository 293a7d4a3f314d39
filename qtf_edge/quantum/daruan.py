"""DARUAN: a data re-uploading activation, one simulated qubit per channel.

"Quantum" here is an exact classical simulation of ONE qubit per channel; nothing runs
on quantum hardware.

Circuit for channel c and input x (gates listed in the order they act):
    |psi_0> = H|0>
    for l in 0 .. reps-1:   RZ(theta[l, 0, c]), then RY(theta[l, 1, c]), then RZ(w[l, c] * x + b[l, c])
    finally:                RZ(phi[0, c]), then RY(phi[1, c])
    output = <Z> * scale[c] + bias[c]
Each data angle enters through exactly one RZ, so <Z> is a trigonometric polynomial in x
with frequencies in {sum_l s_l w[l, c] : s_l in {-1, 0, 1}}; the output is bounded by
|scale| + |bias|.

Fast path (DARUAN.forward), exact and real: a pure one-qubit state is a unit Bloch
vector r = (<X>, <Y>, <Z>) in R^3; RZ(a) rotates r about z by a, RY(b) about y by b,
H|0> = (1, 0, 0), and <Z> = r_z. The constant rotations RY(theta_l1) RZ(theta_l0) of
each layer and the final RY(phi_1) RZ(phi_0) (with scale) are folded into per-channel
3x3 matrices (built from the parameters only, so cached at inference), and each layer
costs one cos and one sin of the data angle and a few fused multiply-adds over
(..., channels); the last layer and the readout are folded together into three
per-channel covectors, and the first layer, whose input H|0> is constant, into the
per-channel coefficients of its (cos, sin, 1), which for reps <= 2 leaves no Bloch
vector to carry at all.

Reference (simulate_daruan): the same circuit as a complex 2-amplitude statevector,
gate by gate; tests prove the two agree, and distillation samples the exact function.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from qtf_edge.param_cache import ParameterCache
from qtf_edge.quantum.gates import HADAMARD, PAULI_Z, ry, rz
from qtf_edge.quantum.precision import float32_simulation

INIT_THETA_STD = 0.1


def bloch_ry_rz(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Action of RY(b) RZ(a) (RZ first) on Bloch vectors: a, b (...) -> (3, 3, ...).

    RZ(a) rotates about z by a, RY(b) about y by b; their product, written out:
        [[cos b cos a, -cos b sin a, sin b],
         [      sin a,        cos a,     0],
         [-sin b cos a,  sin b sin a, cos b]].
    Matrix dims come FIRST so that each entry [i, j] is a contiguous (channels,) vector:
    broadcasting a strided vector against (..., channels) is several times slower.
    """
    ca, sa, cb, sb = a.cos(), a.sin(), b.cos(), b.sin()
    rows = ((cb * ca, -cb * sa, sb), (sa, ca, torch.zeros_like(a)), (-sb * ca, sb * sa, cb))
    return torch.stack([torch.stack(row) for row in rows])


# Bloch vectors are tuples (x, y, z) of tensors, each (..., C) or a per-channel (C,)
# constant. Every multiply-add is one fused addcmul, done in place on a temporary this
# code just made (autograd allows it: addcmul's backward never needs its first input);
# on CPU, fresh (..., C) buffers cost as much as the arithmetic.
Bloch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _dot(k: torch.Tensor, v: Bloch) -> torch.Tensor:
    """k (3, C) . v -> (..., C)."""
    return torch.addcmul(k[2] * v[2], k[0], v[0]).addcmul_(k[1], v[1])


def _matvec(m: torch.Tensor, v: Bloch) -> Bloch:
    """m (3, 3, C) applied to v, per channel."""
    return _dot(m[0], v), _dot(m[1], v), _dot(m[2], v)


def _affine(k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """k (3, C) of coefficients of (cos, sin, 1) -> k[0] cos + k[1] sin + k[2], (..., C)."""
    return torch.addcmul(k[2], k[0], cos).addcmul_(k[1], sin)


def _rotate_z(v: Bloch, cos: torch.Tensor, sin: torch.Tensor) -> Bloch:
    """Rotation about z by the angle with this cos and sin: the action of RZ(angle)."""
    return (torch.mul(cos, v[0]).addcmul_(sin, v[1], value=-1.0),
            torch.mul(sin, v[0]).addcmul_(cos, v[1]), v[2])


class DARUAN(nn.Module):
    def __init__(self, channels: int, reps: int = 2):
        super().__init__()
        for name, value in (("channels", channels), ("reps", reps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.channels, self.reps = channels, reps
        # Init, so that the activation is nonlinear and differs between channels on x in [-3, 3]:
        # - theta small: the Bloch vector stays near the equator, where the data RZs move it
        #   most, and the small tilts mix frequencies differently per channel;
        # - w = 1 / reps: the data rotations add up to about x, so the top frequency is ~1
        #   and [-3, 3] spans about one period: clearly curved, not a fast oscillation;
        # - b = 0, phi_0 uniform in [-pi, pi): a random phase per channel, so channels are
        #   shifted copies (cos, sin and everything between) rather than one function;
        # - phi_1 = -pi / 2: turns the equator onto the z axis, so <Z> ~ cos(x + phi_0)
        #   swings over its full [-1, 1] (with phi_1 = 0 it would stay near 0).
        # Layout (..., channels), channels last, so that every per-layer slice is contiguous.
        self.theta = nn.Parameter(INIT_THETA_STD * torch.randn(reps, 2, channels))
        self.w = nn.Parameter(torch.full((reps, channels), 1.0 / reps))
        self.b = nn.Parameter(torch.zeros(reps, channels))
        self.phi = nn.Parameter(torch.stack(
            (math.pi * (2 * torch.rand(channels) - 1), torch.full((channels,), -math.pi / 2))))
        self.scale = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self._constants_cache = ParameterCache()  # _constants() reused at inference (see param_cache.py)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reps={self.reps}"

    @float32_simulation
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., channels) -> (..., channels), exact closed form in real arithmetic."""
        self._check_input(x)
        first, middle, last = self._constants_cache.get(
            (self.theta, self.w, self.b, self.phi, self.scale, self.bias), self._constants)
        angles = torch.addcmul(self.b, self.w, x.unsqueeze(-2))  # (..., reps, C)
        cos, sin = angles.cos().unbind(-2), angles.sin().unbind(-2)
        if self.reps == 1:  # the only layer is the last one; its input is H|0>: no Bloch vector at all
            return _affine(first, cos[0], sin[0])
        if self.reps == 2:
            # Every readout covector, dotted with the first layer's output, is affine in
            # (cos a_0, sin a_0): 8 full-size multiply-adds in all.
            k_1, k_c, k_s = first
            out = _affine(k_1, cos[0], sin[0]).addcmul_(cos[1], _affine(k_c, cos[0], sin[0]))
            return out.addcmul_(sin[1], _affine(k_s, cos[0], sin[0]))
        v = _rotate_z(tuple(first), cos[0], sin[0])  # first = the first layer's M_0 H|0>
        for l in range(1, self.reps - 1):
            v = _rotate_z(_matvec(middle[l - 1], v), cos[l], sin[l])
        k_c, k_s, k_1 = last
        out = torch.addcmul(_dot(k_1, v) + self.bias, cos[-1], _dot(k_c, v))
        return out.addcmul_(sin[-1], _dot(k_s, v))

    def _constants(self):
        """Per-channel constants of forward, built from the parameters only (cached at inference).

        With v the Bloch vector entering the last layer (matrix M) and f the scaled readout row,
            out = f . RZ(a) M v + bias = cos(a) k_c . v + sin(a) k_s . v + k_1 . v + bias,
        k_c = f_x M[0] + f_y M[1], k_s = f_y M[0] - f_x M[1], k_1 = f_z M[2] (the last layer
        and the readout, folded). The first layer's input is the constant H|0> = (1, 0, 0),
        so it enters as u = M_0[:, 0], and after its data rotation
            k . RZ(a_0) u = cos(a_0) (k_x u_x + k_y u_y) + sin(a_0) (k_y u_x - k_x u_y) + k_z u_z.
        Returns (first, middle, last): for reps 1 and 2, first holds the (3, C) coefficients
        (cos, sin, 1) of each readout term (bias folded into the constant); for reps >= 3,
        first = u, middle the (3, 3, C) matrices of layers 1 .. reps - 2, last (k_c, k_s, k_1).
        """
        layers = bloch_ry_rz(self.theta[:, 0], self.theta[:, 1]).unbind(-2)  # reps x (3, 3, C)
        readout = bloch_ry_rz(self.phi[0], self.phi[1])[2] * self.scale  # z row of final rotation, scaled
        m = layers[-1]
        last = (readout[0] * m[0] + readout[1] * m[1],  # k_c
                readout[1] * m[0] - readout[0] * m[1],  # k_s
                readout[2] * m[2])  # k_1
        u = layers[0][:, 0]  # (3, C): M_0 applied to H|0>
        if self.reps == 1:  # v = u itself, before the (only, last) data rotation
            k_c, k_s, k_1 = last
            return torch.stack((k_c[0], k_s[0], k_1[0] + self.bias)), (), last
        if self.reps == 2:
            def through_first(k, plus=0.0):
                return torch.stack((k[0] * u[0] + k[1] * u[1], k[1] * u[0] - k[0] * u[1],
                                    k[2] * u[2] + plus))
            k_c, k_s, k_1 = last
            return (through_first(k_1, self.bias), through_first(k_c), through_first(k_s)), (), last
        return u, layers[1:-1], last

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim < 1 or x.shape[-1] != self.channels:
            raise ValueError(f"x must have shape (..., {self.channels}), got {tuple(x.shape)}")


def simulate_daruan(x: torch.Tensor, module: DARUAN) -> torch.Tensor:
    """Reference: module's circuit as a complex statevector, gate by gate. x (..., C) -> (..., C)."""
    module._check_input(x)

    def apply(gate: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return (gate.to(state.dtype) @ state[..., None])[..., 0]

    ket0 = torch.tensor([1.0, 0.0], dtype=torch.promote_types(x.dtype, torch.complex64))
    state = apply(HADAMARD, ket0).expand(*x.shape, 2)  # (..., C, 2)
    for l in range(module.reps):
        state = apply(rz(module.theta[l, 0]), state)
        state = apply(ry(module.theta[l, 1]), state)
        state = apply(rz(module.w[l] * x + module.b[l]), state)
    state = apply(rz(module.phi[0]), state)
    state = apply(ry(module.phi[1]), state)
    expectation = (state.conj() * apply(PAULI_Z, state)).sum(-1).real
    return module.scale * expectation + module.bias
