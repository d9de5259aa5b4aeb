"""Fact readers on small hand-made trees: each parses what the kernel and packages really write."""
from __future__ import annotations

import os

from navitrain.doctor import facts
from navitrain.doctor.probes import driver_name, parse_rocminfo
from navitrain.doctor.tree import Tree, parse_int, parse_key_values


def write(root, rel, text):
    path = root / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_modprobe_options_with_continuations_comments_and_dashes(tmp_path):
    write(tmp_path, "/etc/modprobe.d/a.conf", "options amdgpu mtype_local=1 \\\n  noretry=0 # tuned\n"
                                              "options radeon si_support=0\n#options amdgpu ppfeaturemask=1\n")
    write(tmp_path, "/lib/modprobe.d/b.conf", "options amdgpu gpu-recovery=1 exp_hw_support\n")
    write(tmp_path, "/proc/cmdline", "ro quiet amdgpu.ppfeaturemask=0xffffffff amdgpu.runpm=0 radeon.x=1\n")
    result = facts.get_amdgpu(tmp_path)
    by_file = {e["file"]: e["options"] for e in result["modprobe"]}
    assert by_file == {"/etc/modprobe.d/a.conf": {"mtype_local": "1", "noretry": "0"},
                       "/lib/modprobe.d/b.conf": {"gpu_recovery": "1", "exp_hw_support": "1"}}
    assert result["cmdline"] == {"ppfeaturemask": "0xffffffff", "runpm": "0"}
    assert result["loaded"] is False


def test_cpuinfo_and_meminfo(tmp_path):
    write(tmp_path, "/proc/cpuinfo",
          "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Gold\nflags\t\t: sse avx2 avx512f fma\n\n"
          "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Gold\nflags\t\t: sse avx2 avx512f fma\n")
    write(tmp_path, "/proc/meminfo", "MemTotal:        1024 kB\n")
    cpu = facts.get_cpu(tmp_path)
    assert cpu["model"] == "Intel(R) Xeon(R) Gold" and cpu["logical_cores"] == 2
    assert (cpu["avx2"], cpu["avx512"], cpu["ram_bytes"]) == (True, True, 1024 * 1024)
    assert cpu["usable_cores"] is None  # not this machine


def test_kfd_topology_gfx_and_pcie_atomics(tmp_path):
    nodes = "/sys/class/kfd/kfd/topology/nodes"
    write(tmp_path, f"{nodes}/0/properties", "cpu_cores_count 8\ngfx_target_version 0\n")
    write(tmp_path, f"{nodes}/1/properties",
          "simd_count 40\ngfx_target_version 100100\nvendor_id 4098\ndevice_id 29471\n")
    write(tmp_path, f"{nodes}/1/io_links/0/properties", "type 2\nflags 15\n")  # bits 2 and 3: no atomics
    write(tmp_path, f"{nodes}/2/properties",
          "simd_count 40\ngfx_target_version 110000\nvendor_id 4098\ndevice_id 29772\n")
    write(tmp_path, f"{nodes}/2/io_links/0/properties", "type 2\nflags 3\n")
    result = facts.get_kfd_nodes(tmp_path)
    assert [(n["node"], n["gfx_target"], n["device_id"], n["pcie_atomics"]) for n in result] == [
        ("1", "gfx1010", "0x731f", False), ("2", "gfx1100", "0x744c", True)]
    assert facts.get_kfd_nodes(tmp_path / "nothing") is None


def test_gpu_without_drm_card_is_found_on_the_pci_bus(tmp_path):
    # amdgpu failed to load: no /sys/class/drm/card0, but the PCI device is there.
    dev = "/sys/bus/pci/devices/0000:0a:00.0"
    write(tmp_path, f"{dev}/class", "0x030000\n")
    write(tmp_path, f"{dev}/vendor", "0x1002\n")
    write(tmp_path, f"{dev}/device", "0x731f\n")
    write(tmp_path, f"{dev}/revision", "0xc4\n")
    (row,) = facts.gpus(tmp_path)
    assert (row["name"], row["pci_slot"], row["driver"], row["card"]) == \
        ("AMD Radeon RX 5700", "0000:0a:00.0", None, None)


def test_malformed_ids_are_notes_not_errors(tmp_path):
    dev = "/sys/class/drm/card1/device"
    write(tmp_path, f"{dev}/vendor", "0xZZZZ\n")
    write(tmp_path, f"{dev}/device", "\x00\xff garbage")
    write(tmp_path, f"{dev}/uevent", "DRIVER=amdgpu\nPCI_ID=1002:7340\nPCI_SLOT_NAME=0000:05:00.0\n")
    (row,) = facts.gpus(tmp_path)
    assert row["vendor_id"] == "0x1002" and row["device_id"] == "0x7340"  # recovered from uevent
    assert row["gfx_target"] == "gfx1012"
    assert any("malformed" in note for note in row["notes"])


def test_rocm_version_from_header_and_debian_rocblas(tmp_path):
    write(tmp_path, "/opt/rocm-6.3.1/include/rocm-core/rocm_version.h",
          "#define ROCM_VERSION_MAJOR 6\n#define ROCM_VERSION_MINOR 3\n#define ROCM_VERSION_PATCH 1\n")
    write(tmp_path, "/usr/lib/x86_64-linux-gnu/rocblas/5.5.1/library/TensileLibrary_gfx1010.co", "")
    write(tmp_path, "/usr/lib/x86_64-linux-gnu/rocblas/5.5.1/library/TensileLibrary_gfx1030.co", "")
    rocm = facts.get_rocm(tmp_path)
    assert rocm["installed"] is True and rocm["installs"] == [{"path": "/opt/rocm-6.3.1", "version": "6.3.1"}]
    assert rocm["rocblas_arches"] == ["gfx1010", "gfx1030"]


