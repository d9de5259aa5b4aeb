"""Shared helpers for the doctor tests: fixture trees (a fake / plus the overrides.json of facts that do
not come from files) and the JSON schemas the reports must satisfy."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "doctor"
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "overrides.json").exists())


def case_root(name: str) -> Path:
    return FIXTURES / name / "root"


def case_overrides(name: str) -> dict:
    return json.loads((FIXTURES / name / "overrides.json").read_text())


def _schema(name: str) -> dict:
    return json.loads(resources.files("navitrain.doctor").joinpath(f"data/{name}").read_text())


DOCTOR_SCHEMA = _schema("doctor.schema.json")
EXPLAIN_SCHEMA = _schema("explain.schema.json")
_DOCTOR_VALIDATOR = jsonschema.Draft202012Validator(DOCTOR_SCHEMA)
_EXPLAIN_VALIDATOR = jsonschema.Draft202012Validator(EXPLAIN_SCHEMA)


def validate_doctor(doc: dict) -> None:
    _DOCTOR_VALIDATOR.validate(json.loads(json.dumps(doc)))  # through JSON, as a consumer sees it


def validate_explain(doc: dict) -> None:
    _EXPLAIN_VALIDATOR.validate(json.loads(json.dumps(doc)))
