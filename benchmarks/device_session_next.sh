#!/usr/bin/env bash
# The measurements planned after run 14 (docs/benchmarks.md), in priority order. They take longer than one
# device call, so they run in the background from a copy outside the carried tree: every call re-copies the
# carried paths, which would pull files from under a job started in them (run 14 lost its zoo that way).
#   first call:  bash benchmarks/device_session_next.sh start    copies the tree to /tmp/nt, starts, waits ~9 min
#   next calls:  bash benchmarks/device_session_next.sh poll     waits up to ~9.5 min or until done
# Each call copies what is done so far from /tmp/nt-out to $OUT. Carry [".gl", ".whl"]; calls must follow each
# other within the machine's 30 s idle release. Carry .tune too where it exists: $OUT/gemm_tiles*.json of an
# earlier session, the tile choices that spare the tuning (the tuner keys them by adapter and driver).
set -u
RUN=/tmp/nt OUTDIR=/tmp/nt-out
if [ "${1:-}" = start ]; then
  rm -rf "$RUN" "$OUTDIR"; mkdir -p "$RUN" "$OUTDIR"
  cp -r src benchmarks pyproject.toml "$RUN"/; cp -rL .gl .whl "$RUN"/; [ -d .tune ] && cp -r .tune "$RUN"/
  (cd "$RUN" && setsid nohup bash benchmarks/device_session_next.sh run > "$OUTDIR/main.log" 2>&1 < /dev/null &)
  wait_s=540
elif [ "${1:-}" = poll ]; then
  wait_s=570
elif [ "${1:-}" = run ]; then
  source benchmarks/device_setup.sh
  O=$OUTDIR
  stage() { echo "$(date +%T) $*" >> "$O/stages.txt"; }
  keep_cache() { mkdir -p "$O/tune"; cp "$NAVITRAIN_CACHE_DIR"/gemm_tiles*.json "$O/tune/" 2>/dev/null; }
  # Tile choices of earlier sessions (a carried .tune/, from this script's $OUT/tune) spare their tuning time.
  mkdir -p "$NAVITRAIN_CACHE_DIR"; cp .tune/gemm_tiles*.json "$NAVITRAIN_CACHE_DIR"/ 2>/dev/null
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader > "$O/gpu.txt"
  python3 -c "import torch,wgpu,torchvision;print(torch.__version__, wgpu.__version__, torchvision.__version__)" >> "$O/gpu.txt"
  stage "1 the zoo with tuning on (issue 23), dense models first"
  python3 benchmarks/bench_wgpu_zoo.py --models vgg16,resnet50,wide_resnet50_2,densenet161,alexnet,convnext_small,resnet18,efficientnet_b0,mobilenet_v2,mnasnet1_0,mobilenet_v3_small,mobilenet_v3_large,regnet_y_400mf,resnext50_32x4d \
    --devices wgpu,wgpu-graph,cuda --no-layers --timeout 360 --json "$O/zoo_tuned.json" > "$O/zoo_tuned.log" 2>&1
  keep_cache
  stage "2 compiled steps, tuning off (issue 19): U-Net with one pass left out, the LM, ResNet-50"
  export NAVITRAIN_WGPU_TUNE=0
  for off in none conv_stats norm; do
    NAVITRAIN_WGPU_FUSION_OFF=$([ $off = none ] && echo "" || echo $off) timeout 150 python3 \
      benchmarks/bench_wgpu_train.py --models unet --devices wgpu-compile --steps 10 --warmup 5 \
      --timeout 90 --json "$O/ablation_$off.json" > "$O/ablation_$off.log" 2>&1
  done
  timeout 200 python3 benchmarks/bench_wgpu_train.py --models unet,tlm --devices wgpu-graph,wgpu-compile,cuda --steps 10 \
    --warmup 5 --timeout 90 --json "$O/compile_ref.json" > "$O/compile_ref.log" 2>&1
  timeout 250 python3 benchmarks/bench_wgpu_zoo.py --models resnet50 --devices wgpu-compile,cuda --no-layers --timeout 200 \
    --json "$O/zoo_resnet50_compile.json" > "$O/zoo_resnet50_compile.log" 2>&1
  stage "3 eager step modes (the eager step's two speeds)"
  timeout 120 python3 benchmarks/step_modes.py --model gpt --size standard --fresh-batches --steps 40 --warmup 5 \
    > "$O/step_modes.log" 2>&1
  timeout 120 python3 benchmarks/step_modes.py --model gpt --size standard --fresh-batches --steps 40 --warmup 5 \
    --pin 3 > "$O/step_modes_pin3.log" 2>&1
  stage done
  touch "$O/DONE"
  exit 0
else
  echo "usage: $0 start|poll|run"; exit 2
fi
for _ in $(seq 1 "$wait_s"); do [ -f "$OUTDIR/DONE" ] && break; sleep 1; done
cp -r "$OUTDIR"/. "$OUT"/ 2>/dev/null
cp /tmp/navitrain-cache/gemm_tiles*.json "$OUT"/ 2>/dev/null  # the tile choices so far (mid-tuning too)
cat "$OUTDIR/stages.txt" 2>/dev/null; grep -hE "^\[|geometric|tuning" "$OUTDIR"/zoo_tuned.log 2>/dev/null | tail -n 45; tail -n 3 "$OUTDIR"/*.log 2>/dev/null | tail -n 40
