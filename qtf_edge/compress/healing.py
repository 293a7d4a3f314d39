"""Healing a compressed model, kept only where it helps.

The learning rate that heals a model depends on how much compression took: 3e-3 took
dense `small` cut by TT-SVD to 1/4 of its parameters from word perplexity 1211 (at 2e-4)
to 718, but moved a searched int4/int8 model that was within 1.006 x of its input to
1.047 x (benchmarks/RESULTS.md). So `compress` heals once per learning rate given and
keeps whichever of the healed models and the unhealed one is closest to the input model,
by the KL on the calibration windows (the text the search measured its losses on; the
validation text that reports are scored on takes no part in the choice). Those windows
are part of the healing text too, but a short healing run sees each of them about once,
and the choice is between a handful of models, not a fit.

Each healing run trains into its own folder beside --out; the kept one becomes --out
whole (its metrics.jsonl and train_state record the healing), the others are removed.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from qtf_edge.atomic import staged_directory, write_bytes_atomic
from qtf_edge.derived import heal, report_bytes
from qtf_edge.runs import Run
from qtf_edge.train.distillation import mean_kl
from qtf_edge.train.setup import resolve_device


@dataclass
class Healing:
    """The outcome: the kept model (the unhealed one when no healing run helped), the
    folder it trained in (None: unhealed), and one record per model compared."""
    model: object
    folder: Path | None
    trials: list[dict] = field(default_factory=list)


def heal_and_choose(source: Run, model, windows: list[list[int]], *, steps: int,
                    learning_rates: tuple[float, ...], calib, data, seed: int,
                    distill_alpha: float, distill_temperature: float, device: str,
                    batch_size: int, quiet: bool, command: str, workdir: Path) -> Healing:
    """Heal copies of `model` for `steps` at each learning rate (in folders under workdir)
    and keep the model, healed or not, with the lowest KL to `source` on `windows`.
    device: where the runs train and the KL is computed (cpu, cuda, auto)."""

    where = resolve_device(device)  # the healing runs take the name ("auto" too)

    def gate(candidate) -> float:
        value = mean_kl(candidate.to(where), source.model.to(where), windows,
                        batch_size=batch_size, device=where)
        candidate.to("cpu"), source.model.to("cpu")
        return value

    trials = [{"learning_rate": None, "calib_kl": gate(model)}]
    best = Healing(model, None, trials)
    kept = 0
    for rate in learning_rates:
        folder = Path(workdir) / f"lr-{len(trials)}"
        healed = heal(source, copy.deepcopy(model), folder, steps=steps, learning_rate=rate,
                      calib=calib, data=data, seed=seed, overwrite=False, quiet=quiet,
                      command=command, device=device, distill_alpha=distill_alpha,
                      distill_temperature=distill_temperature)
        trials.append({"learning_rate": rate, "calib_kl": gate(healed)})
        if trials[-1]["calib_kl"] < trials[kept]["calib_kl"]:
            best.model, best.folder, kept = healed, folder, len(trials) - 1
    for number, trial in enumerate(trials):
        trial["kept"] = number == kept
    return best


def healing_workdir(out: Path) -> tempfile.TemporaryDirectory:
    """A scratch folder beside --out (same file system, so the kept run moves by rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.healing-")


def publish_healed(folder: Path, out: Path, report: dict, report_file: str, *,
                   overwrite: bool) -> None:
    """Make the kept healing run's folder `out`, with the report beside its files."""
    with staged_directory(out, overwrite) as stage:
        for child in folder.iterdir():
            os.rename(child, stage / child.name)
        write_bytes_atomic(stage / report_file, report_bytes(report))
    shutil.rmtree(folder, ignore_errors=True)
