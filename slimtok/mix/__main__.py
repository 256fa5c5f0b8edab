"""``python -m slimtok.mix SPEC OUT [--workers N] [--plan]``: `slimtok mix` without click (the tests' kill -9
run uses it)."""

import argparse
import sys

from ..errors import SlimtokError
from . import mix_main

parser = argparse.ArgumentParser(prog="python -m slimtok.mix")
parser.add_argument("spec")
parser.add_argument("output_root", nargs="?")
parser.add_argument("--workers", type=int, default=1)
parser.add_argument("--plan", action="store_true")
args = parser.parse_args()
try:
    sys.exit(mix_main(args.spec, args.output_root, args.workers, args.plan))
except SlimtokError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)
