"""``nnparity bench``: how fast each side is, measured so that it cannot flatter.

In ONE run, for each network and dtype, in a fresh child process (its peak memory is
its own), the same window of training steps (a full epoch by default, ``--steps N``
for fewer) is timed as:

* each side **alone with the whole machine** (every core: BLAS and torch threads = cores),
* each side **alone on one core** (one thread),
* each **run mode** of ``nnparity run``: both sides at once in two processes (its default,
  ``Training(concurrent=True)``), and the sides alternating batch by batch in one process
  (``--sequential``, ``Training(concurrent=False)``);

and NumPy's GEMM peak is measured on one thread and on every core, float32 and float64.
A *round* measures each of these once; rounds are interleaved (each round in a rotated
order, so no measurement always follows the same one) and the figure is the **minimum**
over the rounds: on a shared machine interference only ever adds time, so the fastest
round is the closest to what the code itself costs (every round is kept in the JSON).

Every ratio (scratch / torch, fraction of the GEMM peak, concurrent / alternating) is
taken between figures of the same run. The machine's load is read before, between the
networks and after (``os.getloadavg``), and where ``/proc/stat`` exists, the CPU time
other processes took during each network (busy CPU time minus the bench's own): a
reading above LOAD_PER_CORE per core marks the whole report "figures taken under load;
not a clean figure". The CPU model and the BLAS (``threadpoolctl``) are recorded.

Results: the terminal, ``runs/bench.md`` (``--out``) and the same figures as JSON beside
it (``runs/bench.json``), which ``nnparity results`` reads.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

from nnparity.core import io
from nnparity.core.signals import signals_deferred
from nnparity.core.threads import cores
from nnparity.training.networks import NETWORKS, first_batches, get, spec_of

STATISTIC = "minimum"   # of each figure over the rounds (see the module doc)
LOAD_PER_CORE = 0.5     # at or above this, anywhere in the run: "figures taken under load"
UNDER_LOAD = "figures taken under load; not a clean figure"
GEMM_N = 1536
WARMUP_STEPS = 3        # untimed steps before each timed window (allocations, thread pools)

# What one round measures, in this order (rotated by one each round); ``whole``: every core.
SIDE_CONFIGS = ("scratch_whole", "torch_whole", "scratch_one", "torch_one")
MODES = ("alternating", "concurrent")
LABELS = {"scratch_whole": "scratch alone, whole machine", "torch_whole": "torch alone, whole machine",
          "scratch_one": "scratch alone, one core", "torch_one": "torch alone, one core",
          "alternating": "alternating (nnparity run --sequential)",
          "concurrent": "both at once, two processes (nnparity run)"}

# The floors of issue 15, measured here (never in a timed test): (network, dtypes, figure, bound, reading).
FLOORS = (
    ("mlp1000", ("float32", "float64"), "ratio_whole", ("<=", 1.0), "scratch / torch alone, whole machine"),
    ("cnn18k", ("float32",), "ratio_whole", ("<=", 1.3), "scratch / torch alone, whole machine"),
    ("mlp16", ("float32", "float64"), "ratio_whole", ("<", 1.0), "scratch / torch alone, whole machine"),
    ("linear10", ("float32", "float64"), "ratio_whole", ("<", 1.0), "scratch / torch alone, whole machine"),
    ("mlp1000", ("float32", "float64"), "pct_peak_whole", (">=", 60.0), "scratch % of the GEMM peak, whole machine"),
    ("cnn18k", ("float32",), "scratch_one_ms", ("<=", 7.0), "scratch ms per step, one core"),
)
# Whole-run floors on the scratch side: (network, epochs, seconds) (the hardening issue:
# the mlp16 source document's author needed 20 minutes for 100 epochs).
RUN_FLOORS = [("mlp16", 100, 120.0)]
# The whole reproduction (``nnparity reproduce``, issue 15): under 30 minutes wall.
REPRODUCTION_FLOOR_S = 30 * 60.0


def concurrent_available() -> bool:
    """Whether both sides can run at once, one core each (``nnparity run`` alternates them on one core)."""
    return cores() >= 2


# --- the machine ------------------------------------------------------------------------------
def machine() -> dict:
    """CPU model, cores, libraries and the BLAS as threadpoolctl sees it."""
    import torch
    from threadpoolctl import threadpool_info

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    blas = [{k: p.get(k) for k in ("user_api", "internal_api", "version", "num_threads", "architecture",
                                   "threading_layer", "filepath")} for p in threadpool_info()]
    return {"cpu": cpu, "cores": cores(), "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "threadpools": blas}


def blas_name(m: dict) -> str:
    pools = [p for p in m["threadpools"] if p["user_api"] == "blas"]
    return ", ".join(f"{p['internal_api']} {p['version']}" + (f" ({p['architecture']})" if p.get("architecture") else "")
                     for p in pools) or "no BLAS found by threadpoolctl"


def _busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has been busy since boot (every process, and time the
    hypervisor stole from this guest), from ``/proc/stat``; None where there is none."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and of its descendants: those that have ended and been
    waited for (``RUSAGE_CHILDREN``) and those still alive (``_live_descendants_cpu_seconds``: a
    torch worker that serves one run after another lives until the last has ended; ``nnparity
    reproduce``'s runs are children whose torch workers are grandchildren). A child counted
    alive at one reading and waited for at the next is counted once in each."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime + _live_descendants_cpu_seconds()


def _live_descendants_cpu_seconds() -> float:
    """CPU seconds of this process's descendants still alive (children, their children, ...), and
    of the children each of them waited for, from ``/proc/PID/stat`` (utime, stime, cutime,
    cstime); 0 where there is none."""
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return 0.0
    children, cpu = {}, {}
    for entry in entries:
        try:  # bytes: a process name need not be ASCII, nor whole characters (cut at 15 bytes)
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        except (OSError, IndexError):
            continue  # ended meanwhile, or not readable
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        cpu[pid] = sum(int(v) for v in fields[11:15])
    total, todo = 0, list(children.get(os.getpid(), ()))
    while todo:
        pid = todo.pop()
        total += cpu[pid]
        todo += children.get(pid, ())
    return total / os.sysconf("SC_CLK_TCK")


class LoadWatch:
    """Readings of the machine's load over the run: ``os.getloadavg()`` at named moments
    (it counts the bench's own threads too), and, between two moments, the cores'
    worth of CPU that *other* processes used (``/proc/stat`` busy time minus the bench's
    own CPU time; not measured where there is no ``/proc/stat``)."""

    def __init__(self):
        self.readings, self.others, self.cores = [], [], cores()
        self._marks = {}

    def read(self, when: str) -> None:
        self.readings.append({"when": when, "loadavg": [round(v, 2) for v in os.getloadavg()]})

    def start(self, what: str) -> None:
        """Begin the window ``what`` (windows may overlap: ``nnparity reproduce``'s runs at once)."""
        self._marks[what] = (time.perf_counter(), _busy_cpu_seconds(), _own_cpu_seconds())

    def stop(self, what: str) -> None:
        t0, busy0, own0 = self._marks.pop(what)
        busy1, wall = _busy_cpu_seconds(), time.perf_counter() - t0
        if busy0 is not None and busy1 is not None and wall > 0:
            others = max(0.0, (busy1 - busy0) - (_own_cpu_seconds() - own0)) / wall
            self.others.append({"during": what, "cores": round(others, 2), "seconds": round(wall, 1)})

    def summary(self) -> dict:
        return judge_load(self.readings, self.others, self.cores)


def judge_load(readings: list, others: list, n_cores: int) -> dict:
    """The load record of a run and its verdict: under load when any 1-minute load average
    taken before the work started, or the other processes' CPU during any network, is
    LOAD_PER_CORE per core or more. (Readings taken after work began count the bench's own
    threads; where the other processes' CPU cannot be measured, those readings are judged
    as they are, which can only err towards the warning.)"""
    per_core = []
    for i, r in enumerate(readings):
        if i == 0 or not others:
            per_core.append((r["loadavg"][0] / n_cores, f"1-minute load {r['loadavg'][0]:.2f} {r['when']}"))
    per_core += [(o["cores"] / n_cores, f"other processes used {o['cores']:.2f} cores during {o['during']}")
                 for o in others]
    worst = max(per_core, default=(0.0, "no reading"))
    under = worst[0] >= LOAD_PER_CORE  # "~0.5": one busy core of two already halves a whole-machine figure
    return {"readings": readings, "others": others, "cores": n_cores, "threshold_per_core": LOAD_PER_CORE,
            "worst_per_core": round(worst[0], 2), "worst": worst[1], "under_load": under,
            "warning": f"{UNDER_LOAD} ({worst[1]}: {worst[0]:.2f} per core, at or above {LOAD_PER_CORE})" if under else None}


# --- what a round measures -------------------------------------------------------------------
def gemm_gflops(dtype, threads: int, n: int = GEMM_N, calls: int = 3) -> float:
    """Best GFLOP/s of an n x n NumPy matmul with ``threads`` BLAS threads."""
    from nnparity.core.threads import blas_threads

    rng = np.random.default_rng(0)
    a, b = rng.random((n, n)).astype(dtype), rng.random((n, n)).astype(dtype)
    with blas_threads(threads):
        a @ b  # warm-up
        best = min(_timed(lambda: a @ b) for _ in range(calls))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def train_flops_per_sample(model, x_one) -> float:
    """FLOPs of one training step per sample (2 per multiply-add), from the layers' own
    counts (``flops_per_sample()``, known after a forward pass)."""
    model.forward(x_one)
    return float(sum(m.flops_per_sample() for _, m in model.named_modules() if hasattr(m, "flops_per_sample")))


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB, since it started or since the last
    ``reset_peak_memory()``: ``VmHWM`` of ``/proc/self/status``, else (no /proc) the lifetime
    peak ``ru_maxrss``."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_memory() -> bool:
    """Start ``peak_rss_mib()`` afresh from this process's present size, so that each of several
    runs in one process (``nnparity reproduce``) reports the peak reached during it (what the
    process still holds from the runs before counts in it), not the largest peak of those
    before it (Linux 4.0 and later: 5 written to ``/proc/self/clear_refs``). False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _own_masks(ref):
    """The torch side drawing its own dropout masks (torch's generator), as a torch program
    alone would: timing only, never a parity run (``reference.layers.MaskedDropout``)."""
    for mod in ref.model.modules():
        if hasattr(mod, "draw_own_mask"):
            mod.draw_own_mask = True
    return ref


class _Window:
    """One network's timed window: its data and the measurements of a round."""

    def __init__(self, net, recipe, ds, dtype, seed, whole: int):
        self.net, self.recipe, self.ds, self.dtype, self.seed, self.whole = net, recipe, ds, dtype, seed, whole

    def alone(self, config: str) -> float:
        """Seconds of the window's steps of one side, stepping alone, from fresh weights."""
        from nnparity.training.networks import make_sides, side_threads, training_batches

        side_name, threads = config.split("_")
        scratch, ref = make_sides(self.net, self.recipe, self.dtype, self.seed)
        side = scratch if side_name == "scratch" else _own_masks(ref)
        with side_threads(self.whole if threads == "whole" else 1):
            for x, y in first_batches(self.ds, self.recipe, self.seed, WARMUP_STEPS):
                side.step(x, y)
            t0 = time.perf_counter()
            for x, y in training_batches(self.ds, self.recipe, self.seed, 1):
                side.step(x, y)
            return time.perf_counter() - t0

    def mode(self, mode: str) -> tuple[float, dict]:
        """Wall seconds of one ``Training.run_epoch`` over the window in a run mode of
        ``nnparity run`` (its own thread rule), and each side's own step seconds."""
        from nnparity.training.train import Training

        with Training(self.net, self.recipe, self.ds, self.dtype, self.seed,
                      concurrent=mode == "concurrent") as training:
            t0 = time.perf_counter()
            row = training.run_epoch(1, progress=False)
            wall = time.perf_counter() - t0
        return wall, {side: row[side]["seconds"] for side in ("scratch", "torch")}


def bench_network(name: str, dtype: str = "float32", repeats: int = 3, steps: int | None = None, seed: int = 0,
                  data_dir=None, recipe=None, gemm_n: int = GEMM_N, between=None) -> dict:
    """Every measurement of one network in ``dtype``, ``repeats`` interleaved rounds (see the
    module doc). ``steps``: the timed window's batches (default: one full epoch of
    ``recipe``, the network's own by default); ``recipe`` with ``train_size`` set times
    an epoch of that many images. ``gemm_n``: the GEMM peak's matrix size (smaller: a
    quicker, lower peak; for tests). ``between()``: called before each measurement, outside
    every timed interval (the bench's child stops there once its parent is gone, ``_serve``)."""
    from nnparity.core import data as mnist
    from nnparity.training.networks import apply_threads, make_sides, prepare

    net = get(name)
    apply_threads(net)  # torch's own default is recorded before anything here changes it
    recipe = recipe or net.recipe
    raw = mnist.load_mnist(data_dir)
    n_train = recipe.train_size or len(raw.train_labels)
    steps_per_epoch = math.ceil(n_train / recipe.batch_size)
    window = min(steps, steps_per_epoch) if steps else steps_per_epoch
    # the window's images (all of an epoch's, or the first ``window`` batches' worth), and a test set of
    # one batch: the run modes evaluate after the epoch, and evaluation is not what is timed here
    timed = recipe.replace(train_size=min(n_train, window * recipe.batch_size), test_size=recipe.batch_size)
    ds = prepare(net, timed, raw, dtype, seed)
    whole = cores()
    w = _Window(net, timed, ds, dtype, seed, whole)
    modes = MODES if concurrent_available() else MODES[:1]
    configs = SIDE_CONFIGS + modes + tuple(f"gemm_{d}_{t}" for d in ("float32", "float64") for t in ("whole", "one"))
    rounds = {c: [] for c in configs}
    mode_sides = {m: [] for m in modes}
    for r in range(repeats):
        for c in configs[r % len(configs):] + configs[:r % len(configs)]:
            if between:
                between()
            if c.startswith("gemm_"):
                _, d, t = c.split("_")
                rounds[c].append(gemm_gflops(d, whole if t == "whole" else 1, n=gemm_n))
            elif c in modes:
                wall, sides = w.mode(c)
                rounds[c].append(wall)
                mode_sides[c].append(sides)
            else:
                rounds[c].append(w.alone(c))
    smodel = make_sides(net, timed, dtype, seed)[0].model
    flops_step = train_flops_per_sample(smodel, ds.x_train[:1]) * timed.batch_size
    return summarize(net.name, dtype, timed.batch_size, window, steps_per_epoch, len(ds.y_train), flops_step,
                     rounds, mode_sides, whole) | {"peak_rss_mib": peak_rss_mib()}


def summarize(name, dtype, batch_size, window, steps_per_epoch, samples, flops_step, rounds, mode_sides,
              whole) -> dict:
    """The figures of one network from its rounds: the minimum of each time (the maximum of
    each GFLOP/s), per step and per full epoch, and the ratios between them."""
    best = {c: (max(v) if c.startswith("gemm_") else min(v)) for c, v in rounds.items()}
    ms = {c: 1000 * best[c] / window for c in best if not c.startswith("gemm_")}
    s_epoch = {c: ms[c] * steps_per_epoch / 1000 for c in ms}
    peak = {t: best[f"gemm_{dtype}_{t}"] for t in ("whole", "one")}
    gflops = {c: flops_step / (ms[c] / 1000) / 1e9 for c in SIDE_CONFIGS}
    row = {"net": name, "dtype": dtype, "batch_size": batch_size, "window_steps": window,
           "steps_per_epoch": steps_per_epoch, "samples": samples, "gflop_per_step": flops_step / 1e9,
           "whole_machine_threads": whole, "ms_per_step": ms, "s_per_epoch": s_epoch, "gflops": gflops,
           "gemm_gflops": {k[len("gemm_"):]: v for k, v in best.items() if k.startswith("gemm_")},
           "ratio_whole": ms["scratch_whole"] / ms["torch_whole"], "ratio_one": ms["scratch_one"] / ms["torch_one"],
           "pct_peak_whole": 100 * gflops["scratch_whole"] / peak["whole"],
           "pct_peak_one": 100 * gflops["scratch_one"] / peak["one"],
           "scratch_one_ms": ms["scratch_one"], "rounds": rounds,
           "mode_sides": {m: min(v, key=lambda s: s["scratch"] + s["torch"]) for m, v in mode_sides.items() if v}}
    if "concurrent" in ms:
        row["concurrent_vs_alternating"] = ms["concurrent"] / ms["alternating"]
    return row


class BenchError(RuntimeError):
    """A network's benchmark process failed or ended without a result: one line naming it."""


def _in_child(args) -> dict:
    """``bench_network(*args)`` in a fresh spawned process (its peak memory its own; not a
    daemon, so a concurrent run mode can start its own worker)."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()  # two-way: the child polls its end to learn that this process is gone (_serve)
    p = ctx.Process(target=_serve, args=(child, args))
    try:
        with signals_deferred():  # a signal is raised once the child has started, not half-way
            p.start()
        child.close()
        kind, value = parent.recv()
    except EOFError:
        kind, value = "error", f"the benchmark process of {args[0]} ended without a result (exit {p.exitcode})"
    except KeyboardInterrupt:  # the bench is stopped: its child holds nothing to save, and is not waited for
        if p.pid is not None:
            p.terminate()
        raise
    finally:
        if p.pid is not None:
            p.join()
    if kind == "error":
        raise BenchError(f"{args[0]} {args[1]}: {value}")
    return value


class _ParentGone(Exception):
    """The bench that started this child has ended: nobody is left to read its figures."""


def _check_parent(conn) -> None:
    """Raise ``_ParentGone`` once the bench's end of ``conn`` is closed. The parent never
    writes to it, so it turns readable only at EOF, which the kernel makes however the parent
    ends (a SIGKILL too) and which stays until it is read: one poll that does not wait and
    cannot miss it, the torch worker's way (it finds its pipe closed at its next message).
    ``os.getppid()`` would miss a parent killed while this child still imports (already the
    reaper's pid when first read), and ``parent_process().is_alive()`` rests on a pipe that
    multiprocessing's spawn happens to keep open in the parent."""
    if conn.poll():
        raise _ParentGone


def _serve(conn, args):
    try:
        answer = ("ok", bench_network(*args, between=lambda: _check_parent(conn)))
    except _ParentGone:
        answer = None  # nobody to answer: this child ends quietly, after the measurement it was taking
    except KeyboardInterrupt:
        answer = ("error", "interrupted")
    except Exception as e:  # reported by the parent in one line
        answer = ("error", f"{type(e).__name__}: {e}")
    try:
        if answer:
            conn.send(answer)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the parent ended during the last measurement: as above
    finally:
        conn.close()


# --- the command -----------------------------------------------------------------------------
def _output_file(out) -> Path:
    """``--out`` as a writable file path (its folder created), or ``io.OutputError``."""
    path = io.check_path_text(out, "runs/bench.md")
    if path.is_dir():
        raise io.OutputError(f"--out {path} is a folder: name the markdown file, e.g. {path / 'bench.md'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise io.OutputError(f"cannot create {path.parent}: {e.strerror or e}") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise io.OutputError(f"cannot write {path}: {path.parent} is not writable")
    return path


def json_path(md: Path) -> Path:
    """The JSON beside a bench markdown file: ``bench.md`` -> ``bench.json``."""
    return md.with_suffix(".json")


def bench(names, dtypes=("float32", "float64"), repeats=3, steps=None, data_dir=None, out="runs/bench.md",
          command="nnparity bench", gemm_n: int = GEMM_N) -> int:
    """``nnparity bench``: exit 0, or 1 when a floor is missed (the report names it)."""
    names = [n for n in names if getattr(get(n), "mnist", True)]
    path = _output_file(out)  # found unusable before any timing, not after
    watch = LoadWatch()
    watch.read("before")
    info = machine()
    conc = concurrent_available()
    print(f"{info['cpu']}, {info['cores']} cores; {blas_name(info)}; load before {watch.readings[0]['loadavg']}")
    if not conc:
        print("the concurrent run mode needs two cores and this process has one: not measured")
    rows = []
    for dtype in dtypes:
        for name in names:
            watch.start(f"{name} {dtype}")
            r = _in_child((spec_of(name), dtype, repeats, steps, 0, data_dir, None, gemm_n))
            watch.stop(f"{name} {dtype}")
            rows.append(r)
            print(row_line(r), flush=True)
            if (dtype, name) != (dtypes[-1], names[-1]):
                watch.read(f"after {name} {dtype}")
    watch.read("after")
    load = watch.summary()
    record = {"command": command, "machine": info, "statistic": STATISTIC, "repeats": repeats,
              "window": "one full epoch" if not steps else f"the first {steps} steps of an epoch (at most one epoch)",
              "concurrent": {"available": conc, **({} if conc else {
                  "why": "one core: nnparity run alternates the sides there"})},
              "load": load, "labels": LABELS, "json": json_path(path).name, "gemm_n": gemm_n, "rows": rows}
    record["floors"] = floors(rows)
    record["projections"] = epochs_projections([{"net": r["net"], "dtype": r["dtype"],
                                                 "scratch_s": r["s_per_epoch"]["scratch_whole"]} for r in rows])
    record["reproduction_bound"] = reproduction_bound(rows, info["cores"])
    if record["reproduction_bound"]:
        record["projections"].append(record["reproduction_bound"]["text"])
    for line in [f["text"] for f in record["floors"]] + record["projections"]:
        print(line)
    print(f"load: before {load['readings'][0]['loadavg']}, after {load['readings'][-1]['loadavg']}"
          + (f"; other processes' CPU: " + ", ".join(f"{o['cores']:.2f} cores during {o['during']}"
                                                      for o in load["others"]) if load["others"] else ""))
    if load["under_load"]:
        print(f"WARNING: {load['warning']}")
    io.write_json(json_path(path), record)
    io.write_text(path, markdown(record))
    print(f"written: {path} and {json_path(path)}")
    ok = all(f["ok"] for f in record["floors"]) and not any(p.endswith("MISSED)") for p in record["projections"])
    return 0 if ok else 1


def floors(rows) -> list[dict]:
    """Each floor of FLOORS that a measured row covers, met or missed."""
    out = []
    for name, dtypes, key, (op, bound), reading in FLOORS:
        for r in rows:
            if r["net"] == name and r["dtype"] in dtypes:
                v = r[key]
                ok = {"<=": v <= bound, "<": v < bound, ">=": v >= bound}[op]
                out.append({"net": name, "dtype": r["dtype"], "figure": key, "value": v, "op": op, "bound": bound,
                            "ok": ok, "text": f"{name} {r['dtype']}: {reading} {v:.3g} (floor {op} {bound:g}: "
                                              f"{'ok' if ok else 'MISSED'})"})
    return out


def epochs_projections(rows) -> list[str]:
    """Scratch seconds for a whole documented run, projected from the measured s/epoch."""
    lines = []
    for name, epochs, limit in RUN_FLOORS:
        for r in rows:
            if r["net"] == name:
                total = epochs * r["scratch_s"]
                lines.append(f"{name} {r['dtype']}: {epochs} epochs on the scratch side = {epochs} x "
                             f"{r['scratch_s']:.2f} s = {total:.0f} s (floor < {limit:.0f} s: "
                             f"{'ok' if total < limit else 'MISSED'})")
    return lines


def reproduction_bound(rows, n_cores: int) -> dict | None:
    """The least wall time ``nnparity reproduce`` can take on this machine: the documented runs'
    training steps at the one-core speeds measured here (each side of a run has a core of its
    own), as core-seconds shared out over every core, and never less than the slowest side of
    the longest run. Steps only: evaluation, parity checks, envelopes and start-up all add to it,
    and so does the memory traffic of two processes at once (the concurrent column). None when no
    documented run was measured in its documented dtype.

    Per run: epochs x seeds x (variants x scratch + torch) s/epoch, as ``nnparity run`` trains
    it: a sweep trains the torch side once per seed and the scratch side once per variant."""
    parts, missing = [], []
    for name, net in NETWORKS.items():
        if not (net.claim and net.mnist):
            continue
        dtype = net.recipe.dtype
        row = next((r for r in rows if r["net"] == name and r["dtype"] == dtype), None)
        if row is None:
            missing.append(f"{name} {dtype}")
            continue
        s = row["s_per_epoch"]
        seeds, variants = net.run_seeds, net.run_variants
        epochs = net.recipe.epochs * seeds  # of each side: the torch side once per seed, the scratch side per variant
        scratch, torch = epochs * variants * s["scratch_one"], epochs * s["torch_one"]
        times = f"{net.recipe.epochs}" + (f" x {seeds} seeds" if seeds > 1 else "")
        each = f"{variants} variants x {s['scratch_one']:.2f}" if variants > 1 else f"{s['scratch_one']:.2f}"
        parts.append({"net": name, "dtype": dtype, "scratch_core_s": scratch, "torch_core_s": torch,
                      "text": f"{name} {dtype} {times} x ({each} + {s['torch_one']:.2f} s) = {scratch + torch:.0f}"})
    if not parts:
        return None
    core_s = sum(p["scratch_core_s"] + p["torch_core_s"] for p in parts)
    longest = max(max(p["scratch_core_s"], p["torch_core_s"]) for p in parts)
    bound = max(core_s / n_cores, longest)
    ok = bound < REPRODUCTION_FLOOR_S and not missing
    verdict = ("ok" if ok else "MISSED") if not missing else f"not judged: {', '.join(missing)} not measured"
    text = ("the documented runs' training steps at the one-core s/epoch above: " + "; ".join(p["text"] for p in parts)
            + f"; {core_s:.0f} core-seconds in all, so on {n_cores} cores `nnparity reproduce` takes at least "
            f"{bound:.0f} s ({bound / 60:.1f} min) for its training steps alone "
            f"(floor < {REPRODUCTION_FLOOR_S / 60:.0f} min: {verdict})")
    return {"runs": parts, "missing": missing, "core_seconds": core_s, "cores": n_cores, "bound_s": bound,
            "ok": ok, "text": text}


def row_line(r: dict) -> str:
    s, ms = r["s_per_epoch"], r["ms_per_step"]
    conc = f"{s['concurrent']:.2f}" if "concurrent" in s else "n/a"
    return (f"{r['net']} {r['dtype']}: s/epoch alone whole machine {s['scratch_whole']:.2f} | {s['torch_whole']:.2f} "
            f"(ratio {r['ratio_whole']:.2f}), one core {s['scratch_one']:.2f} | {s['torch_one']:.2f} "
            f"(ratio {r['ratio_one']:.2f}); alternating {s['alternating']:.2f}, concurrent {conc}; "
            f"scratch {r['pct_peak_whole']:.0f}% / {r['pct_peak_one']:.0f}% of the GEMM peak; "
            f"{ms['scratch_whole']:.3g} | {ms['torch_whole']:.3g} ms/step; peak {r['peak_rss_mib']:.0f} MiB")


TABLE = (  # (header, cell of a row)
    ("net", lambda r: r["net"]),
    ("dtype", lambda r: r["dtype"]),
    ("batch", lambda r: str(r["batch_size"])),
    ("scratch s/epoch, whole machine", lambda r: f"{r['s_per_epoch']['scratch_whole']:.2f}"),
    ("torch s/epoch, whole machine", lambda r: f"{r['s_per_epoch']['torch_whole']:.2f}"),
    ("ratio", lambda r: f"{r['ratio_whole']:.2f}"),
    ("scratch s/epoch, one core", lambda r: f"{r['s_per_epoch']['scratch_one']:.2f}"),
    ("torch s/epoch, one core", lambda r: f"{r['s_per_epoch']['torch_one']:.2f}"),
    ("ratio, one core", lambda r: f"{r['ratio_one']:.2f}"),
    ("alternating s/epoch", lambda r: f"{r['s_per_epoch']['alternating']:.2f}"),
    ("concurrent s/epoch", lambda r: f"{r['s_per_epoch']['concurrent']:.2f}" if "concurrent" in r["s_per_epoch"]
     else "not available"),
    ("scratch % of GEMM peak, whole / one core", lambda r: f"{r['pct_peak_whole']:.0f}% / {r['pct_peak_one']:.0f}%"),
    ("scratch ms/step, whole / one core",
     lambda r: f"{r['ms_per_step']['scratch_whole']:.3g} / {r['ms_per_step']['scratch_one']:.3g}"),
    ("peak memory MiB", lambda r: f"{r['peak_rss_mib']:.0f}"),
)


def markdown(record: dict) -> str:
    """bench.md: where and under which load, then the table, the GEMM peaks and the floors."""
    m, load = record["machine"], record["load"]
    before, after = load["readings"][0]["loadavg"], load["readings"][-1]["loadavg"]
    lines = ["# Benchmarks: scratch (NumPy) vs PyTorch", ""]
    if load["under_load"]:
        lines += [f"**Warning: {load['warning']}.**", ""]
    lines += [f"Produced by `{record['command']}` on {m['cpu']} ({m['cores']} cores; {m['platform']}; "
              f"numpy {m['numpy']} with {blas_name(m)}, torch {m['torch']}).", "",
              f"Load (`os.getloadavg()`, 1/5/15 min): before {before}, after {after} (the readings after work began "
              "count the bench's own threads)"
              + (". Other processes' CPU while each network ran: "
                 + ", ".join(f"{o['cores']:.2f} cores during {o['during']}" for o in load["others"])
                 if load["others"] else "; the other processes' CPU could not be measured here (no /proc/stat)")
              + f". Judged against {load['threshold_per_core']} per core: "
              + ("**under load**." if load["under_load"] else f"clean (worst: {load['worst']})."), "",
              f"Each figure is the {record['statistic']} over {record['repeats']} interleaved rounds (interference "
              f"only adds time; every round is in `{record['json']}`) of "
              f"{record['window']}, timed as: each side alone with the whole machine "
              f"({record['rows'][0]['whole_machine_threads'] if record['rows'] else m['cores']} threads), each side "
              "alone on one core (1 thread), and the run modes of `nnparity run` (wall time of one epoch, steps "
              "of both sides, with one batch evaluated): the sides alternating batch by batch, and both at once "
              "in two processes"
              + ("." if record["concurrent"]["available"] else
                 f" (**not available**: {record['concurrent']['why']}; not measured).")
              + " s/epoch is ms/step times a full epoch's steps. Ratios are scratch / torch in the same run; "
                "alone, each side draws its own dropout masks.", "",
              "| " + " | ".join(h for h, _ in TABLE) + " |", "|" + "---|" * len(TABLE)]
    lines += ["| " + " | ".join(cell(r) for _, cell in TABLE) + " |" for r in record["rows"]]
    peaks = {}
    for r in record["rows"]:
        for k, v in r["gemm_gflops"].items():
            peaks[k] = max(peaks.get(k, 0.0), v)
    lines += ["", f"GEMM peak measured in this run (NumPy, {record['gemm_n']}x{record['gemm_n']} matmul, best of every round): "
              + ", ".join(f"{d} {peaks[f'{d}_one']:.0f} GFLOP/s on one thread, {peaks[f'{d}_whole']:.0f} on "
                          f"the whole machine" for d in ("float32", "float64") if f"{d}_one" in peaks)
              + "; each row's % of peak uses the peak of its own process and dtype. GFLOP/s counts the training "
                "step's multiply-adds (x2) from the layers' own shapes (`flops_per_sample()`).", ""]
    lines += [f"- {f['text']}" for f in record["floors"]] + [f"- {p}" for p in record["projections"]]
    return "\n".join(lines) + "\n"


__all__ = ["bench", "bench_network", "gemm_gflops", "judge_load", "NETWORKS"]
