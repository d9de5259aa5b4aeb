"""What this machine says about `navitrain advise`'s inputs: whether it has a graphics card to sell, and
how much power the machine draws training on it.

A machine without a discrete card has nothing to sell and no GPU power to pay for (its GPU routes, if
any, run on the CPU through a software Vulkan driver). A card in the table below draws its typical board
power plus the rest of the machine; any other card's draw is an assumption the output says it made.
"""
from __future__ import annotations

from dataclasses import dataclass

# Typical board power (W) from the vendors' specification pages, longest name first so that
# "RX 5700 XT" is not read as "RX 5700".
CARD_WATTS: dict[str, int] = dict(sorted({
    "RX 5500 XT": 130, "RX 5600 XT": 150, "RX 5700 XT": 225, "RX 5700": 180,
    "RX 6600 XT": 160, "RX 6650 XT": 180, "RX 6600": 132, "RX 6700 XT": 230, "RX 6750 XT": 250,
    "RX 6800 XT": 300, "RX 6800": 250, "RX 6900 XT": 300, "RX 6950 XT": 335,
    "RX 7600": 165, "RX 7700 XT": 245, "RX 7800 XT": 263, "RX 7900 XTX": 355, "RX 7900 XT": 315,
    "RTX 3060": 170, "RTX 3070": 220, "RTX 3080": 320, "RTX 3090": 350,
    "RTX 4060": 115, "RTX 4070": 200, "RTX 4080": 320, "RTX 4090": 450,
}.items(), key=lambda item: -len(item[0])))
# What the rest of the machine (CPU feeding the card, board, drives, power-supply losses) adds while the
# card trains: an assumption, said as one in the output.
REST_OF_MACHINE_W = 100
# The whole machine's draw on a card navitrain has no figure for: an assumption, said as one.
ASSUMED_GPU_MACHINE_W = 300.0
# What a current card sells for when the user does not say: an assumption, said as one.
ASSUMED_RESALE = 100.0
_CARD_VENDORS = ("AMD", "NVIDIA")


@dataclass(frozen=True)
class MachineCard:
    """The card advice is about, or its absence."""
    name: str | None          # "AMD Radeon RX 5600 XT"; None: no discrete card
    board_watts: int | None   # from CARD_WATTS, None when not in it

    @property
    def present(self) -> bool:
        return self.name is not None

    def power(self) -> tuple[float | None, str]:
        """The whole machine's watts while training on the card, and where the figure comes from."""
        if not self.present:
            return None, "no GPU here"
        if self.board_watts is None:
            return ASSUMED_GPU_MACHINE_W, "assumed: navitrain has no power figure for this card; --power-gpu sets it"
        return float(self.board_watts + REST_OF_MACHINE_W), (
            f"its {self.board_watts} W typical board power plus {REST_OF_MACHINE_W} W assumed for the rest of the "
            "machine; --power-gpu sets it")


def board_watts(name: str | None) -> int | None:
    if not name:
        return None
    for model, watts in CARD_WATTS.items():
        if model.lower() in name.lower():
            return watts
    return None


def card_of(facts: dict) -> MachineCard:
    """The discrete AMD or NVIDIA card in a doctor fact set (integrated GPUs, server BMC displays and
    virtual adapters are not cards one sells or pays GPU power for)."""
    from navitrain.doctor.situation import Situation, pick

    s = Situation(facts if isinstance(facts, dict) else {})
    cards = [g for g in s.gpus if pick(g, "vendor", kind=str) in _CARD_VENDORS
             and pick(g, "integrated", kind=bool) is not True]
    if not cards:
        return MachineCard(None, None)
    card = cards[0] if s.primary not in cards else s.primary
    name = pick(card, "name", kind=str)
    label = name or f"the {pick(card, 'vendor', kind=str)} GPU {pick(card, 'device_id', kind=str) or ''}".strip()
    return MachineCard(label, board_watts(name))


def roads_for(facts: dict, speeds: dict[str, float]) -> tuple[dict, ...]:
    """The roads outside navitrain that doctor would name for this machine (doctor/data/roads.json), as
    advise inputs; none when a native route already trains here (it was measured)."""
    from navitrain.doctor.roads import applicable
    from navitrain.doctor.situation import Situation

    if "native" in speeds:
        return ()
    s = Situation(facts if isinstance(facts, dict) else {})
    return tuple({"id": r.id, "name": r.name, "setup_hours": r.setup_hours, "setup_basis": r.setup_basis,
                  "speed": r.speed_text(), "install": r.install_for(s.gfx), "verified": r.verified,
                  "sources": list(r.sources)} for r in applicable(s))
