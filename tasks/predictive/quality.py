"""The quality gate of a predictive model: accuracy on a labelled held-out set, sent through the real server.

    report = evaluate_quality(candidate.base_url, spec.served_name, q.labelled_data, q.min_accuracy,
                              batch_size=q.batch_size, output=q.output)
    report.passed, report.accuracy, report.violations

The labelled JSONL has one example a line, either a row
    {"inputs": [5.1, 3.5, 1.4, 0.2], "label": 0}
or a whole V2 request with the labels of its rows
    {"request": {"inputs": [...]}, "labels": [0, 2]}
Rows are sent in V2 requests of `batch_size` rows, as one 2-D tensor named and typed as the
model's metadata declares its single input (else `input-0`, FP64). A prediction is the
chosen output (the first when unset): class labels as they are, or the arg-max of each row
when the output has one column per class (probabilities, e.g. `predict_proba`).
With `stable_accuracy` and `max_accuracy_drop` the candidate also fails when it is that much
below the stable model on the same data.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
from pydantic import BaseModel, Field

from tasks.errors import BadInput, StageFailed
from tasks.predictive.signature import DEFAULT_INPUT, TensorSpec, check_v2_request, rows_request, specs_from_metadata

STAGE = "quality_gate"


class QualityReport(BaseModel):
    served_name: str
    base_url: str
    data: str
    examples: int
    correct: int
    accuracy: float
    min_accuracy: float | None = None
    stable_accuracy: float | None = None
    max_accuracy_drop: float | None = None
    passed: bool
    violations: list[str] = Field(default_factory=list)
    failed_requests: int = 0
    errors: dict[str, int] = Field(default_factory=dict)
    per_class: dict[str, float] = Field(default_factory=dict)  # label -> accuracy on its examples
    output: str = ""
    seconds: float = 0.0

    def markdown(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [f"### Quality gate {verdict}: {self.served_name} at {self.base_url}", "",
                 f"accuracy {self.accuracy:.4f} ({self.correct} of {self.examples} on {self.data}), "
                 f"limit {self.min_accuracy if self.min_accuracy is not None else '-'}"]
        if self.stable_accuracy is not None:
            lines.append(f"stable's accuracy on the same data {self.stable_accuracy:.4f}")
        if self.per_class:
            lines += ["", "| label | accuracy |", "| --- | ---: |"]
            lines += [f"| {k} | {v:.4f} |" for k, v in sorted(self.per_class.items())]
        if self.violations:
            lines += ["", "**Violations**", ""] + [f"- {v}" for v in self.violations]
        return "\n".join(lines)


def read_labelled(path: str | Path) -> list[tuple[dict | None, list, list]]:
    """[(request or None, rows, labels)]: whole requests as given, single rows gathered with row=None markers."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(STAGE, str(p), "labelled data file not found",
                       "set engine.predictive.quality.labelled_data to a JSONL of {\"inputs\": [...], \"label\": ...}")
    out: list[tuple[dict | None, list, list]] = []
    for no, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as err:
            raise BadInput(STAGE, f"{p}:{no}", f"not JSON: {err}", "one JSON object a line") from None
        if isinstance(obj, dict) and "request" in obj:
            why = check_v2_request(obj["request"])
            labels = obj.get("labels")
            if why or not isinstance(labels, list) or not labels:
                raise BadInput(STAGE, f"{p}:{no}", f"a request line needs a V2 request and its labels ({why or 'no labels'})",
                               "write {\"request\": {\"inputs\": [...]}, \"labels\": [...]}")
            out.append((obj["request"], [], labels))
        elif isinstance(obj, dict) and isinstance(obj.get("inputs"), list) and "label" in obj:
            out.append((None, [obj["inputs"]], [obj["label"]]))
        else:
            raise BadInput(STAGE, f"{p}:{no}", "each line needs \"inputs\" (a feature row) and \"label\"",
                           "or {\"request\": {...}, \"labels\": [...]} for a whole V2 request")
    if not out:
        raise BadInput(STAGE, str(p), "no labelled example in the file", "one example a line")
    return out


def _batches(items, batch_size: int, spec: TensorSpec, outputs: list[str] | None):
    """V2 requests with their labels: given requests as they are, rows grouped batch_size at a time."""
    rows: list = []
    labels: list = []
    for req, r, lab in items:
        if req is not None:
            body = dict(req)
            if outputs and "outputs" not in body:
                body["outputs"] = [{"name": o} for o in outputs]
            yield body, lab
            continue
        rows += r
        labels += lab
        if len(rows) >= batch_size:
            yield rows_request(rows, spec, outputs), labels
            rows, labels = [], []
    if rows:
        yield rows_request(rows, spec, outputs), labels


