#!/usr/bin/env bash
# Set up navitrain in ./.venv: system Vulkan driver (lavapipe fallback), torch, navitrain and test tools.
# Sourced by scripts/run.sh and scripts/test.sh; safe to run again (it only installs what is missing).
#
# Variables:
#   PYTHON        interpreter to build the venv from (default python3; 3.10 or newer)
#   TORCH_SPEC    torch requirement for a venv without torch (default torch==2.13.0)
#   TORCH_INDEX   extra pip index for torch, e.g. https://download.pytorch.org/whl/rocm6.4 or .../whl/cpu
#                 (default: the one scripts/pick_torch.sh picks for this machine's GPUs, where it answers)
#   NAVITRAIN_SYSTEM_SITE=1  build the venv with --system-site-packages, to reuse a torch you already have
#                            (a ROCm build, say); pip is then never asked to replace it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }

# 1. A Vulkan loader and driver, so the wgpu route has at least lavapipe (Mesa's CPU Vulkan).
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1' || ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; then
  if command -v apt-get >/dev/null; then
    echo "navitrain setup: installing the Vulkan loader and Mesa drivers (mesa-vulkan-drivers libvulkan1)"
    (as_root apt-get install -y -q mesa-vulkan-drivers libvulkan1 >/dev/null 2>&1 \
      || (as_root apt-get update -q >/dev/null 2>&1 && as_root apt-get install -y -q mesa-vulkan-drivers libvulkan1 >/dev/null 2>&1)) \
      || echo "navitrain setup: could not install Vulkan packages (not root?); run: sudo apt-get install mesa-vulkan-drivers libvulkan1"
  else
    echo "navitrain setup: no Vulkan driver found; install your distribution's Mesa Vulkan drivers for the wgpu route"
  fi
fi

# 2. The virtual environment.
if [ ! -x "$VENV/bin/python" ]; then
  venv_flags=()
  [ "${NAVITRAIN_SYSTEM_SITE:-0}" = 1 ] && venv_flags+=(--system-site-packages)
  if ! "$PYTHON" -m venv "${venv_flags[@]}" "$VENV" 2>/dev/null; then
    echo "navitrain setup: python venv module missing; installing python3-venv"
    as_root apt-get install -y -q python3-venv >/dev/null 2>&1 || { echo "please install python3-venv"; exit 1; }
    "$PYTHON" -m venv "${venv_flags[@]}" "$VENV"
  fi
fi
PY="$VENV/bin/python"

# 3. torch: only when the venv has none. navitrain's own requirement is loose (torch>=2.11), so pip keeps
#    whatever build is there. The build suits the machine (scripts/pick_torch.sh: ROCm for an AMD card
#    that PyTorch's ROCm wheels support, CPU-only for the wgpu route elsewhere, CUDA for NVIDIA), taken
#    from that build's index where it answers, else from the configured index; TORCH_INDEX overrides.
index_answers() {  # a quick look (5 s at most): an unreachable index must not stall the setup
  "$PY" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip('/') + '/torch/', timeout=5)" \
    "$1" >/dev/null 2>&1
}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  spec=${TORCH_SPEC:-torch==2.13.0}
  if [ -n "${TORCH_INDEX:-}" ]; then
    echo "navitrain setup: installing $spec with TORCH_INDEX=$TORCH_INDEX"
    "$PY" -m pip install -q --extra-index-url "$TORCH_INDEX" "$spec"
  else
    { read -r index; read -r why; } < <(scripts/pick_torch.sh)
    if [ -n "$index" ] && index_answers "$index" \
        && echo "navitrain setup: installing $spec from $index: $why" \
        && "$PY" -m pip install -q --extra-index-url "$index" "$spec"; then
      :
    else
      echo "navitrain setup: installing $spec from the configured index: $why${index:+ ($index does not answer or lacks $spec here, so the default build)}"
      "$PY" -m pip install -q "$spec"
    fi
  fi
fi

# 4. navitrain itself (editable) with plotting and test extras, when the sources changed.
stamp="$VENV/.navitrain-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "navitrain setup: installing navitrain and its tools"
  "$PY" -m pip install -q -e ".[plot,test]" 2>&1 | grep -v -E "^WARNING: Location|ignored: it is neither" || true
  touch "$stamp"
fi
export PATH="$PWD/$VENV/bin:$PATH"
