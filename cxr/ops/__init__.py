"""The tools around the steps: DVC and MLflow plumbing, lineage, notifications, Markdown for artifacts, progress,
the live training run, the offline Vega page for ``dvc plots``."""
