"""PyTorch mirrors of the scratch networks: the reference side of every parity check.

Each module builds the ``torch.nn`` model whose ``state_dict()`` keys, shapes and
layouts equal its scratch twin's, so ``bridge.copy_to_torch`` is a key-by-key copy.
"""
