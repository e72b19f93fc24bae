"""Development helpers shared by the test suite, the demo and the benchmarks (not part of the package)."""
