"""Build the demo corpus: plan every file from the seed, generate them in parallel, write a manifest.

Layout under the root (all 16-bit mono WAV at 16 kHz):

    train/clean/   real prompts of Allison (en, es), Carlo (it) and IvrvoiceRU (ru), and synthetic
                   speakers, concatenated into 6-12 s files       -> mixed on the fly in training
    train/noise/   10 s noise files of every type                 -> mixed on the fly in training
    val_real/{clean,noisy}/   held-out prompts of the training voices, mixed with validation noise
    val_tts/{clean,noisy}/    held-out synthetic speakers and sentences
    test_real/{clean,noisy}/  June (fr), a real voice never heard in training
    test_tts/{clean,noisy}/   held-out synthetic speakers and sentences
    manifest.json             seed, package versions, and per file: speaker, text, noise type, SNR, sha1

Splits are disjoint by speaker (synthetic speakers; June for real speech) and by noise file (music on
hold, Sonic Pi samples, babble talkers). Validation real speech reuses the training voices (with other
prompts): the packages hold only four real voices and the unheard one is kept for test.

Every file is a job with its own generator seeded by ``(seed, job id)``, so the corpus is identical for
a seed whatever the number of processes. The corpus is built in ``<root>.partial`` and renamed at the
end, with ``manifest.json`` written last: a folder with a manifest is complete.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import time
import zlib
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from pathlib import Path

import numpy as np
import soundfile as sf

from stmc.data.demo import noise, packages, sources, tts
from stmc.data.demo.texts import SENTENCES
from stmc.data.mixing import mix
from stmc.model.stft import SAMPLE_RATE

FORMAT = 1
SPEECH_LEVEL_DB = -26.0  # active-speech RMS of every stored clean piece before mixing
TRAIN_SNR_RANGE = (-5.0, 15.0)  # eval mixtures use this range too (stratified draws)
LEVEL_RANGE_DB = (-33.0, -18.0)  # RMS of eval mixtures
EVAL_SPLITS = ("val_real", "val_tts", "test_real", "test_tts")
EVAL_PROMPT_MAX_SECONDS = 10.0  # longer prompts (spoken menus) go to training only


@dataclass(frozen=True)
class Sizes:
    """How much of everything to make; ``scaled`` shrinks counts for quick builds (tests)."""

    train_real_minutes_per_language: float = 13.0
    train_espeak_personas_per_speaker: int = 2
    train_espeak_utterances_per_persona: int = 1
    train_flite_personas_per_speaker: int = 3
    train_flite_utterances_per_persona: int = 3
    train_noise_files_per_type: int = 12
    noise_seconds: float = 10.0
    eval_utterances: dict[str, int] = field(
        default_factory=lambda: {"val_real": 40, "val_tts": 40, "test_real": 120, "test_tts": 80}
    )

    def scaled(self, scale: float) -> Sizes:
        def count(n: int) -> int:
            return max(1, round(n * scale))

        return replace(
            self,
            train_real_minutes_per_language=self.train_real_minutes_per_language * scale,
            train_espeak_personas_per_speaker=count(self.train_espeak_personas_per_speaker),
            train_flite_personas_per_speaker=count(self.train_flite_personas_per_speaker),
            train_noise_files_per_type=count(self.train_noise_files_per_type),
            eval_utterances={k: count(v) for k, v in self.eval_utterances.items()},
        )


# Speakers per split (fixed counts): espeak-ng variants; babble talkers are never target speakers.
ESPEAK_COUNTS = {"test_tts": 5, "val_tts": 3, "babble_test": 4, "babble_val": 3, "babble_train": 8}
FLITE_SPLITS = {"train": ("awb", "kal"), "val_tts": ("rms",), "test_tts": ("slt",)}
SENTENCE_COUNTS = {"test": 16, "val": 8}


# ---------------------------------------------------------------------------------------------- planning
@dataclass
class Plan:
    """Everything the jobs need, decided up front from the seed."""

    jobs: list[dict] = field(default_factory=list)
    speakers: dict[str, list[str]] = field(default_factory=dict)
    noise_sources: dict[str, dict[str, list[str]]] = field(default_factory=dict)


def _split(rng: np.random.Generator, items: list, fractions: tuple[float, ...]) -> list[list]:
    """Shuffle ``items`` and cut them into parts of about ``fractions``, each non-empty."""
    order = [items[i] for i in rng.permutation(len(items))]
    counts = [max(1, round(f * len(items))) for f in fractions[1:]]
    parts, start = [], 0
    for count in counts:
        parts.append(order[start : start + count])
        start += count
    return [order[start:], *parts]


def _stratified(rng: np.random.Generator, count: int, low: float, high: float) -> list[float]:
    """``count`` values covering ``[low, high]`` evenly (one per stratum), in random order."""
    strata = rng.permutation(count)
    return [float(low + (high - low) * (s + rng.random()) / count) for s in strata]


def _real_utterances(paths: list[str], count: int) -> tuple[list[list[str]], list[str]]:
    """Group prompts into ``count`` utterances of 2.5 s or more (1-3 prompts of at most
    ``EVAL_PROMPT_MAX_SECONDS``); returns them and the prompts not used."""
    short = [p for p in paths if sources.g722_seconds(p) <= EVAL_PROMPT_MAX_SECONDS]
    utterances, i = [], 0
    while len(utterances) < count and i < len(short):
        group = [short[i]]
        i += 1
        while sum(map(sources.g722_seconds, group)) < 2.5 and len(group) < 3 and i < len(short):
            group.append(short[i])
            i += 1
        utterances.append(group)
    used = {p for group in utterances for p in group}
    return utterances, [p for p in paths if p not in used]


def plan(seed: int, sizes: Sizes) -> Plan:
    """Decide every file: its speaker, text or prompts, noise type, SNR and level."""
    rng = np.random.default_rng([seed, 0])
    out = Plan()
    sentences, espeak = _split_sentences_and_voices(rng)
    pools = _noise_pools(rng, espeak, sentences, out)
    for kind in noise.TRAIN_TYPES:
        for i in range(sizes.train_noise_files_per_type):
            out.jobs.append(
                {
                    "id": f"train/noise/{kind}-{i:03d}",
                    "kind": "noise",
                    "type": kind,
                    "seconds": sizes.noise_seconds,
                    "pool": pools["train"],
                }
            )
    eval_speech = _real_speech(rng, sizes, out)
    _synthetic_training_speech(rng, sizes, espeak["train"], sentences["train"], out)
    for split, group in (("val_tts", "val"), ("test_tts", "test")):
        eval_speech[split] = _synthetic_eval_speech(
            rng, sizes.eval_utterances[split], espeak[split], FLITE_SPLITS[split], sentences[group]
        )
    # Evaluation mixtures: noise types balanced, SNRs stratified over the training range.
    for split in EVAL_SPLITS:
        utterances = eval_speech[split]
        types = [noise.EVAL_TYPES[i % len(noise.EVAL_TYPES)] for i in rng.permutation(len(utterances))]
        snrs = _stratified(rng, len(utterances), *TRAIN_SNR_RANGE)
        for i, speech in enumerate(utterances):
            out.jobs.append(
                {
                    "id": f"{split}/{split}_{i:04d}",
                    "kind": "mixture",
                    "split": split,
                    **speech,
                    "type": types[i],
                    "snr": snrs[i],
                    "level_db": float(rng.uniform(*LEVEL_RANGE_DB)),
                    "pool": pools[split.split("_")[0]],
                }
            )
    for job in out.jobs:
        names = out.speakers.setdefault(job["id"].split("/")[0], [])
        if job.get("speaker") and job["speaker"] not in names:
            names.append(job["speaker"])
    return out


def _split_sentences_and_voices(rng: np.random.Generator) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Sentences into train/val/test; espeak-ng variants into target speakers and babble talkers per split."""
    order = [SENTENCES[i] for i in rng.permutation(len(SENTENCES))]
    n_test, n_val = SENTENCE_COUNTS["test"], SENTENCE_COUNTS["val"]
    sentences = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    variants = [tts.ESPEAK_VARIANTS[i] for i in rng.permutation(len(tts.ESPEAK_VARIANTS))]
    espeak: dict[str, list[str]] = {}
    for group, count in ESPEAK_COUNTS.items():
        espeak[group], variants = variants[:count], variants[count:]
    espeak["train"] = variants
    return sentences, espeak


