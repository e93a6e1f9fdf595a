"""Configuration sweeps: check a layer over a grid of configurations, because some slips
exist only in some of them.

    nnparity.sweep_layer(lambda cfg: MyConv(**cfg), grid="conv2d")            # torch.nn.Conv2d(**cfg)
    nnparity.sweep_layer((conv_forward_naive, conv_backward_naive), grid="conv2d")   # CS231n pair

A CS231n ``conv_backward_naive`` that crops ``dx_pad[:, :, pad:-pad, pad:-pad]`` is right
at pad 1 and empty at pad 0; a max-pool backward that assigns (``=``) where it should add
(``+=``) is right until two windows overlap (stride < kernel); a bias gradient summed over
the wrong axis passes a shape check only when the batch equals the feature count. So
each layer kind has one default grid (``GRIDS``, the one table): padding 0/1/2, stride
1/2, square and non-square kernels and inputs, overlapping pooling windows, batch 1,
batch equal to the feature count, odd sizes. Each configuration is one
``check_layer`` (float64 by default: derivations are proven in float64); the report is
a table of configurations with pass/fail, and its message leads with the *smallest*
failing configuration (fewest input elements, then the smallest settings) and that
check's own message (tensor, element, pattern).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nnparity.training.adapters import ArgumentError, ParameterMismatch, ProtocolError, UsageError, call_torch, call_user
from nnparity.core.parity import ParityError


# the grids, and how configurations are named and sized, live with the layer-case table
from nnparity.diagnosis.layercases import GRIDS, Grid, config_size as _size, describe_config  # noqa: E402,F401
from nnparity.diagnosis.layercases import _fmt_value  # noqa: E402


@dataclass
class SweepRow:
    """One configuration: ``status`` is ``pass``, ``FAIL`` (a comparison failed), ``error``
    (your code or the torch module raised: a finding too) or ``n/a`` (your layer cannot
    express it: a CS231n ``pool_param`` has no padding; not a failure)."""

    cfg: dict
    input_shape: tuple
    status: str
    report: object = None          # the LayerReport (pass / FAIL)
    error: str | None = None       # the one-line error (error)

    @property
    def config(self) -> str:
        return describe_config(self.cfg, self.input_shape)

    def short(self, keys) -> str:
        return describe_config({k: v for k, v in self.cfg.items() if k in keys}, self.input_shape)

    def what(self) -> str:
        """The first failing tensor and its pattern (or the error), in one phrase."""
        if self.error:
            return self.error.splitlines()[0][:120]
        if self.report is None or self.status == "pass":
            return ""
        first = self.report.first_failure()
        if first is None:
            return self.report.summary().splitlines()[0]
        dt, c = first
        if c.pattern:
            return f"{dt} {c.name}: {c.pattern}"
        return f"{dt} {c.name}: " + (c.problem[:100] if c.problem else f"margin {c.margin:.3g}")


@dataclass
class SweepReport:
    """Every configuration of one sweep, in the grid's order."""

    name: str
    grid: str
    rows: list = field(default_factory=list)

    @property
    def failures(self) -> list:
        """``FAIL`` and ``error`` rows (``n/a``: your layer cannot express that configuration)."""
        return [r for r in self.rows if r.status in ("FAIL", "error")]

    @property
    def not_applicable(self) -> list:
        return [r for r in self.rows if r.status == "n/a"]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def smallest_failure(self) -> SweepRow | None:
        fails = self.failures
        return min(fails, key=lambda r: _size(r.cfg, r.input_shape)) if fails else None

    def table(self) -> str:
        """One line per configuration (the settings that vary; the fixed ones head the table)."""
        keys = list(dict.fromkeys(k for r in self.rows for k in r.cfg))
        vary = [k for k in keys if len({repr(r.cfg.get(k)) for r in self.rows}) > 1]
        fixed = [k for k in keys if k not in vary]
        head = (f"  (every configuration: {', '.join(f'{k}={_fmt_value(self.rows[0].cfg[k])}' for k in fixed)})\n"
                if fixed else "")
        width = max((len(r.short(vary)) for r in self.rows), default=6)
        lines = [f"  {'#':>3}  {'configuration':<{width}}  verdict  first failing tensor"]
        for i, r in enumerate(self.rows, 1):
            what = r.what()
            what = what if len(what) <= 110 else what[:107] + "..."
            lines.append(f"  {i:>3}  {r.short(vary):<{width}}  {r.status:<7}  {what}".rstrip())
        return head + "\n".join(lines)

    def message(self) -> str:
        na = len(self.not_applicable)
        n, bad = len(self.rows) - na, len(self.failures)
        head = f"{self.name} over the {self.grid} grid: "
        skipped = (f" ({na} more not applicable: {self.not_applicable[0].error.splitlines()[0]})" if na else "")
        if not bad:
            return head + f"all {n} configurations pass{skipped}\n{self.table()}"
        s = self.smallest_failure
        detail = s.error if s.error else s.report.message()
        return (head + f"{bad} of {n} configurations fail{skipped}; the smallest failing configuration is\n"
                f"  {s.config}\n{detail}\n\nevery configuration:\n{self.table()}")

    def raise_if_failed(self) -> "SweepReport":
        if not self.ok:
            raise ParityError(self.message())
        return self


