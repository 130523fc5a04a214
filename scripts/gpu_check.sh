#!/usr/bin/env bash
# The GPU rows of docs/performance.md in one run: the JAX step (fused vs naive, float32 and bf16)
# at ViT-B/32 batch 32, the largest bf16 batch that fits with its MFU, and the authors' PyTorch
# step on the same GPU; then, in the last DETECTORS_S seconds (default 200; 0 skips them), the
# other detectors' training steps (MC-LCR 256 px b16, MIL ResNet-50 256 px b32, LiSiam 299 px
# b16 x 2 views: JAX plain and bi-level against their PyTorch restatements on the same GPU, TF32 as
# JAX's default float32 precision). Each part has its own time limit and appends its output to
# $OUT/report.md as it finishes (a progress log in $OUT/log.txt), so a run cut short keeps what
# it measured.
#
#   scripts/gpu_check.sh wheels        # here, once: the packages the device image lacks, into .whl/
#   scripts/gpu_check.sh run           # on the GPU machine (reports in $OUT, default /tmp/gpu_check)
#   SMOKE=1 scripts/gpu_check.sh run   # the same plumbing at the tiny preset, on any machine
#
# For the lent H100/H200 machines (docs: /work/.library/device/README.md), with .whl carried:
#   run(command="bash scripts/gpu_check.sh run", carry=[".whl"], timeout_s=590)
# The device image has JAX (CUDA), flax, optax, orbax, torch and transformers but not grain,
# ml_collections or tensorboardX: `wheels` fetches those for Python 3.12 (add `/.whl/` to
# .git/info/exclude so they stay out of git).
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "wheels" ]]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    grain==0.2.18 array_record==0.8.6 ml_collections==1.1.0 portpicker tensorboardX==2.6.5
  ls -la .whl
  exit
fi
if [[ "${1:-}" != "run" ]]; then
  sed -n '2,16p' "$0"; exit 2
fi

OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
if ! python3 -c "import grain, ml_collections, tensorboardX" 2> /dev/null && compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
start=$(date +%s)
DEADLINE="${DEADLINE:-560}"   # seconds for the whole run (a device call may last 600)
DETECTORS_S="${DETECTORS_S:-200}"  # of which the last ones go to the other detectors' steps
RESERVE=$DETECTORS_S          # what the SJEDD parts leave
left() { echo $(( DEADLINE - RESERVE - ($(date +%s) - start) )); }
log() { echo "[gpu_check +$(( $(date +%s) - start ))s] $*" | tee -a "$OUT/log.txt"; }
TMP=$(mktemp -d)
report() {  # title file: appends a part's whole output to $OUT/report.md (two files come back: it and log.txt)
  { echo; echo "## $1"; echo; cat "$2"; } >> "$OUT/report.md"
  tail -n 4 "$2"
}

if [[ -n "${SMOKE:-}" ]]; then  # the plumbing only: tiny shapes, one step
  PRESET=tiny; B=4; STEPS=1; WARM=0; BIG="8 16"; T=300
else
  PRESET=ViT-B/32; B=32; STEPS=10; WARM=2; BIG="256 512 1024"; T=200
fi

log "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo no nvidia-smi)"
python3 -c "import jax, flax, optax, torch, transformers; print('jax', jax.__version__, jax.devices(), '| flax', flax.__version__, '| torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| transformers', transformers.__version__)" 2>&1 | tee -a "$OUT/log.txt"

bench() {  # name timeout args...: scripts/benchmark.py on configs/ffpp.py at $PRESET
  local name=$1 t=$2; shift 2
  set -- --config configs/ffpp.py --preset "$PRESET" "$@"
  (( $(left) < t )) && t=$(left)
  (( t < 30 )) && { log "$name: skipped, $(left) s left"; return 1; }
  log "$name (limit ${t} s): python scripts/benchmark.py $*"
  timeout "$t" python3 scripts/benchmark.py "$@" > "$TMP/$name.log" 2>&1
  local rc=$?
  log "$name: rc=$rc$( [[ $rc == 124 ]] && echo ' (time limit)')"
  report "$name (rc=$rc)" "$TMP/$name.log"
  return $rc
}

