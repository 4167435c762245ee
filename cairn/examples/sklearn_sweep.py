"""A small, real hyperparameter sweep tracked with Cairn.

Three linear models (logistic regression, linear SVM, perceptron) trained epoch by epoch with
SGD on scikit-learn's bundled breast-cancer dataset, over a grid of learning rates. Each run
logs its params, per-epoch train/validation loss and accuracy, final metrics, the model and a
metrics CSV as artifacts, and lineage (dataset + model type, so versions count up per model).

    python -m cairn.examples.sklearn_sweep          # against a running `cairn up`
"""

from __future__ import annotations

import csv
import pickle
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from cairn.client import Tracker
from cairn.types import Run

DATASET_ID = "sklearn:breast_cancer"
DATASET_NAME = "Breast Cancer Wisconsin (diagnostic)"
MODELS = {"logistic_regression": "log_loss", "linear_svm": "hinge", "perceptron": "perceptron"}
SHORT_NAMES = {"logistic_regression": "logreg", "linear_svm": "svm", "perceptron": "perceptron"}
LEARNING_RATES = (0.001, 0.01, 0.1)


@dataclass(frozen=True)
class SweepResult:
    sweep_id: str
    runs: list[Run]


def train_one(
    tracker: Tracker,
    experiment: str,
    sweep_id: str,
    model_name: str,
    learning_rate: float,
    n_epochs: int,
    workdir: Path,
) -> Run:
    import numpy as np
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import SGDClassifier
    from sklearn.metrics import accuracy_score, f1_score, hinge_loss, log_loss
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    features, labels = load_breast_cancer(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        features, labels, test_size=0.25, random_state=7, stratify=labels
    )
    scaler = StandardScaler().fit(x_train)
    x_train, x_val = scaler.transform(x_train), scaler.transform(x_val)
    loss = MODELS[model_name]
    params = {
        "model_name": model_name,
        "loss": loss,
        "learning_rate": learning_rate,
        "n_epochs": n_epochs,
        "batch": "full",
        "alpha": 1e-4,
        "seed": 7,
    }
    model = SGDClassifier(
        loss=loss, learning_rate="constant", eta0=learning_rate, alpha=1e-4, random_state=7
    )
    classes = np.unique(labels)
    history: list[dict[str, float]] = []

    def loss_of(x: np.ndarray, y: np.ndarray) -> float:
        if loss == "log_loss":
            return float(log_loss(y, model.predict_proba(x), labels=classes))
        return float(hinge_loss(y, model.decision_function(x), labels=classes))

    with tracker.run(
        experiment,
        run_name=f"{SHORT_NAMES[model_name]}-lr{learning_rate:g}",
        tags={"sweep": sweep_id, "task": "binary-classification"},
        dataset_id=DATASET_ID,
        dataset_name=DATASET_NAME,
        model_type=model_name,
    ) as run:
        tracker.log_params(params)
        for epoch in range(1, n_epochs + 1):
            model.partial_fit(x_train, y_train, classes=classes)
            row = {
                "epoch": epoch,
                "train_loss": loss_of(x_train, y_train),
                "val_loss": loss_of(x_val, y_val),
                "val_accuracy": float(accuracy_score(y_val, model.predict(x_val))),
            }
            history.append(row)
            tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        predictions = model.predict(x_val)
        tracker.log_metrics(
            {
                "accuracy": float(accuracy_score(y_val, predictions)),
                "f1": float(f1_score(y_val, predictions)),
            },
            step=n_epochs,
        )
        model_path = workdir / f"{run.run_id}-model.pkl"
        model_path.write_bytes(pickle.dumps({"scaler": scaler, "model": model}))
        csv_path = workdir / f"{run.run_id}-metrics.csv"
        with csv_path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)
        tracker.log_artifact(model_path, "model", artifact_path="model/model.pkl")
        tracker.log_artifact(csv_path, "data", artifact_path="metrics.csv")
    return tracker.get_run(run.run_id)


def run_sweep(
    tracker: Tracker, experiment: str = "example-sweep", n_epochs: int = 20
) -> SweepResult:
    sweep_id = uuid.uuid4().hex[:8]
    runs = []
    with tempfile.TemporaryDirectory(prefix="cairn-example-") as scratch:
        for model_name in MODELS:
            for learning_rate in LEARNING_RATES:
                runs.append(
                    train_one(
                        tracker,
                        experiment,
                        sweep_id,
                        model_name,
                        learning_rate,
                        n_epochs,
                        Path(scratch),
                    )
                )
    return SweepResult(sweep_id, runs)


if __name__ == "__main__":
    result = run_sweep(Tracker())
    for run in sorted(result.runs, key=lambda r: -r.metrics.get("accuracy", 0.0)):
        print(
            f"{run.run_name:32s} accuracy={run.metrics['accuracy']:.4f} f1={run.metrics['f1']:.4f}"
        )
