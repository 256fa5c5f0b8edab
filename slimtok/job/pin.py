"""Pin a job: what ``slimtok tokenize`` was asked to do, recorded once in ``job.json``.

Reads the manifest and the tokenizer a launch names; writes (first launch only) ``job.json``,
``manifest.jsonl`` and ``tokenizer/`` into the output root. Returns the :class:`Job` a launch and
its workers run: settings, output root, manifest entries and pinned record, read once.

Invariant: a relaunch runs only if every pinned setting (``JobSettings.PINNED``) equals what it
asks for; the output root's tokenizer copy always loads to the pinned fingerprint. One pin per job:
a pin stages its copies under ``.pin.<launch>/`` and then creates (or, re-pinning, replaces)
job.json, the one step that decides; only the stage whose copies job.json names is moved into
place (:func:`~slimtok.job.pinned.complete_pin`, also after a kill), so job.json never stands
beside another launch's copies. A running launch holds a lease (:func:`launch_lease`) from before it
pins, and no other launch re-pins under it: a concurrent launch with other settings is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from .. import __version__
from ..errors import JobMismatch, ManifestError, OutputError, SlimtokError
from ..executor import refresh_interval
from ..manifest import ShardEntry, manifest_digest, read_manifest
from ..protocol import (
    PROTOCOL_VERSION,
    TOKENIZE,
    JobSettings,
    LaunchLease,
    OutputRoot,
    boot_id,
    create_exclusive,
    hostname,
    read_record,
    require_kind,
    storage_for,
    write_atomic,
    write_record,
)
from ..tokenizer.loading import check_tokenizer_class, local_tokenizer_file
from .disk import check_disk_budget, disk_sample
from .pinned import (
    complete_pin,
    discard_stage,
    pin_copies,
    publish_stage,
    read_job,
    staged_copy,
    tokenizer_config,
    tokenizer_fingerprint,
)
from .settings import STALE_AFTER, TokenizeSettings

if TYPE_CHECKING:  # the launcher of a relaunch imports this module and never loads a tokenizer
    from ..tokenizer import LoadedTokenizer


@dataclass(frozen=True)
class Job:
    """A pinned job as a launch runs it: read once by :func:`pin_job`, handed to the workers.

    A forked worker inherits it for free. A pickled one (a spawned worker) carries no manifest
    entries and reads them again on arrival (:func:`_unpickled`), as spawned workers always did:
    pickled whole, the launcher would serialize every entry (122,000 for SlimPajama) once per
    worker, one worker after another, before the last one could start."""

    settings: TokenizeSettings
    root: OutputRoot
    entries: list[ShardEntry]
    pinned: JobSettings

    def __reduce__(self) -> tuple[object, ...]:
        return _unpickled, (self.settings, self.root, self.pinned)


def _unpickled(settings: TokenizeSettings, root: OutputRoot, pinned: JobSettings) -> Job:
    return Job(settings, root, read_manifest(settings.manifest, check_files=False), pinned)  # its launcher checked it


def open_job(settings: TokenizeSettings) -> Job:
    """The Job of an output root :func:`pin_job` pinned already (a worker started on its own, as
    benchmarks do): job.json and the manifest, read without checking them again."""
    root = OutputRoot(settings.output_root)
    return Job(settings, root, read_manifest(settings.manifest, check_files=False), read_job(root))


def requested_job(settings: TokenizeSettings, entries: list[ShardEntry], tok: LoadedTokenizer) -> JobSettings:
    """The job record this launch asks for (compared with job.json by :meth:`JobSettings.differences`)."""
    from ..tokenizer import resolve_dtype

    dtype, why = resolve_dtype(settings.dtype, tok)
    p = tok.policy
    return JobSettings(manifest_sha256=manifest_digest(entries), shards=len(entries), tokenizer=tok.source,
                       tokenizer_sha256=tok.sha256, vocab_size=tok.vocab_size, eos_token_id=p.eos_id,
                       eos_token=p.eos_token, dtype=dtype, text_key=settings.text_key, source_key=settings.source_key,
                       bos_token_id=p.bos_id, bos_token=p.bos_token, special_text=p.special_text,
                       max_line_bytes=settings.max_line_bytes, min_chars=settings.min_chars,
                       min_tokens=settings.min_tokens,
                       policy_notes=[*tok.notes, f"dtype: {dtype} ({why})"], kind=TOKENIZE,
                       tokenizer_class=settings.tokenizer_class)


def request_digest(settings: TokenizeSettings, tokenizer_file_sha256: str, folder: Path) -> str:
    """sha256 of everything a launch asks that decides the pinned record besides the manifest: the
    bytes of a local tokenizer.json (``tokenizer_file_sha256``) and of its folder's
    tokenizer_config.json, the raw tokenizer and text flags, the slimtok and protocol versions.
    Equal digests give equal records (the record is a function of these), so a relaunch with the
    recorded digest needs no tokenizer. A tokenizer that is not a local file (a Hub id, a folder
    for transformers) has none ("" in job.json): those always load."""
    config = folder / "tokenizer_config.json"
    storage = storage_for(config)
    config_sha256 = hashlib.sha256(storage.read_whole(config)).hexdigest() if storage.exists(config) else None
    asked = [__version__, PROTOCOL_VERSION, tokenizer_file_sha256, config_sha256, settings.eos_id, settings.bos,
             settings.special_text, settings.dtype, settings.text_key, settings.source_key, settings.max_line_bytes,
             settings.min_chars, settings.min_tokens]
    return hashlib.sha256(orjson.dumps(asked)).hexdigest()


def pin_job(settings: TokenizeSettings, log: Callable[[str], None] | None = None) -> Job:
    """Create job.json on first use, or check a relaunch against it; copy manifest and tokenizer.

    ``log`` gets the start-up lines: which separators and dtype were chosen and why, and warnings.
    A relaunch asking what job.json records (:func:`request_digest`) loads no tokenizer, nor does a
    new job from a local tokenizer.json whose JSON tells every pinned fact
    (:func:`slimtok.tokenizer.loading.pin_facts_from_json`; its fingerprint is recorded by the first
    worker, and the copy is the file's bytes, merge pairs as strings); otherwise the tokenizer is
    parsed once. Raises
    JobMismatch naming each differing setting before anything else is written, unless no shard is
    done or claimed under the pinned settings: then the job is re-pinned (:func:`_repin`).
    The pin runs under the launch's lease (:func:`launch_lease`; taken here when its launch holds none).
    """
    root = OutputRoot(settings.output_root)
    require_kind(root, "tokenize")
    leased = root.storage.exists(root.launch_lease(settings.launch))
    with contextlib.nullcontext() if leased else launch_lease(root, settings.launch):
        job = _pin(settings, root, log)
        _clear_dead_stages(root, settings.launch)  # after the pin: a stage job.json names was published
        return job


def _pin(settings: TokenizeSettings, root: OutputRoot, log: Callable[[str], None] | None) -> Job:
    entries = read_manifest(settings.manifest)
    file = local_tokenizer_file(settings.tokenizer)
    check_tokenizer_class(settings.tokenizer, file, settings.tokenizer_class)  # before a relaunch skips the load
    data = storage_for(file).read_whole(file) if file is not None else None  # read once: digest, facts and copy agree
    file_sha256 = hashlib.sha256(data).hexdigest() if data is not None else ""
    key = request_digest(settings, file_sha256, file.parent) if file is not None else ""
    _note_request(root, settings.launch, key)  # before job.json is read: see _repin
    stored = read_job(root) if root.storage.exists(root.job) else None
    if stored is not None:
        complete_pin(root, stored)  # a pin a kill cut short between job.json and its copies
    pinned = stored
    if (pinned is not None and key and pinned.request_sha256 == key and root.storage.exists(root.manifest)
            and root.storage.exists(root.tokenizer_file) and pinned.manifest_sha256 == manifest_digest(entries)):
        if log:
            for line in pinned.policy_notes:
                log(line)
        check_disk_budget(settings, root, entries, pinned, None, log)
        return Job(settings, root, entries, pinned)
    from ..tokenizer import load_tokenizer
    from ..tokenizer.loading import pin_facts_from_json

    tok, copied = None, ""
    # The JSON tells every pinned fact but the fingerprint, which the first worker records; a job
    # pinned before needs it now, so only one whose copy holds these very bytes skips the parse.
    if data is not None:
        tok = pin_facts_from_json(settings.tokenizer, data, settings.eos_id, settings.bos, settings.special_text,
                                  file_sha256)
        copied = "" if tok is None else file_sha256 if tok.file_bytes is data else \
            hashlib.sha256(tok.file_bytes).hexdigest()
        if pinned is not None and pinned.tokenizer_file_sha256 != copied:
            tok = None
    if tok is None:
        tok = load_tokenizer(settings.tokenizer, settings.eos_id, settings.bos, settings.special_text,
                             settings.tokenizer_class)
        if file is not None:  # of the bytes actually parsed (the file may have changed since the read above)
            key = request_digest(settings, tok.source_file_sha256, file.parent)
    requested = requested_job(settings, entries, tok)
    if pinned is not None and not requested.tokenizer_sha256:  # read from the JSON of the pinned bytes
        requested = replace(requested, tokenizer_sha256=pinned.tokenizer_sha256)
    elif pinned is not None and not pinned.tokenizer_sha256:  # parsed, against a job not yet fingerprinted
        pinned = replace(pinned, tokenizer_sha256=tokenizer_fingerprint(root, pinned))
    if tok.tokenizer is not None:
        copied = hashlib.sha256(tok.file_text()).hexdigest()
    bounds: dict[str, list[float]] | None = None
    if pinned is None:
        root.storage.make_folders(root.root)
        # The disk-budget sample is taken here, once per job, over every split, and pinned, unless
        # an upper bound on the tokens already leaves room (then nothing is encoded or pinned).
        sampled, bounds = disk_sample(settings, root, entries, requested, tok)
        record = replace(requested, tokenizer_file_sha256=copied, request_sha256=key, sampled_ratios=sampled)
        # the first launch to create job.json wins; a loser's staged copies are discarded unseen
        if not publish_pin(root, settings.launch, _copies(root, settings, record, tok),
                            lambda: create_exclusive(root.job, record.to_json())):
            # another launch started at the same moment pinned first: this one is now a relaunch
            # of its job, compared with what it pinned as any relaunch is (a fingerprint the JSON
            # alone did not tell included)
            return _pin(settings, root, log)
        pinned = read_job(root)
    if log:
        for line in requested.policy_notes:
            log(line)
    diffs = pinned.differences(requested)
    if pinned.manifest_sha256 != requested.manifest_sha256:
        diffs = [d for d in diffs if not d.startswith("manifest_sha256:")]
        diffs.insert(0, manifest_change(root, entries))
    if diffs:
        sampled, bounds = disk_sample(settings, root, entries, requested, tok)  # the old one used the old settings
        record = replace(requested, tokenizer_file_sha256=copied, request_sha256=key, sampled_ratios=sampled)
        pinned = _repin(root, record, diffs, log, settings.launch, _copies(root, settings, record, tok))
    else:  # pinned by an older slimtok, or the same job asked through another file: record this request
        # (a split without a pinned sample is estimated by check_disk_budget, as at every launch)
        noted = replace(pinned, request_sha256=key)
        if noted != stored:
            write_record(root.job, noted)
        pinned = noted
    if not complete_pin(root, pinned):  # copies removed, or a root pinned before pins were staged
        for copy, payload in _copies(root, settings, pinned, tok).items():
            if not root.storage.exists(copy):
                write_atomic(copy, payload)
    check_disk_budget(settings, root, entries, pinned, tok, log, bounds)
    return Job(settings, root, entries, pinned)


#: A launch lease whose mtime, by the store's clock, is older than this was left by a launch that
#: ended without removing it (killed, on any host): a live launch moves it on every
#: ``refresh_interval(LEASE_TTL)`` seconds (six times per TTL, as claims are refreshed).
LEASE_TTL = STALE_AFTER


@contextlib.contextmanager
def launch_lease(root: OutputRoot, token: str) -> Iterator[None]:
    """Hold ``launches/<token>.json`` while a launch runs (it is created before the launch pins and
    removed when it ends), so that no other launch re-pins the job under it (:func:`_repin`). A lease
    a kill left behind stops being refreshed and expires (:func:`running_launches`), whatever host
    it was on; one of this host whose process is gone is removed at once."""
    lease = root.launch_lease(token)
    created = not root.storage.exists(root.root)
    try:
        running_launches(root, token)  # clears the leases of launches that died
        create_exclusive(lease, LaunchLease(hostname(), boot_id(), os.getpid(), time.time()).to_json())
    except OSError as exc:
        raise OutputError(f"cannot write the job's files: {exc.strerror or exc}", exc.filename or lease,
                          "free space or fix permissions on the output root, then relaunch the same command") from exc
    refresher = _LeaseRefresher(root, lease)
    _REFRESHERS[lease] = refresher
    try:
        yield
    finally:
        del _REFRESHERS[lease]
        refresher.stop()  # before the delete: a late refresh would make the lease again
        root.storage.delete(lease)
        probe = _clock_probe(root, token)
        root.storage.delete(probe)
        for folder in (lease.parent, probe.parent):
            with contextlib.suppress(FileNotFoundError):  # another launch's file keeps it; one ended may remove it
                root.storage.remove_folder(folder)
        if created:  # a launch refused before it wrote anything leaves no folder either
            with contextlib.suppress(FileNotFoundError):
                root.storage.remove_folder(root.root)


class _LeaseRefresher:
    """Touches a lease (its mtime becomes the store's now) every ``refresh_interval(LEASE_TTL)``
    seconds on a thread of its own, from :func:`keep_lease_fresh` until the lease is let go. The
    thread is not started with the lease: a launcher that runs one thread forks its workers (they
    share its loaded tokenizer), so it starts once they are forked. A lease removed as expired under
    a launch that stalled for LEASE_TTL is made again, empty: an unreadable lease blocks every
    re-pin, the safe side, until it expires in turn. A failed touch is retried at the next beat."""

    def __init__(self, root: OutputRoot, lease: Path):
        self.root, self.lease = root, lease
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="launch-lease", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(refresh_interval(LEASE_TTL)):
            with contextlib.suppress(OSError, SlimtokError):
                self.root.storage.now(self.lease)


#: The refreshers of the leases this process holds, by lease path.
_REFRESHERS: dict[Path, _LeaseRefresher] = {}


def keep_lease_fresh(root: OutputRoot, token: str) -> None:
    """Start refreshing the lease this process holds for launch ``token`` (see :class:`_LeaseRefresher`);
    a launch holding none (``pin_job`` alone) has nothing to refresh."""
    refresher = _REFRESHERS.get(root.launch_lease(token))
    if refresher is not None:
        refresher.start()


def _clock_probe(root: OutputRoot, token: str) -> Path:
    """The file a launch touches to read the store's clock (its lease may not exist yet)."""
    return root.probe(f"launch-{token}")


def running_launches(root: OutputRoot, own: str) -> dict[str, LaunchLease | None]:
    """{token: lease} of the launches other than ``own`` that hold a lease and may still run (None:
    a lease that cannot be read). A lease not refreshed for LEASE_TTL by the store's clock (its
    mtime against a probe touched now: no host's clock is compared) is expired and removed, as is
    one of this host and boot whose pid is gone; any other counts (a reused pid, or a live launch
    of another host: the safe side)."""
    running: dict[str, LaunchLease | None] = {}
    tokens = sorted(root.launch_leases() - {own})
    now = root.storage.now(_clock_probe(root, own)) if tokens else 0.0
    for token in tokens:
        path = root.launch_lease(token)
        try:
            age = now - root.storage.stat(path).mtime
        except FileNotFoundError:  # ended since the listing
            continue
        lease = read_record(path, LaunchLease)
        dead = lease is not None and (lease.host, lease.boot_id) == (hostname(), boot_id()) and not _pid_runs(lease.pid)
        if dead or age > LEASE_TTL:
            root.storage.delete(path)
            continue
        running[token] = lease
    return running


def _note_request(root: OutputRoot, token: str, key: str) -> None:
    """Record in the launch's lease what it asks (``request_sha256``), before it reads or creates
    job.json: from then on a launch asking other settings may not re-pin under it (:func:`_repin`)."""
    lease = read_record(root.launch_lease(token), LaunchLease)
    if lease is not None:
        write_record(root.launch_lease(token), replace(lease, request=key))


def _clear_dead_stages(root: OutputRoot, own: str) -> None:
    """Remove the pin stages of launches that no longer run (killed while pinning): a stage lives
    only under its launch's lease (same token), and the job.json they were for is settled."""
    others = [stage for stage in root.pin_stages() if stage != root.pin_stage(own)]
    if others:
        running = {root.pin_stage(token) for token in running_launches(root, own)}
        for stage in others:
            if stage not in running:
                discard_stage(root, stage)


def _pid_runs(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _copies(root: OutputRoot, settings: TokenizeSettings, job: JobSettings, tok: LoadedTokenizer) -> dict[Path, bytes]:
    """The bytes of each copy (:func:`~slimtok.job.pinned.pin_copies`) that ``job`` pins."""
    # The bytes the fingerprint was taken from; a job pinned from another form of the same
    # tokenizer (another file, or transformers) gets the canonical JSON, whose sha256 is pinned.
    text = tok.file_text()
    if hashlib.sha256(text).hexdigest() != job.tokenizer_file_sha256:
        text = tok.canonical_json.encode()
    manifest = storage_for(Path(settings.manifest)).read_whole(Path(settings.manifest))
    return dict(zip(pin_copies(root), (manifest, text, tokenizer_config(job)), strict=True))


def publish_pin(root: OutputRoot, token: str, copies: dict[Path, bytes], commit: Callable[[], bool]) -> bool:
    """Stage ``copies`` under ``.pin.<token>/``, then ``commit`` (create or replace job.json; True
    when this pin decided it); the stage is moved into place when it did, else discarded. A kill
    after the commit leaves the stage for :func:`~slimtok.job.pinned.complete_pin`; one before it,
    a stage no job.json names (never published)."""
    stage = root.pin_stage(token)
    try:
        for copy, payload in copies.items():
            write_atomic(staged_copy(stage, copy), payload)
        won = commit()
    except BaseException:
        discard_stage(root, stage)
        raise
    if won:
        publish_stage(root, stage)
    else:
        discard_stage(root, stage)
    return won


def _repin(root: OutputRoot, requested: JobSettings, diffs: list[str], log: Callable[[str], None] | None,
           token: str, copies: dict[Path, bytes]) -> JobSettings:
    """Replace job.json by ``requested`` when nothing was kept under the pinned settings: no shard
    done, claimed or checkpointed (a launch whose every shard failed, e.g. on a wrong --text-key),
    and no other launch running (a lease under launches/ other than ``token``'s: a launch started
    at the same moment with other settings, which pinned first). Their failed records, manifest
    copy and tokenizer copy are removed first, so a kill part way leaves the old job with fewer
    records, never the new job with the old failures; the new job.json and ``copies`` are published
    as one (:func:`publish_pin`). Else JobMismatch."""
    current = read_job(root)
    if not current.differences(requested):
        # Another launcher of the same corrected command (another node) re-pinned it since this
        # one read job.json; its workers may hold claims already, which are this job's own.
        return current
    mismatch = "was started with other settings; refusing to mix outputs: " + "; ".join(diffs)
    done, held, partial = root.done_ids(), root.locked_ids(), root.checkpointed_ids()
    if done:
        raise JobMismatch(f"{mismatch} ({len(done)} shard(s) are done under the pinned settings)", root.job,
                          "use the original settings, or a new --output-root for the new ones")
    # a launch that has not yet seen job.json compares itself with it when it does; one asking
    # exactly this (another node of the same corrected command) re-pins to this same record
    running = [t for t, lease in running_launches(root, token).items() if _blocks(lease, requested.request_sha256)]
    if running:
        raise JobMismatch(f"{mismatch}; another launch that may ask other settings is running ({len(running)} "
                          f"lease(s) under {root.launch_lease(running[0]).parent})", root.job,
                          "use the pinned settings, or wait for that launch to end (the lease of a killed one "
                          f"expires {LEASE_TTL:.0f} s after its last refresh); if none runs, remove launches/ and "
                          "relaunch: the job is then re-pinned to the new settings")
    if held or partial:
        raise JobMismatch(f"{mismatch}; no shard is done, but {len(held)} claim(s) under locks/ and {len(partial)} "
                          "checkpoint(s) under checkpoints/ hold work of the pinned settings", root.job,
                          "wait for the launch that holds them to end; if none runs, remove locks/ and checkpoints/ "
                          "and relaunch: the job is then re-pinned to the new settings")
    failed = sorted(root.failed_ids())
    for shard in failed:
        root.storage.delete(root.failed(shard))
    for copy in (root.manifest, root.tokenizer_file, root.tokenizer_config_file):
        root.storage.delete(copy)
    publish_pin(root, token, copies, lambda: _replaced(root, requested))
    if log:
        log(f"job.json re-pinned: no shard was done under its old settings; removed their {len(failed)} failed "
            f"record(s); changed: {'; '.join(diffs)}")
    return requested


def _blocks(lease: LaunchLease | None, request: str) -> bool:
    """Whether a running launch's ``lease`` forbids a re-pin to ``request``: it is unreadable, or its
    launch has seen job.json asking something else (or something no digest tells: "")."""
    if lease is None:
        return True
    same = request != "" and lease.request == request
    return lease.request is not None and not same


def _replaced(root: OutputRoot, job: JobSettings) -> bool:
    """Replace job.json by ``job`` (a re-pin's commit, which always decides)."""
    write_record(root.job, job)
    return True


def manifest_change(root: OutputRoot, entries: list[ShardEntry]) -> str:
    """What differs between the pinned copy of the manifest and ``entries``, in words."""
    try:
        pinned = read_manifest(root.manifest, check_files=False)
    except ManifestError:
        return "manifest: differs from the one the job was pinned to (its copy in the output root is unreadable)"
    # the first differing line within the shorter list (strict=False); a longer list is told after it
    where = next((i for i, (a, b) in enumerate(zip(pinned, entries, strict=False))
                  if (a.id, a.split, a.size) != (b.id, b.split, b.size)), min(len(pinned), len(entries)))
    text = f"manifest: pinned {len(pinned)} shards, requested {len(entries)}"
    if where < min(len(pinned), len(entries)):
        a, b = pinned[where], entries[where]
        text += (f"; line {where + 1} differs: pinned {a.id} ({a.split}, {a.size} bytes), "
                 f"requested {b.id} ({b.split}, {b.size} bytes)")
    elif len(pinned) != len(entries):
        extra = (pinned if len(pinned) > len(entries) else entries)[where]
        text += f"; first shard only in the {'pinned' if len(pinned) > len(entries) else 'requested'} one: {extra.id}"
    return text
