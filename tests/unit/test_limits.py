from __future__ import annotations

import pytest

from reranker.backend.images import ImageLimits
from reranker.contract.model import Activation, ModelKind, ServedModel
from reranker.service.calls import RankCall
from reranker.service.errors import InvalidArgument, ResourceExhausted
from reranker.service.limits import CallLimits, RowBudget
from reranker.service.validation import validate
from reranker.settings import Settings

LIMITS = CallLimits(
    max_documents=3,
    max_query_bytes=10,
    max_document_bytes=8,
    images=ImageLimits(max_bytes=100, max_pixels=100),
)
MODEL = ServedModel("m", ModelKind.CROSS_ENCODER, "Bert", 512, Activation.SIGMOID, ("input_ids",))


def test_calls_within_limits_pass() -> None:
    validate(RankCall("q" * 10, ["d" * 8, "ü" * 4, "x"]), MODEL, LIMITS)


@pytest.mark.parametrize(
    ("query", "documents", "message"),
    [
        ("q", ["d"] * 4, "documents holds 4 documents; the limit is max_documents_per_call=3"),
        ("é" * 6, ["d"], "query is 12 bytes; the limit is max_query_bytes=10"),
        ("q", ["d", "€" * 3], "documents[1] is 9 bytes; the limit is max_document_bytes=8"),
    ],
)
def test_each_limit_names_itself_and_the_value(
    query: str, documents: list[str], message: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate(RankCall(query, documents), MODEL, LIMITS)
    assert str(raised.value) == message


def test_the_budget_refuses_what_does_not_fit_and_releases_on_exit() -> None:
    budget = RowBudget(10)
    with budget.hold(6):
        refused = pytest.raises(ResourceExhausted, match="6 rows in flight, this call needs 5")
        with refused, budget.hold(5):
            pass
        with budget.hold(4):
            assert budget.in_flight == 10
    assert budget.in_flight == 0
    too_big = pytest.raises(InvalidArgument, match=r"needs 11 rows.*max_rows_in_flight=10")
    with too_big, budget.hold(11):
        pass


def test_the_budget_is_released_when_the_call_fails() -> None:
    budget = RowBudget(4)
    with pytest.raises(RuntimeError), budget.hold(4):
        raise RuntimeError("inference failed")
    assert budget.in_flight == 0


def test_settings_refuse_inconsistent_limits() -> None:
    with pytest.raises(ValueError, match="max_documents_per_call"):
        Settings(max_documents_per_call=100, max_rows_in_flight=50)
    with pytest.raises(ValueError, match="max_rows_in_flight must be >= 1"):
        Settings(max_rows_in_flight=0, max_documents_per_call=1)
    with pytest.raises(ValueError, match="tls_cert_file and tls_key_file"):
        Settings(tls_cert_file="cert.pem")
