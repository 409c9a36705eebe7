"""``python train.py experiment=quickstart``: the training command line from a checkout (installed: ``stmc-train``).
See :mod:`stmc.apps.train`."""

from stmc.apps.train import cli

if __name__ == "__main__":
    cli()
