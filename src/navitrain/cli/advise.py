"""`navitrain advise`: stay on the CPU, use the best local GPU route, rent a cloud GPU or upgrade?"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from navitrain.cli._output import console, fail, print_json

_D = None  # filled lazily with navitrain.advise.Inputs defaults


def _defaults():
    global _D
    if _D is None:
        from navitrain.advise import Inputs

        _D = Inputs(speeds={"cpu": 1.0})
    return _D


def _render(advice) -> None:
    from rich.markup import escape
    from rich.table import Table

    data = advice.to_dict()
    c = data["inputs"]["currency"]
    months = data["inputs"]["months"]
    table = Table(title="what each option costs a month, and over the horizon", title_justify="left")
    for name in ("option", "speed", "train h/mo", "money/mo", "up front", f"{months}-mo total",
                 "pays if 1 h >", "upgrade even"):
        table.add_column(name, justify="left" if name == "option" else "right")
    upgrade = advice.option("upgrade")
    for option, full in zip(data["options"], advice.options):
        worth = option["worth_it_above_hour_value"]
        worth_text = "(now)" if option["key"] == data["baseline"] else (
            "never" if worth is None else f"{c}{worth:,.2f}")
        if option["key"] == "upgrade":
            even = "-"
        else:
            month = upgrade.break_even_month.get(option["key"])
            even = ">10 y" if month is None else ("at once" if month == 0 else f"month {month}")
        style = "bold green" if option["key"] == data["recommendation"] else ""
        table.add_row(full.short, f"{option['speed_vs_cpu']:.3g}x", f"{option['hours_per_month']:.1f}",
                      f"{c}{option['money_per_month']:,.2f}", f"{c}{option['upfront']:,.0f}",
                      f"{c}{option['total_cost']:,.2f}", worth_text, even, style=style)
    console.print(table)
    console.print("[dim]'pays if 1 h >' is the value of an hour of waiting above which the option beats what you "
                  "use now. 'upgrade even' is the month in which the upgrade has paid for itself against that "
                  "option.[/]")
    console.print(f"[bold]Recommendation:[/] {escape(data['reason'])}")
    console.print("[dim]Assumptions:[/]")
    for line in data["assumptions"]:
        console.print(f"  [dim]- {escape(line)}[/]")
    for option in data["options"]:
        for note in option["notes"]:
            console.print(f"  [dim]- {escape(note)}[/]")


def _machine(root: Path, resale: float | None, power_gpu: float | None, power_cpu: float,
             speeds: dict[str, float]):
    """The card on this machine and the inputs that follow from it: what it sells for, what the machine
    draws on it (unless the user gave them), and the other roads that can apply to it."""
    from navitrain.advise_machine import ASSUMED_RESALE, card_of, roads_for
    from navitrain.doctor import collect

    facts = collect(root, probe=False)  # files only: advice must be quick
    card, roads = card_of(facts), roads_for(facts, speeds)
    if not card.present:
        # nothing to sell; a GPU route here runs on the CPU (software Vulkan), at the CPU's power
        return card, {"current_gpu": None, "resale": 0.0 if resale is None else resale, "power_gpu": power_cpu,
                      "power_gpu_source": "no GPU here: a GPU route runs on the CPU", "roads": roads}
    watts, source = card.power()
    if power_gpu is not None:
        watts, source = power_gpu, "given with --power-gpu"
    return card, {"current_gpu": card.name, "resale": ASSUMED_RESALE if resale is None else resale,
                  "power_gpu": watts, "power_gpu_source": source, "roads": roads}


def _render_roads(roads: list[dict], currency: str, hour_value: float) -> None:
    from rich.markup import escape

    if not roads:
        return
    console.print("[bold]Other roads to try on this card[/] (not ranked: nobody has measured them on it):")
    for road in roads:
        setup = f"about {road['setup_hours']:g} h to set up ({road['setup_basis']})"
        if hour_value > 0:
            setup += f", {currency}{road['setup_cost']:,.2f} of your time"
        console.print(f"  - {escape(road['name'])}: {escape(setup)}. {escape(road['speed'] or 'Speed unknown.')}")
        console.print(f"    [dim]{escape(road['verified'])}[/]")


def register(app: typer.Typer) -> None:
    d = _defaults()

    @app.command()
    def advise(
        speed: Optional[list[str]] = typer.Option(
            None, "--speed", help="ROUTE=SAMPLES_PER_S or ROUTE=Nx (N times the CPU), repeatable. "
            "Default: the latest `navitrain bench` on this machine."),
        hours: float = typer.Option(
            d.hours_per_month, "--hours", help="Hours of training a month on your best local route."),
        cloud_price: float = typer.Option(d.cloud_price, "--cloud-price", help="Cloud GPU price per hour."),
        cloud_speed: Optional[float] = typer.Option(
            None, "--cloud-speed", help="Cloud GPU speed as a multiple of your best local route."),
        cloud_vs_cpu: float = typer.Option(
            d.cloud_vs_cpu, "--cloud-speed-vs-cpu",
            help="Cloud GPU speed as a multiple of your CPU (used without --cloud-speed)."),
        upgrade_price: float = typer.Option(d.upgrade_price, "--upgrade-price", help="Price of the new card."),
        resale: Optional[float] = typer.Option(
            None, "--resale", help=f"What your current card sells for. Default: {d.resale:g} when this machine has "
            "a graphics card, 0 when it has none."),
        upgrade_speed: Optional[float] = typer.Option(
            None, "--upgrade-speed", help="New card's speed as a multiple of your best local route."),
        upgrade_vs_cpu: float = typer.Option(
            d.upgrade_vs_cpu, "--upgrade-speed-vs-cpu",
            help="New card's speed as a multiple of your CPU (used without --upgrade-speed)."),
        electricity_price: float = typer.Option(
            d.electricity_price, "--electricity-price", help="Electricity price per kWh."),
        power_cpu: float = typer.Option(
            d.power_cpu, "--power-cpu", help="Watts the machine draws training on the CPU."),
        power_gpu: Optional[float] = typer.Option(
            None, "--power-gpu", help="Watts the machine draws training on your current GPU. Default: the card's "
            "typical board power plus 100 W for the rest of the machine where navitrain knows the card, else "
            f"{d.power_gpu:g} W (said to be assumed); the CPU's power on a machine without a GPU."),
        power_upgrade: float = typer.Option(
            d.power_upgrade, "--power-upgrade", help="Watts the machine would draw on the new card."),
        hour_value: float = typer.Option(
            d.hour_value, "--hour-value",
            help="What an hour of waiting for results is worth to you (0: count money only)."),
        months: int = typer.Option(d.months, "--months", help="Horizon for totals and the recommendation."),
        currency: str = typer.Option(d.currency, "--currency", help="Currency symbol for the output."),
        root: Path = typer.Option(Path("/"), "--root", help="Read machine files under this directory instead of / "
                                  "to find the graphics card (as navitrain doctor --root does)."),
        as_json: bool = typer.Option(False, "--json", help="Print every input and output as JSON."),
    ) -> None:
        """Hours of waiting and money a month for each option (CPU, best local GPU route, cloud, upgrade),
        when an upgrade breaks even, and a recommendation with its assumptions.

        Every assumption is an option below, shown with its default; the output lists the values it used."""
        from navitrain.advise import AdviceInputError, Inputs, parse_speeds
        from navitrain.advise import advise as compute
        from navitrain.routes import registry

        notes = []
        try:
            if speed:
                speeds, source = parse_speeds(speed), "given"
            else:
                from navitrain.bench.storage import measured_speeds

                speeds, source = measured_speeds()
                if not speeds:
                    notes.append(f"no measured speeds ({source}); assuming only the CPU trains here. "
                                 "Run `navitrain bench --quick` or pass --speed.")
                    speeds, source = {"cpu": 1.0}, "assumed"
            from navitrain.advise import LOCAL_GPU_ROUTES

            known = sorted(set(registry.names()) | set(LOCAL_GPU_ROUTES) | {"cpu"})
            for route in speeds:
                if route not in known:
                    raise AdviceInputError("--speed", f"unknown route {route!r}; known: {', '.join(known)}")
            if "cpu" not in speeds:
                raise AdviceInputError("--speed", "the cpu route's speed is needed as the reference "
                                       "(e.g. --speed cpu=120 --speed wgpu=400)")
            if not currency.strip() or len(currency) > 5:
                raise AdviceInputError("--currency", f"{currency!r} is not a currency symbol")
            if not root.is_dir():
                raise AdviceInputError("--root", f"{root} is not a directory")
            card, machine = _machine(root, resale, power_gpu, power_cpu, speeds)
            result = compute(Inputs(
                speeds=speeds, hours_per_month=hours, cloud_price=cloud_price, cloud_vs_cpu=cloud_vs_cpu,
                cloud_vs_local=cloud_speed, upgrade_price=upgrade_price, upgrade_vs_cpu=upgrade_vs_cpu,
                upgrade_vs_local=upgrade_speed, electricity_price=electricity_price, power_cpu=power_cpu,
                power_upgrade=power_upgrade, hour_value=hour_value, months=months, currency=currency,
                speeds_source=source, **machine))
        except AdviceInputError as exc:
            fail(str(exc))
        if as_json:
            print_json({**result.to_dict(), "notes": notes,
                        "machine": {"gpu": card.name, "board_watts": card.board_watts}})
            return
        for note in notes:
            console.print(f"[yellow]note:[/] {note}")
        _render(result)
        _render_roads(result.roads, currency, hour_value)
