"""The drift step: which images it compares, and a champion it cannot check skipped with the reason."""

from __future__ import annotations

from cxr.monitoring.drift import choose_sides


def test_sides_are_the_champions_held_out_images_and_the_new_ones_only() -> None:
    """Nothing new, nothing to compare: the two halves of the champion's own split are not a drift question."""

    def row(h: str, split: str) -> dict[str, str]:
        return {"path": f"A/{h}.png", "sha256": h, "split": split, "label": "A"}

    champion = [row("a", "train"), row("b", "valid"), row("c", "test")]
    ref, cur = choose_sides(champion, [row("a", "train"), row("b", "valid"), row("c", "test")])
    assert [r["sha256"] for r in ref] == ["b", "c"] and cur == []
    # By content: a held-out image the current split puts elsewhere is still the champion's held-out image;
    # one that is gone from the raw data is not read; the champion's training images never are.
    ref, cur = choose_sides(champion, [row("a", "valid"), row("b", "train"), row("d", "valid")])
    assert [r["sha256"] for r in ref] == ["b"] and [r["sha256"] for r in cur] == ["d"]


def test_champion_without_its_manifest_is_skipped_with_the_reason(tmp_path) -> None:
    import mlflow

    from cxr.core.config import Settings
    from cxr.monitoring.drift import drift
    from cxr.monitoring.report import read_report

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp)
    client.set_terminated(run.info.run_id)
    settings = Settings()
    name = settings.base.model_name
    client.create_registered_model(name)
    mv = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(name, "champion", mv.version)
    paths = settings.paths(tmp_path)

    report = drift(settings, paths, uri)
    assert report.status == "skipped" and not report.flagged
    assert "no pipeline/manifest.csv" in report.reasons[0]
    assert read_report(paths.drift) == report
