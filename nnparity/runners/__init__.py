"""Custom ``nnparity run`` implementations, for networks whose run is not the generic
MNIST one (``nnparity.run.run_network``): a ``Network(runner="nnparity.runners.X")``
entry points here.

A runner module defines ``add_arguments(group)`` (its own ``run`` options),
``check_arguments(args)`` (raise ``UsageError`` for a bad combination: the CLI turns
it into one line and exit status 2), ``run(args) -> exit status``, optionally
``UNSUPPORTED`` ({generic option dest: why it does not apply})
(the step parity of every network is ``networks.run_parity``, with its data provider).
"""


class UsageError(ValueError):
    """A bad combination of command-line options; the message names it and the fix."""


def compact_json(obj, level: int = 0) -> str:
    """JSON like ``json.dumps(obj, indent=1)``, except that a list of records (dicts) is
    written one record per line: per-step and per-epoch histories stay readable and
    small. Floats are written exactly (``repr``); non-finite ones as strings, as
    ``nnparity.io.write_json`` does."""
    import json

    from ..io import finite

    obj = finite(obj) if level == 0 else obj
    pad, inner = " " * level, " " * (level + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(str(k))}: {compact_json(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        return "[\n" + ",\n".join(inner + json.dumps(v) for v in obj) + f"\n{pad}]"
    if isinstance(obj, list) and obj and any(isinstance(v, (dict, list)) for v in obj):
        return "[\n" + ",\n".join(inner + compact_json(v, level + 1) for v in obj) + f"\n{pad}]"
    return json.dumps(obj)
