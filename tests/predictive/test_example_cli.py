"""`llmship example-model --kind sklearn|xgboost`: trained here, the files MLServer / KServe load, held-out data."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from flows.cli import app
from tasks.predictive.quality import read_labelled
from tasks.predictive.signature import read_v2_payloads

from .conftest import needs_mlserver

runner = CliRunner()


@needs_mlserver
def test_sklearn_and_xgboost_examples(tmp_path, example_model):
    good = example_model("good")
    assert sorted(p.name for p in (good / "model").iterdir()) == ["model.joblib"]  # the artifact: the model alone
    info = json.loads((good / "example.json").read_text())
    assert info["kind"] == "sklearn" and info["accuracy"] > 0.95 and info["trees"] == 20
    assert info["versions"]["scikit-learn"]
    assert len(read_labelled(good / "heldout.jsonl")) == 600
    assert read_v2_payloads(good / "v2-payloads.jsonl")[0]["inputs"][0]["shape"] == [1, 4]
    worse = json.loads((example_model("worse") / "example.json").read_text())
    assert worse["worse"] and worse["accuracy"] < 0.8
    res = runner.invoke(app, ["example-model", "--kind", "xgboost", "--trees", "10", str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    assert "xgboost classifier (10 trees" in res.output
    assert (tmp_path / "x" / "model" / "model.json").is_file()


def test_cli_refusals(tmp_path):
    res = runner.invoke(app, ["example-model", "--kind", "lightgbm", str(tmp_path / "a")])
    assert res.exit_code == 2 and "unknown --kind" in res.output
    res = runner.invoke(app, ["example-model", "--worse", str(tmp_path / "b")])
    assert res.exit_code == 2 and "--worse, --slow and --trees are for --kind sklearn / xgboost" in res.output
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "f").write_text("x")
    res = runner.invoke(app, ["example-model", "--kind", "sklearn", str(tmp_path / "c")])
    assert res.exit_code == 2 and "folder is not empty" in res.output
