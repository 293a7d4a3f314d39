"""Export target recipes: load and validate `export/*.yaml`.

A recipe says, for one kind of device, what the export produces and how: the hardware
profile used for cost estimates, the artifact formats (onnx, onnx_int8, tflite,
tflite_int8), the ONNX opset, how each int8 format is quantised, the default number of
intra-op threads on the device, the on-device runtime, the operators the target runs, its
constraints (static shapes, int8-only tensors), the ordered export passes, the validation
thresholds a bundle must meet, and (Edge TPU) the compiler command.

Adding a target needs no code: drop a YAML file into the `export/` folder (it becomes a
known target named after its file stem) or pass the file's path to :func:`load_recipe`.
Every refusal is a :class:`RecipeError` (a ``ValueError``) with a one-line message naming
the file and the field, like :mod:`qtf_edge.cost.profiles`.
"""

from __future__ import annotations

import math
import shlex
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any


from qtf_edge.cost.profiles import (
    HardwareProfile,
    ProfileError,
    list_profiles,
    load_profile,
)
from qtf_edge.resources import (
    check_top_level,
    data_dir,
    named_yaml,
    read_yaml,
    shipped_names,
)

__all__ = [
    "CONSTRAINT_KEYS",
    "FORMATS",
    "MIN_OPSET",
    "PASSES",
    "QUANTIZATION_MODES",
    "RUNTIMES",
    "Constraints",
    "Quantization",
    "Recipe",
    "RecipeError",
    "Validation",
    "known_targets",
    "load_recipe",
]

# Artifact formats an export can produce; the int8 ones need a `quantization:` entry.
FORMATS = ("onnx", "onnx_int8", "tflite", "tflite_int8")
INT8_FORMATS = ("onnx_int8", "tflite_int8")
ONNX_FORMATS = ("onnx", "onnx_int8")
TFLITE_FORMATS = ("tflite", "tflite_int8")

# Export passes in the only order they may run (a recipe lists a subsequence of this).
PASSES = ("deploy_form", "lower_tt", "onnx", "onnx_int8", "tflite", "tflite_int8", "validate",
          "edgetpu_check", "bundle")

# format -> accepted quantisation modes. onnx_int8: onnxruntime.quantization's
# quantize_dynamic (weights int8, activations quantised at run time) or quantize_static
# (calibrated activations). tflite_int8: the TFLite converter's dynamic-range quantisation
# (int8 weights, float activations) or full-integer quantisation (every tensor int8,
# calibrated on a representative dataset: what the Edge TPU requires).
QUANTIZATION_MODES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "onnx_int8": ("dynamic", "static"),
    "tflite_int8": ("dynamic_range", "full_integer"),
})
_CALIBRATED_MODES = ("static", "full_integer")  # these need a representative dataset
_QUANT_KEYS = ("mode", "representative_dataset", "representative_samples", "per_channel",
               "float_output", "float_modules")

RUNTIMES = ("onnxruntime", "ai-edge-litert", "tflite-runtime")
_RUNTIME_FORMATS = {"onnxruntime": ONNX_FORMATS, "ai-edge-litert": TFLITE_FORMATS,
                    "tflite-runtime": TFLITE_FORMATS}

# The dynamo ONNX exporter (torch.onnx.export(dynamo=True)) emits opset 18 or newer.
MIN_OPSET = 18

CONSTRAINT_KEYS = ("static_shapes", "int8_tensors", "max_nontrivial_dims")
_VALIDATION_KEYS = ("float_top1_agreement", "int8_perplexity_ratio")

_REQUIRED = ("description", "profile", "formats", "opset", "threads", "runtime",
             "accepted_ops", "passes", "validation")
_OPTIONAL = ("alternate_profiles", "quantization", "constraints", "compiler_command")
# Placeholders a compiler_command must use (and the only ones it may use).
_COMPILER_FIELDS = ("model", "out_dir")


class RecipeError(ValueError):
    """An export recipe is unknown, unreadable or invalid (message names file and field)."""


