"""Spec files: the shipped ones load; every mistake names the file, the field and the rule."""

import textwrap
from pathlib import Path

import pytest

from riverbed.settings import PROJECT_ROOT
from riverbed.specs import SpecError, load_spec_file, load_specs, parse_spec

GOOD = """\
name: tiny
description: A tiny dataset.
source: {kind: csv, files: [tiny.csv]}
record_id: {source_column: id}
event_time: {assign_start: 2026-01-01, assign_days: 2}
target: {name: label, classes: ["no", "yes"], positive_class: "yes"}
protected_attributes: [colour]
features:
  - {name: size, type: numeric, minimum: 0, maximum: 10}
  - {name: colour, type: category, categories: [red, blue]}
"""


def _write(tmp_path: Path, text: str, name: str = "tiny") -> Path:
    (tmp_path / "tiny.csv").write_text("id,size,colour,label\n1,2,red,yes\n")
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_shipped_specs_load() -> None:
    specs = load_specs([PROJECT_ROOT / "datasets"])
    assert set(specs) >= {"salary_band", "machine_failure"}
    salary = specs["salary_band"]
    assert salary.target.positive_class == ">50K"
    assert salary.protected_attributes == ["sex", "race"]
    assert salary.event_time.assign_days == 30
    assert specs["machine_failure"].source.kind == "generator"


def test_a_good_spec_loads(tmp_path: Path) -> None:
    spec = load_spec_file(_write(tmp_path, GOOD))
    assert spec.feature_names == ["size", "colour"]
    assert spec.categorical_features == ["colour"]
    assert spec.source_columns() == {
        "size": "feature 'size'",
        "colour": "feature 'colour'",
        "label": "target 'label'",
        "id": "record id 'record_id'",
    }


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        (("categories: [red, blue]", "categories: []"), "features.1", "non-empty 'categories'"),
        ((", categories: [red, blue]", ""), "features.1", "non-empty 'categories'"),
        (('positive_class: "yes"', 'positive_class: "maybe"'), "target.positive_class", "is not one of classes"),
        (('classes: ["no", "yes"]', 'classes: ["yes", "yes"]'), "target.classes", "two different values"),
        (
            ('positive_class: "yes"}', 'positive_class: "yes", value_map: {x: maybe}}'),
            "target.value_map",
            "not classes",
        ),
        (("name: label", "name: record_id"), "target.name", "three different names"),
        (("protected_attributes: [colour]", "protected_attributes: [age]"), "protected_attributes", "not features"),
        (("files: [tiny.csv]", "files: [missing.csv]"), "source.files", "not found"),
        (("kind: csv, ", ""), "source.kind", "must be one of ['csv', 'generator']"),
        (("files: [tiny.csv]", "files: [tiny.csv], header: false"), "source.columns", "no header"),
        (
            ("files: [tiny.csv]", "files: [tiny.csv], header: false, columns: [id, size, label]"),
            "source.columns",
            "'colour' (feature 'colour')",
        ),
        (("minimum: 0, maximum: 10", "minimum: 10, maximum: 0"), "features.0", "exceeds 'maximum'"),
        (("type: numeric", "type: decimal"), "features.0.type", "Input should be"),
        (("record_id: {source_column: id}", "record_id: {}"), "record_id", "exactly one of"),
        (("assign_days: 2", "assign_days: 0"), "event_time.assign_days", "greater than or equal to 1"),
        (
            ("description: A tiny dataset.\n", "description: A tiny dataset.\nunknown_field: 1\n"),
            "unknown_field",
            "Extra",
        ),
    ],
)
def test_spec_mistakes_name_file_field_and_rule(tmp_path: Path, change: tuple[str, str], field: str, rule: str) -> None:
    assert change[0] in GOOD
    path = _write(tmp_path, GOOD.replace(*change))
    with pytest.raises(SpecError) as caught:
        load_spec_file(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"field '{field}'" in message
    assert rule in message


def test_bad_yaml_unreadable_files_and_wrong_file_names_are_reported(tmp_path: Path) -> None:
    broken = _write(tmp_path, "name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML") as caught:
        load_spec_file(broken)
    assert str(broken) in str(caught.value)
    with pytest.raises(SpecError, match="cannot read file"):
        load_spec_file(tmp_path / "absent.yaml")
    with pytest.raises(SpecError, match="mapping of spec fields"):
        load_spec_file(_write(tmp_path, "- just\n- a list\n"))
    renamed = _write(tmp_path, GOOD, name="other")
    with pytest.raises(SpecError, match="must match the file name"):
        load_spec_file(renamed)


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec({"name": "Bad Name", "description": "d"}, source="inline")
    problems = caught.value.problems
    assert any(p.startswith("field 'name'") for p in problems)
    assert {"features", "target", "record_id", "event_time", "source"} <= {
        p.split("'")[1] for p in problems if "Field required" in p
    }
