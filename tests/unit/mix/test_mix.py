"""slimtok mix: real roots tokenized here, the mix compared with a computation over the roots'
own shard tokens (split at eos), and the output read back by validate, slimtok.data and export."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
import xxhash
import yaml

from helpers.cli import slimtok
from helpers.corpus import doc_line, sample_documents, write_shard
from helpers.terminal import drain_pty
from helpers.trainers import megatron_dataset
from slimtok.errors import MixError
from slimtok.mix import make_plan, mix, mix_main, parse_spec
from slimtok.mix.inputs import load_sources
from slimtok.protocol import DOC_TABLE_DTYPE, DoneRecord, OutputRoot, read_record, write_record

EOS = 0  # the bpe_tokenizer fixture's <|endoftext|>


def _dataset(folder: Path, shards: int, docs: int, seed: int, labels: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Shards of real text; returns {shard id: [(text, source label)]} in file order."""
    texts = {}
    for i in range(shards):
        shard = f"train/chunk1/example_train_{i}"
        rows = [(f"[{folder.name} {i}.{k}] {t}", labels[(i + k) % len(labels)])  # unique across roots
                for k, t in enumerate(sample_documents(docs, seed * 100 + i))]
        write_shard(folder / f"{shard}.jsonl.zst", [doc_line(t, s) for t, s in rows])
        texts[shard] = rows
    return texts


def _write_tables(root: Path, texts: dict[str, list[tuple[str, str]]]) -> None:
    """Document tables from each shard's tokens (split at eos: exact for this corpus) until the
    worker writes them itself; delete this helper then."""
    out = OutputRoot(root)
    for shard, rows in texts.items():
        record = read_record(out.done(shard), DoneRecord)
        ids = np.fromfile(out.resolve(record.file), dtype=record.dtype)
        ends = np.flatnonzero(ids == EOS) + 1
        names = sorted({s for _, s in rows})
        table = np.zeros(len(ends), dtype=DOC_TABLE_DTYPE)
        table["tokens"] = np.diff(np.concatenate([[0], ends]))
        table["source"] = [names.index(s) for _, s in rows]
        digests = [xxhash.xxh3_128_intdigest(t.encode()) for t, _ in rows]
        table["hash_hi"] = [d >> 64 for d in digests]
        table["hash_lo"] = [d & ((1 << 64) - 1) for d in digests]
        path = out.table(shard)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(table.tobytes())
        record.table, record.table_bytes = out.relative(path), path.stat().st_size
        record.table_sha256, record.source_names, record.table_version = \
            hashlib.sha256(path.read_bytes()).hexdigest(), names, 1
        write_record(out.done(shard), record)


def _root(tmp: Path, name: str, tokenizer: Path, shards: int, docs: int, seed: int, labels: list[str]) -> Path:
    return _tokenized(tmp, name, tokenizer, _dataset(tmp / f"{name}-ds", shards, docs, seed, labels))


def _text_root(tmp: Path, name: str, tokenizer: Path, shards: list[list[str]]) -> Path:
    """A root whose train shards hold exactly these texts (repeats allowed)."""
    texts = {}
    for i, rows in enumerate(shards):
        shard = f"train/chunk1/example_train_{i}"
        write_shard(tmp / f"{name}-ds" / f"{shard}.jsonl.zst", [doc_line(t, "web") for t in rows])
        texts[shard] = [(t, "web") for t in rows]
    return _tokenized(tmp, name, tokenizer, texts)


def _tokenized(tmp: Path, name: str, tokenizer: Path, texts: dict[str, list[tuple[str, str]]]) -> Path:
    slimtok("manifest", "--dataset-dir", tmp / f"{name}-ds", "--output-dir", tmp / f"{name}-m")
    root = tmp / name
    slimtok("tokenize", "--dtype", "uint32", "--manifest", tmp / f"{name}-m" / "manifest.jsonl", "--output-root", root,
            "--tokenizer", tokenizer, "--quiet", "--spawn-workers", "1")
    if not (root / "documents").exists() or not read_record(OutputRoot(root).done(next(iter(texts))), DoneRecord).table:
        _write_tables(root, texts)
    return root


def _docs(root: Path, label: str | None = None) -> list[bytes]:
    """Every document's token bytes in a root's train split, computed from the shard files."""
    out, docs = OutputRoot(root), []
    for line in (root / "manifest.jsonl").read_bytes().splitlines():
        record = read_record(out.done(orjson.loads(line)["id"]), DoneRecord)
        ids = np.fromfile(out.resolve(record.file), dtype=record.dtype)
        pieces = np.split(ids, np.flatnonzero(ids == EOS)[:-1] + 1)
        table = np.fromfile(out.resolve(record.table), dtype=DOC_TABLE_DTYPE)
        keep = [True] * len(pieces) if label is None else \
            [record.source_names[s] == label for s in table["source"]]
        docs += [p.tobytes() for p, k in zip(pieces, keep, strict=True) if k]
    return docs


@pytest.fixture(scope="module")
def roots(tmp_path_factory, bpe_tokenizer):
    tmp = tmp_path_factory.mktemp("mix")
    return {"tmp": tmp,
            "web": _root(tmp, "web", bpe_tokenizer, 3, 40, 1, ["web"]),
            "code": _root(tmp, "code", bpe_tokenizer, 2, 15, 2, ["code"]),
            "pile": _root(tmp, "pile", bpe_tokenizer, 2, 30, 3, ["RedPajamaC4", "RedPajamaBook"])}


def _spec(roots, tmp: Path, **overrides) -> Path:
    data = {"seed": 7, "total_tokens": 30_000, "shuffle": "document", "chunk_documents": 7,
            "sources": [{"name": "web", "root": str(roots["web"]), "weight": 0.7},
                        {"name": "code", "root": str(roots["code"]), "weight": 0.3, "max_epochs": 4},
                        {"name": "c4", "root": str(roots["pile"]), "source": "RedPajamaC4", "tokens": 3000}]}
    data.update(overrides)
    path = tmp / f"spec-{hashlib.sha256(repr(data).encode()).hexdigest()[:8]}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _out_docs(out: Path, name: str = "train") -> list[bytes]:
    ids = np.fromfile(out / f"{name}.bin", dtype=np.uint32)
    ends = np.fromfile(out / f"{name}.idx", dtype="<u8").astype(np.int64)
    return [ids[a:b].tobytes() for a, b in zip(np.concatenate([[0], ends[:-1]]), ends, strict=True)]


