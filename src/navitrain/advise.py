"""`navitrain advise`: what each way of training costs in waiting and money, from measured speeds.

The unit of work is the user's own: the hours a month they train on their best local route. Every
option does that same work at its own speed, so only speed *ratios* matter and measured samples/s,
given samples/s and relative factors all work alike. Options:
  cpu      stay on the CPU
  local    the fastest local GPU route that was measured (native, nomiopen, wgpu)
  cloud    rent a GPU by the hour
  upgrade  buy a card the stock stack supports, sell the current one
Money per month is electricity for the machine's own options and rent for the cloud; the upgrade also
costs its price less the resale value once, at the start. Waiting can be given a price per hour
(`hour_value`); the recommendation minimises money plus priced waiting over the horizon.

Torch-free and side-effect free: the CLI feeds it numbers, the tests check the arithmetic.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

HOURS_IN_MONTH = 24 * 31
LOCAL_GPU_ROUTES = ("native", "nomiopen", "wgpu")
# Beyond ten years a break-even is no break-even for consumer hardware.
MAX_BREAK_EVEN_MONTHS = 120


class AdviceInputError(ValueError):
    """An input out of range; `option` names the command-line option that set it."""

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}")
        self.option = option


@dataclass(frozen=True)
class Inputs:
    # Speeds: route -> samples/s (or any common unit: only ratios are used). Must include "cpu".
    speeds: dict[str, float]
    hours_per_month: float = 20.0          # training hours a month on the best local route
    cloud_price: float = 1.00              # per GPU-hour
    cloud_vs_cpu: float = 15.0             # cloud GPU speed as a multiple of the CPU's
    cloud_vs_local: float | None = None    # ... or of the best local route (wins when given)
    upgrade_price: float = 400.0           # the new card
    resale: float = 100.0                  # what the current card sells for
    upgrade_vs_cpu: float = 15.0           # the new card's speed as a multiple of the CPU's
    upgrade_vs_local: float | None = None  # ... or of the best local route (wins when given)
    electricity_price: float = 0.25        # per kWh
    power_cpu: float = 150.0               # whole machine, watts, while training on the CPU
    power_gpu: float = 300.0               # whole machine, watts, while training on the current GPU
    power_upgrade: float = 300.0           # whole machine, watts, while training on the new card
    # The machine's card, as the sentences name it; None: the machine has none (nothing to sell, and its
    # GPU routes, if any, run on the CPU through a software Vulkan driver at the CPU's power).
    current_gpu: str | None = "the current GPU"
    power_gpu_source: str = "assumed; --power-gpu sets it"  # where power_gpu comes from, for the output
    hour_value: float = 0.0                # what an hour of waiting for results is worth
    months: int = 24                       # horizon for totals and the recommendation
    currency: str = "$"
    speeds_source: str = "given"           # "measured (fingerprint ...)", "given", "assumed"
    # Roads outside navitrain that can apply to this card (doctor/data/roads.json, via advise_machine.roads_for):
    # dicts with id, name, setup_hours, setup_basis, speed (text with sources), install, verified, sources.
    roads: tuple = ()


# (field, command-line option, lowest allowed, highest sensible, lowest is exclusive)
_LIMITS: tuple[tuple[str, str, float, float, bool], ...] = (
    ("hours_per_month", "--hours", 0.0, HOURS_IN_MONTH, True),
    ("cloud_price", "--cloud-price", 0.0, 200.0, False),
    ("cloud_vs_cpu", "--cloud-speed-vs-cpu", 0.0, 10_000.0, True),
    ("cloud_vs_local", "--cloud-speed", 0.0, 10_000.0, True),
    ("upgrade_price", "--upgrade-price", 0.0, 20_000.0, False),
    ("resale", "--resale", 0.0, 20_000.0, False),
    ("upgrade_vs_cpu", "--upgrade-speed-vs-cpu", 0.0, 10_000.0, True),
    ("upgrade_vs_local", "--upgrade-speed", 0.0, 10_000.0, True),
    ("electricity_price", "--electricity-price", 0.0, 5.0, False),
    ("power_cpu", "--power-cpu", 0.0, 5_000.0, True),
    ("power_gpu", "--power-gpu", 0.0, 5_000.0, True),
    ("power_upgrade", "--power-upgrade", 0.0, 5_000.0, True),
    ("hour_value", "--hour-value", 0.0, 10_000.0, False),
    ("months", "--months", 1, 120, False),
)


def validate(inputs: Inputs) -> None:
    """Raise AdviceInputError naming the option for any negative, non-finite or absurd input."""
    for name, option, low, high, exclusive in _LIMITS:
        value = getattr(inputs, name)
        if value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise AdviceInputError(option, f"must be a finite number, got {value!r}")
        if value < low or (exclusive and value == low):
            raise AdviceInputError(option, f"must be {'above' if exclusive else 'at least'} {low:g}, got {value:g}")
        if value > high:
            raise AdviceInputError(option, f"{value:g} is not plausible (at most {high:g})")
    if inputs.current_gpu is None and inputs.resale > 0:
        raise AdviceInputError("--resale", "this machine has no graphics card to sell")
    if "cpu" not in inputs.speeds:
        raise AdviceInputError("--speed", "a speed for the cpu route is needed (e.g. --speed cpu=1)")
    for route, speed in inputs.speeds.items():
        if not isinstance(speed, (int, float)) or not math.isfinite(speed) or speed <= 0:
            raise AdviceInputError("--speed", f"{route}={speed!r}: a speed must be a positive number")
    ratio = max(inputs.speeds.values()) / min(inputs.speeds.values())
    if ratio > 1e6:
        raise AdviceInputError("--speed", f"speeds differ by a factor of {ratio:.3g}; check the units")


@dataclass
class Option:
    key: str                     # cpu | local | cloud | upgrade
    label: str                   # a noun phrase: "the CPU", "a rented cloud GPU"
    speed_vs_cpu: float
    hours_per_month: float       # waiting for training to finish
    money_per_month: float       # electricity or rent
    upfront: float = 0.0         # once, at the start (upgrade: price less resale)
    total_money: float = 0.0     # upfront + months x money_per_month
    total_cost: float = 0.0      # total_money + months x hours x hour_value
    # the hour value above which this option beats the baseline (best local), None when it never does
    worth_it_above_hour_value: float | None = None
    break_even_month: dict[str, int | None] = field(default_factory=dict)  # upgrade only: vs each option
    notes: list[str] = field(default_factory=list)
    key_detail: str = ""         # local: which route
    action: str = ""             # the advice as an imperative: "Stay on the CPU", "Rent a cloud GPU"

    @property
    def short(self) -> str:
        return f"{self.key} ({self.key_detail})" if self.key_detail else self.key


@dataclass
class Advice:
    inputs: dict[str, Any]
    baseline: str                # the option the user's hours are measured on
    options: list[Option]
    recommendation: str          # option key
    reason: str
    assumptions: list[str]
    # Other roads to try (not ranked: nobody has measured them on this card): each road's dict plus
    # setup_cost, the hours it takes to set up priced at hour_value.
    roads: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "baseline": self.baseline,
                "options": [asdict(o) for o in self.options],
                "recommendation": self.recommendation, "reason": self.reason, "assumptions": self.assumptions,
                "roads": self.roads}

    def option(self, key: str) -> Option | None:
        return next((o for o in self.options if o.key == key), None)


def break_even_month(upfront: float, monthly: float, other_monthly: float) -> int | None:
    """First month m (counted from 1; 0 when nothing is paid up front) at which upfront + m*monthly is
    no more than m*other_monthly; None when that never happens within MAX_BREAK_EVEN_MONTHS."""
    if upfront <= 0:
        return 0 if monthly <= other_monthly else None
    saving = other_monthly - monthly
    if saving <= 0:
        return None
    month = math.ceil(upfront / saving - 1e-9)  # tolerance: exact divisions must not round up
    return month if month <= MAX_BREAK_EVEN_MONTHS else None


def advise(inputs: Inputs) -> Advice:
    validate(inputs)
    cpu_speed = inputs.speeds["cpu"]
    gpu_routes = {r: s for r, s in inputs.speeds.items() if r != "cpu"}
    best_gpu = max(gpu_routes, key=gpu_routes.get) if gpu_routes else None
    # The user's hours are on the best *local* route: a GPU route slower than the CPU is not used.
    baseline_speed = max(cpu_speed, gpu_routes.get(best_gpu, 0.0))
    work = inputs.hours_per_month * baseline_speed  # samples a month, in speed units x hours
    kwh = inputs.electricity_price / 1000.0

    def machine_option(key: str, label: str, action: str, speed: float, watts: float) -> Option:
        hours = work / speed
        return Option(key, label, speed / cpu_speed, hours, hours * watts * kwh, action=action)

    options = [machine_option("cpu", "the CPU", "Stay on the CPU", cpu_speed, inputs.power_cpu)]
    card = inputs.current_gpu
    if best_gpu is not None:
        # without a card, a "GPU" route runs on a software Vulkan driver: the CPU does the work, at its power
        where = f"on {card}" if card else "(on the CPU: this machine has no GPU)"
        local = machine_option("local", f"the {best_gpu} route {where}", f"Train on the {best_gpu} route",
                               gpu_routes[best_gpu], inputs.power_gpu if card else inputs.power_cpu)
        if gpu_routes[best_gpu] <= cpu_speed:
            local.notes.append(f"The {best_gpu} route is not faster than the CPU here.")
        local.key_detail = best_gpu
        options.append(local)

    cloud_speed = (inputs.cloud_vs_local * baseline_speed if inputs.cloud_vs_local is not None
                   else inputs.cloud_vs_cpu * cpu_speed)
    cloud_hours = work / cloud_speed
    options.append(Option("cloud", "a rented cloud GPU", cloud_speed / cpu_speed, cloud_hours,
                          cloud_hours * inputs.cloud_price, action="Rent a cloud GPU",
                          notes=["The cloud figures are rent only: data transfer, storage and set-up time are "
                                 "not included."]))

    upgrade_speed = (inputs.upgrade_vs_local * baseline_speed if inputs.upgrade_vs_local is not None
                     else inputs.upgrade_vs_cpu * cpu_speed)
    upgrade = machine_option("upgrade", "a new supported card",
                             f"Buy a supported card and sell {card}" if card else "Buy a supported card",
                             upgrade_speed, inputs.power_upgrade)
    upgrade.upfront = inputs.upgrade_price - inputs.resale
    options.append(upgrade)

    for option in options:
        option.total_money = option.upfront + inputs.months * option.money_per_month
        option.total_cost = option.total_money + inputs.months * option.hours_per_month * inputs.hour_value

    baseline = options[1] if best_gpu is not None and gpu_routes[best_gpu] > cpu_speed else options[0]
    for option in options:
        if option is baseline:
            continue
        saved_hours = inputs.months * (baseline.hours_per_month - option.hours_per_month)
        extra_money = option.total_money - baseline.total_money
        if saved_hours > 0:
            option.worth_it_above_hour_value = max(0.0, extra_money / saved_hours)
        elif extra_money < 0 and saved_hours == 0:
            option.worth_it_above_hour_value = 0.0

    def monthly_cost(option: Option) -> float:
        return option.money_per_month + option.hours_per_month * inputs.hour_value

    for option in options:
        if option is not upgrade:
            upgrade.break_even_month[option.key] = break_even_month(
                upgrade.upfront, monthly_cost(upgrade), monthly_cost(option))

    # Lowest money plus priced waiting over the horizon; ties go to less waiting, then to less spending
    # up front (keeping what one has beats buying at the same price).
    best = min(options, key=lambda o: (round(o.total_cost, 6), o.hours_per_month, o.upfront))
    reason = _reason(best, options, inputs)
    return Advice(inputs=_inputs_dict(inputs, baseline_speed, cloud_speed, upgrade_speed),
                  baseline=baseline.key, options=options, recommendation=best.key, reason=reason,
                  assumptions=_assumptions(inputs, baseline),
                  roads=[{**road, "setup_cost": road["setup_hours"] * inputs.hour_value} for road in inputs.roads])


def _money(value: float, currency: str) -> str:
    return f"{currency}{value:,.2f}"


def _reason(best: Option, options: list[Option], inputs: Inputs) -> str:
    """Whole sentences: the advice, what it costs, and what each faster option would save."""
    c = inputs.currency
    text = (f"{best.action}. That is {best.hours_per_month:.1f} h of training a month for "
            f"{_money(best.money_per_month, c)} a month")
    if best.upfront:
        text += f" after {_money(best.upfront, c)} up front"
    text += f", {_money(best.total_cost, c)} over {inputs.months} months"
    if inputs.hour_value:
        text += f" counting waiting at {_money(inputs.hour_value, c)}/h"
    text += "."
    for option in options:
        if option.hours_per_month < best.hours_per_month:
            threshold = _threshold(option, best, inputs)
            label = option.label[0].upper() + option.label[1:]
            text += (f" {label} would save {best.hours_per_month - option.hours_per_month:.1f} h a month; "
                     f"it pays off when an hour of waiting is worth more than {_money(threshold, c)} to you.")
    return text


def _threshold(option: Option, against: Option, inputs: Inputs) -> float:
    """Hour value above which `option` costs less than `against` over the horizon."""
    saved = inputs.months * (against.hours_per_month - option.hours_per_month)
    return max(0.0, (option.total_money - against.total_money) / saved) if saved > 0 else math.inf


def _assumptions(inputs: Inputs, baseline: Option) -> list[str]:
    c = inputs.currency
    cloud = (f"{inputs.cloud_vs_local:g}x the best local route" if inputs.cloud_vs_local is not None
             else f"{inputs.cloud_vs_cpu:g}x the CPU")
    upgrade = (f"{inputs.upgrade_vs_local:g}x the best local route" if inputs.upgrade_vs_local is not None
               else f"{inputs.upgrade_vs_cpu:g}x the CPU")
    card = inputs.current_gpu
    sale = (f"{card} sells for {_money(inputs.resale, c)}." if card else "this machine has no card to sell.")
    power = f"Electricity costs {_money(inputs.electricity_price, c)}/kWh. The machine draws {inputs.power_cpu:g} W " \
            "training on the CPU"
    if card:
        power += (f", {inputs.power_gpu:g} W on {card} ({inputs.power_gpu_source}) and {inputs.power_upgrade:g} W on "
                  "the new card.")
    else:
        power += f" and would draw {inputs.power_upgrade:g} W on a new card."
        gpu_routes = [r for r in inputs.speeds if r != "cpu"]
        if gpu_routes:
            power += (f" It has no GPU, so the {', '.join(gpu_routes)} route{'s' if len(gpu_routes) > 1 else ''} "
                      "runs on the CPU at the CPU's power.")
    return [
        f"The speeds are {', '.join(f'{r} {s:.4g}' for r, s in inputs.speeds.items())} ({inputs.speeds_source}).",
        f"You train {inputs.hours_per_month:g} h a month on {baseline.label}.",
        f"A cloud GPU costs {_money(inputs.cloud_price, c)}/h and runs at {cloud}.",
        f"A new card costs {_money(inputs.upgrade_price, c)} and runs at {upgrade}; {sale}",
        power,
        f"An hour of waiting is worth {_money(inputs.hour_value, c)} to you; totals are over {inputs.months} months.",
    ]


def _inputs_dict(inputs: Inputs, baseline_speed: float, cloud_speed: float, upgrade_speed: float) -> dict[str, Any]:
    data = asdict(inputs)
    data["derived"] = {"baseline_speed": baseline_speed, "cloud_speed": cloud_speed,
                       "upgrade_speed": upgrade_speed}
    return data


def parse_speeds(values: list[str]) -> dict[str, float]:
    """`route=VALUE` items: VALUE in samples/s (any unit, as long as all share it), or `Nx` for N times
    the CPU's speed. Raises AdviceInputError("--speed", ...) on malformed items."""
    absolute: dict[str, float] = {}
    relative: dict[str, float] = {}
    for item in values:
        route, sep, value = item.partition("=")
        route, value = route.strip(), value.strip().lower()
        if not sep or not route or not value:
            raise AdviceInputError("--speed", f"{item!r} is not ROUTE=VALUE (e.g. wgpu=850 or wgpu=4x)")
        target = relative if value.endswith("x") else absolute
        try:
            number = float(value.rstrip("x"))
        except ValueError:
            raise AdviceInputError("--speed", f"{item!r}: {value!r} is not a number") from None
        if not math.isfinite(number) or number <= 0:
            raise AdviceInputError("--speed", f"{item!r}: a speed must be a positive number")
        if route in absolute or route in relative:
            raise AdviceInputError("--speed", f"{route} is given twice")
        target[route] = number
    if relative:
        if "cpu" in relative and relative["cpu"] != 1:
            raise AdviceInputError("--speed", "cpu is the reference of the Nx form; give cpu=1x or a speed")
        cpu = absolute.get("cpu")
        if cpu is None:
            if absolute:
                raise AdviceInputError("--speed", "mixing samples/s with Nx needs the cpu's samples/s too")
            cpu = 1.0
        absolute["cpu"] = cpu
        absolute.update({r: f * cpu for r, f in relative.items() if r != "cpu"})
    return absolute
