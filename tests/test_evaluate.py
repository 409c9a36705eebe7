"""evaluate.py and stmc.evaluation: chunk sizes, statistics, checkpoint discovery, streamed == offline per
utterance, and the whole evaluate.py path on a tiny checkpoint and a tiny corpus (twice: identical numbers)."""

from __future__ import annotations

import json
import math
import os
import signal as signals_os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import soundfile as sf
import torch
from scipy import stats

import stmc
from stmc.data.synthetic import demo_like_tree, speechlike
from stmc.evaluation.scoring import evaluate_utterance
from stmc.evaluation.settings import Settings, find_checkpoints, model_names, spread
from stmc.evaluation.summary import mean_ci
from tests.randmodel import tiny_unet
from tests.test_stream_infer import default_sigint

ROOT = Path(__file__).resolve().parents[1]


def test_mean_ci_is_the_student_t_interval_and_leaves_out_nan():
    values = [1.0, 2.0, 4.0, 7.0, math.nan]
    got = mean_ci(values)
    kept = values[:4]
    low, high = stats.t.interval(0.95, 3, loc=sum(kept) / 4, scale=stats.sem(kept))
    assert got["n"] == 4 and got["mean"] == pytest.approx(3.5)
    assert got["ci95"] == pytest.approx((high - low) / 2)
    assert mean_ci([2.0]) == {"mean": 2.0, "ci95": None, "n": 1}
    assert mean_ci([math.nan]) == {"mean": None, "ci95": None, "n": 0}


def test_spread_keeps_the_ends_and_is_even():
    assert spread(10, None) == list(range(10))
    assert spread(10, 3) == [0, 4, 9]
    assert spread(3, 10) == [0, 1, 2]


def test_checkpoint_discovery_best_last_newest(tmp_path, tiny_checkpoint):
    old = tiny_checkpoint(tmp_path / "runs/a/checkpoints/best-step5-sisnri1.00.ckpt")
    tiny_checkpoint(tmp_path / "runs/a/checkpoints/last.ckpt")
    only_last = tiny_checkpoint(tmp_path / "runs/b/checkpoints/last.ckpt")
    os.utime(old, (1, 1))
    assert find_checkpoints([tmp_path / "runs"]) == [old, only_last]
    assert find_checkpoints([tmp_path / "runs"], select="last") == [old.parent / "last.ckpt", only_last]
    assert find_checkpoints([tmp_path / "runs"], newest=True) == [only_last]
    assert find_checkpoints([old]) == [old]
    assert model_names([old, only_last]) == ["a", "b"]
    with pytest.raises(FileNotFoundError, match="neither"):
        find_checkpoints([tmp_path / "missing"])
    fourteen = tiny_checkpoint(tmp_path / "sweep/lookahead=14/checkpoints/last.ckpt")
    two = tiny_checkpoint(tmp_path / "sweep/lookahead=2/checkpoints/last.ckpt")
    quarter = tiny_checkpoint(tmp_path / "sweep/width=0.25/checkpoints/last.ckpt")
    half = tiny_checkpoint(tmp_path / "sweep/width=0.5/checkpoints/last.ckpt")
    assert find_checkpoints([tmp_path / "sweep"]) == [two, fourteen, quarter, half]  # numbers by value
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        find_checkpoints([tmp_path / "empty"])


@pytest.mark.parametrize("lookahead,chunk", [(0, 256), (3, 1000), (4, 37)])
def test_streamed_equals_offline_on_an_utterance(lookahead, chunk):
    enhancer = stmc.Enhancer(tiny_unet(lookahead))
    clean = torch.from_numpy(speechlike(1.3, 1))
    noisy = clean + torch.from_numpy(speechlike(1.3, 2))
    settings = Settings(("offline", "stmc"), ("si_snri",), chunk)
    rows = evaluate_utterance(enhancer, {"noisy": noisy, "clean": clean}, settings)
    assert rows["stmc"]["max_abs_diff"] <= 1e-5 * max(1.0, float(enhancer(noisy[None]).detach().abs().max()))
    assert rows["stmc"]["si_snri"] == pytest.approx(rows["offline"]["si_snri"], abs=1e-3)


def test_settings_reject_unknown_methods_and_metrics():
    with pytest.raises(ValueError, match="methods"):
        Settings(("stmc",))
    with pytest.raises(ValueError, match="methods"):
        Settings(("offline", "fast"))
    with pytest.raises(ValueError, match="metrics"):
        Settings(metrics=("pesq",))


