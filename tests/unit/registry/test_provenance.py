"""Provenance in MLflow's terms: the data as dataset inputs with the DVC version as digest, and the live training
run found by its checkpoint and nested under the pipeline run."""

from __future__ import annotations

from pathlib import Path

import yaml

from cxr.core.paths import Paths
from cxr.ops.trainrun import start_live_run
from cxr.registry.provenance import (
    PARENT_RUN_TAG,
    TRAIN_RUN_TAG,
    link_training_run,
    log_datasets,
    pipeline_datasets,
)

VERSION = "0123456789abcdef0123456789abcdef.dir"  # what data.dvc records for a folder: 36 characters


def _project(root: Path) -> Paths:
    paths = Paths().resolve(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.dvc").write_text(yaml.safe_dump({"outs": [{"md5": VERSION, "path": "data/raw"}]}))
    paths.manifest.parent.mkdir(parents=True)
    rows = ["path,folder,label,split,sha256,group,source"]
    for i, split in enumerate(["train"] * 5 + ["valid"] * 2 + ["test"] * 3):
        rows.append(f"COVID/images/{i}.png,COVID,{'COVID' if i % 2 else 'Normal'},{split},{i:064x},{i},COVID.zip")
    paths.manifest.write_text("\n".join(rows) + "\n")
    return paths


def test_the_data_version_and_each_split_are_datasets(tmp_path: Path) -> None:
    paths = _project(tmp_path / "p")
    found = [(ds.name, ds.digest, ctx) for ds, ctx in pipeline_datasets(paths)]
    assert found[0] == ("data/raw", VERSION, "source")
    assert [(name, ctx) for name, _, ctx in found[1:]] == [
        ("train", "training"),
        ("valid", "validation"),
        ("test", "test"),
    ]
    sizes = {ds.name: ds.profile["num_rows"] for ds, _ in pipeline_datasets(paths)[1:]}
    assert sizes == {"train": 5, "valid": 2, "test": 3}
    assert len({digest for _, digest, _ in found}) == 4
    assert pipeline_datasets(Paths().resolve(tmp_path / "empty")) == []  # before download and split: none


def _pipeline_run(client, exp_id: str, name: str) -> str:
    return client.create_run(exp_id, run_name=name).info.run_id


def test_the_training_run_is_nested_under_the_pipeline_run_that_registers_its_checkpoint(tmp_path: Path) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    paths = _project(tmp_path / "p")
    datasets = pipeline_datasets(paths)
    checkpoint, other = tmp_path / "best.pt", tmp_path / "other.pt"
    checkpoint.write_bytes(b"weights")
    other.write_bytes(b"other weights")
    runs = {}
    for name, ckpt in (("older", other), ("this", checkpoint)):
        live = start_live_run(uri, paths.root, "cxr", {}, {})
        live.record_result(paths.history, ckpt, {})
        live.end("FINISHED")
        runs[name] = live.run_id
    exp_id = client.get_experiment_by_name("cxr").experiment_id

    first = _pipeline_run(client, exp_id, "pipeline-1")
    log_datasets(client, first, datasets)
    assert link_training_run(client, exp_id, first, checkpoint, datasets) == runs["this"]
    train = client.get_run(runs["this"])
    assert train.data.tags[PARENT_RUN_TAG] == first
    assert client.get_run(first).data.tags[TRAIN_RUN_TAG] == runs["this"]
    assert PARENT_RUN_TAG not in client.get_run(runs["older"]).data.tags
    contexts = {i.dataset.name: [t.value for t in i.tags] for i in train.inputs.dataset_inputs}
    assert contexts == {"data/raw": ["source"], "train": ["training"], "valid": ["validation"]}  # never the test split
    pipeline_inputs = client.get_run(first).inputs.dataset_inputs
    assert {(i.dataset.name, i.dataset.digest) for i in pipeline_inputs} >= {("data/raw", VERSION)}

    # Only evaluation changed: a new pipeline run with the same checkpoint names the training run, which stays.
    second = _pipeline_run(client, exp_id, "pipeline-2")
    assert link_training_run(client, exp_id, second, checkpoint, datasets) == runs["this"]
    assert client.get_run(runs["this"]).data.tags[PARENT_RUN_TAG] == first
    assert client.get_run(second).data.tags[TRAIN_RUN_TAG] == runs["this"]

    # A checkpoint no live run produced (trained with --no-track), or none at all: nothing to link.
    untracked = tmp_path / "untracked.pt"
    untracked.write_bytes(b"trained elsewhere")
    assert link_training_run(client, exp_id, second, untracked, datasets) is None
    assert link_training_run(client, exp_id, second, tmp_path / "missing.pt", datasets) is None
