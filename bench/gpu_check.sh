#!/usr/bin/env bash
# One prepared GPU check for a session that is lent a device (one H100-class GPU, ~10 minutes per call).
#
#   bash bench/gpu_check.sh            # all phases, in order, within BUDGET seconds (default 570)
#   bash bench/gpu_check.sh benches    # phases 1-3 only (~7 min)
#   bash bench/gpu_check.sh study      # phase 4 only: run or resume the gpu QiD study within BUDGET
#
# Phases and their estimated H100 wall times (not yet measured: no device has run this):
#   1. fused fake-quant kernels compiled for the GPU against their definitions (tests/qat/test_fused.py) ~ 30 s
#   2. training MFU: ~125M Llama (d768, 12 layers), seq 1024, batch 16, bf16, torch.compile         ~ 90 s
#   3. QAT step overhead per recipe (ste, lsq, quest; W4A4; bf16; compiled) on the same model        ~ 4 min
#      and the same eager with the Triton fake-quant kernels                                          ~ 1 min
#   4. `qscale study qid --preset gpu`, resumable, with the time left. The whole preset is estimated at
#      ~10-15 min (training 5 sizes x 2,048 small steps ~1-3 min; 360 cells, GPTQ's column loop dominating):
#      with one 10-minute call per device session, run `study` alone, then `study` again to finish it.
# Results: $OUT (set by the device runner) or ./gpu-check: one log per phase, summary.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
case $what in all|benches|study) ;; *) echo "usage: $0 [all|benches|study]" >&2; exit 2;; esac
OUT=${OUT:-gpu-check}
BUDGET=${BUDGET:-570}
PY=${PY:-python}
STUDY_DIR=${STUDY_DIR:-qscale-runs/qid-gpu}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
phase() {  # phase NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.log, note the result
    local name=$1 limit=$2; shift 2
    local t0=$(date +%s)
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: rc=$rc wall=$(( $(date +%s) - t0 ))s" | tee -a "$OUT/summary.txt"
    tail -n 25 "$OUT/$name.log"
}

study() {
    local limit=$(( $(left) - 10 ))
    if (( limit < 30 )); then echo "study: no time left" | tee -a "$OUT/summary.txt"; return; fi
    phase study_qid_gpu "$limit" "$PY" -m qscale.cli study qid --preset gpu --out "$STUDY_DIR" --no-progress
    "$PY" - "$STUDY_DIR" >>"$OUT/summary.txt" 2>&1 <<'PYEOF'
import sqlite3, sys
from pathlib import Path
db = Path(sys.argv[1]) / "study.sqlite"
if db.exists():
    con = sqlite3.connect(db)
    for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"):
        print(f"  study table {t}: {con.execute(f'SELECT COUNT(*) FROM {t}').fetchone()[0]} rows")
PYEOF
}

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; "$PY" -c \
  "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; } \
  >>"$OUT/summary.txt" 2>&1
if [[ $what != study ]]; then
phase fused_kernels 120 env TRITON_INTERPRET=0 "$PY" -m pytest -q -p no:cacheprovider tests/qat/test_fused.py
phase train_mfu 180 "$PY" bench/train_throughput.py --device cuda --compile --batch-size 16 --seq-len 1024 --steps 20 --warmup 5
phase qat_overhead 300 "$PY" bench/qat_overhead.py --device cuda --hidden 768 --layers 12 --batch 16 --seq 1024 \
    --vocab 32768 --recipes ste,lsq,quest --warmup 3 --steps 10
phase qat_overhead_eager_triton 120 "$PY" bench/qat_overhead.py --device cuda --no-compile --fake-quant triton \
    --hidden 768 --layers 12 --batch 16 --seq 1024 --vocab 32768 --recipes ste,lsq,quest --warmup 3 --steps 10
fi
if [[ $what != benches ]]; then study; fi
cat "$OUT/summary.txt"
