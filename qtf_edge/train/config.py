"""TrainConfig: how to train (steps, optimiser, schedule, evaluation, checkpoints),
validated on construction; and the --config file that overrides a preset.

A config file is YAML or JSON (JSON is YAML) with at most two sections:

    model:            # ModelConfig fields (vocab_size excepted: it is train.vocab_size)
      d_model: 96
    train:            # TrainConfig fields
      steps: 2000
      learning_rate: 1.0e-3
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from qtf_edge.config import ModelConfig, build_from_dict
from qtf_edge.data.tokenizer import MIN_VOCAB_SIZE

DEVICES = ("auto", "cpu", "cuda")
MAX_SEED = 2**63 - 1  # numpy's SeedSequence and torch.manual_seed both take it


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16
    learning_rate: float = 1e-3      # peak, reached at the end of warm-up
    min_lr: float = 1e-4             # the cosine decay's floor, reached at the last step
    warmup_steps: int = 100
    weight_decay: float = 0.1        # decoupled (AdamW), on weight matrices only
    grad_clip: float = 1.0           # max global gradient norm; 0 turns clipping off
    eval_every: int = 100
    eval_tokens: int = 16384         # validation tokens per evaluation; 0: the whole corpus
    checkpoint_every: int = 500
    seed: int = 0
    device: str = "auto"
    vocab_size: int = 8192           # requested tokenizer size, and the model's vocab_size
    max_bad_steps: int = 5           # non-finite steps in a row before reloading a checkpoint
    target: str = "cpu_xeon"         # hardware profile for the estimated latency/energy
    budget: str = ""                 # e.g. "params=800k,energy_uj=60" (train.budget); "": none
    # With a teacher (train --teacher, compress healing): the weight of the soft term and
    # its temperature (train/distillation.py). alpha 0 is plain next-token training.
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        return build_from_dict(cls, values, "train config")


def _fail(field: str, allowed: str, value) -> ValueError:
    return ValueError(f"train config field '{field}' must be {allowed}, got {value!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _validate(c: TrainConfig) -> None:
    from qtf_edge.cost import list_profiles  # local: reads the profiles folder

    def int_at_least(name, low, high=None):
        value = getattr(c, name)
        if not (_is_int(value) and value >= low and (high is None or value <= high)):
            raise _fail(name, f"an integer in [{low}, {high}]" if high is not None
                        else f"an integer >= {low}", value)

    for name in ("steps", "batch_size", "eval_every", "checkpoint_every", "max_bad_steps"):
        int_at_least(name, 1)
    # warmup_steps may exceed steps (a short trial run of a preset): the rate then only climbs.
    int_at_least("warmup_steps", 0)
    int_at_least("eval_tokens", 0)
    int_at_least("seed", 0, MAX_SEED)
    int_at_least("vocab_size", MIN_VOCAB_SIZE)
    if not (_is_number(c.learning_rate) and 0 < c.learning_rate <= 1):
        raise _fail("learning_rate", "a number in (0, 1]", c.learning_rate)
    if not (_is_number(c.min_lr) and 0 <= c.min_lr <= c.learning_rate):
        raise _fail("min_lr", f"a number in [0, learning_rate={c.learning_rate}]", c.min_lr)
    for name in ("weight_decay", "grad_clip"):
        value = getattr(c, name)
        if not (_is_number(value) and 0 <= value < float("inf")):
            raise _fail(name, "a finite number >= 0", value)
    if not (_is_number(c.distill_alpha) and 0 <= c.distill_alpha <= 1):
        raise _fail("distill_alpha", "a number in [0, 1]", c.distill_alpha)
    if not (_is_number(c.distill_temperature) and 0 < c.distill_temperature < float("inf")):
        raise _fail("distill_temperature", "a finite number > 0", c.distill_temperature)
    if c.device not in DEVICES:
        raise _fail("device", f"one of {', '.join(DEVICES)}", c.device)
    if not isinstance(c.budget, str):
        raise _fail("budget", "a string such as 'params=800k,latency_ms=5'", c.budget)
    if c.budget:
        from qtf_edge.train.budget import parse_budget
        parse_budget(c.budget)
    if c.target not in list_profiles():
        raise _fail("target", f"a hardware profile, one of {', '.join(list_profiles())}",
                    c.target)


# ---------------------------------------------------------------------------- --config

SECTIONS = {"model": ModelConfig, "train": TrainConfig}


def read_config_file(path: str | os.PathLike) -> tuple[dict, dict]:
    """(model overrides, train overrides) from a YAML or JSON file.

    ValueError naming the file for anything that is not a mapping of known sections to
    mappings of known fields. Values are checked later, when the configs are built.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: file not found; expected a YAML or JSON "
                                f"file with 'model:' and/or 'train:' sections")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        reason = " ".join(str(e).split())
        raise ValueError(f"--config {path}: not valid YAML or JSON ({reason})") from None
    doc = {} if doc is None else doc
    if not isinstance(doc, dict):
        raise ValueError(f"--config {path}: expected a mapping with 'model:' and/or 'train:' "
                         f"sections, got {type(doc).__name__}")
    unknown = sorted(str(k) for k in set(doc) - set(SECTIONS))
    if unknown:
        raise ValueError(f"--config {path}: unknown key(s) {unknown}; expected sections "
                         f"{sorted(SECTIONS)}")
    sections = {}
    for name, cls in SECTIONS.items():
        section = doc.get(name) or {}
        if not isinstance(section, dict):
            raise ValueError(f"--config {path}: '{name}' must be a mapping of fields, got "
                             f"{type(section).__name__}")
        known = {f.name for f in fields(cls)} - ({"vocab_size"} if name == "model" else set())
        unknown = sorted(str(k) for k in set(section) - known)
        if unknown:
            hint = ("; the model's vocab_size is train.vocab_size"
                    if "vocab_size" in unknown and name == "model" else "")
            raise ValueError(f"--config {path}: unknown {name} key(s) "
                             f"{[f'{name}.{k}' for k in unknown]}{hint}; known: {sorted(known)}")
        sections[name] = {k: _yaml_number(cls, k, v) for k, v in section.items()}
    return sections["model"], sections["train"]


def _yaml_number(cls, name: str, value):
    """YAML 1.1 (PyYAML) reads `1e-3` as a string (it wants `1.0e-3`); take such a string
    as the number it obviously is for a float field, rather than fail on a spelling."""
    types = {f.name: f.type for f in fields(cls)}
    if types.get(name) in ("float", float) and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value  # left for the config's own check, which names the field
    return value
