"""The ``nnparity`` command.

    nnparity list                       the documented networks
    nnparity run NET [options]          step parity, then both sides trained side by side, then a report
                                        (a network's entry may declare options of its own, e.g.
                                        linear10's and toy221's: nnparity run --help)
    nnparity check NET [options]        step parity: a per-step table, the first divergence and its
                                        culprit (own or inherited error), then the battery on every
                                        layer kind NET uses (--no-battery: parity only); exit 1 on mismatch,
                                        4 if inconclusive (no mismatch, but gradients zero, or values
                                        overflowed, on both sides)
                                        (``nnparity parity`` is the same command under its old name)
    nnparity selftest [NET ...]         inject canonical derivation bugs; print the kill matrix
    nnparity bench [NET ...]            each side alone (whole machine, one core), the run modes, the GEMM
                                        peak and the load, in one run; runs/bench.md and .json
    nnparity gradcheck NET [options]    finite differences vs the scratch backward (no torch); exit 1 on failure
    nnparity results [options]          the README's results and bench tables from the committed reports;
                                        --check exits 1 where the README disagrees, --write rewrites them
    nnparity reproduce [options]        every documented run into one folder (default runs/reproduce), one
                                        progress display, then its results table and the total wall time

NET is a documented network's name or a network of your own: ``path/to/net.py[:ATTR]`` or
``module:attr`` (``networks.get``; README "Your own network").

Bad arguments exit with status 2 and one line naming the problem.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import textwrap

# Only the standard library at import time: the command's modules (NumPy, torch) are imported
# inside main(), so a Ctrl-C during start-up is the one line "interrupted", exit 130.

DTYPES = ("float32", "float64")
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for `yes | head` under `set -o pipefail`


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


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return v


def fd_step(text: str) -> float:
    """``gradcheck --eps``: a central-difference step float64 can resolve."""
    v = positive_float(text)
    if not 1e-10 <= v <= 0.1:
        raise argparse.ArgumentTypeError(
            f"must be between 1e-10 and 0.1, got {text}: central differences in float64 lose every digit to "
            "rounding below 1e-10 and measure curvature, not the gradient, above 0.1 (default 1e-5)")
    return v


PARSERS = {"positive_int": positive_int, "non_negative_int": non_negative_int, "positive_float": positive_float}


def network_name(text: str) -> str:
    """A documented network's name, or your own network's (``path/to/net.py``, ``module:attr``),
    loaded and registered under its name (``networks.get``); the name is what the command uses."""
    from nnparity.training.networks import UnknownNetwork, get

    try:
        return get(text).name
    except UnknownNetwork as e:  # NetworkSpecError included: one line, the problem and the fix
        raise argparse.ArgumentTypeError(str(e)) from None


def run_names(text: str) -> list:
    from nnparity.cli.reproduce import network_list

    return network_list(text)


def bug_name(text: str) -> str:
    from nnparity.selftest.bugs import catalogue

    names = [b.name for b in catalogue()]
    if text not in names:
        raise argparse.ArgumentTypeError(f"unknown bug {text!r}; known bugs: {', '.join(names)}")
    return text


def build_parser() -> argparse.ArgumentParser:
    from nnparity.training.drift import DEFAULT_STEPS as DEFAULT_ENVELOPE_STEPS
    from nnparity.training.networks import NETWORKS

    p = _Parser(prog="nnparity", description="Reference-parity verification of from-scratch NumPy networks "
                                             "against PyTorch.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser, metavar="COMMAND")
    net_help = (f"one of: {', '.join(NETWORKS)}; or your own network: path/to/net.py or module:attr "
                "(README: Your own network)")

    sub.add_parser("list", help="list the documented networks")

    def common(sp, default_dtype_help):
        sp.add_argument("net", type=network_name, metavar="NET", help=net_help)
        sp.add_argument("--seed", type=non_negative_int, default=0, help="seed for init, batches and masks (default 0)")
        sp.add_argument("--dtype", choices=DTYPES, default=None, help=default_dtype_help)
        sp.add_argument("--data-dir", default=None,
                        help="folder with the MNIST files (else $NNPARITY_DATA_DIR, else the shipped copy)")

    r = sub.add_parser("run", help="parity check, then train both sides and write a side-by-side report")
    common(r, "default: the recipe's documented-run dtype")
    flags = {"seed": "--seed", "dtype": "--dtype", "data_dir": "--data-dir"}

    def generic(flag, **kw):
        flags[flag.lstrip("-").replace("-", "_")] = flag
        r.add_argument(flag, **kw)

    several = [n.name for n in NETWORKS.values() if "lrs" in n.sweep]  # their entries sweep learning rates
    generic("--epochs", type=positive_int, default=None, help="default: the recipe's")
    generic("--lr", type=positive_float, nargs="+" if several else None, metavar="LR", default=None,
            help="learning rate (default: the recipe's)"
                 + (f"; {', '.join(several)} take{'s' * (len(several) == 1)} several, one run each" if several else ""))
    generic("--batch-size", type=positive_int, default=None, help="default: the recipe's")
    generic("--out", default="runs",
            help="the report goes to OUT/NET/ if the run completes, else to OUT/NET.incomplete/ "
                 "(default runs; the committed reports are made with --out reports)")
    generic("--parity-steps", type=non_negative_int, default=20,
            help="steps of step parity before training (0 skips; default 20)")
    generic("--train-size", type=positive_int, default=None,
            help="train on a seeded random subset of this many images (quick tries)")
    generic("--test-size", type=positive_int, default=None,
            help="evaluate on a seeded random subset of this many test images")
    generic("--save-every", type=positive_int, default=None, metavar="K",
            help="write OUT/NET/checkpoint.npz (both sides, atomically) every K epochs")
    generic("--resume", default=None, metavar="DIR",
            help="continue from the checkpoint in DIR (a report folder or a checkpoint.npz)")
    generic("--no-progress", action="store_true", help="no progress bar")
    generic("--sequential", action="store_true",
            help="alternate the two sides step by step in one process (the default on a machine with two cores "
                 "or more trains them at once, the torch side in a worker process, one core each; the numbers "
                 "are the same)")
    generic("--envelope-steps", type=non_negative_int, default=DEFAULT_ENVELOPE_STEPS,
            help="steps of the drift envelope measured before training, capped at the run's length "
                 f"(0 skips; default {DEFAULT_ENVELOPE_STEPS})")
    # the options of one network only, declared by its entry (``Network.run_options``), each in a group
    # named after the networks that declare it
    owners = {}
    for net in NETWORKS.values():
        for option in net.run_options():
            owners.setdefault(option.flag, (option, []))[1].append(net.name)
    p.net_options, groups = {}, {}
    for flag, (option, names) in owners.items():
        key = ", ".join(names)
        group = groups.get(key) or groups.setdefault(key, r.add_argument_group(f"{key} only"))
        kw = ({"action": "store_true"} if option.switch else
              {"type": PARSERS.get(option.type, option.type) if option.type else None, "choices": option.choices,
               "metavar": option.metavar})
        group.add_argument(flag, default=option.default, help=option.help,
                           **{k: v for k, v in kw.items() if v is not None})
        p.net_options[option.dest] = (option, names)
    p.run_parser, p.run_flags = r, flags

    c = sub.add_parser("check", aliases=["parity"],
                       help="step parity only: per-step table, first divergence, own or inherited error")
    common(c, "default float64")
    c.add_argument("--steps", type=positive_int, default=50, help="training steps to compare (default 50)")
    variants = sorted({v for net in NETWORKS.values() for v in net.variants})
    c.add_argument("--variant", choices=variants, default=None,
                   help="the reading of the document to check, for a network that has several "
                        "(linear10: correct, as-documented; default: the first)")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.add_argument("--inject", metavar="BUG", type=bug_name, default=None,
                   help="run with one of the selftest's canonical bugs patched in, to see how a slip is reported "
                        "(nnparity selftest lists them)")
    c.add_argument("--no-battery", action="store_true",
                   help="step parity only: leave out the battery on every layer kind the network uses")
    c.add_argument("--plot", metavar="DIR", default=None,
                   help="on a mismatch, write heatmaps (scratch, reference, scratch - reference) of the failing "
                        "tensors at the first failing step into DIR, as PNGs (made if its parent exists)")
    c.add_argument("--noise-floor", action="store_true",
                   help="measure the noise floor instead: scratch vs torch in float64 and float32, and torch "
                        "float32 vs float64, over --steps steps (both dtypes: --dtype is not used)")

    st = sub.add_parser("selftest", help="inject canonical derivation bugs and show which checks kill them")
    st.add_argument("nets", nargs="*", type=network_name, metavar="NET",
                    help="default: all documented networks; also path/to/net.py or module:attr")
    st.add_argument("--steps", type=positive_int, default=2,
                    help="parity steps per check (default 2: momentum bugs show at step 2)")
    st.add_argument("--batch-size", type=positive_int, default=16,
                    help="at most this many samples per batch (default 16; keeps it fast)")
    st.add_argument("--seed", type=non_negative_int, default=0)
    st.add_argument("--dtype", choices=DTYPES, default="float64",
                    help="default float64, where the floors are set; float32 shows what its tolerance still sees")
    st.add_argument("--json", action="store_true", help="print the kill matrix as JSON")
    st.add_argument("--data-dir", default=None)
    st.add_argument("--no-progress", action="store_true", help="no progress bar")

    g = sub.add_parser("gradcheck", help="central finite differences (float64) against the scratch backward, "
                                         "on every parameter tensor and the input; no torch involved")
    g.add_argument("net", type=network_name, metavar="NET", help=net_help)
    g.add_argument("--samples", type=positive_int, default=10, help="coordinates per tensor (default 10)")
    g.add_argument("--eps", type=fd_step, default=1e-5, help="finite-difference step h (default 1e-5)")
    g.add_argument("--seed", type=non_negative_int, default=0, help="seed for init, batch and sample (default 0)")
    g.add_argument("--batch-size", type=positive_int, default=None,
                   help="check on the first B images of the batch (default: the recipe's whole batch)")
    g.add_argument("--burn-in", type=non_negative_int, default=0,
                   help="SGD steps of the recipe before the check (default 0: at initialisation)")
    g.add_argument("--json", action="store_true", help="print the full result as JSON")
    g.add_argument("--data-dir", default=None)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")

    b = sub.add_parser("bench", help="each side alone (whole machine, one core), the run modes and the GEMM "
                                     "peak, in one run, with the machine's load")
    b.add_argument("nets", nargs="*", type=network_name, metavar="NET",
                    help="default: all documented MNIST networks; also path/to/net.py or module:attr")
    b.add_argument("--dtype", choices=DTYPES, nargs="+", default=list(DTYPES), help="default: both")
    b.add_argument("--repeats", type=positive_int, default=3,
                   help="interleaved rounds of every measurement; the minimum counts (default 3)")
    b.add_argument("--steps", type=positive_int, default=None,
                   help="time the first N steps of an epoch instead of a whole epoch (s/epoch is extrapolated)")
    b.add_argument("--out", default="runs/bench.md",
                   help="markdown report, with its figures as JSON beside it (default runs/bench.md and "
                        "runs/bench.json; the committed one: --out reports/bench.md)")
    b.add_argument("--data-dir", default=None)

    rp = sub.add_parser("reproduce", help="every documented run into one folder, with one progress display, "
                                          "then the folder's results table and the total wall time")
    rp.add_argument("--out", default="runs/reproduce",
                    help="OUT/NET/ for each run, OUT/logs/NET.log, OUT/reproduce.md and .json (default runs/reproduce)")
    rp.add_argument("--only", type=run_names, default=None, metavar="NET,...",
                    help="these documented runs only, comma-separated (default: all of them)")
    rp.add_argument("--epochs", type=positive_int, default=None,
                    help="a smoke run: every run trains N epochs (toy221: N steps); the table says so")
    rp.add_argument("--train-size", type=positive_int, default=None,
                    help="a smoke run: every MNIST run trains on a seeded subset of N images")
    rp.add_argument("--test-size", type=positive_int, default=None,
                    help="a smoke run: every MNIST run evaluates on a seeded subset of N test images")
    rp.add_argument("--data-dir", default=None,
                    help="folder with the MNIST files (else $NNPARITY_DATA_DIR, else the shipped copy)")
    rp.add_argument("--jobs", type=positive_int, default=None, metavar="N",
                    help="N runs at a time, each in processes of its own (default one per two cores: a run uses two; "
                         "1 gives each run's times without another run beside it)")
    rp.add_argument("--no-progress", action="store_true", help="no progress display")

    res = sub.add_parser("results", help="the README's results table and bench summary, from the committed reports")
    res.add_argument("--reports", default="reports", metavar="DIR",
                     help="the reports folder: DIR/NET/metrics.json and DIR/bench.md (default reports)")
    mode = res.add_mutually_exclusive_group()
    mode.add_argument("--check", nargs="?", const="README.md", default=None, metavar="README",
                      help="compare the tables between README's markers (default README.md) with the reports; "
                           "exit 1 naming the first cell that differs")
    mode.add_argument("--write", default=None, metavar="README",
                      help="rewrite the tables between README's markers from the reports")
    return p


def main(argv=None) -> int:
    from nnparity.core.signals import catch_interrupts, raised_count, raised_signal

    restore_signals = catch_interrupts()  # SIGINT and SIGTERM: one line and exit 130, from here on
    signals_before = raised_count()  # those of an earlier command in this process are not this one's
    try:
        status = _main(argv)
        sys.stdout.flush()  # inside the try: a reader that has gone shows here, not at interpreter exit
        return status
    except BrokenPipeError:
        return _stdout_gone()
    except KeyboardInterrupt:  # during start-up (imports) or argument parsing
        print("nnparity: interrupted", file=sys.stderr)
        return 130
    except Exception:
        if raised_signal(since=signals_before) is None:
            raise
        print("nnparity: interrupted", file=sys.stderr)  # the interrupt, turned into another error by C code
        return 130
    finally:
        restore_signals()


def _stdout_gone() -> int:
    """The reader of stdout closed it early (``nnparity check NET --json | head``): stop
    quietly, as ``cat`` or ``yes`` killed by SIGPIPE do, with their status 141.

    The recipe of the Python docs' "Note on SIGPIPE": stdout is pointed at devnull, so
    that the interpreter's final flush of the unwritable buffer raises nothing more.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout has no file descriptor (e.g. replaced in a test)
        pass
    return EXIT_BROKEN_PIPE


