"""``python evaluate.py checkpoints=[...]``: the evaluation command line from a checkout (installed:
``stmc-evaluate``). See :mod:`stmc.apps.evaluate`."""

from stmc.apps.evaluate import cli

if __name__ == "__main__":
    cli()
