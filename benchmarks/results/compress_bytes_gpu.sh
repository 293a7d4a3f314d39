# The device call for benchmarks/compress.py's GPU table, run from the repository root with
# carry [".whl", ".bench-data"]: .whl holds the tensorly and onnxslim wheels (pip download
# --no-deps -d .whl tensorly onnxslim), .bench-data a copy of ../shared/data/wikitext-2.
# One call: train the benchmark's inputs (dense small and dense models shrunk by width, 5000
# steps each, concurrently), a short smoke run, then benchmarks/compress.py at 1/4, 1/8 and
# 1/16 of the weight bytes (one process per budget; search, healing and scoring on the GPU),
# then the decode timing of every row with --latency-of on this machine's CPU.
set -u
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
D=.bench-data/wikitext-2; R=runs/bench; mkdir -p $R/logs
common="--preset small --data $D/train.txt --valid $D/valid.txt --device cuda --quiet --json"
pids=()
timeout -s INT 200 python3 -m qtf_edge train $common --arch dense --out $R/dense > $R/logs/dense.json 2> $R/logs/dense.err & pids+=($!)
for d in 112 96 80 64 52 48 32; do
  printf 'model:\n  d_model: %d\n  d_ff: %d\n' $d $((4*d)) > $R/dense-d$d.yaml
  timeout -s INT 200 python3 -m qtf_edge train $common --arch dense --config $R/dense-d$d.yaml --out $R/dense-d$d > $R/logs/d$d.json 2> $R/logs/d$d.err & pids+=($!)
done
for p in "${pids[@]}"; do wait $p; done
echo "trained at $SECONDS s"; tail -n 2 $R/logs/*.err
# a short smoke run first: a crash costs seconds, not the whole call
OMP_NUM_THREADS=5 timeout 60 python3 benchmarks/compress.py --train-dir $R --data-dir $D \
  --device cuda --fractions 16 --heal-steps 20 --eval-tokens 2048 --rows c --keep /tmp/smoke \
  --no-latency > $OUT/smoke.log 2>&1 || { tail -n 30 $OUT/smoke.log; exit 1; }
echo "smoke passed at $SECONDS s"
for f in 4 8 16; do
  OMP_NUM_THREADS=5 timeout 300 python3 benchmarks/compress.py --train-dir $R \
    --data-dir $D --device cuda --fractions $f --heal-steps 2000 \
    --keep /tmp/keep --no-latency --json $OUT/compress_f$f.json > $OUT/compress_f$f.log 2>&1 &
done
wait
echo "benchmarked at $SECONDS s"
# decode timing on this machine's CPU, once the GPU work is done (one thread per process;
# the runs with their training state are too large to bring back to the dev CPU)
for f in 4 8 16; do
  OMP_NUM_THREADS=1 timeout 120 python3 benchmarks/compress.py --train-dir $R --keep /tmp/keep \
    --latency-of $OUT/compress_f$f.json >> $OUT/compress_f$f.log 2>&1 &
done
wait
echo "timed at $SECONDS s"
grep -h "^|" $OUT/compress_f*.log | tail -n 30
tail -n 3 $OUT/compress_f*.log
# what comes back: the three JSON, the smoke log and one archive of the logs
mv $OUT/compress_f*.log $R/logs/
tar czf $OUT/logs.tar.gz $R/logs $R/*.yaml
ls -la $OUT