def predictions(outputs: list[dict], name: str | None, n: int) -> tuple[list, str]:
    """The predicted labels of n rows from a V2 response's outputs, and which output they came from."""
    if not outputs:
        raise ValueError("no outputs")
    out = next((o for o in outputs if o.get("name") == name), None) if name else outputs[0]
    if out is None:
        raise ValueError(f"no output named {name!r} (outputs: {[o.get('name') for o in outputs]})")
    data = out.get("data") or []
    shape = out.get("shape") or [len(data)]
    width = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    if len(data) != n * width:
        raise ValueError(f"output {out.get('name')!r} has {len(data)} values for {n} rows (shape {shape})")
    if width == 1:
        return list(data), out.get("name", "")
    arr = np.asarray(data, dtype=float).reshape(n, width)
    return arr.argmax(axis=1).tolist(), out.get("name", "")


def _same(pred, label) -> bool:
    if isinstance(pred, (int, float, bool)) and isinstance(label, (int, float, bool)):
        return float(pred) == float(label)
    return str(pred) == str(label)


def evaluate_quality(
    base_url: str,
    served_name: str,
    labelled_jsonl: str | Path,
    min_accuracy: float | None = None,
    *,
    batch_size: int = 32,
    output: str | None = None,
    input_spec: TensorSpec | None = None,
    stable_accuracy: float | None = None,
    max_accuracy_drop: float | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 60.0,
) -> QualityReport:
    """Send every labelled example through the server and judge its accuracy. Raises StageFailed when unreachable."""
    items = read_labelled(labelled_jsonl)
    t0 = time.perf_counter()
    correct = 0
    seen = 0
    errors: dict[str, int] = {}
    failed_rows = 0
    by_class: dict[str, list[int]] = {}
    used_output = output or ""
    obj = f"{served_name} at {base_url}"
    try:
        with httpx.Client(base_url=base_url, timeout=timeout_s, headers=headers) as c:
            if input_spec is None:
                meta = c.get(f"/v2/models/{served_name}")
                if meta.status_code == 404:
                    raise BadInput(STAGE, obj, f"the server does not serve {served_name!r} (GET /v2/models/{served_name}: 404)",
                                   "check the served name")
                specs = specs_from_metadata(meta.json()) if meta.status_code == 200 else []
                input_spec = specs[0] if len(specs) == 1 else None
            spec = input_spec or TensorSpec(name=DEFAULT_INPUT, datatype="FP64", shape=[-1, -1])
            outputs = [output] if output else None
            for body, labels in _batches(items, batch_size, spec, outputs):
                r = c.post(f"/v2/models/{served_name}/infer", json=body)
                try:
                    if r.status_code != 200:
                        raise ValueError(f"HTTP {r.status_code}: {r.text[:200]}")
                    preds, used_output = predictions(r.json().get("outputs") or [], output, len(labels))
                except ValueError as err:
                    key = str(err).split(":", 1)[0]
                    errors[key] = errors.get(key, 0) + 1
                    failed_rows += len(labels)
                    seen += len(labels)
                    continue
                for p, lab in zip(preds, labels):
                    ok = _same(p, lab)
                    correct += ok
                    by_class.setdefault(str(lab), []).append(int(ok))
                seen += len(labels)
    except httpx.HTTPError as err:
        raise StageFailed(STAGE, obj, f"cannot reach the server: {type(err).__name__}: {err}",
                          "check that the candidate still serves (its log in the store)") from None
    accuracy = correct / seen if seen else 0.0
    violations = []
    if failed_rows:
        violations.append(f"{failed_rows} of {seen} examples got no prediction ({', '.join(f'{k} x{n}' for k, n in errors.items())})")
    if min_accuracy is not None and accuracy < min_accuracy:
        violations.append(f"accuracy {accuracy:.4f} < limit {min_accuracy:g} ({correct} of {seen} correct)")
    if stable_accuracy is not None and max_accuracy_drop is not None and accuracy < stable_accuracy - max_accuracy_drop:
        violations.append(f"accuracy {accuracy:.4f} is {stable_accuracy - accuracy:.4f} below stable's {stable_accuracy:.4f} "
                          f"(at most {max_accuracy_drop:g} allowed)")
    return QualityReport(
        served_name=served_name, base_url=base_url, data=str(labelled_jsonl), examples=seen, correct=correct,
        accuracy=accuracy, min_accuracy=min_accuracy, stable_accuracy=stable_accuracy,
        max_accuracy_drop=max_accuracy_drop, passed=not violations, violations=violations, failed_requests=sum(errors.values()),
        errors=errors, per_class={k: sum(v) / len(v) for k, v in by_class.items()}, output=used_output,
        seconds=time.perf_counter() - t0,
    )


def require_quality(report: QualityReport) -> None:
    """Raise StageFailed (the flow rolls back) when the gate did not pass."""
    if not report.passed:
        raise StageFailed(STAGE, f"{report.served_name} at {report.base_url}", "the quality gate failed: " + "; ".join(report.violations),
                          "the candidate is less accurate than the spec allows: retrain it, or lower "
                          "engine.predictive.quality.min_accuracy if the limit is wrong", detail=report.markdown())
