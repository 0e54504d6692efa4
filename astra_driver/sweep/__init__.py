"""Sweeps over configurations and capacity searches (docs/sweep.md).

grid.py: the spec and its expansion into points; runner.py: one point -> one row; executors.py: where points run
(this process, a local process pool, Ray tasks); results.py: the resumable CSV; sweep.py: `pipesim sweep`;
capacity.py: `pipesim capacity` and the SLO search of a sweep's `capacity:` section.
"""
