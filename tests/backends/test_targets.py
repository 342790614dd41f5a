"""The Target seam: every registered backend has a Target and an opener, and the
Targets carry their own rules, so the drivers ask instead of branching on a backend."""

from __future__ import annotations

import pytest

from gembatch_async._backends import (
    BACKENDS,
    GEMINI,
    VERTEX,
    Backend,
    GeminiTarget,
    JobsApi,
    Routed,
    SubmitApi,
    VertexTarget,
)
from gembatch_async._backends._sessions import _OPENERS, chosen_target, every_target
from gembatch_async._inputs import JobLimits


def test_every_backend_is_registered_once_with_a_target_and_an_opener() -> None:
    """A backend named but not registered (no opener, no Target for the job commands)
    would fail only when a journal line of it is first opened: here it fails at once."""
    targets = every_target()
    assert sorted(targets) == sorted(BACKENDS) == sorted(_OPENERS)
    assert all(target.backend == name for name, target in targets.items())


def test_the_public_parameters_choose_the_target() -> None:
    """``vertex=`` chooses Vertex, whatever else is given; without it, Gemini with the
    key and URL given."""
    vertex = VertexTarget(project="p")
    assert chosen_target(api_key="k", vertex=vertex) is vertex
    gemini = chosen_target(api_key="k", base_url="http://127.0.0.1:1")
    assert gemini == GeminiTarget(None, "k", "http://127.0.0.1:1")
    assert gemini.backend == GEMINI
    assert vertex.backend == VERTEX


def test_each_target_carries_its_own_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """Job limits, the table import, webhooks and the key are the target's to say."""
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    gemini, vertex = GeminiTarget(), VertexTarget()
    assert gemini.job_limits(None, None) == JobLimits(2 * 10**9, None)
    assert vertex.job_limits(None, None) == JobLimits(10**9, 200_000)
    assert (gemini.table_import, vertex.table_import) == (False, True)
    assert gemini.webhook_problem() is None
    assert "not Vertex AI" in (vertex.webhook_problem() or "")
    assert [p.path for p in gemini.problems()] == ["GEMINI_API_KEY"]
    assert GeminiTarget(api_key="a-key").problems() == []
    assert vertex.problems() == []  # checked when opened: a run with nothing to send needs none


def test_a_vertex_target_serving_journal_lines_fills_its_gaps_from_them() -> None:
    """The job commands need no --project: the first Vertex line's project, location and
    bucket fill what the target leaves open, never what it says."""
    line = {"backend": "vertex", "project": "rec", "location": "europe-west4", "bucket": "gs://b"}
    filled = VertexTarget().for_lines([line])
    assert filled == VertexTarget(project="rec", location="europe-west4", bucket="gs://b")
    assert VertexTarget(project="mine").for_lines([line]) == VertexTarget(
        project="mine", location="europe-west4", bucket="gs://b"
    )
    assert VertexTarget().for_lines([]) == VertexTarget()


def _members(protocol: type) -> set[str]:
    return {name for name in vars(protocol) if not name.startswith("_")}


def test_routed_is_what_the_job_commands_need_and_no_stubs() -> None:
    """Routed implements JobsApi and nothing more (no stubs of submit's calls), and the
    public Backend is still every call of both small protocols."""
    assert _members(Routed) == _members(JobsApi)
    assert _members(SubmitApi) | _members(JobsApi) == {
        "upload_name",
        "line_fields",
        "model_supports",
        "storage_quota",
        "job_window",
        "upload_file",
        "get_file",
        "delete_file",
        "create_batch",
        "get_batch",
        "get_batch_detail",
        "cancel_batch",
        "download_file",
        "list_batches",
        "list_batch_page",
        "get_model",
        "count_tokens",
    }
    assert {SubmitApi, JobsApi} <= set(Backend.__mro__)
