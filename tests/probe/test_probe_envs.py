"""--env parsing and the --env-matrix chosen for the GPU at hand."""
import pytest

from navitrain.probe.envs import env_matrix, parse_env_options

RX5700 = {"gpus": [{"pci_id": "0x1002:0x731f rev 0xc1", "gfx_target": "gfx1010"}], "kfd_targets": ["gfx1010"]}
RX5500 = {"gpus": [{"pci_id": "0x1002:0x7340 rev 0xc5", "gfx_target": "gfx1012"}], "kfd_targets": []}
RX6600 = {"gpus": [{"pci_id": "0x1002:0x73ff rev 0xc7", "gfx_target": "gfx1032"}], "kfd_targets": ["gfx1032"]}
H100 = {"gpus": [{"pci_id": "0x10de:0x2330 rev 0xa1", "gfx_target": None}], "kfd_targets": []}


def _envs(facts, environ=None):
    return [env for env, _ in env_matrix(facts, environ or {})]


def test_rdna1_gets_the_override_and_the_miopen_switches():
    matrix = env_matrix(RX5700, {})
    envs = [e for e, _ in matrix]
    assert envs[0] == {}
    assert {"HSA_OVERRIDE_GFX_VERSION": "10.3.0"} in envs
    assert {"HSA_OVERRIDE_GFX_VERSION": "10.1.0"} not in envs  # gfx1010 needs no 10.1.0 alias
    assert {"MIOPEN_DEBUG_GCN_ASM_KERNELS": "0"} in envs
    assert {"MIOPEN_DEBUG_CONV_DIRECT": "0", "MIOPEN_DEBUG_CONV_WINOGRAD": "0"} in envs
    why = dict((tuple(e.items()), w) for e, w in matrix)[(("HSA_OVERRIDE_GFX_VERSION", "10.3.0"),)]
    assert "gfx1010" in why and "gfx-override-fault" in why


def test_navi14_also_gets_the_gfx1010_alias():
    assert {"HSA_OVERRIDE_GFX_VERSION": "10.1.0"} in _envs(RX5500)


def test_rdna2_gets_the_override_without_a_fault_warning():
    matrix = env_matrix(RX6600, {})
    why = dict((tuple(e.items()), w) for e, w in matrix)[(("HSA_OVERRIDE_GFX_VERSION", "10.3.0"),)]
    assert "fault" not in why


def test_nvidia_and_no_gpu_run_only_the_environment_as_it_is():
    assert _envs(H100) == [{}]
    assert _envs({"gpus": [], "kfd_targets": []}) == [{}]


def test_a_user_override_is_also_tried_unset():
    envs = _envs(RX5700, {"HSA_OVERRIDE_GFX_VERSION": "10.3.0"})
    assert {"HSA_OVERRIDE_GFX_VERSION": ""} in envs


def test_parse_env_options():
    assert parse_env_options(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    for bad in ("NOVALUE", "=1", "1A=2", "A-B=1"):
        with pytest.raises(ValueError, match="NAME=VALUE"):
            parse_env_options([bad])
