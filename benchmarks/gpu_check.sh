#!/usr/bin/env bash
# peft-bench's GPU check: the training-step variants (time/step, tokens/s, host ops per step, ops per generated
# token), the throughput benchmark (naive / HF Trainer + peft / harness, GQA attention FLOPs, % of the bf16
# matmul ceiling), the `gpu` preset with every technique, and translate --best; one report in OUTDIR/log
# plus JSON files. Every stage runs under its own time limit.
#
# usage: benchmarks/gpu_check.sh OUTDIR            (from the project root, on a CUDA machine)
# On an offline GPU box, build a bundle here with ../shared/gpu/make-bundle.sh (the shared kit), copy it over,
# unpack proj.tar.xz and run this script with GPU_BUNDLE=BUNDLE_DIR: it unpacks the bundled packages
# (site312.tar.xz) and builds a random-weight twin of the default model from gemma-3-270m-config/.
# Environment: STAGES (default "variants throughput preset translate"), DEVICE (cuda; cpu to rehearse),
#   MODEL (a model folder or embedded name; default: the random twin when GPU_BUNDLE is set, else gemma-3-270m),
#   VARIANT_ARGS (VARIANT_ARGS_A for a stage named variantsA) / THROUGHPUT_ARGS / PRESET_ARGS (extra arguments), T_<STAGE> (seconds per stage).
set -u
out=$(mkdir -p "${1:?usage: gpu_check.sh OUTDIR}" && cd "$1" && pwd)
proj=$(cd "$(dirname "$0")/.." && pwd)
cd "$proj"
exec > >(tee -a "$out/log") 2>&1
t0=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - t0 ))s] $*"; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
export PYTHONPATH="$proj${PYTHONPATH:+:$PYTHONPATH}"
device=${DEVICE:-cuda}
py=${PYTHON:-python3}
if [[ -n "${GPU_BUNDLE:-}" ]]; then
  stamp "unpack bundled packages"
  mkdir -p /tmp/site && tar xJf "$GPU_BUNDLE/site312.tar.xz" -C /tmp/site || exit 9
  export PYTHONPATH="$PYTHONPATH:/tmp/site" PEFT_BENCH_CACHE=${PEFT_BENCH_CACHE:-/tmp/pbcache}
  if [[ -z "${MODEL:-}" ]]; then
    "$py" -m benchmarks.random_model "$proj/gemma-3-270m-config" /tmp/gemma-rand || exit 8
    MODEL=/tmp/gemma-rand
  fi
fi
model=${MODEL:-gemma-3-270m}
if [[ $device == cuda ]]; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw --format=csv -l 1 > "$out/smi.csv" 2>&1 &
  smi=$!
fi
"$py" - <<'PY'
import importlib, torch
for name in ("torch", "transformers", "peft", "ray", "optuna", "bitsandbytes", "sacrebleu"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:  # noqa: BLE001
        print(name, "missing:", exc)
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
PY
git -C "$proj" rev-parse --short HEAD 2>/dev/null || cat "$proj/.commit" 2>/dev/null || true
stage() {  # name, default limit, command...
  local name=$1 limit=$2; shift 2
  local var="T_${name^^}"
  stamp "$name (limit ${!var:-$limit}s)"
  timeout "${!var:-$limit}" "$@"
  echo "$name rc=$?"
}
for s in ${STAGES:-variants throughput preset translate}; do
  case $s in
    variants*)  # variants, variantsA, variantsB, ...: each with its own VARIANT_ARGS[_A] and T_VARIANTS[A]
      tag=${s#variants}; args="VARIANT_ARGS${tag:+_$tag}"
      stage "$s" 150 "$py" -m benchmarks.step_variants --device "$device" --model "$model" \
        --json "$out/$s.json" ${!args:---decode} ;;
    throughput)
      stage throughput 90 "$py" -m benchmarks.throughput --device "$device" --models "$model" --steps 10 \
        --variants strong,harness --skip-eval --ceiling-size 8192 --json "$out/throughput.json" ${THROUGHPUT_ARGS:-} ;;
    preset)
      stage preset 120 "$py" run_benchmark.py --config gpu --device "$device" --models "$model" --name gpu-check \
        ${PRESET_ARGS:-} ;;
    translate)
      stage translate 40 "$py" -m harness.translate --best --device "$device" \
        --text "Where is the train station?" --text "The weather is nice today." ;;
    *) echo "unknown stage $s" ;;
  esac
done
if [[ -n "${smi:-}" ]]; then
  kill "$smi" 2>/dev/null
  "$py" - "$out/smi.csv" <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1]))][1:]
util = [int(r[1].split()[0]) for r in rows if len(r) == 4 and r[1].split()[0].isdigit()]
if util:
    busy = [u for u in util if u > 0]
    print(f"GPU utilisation: mean {sum(util) / len(util):.0f}% over {len(util)} s; "
          f"mean {sum(busy) / max(1, len(busy)):.0f}% over the {len(busy)} s with any work")
PY
fi
stamp done
