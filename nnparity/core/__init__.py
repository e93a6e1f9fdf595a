"""Comparing tensors, records and traces, the data, the output folders, signals, progress, BLAS threads: NumPy and the standard library only."""
