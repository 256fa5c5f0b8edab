"""The ``slimtok`` command: thin click wrappers over functions callable from Python."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__
from .job import CHECKPOINT_EVERY, MIN_FREE_FRACTION, PARITY_SHARE, STALE_AFTER, TOKENS_PER_WRITE
from .protocol import DEFAULT_SOURCE_KEY, SPLITS
from .protocol.records import DEFAULT_MAX_LINE_BYTES
from .tokenizer import BACKENDS, BOS_CHOICES, DTYPES, SPECIAL_TEXT

SPLIT_CHOICES = ",".join(SPLITS)


def _splits(value: str | None) -> tuple[str, ...] | None:
    if not value:
        return None
    chosen = tuple(s.strip() for s in value.split(",") if s.strip())
    bad = [s for s in chosen if s not in SPLITS]
    if bad:
        raise click.BadParameter(f"unknown split(s) {', '.join(bad)}; choose from {SPLIT_CHOICES}")
    return chosen


class _Commands(click.Group):
    """The command group: a :class:`SlimtokError` from any command is one line and its exit code."""

    def invoke(self, ctx: click.Context) -> object:
        from .errors import SlimtokError

        try:
            return super().invoke(ctx)
        except SlimtokError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="slimtok")
def main() -> None:
    """Tokenize SlimPajama-style .jsonl.zst shards into flat token files, on one node or many."""


@main.command("manifest")
@click.option("--dataset-dir", required=True, type=click.Path(file_okay=False),
              help="Plain folder, HF cache folder datasets--org--name, or a snapshot folder; or an object "
              "store prefix: s3://bucket/prefix/ or hf://datasets/org/name[@revision].")
@click.option("--output-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--pattern", "patterns", multiple=True, default=("*.jsonl.zst",), show_default=True,
              help="File-name glob of shards; repeat for several.")
@click.option("--strict", is_flag=True, help="Fail when `slimtok mirror`'s record lists shards that are missing.")
@click.option("--revision", default=None, help="Snapshot of a HF cache folder: a refs/ name or a commit "
              "(default: refs/main, else the only snapshot, else the one `slimtok mirror` recorded).")
def manifest_cmd(dataset_dir: str, output_dir: Path, patterns: tuple[str, ...], strict: bool,
                 revision: str | None) -> None:
    """Write manifest.jsonl (one entry per shard) and manifest_summary.json."""
    from .errors import ManifestError
    from .manifest import build_manifest, missing_from_mirror, summarize, write_manifest

    root, entries = build_manifest(dataset_dir, patterns, revision=revision)
    missing = missing_from_mirror(root, entries, patterns)
    if missing:
        shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        message = (f"{len(missing)} shard(s) recorded by `slimtok mirror` are missing under {root}: {shown}; "
                   "re-run the same `slimtok mirror` command to fetch them")
        if strict:
            raise ManifestError(message)
        click.echo(f"warning: {message}", err=True)
    manifest, summary = write_manifest(entries, output_dir, root)
    totals = summarize(entries)
    click.echo(f"{manifest}: {totals['shards']} shards, {totals['bytes'] / 1e9:.3f} GB from {root}")
    for split, s in totals["splits"].items():
        click.echo(f"  {split}: {s['shards']} shards, {s['bytes'] / 1e9:.3f} GB")
    click.echo(f"{summary}")


@main.command("mirror")
@click.argument("repo_id")
@click.option("--repo-type", type=click.Choice(["dataset", "model"]), default="dataset", show_default=True)
@click.option("--revision", default=None, help="Branch, tag or commit hash (default: main).")
@click.option("--include", "include", multiple=True, metavar="GLOB",
              help="Only repo paths matching GLOB, e.g. 'train/chunk1/*' ('*' also matches '/'); repeatable.")
@click.option("--exclude", "exclude", multiple=True, metavar="GLOB", help="Skip repo paths matching GLOB; repeatable.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Hugging Face cache to fill (default: HF_HUB_CACHE, i.e. ~/.cache/huggingface/hub).")
@click.option("--local-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Plain folder to fill instead of the cache.")
@click.option("--max-workers", type=click.IntRange(min=1), default=8, show_default=True,
              help="Files downloaded at once.")
@click.option("--min-free-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True,
              help="Refuse if the download would leave less than this share of the disk free.")
@click.option("--quiet", is_flag=True, help="No progress bar: a plain line every 10 s, as in a log.")
def mirror_cmd(repo_id: str, repo_type: str, revision: str | None, include: tuple[str, ...],
               exclude: tuple[str, ...], cache_dir: Path | None, local_dir: Path | None, max_workers: int,
               min_free_fraction: float, quiet: bool) -> None:
    """Download REPO_ID from the Hugging Face Hub, skipping files already complete; re-run to resume.

    Progress and the summary go to stderr; the snapshot folder (the --dataset-dir for `slimtok manifest`)
    is the last line on stdout. The token comes from HF_TOKEN or `hf auth login`.
    """
    from .mirror import mirror
    from .progress import display

    result = mirror(repo_id, repo_type=repo_type, revision=revision, include=include, exclude=exclude,
                    cache_dir=cache_dir, local_dir=local_dir, max_workers=max_workers,
                    min_free_fraction=min_free_fraction, log=lambda msg: click.echo(msg, err=True),
                    progress=display("mirror", unit="files", quiet=quiet))
    click.echo(result.summary(), err=True)
    click.echo(f"record: {result.record_path}", err=True)
    click.echo(str(result.snapshot_path))


@main.command("tokenize")
@click.option("--manifest", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--output-root", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--tokenizer", required=True, help="tokenizer.json, a tokenizer folder, or a Hub repo id.")
@click.option("--tokenizer-class", default="", help="For a tokenizer without tokenizer.json only: the transformers "
              "class that builds it from its vocabulary files (e.g. GPT2Tokenizer); remote code never runs. Pinned.")
@click.option("--spawn-workers", default="auto", show_default=True,
              help="Local worker processes: 'auto' (one per usable core) or a number.")
@click.option("--max-workers", type=click.IntRange(min=1), default=None, help="Cap for --spawn-workers auto.")
@click.option("--process-index", type=click.IntRange(min=0), default=None,
              help="This process's index (default: SLURM_PROCID, OMPI_COMM_WORLD_RANK or PMI_RANK).")
@click.option("--process-count", type=click.IntRange(min=1), default=None,
              help="Number of processes (default: SLURM_NTASKS, OMPI_COMM_WORLD_SIZE or PMI_SIZE).")
@click.option("--tokens-per-write", type=click.IntRange(min=1), default=TOKENS_PER_WRITE, show_default=True,
              help="Write pending tokens at the first document boundary after this many tokens.")
@click.option("--checkpoint-every", type=click.FloatRange(min=0), default=CHECKPOINT_EVERY, show_default=True,
              help="Seconds of work between checkpoints (fdatasync + record) at a write; 0 = at every write. "
                   "A killed worker redoes at most this much of its shard.")
@click.option("--splits", default=SPLIT_CHOICES, show_default=True)
@click.option("--text-key", default="text", show_default=True)
@click.option("--source-key", default=DEFAULT_SOURCE_KEY, show_default=True,
              help="Dotted path naming each document's source, counted per source in done records and "
                   "meta.json; '' for none. Pinned in job.json.")
@click.option("--max-line-bytes", type=click.IntRange(min=1), default=DEFAULT_MAX_LINE_BYTES, show_default=True,
              help="Skip (count as line_too_long) any line longer than this, or a parquet/Arrow text of more "
                   "UTF-8 bytes; it bounds a worker's reading memory. Pinned in job.json.")
@click.option("--min-chars", type=click.IntRange(min=0), default=0, show_default=True,
              help="Skip (count as too_few_chars) documents of fewer characters; 0 = off. Pinned in job.json.")
@click.option("--min-tokens", type=click.IntRange(min=0), default=0, show_default=True,
              help="Skip (count as too_few_tokens) documents of fewer tokens, bos/eos aside; 0 = off. Pinned in "
                   "job.json.")
@click.option("--eos-id", type=click.IntRange(min=0), default=None, help="Default: the tokenizer's eos token.")
@click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True,
              help="Token width: auto = uint16 when every id the tokenizer can emit is < 65,536, else uint32.")
@click.option("--bos", type=click.Choice(BOS_CHOICES), default="auto", show_default=True,
              help="A bos before each document: auto = what the tokenizer's own template adds "
                   "(Llama-style yes, Qwen no).")
@click.option("--special-text", type=click.Choice(SPECIAL_TEXT), default="literal", show_default=True,
              help="Special-token strings inside text: literal = ordinary text, parse = their control ids.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="Encoder: auto = fastokens when installed and id-identical to tokenizers on a start-up "
                   "sample, else tokenizers. Not pinned: outputs are the same either way.")
@click.option("--parity-share", type=click.FloatRange(0, 1), default=PARITY_SHARE, show_default=True,
              help="Share of documents re-encoded by the reference tokenizers and compared with the ids written "
                   "(a difference fails the shard; counts in the done records); 0 = none. Not pinned.")
@click.option("--retry-failed", is_flag=True, help="Try shards that failed in earlier launches again.")
@click.option("--min-free-fraction", type=click.FloatRange(0, 1, max_open=True), default=MIN_FREE_FRACTION,
              show_default=True, help="Refuse to start if the estimated token files would leave less than this "
              "share of the output root's disk free; 0 turns the check off.")
@click.option("--stale-after", type=click.FloatRange(min=0.5), default=STALE_AFTER, show_default=True,
              help="Seconds without heartbeat after which another worker takes a shard over.")
@click.option("--quiet", is_flag=True, help="No progress bar: a plain line every 10 s, as in a log.")
def tokenize_cmd(manifest: Path, output_root: Path, tokenizer: str, tokenizer_class: str, spawn_workers: str,
                 max_workers: int | None,
                 process_index: int | None, process_count: int | None, tokens_per_write: int,
                 checkpoint_every: float, splits: str, text_key: str, source_key: str, max_line_bytes: int,
                 min_chars: int, min_tokens: int, eos_id: int | None, dtype: str, bos: str,
                 special_text: str, backend: str, parity_share: float,
                 retry_failed: bool, min_free_fraction: float, stale_after: float, quiet: bool) -> None:
    """Tokenize the manifest's shards into OUTPUT_ROOT; relaunch the same command to resume."""
    from .job import TokenizeSettings
    from .launch import settings_for, tokenize
    from .progress import display

    base = TokenizeSettings(manifest=str(manifest.absolute()), output_root=str(output_root.absolute()),
                            tokenizer=tokenizer, tokenizer_class=tokenizer_class, tokens_per_write=tokens_per_write,
                            checkpoint_every=checkpoint_every,
                            splits=_splits(splits) or SPLITS, text_key=text_key, source_key=source_key,
                            max_line_bytes=max_line_bytes, min_chars=min_chars, min_tokens=min_tokens,
                            eos_id=eos_id, dtype=dtype, bos=bos, special_text=special_text, backend=backend,
                            parity_share=parity_share,
                            retry_failed=retry_failed, min_free_fraction=min_free_fraction,
                            stale_after=stale_after)
    settings, source = settings_for(base, spawn_workers, max_workers, process_index, process_count)
    if not quiet:
        click.echo(f"process {settings.process_index} of {settings.process_count} ({source}), "
                   f"{settings.workers} worker(s), output {settings.output_root}", err=True)
    sys.exit(tokenize(settings, log=lambda s: click.echo(s, err=True), progress=display("tokenize", quiet=quiet)))


