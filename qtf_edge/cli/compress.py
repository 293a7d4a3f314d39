"""`qtf-edge compress RUN --budget ... --target T --out DIR`: TT truncation to a budget."""

from __future__ import annotations

import json

import click

from qtf_edge.cli.derived_options import derived_run_options
from qtf_edge.cli.main import cli, invocation, user_errors_exit_2
from qtf_edge.cli.tables import format_table, number
from qtf_edge.compress import ALLOCATORS, METHODS
from qtf_edge.compress.run import CompressOptions, compress_run
from qtf_edge.compress.sweep import compress_sweep
from qtf_edge.config import TT_LAYOUTS
from qtf_edge.quant import BITS, DEFAULT_BLOCK
from qtf_edge.train.budget import ALL_KEYS


@cli.command("compress")
@click.argument("checkpoint", type=click.Path())
@click.option("--out", type=click.Path(), required=True, help="New run folder.")
@click.option("--budget", default=None, metavar="KEY=N,...",
              help=f"Limits the output must meet: {', '.join(ALL_KEYS)}; absolute "
                   f"(params=500k) or relative to the input (params=0.25x). latency_ms and "
                   f"energy_uj are estimated on --target; decode_ms (with --bits) is the "
                   f"exported decode step measured here (ONNX Runtime, 1 thread).")
@click.option("--sweep", default=None, metavar="KEY=LOW:HIGH:COUNT",
              help="Instead of --budget: one run per budget from LOW to HIGH (e.g. "
                   "params=200k:1M:5) in --out, with sweep.json and sweep.png (the "
                   "perplexity / cost frontier).")
@click.option("--target", default=CompressOptions.target, show_default=True,
              help="Hardware profile for latency and energy (see qtf-edge info).")
@click.option("--embeddings", is_flag=True,
              help="Also compress the embedding table (and an untied head).")
@click.option("--method", type=click.Choice(METHODS), default=CompressOptions.method,
              show_default=True,
              help="Truncation: whitened (activation-aware: each layer's weights whitened by "
                   "its input statistics on --calib, so discarded singular values are output "
                   "error) or plain TT-SVD of the weights.")
@click.option("--layout", type=click.Choice(TT_LAYOUTS), default=CompressOptions.layout,
              show_default=True,
              help="How dense layers are split: low_rank (W = A B) or balanced TT cores. A "
                   "TT model keeps its own layout.")
@click.option("--allocator", type=click.Choice(ALLOCATORS), default=CompressOptions.allocator,
              show_default=True,
              help="Rank allocation: greedy by discarded energy per unit of cost, or one "
                   "uniform rank cap.")
@click.option("--sensitivity/--no-sensitivity", default=None,
              help="Weigh each layer's discarded energy by the loss increase its truncation "
                   "causes on --calib (measured per layer) [default: on for greedy].")
@click.option("--bits", default=None, metavar="4|8|4,8",
              help="Search each layer's weight-only precision (float or these widths: int8 "
                   "one scale per output channel, int4 one per --block inputs) and rank "
                   "(low-rank factors, both rounded) for a size_mb budget, by loss measured "
                   "on --calib; all-int8 and all-int4 are always candidates. Run by ONNX "
                   "Runtime's MatMulNBits / GatherBlockQuantized.")
@click.option("--block", type=int, default=DEFAULT_BLOCK, show_default=True,
              help="Inputs per int4 scale: a power of two from 16 to 256.")
@click.option("--calib-tokens", type=click.IntRange(2), default=CompressOptions.calib_tokens,
              show_default=True,
              help="Calibration tokens read from --calib for the input statistics and "
                   "--sensitivity.")
@click.option("--heal-steps", type=click.IntRange(0), default=0, show_default=True,
              help="Fine-tune the compressed model this many steps on --calib, learning the "
                   "uncompressed model's logits (distillation) and the next tokens.")
@click.option("--heal-lr", default=",".join(f"{r:g}" for r in CompressOptions.heal_lr),
              show_default=True,
              help="Peak learning rates, comma-separated: one healing run each; the model "
                   "closest to the input on --calib (KL), healed or not, is kept.")
