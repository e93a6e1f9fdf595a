"""The command line: nnparity run, check, gradcheck, selftest, bench, ...."""
