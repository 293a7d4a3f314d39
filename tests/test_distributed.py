"""Data-parallel training under torchrun: 2 CPU processes (gloo) over loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import torch
from safetensors.torch import load_file

from qtf_edge.runs import load_run, read_metrics
from qtf_edge.train.batches import random_batch

# One process each: every rank saves its weights before and after training.
WORKER = """
import sys
from safetensors.torch import save_file
from qtf_edge.train import loop

out, data, valid, dump = sys.argv[1:5]
run_session = loop.run_session

def recording(session, quiet=False):
    rank = session.ranks.rank
    save_file({k: v.clone() for k, v in session.model.state_dict().items()},
              f"{dump}/initial-{rank}.safetensors")
    result = run_session(session, quiet)
    save_file(session.model.state_dict(), f"{dump}/final-{rank}.safetensors")
    return result

loop.run_session = recording
loop.train_run(out, preset_name="tiny", data=data, valid=valid, quiet=True,
               model_overrides=dict(context_length=16, d_model=16, n_layers=1, n_heads=2,
                                    d_ff=32, tt_rank=4, tt_embedding_rank=4, r_min=1,
                                    r_max=4),
               train_overrides=dict(vocab_size=300, steps=3, batch_size=4, warmup_steps=1,
                                    eval_every=3, eval_tokens=200, checkpoint_every=3,
                                    learning_rate=3e-3, min_lr=3e-4, device="cpu"))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rank_zero_draws_the_single_process_batch_and_other_ranks_their_own():
    ids = np.arange(1000, dtype=np.uint16)
    single = random_batch(ids, 4, 8, seed=3, step=7)[0]
    assert torch.equal(single, random_batch(ids, 4, 8, seed=3, step=7, rank=0)[0])
    assert not torch.equal(single, random_batch(ids, 4, 8, seed=3, step=7, rank=1)[0])


def test_two_cpu_ranks_hold_the_same_weights_and_rank_zero_writes_the_run(tmp_path, corpus):
    script = tmp_path / "worker.py"
    script.write_text(WORKER, encoding="utf-8")
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore::UserWarning")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
         str(script), str(out), str(corpus[0]), str(corpus[1]), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    initial = load_file(tmp_path / "initial-0.safetensors")
    final = [load_file(tmp_path / f"final-{rank}.safetensors") for rank in (0, 1)]
    assert initial.keys() == final[0].keys() == final[1].keys()
    for name in initial:  # buffers (the routers' thresholds) included
        assert torch.equal(final[0][name], final[1][name]), name
    assert any(not torch.equal(initial[n], final[0][n]) for n in initial)

    run = load_run(out)
    saved = run.model.state_dict()
    assert all(torch.equal(saved[n], final[0][n]) for n in saved)
    evals = [r for r in read_metrics(out)[0] if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [3]  # rank 0 alone wrote the metrics
    assert evals[0]["tokens_seen"] == 3 * 2 * 4 * 16  # steps x ranks x batch x context
