"""A small third dataset (`loan_default`) written as a spec plus its CSV: shows a new dataset needs nothing else."""

import textwrap
from pathlib import Path

import numpy as np

LOAN_DATASET = "loan_default"
LOAN_PARTITIONS = ["2026-09-01", "2026-09-02", "2026-09-03"]


def write_loan_dataset(folder: Path, extra_spec_lines: str = "") -> None:
    """600 seeded loans over three days in ``folder`` (``loans.csv`` + ``loan_default.yaml``)."""
    rng = np.random.default_rng(3)
    rows = []
    for i in range(600):
        amount = float(rng.uniform(100, 5000))
        term = str(rng.choice(["short", "long"]))
        region = str(rng.choice(["north", "south", "east"]))
        default = "yes" if (amount > 3000 and term == "long") or rng.random() < 0.05 else "no"
        rows.append(f"L{i},{amount:.2f},{term},{region},{default}")
    (folder / "loans.csv").write_text("loan_id,amount,term,region,defaulted\n" + "\n".join(rows) + "\n")
    spec = textwrap.dedent(
        """\
        name: loan_default
        description: Whether a small loan defaults (test dataset).
        source: {kind: csv, files: [loans.csv]}
        record_id: {name: loan_id, source_column: loan_id}
        event_time: {assign_start: 2026-09-01, assign_days: 3}
        target: {name: defaulted, classes: ["no", "yes"], positive_class: "yes"}
        protected_attributes: [region]
        features:
          - {name: amount, type: numeric, minimum: 0, maximum: 10000}
          - {name: term, type: category, categories: [short, long]}
          - {name: region, type: category, categories: [north, south, east]}
        training: {optuna_trials: 1, max_estimators: 20, seed: 1}
        """
    )
    (folder / f"{LOAN_DATASET}.yaml").write_text(spec + extra_spec_lines)
