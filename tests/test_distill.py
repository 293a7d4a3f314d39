"""Distillation into the deploy form: folding, Jacobi entropies, splines, the run, the CLI."""

import collections
import dataclasses
import json

import pytest
import torch
from cli_helpers import assert_one_line_error, invoke
from run_factory import make_run

from qtf_edge.config import ModelConfig
from qtf_edge.data import default_corpus, load_tokenizer, read_corpus
from qtf_edge.derived import calibration_windows
from qtf_edge.distill import (
    REPORT_FILE,
    DistillOptions,
    compare,
    daruan_input_ranges,
    deploy_model,
    distill_run,
    fit_activations,
)
from qtf_edge.kan import BSplineActivation
from qtf_edge.model import QTensorFormer
from qtf_edge.model.encoder import QuantumTokenEncoder
from qtf_edge.model.qksam import QuantumKernelAttention
from qtf_edge.quantum import (
    DARUAN,
    FoldedCircuit,
    VariationalCircuit,
    entanglement_entropy,
    fidelity_kernel,
    jacobi_eigenvalues,
    reduced_density_matrix,
)
from qtf_edge.quantum.jacobi import round_robin
from qtf_edge.runs import MODEL_FILE, load_run, read_lineage, save_run, sha256_file
from qtf_edge.train import loop

FOLDING_TOLERANCE = 1e-5  # the bound for folded encoder, kernel and entropy

# A trained micro model: real DARUAN input ranges and a router that has steered.
MICRO_MODEL = dict(context_length=32, d_model=32, n_layers=2, n_heads=2, d_ff=64, tt_rank=8,
                   tt_embedding_rank=8, r_min=2, r_max=8)