def _noise_pools(
    rng: np.random.Generator, espeak: dict[str, list[str]], sentences: dict[str, list[str]], out: Plan
) -> dict[str, noise.NoisePool]:
    """Real noise sources split by file, babble talkers by speaker: one pool per train/val/test."""
    moh_parts = _split(rng, sources.music_on_hold(), (0.6, 0.2, 0.2))
    music_parts = _split(rng, sources.sonic_pi(music=True), (0.7, 0.1, 0.2))
    sfx_parts = _split(rng, sources.sonic_pi(music=False), (0.7, 0.1, 0.2))
    pools = {}
    for i, name in enumerate(("train", "val", "test")):
        talkers = tuple(tts.espeak_persona(rng, v, tts.BABBLE_LANGUAGES) for v in espeak[f"babble_{name}"])
        pools[name] = noise.NoisePool(
            tuple(moh_parts[i]), tuple(music_parts[i]), tuple(sfx_parts[i]), talkers, tuple(sentences[name])
        )
        out.noise_sources[name] = {
            "music_on_hold": [Path(p).name for p in moh_parts[i]],
            "sonic_pi_music": [Path(p).name for p in music_parts[i]],
            "sonic_pi_sfx": [Path(p).name for p in sfx_parts[i]],
            "babble_talkers": [t.name for t in talkers],
        }
    return pools


