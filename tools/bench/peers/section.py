"""The peers: datatrove, a nanoGPT-style prepare and Megatron-LM's preprocessing, each in a venv.

Creates ``peers-venv`` (the peers, tokenizers pinned to this environment's version) and
``megatron-venv`` (this environment plus MEGATRON_PACKAGES) under --work, runs each driver in
tools/bench/peers/ as ``python -m tools.bench.peers.<name> job.json`` in its folder under
``--work/peers`` or ``--work/megatron``, and compares the peer's ids with slimtok's. Ratios are
slimtok ÷ peer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from ..harness import Result, Table, child_env
from ..ids import compare_streams

PEER_PROCS = 2  # processes each peer gets; the same as the slimtok row it is compared with
PEER_TIMEOUT = 1800  # seconds one peer run may take
PEER_PACKAGES = ("datatrove", "datasets", "zstandard", "orjson")
#: What the checkout needs beyond this environment: its megatron.core imports triton, its
#: preprocess_data_fast.py returns awkward arrays from gigatoken.
MEGATRON_PACKAGES = ("triton", "awkward", "gigatoken", "typing_extensions")
#: Megatron's .idx dtype codes (megatron.core.datasets.indexed_dataset.DType).
MEGATRON_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}
MEGATRON_RUNS: tuple[tuple[str, str, list[str]], ...] = (  # (row, script, extra arguments)
    (f"Megatron preprocess_data ({PEER_PROCS} procs)", "tools/preprocess_data.py", ["--workers", str(PEER_PROCS)]),
    (f"Megatron preprocess_data +giga ({PEER_PROCS})", "tools/preprocess_data.py",
     ["--workers", str(PEER_PROCS), "--use-gigatoken"]),
    ("Megatron _fast --use-gigatoken", "tools/preprocess_data_fast.py", ["--use-gigatoken"]),
    ("Megatron _fast (no gigatoken)", "tools/preprocess_data_fast.py", []),
)


def megatron_python(work: Path) -> Path:
    """A venv under ``work`` on this interpreter with this environment's packages (torch,
    megatron-core's dependencies, tokenizers) plus MEGATRON_PACKAGES."""
    import site

    python = work / "megatron-venv" / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(python.parents[1])], check=True)
    if subprocess.run([str(python), "-c", "import triton, awkward, gigatoken"], capture_output=True).returncode:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *MEGATRON_PACKAGES], check=True)
    packages = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    assert packages != site.getsitepackages()[0], "the venv must not write into this environment"
    shutil.copyfile(Path(__file__).with_name("sitecustomize.py"), Path(packages) / "sitecustomize.py")
    return python


def megatron_stream(prefix: Path) -> tuple[np.ndarray, np.ndarray]:
    """The ids of a Megatron ``<prefix>.bin``/``.idx`` pair (one sequence per document) and each
    document's end offset."""
    idx = (prefix.parent / (prefix.name + ".idx")).read_bytes()
    assert idx[:9] == b"MMIDIDX\x00\x00", f"{prefix}.idx: not a Megatron index"
    dtype = MEGATRON_DTYPES[idx[17]]
    sequences = int(np.frombuffer(idx, np.uint64, 1, 18)[0])
    lengths = np.frombuffer(idx, np.int32, sequences, 34).astype(np.int64)
    stream = np.fromfile(prefix.parent / (prefix.name + ".bin"), dtype=dtype).astype(np.uint32)
    return stream, np.cumsum(lengths)


def bench_megatron(table: Table, work: Path, megatron_dir: Path, tokenizer: Path, entries, nbytes: int,
                   ours: np.ndarray, eos: int, text_tok, runs: int) -> dict[str, str]:
    """Megatron's preprocessing scripts on the train shards as one plain .jsonl (both read only
    plain JSON lines; decompressed here, untimed, in manifest order); verdicts by row."""
    import zstandard

    python = megatron_python(work)
    base = work / "megatron"
    base.mkdir(parents=True, exist_ok=True)
    plain = base / "train.jsonl"
    with open(plain, "wb") as out:
        for e in entries:
            with open(e.path, "rb") as f:
                zstandard.ZstdDecompressor().copy_stream(f, out)
    verdicts: dict[str, str] = {}
    for _ in range(runs):
        for row, script, extra in MEGATRON_RUNS:
            folder = base / row.replace(" ", "_").replace("-", "")
            args = ["--input", str(plain), "--output-prefix", str(folder / "out"), "--json-keys", "text",
                    "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(tokenizer), "--append-eod",
                    *extra]
            job = {"megatron_dir": str(megatron_dir), "script": str(megatron_dir / script), "args": args}
            try:
                rep = run_peer(python, "megatron", job, folder)
            except SystemExit as exc:  # a script that cannot run here: say why, keep the others
                last = [line for line in str(exc).splitlines() if line.strip()][-1:]
                verdicts[row] = f"DID NOT RUN: {last[0] if last else exc}"
                continue
            stream, ends = megatron_stream(folder / "out_text_document")
            verdicts[row] = compare_streams(stream, ends, ours, eos, text_tok)
            table.add(Result(row, nbytes, rep["wall"], rep["cpu"], int(stream.size), rep["rss"]))
    return verdicts


def peers_python(work: Path) -> Path:
    """The python of a venv under ``work`` that holds the peers, created and filled when missing.

    The venv's tokenizers is pinned to the version slimtok runs with, so both encode with the same code.
    """
    from importlib.metadata import version

    python = work / "peers-venv" / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(python.parents[1])], check=True)
    if subprocess.run([str(python), "-c", "import datatrove, datasets, zstandard"], capture_output=True).returncode:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES,
                        f"tokenizers=={version('tokenizers')}"], check=True)
    return python


