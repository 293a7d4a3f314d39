"""`qtf-edge train`: train a new run, or resume one (a thin shell over train_run)."""

from __future__ import annotations

import json
import sys

import click

from qtf_edge.cli.main import cli, invocation, user_errors_exit_2
from qtf_edge.presets import ARCHES, PRESETS
from qtf_edge.train.budget import describe, parse_budget
from qtf_edge.train.config import DEVICES
from qtf_edge.train.distributed import ranks_from_env
from qtf_edge.train.loop import TrainingDiverged, TrainingInterrupted, train_run

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a ^C


@cli.command("train")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
              help="Model size and training settings [default: tiny].")
@click.option("--arch", type=click.Choice(list(ARCHES)), default=None,
              help="qtf (every component on) or its dense baseline [default: qtf].")
@click.option("--data", type=click.Path(), default=None,
              help="Training text: a file or a folder of *.txt [default: shipped excerpt].")
@click.option("--valid", type=click.Path(), default=None,
              help="Validation text [default: shipped excerpt].")
@click.option("--out", type=click.Path(), default=None,
              help="New run folder [default: runs/<preset>-<arch>].")
@click.option("--config", "config_file", type=click.Path(), default=None,
              help="YAML/JSON with model: and train: overrides of the preset.")
@click.option("--steps", type=int, default=None, help="Optimizer steps.")
@click.option("--batch-size", type=int, default=None, help="Sequences per step.")
@click.option("--lr", type=float, default=None, help="Peak learning rate.")
@click.option("--vocab-size", type=int, default=None,
              help="Tokenizer size requested; also the model's vocab_size.")
@click.option("--seed", type=int, default=None, help="Seed of weights and batches.")
@click.option("--device", type=click.Choice(list(DEVICES)), default=None,
              help="Where to train [default: auto].")
@click.option("--target", default=None,
              help="Hardware profile for the estimated latency/energy [default: cpu_xeon].")
@click.option("--budget", default=None, metavar="KEY=N,...",
              help="Hard budgets the final checkpoint must meet: params, latency_ms, "
                   "energy_uj (per query of context_length tokens, estimated on --target), "
                   "e.g. params=800k,latency_ms=5,energy_uj=60. TT ranks are lowered by "
                   "TT rounding during training to reach them.")
@click.option("--resume", type=click.Path(), default=None,
              help="Continue this run folder from its last checkpoint.")
@click.option("--init-from", type=click.Path(), default=None,
              help="Start a new run (--out) from this run's model and tokenizer: fine-tuning.")
@click.option("--teacher", type=click.Path(), default=None,
              help="Distil this run's logits (it must share the tokenizer): loss = (1 - "
                   "alpha) cross-entropy + alpha T^2 KL(teacher || model) at temperature T.")
@click.option("--distill-alpha", type=click.FloatRange(0, 1), default=None,
              help="Weight alpha of the teacher's KL [default: 0.5].")
@click.option("--distill-temperature", type=click.FloatRange(0, min_open=True),
              default=None, help="Temperature T of the teacher's KL [default: 2].")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary at the end.")
@user_errors_exit_2
def train(preset, arch, data, valid, out, config_file, steps, batch_size, lr, vocab_size,
          seed, device, target, budget, resume, init_from, teacher, distill_alpha,
          distill_temperature, overwrite, quiet, as_json):
    """Train a Q-TensorFormer (or its dense baseline) on text.

    \b
      qtf-edge train --preset tiny --out runs/tiny
      qtf-edge train --resume runs/tiny
      qtf-edge train --init-from runs/tiny-deploy --steps 100 --lr 3e-4 --out runs/tiny-healed
      qtf-edge train --preset tiny --arch dense --teacher runs/tiny-qtf --out runs/tiny-student
      qtf-edge train --preset tiny --budget params=30k --out runs/tiny-30k
      torchrun --nproc_per_node 2 -m qtf_edge train --preset small --out runs/small
    """
    if budget is not None:
        parse_budget(budget)  # a bad --budget is named before anything else is read
    overrides = {"budget": budget, "steps": steps, "batch_size": batch_size, "learning_rate": lr,
                 "vocab_size": vocab_size, "seed": seed, "device": device, "target": target,
                 "distill_alpha": distill_alpha, "distill_temperature": distill_temperature}
    command = invocation()
    try:
        result = train_run(out, preset_name=preset, arch=arch, data=data, valid=valid,
                           config_file=config_file, train_overrides=overrides, resume=resume,
                           init_from=init_from, overwrite=overwrite, quiet=quiet,
                           command=command, teacher=teacher)
    except TrainingInterrupted as stop:
        click.echo(str(stop), err=True)
        sys.exit(EXIT_INTERRUPTED)
    except TrainingDiverged as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    if not ranks_from_env().is_main:
        return  # under torchrun, rank 0 reports
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    elif not quiet:
        final = result.final or {}
        click.echo(f"{result.run_dir}: {result.step} steps, val perplexity "
                   f"{final.get('val_perplexity_per_token', float('nan')):.1f} per token, "
                   f"{final.get('val_perplexity_per_word', float('nan')):.1f} per word, "
                   f"{result.elapsed_s:.0f} s")
        if result.budget:
            b = result.budget
            click.echo("budget met by the final checkpoint: " + "; ".join(
                f"{describe(key, b['figures'][key], b['profile'])} (limit "
                f"{f'{int(limit):,}' if key == 'params' else f'{limit:g}'})"
                for key, limit in b["limits"].items()))
