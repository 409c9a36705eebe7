"""Benchmarks: time per hop of every engine (``stmc-bench``), streams per core against the GEMM roof, LiteRT."""
