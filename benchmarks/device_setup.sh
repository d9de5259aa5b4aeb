# Sourced at the start of a run on the lent GPU machine (see docs/benchmarks.md): unpacks the Vulkan
# loader carried in .gl/, installs the carried wheels (.whl/) for packages the image lacks, and points
# the loader at the NVIDIA driver's ICD.
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD/src:$PWD
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export NAVITRAIN_CACHE_DIR=/tmp/navitrain-cache  # survives between calls on a warm machine
export PYTHONUNBUFFERED=1