@dataclass(frozen=True)
class Quantization:
    """How one int8 format is quantised.

    mode: one of QUANTIZATION_MODES[format].
    representative_dataset: calibration text for calibrated modes (static, full_integer):
        "valid" or "train" (that split of the run's corpus) or a path to a text file.
    representative_samples: how many calibration sequences (calibrated modes only).
    per_channel: per-output-channel weight scales (None: the quantiser's default).
    float_output: (full_integer) keep the op writing the graph output, the vocabulary
        projection, in float so the logits are not rounded to 256 levels.
    float_modules: (full_integer) model classes whose own ops (not their sub-layers') stay
        float, e.g. attention between the batched products a target runs on its CPU.
    """

    mode: str
    representative_dataset: str | None = None
    representative_samples: int | None = None
    per_channel: bool | None = None
    float_output: bool = False
    float_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class Constraints:
    """What the target's compiler/runtime demands of a graph.

    static_shapes: every tensor shape fixed at export time (no symbolic dims).
    int8_tensors: every tensor, activations included, is int8 (full-integer quantisation).
    max_nontrivial_dims: at most this many dimensions of any tensor may exceed 1 (None: no
        limit).
    """

    static_shapes: bool = False
    int8_tensors: bool = False
    max_nontrivial_dims: int | None = None


@dataclass(frozen=True)
class Validation:
    """Thresholds the validate pass applies before a bundle is written.

    float_top1_agreement: fraction of positions where the exported float graph's argmax
        token equals the PyTorch model's (in (0, 1]).
    int8_perplexity_ratio: int8 perplexity / float perplexity must not exceed this (>= 1).
    """

    float_top1_agreement: float
    int8_perplexity_ratio: float


@dataclass(frozen=True)
class Recipe:
    """A validated export recipe.

    name: the target name (the file stem).
    path: the YAML file it was read from.
    profile: the hardware profile name (or the path as written); profile_path: its file.
    alternate_profiles: other profiles the same recipe suits (e.g. rpi5 for rpi).
    formats: artifact formats, in the order written.
    quantization: format -> Quantization, for exactly the int8 formats in `formats`.
    threads: default intra-op threads on the device.
    runtime: preferred on-device runtime (one of RUNTIMES).
    accepted_ops: operator types the target runs (ONNX op types; `domain:Op` for ops outside
        the default domain; for TFLite targets, TFLite operator names).
    passes: export passes in run order (a subsequence of PASSES).
    compiler_command: a command template with {model} and {out_dir}, or None.
    """

    name: str
    path: Path
    description: str
    profile: str
    profile_path: Path
    alternate_profiles: tuple[str, ...]
    formats: tuple[str, ...]
    opset: int
    quantization: Mapping[str, Quantization] = field(hash=False)
    threads: int
    runtime: str
    accepted_ops: tuple[str, ...]
    constraints: Constraints
    passes: tuple[str, ...]
    validation: Validation
    compiler_command: str | None

    def load_profile(self) -> HardwareProfile:
        """The recipe's hardware profile (for cost estimates)."""
        return load_profile(self.profile_path)

    def compiler_argv(self, model: str | Path, out_dir: str | Path) -> list[str]:
        """compiler_command split into arguments with {model} and {out_dir} filled in.

        RecipeError if the recipe has no compiler command.
        """
        if self.compiler_command is None:
            raise RecipeError(f"{self.path}: compiler_command is not set for target {self.name!r}")
        return [part.format(model=str(model), out_dir=str(out_dir))
                for part in shlex.split(self.compiler_command)]


# ---------------------------------------------------------------------------- loading

