"""Data for STMC: datasets, the ``SpeechDataModule`` and the offline demo corpus (``stmc.data.demo``).

Kept import-light on purpose: ``python3 -m stmc.data.demo packages`` must run before the virtualenv exists.
"""
