"""Custom ``nnparity run`` implementations, for networks whose run is not the generic
MNIST one (``nnparity.run.run_network``): a ``Network(runner="nnparity.runners.X")``
entry points here.

A runner module defines ``add_arguments(group)`` (its own ``run`` options),
``check_arguments(args)`` (raise ``UsageError`` for a bad combination: the CLI turns
it into one line and exit status 2), ``run(args) -> exit status``, optionally
``UNSUPPORTED`` ({generic option dest: why it does not apply}) and
``step_parity(steps, dtype, seed, recipe=None, on_step=None) -> Trace``.
"""


class UsageError(ValueError):
    """A bad combination of command-line options; the message names it and the fix."""