def known_targets() -> list[str]:
    """Names of the shipped export targets (the stems of `export/*.yaml`), sorted."""
    return shipped_names("export")


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load a shipped recipe by target name (``"rpi"``) or any recipe YAML by path.

    A string is taken as a path when it ends in ``.yaml``/``.yml`` or contains a path
    separator; otherwise it must be one of :func:`known_targets`.
    """
    path = named_yaml(name_or_path, "export", RecipeError, "export target", "targets",
                      hint=" (or pass the path of a recipe YAML)")
    return _parse(read_yaml(path, RecipeError, "; expected an export recipe YAML"), path)


# ---------------------------------------------------------------------------- validation

def _fail(path: Path, field_name: str, msg: str) -> RecipeError:
    return RecipeError(" ".join(f"{path}: {field_name} {msg}".split()))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _nonempty_str(data: dict, key: str, path: Path) -> str:
    value = data[key]
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, key, f"must be a non-empty string, got {value!r}")
    return value


def _str_list(raw: Any, path: Path, key: str, allowed: tuple[str, ...] | None = None,
              allow_empty: bool = False) -> tuple[str, ...]:
    if not isinstance(raw, list) or (not raw and not allow_empty):
        raise _fail(path, key, f"must be a {'' if allow_empty else 'non-empty '}list of "
                               f"strings, got {raw!r}")
    seen: list[str] = []
    for i, item in enumerate(raw):
        if not isinstance(item, str) or not item.strip():
            raise _fail(path, f"{key}[{i}]", f"must be a non-empty string, got {item!r}")
        if allowed is not None and item not in allowed:
            raise _fail(path, f"{key}[{i}]", f"{item!r} is not known (expected one of: "
                                             f"{', '.join(allowed)})")
        if item in seen:
            raise _fail(path, f"{key}[{i}]", f"{item!r} is listed twice")
        seen.append(item)
    return tuple(seen)


def _profile_file(raw: Any, path: Path, key: str) -> Path:
    """A profile given by shipped name, or by a path (relative to the recipe's folder)."""
    if not isinstance(raw, str) or not raw.strip():
        raise _fail(path, key, f"must be a hardware profile name or a profile YAML path, "
                               f"got {raw!r}")
    if raw.endswith((".yaml", ".yml")) or "/" in raw or "\\" in raw:
        candidate = Path(raw)
        if not candidate.is_absolute():
            candidate = path.parent / candidate
        if not candidate.is_file():
            raise _fail(path, key, f"names the profile file {candidate}, which does not exist")
        return candidate
    known = list_profiles()
    if raw not in known:
        raise _fail(path, key, f"{raw!r} is not a known hardware profile (expected one of: "
                               f"{', '.join(known)}, or a path to a profile YAML)")
    return data_dir("profiles") / f"{raw}.yaml"


def _check_profile(profile_path: Path, path: Path, key: str) -> None:
    try:
        load_profile(profile_path)
    except ProfileError as exc:
        raise _fail(path, key, f"names an invalid hardware profile ({exc})") from None


def _parse_quantization(raw: Any, formats: tuple[str, ...], path: Path
                        ) -> dict[str, Quantization]:
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise _fail(path, "quantization", f"must be a mapping of int8 format to mode, got {raw!r}")
    for key in raw:
        if key not in INT8_FORMATS:
            raise _fail(path, f"quantization.{key}", f"is not an int8 format (expected one of: "
                                                     f"{', '.join(INT8_FORMATS)})")
        if key not in formats:
            raise _fail(path, f"quantization.{key}", f"is given but {key} is not in formats")
    out: dict[str, Quantization] = {}
    for fmt in formats:
        if fmt not in INT8_FORMATS:
            continue
        key = f"quantization.{fmt}"
        if fmt not in raw:
            raise _fail(path, key, f"is missing (formats lists {fmt}; expected one of: "
                                   f"{', '.join(QUANTIZATION_MODES[fmt])})")
        entry = raw[fmt]
        shorthand = isinstance(entry, str)  # `onnx_int8: dynamic` means {mode: dynamic}
        if shorthand:
            entry = {"mode": entry}
        if not isinstance(entry, dict):
            raise _fail(path, key, f"must be a mode string or a mapping with mode, got {entry!r}")
        extra = sorted(set(entry) - set(_QUANT_KEYS), key=str)
        if extra:
            raise _fail(path, f"{key}.{extra[0]}", f"is not a known field (expected: "
                                                   f"{', '.join(_QUANT_KEYS)})")
        mode = entry.get("mode")
        if mode not in QUANTIZATION_MODES[fmt]:
            raise _fail(path, key if shorthand or "mode" not in entry else f"{key}.mode",
                        f"must be one of {', '.join(QUANTIZATION_MODES[fmt])}, got {mode!r}")
        dataset = entry.get("representative_dataset")
        samples = entry.get("representative_samples")
        per_channel = entry.get("per_channel")
        if mode in _CALIBRATED_MODES:
            if not isinstance(dataset, str) or not dataset.strip():
                raise _fail(path, f"{key}.representative_dataset",
                            f"must be a non-empty string (valid, train or a text file path) "
                            f"for mode {mode}, got {dataset!r}")
            if samples is not None and (not _is_int(samples) or samples < 1):
                raise _fail(path, f"{key}.representative_samples",
                            f"must be a positive integer, got {samples!r}")
        else:
            for name, value in (("representative_dataset", dataset),
                                ("representative_samples", samples)):
                if value is not None:
                    raise _fail(path, f"{key}.{name}", f"is only used by calibrated modes "
                                                       f"({', '.join(_CALIBRATED_MODES)}), not "
                                                       f"{mode}")
        if per_channel is not None and not isinstance(per_channel, bool):
            raise _fail(path, f"{key}.per_channel", f"must be true or false, got {per_channel!r}")
        float_output = entry.get("float_output", False)
        if not isinstance(float_output, bool):
            raise _fail(path, f"{key}.float_output", f"must be true or false, got "
                                                     f"{float_output!r}")
        if float_output and mode != "full_integer":
            raise _fail(path, f"{key}.float_output", f"only applies to mode full_integer, "
                                                     f"not {mode}")
        float_modules = _str_list(entry.get("float_modules") or [], path,
                                  f"{key}.float_modules", allow_empty=True)
        bad = next((name for name in float_modules if not name.isidentifier()), None)
        if bad is not None:
            raise _fail(path, f"{key}.float_modules", f"must list Python class names, got "
                                                      f"{bad!r}")
        if float_modules and mode != "full_integer":
            raise _fail(path, f"{key}.float_modules", f"only applies to mode full_integer, "
                                                      f"not {mode}")
        out[fmt] = Quantization(mode=mode, representative_dataset=dataset,
                                representative_samples=samples, per_channel=per_channel,
                                float_output=float_output, float_modules=float_modules)
    return out


def _parse_constraints(raw: Any, path: Path) -> Constraints:
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise _fail(path, "constraints", f"must be a mapping, got {raw!r}")
    extra = sorted(set(raw) - set(CONSTRAINT_KEYS), key=str)
    if extra:
        raise _fail(path, f"constraints.{extra[0]}", f"is not a known constraint (expected: "
                                                     f"{', '.join(CONSTRAINT_KEYS)})")
    for key in ("static_shapes", "int8_tensors"):
        if key in raw and not isinstance(raw[key], bool):
            raise _fail(path, f"constraints.{key}", f"must be true or false, got {raw[key]!r}")
    dims = raw.get("max_nontrivial_dims")
    if dims is not None and (not _is_int(dims) or dims < 1):
        raise _fail(path, "constraints.max_nontrivial_dims",
                    f"must be a positive integer or null, got {dims!r}")
    return Constraints(static_shapes=raw.get("static_shapes", False),
                       int8_tensors=raw.get("int8_tensors", False), max_nontrivial_dims=dims)


def _parse_validation(raw: Any, path: Path) -> Validation:
    if not isinstance(raw, dict):
        raise _fail(path, "validation", f"must be a mapping with "
                                        f"{', '.join(_VALIDATION_KEYS)}, got {raw!r}")
    for key in _VALIDATION_KEYS:
        if key not in raw:
            raise _fail(path, f"validation.{key}", "is missing")
    extra = sorted(set(raw) - set(_VALIDATION_KEYS), key=str)
    if extra:
        raise _fail(path, f"validation.{extra[0]}", f"is not a known threshold (expected: "
                                                    f"{', '.join(_VALIDATION_KEYS)})")
    values = {}
    for key in _VALIDATION_KEYS:
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise _fail(path, f"validation.{key}", f"must be a number, got {value!r}")
        values[key] = float(value)
    if not 0.0 < values["float_top1_agreement"] <= 1.0:
        raise _fail(path, "validation.float_top1_agreement",
                    f"must be in (0, 1], got {raw['float_top1_agreement']!r}")
    if values["int8_perplexity_ratio"] < 1.0:
        raise _fail(path, "validation.int8_perplexity_ratio",
                    f"must be >= 1 (int8 perplexity / float perplexity), got "
                    f"{raw['int8_perplexity_ratio']!r}")
    return Validation(**values)


def _parse_passes(raw: Any, formats: tuple[str, ...], path: Path) -> tuple[str, ...]:
    passes = _str_list(raw, path, "passes", PASSES)
    order = [PASSES.index(p) for p in passes]
    for i in range(1, len(order)):
        if order[i] < order[i - 1]:
            raise _fail(path, f"passes[{i}]", f"{passes[i]!r} comes after {passes[i - 1]!r}; "
                                              f"passes run in the order {', '.join(PASSES)}")
    for fmt in FORMATS:  # each format is produced by the pass of the same name
        if fmt in formats and fmt not in passes:
            raise _fail(path, "passes", f"lacks {fmt!r}, which formats lists")
        if fmt in passes and fmt not in formats:
            raise _fail(path, "passes", f"runs {fmt!r}, which formats does not list")
    if passes[-1] != "bundle":
        raise _fail(path, "passes", f"must end with 'bundle', got {passes[-1]!r}")
    if "edgetpu_check" in passes and "tflite_int8" not in passes:
        raise _fail(path, "passes", "runs 'edgetpu_check', which needs 'tflite_int8'")
    return passes


def _parse_compiler_command(raw: Any, passes: tuple[str, ...], path: Path) -> str | None:
    if raw is None:
        if "edgetpu_check" in passes:
            raise _fail(path, "compiler_command", "is missing (the edgetpu_check pass runs it); "
                                                  "expected e.g. 'edgetpu_compiler -s -o "
                                                  "{out_dir} {model}'")
        return None
    if not isinstance(raw, str) or not raw.strip():
        raise _fail(path, "compiler_command", f"must be a non-empty string, got {raw!r}")
    try:
        parts = shlex.split(raw)
        names = {name for part in parts
                 for _, name, _, _ in string.Formatter().parse(part) if name is not None}
    except ValueError as exc:
        raise _fail(path, "compiler_command", f"cannot be parsed ({exc})") from None
    unknown = sorted(names - set(_COMPILER_FIELDS))
    if unknown:
        raise _fail(path, "compiler_command", f"uses the unknown placeholder {{{unknown[0]}}} "
                                              f"(expected only {{model}} and {{out_dir}})")
    missing = [n for n in _COMPILER_FIELDS if n not in names]
    if missing:
        raise _fail(path, "compiler_command", f"lacks the placeholder {{{missing[0]}}} "
                                              f"(expected {{model}} and {{out_dir}})")
    return " ".join(raw.split())


def _parse(data: Any, path: Path) -> Recipe:
    check_top_level(data, path, _REQUIRED, _OPTIONAL, _fail, name_expected=True)
    description = " ".join(_nonempty_str(data, "description", path).split())

    profile_path = _profile_file(data["profile"], path, "profile")
    _check_profile(profile_path, path, "profile")
    alternates = _str_list(data.get("alternate_profiles") or [], path, "alternate_profiles",
                           allow_empty=True)
    for i, alt in enumerate(alternates):
        _check_profile(_profile_file(alt, path, f"alternate_profiles[{i}]"), path,
                       f"alternate_profiles[{i}]")

    formats = _str_list(data["formats"], path, "formats", FORMATS)
    opset = data["opset"]
    if not _is_int(opset) or opset < MIN_OPSET:
        raise _fail(path, "opset", f"must be an integer ONNX opset >= {MIN_OPSET}, got {opset!r}")
    try:
        import onnx  # the newest opset this onnx knows
        newest = onnx.defs.onnx_opset_version()
    except ImportError:  # pragma: no cover - onnx is a dependency
        newest = None
    if newest is not None and opset > newest:
        raise _fail(path, "opset", f"{opset} is newer than the installed onnx supports "
                                   f"({newest})")

    quantization = _parse_quantization(data.get("quantization"), formats, path)

    threads = data["threads"]
    if not _is_int(threads) or threads < 1:
        raise _fail(path, "threads", f"must be a positive integer (intra-op threads), "
                                     f"got {threads!r}")
    runtime = data["runtime"]
    if runtime not in RUNTIMES:
        raise _fail(path, "runtime", f"must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if not any(f in formats for f in _RUNTIME_FORMATS[runtime]):
        raise _fail(path, "runtime", f"{runtime} runs {' or '.join(_RUNTIME_FORMATS[runtime])}, "
                                     f"but formats lists only {', '.join(formats)}")

    accepted_ops = _str_list(data["accepted_ops"], path, "accepted_ops")
    constraints = _parse_constraints(data.get("constraints"), path)
    if constraints.int8_tensors and not any(f in formats for f in INT8_FORMATS):
        raise _fail(path, "constraints.int8_tensors", "is true but formats lists no int8 format")
    passes = _parse_passes(data["passes"], formats, path)
    validation = _parse_validation(data["validation"], path)
    compiler_command = _parse_compiler_command(data.get("compiler_command"), passes, path)

    return Recipe(
        name=path.stem,
        path=path,
        description=description,
        profile=data["profile"],
        profile_path=profile_path,
        alternate_profiles=alternates,
        formats=formats,
        opset=opset,
        quantization=MappingProxyType(quantization),
        threads=threads,
        runtime=runtime,
        accepted_ops=accepted_ops,
        constraints=constraints,
        passes=passes,
        validation=validation,
        compiler_command=compiler_command,
    )
