#!/usr/bin/env bash
# The gating experiment of docs/gating.md: benchmark (8 models x 3 seeds on the phantom bml set, CPU),
# a gate-threshold scan on the validation split for every hard-gated run (fixed weights; the scan's
# operating point stored with the run), paired statistics, where the false-positive lesions lie, the
# hard-gated runs tested again at their validated operating points, and the tables and figures of
# docs/gating/experiment/. Resumable: rerunning it redoes only what is missing (the last three steps
# are cheap and always rerun). One thread per run (a shared 2-core machine).
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
BENCH=runs/gating_phantom
HARD=(sgnet_hard sgnet_hard_gatesup_tau30 sgnet_hard_gatesup_tau70)

sgnet benchmark --config experiments/benchmarks/gating_phantom.yaml
for model in "${HARD[@]}"; do
  for run in "$BENCH/$model"/seed*; do
    [ -f "$run/COMPLETE" ] || continue
    [ -f "$run/gate_scan/summary.json" ] && continue
    sgnet gate-scan --config "$run/config.yaml" --run-dir "$run" --thresholds 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 \
      --choose lesion_f1:WT --store
  done
done
# reference: the ungated SG-Net body, so each gated variant is compared with what it gates
sgnet stats --results "$BENCH" --reference sgnet_nogate --out "$BENCH/stats"
python experiments/gating/distractor_fp.py "$BENCH" --out "$BENCH/distractor_fp"
python experiments/gating/operating_point_test.py "$BENCH" --out "${BENCH}_validated"
for model in "${HARD[@]}"; do
  sgnet stats --results "${BENCH}_validated/results_$model.csv" --reference "$model" \
    --out "${BENCH}_validated/stats_$model"
done
python experiments/gating/summarise.py "$BENCH" --validated "${BENCH}_validated" --out docs/gating/experiment
