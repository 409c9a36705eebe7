"""Evaluation of trained enhancers: offline (full-sequence) and streamed inference on every test utterance.

For each checkpoint and each utterance, one at a time (batch 1, so no padding touches the result):

- ``offline``: ``Enhancer(x)`` over the whole utterance;
- streamed (``stmc``, or ``inc``/``window``): the utterance cut into chunks of ``chunk`` samples, fed to
  ``Enhancer.stream(method)``, then ``flush()``; ``max_abs_diff`` = max |streamed - offline| over its samples;
- scored against the clean speech: SI-SNR and SI-SNRi (``stmc.evaluation.metrics``), SDR and SDRi, wide-band
  PESQ and STOI (torchmetrics), and without it: DNSMOS (:mod:`.dnsmos`), next to the same scores of the mixture
  itself, the untrained Wiener filter and the reference systems asked for (:mod:`.references`), which depend on
  the utterance only and are computed once; every enhancer's real-time factor is timed too.

Results are means with 95 % confidence intervals (Student t over utterances) overall, per split, per noise type
and per split x noise type. One module per job: :mod:`.settings` (what is computed, checkpoint discovery, test
utterances), :mod:`.scoring` (one utterance; many in worker processes; the resume journal), :mod:`.summary`
(statistics), :mod:`.results` (documents and files), :mod:`.listening_report` (``report.html``); this one
runs them in order (:func:`evaluate`).
:func:`~stmc.evaluation.results.write_results` writes ``results.json`` (machine-readable, the contract the
figure scripts read), ``results.md`` and ``utterances.csv`` atomically. Every score depends only on the
checkpoint, the utterances and the settings (one BLAS thread per worker), so evaluating twice gives the same
scores, whatever the number of workers (the real-time factors are measurements).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stmc.evaluation.results import results_document, utterance_csv, write_results
from stmc.evaluation.scoring import Journal, fingerprint, run_all
from stmc.evaluation.settings import LABELS, Item, Row, Settings, checkpoint_info, model_names
from stmc.evaluation.summary import model_summary
from stmc.model.enhancer import Enhancer

log = logging.getLogger("stmc.evaluation")


@dataclass
class Evaluation:
    """The outcome of :func:`evaluate`: the ``results.json`` document and the per-utterance rows behind it."""

    document: dict[str, Any]
    items: Sequence[Item]
    baselines: list[dict[str, Row]]
    per_model: list[list[dict[str, Row]]]

    def write(self, folder: Path) -> None:
        """``results.json``, ``results.md`` and ``utterances.csv`` in ``folder`` (atomically)."""
        names = [m["name"] for m in self.document["models"]]
        write_results(folder, self.document, utterance_csv(names, self.items, self.baselines, self.per_model))


def with_non_intrusive_metrics(settings: Settings, items: Sequence[Item]) -> Settings:
    """``settings``, with DNSMOS added where some utterances are recordings without a clean reference (the
    intrusive metrics are skipped for those: said in one logged line)."""
    without = sum(1 for item in items if item.get("clean") is None)
    if not without:
        return settings
    intrusive = ", ".join(LABELS[m].split(" (")[0] for m in settings.metrics if m != "dnsmos")
    log.info(
        "%d of %d utterances have no clean reference: %s skipped for them; DNSMOS scored",
        without,
        len(items),
        intrusive,
    )
    if "dnsmos" in settings.metrics:
        return settings
    return dataclasses.replace(settings, metrics=(*settings.metrics, "dnsmos"))


def evaluate(
    checkpoints: Sequence[Path],
    items: Sequence[Item],
    settings: Settings,
    workers: int = 1,
    threads: int = 1,
    describe: Mapping[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    journal: Path | None = None,
) -> Evaluation:
    """Evaluate every checkpoint on ``items`` (see :func:`results_document` for what the document holds).

    ``describe`` adds entries (test set name, ...) to the document's ``settings``. With a ``journal`` file, the
    utterance evaluations it holds from an interrupted run of the same work are not computed again. Recordings
    without a clean reference are scored by DNSMOS (added to ``settings.metrics`` if missing).
    """
    work = fingerprint(items, checkpoints, settings, threads)
    settings = with_non_intrusive_metrics(settings, items)
    log_of = Journal(journal, work) if journal is not None else None
    if log_of is not None and log_of.done:
        log.info(
            "resuming: %d of %d utterance evaluations done before (%s)",
            len(log_of.done),
            len(items) * (len(checkpoints) + 1),
            journal,
        )
    try:
        baselines, per_model = run_all(items, checkpoints, settings, workers, threads, progress, log_of)
    finally:
        if log_of is not None:
            log_of.close()
    names = model_names(checkpoints)
    models = []
    for path, name, rows in zip(checkpoints, names, per_model, strict=True):
        info = {"name": name, **checkpoint_info(path, Enhancer.from_checkpoint(path).model)}
        models.append(model_summary(info, items, baselines, rows))
    settings_doc = {
        **(describe or {}),
        "utterances": len(items),
        "methods": list(settings.methods),
        "metrics": list(settings.metrics),
        "chunk_samples": settings.chunk,
        **({"graph": settings.graph} if settings.graph else {}),
        "threads_per_worker": threads,
        "torch": torch.__version__,
        "work": work,  # what these numbers depend on (scoring.fingerprint)
    }
    return Evaluation(results_document(models, settings_doc), items, baselines, per_model)
