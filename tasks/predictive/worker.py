"""The predictive worker: runs inside the MLServer environment (.venv-mlserver, or the image).

    python worker.py train JOB.json     # train an example model, write its files
    python worker.py inspect JOB.json   # read a model file: features, classes, estimator

Needs only the standard library, numpy, scikit-learn and (for xgboost) xgboost, so it runs in
an interpreter without llmship installed: the model is written (and read back) by the same
scikit-learn / xgboost that MLServer loads it with, so a joblib pickle never crosses versions.
Prints one JSON object on stdout; on failure {"error": ..., "kind": "bad_input" | "failed"}.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

SKLEARN_FILES = ("model.joblib", "model.pkl", "model.pickle")
XGBOOST_FILES = ("model.json", "model.ubj", "model.bst")


class JobError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


# ------------------------------------------------------------------ data
def make_data(n_samples: int, seed: int):
    """An iris-like set: 4 numeric features, 3 classes, made locally (no download)."""
    import numpy as np
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=n_samples, n_features=4, n_informative=3, n_redundant=1, n_repeated=0, n_classes=3,
        n_clusters_per_class=1, class_sep=1.6, flip_y=0.01, random_state=seed,
    )
    # iris-like magnitudes (cm): positive, a few units wide
    X = (X * np.array([0.8, 0.45, 1.7, 0.75]) + np.array([5.8, 3.0, 3.8, 1.2])).round(2)
    return X.astype("float64"), y.astype("int64")


def _corrupt(X, y, seed: int):
    """The 'worse' model's training labels: random in half the feature space (it learns noise there)."""
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    y = y.copy()
    region = X[:, 2] > np.median(X[:, 2])
    y[region] = rng.integers(0, 3, size=int(region.sum()))
    return y


def train(job: dict) -> dict:
    import numpy as np

    kind = job["kind"]
    out = Path(job["model_dir"])
    out.mkdir(parents=True, exist_ok=True)
    seed = int(job.get("seed", 0))
    X, y = make_data(int(job.get("n_samples", 3000)), seed)
    n_test = int(len(X) * 0.2)
    X_train, y_train, X_test, y_test = X[n_test:], y[n_test:], X[:n_test], y[:n_test]
    y_fit = _corrupt(X_train, y_train, seed) if job.get("worse") else y_train
    trees = int(job["trees"])
    t0 = time.perf_counter()
    if kind == "sklearn":
        import joblib
        from sklearn.ensemble import RandomForestClassifier

        # n_jobs=1: a served model must not fan out over the host's cores per request
        model = RandomForestClassifier(n_estimators=trees, max_depth=int(job.get("max_depth", 6)), random_state=seed,
                                       n_jobs=1)
        model.fit(X_train, y_fit)
        path = out / "model.joblib"
        joblib.dump(model, path)
        pred = model.predict(X_test)
    elif kind == "xgboost":
        import xgboost as xgb

        model = xgb.XGBClassifier(n_estimators=trees, max_depth=int(job.get("max_depth", 4)), learning_rate=0.3,
                                  random_state=seed, n_jobs=1, tree_method="hist")
        model.fit(X_train, y_fit)
        path = out / "model.json"
        model.save_model(path)
        pred = model.predict(X_test)
    else:
        raise JobError("bad_input", f"unknown kind {kind!r}: use sklearn or xgboost")
    seconds = time.perf_counter() - t0
    return {
        "model_file": str(path),
        "accuracy": float(np.mean(pred == y_test)),
        "n_train": int(len(X_train)),
        "n_test": int(n_test),
        "trees": trees,
        "seconds_train": seconds,
        "X_test": X_test.tolist(),
        "y_test": y_test.tolist(),
        "versions": _versions(kind),
    }


# ------------------------------------------------------------------ inspect
def _find(model_path: Path, kind: str) -> Path:
    if model_path.is_file():
        return model_path
    names = SKLEARN_FILES if kind == "sklearn" else XGBOOST_FILES
    for n in names:
        if (model_path / n).is_file():
            return model_path / n
    raise JobError("bad_input", f"no {kind} model file in {model_path} (looked for {', '.join(names)})")


def inspect(job: dict) -> dict:
    kind = job["kind"]
    path = _find(Path(job["model_path"]), kind)
    info: dict = {"model_file": str(path), "bytes": path.stat().st_size, "versions": _versions(kind)}
    try:
        if kind == "sklearn":
            import joblib

            model = joblib.load(path)
            final = model.steps[-1][1] if hasattr(model, "steps") else model
        else:
            import xgboost as xgb

            try:
                model = xgb.XGBClassifier()
                model.load_model(path)
            except TypeError:
                model = xgb.XGBRegressor()
                model.load_model(path)
            final = model
    except JobError:
        raise
    except Exception as err:  # a pickle from another version, a truncated file
        raise JobError("bad_input", f"cannot load {path} with this {kind}: {type(err).__name__}: {err}") from None
    n = getattr(model, "n_features_in_", None)
    if n is None and kind == "xgboost":
        n = model.get_booster().num_features()
    info["n_features"] = int(n) if n is not None else None
    names = getattr(model, "feature_names_in_", None)
    info["feature_names"] = [str(x) for x in names] if names is not None else None
    classes = getattr(final, "classes_", None)
    info["classes"] = [c.item() if hasattr(c, "item") else c for c in classes] if classes is not None else None
    info["estimator"] = type(final).__name__
    info["task"] = "classification" if classes is not None else "regression"
    info["has_predict_proba"] = hasattr(final, "predict_proba")
    return info


def _versions(kind: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("numpy", "scikit-learn", "xgboost-cpu" if kind == "xgboost" else "", "xgboost" if kind == "xgboost" else ""):
        if not dist:
            continue
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("train", "inspect"):
        print(json.dumps({"error": "usage: worker.py train|inspect JOB.json", "kind": "bad_input"}))
        return 2
    job = json.loads(Path(argv[2]).read_text())
    try:
        result = train(job) if argv[1] == "train" else inspect(job)
    except JobError as err:
        result = {"error": err.message, "kind": err.kind}
    except ImportError as err:
        result = {"error": f"{err}: this interpreter lacks the library", "kind": "bad_input"}
    except Exception as err:  # report, never a bare traceback to the caller
        result = {"error": f"{type(err).__name__}: {err}", "kind": "failed", "traceback": traceback.format_exc()}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
