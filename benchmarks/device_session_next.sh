#!/usr/bin/env bash
# The measurements planned after run 15 (docs/benchmarks.md), in priority order (run 16). They take longer than one
# device call, so they run in the background from a copy outside the carried tree: every call re-copies the
# carried paths, which would pull files from under a job started in them (run 14 lost its zoo that way).
#   first call:  bash benchmarks/device_session_next.sh start    copies the tree to /tmp/nt, starts, waits ~9 min
#   next calls:  bash benchmarks/device_session_next.sh poll     waits up to ~9.5 min or until done
#   or, with little device time left: start-short (one call; WAIT_S seconds, default 480)
# Each call packs what is done so far from /tmp/nt-out into $OUT/all.tgz. Carry [".gl", ".whl"]; calls must follow each
# other within the machine's 30 s idle release. Carry .tune too where it exists: $OUT/gemm_tiles*.json of an
# earlier session, the tile choices that spare the tuning (the tuner keys them by adapter and driver).
set -u
RUN=/tmp/nt OUTDIR=/tmp/nt-out
# The setup both plans share: the device's Vulkan loader, the log folder, the card and versions.
begin() {
  source benchmarks/device_setup.sh
  O=$OUTDIR
  stage() { echo "$(date +%T) $*" >> "$O/stages.txt"; }
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader > "$O/gpu.txt"
  python3 -c "import torch,wgpu,torchvision;print(torch.__version__, wgpu.__version__, torchvision.__version__)" >> "$O/gpu.txt"
}
if [ "${1:-}" = start ] || [ "${1:-}" = start-short ] || [ "${1:-}" = start-mid ]; then
  # start-short: little device time left (failed starts cost it): one call, the short plan, ~7.5 minutes.
  # start-mid: one session's budget after a start (~25 minutes): what is still unmeasured, most wanted first.
  plan=run wait_s=540
  [ "$1" = start-short ] && plan=run-short wait_s=${WAIT_S:-480}
  [ "$1" = start-mid ] && plan=run-mid
  rm -rf "$RUN" "$OUTDIR"; mkdir -p "$RUN" "$OUTDIR"
  cp -r src benchmarks pyproject.toml "$RUN"/; cp -rL .gl .whl "$RUN"/; [ -d .tune ] && cp -r .tune "$RUN"/
  for r in run15-h100 run16-h100 run17-h100; do
    mkdir -p "$RUN"/docs/benchmark-logs/$r && cp docs/benchmark-logs/$r/gemm_tiles.v3.json "$RUN"/docs/benchmark-logs/$r/
  done
  (cd "$RUN" && setsid nohup bash benchmarks/device_session_next.sh "$plan" > "$OUTDIR/main.log" 2>&1 < /dev/null &)
elif [ "${1:-}" = run-short ]; then
  begin
  seed=.tune/gemm_tiles.v3.json; [ -f "$seed" ] || seed=docs/benchmark-logs/run15-h100/gemm_tiles.v3.json
  stage "s2 compiled U-Net and LM, tuning off (issue 19): plain AdamW now capturable, upsampling kept whole"
  NAVITRAIN_WGPU_TUNE=0 timeout 120 python3 benchmarks/bench_wgpu_train.py --models unet,tlm --devices wgpu-compile,cuda \
    --steps 8 --warmup 4 --timeout 60 --json "$O/compile.json" > "$O/compile.log" 2>&1
  stage "s1 VGG-16 captured step tuning from an empty cache, candidates compiled together (run 15: 126 s)"
  EMPTY=/tmp/nt-empty-cache; rm -rf "$EMPTY"; mkdir -p "$EMPTY"
  NAVITRAIN_CACHE_DIR=$EMPTY timeout 150 python3 benchmarks/bench_wgpu_zoo.py --models vgg16 --devices wgpu-graph --no-layers --timeout 140 \
    --steps 3 --warmup 2 --json "$O/zoo_tuning.json" > "$O/zoo_tuning.log" 2>&1
  mkdir -p "$O/tune"; cp "$EMPTY"/gemm_tiles*.json "$O/tune/" 2>/dev/null
  mkdir -p "$NAVITRAIN_CACHE_DIR"; cp "$seed" "$NAVITRAIN_CACHE_DIR/gemm_tiles.v3.json"
  stage "s3 eager steps zeroing gradients as scripts do (set_to_none=True), host-bound models, tuned"
  timeout 130 python3 benchmarks/bench_wgpu_zoo.py --models mobilenet_v3_small,efficientnet_b0,densenet161 \
    --devices wgpu,cuda --no-layers --steps 5 --warmup 3 --timeout 60 --json "$O/zoo_eager.json" > "$O/zoo_eager.log" 2>&1
  stage "s4 where AlexNet's and VGG-16's GPU time goes (one eager step per kernel, tuned)"
  timeout 100 python3 benchmarks/bench_wgpu_zoo.py --models alexnet,vgg16 --devices wgpu --no-layers --profile 30 \
    --steps 2 --warmup 2 --timeout 50 --json "$O/zoo_profile.json" > "$O/zoo_profile.log" 2>&1
  stage done
  touch "$O/DONE"
  exit 0
