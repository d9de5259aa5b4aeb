"""navitrain advise: arithmetic checked against hand-computed cases, monotonicity, input validation, CLI."""
import json
import math
import random
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from navitrain import advise as a
from navitrain.cli import app

BASE = dict(speeds={"cpu": 100.0, "wgpu": 300.0})


def test_hand_computed_money_and_hours():
    # work = 20 h x 300 = 6000 units a month; electricity 0.25 per kWh = 0.00025 per Wh
    advice = a.advise(a.Inputs(**BASE))
    cpu, local, cloud, upgrade = (advice.option(k) for k in ("cpu", "local", "cloud", "upgrade"))
    assert (cpu.hours_per_month, cpu.money_per_month) == pytest.approx((60.0, 60 * 150 * 0.00025))  # 2.25
    assert (local.hours_per_month, local.money_per_month) == pytest.approx((20.0, 1.5))
    assert (cloud.hours_per_month, cloud.money_per_month) == pytest.approx((4.0, 4.0))     # 1500 units/h, $1/h
    assert (upgrade.hours_per_month, upgrade.money_per_month) == pytest.approx((4.0, 0.3))
    assert upgrade.upfront == 300.0
    assert upgrade.total_money == pytest.approx(300 + 24 * 0.3)
    # 300 / (4.0 - 0.3) = 81.08 -> the 82nd month; against local and CPU the upgrade saves only
    # electricity (1.2 and 1.95 a month): 250 and 154 months, past the ten-year cut-off
    assert upgrade.break_even_month == {"cpu": None, "local": None, "cloud": 82}
    # cloud costs 96 - 36 = 60 more over 24 months and saves 16 h x 24 = 384 h
    assert cloud.worth_it_above_hour_value == pytest.approx(60 / 384)
    assert upgrade.worth_it_above_hour_value == pytest.approx((307.2 - 36) / 384)
    assert advice.baseline == "local" and advice.recommendation == "local"


def test_hand_computed_with_priced_waiting():
    advice = a.advise(a.Inputs(**BASE, hour_value=5.0))
    totals = {o.key: o.total_cost for o in advice.options}
    assert totals == pytest.approx({"cpu": 54 + 24 * 60 * 5, "local": 36 + 24 * 20 * 5,
                                    "cloud": 96 + 24 * 4 * 5, "upgrade": 307.2 + 24 * 4 * 5})
    assert advice.recommendation == "cloud"
    # monthly with waiting: upgrade 20.3, cloud 24, local 101.5, cpu 302.25
    assert advice.option("upgrade").break_even_month == {"cloud": 82, "local": 4, "cpu": 2}


def test_relative_speed_options_and_cpu_only_machine():
    advice = a.advise(a.Inputs(speeds={"cpu": 2.0}, cloud_vs_local=10, upgrade_vs_local=4, hours_per_month=30))
    assert advice.baseline == "cpu" and advice.option("local") is None
    assert advice.option("cloud").hours_per_month == pytest.approx(3.0)
    assert advice.option("upgrade").hours_per_month == pytest.approx(7.5)
    assert advice.option("cloud").speed_vs_cpu == pytest.approx(10.0)


def test_a_gpu_route_slower_than_the_cpu_is_not_the_baseline():
    advice = a.advise(a.Inputs(speeds={"cpu": 100.0, "wgpu": 50.0}, hours_per_month=10))
    assert advice.baseline == "cpu"
    local = advice.option("local")
    assert local.hours_per_month == pytest.approx(20.0)
    assert any("not faster" in note for note in local.notes)


@pytest.mark.parametrize("upfront,monthly,other,expected", [
    (300, 0.3, 4.0, 82), (100, 1.0, 2.0, 100), (100, 1.0, 3.0, 50), (0, 1.0, 1.0, 0), (-50, 2.0, 1.0, None),
    (100, 2.0, 2.0, None), (600, 0.0, 5.0, 120), (605, 0.0, 5.0, None),  # 121 months is past the cut-off
])
def test_break_even_month(upfront, monthly, other, expected):
    assert a.break_even_month(upfront, monthly, other) == expected


