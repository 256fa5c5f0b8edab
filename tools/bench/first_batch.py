"""Runs `slimtok tokenize` (argv[2:]) in this fresh python, the command's own code unchanged, and
writes to argv[1] + ".first" two CPU times as JSON: the launcher's own until it starts its
workers, and its forked worker's from the fork (a new process's CPU clock starts at zero) to
the end of its first encoded batch. A spawned worker would not run the patch: no file.

Run by the startup section as ``python -P tools/bench/first_batch.py <root> tokenize …``: as a
script (not ``-m``), so that the launcher's CPU includes no import of the bench, and with ``-P``,
so that this folder (whose modules' names a library could import) is not on sys.path. Imports only
what `python -c` would have before slimtok: the figures stay comparable with earlier runs.
"""

import os
import sys
import time


def main() -> None:
    from slimtok import launch

    mark = sys.argv[1] + ".first"
    launcher: list[float] = []
    real_start = launch.NodeRun.start

    def start(*args, **kwargs):  # NodeRun.start's signature, passed through
        launcher.append(time.process_time())
        # patched only now: importing the encoder (numpy) earlier would change how the launcher starts
        from slimtok.tokenizer import encoder

        real_encode = encoder.Encoder.encode

        def encode(self, texts):
            ids = real_encode(self, texts)
            if not os.path.exists(mark):
                with open(mark, "w") as f:
                    f.write(repr([launcher[0], time.process_time()]))
            return ids

        encoder.Encoder.encode = encode  # type: ignore[method-assign]  # marks the first batch, then encodes
        return real_start(*args, **kwargs)

    launch.NodeRun.start = start  # type: ignore[method-assign]
    sys.argv = ["slimtok", *sys.argv[2:]]
    from slimtok.cli import main as slimtok_main

    slimtok_main()


if __name__ == "__main__":
    main()
