"""The reproduction scripts on small synthetic run folders: look-ahead figure, size figure, speed table, and the
preset runner's commands (mini runs locally, paper through SLURM multiruns)."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser

from scripts import lookahead_figure, reproduce, size_figure, speed_table
from scripts.common import evaluated_models
from stmc.evaluation.results import results_document, write_results
from stmc.evaluation.summary import model_summary
from stmc.model.unet import UNet

TINY = {"depth": 2, "channels": [4, 8], "lookahead_layers": "spread", "n_freq": 513, "compress": 0.3}
ITEMS = [{"split": "test_real", "noise_type": kind, "name": f"u{i}"} for i, kind in enumerate(["hum", "babble", "hum"])]


def deep_enough(lookahead: int) -> dict[str, object]:
    """TINY's depth and channels, deepened where ``lookahead`` needs more than its ``2 * depth`` layers."""
    depth = max(TINY["depth"], -(-lookahead // 2))
    return {"depth": depth, "channels": [4, *[8] * (depth - 1)]}


def synthetic_results(
    folder: Path, models: list[tuple[int, float, int, float]], tstmc: bool = True, placement: str = "spread"
) -> Path:
    """A results.json as evaluate.py writes it, for models ``(lookahead, width, seed, SI-SNRi)`` (``tstmc=False``:
    the ablation's checkpoints; ``placement``: their ``lookahead_layers``)."""
    baselines = [{"mixture": {"si_snr": 5.0, "si_snri": 0.0}, "wiener": {"si_snr": 7.0, "si_snri": 2.0}}] * 3
    entries = []
    for lookahead, width, seed, score in models:
        info = {
            "name": f"L{lookahead}-w{width}-s{seed}",
            "checkpoint": f"/runs/{'' if tstmc else 'ablation/'}L{lookahead}/w{width}/s{seed}.ckpt",
            "model_config": {
                **TINY,
                **deep_enough(lookahead),
                "lookahead": lookahead,
                "width": width,
                "lookahead_layers": placement,
                **({} if tstmc else {"tstmc": False}),
            },
            "lookahead": lookahead,
            "width": width,
            "seed": seed,
            "step": 10,
            "params": 1000,
            "size_mb": 0.004,
            "receptive_field": [4, lookahead],
        }
        rows = [
            {
                "offline": {"si_snr": 5 + score + d, "si_snri": score + d},
                "stmc": {"si_snr": 5 + score + d, "si_snri": score + d, "max_abs_diff": 1e-7, "max_rel_diff": 1e-6},
            }
            for d in (-0.5, 0.0, 0.5)
        ]
        entries.append(model_summary(info, ITEMS, baselines, rows))
    write_results(
        folder, results_document(entries, {"utterances": 3, "methods": ["offline", "stmc"], "chunk_samples": 256})
    )
    return folder / "results.json"


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_evaluated_models_are_read_from_nested_results(tmp_path):
    synthetic_results(tmp_path / "a", [(0, 1.0, 0, 3.0)])
    synthetic_results(tmp_path / "b" / "c", [(2, 1.0, 1, 4.0), (0, 1.0, 0, 3.0)])
    models = evaluated_models([tmp_path])
    assert sorted((m["lookahead"], m["seed"], m["si_snri"]) for m in models) == [(0, 0, 3.0), (2, 1, 4.0)]


def test_lookahead_figure_refuses_a_sweep_that_mixes_placements(tmp_path, capsys):
    """Look-ahead 2 in the first two layers and spread along the chain are different experiments: a sweep holding
    both (an old run folder re-used after the default changed) is refused, naming the layers; look-ahead 0 and 14
    are the same network whatever the placement, so mixing their names is fine."""
    synthetic_results(tmp_path / "old", [(0, 1.0, 0, 3.0), (2, 1.0, 0, 3.1), (14, 1.0, 0, 3.4)], placement="first")
    synthetic_results(tmp_path / "new", [(0, 1.0, 1, 3.0), (14, 1.0, 1, 3.4)])
    lookahead_figure.main([str(tmp_path / "old"), str(tmp_path / "new"), "--out", str(tmp_path / "fig")])
    synthetic_results(tmp_path / "new2", [(2, 1.0, 1, 3.3)])
    with pytest.raises(SystemExit):
        lookahead_figure.main([str(tmp_path), "--out", str(tmp_path / "fig")])
    assert "look-ahead 2: the models have their future frames in different layers ([0, 1] and [1, 3])" in (
        capsys.readouterr().err
    )


def test_lookahead_figure_means_gains_and_files(tmp_path):
    curve = {0: 5.0, 1: 5.2, 2: 5.3, 13: 5.6, 14: 5.62}
    models = [(la, 1.0, seed, value + 0.1 * (seed - 1)) for la, value in curve.items() for seed in range(3)]
    models.append((0, 0.5, 0, 1.0))  # another width: not part of the look-ahead sweep
    synthetic_results(tmp_path / "eval", models)
    out = lookahead_figure.main([str(tmp_path / "eval"), "--out", str(tmp_path / "fig")])
    summary = {row["lookahead"]: row for row in out["summary"]}
    assert sorted(summary) == sorted(curve)
    assert summary[2]["mean_db"] == pytest.approx(5.3) and summary[2]["sd_db"] == pytest.approx(0.1)
    assert out["gains"]["first_frame_gain_db"] == pytest.approx(0.2)
    assert out["gains"]["last_frame_gain_db"] == pytest.approx(0.02)
    assert out["gains"]["causal_loss_percent"] == pytest.approx(100 * 0.62 / 5.62)
    assert "frame 1" in lookahead_figure.describe(out["gains"])
    assert (tmp_path / "fig/lookahead.png").stat().st_size > 10_000
    assert len(read_csv(tmp_path / "fig/lookahead.csv")) == 15
    assert len(read_csv(tmp_path / "fig/lookahead_summary.csv")) == 5


def test_lookahead_gains_over_gaps_are_per_frame():
    summary = lookahead_figure.summarize(
        [
            {"lookahead": la, "width": 1.0, "seed": 0, "si_snri": v}
            for la, v in ((0, 4.0), (2, 4.4), (7, 4.9), (14, 5.6))
        ]
    )
    gains = lookahead_figure.gains(summary)
    assert gains["first_frame_gain_db"] == pytest.approx(0.2) and gains["last_frame_gain_db"] == pytest.approx(0.1)
    assert "frames 0→2, per frame" in lookahead_figure.describe(gains)


def test_size_figure_times_every_width_and_takes_si_snri_from_the_trained_ones(tmp_path):
    synthetic_results(tmp_path / "eval", [(0, 1.0, 0, 3.0), (0, 1.0, 1, 3.4), (0, 2.0, 0, 3.9), (2, 1.0, 0, 9.0)])
    rows = size_figure.main(
        [str(tmp_path / "eval"), "--out", str(tmp_path / "fig"), "--widths", "0.5", "1", "--rounds", "1", "--hops", "2"]
    )
    assert [r["width"] for r in rows] == [0.5, 1.0, 2.0]
    assert [r["si_snri_db"] for r in rows] == [None, pytest.approx(3.2), pytest.approx(3.9)]
    assert rows[0]["size_mb"] < rows[1]["size_mb"] < rows[2]["size_mb"]
    for r in rows:
        assert r["stmc_ms"] > 0 and r["inc_ms"] > 0
        assert r["speed_up_percent"] == pytest.approx(100 * (1 - r["stmc_ms"] / r["inc_ms"]))
    assert (tmp_path / "fig/size.png").stat().st_size > 10_000
    assert len(read_csv(tmp_path / "fig/size.csv")) == 3


@pytest.fixture(scope="module")
def speed_doc(tmp_path_factory):
    """One small speed-table run (on synthetic results) and the folder it wrote into."""
    tmp_path = tmp_path_factory.mktemp("speed")
    synthetic_results(tmp_path / "eval", [(0, 1.0, 0, 3.0), (0, 1.0, 1, 4.0)])
    synthetic_results(tmp_path / "eval" / "ablation", [(0, 1.0, 0, 2.0)], tstmc=False)
    doc = speed_table.main(
        [
            "--results",
            str(tmp_path / "eval"),
            "--out",
            str(tmp_path),
            "--rounds",
            "1",
            "--hops",
            "3",
            "--frames",
            "16",
            "--onnx",
        ]
    )
    return doc, tmp_path


def test_speed_table_rows_ratios_and_files(speed_doc):
    doc, tmp_path = speed_doc
    rows = {(r["model"], r["method"]): r for r in doc["rows"]}
    causal, noncausal = rows[("causal", "stmc")], rows[("non-causal", "stmc")]
    assert causal["si_snri_db"] == pytest.approx(3.5) and causal["si_snri_models"] == 2
    assert noncausal["si_snri_db"] is None and noncausal["lookahead"] == 4  # 2 x depth of the evaluated U-Net
    assert causal["algorithmic_latency_ms"] == 64 and noncausal["algorithmic_latency_ms"] == 64 + 4 * 16
    assert rows[("causal", "window")]["macs_per_hop_m"] > rows[("causal", "inc")]["macs_per_hop_m"]
    for row in doc["rows"]:
        if row["compute_latency_ms"] is not None:
            assert row["total_latency_ms"] == pytest.approx(row["algorithmic_latency_ms"] + row["compute_latency_ms"])
            assert row["timed_steps"] == 3
    # the ratios' formulas: test_speed_table_ratios_on_known_rows_equal_the_hand_computed_values
    assert doc["ratios"][0]["paper latency standard÷INC"] == 29.74
    assert "| causal | STMC (tSTMC) | 3.50 (n=2) | 64 |" in (tmp_path / "speed_table.md").read_text()
    onnx = rows[("causal", "stmc (onnxruntime)")]
    assert onnx["label"] == "STMC (tSTMC), onnxruntime" and onnx["macs_per_hop_m"] is None and onnx["timed_steps"] == 3
    assert json.loads((tmp_path / "speed_table.json").read_text())["ratios"][1]["model"] == "non-causal"


def test_speed_table_has_the_tstmc_ablation_row_for_the_causal_model(speed_doc):
    """STMC without tSTMC (tstmc=False, overlap-add, PyTorch operators): same MACs, its own checkpoints'
    SI-SNRi, and the tSTMC gains against the tSTMC engine on the same operators, next to the paper's."""
    doc, _ = speed_doc
    rows = {(r["model"], r["method"]): r for r in doc["rows"]}
    ablation, tstmc = rows[("causal", "stmc (without tSTMC)")], rows[("causal", "stmc (PyTorch ops)")]
    assert ablation["label"] == "STMC (without tSTMC), PyTorch ops"
    assert ("non-causal", "stmc (without tSTMC)") not in rows
    assert ablation["macs_per_hop_m"] == tstmc["macs_per_hop_m"] and ablation["state_kib"] != tstmc["state_kib"]
    assert ablation["si_snri_db"] == pytest.approx(2.0) and ablation["si_snri_models"] == 1
    # its gains against the tSTMC engine (formulas: ..._on_known_rows_...) are in the causal ratios only
    assert doc["ratios"][0]["paper tSTMC÷no-tSTMC peak memory"] == 0.80
    assert doc["ratios"][1]["tSTMC latency gain (ms)"] is None


def test_speed_table_ratios_on_known_rows_equal_the_hand_computed_values():
    """Table 1's ratios, the PyTorch-operator ratios and the tSTMC comparison, on rows whose times, memory and
    state are chosen so that every ratio is a round number worked out by hand (not by the module's formulas)."""

    def row(method, ms, mean, peak=None, state=100.0):
        return {"model": "causal", "method": method, "compute_latency_ms": ms, "total_latency_ms": 64 + ms,
                "inference_time_ms": mean, "peak_memory_mb": peak, "state_kib": state}  # fmt: skip

    rows = [
        row("window", 10.0, 12.0),
        row("inc", 4.0, 6.0),
        row("stmc", 0.5, 1.0),
        row("stmc (PyTorch ops)", 2.0, 2.5, peak=4.0, state=200.0),
        row("stmc (without tSTMC)", 2.5, 3.0, peak=5.0, state=125.0),
        row("window (LiteRT)", 9.0, 9.0, peak=30.0),
        row("inc (LiteRT)", 3.0, 3.0, peak=20.0),
        row("stmc (LiteRT)", 1.5, 2.0, peak=18.0),
    ]
    pytorch, litert = speed_table.ratios(rows)
    assert pytorch["compute latency standard÷INC"] == 2.5 and pytorch["compute latency INC÷STMC"] == 8.0
    assert pytorch["compute latency standard÷STMC"] == 20.0 and pytorch["inference time INC÷STMC"] == 6.0
    assert pytorch["total latency standard÷STMC"] == pytest.approx(74 / 64.5)
    assert pytorch["compute latency INC÷STMC (PyTorch ops)"] == 2.0
    assert pytorch["compute latency standard÷STMC (PyTorch ops)"] == 5.0
    assert pytorch["tSTMC latency gain (ms)"] == 0.5 and pytorch["tSTMC÷no-tSTMC peak memory"] == 0.8
    assert pytorch["tSTMC÷no-tSTMC state"] == 1.6 and pytorch["paper latency INC÷STMC"] == 2.52
    assert litert["model"] == "causal, LiteRT" and litert["compute latency standard÷INC"] == 3.0
    assert litert["compute latency INC÷STMC"] == 2.0 and litert["inference time INC÷STMC"] == 1.5
    assert litert["peak memory STMC÷INC"] == 0.9 and litert["tSTMC latency gain (ms)"] is None


@pytest.mark.litert
def test_speed_table_litert_rows_and_their_ratios(tmp_path):
    """--litert: standard, INC and STMC (and the causal ablation) in LiteRT, each with its process's resident
    growth as peak memory (the weights at least), and Table 1's ratios among those rows next to the paper's."""
    synthetic_results(tmp_path / "eval", [(0, 1.0, 0, 3.0)])
    synthetic_results(tmp_path / "eval" / "ablation", [(0, 1.0, 0, 2.0)], tstmc=False)
    doc = speed_table.main(
        ["--results", str(tmp_path / "eval"), "--rounds", "2", "--hops", "3", "--frames", "16", "--litert"]
    )
    rows = {(r["model"], r["method"]): r for r in doc["rows"]}
    for model in ("causal", "non-causal"):
        for method, label in [("window", "standard (window)"), ("inc", "INC"), ("stmc", "STMC (tSTMC)")]:
            row = rows[(model, f"{method} (LiteRT)")]
            assert row["label"] == f"{label}, LiteRT" and row["timed_steps"] == 6 and row["macs_per_hop_m"] is None
            assert row["peak_memory_mb"] >= row["model_size_mb"] and row["state_kib"] > 0
    ablation = rows[("causal", "stmc (without tSTMC) (LiteRT)")]
    assert ablation["label"] == "STMC (without tSTMC), LiteRT" and ablation["si_snri_db"] == pytest.approx(2.0)
    assert ("non-causal", "stmc (without tSTMC) (LiteRT)") not in rows
    ratio = {r["model"]: r for r in doc["ratios"]}
    litert = ratio["causal, LiteRT"]
    assert litert["tSTMC latency gain (ms)"] is not None  # the LiteRT ablation row is compared (formulas: known rows)
    assert litert["paper latency standard÷INC"] == 29.74
    assert ratio["non-causal, LiteRT"]["paper latency INC÷STMC"] == 1.32
    assert "LiteRT rows" in doc["header"]
    assert "| causal, LiteRT |" in speed_table.markdown(doc["rows"], doc["ratios"], "")


@pytest.mark.compiler
def test_speed_table_has_the_engine_on_pytorch_ops_beside_the_native_step(speed_doc):
    from stmc.stream.native import bf16_kernels

    doc, tmp_path = speed_doc
    rows = {(r["model"], r["method"]): r for r in doc["rows"]}
    causal = rows[("causal", "stmc")]
    assert doc["ratios"][0]["compute latency INC÷STMC (PyTorch ops)"] is not None  # formula: known rows
    ops = rows[("causal", "stmc (PyTorch ops)")]  # the engine without its native step, as INC and window run
    assert ops["label"] == "STMC (tSTMC), PyTorch ops" and ops["macs_per_hop_m"] == causal["macs_per_hop_m"]
    # 2 x (3 streams, PyTorch ops, onnxruntime float32 and int8, floor, bf16 where the CPU has bf16 instructions)
    # + the causal model's STMC without tSTMC
    assert len(read_csv(tmp_path / "speed_table.csv")) == 15 + 2 * bf16_kernels()
    assert rows[("causal", "stmc (onnxruntime int8)")]["label"] == "STMC (tSTMC), onnxruntime int8"


def parse(argv: list[str]) -> dict[str, object]:
    """Hydra's reading of a command's overrides: key -> value (a list for sweeps)."""
    parsed = OverridesParser.create().parse_overrides([a for a in argv if "=" in a and not a.startswith("/")])
    return {o.key_or_group: (list(o.sweep_iterator()) if o.is_sweep_override() else o.value()) for o in parsed}


def test_mini_preset_runs_33_trainings_in_distinct_folders_then_the_scripts(tmp_path):
    cfg = reproduce.load_preset("mini", [f"out={tmp_path}", "steps=7"])
    training = reproduce.train_commands(cfg, tmp_path)
    assert len(training) == 6 * 5 + 2 + 1  # look-ahead x seeds, widths, the causal model without tSTMC
    folders = [parse(c.argv)["hydra.run.dir"] for c in training]
    assert len(set(folders)) == 33 and str(tmp_path / "train/lookahead/lookahead=14/seed=4") in folders
    ablation = parse(training[-1].argv)
    assert ablation["model.tstmc"] is False and ablation["model.width"] == 0.25
    first = parse(training[0].argv)
    assert first["trainer.max_steps"] == 7 and first["model.lookahead"] == 0 and first["data"] == "demo"
    assert first["data.batch_size"] == 8 and first["module.optimizer.lr"] == 6e-3  # the recipe study's
    assert [c.done for c in training] == [Path(f) for f in folders]
    later = reproduce.later_commands(cfg, tmp_path)
    assert [c.name for c in later] == ["evaluate", "speed_table", "lookahead_figure", "size_figure"]  # no validation
    validating = reproduce.load_preset("mini", [f"out={tmp_path}", "steps=7", "val_every=7"])
    assert [c.name for c in reproduce.later_commands(validating, tmp_path)][:2] == ["evaluate", "curves_lookahead"]
    assert first["trainer.precision"] == "32-true"  # one arithmetic for every run of the sweep
    assert parse(later[0].argv)["checkpoints"] == [str(tmp_path / "train")]
    assert all(str(tmp_path) in " ".join(c.argv) for c in later)


def test_paper_preset_is_slurm_multiruns_of_75_5_and_5_runs(tmp_path):
    with pytest.raises(ValueError, match="out=..., data_root=..."):
        reproduce.load_preset("paper")
    cfg = reproduce.load_preset(
        "paper", [f"out={tmp_path}", "data_root=/data/dns", "slurm=[hydra.launcher.partition=gpu]"]
    )
    lookahead, size, ablation = reproduce.train_commands(cfg, tmp_path)
    assert "-m" in lookahead.argv and "hydra/launcher=slurm" in lookahead.argv
    values = parse(lookahead.argv)
    assert len(values["model.lookahead"]) * len(values["seed"]) == 75
    assert values["hydra.sweep.subdir"] == "lookahead=${model.lookahead}/seed=${seed}"
    assert values["data.root"] == "/data/dns" and values["hydra.launcher.partition"] == "gpu"
    assert parse(size.argv)["model.width"] == [0.25, 0.5, 0.75, 1.5, 2.0]
    assert parse(ablation.argv)["model.tstmc"] is False and len(parse(ablation.argv)["seed"]) == 5
    evaluate = reproduce.later_commands(cfg, tmp_path)[0]
    assert parse(evaluate.argv)["checkpoints"] == [
        [str(tmp_path / f"train/{sweep}")] for sweep in ("lookahead", "size", "ablation")
    ]
    with pytest.raises(ValueError, match="does not exist"):
        reproduce.load_preset("huge")


def test_runner_skips_finished_runs_and_reports_failures(tmp_path):
    done, fresh = tmp_path / "done", tmp_path / "fresh"
    done.mkdir()
    (done / reproduce.DONE).write_text("1 s\n")
    commands = [
        reproduce.Command("a", ["false"], done),
        reproduce.Command("b", ["true"], fresh),
        reproduce.Command("c", ["false"]),
    ]
    fresh.mkdir()
    with pytest.raises(RuntimeError, match="failed: c"):
        reproduce.run_parallel(commands, 2, tmp_path / "logs")
    assert [c.status for c in commands] == ["done before", "ok", "failed (1)"]
    assert (fresh / reproduce.DONE).is_file() and (tmp_path / "logs/b.log").read_text().startswith("true")


@pytest.mark.parametrize("path", ["/a/b", "/a/lookahead=0/seed=1", "/with space/x", "/it's"])
def test_hydra_quoting_keeps_paths_whole(path):
    assert parse([f"hydra.run.dir={reproduce.quote(path)}"])["hydra.run.dir"] == path


@pytest.mark.compiler
def test_gemm_kernels_times_the_hops_own_gemms():
    """The shapes are the hop's: their MACs add up to the offline MACs per frame of the inference layers the
    streams run (the trainable module's transposed convolutions also compute the frames they crop); both kernels
    get timed."""
    from scripts import gemm_kernels
    from stmc.bench.speed import count_macs, offline_frozen

    model = UNet(lookahead=3, width=0.25).eval()
    shapes = gemm_kernels.hop_shapes(model)
    spec = torch.randn(1, 2, model.n_freq, 4)
    assert sum(m * k * n for m, k, n in shapes) == count_macs(lambda: offline_frozen(model)(spec)) / 4
    per_shape, chain = gemm_kernels.time_kernels(shapes, rounds=3)
    assert len(per_shape) == len(shapes) == 14 and all(t > 0 for pair in per_shape for t in pair)
    assert chain[0] > 0 and chain[1] > 0


def test_gemm_kernels_onnx_graph_runs_the_hops_gemms_beside_the_exported_step():
    """The onnxruntime graph computes one product per layer of the hop's shapes into the bound outputs; the
    exported step and the native hop are timed beside it."""
    from scripts import gemm_kernels

    model = UNet(width=0.25).eval()
    shapes = gemm_kernels.hop_shapes(model)
    graph = gemm_kernels.GemmGraph(shapes)
    graph()
    for i, weight in enumerate(graph.weights):
        torch.testing.assert_close(graph.buffers[f"y{i}"], graph.buffers[f"x{i}"] @ weight, rtol=1e-4, atol=1e-4)
    timed = gemm_kernels.time_onnx(model, rounds=1, calls=2)
    assert set(timed) == {"onnxruntime Gemm nodes only", "onnxruntime exported step", "native step"}
    assert all(seconds > 0 for seconds in timed.values())


def paired_models(folder: Path, seed_offsets: dict[int, list[float]], gain: float) -> list[dict]:
    """Models of look-ahead 0 and 2 whose per-utterance offline SI-SNRi is ``base + seed offset (+ gain at 2)``,
    written as the ``results.json`` + ``utterances.csv`` pair that evaluate.py leaves."""
    base = {"u0": 3.0, "u1": 5.0, "u2": 4.0, "u3": 6.5}
    models, lines = [], ["model,utterance,split,noise_type,snr,signal,si_snr,si_snri"]
    for lookahead, offsets in seed_offsets.items():
        for seed, offset in enumerate(offsets):
            name = f"L{lookahead}-s{seed}"
            models.append(
                {
                    "name": name,
                    "checkpoint": f"/runs/{name}.ckpt",
                    "lookahead": lookahead,
                    "seed": seed,
                    "results": str(folder / "results.json"),
                }
            )
            for utt, value in base.items():
                score = value + offset + (gain if lookahead else 0.0)
                lines += [
                    f"{name},{utt},test_real,hum,0,offline,{score},{score}",
                    f"{name},{utt},test_real,hum,0,stmc,{score},{score + 99}",
                ]  # only offline counts
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "utterances.csv").write_text("\n".join(lines) + "\n")
    return models


def test_paired_difference_holds_seed_and_utterance_spread(tmp_path):
    models = paired_models(tmp_path, {0: [0.0, 0.1, -0.1], 2: [0.05, 0.15, -0.05]}, gain=1.0)
    d = lookahead_figure.paired_difference(models, lookahead_figure.utterance_scores(models), 0, 2)
    assert d["diff_db"] == pytest.approx(1.05) and d["utterances"] == 4 and d["seeds"] == [3, 3]
    assert d["seed_sd_db"] == pytest.approx([0.1, 0.1])
    # utterances are paired (each utterance's difference is the same), so only the seed spread widens the CI
    half = float(lookahead_figure.stats.t.ppf(0.975, 4)) * (2 * 0.1**2 / 3) ** 0.5
    assert d["ci95_db"] == pytest.approx([1.05 - half, 1.05 + half])
    assert d["per_frame_db"] == pytest.approx(0.525) and d["resolved"]
    noisy = paired_models(tmp_path / "noisy", {0: [0.0, 1.0, -1.0], 2: [0.0, 1.0, -1.0]}, gain=1.0)
    d = lookahead_figure.paired_difference(noisy, lookahead_figure.utterance_scores(noisy), 0, 2)
    assert d["diff_db"] == pytest.approx(1.0) and not d["resolved"]  # 1 dB < twice the seed SD (2 dB)
    assert "does not exceed twice the larger seed SD (2.00 dB)" in lookahead_figure.describe_paired([d])


def test_speed_table_help_examples_parse(capsys):
    """Every option in the speed table's --help examples is one it accepts."""
    import re

    with pytest.raises(SystemExit):
        speed_table.main(["--help"])
    accepted = set(re.findall(r"--[a-z-]+", capsys.readouterr().out.split("options:", 1)[1]))
    examples = [line.split("#")[0] for line in speed_table.__doc__.splitlines() if "scripts.speed_table" in line]
    used = {flag for example in examples for flag in re.findall(r"--[a-z-]+", example)}
    assert used and used <= accepted, used - accepted


@pytest.mark.compiler
def test_throughput_table_has_each_batch_and_its_share_of_the_gemm_roof(capsys):
    """python -m stmc.bench.throughput: one row per engine and batch, streams per core = batch x 16 ms / hop time,
    and their share of the fp32 GEMM roof."""
    from stmc.bench import throughput
    from stmc.stream.native import bf16_kernels

    throughput.main(["--models", "causal", "--batches", "1", "2", "--rounds", "1", "--hops", "2", "--no-onnx"])
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| causal")]
    engines = ["native fp32", *(["native bf16"] if bf16_kernels() else [])]  # bf16 only on bf16 instructions
    assert [(r[1].strip(), int(r[2])) for r in rows] == [(e, b) for e in engines for b in (1, 2)]
    for row in rows:
        batch, hop_ms, streams, roof, share = int(row[2]), *(float(c) for c in row[3:7])
        assert streams == pytest.approx(batch * 16 / hop_ms, rel=0.01)
        assert share == pytest.approx(streams / roof, rel=0.02)


@pytest.mark.litert
def test_throughput_has_litert_rows_for_each_batch(capsys):
    """--litert adds the LiteRT steps, float32 and int8, each exported for the batch it is timed at (its static
    batch), beside the native step."""
    from stmc.bench import throughput

    args = ["--models", "causal", "--batches", "1", "2", "--rounds", "1", "--hops", "1", "--no-onnx", "--litert"]
    throughput.main(args)
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| causal")]
    found = {(r[1].strip(), int(r[2])) for r in rows}
    assert {(e, b) for e in ("LiteRT fp32", "LiteRT int8") for b in (1, 2)} <= found


def test_seed_paired_differences_cancel_the_seed_offsets():
    """Each seed shifts every look-ahead by the same offset (what common random numbers aim for): paired by
    seed, the difference is exact and its interval tight and above zero, while the seed SD is large."""
    offsets = {0: -1.0, 1: 0.0, 2: 1.0, 3: 0.4, 4: -0.6}
    effect = {0: 0.0, 2: 0.3, 14: 0.5}
    jitter = {0: 0.01, 1: -0.01, 2: 0.02, 3: 0.0, 4: -0.02}
    models = [
        {"lookahead": la, "seed": s, "si_snri": 5.0 + off + effect[la] + (jitter[s] if la else 0.0)}
        for la in effect
        for s, off in offsets.items()
    ]
    summary = lookahead_figure.summarize(models)
    assert summary[0]["sd_db"] > 0.5  # the seed spread the unpaired comparison faces
    result = lookahead_figure.seed_paired(models, summary)
    d02 = next(d for d in result["differences"] if (d["from"], d["to"]) == (0, 2))
    assert d02["seeds"] == 5
    assert d02["diff_db"] == pytest.approx(0.3, abs=1e-9)  # the jitter sums to zero
    assert d02["above_zero"] and d02["ci95_db"][1] - d02["ci95_db"][0] < 0.1
    sd = statistics.stdev([-jitter[s] for s in offsets])
    half = float(lookahead_figure.stats.t.ppf(0.975, 4)) * sd / 5**0.5
    assert d02["ci95_db"] == pytest.approx([0.3 - half, 0.3 + half])
    loss = result["causal_loss_percent"]
    per_seed = [100 * (models[i + 10]["si_snri"] - models[i]["si_snri"]) / models[i + 10]["si_snri"] for i in range(5)]
    assert loss["to"] == 14 and loss["mean"] == pytest.approx(statistics.fmean(per_seed))
    assert "paired by seed: +0.30 dB" in lookahead_figure.describe_seed_paired(result)


def test_seed_pairing_needs_two_shared_seeds():
    models = [{"lookahead": 0, "seed": 0, "si_snri": 1.0}, {"lookahead": 2, "seed": 1, "si_snri": 2.0}]
    assert lookahead_figure.seed_paired_difference(models, 0, 2) is None
