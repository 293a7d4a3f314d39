"""`qtf-edge info RUN_DIR`: parameters, FLOPs, compression and estimated costs of a run."""

from __future__ import annotations

import json

import click

from qtf_edge.cli.main import cli, user_errors_exit_2
from qtf_edge.cli.tables import format_table, number
from qtf_edge.run_info import describe_run
from qtf_edge.runs import load_run

CONFIG_SHOWN = ("vocab_size", "context_length", "d_model", "n_layers", "n_heads", "d_ff",
                "tt_rank", "tt_embedding_rank", "n_qubits", "quantum_fraction")
SWITCHES = ("use_tt", "tt_embeddings", "adaptive_rank", "use_quantum_encoder", "use_qksam",
            "use_router", "use_qkan")


def _ranks_line(ranks: dict) -> str:
    """Layers grouped by their internal ranks: '16: blocks.0.ffn.up, ...; 356: ...'."""
    groups: dict[str, list[str]] = {}
    for name, layer_ranks in ranks.items():
        groups.setdefault("x".join(map(str, layer_ranks)), []).append(name)
    return "; ".join(f"{r} ({len(names)} layer{'s' * (len(names) > 1)}: {', '.join(names[:2])}"
                     f"{', ...' if len(names) > 2 else ''})" for r, names in groups.items())


def _weights_line(config: dict) -> str:
    """'float' or e.g. 'int4: 9 layers, int8: 4 layers; low-rank factors: 5 layers (ranks
    16-96)' (compress --bits)."""
    widths = sorted(set(config["weight_bits"].values()))
    parts = [", ".join(f"int{b}: {list(config['weight_bits'].values()).count(b)} layers"
                       for b in widths)] if widths else ["float"]
    if config["low_rank"]:
        ranks = config["low_rank"].values()
        parts.append(f"low-rank factors: {len(ranks)} layers (ranks {min(ranks)}-{max(ranks)})")
    return "; ".join(parts)


def format_info(info: dict) -> str:
    config, lineage, flops = info["config"], info["lineage"], info["flops"]
    on = [s for s in SWITCHES if config[s]]
    out = [
        f"run          {info['run']}  ({info['architecture']}, form {info['form']})",
        (f"created by   {lineage['command']}  (qtf-edge {lineage['package_version']}, "
         f"{lineage['created_utc']})"),
        f"parent       {lineage['parent_path'] or '-'}",
        "config       " + ", ".join(f"{k}={config[k]}" for k in CONFIG_SHOWN),
        "switches on  " + (", ".join(on) if on else "none (dense baseline)"),
        "TT ranks     " + (_ranks_line(info["tt_ranks"]) or "-"),
        "weights      " + _weights_line(config),
        "",
        format_table(["part", "parameters"],
                     [[part, number(n)] for part, n in info["params"].items()]),
        "",
        (f"compression  {info['compression_ratio']:.2f}x fewer parameters than the dense "
         f"model of the same d_model/n_layers ({number(info['dense_params'])})"),
        (f"FLOPs        {number(flops['per_decoded_token'])} per decoded token (context "
         f"{flops['decode_context']}), {number(flops['per_query'])} per "
         f"{flops['query_tokens']}-token query"),
        "",
        (f"Cost-model estimates (estimated from FLOPs, bytes and datasheet figures, not "
         f"measured); query = {flops['query_tokens']} tokens, token = one decode step:"),
    ]
    rows = []
    for profile, e in info["estimates"].items():
        q, t = e["per_query"], e["per_decoded_token"]
        rows.append([profile, number(q["latency_ms"]), number(q["energy_uj"]),
                     number(q["co2_g"]), number(t["latency_ms"]), number(t["energy_uj"]),
                     number(t["co2_g"]), q["bound"], e["label"]])
    out.append(format_table(["profile", "query ms", "query uJ", "query gCO2", "token ms",
                             "token uJ", "token gCO2", "query bound", "label"], rows,
                            align_right=set(range(1, 7))))
    return "\n".join(out)


@cli.command("info")
@click.argument("run_dir")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors_exit_2
def info_command(run_dir, as_json):
    """Parameters and FLOPs per part, compression against dense, lineage, and the
    estimated latency, energy and CO2 on every shipped hardware profile."""
    info = describe_run(load_run(run_dir))
    click.echo(json.dumps(info, indent=2) if as_json else format_info(info))