@pytest.mark.parametrize("field,option,value", [
    ("hours_per_month", "--hours", -1), ("hours_per_month", "--hours", 0), ("hours_per_month", "--hours", 1000),
    ("cloud_price", "--cloud-price", -0.5), ("cloud_price", "--cloud-price", 1e6),
    ("cloud_vs_cpu", "--cloud-speed-vs-cpu", 0), ("cloud_vs_local", "--cloud-speed", -2),
    ("upgrade_price", "--upgrade-price", -1), ("resale", "--resale", -1),
    ("electricity_price", "--electricity-price", 50), ("power_gpu", "--power-gpu", 0),
    ("hour_value", "--hour-value", math.nan), ("months", "--months", 0), ("months", "--months", 1000),
])
def test_invalid_inputs_name_their_option(field, option, value):
    with pytest.raises(a.AdviceInputError) as info:
        a.advise(a.Inputs(**BASE, **{field: value}))
    assert info.value.option == option and option in str(info.value)


def test_speeds_need_the_cpu_and_positive_values():
    with pytest.raises(a.AdviceInputError, match="cpu"):
        a.advise(a.Inputs(speeds={"wgpu": 3.0}))
    with pytest.raises(a.AdviceInputError, match="positive"):
        a.advise(a.Inputs(speeds={"cpu": 1.0, "wgpu": -3.0}))


def test_parse_speeds():
    assert a.parse_speeds(["cpu=120", "wgpu=480"]) == {"cpu": 120.0, "wgpu": 480.0}
    assert a.parse_speeds(["wgpu=4x"]) == {"cpu": 1.0, "wgpu": 4.0}
    assert a.parse_speeds(["cpu=50", "native=10x"]) == {"cpu": 50.0, "native": 500.0}
    for bad in (["wgpu"], ["wgpu=fast"], ["wgpu=0"], ["cpu=1", "cpu=2"], ["wgpu=100", "native=3x"]):
        with pytest.raises(a.AdviceInputError):
            a.parse_speeds(bad)


# ------------------------------------------------------------------------------------ monotonicity

positive = st.floats(min_value=0.01, max_value=500, allow_nan=False)
common = dict(
    cpu=st.floats(1, 1000), gpu_factor=st.floats(0.2, 50), hours=st.floats(0.5, 700),
    price=st.floats(0, 100), cloud_factor=st.floats(0.5, 200), hour_value=st.floats(0, 200),
    upgrade_price=st.floats(0, 3000), resale=st.floats(0, 1000),
)


def _inputs(cpu, gpu_factor, hours, price, cloud_factor, hour_value, upgrade_price, resale):
    return a.Inputs(speeds={"cpu": cpu, "wgpu": cpu * gpu_factor}, hours_per_month=hours, cloud_price=price,
                    cloud_vs_cpu=cloud_factor, hour_value=hour_value, upgrade_price=upgrade_price,
                    resale=resale)


@settings(max_examples=150, deadline=None)
@given(**common, extra=positive)
def test_a_dearer_cloud_never_looks_cheaper(cpu, gpu_factor, hours, price, cloud_factor, hour_value,
                                           upgrade_price, resale, extra):
    args = (cpu, gpu_factor, hours, price, cloud_factor, hour_value, upgrade_price, resale)
    cheap = a.advise(_inputs(*args))
    dear = a.advise(_inputs(cpu, gpu_factor, hours, min(price + extra, 200), cloud_factor, hour_value,
                            upgrade_price, resale))
    assert dear.option("cloud").money_per_month >= cheap.option("cloud").money_per_month
    assert dear.option("cloud").total_cost >= cheap.option("cloud").total_cost
    if cheap.recommendation != "cloud":
        assert dear.recommendation != "cloud"
    # against a dearer cloud the upgrade breaks even no later
    before, after = (x.option("upgrade").break_even_month["cloud"] for x in (cheap, dear))
    if before is not None:
        assert after is not None and after <= before


@settings(max_examples=150, deadline=None)
@given(**common, more=positive)
def test_more_hours_never_cost_less(cpu, gpu_factor, hours, price, cloud_factor, hour_value,
                                    upgrade_price, resale, more):
    args = (cpu, gpu_factor, hours, price, cloud_factor, hour_value, upgrade_price, resale)
    fewer = a.advise(_inputs(*args))
    longer = a.advise(_inputs(cpu, gpu_factor, min(hours + more, 744), *args[3:]))
    for option in fewer.options:
        other = longer.option(option.key)
        assert other.hours_per_month >= option.hours_per_month
        assert other.money_per_month >= option.money_per_month
        assert other.total_cost >= option.total_cost


