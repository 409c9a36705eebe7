"""``stmc-train`` / ``python train.py``: train a U-Net speech enhancer from the Hydra configs in ``stmc/conf/``.

Everything happens in :func:`stmc.training.run.train`; this module only handles the command line. A config mistake
exits with status 2 and one line on stderr; a diverged run (NaN/Inf loss) exits with status 1.
"""

import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from stmc.apps.configs import run_command_line  # importing it registers the --help resolver
from stmc.conf import CONFIG_DIR
from stmc.errors import StmcError
from stmc.training.run import ConfigError, train


def fail(err: Exception, status: int) -> None:
    """Print ``err`` as one line on stderr and exit with ``status``."""
    print(f"error: {err}", file=sys.stderr)
    sys.exit(status)


def remove_if_untouched(folder: Path) -> None:
    """Remove a run folder that holds only what Hydra wrote at the start (a config mistake stopped the run before
    anything else), so that mistakes leave no empty runs behind (``ckpt_path=last`` and evaluate.py look there)."""
    if folder.is_dir() and {p.name for p in folder.iterdir()} <= {".hydra", "train.log"}:
        shutil.rmtree(folder, ignore_errors=True)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    """Train one run (Hydra calls this once per job of a sweep)."""
    try:
        train(cfg)
    except ConfigError as err:
        remove_if_untouched(Path(HydraConfig.get().runtime.output_dir))
        fail(err, 2)
    except StmcError as err:  # a diverged run (TrainingStopped), bad input; anything else is a bug: its traceback
        fail(err, 1)


def cli() -> None:
    """``stmc-train`` / ``python train.py``: the command line (Ctrl-C: the fit saves last.ckpt and says how to
    resume, stmc.training.module.SaveOnInterrupt)."""
    run_command_line(main, "train")


if __name__ == "__main__":
    cli()
