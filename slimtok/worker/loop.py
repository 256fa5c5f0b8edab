"""One worker process: claims shards in preference order until every selected shard is settled.

Reads the manifest and ``job.json``; writes, besides what each :class:`ShardTask` writes,
``heartbeats/<worker>.json`` (at start, at each claim and every few seconds) and ``failed/<id>.json``
for a shard that cannot be tokenized.

Invariants:

* any error while reading, parsing or encoding a shard becomes that shard's failed record (file
  and reason), its claim is released and the worker goes on; only the output root failing
  (OSError while writing there) or a signal stops the worker;
* a written shard is committed on the worker's commit thread while the next shard is encoded; at
  most one commit is in flight, its claim stays held and heartbeated until it ends, and the worker
  waits for it before exiting, also on a signal.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from ..claims import Claim, Claimer, current_holder
from ..errors import (
    EXIT_FATAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SHARDS_FAILED,
    Interrupted,
    LostClaim,
    OutputError,
    ShardError,
    SlimtokError,
    TokenizerError,
)
from ..executor import HeldClaims, run_units
from ..job import Job, document_policy, pinned_tokenizer_path, read_job
from ..manifest import ShardEntry
from ..protocol import (
    Checkpoint,
    DoneRecord,
    FailedRecord,
    JobSettings,
    LockRecord,
    OutputRoot,
    read_record,
    worker_name,
    write_record,
)
from ..tokenizer import BackendReport, Encoder, LoadedBackends, load_backends
from .heartbeat import Heartbeats
from .stats import Stats
from .task import ShardTask, TaskContext

log = logging.getLogger("slimtok.worker")


def preload(job: Job) -> LoadedBackends:
    """What a :class:`Worker` of ``job`` loads at its first claim, for a launcher that forks its
    workers (``Worker(..., loaded=...)``), so a node parses the job's tokenizer once. Raises
    TokenizerError when the job's copy is missing, modified or does not load."""
    # defer_fastokens as Worker.encoder passes it: the load must be the one the encoder expects
    return load_backends(pinned_tokenizer_path(job.root, job.pinned), job.settings.backend, defer_fastokens=True)


