"""Report.md, plots, the benchmark and the results table."""