def _main(argv=None) -> int:
    from nnparity.training.checkpoint import CheckpointError
    from nnparity.core.data import DataError
    from nnparity.training.networks import UnknownNetwork

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = "nnparity " + " ".join(shlex.quote(a) for a in argv)
    problem = _option_problem(parser, args)
    if problem:
        (parser.run_parser if args.cmd == "run" else parser).error(problem)
    try:
        return _dispatch(args)
    except BrokenPipeError:  # an OSError, but not an error of the command: main() ends quietly
        raise
    except (DataError, UnknownNetwork, CheckpointError, OSError) as e:
        print(f"nnparity {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nnparity {args.cmd}: interrupted", file=sys.stderr)
        return 130


def _option_problem(parser, args) -> str | None:
    """A network-specific option used with another network, a generic option that does
    not apply to the network, or a bad combination: one line naming it, else None."""
    from nnparity.training.networks import get

    net = get(args.net) if getattr(args, "net", None) else None
    if args.cmd in ("check", "parity") and args.variant and net and args.variant not in net.variants:
        return (f"{net.name} has no variant {args.variant!r}" +
                (f"; its variants: {', '.join(net.variants)}" if net.variants else "; it has a single reading"))
    if args.cmd == "bench":
        other = [n for n in args.nets if not get(n).mnist]
        if other:
            return f"{other[0]} does not train on MNIST and has nothing to benchmark; bench the MNIST networks"
    if args.cmd != "run":
        return None
    for dest, (option, owners) in parser.net_options.items():
        if net.name not in owners and getattr(args, dest) != option.default:
            return f"{option.flag} is an option of {', '.join(owners)} only, not of {net.name}"
    import numpy as np

    dtype = args.dtype or net.recipe.dtype
    f32max = float(np.finfo(np.float32).max)
    lrs = args.lr if isinstance(args.lr, list) else [args.lr] if args.lr else []
    if dtype == "float32" and lrs and max(lrs) > f32max:  # torch's float32 SGD cannot take it
        return (f"--lr {max(lrs):g} is larger than a float32 run can hold ({f32max:.4g}); "
                "use a smaller --lr or --dtype float64")
    if len(lrs) > 1 and "lrs" not in net.sweep:
        return f"--lr takes one learning rate for {net.name}, got {len(lrs)}"
    for dest, why in net.unsupported:
        if getattr(args, dest) != parser.run_parser.get_default(dest):
            return f"{parser.run_flags[dest]} does not apply to {net.name}: {why}"
    for option in net.run_options():
        if option.requires and getattr(args, option.dest) != option.default \
                and getattr(args, option.requires[0]) is None:
            return option.requires[1]
    return None


