#!/usr/bin/env bash
# One device call (under 10 minutes) that re-checks this session's fixes and new kernels on the NVIDIA Vulkan
# driver, times `navitrain run` against bench_wgpu_train.py on the same machine (issue 18), and times the
# depthwise layers with the old commit's code and this one on the same machine (issue 23).
# Part 1 (argument 1): tests, training steps, navitrain run; part 2: depthwise layers old/new, DDP on one GPU.
# Prepare: .old as for device_session_checks.sh. Run with carry [".gl", ".whl", ".old"] (or from a snapshot).
source benchmarks/device_setup.sh
export NAVITRAIN_WGPU_TUNE=0
part=${1:-1}
if [ "$part" = min ]; then
  # the least that answers issue 18 (run vs bench_wgpu_train) and issue 19 (compiled steps), when device time is short
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader > "$OUT/gpu.txt"
  python3 -c "import torch,wgpu;print(torch.__version__, wgpu.__version__)" >> "$OUT/gpu.txt"
  python3 -c "import torchvision;print('torchvision', torchvision.__version__)" >> "$OUT/gpu.txt" 2>&1
  timeout 100 python3 benchmarks/bench_wgpu_train.py --models resnet18,gpt --devices wgpu,wgpu-graph,wgpu-compile,cuda \
    --steps 5 --warmup 2 --timeout 45 --json "$OUT/train.json" > "$OUT/train.log" 2>&1
  timeout 100 python3 -m navitrain run --json > "$OUT/run.json" 2> "$OUT/run.log"; echo "run rc=$?" >> "$OUT/run.log"
  timeout 60 python3 -m pytest -q -p no:cacheprovider --timeout 50 tests/wgpu/test_special_values.py \
    tests/wgpu/test_rnn.py > "$OUT/tests_nvidia.log" 2>&1; echo "rc=$?" >> "$OUT/tests_nvidia.log"
  cat "$OUT/gpu.txt"; tail -n 9 "$OUT/train.log"; tail -n 2 "$OUT/run.log"; tail -n 3 "$OUT/tests_nvidia.log"
elif [ "$part" = all ]; then
  # everything in one call when device time is short (each part trimmed)
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader > "$OUT/gpu.txt"
  python3 -c "import torch,wgpu;print(torch.__version__, wgpu.__version__)" >> "$OUT/gpu.txt"
  timeout 70 python3 -m pytest -q -p no:cacheprovider --timeout 60 tests/wgpu/test_special_values.py \
    tests/wgpu/test_ops_breadth.py tests/wgpu/test_rnn.py > "$OUT/tests_nvidia.log" 2>&1
  echo "rc=$?" >> "$OUT/tests_nvidia.log"
  timeout 100 python3 benchmarks/bench_wgpu_train.py --models resnet18,gpt --devices wgpu,wgpu-graph,wgpu-compile,cuda \
    --steps 5 --warmup 2 --timeout 45 --json "$OUT/train.json" > "$OUT/train.log" 2>&1
  timeout 100 python3 -m navitrain run --json > "$OUT/run.json" 2> "$OUT/run.log"; echo "run rc=$?" >> "$OUT/run.log"
  timeout 45 python3 benchmarks/bench_wgpu_zoo.py --no-models --timeout 40 --json "$OUT/zoo_new.json" > "$OUT/zoo_new.log" 2>&1
  (cd .old && PYTHONPATH=/tmp/site:$PWD/src:$PWD timeout 45 python3 benchmarks/bench_wgpu_zoo.py --no-models \
    --timeout 40 --json "$OUT/zoo_old.json" > "$OUT/zoo_old.log" 2>&1)
  tail -n 3 "$OUT/tests_nvidia.log"; tail -n 9 "$OUT/train.log"; tail -n 1 "$OUT/run.log"
  tail -n 13 "$OUT/zoo_new.log"; tail -n 13 "$OUT/zoo_old.log"
elif [ "$part" = 1 ]; then
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader > "$OUT/gpu.txt"
python3 -c "import torch,wgpu;print(torch.__version__, wgpu.__version__)" >> "$OUT/gpu.txt"
python3 -c "import torchvision;print('torchvision', torchvision.__version__)" >> "$OUT/gpu.txt" 2>&1
timeout 150 python3 -m pytest -q -p no:cacheprovider --timeout 120 \
  tests/wgpu/test_special_values.py tests/wgpu/test_ops_breadth.py tests/wgpu/test_rnn.py \
  tests/wgpu/test_linalg.py tests/wgpu/test_fft.py tests/wgpu/test_special_functions.py tests/wgpu/test_order_stats.py \
  tests/wgpu/test_nn_more.py tests/wgpu/test_complex.py tests/wgpu/test_fusion.py tests/wgpu/test_conv_depthwise.py \
  > "$OUT/tests_nvidia.log" 2>&1; echo "rc=$?" >> "$OUT/tests_nvidia.log"
timeout 120 python3 benchmarks/bench_wgpu_train.py --models resnet18,gpt --devices wgpu,wgpu-graph,wgpu-compile,cuda \
  --timeout 60 --json "$OUT/train.json" > "$OUT/train.log" 2>&1
timeout 120 python3 -m navitrain run --json > "$OUT/run.json" 2> "$OUT/run.log"; echo "run rc=$?" >> "$OUT/run.log"
tail -n 4 "$OUT/tests_nvidia.log"; tail -n 8 "$OUT/train.log"; tail -n 2 "$OUT/run.log"
else
timeout 60 python3 benchmarks/bench_wgpu_zoo.py --no-models --timeout 50 --json "$OUT/zoo_new.json" > "$OUT/zoo_new.log" 2>&1
if [ -d .old/src ]; then
  (cd .old && PYTHONPATH=/tmp/site:$PWD/src:$PWD timeout 60 python3 benchmarks/bench_wgpu_zoo.py --no-models \
    --timeout 50 --json "$OUT/zoo_old.json" > "$OUT/zoo_old.log" 2>&1)
fi
# issue 21: two processes on the one GPU, all_reduce overlapping backward or waiting
timeout 55 python3 benchmarks/ddp_wgpu.py --models resnet18 --steps 5 --warmup 2 > "$OUT/ddp.log" 2>&1
timeout 55 python3 benchmarks/ddp_wgpu.py --models resnet18 --steps 5 --warmup 2 --allreduce-waits > "$OUT/ddp_waits.log" 2>&1
# issue 20: the largest batch under a 6 GiB cap (six searches at once: each child holds at most 6 GiB)
timeout 200 python3 benchmarks/max_batch.py --limit 6GiB --start 16 --max 2048 --parallel 6 \
  --out "$OUT/max_batch.json" > "$OUT/max_batch.log" 2>&1
tail -n 14 "$OUT/zoo_new.log"; tail -n 14 "$OUT/zoo_old.log"; tail -n 6 "$OUT/ddp.log"; tail -n 6 "$OUT/ddp_waits.log"
cat "$OUT/max_batch.log"
fi
