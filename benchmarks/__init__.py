"""Benchmark commands whose results are written to benchmarks/results/ and quoted in the README."""
