#!/usr/bin/env bash
# The GPU checks of issues 2, 4 and 14, in one run on the device machine (see bench/README.md).
# Needs the wheels in .whl/ (bench/README.md says how to fetch them); writes its results under $OUT.
set -uo pipefail
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
rm -f /tmp/site/detectron2/_C*.so
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, detectron2, multimask; print(torch.__version__, torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
# Defaults fit one device session (at most about 560 s of run time; 441 s on the H200 on 2026-11-27): the Train
# worker run (issue 4, 200 iterations; TRAIN_JOB_ITERS=600 reaches a useful model in about 175 s), then the
# single/two-mask comparison (issue 2, 400 iterations x batch 8 per model), which writes its JSON after each model.
# BENCH=1 adds the model benchmark (about 150 s); COMPARE=0 or TRAIN_JOB=0 leave a part out; COMPARE_OPTS="KEY
# VALUE ..." passes config options to the comparison (e.g. "MODEL.ROI_MULTI_MASK_HEAD.DICE_WEIGHT 0.0").
# ISSUE14=1 runs issue 14's checks instead of the others (about 8 minutes): the model benchmark with part boxes,
# then on REGIME (small-part by default) the two-mask model with part boxes, without, and the secondary-only model,
# and part_ceiling.py on each.
if [ "${ISSUE14:-0}" = 1 ]; then
  PB="MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_MASKS"
  timeout 150 python3 bench/bench_model.py --device cuda --iters 20 --warmup 5 --opts $PB "['secondary']" \
    --json "$OUT/bench_model_part_box.json" 2>&1 | grep -v '^\[' | tee "$OUT/bench_model_part_box.txt"
  C="--max-iter ${COMPARE_ITERS:-400} --workers 8 --amp --regime ${REGIME:-small-part} --out /tmp/compare14"
  timeout 200 python3 bench/compare_single_multi.py $C --only two-mask --label two-mask-partbox \
    --two-mask-opts $PB "['secondary']" --json "$OUT/compare14_partbox.json" 2>&1 | grep -E 'RESULT|^\||Error'
  timeout 200 python3 bench/compare_single_multi.py $C --only two-mask secondary-only \
    --json "$OUT/compare14.json" 2>&1 | grep -E 'RESULT|^\||Error'
  # how much of each model's secondary AP its detections and its mask grid allow
  for m in two-mask two-mask-partbox secondary-only; do
    timeout 60 python3 bench/part_ceiling.py /tmp/compare14/data-*/val.json \
      /tmp/compare14/$m/inference/*/multimask_predictions.json --json "$OUT/part_ceiling_$m.json" 2>&1 | grep -E '^\||Error'
  done
  exit 0
fi
if [ "${BENCH:-0}" = 1 ]; then
  timeout 150 python3 bench/bench_model.py --device cuda --iters 20 --warmup 5 --json "$OUT/bench_model.json" \
    2>&1 | grep -v '^\[' | tee "$OUT/bench_model.txt"
  timeout 60 python3 bench/bench_mapper.py --json "$OUT/bench_mapper.json" 2>&1 | grep -v '^\[' | tee "$OUT/bench_mapper.txt"
fi
# Issue 4: a real fine-tune through the app's Train worker (from scratch: the device machine is offline), with
# mixed precision; throughput, peak memory and final AP per mask name as the Train tab reads them.
if [ "${TRAIN_JOB:-1}" = 1 ]; then
  # The script stops its job when its own --timeout passes; the outer timeout leaves it the time to.
  timeout $(( ${TRAIN_JOB_TIMEOUT:-110} + 60 )) python3 bench/train_job.py --device cuda --amp \
    --iterations "${TRAIN_JOB_ITERS:-200}" --eval-period $(( ${TRAIN_JOB_ITERS:-200} / 2 )) --timeout "${TRAIN_JOB_TIMEOUT:-110}" \
    --json "$OUT/train_job.json" 2>&1 \
    | tail -30 | tee "$OUT/train_job.txt"
fi
if [ "${COMPARE:-1}" = 1 ]; then
  timeout "${COMPARE_TIMEOUT:-370}" python3 bench/compare_single_multi.py --max-iter "${COMPARE_ITERS:-400}" \
    --only ${COMPARE_ONLY:-two-mask primary-only secondary-only} --workers 8 --amp --out /tmp/compare \
    ${COMPARE_OPTS:+--opts $COMPARE_OPTS} \
    --json "$OUT/compare.json" 2>&1 \
    | grep -E 'RESULT|^\||^machine|^preset|^two single|Error|error|Traceback|eta:' | tee "$OUT/compare.txt"
  for d in /tmp/compare/*/; do [ -f "$d/metrics.json" ] && cp "$d/metrics.json" "$OUT/compare_$(basename "$d")_metrics.json"; done
fi
