"""Benchmark suite of triangles_polars: ``python -m benchmarks`` from the repository root.

See ``benchmarks/README.md`` for what is measured, how, and the targets.
"""
