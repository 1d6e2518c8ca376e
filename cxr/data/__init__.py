"""The data: layouts, safe extraction, image checks, ingestion, Kaggle, the synthetic generator, the raw store
and its index, duplicates, the download step, the split step and its manifest."""