MICRO_TRAIN = dict(vocab_size=512, steps=60, batch_size=8, warmup_steps=6, eval_every=60,
                   eval_tokens=1024, checkpoint_every=60, learning_rate=3e-3, min_lr=3e-4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QTF_EDGE_CACHE", str(root / "cache"))
        result = loop.train_run(root / "qtf", preset_name="tiny", model_overrides=MICRO_MODEL,
                                train_overrides=MICRO_TRAIN, quiet=True)
    return result.run_dir


def random_states(n: int, count: int, dtype=torch.float32) -> torch.Tensor:
    states = torch.randn(count, 2**n, dtype=dtype)
    return states / states.norm(dim=-1, keepdim=True)


# ---------------------------------------------------------------------------- Jacobi

@pytest.mark.parametrize("d", [2, 4, 8, 16])
def test_round_robin_meets_every_pair_once_in_disjoint_rounds(d):
    rounds = round_robin(d)
    assert len(rounds) == d - 1
    for pairs in rounds:
        assert sorted(i for pair in pairs for i in pair) == list(range(d))
    met = [pair for pairs in rounds for pair in pairs]
    assert sorted(met) == [(p, q) for p in range(d) for q in range(p + 1, d)]


@pytest.mark.parametrize("n", [2, 4, 6, 8])
def test_jacobi_eigenvalues_equal_lapack(n):
    rho = reduced_density_matrix(random_states(n, 500, torch.float64), n, range(n // 2))
    expected = torch.linalg.eigvalsh(rho)
    got = jacobi_eigenvalues(rho).sort(-1).values
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_jacobi_handles_degenerate_and_diagonal_matrices():
    product = torch.zeros(16, dtype=torch.float64)
    product[5] = 1.0  # a basis state: rho = |b><b|, eigenvalues 1, 0, 0, 0 (three equal)
    maximally_mixed = torch.eye(4, dtype=torch.float64) / 4  # all four equal, already diagonal
    rho = torch.stack((reduced_density_matrix(product, 4, [0, 1]), maximally_mixed))
    got = jacobi_eigenvalues(rho).sort(-1).values
    torch.testing.assert_close(got, torch.tensor([[0, 0, 0, 1.0], [0.25] * 4], dtype=torch.float64))
    assert torch.isfinite(got).all()


def test_jacobi_works_under_autograd_after_a_first_call_in_inference_mode():
    rho = reduced_density_matrix(random_states(4, 8), 4, [0, 1])
    with torch.inference_mode():
        jacobi_eigenvalues(rho)  # builds (and caches) the round constants
    matrix = rho.clone().requires_grad_(True)
    jacobi_eigenvalues(matrix).square().sum().backward()
    assert torch.isfinite(matrix.grad).all()


def test_jacobi_entropy_has_finite_gradients_at_product_states():
    angles = torch.zeros(3, 4, requires_grad=True)  # product states: rho has rank 1
    state = VariationalCircuit(4, 1)(angles)
    entropy = entanglement_entropy(state, 4, eigensolver="jacobi")
    entropy.sum().backward()
    assert torch.isfinite(angles.grad).all()


@pytest.mark.parametrize("measure", ["von_neumann", "renyi2"])
def test_folded_entropy_equals_the_simulated_one(measure):
    states = random_states(4, 2000)
    lapack = entanglement_entropy(states, 4, measure=measure, eigensolver="lapack")
    jacobi = entanglement_entropy(states, 4, measure=measure, eigensolver="jacobi")
    assert (jacobi - lapack).abs().max() <= FOLDING_TOLERANCE


def test_renyi2_is_bounded_by_von_neumann_and_both_by_log_d():
    states = random_states(4, 500, torch.float64)
    von_neumann = entanglement_entropy(states, 4)
    renyi2 = entanglement_entropy(states, 4, measure="renyi2")
    assert (renyi2 <= von_neumann + 1e-12).all()  # Renyi entropies decrease with the order
    assert (von_neumann <= torch.log(torch.tensor(4.0, dtype=torch.float64)) + 1e-12).all()


# ---------------------------------------------------------------------------- folding

@pytest.mark.parametrize("entangler", ["cnot", "cz"])
def test_folded_circuit_equals_the_simulated_one(entangler):
    circuit = VariationalCircuit(4, 3, entangler)
    folded = FoldedCircuit.fold(circuit)
    angles = 3 * torch.randn(200, 4)
    with torch.no_grad():
        assert (folded(angles) - circuit.forward_gatewise(angles)).abs().max() <= FOLDING_TOLERANCE
    assert not any(p.requires_grad for p in folded.parameters())  # a constant, even when healed


def deploy_twin(module_class, config: ModelConfig):
    """A simulated module and its deploy-form twin with the same weights and folded circuits."""
    simulated = module_class(config)
    deploy = module_class(dataclasses.replace(config, form="deploy"))
    state = {k: v for k, v in simulated.state_dict().items() if not k.endswith("theta")}
    for name, module in simulated.named_modules():
        if isinstance(module, VariationalCircuit):
            state[f"{name}.folded_unitary"] = module.unitary().detach()
    deploy.load_state_dict(state, strict=True)
    return simulated.eval(), deploy.eval()


def test_folded_encoder_gives_the_same_features_and_entropies(tiny_config):
    simulated, deploy = deploy_twin(QuantumTokenEncoder, tiny_config)
    x = torch.randn(2, 16, tiny_config.d_model)
    with torch.no_grad():
        (features, entropy), (folded_features, folded_entropy) = simulated(x), deploy(x)
    assert (folded_features - features).abs().max() <= FOLDING_TOLERANCE
    assert (folded_entropy - entropy).abs().max() <= FOLDING_TOLERANCE


def test_folded_kernel_attention_gives_the_same_kernel_and_weights(tiny_config):
    simulated, deploy = deploy_twin(QuantumKernelAttention, tiny_config)
    x = torch.randn(2, 16, tiny_config.d_model)
    mask = torch.ones(16, 16, dtype=torch.bool).tril()
    with torch.no_grad():
        kernel = fidelity_kernel(*simulated.states(x))
        folded_kernel = fidelity_kernel(*deploy.states(x))
        weights = simulated.attention(*simulated.states(x), mask)
        folded_weights = deploy.attention(*deploy.states(x), mask)
    assert (folded_kernel - kernel).abs().max() <= FOLDING_TOLERANCE
    assert (folded_weights - weights).abs().max() <= FOLDING_TOLERANCE


# ---------------------------------------------------------------------------- the deploy form

@pytest.fixture(scope="module")
def distilled(trained):
    run = load_run(trained)
    tokenizer = load_tokenizer(run.tokenizer_path)
    windows = calibration_windows(tokenizer, None, 4096, run.config.context_length)
    fitted = fit_activations(run.model, daruan_input_ranges(run.model, windows), 16, 3)
    return run, tokenizer, fitted, deploy_model(run.model, fitted, 16, 3)


def test_deploy_form_has_no_simulation_left(distilled):
    _, _, _, deploy = distilled
    assert deploy.config.form == "deploy"
    kinds = collections.Counter(type(m) for m in deploy.modules())
    assert kinds[DARUAN] == kinds[VariationalCircuit] == 0
    assert kinds[BSplineActivation] == deploy.config.n_layers
    assert kinds[FoldedCircuit] == 3 * deploy.config.n_layers  # encoder, QKSAM query and key
    ids = torch.randint(0, deploy.config.vocab_size, (1, deploy.config.context_length))
    with torch.no_grad():
        graph = torch.export.export(deploy, (ids,)).graph
    targets = {str(node.target) for node in graph.nodes if node.op == "call_function"}
    forbidden = ("eig", "svd", "complex", "aten.item", "_local_scalar_dense")  # no host syncs either
    assert not {t for t in targets if any(w in t for w in forbidden)}, targets
    dtypes = {node.meta["val"].dtype for node in graph.nodes
              if isinstance(node.meta.get("val"), torch.Tensor)}
    assert not any(dtype.is_complex for dtype in dtypes)


def test_deploy_logits_match_the_original_on_real_text(distilled):
    run, tokenizer, fitted, deploy = distilled
    lines = read_corpus(default_corpus("valid"))
    windows = calibration_windows(tokenizer, default_corpus("valid"), 2048,
                                  run.config.context_length, "--data")
    folding, end_to_end, logits = compare(run.model, deploy, windows)
    # Folding changes nothing but rounding: every decision not on a tie agrees.
    assert folding.route_decisions > 0 and folding.rank_decisions > 0
    assert folding.route_agree == folding.route_decisions
    assert folding.rank_agree == folding.rank_decisions
    assert folding.max_entropy_difference <= FOLDING_TOLERANCE
    # The splines' fit errors (~1e-4 at grid 16) move logits by about as much: 1e-3 is
    # "the same model" with room for propagation, and far below a wrong channel's O(1).
    assert max(f.error.worst_bound for f in fitted) < 1e-3
    assert logits.max_abs_diff < 1e-3
    assert logits.top1_agreement >= 0.999
    assert lines  # the windows above are real validation text


def test_deploy_run_round_trips_through_its_folder(distilled, tmp_path):
    run, _, _, deploy = distilled
    save_run(tmp_path / "deploy", deploy, run.tokenizer_path, command="test", parent=run.path)
    loaded = load_run(tmp_path / "deploy")
    assert loaded.form == "deploy" and loaded.config == deploy.config
    ids = torch.randint(0, deploy.config.vocab_size, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids), deploy(ids), atol=0, rtol=0)
    assert json.loads((tmp_path / "deploy" / "config.json").read_text())["form"] == "deploy"
    parent = read_lineage(tmp_path / "deploy")["parent"]
    assert parent["model_sha256"] == sha256_file(run.path / MODEL_FILE)


def test_a_coarser_grid_fits_worse(distilled):
    run, _, fitted, _ = distilled
    # A range of several radians, where a DARUAN curves enough that 3 intervals cannot
    # follow it (the calibration ranges of a briefly trained model can be too narrow to tell).
    ranges = {f.name: (torch.full_like(f.observed[0], -4.0), torch.full_like(f.observed[1], 4.0))
              for f in fitted}
    fine, coarse = (fit_activations(run.model, ranges, grid, 3) for grid in (16, 3))
    for fine_fit, coarse_fit in zip(fine, coarse):
        assert coarse_fit.error.worst_max > 10 * fine_fit.error.worst_max


# ---------------------------------------------------------------------------- distill_run / CLI


def test_distill_cli_writes_a_deploy_run_and_its_report(trained, tmp_path):
    out = tmp_path / "deploy"
    result = invoke("distill", trained, "--out", out, "--calib-tokens", 2048, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["copied"] is None
    assert [layer["layer"] for layer in report["layers"]] == [
        "blocks.0.ffn.activation", "blocks.1.ffn.activation"]
    original, deploy = report["perplexity"]["original"], report["perplexity"]["deploy"]
    assert abs(deploy["per_word"] / original["per_word"] - 1) < 0.01
    assert report["folding"]["route_agreement"] == 1.0
    assert json.loads((out / REPORT_FILE).read_text())["layers"] == report["layers"]
    assert load_run(out).form == "deploy"
    evaluated = invoke("eval", out, "--json")
    assert evaluated.exit_code == 0, evaluated.output


def test_distill_heals_with_a_short_fine_tuning_run(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("QTF_EDGE_CACHE", str(tmp_path / "cache"))
    report = distill_run(trained, tmp_path / "healed",
                         DistillOptions(calib_tokens=2048, finetune_steps=4, eval_tokens=2048))
    assert set(report.perplexity) == {"original", "deploy", "healed"}
    healed = load_run(tmp_path / "healed")
    assert healed.form == "deploy"
    assert healed.lineage["parent"]["path"] == str(trained.resolve())
    original = load_run(trained).model.state_dict()
    shared = [k for k in healed.model.state_dict() if k in original]
    assert shared and any(not torch.equal(healed.model.state_dict()[k], original[k])
                          for k in shared)  # healing moved the weights both forms share
    unitary = [k for k in healed.model.state_dict() if k.endswith("folded_unitary")]
    assert unitary  # folded circuits stay constants through healing (they are buffers)
    assert (tmp_path / "healed" / REPORT_FILE).is_file()


def test_a_dense_run_is_copied_with_a_message(tmp_path):
    dense = make_run(tmp_path / "dense", dense=True)
    result = invoke("distill", dense, "--out", tmp_path / "copy")
    assert result.exit_code == 0, result.output
    assert "copied" in result.output and "dense" in result.output
    torch.testing.assert_close(load_run(tmp_path / "copy").model.state_dict(),
                               load_run(dense).model.state_dict())


def test_bad_input_is_one_line_and_exit_2(trained, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.\n")
    assert_one_line_error(invoke("distill", trained, "--out", tmp_path / "a", "--calib", empty),
                          "--calib", str(empty), "empty")
    assert_one_line_error(invoke("distill", trained, "--out", tmp_path / "b", "--calib", short),
                          "--calib", str(short), "--calib-tokens")
    assert_one_line_error(invoke("distill", trained, "--out", tmp_path / "c", "--grid", 0),
                          "--grid")
    assert_one_line_error(invoke("distill", trained, "--out", tmp_path / "d", "--order", 9),
                          "--order")
    assert_one_line_error(invoke("distill", tmp_path / "missing", "--out", tmp_path / "e"),
                          "missing")
    for name in "abcde":
        assert not (tmp_path / name).exists()
    taken = tmp_path / "taken"
    taken.mkdir()
    assert_one_line_error(invoke("distill", trained, "--out", taken), str(taken),
                          "already exists")
    assert not any(taken.iterdir())


def test_config_validates_form_entropy_and_spline_fields():
    with pytest.raises(ValueError, match="form"):
        ModelConfig(form="compiled")
    with pytest.raises(ValueError, match="entropy"):
        ModelConfig(entropy="shannon")
    with pytest.raises(ValueError, match="spline_grid"):
        ModelConfig(form="deploy", spline_grid=0)
    with pytest.raises(ValueError, match="spline_order"):
        ModelConfig(form="deploy", spline_order=7)
    assert ModelConfig(form="deploy").dense_baseline().form == "simulated"


def test_a_renyi2_model_routes_by_renyi2(tiny_config):
    model = QTensorFormer(dataclasses.replace(tiny_config, entropy="renyi2")).eval()
    ids = torch.randint(0, tiny_config.vocab_size, (1, 12))
    with torch.no_grad():
        model(ids)
    block = model.blocks[0]
    x = block.ln_encoder(model.token_embedding(ids) + model.position_embedding(torch.arange(12)))
    with torch.no_grad():
        state = block.encoder.circuit(block.encoder.to_angles(x))
    expected = entanglement_entropy(state, tiny_config.n_qubits, measure="renyi2")
    torch.testing.assert_close(block.trace.entropy, expected)