def _dispatch(args) -> int:
    from nnparity.training.networks import NETWORKS, get

    if args.cmd == "results":
        from nnparity.reporting import results

        try:
            return results.command(args.reports, check=args.check, write=args.write,
                                   err=lambda line: print(line, file=sys.stderr))
        except results.ResultsError as e:
            print(f"nnparity results: error: {e}", file=sys.stderr)
            return 2
    if args.cmd == "reproduce":
        from nnparity.cli.reproduce import reproduce

        return reproduce(out=args.out, only=args.only, epochs=args.epochs, train_size=args.train_size,
                         test_size=args.test_size, data_dir=args.data_dir,
                         progress=False if args.no_progress else None, command=args.command_line,
                         jobs=args.jobs)
    if args.cmd == "list":
        for net in NETWORKS.values():
            print(f"{net.name:10s} {net.summary}\n{'':10s} {net.recipe.summary()}")
        return 0
    if args.cmd == "run":
        from nnparity.cli.run import run_network

        options = {o.dest: getattr(args, o.dest) for o in get(args.net).run_options()}
        return run_network(args.net, epochs=args.epochs, lr=args.lr, options=options,
                           batch_size=args.batch_size, seed=args.seed, dtype=args.dtype, out=args.out,
                           data_dir=args.data_dir, parity_steps=args.parity_steps,
                           progress=False if args.no_progress else None, command=args.command_line,
                           train_size=args.train_size, test_size=args.test_size,
                           save_every=args.save_every, resume=args.resume,
                           envelope_steps=args.envelope_steps, sequential=args.sequential)
    if args.cmd in ("check", "parity"):
        from nnparity.diagnosis import check

        if args.noise_floor and args.inject:
            print(f"nnparity {args.cmd}: error: --inject and --noise-floor do not go together: the noise floor "
                  "is measured on the correct code", file=sys.stderr)
            return 2
        net = get(args.net)
        if args.plot is not None and args.noise_floor:
            print(f"nnparity {args.cmd}: error: --plot draws a failing check; --noise-floor measures instead",
                  file=sys.stderr)
            return 2
        if args.plot is not None:
            from nnparity.reporting.heatmap import check_folder
            from nnparity.training.adapters import ArgumentError

            try:
                check_folder(args.plot)
            except ArgumentError as e:
                print(f"nnparity {args.cmd}: error: {e}", file=sys.stderr)
                return 2
        if args.noise_floor and not net.mnist:
            print(f"nnparity {args.cmd}: error: --noise-floor measures MNIST networks; {args.net} is not one",
                  file=sys.stderr)
            return 2
        raw = net.data.load(args.data_dir)
        recipe = net.recipe.replace(variant=args.variant)
        if args.noise_floor:
            nf = check.noise_floor(args.net, args.steps, args.seed, raw)
            print(check.noise_floor_json(nf) if args.json else check.render_noise_floor(nf))
            return 0 if check.noise_floor_ok(nf) else 1
        from contextlib import nullcontext

        from nnparity.selftest.bugs import get_bug

        bug = get_bug(args.inject) if args.inject else None
        with bug.applied() if bug else nullcontext():
            result = check.run_check(args.net, args.steps, args.dtype or "float64", args.seed, raw, recipe=recipe,
                                     battery=not args.no_battery)
        result.injected = bug
        if args.plot is not None and result.diagnosis is not None:
            from nnparity.reporting.heatmap import draw_divergence

            result.plots = draw_divergence(args.plot, result.diagnosis, result.trace.net, result.trace.dtype)
        print(result.to_json() if args.json else result.render())
        return result.exit_status  # 1 only on a real mismatch; 4 when inconclusive (degenerate)
    if args.cmd == "selftest":
        from nnparity.selftest import kill_matrix as selftest
        from nnparity.core.data import load_mnist

        report = selftest.run_selftest(args.nets or list(NETWORKS), steps=args.steps, batch_size=args.batch_size,
                                       seed=args.seed, raw=load_mnist(args.data_dir), dtype=args.dtype,
                                       progress=False if args.no_progress else None)
        print(report.to_json() if args.json else report.render())
        return 0 if report.ok else 1
    if args.cmd == "gradcheck":
        from nnparity.diagnosis.gradcheck import GradcheckError, gradcheck_network

        try:
            result = gradcheck_network(args.net, samples=args.samples, eps=args.eps, seed=args.seed,
                                       batch_size=args.batch_size, burn_in=args.burn_in,
                                       raw=get(args.net).data.load(args.data_dir),
                                       progress=False if args.no_progress else None)
        except GradcheckError as e:  # the check could not run (e.g. a mask that cannot be held fixed)
            print(f"nnparity gradcheck: error: {e}", file=sys.stderr)
            return 1
        if args.json:
            print(result.to_json())
        else:
            print(result.header())
            print("\n".join(textwrap.fill(note, 100, subsequent_indent="  ") for note in result.notes))
            print(result.table())
            print()
            print(result.legend())
            print()
            print("\n".join(textwrap.fill(line, 100, subsequent_indent="  ")
                            for line in result.message().splitlines()))
        return 0 if result.ok else 1
    if args.cmd == "bench":
        from nnparity.reporting.bench import BenchError, bench

        try:
            return bench(args.nets or [n for n, net in NETWORKS.items() if net.mnist], dtypes=args.dtype,
                         repeats=args.repeats, steps=args.steps, data_dir=args.data_dir,
                         out=args.out, command=args.command_line)
        except BenchError as e:
            print(f"nnparity bench: error: {e}", file=sys.stderr)
            return 2
    raise AssertionError(args.cmd)


if __name__ == "__main__":
    sys.exit(main())
