"""Run safety and run directories: atomic file and directory writes (`io.py`), ownership of an
output directory (`ownership.py`), run-directory layout and staged `--overwrite` (`run_dir.py`), the
job lock, signal handling and trackers.

Imports from common/: `errors`, and `evaluation.plots` (a run's loss.png, drawn lazily). `io.py` and
`ownership.py` are the shared bottom: they import nothing of common/ but `errors`, and every other
part may use them. Never a backend, a job or the CLI.
"""
