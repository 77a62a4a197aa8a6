"""The peer comparison (``python -m benchmarks --peers``): jobqueue side by side
with PgQueuer, procrastinate and Oban for Python. `compare` runs it; `venvs` makes the
peers' virtualenvs; ``bench_<peer>.py`` drive each peer from inside its virtualenv, with
the standard-library `harness` they share with jobqueue's own latency workload.

Importing this package imports nothing else: the peer scripts' harness is imported from
here by jobqueue's workloads, and from the scripts' own folder by the scripts.
"""