def test_device_nodes_and_icds(tmp_path):
    write(tmp_path, "/dev/kfd", "")
    write(tmp_path, "/dev/dri/renderD128", "")
    write(tmp_path, "/usr/share/vulkan/icd.d/radeon_icd.x86_64.json",
          '{"ICD": {"library_path": "libvulkan_radeon.so"}}')
    write(tmp_path, "/usr/share/vulkan/icd.d/broken.json", "{not json")
    nodes = facts.get_device_nodes(tmp_path)
    assert nodes["kfd"]["exists"] and nodes["kfd"]["accessible"] == os.access(tmp_path / "dev/kfd", os.R_OK | os.W_OK)
    assert [r["path"] for r in nodes["render_nodes"]] == ["/dev/dri/renderD128"]
    icds = {i["file"].rsplit("/", 1)[1]: i for i in facts.get_vulkan_icds(tmp_path)}
    assert icds["radeon_icd.x86_64.json"]["driver"] == "RADV"
    assert icds["radeon_icd.x86_64.json"]["library_path"] == "libvulkan_radeon.so"
    assert icds["broken.json"]["library_path"] is None


def test_env_selection_keeps_gpu_variables_only():
    env = facts.select_env({"HSA_OVERRIDE_GFX_VERSION": "10.3.0", "MIOPEN_DEBUG_CONV_GEMM": "1", "HOME": "/root",
                            "PYTORCH_ROCM_ARCH": "gfx1010", "AWS_SECRET_ACCESS_KEY": "x",
                            "LD_LIBRARY_PATH": "/opt/rocm/lib"})
    assert env == {"HSA_OVERRIDE_GFX_VERSION": "10.3.0", "LD_LIBRARY_PATH": "/opt/rocm/lib",
                   "MIOPEN_DEBUG_CONV_GEMM": "1", "PYTORCH_ROCM_ARCH": "gfx1010"}


def test_tree_reads_are_recorded_and_parsers_tolerate_junk(tmp_path):
    tree = Tree(tmp_path)
    assert tree.read_text("/does/not/exist") is None and "/does/not/exist" in tree.reads
    assert parse_int("0xCA\n", 16) == 0xCA and parse_int("", 16) is None and parse_int(None) is None
    assert parse_key_values('A=1\nkey value with spaces\n# c\nB="q"') == \
        {"A": "1", "key": "value with spaces", "B": "q"}


def test_rocminfo_parse_of_the_knowledge_excerpt():
    # rocminfo for an RX 5700 XT on ROCm 6.4.2, as posted in ROCm/ROCm#5160.
    text = """ROCk module version 6.12.12 is loaded
*******
Agent 1
*******
  Name:                    AMD Ryzen 9 7950X 16-Core Processor
  Marketing Name:          AMD Ryzen 9 7950X 16-Core Processor
  Device Type:             CPU
*******
Agent 2
*******
  Name:                    gfx1010
  Marketing Name:          AMD Radeon RX 5700 XT
  Chip ID:                 29471(0x731f)
  Device Type:             GPU
      Name:                    amdgcn-amd-amdhsa--gfx1010:xnack-
      Name:                    amdgcn-amd-amdhsa--gfx10-1-generic:xnack-
"""
    parsed = parse_rocminfo(text)
    assert parsed["kfd_loaded"] is True
    cpu, gpu = parsed["agents"]
    assert cpu["device_type"] == "CPU"
    assert (gpu["name"], gpu["marketing_name"], gpu["chip_id"], gpu["device_type"]) == (
        "gfx1010", "AMD Radeon RX 5700 XT", 0x731F, "GPU")
    assert gpu["isas"] == ["gfx10-1-generic", "gfx1010"]
    assert parse_rocminfo("ROCk module is NOT loaded, possibly no GPU devices") == {"kfd_loaded": False, "agents": []}


def test_vulkan_driver_names():
    assert driver_name({"name": "AMD Radeon RX 5700 (RADV NAVI10)", "driver": "Mesa 24.2.8"}) == "RADV"
    assert driver_name({"name": "AMD Radeon RX 5700", "driver": "AMD open-source driver 2023.Q3.3"}) == "AMDVLK"
    assert driver_name({"name": "llvmpipe (LLVM 15.0.6, 256 bits)", "vendor_id": 65541}) == "llvmpipe"
    assert driver_name({"name": "NVIDIA H100 80GB HBM3", "vendor_id": 0x10DE, "driver": "580.159.04"}) == "NVIDIA"
    intel = {"name": "Intel(R) UHD Graphics 630 (CFL GT2)", "vendor_id": 0x8086, "driver": "Mesa 23.1"}
    assert driver_name(intel) == "ANV"
    assert driver_name({"name": "mystery", "vendor_id": 7}) is None


def test_doctor_and_explain_do_not_import_torch_or_wgpu():
    import subprocess
    import sys

    code = ("import sys, navitrain.doctor, navitrain.doctor.report, navitrain.doctor.context, navitrain.cli.doctor, "
            "navitrain.cli.explain\nbad = [m for m in ('torch', 'wgpu') if m in sys.modules]\nassert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