def run_peer(python: Path, driver: str, job: dict, folder: Path) -> dict:
    """Run the peer driver tools/bench/peers/``driver``.py in the venv of ``python`` on ``job``
    (written to ``folder``/job.json); its report (wall, cpu, rss of the peer's own work)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    spec = folder / "job.json"
    job = {**job, "report": str(folder / "report.json")}
    spec.write_text(json.dumps(job))
    script = f"tools.bench.peers.{driver}"
    env = {**child_env(), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DATATROVE_COLORIZE_LOGS": "0"}
    try:  # a peer whose pool worker died can wait for it forever
        done = subprocess.run([str(python), "-m", script, str(spec)], env=env, capture_output=True, text=True,
                              timeout=PEER_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise SystemExit(f"peer driver {script} did not finish in {PEER_TIMEOUT} s") from exc
    if done.returncode:
        raise SystemExit(f"peer driver {script} failed:\n{done.stderr[-3000:]}")
    return json.loads((folder / "report.json").read_text())


def datatrove_stream(out: Path) -> tuple[np.ndarray, np.ndarray]:
    """datatrove's .ds files (uint32 here) in rank order, with document ends from their .ds.index files."""
    streams, ends, base = [], [], 0
    for ds in sorted(out.glob("*.ds")):
        tokens = np.fromfile(ds, dtype=np.uint32)
        ends.append(np.fromfile(f"{ds}.index", dtype=np.uint64).astype(np.int64) + base)
        streams.append(tokens)
        base += tokens.size
    return np.concatenate(streams), np.concatenate(ends)


def bench_peers(table: Table, work: Path, manifest: Path, tokenizer: Path, nbytes: int, ours_root: Path,
                ours_label: str, runs: int, megatron_dir: Path | None = None) -> None:
    """datatrove and a nanoGPT-style prepare on the manifest's shards, ids checked against ``ours_root``.

    Wall and CPU cover each peer's processing (reading shards to written tokens), not the interpreter
    start or imports; CPU includes every pool worker. Ratios are slimtok ÷ peer.
    """
    from slimtok.manifest import read_manifest
    from slimtok.tokenizer import load_tokenizer

    python = peers_python(work)
    entries = read_manifest(manifest)
    loaded = load_tokenizer(str(tokenizer))
    text_tok = loaded.parsed()
    text_tok.encode_special_tokens = True
    ours = np.frombuffer(b"".join(Path(p).read_bytes() for p in _data_files(ours_root, entries)), np.uint32)
    data_folder = Path(os.path.commonpath([e.path for e in entries]))
    base = work / "peers"
    job = {"tokenizer_json": str(tokenizer / "tokenizer.json"), "eos_token": loaded.eos_token,
           "eos_id": loaded.eos_token_id, "procs": PEER_PROCS, "files": [e.path for e in entries],
           "data_folder": str(data_folder),
           "relative_paths": [str(Path(e.path).relative_to(data_folder)) for e in entries]}
    verdicts: dict[str, str] = {}
    for _ in range(runs):
        folder = base / "datatrove"
        rep = run_peer(python, "datatrove", {**job, "out": str(folder / "out"), "logs": str(folder / "logs"),
                                                  "paths_file": str(folder / "paths.txt")}, folder)
        stream, ends = datatrove_stream(folder / "out")
        verdicts["datatrove"] = compare_streams(stream, ends, ours, loaded.eos_token_id, text_tok)
        table.add(Result(f"datatrove DocumentTokenizer ({PEER_PROCS} procs)", nbytes, rep["wall"], rep["cpu"],
                         int(stream.size), rep["rss"]))
        folder = base / "nanogpt"
        rep = run_peer(python, "nanogpt", {**job, "out": str(folder / "train.bin"), "cache": str(folder / "hf")},
                       folder)
        stream = np.fromfile(folder / "train.bin", dtype=np.uint32)
        verdicts["nanoGPT-style"] = compare_streams(stream, np.flatnonzero(stream == loaded.eos_token_id) + 1, ours,
                                                    loaded.eos_token_id, text_tok)
        table.add(Result(f"nanoGPT-style datasets.map ({PEER_PROCS} procs)", nbytes, rep["wall"], rep["cpu"],
                         int(stream.size), rep["rss"]))
    peers = [f"datatrove DocumentTokenizer ({PEER_PROCS} procs)", f"nanoGPT-style datasets.map ({PEER_PROCS} procs)"]
    if megatron_dir is not None:
        verdicts.update(bench_megatron(table, work, megatron_dir, tokenizer, entries, nbytes, ours,
                                       loaded.eos_token_id, text_tok, runs))
        peers += [row for row, _, _ in MEGATRON_RUNS if row in table.runs]
    else:
        table.note("Megatron-LM: not run (give a checkout with --megatron-dir)")
    for name, verdict in verdicts.items():
        table.note(f"peer {name}: {verdict}")
    for peer in peers:
        table.note(f"ratio {ours_label} / {peer}: {table.ratio(ours_label, peer, 'mb_wall')} per wall-s, "
                           f"{table.ratio(ours_label, peer)} per CPU-s")
    fastest = max(peers, key=lambda p: table.median(p, "mb_cpu"))
    ratio = table.median(ours_label, "mb_cpu") / table.median(fastest, "mb_cpu")
    table.note(f"fastest peer per CPU-s: {fastest}; {ours_label} / it = {ratio:.2f} "
                       f"(target >= 2: {'met' if ratio >= 2 else 'NOT met'})")


def _data_files(root: Path, entries) -> list[Path]:
    from slimtok.protocol import OutputRoot

    r = OutputRoot(root)
    return [r.data(e.id) for e in entries]


