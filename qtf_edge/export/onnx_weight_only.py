"""Weight-only int4/int8 layers in an exported ONNX graph: ONNX Runtime's MatMulNBits and
GatherBlockQuantized (com.microsoft), which compute from the packed codes directly.

The graph is traced from the model with its rounded weights in float (quant.layers'
dequantized_copy); each quantised layer's float initializer is found by value and
replaced:

    MatMul(x, W^T)                -> MatMulNBits(x, codes, scales)
    Gather(table, ids)            -> GatherBlockQuantized(Reshape(codes), ids, scales)
    MatMul(x, Transpose(table))   -> MatMulNBits(x, codes, scales)   (a tied LM head)
    MatMul(x, table^T)            -> MatMulNBits(x, codes, scales)   (the same, transpose folded)

A tied table is stored once: the embedding's GatherBlockQuantized reads the head's
MatMulNBits codes through a Reshape (MatMulNBits wants them as (N, blocks, block bytes),
GatherBlockQuantized as (N, K bytes)). onnxruntime's MatMulNBitsQuantizer cannot do this
(it quantises each node's own constant, misses a head whose weight comes through a
Transpose, and stores a tied table twice), so the nodes are written here; the packing
itself is its own kernel (quantize_matmul_4bits / _8bits), which rounds exactly as
quant/blockwise.py does, so the codes are those the torch model computed with.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits
from torch import nn

from qtf_edge.quant.layers import quantized_layers

DOMAIN = "com.microsoft"
_PACK = {4: quantize_matmul_4bits, 8: quantize_matmul_8bits}


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(str(array.shape).encode() + np.ascontiguousarray(array).tobytes()
                          ).hexdigest()


def pack(weight: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes (N, blocks, block * bits / 8) uint8, scales (N, blocks) float32) of a (N, K)
    float32 weight, by ONNX Runtime's own symmetric block quantiser."""
    rows, cols = weight.shape
    n_blocks = -(-cols // block)
    codes = np.zeros((rows, n_blocks, block * bits // 8), dtype=np.uint8)
    scales = np.zeros((rows, n_blocks), dtype=np.float32)
    zero_points = np.zeros((rows, -(-n_blocks * bits // 8)), dtype=np.uint8)  # unused
    _PACK[bits](codes, np.ascontiguousarray(weight.T, dtype=np.float32), scales, zero_points,
                block, rows, cols, True)
    return codes, scales


def lower_weight_only(graph: onnx.ModelProto, model: nn.Module) -> list[dict]:
    """Rewrite `graph` (traced from dequantized_copy(model)) in place so that every
    quantised layer of `model` runs from its codes; returns one row per layer (layer,
    bits, block, nodes rewritten, bytes). ValueError if a layer's weight is not in the
    graph or is used by an op that cannot read it quantised."""
    inits = {init.name: init for init in graph.graph.initializer}
    by_value = {_digest(numpy_helper.to_array(init)): name for name, init in inits.items()}
    rows = []
    for name, layer in quantized_layers(model).items():
        weight = layer.quant.dequantize(layer.weight.detach().cpu()).numpy()
        is_table = isinstance(layer, nn.Embedding)
        source = by_value.get(_digest(weight if is_table else weight.T))
        if source is None:
            raise ValueError(f"export: the int{layer.quant.bits} weight of layer {name} is "
                             f"not among the graph's constants")
        codes, scales = pack(weight, layer.quant.bits, layer.quant.block)
        quantized = _QuantizedWeight(graph, name, layer.quant, weight.shape, codes, scales)
        nodes = quantized.replace_uses(source)
        graph.graph.initializer.remove(inits[source])
        # A tied head's x @ table^T, where the exporter folded the transpose into a constant
        folded = by_value.get(_digest(weight.T)) if is_table else None
        if folded is not None:
            nodes += quantized.replace_uses(folded)
            graph.graph.initializer.remove(inits[folded])
        rows.append({"layer": name, "bits": layer.quant.bits, "block": layer.quant.block,
                     "nodes": nodes, "bytes": codes.nbytes + scales.nbytes})
    if rows and not any(o.domain == DOMAIN for o in graph.opset_import):
        graph.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return rows


class _QuantizedWeight:
    """One layer's codes and scales in the graph, and the nodes that read them."""

    def __init__(self, graph: onnx.ModelProto, layer: str, quant, shape: tuple[int, int],
                 codes: np.ndarray, scales: np.ndarray):
        self.graph, self.layer, self.quant = graph, layer, quant
        self.out_features, self.in_features = shape
        self.codes, self.scales = f"{layer}.weight_q{quant.bits}", f"{layer}.weight_scales"
        graph.graph.initializer.extend([numpy_helper.from_array(codes, self.codes),
                                        numpy_helper.from_array(scales, self.scales)])

    def replace_uses(self, source: str) -> int:
        """Replace every node reading the float constant `source`; returns how many."""
        count = 0
        for node in _consumers(self.graph, source):
            if node.op_type == "MatMul" and node.input[1] == source:
                self._matmul(node)
            elif node.op_type == "Gather" and node.input[0] == source \
                    and _attribute(node, "axis", 0) == 0:
                self._gather(node)
            elif node.op_type == "Transpose" and list(_attribute(node, "perm", [])) == [1, 0]:
                users = _consumers(self.graph, node.output[0])
                wrong = [u for u in users
                         if u.op_type != "MatMul" or u.input[1] != node.output[0]]
                if wrong:
                    self._refuse(wrong[0])
                for user in users:
                    self._matmul(user)
                self.graph.graph.node.remove(node)
                count += len(users) - 1
            else:
                self._refuse(node)
            count += 1
        return count

    def _refuse(self, node: onnx.NodeProto):
        raise ValueError(f"export: the int{self.quant.bits} weight of layer {self.layer} is "
                         f"used by {node.op_type} ({node.name}), which cannot read it "
                         f"quantised")

    def _matmul(self, node: onnx.NodeProto) -> None:
        _swap(self.graph, node, helper.make_node(
            "MatMulNBits", [node.input[0], self.codes, self.scales], node.output,
            name=node.name, domain=DOMAIN, N=self.out_features, K=self.in_features,
            bits=self.quant.bits,
            block_size=self.quant.block))

    def _gather(self, node: onnx.NodeProto) -> None:
        rows = f"{self.codes}_rows"
        if rows not in {out for n in self.graph.graph.node for out in n.output}:
            self.graph.graph.initializer.append(numpy_helper.from_array(
                np.array([self.out_features, -1], dtype=np.int64), f"{rows}_shape"))
            self.graph.graph.node.insert(0, helper.make_node(
                "Reshape", [self.codes, f"{rows}_shape"], [rows],
                name=f"{self.layer}/codes_as_rows"))
        _swap(self.graph, node, helper.make_node(
            "GatherBlockQuantized", [rows, node.input[1], self.scales], node.output,
            name=node.name, domain=DOMAIN, bits=self.quant.bits, block_size=self.quant.block,
            gather_axis=0, quantize_axis=1))


def _attribute(node: onnx.NodeProto, name: str, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name),
                default)


def _consumers(graph: onnx.ModelProto, value: str) -> list[onnx.NodeProto]:
    return [node for node in graph.graph.node if value in node.input]


def _swap(graph: onnx.ModelProto, old: onnx.NodeProto, new: onnx.NodeProto) -> None:
    nodes = graph.graph.node
    index = list(nodes).index(old)
    nodes.remove(old)
    nodes.insert(index, new)
