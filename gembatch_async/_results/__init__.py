"""Turn a job's output into results: one line per input request, in input order.

The room's front: what other rooms use. Inside, one concern per module:

- ``_targets``: where an input's results go, and whether a download may write them;
- ``_records``: what came of a download (``ResultFile``, ``ResultCounts``);
- ``_fetch``: a succeeded job's output downloaded and turned into results;
- ``_join``: the three-pass join of answers to requests, in bounded memory;
- ``_output_lines``, ``_keys``: one line read; a key as the join matches it;
- ``_staging``: temporaries put in place only when complete.
"""

from __future__ import annotations

from ._fetch import fetch_results
from ._records import ResultCounts, ResultFile
from ._targets import ResultTargets, plan_targets, result_targets, results_are_current

__all__ = [
    "ResultCounts",
    "ResultFile",
    "ResultTargets",
    "fetch_results",
    "plan_targets",
    "result_targets",
    "results_are_current",
]
