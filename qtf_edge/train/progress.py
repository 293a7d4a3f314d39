"""Progress on stderr: a tqdm bar on a terminal, a plain line per evaluation otherwise
(logs, CI), nothing with quiet."""

from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    def __init__(self, total: int, start: int, quiet: bool = False):
        self.total, self.start, self.quiet = total, start, quiet
        self.started = time.perf_counter()
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", file=sys.stderr,
                            dynamic_ncols=True, desc="train")

    def step(self, step: int, loss: float | None, tokens_per_s: float) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss="nan" if loss is None else f"{loss:.3f}",
                                 tok_s=f"{tokens_per_s:,.0f}", refresh=False)

    def evaluated(self, record: dict) -> None:
        line = (f"step {record['step']}/{self.total}  train {record['train_loss']:.4f}  "
                f"val {record['val_loss']:.4f}  ppl {record['val_perplexity_per_token']:.1f}"
                f"  {record['tokens_per_s']:,.0f} tok/s")
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        elif not self.quiet:
            done = record["step"] - self.start
            elapsed = time.perf_counter() - self.started
            eta = elapsed / done * (self.total - record["step"]) if done > 0 else 0.0
            print(f"{line}  eta {_duration(eta)}", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        elif not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
