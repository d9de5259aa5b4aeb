#!/usr/bin/env bash
# Which torch build suits this machine, from a cheap look at its GPUs. Prints two lines:
#   1. the pip index to take torch from (empty: the default index, which serves the CUDA build)
#   2. one sentence saying why
# scripts/setup.sh uses it for a venv without torch; TORCH_INDEX / TORCH_SPEC there override it.
#
#   NVIDIA card                                  -> the default (CUDA) build
#   AMD card with a ROCm-supported arch + ROCm   -> https://download.pytorch.org/whl/rocm<X.Y> (the installed ROCm)
#   anything else (no GPU, RDNA1, no ROCm, ...)  -> https://download.pytorch.org/whl/cpu: all the wgpu route
#                                                   needs, without gigabytes of CUDA or ROCm libraries
#
# NAVITRAIN_SYSFS_ROOT: read /sys and /opt/rocm under this directory instead of / (tests give it a fake
# tree; lspci, which reads the real machine, is then not used). ROCM_PATH: where ROCm is (default /opt/rocm).
set -uo pipefail
root=${NAVITRAIN_SYSFS_ROOT:-}
TORCH_WHL=https://download.pytorch.org/whl

# The gfx targets PyTorch's ROCm wheels carry code for (the PYTORCH_ROCM_ARCH of its wheel builds; RDNA1's
# gfx1010-1012 were never among them, which is why navitrain exists). Another arch gets the CPU build and
# the wgpu route; TORCH_INDEX=.../rocmX.Y in setup.sh forces a ROCm build anyway.
ROCM_WHEEL_ARCHS=" gfx900 gfx906 gfx908 gfx90a gfx942 gfx950 gfx1030 gfx1100 gfx1101 gfx1102 gfx1200 gfx1201 "

# PCI vendor ids of display controllers: lspci where it exists (and no fake root), else sysfs.
vendors() {
  if [ -z "$root" ] && command -v lspci >/dev/null 2>&1; then
    # "03:00.0 0300: 1002:731f (rev c1)": class 03xx is a display controller
    lspci -n 2>/dev/null | awk '$2 ~ /^03/ { split($3, id, ":"); print "0x" id[1] }'
  else
    for card in "$root"/sys/class/drm/card*; do
      [[ $(basename "$card") =~ ^card[0-9]+$ ]] && [ -r "$card/device/vendor" ] && cat "$card/device/vendor"
    done
  fi
}

# gfx targets of AMD GPUs from KFD's topology: gfx_target_version is major*10000 + minor*100 + stepping.
amd_archs() {
  for props in "$root"/sys/class/kfd/kfd/topology/nodes/*/properties; do
    [ -r "$props" ] || continue
    awk '$1 == "gfx_target_version" && $2 > 0 {
           printf "gfx%d%d%x\n", int($2 / 10000), int($2 / 100) % 100, $2 % 100 }' "$props"
  done | sort -u
}

rocm_version() {  # "6.4" from <ROCm>/.info/version ("6.4.1-120"); empty without ROCm
  local file="$root${ROCM_PATH:-/opt/rocm}/.info/version"
  [ -r "$file" ] && sed -n '1s/^\([0-9]\+\.[0-9]\+\).*/\1/p' "$file"
}

found=$(vendors | tr 'A-F' 'a-f' | sort -u | tr '\n' ' ')
if [[ " $found" == *" 0x10de "* ]]; then
  echo ""
  echo "an NVIDIA card is present: the default (CUDA) build runs the native route"
  exit 0
fi
if [[ " $found" == *" 0x1002 "* ]]; then
  archs=$(amd_archs | tr '\n' ' ')
  archs=${archs% }
  rocm=$(rocm_version)
  supported=""
  for arch in $archs; do
    [[ $ROCM_WHEEL_ARCHS == *" $arch "* ]] && supported="$arch"
  done
  if [ -n "$supported" ] && [ -n "$rocm" ]; then
    echo "$TORCH_WHL/rocm$rocm"
    echo "an AMD $supported card with ROCm $rocm installed: PyTorch's ROCm $rocm build has code for it"
  elif [ -n "$supported" ]; then
    echo "$TORCH_WHL/cpu"
    echo "an AMD $supported card but no ROCm in ${ROCM_PATH:-/opt/rocm}: the CPU-only build, which is all the wgpu route needs (install ROCm and set TORCH_INDEX=$TORCH_WHL/rocmX.Y for the native route)"
  else
    echo "$TORCH_WHL/cpu"
    echo "an AMD card (${archs:-arch unknown: no KFD}) that PyTorch's ROCm builds have no code for: the CPU-only build, which is all the wgpu route needs"
  fi
  exit 0
fi
echo "$TORCH_WHL/cpu"
echo "no AMD or NVIDIA card found: the CPU-only build (the cpu route, and wgpu on any Vulkan/Metal driver)"
