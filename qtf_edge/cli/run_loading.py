"""Load a run folder and its tokenizer for the commands that read one (eval, generate)."""

from __future__ import annotations

from qtf_edge.data import load_tokenizer
from qtf_edge.runs import Run, load_run


def load_run_and_tokenizer(run_dir: str) -> tuple[Run, object]:
    """(run, tokenizers.Tokenizer); RunError / DataError (ValueErrors) name the file."""
    run = load_run(run_dir)
    return run, load_tokenizer(run.tokenizer_path)
