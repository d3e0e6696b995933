# The emulator's worker processes (anyio.to_process) re-run the parent's main module, as
# multiprocessing does, under the name "__mp_main__". Importing qiskit at the top of this file
# would then fail in every worker (dill does `import __main__` while `__main__` is unset), so
# everything happens under the guard.
if __name__ == "__main__":
    from benchmarks.cli import main

    raise SystemExit(main())
