"""Reproduce the reference model card's tables on WikiText-2 (issue 9), with the commands.

The reference Q-TensorFormer v4 model card claims parameter counts, perplexity, energy per
query, quantum path usage, an ablation and a scale-up table, and concedes +104% CPU latency
against dense. This script trains every row of one fixed plan on the same data, with one
tokenizer (byte-level BPE of 8192 tokens, trained once on the training split and given to
every run) and the same seeds, and measures each finished run:

    word perplexity      the whole validation split (qtf_edge.evaluate.evaluate_text), on the
                         device that trained the run
    parameters, MB       counted; MB = float32 weights (4 bytes a parameter)
    energy per query     ESTIMATED by the cost model (qtf_edge.run_info.describe_run) on the
                         cpu_xeon and edge_mobile profiles; nothing here measures power
    quantum path usage   the share of validation tokens the router sends to QKSAM
    CPU decode latency   MEASURED on this machine: the exported ONNX bundle (the distilled
                         deploy form for QTF) through its own run.py --bench, one thread

Rows (`build_plan`): core (dense vs QTF at small and large), ablation (cumulative switches
from dense to the full QTF, then an energy budget), scale (medium and xl; small and large
are the core rows), baseline (dense models shrunk by width to each QTF's parameter count).
Small rows run seeds 0, 1, 2; the others seed 0.

Modes (any combination; they run in this order):
    --plan           print the rows and their training budgets (the default)
    --unpack FILE..  extract --pack archives into --runs-dir
    --train          train the rows matching --rows as parallel subprocesses spread over the
                     visible GPUs (--jobs-per-gpu on each); finished rows are skipped, others
                     resume from their last checkpoint; at --deadline-s the jobs are sent
                     SIGINT, checkpoint and stop, and a later --train resumes them
    --probe-steps N  with --train: N steps of each selected architecture (seed 0) in
                     RUNS/probe, then tokens/s and the projected time of the planned steps
    --pack DIR       the finished rows (JSON, log tails, weights that fit) as .tar.gz files
                     within the device tool's limits on what comes back from $OUT
    --measure        export and time the bundles on this CPU (needs onnx and onnxruntime)
    --report         benchmarks/results/reference_*.json, the PNG plots and the generated
                     blocks of benchmarks/REFERENCE.md; prints every table
    --quick          a CPU smoke run of train + measure + report: tiny models, a few steps,
                     the shipped WikiText-2 excerpt; results go to runs/reference-quick only

On the GPU machine (WikiText-2 carried as .bench-data/wikitext-2; onnx is not needed there):
    python3 benchmarks/reference_tables.py --train --mps --jobs-per-gpu 4 --deadline-s 480 \\
        --commit SHA --pack $OUT
Then here:
    python benchmarks/reference_tables.py --unpack FILES --measure --report
"""

# The modules, in the order the modes run:
#   card       the card's claims and the verdicts' tolerances
#   plan       the rows, their budgets, the runs folder (Layout, plan.json, results)
#   data       WikiText-2's paths, the one tokenizer, the token cache
#   job        one row's --job subprocess: train or resume, evaluate, record
#   scheduler  --train/--probe-steps: the jobs over the GPUs, deadline and SIGINT
#   pack       --pack/--unpack
#   measure    --measure: ONNX export (spawned workers) and CPU timing
#   figures    the report's figures (Results) and number formatting
#   tables     the report's markdown tables
#   verdicts   one verdict per claim
#   plots      the PNG plots
#   report     --report: JSON, plots, REFERENCE.md's generated blocks
#   cli        the arguments, --plan's listing, main
