"""Benchmarks of the papers: metrics, a cached resumable runner, NLI scoring and reports."""
