"""``nnparity.check_battery``: the suite's whole battery on your layer, through the same code that
checks the scratch layers (``nnparity.diagnosis.battery``).

    nnparity.check_battery(MyReLU(), torch.nn.ReLU(), input_shape=(4, 9), routes=True)
    nnparity.check_battery(lambda cfg: MyConv(**cfg), kind="conv2d")   # every configuration of the sweep

With ``kind`` (a layer kind of the table, ``nnparity.diagnosis.layercases``), your factory is
called with every configuration of that kind's sweep (the torch module's keyword arguments),
and the kind's modes, named inputs (ties, exact zeros, offsets), non-finite routing and
long-reduction input come with it; the torch side is the table's unless you give a factory.
The battery: autograd in float64 and float32 with random non-uniform upstream gradients,
finite differences, two backward calls that must accumulate (``accumulates=True``), non-finite inputs and upstream
gradients compared position by position (``routes``), float32 against a float64 reference
on a long reduction with the tolerance from the measured noise floor, train and eval.
(The initialisation statistics are the scratch ``init`` functions' check: not run here.)
"""

from __future__ import annotations

from dataclasses import replace

from nnparity.training.adapters import ArgumentError


def check_battery(mine, torch_equivalent=None, input_shape=None, *, kind: str | None = None, modes=("train",),
                  routes: bool = False, reduction_input=None, accumulates: bool = False, seed: int = 0,
                  raise_on_failure: bool = True):
    """Run the battery on your layer; returns a ``BatteryReport`` (``comparisons``, ``failures``, ``message()``).

    Args:
        mine: your layer (one configuration: give ``input_shape`` and ``torch_equivalent``), or with
            ``kind`` a factory ``cfg -> your layer`` called with every configuration of the kind's sweep.
        torch_equivalent: a torch module (with a layer), or a factory ``cfg -> torch module`` (with
            ``kind``; default: the table's torch equivalent of the kind).
        input_shape: the input's shape, for one layer.
        kind: a layer kind of the table (``"conv2d"``, ``"linear"``, ``"maxpool2d"``, ``"batchnorm2d"``,
            ``"relu"``, ...): its sweep, modes, named inputs, routing and reduction input.
        modes: for one layer: ``("train",)`` or ``("train", "eval")``.
        routes: for one layer: which element gets the gradient is a decision (a max, a mask): compare
            non-finite inputs and upstream gradients with torch position by position.
        reduction_input: for one layer: ``(input shape, offset)`` of a long reduction, for the float32
            accumulation check (e.g. ``((4096, 3), 50.0)`` for a layer summing over the batch).
        accumulates: your layer adds its parameter gradients up over backward calls until a
            ``zero_grad`` (torch's contract, and this project's): two backward calls are then
            compared with torch's accumulated ``.grad``. Off by default: the dict, CS231n and
            numpy-ml conventions assign fresh gradients at every backward.
        seed: seeds every input, upstream gradient and parameter value.

    Raises ``ParityError`` naming the first failing comparison unless ``raise_on_failure`` is false.
    """
    from nnparity.api.byod import _check_bool, _check_int
    from nnparity.diagnosis import battery, layercases

    raise_on_failure = _check_bool("raise_on_failure", raise_on_failure)
    seed = _check_int("seed", seed, 0)
    checks = tuple(c for c in battery.CHECKS if c != "init" and (c != "accumulate" or
                                                                  _check_bool("accumulates", accumulates)))
    if kind is not None:
        if kind not in layercases.cases() or layercases.get_case(kind).role != "layer":
            layers = [k for k, c in layercases.cases().items() if c.role == "layer"]
            raise ArgumentError(f"check_battery: unknown layer kind {kind!r}: use one of {layers}")
        if not callable(mine) or callable(getattr(mine, "forward", None)):
            raise ArgumentError("check_battery: with kind=, mine must be a factory of the configuration dict "
                                "(lambda cfg: MyConv(**cfg)); for one layer, leave kind out and give input_shape")
        case = layercases.get_case(kind)
        make_torch = (lambda cfg, layer: torch_equivalent(cfg)) if torch_equivalent is not None else case.torch
        configs = [(c, s, False) for c, s in case.sweep()]
        name = f"your {kind}"
        make = lambda cfg, dtype: mine(cfg)   # noqa: E731
    else:
        if torch_equivalent is None or input_shape is None:
            raise ArgumentError("check_battery: give your layer, its torch equivalent and input_shape=(N, ...), "
                                "or a factory with kind='conv2d' (or another layer kind of the table)")
        if isinstance(modes, str) or not set(modes) <= {"train", "eval"} or not modes:
            raise ArgumentError(f"check_battery: modes must be ('train',) or ('train', 'eval'), got {modes!r}")
        case = replace(layercases.get_case("relu"), kind="yours", cls="", modes=tuple(modes), inputs={},
                       routes=_check_bool("routes", routes), inits=(), prepare=None,
                       accumulation=(lambda cfg: reduction_input) if reduction_input is not None else None)
        configs = [({}, tuple(input_shape), False)]
        name = getattr(type(mine), "__name__", "your layer")
        make = lambda cfg, dtype: mine   # noqa: E731
        make_torch = lambda cfg, layer: torch_equivalent   # noqa: E731
    with battery.one_thread():
        report = battery.run_case(case, configs, seed=seed, checks=checks, make=make, make_torch=make_torch,
                                  name=name)
    if raise_on_failure:
        report.raise_if_failed()
    return report


__all__ = ["check_battery"]
