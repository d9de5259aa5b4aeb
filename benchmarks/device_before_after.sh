#!/usr/bin/env bash
# One device run that checks this checkout on a lent NVIDIA GPU against an older commit, same machine:
# the NaN/ZeroDivision, RNN and torch.compile tests on the NVIDIA Vulkan driver, training steps of ResNet-18,
# the GPT decoder and the LSTM LM (wgpu eager/graph/compile vs CUDA eager/graph), the old commit's ResNet-18/GPT
# steps (did a change cost speed?), and the depthwise layers against cuDNN. Tuning off on both sides (fair
# before/after; tuned numbers are bench_wgpu_train.py's job).
# Prepare locally:  echo /.old/ >> .git/info/exclude; git archive <old-rev> src benchmarks | tar -x -C .old
# Run with the device tool: carry [".gl", ".whl", ".old"], command `bash benchmarks/device_before_after.sh`
# (about 8-9 minutes; logs in $OUT).
source benchmarks/device_setup.sh
export NAVITRAIN_WGPU_TUNE=0
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/gpu.txt"
python3 -c "import torch,wgpu;print(torch.__version__, wgpu.__version__)" >> "$OUT/gpu.txt"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/wgpu/test_special_values.py tests/wgpu/test_rnn.py \
  tests/wgpu/test_compile.py > "$OUT/tests_nvidia.log" 2>&1; echo "rc=$?" >> "$OUT/tests_nvidia.log"
timeout 220 python3 benchmarks/bench_wgpu_train.py --models resnet18,gpt,lstm \
  --devices wgpu,wgpu-graph,wgpu-compile,cuda,cuda-graph --timeout 120 --json "$OUT/new.json" > "$OUT/new.log" 2>&1
if [ -d .old/src ]; then
  (cd .old && PYTHONPATH=/tmp/site:$PWD/src:$PWD timeout 100 python3 benchmarks/bench_wgpu_train.py \
    --models resnet18,gpt --devices wgpu,wgpu-graph,cuda --timeout 60 --json "$OUT/old.json" > "$OUT/old.log" 2>&1)
fi
timeout 80 python3 benchmarks/bench_wgpu_zoo.py --no-models --timeout 90 --json "$OUT/zoo.json" > "$OUT/zoo.log" 2>&1
tail -n 3 "$OUT/tests_nvidia.log"; tail -n 20 "$OUT/new.log"; tail -n 8 "$OUT/old.log" 2>/dev/null; tail -n 25 "$OUT/zoo.log"