def _real_speech(rng: np.random.Generator, sizes: Sizes, out: Plan) -> dict[str, list[dict]]:
    """Training files of the training voices (up to the budget), and real utterances for evaluation:
    held-out prompts of the training voices for validation, June (fr) only for test."""
    train_languages = [lang for lang in sources.REAL_SPEAKERS if lang != sources.TEST_LANGUAGE]
    val_total = sizes.eval_utterances["val_real"]
    counts = {
        lang: val_total // len(train_languages) + (i < val_total % len(train_languages))
        for i, lang in enumerate(train_languages)
    }
    counts[sources.TEST_LANGUAGE] = sizes.eval_utterances["test_real"]
    eval_speech: dict[str, list[dict]] = {split: [] for split in EVAL_SPLITS}
    for lang, speaker in sources.REAL_SPEAKERS.items():
        paths = sources.prompts(lang)
        paths = [paths[i] for i in rng.permutation(len(paths))]
        piece = {"engine": "real", "speaker": speaker.speaker, "language": lang, "source": speaker.package}
        groups, paths = _real_utterances(paths, counts[lang])
        split = "test_real" if lang == sources.TEST_LANGUAGE else "val_real"
        eval_speech[split] += [{**piece, "prompts": g} for g in groups]
        budget, index = (0.0 if split == "test_real" else sizes.train_real_minutes_per_language * 60), 0
        while budget > 0 and paths:
            target, group = rng.uniform(6, 12), []
            while paths and sum(map(sources.g722_seconds, group)) < target:
                group.append(paths.pop())
            budget -= sum(map(sources.g722_seconds, group))
            out.jobs.append(
                {
                    "id": f"train/clean/real-{speaker.speaker}-{lang}-{index:03d}",
                    "kind": "speech",
                    **piece,
                    "prompts": group,
                }
            )
            index += 1
    return eval_speech


def _synthetic_training_speech(
    rng: np.random.Generator, sizes: Sizes, variants: list[str], sentences: list[str], out: Plan
) -> None:
    """Training files of 2-3 sentences from several personas of every training voice."""
    voices = [
        ("espeak", v, sizes.train_espeak_personas_per_speaker, sizes.train_espeak_utterances_per_persona)
        for v in variants
    ]
    voices += [
        ("flite", s, sizes.train_flite_personas_per_speaker, sizes.train_flite_utterances_per_persona)
        for s in FLITE_SPLITS["train"]
    ]
    for engine, speaker, personas, utterances in voices:
        for p in range(personas):
            persona = (
                tts.espeak_persona(rng, speaker, tts.ENGLISH_ACCENTS)
                if engine == "espeak"
                else tts.flite_persona(rng, speaker)
            )
            for u in range(utterances):
                text = list(rng.choice(sentences, size=int(rng.integers(2, 4)), replace=False))
                out.jobs.append(
                    {
                        "id": f"train/clean/{engine}-{speaker}-{p}{u}",
                        "kind": "speech",
                        "engine": engine,
                        "speaker": speaker,
                        "persona": persona,
                        "texts": text,
                    }
                )


