"""Everything a training session needs, checked before anything is written.

`prepare_session` resolves the configs (preset < --config file < flags), reads the
corpora, trains or loads the tokenizer, encodes the text (into the shared token cache),
builds or loads the model and optimizer, and checks the output folder. Any bad input
raises a one-line ValueError / FileNotFoundError / RunError naming the flag or file,
and no run folder has been touched: the loop creates it with its first checkpoint.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from qtf_edge.config import DENSE_SWITCHES, ModelConfig
from qtf_edge.cost import EnergyEstimator, estimate_model_energy
from qtf_edge.cost.counts import count_params
from qtf_edge.data import (
    corpus_sha256,
    default_corpus,
    encode_corpus,
    end_of_text_id,
    load_tokenizer,
    read_corpus,
    tokenizer_sha256,
    train_tokenizer,
)
from qtf_edge.model import QTensorFormer
from qtf_edge.presets import check_arch, preset
from qtf_edge.runs import PREVIOUS_SUFFIX, TRAIN_STATE_FILE, Run, RunError, load_run
from qtf_edge.train.budget import Budget, check_feasible, measure, parse_budget
from qtf_edge.train.config import TrainConfig, read_config_file
from qtf_edge.train.distillation import load_teacher
from qtf_edge.train.distributed import Ranks
from qtf_edge.train.optimizer import make_optimizer
from qtf_edge.train.state import TrainState, apply_train_state, read_train_state
from qtf_edge.train.validation import ValidationSet, validation_set

DEFAULT_PRESET, DEFAULT_ARCH = "tiny", "qtf"
# Train settings that may change on resume: where it runs does not change what it computes
# (up to floating-point differences between devices).
RESUMABLE_CHANGES = ("device",)


@dataclass
class Session:
    run_dir: Path
    exists: bool                  # False: the first checkpoint creates the folder
    overwrite: bool               # replace an existing --out on the first checkpoint
    model: QTensorFormer          # in train mode, on `device`
    optimizer: torch.optim.AdamW
    config: TrainConfig
    state: TrainState
    settings: dict                # arch, preset, train config, data hashes: kept in the run
    train_ids: np.ndarray
    valid: ValidationSet
    device: torch.device
    estimate: dict                # estimated latency/energy per query on config.target
    params: int
    command: str
    tokenizer_json: bytes | None = field(default=None, repr=False)  # new runs only
    budget: Budget | None = None  # --budget, checked feasible (see qtf_edge.train.budget)
    ranks: Ranks = field(default_factory=Ranks)  # torchrun's workers (qtf_edge.train.distributed)
    ddp: torch.nn.Module | None = field(default=None, repr=False)  # model in DDP, under torchrun
    parent: Path | None = None    # --init-from: the run whose weights this one starts from
    teacher: torch.nn.Module | None = field(default=None, repr=False)  # --teacher, frozen


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available on this machine; use "
                         "--device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_configs(preset_name: str | None, arch: str, config_file, model_overrides: dict,
                    train_overrides: dict, base: tuple[dict, dict] | None = None
                    ) -> tuple[ModelConfig, TrainConfig]:
    """The configs a request asks for: base (a preset, or a saved run's configs when
    resuming without --preset), then the --config file, then flags."""
    if preset_name is not None or base is None:
        model_kw, train_kw = preset(preset_name or DEFAULT_PRESET)
    else:
        model_kw, train_kw = (dict(d) for d in base)
    if config_file is not None:
        file_model, file_train = read_config_file(config_file)
        model_kw.update(file_model)
        train_kw.update(file_train)
    model_kw.update(model_overrides)
    train_kw.update({k: v for k, v in train_overrides.items() if v is not None})
    train_config = TrainConfig.from_dict(train_kw)
    if "vocab_size" in model_kw and model_kw["vocab_size"] != train_config.vocab_size:
        raise ValueError(f"model vocab_size {model_kw['vocab_size']} differs from the train "
                         f"vocab_size {train_config.vocab_size}; set only the latter "
                         f"(--vocab-size)")
    # The model's vocabulary is the REQUESTED tokenizer size, not the size BPE reaches: a
    # requested size such as 8192 factorises well for the TT embedding, and the tokenizer
    # never exceeds it (checked once it is trained), so every id has an embedding row.
    dense = DENSE_SWITCHES if check_arch(arch) == "dense" else {}
    model_config = ModelConfig.from_dict({**model_kw, "vocab_size": train_config.vocab_size,
                                          **dense})
    return model_config, train_config


# ---------------------------------------------------------------------------- data

def _read_text(path, flag: str, split: str) -> tuple[list[str], dict]:
    """(lines, {"path", "sha256"}) of --data/--valid, or of the shipped split if None."""
    source = default_corpus(split) if path is None else Path(path)
    try:
        lines = read_corpus(source)
    except ValueError as e:
        raise ValueError(f"{flag} {source}: {e}") from None
    record = {"path": None if path is None else str(Path(path).resolve()),
              "sha256": corpus_sha256(lines)}
    return lines, record


def _encode(lines, tokenizer, tokenizer_hash: str, flag: str, source, minimum: int):
    ids = encode_corpus(lines, tokenizer, tokenizer_hash)
    if len(ids) < minimum:
        raise ValueError(f"{flag} {source}: only {len(ids)} tokens; expected at least "
                         f"{minimum} (context_length + 1)")
    return ids


def estimate_on_target(model: QTensorFormer, target: str) -> dict:
    report = estimate_model_energy(model, EnergyEstimator(target),
                                   seq_len=model.config.context_length)
    return {"profile": report.profile, "seq_len": report.seq_len, "label": report.label,
            "latency_ms_per_query": report.per_query.latency_ms,
            "energy_uj_per_query": report.per_query.energy_uj}


# ---------------------------------------------------------------------------- sessions

def prepare_session(*, out=None, preset_name: str | None = None, arch: str | None = None,
                    data=None, valid=None, config_file=None, model_overrides: dict | None = None,
                    train_overrides: dict | None = None, resume=None, init_from=None,
                    overwrite: bool = False, command: str = "train",
                    tokenizer_json: bytes | None = None, teacher=None) -> Session:
    """tokenizer_json: a tokenizer already trained on this --data (rank 0's, under
    torchrun) to use instead of training one; new runs only. init_from: a run folder whose
    model (config, weights) and tokenizer a new run starts from (fine-tuning). teacher: a
    run folder (or loaded Run) whose logits the model is distilled from (distillation.py);
    a resumed run reloads the one it began with."""
    model_overrides, train_overrides = model_overrides or {}, train_overrides or {}
    if resume is not None:
        if init_from is not None:
            raise ValueError("--init-from starts a new run and --resume continues one; "
                             "pass one of them")
        return _resumed(Path(resume), out, preset_name, arch, data, valid, config_file,
                        model_overrides, train_overrides, command, teacher)
    if init_from is not None:
        return _fine_tuned(init_from, out, preset_name, arch, data, valid, config_file,
                           model_overrides, train_overrides, overwrite, command, teacher)
    preset_label = preset_name or DEFAULT_PRESET
    arch = arch or DEFAULT_ARCH
    model_config, config = resolve_configs(preset_label, arch, config_file, model_overrides,
                                           train_overrides)
    run_dir = Path(out) if out is not None else Path("runs") / f"{preset_label}-{arch}"
    _check_new_out(run_dir, overwrite)
    device = resolve_device(config.device)
    train_lines, train_record = _read_text(data, "--data", "train")
    valid_lines, valid_record = _read_text(valid, "--valid", "valid")

    if tokenizer_json is None:
        tokenizer = train_tokenizer(train_lines, config.vocab_size)
        tokenizer_json = tokenizer.to_str(pretty=True).encode("utf-8")
    else:
        tokenizer = Tokenizer.from_str(tokenizer_json.decode("utf-8"))
    tokenizer_hash = hashlib.sha256(tokenizer_json).hexdigest()  # as tokenizer_sha256 of the saved file

    torch.manual_seed(config.seed)
    model = QTensorFormer(model_config)
    settings = {"arch": arch, "preset": preset_label, "train": config.to_dict(),
                "data": {"train": train_record, "valid": valid_record}}
    return _session(run_dir, False, overwrite, model, config, TrainState(), settings,
                    tokenizer, tokenizer_hash, train_lines, valid_lines, data, valid, device,
                    command, tokenizer_json=tokenizer_json, teacher=teacher)


def _check_new_out(run_dir: Path, overwrite: bool) -> None:
    if (run_dir.exists() or run_dir.is_symlink()) and not overwrite:
        raise ValueError(f"--out {run_dir}: already exists; pass --overwrite to replace it, "
                         f"choose another folder, or continue it with --resume {run_dir}")


def _fine_tuned(init_from, out, preset_name, arch, data, valid, config_file,
                model_overrides, train_overrides, overwrite, command, teacher) -> Session:
    """A new run that starts from another run's model and tokenizer. Its train settings
    come from the preset (default tiny), the --config file's train: part and the flags;
    the model is the parent's as it is (any model setting is refused).

    init_from: a run folder, or a loaded `Run` whose model a pass has already changed
    (distill, compress: they heal in memory and record the folder they read as parent)."""
    if out is None:
        raise ValueError("--init-from needs --out: the folder of the new, fine-tuned run")
    run = init_from if isinstance(init_from, Run) else load_run(init_from)
    parent = run.path
    if arch is not None or model_overrides or (
            config_file is not None and read_config_file(config_file)[0]):
        raise ValueError(f"--init-from {parent}: the model comes from that run as it is; "
                         f"drop --arch and model settings")
    _, config = resolve_configs(preset_name, DEFAULT_ARCH, config_file, {},
                                {**train_overrides, "vocab_size": run.config.vocab_size})
    run_dir = Path(out)
    _check_new_out(run_dir, overwrite)
    train_lines, train_record = _read_text(data, "--data", "train")
    valid_lines, valid_record = _read_text(valid, "--valid", "valid")
    tokenizer_json = run.tokenizer_path.read_bytes()
    tokenizer = load_tokenizer(run.tokenizer_path)
    settings = {"arch": "dense" if run.config.is_dense else "qtf",
                "preset": preset_name or DEFAULT_PRESET, "train": config.to_dict(),
                "data": {"train": train_record, "valid": valid_record},
                "init_from": str(parent.resolve())}
    torch.manual_seed(config.seed)  # dropout and batches; the weights are the parent's
    session = _session(run_dir, False, overwrite, run.model, config, TrainState(), settings,
                       tokenizer, tokenizer_sha256(run.tokenizer_path), train_lines,
                       valid_lines, data, valid, resolve_device(config.device), command,
                       tokenizer_json=tokenizer_json, teacher=teacher)
    session.parent = parent
    return session


def load_checkpoint(run_dir: Path, device: torch.device):
    """(run, tensors, state, settings) of a run's last complete checkpoint; an interrupted
    checkpoint is refused with the way to restore the previous one."""
    try:
        run = load_run(run_dir, device=device)
    except RunError:
        if run_dir.is_dir() and any(p.name.endswith(PREVIOUS_SUFFIX) for p in run_dir.iterdir()):
            raise RunError(
                f"{run_dir}: its last checkpoint is incomplete (saving was interrupted); "
                f"restore the previous one with python -c \"from qtf_edge.runs import "
                f"restore_previous_checkpoint; restore_previous_checkpoint('{run_dir}')\" "
                f"and resume again, or start a new run") from None
        raise
    tensors, state, settings = read_train_state(run_dir / TRAIN_STATE_FILE)
    return run, tensors, state, settings


def _differences(requested, saved, skip=()) -> list[str]:
    a, b = requested.to_dict(), saved.to_dict()
    return [f"{name}={a[name]!r} (the run has {b[name]!r})"
            for name in a if name not in skip and a[name] != b[name]]


def _resumed(run_dir: Path, out, preset_name, arch, data, valid, config_file,
             model_overrides, train_overrides, command, teacher) -> Session:
    if out is not None and Path(out).resolve() != run_dir.resolve():
        raise ValueError(f"--out {out}: a resumed run continues in its own folder "
                         f"({run_dir}); drop --out")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"--resume {run_dir}: not found; expected a run folder "
                                f"written by qtf-edge train")
    run, tensors, state, settings = load_checkpoint(run_dir, torch.device("cpu"))
    try:
        saved_train = TrainConfig.from_dict(settings["train"])
        saved_arch = settings["arch"]
        data_records = settings["data"]
    except (KeyError, TypeError, ValueError) as e:
        raise RunError(f"{run_dir / TRAIN_STATE_FILE}: settings are not a train run's "
                       f"({' '.join(str(e).split())})") from None

    arch = arch or saved_arch
    base = ({k: v for k, v in run.config.to_dict().items() if k != "vocab_size"},
            saved_train.to_dict())
    model_config, config = resolve_configs(preset_name, arch, config_file, model_overrides,
                                           train_overrides, base)
    changed = ([] if arch == saved_arch else [f"arch={arch!r} (the run has {saved_arch!r})"])
    changed += [f"model.{d}" for d in _differences(model_config, run.config)]
    changed += [f"train.{d}" for d in _differences(config, saved_train, RESUMABLE_CHANGES)]
    if changed:
        raise ValueError(f"--resume {run_dir}: the request differs from the run: "
                         f"{'; '.join(changed)}; a resumed run keeps its settings (drop the "
                         f"flag, or start a new run with --out)")
    if state.step >= config.steps:
        raise ValueError(f"--resume {run_dir}: the run already finished ({state.step} of "
                         f"{config.steps} steps); nothing to resume")

    device = resolve_device(config.device)
    sources = []
    for given, flag, split in ((data, "--data", "train"), (valid, "--valid", "valid")):
        recorded = data_records[split]
        path = given if given is not None else recorded["path"]
        lines, record = _read_text(path, flag, split)
        if record["sha256"] != recorded["sha256"]:
            raise ValueError(f"{flag} {path or default_corpus(split)}: differs from the text "
                             f"the run was trained on (sha256 {record['sha256'][:12]}, "
                             f"expected {recorded['sha256'][:12]}); resume needs the same text")
        sources.append((lines, path))
    (train_lines, data), (valid_lines, valid) = sources

    recorded_teacher = settings.get("teacher")
    if teacher is not None and (recorded_teacher is None or Path(str(teacher)).resolve()
                                != Path(recorded_teacher["path"])):
        raise ValueError(f"--resume {run_dir}: --teacher {teacher} differs from the run's "
                         f"({recorded_teacher['path'] if recorded_teacher else 'none'}); a "
                         f"resumed run keeps its teacher (drop --teacher)")
    tokenizer = load_tokenizer(run.tokenizer_path)
    tokenizer_hash = tokenizer_sha256(run.tokenizer_path)
    settings = dict(settings, train=config.to_dict())
    session = _session(run_dir, True, False, run.model, config, state, settings, tokenizer,
                       tokenizer_hash, train_lines, valid_lines, data, valid, device, command,
                       teacher=recorded_teacher["path"] if recorded_teacher else None,
                       teacher_sha256=recorded_teacher and recorded_teacher["model_sha256"])
    apply_train_state(tensors, session.model, session.optimizer, run_dir / TRAIN_STATE_FILE,
                      device)
    return session


def _session(run_dir, exists, overwrite, model, config, state, settings, tokenizer,
             tokenizer_hash, train_lines, valid_lines, data, valid, device, command,
             tokenizer_json=None, teacher=None, teacher_sha256=None) -> Session:
    """The parts common to new and resumed runs: vocabulary check, token streams, cost
    estimate, device placement, the teacher and the optimizer."""
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > model.config.vocab_size:
        raise ValueError(f"tokenizer has {size} tokens but the model's vocab_size is "
                         f"{model.config.vocab_size}")
    minimum = model.config.context_length + 1
    train_ids = _encode(train_lines, tokenizer, tokenizer_hash, "--data",
                        data or default_corpus("train"), minimum)
    valid_ids = _encode(valid_lines, tokenizer, tokenizer_hash, "--valid",
                        valid or default_corpus("valid"), 2)
    vset = validation_set(valid_ids, valid_lines, end_of_text_id(tokenizer), config.eval_tokens)
    estimate = estimate_on_target(model, config.target)
    budget = parse_budget(config.budget) if config.budget else None
    if budget and budget.relative:  # 0.5x: of the model as it starts
        budget = budget.resolve(measure(model, config.target, model.config.context_length))
    if budget:
        check_feasible(budget, model, config.target, model.config.context_length)
    teacher_model = None
    if teacher is not None:
        if config.distill_alpha == 0:
            raise ValueError(f"--teacher {getattr(teacher, 'path', teacher)}: distill_alpha "
                             f"is 0, so the teacher would not be used; give a weight in "
                             f"(0, 1] or drop --teacher")
        teacher_model, settings["teacher"] = load_teacher(
            teacher, tokenizer_hash, model.config.vocab_size, device, teacher_sha256)
    model.to(device).train()
    optimizer = make_optimizer(model, config)
    return Session(run_dir=run_dir, exists=exists, overwrite=overwrite, model=model,
                   optimizer=optimizer, config=config, state=state, settings=settings,
                   train_ids=train_ids, valid=vset, device=device, estimate=estimate,
                   params=count_params(model), command=command, tokenizer_json=tokenizer_json,
                   budget=budget, teacher=teacher_model)
