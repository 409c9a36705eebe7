"""scripts/learning_curve.py: curves read from finished runs only, the last-20 % gain interpolated, the summary's
mean ± SD over seeds, and one real (tiny) run end to end."""

from __future__ import annotations

import csv

import pytest

from scripts import learning_curve
from scripts.reproduce import DONE


def write_run(out, recipe, seed, points, done=True):
    folder = out / recipe / f"seed={seed}"
    (folder / "csv").mkdir(parents=True)
    with open(folder / "csv" / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["step", "time/train_cpu_minutes", "val/si_snri", "val/si_snri_raw"])
        writer.writeheader()
        for step, value in points:
            writer.writerow(
                {
                    "step": step,
                    "time/train_cpu_minutes": step / 100,
                    "val/si_snri": value,
                    "val/si_snri_raw": value - 0.5,
                }
            )
            writer.writerow({"step": step + 1})  # a training-only row, as Lightning's CSV logger writes
    if done:
        (folder / DONE).touch()


def test_value_at_interpolates_between_validations():
    curve = [{"step": 100, "si_snri": 1.0}, {"step": 200, "si_snri": 3.0}]
    assert learning_curve.value_at(curve, 150) == pytest.approx(2.0)
    assert learning_curve.value_at(curve, 50) == 1.0 and learning_curve.value_at(curve, 999) == 3.0


def test_summary_of_finished_runs(tmp_path):
    write_run(tmp_path, "base", 0, [(100, 1.0), (400, 4.0), (500, 4.5)])
    write_run(tmp_path, "base", 1, [(100, 2.0), (400, 5.0), (500, 5.5)])
    write_run(tmp_path, "base", 2, [(100, 9.0)], done=False)  # still running: left out
    rows = learning_curve.read_curves(tmp_path)
    assert {r["seed"] for r in rows} == {0, 1} and {r["weights"] for r in rows} == {"inference", "raw"}
    table = learning_curve.summarize(rows)
    # finals 4.5 and 5.5: mean 5.0, SD 0.71; at 80 % of 500 steps (400) the curves are at 4.0 / 5.0: gain +0.50
    assert "| base | inference | 2 | 500 | 5.0 | 5.00 ± 0.71 | +0.50 |" in table
    assert "| base | raw | 2 | 500 | 5.0 | 4.50 ± 0.71 | +0.50 |" in table
    assert learning_curve.collect(tmp_path) == 0
    assert (tmp_path / "curves.png").stat().st_size > 0 and (tmp_path / "summary.md").is_file()
    assert learning_curve.collect(tmp_path, tmp_path / "elsewhere") == 0
    assert (tmp_path / "elsewhere" / "curves.csv").read_text() == (tmp_path / "curves.csv").read_text()


def test_recipe_names_are_folder_and_hydra_safe():
    assert learning_curve.recipe_name("module.optimizer.lr=6e-3 data.batch_size=8") == (
        "module.optimizer.lr-6e-3-data.batch_size-8"
    )


def test_one_tiny_run_end_to_end(corpus, tmp_path):
    status = learning_curve.main([
        f"data.root={corpus}", "data.segment_seconds=1.0", "data.batch_size=2", "data.epoch_items=4",
        "model.width=0.25", "model.depth=3", "trainer.max_steps=4", "trainer.limit_val_batches=1", "threads=1",
        "module.ema_decay=0.5", "--every", "2", "--seeds", "0", "--out", str(tmp_path),
    ])  # fmt: skip
    assert status == 0
    rows = learning_curve.read_curves(tmp_path)
    assert sorted({r["step"] for r in rows}) == [1, 3]  # validations after steps 2 and 4 (0-based step index)
    assert all(r["cpu_minutes"] > 0 for r in rows)
