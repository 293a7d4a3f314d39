"""Weight-only int4/int8: torch's rounding is ONNX Runtime's, exported graphs run from the
codes and match torch, bytes are counted as shipped, compress --bits meets size budgets."""

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from cli_helpers import assert_one_line_error, invoke
from run_factory import FAST_EXPORT, VOCAB, make_run, tiny_config

from qtf_edge.compress.run import CompressOptions, compress_run
from qtf_edge.export.onnx_graphs import export_onnx
from qtf_edge.export.onnx_weight_only import pack
from qtf_edge.export.pipeline import ExportOptions, export_run
from qtf_edge.model import QTensorFormer
from qtf_edge.quant import (QuantizedEmbedding, QuantizedLinear, WeightQuant,
                            quantizable_layers, quantized_layers, weight_bytes)
from qtf_edge.quant.blockwise import block_size
from qtf_edge.runs import load_run, save_run

PROFILE = "rpi4"


def unpack(codes: np.ndarray, bits: int, cols: int) -> np.ndarray:
    """MatMulNBits's packed uint8 codes (N, blocks, bytes) -> signed codes (N, cols)."""
    flat = codes.reshape(codes.shape[0], -1)
    if bits == 4:  # low nibble first
        flat = np.stack([flat & 15, flat >> 4], axis=-1).reshape(codes.shape[0], -1)
    return flat[:, :cols].astype(np.int32) - 2 ** (bits - 1)


@pytest.mark.parametrize("bits,block", [(4, 32), (4, 16), (8, 128)])
def test_codes_and_scales_are_onnx_runtimes(bits, block):
    weight = torch.randn(48, 100) * torch.logspace(-2, 1, 100)  # uneven columns, ragged K
    quant = WeightQuant(bits, block)
    codes, scales = quant.codes(weight)
    ort_codes, ort_scales = pack(weight.numpy(), bits, block)
    assert np.array_equal(unpack(ort_codes, bits, 100), codes.numpy().astype(np.int32))
    assert np.array_equal(ort_scales, scales.numpy())
    # the largest entry of each block is exact, so rounding again changes nothing
    rounded = quant.dequantize(weight)
    assert torch.equal(quant.dequantize(rounded), rounded)
    assert 0 < torch.linalg.norm(rounded - weight) / torch.linalg.norm(weight) < 0.1


def test_long_rows_take_blocks_onnx_runtime_packs():
    # int8 is one scale per output channel only up to 256 inputs, ONNX Runtime's largest block
    assert block_size(8, 32, 128) == 128 and block_size(8, 32, 512) == 256
    assert block_size(8, 32, 96) == 32  # three blocks of 32 store less than one padded to 128
    weight = torch.randn(8, 512)
    quant = WeightQuant(8, block_size(8, 32, 512))
    codes, _ = pack(weight.numpy(), 8, quant.block)
    assert np.array_equal(unpack(codes, 8, 512), quant.codes(weight)[0].numpy().astype(np.int32))


def test_tables_whose_rows_do_not_fill_a_block_export_unpadded(tmp_path):
    config = dataclasses.replace(tiny_config(dense=True), d_model=48, d_ff=96)
    model = QTensorFormer(config)
    layers = quantizable_layers(model)
    assert "token_embedding" in layers  # 48 = 3 blocks of 16; a 40-wide table would not be
    int4 = QTensorFormer(dataclasses.replace(config, weight_bits=dict.fromkeys(layers, 4))).eval()
    assert int4.token_embedding.quant.block == 16 and int4.blocks[0].ffn.down.quant.block == 32
    export_onnx(int4, tmp_path)
    ids = torch.randint(0, VOCAB, (1, 10))
    logits, *_ = ort.InferenceSession(tmp_path / "prefill.onnx").run(
        None, {"input_ids": ids.numpy()})
    with torch.no_grad():
        assert np.abs(logits - int4(ids).numpy()).max() < 1e-4
    narrow = QTensorFormer(dataclasses.replace(config, d_model=40, d_ff=80))
    assert "token_embedding" not in quantizable_layers(narrow)


