"""What a pipeline run was made from, in MLflow's own terms: the data as dataset inputs (the raw data with its
DVC version as digest, each split of the manifest) and the live training run, nested under the pipeline run."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from cxr.core.paths import ResolvedPaths
from cxr.ops.lineage import data_version
from cxr.ops.trainrun import CHECKPOINT_TAG, KIND_TAG, TRAIN_KIND, checkpoint_digest

log = logging.getLogger(__name__)

#: The pipeline run's tag naming the live run that trained its model.
TRAIN_RUN_TAG = "cxr.train_run_id"
#: MLflow's tags: a run's parent (the UI nests runs by it) and a dataset input's context.
PARENT_RUN_TAG = "mlflow.parentRunId"
CONTEXT_TAG = "mlflow.data.context"
#: The manifest's splits and the context each is logged under.
SPLIT_CONTEXTS: tuple[tuple[str, str], ...] = (("train", "training"), ("valid", "validation"), ("test", "test"))
#: The raw data's context: every split is drawn from it.
RAW_CONTEXT = "source"
#: What the training run read: the test split never.
TRAINING_CONTEXTS = (RAW_CONTEXT, "training", "validation")
#: MLflow keeps a dataset digest in 36 characters: a DVC folder version (32 hex digits and ``.dir``) fits.
_DIGEST_MAX = 36


def _local_source(path: Path):
    """MLflow's dataset source for a local path.

    MLflow registers one local source class for ``file:`` URIs and one for plain paths, and warns on each path
    that both claim; they are the same kind of source, so that warning says nothing here.
    """
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        return resolve_dataset_source(str(path))


def pipeline_datasets(paths: ResolvedPaths) -> list[tuple[object, str]]:
    """(dataset, context) pairs: the raw data (digest: the version ``data.dvc`` records), and each split of the
    manifest (its rows; targets: the label; MLflow's digest of them)."""
    import mlflow.data
    import pandas as pd
    from mlflow.data.meta_dataset import MetaDataset

    out: list[tuple[object, str]] = []
    version = data_version(paths.root)
    if version and len(version) <= _DIGEST_MAX:
        name = paths.raw.relative_to(paths.root).as_posix() if paths.raw.is_relative_to(paths.root) else "raw"
        out.append((MetaDataset(_local_source(paths.raw), name=name, digest=version), RAW_CONTEXT))
    if paths.manifest.is_file():
        manifest = pd.read_csv(paths.manifest, dtype=str, keep_default_na=False)
        source = _local_source(paths.manifest)
        for split, context in SPLIT_CONTEXTS:
            rows = manifest[manifest["split"] == split].reset_index(drop=True)
            dataset = mlflow.data.from_pandas(rows, source=source, targets="label", name=split)
            out.append((dataset, context))
    return out


def log_datasets(client, run_id: str, datasets: Sequence[tuple[object, str]]) -> None:
    """Log (dataset, context) pairs as the run's dataset inputs (the run page's Datasets)."""
    from mlflow.entities import DatasetInput, InputTag

    if datasets:
        inputs = [DatasetInput(ds._to_mlflow_entity(), [InputTag(CONTEXT_TAG, ctx)]) for ds, ctx in datasets]
        client.log_inputs(run_id, datasets=inputs)


def find_training_run(client, experiment_id: str, checkpoint: Path):
    """The live run that produced ``checkpoint`` (by its sha256): the newest not nested yet, else the newest."""
    digest = checkpoint_digest(checkpoint)
    if digest is None:
        return None
    runs = client.search_runs(
        [experiment_id],
        f"tags.`{KIND_TAG}` = '{TRAIN_KIND}' and tags.`{CHECKPOINT_TAG}` = '{digest}'",
        order_by=["attributes.start_time DESC"],
        max_results=50,
    )
    return next((r for r in runs if PARENT_RUN_TAG not in r.data.tags), runs[0] if runs else None)


def link_training_run(
    client, experiment_id: str, run_id: str, checkpoint: Path, datasets: Sequence[tuple[object, str]] = ()
) -> str | None:
    """Nest the live training run of ``checkpoint`` under pipeline run ``run_id`` and name it there; its id.

    A training run already nested (its model was registered before, and only evaluation changed since) stays
    where it is: the new pipeline run only names it. The training run gets the datasets it read.
    """
    train = find_training_run(client, experiment_id, checkpoint)
    if train is None:
        log.info("no live MLflow run of this checkpoint (trained with --no-track, or elsewhere)")
        return None
    train_id = train.info.run_id
    if PARENT_RUN_TAG not in train.data.tags:
        client.set_tag(train_id, PARENT_RUN_TAG, run_id)
        log_datasets(client, train_id, [(ds, ctx) for ds, ctx in datasets if ctx in TRAINING_CONTEXTS])
    client.set_tag(run_id, TRAIN_RUN_TAG, train_id)
    return train_id
