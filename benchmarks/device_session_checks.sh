#!/usr/bin/env bash
# Device run in two parts (each under the 10-minute call limit), same warm machine:
#   part 1: NaN/remainder/RNN/compile tests on the NVIDIA Vulkan driver (the fixes found in run 11, and
#           torch.compile on this machine's torch), training steps of ResNet-18/GPT/LSTM (wgpu eager, graph,
#           compile vs CUDA eager, graph);
#   part 2: the same steps for the old commit in .old (did the refactor cost speed?), `navitrain run` (issue 18:
#           its step times against bench_wgpu_train.py's, same machine), the depthwise layers against cuDNN.
# Prepare: echo /.old/ >> .git/info/exclude; mkdir -p .old; git archive <old-rev> src benchmarks | tar -x -C .old
# Run:     carry [".gl", ".whl", ".old"], command `bash benchmarks/device_session_checks.sh 1` (then `... 2`).
source benchmarks/device_setup.sh
export NAVITRAIN_WGPU_TUNE=0
part=${1:-1}
if [ "$part" = 1 ]; then
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/gpu.txt"
  python3 -c "import torch,wgpu;print(torch.__version__, wgpu.__version__)" >> "$OUT/gpu.txt"
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/wgpu/test_special_values.py tests/wgpu/test_rnn.py \
    tests/wgpu/test_compile.py tests/wgpu/test_compile_compat.py tests/wgpu/test_param_block.py \
    tests/wgpu/test_ops_breadth.py > "$OUT/tests_nvidia.log" 2>&1; echo "rc=$?" >> "$OUT/tests_nvidia.log"
  timeout 300 python3 benchmarks/bench_wgpu_train.py --models resnet18,gpt,lstm \
    --devices wgpu,wgpu-graph,wgpu-compile,cuda,cuda-graph --timeout 120 --json "$OUT/new.json" > "$OUT/new.log" 2>&1
  tail -n 5 "$OUT/tests_nvidia.log"; tail -n 22 "$OUT/new.log"
else
  if [ -d .old/src ]; then
    (cd .old && PYTHONPATH=/tmp/site:$PWD/src:$PWD timeout 130 python3 benchmarks/bench_wgpu_train.py \
      --models resnet18,gpt --devices wgpu,wgpu-graph,cuda --timeout 60 --json "$OUT/old.json" > "$OUT/old.log" 2>&1)
  fi
  timeout 280 python3 -m navitrain run --json > "$OUT/run.json" 2> "$OUT/run.log"; echo "run rc=$?" >> "$OUT/run.log"
  timeout 100 python3 benchmarks/bench_wgpu_zoo.py --no-models --timeout 90 --json "$OUT/zoo.json" > "$OUT/zoo.log" 2>&1
  tail -n 10 "$OUT/old.log" 2>/dev/null; tail -n 5 "$OUT/run.log"; tail -n 25 "$OUT/zoo.log"
fi
