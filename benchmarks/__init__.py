"""Latency, end-to-end pipeline and precision-drift benchmarks over a model bundle.

`edgescreen bench` runs them and writes `benchmarks/results/<machine>-<date>.json`, a
markdown table and PNG plots. Every ratio is measured side by side in one run: these
machines are noisy, and only same-run ratios are comparable.
"""
