"""Stream audio through a trained (or, for a dry run, untrained) enhancer: ``python stream_infer.py input=...``.

Everything happens in :func:`stmc.realtime.infer`; this file only handles the command line (configs/stream_infer.yaml).
Logs go to stderr, so that ``output=-`` leaves stdout to the audio. A bad input or checkpoint is reported on one
line; the exit status is 1 if any input failed, 2 for a mistake in the settings (e.g. ``chunk``).
"""

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

import stmc.configs  # noqa: F401 (registers the --help resolver)
from stmc.errors import ConfigError
from stmc.realtime import InferOptions, infer


@hydra.main(version_base="1.3", config_path="configs", config_name="stream_infer")
def main(cfg: DictConfig) -> None:
    """Enhance the configured input (Hydra calls this once)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    options = InferOptions(**OmegaConf.to_container(cfg, resolve=True))
    try:
        status = infer(options)
    except ConfigError as err:  # a mistake in the settings: status 2, as in train.py and evaluate.py
        print(f"error: {err}", file=sys.stderr)
        status = 2
    except ValueError as err:  # bad input or checkpoint: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        status = 1
    sys.exit(status)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C): the stream stopped; files written before are complete", file=sys.stderr)
        sys.exit(130)