@click.option("--distill-alpha", type=click.FloatRange(0, 1),
              default=CompressOptions.distill_alpha, show_default=True,
              help="Healing loss: (1 - alpha) next-token cross-entropy + alpha T^2 KL to the "
                   "uncompressed model's logits; 0: next tokens only.")
@click.option("--distill-temperature", type=click.FloatRange(0, min_open=True),
              default=CompressOptions.distill_temperature, show_default=True,
              help="Temperature T of the healing KL.")
@click.option("--calib", type=click.Path(), default=None,
              help="Calibration and healing text [default: shipped train excerpt].")
@derived_run_options
@user_errors_exit_2
def compress(checkpoint, out, budget, sweep, target, embeddings, method, layout, allocator,
             sensitivity, bits, block, calib_tokens, heal_steps, heal_lr, distill_alpha,
             distill_temperature, calib, data, seed, device, overwrite, quiet, as_json):
    """Truncate ranks (dense layers become low-rank or TT first) until the model fits a budget.

    Ranks are allocated across layers from each layer's singular-value spectra (of the
    weights whitened by their inputs on --calib), so that the least output error is
    discarded for what the budget takes; --heal-steps then distils the uncompressed model.

    \b
      qtf-edge compress runs/small-dense --budget params=0.25x --target rpi4 --out runs/small-c4
      qtf-edge compress runs/tiny-qtf --budget latency_ms=0.2 --target rpi4 --heal-steps 100 --out runs/t
      qtf-edge compress runs/small-dense --budget params=0.25x --method plain --out runs/p
      qtf-edge compress runs/small-dense --budget size_mb=0.125x --bits 4,8 --out runs/mixed
      qtf-edge compress runs/small-dense --sweep params=200k:1M:5 --embeddings --out runs/sweep
    """
    if (budget is None) == (sweep is None):
        raise click.UsageError("give exactly one of --budget and --sweep")
    options = CompressOptions(budget=budget or "", target=target, embeddings=embeddings,
                              allocator=allocator, method=method, layout=layout,
                              sensitivity=sensitivity,
                              bits=parse_bits(bits), block=block,
                              calib_tokens=calib_tokens,
                              heal_steps=heal_steps, heal_lr=parse_rates(heal_lr),
                              distill_alpha=distill_alpha,
                              distill_temperature=distill_temperature, calib=calib, data=data,
                              seed=seed, device=device)
    quiet_run = quiet or as_json
    if sweep is not None:
        report = compress_sweep(checkpoint, out, sweep, options, overwrite=overwrite,
                                quiet=quiet_run, command=invocation())
        shown = render_sweep
    else:
        report = compress_run(checkpoint, out, options, overwrite=overwrite, quiet=quiet_run,
                              command=invocation())
        shown = render
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    elif not quiet:
        click.echo(shown(report))


def parse_rates(text: str) -> tuple[float, ...]:
    """'3e-3,3e-4' -> (0.003, 0.0003); ValueError naming --heal-lr otherwise."""
    try:
        rates = tuple(float(p) for p in text.split(","))
    except ValueError:
        rates = ()
    if not rates or not all(0 < r < float("inf") for r in rates):
        raise ValueError(f"--heal-lr {text}: expected positive learning rates, "
                         f"comma-separated (e.g. 3e-3,3e-4)")
    return rates


