#!/usr/bin/env bash
# One command for a bare GPU machine (no network): install what .device/ brought, check
# `import ray, pydantic, gridrun` and the GPU, run the measurements, leave logs and JSON under
# $OUT, print a summary.
#
#   bash benchmarks/gpu/run.sh [STAGE ...] [--device cpu] [--quick]
#
# Stages (default: all, in this order): check throughput fused packing mps time steps.
# A session has 10 minutes per command: run the stages over several calls if need be, e.g.
#   run 1: bash benchmarks/gpu/run.sh check throughput fused
#   run 2: bash benchmarks/gpu/run.sh packing mps time steps
# Grids: stage grid:NAME launches (or resumes) grids/NAME.yaml for GRID_SECONDS (default 480),
# stops it cleanly with Ctrl-C's signal, writes its report and tars the experiment folder to
# $OUT/NAME_runs.tgz; the next session copies that to .device/NAME_runs.tgz (carried with
# .device; the stage extracts it into runs/ when runs/NAME is absent) and runs the same stage
# again to resume where it stopped, e.g.
#   bash benchmarks/gpu/run.sh check grid:tiny_nets
# Build .device/ first, here: bash ../shared/tools/device-bundle.sh; mkdir -p .device/mnist;
# cp ../shared/data/mnist/*.gz .device/mnist/   (and carry .device with the device tool).
# --device cpu --quick is the CPU rehearsal: the same steps, small sizes, in a fresh Python
# environment that has only the GPU image's packages.
set -uo pipefail
cd "$(dirname "$0")/../.."
DEVICE=cuda; QUICK=0; STAGES=()
for a in "$@"; do
  case "$a" in
    --device) ;; cpu|cuda) DEVICE=$a ;; --device=*) DEVICE=${a#*=} ;;
    --quick) QUICK=1 ;;
    *) STAGES+=("$a") ;;
  esac