def _factory(what: str, f, torch_side: bool):
    if isinstance(f, tuple):
        return None
    if callable(getattr(f, "forward", None)) or not callable(f):
        example = "lambda cfg: torch.nn.Conv2d(**cfg)" if torch_side else "lambda cfg: MyConv(**cfg)"
        raise ArgumentError(f"sweep_layer: {what} must be a factory, a function of the configuration dict that "
                            f"builds the layer ({example}){'' if torch_side else ', or a (forward, backward) pair'}, "
                            f"got {type(f).__name__}")
    return f


def sweep_layer(mine, torch_equivalent=None, grid: str | list = "conv2d", *, axes: dict | None = None,
                dtypes=("float64",), mode: str | None = None, modes=None, plot=None, raise_on_failure: bool = True,
                **check) -> SweepReport:
    """Check your layer in every configuration of a grid; one ``check_layer`` per configuration.

    Args:
        mine: a factory ``cfg -> your layer`` (``lambda cfg: MyConv(**cfg)``; ``cfg`` holds the
            torch module's keyword arguments), or a CS231n pair ``(forward, backward)``,
            whose ``conv_param`` / ``pool_param`` / ``bn_param`` are read from each
            configuration's torch module.
        torch_equivalent: a factory ``cfg -> torch module``; default: the grid's
            ``torch.nn`` class called with ``cfg`` (``torch.nn.Conv2d(**cfg)``).
        grid: a layer kind of ``GRIDS`` (``"conv2d"``, ``"maxpool2d"``, ``"avgpool2d"``,
            ``"linear"``, ``"batchnorm1d"``, ``"batchnorm2d"``), or your own list of
            ``(cfg, input_shape)`` pairs (then give ``torch_equivalent``).
        axes: values instead of the grid's for some axes (``{"padding": [0]}`` for a layer
            that has no padding).
        dtypes: float64 by default (derivations are proven in float64).
        mode, modes: as ``check_layer``'s: ``mode="eval"`` checks every configuration in evaluation
            mode, ``modes=("train", "eval")`` in both (a configuration fails if either mode does).
        plot: a ``.png`` path: the smallest failing configuration's first failing tensor is drawn.
        check: any other keyword of ``check_layer`` (``seed``, ``atol``, ``skip``, ...).

    Returns a ``SweepReport`` (``table()``, ``smallest_failure``); raises ``ParityError``
    whose message leads with the smallest failing configuration, unless
    ``raise_on_failure`` is false.
    """
    import torch

    from nnparity.api.byod import _check_bool, check_layer
    from nnparity.reporting.heatmap import check_path

    raise_on_failure = _check_bool("raise_on_failure", raise_on_failure)
    if plot is not None:
        plot = check_path(plot)
    for bad in ("input_shape", "x", "upstream", "raise_on_failure"):
        if bad in check:
            raise ArgumentError(f"sweep_layer: {bad}= is set per configuration by the grid: leave it out "
                                "(a grid of your own is a list of (cfg, input_shape) pairs)")
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise ArgumentError(f"sweep_layer: unknown grid {grid!r}: use one of {sorted(GRIDS)}, or a list of "
                                "(cfg, input_shape) pairs")
        spec = GRIDS[grid]
        unknown = [k for k in (axes or {}) if k not in spec.axes and k not in spec.fixed]
        if unknown:
            raise ArgumentError(f"sweep_layer: axes {unknown} are not axes of the {grid} grid: it has "
                                f"{sorted(set(spec.axes) | set(spec.fixed))}")
        if axes is not None and not all(isinstance(v, (list, tuple)) and v for v in axes.values()):
            raise ArgumentError(f"sweep_layer: axes values must be non-empty lists, got {axes!r}")
        cases = spec.cases({k: list(v) for k, v in (axes or {}).items()})
        grid_name = grid
        if torch_equivalent is None:
            cls = getattr(torch.nn, spec.torch)
            torch_equivalent = lambda cfg: cls(**cfg)   # noqa: E731
    else:
        if axes is not None:
            raise ArgumentError("sweep_layer: axes= changes a named grid; with your own list, list the "
                                "configurations themselves")
        try:
            cases = [(dict(c), tuple(s)) for c, s in grid]
        except (TypeError, ValueError):
            raise ArgumentError("sweep_layer: grid must be a layer kind (a string) or a list of (cfg dict, "
                                "input_shape) pairs") from None
        grid_name = "given"
        if torch_equivalent is None:
            raise ArgumentError("sweep_layer: with a grid of your own, give torch_equivalent as a factory "
                                "(lambda cfg: torch.nn.Conv2d(**cfg))")
    if not cases:
        raise ArgumentError("sweep_layer: the grid has no configurations")
    make_mine = _factory("mine", mine, torch_side=False)
    make_torch = _factory("torch_equivalent", torch_equivalent, torch_side=True)
    name = check.get("name") or (getattr(mine[0], "__name__", "your layer") if make_mine is None else None)
    report = SweepReport(name or "your layer", grid_name)
    for cfg, shape in cases:
        try:
            module = call_torch(f"the torch factory({cfg})", make_torch, dict(cfg))
            if not isinstance(module, torch.nn.Module) and not callable(module):
                raise ProtocolError(f"the torch factory returned {type(module).__name__}, not a torch module")
            layer = mine if make_mine is None else call_user(f"your factory({cfg})", make_mine, dict(cfg))
            rep = check_layer(layer, module, shape, dtypes=dtypes, mode=mode, modes=modes, raise_on_failure=False,
                              **check)
        except ArgumentError:
            raise
        except (ProtocolError, ParameterMismatch) as e:   # your layer cannot express this configuration
            report.rows.append(SweepRow(cfg, shape, "n/a", error=str(e)))
            continue
        except UsageError as e:   # your code (or torch) raised in this configuration: a finding
            report.rows.append(SweepRow(cfg, shape, "error", error=str(e)))
            continue
        if name is None:
            report.name = name = rep.name
        report.rows.append(SweepRow(cfg, shape, "pass" if rep.ok else "FAIL", rep))
    if all(r.status == "n/a" for r in report.rows):
        raise ProtocolError(f"sweep_layer: no configuration of the grid could be checked: "
                            f"{report.rows[0].error.splitlines()[0]}")
    smallest = report.smallest_failure
    if plot is not None and smallest is not None and smallest.report is not None:
        smallest.report.plot(plot, smallest.config)
    if raise_on_failure:
        report.raise_if_failed()
    return report


__all__ = ["GRIDS", "Grid", "SweepReport", "SweepRow", "sweep_layer", "describe_config"]