def _synthetic_eval_speech(
    rng: np.random.Generator, count: int, variants: list[str], flite: tuple[str, ...], sentences: list[str]
) -> list[dict]:
    """``count`` utterances of one or two held-out sentences, cycling over held-out personas."""
    personas = [tts.espeak_persona(rng, v, tts.ENGLISH_ACCENTS) for v in variants]
    personas += [tts.flite_persona(rng, s) for s in flite]
    utterances = []
    for i in range(count):
        persona = personas[i % len(personas)]
        text = list(rng.choice(sentences, size=int(rng.integers(1, 3)), replace=False))
        utterances.append({"engine": persona.engine, "speaker": persona.speaker, "persona": persona, "texts": text})
    return utterances


# -------------------------------------------------------------------------------------------- generation
def _trimmed(x: np.ndarray, margin: float = 0.08) -> np.ndarray:
    """Cut leading and trailing silence (10 ms frames 40 dB below the loudest), keeping ``margin`` s."""
    hop = SAMPLE_RATE // 100
    frames = x[: x.size // hop * hop].reshape(-1, hop)
    if frames.size == 0:
        return x
    energy = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    active = np.flatnonzero(energy > energy.max() - 40)
    keep = int(margin * SAMPLE_RATE)
    return x[max(0, active[0] * hop - keep) : min(x.size, (active[-1] + 1) * hop + keep)]


def _normalised(x: np.ndarray) -> np.ndarray:
    """Scale so that the active frames (within 40 dB of the loudest) have ``SPEECH_LEVEL_DB`` RMS."""
    hop = SAMPLE_RATE // 100
    frames = x[: max(hop, x.size // hop * hop)].astype(np.float64)
    frames = np.pad(frames, (0, -frames.size % hop)).reshape(-1, hop)
    energy = np.mean(frames**2, axis=1)
    active = energy[energy > energy.max() * 1e-4]
    return (x * (10 ** (SPEECH_LEVEL_DB / 20) / np.sqrt(np.mean(active) + 1e-20))).astype(np.float32)


def _speech(job: dict, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """The job's speech: prompts or sentences, trimmed, levelled and joined by 0.15-0.5 s pauses."""
    if job["engine"] == "real":
        root = Path(sources.REAL_SPEAKERS[job["language"]].folder)
        texts = [f"[prompt] {Path(p).relative_to(root).with_suffix('')}" for p in job["prompts"]]
        pieces = [sources.decode_g722(p) for p in job["prompts"]]
    else:
        texts = list(job["texts"])
        pieces = [job["persona"].say(text) for text in texts]
    parts = []
    for i, piece in enumerate(pieces):
        if i:
            parts.append(np.zeros(int(rng.uniform(0.15, 0.5) * SAMPLE_RATE), dtype=np.float32))
        parts.append(_normalised(_trimmed(piece)))
    return np.concatenate(parts), texts


def _write(root: Path, rel: str, x: np.ndarray) -> dict:
    """Store as 16-bit PCM; returns its duration and sha1."""
    pcm = np.clip(np.round(x.astype(np.float64) * 32767), -32768, 32767).astype(np.int16)
    path = root / rel
    sf.write(path, pcm, SAMPLE_RATE, subtype="PCM_16")
    return {"seconds": round(pcm.size / SAMPLE_RATE, 4), "sha1": hashlib.sha1(path.read_bytes()).hexdigest()}


def _speaker_meta(job: dict, texts: list[str]) -> dict:
    meta = {"speaker": job["speaker"], "engine": job["engine"], "text": " ".join(texts)}
    if job["engine"] == "real":
        meta |= {"language": job["language"], "source": job["source"]}
    else:
        meta |= {"persona": job["persona"].name, "source": "espeak-ng" if job["engine"] == "espeak" else "flite"}
    return meta


def run_job(args: tuple[dict, int, str]) -> list[tuple[str, dict]]:
    """Generate and write one planned file (or clean/noisy pair); returns manifest entries."""
    job, seed, root_name = args
    root = Path(root_name)
    rng = np.random.default_rng([seed, zlib.crc32(job["id"].encode())])
    if job["kind"] == "noise":
        x, description = noise.generate(job["type"], rng, int(job["seconds"] * SAMPLE_RATE), job["pool"])
        x = x * (10 ** (-25 / 20) / (np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-12))
        x = x * min(1.0, 0.99 / (np.abs(x).max() + 1e-12))
        rel = job["id"] + ".wav"
        return [
            (
                rel,
                {
                    "split": "train",
                    "kind": "noise",
                    "noise_type": job["type"],
                    "noise": description,
                    **_write(root, rel, x),
                },
            )
        ]
    speech, texts = _speech(job, rng)
    meta = _speaker_meta(job, texts)
    if job["kind"] == "speech":
        rel = job["id"] + ".wav"
        return [(rel, {"split": "train", "kind": "clean", **meta, **_write(root, rel, speech)})]
    split, name = job["id"].split("/")
    noise_audio, description = noise.generate(job["type"], rng, speech.size, job["pool"])
    noisy, clean = mix(speech, noise_audio, job["snr"], job["level_db"])
    clean_rel, noisy_rel = f"{split}/clean/{name}.wav", f"{split}/noisy/{name}.wav"
    return [
        (clean_rel, {"split": split, "kind": "clean", **meta, **_write(root, clean_rel, clean)}),
        (
            noisy_rel,
            {
                "split": split,
                "kind": "noisy",
                "clean": clean_rel,
                **meta,
                "noise_type": job["type"],
                "noise": description,
                "snr": round(job["snr"], 3),
                "level_db": round(job["level_db"], 3),
                **_write(root, noisy_rel, noisy),
            },
        ),
    ]


# ------------------------------------------------------------------------------------------------- build
class MissingPackages(RuntimeError):
    """Some Debian packages the corpus is made from are not installed."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(
            f"missing Debian packages: {' '.join(names)}\nInstall them with:\n  {packages.install_command(names)}"
        )
        self.names = names


def is_built(root: Path, seed: int, scale: float) -> bool:
    """Whether ``root`` holds a complete corpus built with this seed, scale and format."""
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return (manifest.get("format"), manifest.get("seed"), manifest.get("scale")) == (FORMAT, seed, scale)


def build_corpus(root: Path, seed: int = 0, scale: float = 1.0, workers: int = 2, force: bool = False) -> bool:
    """Build the corpus into ``root`` unless it is already there; returns whether it built anything."""
    if not force and is_built(root, seed, scale):
        return False
    if missing := packages.missing():
        raise MissingPackages(missing)
    if root.exists() and not (root / "manifest.json").exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not a demo corpus (no manifest.json); not overwriting it")
    started = time.monotonic()
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    todo = plan(seed, Sizes().scaled(scale))
    for job in todo.jobs:
        folders = (
            [job["id"].rsplit("/", 1)[0]]
            if job["kind"] != "mixture"
            else [f"{job['split']}/clean", f"{job['split']}/noisy"]
        )
        for folder in folders:
            (partial / folder).mkdir(parents=True, exist_ok=True)
    files: dict[str, dict] = {}
    with multiprocessing.get_context("fork").Pool(max(1, workers)) as pool:
        for entries in pool.imap_unordered(run_job, [(job, seed, str(partial)) for job in todo.jobs]):
            files.update(entries)
    files = dict(sorted(files.items()))
    manifest = {
        "format": FORMAT,
        "seed": seed,
        "scale": scale,
        "sample_rate": SAMPLE_RATE,
        "encoding": "16-bit PCM WAV, mono",
        "debian_packages": packages.versions(),
        "python_packages": {name: version(name) for name in ("numpy", "scipy", "soundfile", "G722")},
        "splits": _summary(files),
        "speakers": todo.speakers,
        "noise_sources": todo.noise_sources,
        "files": files,
    }
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if root.exists():
        shutil.rmtree(root)
    partial.rename(root)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    print(
        f"demo corpus: {len(files)} files, {size / 1e6:.0f} MB in {root} ({time.monotonic() - started:.0f} s)",
        flush=True,
    )
    return True


def _summary(files: dict[str, dict]) -> dict[str, dict]:
    """Per split and kind: file count and hours; per split: the noise types' counts."""
    summary: dict[str, dict] = {}
    for meta in files.values():
        split = summary.setdefault(meta["split"], {})
        kind = split.setdefault(meta["kind"], {"files": 0, "seconds": 0.0})
        kind["files"] += 1
        kind["seconds"] = round(kind["seconds"] + meta["seconds"], 2)
        if "noise_type" in meta:
            types = split.setdefault("noise_types", {})
            types[meta["noise_type"]] = types.get(meta["noise_type"], 0) + 1
    return dict(sorted(summary.items()))
