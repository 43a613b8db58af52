"""Dataset specs: the one file that declares a dataset (schema, target, id, event time, fairness, training).

A spec is a YAML file (see ``datasets/README.md`` for the format). Loading validates it completely and
fails with a :class:`SpecError` that names the file, the field and the rule it broke.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DATASET_NAME_PATTERN = r"^[a-z][a-z0-9_]{1,40}$"


class SpecError(ValueError):
    """A spec file is missing, unreadable or breaks a rule of the spec format."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"invalid dataset spec {source}:\n" + "\n".join(f"  - {p}" for p in problems))


class FeatureType(enum.StrEnum):
    NUMERIC = "numeric"
    INTEGER = "integer"
    CATEGORY = "category"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureSpec(_Strict):
    """One input feature: its type and what values are allowed."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    type: FeatureType
    description: str = ""
    minimum: float | None = None
    maximum: float | None = None
    categories: list[str] | None = None
    nullable: bool = False
    source_column: str | None = Field(default=None, description="Column name in the source file, if different.")

    @model_validator(mode="after")
    def _check_domain(self) -> FeatureSpec:
        if self.type is FeatureType.CATEGORY:
            if not self.categories:
                raise ValueError(f"feature '{self.name}': a category feature needs a non-empty 'categories' list")
            if self.minimum is not None or self.maximum is not None:
                raise ValueError(f"feature '{self.name}': 'minimum'/'maximum' apply to numeric features only")
            if len(set(self.categories)) != len(self.categories):
                raise ValueError(f"feature '{self.name}': 'categories' has duplicates")
        else:
            if self.categories:
                raise ValueError(f"feature '{self.name}': 'categories' apply to category features only")
            if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
                raise ValueError(
                    f"feature '{self.name}': 'minimum' ({self.minimum}) exceeds 'maximum' ({self.maximum})"
                )
        return self

    @property
    def column(self) -> str:
        return self.source_column or self.name


class TargetSpec(_Strict):
    """The label: its column, its classes and which class is the positive one."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    classes: list[str] = Field(min_length=2, max_length=2)
    positive_class: str
    source_column: str | None = None
    value_map: dict[str, str] = Field(
        default_factory=dict, description="Raw source values mapped to a class (e.g. '>50K.' -> '>50K')."
    )

    @model_validator(mode="after")
    def _check_classes(self) -> TargetSpec:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes: {self.classes} must be two different values")
        if self.positive_class not in self.classes:
            raise ValueError(f"positive_class: {self.positive_class!r} is not one of classes {self.classes}")
        bad = {k: v for k, v in self.value_map.items() if v not in self.classes}
        if bad:
            raise ValueError(f"value_map: maps to values that are not classes: {bad}")
        return self

    @property
    def column(self) -> str:
        return self.source_column or self.name


class RecordIdSpec(_Strict):
    """The record id: a source column, or assigned as ``<prefix><row number>`` when the data has none."""

    name: str = "record_id"
    source_column: str | None = None
    assign_prefix: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> RecordIdSpec:
        if (self.source_column is None) == (self.assign_prefix is None):
            raise ValueError("record_id: give exactly one of 'source_column' or 'assign_prefix'")
        return self


class EventTimeSpec(_Strict):
    """The event time: a source column, or assigned by spreading records evenly over a window."""

    name: str = "event_time"
    source_column: str | None = None
    assign_start: dt.date | None = Field(default=None, description="First day of the assigned window.")
    assign_days: int | None = Field(default=None, ge=1, le=3660, description="Length of the assigned window.")
    partitions_start: dt.date | None = Field(
        default=None, description="First daily partition when event times come from a column."
    )

    @model_validator(mode="after")
    def _one_way(self) -> EventTimeSpec:
        assigned = self.assign_start is not None or self.assign_days is not None
        if self.source_column is not None and assigned:
            raise ValueError("event_time: give 'source_column' or 'assign_start'+'assign_days', not both")
        if self.source_column is None and (self.assign_start is None or self.assign_days is None):
            raise ValueError("event_time: without 'source_column', both 'assign_start' and 'assign_days' are required")
        if self.source_column is not None and self.partitions_start is None:
            raise ValueError("event_time: with 'source_column', 'partitions_start' (first daily partition) is required")
        return self

    @property
    def first_partition_day(self) -> dt.date:
        day = self.assign_start or self.partitions_start
        assert day is not None  # guaranteed by the validator above
        return day


class CsvSourceSpec(_Strict):
    """Records read from delimited files shipped with the dataset (paths relative to the spec file)."""

    kind: Literal["csv"] = "csv"
    files: list[str] = Field(min_length=1)
    header: bool = True
    columns: list[str] | None = Field(default=None, description="Column names when the files have no header.")
    delimiter: str = ","
    na_values: list[str] = Field(default_factory=list)
    skip_rows: int = 0
    strip_values: bool = True
    comment_prefix: str | None = None

    @model_validator(mode="after")
    def _columns(self) -> CsvSourceSpec:
        if not self.header and not self.columns:
            raise ValueError("columns: required when the files have no header ('header: false')")
        return self


