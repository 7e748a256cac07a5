"""Benchmarks of mirasc: `python -m bench.ops` (op speed and memory), `python -m bench.compile` (compile time)."""
