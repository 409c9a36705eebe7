"""LiteRT streams timed in processes of their own, with peak memory measured as TFLite's benchmark tool does.

TFLite's ``benchmark_model`` (the tool the paper timed Table 1 with) reports "memory footprint delta from the start
of the tool": the growth of the process's maximum resident set size, at ``init`` (the interpreter built and its
tensors allocated) and ``overall`` (after the timed run). A process's peak resident memory cannot be read for one
object among many, so every LiteRT stream runs in a worker process of its own (:class:`LiteRTProcess`): the worker
imports what it needs (the runtime's library included: the tool has it linked in) and makes its input, resets the
kernel's high-water mark (``/proc/self/clear_refs``), reads it again after loading the file (``init``) and at the
end (``overall``). The caller drives the worker's timed
hops round by round, interleaved with its own rows (:func:`stmc.bench.speed.measure`).

Protocol (JSON lines on the worker's stdout): ``{"ready": ...}`` after loading and warm-up; then for each line
``HOPS`` on its stdin, the list of that many per-hop times (seconds of ``stream(chunk)``, one hop per call); at
the end of stdin ``{"init_bytes", "overall_bytes", "state_bytes", ...}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

WARMUP = 30


def resident_peak() -> int:
    """This process's maximum resident set size so far (bytes, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def reset_resident_peak() -> bool:
    """Reset the high-water mark to the current resident size; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class LiteRTProcess:
    """A LiteRT stream of the file at ``path`` in a worker process (one interpreter thread), ready to time."""

    def __init__(self, path: str | Path, frames: int, seed: int = 0) -> None:
        command = [sys.executable, "-m", "stmc.bench.litert", str(path), "--frames", str(frames), "--seed", str(seed)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = self._read()

    def _read(self) -> object:
        for line in self.process.stdout:  # only JSON lines are the protocol's; runtimes may print too
            if line.startswith(("{", "[")):
                return json.loads(line)
        raise RuntimeError(f"the LiteRT worker for {self.process.args[3]} ended (exit {self.process.wait()})")

    def time(self, hops: int) -> list[float]:
        """Seconds of each of ``hops`` consecutive one-hop calls."""
        self.process.stdin.write(f"{hops}\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> dict:
        """End the worker; its memory figures (``init_bytes``, ``overall_bytes``, ``state_bytes``)."""
        self.process.stdin.close()
        result = self._read()
        self.process.wait()
        return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stmc.bench.litert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", help="a LiteRT step graph from python -m stmc.export X.tflite")
    parser.add_argument("--frames", type=int, required=True, help="hops the caller will time, at most")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import ai_edge_litert.interpreter  # noqa: F401  the runtime is loaded at the start, as benchmark_model's is
    import torch

    from stmc.export.litert import LiteRTEngine, read_metadata
    from stmc.stream.driver import Stream

    # the driver's small tensor ops on one thread too: torch's default pool (every core) cost 0.1 ms per hop of a
    # 0.54 ms LiteRT step (2 cores, Zen 4, 2026-12-07), which the rows before then carry
    torch.set_num_threads(1)

    meta = read_metadata(args.path)
    spec = torch.randn(
        int(meta.get("batch", 1)),
        2,
        int(meta["n_freq"]),
        WARMUP + args.frames,
        generator=torch.Generator().manual_seed(args.seed),
    )
    reset = reset_resident_peak()
    start = resident_peak()
    stream = Stream(LiteRTEngine(args.path, threads=1))
    init = resident_peak() - start
    for t in range(WARMUP):
        stream(spec[..., t : t + 1])
    print(json.dumps({"ready": True, "peak_reset": reset}), flush=True)
    position = WARMUP
    for line in sys.stdin:
        seconds = []
        for t in range(position, position + int(line)):
            chunk = spec[..., t : t + 1]
            began = time.perf_counter()
            stream(chunk)
            seconds.append(time.perf_counter() - began)
        position += len(seconds)
        print(json.dumps(seconds), flush=True)
    state = sum(t.numel() * t.element_size() for t in stream.get_state()[:-1])
    print(
        json.dumps(
            {
                "init_bytes": init,
                "overall_bytes": resident_peak() - start,
                "state_bytes": state,
                "peak_reset": reset,
                "start_bytes": start,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