class GeneratorSourceSpec(_Strict):
    """Records made by a seeded generator (a Python callable ``module:function``)."""

    kind: Literal["generator"] = "generator"
    function: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
    default_rows: int = Field(default=10_000, ge=1)


class TrainingDefaults(_Strict):
    """Defaults for training; each can be overridden in the Dagster launchpad."""

    test_fraction: float = Field(default=0.2, gt=0.0, lt=0.9)
    window_days: int = Field(default=30, ge=1)
    optuna_trials: int = Field(default=8, ge=1)
    seed: int = 42
    primary_metric: Literal["roc_auc", "f1", "accuracy", "log_loss"] = "roc_auc"
    max_estimators: int = Field(default=200, ge=10)


class MonitoringSpec(_Strict):
    """How predictions are monitored: NannyML chunks of this many predicted records."""

    chunk_size: int = Field(
        default=500,
        ge=50,
        le=100_000,
        description="Records per monitoring chunk; the reference (test set) must hold at least two chunks.",
    )


class PromotionGateSpec(_Strict):
    """When a newly trained model may replace the champion (each can be overridden in the launchpad)."""

    metric: Literal["roc_auc", "f1", "accuracy", "log_loss"] = Field(
        default="roc_auc", description="Compared on the candidate's frozen holdout (log_loss: lower is better)."
    )
    min_improvement: float = Field(
        default=0.0, ge=-1.0, le=1.0, description="Candidate must beat the champion by at least this margin."
    )
    max_fairness_disparity: float = Field(
        default=0.25,
        ge=0.0,
        le=1.0,
        description="Largest demographic-parity difference allowed on any protected attribute.",
    )
    approval: Literal["auto", "manual"] = Field(
        default="auto",
        description="auto: a candidate that passes the gate is deployed at once. manual: it waits as "
        "pending_approval (the champion keeps serving) until a reviewer approves it (console, "
        "POST /v1/models/{dataset}/versions/{version}/approve, `riverbed models approve`); a rejected one is never "
        "deployed.",
    )


_CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")


def _is_cron(text: str) -> bool:
    fields = text.split()
    return len(fields) == 5 and all(_CRON_FIELD.match(field) for field in fields)


class RetrainingSpec(_Strict):
    """When the platform retrains by itself (each trigger can be switched off with null)."""

    drift_features: list[str] | None = Field(
        default=None, description="Features whose drift alerts count (default: every feature)."
    )
    drift_consecutive_chunks: int | None = Field(
        default=2, ge=1, le=365, description="Retrain when drift alerts persist this many consecutive days."
    )
    performance_metric: Literal["roc_auc", "accuracy", "f1"] = "roc_auc"
    min_performance: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Retrain when estimated or realised performance falls below this."
    )
    new_records: int | None = Field(
        default=None, ge=1, description="Retrain when this many new raw records arrived since the last training."
    )
    cooldown_minutes: float = Field(default=60.0, ge=0.0, le=60 * 24 * 30, description="Quiet time between runs.")
    schedule_cron: str | None = Field(
        default="0 3 * * 0", description="Periodic retraining (cron; the schedule starts stopped)."
    )