elif [ "${1:-}" = run-mid ]; then
  # Run 18: what run 17 (docs/benchmarks.md) left open, most wanted first. Run 17's tile choices seed the tuner (an
  # H100 with its driver: name kind nvidia-h100-x1 to use them).
  begin
  seed=.tune/gemm_tiles.v3.json; [ -f "$seed" ] || seed=docs/benchmark-logs/run17-h100/gemm_tiles.v3.json
  mkdir -p "$NAVITRAIN_CACHE_DIR"; cp "$seed" "$NAVITRAIN_CACHE_DIR/gemm_tiles.v3.json"
  stage "p0 op plans off and on alternating in one process, per step (run 17: plans-on rows 1.27x slower and 1.85x apart between processes)"
  timeout 300 python3 benchmarks/plans_on_device.py --models resnet18,gpt,tv:resnet50,tv:mobilenet_v2,tv:convnext_small \
    --blocks 3 --per-block 4 --timeout 110 --json "$O/plans.json" > "$O/plans.log" 2>&1
  stage "p1 the eager zoo again, a plan per place (issue 23's eager goal: 71% of CUDA's speed; run 17: 47%)"
  timeout 600 python3 benchmarks/bench_wgpu_zoo.py --models alexnet,vgg16,resnet18,resnet50,wide_resnet50_2,densenet161,convnext_small,efficientnet_b0,mobilenet_v2,mobilenet_v3_small,mobilenet_v3_large,mnasnet1_0,regnet_y_400mf,resnext50_32x4d \
    --devices wgpu,cuda --no-layers --steps 8 --warmup 4 --timeout 120 --json "$O/zoo_eager_plans.json" > "$O/zoo_eager_plans.log" 2>&1
  stage "p2 eager GPT and CIFAR ResNet-18 (issue 19: eager GPT at most 4x; run 17: 2.33x), then the compiled GPT's GPU time per kernel"
  timeout 150 python3 benchmarks/bench_wgpu_train.py --models gpt,resnet18 --devices wgpu,cuda --steps 10 --warmup 5 --timeout 70 \
    --json "$O/eager_train.json" > "$O/eager_train.log" 2>&1
  NAVITRAIN_BENCH_PROFILE=1 timeout 150 python3 benchmarks/bench_wgpu_train.py --models gpt --devices wgpu-compile \
    --steps 3 --warmup 5 --timeout 120 --json "$O/compile_profile.json" > "$O/compile_profile.log" 2>&1
  stage "p3 compiled GPT, LM and CIFAR ResNet-18 again, CUDA in the same call (run 17: 1.71x, 1.32x, 1.13x)"
  timeout 400 python3 benchmarks/bench_wgpu_train.py --models gpt,tlm,resnet18 --devices wgpu-compile,cuda \
    --steps 10 --warmup 5 --timeout 120 --json "$O/compile.json" > "$O/compile.log" 2>&1
  stage "p4 where AlexNet's GPU time goes, tuned (issue 23: below the 50% floor at 2.44x)"
  timeout 100 python3 benchmarks/bench_wgpu_zoo.py --models alexnet --devices wgpu --no-layers --profile 30 \
    --steps 2 --warmup 2 --timeout 90 --json "$O/zoo_profile.json" > "$O/zoo_profile.log" 2>&1
  stage "p5 compiled MobileNetV2 against its eager step, per kernel (run 17: compiled 49.1 ms, captured 20.7, eager 41.0)"
  timeout 200 python3 benchmarks/bench_wgpu_zoo.py --models mobilenet_v2 --devices wgpu,wgpu-compile --no-layers --profile 30 \
    --steps 3 --warmup 5 --timeout 90 --json "$O/zoo_compile_profile.json" > "$O/zoo_compile_profile.log" 2>&1
  stage done
  touch "$O/DONE"
  exit 0
elif [ "${1:-}" = poll ]; then
  wait_s=570
