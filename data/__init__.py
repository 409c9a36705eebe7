"""Data for STMC: datasets, the ``SpeechDataModule`` and the offline demo corpus (``data.demo``).

Kept import-light on purpose: ``python3 -m data.demo packages`` must run before the virtualenv exists.
"""
