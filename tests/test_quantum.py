"""Tests of the exact few-qubit simulator (qtf_edge.quantum) against a brute-force oracle."""

import math

import numpy as np
import pytest
import torch

import quantum_reference as ref
from qtf_edge.quantum import (DARUAN, VariationalCircuit, angle_encode, apply_cnot, apply_cz,
                              apply_single_qubit, cnot_permutation, entanglement_entropy,
                              fidelity_kernel, max_entropy, pauli_z_expectations,
                              reduced_density_matrix, rz, simulate_daruan, von_neumann_entropy,
                              zero_state)

LOG2 = math.log(2.0)


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)
    np.random.seed(0)


def basis_sum(n: int, indices: list[int]) -> torch.Tensor:
    """Equal superposition of the given basis states."""
    state = torch.zeros(2**n)
    state[indices] = 1.0
    return state / state.norm()


def random_state(n: int, batch: tuple[int, ...] = (), complex_: bool = True) -> torch.Tensor:
    """Haar-ish random state: a normalised complex (or real) Gaussian vector."""
    dtype = torch.complex64 if complex_ else torch.float32
    state = torch.randn(*batch, 2**n, dtype=dtype)
    return state / torch.linalg.vector_norm(state, dim=-1, keepdim=True)


# --- entropy ---------------------------------------------------------------------------

def test_product_state_has_zero_entropy():
    state = angle_encode(torch.rand(16, 4) * 2 * math.pi)
    assert torch.allclose(entanglement_entropy(state, 4), torch.zeros(16), atol=1e-5)


@pytest.mark.parametrize("n, indices", [(2, [0, 3]), (4, [0, 15])])
def test_bell_and_ghz_half_system_entropy_is_log2(n, indices):
    assert entanglement_entropy(basis_sum(n, indices), n).item() == pytest.approx(LOG2, abs=1e-6)


def test_three_qubit_subsystem_entropy_hand_values():
    ghz = basis_sum(4, [0, 15])
    assert entanglement_entropy(ghz, 4, [0, 1, 2]).item() == pytest.approx(LOG2, abs=1e-6)
    # 4-qubit W state: the other qubit is |1> with probability 1/4, so S = H(3/4, 1/4),
    # whether diagonalised as the 8x8 or the 2x2 reduced density matrix.
    w = basis_sum(4, [1, 2, 4, 8])
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert entanglement_entropy(w, 4, [0, 1, 2]).item() == pytest.approx(expected, abs=1e-6)
    rho = reduced_density_matrix(w, 4, [0, 1, 2])
    assert rho.shape == (8, 8)
    assert von_neumann_entropy(rho).item() == pytest.approx(expected, abs=1e-6)


def test_entropy_of_random_state_matches_numpy():
    state = random_state(5, (3,))
    for keep in ([1, 3], [0], [4, 0, 2]):
        ours = entanglement_entropy(state, 5, keep)
        expected = [ref.entropy(s.numpy().astype(complex), keep) for s in state]
        assert torch.allclose(ours, torch.tensor(expected, dtype=torch.float32), atol=1e-5)


def test_max_entropy_uses_the_smaller_side():
    assert max_entropy(4) == pytest.approx(2 * LOG2)
    assert max_entropy(5) == pytest.approx(2 * LOG2)
    assert max_entropy(4, [0, 1, 2]) == pytest.approx(LOG2)
    assert max_entropy(4, [0, 1, 2, 3]) == 0.0


@pytest.mark.parametrize("complex_", [False, True])
def test_reduced_density_matrix_is_a_density_matrix(complex_):
    state = random_state(5, (4,), complex_)
    for keep in ([0, 1], [3, 1, 4], [2]):
        rho = reduced_density_matrix(state, 5, keep)
        trace = rho.diagonal(dim1=-2, dim2=-1).sum(-1)
        assert torch.allclose(trace.real, torch.ones(4), atol=1e-5)
        assert torch.allclose(rho, rho.mH, atol=1e-6)
        assert torch.linalg.eigvalsh(rho).min() > -1e-6
        expected = ref.reduced_density_matrix(state[0].numpy().astype(complex), keep)
        assert np.allclose(rho[0].numpy(), expected, atol=1e-5)


def test_entropy_gradient_is_finite_for_a_product_state():
    angles = torch.tensor([0.3, -1.2, 0.7, 2.0], requires_grad=True)
    entropy = entanglement_entropy(angle_encode(angles), 4)
    entropy.backward()
    assert torch.isfinite(angles.grad).all()


# --- kernel ----------------------------------------------------------------------------

