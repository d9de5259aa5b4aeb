"""A checked, derived view of a fact set, shared by the rules and the route recommendation.

Facts may come from a JSON file someone edited, from overrides in tests, or from a half-broken machine:
every accessor here tolerates missing keys and wrong types, so no rule ever has to.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from navitrain.doctor import gpus as gpu_table


def pick(obj, *path, kind=None, default=None):
    """obj[path[0]][path[1]]... when every step exists (and the end has type `kind`), else default."""
    for key in path:
        if isinstance(obj, dict) and isinstance(key, str) and key in obj:
            obj = obj[key]
        elif isinstance(obj, list) and isinstance(key, int) and -len(obj) <= key < len(obj):
            obj = obj[key]
        else:
            return default
    if kind is not None:
        if kind is int and isinstance(obj, bool):
            return default
        if not isinstance(obj, kind):
            return default
    return obj


def strings(value) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def dicts(value) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def base_gfx(name: str) -> str:
    """'gfx1010:xnack-' -> 'gfx1010'."""
    return name.split(":")[0].strip().lower()


def version_tuple(text: str | None) -> tuple[int, ...] | None:
    import re

    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return tuple(int(g) for g in m.groups() if g is not None) if m else None


@dataclass
class Situation:
    facts: dict
    notes: list[str] = field(default_factory=list)

    # --- GPUs ---
    @cached_property
    def gpus(self) -> list[dict]:
        return dicts(self.facts.get("gpus"))

    @cached_property
    def amd_gpus(self) -> list[dict]:
        return [g for g in self.gpus if pick(g, "vendor_id", kind=str) == "0x1002"]

    @cached_property
    def primary(self) -> dict | None:
        """The GPU navitrain would train on: a discrete AMD card first, then any discrete GPU, then any."""
        def order(g: dict) -> tuple:
            amd = pick(g, "vendor_id", kind=str) == "0x1002"
            integrated = pick(g, "integrated", kind=bool, default=False)
            return (integrated, not amd, -(pick(g, "vram_bytes", kind=int, default=0) or 0))

        return min(self.gpus, key=order) if self.gpus else None

    @property
    def primary_is_amd(self) -> bool:
        return self.primary is not None and pick(self.primary, "vendor_id", kind=str) == "0x1002"

    @property
    def gfx(self) -> str | None:
        """The primary GPU's real gfx target (KFD's word over the id table's)."""
        value = pick(self.primary, "gfx_target", kind=str) if self.primary else None
        return base_gfx(value) if value else None

    @property
    def family(self) -> str | None:
        return gpu_table.family_of(self.gfx) or (pick(self.primary, "family", kind=str) if self.primary else None)

    def gpu_label(self, gpu: dict | None = None) -> str:
        gpu = gpu if gpu is not None else self.primary
        if not gpu:
            return "no GPU"
        name = pick(gpu, "name", kind=str) or f"{pick(gpu, 'vendor', kind=str) or 'unknown vendor'} GPU"
        extra = [x for x in (pick(gpu, "gfx_target", kind=str), pick(gpu, "family", kind=str)) if x]
        return f"{name} ({', '.join(extra)})" if extra else name

    # --- environment ---
    @cached_property
    def env(self) -> dict[str, str]:
        env = self.facts.get("env")
        if not isinstance(env, dict):
            return {}
        return {k: v for k, v in env.items() if isinstance(k, str) and isinstance(v, str)}

    @property
    def override(self) -> str | None:
        value = self.env.get("HSA_OVERRIDE_GFX_VERSION")
        return value.strip() if value and value.strip() else None

    @property
    def override_gfx(self) -> str | None:
        return gpu_table.override_to_gfx(self.override)

    @property
    def effective_gfx(self) -> str | None:
        """The ISA the ROCm runtime will look for code for: the override's when one is set."""
        return self.override_gfx or self.gfx

    @property
    def override_is_safe(self) -> bool:
        """No override, or one within the card's own family (gfx1012 -> gfx1010, gfx1032 -> gfx1030) and not
        one of the APUs where same-family overrides are reported to fault."""
        if self.override is None or not self.primary_is_amd:
            return True
        target = self.override_gfx
        if target is None or not self.gfx:
            return False
        if target == self.gfx:
            return True
        same_family = gpu_table.family_of(target) == self.family
        return same_family and self.gfx not in ("gfx1103", "gfx1150", "gfx1151", "gfx1152")

    @property
    def code_gfx(self) -> str | None:
        """The gfx whose code must exist for the card to work: the override's only when it is a safe one
        (code for gfx1030 does not help an RDNA1 card, it faults there)."""
        return self.override_gfx if (self.override_gfx and self.override_is_safe) else self.gfx

    # --- torch ---
    @cached_property
    def torch(self) -> dict:
        return self.facts.get("torch") if isinstance(self.facts.get("torch"), dict) else {}

    @property
    def torch_status(self) -> str:
        return pick(self.torch, "status", kind=str, default="skipped")

    @property
    def torch_build(self) -> str | None:
        """'cpu', 'cuda' or 'rocm' when torch imported, else None."""
        build = pick(self.torch, "build", kind=str)
        return build if build in ("cpu", "cuda", "rocm") else None

    @property
    def torch_version(self) -> str | None:
        return pick(self.torch, "version", kind=str)

    @property
    def arch_list(self) -> list[str]:
        return [base_gfx(a) for a in strings(self.torch.get("arch_list"))]

    @property
    def torch_devices(self) -> list[dict]:
        return dicts(self.torch.get("devices"))

    @property
    def torch_device_count(self) -> int | None:
        return pick(self.torch, "device_count", kind=int)

    def torch_has_code_for(self, gfx: str | None) -> bool | None:
        """Whether a ROCm torch was built for `gfx` (None when unknown)."""
        if not gfx or self.torch_build != "rocm" or not self.arch_list:
            return None
        return base_gfx(gfx) in self.arch_list

    # --- Vulkan ---
    @cached_property
    def vulkan(self) -> dict:
        return self.facts.get("vulkan") if isinstance(self.facts.get("vulkan"), dict) else {}

    @property
    def vulkan_status(self) -> str:
        return pick(self.vulkan, "status", kind=str, default="skipped")

    @property
    def adapters(self) -> list[dict]:
        return dicts(self.vulkan.get("adapters")) if self.vulkan_status == "ok" else []

    @property
    def hardware_adapters(self) -> list[dict]:
        return [a for a in self.adapters if pick(a, "software", kind=bool) is False]

    @property
    def vulkan_hardware(self) -> bool | None:
        """True/False when Vulkan was probed, None when it was not (or the probe failed)."""
        if self.vulkan_status != "ok":
            return None
        return bool(self.hardware_adapters)

    @property
    def chosen_adapter(self) -> dict | None:
        index = pick(self.vulkan, "chosen", kind=int)
        adapters = self.adapters
        return adapters[index] if index is not None and 0 <= index < len(adapters) else None

    # --- KFD, access ---
    @property
    def kfd_node(self) -> dict:
        return pick(self.facts, "device_nodes", "kfd", kind=dict, default={})

    @property
    def render_nodes(self) -> list[dict]:
        return dicts(pick(self.facts, "device_nodes", "render_nodes"))

    @property
    def kfd_nodes(self) -> list[dict] | None:
        value = self.facts.get("kfd_nodes")
        return dicts(value) if isinstance(value, list) else None

    @property
    def user(self) -> dict:
        return self.facts.get("user") if isinstance(self.facts.get("user"), dict) else {}

    # --- ROCm ---
    @property
    def rocm(self) -> dict:
        return self.facts.get("rocm") if isinstance(self.facts.get("rocm"), dict) else {}

    @property
    def amdgpu(self) -> dict:
        return self.facts.get("amdgpu") if isinstance(self.facts.get("amdgpu"), dict) else {}
