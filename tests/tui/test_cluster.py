"""The dashboard on a node of a ``[cluster]``: it shows each pipeline's owner, and follows
a pipeline that moves to another node (it stays selected; its detail keeps updating, now
from the new owner). Real recsyncd processes, the state in PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from recsync.client import ControlClient
from recsync.tui.app import make_app
from recsync.tui.screens.detail import DetailScreen
from recsync.tui.widgets.table import LiveTable
from tests.e2e.cluster import Cluster, add_rows, b_rows, cluster, fair, setup, synced
from tests.e2e.helpers import wait_for
from tests.pgfixture import pg
from tests.tui.conftest import until

pytestmark = pytest.mark.asyncio
nodes = cluster  # the fixture: a customer and a PostgreSQL schema of its own, cleaned up
_FIXTURES = (pg,)  # used as a fixture by name


@pytest.fixture
def one_node(nodes: Cluster) -> Iterator[Cluster]:
    """n1 alone, owning both pipelines, all synced."""
    setup(nodes, 2, 20)
    nodes.start("n1")
    try:
        wait_for(lambda: len(nodes.owners()) == 2 and synced(nodes, 20), timeout=90,
                 what="n1 owning and syncing both pipelines")
        yield nodes
    finally:
        nodes.stop_all()


async def test_the_dashboard_follows_a_pipeline_to_its_new_owner(one_node: Cluster) -> None:
    c = one_node
    moving = c.pipelines[1]  # with a second node, n1 hands its last pipeline over (p2)
    app = make_app(lambda: ControlClient(c.endpoint("n1"), timeout=5.0))
    async with app.run_test(size=(120, 30)) as pilot:
        table = app.screen.query_one("#pipelines", LiveTable)
        await until(pilot, lambda: moving in table.keys and
                    table.get_cell(moving, "node") == c.node("n1"), what="n1 as the owner")
        await pilot.press("down")
        assert table.cursor_key == moving
        await pilot.press("enter")
        detail = app.screen
        assert isinstance(detail, DetailScreen) and detail.pipeline == moving
        info = detail.query_one("#detail-info")
        await until(pilot, lambda: f"node {c.node('n1')}" in str(info.render()),
                    what="the detail naming n1")

        c.start("n2")  # fair share: one pipeline each; n1 hands p2 over
        await until(pilot, lambda: fair(c, ["n1", "n2"]) and
                    c.owners().get(moving) == c.node("n2"), timeout=90, what="the move")
        await until(pilot, lambda: f"node {c.node('n2')}" in str(info.render()),
                    timeout=30, what="the detail naming the new owner")
        await until(pilot, lambda: "state running" in str(info.render()), timeout=30,
                    what="the new owner's state")
        # the detail goes on updating: n2 syncs new rows, and the figures follow
        add_rows(c, 21, 30)
        await until(pilot, lambda: len(b_rows(c, moving)) == 30, timeout=60,
                    what="n2 syncing the new rows")
        await until(pilot, lambda: app.model.pipelines[moving].synced_a_to_b >= 30,
                    timeout=30, what="the detail's figures after the move")
        assert "state running" in str(info.render())
        assert app.screen is detail and detail.pipeline == moving
        await pilot.press("escape")
        table = app.screen.query_one("#pipelines", LiveTable)
        assert table.cursor_key == moving  # still selected in the overview
        await until(pilot, lambda: table.get_cell(moving, "node") == c.node("n2"),
                    what="the overview naming the new owner")
        assert table.get_cell(c.pipelines[0], "node") == c.node("n1")