class DatasetSpec(_Strict):
    """Everything the platform needs to know about a dataset."""

    name: Annotated[str, Field(pattern=DATASET_NAME_PATTERN)]
    description: str
    version: int = Field(default=1, ge=1)
    features: list[FeatureSpec] = Field(min_length=1)
    target: TargetSpec
    record_id: RecordIdSpec
    event_time: EventTimeSpec
    protected_attributes: list[str] = Field(default_factory=list)
    source: Annotated[CsvSourceSpec | GeneratorSourceSpec, Field(discriminator="kind")]
    training: TrainingDefaults = Field(default_factory=TrainingDefaults)
    promotion: PromotionGateSpec = Field(default_factory=PromotionGateSpec)
    retraining: RetrainingSpec = Field(default_factory=RetrainingSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)
    license: str | None = None
    spec_path: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _cross_checks(self) -> DatasetSpec:
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"features: duplicate names {dupes}")
        reserved = {self.target.name, self.record_id.name, self.event_time.name}
        if len(reserved) < 3:
            raise ValueError(
                f"target.name: the record id ({self.record_id.name!r}), event time ({self.event_time.name!r}) "
                f"and target ({self.target.name!r}) need three different names"
            )
        clash = sorted(reserved.intersection(names))
        if clash:
            raise ValueError(f"features: {clash} clash with the target, record id or event time name")
        unknown = [p for p in self.protected_attributes if p not in names]
        if unknown:
            raise ValueError(f"protected_attributes: {unknown} are not features")
        drifting = [f for f in self.retraining.drift_features or [] if f not in names]
        if drifting:
            raise ValueError(f"retraining.drift_features: {drifting} are not features")
        cron = self.retraining.schedule_cron
        if cron is not None and not _is_cron(cron):
            raise ValueError(f"retraining.schedule_cron: {cron!r} is not a five-field cron string")
        if isinstance(self.source, CsvSourceSpec) and not self.source.header and self.source.columns:
            absent = [f"{c!r} ({role})" for c, role in self.source_columns().items() if c not in self.source.columns]
            if absent:
                raise ValueError(f"source.columns: lacks column(s) the spec reads: {', '.join(absent)}")
        return self

    def source_columns(self) -> dict[str, str]:
        """Columns a file-backed source must have -> what they feed (e.g. ``"feature 'age'"``)."""
        columns = {f.column: f"feature '{f.name}'" for f in self.features}
        columns[self.target.column] = f"target '{self.target.name}'"
        if self.record_id.source_column:
            columns[self.record_id.source_column] = f"record id '{self.record_id.name}'"
        if self.event_time.source_column:
            columns[self.event_time.source_column] = f"event time '{self.event_time.name}'"
        return columns

    # Convenience views used across the platform.
    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def numeric_features(self) -> list[str]:
        return [f.name for f in self.features if f.type is not FeatureType.CATEGORY]

    @property
    def categorical_features(self) -> list[str]:
        return [f.name for f in self.features if f.type is FeatureType.CATEGORY]

    def feature(self, name: str) -> FeatureSpec:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"dataset {self.name!r} has no feature {name!r}")

    def resolve_path(self, relative: str) -> Path:
        base = self.spec_path.parent if self.spec_path else Path.cwd()
        return (base / relative).resolve()


_SOURCE_KINDS = ("csv", "generator")


def _format_validation_error(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        location = [str(p) for p in item["loc"]]
        if location[:1] == ["source"] and location[1:2] and location[1] in _SOURCE_KINDS:
            del location[1]  # the union's tag is not a field of the file
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] in ("union_tag_not_found", "union_tag_invalid"):
            location.append("kind")
            message = f"must be one of {list(_SOURCE_KINDS)}"
        named = re.match(r"^([a-z_]+(?:\.[a-z_]+)*): ", message)
        if named:  # a rule on a whole object names the field it is about first
            field = named.group(1)
            if location[-1:] != [field]:
                location += field.split(".")
            message = message[named.end() :]
        problems.append(f"field '{'.'.join(location) or '(top level)'}': {message}")
    return problems


def parse_spec(data: Any, source: str = "<memory>", spec_path: Path | None = None) -> DatasetSpec:
    """Validate a spec given as a mapping; errors name ``source``, the field and the rule."""
    if not isinstance(data, dict):
        raise SpecError(source, ["the file must hold a mapping of spec fields at its top level"])
    try:
        spec = DatasetSpec.model_validate({**data, "spec_path": spec_path})
    except ValidationError as error:
        raise SpecError(source, _format_validation_error(error)) from None
    if spec_path is not None:
        _check_spec_file_name(spec, spec_path)
        if isinstance(spec.source, CsvSourceSpec):
            missing = [f for f in spec.source.files if not spec.resolve_path(f).exists()]
            if missing:
                raise SpecError(source, [f"field 'source.files': file(s) not found: {missing}"])
    return spec


def _check_spec_file_name(spec: DatasetSpec, path: Path) -> None:
    if path.stem != spec.name:
        raise SpecError(str(path), [f"field 'name': {spec.name!r} must match the file name {path.stem!r}"])


def load_spec_file(path: Path | str) -> DatasetSpec:
    """Load and validate one spec file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise SpecError(str(path), [f"cannot read file: {error.strerror}"]) from None
    except yaml.YAMLError as error:
        raise SpecError(str(path), [f"not valid YAML: {error}"]) from None
    return parse_spec(data, source=str(path), spec_path=path.resolve())


def load_specs(directories: Iterable[Path | str]) -> dict[str, DatasetSpec]:
    """All specs in the given directories, keyed by dataset name (files named ``<name>.yaml``)."""
    specs: dict[str, DatasetSpec] = {}
    for directory in directories:
        for path in sorted(Path(directory).glob("*.yaml")):
            spec = load_spec_file(path)
            if spec.name in specs:
                raise SpecError(str(path), [f"field 'name': dataset {spec.name!r} is declared twice"])
            specs[spec.name] = spec
    return specs


def dataset_asset_prefix(name: str) -> str:
    """Dataset names become parts of asset keys and branch names; they are validated to be safe."""
    if not re.match(DATASET_NAME_PATTERN, name):
        raise ValueError(f"dataset name {name!r} must match {DATASET_NAME_PATTERN}")
    return name