@main.command("combine")
@click.option("--output-root", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--splits", default=None, help=f"Subset of {SPLIT_CHOICES} (default: every split present).")
@click.option("--allow-partial", is_flag=True, help="Combine what is done even if shards are missing.")
@click.option("--no-verify", is_flag=True, help="Check sizes only, not the done records' checksums, before copying.")
@click.option("--consume", is_flag=True, help="Move shard data into the split files (deleting each shard once "
              "moved) instead of copying: peak extra disk about one shard.")
@click.option("--dedup", "dedup", is_flag=True, help="Leave out the documents `slimtok dedup` dropped (duplicates "
              "and train documents found in validation or test).")
@click.option("--quiet", is_flag=True, help="No progress bar: a plain line every 10 s, as in a log.")
def combine_cmd(output_root: Path, splits: str | None, allow_partial: bool, no_verify: bool, consume: bool,
                dedup: bool, quiet: bool) -> None:
    """Write train.bin / val.bin / test.bin and meta.pkl / meta.json from finished shards."""
    from .combine import combine
    from .progress import display

    combine(output_root, _splits(splits), allow_partial=allow_partial, verify=not no_verify, log=click.echo,
            consume=consume, dedup=dedup,
            progress=display("combine", quiet=quiet))


@main.command("clean")
@click.option("--output-root", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Check and list what would be removed; remove nothing.")
@click.option("--quiet", is_flag=True, help="No progress bar for the check: a plain line every 10 s, as in a log.")
def clean_cmd(output_root: Path, dry_run: bool, quiet: bool) -> None:
    """After combine: remove the shard data, parts, temporary files and leftover locks combine no longer
    needs, once the combined files are checked against the done records (sizes and checksums)."""
    from .clean import clean
    from .progress import display

    report = clean(output_root, dry_run=dry_run,
                   progress=display("clean: check", quiet=quiet))
    if dry_run:
        for removal in report.removals:
            click.echo(f"{removal.path}\t{removal.bytes}")
    for line in report.summary():
        click.echo(line)


@main.command("mix")
@click.argument("spec", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--output-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where train.bin/.idx (and val.* when carved), meta.* and mix.json go; needed unless --plan.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Threads copying chunks of the mix; the output is the same for any number.")
@click.option("--plan", "plan_only", is_flag=True, help="Print the realized mix table and write nothing.")
@click.option("--quiet", is_flag=True, help="No progress bar: a plain line every 10 s, as in a log.")
def mix_cmd(spec: Path, output_root: Path | None, workers: int, plan_only: bool, quiet: bool) -> None:
    """Mix several tokenized roots by weight or token budget into one training set (docs/MIX.md).

    Deterministic: the same SPEC and inputs give the same bytes for any --workers and after any kill;
    relaunch the same command to resume.
    """
    from .errors import MixError
    from .mix import mix_main
    from .progress import display

    if output_root is None and not plan_only:
        raise MixError("no --output-root given", spec, "pass --output-root OUT, or --plan to only print the table")
    sys.exit(mix_main(spec, output_root, workers=workers, plan_only=plan_only, log=click.echo,
                      progress=display("mix", unit="chunks", quiet=quiet)))


def _auto_or_count(value: str) -> int | None:
    """None for 'auto', else a positive whole number (click reports a bad value)."""
    if value == "auto":
        return None
    if not value.isdigit() or int(value) < 1:
        raise click.BadParameter(f"{value!r} is neither 'auto' nor a positive number")
    return int(value)


@main.command("dedup")
@click.option("--output-root", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--spawn-workers", default="auto", show_default=True,
              help="Local worker processes: 'auto' (one per usable core) or a number.")
@click.option("--process-index", type=click.IntRange(min=0), default=None,
              help="This process's index (default: SLURM_PROCID, OMPI_COMM_WORLD_RANK or PMI_RANK).")
@click.option("--process-count", type=click.IntRange(min=1), default=None,
              help="Number of processes (default: SLURM_NTASKS, OMPI_COMM_WORLD_SIZE or PMI_SIZE).")
@click.option("--buckets", default="auto", show_default=True, callback=lambda _ctx, _param, v: _auto_or_count(v),
              help="Hash-range buckets (units of work claimed like shards): 'auto' (one per 65,536 documents, "
                   "at most 256) or a number.")
@click.option("--stale-after", type=click.FloatRange(min=0.5), default=STALE_AFTER, show_default=True,
              help="Seconds without heartbeat after which another worker takes a unit over.")
@click.option("--quiet", is_flag=True, help="No progress bar: a plain line every 10 s, as in a log.")
def dedup_cmd(output_root: Path, spawn_workers: str, process_index: int | None, process_count: int | None,
              buckets: int | None, stale_after: float, quiet: bool) -> None:
    """Find exact duplicates and holdout contamination among the documents of a tokenized root.

    Writes drop lists under OUTPUT_ROOT/dedup/; `slimtok combine --dedup` then leaves those
    documents out. Relaunch the same command to resume.
    """
    from .dedup import run_dedup
    from .executor import process_grid, worker_count
    from .progress import display

    index, count, _ = process_grid(process_index, process_count)
    job = run_dedup(output_root, buckets, worker_count(spawn_workers, None), index, count, stale_after,
                    progress=display("dedup", unit="units", quiet=quiet))
    dropped = ", ".join(f"{n:,} {name}" for name, n in sorted(job.dropped.items()))
    click.echo(f"dedup: {job.documents:,} documents in {job.shards:,} shards; dropped {dropped}")


@main.command("validate")
@click.option("--output-root", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--samples", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--block-size", type=click.IntRange(min=2), default=1024, show_default=True)
def validate_cmd(output_root: Path, samples: int, seed: int, block_size: int) -> None:
    """Alignment, ids, sizes, checksums, eye test and a sampler dry-run; non-zero exit on failure."""
    from .validate import validate

    report = validate(output_root, samples=samples, seed=seed, block_size=block_size, log=click.echo)
    click.echo("validate: " + ("all checks passed" if report.ok else "FAILED"))
    sys.exit(0 if report.ok else 1)


@main.command("status")
@click.option("--output-root", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the same facts as one JSON object.")
@click.option("--watch", type=click.FloatRange(min=0.5), default=None, metavar="SECONDS",
              help="Redraw every SECONDS until interrupted.")
@click.option("--prometheus", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="Also write Prometheus text-format metrics to FILE (atomically), for node_exporter.")
@click.option("--window", type=click.FloatRange(min=1), default=600, show_default=True, metavar="SECONDS",
              help="Measure throughput over shards finished this long ago at most.")
@click.option("--serve", "serve_at", default=None, metavar="[HOST:]PORT",
              help="Serve a live status page (default host 127.0.0.1; another host is said when it starts).")
@click.option("--html", "html_report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE", help="Write the status page as one self-contained HTML file and exit.")
def status_cmd(output_root: Path, as_json: bool, watch: float | None, prometheus: Path | None,
               window: float, serve_at: str | None, html_report: Path | None) -> None:
    """Shards done / running / failed / pending per split, throughput, ETA and one row per worker."""
    import time

    import orjson

    from .status import collect_status, format_status, write_prometheus

    if html_report is not None or serve_at is not None:
        from .status.serve import serve, write_report

        if as_json or watch is not None or prometheus is not None:
            raise click.UsageError("--serve and --html show the page only; run --json, --watch or --prometheus "
                                   "as a separate `slimtok status`")

        if html_report is not None:
            write_report(output_root, html_report, window)
            click.echo(f"wrote {html_report}")
        if serve_at is not None:
            serve(output_root, serve_at, window, say=click.echo)
        return
    while True:
        status = collect_status(output_root, window)
        if prometheus is not None:
            write_prometheus(status, prometheus)
        if watch is not None and not as_json:
            click.clear()
        if as_json:
            click.echo(orjson.dumps(status.to_dict(), option=orjson.OPT_INDENT_2).decode())
        else:
            click.echo(format_status(status, colour=sys.stdout.isatty()))
        if watch is None:
            return
        try:
            time.sleep(watch)
        except KeyboardInterrupt:
            return


#: every export checks the split it reads against its records first (slimtok.finished.verify_split)
_verify_option = click.option(
    "--verify", type=click.Choice(["sample", "all"]), default="sample", show_default=True,
    help="Check every shard's (or mix chunk's) bytes of the split against its done record before exporting (all), "
         "or 4 of them drawn at random (sample); sizes and the .idx are always checked.")


@main.group("export")
def export_group() -> None:
    """Write combined splits in the layouts other trainers read (after `slimtok combine`)."""


@export_group.command("megatron")
@click.option("--output-root", "output_roots", required=True, multiple=True,
              type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="The root to export; with --data-args-path, one mix root or several plain roots.")
@click.option("--prefix", required=True,
              help="Path prefix of the files; a relative one is placed in OUTPUT_ROOT/megatron/ (with "
                   "--data-args-path: in FILE's folder, PREFIX_<source> per source, never in a source root).")
@click.option("--splits", default=None, help=f"Subset of {SPLIT_CHOICES} (default: every combined split).")
@click.option("--data-args-path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write Megatron's --data-args-path file (weight prefix ...): a mix's sources at their "
                   "realized token shares, or the roots given at their train tokens.")
@_verify_option
def export_megatron_cmd(output_roots: tuple[Path, ...], prefix: str, splits: str | None,
                        data_args_path: Path | None, verify: str) -> None:
    """PREFIX_<split>_text_document.bin/.idx in megatron-core's indexed-dataset format."""
    from .errors import ExportError
    from .export import export_data_args, export_megatron

    if data_args_path is not None:
        export_data_args(output_roots, prefix, data_args_path, _splits(splits), log=click.echo)
    elif len(output_roots) > 1:
        raise ExportError("several --output-root need --data-args-path", output_roots[1])
    else:
        export_megatron(output_roots[0], prefix, _splits(splits), log=click.echo, verify=verify)


@export_group.command("datatrove")
@_verify_option
@click.option("--output-root", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--prefix", required=True,
              help="Folder of the export, one subfolder per split; a relative one is placed in OUTPUT_ROOT/datatrove/.")
@click.option("--splits", default=None, help=f"Subset of {SPLIT_CHOICES} (default: every combined split).")
def export_datatrove_cmd(output_root: Path, prefix: str, splits: str | None, verify: str) -> None:
    """PREFIX/<split>/<split>.ds/.ds.index/.ds.metadata, as datatrove's DatatroveFolderDataset and nanotron read."""
    from .export import export_datatrove

    export_datatrove(output_root, prefix, _splits(splits), log=click.echo, verify=verify)


@export_group.command("litdata")
@_verify_option
@click.option("--output-root", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--prefix", required=True,
              help="Folder of the export, one subfolder per split; a relative one goes in OUTPUT_ROOT/litdata/.")
@click.option("--block-size", type=click.IntRange(min=1), required=True,
              help="TokensLoader's block_size (litgpt: max_seq_length + 1); chunks hold whole blocks.")
@click.option("--splits", default=None, help=f"Subset of {SPLIT_CHOICES} (default: every combined split).")
@click.option("--chunk-bytes", type=click.IntRange(min=1), default=None, help="Default: about 64 MiB per chunk.")
def export_litdata_cmd(output_root: Path, prefix: str, block_size: int, splits: str | None,
                       chunk_bytes: int | None, verify: str) -> None:
    """PREFIX/<split>/chunk-0-*.bin + index.json, as litdata's StreamingDataset with TokensLoader reads."""
    from .export import LITDATA_CHUNK_BYTES, export_litdata

    export_litdata(output_root, prefix, block_size, _splits(splits), chunk_bytes or LITDATA_CHUNK_BYTES,
                   log=click.echo, verify=verify)


@export_group.command("mds")
@_verify_option
@click.option("--output-root", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--prefix", required=True,
              help="Folder of the export, one subfolder per split; a relative one goes in OUTPUT_ROOT/mds/.")
@click.option("--seq-len", type=click.IntRange(min=1), default=4096, show_default=True)
@click.option("--splits", default=None, help=f"Subset of {SPLIT_CHOICES} (default: every combined split).")
def export_mds_cmd(output_root: Path, prefix: str, seq_len: int, splits: str | None, verify: str) -> None:
    """PREFIX/<split>/shard.*.mds + index.json (column `tokens`, rows of SEQ_LEN), as MosaicML streaming reads."""
    from .export import export_mds

    export_mds(output_root, prefix, seq_len, _splits(splits), log=click.echo, verify=verify)


@export_group.command("torchtitan")
@_verify_option
@click.option("--output-root", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--prefix", required=True,
              help="Folder of the export, one subfolder per split; a relative one goes in OUTPUT_ROOT/torchtitan/.")
@click.option("--splits", default=None, help=f"Subset of {SPLIT_CHOICES} (default: every non-empty combined split).")
def export_torchtitan_cmd(output_root: Path, prefix: str, splits: str | None, verify: str) -> None:
    """PREFIX/<split>/tokens.bin (uint32) and document_offsets.npy, as torchtitan's pretokenized source reads."""
    from .export import export_torchtitan

    export_torchtitan(output_root, prefix, _splits(splits), log=click.echo, verify=verify)


@export_group.command("packed")
@click.option("--output-root", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--seq-len", type=click.IntRange(min=1), default=4096, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["parquet", "npy"]), default="parquet", show_default=True)
@click.option("--split", type=click.Choice(list(SPLITS)), default="train", show_default=True)
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Default: OUTPUT_ROOT/packed/<split>-<seq-len>-<format>.")
@click.option("--rows-per-file", type=click.IntRange(min=1), default=None, help="Default: about 512 MiB per file.")
@click.option("--ranks", type=click.IntRange(min=1), default=1, show_default=True,
              help="Balance the files for this many ranks: files[rank::RANKS] hold equal rows (the rest dropped).")
@click.option("--document-ends", is_flag=True,
              help="Parquet: add a document_ends column, each row's exact document ends (offsets in (0, SEQ_LEN]).")
@_verify_option
def export_packed_cmd(output_root: Path, seq_len: int, fmt: str, split: str, output_dir: Path | None,
                      rows_per_file: int | None, ranks: int, document_ends: bool, verify: str) -> None:
    """Rows of exactly SEQ_LEN tokens cut from the eos-separated stream, with a manifest of checksums."""
    from .export import export_packed

    export_packed(output_root, seq_len, fmt, split, output_dir, rows_per_file, log=click.echo, ranks=ranks,
                  document_ends=document_ends, verify=verify)


@main.command("demo")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path), default="slimtok-demo")
@click.option("--spawn-workers", default="auto", show_default=True)
def demo_cmd(folder: Path, spawn_workers: str) -> None:
    """Build a small dataset and an offline Qwen3 tokenizer, then run the whole pipeline in FOLDER."""
    from .demo import run_demo

    sys.exit(run_demo(folder, spawn_workers))