# In order of what the issue needs most, each part as far as the deadline allows.
# 1. The target: fused vs naive at batch 32, same precision (float32); fused runs the stacked
#    scan_layers blocks (the default), unrolled the same step with them unrolled.
bench "f32_b${B}" "$T" --batch_size "$B" --modes fused,unrolled,naive \
  --steps "$STEPS" --warmup "$WARM" --nopipeline

# 2. The authors' PyTorch step on the same GPU, float32 (TF32 off, then on).
torch_release() {  # suffix flags...
  local suffix=$1; shift
  (( $(left) < 60 )) && { log "torch release $*: skipped, $(left) s left"; return; }
  log "torch release $*"
  timeout 90 python3 scripts/benchmark_torch_release.py --preset "$PRESET" --batch_size "$B" --steps "$STEPS" \
    --warmup "$WARM" --device "$( [[ -n "${SMOKE:-}" ]] && echo cpu || echo cuda )" "$@" \
    > "$TMP/torch$suffix.log" 2>&1
  local rc=$?
  log "torch release $*: rc=$rc"
  report "torch release $* (rc=$rc)" "$TMP/torch$suffix.log"
}
torch_release ""

# 3. bf16 at a large batch, fused only: MFU and memory.
bf16_fused() {  # batch
  bench "bf16_fused_b$1" "$T" --batch_size "$1" --config.model.dtype=bfloat16 --modes fused --steps 5 --warmup 1 \
    --nopipeline --noflop_check
}
set -- $BIG
bf16_fused "$1"
big_ok=$?

# 4. bf16 fused vs naive at batch 32.
bench "bf16_b${B}" "$T" --batch_size "$B" --config.model.dtype=bfloat16 --modes fused,naive --steps "$STEPS" --warmup "$WARM" --nopipeline --noflop_check

# 5. Larger bf16 batches until one fails (the largest that fits), then the PyTorch step with TF32.
if (( big_ok == 0 )); then
  shift
  for b in "$@"; do
    bf16_fused "$b" || { log "batch $b did not finish (its output is in report.md): the sweep stops"; break; }
  done
fi
torch_release _tf32 --tf32

# 6. The other detectors' steps, JAX (plain, bi-level) vs their PyTorch restatements on the GPU.
RESERVE=0
detector() {  # name share-of-what-is-left script args...: one benchmarks/*_vs_torch.py run
  local name=$1 share=$2 script=$3; shift 3
  local t=$(( $(left) * share / 100 ))
  (( t < 30 )) && { log "$name: skipped, $(left) s left"; return 1; }
  log "$name (limit ${t} s): python $script $*"
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.6 timeout "$t" python3 "$script" "$@" > "$TMP/$name.log" 2>&1
  local rc=$?
  log "$name: rc=$rc$( [[ $rc == 124 ]] && echo ' (time limit)')"
  report "$name (rc=$rc)" "$TMP/$name.log"
}
if (( DETECTORS_S > 0 )); then
  if [[ -n "${SMOKE:-}" ]]; then
    DEV=cpu; MC=synthetic; MIL=synthetic; LI=synthetic; LIB=4
  else
    DEV=cuda; MC=256; MIL=r50; LI=299; LIB=16
  fi
  detector "mc_lcr_$MC" 34 benchmarks/mc_lcr_vs_torch.py --sizes "$MC" --repeats 5 --torch_device "$DEV"
  detector "mil_$MIL" 50 benchmarks/mil_ranking_vs_torch.py --sizes "$MIL" --repeats 5 --torch_device "$DEV"
  detector "lisiam_$LI" 100 benchmarks/lisiam_vs_torch.py --sizes "$LI" --batch_size "$LIB" --repeats 5 --torch_device "$DEV"
fi
log "done"
