"""`navitrain report`: one run of doctor, the probe and a quick bench on a user's machine, written as a
Markdown file to post and a JSON file (schema navitrain.report/1, data/report.schema.json) to compare.

build.py chooses what goes in (a whitelist), privacy.py keeps private data out, gather.py runs the
sources, markdown.py and compare.py render. docs/report.md explains how to share a report.
"""
from __future__ import annotations

import json
from importlib import resources

from navitrain.report.build import SCHEMA, build


def schema() -> dict:
    """The JSON schema every report satisfies."""
    return json.loads(resources.files("navitrain.report").joinpath("data/report.schema.json").read_text())


__all__ = ["SCHEMA", "build", "schema"]
