"""Calibrate a device for qtf-edge: what `python3 run.py BUNDLE --calibrate my-device.yaml
--calibrate-base rpi4` runs.

--calibrate measures this device and writes a hardware profile that `qtf-edge profile
BUNDLE --target FILE` predicts with: peak FLOP/s (numpy sgemm on every CPU), memory
bandwidth (a numpy copy), the bundle's decode efficiency against this device's own
roofline, and idle and active power where RAPL counters are readable. Every figure it
does not measure comes from the shipped profile named as its `base` (profiles/README.md).

This file travels beside run.py in every bundle, as byte_bpe.py does, and like run.py
needs only the standard library and numpy (never torch or qtf_edge). It is not imported
on its own: run.py's `calibration()` loads it from run.py's folder, only for --calibrate,
and sets `run` in it, the runner module, before it runs. So the decode is timed by the
runner's own Generator and bench, energy read by its RAPL functions, and a bad manifest
raises its BundleError, rather than by copies of them here.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

run = globals().get("run")  # the runner module (run.py): set by run.py's calibration()
if run is None:
    raise ImportError("calibrate.py is loaded by run.py (its calibration()), which gives it "
                      "the runner; it cannot be imported on its own")

COPY_MIB = 128          # each of the copy's two buffers: many times the largest of these caches
SGEMM_SIZE = 2048       # 17 GFLOP a product: seconds on a Raspberry Pi 4, not minutes
CALIBRATION_REPEATS = 5  # best of, for the copy and the sgemm
IDLE_SECONDS = 2.0      # of sleep, for idle power (only where RAPL is readable)
CALIBRATION_PROMPT = "The castle was built on a hill above the river, and its walls"
# BLAS libraries read their thread count from these when numpy loads them.
BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                         "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
# Runs a function of this file in a fresh interpreter: argv = the runner's file (run.py,
# whose calibration() loads this file from beside it), the function's name, its arguments
# as a JSON list; prints its result as JSON. No bytecode is written, so the bundle folder
# stays as it was shipped.
_CALL_IN_CHILD = ("import importlib.util, json, sys\n"
                  "sys.dont_write_bytecode = True\n"
                  "spec = importlib.util.spec_from_file_location('qtf_edge_runner', sys.argv[1])\n"
                  "runner = importlib.util.module_from_spec(spec)\n"
                  "sys.modules[spec.name] = runner\n"  # where calibration() finds the runner
                  "spec.loader.exec_module(runner)\n"
                  "print(json.dumps(getattr(runner.calibration(), sys.argv[2])"
                  "(*json.loads(sys.argv[3]))))\n")


def usable_cpus():
    """CPUs this process may run on (its affinity where the system tells it, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _best_seconds(work, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def copy_bandwidth(mib=COPY_MIB, repeats=CALIBRATION_REPEATS):
    """Bytes read plus bytes written per second by numpy copying a `mib` MiB float32 buffer
    into another (one thread), best of `repeats`. A cache's write-allocate reads of the
    target are not counted, so the DRAM's own traffic is up to 1.5 x this."""
    source = np.ones(mib * 2**20 // 4, dtype=np.float32)
    target = np.empty_like(source)
    np.copyto(target, source)  # untimed: the first touch of the target's pages maps them
    return 2 * source.nbytes / _best_seconds(lambda: np.copyto(target, source), repeats)


def sgemm_flops(size=SGEMM_SIZE, repeats=CALIBRATION_REPEATS, rapl_root=run.RAPL_ROOT):
    """numpy float32 (size x size) @ (size x size) on this process's BLAS threads, `repeats`
    times after a warm-up: {"flops_per_s": 2 size^3 / the best time, "seconds" of all
    repeats, "joules": RAPL energy over them (None where unreadable)}."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    out = np.empty((size, size), dtype=np.float32)
    np.matmul(a, b, out=out)  # warm-up: the BLAS threads start, the pages are mapped
    times = []

    def products():
        for _ in range(repeats):
            start = time.perf_counter()
            np.matmul(a, b, out=out)
            times.append(time.perf_counter() - start)

    joules, seconds = run.rapl_energy(products, rapl_root)
    return {"flops_per_s": 2 * size**3 / min(times), "seconds": seconds, "joules": joules}


def sgemm_flops_on_threads(threads, size=SGEMM_SIZE, repeats=CALIBRATION_REPEATS,
                           rapl_root=run.RAPL_ROOT):
    """sgemm_flops in a fresh interpreter whose BLAS runs `threads` threads. A BLAS takes
    its thread count from the environment once, when numpy loads it, so this process
    (numpy loaded) cannot choose its own; the child's count is known, not guessed."""
    env = dict(os.environ, **{name: str(threads) for name in BLAS_THREAD_VARIABLES})
    done = subprocess.run([sys.executable, "-c", _CALL_IN_CHILD, os.path.abspath(run.__file__),
                           "sgemm_flops", json.dumps([size, repeats, str(rapl_root)])],
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise RuntimeError(f"the sgemm measurement failed in its child process: {last[:200]}")
    return {**json.loads(done.stdout), "threads": threads}


def decode_workload(manifest):
    """The manifest's decode_workload, its parts as {part: (FLOPs, bytes)}; None for a
    bundle exported before qtf-edge wrote it. BundleError for a malformed one."""
    entry = manifest.get("decode_workload")
    if entry is None:
        return None
    try:
        parts = {str(part): (float(cost["flops"]), float(cost["bytes"]))
                 for part, cost in entry["parts"].items()}
        lengths = {key: int(entry[key]) for key in ("context", "prompt_tokens", "new_tokens")}
    except (AttributeError, KeyError, TypeError, ValueError):
        raise run._fail(run.MANIFEST, "decode_workload must be {context, prompt_tokens, "
                                      "new_tokens, parts: {part: {flops, bytes}}}") from None
    if not parts or lengths["prompt_tokens"] < 1 or lengths["new_tokens"] < 2:
        raise run._fail(run.MANIFEST, f"decode_workload needs parts, prompt_tokens >= 1 and "
                                      f"new_tokens >= 2, got {lengths}")
    return {**lengths, "parts": parts}


def roofline_ms(parts, peak_flops, bandwidth):
    """Sum over parts of max(FLOPs / peak, bytes / bandwidth), in ms: the bound each part's
    work cannot beat, parts running one after another. qtf_edge's
    cost.energy.EnergyEstimator computes it on the host (a test checks they agree); it is
    restated here because a device has no qtf_edge."""
    return 1e3 * sum(max(flops / peak_flops, moved / bandwidth)
                     for flops, moved in parts.values())


def _repeated_ids(tokenizer, text, length):
    """`length` token ids: the text's ids, repeated as often as needed. The graphs' time
    does not depend on which tokens they read, only on how many."""
    ids = tokenizer.encode(text).ids
    if not ids:
        raise ValueError("the prompt encodes to no tokens; expected text")
    return [ids[i % len(ids)] for i in range(length)]


def measure_decode(folder, workload, tokenizer, prompt, threads, runs, peak_flops, cpus,
                   bandwidth, rapl_root=run.RAPL_ROOT):
    """The float ONNX decode step's efficiency on this device: its roofline (the manifest's
    workload at `threads` of the `cpus` that reached `peak_flops`, and `bandwidth`) over
    its measured median ms per token. The generations are the manifest's query: its
    prompt_tokens of `prompt`, then new_tokens, so the mean decode step sees the context
    the workload was counted at. {"reason"} where onnxruntime or the graph is missing."""
    try:
        generator = run.Generator(folder, threads=threads, runtime="onnxruntime", verify=False)
    except (ValueError, RuntimeError) as e:
        return {"reason": f"the float ONNX decode graph cannot run here ({run._one_line(e)})"}
    ids = _repeated_ids(tokenizer, prompt, workload["prompt_tokens"])
    result = run.bench(generator, ids, workload["new_tokens"], runs, rapl_root)
    decode = result["decode_ms_per_token"]
    # The share of the peak that qtf-edge profile's per_threads gives `threads` threads, so
    # the efficiency is taken against the bound a prediction divides by it.
    bound = roofline_ms(workload["parts"], peak_flops * min(threads, cpus) / cpus, bandwidth)
    return {"decode_ms": decode["median"], "steps": decode["n"], "roofline_ms": bound,
            "efficiency": bound / decode["median"], "threads": threads, "runs": runs,
            "context": workload["context"],
            "onnxruntime": run._import_runtime("onnxruntime").__version__}


def calibrate(folder, manifest, tokenizer, prompt=CALIBRATION_PROMPT,
              threads=run.CALIBRATION_THREADS, runs=run.CALIBRATION_RUNS,
              rapl_root=run.RAPL_ROOT, copy_mib=COPY_MIB, sgemm_size=SGEMM_SIZE,
              repeats=CALIBRATION_REPEATS, idle_seconds=IDLE_SECONDS,
              progress=lambda line: None):
    """Measure this device (see this file's docstring); returns the measurements, each
    with what it was measured with. The sizes are parameters so a test can be quick."""
    workload = decode_workload(manifest)  # a malformed one fails before any measuring
    cpus = usable_cpus()
    progress(f"memory bandwidth: numpy copy of {copy_mib} MiB, best of {repeats}")
    measured = {"cpus": cpus, "repeats": repeats, "copy_mib": copy_mib,
                "bandwidth": copy_bandwidth(copy_mib, repeats), "sgemm_size": sgemm_size,
                "numpy": np.__version__, "rapl_root": str(rapl_root)}
    progress(f"peak FLOP/s: numpy sgemm {sgemm_size}x{sgemm_size} on {cpus} threads, "
             f"best of {repeats}")
    measured["sgemm"] = sgemm_flops_on_threads(cpus, sgemm_size, repeats, rapl_root)
    measured["idle"] = {"joules": None, "seconds": 0.0}
    if run.read_rapl(rapl_root):
        progress(f"idle power: RAPL over {idle_seconds:g} s of sleep")
        joules, seconds = run.rapl_energy(lambda: time.sleep(idle_seconds), rapl_root)
        measured["idle"] = {"joules": joules, "seconds": seconds}
    if workload is None:
        measured["decode"] = {"reason": "the bundle's manifest has no decode_workload (it "
                                        "was exported by an older qtf-edge; export it again)"}
    else:
        progress(f"decode efficiency: {runs} generations of the float ONNX graphs, "
                 f"{threads} thread(s)")
        measured["decode"] = measure_decode(folder, workload, tokenizer, prompt, threads,
                                            runs, measured["sgemm"]["flops_per_s"], cpus,
                                            measured["bandwidth"], rapl_root)
    return measured


def _powers(measured):
    """(idle W, active W) from the RAPL readings, or a reason they are left out."""
    sgemm, idle = measured["sgemm"], measured["idle"]
    if sgemm["joules"] is None or idle["joules"] is None:
        return f"no readable RAPL counters under {measured['rapl_root']}"
    idle_w, active_w = idle["joules"] / idle["seconds"], sgemm["joules"] / sgemm["seconds"]
    if not 0 < idle_w <= active_w:
        return f"RAPL readings not usable as powers (idle {idle_w:.3g} W, active {active_w:.3g} W)"
    return idle_w, active_w


def _yaml_number(value):
    # YAML 1.1 (PyYAML) reads a float only with a dot and a signed exponent: 1.5e+10
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6e}"


def _yaml_figures(figures):
    lines = []
    for name, (value, unit, source) in figures.items():
        lines += [f"  {name}:", f"    value: {_yaml_number(value)}",
                  f"    unit: {json.dumps(unit)}",  # a JSON string is a YAML double-quoted one
                  f"    source: {json.dumps(run._one_line(source))}"]
    return lines


def calibrated_profile(measured, manifest, name, base, command, host, date):
    """The YAML text of the profile (profiles/README.md's schema with `base`), and the
    reasons for what it leaves out."""
    at = f"measured: {command} on {host}, {date}"
    sgemm, cpus, repeats = measured["sgemm"], measured["cpus"], measured["repeats"]
    n = measured["sgemm_size"]
    figures = {
        "peak_flops": (sgemm["flops_per_s"], "FLOP/s",
                       f"{at}: numpy {measured['numpy']} sgemm {n}x{n} float32, best of "
                       f"{repeats}, {sgemm['threads']} BLAS threads"),
        "memory_bandwidth": (measured["bandwidth"], "B/s",
                             f"{at}: numpy copy of a {measured['copy_mib']} MiB float32 "
                             f"buffer into another, one thread, best of {repeats}; bytes "
                             f"read + written per second (write-allocate reads not counted)")}
    left_out = []
    powers = _powers(measured)
    if isinstance(powers, str):
        left_out.append(f"idle and active power: {powers}")
    else:
        rapl = f"RAPL counters under {measured['rapl_root']} (CPU packages, not the board)"
        figures["idle_power"] = (powers[0], "W", f"{at}: {rapl}, mean over "
                                                 f"{measured['idle']['seconds']:.1f} s of sleep")
        figures["active_power"] = (powers[1], "W", f"{at}: {rapl}, mean over "
                                                   f"{sgemm['seconds']:.1f} s of the sgemm "
                                                   f"loop on {sgemm['threads']} threads")
    optional = {"cores": (cpus, "count", f"{at}: CPUs this process may run on; the peak "
                                         f"above used all of them")}
    decode = measured["decode"]
    if "reason" in decode:
        left_out.append(f"decode efficiency: {decode['reason']}")
    else:
        source = manifest["source"]
        optional["decode_efficiency"] = (
            decode["efficiency"], "fraction",
            f"{at}: the bundle's decode step (target {manifest['target']}, model sha256 "
            f"{source['model_sha256'][:12]}, exported {manifest.get('created', '?')}): "
            f"roofline {decode['roofline_ms']:.4g} ms (the manifest's FLOPs and bytes at "
            f"{decode['context']} tokens of context; {decode['threads']}/{cpus} of the peak "
            f"above, the bandwidth above) / measured {decode['decode_ms']:.4g} ms per token "
            f"(median of {decode['steps']} decode steps, {decode['runs']} generations, "
            f"onnxruntime {decode['onnxruntime']}, {decode['threads']} thread(s))")
        optional["decode_threads"] = (decode["threads"], "count",
                                      f"setting: the onnxruntime threads of {command}, "
                                      f"which measured decode_efficiency")
    description = (f"{name}: {_device_model()} measured by run.py --calibrate on {host}, "
                   f"{date}; what it did not measure comes from the base profile {base}")
    lines = ["# Written by run.py --calibrate (the qtf-edge bundle runner). Use it with",
             "#   qtf-edge profile BUNDLE --target THIS_FILE",
             f"# Figures not listed here come from the shipped profile {base} (base:).",
             f"name: {json.dumps(name)}", f"description: {json.dumps(description)}",
             "kind: cpu", f"base: {base}", "figures:", *_yaml_figures(figures),
             "optional:", *_yaml_figures(optional)]
    return "\n".join(lines) + "\n", left_out


def _device_model():
    """The board or CPU model where Linux says it (a Raspberry Pi's device tree names the
    board), else the machine type."""
    for path, key in (("/proc/device-tree/model", None), ("/proc/cpuinfo", "model name")):
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8", "replace").replace("\0", "")
        except OSError:
            continue
        if key is None and text.strip():
            return run._one_line(text)
        for line in text.splitlines():
            if line.split(":")[0].strip() == key:
                return run._one_line(line.split(":", 1)[1])
    return platform.machine() or "unknown machine"


def check_calibration_base(base):
    """ValueError unless `base` names a CPU profile qtf-edge ships."""
    known = ", ".join(run.CALIBRATION_BASES)
    if base is None:
        raise ValueError(f"give --calibrate-base PROFILE, the shipped profile closest to this "
                         f"device ({known}): its figures fill what is not measured")
    if base not in run.CALIBRATION_BASES:
        raise ValueError(f"--calibrate-base {base!r} is not a shipped CPU profile (known: "
                         f"{known})")
    return base


def check_profile_path(path):
    """ValueError unless a .yaml file can be written at `path`: found out by creating (and
    removing) a file beside it, before minutes of measuring."""
    if not path.endswith((".yaml", ".yml")):
        raise ValueError(f"--calibrate {path}: expected a .yaml file name (qtf-edge profile "
                         f"--target takes a profile's path by its suffix)")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"--calibrate {path}: the folder {folder} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"--calibrate {path}: is a folder; expected a file name")
    probe = os.path.join(folder, f".{os.path.basename(path)}.probe-{os.getpid()}")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"--calibrate {path}: cannot write a file there "
                         f"({e.strerror or e})") from None


def write_text_atomic(path, text):
    """Replace `path` by `text` in one rename of a fsynced temp file beside it, so a reader
    sees the old file or the new, never half of one. qtf_edge.atomic does the same on the
    host; a device has no qtf_edge."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask sets the mode
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def format_calibration(measured, path, left_out):
    decode = measured["decode"]
    sgemm = measured["sgemm"]
    lines = [f"peak FLOP/s        {sgemm['flops_per_s']:.4g} (numpy sgemm, {sgemm['threads']} "
             f"threads)",
             f"memory bandwidth   {measured['bandwidth']:.4g} B/s (numpy copy, read + written)"]
    if "reason" not in decode:
        lines.append(f"decode             {decode['decode_ms']:.3f} ms per token, roofline "
                     f"{decode['roofline_ms']:.3f} ms: efficiency {decode['efficiency']:.1%}")
    powers = _powers(measured)
    if not isinstance(powers, str):
        lines.append(f"power (RAPL)       idle {powers[0]:.3g} W, active {powers[1]:.3g} W")
    lines += [f"not measured       {item}" for item in left_out]
    lines.append(f"wrote {path}: qtf-edge profile BUNDLE --target {path}")
    return "\n".join(lines)


def calibrate_command(args, folder, manifest, note):
    """run.py --calibrate, once run.py has checked its flags and verified the bundle: measure,
    write the profile, print what was measured (or one JSON object with --json); 0."""
    base = check_calibration_base(args.calibrate_base)
    check_profile_path(args.calibrate)
    name = args.calibrate_name if args.calibrate_name is not None else \
        os.path.splitext(os.path.basename(args.calibrate))[0]
    if not name.strip():
        raise ValueError("--calibrate-name is empty; expected the profile's name")
    threads = run.CALIBRATION_THREADS if args.threads is None else args.threads
    if threads < 1:
        raise ValueError(f"--threads must be >= 1 with --calibrate (the efficiency belongs "
                         f"to a thread count), got {threads}")
    runs = args.bench or run.CALIBRATION_RUNS
    tokenizer = run._load_tokenizer(folder, note)
    measured = calibrate(folder, manifest, tokenizer, args.prompt or CALIBRATION_PROMPT,
                         threads, runs, progress=note)
    command = (f"python run.py {folder} --calibrate {args.calibrate} --calibrate-base {base} "
               f"--threads {threads} --bench {runs}")
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text, left_out = calibrated_profile(measured, manifest, name.strip(), base, command,
                                        platform.node() or "this device", date)
    try:
        write_text_atomic(args.calibrate, text)
    except OSError as e:
        raise ValueError(f"--calibrate {args.calibrate}: cannot write it "
                         f"({e.strerror or e})") from None
    sys.stdout.write((json.dumps({"profile": args.calibrate, "measured": measured,
                                  "not_measured": left_out}) if args.json
                      else format_calibration(measured, args.calibrate, left_out)) + "\n")
    return 0
