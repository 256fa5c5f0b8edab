"""``python -m slimtok`` is the ``slimtok`` command."""

from .cli import main

main()
