"""Answers of several owners merged into one, as a single node would have answered."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from recsync.cluster.leases import NodeRow
from recsync.cluster.routing import merge, pick_endpoint
from recsync.daemon import protocol as p
from recsync.errors import ControlError


def test_counts_add_up_and_pipelines_list_together() -> None:
    local = p.CountResult(1, ["c/p2"])
    remote = {"count": 2, "pipelines": ["c/p3", "c/p1"]}
    assert merge(p.Pause("c"), [local, remote], []) == p.CountResult(3, ["c/p1", "c/p2",
                                                                        "c/p3"])


def test_not_found_of_some_owners_is_no_error_when_others_acted() -> None:
    found = {"count": 1, "pipelines": ["c/p1"]}
    missing = ControlError("NOT_FOUND", "record '9' is not failed in any pipeline")
    assert merge(p.RetryRecord("9"), [found], [missing]) == found
    with pytest.raises(ControlError) as err:
        merge(p.RetryRecord("9"), [], [missing, missing])
    assert err.value.code == "NOT_FOUND"
    other = ControlError("UNAVAILABLE", "pipeline c/p2 is stopped")
    with pytest.raises(ControlError) as err:
        merge(p.RetryRecord("9"), [found], [missing, other])
    assert err.value.code == "UNAVAILABLE"


def test_an_owner_on_this_host_is_reached_over_ipc_else_tcp() -> None:
    now = datetime.now(UTC)
    row = NodeRow("n2", "h1", 1, "b", now, True, endpoints="ipc:///r/c.sock tcp://h1:7731")
    assert pick_endpoint(row, "h1") == "ipc:///r/c.sock"
    assert pick_endpoint(row, "h2") == "tcp://h1:7731"
    alone = NodeRow("n3", "h1", 1, "b", now, True, endpoints="ipc:///r/c.sock")
    assert pick_endpoint(alone, "h2") is None