def test_realized_tokens_and_documents_per_source(roots, tmp_path):
    spec_path = _spec(roots, tmp_path)
    assert mix_main(spec_path, tmp_path / "out", workers=2) == 0
    meta = orjson.loads((tmp_path / "out" / "meta.json").read_bytes())
    report = meta["splits"]["train"]["mix"]
    sources = {"web": _docs(roots["web"]), "code": _docs(roots["code"]), "c4": _docs(roots["pile"], "RedPajamaC4")}
    available = {n: sum(len(d) // 4 for d in docs) for n, docs in sources.items()}
    want = {"c4": 3000, "web": round(27_000 * 0.7), "code": round(27_000 * 0.3)}
    out = _out_docs(tmp_path / "out")
    for name, docs in sources.items():
        r = report[name]
        assert r["target_tokens"] == want[name] and r["available_tokens"] == available[name]
        assert abs(r["tokens"] - want[name]) <= max(max(len(d) // 4 for d in docs), want[name] // 1000)
        full = want[name] // available[name]
        assert r["documents"] >= full * len(docs) and r["unique_documents"] <= len(docs)
    # every output document is one of its source's documents, byte for byte, and the counts add up
    owner = {d: n for n, docs in sources.items() for d in docs}
    counted = {n: [0, 0] for n in sources}
    for d in out:
        counted[owner[d]][0] += 1
        counted[owner[d]][1] += len(d) // 4
    assert {n: [report[n]["documents"], report[n]["tokens"]] for n in sources} == counted
    assert meta["splits"]["train"]["tokens"] == sum(r["tokens"] for r in report.values())


@pytest.mark.slow  # kill -9 at random moments, several runs
def test_workers_and_kill_give_identical_bytes_and_a_changed_spec_is_refused(roots, tmp_path):
    spec_path = _spec(roots, tmp_path, chunk_documents=1, validation={"documents": 5})
    mix_main(spec_path, tmp_path / "one", workers=1)
    mix_main(spec_path, tmp_path / "two", workers=2)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "slimtok", "mix", str(spec_path), "--output-root", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not list((killed / "done").rglob("*.json")) and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    chunks_at_kill = len(list((killed / "done").rglob("*.json")))
    total_chunks = len((tmp_path / "one" / "manifest.jsonl").read_bytes().splitlines())
    assert 0 < chunks_at_kill < total_chunks and not (killed / "train.bin").exists()
    before = {p: p.stat().st_mtime_ns for p in (killed / "done").rglob("*.json")}
    mix_main(spec_path, killed, workers=2)
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # finished chunks not redone
    for name in ("train.bin", "train.idx", "val.bin", "val.idx", "mix.json"):
        one = (tmp_path / "one" / name).read_bytes()
        assert one == (tmp_path / "two" / name).read_bytes() == (killed / name).read_bytes(), name
    with pytest.raises(MixError, match="mix.json holds another spec"):
        mix_main(_spec(roots, tmp_path, chunk_documents=1, seed=8), killed)


#: Runs ``slimtok mix`` with os.replace killing the process (SIGKILL) as it is about to rename the
#: temporary file of the 3rd chunk's done record into place: a commit killed between its write
#: and its rename, which leaves that temporary file behind.
KILLED_COMMIT = """
import os, signal, sys
_replace = os.replace
def replace(src, dst, *args, **kwargs):
    if str(dst).endswith("mix-000002.json"):
        os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst, *args, **kwargs)
os.replace = replace
from slimtok.cli import main
main(sys.argv[1:])
"""


def test_temp_files_of_a_killed_commit_are_removed_by_the_next_run(roots, tmp_path):
    spec_path = _spec(roots, tmp_path, chunk_documents=1)
    mix_main(spec_path, tmp_path / "undisturbed", workers=1)
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILLED_COMMIT, "mix", str(spec_path), "--output-root", str(killed),
                           "--workers", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = [p.relative_to(killed).as_posix() for p in killed.rglob(".*.tmp")]
    assert [re.sub(r"\.[0-9a-f]+\.tmp$", ".TOKEN.tmp", p) for p in left] == ["done/train/.mix-000002.json.TOKEN.tmp"]
    mix_main(spec_path, killed, workers=1)
    assert not list(killed.rglob(".*.tmp"))
    for name in ("train.bin", "train.idx", "mix.json"):  # manifest.jsonl names the root's own path
        assert (killed / name).read_bytes() == (tmp_path / "undisturbed" / name).read_bytes(), name


def test_infeasible_spec_is_refused_with_the_numbers_before_writing(roots, tmp_path):
    code_tokens = sum(len(d) // 4 for d in _docs(roots["code"]))
    spec_path = _spec(roots, tmp_path, sources=[
        {"name": "web", "root": str(roots["web"]), "weight": 0.5},
        {"name": "code", "root": str(roots["code"]), "weight": 0.5, "max_epochs": 2}],
        total_tokens=6 * code_tokens)
    with pytest.raises(MixError) as exc:
        mix_main(spec_path, tmp_path / "out")
    text = str(exc.value)
    assert f"target {3 * code_tokens:,} tokens, but it has {code_tokens:,}" in text
    assert "would need 3.000 epochs" in text and f"largest total that fits is {4 * code_tokens:,}" in text
    assert not (tmp_path / "out").exists()


def test_a_root_whose_fingerprint_is_not_recorded_yet_is_fingerprinted_from_its_copy(roots, tmp_path):
    """A job pinned from the tokenizer's JSON records ``tokenizer_sha256`` once a worker has loaded
    it; mix and combine compute a missing one from the root's copy, and it is the same."""
    import shutil

    web = tmp_path / "web"
    shutil.copytree(roots["web"], web)
    job = orjson.loads((web / "job.json").read_bytes())
    recorded, job["tokenizer_sha256"] = job["tokenizer_sha256"], ""
    (web / "job.json").write_bytes(orjson.dumps(job))
    spec = {"seed": 1, "shuffle": "none", "total_tokens": 2_000,
            "sources": [{"name": "web", "root": str(web), "weight": 1},
                        {"name": "code", "root": str(roots["code"]), "weight": 1}]}
    plan, _ = mix(parse_spec(spec), None)  # the code root's recorded fingerprint matches the computed one
    assert [s.name for s in plan.sources] == ["web", "code"]
    slimtok("combine", "--output-root", web)
    assert orjson.loads((web / "meta.json").read_bytes())["tokenizer_sha256"] == recorded


def test_a_1000_to_1_weight(roots, tmp_path):
    spec_path = _spec(roots, tmp_path, total_tokens=20_000, sources=[
        {"name": "web", "root": str(roots["web"]), "weight": 1000},
        {"name": "code", "root": str(roots["code"]), "weight": 1}])
    plan, _ = mix(parse_spec(yaml.safe_load(spec_path.read_text())), None)
    web, code = plan.sources
    assert (web.target, code.target) == (19980, 20)
    longest = max(len(d) // 4 for d in _docs(roots["code"]))
    shortest = min(len(d) // 4 for d in _docs(roots["code"]))
    assert abs(code.tokens - 20) <= longest and code.documents <= 1 + 20 // shortest
    assert abs(web.tokens - 19980) <= max(len(d) // 4 for d in _docs(roots["web"]))


def test_roots_with_another_tokenizer_are_refused(roots, tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tmp_path / "bpe2"
    folder.mkdir()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(sample_documents(100, seed=5), trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_bytes(orjson.dumps({"eos_token": "<|endoftext|>"}))
    other = _root(tmp_path, "other", folder, 1, 10, 9, ["web"])
    spec_path = _spec(roots, tmp_path, sources=[{"name": "web", "root": str(roots["web"]), "weight": 1},
                                                {"name": "other", "root": str(other), "weight": 1}])
    with pytest.raises(MixError, match=r"source 'other': tokenizer_sha256 is .* but source 'web' has"):
        mix_main(spec_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_plan_writes_nothing(roots, tmp_path):
    lines: list[str] = []
    assert mix_main(_spec(roots, tmp_path), tmp_path / "out", plan_only=True, log=lines.append) == 0
    assert not (tmp_path / "out").exists()
    table = "\n".join(lines).splitlines()
    assert table[0].split()[:3] == ["source", "target", "tokens"] and table[3].split()[:2] == ["c4", "3,000"]


def test_validation_carve_is_disjoint_and_reproducible(roots, tmp_path):
    spec = parse_spec(yaml.safe_load(_spec(roots, tmp_path, validation={"documents": 20}).read_text()))
    sources, _, _ = load_sources(spec)
    first, again = make_plan(spec, sources), make_plan(spec, sources)
    assert np.array_equal(first.splits["validation"], again.splits["validation"])
    assert np.array_equal(first.splits["train"], again.splits["train"])
    val, train = first.splits["validation"]["id"], first.splits["train"]["id"]
    assert len(val) == len(set(val.tolist())) == 20 and not set(val.tolist()) & set(train.tolist())
    without = parse_spec(dict(yaml.safe_load(_spec(roots, tmp_path).read_text())))  # no validation carve
    whole = make_plan(without, sources).splits["train"]["id"]
    assert sorted(set(whole.tolist())) == sorted(set(train.tolist()) | set(val.tolist()))


def test_output_reads_with_validate_data_and_export(roots, tmp_path):
    from slimtok.data import TokenBin
    from slimtok.export import export_megatron
    from slimtok.validate import validate

    out = tmp_path / "out"
    mix_main(_spec(roots, tmp_path, validation={"fraction": 0.05}), out)
    report = validate(out, samples=8, block_size=16, log=lambda _: None)
    assert report.ok, [c for c in report.checks if not c.ok]
    data = TokenBin(out / "train.bin")
    assert data.document(0).tobytes() == _out_docs(out)[0]
    prefixes = export_megatron(out, "mixed", log=lambda _: None)
    assert all(Path(f"{p}.bin").exists() for p in prefixes)
    shown = slimtok("status", "--output-root", out).stdout  # a root no tokenize worker ever ran on
    assert "every shard is done" in shown and "ETA unknown" not in shown


@pytest.fixture(scope="module")
def combined(roots):
    for name in ("web", "code"):
        slimtok("combine", "--output-root", roots[name])
    return [roots["web"], roots["code"]]


def test_mixed_blocks_shares_windows_resume_and_epochs(combined):
    from slimtok.mixed import MixedBlocks

    block = 16
    blocks = MixedBlocks([(combined[0], 3), (combined[1], 1)], block, seed=11, samples_per_epoch=8000)
    draws = list(blocks.draws(0, 8000))
    share = np.mean([s == 0 for _, s, _ in draws])
    assert abs(share - 0.75) < 3 * np.sqrt(0.75 * 0.25 / 8000)  # three standard deviations
    tokens = [np.fromfile(r / "train.bin", dtype=np.uint32).astype(np.int64) for r in combined]
    first = list(itertools.islice(blocks, 50))
    for (x, y), (_, s, b) in zip(first, draws[:50], strict=True):
        assert np.array_equal(x, tokens[s][b * block:(b + 1) * block])
        assert np.array_equal(y, tokens[s][b * block + 1:(b + 1) * block + 1])
    # the small source repeats: every one of its blocks before any twice
    code = [b for _, s, b in draws if s == 1]
    n = blocks.blocks[1]
    assert len(code) > n and sorted(code[:n]) == list(range(n))
    state = blocks.state_dict()
    resumed = MixedBlocks([(combined[0], 3), (combined[1], 1)], block, seed=11, samples_per_epoch=8000)
    resumed.load_state_dict(state)
    after = [x for x, _ in itertools.islice(resumed, 20)]
    whole = [x for x, _ in itertools.islice(MixedBlocks([(combined[0], 3), (combined[1], 1)], block, 11,
                                                        samples_per_epoch=8000), 70)]
    assert state == {"epoch": 0, "position": 50, "reader": 0, "readers": 1}
    assert all(np.array_equal(a, b) for a, b in zip(after, whole[50:], strict=True))
    blocks.set_epoch(1)
    assert [d[1:] for d in blocks.draws(0, 200)] != [d[1:] for d in draws[:200]]


def test_policies_and_orders(roots, tmp_path):
    base = yaml.safe_load(_spec(roots, tmp_path).read_text())
    two = [{"name": "web", "root": str(roots["web"]), "max_epochs": 2},
           {"name": "code", "root": str(roots["code"]), "max_epochs": 2}]
    sizes = {n: sum(len(d) // 4 for d in _docs(roots[n])) for n in ("web", "code")}
    # unimax: equal shares, but code's 2 epochs are fewer than half, so web takes the rest
    total = 4 * sizes["code"] + 5000
    spec = parse_spec(dict(base, sources=two, policy="unimax", total_tokens=total))
    web, code = make_plan(spec, load_sources(spec)[0]).sources
    assert (web.target, code.target) == (total - 2 * sizes["code"], 2 * sizes["code"])
    assert code.documents == 2 * len(_docs(roots["code"])) and code.tokens == code.target
    # temperature: natural shares raised to alpha
    spec = parse_spec(dict(base, sources=two, policy="temperature", alpha=0.5, total_tokens=20_000))
    web, code = make_plan(spec, load_sources(spec)[0]).sources
    p = np.sqrt([sizes["web"], sizes["code"]])
    assert abs(web.target - 20_000 * p[0] / p.sum()) <= 1 and web.target + code.target == 20_000
    # orders: none keeps the sources and their documents in order; chunk:N permutes whole groups
    sources = load_sources(spec)[0]
    plain = make_plan(parse_spec(dict(base, shuffle="none")), load_sources(parse_spec(base))[0]).splits["train"]["id"]
    assert np.all(np.diff(plain) > 0)  # one epoch each here: strictly increasing global ids
    grouped = make_plan(parse_spec(dict(base, shuffle="chunk:4")),
                        load_sources(parse_spec(base))[0]).splits["train"]["id"].tolist()
    groups = [tuple(plain[i:i + 4].tolist()) for i in range(0, len(plain), 4)]
    found, at = [], 0  # the output is the plain groups, whole, in another order
    while at < len(grouped):
        group = next(g for g in groups if tuple(grouped[at:at + len(g)]) == g)
        found.append(group)
        at += len(group)
    assert sorted(found) == sorted(groups) and found != groups
    assert sources


@pytest.mark.parametrize("change, message", [
    ({"shuffle": "random"}, "shuffle is 'random', must be none, document or chunk:N"),
    ({"sources": [{"name": "web", "root": "/nowhere", "weight": 1, "tokens": 5}]},
     "source 'web': give `weight` or `tokens`, not both"),
    ({"sources": [{"name": "web", "root": "/nowhere", "weight": -1}]},
     "source 'web': weight is -1, must be a positive number"),
    ({"sources": [{"name": "web", "root": "/nowhere", "wieght": 1}]}, "source 'web': unknown setting(s) wieght"),
    ({"total_tokens": None}, "total_tokens is missing"),
    ({"validation": {"documents": 0}}, "validation: documents is 0"),
    ({"policy": "temperature", "sources": [{"name": "a", "root": "/x"}]}, "policy temperature: alpha is None"),
    ({"dedup": "yes"}, "dedup is 'yes', must be true or false"),
])
def test_bad_specs_name_the_setting(roots, tmp_path, change, message):
    data = dict(yaml.safe_load(_spec(roots, tmp_path).read_text()), **change)
    with pytest.raises(MixError) as exc:
        parse_spec(data, "spec.yaml")
    assert message in str(exc.value) and str(exc.value).startswith("spec.yaml: ")


def test_an_unfinished_root_is_refused(roots, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(roots["code"], copy)
    shard = orjson.loads((copy / "manifest.jsonl").read_bytes().splitlines()[0])["id"]
    OutputRoot(copy).done(shard).unlink()
    spec_path = _spec(roots, tmp_path, sources=[{"name": "code", "root": str(copy), "tokens": 100}], total_tokens=None)
    with pytest.raises(MixError, match=f"source 'code': shard {shard} is not finished"):
        mix_main(spec_path, tmp_path / "out")
    # a table cut short is refused with both sizes, not read as fewer documents
    shutil.copytree(roots["code"], copy, dirs_exist_ok=True)
    record = read_record(OutputRoot(copy).done(shard), DoneRecord)
    table = OutputRoot(copy).resolve(record.table)
    table.write_bytes(table.read_bytes()[:-DOC_TABLE_DTYPE.itemsize])
    with pytest.raises(MixError, match=f"shard {shard}'s document table holds {record.table_bytes - 24:,} bytes, "
                                       f"but its done record says {record.table_bytes:,}"):
        mix_main(spec_path, tmp_path / "out")


def _synthetic_spec(tmp: Path, documents: int, shards: int, tokens: int) -> tuple[dict, np.ndarray]:
    """One synthetic root (tables and done records only), a spec taking ``tokens`` of it, and the
    root's table."""
    from slimtok.testing import synthetic_root

    root = tmp / f"synthetic-{documents}-{shards}"
    if not root.exists():
        synthetic_root(root, shards, documents // shards, tokens=(1, MAX_TOKENS_SYNTHETIC), holdout=False, data=True,
                       checksums=False, seed=3)
    out = OutputRoot(root)
    table = np.concatenate([np.fromfile(out.table(orjson.loads(line)["id"]), dtype=DOC_TABLE_DTYPE)
                            for line in out.manifest.read_bytes().splitlines()])
    return {"seed": 5, "shuffle": "none",
            "sources": [{"name": "s", "root": str(root), "max_epochs": 3, "tokens": tokens}]}, table


def test_the_sample_is_the_smallest_keys_and_does_not_depend_on_the_reading_piece(tmp_path, monkeypatch):
    """The plan's sample, recomputed here: one PCG64 key per table row from the source's seed, the
    documents of smallest key whose tokens come closest to what the full epochs leave."""
    import slimtok.mix.inputs as inputs

    spec_data, table = _synthetic_spec(tmp_path, 30_000, 3, 0)
    available = int(table["tokens"].sum(dtype=np.int64))
    for target in (available // 3, available + 12_345, 2 * available):
        spec_data["sources"][0]["tokens"] = target
        spec = parse_spec(spec_data)
        plan = make_plan(spec, load_sources(spec)[0])
        full, rest = divmod(target, available)
        keys = np.random.PCG64(np.random.SeedSequence(5).spawn(3)[0]).random_raw(len(table))
        by_key = np.argsort(keys, kind="stable")
        cum = np.cumsum(table["tokens"][by_key].astype(np.int64))
        k = int(np.argmin(np.abs(np.concatenate([[0], cum]) - rest)))
        rows = np.concatenate([np.tile(np.arange(len(table)), full), np.sort(by_key[:k])])
        per = len(table) // 3
        shard, row = rows // per, rows % per
        picks = plan.splits["train"]
        assert np.array_equal(picks["id"], (shard << 32) + row)
        assert np.array_equal(picks["tokens"], table["tokens"][rows])
        assert plan.sources[0].tokens == full * available + (int(cum[k - 1]) if k else 0)
        assert abs(plan.sources[0].tokens - target) <= MAX_TOKENS_SYNTHETIC
        monkeypatch.setattr(inputs, "PIECE_ROWS", 777)  # other reads, same plan
        again = make_plan(spec, load_sources(spec)[0])
        monkeypatch.undo()
        assert np.array_equal(again.splits["train"], picks)


MAX_TOKENS_SYNTHETIC = 2000  # the synthetic documents' largest token count


def test_planning_memory_is_per_selected_document(tmp_path, monkeypatch):
    """4 M available documents, about 2,000 selected: the plan's traced allocations stay within
    16 bytes per selected document plus a constant (about 110 bytes per row of a reading piece:
    7 MB for 65,536 rows), far below one array per available document (4 M x 16 B = 64 MB)."""
    import tracemalloc

    import slimtok.mix.inputs as inputs

    monkeypatch.setattr(inputs, "PIECE_ROWS", 1 << 16)
    spec = parse_spec(_synthetic_spec(tmp_path, 4_000_000, 4, 2_000_000)[0])
    sources = load_sources(spec)[0]
    tracemalloc.start()
    try:
        plan = make_plan(spec, sources)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    selected = len(plan.splits["train"])
    assert 1000 < selected < 4000 and abs(plan.sources[0].tokens - 2_000_000) <= MAX_TOKENS_SYNTHETIC
    assert peak <= 16 * selected + (16 << 20), f"{peak / 2**20:.1f} MiB traced for {selected} documents"


@pytest.fixture(scope="module")
def planted(tmp_path_factory, bpe_tokenizer):
    """Two roots of real text: b repeats 5 of a's texts (across roots) and one of its own."""
    tmp = tmp_path_factory.mktemp("planted")
    a = [f"[a {k}] {t}" for k, t in enumerate(sample_documents(24, 41))]
    b = [f"[b {k}] {t}" for k, t in enumerate(sample_documents(20, 42))]
    b[3], b[7], b[11], b[15], b[19] = a[0], a[5], a[12], a[13], a[23]
    b[9] = b[2]
    return {"tmp": tmp, "a": a, "b": b, "a_root": _text_root(tmp, "a", bpe_tokenizer, [a[:10], a[10:]]),
            "b_root": _text_root(tmp, "b", bpe_tokenizer, [b[:8], b[8:]])}


def _keep_first(*roots: tuple[list[str], list[bytes]], across_only: bool = True) -> tuple[list[bytes], list[int]]:
    """The documents a keep-first pass over the roots' texts keeps (only repeats of an earlier
    root's texts when ``across_only``), and how many each root lost."""
    seen: set[str] = set()
    kept, lost = [], []
    for texts, docs in roots:
        mine, n = set(), 0
        for text, doc in zip(texts, docs, strict=True):
            if text in seen or (not across_only and text in mine):
                n += 1
                continue
            mine.add(text)
            kept.append(doc)
        seen |= mine
        lost.append(n)
    return kept, lost


def test_dedup_drops_what_an_earlier_source_gave(planted, tmp_path):
    a_docs, b_docs = _docs(planted["a_root"]), _docs(planted["b_root"])
    want, lost = _keep_first((planted["a"], a_docs), (planted["b"], b_docs))
    assert lost == [0, 5]
    b_left = sum(len(d) // 4 for d in want[len(a_docs):])
    data = {"seed": 3, "shuffle": "none", "dedup": True,
            "sources": [{"name": "a", "root": str(planted["a_root"]), "tokens": sum(len(d) // 4 for d in a_docs)},
                        {"name": "b", "root": str(planted["b_root"]), "tokens": b_left}]}
    spec_path = tmp_path / "dedup.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    mix_main(spec_path, tmp_path / "one", workers=1)
    mix_main(spec_path, tmp_path / "two", workers=2)
    assert _out_docs(tmp_path / "one") == want  # b's second copy of its own text stays: not across sources
    assert (tmp_path / "one" / "train.bin").read_bytes() == (tmp_path / "two" / "train.bin").read_bytes()
    report = orjson.loads((tmp_path / "one" / "meta.json").read_bytes())["splits"]["train"]["mix"]
    dropped = [d for t, d in zip(planted["b"], b_docs, strict=True) if t in set(planted["a"])]
    assert report["b"]["duplicate_documents"] == 5 and report["a"]["duplicate_documents"] == 0
    assert report["b"]["duplicate_tokens"] == sum(len(d) // 4 for d in dropped)
    assert report["b"]["available_tokens"] == b_left == report["b"]["tokens"]
    lines: list[str] = []
    mix_main(spec_path, None, plan_only=True, log=lines.append)
    table = lines[0].splitlines()
    assert table[0].split()[-1] == "duplicates" and table[2].split()[-1] == "5" and table[3].split()[-1] == "5"
    # without dedup the same spec asks b for fewer tokens than it has: all 20 documents are candidates
    data["dedup"] = False
    plan, _ = mix(parse_spec(data), None)
    assert plan.sources[1].duplicate_documents == 0 and plan.sources[1].candidates == 20


def test_an_infeasible_dedup_mix_names_the_largest_total_that_fits(planted):
    a_docs, b_docs = _docs(planted["a_root"]), _docs(planted["b_root"])
    want, _ = _keep_first((planted["a"], a_docs), (planted["b"], b_docs))
    a_all, b_all = sum(len(d) // 4 for d in a_docs), sum(len(d) // 4 for d in b_docs)
    b_left = sum(len(d) // 4 for d in want[len(a_docs):])  # b once a gave everything

    def spec(total):
        return parse_spec({"seed": 3, "shuffle": "none", "dedup": True, "total_tokens": total, "sources": [
            {"name": "a", "root": str(planted["a_root"]), "weight": 0.5},
            {"name": "b", "root": str(planted["b_root"]), "weight": 0.5}]})

    with pytest.raises(MixError) as exc:
        mix(spec(2 * b_all), None)
    found = re.search(r"the largest total that fits is about ([\d,]+) tokens", str(exc.value))
    assert found, str(exc.value)
    largest = int(found.group(1).replace(",", ""))
    # b keeps at least what is left once a gave everything, and never more than all of it
    assert 2 * b_left * 0.999 <= largest <= min(2 * b_all, 2 * a_all)
    mix(spec(largest), None)  # fits
    with pytest.raises(MixError, match="duplicate documents are dropped"):
        mix(spec(int(largest * 1.002) + 2), None)  # past the bisection's 0.1 %: does not


def test_a_deduplicated_root_is_mixed_without_its_drops(planted, tmp_path):
    import shutil

    root = tmp_path / "b"
    shutil.copytree(planted["b_root"], root)
    slimtok("dedup", "--output-root", root, "--spawn-workers", "1")
    b_docs = _docs(root)
    want, lost = _keep_first((planted["b"], b_docs), across_only=False)
    assert lost == [1]
    data = {"seed": 3, "shuffle": "none",
            "sources": [{"name": "b", "root": str(root), "tokens": sum(len(d) // 4 for d in want)}]}
    spec_path = tmp_path / "root.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    mix_main(spec_path, tmp_path / "out")
    assert _out_docs(tmp_path / "out") == want
    report = orjson.loads((tmp_path / "out" / "meta.json").read_bytes())["splits"]["train"]["mix"]["b"]
    assert (report["duplicate_documents"], report["duplicate_tokens"]) == (1, len(b_docs[9]) // 4)
    # both: b loses its own repeat and a's five texts
    a_docs = _docs(planted["a_root"])
    both, _ = _keep_first((planted["a"], a_docs), (planted["b"], b_docs), across_only=False)
    data = {"seed": 3, "shuffle": "none", "dedup": True,
            "sources": [{"name": "a", "root": str(planted["a_root"]), "tokens": sum(len(d) // 4 for d in a_docs)},
                        {"name": "b", "root": str(root), "tokens": sum(len(d) // 4 for d in both[len(a_docs):])}]}
    plan, _ = mix(parse_spec(data), None)
    assert plan.sources[1].duplicate_documents == 6 and plan.sources[1].candidates == 14


def test_progress_plain_lines_per_chunk_and_quiet_on_a_terminal(roots, tmp_path):
    import io
    import os

    from slimtok.progress import display

    spec_path = _spec(roots, tmp_path, chunk_documents=10, validation={"documents": 4})
    shown = io.StringIO()  # not a terminal, and every=0: a plain line at every chunk
    mix_main(spec_path, tmp_path / "out", workers=2, progress=display("mix", unit="chunks", stream=shown, every=0),
             log=lambda _: None)
    meta = orjson.loads((tmp_path / "out" / "meta.json").read_bytes())["splits"]
    chunks = len((tmp_path / "out" / "manifest.jsonl").read_bytes().splitlines())
    docs, tokens = (sum(meta[s][k] for s in ("train", "validation")) for k in ("documents", "tokens"))
    lines = shown.getvalue().splitlines()
    assert len(lines) == chunks + 2 and all(line.startswith("mix: chunks ") for line in lines)
    assert [int(line.split()[2].split("/")[0]) for line in lines[:-1]] == list(range(chunks + 1))
    assert lines[-1].startswith(f"mix: chunks {chunks}/{chunks} · {docs:,} docs · {tokens:,} tokens · ")
    # a relaunch of the finished mix counts everything as done before it, and a terminal
    # with --quiet gets the plain line, not a bar
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        mix_main(spec_path, tmp_path / "out", progress=display("mix", unit="chunks", stream=tty, quiet=True),
                 log=lambda _: None)
        text = drain_pty(master)
    os.close(master)
    assert "%|" not in text and text.strip().startswith(f"mix: chunks {chunks}/{chunks} · {docs:,} docs")
    result = slimtok("mix", spec_path, "--output-root", tmp_path / "out", "--quiet")
    assert f"mix: chunks {chunks}/{chunks}" in result.stderr


def _blend(path: Path) -> tuple[list[str], list[float]]:
    """The file as Megatron reads --data-args-path: whitespace-split, then its blend parser."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.utils import get_blend_from_list
    return get_blend_from_list(path.read_text().split())


def test_data_args_weights_are_the_realized_shares_and_megatron_reads_them(combined, roots, tmp_path):
    from slimtok.errors import ExportError
    from slimtok.export import export_data_args

    two = [{"name": "web", "root": str(roots["web"]), "weight": 0.7},
           {"name": "code", "root": str(roots["code"]), "weight": 0.3, "max_epochs": 4}]
    out = tmp_path / "mixed"
    mix_main(_spec(roots, tmp_path, sources=two, total_tokens=20_000), out)
    # the realized tokens per source, counted here from the output's documents
    owner = {d: n for n in ("web", "code") for d in _docs(roots[n])}
    tokens = {"web": 0, "code": 0}
    for d in _out_docs(out):
        tokens[owner[d]] += len(d) // 4
    args = tmp_path / "blend.txt"
    slimtok("export", "megatron", "--output-root", out, "--prefix", "blend", "--data-args-path", args)
    prefixes, weights = _blend(args)
    # beside the list file, never in a source root
    assert prefixes == [str(tmp_path / f"blend_{n}_train_text_document") for n in ("web", "code")]
    assert not any((roots[n] / "megatron").exists() for n in ("web", "code"))
    assert weights == [tokens[n] / sum(tokens.values()) for n in ("web", "code")]
    for n, prefix in zip(("web", "code"), prefixes, strict=True):
        ds = megatron_dataset(Path(prefix))
        assert [ds[i].astype(np.uint32).tobytes() for i in range(len(ds))] == _docs(roots[n])
    # plain roots: weighted by their train tokens
    plain = tmp_path / "plain.txt"
    export_data_args(combined, "plain", plain, log=lambda _: None)
    prefixes, weights = _blend(plain)
    assert weights == [(r / "train.bin").stat().st_size // 4 for r in combined]
    assert prefixes == [str(tmp_path / f"plain_{r.name}_train_text_document") for r in combined]
    assert len(megatron_dataset(Path(prefixes[1]))) == len(_docs(roots["code"]))
    # a source that is one label of its root cannot be named by a whole-root prefix
    with_label = tmp_path / "label"
    mix_main(_spec(roots, tmp_path), with_label)
    slimtok("combine", "--output-root", roots["pile"])
    c4, pile = (sum(len(d) // 4 for d in _docs(roots["pile"], label)) for label in ("RedPajamaC4", None))
    with pytest.raises(ExportError, match=f"mix source 'c4' drew from {c4:,} tokens of its root, but the root's "
                                          f"combined train split holds {pile:,}"):
        export_data_args([with_label], "x", tmp_path / "x.txt", log=lambda _: None)
    assert not (tmp_path / "x.txt").exists()


def test_mixed_blocks_epochs_are_seeded_resumable_and_shared_by_ranks(combined):
    from slimtok.mixed import MixedBlocks

    def make(rank=0, world_size=1):
        return MixedBlocks([(combined[0], 1), (combined[1], 1)], 16, seed=4, samples_per_epoch=300,
                           rank=rank, world_size=world_size)

    def taken(blocks, count=None):
        return [x.tobytes() for x, _ in itertools.islice(blocks, count)]

    blocks = make()
    epoch0 = taken(blocks)
    assert len(epoch0) == 300 and taken(blocks) == epoch0  # a finished pass repeats the epoch
    blocks.set_epoch(2)
    head = taken(blocks, 120)
    state = blocks.state_dict()
    again = make()
    again.set_epoch(2)
    whole = taken(again)
    assert head == whole[:120] and whole != epoch0 and state == {"epoch": 2, "position": 120, "reader": 0, "readers": 1}
    resumed = make()
    resumed.load_state_dict(state)
    assert taken(resumed) == whole[120:]
    # two ranks take the even and odd draws of the same sequence
    ranks = [make(r, 2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(2)
    assert taken(ranks[0]) == whole[0::2] and taken(ranks[1]) == whole[1::2]


def test_hash_set_against_a_python_set():
    from slimtok.mix.plan import Hashes

    rng = np.random.default_rng(1)
    hi = rng.integers(0, 50, 3000, dtype=np.uint64)  # many equal hi: the rare branch runs often
    lo = rng.integers(0, 40, 3000, dtype=np.uint64)
    taken = Hashes().union(hi[:1000], lo[:1000]).union(hi[1000:1500], lo[1000:1500])
    reference = set(zip(hi[:1500].tolist(), lo[:1500].tolist(), strict=True))
    assert len(taken) == len(reference) and np.all(np.diff(taken.hi.astype(np.int64)) >= 0)
    assert taken.contains(hi, lo).tolist() == [(h, l_) in reference
                                               for h, l_ in zip(hi.tolist(), lo.tolist(), strict=True)]


def test_consumed_and_cleaned_roots_mix_to_the_same_bytes(roots, tmp_path):
    """A root whose shard files were moved into train.bin (--consume) or removed (clean) is read
    from the combined file at each shard's offset: the mix equals the one over the shard files."""
    import shutil

    from slimtok.clean import clean

    spec = yaml.safe_load(_spec(roots, tmp_path).read_text())
    mix_main(_spec(roots, tmp_path), tmp_path / "from-shards")
    moved = {}
    for name, how in (("web", "consume"), ("code", "clean"), ("pile", "consume")):
        moved[name] = shutil.copytree(roots[name], tmp_path / f"{name}-{how}")
        slimtok("combine", "--output-root", moved[name], "--quiet", *(["--consume"] if how == "consume" else []))
        if how == "clean":
            clean(moved[name])
        assert not list((moved[name] / "shards").rglob("*.bin"))
    for source, name in zip(spec["sources"], ("web", "code", "pile"), strict=True):
        source["root"] = str(moved[name])
    (tmp_path / "moved.yaml").write_text(yaml.safe_dump(spec))
    mix_main(tmp_path / "moved.yaml", tmp_path / "from-combined")
    for name in ("train.bin", "train.idx"):
        assert (tmp_path / "from-combined" / name).read_bytes() == (tmp_path / "from-shards" / name).read_bytes()
    train = moved["web"] / "train.bin"
    with open(train, "r+b") as f:
        f.truncate(train.stat().st_size - 4)
    with pytest.raises(MixError, match="was consumed into"):
        mix(parse_spec(spec), tmp_path / "refused")


def _chunk_ranges(out: Path) -> list[tuple[DoneRecord, int]]:
    """Each train chunk's done record and its byte offset in train.bin (chunks in manifest order)."""
    root, at, ranges = OutputRoot(out), 0, []
    for line in (out / "manifest.jsonl").read_bytes().splitlines():
        entry = orjson.loads(line)
        if entry["split"] == "train":
            record = read_record(root.done(entry["id"]), DoneRecord)
            ranges.append((record, at))
            at += record.bytes
    return ranges


def _flip_token(path: Path, at: int, size: int) -> None:
    """Change one token id inside bytes [at, at + size) into another id of the file that is not
    eos (so only the checksum can tell)."""
    ids = np.fromfile(path, dtype=np.uint32)
    lo, hi = at // 4, (at + size) // 4
    k = lo + int(np.flatnonzero((ids[lo:hi] >= 2) & ((ids[lo:hi] ^ 1) <= ids.max()))[0])
    ids[k] ^= 1
    ids.tofile(path)


def _failed_checks(out: Path) -> dict[str, str]:
    from slimtok.validate import validate

    return {c.name: c.detail for c in validate(out, samples=4, block_size=16, log=lambda _: None).checks if not c.ok}


def test_chunk_checksums_are_xxh3_and_a_damaged_chunk_is_named(roots, tmp_path):
    out = tmp_path / "out"
    mix_main(_spec(roots, tmp_path, shuffle="none"), out)
    data = (out / "train.bin").read_bytes()
    ranges = _chunk_ranges(out)
    assert len(ranges) > 3 and sum(r.bytes for r, _ in ranges) == len(data)
    for record, at in ranges:  # the digest of each chunk's range, computed here in one call
        assert record.sha256 == "" and record.checksum == "xxh3-128:" + xxhash.xxh3_128_hexdigest(
            data[at:at + record.bytes])
    assert _failed_checks(out) == {}
    damaged, at = ranges[2]
    _flip_token(out / "train.bin", at + damaged.bytes // 2, damaged.bytes // 2)  # inside the third chunk
    failed = _failed_checks(out)
    assert list(failed) == ["train.bin: checksums"] and failed["train.bin: checksums"].endswith(f": {damaged.shard}")


def test_an_old_sha256_chunk_record_still_verifies(roots, tmp_path):
    """A chunk record as mixes wrote it before checksums were named (``sha256`` only) is checked
    with sha256: as written it passes, and damage in its range is named."""
    out = tmp_path / "out"
    mix_main(_spec(roots, tmp_path, shuffle="none"), out)
    data = (out / "train.bin").read_bytes()
    old, at = _chunk_ranges(out)[1]
    old.sha256, old.checksum = hashlib.sha256(data[at:at + old.bytes]).hexdigest(), ""
    raw = orjson.loads(old.to_json())
    del raw["checksum"]  # the field did not exist
    OutputRoot(out).done(old.shard).write_bytes(orjson.dumps(raw))
    assert read_record(OutputRoot(out).done(old.shard), DoneRecord).data_checksum().algorithm == "sha256"
    assert _failed_checks(out) == {}
    _flip_token(out / "train.bin", at, old.bytes)
    assert list(_failed_checks(out)) == ["train.bin: checksums"]
    assert _failed_checks(out)["train.bin: checksums"].endswith(f": {old.shard}")


def test_a_chunk_record_naming_an_unknown_checksum_is_refused_by_name(roots, tmp_path):
    from slimtok.errors import SlimtokError
    from slimtok.validate import validate

    out = tmp_path / "out"
    mix_main(_spec(roots, tmp_path, shuffle="none"), out)
    record = _chunk_ranges(out)[0][0]
    record.checksum = "blake9:" + "0" * 32
    write_record(OutputRoot(out).done(record.shard), record)
    with pytest.raises(SlimtokError, match="unknown checksum algorithm 'blake9'"):
        validate(out, samples=4, block_size=16, log=lambda _: None)


def test_combine_and_clean_check_a_shard_with_its_records_algorithm(roots, tmp_path):
    """A tokenized root whose done records name xxh3-128 is combined and cleaned like a sha256
    one; a damaged shard is refused by combine, a damaged combined file by clean, both naming it."""
    import shutil

    from slimtok.clean import clean
    from slimtok.combine import combine
    from slimtok.errors import CleanError, CombineError

    root = Path(shutil.copytree(roots["code"], tmp_path / "code"))
    out = OutputRoot(root)
    records = [read_record(p, DoneRecord) for p in sorted((root / "done").rglob("*.json"))]
    for r in records:
        r.sha256, r.checksum = "", "xxh3-128:" + xxhash.xxh3_128_hexdigest(out.resolve(r.file).read_bytes())
        write_record(out.done(r.shard), r)
    victim = out.resolve(records[0].file)
    good = victim.read_bytes()
    victim.write_bytes(bytes([good[0] ^ 1]) + good[1:])
    with pytest.raises(CombineError, match="xxh3-128 does not match its done record"):
        combine(root, verify=True, log=lambda _: None)
    victim.write_bytes(good)
    combine(root, verify=True, log=lambda _: None)
    assert (root / "train.bin").read_bytes() == b"".join(out.resolve(r.file).read_bytes() for r in records)
    combined = (root / "train.bin").read_bytes()
    (root / "train.bin").write_bytes(combined[:-1] + bytes([combined[-1] ^ 1]))
    with pytest.raises(CleanError, match=f"xxh3-128 of shard {records[-1].shard}'s done record"):
        clean(root)
    (root / "train.bin").write_bytes(combined)
    clean(root)
    assert not list((root / "shards").rglob("*.bin")) and _failed_checks(root) == {}


def test_a_mix_of_a_mix_is_refused_naming_the_missing_tables(roots, tmp_path):
    """A mix's output has no document tables (its chunks are ranges of train.bin), so it cannot be a
    source: refused by its kind before writing, naming the root and what to name instead."""
    from slimtok.errors import RootKindError

    mix_main(_spec(roots, tmp_path), tmp_path / "first")
    spec = tmp_path / "again.yaml"
    spec.write_text(yaml.safe_dump({"seed": 1, "total_tokens": 1000,
                                    "sources": [{"name": "m", "root": str(tmp_path / "first"), "weight": 1}]}))
    with pytest.raises(RootKindError, match=f"^{tmp_path / 'first'}: is a mix output root .*no document tables.*"
                                            "name the roots it was mixed from"):
        mix_main(spec, tmp_path / "second")
    assert not (tmp_path / "second").exists()


def test_buffered_copy_crosses_block_edges_and_names_a_short_source(tmp_path, monkeypatch):
    """Spans longer and shorter than the copy buffer, from two files in a shuffled order: the output
    and its digest equal a slice-and-join computed here; a source that ends early is named."""
    from slimtok.mix import write as mix_write
    from slimtok.mix.write import Layout, _copy_hashed
    from slimtok.spans import ShortSource

    monkeypatch.setattr(mix_write, "COPY_BLOCK", 7)
    sources = [tmp_path / "a.bin", tmp_path / "b.bin"]
    blobs = [bytes(range(100)), bytes(range(100, 160))]
    for path, blob in zip(sources, blobs, strict=True):
        path.write_bytes(b"xx" + blob)  # each file's tokens start at base 2
    layout = Layout(sources, [2, 2], np.zeros(1, dtype=np.int64), ["s"])
    spans = [(1, 5, 20), (0, 0, 3), (0, 50, 1), (1, 0, 5), (0, 10, 40)]
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"\0" * 80)
    digest, opened = xxhash.xxh3_128(), {}
    fd = os.open(dest, os.O_WRONLY)
    try:
        assert _copy_hashed(spans, layout, opened, fd, 3, digest) == 69
    finally:
        os.close(fd)
        for src in opened.values():
            src.close()
    want = b"".join(blobs[f][s:s + n] for f, s, n in spans)
    assert dest.read_bytes() == b"\0" * 3 + want + b"\0" * 8 and len(opened) == 2
    assert digest.hexdigest() == xxhash.xxh3_128_hexdigest(want)
    fd = os.open(dest, os.O_WRONLY)
    try:
        with pytest.raises(ShortSource, match="b.bin ends 5 bytes before"):
            _copy_hashed([(1, 55, 10)], layout, {}, fd, 0, xxhash.xxh3_128())
    finally:
        os.close(fd)


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (hidden ones too) by relative path, with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _strip_kind(root: Path) -> None:
    """job.json as slimtok wrote it before roots recorded their kind."""
    raw = orjson.loads((root / "job.json").read_bytes())
    del raw["kind"]
    (root / "job.json").write_bytes(orjson.dumps(raw))


def test_kinds_are_recorded_at_creation_and_inferred_for_older_roots(roots, tmp_path):
    import shutil

    from slimtok.protocol import MIX, TOKENIZE, root_kind

    out = tmp_path / "out"
    mix_main(_spec(roots, tmp_path), out)
    assert orjson.loads((out / "job.json").read_bytes())["kind"] == MIX
    assert orjson.loads((roots["web"] / "job.json").read_bytes())["kind"] == TOKENIZE
    assert root_kind(OutputRoot(out)).how == "job.json records it"
    old_mix, old_tok = Path(shutil.copytree(out, tmp_path / "old-mix")), Path(shutil.copytree(roots["code"],
                                                                                                  tmp_path / "old"))
    _strip_kind(old_mix)
    _strip_kind(old_tok)
    assert (root_kind(OutputRoot(old_mix)).kind, root_kind(OutputRoot(old_tok)).kind) == (MIX, TOKENIZE)
    assert "inferred" in root_kind(OutputRoot(old_mix)).how and "inferred" in root_kind(OutputRoot(old_tok)).how
    assert root_kind(OutputRoot(tmp_path / "nothing")).kind is None


@pytest.mark.parametrize("old", [False, True], ids=["recorded", "inferred"])
def test_commands_a_mix_root_cannot_serve_refuse_naming_the_right_one_and_change_nothing(roots, tmp_path, old):
    """clean, combine (with and without --consume), dedup and tokenize on a mix root each refuse in
    one line naming the command that can, and every byte of the root stays as it was (clean used
    to delete train.bin and val.bin: the chunk records name them)."""
    out = tmp_path / "out"
    mix_main(_spec(roots, tmp_path, validation={"documents": 5}), out)
    if old:
        _strip_kind(out)
    before = _tree(out)
    kind = "(inferred: mix.json is there)" if old else "(job.json records it)"
    manifest = roots["tmp"] / "web-m" / "manifest.jsonl"
    expected = {("clean", "--output-root", out): "on the roots it was mixed from",
                ("combine", "--output-root", out): "relaunch `slimtok mix SPEC --output-root",
                ("combine", "--output-root", out, "--consume"): "relaunch `slimtok mix SPEC --output-root",
                ("dedup", "--output-root", out): "`dedup: true` in the mix spec",
                ("tokenize", "--manifest", manifest, "--output-root", out, "--tokenizer",
                 roots["web"] / "tokenizer" / "tokenizer.json", "--quiet"): "use a new --output-root"}
    for args, fix in expected.items():
        proc = slimtok(*args, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (args, proc.stderr)
        assert lines[0].startswith(f"error: {out}: is a mix output root {kind}: ") and fix in lines[0], lines[0]
        assert _tree(out) == before, args


def test_a_mix_never_writes_into_a_folder_holding_anything_but_its_own_job(roots, tmp_path):
    """Into one of its own sources, another tokenize root, a folder of foreign files, and a
    tokenize root an older slimtok left a stray mix.json of this very mix in (it used to create
    mix.json before refusing, and then go on at the second run): each refused, before any write."""
    import shutil

    from slimtok.errors import RootKindError

    spec = _spec(roots, tmp_path)
    own_source = Path(shutil.copytree(roots["web"], tmp_path / "web"))
    data = yaml.safe_load(spec.read_text())
    data["sources"][0]["root"] = str(own_source)
    spec.write_text(yaml.safe_dump(data))
    other = Path(shutil.copytree(roots["pile"], tmp_path / "pile"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for folder, match in ((own_source, "is a tokenize output root"), (other, "is a tokenize output root"),
                          (foreign, "holds 1 name\\(s\\) that are not this mix's, e.g. 'notes.txt'")):
        before = _tree(folder)
        for _ in range(2):  # the second run used to find the mix.json the first one left and go on
            with pytest.raises(RootKindError, match=match):
                mix_main(spec, folder)
            assert _tree(folder) == before
    mix_main(spec, tmp_path / "mix")
    stray = Path(shutil.copytree(roots["code"], tmp_path / "stray"))
    _strip_kind(stray)  # an older root: its kind is inferred from the stray mix.json
    shutil.copy(tmp_path / "mix" / "mix.json", stray / "mix.json")
    before = _tree(stray)
    with pytest.raises(RootKindError, match="job.json: holds a job that is not this mix"):
        mix_main(spec, stray)
    assert _tree(stray) == before


def test_a_removed_cut_or_changed_split_file_is_rebuilt_to_the_same_bytes(roots, tmp_path):
    """The published split file of a finished mix is never trusted over its chunk records: relaunched
    after the file was removed (the old path published a train.bin of zeros with exit 0), cut
    short, or changed inside one chunk, the mix writes exactly the bytes of an undamaged run."""
    spec = _spec(roots, tmp_path, validation={"documents": 5})
    out = tmp_path / "out"
    mix_main(spec, out)
    good = _tree(out)
    for damage in ("remove", "cut", "flip", "remove partial too"):
        train = out / "train.bin"
        if damage.startswith("remove"):
            train.unlink()
            (out / "val.bin").unlink()
        elif damage == "cut":
            with open(train, "r+b") as f:
                f.truncate(train.stat().st_size - 8)
        else:
            record, at = _chunk_ranges(out)[1]
            _flip_token(train, at, record.bytes)
        assert mix_main(spec, out) == 0
        now = _tree(out)
        for name in ("train.bin", "train.idx", "val.bin", "val.idx", "mix.json", "manifest.jsonl"):
            assert now[name] == good[name], (damage, name)
        assert not (out / ".train.bin.mix-partial").exists()


def test_a_partial_file_that_lost_chunks_is_rewritten_where_it_differs(roots, tmp_path, monkeypatch):
    """A killed mix's partial file that was replaced (here: removed) since its chunks were recorded
    holds none of them: the relaunch writes every chunk again instead of publishing zeros."""
    import slimtok.mix.write as write

    spec = _spec(roots, tmp_path, chunk_documents=3)
    reference = tmp_path / "reference"
    mix_main(spec, reference)
    out = tmp_path / "out"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(write, "_write_index", killed)  # every chunk committed, nothing published
    with pytest.raises(KeyboardInterrupt):
        mix_main(spec, out)
    monkeypatch.undo()
    partial = out / ".train.bin.mix-partial"
    assert partial.exists() and not (out / "train.bin").exists() and list((out / "done").rglob("*.json"))
    partial.unlink()
    mix_main(spec, out)
    assert (out / "train.bin").read_bytes() == (reference / "train.bin").read_bytes()


def test_validate_and_export_tell_a_mix_root_to_relaunch_the_mix(roots, tmp_path):
    """On a mix root without its meta (a mix killed before it published), validate and export name
    `slimtok mix`, not combine (which refuses a mix root)."""
    from slimtok.errors import ExportError, ValidateError
    from slimtok.export import export_packed
    from slimtok.validate import validate

    out = tmp_path / "out"
    mix_main(_spec(roots, tmp_path), out)
    (out / "meta.json").unlink()
    fix = f"relaunch `slimtok mix SPEC --output-root {out}` with its spec first"
    missing = f"{out / 'meta.json'}: is missing: nothing was combined yet; {fix}"
    with pytest.raises(ValidateError, match=re.escape(missing)):
        validate(out, log=lambda _: None)
    with pytest.raises(ExportError, match=re.escape(fix)):
        export_packed(out, 16, log=lambda _: None)


def test_a_job_pinned_into_the_folder_while_a_mix_starts_is_never_replaced(roots, tmp_path, monkeypatch):
    """A tokenize that pins its job.json in the empty folder between the mix's check and its first
    write (two commands started at once): the mix refuses, the other job's record is byte for byte
    what it wrote, and the mix's own mix.json of this launch is gone again."""
    import slimtok.mix.write as write
    from slimtok.errors import RootKindError

    out = tmp_path / "out"
    theirs = (roots["web"] / "job.json").read_bytes()
    checked = write._own_folder

    def tokenize_meanwhile(*args):
        checked(*args)
        out.mkdir()
        (out / "job.json").write_bytes(theirs)

    monkeypatch.setattr(write, "_own_folder", tokenize_meanwhile)
    with pytest.raises(RootKindError, match=re.escape(f"{out / 'job.json'}: holds a job that is not this mix")):
        mix_main(_spec(roots, tmp_path), out)
    assert _tree(out) == {"job.json": theirs}


def test_a_link_planted_at_a_killed_mix_partial_file_is_refused_and_its_target_untouched(roots, tmp_path):
    """Issue 24, item 5: a mix resumed after a kill writes its split's partial file again; a link
    planted there (to another user's file) is refused naming it, and that file keeps its bytes and mtime."""
    spec_path = _spec(roots, tmp_path, chunk_documents=1)
    killed = tmp_path / "killed"
    subprocess.run([sys.executable, "-c", KILLED_COMMIT, "mix", str(spec_path), "--output-root", str(killed),
                    "--workers", "1"], capture_output=True, timeout=300)
    partial = OutputRoot(killed).mix_partial("train")
    assert partial.is_file()
    victim = tmp_path / "victim"
    victim.write_bytes(b"another user's bytes")
    os.utime(victim, ns=(10**18, 10**18))
    partial.unlink()
    partial.symlink_to(victim)
    proc = slimtok("mix", spec_path, "--output-root", killed, "--workers", "1", check=False)
    assert proc.returncode == 3 and f"{partial}: is a symbolic link where slimtok writes" in proc.stderr, proc.stderr
    assert (victim.read_bytes(), victim.stat().st_mtime_ns) == (b"another user's bytes", 10**18)
