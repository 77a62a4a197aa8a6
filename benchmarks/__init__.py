"""jobqueue's benchmark suite: ``python -m benchmarks --url URL``.

Every result is printed as one JSON line and, where a raw ceiling applies, also as a ratio
to that ceiling measured in the same run on the same server: absolute numbers drift on a
shared machine, ratios from one run do not drift much. See docs/performance.md.
"""
