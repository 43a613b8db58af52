"""Sources in platform layout: the UCI Adult files, the generator source, and the per-process cache."""

import datetime as dt
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from riverbed import sources
from riverbed.settings import PROJECT_ROOT
from riverbed.sources import load_source_records, records_for_window
from riverbed.specs import DatasetSpec, load_spec_file, load_specs
from riverbed.validation import SchemaError

UTC = dt.UTC


@pytest.fixture(scope="module")
def specs() -> dict[str, DatasetSpec]:
    return load_specs([PROJECT_ROOT / "datasets"])


def test_salary_band_reads_every_record_in_platform_layout(specs) -> None:
    spec = specs["salary_band"]
    records = load_source_records(spec)
    assert len(records) == 48_842  # adult.data (32,561) + adult.test (16,281, its "|1x3" line is a comment)
    assert list(records.columns) == ["record_id", "event_time", *spec.feature_names, "income_band"]
    assert records["record_id"].is_unique
    assert records["record_id"].iloc[0] == "adult-0"
    assert records["record_id"].iloc[-1] == "adult-48841"
    assert set(records["income_band"]) == {"<=50K", ">50K"}  # "<=50K." in adult.test mapped by value_map
    assert str(records["event_time"].dtype) == "datetime64[ns, UTC]"
    assert records["event_time"].is_monotonic_increasing
    # "?" is the files' missing marker; values are kept as read otherwise (stripped text).
    assert records["workclass"].isna().sum() == 2_799
    assert records.loc[0, "age"] == "39"


def test_salary_band_spreads_over_thirty_non_empty_daily_partitions(specs) -> None:
    spec = specs["salary_band"]
    start = dt.datetime(2026, 10, 1, tzinfo=UTC)
    counts = [
        len(records_for_window(spec, start + dt.timedelta(days=k), start + dt.timedelta(days=k + 1))) for k in range(30)
    ]
    assert sum(counts) == 48_842
    assert min(counts) >= 1_628 and max(counts) <= 1_629  # evenly spread, in file order
    assert len(records_for_window(spec, start + dt.timedelta(days=30), start + dt.timedelta(days=31))) == 0
    naive = records_for_window(spec, dt.datetime(2026, 10, 1), dt.datetime(2026, 10, 2))
    assert naive["record_id"].iloc[0] == "adult-0"  # naive datetimes are UTC


def test_the_source_is_parsed_once_per_process(specs, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = specs["salary_band"]
    sources.clear_source_cache()
    calls = []
    real = sources._read_csv
    monkeypatch.setattr(sources, "_read_csv", lambda *a: calls.append(1) or real(*a))
    first = load_source_records(spec)
    first["age"] = None  # callers get their own copy: this must not reach the cache
    start = dt.datetime(2026, 10, 1, tzinfo=UTC)
    for k in range(3):
        records_for_window(spec, start + dt.timedelta(days=k), start + dt.timedelta(days=k + 1))
    assert len(calls) == 1
    assert load_source_records(spec)["age"].notna().all()


def test_generator_sources_take_rows_and_seed(specs) -> None:
    spec = specs["machine_failure"]
    records = load_source_records(spec, rows=500, seed=5)
    assert len(records) == 500
    assert records["event_time"].is_monotonic_increasing
    assert records["event_time"].min() == pd.Timestamp("2026-10-01", tz="UTC")
    assert records["event_time"].max() < pd.Timestamp("2026-10-31", tz="UTC")
    pd.testing.assert_frame_equal(records, load_source_records(spec, rows=500, seed=5))


def _csv_spec(tmp_path: Path, csv: str, extra: str = "") -> DatasetSpec:
    (tmp_path / "rows.csv").write_text(csv)
    (tmp_path / "rows_ds.yaml").write_text(
        textwrap.dedent(
            f"""\
            name: rows_ds
            description: test
            source: {{kind: csv, files: [rows.csv], na_values: ["n/a"]{extra}}}
            record_id: {{name: rid, source_column: id}}
            event_time: {{name: at, source_column: when, partitions_start: 2026-01-01}}
            target: {{name: label, classes: ["no", "yes"], positive_class: "yes"}}
            features:
              - {{name: size, type: numeric, source_column: Size}}
              - {{name: region, type: category, categories: ["NA", EU], nullable: true}}
            """
        )
    )
    return load_spec_file(tmp_path / "rows_ds.yaml")


def test_csv_with_event_time_column_keeps_values_as_read(tmp_path: Path) -> None:
    spec = _csv_spec(
        tmp_path,
        "id,when,Size,region,label\n"
        "b, 2026-01-02T10:00:00Z ,7,NA,yes\n"
        "a,2026-01-01 08:00,huge,n/a,maybe\n"
        "c,not a time,1,  ,no\n",
    )
    records = load_source_records(spec)
    assert list(records.columns) == ["rid", "at", "size", "region", "label"]
    assert records["rid"].tolist() == ["a", "b", "c"]  # sorted by event time; unparseable times last
    assert records["at"].iloc[0] == pd.Timestamp("2026-01-01 08:00", tz="UTC")  # naive text is UTC
    assert pd.isna(records["at"].iloc[2])
    assert records["size"].tolist() == ["huge", "7", "1"]  # invalid values reach validation
    assert records["region"].iloc[1] == "NA"  # only the spec's markers (and blanks) mean missing
    assert records["region"].iloc[[0, 2]].isna().all()
    assert records["label"].tolist() == ["maybe", "yes", "no"]
    window = records_for_window(spec, dt.datetime(2026, 1, 1, tzinfo=UTC), dt.datetime(2027, 1, 1, tzinfo=UTC))
    assert window["rid"].tolist() == ["a", "b"]


def test_a_file_without_a_column_the_spec_reads_is_a_schema_error(tmp_path: Path) -> None:
    spec = _csv_spec(tmp_path, "id,when,size,region,label\nb,2026-01-02,7,EU,yes\n")
    with pytest.raises(SchemaError, match=r"rows\.csv lacks column\(s\) 'Size' \(feature 'size'\)"):
        load_source_records(spec)