done
[ ${#STAGES[@]} -eq 0 ] && STAGES=(check throughput fused packing mps time steps)
OUT=${OUT:-/tmp/gridrun-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 GRIDRUN_NO_DOWNLOAD=1
export GRIDRUN_DATA=${GRIDRUN_DATA:-$PWD/.device/mnist}
PY=${PYTHON:-python3}

# 1. what the image lacks: a slim Ray and the wheels beside it (once per machine)
# (only where the Python lacks them: a stale /tmp/site must not shadow a working Ray)
if ! $PY -c "import ray, pydantic" 2>/dev/null; then
  if ! PYTHONPATH=/tmp/site $PY -c "import ray, pydantic" 2>/dev/null; then
    mkdir -p /tmp/site && tar -xJf .device/ray-slim.tar.xz -C /tmp/site \
      && $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/*.whl \
      || { echo "install of .device/ failed"; exit 2; }
  fi
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if [ "$QUICK" = 1 ]; then
  TP="--steps 30 --batch 128"; FU="--ks 1,2,4 --steps 10 --max-processes 2"
  PK="--ns 1,2 --subset 2000 --epochs 1"; TT="--epochs 1 --subset 5000 --recipes tinynet_7k b256 sgd-nesterov one-cycle 0.3"
  SS="--steps 3 --batch 64 --variants eager,compile"; WK="0 2"
else
  TP="--steps 300 --batch 128"; FU="--ks 1,2,4,8,16,32 --steps 100 --batch 128 --max-processes 16"
  PK="--ns 1,2,4,8,16 --subset 20000 --epochs 2"; TT=""; SS="--models tinynet_7k,resnet20,vgg_allconv --steps 100 --batch 128,512 --variants eager,channels_last+bf16,cudnn-benchmark,compile,cuda-graph"; WK="0 4 8"
fi

run() {  # run NAME CMD...: log to $OUT/NAME.log, keep going on failure
  local name=$1; shift
  echo "== $name: $*"
  local t=$SECONDS
  "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - t)) s" | tee -a "$OUT/summary.txt"
}

for stage in "${STAGES[@]}"; do
  case $stage in
    check)
      run check $PY -c "
import sys, platform, torch, ray, pydantic, gridrun
print('python', platform.python_version(), '| torch', torch.__version__, '| ray', ray.__version__,
      '| pydantic', pydantic.__version__, '| gridrun', gridrun.__version__)
print('cuda available:', torch.cuda.is_available(), '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')
from gridrun.data import load_arrays; a = load_arrays(); print('MNIST:', {k: v.shape for k, v in a.items()})
sys.exit(0 if torch.cuda.is_available() or '$DEVICE' == 'cpu' else 3)"
      nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$OUT/check.log" ;;
    throughput)
      run throughput $PY benchmarks/throughput.py --device $DEVICE --model tinynet_7k,resnet20 $TP \
        --workers $WK --json "$OUT/throughput.json" ;;
    fused)
      run fused $PY benchmarks/fused.py --device $DEVICE $FU --json "$OUT/fused.json" ;;
    packing)
      run packing $PY benchmarks/packing.py $PK --gpus $([ $DEVICE = cpu ] && echo 0 || echo 1) \
        --json "$OUT/packing.json" ;;
    mps)
      if [ $DEVICE = cuda ] && command -v nvidia-cuda-mps-control >/dev/null; then
        export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
        mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
        if nvidia-cuda-mps-control -d; then
          run mps $PY benchmarks/packing.py $PK --modes ray --gpus 1 --label MPS --json "$OUT/mps.json"
          echo quit | nvidia-cuda-mps-control
        else echo "== mps: the MPS daemon could not be started" | tee -a "$OUT/summary.txt"; fi
      else echo "== mps: skipped (no CUDA or no nvidia-cuda-mps-control)" | tee -a "$OUT/summary.txt"; fi ;;
    time)
      if [ "$QUICK" = 1 ]; then
        run time $PY benchmarks/time_to_acc.py --device $DEVICE --epochs 1 --subset 5000 \
          --recipes "tinynet_7k b256 sgd-nesterov one-cycle 0.3" --json "$OUT/time.json"
      else
        run time $PY benchmarks/time_to_acc.py --device $DEVICE --json "$OUT/time.json"
      fi ;;
    steps)
      run steps $PY benchmarks/step_speed.py --device $DEVICE $SS --json "$OUT/steps.json" ;;
    grid:*)
      g=${stage#grid:}
      [ -f "grids/$g.yaml" ] || { echo "no grids/$g.yaml"; exit 2; }
      if [ ! -d "runs/$g" ] && [ -f ".device/${g}_runs.tgz" ]; then  # an earlier session's folder
        rm -rf /tmp/grid-in && mkdir -p /tmp/grid-in runs && tar xzf ".device/${g}_runs.tgz" -C /tmp/grid-in \
          && mv "$(find /tmp/grid-in -maxdepth 2 -type d -name "$g" | head -1)" "runs/$g" \
          && echo "== grid $g: resuming the folder from .device/${g}_runs.tgz" | tee -a "$OUT/summary.txt"
      fi
      GPU_ARGS=$([ $DEVICE = cuda ] && echo "resources.gpu=${GRID_GPU:-0.1} resources.cpu=1")
      run "grid_$g" timeout -s INT "${GRID_SECONDS:-480}" $PY -m gridrun.cli launch "grids/$g.yaml" \
        --storage runs $GPU_ARGS
      run "report_$g" $PY -m gridrun.cli report "runs/$g" --out "$OUT/$g.md"
      tar czf "$OUT/${g}_runs.tgz" -C runs "$g" && ls -l "$OUT/${g}_runs.tgz" | tee -a "$OUT/summary.txt"
      [ $DEVICE = cuda ] && nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv 2>&1 | tail -1 >> "$OUT/summary.txt" ;;
    *) echo "unknown stage $stage (check throughput fused packing mps time steps grid:NAME)"; exit 2 ;;
  esac
done
echo; echo "== summary ($OUT)"; cat "$OUT/summary.txt"
