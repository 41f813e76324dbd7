#!/usr/bin/env bash
# GPU readiness check: one GPU, at most ~5 minutes, one table (see benchmarks/gpu_check.py for what each row means).
#
#   benchmarks/gpu_check.sh                      # on a machine with one CUDA GPU
#   benchmarks/gpu_check.sh --peak-tflops 989    # MFU denominator for a GPU the script does not know
#   benchmarks/gpu_check.sh --cpu-dry-run        # the same code paths on CPU at tiny sizes (NOT GPU figures)
#
# Installs nothing: it uses the project as installed in the current Python (PYTHON=... to choose another).
# Rows: TSF-B bf16 train step (SDPA flash vs math) with MFU, TSF-L@336 + gradient checkpointing at batch 8,
# narrator fp16 tokens/s at 64 clips, torchcodec NVDEC vs PyAV decode (skipped when torchcodec is absent), and a
# 1-GPU torchrun DDP smoke step. Each section runs in its own process under its own time limit, so one failure
# (out of memory, a missing kernel) is reported in its row and the others still run.
set -u -o pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python}"
MODE=gpu
EXTRA=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cpu-dry-run) MODE=cpu ;;
        --peak-tflops) EXTRA+=(--peak-tflops "$2"); shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done

if [[ "$MODE" == gpu ]] && ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device visible to $PY (torch.cuda.is_available() is False)." >&2
    echo "gpu_check: run '$0 --cpu-dry-run' to exercise the code paths on CPU." >&2
    exit 3
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
START=$SECONDS

# name, time limit (s): the limits add up to 300 s, so the whole check ends within ~5 minutes even when sections hang
run_section() {
    local name="$1" limit="$2"
    local t0=$SECONDS
    local rc=0
    [[ "$MODE" == cpu ]] && limit=$((limit * 3))  # a dry run on a few shared CPU cores is slower than a GPU
    timeout --kill-after=10 "$limit" "$PY" benchmarks/gpu_check.py --mode "$MODE" --section "$name" \
        --json "$WORK/$name.json" ${EXTRA[@]+"${EXTRA[@]}"} > "$WORK/$name.log" 2>&1 || rc=$?
    if [[ $rc -ne 0 || ! -s "$WORK/$name.json" ]]; then
        local why="failed rc=$rc"
        [[ $rc -eq 124 || $rc -eq 137 ]] && why="timed out after ${limit} s"
        printf '{"section": "%s", "rows": [{"check": "%s", "status": "%s"}]}\n' "$name" "$name" "$why" \
            > "$WORK/$name.json"
        tail -n 5 "$WORK/$name.log" >&2
    fi
    echo "gpu_check: $name done in $((SECONDS - t0)) s" >&2
}

run_section env 30
run_section tsf_b 80
run_section tsf_l 70
run_section narrator 40
run_section decode 35
run_section ddp 45

"$PY" benchmarks/gpu_check.py --mode "$MODE" --report \
    "$WORK/env.json" "$WORK/tsf_b.json" "$WORK/tsf_l.json" "$WORK/narrator.json" "$WORK/decode.json" \
    "$WORK/ddp.json"
echo
echo "total: $((SECONDS - START)) s"
