"""`qtf-edge generate RUN_DIR --prompt TEXT`: continue a prompt, streaming the text."""

from __future__ import annotations

import json
import sys

import click

from qtf_edge.cli.main import cli, user_errors_exit_2
from qtf_edge.cli.run_loading import load_run_and_tokenizer
from qtf_edge.generate import encode_prompt, generate


def _stream(piece: str) -> None:
    click.echo(piece, nl=False)
    sys.stdout.flush()  # show each piece now, not when the line or buffer fills


@cli.command("generate")
@click.argument("run_dir")
@click.option("--prompt", required=True, help="Text to continue.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="0 is greedy (always the most likely token).")
@click.option("--top-k", type=click.IntRange(min=1), help="Sample from the k most likely.")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True),
              help="Sample from the smallest set of tokens with probability >= p.")
@click.option("--seed", type=int, help="Seed the sampler: the same seed, the same text.")
@click.option("--json", "as_json", is_flag=True,
              help="Print {prompt, text, tokens, truncated} at the end instead of streaming.")
@user_errors_exit_2
def generate_command(run_dir, prompt, max_new_tokens, temperature, top_k, top_p, seed,
                     as_json):
    """Continue --prompt with RUN_DIR's model, streaming tokens to stdout as they come."""
    if not prompt:
        raise ValueError("--prompt is empty: expected some text to continue")
    run, tokenizer = load_run_and_tokenizer(run_dir)
    _, truncated = encode_prompt(run.model, tokenizer, prompt)
    if truncated:
        click.echo(f"note: the prompt is longer than the model's context; only its last "
                   f"{run.config.context_length - 1} tokens are used", err=True)
    result = generate(run.model, tokenizer, prompt, max_new_tokens=max_new_tokens,
                      temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                      on_token=None if as_json else _stream)
    if as_json:
        click.echo(json.dumps({"prompt": prompt, "text": result.text,
                               "tokens": result.token_ids,
                               "truncated": result.prompt_truncated}, indent=2))
    else:
        click.echo()
