"""Every page test also checks that no page part fell back to a timer for want of a job to listen for: a part that
waits listens on the live channel (prunekit.app.live), and one that cannot would poll unnoticed."""

import logging

import pytest


@pytest.fixture(autouse=True)
def no_part_polls_unheard(request, caplog):
    caplog.set_level(logging.WARNING, logger="prunekit.app.live")
    yield
    if request.node.get_closest_marker("polls"):
        return
    unheard = [r.getMessage() for r in caplog.get_records("call") if r.name == "prunekit.app.live"]
    assert not unheard, unheard
