"""The tools around the steps: DVC and MLflow plumbing, lineage, notifications, Markdown for artifacts, progress."""
