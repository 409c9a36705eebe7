"""The mini preset end to end at toy scale (slow): train.py runs, evaluate.py, the speed table and both figures,
all through ``python -m scripts.reproduce mini`` into one folder, on a tiny generated corpus."""

from __future__ import annotations

import json

import pytest

from scripts import reproduce
from stmc.data.synthetic import demo_like_tree


@pytest.mark.slow
def test_mini_preset_chain_at_toy_scale(tmp_path, monkeypatch):
    monkeypatch.setenv("STMC_CACHE_DIR", str(tmp_path / "cache"))
    demo_like_tree(tmp_path / "corpus")
    out = tmp_path / "mini"
    overrides = [
        f"out={out}",
        "steps=2",
        "val_every=1",
        f"data=[data=demo,data.root={tmp_path / 'corpus'},data.batch_size=2]",
        "train.sweeps={lookahead: {overrides: [], params: {model.lookahead: [0, 14], seed: [0]}},"
        " size: {overrides: [], params: {model.width: [0.25], seed: [0]}},"
        " ablation: {overrides: [model.tstmc=false], params: {seed: [0]}}}",
        "speed_table=[--rounds,'1',--hops,'2',--frames,'8']",
        "size_figure=[--widths,'0.25','1.0',--rounds,'1',--hops,'2']",
    ]
    assert reproduce.main(["mini", *overrides]) == 0
    results = json.loads((out / "evaluate/results.json").read_text())
    assert sorted((m["lookahead"], m["width"], m["model_config"].get("tstmc", True)) for m in results["models"]) == [
        (0, 0.25, True),
        (0, 1.0, False),
        (0, 1.0, True),
        (14, 1.0, True),
    ]
    assert results["max_abs_diff"] < 1e-5
    speed = json.loads((out / "speed_table.json").read_text())
    assert {r["model"] for r in speed["rows"] if r["si_snri_db"] is not None} == {"causal", "non-causal"}
    ablation = next(r for r in speed["rows"] if r["method"] == "stmc (without tSTMC)")
    assert ablation["si_snri_db"] is not None and ablation["si_snri_models"] == 1  # from its own checkpoint
    for artifact in (
        "lookahead.png",
        "size.png",
        "curves/lookahead/curves.png",
        "speed_table.md",
        "index.md",
        "timings.json",
    ):
        assert (out / artifact).is_file(), artifact
    index = (out / "index.md").read_text()
    assert "![lookahead.png](lookahead.png)" in index and "| evaluate | ok |" in index
    page, report = (out / "index.html").read_text(), (out / "evaluate/report.html").read_text()
    assert 'href="evaluate/report.html"' in page and "<img" in page
    assert 'src="figures/lookahead.png"' in report and 'src="figures/size.png"' in report and "<audio" in report
    # a second call finds every training run finished and only redoes the cheap steps
    assert reproduce.main(["mini", *overrides]) == 0
    timings = json.loads((out / "timings.json").read_text())["steps"]
    assert {s["status"] for name, s in timings.items() if name.startswith("train_")} == {"done before"}
