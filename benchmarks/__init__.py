"""Side-by-side benchmarks of the web half against minimal baselines (run as ``python -m benchmarks.<name>``)."""
