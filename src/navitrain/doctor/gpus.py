"""What a PCI id means: vendor, chip, family (GCN5, RDNA1-4, ...), gfx target and marketing name.

The table lives in data/gpus.json with its sources (pci.ids, libdrm's amdgpu.ids,
rocm_agent_enumerator, the kernel's KFD). 0x731f alone is five products; the PCI revision picks the
name (rev 0xca is the RX 5600 XT, 0xc1 the RX 5700 XT).
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources

AMD, NVIDIA, INTEL = 0x1002, 0x10DE, 0x8086

# gfx target prefix -> family, longest prefix first. Checked against the chips table in the tests.
_FAMILY_PREFIXES = (
    ("gfx115", "RDNA3.5"), ("gfx12", "RDNA4"), ("gfx11", "RDNA3"), ("gfx103", "RDNA2"), ("gfx101", "RDNA1"),
    ("gfx950", "CDNA4"), ("gfx94", "CDNA3"), ("gfx90a", "CDNA2"), ("gfx908", "CDNA1"), ("gfx9", "GCN5"),
    ("gfx8", "GCN3/4"), ("gfx7", "GCN2"), ("gfx6", "GCN1"),
)


@dataclass(frozen=True)
class GpuIdentity:
    vendor: str | None       # "AMD", "NVIDIA", "Intel", ... or None for an unknown vendor id
    name: str | None         # marketing name, revision-aware where known
    chip: str | None         # "Navi 10"
    family: str | None       # "RDNA1"
    gfx_target: str | None   # "gfx1010"
    integrated: bool | None  # an APU's GPU
    known: bool              # the device id is in the table (always False for non-AMD vendors)

    def to_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=1)
def table() -> dict:
    text = resources.files("navitrain.doctor").joinpath("data/gpus.json").read_text(encoding="utf-8")
    return json.loads(text)


def vendor_name(vendor_id: int | None) -> str | None:
    if vendor_id is None:
        return None
    return table()["vendors"].get(f"{vendor_id:04x}")


def family_of(gfx: str | None) -> str | None:
    if not gfx:
        return None
    gfx = gfx.lower().split(":")[0]
    for prefix, family in _FAMILY_PREFIXES:
        if gfx.startswith(prefix):
            return family
    return None


def gfx_from_target_version(value: int | None) -> str | None:
    """KFD's gfx_target_version (major*10000 + minor*100 + stepping) -> 'gfx1010'; 0 (a CPU node) -> None."""
    if not isinstance(value, int) or value <= 0:
        return None
    major, rest = divmod(value, 10000)
    minor, stepping = divmod(rest, 100)
    if not (6 <= major <= 99) or minor > 15 or stepping > 15:
        return None
    return f"gfx{major}{minor:x}{stepping:x}"


_GFX_RE = re.compile(r"^gfx(\d{1,2}?)([0-9a-f])([0-9a-f])$")


def target_version_of(gfx: str | None) -> int | None:
    """'gfx1010' -> 100100, 'gfx90a' -> 90010; the inverse of gfx_from_target_version."""
    if not gfx:
        return None
    m = _GFX_RE.match(gfx.lower().split(":")[0])
    if not m:
        return None
    return int(m.group(1)) * 10000 + int(m.group(2), 16) * 100 + int(m.group(3), 16)


def override_to_gfx(value: str | None) -> str | None:
    """HSA_OVERRIDE_GFX_VERSION '10.3.0' -> 'gfx1030' (the ISA the runtime will pretend to be)."""
    if not value:
        return None
    parts = value.strip().split(".")
    if len(parts) != 3:
        return None
    try:
        major, minor, stepping = (int(p) for p in parts)
    except ValueError:
        return None
    return gfx_from_target_version(major * 10000 + minor * 100 + stepping)


def identify(vendor_id: int | None, device_id: int | None, revision: int | None = None) -> GpuIdentity:
    vendor = vendor_name(vendor_id)
    if vendor_id != AMD or device_id is None:
        return GpuIdentity(vendor, None, None, None, None, None, False)
    entry = table()["devices"].get(f"{device_id:04x}")
    if entry is None:
        return GpuIdentity(vendor, None, None, None, None, None, False)
    chip = table()["chips"][entry["chip"]]
    return GpuIdentity(
        vendor=vendor,
        name=_marketing_name(entry, revision) or f"AMD {entry['chip']} ({chip['gfx']})",
        chip=entry["chip"],
        family=chip["family"],
        gfx_target=chip["gfx"],
        integrated=chip["integrated"],
        known=True,
    )


def _marketing_name(entry: dict, revision: int | None) -> str | None:
    revisions: dict = entry.get("revisions", {})
    if revision is not None and f"{revision:02x}" in revisions:
        return revisions[f"{revision:02x}"]
    if len(set(revisions.values())) == 1:  # one product whatever the revision (most workstation ids)
        return next(iter(revisions.values()))
    pci_name = entry.get("pci_name")
    if pci_name:
        # 'Navi 10 [Radeon RX 5600 OEM/5600 XT / 5700/5700 XT]' -> the bracketed product list
        m = re.search(r"\[(.+)\]", pci_name)
        return f"AMD {m.group(1)}" if m else f"AMD {pci_name}"
    return None


def known_gfx_targets() -> set[str]:
    return {chip["gfx"] for chip in table()["chips"].values()}
