"""Reproduction scripts: the speed table, the look-ahead and model-size figures, the mini/paper preset runner.

Run them as modules from the repository root, e.g. ``python -m scripts.speed_table --help``.
"""
