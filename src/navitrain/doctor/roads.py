"""The other roads to GPU training on cards official ROCm wheels skip (data/roads.json), as doctor findings.

navitrain's own routes are judged by recommend.py; this file names the roads outside navitrain (AMD's
TheRock wheels, a community ROCm source build, an OpenCL backend, DirectML) where they can apply to the
machine doctor sees, each with its install line, limits, what is known of its speed, and what navitrain
has and has not verified. The knowledge is data, not code: the tests and `advise` read the same file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from navitrain.doctor.knowledge import Finding, finding, rule
from navitrain.doctor.situation import Situation, pick


@dataclass(frozen=True)
class Road:
    id: str
    name: str
    what: str
    platforms: tuple[str, ...]
    gfx: tuple[str, ...] | None  # None: any GPU the platform drives
    install: str
    setup_hours: float
    setup_basis: str
    limits: tuple[str, ...]
    speed: tuple[dict, ...]
    speed_note: str
    sources: tuple[str, ...]
    verified: str
    needs: str | None  # 'opencl': an OpenCL driver must be installed too

    def install_for(self, gfx: str | None) -> str:
        return self.install.replace("{gfx}", gfx or "gfx1010")

    def speed_text(self) -> str:
        figures = [f"{s['figure']} (source: {s['source']})" for s in self.speed]
        return " ".join(figures + ([self.speed_note] if self.speed_note else []))

    def fraction_of_native(self) -> float | None:
        """The published training speed as a fraction of the vendor stack's, where one exists."""
        values = [s["fraction_of_native"] for s in self.speed if "fraction_of_native" in s]
        return values[0] if values else None


@lru_cache(maxsize=1)
def load() -> tuple[Road, ...]:
    data = json.loads(resources.files("navitrain.doctor").joinpath("data/roads.json").read_text())
    return tuple(Road(
        id=r["id"], name=r["name"], what=r["what"], platforms=tuple(r["platforms"]),
        gfx=None if r["gfx"] == "any" else tuple(r["gfx"]), install=r["install"],
        setup_hours=float(r["setup_hours"]), setup_basis=r["setup_basis"], limits=tuple(r["limits"]),
        speed=tuple(r["speed"]), speed_note=r["speed_note"], sources=tuple(r["sources"]),
        verified=r["verified"], needs=r.get("needs")) for r in data["roads"])


def os_kind(s: Situation) -> str | None:
    """'linux', 'windows' or 'macos' from the facts; None when they do not say."""
    platform = (pick(s.facts, "system", "platform", kind=str) or "").lower()
    if platform in ("linux", "windows"):
        return platform
    if platform == "darwin":
        return "macos"
    return "linux" if pick(s.facts, "system", "os", kind=str) or pick(s.facts, "system", "kernel", kind=str) else None


def torch_is_therock(s: Situation) -> bool:
    """A ROCm torch from TheRock's wheels: its version carries `rocmsdk` (older nightlies) or a `rocm7.1N`
    development tag, and it has code for this card."""
    version = (s.torch_version or "").lower()
    return (s.torch_build == "rocm" and ("rocmsdk" in version or "rocm7.1" in version or "a0+rocm" in version)
            and bool(s.gfx) and s.torch_has_code_for(s.gfx) is True)


def applicable(s: Situation) -> list[Road]:
    """Roads that can apply here: the primary GPU is AMD, the vendor stack does not already work for it,
    the road runs on this OS and (where the road is per-architecture) supports this card."""
    from navitrain.doctor.recommend import native_blockers

    if not s.primary_is_amd:
        return []
    system = os_kind(s) or "linux"  # doctor reads sysfs: a fact set that does not say is from Linux
    if system == "macos":
        return []
    if not native_blockers(s) and s.torch_build == "rocm":
        return []  # torch already runs on the card: nothing to install
    out = []
    for road in load():
        if system not in road.platforms:
            continue
        if road.gfx is not None and s.gfx not in road.gfx:
            continue
        out.append(road)
    return out


@rule
def other_roads(s: Situation) -> list[Finding]:
    if torch_is_therock(s):
        return [finding(
            "road-therock-installed", "info", f"This PyTorch is a TheRock build with code for {s.gfx}",
            f"PyTorch {s.torch_version} comes from AMD's TheRock wheels. " + _road("therock").verified,
            "Run `navitrain probe` to see which routes work with it (`native`, or `nomiopen` where MIOpen fails).",
            _road("therock").sources)]
    return [_finding_for(road, s) for road in applicable(s)]


def _road(road_id: str) -> Road:
    return next(r for r in load() if r.id == road_id)


def _finding_for(road: Road, s: Situation) -> Finding:
    speed = road.speed_text()
    why = " ".join([road.what, "Limits: " + " ".join(road.limits), ("Speed: " + speed) if speed else "",
                    "Verified: " + road.verified])
    fix = (f"Install: `{road.install_for(s.gfx)}`. Setup takes about {_hours(road.setup_hours)}: "
           f"{road.setup_basis}. {_needs(road, s)}`navitrain advise` counts it among your options; "
           "docs/alternatives.md in navitrain's source compares the roads side by side.")
    return finding(f"road-{road.id}", "info", f"Another road: {road.name}", " ".join(why.split()), fix,
                   road.sources)


def _needs(road: Road, s: Situation) -> str:
    if road.needs != "opencl":
        return ""
    icds = [i for i in (s.facts.get("opencl_icds") or []) if isinstance(i, dict)]
    if icds:
        names = ", ".join(pick(i, "library", kind=str) or pick(i, "file", kind=str) or "?" for i in icds)
        return f"OpenCL drivers installed here: {names}. "
    return ("No OpenCL driver is installed here (/etc/OpenCL/vendors has no .icd file): install one first, "
            "e.g. Mesa's rusticl (`sudo apt-get install mesa-opencl-icd`, then RUSTICL_ENABLE=radeonsi) or "
            "ROCm's OpenCL runtime. ")


def _hours(h: float) -> str:
    return f"{round(h * 60)} minutes" if h < 1 else f"{h:g} hour{'s' if h != 1 else ''}"
