"""Untrusted text (files under --root, crash logs) is shown on the terminal, never obeyed.

A hostile tree puts escape sequences (recolour, clear screen, set the title, a hyperlink), a bell, a C1
CSI byte, a right-to-left override and bytes that are not UTF-8 into files the doctor reads; the doctor's
facts, its rendering and its JSON, and explain's rendering of a log must hold none of them raw.
"""
from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from navitrain.cli import app
from navitrain.doctor import collect
from navitrain.doctor.printable import MAX_CHARS, printable, printable_data

# Each of these reaching a terminal raw would act on it; none may appear in anything the doctor shows.
HOSTILE = ("\x1b[31m", "\x1b[2J", "\x1b]0;pwned\x07", "\x1b]8;;http://x\x07", "\x07", "\u202e", "\x9b2J", "\x08")
RAW = ("\x1b", "\x07", "\u202e", "\x9b", "\x08")


def _payload(rng: random.Random) -> bytes:
    pieces = list(HOSTILE)
    rng.shuffle(pieces)
    return ("word " + " x ".join(pieces) + " end").encode() + bytes([0xFF, 0xFE, rng.randrange(0x80, 0xC0)])


def _hostile_tree(root, rng: random.Random):
    files = {
        "etc/os-release": b'PRETTY_NAME="' + _payload(rng) + b'"\n',
        "proc/sys/kernel/osrelease": _payload(rng) + b"\n",
        "sys/class/drm/card0/device/vendor": b"0x1002\n",
        "sys/class/drm/card0/device/device": b"0x731f" + _payload(rng) + b"\n",
        "sys/class/drm/card0/device/uevent": b"DRIVER=" + _payload(rng) + b"\nPCI_SLOT_NAME=0000:03:00.0\n",
        "etc/modprobe.d/evil.conf": b"options amdgpu mtype_local=" + _payload(rng).replace(b" ", b"_") + b"\n",
        "opt/rocm/.info/version": b"6.4." + _payload(rng) + b"\n",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _assert_no_raw(text: str, where: str) -> None:
    for raw in RAW:
        assert raw not in text, f"{where} holds a raw {raw!r}: {text[:300]!r}"


def test_printable_shows_controls_as_escapes_and_keeps_ordinary_text():
    rng = random.Random()
    word = "".join(rng.choice("abcdefgh ÄéΩ文字") for _ in range(30))
    assert printable(word) == word
    assert printable("a\x1b[31mb") == "a\\x1b[31mb"
    assert printable("t\x1b]0;x\x07") == "t\\x1b]0;x\\x07"
    assert printable("\u202eevil") == "\\u202eevil"
    assert printable("c1 \x9b2J") == "c1 \\x9b2J"
    assert printable(b"bad \xff\xfe") == "bad \ufffd\ufffd"
    assert printable("one\ntwo\tthree") == "one\\x0atwo\\x09three"
    assert printable("one\r\ntwo\tthree", keep_lines=True) == "one\ntwo\tthree"
    assert printable(None) is None
    long = printable("x" * (MAX_CHARS + 17))
    assert long.startswith("x" * MAX_CHARS) and long.endswith("(17 more characters)")
    assert printable_data({"k\x1b": ["v\x07", 3, None]}) == {"k\\x1b": ["v\\x07", 3, None]}


def test_facts_read_from_a_hostile_tree_hold_no_raw_control_characters(tmp_path):
    facts = collect(_hostile_tree(tmp_path, random.Random()), probe=False)
    for text in _strings(facts):
        _assert_no_raw(text, "facts")
    assert "\\x1b[31m" in facts["system"]["os"]  # shown as an escape, not dropped


@pytest.mark.parametrize("as_json", (False, True))
def test_doctor_on_a_hostile_tree_prints_no_escape_sequences(tmp_path, as_json):
    root = _hostile_tree(tmp_path, random.Random())
    result = CliRunner().invoke(app, ["doctor", "--root", str(root), "--no-probe", *(["--json"] if as_json else [])])
    assert result.exit_code in (0, 1), result.output
    _assert_no_raw(result.output, "doctor output")
    if as_json:
        json.loads(result.stdout)
    else:
        assert "\\x1b[31m" in result.output


def test_the_render_safety_net_catches_text_that_did_not_come_through_a_tree(tmp_path):
    # overrides are read from a JSON file, not through the Tree: the rendering itself must clean them
    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps({"torch": {"status": "crashed", "error": "boom \x1b[2J\x1b]0;t\x07 \u202e"},
                                     "env": {"HSA_OVERRIDE_GFX_VERSION": "10.3.0\x1b[31m"}}))
    root = tmp_path / "root"
    root.mkdir()
    result = CliRunner().invoke(app, ["doctor", "--root", str(root), "--no-probe", "--overrides", str(overrides)])
    assert result.exit_code in (0, 1), result.output
    _assert_no_raw(result.output, "doctor output")
    assert "\\x1b[2J" in result.output


def test_explain_shows_log_lines_without_obeying_them(tmp_path):
    log = tmp_path / "crash.log"
    log.write_bytes(b"step 1\nRuntimeError: HIP error: invalid device function \x1b]0;pwned\x07 \xe2\x80\xae "
                    b"\x1b[31mred\x08\nhipErrorNoBinaryForGpu: Unable to find code object \x9b2J\xff\n")
    result = CliRunner().invoke(app, ["explain", str(log), "--no-facts"])
    assert result.exit_code == 0, result.output
    _assert_no_raw(result.output, "explain output")
    assert "invalid device function" in result.output
