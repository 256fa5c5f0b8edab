"""Copied into the Megatron venv's site-packages as sitecustomize.py (see section.megatron_python).

The checkout's megatron.training uses typing.override (Python 3.12); the only torch wheel here is
for 3.11, so the venv takes the identical decorator from typing_extensions.
"""

import typing

if not hasattr(typing, "override"):
    import typing_extensions

    typing.override = typing_extensions.override  # type: ignore[attr-defined]
