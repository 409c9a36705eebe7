"""report.html: its tables equal results.json, every file it names exists, odd names and missing parts still
render; and (slow) in headless Chromium every image and audio file loads, with the WAVs' durations."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import soundfile as sf
import torch

from stmc.data.synthetic import speechlike
from stmc.evaluation import evaluate
from stmc.evaluation.listening_report import render, write_report
from stmc.evaluation.settings import ALL, Settings
from stmc.model.enhancer import Enhancer

NAMES = ["plain", "with space", "ütterance-ß", "日本語"]


class Page(HTMLParser):
    """The tables (rows of cell texts) and the src attributes of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.sources: list[str] = []
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if "src" in attrs:
            self.sources.append(attrs["src"])
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def report_items() -> list[dict]:
    """4 utterances of 2 noise types, names with spaces and non-ASCII characters."""
    items = []
    for i, name in enumerate(NAMES):
        clean = torch.from_numpy(speechlike(0.8 + 0.2 * i, 10 + i)).float()
        noise = 0.1 * torch.randn(clean.shape[0], generator=torch.Generator().manual_seed(i))
        items.append(
            {
                "noisy": clean + noise,
                "clean": clean,
                "name": name,
                "split": "test real",
                "noise_type": "hum" if i % 2 else "pink noise",
                "snr": 5.0,
            }
        )
    return items


@pytest.fixture(scope="module")
def report(tmp_path_factory, request) -> tuple[Path, dict]:
    """A report of a tiny model on 4 utterances of 2 noise types, names with spaces and non-ASCII characters."""
    tmp_path = tmp_path_factory.mktemp("report")
    from stmc.model import checkpoint
    from tests.randmodel import tiny_unet

    ckpt = checkpoint.save(tiny_unet(lookahead=1), tmp_path / "m.ckpt", run_config={"seed": 0}, step=3)
    items = report_items()
    settings = Settings(("offline", "stmc"), ("si_snri", "sdri"), 256)
    evaluation = evaluate([ckpt], items, settings)
    folder = tmp_path / "run"
    evaluation.write(folder)
    figure = tmp_path / "figure.png"
    import matplotlib.pyplot as plt

    plt.imsave(figure, np.random.default_rng(0).random((20, 30)))
    speed = tmp_path / "speed_table.md"
    speed.write_text("| model | ms |\n|---|---:|\n| causal | 1.25 |\n")
    write_report(
        folder,
        evaluation,
        Enhancer.from_checkpoint(ckpt),
        settings,
        2,
        figures=[figure, tmp_path / "not made.png"],
        speed_table=speed,
    )
    return folder, evaluation.document


def test_report_tables_show_si_snri_computed_independently(report):
    """Each group's mixture SI-SNR and offline SI-SNRi, recomputed here with torchmetrics from the model's own
    output, as mean ± the 95 % t half-width, appear in the page's row for that group."""
    from scipy import stats
    from torchmetrics.functional.audio import scale_invariant_signal_noise_ratio as reference_si_snr

    folder, document = report
    enhancer = Enhancer.from_checkpoint(folder.parent / "m.ckpt").eval()
    page = Page((folder / "report.html").read_text())
    rows = [row for table in page.tables for row in table]
    by_group: dict[str, list[tuple[float, float]]] = {}
    for item in report_items():
        with torch.inference_mode():
            out = enhancer(item["noisy"][None])[0]
        mixture = float(reference_si_snr(item["noisy"], item["clean"]))
        gain = float(reference_si_snr(out, item["clean"])) - mixture
        for group in ("all utterances", item["noise_type"]):
            by_group.setdefault(group, []).append((mixture, gain))

    def shown(values: list[float]) -> str:
        mean, sd = float(np.mean(values)), float(np.std(values, ddof=1))
        return f"{mean:.2f} ± {stats.t.ppf(0.975, len(values) - 1) * sd / np.sqrt(len(values)):.2f}"

    si_snri = next(t for t in page.tables if t[0][:3] == ["group", "n", "input SI-SNR (dB)"])  # one table per metric
    offline = si_snri[0].index("offline")
    for group, pairs in by_group.items():
        mixture, gain = shown([m for m, _ in pairs]), shown([g for _, g in pairs])
        row = next(r for r in si_snri if r[0] == group)
        assert (row[1], row[2], row[offline]) == (str(len(pairs)), mixture, gain), group
    diff = document["models"][0]["groups"][ALL]["stmc"]["max_abs_diff"]["max"]
    assert f"stmc {diff:.1e}" in (folder / "report.html").read_text()
    assert (folder / "figures/by_noise_type.png").stat().st_size > 0  # the bar chart
    assert ["causal", "1.25"] in rows  # the speed table


def test_every_file_the_page_names_exists_and_odd_names_are_quoted(report):
    folder, _ = report
    text = (folder / "report.html").read_text()
    page = Page(text)
    assert len([s for s in page.sources if s.endswith(".wav")]) == 4 * 4  # 2 per noise type x 2 types x 4 signals
    for source in page.sources:
        assert " " not in source and source.isascii()  # quoted: works from disk and over http alike
        assert (folder / unquote(source)).is_file(), source
    assert "missing figure: figures/not made.png" in text and "http" not in text.replace("https://", "")
    assert "<script" not in text and "@import" not in text  # self-contained: nothing to fetch
    manifest = json.loads((folder / "report.json").read_text())
    assert {e["why"] for e in manifest["examples"]} == {"median", "worst"}
    assert {e["noise_type"] for e in manifest["examples"]} == {"hum", "pink noise"}