@pytest.mark.parametrize("complex_", [False, True])
def test_fidelity_of_self_is_one_and_of_orthogonal_states_zero(complex_):
    states = random_state(3, (2, 6), complex_)
    kernel = fidelity_kernel(states, states)
    assert torch.allclose(kernel.diagonal(dim1=-2, dim2=-1), torch.ones(2, 6), atol=1e-5)
    assert ((kernel >= -1e-6) & (kernel <= 1 + 1e-5)).all()
    basis = torch.eye(8, dtype=states.dtype) * (1j if complex_ else 1.0)
    assert torch.allclose(fidelity_kernel(basis, basis), torch.eye(8), atol=1e-6)


def test_fidelity_of_complex_states_matches_numpy():
    q, k = random_state(3, (5,)), random_state(3, (4,))
    expected = np.abs(q.numpy().conj() @ k.numpy().T) ** 2
    assert np.allclose(fidelity_kernel(q, k).numpy(), expected, atol=1e-6)


# --- gates and states ------------------------------------------------------------------

def test_cnot_truth_table():
    n = 3
    basis = torch.eye(2**n)
    for control in range(n):
        for target in range(n):
            if control == target:
                continue
            for i in range(2**n):
                bits = [(i >> (n - 1 - q)) & 1 for q in range(n)]
                bits[target] ^= bits[control]
                j = sum(b << (n - 1 - q) for q, b in enumerate(bits))
                assert torch.equal(apply_cnot(basis[i], control, target, n), basis[j])


def test_cz_and_single_qubit_gates_match_reference():
    n = 3
    state = random_state(n, (2,))
    expected_cz = ref.cz(0, 2, n) @ state[0].numpy()
    assert np.allclose(apply_cz(state, 0, 2, n)[0].numpy(), expected_cz, atol=1e-6)
    theta = torch.tensor([0.4, -1.1])  # one gate per batch row
    out = apply_single_qubit(state, rz(theta), 1, n)
    for row in range(2):
        expected = ref.embed({1: ref.rz(theta[row].item())}, n) @ state[row].numpy()
        assert np.allclose(out[row].numpy(), expected, atol=1e-6)


def test_angle_encode_matches_reference():
    angles = torch.randn(4) * 2
    assert np.allclose(angle_encode(angles).numpy(), ref.encode(angles.numpy()), atol=1e-6)


@pytest.mark.parametrize("complex_", [False, True])
def test_pauli_z_expectations_match_reference(complex_):
    state = random_state(4, (3,), complex_)
    expected = np.stack([ref.pauli_z(s.numpy().astype(complex)) for s in state])
    assert np.allclose(pauli_z_expectations(state, 4).numpy(), expected, atol=1e-5)


def test_zero_state():
    state = zero_state(3, (2, 5))
    assert state.shape == (2, 5, 8) and torch.equal(state[..., 0], torch.ones(2, 5))
    assert state.sum() == 10


# --- circuit ---------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 3, 4, 6])
@pytest.mark.parametrize("entangler", ["cnot", "cz"])
def test_fast_circuit_equals_gatewise_equals_reference(n, entangler):
    circuit = VariationalCircuit(n, 3, entangler)
    with torch.no_grad():
        circuit.theta.uniform_(-math.pi, math.pi)  # far from the near-identity init
    angles = torch.rand(2, 3, n) * 2 * math.pi
    fast, gatewise = circuit(angles), circuit.forward_gatewise(angles)
    assert fast.shape == (2, 3, 2**n)
    assert torch.allclose(fast, gatewise, atol=1e-5)
    theta = circuit.theta.detach().double().numpy()
    expected = np.stack([ref.circuit_state(a, theta, entangler)
                         for a in angles.reshape(-1, n).double().numpy()])
    assert np.allclose(fast.detach().reshape(-1, 2**n).numpy(), expected, atol=1e-5)
    assert np.allclose(circuit.unitary().detach().numpy(), ref.circuit_unitary(theta, entangler),
                       atol=1e-5)


@pytest.mark.parametrize("entangler", ["cnot", "cz"])
def test_unitary_is_orthogonal_and_norms_are_preserved(entangler):
    circuit = VariationalCircuit(5, 4, entangler)
    with torch.no_grad():
        circuit.theta.uniform_(-math.pi, math.pi)
    unitary = circuit.unitary()
    assert torch.allclose(unitary @ unitary.T, torch.eye(32), atol=1e-5)
    state = circuit(torch.randn(64, 5) * 3)
    assert torch.allclose(torch.linalg.vector_norm(state, dim=-1), torch.ones(64), atol=1e-6)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_unitary_is_cached_without_autograd_and_rebuilt_after_an_update(mode):
    circuit = VariationalCircuit(4, 3)
    with mode():
        first = circuit.unitary()
        assert circuit.unitary() is first  # reused: theta unchanged
    with torch.no_grad():
        circuit.theta.add_(0.5)  # bumps theta's version: the cached unitary is stale
    with mode():
        second = circuit.unitary()
        assert second is not first
        assert torch.equal(second, circuit._build_unitary())
    grad_mode = circuit.unitary()  # autograd on: never the cached tensor
    assert grad_mode is not second and grad_mode.requires_grad
    assert torch.equal(grad_mode.detach(), second)


