"""When a deployment must reach MLServer: production always applies the deployment's rule; locally, only while
a `riverbed serve` stack runs in that home (otherwise the model is installed for the stack's next start)."""

import json
import os
from pathlib import Path

from resources.mlserver_resource import MLServerResource
from riverbed.settings import RiverbedSettings
from riverbed.stack_file import process_identity


def _resource(home: Path | None) -> MLServerResource:
    return MLServerResource(
        url="http://127.0.0.1:9", model_repository=str((home or Path("/tmp")) / "models"), local_home=home and str(home)
    )


def test_production_leaves_the_rule_to_the_deployment() -> None:
    assert _resource(None).must_answer() is None


def test_local_without_a_running_stack_installs_for_the_next_start(tmp_path: Path) -> None:
    assert _resource(tmp_path).must_answer() is False
    stack_file = RiverbedSettings(home=tmp_path).stack_file
    stack_file.parent.mkdir(parents=True, exist_ok=True)
    stack_file.write_text(json.dumps({"pid": 2**22 + 12345, "process": {}}))  # a stale file: no such process
    assert _resource(tmp_path).must_answer() is False


def test_local_with_a_running_stack_must_reach_its_mlserver(tmp_path: Path) -> None:
    stack_file = RiverbedSettings(home=tmp_path).stack_file
    stack_file.parent.mkdir(parents=True, exist_ok=True)
    stack_file.write_text(json.dumps({"pid": os.getpid(), "process": process_identity(os.getpid())}))
    assert _resource(tmp_path).must_answer() is None
