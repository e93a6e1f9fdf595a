"""From-scratch NumPy implementations of the documented networks.

NumPy only: nothing here imports torch (``parity_tests/test_no_torch.py`` checks).
Layouts and parameter names are PyTorch's, so a scratch network and its
``reference/`` mirror exchange weights key by key.
"""

from .layers import Flatten, Linear, ReLU, Sigmoid
from .losses import CrossEntropyLoss
from .module import Module, Parameter, Sequential
from .optim import SGD
from .recipe import Recipe

__all__ = ["Module", "Parameter", "Sequential", "Linear", "ReLU", "Sigmoid", "Flatten",
           "CrossEntropyLoss", "SGD", "Recipe"]
