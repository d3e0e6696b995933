"""``python -m emulator``.

Imports nothing at module level: anyio's worker processes re-run the parent's main module by
path (as ``__mp_main__``, with ``sys.modules["__main__"]`` removed), and importing the emulator
there would fail and start a second copy of its imports in every worker.
"""

if __name__ == "__main__":
    import sys

    from emulator.cli import main

    sys.exit(main())