elif [ "${1:-}" = run ]; then
  begin
  keep_cache() { mkdir -p "$O/tune"; cp "$NAVITRAIN_CACHE_DIR"/gemm_tiles*.json "$O/tune/" 2>/dev/null; }
  stage "1 tuning from an empty cache, candidates compiled together (run 15: VGG-16 126 s, ResNet-50 209 s)"
  rm -rf "$NAVITRAIN_CACHE_DIR"; mkdir -p "$NAVITRAIN_CACHE_DIR"
  python3 benchmarks/bench_wgpu_zoo.py --models vgg16,resnet50 --devices wgpu,wgpu-graph,cuda --no-layers --timeout 300 \
    --json "$O/zoo_tuning.json" > "$O/zoo_tuning.log" 2>&1
  # Then the tile choices of run 15 (carried .tune/, else the logged ones) for every shape this run has not tuned.
  seed=.tune/gemm_tiles.v3.json; [ -f "$seed" ] || seed=docs/benchmark-logs/run15-h100/gemm_tiles.v3.json
  python3 - "$seed" "$NAVITRAIN_CACHE_DIR/gemm_tiles.v3.json" <<'PY'
import json, sys, pathlib
old = json.loads(pathlib.Path(sys.argv[1]).read_text()) if pathlib.Path(sys.argv[1]).exists() else {}
path = pathlib.Path(sys.argv[2]); new = json.loads(path.read_text()) if path.exists() else {}
for adapter, table in old.items():
    new[adapter] = {**table, **new.get(adapter, {})}
path.write_text(json.dumps(new, indent=1, sort_keys=True))
PY
  keep_cache
  stage "2 compiled steps, tuning off (issue 19): plain AdamW now capturable, upsampling kept whole"
  NAVITRAIN_WGPU_TUNE=0 timeout 400 python3 benchmarks/bench_wgpu_train.py --models unet,tlm,gpt,resnet18 --devices wgpu-graph,wgpu-compile,cuda \
    --steps 10 --warmup 5 --timeout 120 --json "$O/compile.json" > "$O/compile.log" 2>&1
  NAVITRAIN_WGPU_TUNE=0 timeout 250 python3 benchmarks/bench_wgpu_zoo.py --models resnet50 --devices wgpu-compile,cuda --no-layers --timeout 200 \
    --json "$O/zoo_resnet50_compile.json" > "$O/zoo_resnet50_compile.log" 2>&1
  stage "2b where the compiled LM's and U-Net's GPU time goes (per kernel, tuning off)"
  NAVITRAIN_WGPU_TUNE=0 NAVITRAIN_BENCH_PROFILE=1 timeout 240 python3 benchmarks/bench_wgpu_train.py --models tlm,unet \
    --devices wgpu-compile --steps 3 --warmup 3 --timeout 150 --json "$O/compile_profile.json" > "$O/compile_profile.log" 2>&1
  stage "3 the zoo, tuned, eager steps zeroing gradients as scripts do (set_to_none=True)"
  python3 benchmarks/bench_wgpu_zoo.py --models alexnet,vgg16,resnet18,resnet50,wide_resnet50_2,densenet161,convnext_small,efficientnet_b0,mobilenet_v2,mobilenet_v3_small,mobilenet_v3_large,mnasnet1_0,regnet_y_400mf,resnext50_32x4d \
    --devices wgpu,wgpu-graph,cuda --no-layers --timeout 300 --json "$O/zoo.json" > "$O/zoo.log" 2>&1
  keep_cache
  stage "4 where AlexNet's and VGG-16's GPU time goes (one eager step per kernel)"
  timeout 240 python3 benchmarks/bench_wgpu_zoo.py --models alexnet,vgg16 --devices wgpu --no-layers --profile 30 \
    --steps 3 --warmup 2 --json "$O/zoo_profile.json" > "$O/zoo_profile.log" 2>&1
  stage "5 compiled CIFAR ResNet-18 and GPT with tuning on (issue 19: at most 1.0x and 1.3x of CUDA eager)"
  timeout 420 python3 benchmarks/bench_wgpu_train.py --models resnet18,gpt --devices wgpu-graph,wgpu-compile,cuda \
    --steps 10 --warmup 5 --timeout 200 --json "$O/compile_tuned.json" > "$O/compile_tuned.log" 2>&1
  keep_cache
  stage done
  touch "$O/DONE"
  exit 0
else
  echo "usage: $0 start|start-mid|start-short|poll|run|run-mid|run-short"; exit 2
fi
# What comes back is one archive (the device tool returns only a few files per call; run 16 lost most of its logs
# that way until a last call packed them): everything so far, every 30 s, so a cut-off call still has it.
pack() { cp /tmp/navitrain-cache/gemm_tiles*.json "$OUTDIR"/ 2>/dev/null; tar czf "$OUT/all.tgz" -C "$OUTDIR" . 2>/dev/null; }
for i in $(seq 1 "$wait_s"); do [ -f "$OUTDIR/DONE" ] && break; sleep 1; [ $((i % 30)) = 0 ] && pack; done
pack
cat "$OUTDIR/stages.txt" 2>/dev/null; grep -hE "^\[|geometric" "$OUTDIR"/zoo_tuning.log "$OUTDIR"/zoo.log 2>/dev/null | tail -n 45; tail -n 3 "$OUTDIR"/*.log 2>/dev/null | tail -n 40
