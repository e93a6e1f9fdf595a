"""The two sides (a scratch model, its torch mirror, a learner's layer adapted to the same protocol), the registry of networks, training, checkpoints, drift."""
