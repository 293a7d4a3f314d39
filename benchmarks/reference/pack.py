"""--pack and --unpack: the finished rows (JSON, log tails, weights that fit) as .tar.gz
archives within the device tool's limits, and their extraction into the runs folder."""

from __future__ import annotations

import json
import tarfile
import tempfile
import time
from pathlib import Path

from qtf_edge.atomic import write_json_atomic

from .plan import Layout, Row, is_finished, read_json, utc_now

# ---------------------------------------------------------------------------- pack / unpack

def weights_only_run(folder: Path, dest: Path, row: Row) -> Path:
    """A run folder without the optimizer state (a third of the bytes), as qtf_edge reads it."""
    from qtf_edge.runs import load_run, save_run

    run = load_run(folder)
    return save_run(dest, run.model, run.tokenizer_path, command=f"weights of {row.name}",
                    parent=folder, overwrite=True)


def tail(path: Path, lines: int = 200) -> bytes:
    return b"\n".join(path.read_bytes().splitlines()[-lines:]) + b"\n" if path.is_file() else b""


def pack_mode(args, layout: Layout, plan: list[Row]) -> None:
    """Archives of at most --pack-max-mb each (at most --pack-max-files): the first with
    the plan, the tokenizer, every row's JSON, sessions and log tail; then the weights of the
    finished latency rows not packed before, largest last, while they fit. What did not fit
    is listed in pack.json; --measure times those rows on same-shape untrained weights."""
    out = Path(args.pack)
    out.mkdir(parents=True, exist_ok=True)
    limit = args.pack_max_mb * 2**20
    packed = set(read_json(layout.packed) or [])
    small = [layout.plan, layout.tokenizer, layout.root / "tokenizer.meta.json", layout.probe]
    for row in plan:
        small += [p for p in (layout.result(row), layout.sessions(row)) if p.is_file()]
    with tempfile.TemporaryDirectory() as tmp:
        staged = []
        for row in plan:
            if row.latency and is_finished(layout, row) and row.name not in packed \
                    and (layout.train(row) / "model.safetensors").is_file():
                dest = weights_only_run(layout.train(row), Path(tmp) / row.folder, row)
                size = sum(f.stat().st_size for f in dest.iterdir())
                staged.append((size, row, dest))
        archives, left_out = [[]], []
        budget = [limit - sum(p.stat().st_size for p in small if p.is_file()) - 2**20]
        for size, row, dest in sorted(staged, key=lambda s: s[0]):
            if size > budget[-1]:
                if len(archives) >= args.pack_max_files or size > limit - 2**20:
                    left_out.append(row.name)
                    continue
                archives.append([])
                budget.append(limit - 2**20)
            archives[-1].append((row, dest))
            budget[-1] -= size
        for index, members in enumerate(archives, start=1):
            path = out / f"reference-pack-{index}.tar.gz"
            with tarfile.open(path, "w:gz") as tar:
                if index == 1:
                    for file in small:
                        if file.is_file():
                            tar.add(file, arcname=str(file.relative_to(layout.root)))
                    for row in plan:
                        log = tail(layout.log(row))
                        if log.strip():
                            add_bytes(tar, f"logs/{row.folder}.log", log)
                    add_bytes(tar, "pack.json", json.dumps(
                        {"created_utc": utc_now(), "left_out_weights": left_out}).encode())
                for row, dest in members:
                    tar.add(dest, arcname=f"weights/{row.folder}")
                    packed.add(row.name)
            print(f"packed {path} ({path.stat().st_size / 2**20:.1f} MiB, "
                  f"{len(members)} weight folder(s))", flush=True)
    write_json_atomic(layout.packed, sorted(packed))
    if left_out:
        print(f"weights left out (over the size limits): {', '.join(left_out)}", flush=True)


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), int(time.time())
    tar.addfile(info, io.BytesIO(data))


def unpack_mode(files: list[str], layout: Layout) -> None:
    layout.root.mkdir(parents=True, exist_ok=True)
    for name in files:
        with tarfile.open(name, "r:gz") as tar:
            tar.extractall(layout.root, filter="data")
        print(f"unpacked {name} into {layout.root}", flush=True)
