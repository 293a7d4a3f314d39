# The device call for benchmarks/compress.py's GPU table. Run from the repository root with carry [".whl", ".bench-data"]: .whl holds the
# tensorly and onnxslim wheels (pip download --no-deps -d .whl tensorly onnxslim), .bench-data a
# copy of ../shared/data/wikitext-2. Then, on the dev CPU, time the rows:
#   python benchmarks/compress.py --train-dir runs/bench --keep keep --latency-of compress_fN.json
# One call: train the compress benchmark's inputs (dense small and dense models shrunk by
# width, 5000 steps each, concurrently), then benchmarks/compress.py at 1/4, 1/8 and 1/16
# of the weight bytes (one process per budget; search, healing and scoring on the GPU;
# decode timing later on the dev CPU with --latency-of).
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
for f in 4 8 16; do
  OMP_NUM_THREADS=5 timeout 340 python3 benchmarks/compress.py --train-dir $R \
    --data-dir $D --device cuda --fractions $f --heal-steps 2000 \
    --keep /tmp/keep --no-latency --json $OUT/compress_f$f.json > $OUT/compress_f$f.log 2>&1 &
done
wait
echo "benchmarked at $SECONDS s"
grep -h "^|" $OUT/compress_f*.log | tail -n 30
tail -n 3 $OUT/compress_f*.log; du -sh $R /tmp/keep
# at most 8 files come back: the three JSON, and the runs with the logs in a split tar
rm -f $R/*/train_state.safetensors /tmp/keep/*/train_state.safetensors
mv $OUT/compress_f*.log $R/logs/
tar cf - $R -C /tmp keep | split -b 15M - $OUT/runs.tar.part-
ls -la $OUT