def parse_bits(text: str | None) -> tuple[int, ...] | None:
    """'4,8' -> (4, 8); ValueError naming --bits otherwise."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if not all(p in {str(b) for b in BITS} for p in parts):
        raise ValueError(f"--bits {text}: expected one or more of "
                         f"{', '.join(map(str, BITS))}, comma-separated (e.g. 4,8)")
    return tuple(sorted({int(p) for p in parts}))


def _ranks(ranks) -> str:
    return "dense" if ranks is None else "x".join(map(str, ranks))


def _weights(row: dict) -> str:
    precision = ("float" if row["bits"] is None else "int8, per output channel"
                 if row["bits"] == 8 else
                 f"int4, blocks of {'/'.join(map(str, row['blocks']))}")
    return precision if row["rank"] is None else f"rank {row['rank']}, {precision}"


def render(report: dict) -> str:
    lines = [f"{report['out']}: {report['source']} compressed to --budget {report['budget']} "
             f"({report['method']} truncation, {report['allocator']} allocation; latency and "
             f"energy estimated on {report['profile']})"]
    truncated = [r for r in report["layers"] if "ranks_after" in r]
    quantized = [r for r in report["layers"] if "bits" in r]
    if truncated:
        lines += ["", format_table(
            ["layer", "ranks before", "ranks after", "params before", "params after",
             "rel. error", "rel. output error"],
            [[r["layer"], _ranks(r["ranks_before"]), _ranks(r["ranks_after"]),
              number(r["params_before"]), number(r["params_after"]),
              f"{r['relative_error']:.3f}",
              f"{r['relative_output_error']:.3f}" if "relative_output_error" in r else "-"]
             for r in truncated])]
    if quantized:
        lines += ["", format_table(
            ["layer", "weights", "bytes before", "bytes after", "loss/token (calib)"],
            [[r["layer"], _weights(r), number(r["bytes_before"]), number(r["bytes_after"]),
              f"{r['loss_increase']:+.4f}"] for r in quantized])]
    if report.get("candidates"):
        timed = any("decode_ms" in c for c in report["candidates"])
        lines += ["", format_table(
            ["candidate", "MB", "loss/token predicted", "measured"]
            + (["decode ms (measured)"] if timed else []),
            [[c["candidate"], f"{c['bytes'] / 1e6:.3f}", f"{c['predicted_loss_increase']:+.4f}",
              f"{c['measured_loss_increase']:+.4f}" if "measured_loss_increase" in c
              else "over budget"]
             + ([f"{c['decode_ms']:.3f}{'' if c['fits'] else ' (over)'}"
                 if "decode_ms" in c else "-"] if timed else [])
             for c in report["candidates"]])]
    if "decode_ms" in report["after"]:
        lines += ["", f"decode step, measured here (ONNX Runtime, 1 thread): "
                      f"{report['before']['decode_ms']:.3f} ms before, "
                      f"{report['after']['decode_ms']:.3f} ms after"]
    before, after, kl = report["before"], report["after"], report["kl_to_source"]
    lines += ["", format_table(
        ["model", "params", "size MB", "latency ms (est.)", "energy uJ (est.)", "ppl/word",
         "KL to input"],
        [["before", number(before["params"]), f"{before['size_mb']:.3f}",
          number(before["latency_ms"]), number(before["energy_uj"]),
          number(report["perplexity"]["before"]["per_word"]), "-"],
         ["after", number(after["params"]), f"{after['size_mb']:.3f}",
          number(after["latency_ms"]), number(after["energy_uj"]),
          number(report["perplexity"]["truncated"]["per_word"]), f"{kl['truncated']:.4f}"]]
        + ([["healed", "", "", "", "", number(report["perplexity"]["healed"]["per_word"]),
             f"{kl['healed']:.4f}"]] if "healed" in report["perplexity"] else []))]
    if report.get("healing"):
        lines += ["", "healing (KL to input on --calib; the lowest is kept): " + ", ".join(
            f"{'unhealed' if t['learning_rate'] is None else 'lr ' + format(t['learning_rate'], 'g')}"
            f" {t['calib_kl']:.4f}{' (kept)' if t['kept'] else ''}" for t in report["healing"])]
    return "\n".join(lines)


def render_sweep(doc: dict) -> str:
    frontier = {p["budget"] for p in doc["frontier"]}
    rows = [[p["budget"], "-", "-", "-", "-", "-", "unmet: " + p["unmet"].split(": ", 1)[-1]]
            if "unmet" in p else
            [p["budget"], number(p["params"]), f"{p['size_mb']:.3f}", number(p["latency_ms"]),
             number(p["energy_uj"]), number(p["val_perplexity_per_word"]),
             "frontier" if p["budget"] in frontier else ""]
            for p in doc["points"]]
    return format_table(["budget", "params", "size MB", "latency ms (est.)", "energy uJ (est.)",
                         "ppl/word", ""], rows)
