"""The export benchmark: ``python -m benchmarks`` (or ``make bench``).

Builds seeded archives (cached in benchmarks/.cache/), times ``pipeline run export``
per format against peers (the sqlite3 CLI, sqlite-utils, a stdlib exporter, polars)
in the same interleaved runs, measures memory with memray and peak RSS, and writes
benchmarks/results/latest.{json,md}, chart.png and the README's Performance tables.
See ``python -m benchmarks --help``.
"""