class Worker:
    """One worker process: claims shards in preference order until every selected shard is settled."""

    def __init__(self, job: Job, worker_index: int, loaded: LoadedBackends | None = None, generation: int = 0):
        """``job``: as its launcher pinned it. ``loaded``: what :func:`preload` loaded for it in the
        launcher that forked this worker; the encoder takes it instead of loading the tokenizer again.
        ``generation``: how many killed workers of slot ``worker_index`` this one replaces (its name)."""
        settings = self.settings = job.settings
        self.index = worker_index
        self.root = job.root
        self.job = job.pinned
        self.entries = job.entries
        # a forked worker's launcher checked the copy it loaded from, just before the fork
        self.tokenizer_path = loaded.path if loaded is not None else pinned_tokenizer_path(self.root, self.job)
        self._encoder: Encoder | None = None
        self._loaded = loaded
        self._noted: BackendReport | None = None  # the encoder report last written to job.json
        self._fingerprinted = False  # whether this worker has seen to job.json's tokenizer_sha256
        self.me = current_holder(settings.process_index, worker_index)
        self.name = worker_name(self.me.host, settings.process_index, worker_index, generation)
        self.claimer = Claimer(self.root, self.me, settings.stale_after)
        self.stats = Stats()
        self.stop = threading.Event()  # set by a signal
        self.current: Claim | None = None  # the claim being encoded
        self.beats = Heartbeats(self.root, self.name, self.me, worker_index, self.stats, settings.heartbeat_interval)
        # Every claim still held: the one being encoded and the one being committed, all refreshed
        # at each heartbeat; only the worker thread and the commit thread change them.
        self.held = HeldClaims(self.claimer, settings.heartbeat_interval,
                               tick=lambda: self.beats.tick(self.current.shard if self.current else None))
        # One commit at a time runs on this thread, overlapped with encoding the next shard.
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
        self._commit_pending: Future[None] | None = None
        self.failed = 0

    @property
    def encoder(self) -> Encoder:
        """Loaded at the first claim, so a worker that finds nothing to do never loads a tokenizer."""
        if self._encoder is None:
            # A path, not a loaded tokenizer: with --backend auto the worker starts on the reference
            # and loads fastokens only once the encoding has paid for its load (see Encoder); with
            # --backend fastokens, fastokens loads first (the lower peak).
            shared, self._loaded = self._loaded, None
            self._encoder = Encoder(self.tokenizer_path, document_policy(self.job), self.job.dtype,
                                    self.settings.backend, defer_fastokens=True, loaded=shared)
            log.info("%s: tokenizer %s; %s", self.name, "shared with the launcher that forked this worker"
                     if shared else f"loaded from {self.tokenizer_path}", self._encoder.report.verification)
            self._note_backend()
            gc.freeze()  # the tokenizers live as long as the worker: keep collections from walking them
        return self._encoder

    def _note_backend(self) -> None:
        """Worker 0 of process 0 records its encoder's report in job.json, again whenever it changes
        (a deferred fastokens loaded, a switch back to the reference)."""
        report = self._encoder.report if self._encoder else None
        if report is not None and report != self._noted and self.settings.process_index == 0 and self.index == 0:
            _update_job(self.root, backend_requested=report.requested, backend=report.backend,
                        backend_verification=report.verification)
            self._noted = report

    def _note_fingerprint(self) -> None:
        """After this worker's first shard, record job.json's ``tokenizer_sha256`` if it is still
        missing (a launcher that pinned the job from the JSON alone loads no tokenizer): it is
        taken where the tokenizer is loaded anyway, after the first encoded batches, so no start
        waits for it. Any worker may do it; all compute the same value from the same copy."""
        if self._fingerprinted or self._encoder is None:
            return
        self._fingerprinted = True
        if not read_job(self.root).tokenizer_sha256:
            _update_job(self.root, tokenizer_sha256=self._encoder.canonical_sha256())

    def task_context(self) -> TaskContext:
        """What this worker's shard tasks may use."""
        return TaskContext(root=self.root, job=self.job, encoder=self.encoder, stats=self.stats, host=self.me.host,
                           name=self.name, tokens_per_write=self.settings.tokens_per_write,
                           checkpoint_every=self.settings.checkpoint_every, check_running=self.check_running,
                           holds=self.holds, parity_share=self.settings.parity_share)

    def check_running(self, claim: Claim | None = None) -> None:
        """Raise at a safe point if a signal asked us to stop or ``claim`` was taken over."""
        if claim is not None and self.held.lost(claim):
            raise LostClaim(f"{claim.shard}: lock taken over by another worker; stopping this copy")
        if self.stop.is_set():
            raise Interrupted()

    def holds(self, claim: Claim) -> bool:
        return not self.held.lost(claim) and self.claimer.holds(claim)

    def run(self) -> int:
        """Process shards; returns an exit status (see slimtok.errors.EXIT_*)."""
        # What exists now (manifest entries, tokenizers) lives as long as the worker: frozen, the
        # collections that each document's parsed dict triggers do not walk it again and again.
        gc.freeze()
        self.beats.start()
        try:
            with self.held:
                return self._run()
        finally:
            self.stats.phases.enter(None)  # the exit beat's phases end where the work did
            self.beats.write("exited", None)

    def _run(self) -> int:
        try:
            try:
                self._loop()
            finally:  # also on a signal: the shard already written is published, not redone
                self._drain_commits()
        except Interrupted:
            log.warning("%s: stopped on signal; progress is checkpointed, relaunch to resume", self.name)
            return EXIT_INTERRUPTED
        except OutputError as exc:  # the root refuses a write (a link planted where it writes): no shard's fault
            log.error("%s: %s", self.name, exc)
            return EXIT_FATAL
        except OSError as exc:
            log.error("%s: cannot write under %s: %s; progress up to the last checkpoint is kept, "
                      "fix the cause and relaunch", self.name, self.root.root, exc)
            return EXIT_FATAL
        except Exception:  # outside any shard: a bug or a broken environment, never a shard's fault
            log.exception("%s: stopped by an unexpected error outside any shard; relaunch to resume", self.name)
            return EXIT_FATAL
        return EXIT_SHARDS_FAILED if self.failed else EXIT_OK

    def _loop(self) -> None:
        # between shards the worker finds, claims or waits for the next one (ShardTask charges the rest)
        with self.stats.phases.phase("claim_wait"):
            self._run_units()

    def _run_units(self) -> None:
        s = self.settings
        run_units(self.claimer, self.entries, (s.process_index, s.process_count, self.index, s.workers),
                  lambda e: e.id, self._settled, self._process, selected=lambda e: e.split in s.splits,
                  pause=self.stop.wait, stop_point=self.check_running, before_wait=self._before_wait)

    def _before_wait(self, held: list[ShardEntry]) -> None:
        self._await_commit()  # before a possibly long wait: publish our last shard, surface its error
        if held:
            log.info("%s: %d shard(s) held by other workers; watching them for completion or staleness",
                     self.name, len(held))

    def _settled(self, entry: ShardEntry) -> bool:
        done = self.root.done(entry.id)
        if self.root.storage.exists(done):
            if read_record(done, DoneRecord) is not None:
                return True
            self._set_aside_corrupt(done)
        failed = read_record(self.root.failed(entry.id), FailedRecord)
        return failed is not None and (not self.settings.retry_failed or failed.launch == self.settings.launch)

    def _set_aside_corrupt(self, done: Path) -> None:
        """A done record that cannot be parsed means the shard is not done: every stage says so
        (status: pending, combine: missing). Renamed aside so the shard is redone and recommitted."""
        aside = self.root.corrupt_aside(done)
        try:
            self.root.storage.replace(done, aside)
        except FileNotFoundError:
            return  # another worker set it aside first
        log.warning("%s: %s is not a readable done record; kept as %s, the shard will be tokenized again",
                    self.name, done, aside.name)

    def _process(self, entry: ShardEntry, claim: Claim) -> None:
        """Write the shard on this thread, then hand its commit to the commit thread."""
        # the task charges its own phases; the rest (the first claim's tokenizer load) is in none
        with self.stats.phases.phase(None):
            self._write_then_commit(entry, claim)

    def _write_then_commit(self, entry: ShardEntry, claim: Claim) -> None:
        self.held.hold(claim)
        self.current = claim
        self.beats.write("working", claim.shard)  # status shows this shard from the moment it is claimed
        try:
            context = self.task_context()
        except TokenizerError:
            # The job's tokenizer does not load (a launcher that read only its JSON cannot tell):
            # no shard can be written, so free the claim, and a corrected relaunch can re-pin.
            self.current = None
            self.held.drop(claim)
            self.claimer.release(claim)
            raise
        task = ShardTask(context, entry, claim)
        log.info("%s: claimed %s (%s)%s", self.name, entry.id, claim.token,
                 f", taking over from {_describe(claim.previous)}" if claim.previous else "")
        try:
            task.write()
        except BaseException as exc:
            if not self._settle_after(task, exc):
                raise
            return
        finally:
            self.current = None
            self._note_backend()
        self._note_fingerprint()
        try:
            self._await_commit()  # at most one commit in flight: its syncs overlap this shard's encoding
        except BaseException as exc:  # the previous commit failed: this shard is not committed either
            task.abandon()
            self._settle_after(task, exc)
            raise
        self._commit_pending = self._committer.submit(self._commit, task)

    def _commit(self, task: ShardTask) -> None:
        """On the commit thread: publish one written shard, then release its claim."""
        try:
            record = task.commit()
        except BaseException as exc:
            if not self._settle_after(task, exc):
                raise
            return
        try:
            self.claimer.release(task.claim)
        finally:
            self.held.drop(task.claim)
        self.stats.shards_done += 1
        log.info("%s: done %s: %d documents, %d tokens, %d skipped lines in %.1fs", self.name, task.entry.id,
                 record.documents, record.tokens, sum(record.skipped.values()), record.seconds)

    def _settle_after(self, task: ShardTask, exc: BaseException) -> bool:
        """Leave the shard's files and claim as ``exc`` requires; False when it must propagate."""
        try:
            if isinstance(exc, LostClaim):
                log.warning("%s", exc)
                task.discard_parts()
            elif isinstance(exc, Interrupted):
                self.claimer.release(task.claim)  # the checkpoint stays: any worker resumes at once
                return False
            elif isinstance(exc, OutputError):  # the root's fault, as an OSError writing it: stop, keep the work
                self._release_keeping_checkpoint(task)
                return False
            elif isinstance(exc, ShardError):
                self._fail(task, exc.message if exc.path == task.entry.path else str(exc))
            elif isinstance(exc, SlimtokError):
                self._fail(task, str(exc))
            elif isinstance(exc, OSError) and not _is_input_error(exc, task):
                self._release_keeping_checkpoint(task)
                return False
            elif isinstance(exc, Exception):  # a bug or an input no rule foresaw: this shard only
                log.exception("%s: unexpected error in %s", self.name, task.entry.id)
                self._fail(task, f"unexpected {type(exc).__name__} while tokenizing: {exc}")
            else:
                return False
            return True
        finally:
            self.held.drop(task.claim)

    def _drain_commits(self) -> None:
        """Wait for the last commit and stop the commit thread (raises that commit's OSError)."""
        try:
            self._await_commit()
        finally:
            self._committer.shutdown()

    def _await_commit(self) -> None:
        """Wait for the commit in flight; its OSError (the output root failing) is raised here.
        The wait is writing: the worker waits for the commit's syncs and renames to end."""
        pending, self._commit_pending = self._commit_pending, None
        if pending is not None:
            with self.stats.phases.phase("write"):
                pending.result()

    def _release_keeping_checkpoint(self, task: ShardTask) -> None:
        ckpt = read_record(self.root.checkpoint(task.entry.id), Checkpoint)
        if ckpt is None or ckpt.token != task.claim.token:
            task.discard_parts()
        self.claimer.release(task.claim)

    def _fail(self, task: ShardTask, reason: str) -> None:
        """Record why the shard failed, drop its partial output and move on."""
        entry = task.entry
        self.failed += 1
        line = reason.replace("\n", " ")
        log.error("%s: shard %s failed: %s: %s", self.name, entry.id, entry.path, line)
        write_record(self.root.failed(entry.id),
                     FailedRecord(shard=entry.id, path=entry.path, reason=line, host=self.me.host,
                                  pid=self.me.pid, launch=self.settings.launch, failed_at=time.time()))
        task.discard_parts()
        self.root.storage.delete(self.root.checkpoint(entry.id))
        self.claimer.release(task.claim)


def _is_input_error(exc: OSError, task: ShardTask) -> bool:
    """Whether an OSError is about the input shard (a shard failure), not the output root."""
    return exc.filename is not None and str(exc.filename) == str(task.entry.path)


#: Attempts at an unpinned job.json update before giving up (each attempt loses only to another writer).
_JOB_WRITES = 5


def _update_job(root: OutputRoot, **fields: str) -> None:
    """Set unpinned fields of job.json (atomic replace; every other field kept as read). Another
    worker may replace job.json between this read and write (each writes only its own fields), so
    the result is read back and the write redone until job.json holds ``fields``."""
    for _ in range(_JOB_WRITES):
        job = read_record(root.job, JobSettings)
        if job is None or all(getattr(job, k) == v for k, v in fields.items()):
            return
        # the callers name str fields only, which mypy cannot tell from a **kwargs dict
        write_record(root.job, replace(job, **fields))  # type: ignore[arg-type]
    log.warning("job.json: could not record %s (other writers kept replacing it)", ", ".join(fields))


def _describe(record: LockRecord | None) -> str:
    if record is None:
        return "nobody"
    return f"{record.host} pid {record.pid} (process {record.process_index}, worker {record.worker})"
