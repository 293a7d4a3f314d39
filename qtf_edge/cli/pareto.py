"""`qtf-edge pareto RUN_DIR`: the run's perplexity/size/latency/energy frontier."""

from __future__ import annotations

import json
import sys

import click

from qtf_edge.cli.main import cli, user_errors_exit_2
from qtf_edge.cli.tables import format_table, number
from qtf_edge.pareto import JSON_FILE, PNG_FILE, pick, write_frontier
from qtf_edge.runs import TRAIN_STATE_FILE
from qtf_edge.train.budget import parse_budget
from qtf_edge.train.state import read_train_state

# What each evaluation in metrics.jsonl records (absolute figures only; no 'x').
PICK_KEYS = ("params", "latency_ms", "energy_uj")


def _row(p: dict) -> list:
    return [p["step"], f"{p['val_perplexity_per_word']:,.1f}", number(p["params"]),
            number(p["latency_ms"]), number(p["energy_uj"])]


@cli.command("pareto")
@click.argument("run_dir", type=click.Path())
@click.option("--out", type=click.Path(), default=None,
              help=f"Folder for {JSON_FILE} and {PNG_FILE} [default: RUN_DIR].")
@click.option("--pick", "pick_spec", default=None, metavar="KEY=N,...",
              help="Choose the best-perplexity point meeting these limits (keys as "
                   "train --budget: params, latency_ms, energy_uj).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document.")
@user_errors_exit_2
def pareto(run_dir, out, pick_spec, as_json):
    """Pareto frontier of a run's evaluations (lower is better in all four: perplexity per
    word, parameters, estimated latency and energy per query on the run's target).

    \b
      qtf-edge pareto runs/tiny
      qtf-edge pareto runs/tiny --pick latency_ms=5
    """
    budget = (parse_budget(pick_spec, "--pick", keys=PICK_KEYS) if pick_spec is not None
              else None)
    doc = write_frontier(run_dir, out)
    chosen = None
    if budget is not None:
        chosen = pick(doc["points"], budget)
        _, state, _ = read_train_state(f"{run_dir}/{TRAIN_STATE_FILE}")
        doc["pick"] = {"limits": budget.to_dict(), "point": chosen,
                       "checkpoint_step": state.step,
                       "retained": chosen is not None and chosen["step"] == state.step}
    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
    else:
        click.echo(f"Pareto frontier of {run_dir} ({len(doc['frontier'])} of "
                   f"{len(doc['points'])} evaluations; latency and energy are estimated "
                   f"per query by the cost model):")
        click.echo(format_table(["step", "ppl/word", "params", "latency ms", "energy uJ"],
                                [_row(p) for p in doc["frontier"]]))
        where = out if out is not None else run_dir
        click.echo(f"wrote {where}/{JSON_FILE} and {where}/{PNG_FILE}")
    if budget is None:
        return
    limits = budget.spec()
    if chosen is None:
        click.echo(f"error: --pick {limits}: no evaluated point meets it", err=True)
        sys.exit(2)
    pick_doc = doc["pick"]
    if not pick_doc["retained"]:
        click.echo(f"error: --pick {limits}: the best point is step {chosen['step']} (perplexity "
                   f"per word {number(chosen['val_perplexity_per_word'])}), but only the "
                   f"checkpoint of step {pick_doc['checkpoint_step']} is kept in {run_dir}; "
                   f"its weights are not retained", err=True)
        sys.exit(2)
    if not as_json:
        click.echo(f"--pick {limits}: step {chosen['step']} (perplexity per word "
                   f"{number(chosen['val_perplexity_per_word'])}) is the run's final "
                   f"checkpoint: {run_dir}")