def test_rounding_passes_gradients_straight_through():
    weight = torch.randn(16, 64, requires_grad=True)
    quant = WeightQuant(4, 32)
    (quant.fake_quantize(weight) * torch.arange(64.0)).sum().backward()
    assert torch.equal(weight.grad, torch.arange(64.0).expand(16, 64))


def quantized_model(bits: int, seed: int = 0) -> tuple[QTensorFormer, QTensorFormer]:
    """(float, quantised) tiny dense models with the same weights; every parameter is
    perturbed so that no two tensors are equal (the exporter merges equal constants)."""
    torch.manual_seed(seed)
    config = tiny_config(dense=True)
    model = QTensorFormer(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    bits_by_layer = dict.fromkeys(quantizable_layers(model), bits)
    quantized = QTensorFormer(dataclasses.replace(config, weight_bits=bits_by_layer)).eval()
    quantized.load_state_dict(model.state_dict())
    return model, quantized


def test_quantised_layers_compute_with_rounded_weights_and_the_tied_head_too():
    model, quantized = quantized_model(4)
    assert isinstance(quantized.token_embedding, QuantizedEmbedding)
    assert isinstance(quantized.blocks[0].ffn.up, QuantizedLinear)
    table = quantized.token_embedding
    rounded = table.quant.dequantize(table.weight)
    x = torch.randn(3, 32)
    assert torch.allclose(quantized._logits(x), x @ rounded.T, atol=1e-6)
    ids = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        assert not torch.allclose(quantized(ids), model(ids))


def test_weight_bytes_count_codes_scales_and_a_tied_table_once():
    model, quantized = quantized_model(4)
    floats = sum(p.numel() for p in model.parameters())
    assert weight_bytes(model) == 4 * floats
    layers = [quantized.get_submodule(n) for n in quantizable_layers(quantized)]
    rounded = sum(m.weight.numel() for m in layers)
    # int4, blocks of 32: 16 bytes of codes and a 4-byte scale per 32 weights
    assert weight_bytes(quantized) == 4 * (floats - rounded) + rounded * 20 // 32


def graph_weight_bytes(path) -> int:
    """Bytes of a graph's weights: every initializer but shape constants and scalars."""
    return sum(a.nbytes for a in map(onnx.numpy_helper.to_array, onnx.load(path).graph.initializer)
               if a.dtype != np.int64 and a.size > 1)


@pytest.mark.parametrize("bits", [4, 8])
def test_exported_graphs_run_from_the_codes_and_match_torch(tmp_path, bits):
    _, quantized = quantized_model(bits)
    info = export_onnx(quantized, tmp_path)
    ids = torch.randint(0, VOCAB, (2, 20))
    with torch.no_grad():
        reference = quantized(ids).numpy()
    for graph in ("prefill", "decode"):
        ops = info[graph]["op_types"]
        assert ops["com.microsoft:MatMulNBits"] == 9  # 8 projections and the tied head
        assert ops["com.microsoft:GatherBlockQuantized"] == 2  # token and position tables
        assert "Gather" not in ops and graph_weight_bytes(tmp_path / f"{graph}.onnx") \
            == weight_bytes(quantized)  # the table once, every weight as its codes
    prefill = ort.InferenceSession(tmp_path / "prefill.onnx")
    logits, *cache = prefill.run(None, {"input_ids": ids[:, :12].numpy()})
    assert np.abs(logits - reference[:, :12]).max() < 1e-4
    decode = ort.InferenceSession(tmp_path / "decode.onnx")
    names = [i.name for i in decode.get_inputs()][1:]
    for t in range(12, 20):
        logits, *cache = decode.run(None, {"input_ids": ids[:, t:t + 1].numpy(),
                                           **dict(zip(names, cache))})
        assert np.abs(logits[:, 0] - reference[:, t]).max() < 1e-4


def test_compress_bits_meets_a_byte_budget_recounted_from_the_bundle(tmp_path):
    source = make_run(tmp_path / "dense", dense=True)
    before = weight_bytes(load_run(source).model)
    for name, budget, bits in (("int4", 0.2, (4,)), ("cut", 0.15, (4, 8))):
        report = compress_run(source, tmp_path / name, CompressOptions(
            budget=f"size_mb={budget}x", target=PROFILE, bits=bits, eval_tokens=512,
            calib_tokens=1024, embeddings=True))
        assert {row["bits"] for row in report["layers"]} <= {None, *bits}
        assert report["after"]["size_mb"] <= budget * before / 1e6
        export_run(tmp_path / name, tmp_path / f"{name}-bundle",
                   ExportOptions(target="cpu", **FAST_EXPORT))
        for graph in ("prefill", "decode", "decode_int8"):
            assert graph_weight_bytes(tmp_path / f"{name}-bundle" / f"{graph}.onnx") \
                <= report["limits"]["size_mb"] * 1e6
        # the int8 graphs (validated against the float ones by the export) run the weight-only
        # layers on int8 activations; the float graphs keep the exact kernel
        for graph, level in (("decode", None), ("decode_int8", 4)):
            nodes = [n for n in onnx.load(tmp_path / f"{name}-bundle" / f"{graph}.onnx")
                     .graph.node if n.op_type == "MatMulNBits"]
            assert nodes and all(
                {a.name: a.i for a in n.attribute}.get("accuracy_level") == level for n in nodes)
    # below what int4 alone reaches, ranks are cut too
    assert any(row["rank"] is not None for row in report["layers"])


def test_healing_keeps_the_layers_quantised(tmp_path, monkeypatch):
    monkeypatch.setenv("QTF_EDGE_CACHE", str(tmp_path / "cache"))
    source = make_run(tmp_path / "dense", dense=True)
    report = compress_run(source, tmp_path / "healed", CompressOptions(
        budget="size_mb=0.3x", target=PROFILE, bits=(8,), heal_steps=10, eval_tokens=512,
        calib_tokens=1024, heal_lr=(1e-3,), distill_alpha=1.0))
    healed = load_run(tmp_path / "healed").model
    assert set(quantized_layers(healed)) == set(healed.config.weight_bits) != set()
    assert weight_bytes(healed) / 1e6 == pytest.approx(report["after"]["size_mb"])
    assert "healed" in report["perplexity"]  # learning the input's logits only, it is kept


def test_bad_bits_input_is_one_line(tmp_path):
    source = make_run(tmp_path / "dense", dense=True)
    for flags, words in ((("--bits", "3"), ["--bits"]),
                         (("--bits", "4", "--block", "24"), ["--block 24", "power of two"]),
                         (("--bits", "4", "--budget", "size_mb=0.01x"),
                          ["cannot be met", "MB of weights"])):
        budget = () if "--budget" in flags else ("--budget", "size_mb=0.5x")
        assert_one_line_error(invoke("compress", source, "--out", tmp_path / "o", *budget,
                                     *flags), *words)
        assert not (tmp_path / "o").exists()
    _, int4 = quantized_model(4)
    run = save_run(tmp_path / "int4", int4, (source / "tokenizer.json").read_bytes(),
                   command="tests: int4 model")
    assert_one_line_error(invoke("export", run, "--target", "edgetpu", "--out",
                                 tmp_path / "b"), "ai-edge-litert", "MatMulNBits", "--bits 8")
    assert not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="weight_bits"):
        dataclasses.replace(tiny_config(dense=True), weight_bits={"head": 3})
    with pytest.raises(ValueError, match="weight_block"):
        dataclasses.replace(tiny_config(dense=True), weight_block=24)
    with pytest.raises(ValueError, match="'blocks.9.ffn.up'.*not a quantisable layer"):
        QTensorFormer(dataclasses.replace(tiny_config(dense=True),
                                          weight_bits={"blocks.9.ffn.up": 4}))