@settings(max_examples=100, deadline=None)
@given(**common)
def test_the_recommendation_is_the_cheapest_total(cpu, gpu_factor, hours, price, cloud_factor, hour_value,
                                                  upgrade_price, resale):
    advice = a.advise(_inputs(cpu, gpu_factor, hours, price, cloud_factor, hour_value, upgrade_price, resale))
    best = advice.option(advice.recommendation)
    assert all(best.total_cost <= o.total_cost + 1e-6 for o in advice.options)


# --------------------------------------------------------------------------------------------- CLI

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "doctor"
WITH_GPU = ["--root", str(FIXTURES / "rx5600xt-rocm7-cputorch" / "root")]   # an RX 5600 XT
UNKNOWN_GPU = ["--root", str(FIXTURES / "nvidia-rtx4090" / "root")]        # named only by torch, not probed here
NO_GPU = ["--root", str(FIXTURES / "no-gpu" / "root")]


def test_cli_json_has_every_input_and_output():
    result = CliRunner().invoke(app, ["advise", "--speed", "cpu=100", "--speed", "wgpu=3x", "--hour-value", "5",
                                      "--json", *UNKNOWN_GPU])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["inputs"]["speeds"] == {"cpu": 100.0, "wgpu": 300.0}
    assert data["inputs"]["hour_value"] == 5.0 and data["inputs"]["speeds_source"] == "given"
    for name in ("hours_per_month", "cloud_price", "cloud_vs_cpu", "upgrade_price", "resale",
                 "electricity_price", "power_cpu", "power_gpu", "power_upgrade", "months"):
        assert name in data["inputs"]
    assert [o["key"] for o in data["options"]] == ["cpu", "local", "cloud", "upgrade"]
    assert data["recommendation"] == "cloud" and data["assumptions"]


def test_cli_table_and_recommendation():
    result = CliRunner().invoke(app, ["advise", "--speed", "cpu=100", "--speed", "wgpu=300", *WITH_GPU])
    assert result.exit_code == 0, result.output
    assert "Recommendation" in result.output and "(wgpu)" in result.output


@pytest.mark.parametrize("args,needle", [
    (["--hours", "-3"], "--hours"), (["--cloud-price", "-1"], "--cloud-price"), (["--months", "0"], "--months"),
    (["--speed", "warp=3"], "unknown route"), (["--speed", "wgpu"], "ROUTE=VALUE"),
    (["--speed", "wgpu=300"], "cpu"),
])
def test_cli_rejects_bad_input_with_exit_2(args, needle):
    result = CliRunner().invoke(app, ["advise", *args])
    assert result.exit_code == 2
    assert needle in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------- sentences that follow from the machine

