"""The command lines: ``train.py`` / ``stmc-train``, ``evaluate.py`` / ``stmc-evaluate``, ``stream_infer.py`` /
``stmc-stream``, their Hydra ``--help``, audio sources and sinks, and folders streamed as batches."""
