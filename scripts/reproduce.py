"""Run a reproduction preset end to end into one folder: train the sweeps, evaluate every run offline and
streamed, then the speed table (Table 1), the look-ahead figure (Figure 5) and the model-size figure (Figure 4).

    python -m scripts.reproduce mini              # CPU, demo corpus (stmc/conf/preset/mini.yaml)
    python -m scripts.reproduce paper out=/scratch/stmc data_root=/data/DNS-Challenge    # SLURM (preset/paper.yaml)
    python -m scripts.reproduce mini --dry-run    # print the commands, run nothing

Arguments ``key=value`` override the preset file (OmegaConf dot-list, e.g. ``steps=100 train.jobs=1``).
Layout of ``out``: ``train/<sweep>/<param>=<value>/...`` (one training run each), ``evaluate/`` (results.json,
results.md, utterances.csv), ``speed_table.{md,csv,json}``, ``lookahead.{png,csv,json}``, ``size.{png,csv,json}``,
``curves/<sweep>/`` (validation curves of the sweeps named in ``learning_curves``: ``scripts/learning_curve.py``),
``logs/`` (one log per command), ``index.md`` and ``index.html`` (what ran, how long, the tables, a link to the
evaluation's listening report ``evaluate/report.html``). A training run that
finished before (``.done`` in its folder) is not run again, so an interrupted preset resumes where it stopped.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from stmc.conf import CONFIG_DIR
from stmc.files import atomic_write

ROOT = Path(__file__).resolve().parents[1]
PRESETS = CONFIG_DIR / "preset"
DONE = ".done"


@dataclass
class Command:
    """One process to run: its arguments, a name (its log file) and the folder that marks it done."""

    name: str
    argv: list[str]
    done: Path | None = None  # a training run folder: skipped when it holds DONE
    seconds: float = 0.0
    status: str = "pending"
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """The command as a shell line (double quotes where they read better and mean the same)."""
        return " ".join(shell_word(arg) for arg in self.argv)


def shell_word(arg: str) -> str:
    """``arg`` quoted for a POSIX shell, preferring double quotes when nothing in it would expand."""
    quoted = shlex.quote(arg)
    if quoted == arg or any(c in arg for c in '"$`\\!'):
        return quoted
    return f'"{arg}"'


def load_preset(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """``stmc/conf/preset/<name>.yaml`` with dot-list overrides; missing values (``???``) are an error here."""
    path = PRESETS / f"{name}.yaml"
    if not path.is_file():
        choices = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise ValueError(f"preset {name!r} does not exist; choose one of {choices}")
    cfg = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides)))
    plain = OmegaConf.to_container(cfg, resolve=False)
    missing = [key for key, value in plain.items() if value == "???"]
    if missing:
        raise ValueError(f"preset {name}: set {', '.join(f'{k}=...' for k in missing)}")
    return cfg


def quote(text: str | Path) -> str:
    """A Hydra override value, quoted where Hydra's grammar needs it (``=``, spaces, brackets in paths)."""
    text = str(text)
    if re.fullmatch(r"[\w/.:+-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def train_commands(cfg: DictConfig, out: Path) -> list[Command]:
    """The training commands: one per run (``local``) or one Hydra multirun per sweep (``slurm``)."""
    python = [sys.executable, str(ROOT / "train.py")]
    common = [*cfg.train.overrides, *cfg.data]
    commands = []
    for sweep, spec in cfg.train.sweeps.items():
        params = {key: [_value(v) for v in values] for key, values in spec.params.items()}
        if cfg.train.launcher == "local":
            for combo in itertools.product(*params.values()):
                subdir = "/".join(f"{_short(k)}={v}" for k, v in zip(params, combo, strict=True))
                folder = out / "train" / sweep / subdir
                argv = [
                    *python,
                    *common,
                    *spec.overrides,
                    *(f"{k}={v}" for k, v in zip(params, combo, strict=True)),
                    f"task_name={cfg.name}_{sweep}",
                    f"hydra.run.dir={quote(folder)}",
                ]
                commands.append(Command(f"train_{sweep}_{subdir.replace('/', '_')}", argv, folder))
        elif cfg.train.launcher == "slurm":
            subdir = "/".join(f"{_short(k)}=${{{k}}}" for k in params)
            argv = [
                *python,
                "-m",
                *common,
                *cfg.slurm,
                *spec.overrides,
                *(f"{k}={','.join(v)}" for k, v in params.items()),
                f"task_name={cfg.name}_{sweep}",
                f"hydra.sweep.dir={quote(out / 'train' / sweep)}",
                f"hydra.sweep.subdir={quote(subdir)}",
            ]
            commands.append(Command(f"train_{sweep}", argv))
        else:
            raise ValueError(f"train.launcher={cfg.train.launcher!r}: choose local or slurm")
    return commands


def curve_sweeps(cfg: DictConfig) -> list[str]:
    """The sweeps whose learning curves the preset draws (``learning_curves``): none when its runs end before
    their first validation (``steps`` < ``val_every``)."""
    if "val_every" in cfg and "steps" in cfg and int(cfg.val_every) > int(cfg.steps):
        return []
    return list(cfg.get("learning_curves", []))


def figures(cfg: DictConfig) -> list[str]:
    """The figures a preset draws, relative to its folder (each shown where it exists)."""
    return ["lookahead.png", "size.png", *(f"curves/{sweep}/curves.png" for sweep in curve_sweeps(cfg))]


def later_commands(cfg: DictConfig, out: Path) -> list[Command]:
    """Evaluation of every training run, the speed table and the two figures."""
    evaluate = [sys.executable, str(ROOT / "evaluate.py")]
    if cfg.evaluate.launcher:  # one job per sweep folder
        sweeps = ",".join(f"[{quote(out / 'train' / sweep)}]" for sweep in cfg.train.sweeps)
        evaluate += [
            "-m",
            *cfg.evaluate.launcher,
            *cfg.get("slurm", []),
            f"checkpoints={sweeps}",
            f"hydra.sweep.dir={quote(out / 'evaluate')}",
        ]
    else:
        evaluate += [f"checkpoints=[{quote(out / 'train')}]", f"hydra.run.dir={quote(out / 'evaluate')}"]
    evaluate += [*cfg.data, *cfg.evaluate.overrides, "overwrite=true"]  # a re-run may add trainings
    module = [sys.executable, "-m"]
    results = str(out / "evaluate")
    curves = [
        Command(
            f"curves_{sweep}",
            [
                *module,
                "scripts.learning_curve",
                "--collect",
                str(out / "train" / sweep),
                "--out",
                str(out / "curves" / sweep),
            ],
        )
        for sweep in curve_sweeps(cfg)
    ]
    return [
        Command("evaluate", evaluate),
        *curves,
        Command(
            "speed_table", [*module, "scripts.speed_table", "--results", results, "--out", str(out), *cfg.speed_table]
        ),
        Command(
            "lookahead_figure", [*module, "scripts.lookahead_figure", results, "--out", str(out), *cfg.lookahead_figure]
        ),
        Command("size_figure", [*module, "scripts.size_figure", results, "--out", str(out), *cfg.size_figure]),
    ]


def run_parallel(commands: Sequence[Command], jobs: int, logs: Path) -> None:
    """Run ``commands`` with at most ``jobs`` at a time, each logging to ``logs/<name>.log``; skip finished
    training runs; raise after all have ended if any failed."""
    logs.mkdir(parents=True, exist_ok=True)
    pending = []
    for command in commands:
        if command.done is not None and (command.done / DONE).is_file():
            command.status = "done before"
            print(f"skip {command.name}: finished in an earlier run", flush=True)
        else:
            pending.append(command)
    running: list[tuple[Command, subprocess.Popen, float, Any]] = []
    while pending or running:
        while pending and len(running) < max(1, jobs):
            command = pending.pop(0)
            log = open(logs / f"{command.name}.log", "w")  # noqa: SIM115 (closed when the process ends)
            log.write(command.line() + "\n\n")
            log.flush()
            print(f"start {command.name}", flush=True)
            process = subprocess.Popen(command.argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            running.append((command, process, time.perf_counter(), log))
        time.sleep(0.5)
        for entry in list(running):
            command, process, started, log = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            log.close()
            command.seconds = time.perf_counter() - started
            command.status = "ok" if process.returncode == 0 else f"failed ({process.returncode})"
            if process.returncode == 0 and command.done is not None:
                (command.done / DONE).write_text(f"{command.seconds:.0f} s\n")
            print(f"{command.status:>6} {command.name} ({command.seconds:.0f} s)", flush=True)
    failed = [c.name for c in commands if c.status.startswith("failed")]
    if failed:
        raise RuntimeError(f"failed: {', '.join(failed)}; see {logs}/<name>.log")


def children_cpu_seconds() -> float:
    """CPU time (user + system) of every finished child process so far: the work, whatever else loads the CPU."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def index(cfg: DictConfig, out: Path, commands: Sequence[Command], wall: float, cpu: float) -> str:
    """``index.md``: the preset, each command with its status and time, and the tables and figures made."""
    lines = [
        f"# `{cfg.name}` preset",
        "",
        f"`python -m scripts.reproduce {cfg.name}` — {wall / 60:.1f} min wall "
        f"time in all; the commands used {cpu / 60:.1f} min of CPU time (user + system).",
        "",
        "| step | status | time (s) |",
        "|---|---|---:|",
    ]
    lines += [f"| {c.name} | {c.status} | {c.seconds:.0f} |" for c in commands]
    for title, file in (
        ("Evaluation (SI-SNRi)", out / "evaluate" / "results.md"),
        ("Speed table", out / "speed_table.md"),
        *(
            (
                f"Validation curves of the {sweep} sweep (gain in the last 20 % of the steps)",
                out / "curves" / sweep / "summary.md",
            )
            for sweep in curve_sweeps(cfg)
        ),
    ):
        if file.is_file():
            text = file.read_text()
            if file.name == "results.md":  # the overview only: one line per model
                text = text.split("\n## ", 1)[0]
            lines += ["", f"## {title}", "", text.strip()]
    for figure in figures(cfg):
        if (out / figure).is_file():
            lines += ["", f"![{figure}]({figure})"]
    lookahead = out / "lookahead.json"
    if lookahead.is_file():
        from scripts.lookahead_figure import describe, describe_seed_paired

        found = json.loads(lookahead.read_text())
        lines += ["", "Look-ahead: " + describe(found["gains"]) + "."]
        if found.get("seed_paired"):
            lines += ["", "```", describe_seed_paired(found["seed_paired"]), "```"]
    lines += ["", "Preset:", "", "```yaml", OmegaConf.to_yaml(cfg).strip(), "```"]
    return "\n".join(lines) + "\n"


def index_html(cfg: DictConfig, out: Path, commands: Sequence[Command], wall: float, cpu: float) -> str:
    """``index.html``: what ran and how long, a link to the evaluation's listening report, the figures and the
    speed table (the same facts as ``index.md``, as a static page beside it)."""
    from stmc.evaluation.listening_report import STYLE, esc, href, markdown_table, table

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(cfg.name)} preset</title><style>{STYLE}</style></head><body>",
        f"<h1><code>{esc(cfg.name)}</code> preset</h1>",
        f"<p><code>python -m scripts.reproduce {esc(cfg.name)}</code>: {wall / 60:.1f} min wall time, "
        f"{cpu / 60:.1f} min of CPU time (user + system).</p>",
        table(["step", "status", "time (s)"], [[c.name, c.status, f"{c.seconds:.0f}"] for c in commands]),
    ]
    report = out / "evaluate" / "report.html"
    parts.append(
        f'<p><a href="{href("evaluate/report.html")}">The listening report</a>: every model\'s scores '
        "with CIs, examples per noise type to listen to, the figures and the speed table.</p>"
        if report.is_file()
        else "<p class=missing>no evaluation report (the evaluate step did not run to the end)</p>"
    )
    for figure in figures(cfg):
        if (out / figure).is_file():
            parts.append(f'<img class=figure alt="{figure}" src="{href(figure)}">')
    lookahead = out / "lookahead.json"
    if lookahead.is_file():
        from scripts.lookahead_figure import describe

        parts.append(f"<p>Look-ahead: {esc(describe(json.loads(lookahead.read_text())['gains']))}.</p>")
    if (out / "speed_table.md").is_file():
        parts += ["<h2>Speed</h2>", markdown_table((out / "speed_table.md").read_text())]
    parts += ["<h2>Preset</h2>", f"<pre>{esc(OmegaConf.to_yaml(cfg).strip())}</pre>", "</body></html>"]
    return "\n".join(parts) + "\n"


def finish(cfg: DictConfig, out: Path, commands: Sequence[Command], wall: float, cpu: float) -> None:
    """The preset's summaries, whatever ran: the evaluation's report re-rendered with the figures and the speed
    table, ``index.md``, ``index.html`` and ``timings.json``."""
    from stmc.evaluation.listening_report import write_page

    evaluation = out / "evaluate"
    if (evaluation / "results.json").is_file():
        drawn = [out / name for name in figures(cfg) if (out / name).is_file()]
        speed = out / "speed_table.md"
        write_page(evaluation, drawn, speed if speed.is_file() else None)
    atomic_write(out / "index.md", index(cfg, out, commands, wall, cpu))
    atomic_write(out / "index.html", index_html(cfg, out, commands, wall, cpu))
    atomic_write(
        out / "timings.json",
        json.dumps(
            {
                "wall_seconds": wall,
                "cpu_seconds": cpu,
                "steps": {c.name: {"status": c.status, "seconds": c.seconds} for c in commands},
            },
            indent=1,
        )
        + "\n",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("preset", help="a file in stmc/conf/preset: mini | paper")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the preset")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    try:
        cfg = load_preset(args.preset, args.overrides)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(cfg.out) if Path(cfg.out).is_absolute() else ROOT / cfg.out
    training, later = train_commands(cfg, out), later_commands(cfg, out)
    if args.dry_run:
        for command in [*training, *later]:
            print(command.line())
        return 0
    started, cpu_before = time.perf_counter(), children_cpu_seconds()
    out.mkdir(parents=True, exist_ok=True)
    try:
        run_parallel(training, cfg.train.jobs, out / "logs")
        for command in later:
            run_parallel([command], 1, out / "logs")
    finally:
        wall, cpu = time.perf_counter() - started, children_cpu_seconds() - cpu_before
        finish(cfg, out, [*training, *later], wall, cpu)
    print(f"{cfg.name} preset: {wall / 60:.1f} min; everything is in {out} (open index.html)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
