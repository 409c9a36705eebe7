"""``stmc-evaluate`` / ``python evaluate.py checkpoints=[<run or .ckpt>]``: evaluate checkpoints offline and
streamed on a test set.

The work happens in :mod:`stmc.evaluation`; this module reads the Hydra config (``stmc/conf/evaluate.yaml``), writes
the results into the run folder and prints the headline table (SI-SNRi; DNSMOS OVRL for recordings alone). A config
mistake exits with status 2 and one line.
"""

import json
import logging
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from stmc.apps.configs import check_count, run_command_line  # importing it registers the --help resolver
from stmc.conf import CONFIG_DIR, missing_keys
from stmc.data.datamodule import original_cwd
from stmc.errors import ConfigError, StmcError
from stmc.evaluation import evaluate
from stmc.evaluation.listening_report import write_report
from stmc.evaluation.results import headline_table
from stmc.evaluation.scoring import fingerprint
from stmc.evaluation.settings import LABELS, Settings, find_checkpoints, load_items
from stmc.files import atomic_write, exclusive
from stmc.model.enhancer import Enhancer
from stmc.stream.chunk import parse_chunk

log = logging.getLogger("evaluate")
JOURNAL = "evaluation.partial.jsonl"  # the utterance evaluations an interrupted run finished (resume=true)


def as_list(value: object) -> list:
    """A config value that may be one entry or a list of them, as a list."""
    if value is None:
        return []
    value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return list(value) if isinstance(value, list | tuple) else [value]


INTEGER_KEYS = ("threads", "workers", "examples_per_noise")  # positive integers; max_items may also be null


def check_numbers(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the first count that is not a positive integer."""
    for key in (*INTEGER_KEYS, "max_items"):
        value = cfg.get(key)
        if not (key == "max_items" and value is None or key == "examples_per_noise" and value == 0):
            check_count(key, value)


def check_same_work(out: Path, work: str) -> None:
    """Raise :class:`ConfigError` if ``out`` already holds the results of other work (other checkpoints,
    utterances or settings), which this run would replace; the same work may be run again."""
    previous = out / "results.json"
    if not previous.is_file():
        return
    try:
        done = json.loads(previous.read_text()).get("settings", {}).get("work")
    except (OSError, ValueError):
        done = None
    if done != work:
        raise ConfigError(
            f"{out} holds the results of another evaluation; give a new hydra.run.dir, "
            "or overwrite=true to replace them"
        )


def run(cfg: DictConfig) -> Path:
    """Evaluate as ``cfg`` says; returns the run folder holding results.json."""
    check_numbers(cfg)
    out = Path(HydraConfig.get().runtime.output_dir)
    with exclusive(out, "evaluate.py"):
        return evaluate_into(cfg, out)


def evaluate_into(cfg: DictConfig, out: Path) -> Path:
    """:func:`run`'s work, with the run folder ``out`` locked."""
    missing = missing_keys(OmegaConf.to_container(cfg, resolve=False))
    if missing:
        raise ConfigError(f"{missing[0]} is required (set {missing[0]}=...)")
    torch.set_num_threads(int(cfg.threads))
    paths = [p if Path(p).is_absolute() else original_cwd() / p for p in as_list(cfg.checkpoints)]
    graph = cfg.get("graph")
    graph = None if graph is None else str(graph if Path(graph).is_absolute() else original_cwd() / graph)
    settings = Settings(tuple(as_list(cfg.methods)), tuple(as_list(cfg.metrics)), parse_chunk(cfg.chunk), graph)
    checkpoints = find_checkpoints(paths, cfg.select, cfg.newest)
    datamodule = instantiate(cfg.data, _convert_="all")
    items = load_items(datamodule, cfg.stage, as_list(cfg.splits) or None, cfg.max_items)
    log.info("%d checkpoint(s) x %d utterances -> %s", len(checkpoints), len(items), out)
    start, step = time.perf_counter(), max(1, (len(checkpoints) + 1) * len(items) // 10)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            log.info("%d/%d utterance evaluations, %.0f s", done, total, time.perf_counter() - start)

    if not cfg.get("overwrite"):
        check_same_work(out, fingerprint(items, checkpoints, settings, cfg.threads))
    describe = {
        "test_set": f"{cfg.data.get('_target_', '').rsplit('.', 1)[-1]} root={cfg.data.get('root')} "
        f"stage={cfg.stage} splits={as_list(cfg.splits) or 'all'}"
    }
    journal = out / JOURNAL if cfg.resume else None
    evaluation = evaluate(checkpoints, items, settings, cfg.workers, cfg.threads, describe, progress, journal)
    evaluation.write(out)
    # the config of these results, whatever a later invocation into this folder writes to .hydra/
    atomic_write(out / "results.config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if journal is not None:
        journal.unlink(missing_ok=True)
    report = write_report(
        out,
        evaluation,
        Enhancer.from_checkpoint(checkpoints[0]),
        settings,
        cfg.examples_per_noise,
        [original_cwd() / f for f in as_list(cfg.report.figures)],
        original_cwd() / cfg.report.speed_table if cfg.report.speed_table else None,
    )
    metric = LABELS[evaluation.document["headline"]]
    print(f"\n{metric} (mean over utterances; {len(checkpoints)} model(s)) — full tables in {out}/results.md")
    print(headline_table(evaluation.document))
    print(f"listening report (open it in a browser): {report}")
    print(f"wrote {out / 'results.json'} ({time.perf_counter() - start:.0f} s)")
    return out


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """One evaluation run (Hydra calls this once per job of a sweep)."""
    try:
        run(cfg)
    except StmcError as err:  # a wrong setting, checkpoint or test set; any other exception is a bug: its traceback
        print(f"error: {err}".splitlines()[0], file=sys.stderr)
        sys.exit(2)


def cli() -> None:
    """``stmc-evaluate`` / ``python evaluate.py``: the command line (the evaluation's workers are stopped already
    when Ctrl-C reaches here: stmc.evaluation.scoring.run_all)."""
    run_command_line(main, "evaluate", "the evaluation stopped; files written before are complete")


if __name__ == "__main__":
    cli()