def test_gradients_flow_through_entropy_and_kernel():
    circuit = VariationalCircuit(4, 2)
    angles = (torch.randn(2, 6, 4) * 1.5).requires_grad_()
    states = circuit(angles)
    loss = entanglement_entropy(states, 4).sum() + fidelity_kernel(states[0], states[1]).sum()
    loss.backward()
    for grad in (circuit.theta.grad, angles.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 1e-4


def test_constants_built_in_inference_mode_still_train():
    # The first use of every cached constant happens inside inference mode here; the
    # cache must not hand autograd an inference tensor afterwards.
    circuit = VariationalCircuit(7, 1, "cz")
    with torch.inference_mode():
        pauli_z_expectations(circuit(torch.randn(2, 7)), 7)
    state = circuit(torch.randn(2, 7))
    (pauli_z_expectations(state, 7).sum() + apply_cnot(state, 2, 5, 7).sum()).backward()
    assert torch.isfinite(circuit.theta.grad).all()


# --- DARUAN ----------------------------------------------------------------------------

@pytest.mark.parametrize("reps", [1, 2, 3, 4])
def test_daruan_closed_form_equals_statevector_simulation(reps):
    module = DARUAN(11, reps)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn_like(parameter) * 2)
    x = (torch.randn(3, 5, 11) * 3).requires_grad_()
    fast, exact = module(x), simulate_daruan(x, module)
    assert torch.allclose(fast, exact, atol=1e-5)
    inputs = [x, *module.parameters()]
    grads_fast = torch.autograd.grad(fast.sin().sum(), inputs)
    grads_exact = torch.autograd.grad(exact.sin().sum(), inputs)
    for a, b in zip(grads_fast, grads_exact):
        assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("reps", [1, 2, 3])
def test_daruan_inference_cache_matches_autograd_path_and_follows_updates(reps):
    module = DARUAN(16, reps)
    x = torch.randn(4, 16) * 3
    with torch.inference_mode():
        cached = module(x)
        assert torch.equal(module(x), cached)
    assert torch.equal(module(x).detach(), cached)  # autograd path rebuilds the constants
    with torch.no_grad():
        module.theta.mul_(-2.0)  # in-place update: the cached constants are stale
        module.bias.add_(1.0)
        updated = module(x)
    assert not torch.allclose(updated, cached)
    assert torch.allclose(updated, simulate_daruan(x, module), atol=1e-5)


def test_daruan_output_is_bounded():
    module = DARUAN(32, 2)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn_like(parameter) * 3)
    y = module(torch.randn(500, 32) * 10)
    assert (y.abs() <= module.scale.abs() + module.bias.abs() + 1e-5).all()


def test_daruan_init_is_nonlinear_and_differs_between_channels():
    module = DARUAN(64, 2)
    x = torch.linspace(-3, 3, 61)[:, None].expand(61, 64)
    with torch.no_grad():
        y = module(x)
    assert (y.amax(0) - y.amin(0)).median() > 0.5  # swings, not stuck near 0
    # Residual of the best straight-line fit per channel: clearly not affine.
    design = torch.stack((x[:, 0], torch.ones(61)), dim=1)
    residual = y - design @ torch.linalg.lstsq(design, y).solution
    assert residual.abs().amax(0).median() > 0.1
    assert torch.corrcoef(y.T).abs().mean() < 0.9  # channels are not copies of one function


# --- argument checks -------------------------------------------------------------------

def test_bad_arguments_raise_value_error_naming_them():
    state = random_state(3, complex_=False)
    cases = [
        (lambda: VariationalCircuit(1), "n_qubits"),
        (lambda: VariationalCircuit(11), "n_qubits"),
        (lambda: VariationalCircuit(4, 0), "n_layers"),
        (lambda: VariationalCircuit(4, 2, "swap"), "entangler"),
        (lambda: VariationalCircuit(4)(torch.zeros(3)), "angles"),
        (lambda: apply_single_qubit(state, torch.eye(2), 3, 3), "qubit"),
        (lambda: apply_single_qubit(state, torch.eye(3), 0, 3), "gate"),
        (lambda: apply_cnot(state, 1, 1, 3), "control"),
        (lambda: cnot_permutation(3, 0, 5), "target"),
        (lambda: reduced_density_matrix(state, 3, [0, 0]), "keep"),
        (lambda: entanglement_entropy(state, 4), "state"),
        (lambda: von_neumann_entropy(torch.eye(2), eps=0.0), "eps"),
        (lambda: fidelity_kernel(torch.ones(2, 4), torch.ones(2, 8)), "psi_q"),
        (lambda: DARUAN(0), "channels"),
        (lambda: DARUAN(4)(torch.zeros(2, 5)), "x"),
    ]
    for call, name in cases:
        with pytest.raises(ValueError, match=name):
            call()