def run_evaluate(*overrides: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def without_timings(value):
    """``value`` with every real-time factor left out (timings differ from run to run; scores must not)."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k != "rtf"}
    if isinstance(value, list | tuple):
        return [without_timings(v) for v in value]
    return value


def test_evaluate_py_on_tiny_checkpoints_twice_gives_identical_numbers(tmp_path, tiny_checkpoint):
    demo_like_tree(tmp_path / "corpus")
    runs = tmp_path / "train"
    tiny_checkpoint(runs / "lookahead=0/checkpoints/best-step7-sisnri0.00.ckpt", lookahead=0, seed=0)
    tiny_checkpoint(runs / "lookahead=2/checkpoints/last.ckpt", lookahead=2, seed=1)
    common = [f"checkpoints=[{runs}]", f"data.root={tmp_path / 'corpus'}", "chunk=300samples", "examples_per_noise=1"]
    first = run_evaluate(*common, "workers=2", f"hydra.run.dir={tmp_path / 'eval1'}")
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_evaluate(*common, "workers=1", "examples_per_noise=0", f"hydra.run.dir={tmp_path / 'eval2'}")
    assert second.returncode == 0, second.stderr[-3000:]

    results = json.loads((tmp_path / "eval1/results.json").read_text())
    assert set(results["si_snri"]) == {"wiener", "offline", "stmc"}
    assert results["si_snri"]["stmc"] == pytest.approx(results["si_snri"]["offline"], abs=1e-3)
    assert 0 < results["max_abs_diff"] < 1e-5
    assert set(results["per_noise"]) == {"babble", "music", "sfx"}
    assert set(results["per_split"]) == {"test_real", "test_tts"}
    assert all(row["n"] == 2 for row in results["per_noise"].values())
    assert [(m["name"], m["lookahead"], m["seed"]) for m in results["models"]] == [
        ("lookahead=0", 0, 0),
        ("lookahead=2", 2, 1),
    ]
    overall = results["models"][0]["groups"]["all"]
    for signal in ("mixture", "wiener", "offline", "stmc"):
        assert set(overall[signal]) >= {"si_snr", "si_snri", "sdr", "sdri", "pesq", "stoi"}
        assert overall[signal]["si_snri"]["n"] == 6
    assert overall["offline"]["pesq"]["mean"] is not None and 0 < overall["offline"]["stoi"]["mean"] <= 1

    assert overall["offline"]["rtf"]["mean"] > 0 and "rtf" not in overall["mixture"]  # each enhancer is timed
    again = json.loads((tmp_path / "eval2/results.json").read_text())
    assert without_timings(again) == without_timings(results)  # same scores, with 2 worker processes or none
    assert "max |stmc − offline|" in (tmp_path / "eval1/results.md").read_text().replace("\\|", "|")
    lines = (tmp_path / "eval1/utterances.csv").read_text().splitlines()
    assert len(lines) == 1 + 6 * 2 + 2 * 6 * 2  # header, baselines (2 signals), 2 models x 2 methods
    examples = list((tmp_path / "eval1/examples").glob("*/*/enhanced.wav"))  # one per noise type
    assert sorted(p.parent.parent.name for p in examples) == ["babble", "music", "sfx"]
    assert all(
        (p.parent / f"{s}.{kind}").is_file()
        for p in examples
        for s in ("noisy", "wiener", "clean")
        for kind in ("wav", "png")
    )
    assert sf.info(str(examples[0])).subtype == "PCM_16"
    assert "report.html" in first.stdout and "no examples in this run" in (tmp_path / "eval2/report.html").read_text()
    assert "SI-SNRi" in first.stdout and "max |streamed − offline|" in first.stdout
    # the config of these results beside them; the resume journal is gone once the results are written
    assert "chunk: 300samples" in (tmp_path / "eval1/results.config.yaml").read_text()
    assert not list((tmp_path / "eval1").glob("*.partial.jsonl"))


def test_evaluate_py_config_mistake_is_one_line(tmp_path):
    demo_like_tree(tmp_path / "corpus")
    missing = run_evaluate(
        f"checkpoints=[{tmp_path / 'nope.ckpt'}]", f"data.root={tmp_path / 'corpus'}", f"hydra.run.dir={tmp_path / 'e'}"
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"error: checkpoints: {tmp_path / 'nope.ckpt'} is neither a checkpoint file nor a folder"
    ]


def test_offline_only_documents_have_no_stream_columns():
    from stmc.evaluation.results import headline_table, markdown, results_document
    from stmc.evaluation.summary import model_summary

    items = [{"split": "s", "noise_type": "hum"}, {"split": "s", "noise_type": "pink"}]
    baselines = [{"mixture": {"si_snr": 1.0, "si_snri": 0.0}, "wiener": {"si_snr": 2.0, "si_snri": 1.0}}] * 2
    rows = [{"offline": {"si_snr": 4.0, "si_snri": 3.0}}, {"offline": {"si_snr": 6.0, "si_snri": 5.0}}]
    info = {"name": "m", "checkpoint": "m.ckpt", "lookahead": 0, "width": 1.0, "seed": 0, "step": 1, "params": 10}
    doc = results_document([model_summary(info, items, baselines, rows)], {"chunk_samples": 256})
    assert doc["si_snri"] == {"wiener": 1.0, "offline": 4.0} and doc["max_abs_diff"] is None
    assert doc["per_noise"]["pink"] == {"wiener": 1.0, "offline": 5.0, "input_si_snr": 1.0, "n": 1}
    assert "streamed" not in headline_table(doc) and "stmc" not in markdown(doc)


def start_long_evaluation(tmp_path: Path, tiny_checkpoint: Callable[..., Path]) -> subprocess.Popen:
    """evaluate.py with 2 workers on test utterances long enough (40 s) to be caught mid-way; waits for the
    workers to exist."""
    from stmc.data.synthetic import write

    demo_like_tree(tmp_path / "corpus")
    for split in ("test_real", "test_tts"):
        for i in range(3):
            clean = speechlike(40.0, 700 + i)
            write(tmp_path / "corpus" / split / "clean" / f"{split}_{i}.wav", clean)
            write(tmp_path / "corpus" / split / "noisy" / f"{split}_{i}.wav", clean + speechlike(40.0, 800 + i))
    ckpt = tiny_checkpoint(tmp_path / "run/checkpoints/last.ckpt")
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "evaluate.py"),
            f"checkpoints=[{ckpt}]",
            f"data.root={tmp_path / 'corpus'}",
            "workers=2",
            "examples_per_noise=0",
            f"hydra.run.dir={tmp_path / 'eval'}",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
        env={**os.environ, "PYTHONPATH": str(ROOT), "STMC_CACHE_DIR": str(tmp_path / "cache")},
    )
    deadline = time.monotonic() + 120
    while len(children(process.pid)) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(children(process.pid)) >= 2, "the evaluation's workers did not start"
    return process


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (the spawn start method adds a resource tracker: not a worker)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid) and "resource_tracker" not in Path(
            status.parent / "cmdline"
        ).read_bytes().decode(errors="replace"):
            found.append(int(status.parent.name))
    return found


def gone(pids: list[int], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(
            Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text() for pid in pids
        ):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_the_evaluation_and_its_workers_in_one_line(tmp_path, tiny_checkpoint):
    process = start_long_evaluation(tmp_path, tiny_checkpoint)
    workers = children(process.pid)
    process.send_signal(signals_os.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted (Ctrl-C): the evaluation stopped")
    assert gone(workers)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and prctl")
def test_workers_die_with_a_killed_evaluation(tmp_path, tiny_checkpoint):
    process = start_long_evaluation(tmp_path, tiny_checkpoint)
    workers = children(process.pid)
    process.kill()
    process.communicate(timeout=60)
    assert gone(workers), "worker processes outlived a kill -9 of evaluate.py"


def test_select_best_without_a_best_checkpoint_says_so(tmp_path, caplog, tiny_checkpoint):
    tiny_checkpoint(tmp_path / "run/checkpoints/last.ckpt")
    with caplog.at_level("WARNING"):
        assert find_checkpoints([tmp_path], "best") == [tmp_path / "run/checkpoints/last.ckpt"]
    assert "has no best checkpoint (no validation ran); using last.ckpt" in caplog.text


def test_an_interrupted_evaluation_resumes_from_what_it_finished(tmp_path, tiny_checkpoint):
    """The journal keeps each finished utterance evaluation; a second run of the same work computes only the
    rest and gives the numbers of an uninterrupted run. A journal of other work is not used."""
    from stmc.evaluation.scoring import Journal, fingerprint, run_all

    gen = torch.Generator().manual_seed(0)
    items = [
        {
            "noisy": 0.1 * torch.randn(4000 + 700 * i, generator=gen),
            "name": f"u{i}",
            "split": "test",
            "noise_type": "hum",
            "snr": 0.0,
        }
        for i in range(4)
    ]
    for item in items:
        item["clean"] = 0.5 * item["noisy"]
    ckpt = tiny_checkpoint(tmp_path / "run/checkpoints/last.ckpt")
    settings = Settings(("offline", "stmc"), ("si_snri",), 300)
    whole = run_all(items, [ckpt], settings)
    mark = fingerprint(items, [ckpt], settings, 1)

    calls = []

    def interrupt(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 3:
            raise KeyboardInterrupt

    journal = Journal(tmp_path / "journal.jsonl", mark)
    with pytest.raises(KeyboardInterrupt):
        run_all(items, [ckpt], settings, progress=interrupt, journal=journal)
    journal.close()
    again = Journal(tmp_path / "journal.jsonl", mark)
    assert len(again.done) == 3
    counted = []
    resumed = run_all(items, [ckpt], settings, progress=lambda done, total: counted.append(done), journal=again)
    again.close()
    assert counted == [4, 5, 6, 7, 8]  # 8 evaluations in all (baselines + 1 model, 4 utterances), 3 done before
    assert without_timings(resumed) == without_timings(whole)
    other = Journal(tmp_path / "journal.jsonl", fingerprint(items[:3], [ckpt], settings, 1))
    assert other.done == {}
    other.close()


@pytest.mark.slow
def test_recordings_without_clean_references_are_scored_by_dnsmos_and_heard_in_the_report(tmp_path, tiny_checkpoint):
    """data=recordings: every file of a folder (one at 8 kHz, resampled), no clean reference: DNSMOS is added and
    is the headline, the intrusive metrics are skipped with one logged line, recordings shorter than DNSMOS's
    window are named in a warning, and the report has noisy and enhanced players but no clean one."""
    import soundfile as sf

    from stmc.data.synthetic import speechlike

    folder = tmp_path / "recordings"
    folder.mkdir()
    for i, rate in enumerate((16000, 16000, 8000)):
        x = speechlike(1.0 + 0.5 * i, 70 + i, rate=rate)
        x = x + 0.05 * torch.randn(x.shape[0], generator=torch.Generator().manual_seed(i)).numpy()
        sf.write(folder / f"call {i}.wav", x.astype("float32"), rate)
    tiny_checkpoint(tmp_path / "train/run/checkpoints/last.ckpt")
    done = run_evaluate(
        "data=recordings",
        f"data.root={folder}",
        f"checkpoints=[{tmp_path / 'train'}]",
        "examples_per_noise=2",
        f"hydra.run.dir={tmp_path / 'eval'}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 of 3 utterances have no clean reference: SI-SNRi, SDRi, PESQ, STOI skipped for them" in done.stdout
    # 1-2 s recordings: DNSMOS scores them repeated to fill its window, and says so once per recording
    assert (done.stdout + done.stderr).count("shorter than DNSMOS's 9.01 s window") == 3
    results = json.loads((tmp_path / "eval/results.json").read_text())
    assert results["headline"] == "dnsmos_ovrl" and set(results["dnsmos_ovrl"]) == {"wiener", "offline", "stmc"}
    overall = results["models"][0]["groups"]["all"]
    assert "si_snri" not in overall["offline"] and 1 <= overall["offline"]["dnsmos_ovrl"]["mean"] <= 5
    assert overall["mixture"]["dnsmos_ovrl"]["n"] == 3
    assert "DNSMOS OVRL" in done.stdout and "DNSMOS OVRL" in (tmp_path / "eval/results.md").read_text()
    players = {p.stem for p in (tmp_path / "eval/examples").glob("*/*/*.wav")}
    assert players == {"noisy", "enhanced", "wiener"}


def test_a_run_folder_holding_another_evaluation_is_not_overwritten(tmp_path, tiny_checkpoint):
    demo_like_tree(tmp_path / "corpus")
    tiny_checkpoint(tmp_path / "train/run/checkpoints/last.ckpt")
    common = [f"checkpoints=[{tmp_path / 'train'}]", f"data.root={tmp_path / 'corpus'}", "examples_per_noise=0",
              "metrics=[si_snri]", "workers=1", f"hydra.run.dir={tmp_path / 'eval'}"]  # fmt: skip
    assert run_evaluate(*common, "chunk=1").returncode == 0
    before = (tmp_path / "eval/results.json").read_bytes()
    again = run_evaluate(*common, "chunk=1")  # the same work: allowed, same scores
    assert again.returncode == 0
    other = run_evaluate(*common, "chunk=2")
    assert other.returncode == 2
    assert other.stderr.strip().splitlines()[-1].endswith("or overwrite=true to replace them")
    assert json.loads((tmp_path / "eval/results.json").read_bytes())["settings"]["chunk_samples"] == 256
    assert run_evaluate(*common, "chunk=2", "overwrite=true").returncode == 0
    assert (tmp_path / "eval/results.json").read_bytes() != before
