"""The quality gate's arithmetic against a V2 responder whose prediction is the row's first value."""

from __future__ import annotations

import json

import pytest

from bench.support.fake_v2 import FakeV2Config, fake_v2_process
from tasks.errors import BadInput, StageFailed
from tasks.predictive.quality import evaluate_quality, require_quality


def _labelled(path, n: int, wrong: int) -> None:
    # the responder predicts int(first feature); the first `wrong` rows carry another label
    with path.open("w") as f:
        for i in range(n):
            cls = i % 3
            f.write(json.dumps({"inputs": [cls, 0.5, 0.5, 0.5], "label": (cls + 1) % 3 if i < wrong else cls}) + "\n")


def test_accuracy_min_and_against_stable(tmp_path):
    data = tmp_path / "heldout.jsonl"
    _labelled(data, 100, wrong=10)
    with fake_v2_process(FakeV2Config(model="iris", echo=True)) as url:
        rep = evaluate_quality(url, "iris", data, 0.85, batch_size=16)
        assert rep.passed and rep.examples == 100 and rep.correct == 90 and rep.accuracy == pytest.approx(0.9)
        assert rep.output == "predict" and set(rep.per_class) == {"0", "1", "2"}
        rep = evaluate_quality(url, "iris", data, 0.95)
        assert not rep.passed and rep.violations == ["accuracy 0.9000 < limit 0.95 (90 of 100 correct)"]
        with pytest.raises(StageFailed, match="the quality gate failed"):
            require_quality(rep)
        rep = evaluate_quality(url, "iris", data, 0.5, stable_accuracy=0.99, max_accuracy_drop=0.05)
        assert not rep.passed and "below stable's 0.9900" in rep.violations[0]
        with pytest.raises(BadInput, match="404"):
            evaluate_quality(url, "nope", data, 0.5)
        assert "Quality gate FAILED" in evaluate_quality(url, "iris", data, 0.99).markdown()


def test_failed_requests_fail_the_gate(tmp_path):
    data = tmp_path / "heldout.jsonl"
    _labelled(data, 40, wrong=0)
    with fake_v2_process(FakeV2Config(model="iris", echo=True, fail_every=2)) as url:
        rep = evaluate_quality(url, "iris", data, 0.1, batch_size=10)
    assert not rep.passed and rep.failed_requests == 2 and "20 of 40 examples got no prediction" in rep.violations[0]
