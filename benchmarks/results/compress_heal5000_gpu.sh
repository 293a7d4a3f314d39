# The device call for the longer-healing rows of benchmarks/compress.py (carry as in
# compress_bytes_gpu.sh): train dense small again (same seed and data: the input's word
# perplexity must come out as in compress_bytes_gpu.sh's call), then row (c) alone at 1/8 and
# 1/16 of the weight bytes with 5000 healing steps (as many as the scratch models of row (d)
# trained) at two learning rates each, then the decode timing on this machine's CPU.
set -u
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
D=.bench-data/wikitext-2; R=runs/bench; mkdir -p $R/logs
timeout -s INT 200 python3 -m qtf_edge train --preset small --data $D/train.txt \
  --valid $D/valid.txt --device cuda --quiet --json --arch dense --out $R/dense \
  > $R/logs/dense.json 2> $R/logs/dense.err || { tail -n 5 $R/logs/dense.err; exit 1; }
echo "trained at $SECONDS s"
OMP_NUM_THREADS=6 timeout 450 python3 benchmarks/compress.py --train-dir $R --data-dir $D \
  --device cuda --fractions 16 --rows c --heal-steps 5000 --heal-lr 3e-3,1e-3 \
  --keep /tmp/keep --no-latency --json $OUT/compress_f16_heal5000.json \
  > $OUT/compress_f16_heal5000.log 2>&1 &
OMP_NUM_THREADS=6 timeout 450 python3 benchmarks/compress.py --train-dir $R --data-dir $D \
  --device cuda --fractions 8 --rows c --heal-steps 5000 --heal-lr 1e-3,3e-4 \
  --keep /tmp/keep --no-latency --json $OUT/compress_f8_heal5000.json \
  > $OUT/compress_f8_heal5000.log 2>&1 &
wait
echo "benchmarked at $SECONDS s"
for f in 8 16; do
  OMP_NUM_THREADS=1 timeout 60 python3 benchmarks/compress.py --train-dir $R --keep /tmp/keep \
    --latency-of $OUT/compress_f${f}_heal5000.json >> $OUT/compress_f${f}_heal5000.log 2>&1 &
done
wait
echo "timed at $SECONDS s"
grep -h "^|" $OUT/compress_f*.log | tail -n 12
ls -la $OUT
