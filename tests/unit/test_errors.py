"""Every error a user can act on renders as one line in one style, and says so by example.

The example in each class's docstring is the contract a reader sees first; this test keeps the
examples present and in the shape ``<file>: <what>; <fix>`` that ``SlimtokError.render`` makes.
"""

from __future__ import annotations

import inspect
import re

import pytest

from slimtok import errors

USER_ERRORS = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, errors.SlimtokError) and c not in (errors.SlimtokError, errors.ShardError)]
#: ``<file>: <what>; <fix>`` with the example's wrapped lines joined; a launch error names no file.
SHAPE = re.compile(r"^(\S+: )?[^;]+(; .+)?$")


def _example(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    assert "e.g.::" in doc, f"{cls.__name__}'s docstring shows no rendered example"
    return " ".join(line.strip() for line in doc.split("e.g.::", 1)[1].strip().splitlines())


@pytest.mark.parametrize("cls", USER_ERRORS, ids=lambda c: c.__name__)
def test_every_error_class_shows_a_rendered_line_in_the_one_style(cls):
    example = _example(cls)
    assert SHAPE.match(example), (cls.__name__, example)


@pytest.mark.parametrize("cls", [c for c in USER_ERRORS if c is not errors.ShardReadError], ids=lambda c: c.__name__)
def test_render_puts_the_file_first_and_the_fix_last(cls):
    assert str(cls("is missing", "out/meta.json", "run combine")) == "out/meta.json: is missing; run combine"
    assert str(cls("no --output-root given")) == "no --output-root given"
    assert cls("x").exit_code in {errors.EXIT_USAGE, errors.EXIT_FATAL, errors.EXIT_INTERRUPTED,
                                  errors.EXIT_SHARDS_FAILED}


def test_a_shard_read_error_names_the_shard_and_its_reason():
    error = errors.ShardReadError("sp/x.jsonl.zst", "line 3 is not JSON")
    assert str(error) == "sp/x.jsonl.zst: line 3 is not JSON" and error.exit_code == errors.EXIT_SHARDS_FAILED
