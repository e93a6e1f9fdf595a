"""The ``nnparity`` command.

    nnparity list                       the documented networks
    nnparity run NET [options]          step parity, then both sides trained side by side, then a report
                                        (linear10 and toy221 add options of their own: nnparity run --help)
    nnparity parity NET [options]       step parity only: a per-step table, exit 1 on mismatch
    nnparity bench [NET ...]            seconds per epoch, scratch vs torch, GFLOP/s, peak memory

Bad arguments exit with status 2 and one line naming the problem.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from .data import DataError
from .networks import NETWORKS, UnknownNetwork

DTYPES = ("float32", "float64")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def network_name(text: str) -> str:
    if text not in NETWORKS:
        raise argparse.ArgumentTypeError(f"unknown network {text!r}; known networks: {', '.join(NETWORKS)}")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nnparity", description="Reference-parity verification of from-scratch NumPy networks "
                                             "against PyTorch.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser, metavar="COMMAND")

    sub.add_parser("list", help="list the documented networks")

    def common(sp, default_dtype_help):
        sp.add_argument("net", type=network_name, metavar="NET", help=f"one of: {', '.join(NETWORKS)}")
        sp.add_argument("--seed", type=non_negative_int, default=0, help="seed for init, batches and masks (default 0)")
        sp.add_argument("--dtype", choices=DTYPES, default=None, help=default_dtype_help)
        sp.add_argument("--data-dir", default=None,
                        help="folder with the MNIST files (else $NNPARITY_DATA_DIR, else the shipped copy)")

    r = sub.add_parser("run", help="parity check, then train both sides and write a side-by-side report")
    common(r, "default: the recipe's documented-run dtype")
    r.add_argument("--epochs", type=positive_int, default=None, help="default: the recipe's")
    r.add_argument("--out", default="reports", help="reports go to OUT/NET/ (default reports)")
    r.add_argument("--parity-steps", type=non_negative_int, default=20,
                   help="steps of step parity before training (0 skips; default 20)")
    r.add_argument("--train-size", type=positive_int, default=None,
                   help="train on a seeded random subset of this many images (quick tries)")
    r.add_argument("--test-size", type=positive_int, default=None,
                   help="evaluate on a seeded random subset of this many test images")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    # options of networks with their own runner, each in a group of its own
    p.net_options = {}
    for net in NETWORKS.values():
        if net.runner:
            before = len(r._actions)
            net.runner_module.add_arguments(r.add_argument_group(f"{net.name} only"))
            p.net_options[net.name] = [a for a in r._actions[before:]]
    p.run_parser = r

    c = sub.add_parser("parity", help="step parity only, with a per-step table")
    common(c, "default float64")
    c.add_argument("--steps", type=positive_int, default=50, help="training steps to compare (default 50)")
    variants = sorted({v for net in NETWORKS.values() for v in net.variants})
    c.add_argument("--variant", choices=variants, default=None,
                   help="the reading of the document to check, for a network that has several "
                        "(linear10: correct, as-documented; default: the first)")

    b = sub.add_parser("bench", help="time full-MNIST epochs of both sides, alternating")
    b.add_argument("nets", nargs="*", type=network_name, metavar="NET", help="default: all networks")
    b.add_argument("--dtype", choices=DTYPES, default="float32")
    b.add_argument("--repeats", type=positive_int, default=3, help="epochs per side, alternating (default 3)")
    b.add_argument("--data-dir", default=None)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = "nnparity " + " ".join(shlex.quote(a) for a in argv)
    problem = _option_problem(parser, args)
    if problem:
        (parser.run_parser if args.cmd == "run" else parser).error(problem)
    try:
        return _dispatch(args)
    except (DataError, UnknownNetwork, OSError) as e:
        print(f"nnparity {args.cmd}: error: {e}", file=sys.stderr)
        return 2


def _flag(action) -> str:
    return action.option_strings[-1] if action.option_strings else action.dest


def _option_problem(parser, args) -> str | None:
    """A network-specific option used with another network, a generic option that does
    not apply to the network, or a bad combination: one line naming it, else None."""
    from .runners import UsageError

    net = NETWORKS.get(getattr(args, "net", None))
    if args.cmd == "parity" and args.variant and net and args.variant not in net.variants:
        return (f"{net.name} has no variant {args.variant!r}" +
                (f"; its variants: {', '.join(net.variants)}" if net.variants else "; it has a single reading"))
    if args.cmd == "bench":
        other = [n for n in args.nets if not NETWORKS[n].mnist]
        if other:
            return f"{other[0]} does not train on MNIST and has nothing to benchmark; bench the MNIST networks"
    if args.cmd != "run":
        return None
    for owner, actions in parser.net_options.items():
        for a in actions:
            if owner != net.name and getattr(args, a.dest) != a.default:
                return f"{_flag(a)} is an option of {owner} only, not of {net.name}"
    runner = net.runner_module
    for dest, why in getattr(runner, "UNSUPPORTED", {}).items():
        if getattr(args, dest) != parser.run_parser.get_default(dest):
            flag = next(_flag(a) for a in parser.run_parser._actions if a.dest == dest)
            return f"{flag} does not apply to {net.name}: {why}"
    if runner is not None and hasattr(runner, "check_arguments"):
        try:
            runner.check_arguments(args)
        except UsageError as e:
            return str(e)
    return None


def _dispatch(args) -> int:
    if args.cmd == "list":
        for net in NETWORKS.values():
            print(f"{net.name:10s} {net.summary}\n{'':10s} {net.recipe.summary()}")
        return 0
    if args.cmd == "run" and NETWORKS[args.net].runner:
        return NETWORKS[args.net].runner_module.run(args)
    if args.cmd == "run":
        from .run import run_network

        return run_network(args.net, epochs=args.epochs, seed=args.seed, dtype=args.dtype, out=args.out,
                           data_dir=args.data_dir, parity_steps=args.parity_steps,
                           progress=False if args.no_progress else None, command=args.command_line,
                           train_size=args.train_size, test_size=args.test_size)
    if args.cmd == "parity":
        from .networks import run_parity
        from .data import load_mnist

        net = NETWORKS[args.net]
        recipe = net.recipe.replace(variant=args.variant)
        trace = run_parity(args.net, args.steps, args.dtype or "float64", args.seed,
                           load_mnist(args.data_dir) if net.mnist else None, recipe=recipe)
        print(trace.table())
        print(trace.message())
        return 0 if trace.ok else 1
    if args.cmd == "bench":
        from .bench import bench

        nets = args.nets or [n for n, net in NETWORKS.items() if net.mnist]
        return bench(nets, dtype=args.dtype, repeats=args.repeats, data_dir=args.data_dir)
    raise AssertionError(args.cmd)


if __name__ == "__main__":
    sys.exit(main())
