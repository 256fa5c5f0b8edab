"""One pin per mix (issue 24, item 6): ``slimtok mix`` pins through tokenize's staging
(slimtok.job.pin.publish_pin): its manifest and tokenizer copies are staged under ``.pin.<token>/``
and published once mix.json and job.json are this mix's, so a kill between job.json and the copies
leaves a root a reader and a rerun finish, and of two mixes with different specs started into one
folder, one wins and the other refuses naming the difference, leaving nothing of its own."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from test_mix import _spec, roots  # noqa: F401 (roots: the module's source roots, as a fixture here too)

from slimtok.errors import MixError
from slimtok.job import load_job, pinned_tokenizer_path
from slimtok.mix import mix_main
from slimtok.mix import write as mix_write
from slimtok.protocol import OutputRoot

#: Runs ``slimtok mix`` killed (SIGKILL) the moment job.json has been linked into place: after the
#: pin's deciding step, before its manifest and tokenizer copies are in place.
KILLED_AFTER_JOB = """
import os, signal, sys
_link = os.link
def link(src, dst, *args, **kwargs):
    _link(src, dst, *args, **kwargs)
    if str(dst).endswith("job.json"):
        os.kill(os.getpid(), signal.SIGKILL)
os.link = link
from slimtok.cli import main
main(sys.argv[1:])
"""


def test_a_mix_killed_between_job_json_and_its_copies_is_finished_by_a_reader_and_a_rerun(roots, tmp_path):  # noqa: F811
    spec_path = _spec(roots, tmp_path, chunk_documents=5)
    undisturbed = tmp_path / "undisturbed"
    mix_main(spec_path, undisturbed, workers=1)
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILLED_AFTER_JOB, "mix", str(spec_path), "--output-root", str(killed),
                           "--workers", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (killed / "job.json").exists() and not (killed / "manifest.jsonl").exists()
    # a reader finishes the pin: the copies job.json names, with the undisturbed mix's content
    root, reference = OutputRoot(killed), OutputRoot(undisturbed)
    job, entries = load_job(root)
    ref_job, ref_entries = load_job(reference)
    assert job.kind == ref_job.kind == "mix" and job.shards == ref_job.shards  # the manifest names its own root
    assert [(e.id, e.split, e.size) for e in entries] == [(e.id, e.split, e.size) for e in ref_entries]
    assert pinned_tokenizer_path(root, job).read_bytes() == reference.tokenizer_file.read_bytes()
    assert root.tokenizer_config_file.read_bytes() == reference.tokenizer_config_file.read_bytes()
    mix_main(spec_path, killed, workers=1)
    for name in ("train.bin", "train.idx", "mix.json", "tokenizer/tokenizer.json"):
        assert (killed / name).read_bytes() == (undisturbed / name).read_bytes(), name
    assert not root.pin_stages() and not list(killed.rglob(".*.tmp"))


def test_two_mixes_with_different_specs_into_one_folder_one_wins_the_other_refuses_naming_it(roots, tmp_path,  # noqa: F811
                                                                                              monkeypatch):
    """The loser checked the folder while it was still empty (its check is made to pass), then the
    winner pinned: the loser's exclusive create of mix.json decides, and it refuses."""
    first, second = _spec(roots, tmp_path, chunk_documents=5), _spec(roots, tmp_path, chunk_documents=5, seed=8)
    out = tmp_path / "out"
    alone = tmp_path / "alone"
    mix_main(first, alone, workers=1)
    own_folder = mix_write._own_folder

    def race(target, record, job):
        own_folder(target, record, job)  # empty: passes
        monkeypatch.setattr(mix_write, "_own_folder", own_folder)
        mix_main(first, out, workers=1)  # the winner, between the loser's check and its pin

    monkeypatch.setattr(mix_write, "_own_folder", race)
    with pytest.raises(MixError) as refused:
        mix_main(second, out, workers=1)
    assert str(refused.value).startswith(f"{out / 'mix.json'}: mix.json holds another spec or other inputs than "
                                         "this mix (spec.seed: pinned 7, requested 8)")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in alone.iterdir())  # nothing of the loser
    for name in ("train.bin", "train.idx", "mix.json", "tokenizer/tokenizer.json"):
        assert (out / name).read_bytes() == (alone / name).read_bytes(), name


def test_the_stage_of_a_mix_killed_before_its_mix_json_is_taken_as_its_own(roots, tmp_path):  # noqa: F811
    """A kill while staging leaves only ``.pin.<token>/`` (with a temporary file): the rerun does not
    take the folder for someone else's, pins, removes the stage and writes the same bytes."""
    spec_path = _spec(roots, tmp_path, chunk_documents=5)
    undisturbed = tmp_path / "undisturbed"
    mix_main(spec_path, undisturbed, workers=1)
    out = tmp_path / "out"
    stage = OutputRoot(out).pin_stage("0123abcd")
    stage.mkdir(parents=True)
    (stage / "manifest.jsonl").write_bytes(b'{"id": "cut short')
    (stage / ".tokenizer.json.0123.tmp").write_bytes(b"{")
    mix_main(spec_path, out, workers=1)
    assert not OutputRoot(out).pin_stages()
    for name in ("train.bin", "train.idx", "mix.json", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"):
        assert (out / name).read_bytes() == (undisturbed / name).read_bytes(), name
