#!/usr/bin/env bash
# One command for a bare GPU machine (no network): install what .device/ brought, check
# `import ray, pydantic, gridrun` and the GPU, run the measurements, leave logs and JSON under
# $OUT, print a summary.
#
#   bash tools/gpu/run.sh [STAGE ...] [--device cpu] [--quick]
#
# Stages (default: all, in this order): check graphs throughput fused packing mps time steps.
# engine (not in the default list): `python -m benchmarks engine`, the engine's strategies side by side.
# graphs: the trainer's CUDA-graph step (`cuda_graph: true`) against the same trainer without it,
# one trial and one fused group, speed ratio and accuracy of both (`python -m benchmarks graph_step`).
# Every benchmark stage runs through the harness (`python -m benchmarks NAME --device D --out
# $OUT/STAGE.jsonl`): one JSON row per figure, the layout of benchmarks/__init__.py's ROW.
# A session has 10 minutes per command: run the stages over several calls if need be, e.g.
#   run 1: bash tools/gpu/run.sh check throughput fused
#   run 2: bash tools/gpu/run.sh packing mps time steps
# Grids: stage grid:NAME launches (or resumes: from .device-grid/, else from the committed slim
# export reports/runs/NAME) grids/NAME.yaml for GRID_SECONDS (default 480)
# under the CUDA MPS daemon (GRID_MPS=0: without), stops it cleanly with Ctrl-C's signal,
# writes its report ($OUT/NAME.md) and slim export ($OUT/runs/NAME: commit it) and tars the files the launch wrote to
# $OUT/NAME_new.tgz.part-aa, -ab, ...; here, extract those over runs/NAME
# (`cat NAME_new.tgz.part-* | tar xz -C runs`), run `gridrun report runs/NAME`, and for the
# next session `python tools/gpu/carry_grid.py runs/NAME .device-grid/NAME_runs.tgz`
# (the stage extracts it into runs/ when runs/NAME is absent). .device/ and a grid's folder
# rarely fit in one call's 64 MiB together: call 1 carries .device (Ray and MNIST stay in /tmp
# on the warm machine), call 2 right after carries only .device-grid, e.g.
#   call 1, carry [".device"]:      bash tools/gpu/run.sh check
#   call 2, carry [".device-grid"]: bash tools/gpu/run.sh grid:tiny_nets
# A grid of big nets (the zoo: checkpoints of hundreds of MB) cannot travel; it resumes from this
# machine's own runs/ on later calls while the machine stays warm, and GRID_BACK=results brings
# back only logits, metrics and summaries (no weights, no checkpoints).
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
[ ${#STAGES[@]} -eq 0 ] && STAGES=(check graphs throughput fused packing mps time steps)
OUT=${OUT:-/tmp/gridrun-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 GRIDRUN_NO_DOWNLOAD=1
# MNIST: the carried copy, kept in /tmp for later calls on the same (warm) machine, which may
# carry a grid folder (.device-grid/) instead of .device/ (both do not fit in one call's 64 MiB)
if [ -d .device/mnist ]; then mkdir -p /tmp/gridrun-mnist && cp -u .device/mnist/* /tmp/gridrun-mnist/; fi
export GRIDRUN_DATA=${GRIDRUN_DATA:-/tmp/gridrun-mnist}
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
  SS="--steps 3 --batch 64 --variants eager,compile"; WK="0 2"; GS="--epochs 2 --k 2 --subset 2000"
else
  TP="--steps 300 --batch 128"; FU="--ks 1,2,4,8,16,32 --steps 100 --batch 128 --max-processes 16"
  PK="--ns 1,2,4,8,16 --subset 55000 --epochs 3"; TT=""; SS="--models tinynet_7k,resnet20,vgg_allconv --steps 100 --batch 128,512 --variants eager,channels_last+bf16,cudnn-benchmark,compile,cuda-graph"; WK="0 4 8"; GS="--epochs 2 --k 32"
fi
SS=${STEPS_ARGS:-$SS}  # e.g. STEPS_ARGS="--models tinynet_7k --batch 128 --variants eager,compile"

run() {  # run NAME CMD...: log to $OUT/NAME.log, keep going on failure
  local name=$1; shift
  echo "== $name: $*"
  local t=$SECONDS
  "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - t)) s" | tee -a "$OUT/summary.txt"
}

mps_start() {  # mps_start WHAT: start the CUDA MPS daemon (kernels of several processes then share
  # the GPU at once instead of taking turns); says so in the summary either way
  if [ $DEVICE = cuda ] && command -v nvidia-cuda-mps-control >/dev/null; then
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
    mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
    if nvidia-cuda-mps-control -d; then echo "== $1: CUDA MPS daemon started" | tee -a "$OUT/summary.txt"; return 0; fi
    echo "== $1: the MPS daemon could not be started" | tee -a "$OUT/summary.txt"
  else echo "== $1: no MPS (no CUDA or no nvidia-cuda-mps-control)" | tee -a "$OUT/summary.txt"; fi
  return 1
}
mps_stop() { echo quit | nvidia-cuda-mps-control; }

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
    graphs)
      run graphs $PY -m benchmarks graph_step --device $DEVICE $GS --out "$OUT/graphs.jsonl" ;;
    throughput)
      run throughput $PY -m benchmarks throughput --device $DEVICE --model tinynet_7k,resnet20 $TP \
        --workers $WK --out "$OUT/throughput.jsonl" ;;
    fused)
      run fused $PY -m benchmarks fused --device $DEVICE $FU --out "$OUT/fused.jsonl" ;;
    engine)  # the engine's strategies (loop, vmap, blockdiag) x eager/graph, K in 1, 8, 32
      run engine $PY -m benchmarks engine --device $DEVICE $([ "$QUICK" = 1 ] && echo --ks 1,8 --batch 32) \
        --out "$OUT/engine.jsonl" ;;
    packing)
      run packing $PY -m benchmarks packing --device $DEVICE $PK --gpus $([ $DEVICE = cpu ] && echo 0 || echo 1) \
        --out "$OUT/packing.jsonl" ;;
    mps)
      if mps_start mps; then
        run mps $PY -m benchmarks packing --device $DEVICE $PK --modes ray --gpus 1 --label MPS --out "$OUT/mps.jsonl"
        mps_stop
      fi ;;
    time)
      if [ "$QUICK" = 1 ]; then
        run time $PY -m benchmarks time_to_acc --device $DEVICE --epochs 1 --subset 5000 \
          --recipes "tinynet_7k b256 sgd-nesterov one-cycle 0.3" --out "$OUT/time.jsonl"
      else
        run time $PY -m benchmarks time_to_acc --device $DEVICE ${TIME_ARGS:-} --out "$OUT/time.jsonl"  # TIME_ARGS=--cuda-graph
      fi ;;
    steps)
      run steps $PY -m benchmarks step_speed --device $DEVICE $SS --out "$OUT/steps.jsonl" ;;
    grid:*)
      g=${stage#grid:}
      [ -f "grids/$g.yaml" ] || { echo "no grids/$g.yaml"; exit 2; }
      # an earlier session's folder (tools/gpu/carry_grid.py wrote it): .device-grid/ or
      # .device/NAME_runs.tgz, or its parts NAME_runs.tgz.part-aa, -ab, ...
      src=$(ls .device-grid/${g}_runs.tgz* .device/${g}_runs.tgz* 2>/dev/null | sort | head -1)
      if [ ! -d "runs/$g" ] && [ -n "$src" ]; then
        rm -rf /tmp/grid-in && mkdir -p /tmp/grid-in runs && cat $(ls ${src%.part-*}* | sort) | tar xz -C /tmp/grid-in \
          && mv "$(find /tmp/grid-in -maxdepth 2 -type d -name "$g" | head -1)" "runs/$g" \
          && echo "== grid $g: resuming the folder from ${src%.part-*}" | tee -a "$OUT/summary.txt"
      fi
      # else the committed slim export of an earlier window (reports/runs/NAME): its finished
      # trials stay finished, the rest run (an export holds no checkpoints: those restart)
      if [ ! -d "runs/$g" ] && [ -d "reports/runs/$g" ]; then
        $PY -m gridrun.cli restore "reports/runs/$g" --storage runs 2>&1 | tee -a "$OUT/summary.txt"
      fi
      GPU_ARGS=$([ $DEVICE = cuda ] && echo "resources.gpu=${GRID_GPU:-0.1} resources.cpu=1")
      # MPS by default: the tiny_nets grid's ten fused groups trained 1.48x the images per second
      # under it (1.3-1.6x per group; reports/benchmarks.md); GRID_MPS=0 turns it off
      MPS=0; [ "${GRID_MPS:-1}" = 1 ] && mps_start "grid $g" && MPS=1
      touch /tmp/grid-start-$g; sleep 1
      # GRID_ARGS: more KEY=VALUE changes, e.g. GRID_ARGS=base.cuda_graph=true (a plumbing field:
      # a resumed grid's finished trials stay valid)
      run "grid_$g" timeout -s INT "${GRID_SECONDS:-480}" $PY -m gridrun.cli launch "grids/$g.yaml" \
        $GPU_ARGS ${GRID_ARGS:-} --storage runs  # KEY=VALUE changes come right after the spec
      [ $MPS = 1 ] && mps_stop
      mkdir -p /tmp/report-$g && run "report_$g" $PY -m gridrun.cli report "runs/$g" --out "/tmp/report-$g/$g.md"
      cp /tmp/report-$g/$g.md "$OUT/" 2>/dev/null
      # the results that outlive the machine: the slim export (~25 KB a trial; no weights or
      # checkpoints) and the report, to be committed here under reports/runs/NAME and reports/
      rm -rf "$OUT/runs/$g" && mkdir -p "$OUT/runs" \
        && run "export_$g" $PY -m gridrun.cli export "runs/$g" --out "$OUT/runs/$g" \
        && echo "== grid $g: here, copy the returned runs/$g to reports/runs/$g, run gridrun report reports/runs/$g, commit both" | tee -a "$OUT/summary.txt"
      # back: only what this launch wrote (at most 8 files come back; the whole folder of a
      # finished grid is too big): extract it over the folder here, then `gridrun report` here
      # GRID_BACK=results leaves out weights and checkpoints (a zoo net's are tens of MB; the
      # report needs logits, metrics and summaries): the grid then resumes only on this machine
      SKIP=(); [ "${GRID_BACK:-all}" = results ] && SKIP=(-not -path "*/checkpoint_*" -not -name model.pt -not -name state.pt)
      (cd runs && find "$g" -type f -newer /tmp/grid-start-$g "${SKIP[@]}") > /tmp/grid-new-$g.txt
      tar czf - -C runs -T /tmp/grid-new-$g.txt | split -b 15m - "$OUT/${g}_new.tgz.part-" \
        && echo "== grid $g: $(wc -l < /tmp/grid-new-$g.txt) new or changed files in $(ls "$OUT/${g}_new.tgz".part-* | wc -l) part(s):" \
             "cat ${g}_new.tgz.part-* | tar xz -C runs" | tee -a "$OUT/summary.txt"
      [ $DEVICE = cuda ] && nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv 2>&1 | tail -1 >> "$OUT/summary.txt" ;;
    *) echo "unknown stage $stage (check graphs throughput fused engine packing mps time steps grid:NAME)"; exit 2 ;;
  esac
done
echo; echo "== summary ($OUT)"; cat "$OUT/summary.txt"