def test_page_renders_without_examples_and_with_nan_scores(tmp_path):
    document = {
        "settings": {"methods": ["offline"]},
        "models": [
            {
                "name": "m",
                "checkpoint": "m.ckpt",
                "lookahead": 0,
                "width": 1.0,
                "params": 10,
                "groups": {
                    ALL: {
                        "mixture": {"si_snr": {"mean": 1.0, "ci95": None, "n": 1}, "pesq": {"mean": None, "n": 0}},
                        "offline": {"si_snri": {"mean": None, "ci95": None, "n": 0}, "pesq": {"mean": None, "n": 0}},
                    }
                },
            }
        ],
    }
    empty = render(tmp_path, document, {"examples_per_noise": 0, "examples": []})
    assert "no examples in this run (examples_per_noise=0)" in empty
    example = {
        "noise_type": "hum",
        "split": "s",
        "name": "x",
        "why": "median",
        "method": "stmc",
        "seconds": 1.0,
        "dir": "examples/hum/s-x",
        "scores": {"mixture": {"si_snr": None}, "enhanced": {"si_snri": None}, "wiener": {}},
    }
    page = render(tmp_path, document, {"examples": [example]}, figures=["figures/lookahead.png"])
    assert "missing: examples/hum/s-x/noisy.wav" in page and "missing figure: figures/lookahead.png" in page
    assert "input SI-SNR (dB): —" in page


CHECK = """<script>
window.addEventListener("load", async () => {
  const images = [...document.images].map(i => ({src: i.getAttribute("src"), ok: i.complete && i.naturalWidth > 0}));
  const audio = await Promise.all([...document.querySelectorAll("audio")].map(a => new Promise(done => {
    const report = () => done({src: a.getAttribute("src"), duration: a.duration, error: a.error && a.error.code});
    if (a.readyState >= 1) return report();
    a.addEventListener("loadedmetadata", report);
    a.addEventListener("error", report);
  })));
  const out = document.createElement("pre");
  out.id = "stmc-check";
  out.textContent = JSON.stringify({images, audio});
  document.body.appendChild(out);
});
</script></body>"""


def chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.slow
def test_report_in_headless_chromium_loads_every_file_from_a_copied_folder(report, tmp_path):
    browser = chromium()
    if browser is None:
        if os.environ.get("STMC_REQUIRE_BROWSER"):
            pytest.fail("STMC_REQUIRE_BROWSER is set but no chromium is installed (make browser-deps)")
        pytest.skip("no chromium (make browser-deps installs Debian's package)")
    folder, _ = report
    copy = tmp_path / "copied report ü"
    shutil.copytree(folder, copy)
    page = (copy / "report.html").read_text()
    (copy / "report.check.html").write_text(page.replace("</body>", CHECK))
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--allow-file-access-from-files",
        "--mute-audio",
        "--virtual-time-budget=20000",
    ]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", (copy / "report.check.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    ).stdout
    found = json.loads(dom.split('<pre id="stmc-check">', 1)[1].split("</pre>", 1)[0].replace("&quot;", '"'))
    assert found["images"] and all(image["ok"] for image in found["images"]), found["images"]
    assert len(found["audio"]) == 16
    for audio in found["audio"]:
        info = sf.info(str(copy / unquote(audio["src"])))
        assert audio["error"] is None and audio["duration"] == pytest.approx(info.frames / info.samplerate, abs=1e-3), (
            audio
        )
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, *flags, "--window-size=1200,1600", f"--screenshot={shot}", (copy / "report.html").as_uri()],
        capture_output=True,
        timeout=180,
    )
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] >= 1000 and pixels[..., :3].std() > 0.05  # text, tables and spectrograms: not blank


def test_examples_are_each_noise_types_median_then_worst_utterance():
    from stmc.evaluation.listening_report import select_examples

    noise = ["hum", "hum", "hum", "hum", "hum", "pink", "pink"]
    gains = [5.0, -1.0, 9.0, 3.0, float("nan"), 2.0, 7.0]
    items = [{"noise_type": n} for n in noise]
    rows = [{"stmc": {"si_snri": g}} for g in gains]
    # hum: finite scores -1, 3, 5, 9 -> median (index 2 of 4) is 5.0 (item 0), worst -1.0 (item 1)
    assert select_examples(items, rows, "stmc", 2) == [(0, "median"), (1, "worst"), (6, "median"), (5, "worst")]
    assert select_examples(items, rows, "stmc", 1) == [(0, "median"), (6, "median")]


def test_the_reports_enhanced_audio_is_the_scored_stream(report):
    """The WAV a listener hears is the stream whose numbers the page shows: its SI-SNRi, recomputed from the file,
    equals the scored one."""
    from stmc.evaluation.metrics import si_snri

    folder, _ = report
    manifest = json.loads((folder / "report.json").read_text())
    assert manifest["examples"]
    for example in manifest["examples"]:
        assert example["method"] == "stmc"
        read = {
            s: torch.from_numpy(sf.read(folder / example["dir"] / f"{s}.wav", dtype="float32")[0])
            for s in ("noisy", "enhanced", "clean")
        }
        heard = float(si_snri(read["enhanced"][None], read["noisy"][None], read["clean"][None]))
        assert heard == pytest.approx(example["scores"]["enhanced"]["si_snri"], abs=0.05)  # 16-bit PCM files
