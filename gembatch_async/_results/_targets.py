"""Where one input's results go: the files a download writes, and the one rule that
decides whether it may write them (never over an input, another input's results, or
another download's files)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

RESULTS_FOLDER = "results"


@dataclass(frozen=True)
class ResultTargets:
    """The files one input's results are written to."""

    input_path: str
    results: Path
    failed: Path
    raw: Path

    def files(self) -> list[Path]:
        """Every file a download may write for the input (raw output: with ``--keep-raw``,
        for malformed output, or for an input changed since it was submitted)."""
        return [self.results, self.failed, self.raw]


def result_targets(input_path: str, out_dir: str | os.PathLike[str] | None = None) -> ResultTargets:
    """``<input dir>/results/<name>`` (the original gembatch's layout), or with
    ``out_dir`` the input's path mirrored under it."""
    source = Path(input_path)
    if out_dir is None:
        folder = source.parent / RESULTS_FOLDER
    else:
        folder = Path(out_dir) / _mirrored(input_path).parent
    return ResultTargets(
        input_path,
        folder / source.name,
        folder / _beside(source.name, "failed"),
        folder / _beside(source.name, "raw"),
    )


def _beside(name: str, role: str) -> str:
    """``q.jsonl`` -> ``q.failed.jsonl`` (the layout since the first release); any other
    name keeps its whole self (``q.txt`` -> ``q.txt.failed.jsonl``), so ``q.jsonl`` and
    ``q.txt`` beside it never share one. What names still meet (``q`` and ``q.jsonl``,
    or an input named ``q.failed.jsonl``) is refused by :func:`plan_targets`."""
    stem = name[: -len(".jsonl")] if name.endswith(".jsonl") and len(name) > 6 else name
    return f"{stem}.{role}.jsonl"


def _file_names(input_path: str) -> set[str]:
    """The names (not folders) of the files an input's results are written to."""
    name = os.path.basename(os.path.normpath(input_path))
    return {name, _beside(name, "failed"), _beside(name, "raw")}


def _mirrored(input_path: str) -> Path:
    """The input's path relative to the current folder; one outside it keeps its
    absolute path (without the leading ``/``), so nothing lands outside ``--out``."""
    normal = os.path.normpath(input_path)
    if not os.path.isabs(normal) and not normal.startswith(".."):
        return Path(normal)
    absolute = os.path.abspath(normal)
    relative = os.path.relpath(absolute, os.getcwd())
    if not relative.startswith(".."):
        return Path(relative)
    return Path(absolute.lstrip(os.sep))


def plan_targets(
    paths: Sequence[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    inputs: Sequence[str] = (),
    together: Sequence[str] = (),
    written: Mapping[str, str] | None = None,
) -> dict[str, ResultTargets | str]:
    """Each path's targets, or why they are refused; the one place that decides what a
    download may write. Every file of an input counts (results, failed requests, raw
    output; the temporaries are named after the results file). Refused when:

    - two inputs would write one file: of ``paths``, or of ``together`` (the other
      inputs of one ``run``, whose results come one at a time), through a symlink too;
    - a file would overwrite an input (``paths`` and ``inputs``);
    - a file is one another input's download wrote (``written``: path -> that input,
      from the journal), so a later command never overwrites or removes it.
    Nothing is overwritten."""
    resolve = _Resolver()
    mine = {resolve(Path(p)) for p in paths}
    # Files can only meet when their names do: a cheap test first, as a run asks this
    # once per input of thousands.
    names = {name for path in paths for name in _file_names(path)}
    others = [p for p in together if names & _file_names(p) and resolve(Path(p)) not in mine]
    written = {f: owner for f, owner in (written or {}).items() if os.path.basename(f) in names}
    plans = {path: result_targets(path, out_dir) for path in [*paths, *others]}
    writers: dict[str, list[str]] = {}
    for path, targets in plans.items():
        for target in targets.files():
            writers.setdefault(resolve(target), []).append(path)
    protected = {resolve(Path(p)): p for p in [*inputs, *paths]}
    owners = {resolve(Path(file)): owner for file, owner in written.items()}
    refused: dict[str, str] = {}
    for where, who in writers.items():
        owner = owners.get(where)
        for path in who:
            if where in protected:
                refused[path] = f"refused: its results would overwrite the input {protected[where]}"
            elif len(who) > 1:
                named = ", ".join(other for other in who if other != path)
                refused[path] = (
                    f"refused: {named} would write the same file {where}; "
                    "download them one at a time with different --out"
                )
            elif owner is not None and resolve(Path(owner)) != resolve(Path(path)):
                refused[path] = (
                    f"refused: {where} belongs to the results of {owner}, another input; "
                    "download this one with --out DIR"
                )
    return {path: refused.get(path, plans[path]) for path in paths}


class _Resolver:
    """Real paths, resolving each folder once (a journal names thousands of inputs)."""

    def __init__(self) -> None:
        self._folders: dict[str, str] = {}

    def __call__(self, path: Path) -> str:
        folder = str(path.parent)
        real = self._folders.get(folder)
        if real is None:
            real = self._folders[folder] = os.path.realpath(folder)
        return os.path.join(real, path.name)


def results_are_current(targets: ResultTargets, created_at: float | None) -> bool:
    """The results file exists and was written after the job was created (one left
    from an earlier job of the same input, submitted again since, is not current)."""
    try:
        written = os.stat(targets.results).st_mtime
    except OSError:
        return False
    return created_at is None or written >= created_at