def _advise_json(*args):
    result = CliRunner().invoke(app, ["advise", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _random_speeds(rng):
    cpu = rng.uniform(5, 500)
    return ["--speed", f"cpu={cpu:.3f}", "--speed", f"wgpu={cpu * rng.uniform(0.5, 20):.3f}",
            "--hour-value", f"{rng.choice([0, rng.uniform(0.1, 50)]):.2f}"]


def _assert_whole_sentences(data):
    for line in [data["reason"], *data["assumptions"], *(n for o in data["options"] for n in o["notes"])]:
        assert line.endswith("."), f"not a full sentence: {line!r}"
        assert not re.search(r"\bon (stay|rent|buy)\b", line, re.I), line
        for sentence in re.split(r"(?<=\.)\s+", line):
            assert sentence[0].isupper(), f"sentence starts mid-way: {sentence!r} in {line!r}"
            assert not re.match(r"(Stay|Rent|Buy|Train)\b[^.]*\bwould save\b", sentence), \
                f"an imperative used as a subject: {sentence!r}"


@pytest.mark.parametrize("machine", ("with-gpu", "unknown-gpu", "no-gpu"))
def test_rendered_advice_is_whole_sentences_on_every_machine(machine):
    rng = random.Random()
    args = {"with-gpu": WITH_GPU, "unknown-gpu": UNKNOWN_GPU, "no-gpu": NO_GPU}[machine]
    data = _advise_json(*_random_speeds(rng), *args)
    _assert_whole_sentences(data)
    text = CliRunner().invoke(app, ["advise", *_random_speeds(rng), *args]).output
    assert "Recommendation:" in text and "Traceback" not in text


def test_a_machine_without_a_gpu_has_no_card_to_sell_and_no_gpu_power():
    rng = random.Random()
    data = _advise_json(*_random_speeds(rng), *NO_GPU)
    inputs = data["inputs"]
    assert data["machine"]["gpu"] is None
    assert inputs["resale"] == 0 and inputs["current_gpu"] is None
    assert inputs["power_gpu"] == inputs["power_cpu"]  # its "GPU" route runs on the CPU (software Vulkan)
    local, cpu = (next(o for o in data["options"] if o["key"] == k) for k in ("local", "cpu"))
    # the same energy per hour as the CPU: money per hour of training is the CPU's
    assert local["money_per_month"] / local["hours_per_month"] == pytest.approx(
        cpu["money_per_month"] / cpu["hours_per_month"])
    upgrade = next(o for o in data["options"] if o["key"] == "upgrade")
    assert upgrade["upfront"] == inputs["upgrade_price"]  # nothing sold
    text = " ".join(data["assumptions"])
    assert "no card to sell" in text and "sells for" not in text and "current GPU" not in text
    refused = CliRunner().invoke(app, ["advise", "--speed", "cpu=1", "--resale", "50", *NO_GPU])
    assert refused.exit_code == 2 and "--resale" in refused.output and "no graphics card" in refused.output


def test_a_known_card_draws_its_board_power_and_an_unknown_one_says_it_is_assumed():
    rng = random.Random()
    known = _advise_json(*_random_speeds(rng), *WITH_GPU)
    assert known["machine"] == {"gpu": "AMD Radeon RX 5600 XT", "board_watts": 150}
    assert known["inputs"]["power_gpu"] == 150 + 100 and known["inputs"]["resale"] == 100
    assert "150 W typical board power" in " ".join(known["assumptions"])
    assert "AMD Radeon RX 5600 XT sells for" in " ".join(known["assumptions"])
    unknown = _advise_json(*_random_speeds(rng), *UNKNOWN_GPU)
    assert unknown["machine"]["board_watts"] is None and unknown["inputs"]["power_gpu"] == 300
    assert "assumed" in unknown["inputs"]["power_gpu_source"] and "--power-gpu" in " ".join(unknown["assumptions"])
    given = _advise_json(*_random_speeds(rng), *WITH_GPU, "--power-gpu", "321")
    assert given["inputs"]["power_gpu"] == 321 and given["inputs"]["power_gpu_source"] == "given with --power-gpu"


@pytest.mark.parametrize("name,watts", [("AMD Radeon RX 5700 XT", 225), ("AMD Radeon RX 5700", 180),
                                        ("AMD Radeon RX 7900 XTX", 355), ("AMD Radeon RX 7900 XT", 315),
                                        ("NVIDIA GeForce RTX 4090", 450), ("AMD Radeon Pro W5700", None), (None, None)])
def test_board_power_table_matches_the_longest_model_name(name, watts):
    from navitrain.advise_machine import board_watts

    assert board_watts(name) == watts


# ------------------------------------------------------------------- the other roads (doctor/data/roads.json)

def test_an_rdna1_machine_hears_of_the_other_roads_with_their_setup_time_priced():
    data = _advise_json("--speed", "cpu=10", "--speed", "wgpu=80", "--hour-value", "12", *WITH_GPU)
    roads = {r["id"]: r for r in data["roads"]}
    assert {"therock", "rocm-sdk-builder", "dlprim"} <= set(roads) and "directml" not in roads  # a Linux box
    for road in roads.values():
        assert road["setup_cost"] == pytest.approx(road["setup_hours"] * 12)
        assert road["sources"] and road["verified"] and road["install"]
    assert "71%" in roads["dlprim"]["speed"] and "benchmark.md" in roads["dlprim"]["speed"]
    assert "device-gfx1010" in roads["therock"]["install"]
    text = CliRunner().invoke(app, ["advise", "--speed", "cpu=10", "--speed", "wgpu=80", *WITH_GPU]).output
    assert "Other roads to try" in text and "TheRock" in text


def test_no_other_road_where_native_trains_or_there_is_no_gpu():
    assert _advise_json("--speed", "cpu=10", "--speed", "native=200", *WITH_GPU)["roads"] == []
    assert _advise_json("--speed", "cpu=10", "--speed", "wgpu=30", *NO_GPU)["roads"] == []
