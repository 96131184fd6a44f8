"""The test database's own plumbing (tests/support/database.py)."""

from __future__ import annotations

import gc
import warnings

from tests.support.database import _docker_answers


def test_asking_for_docker_leaves_no_socket_for_a_later_test_to_collect() -> None:
    # Where no engine listens, docker-py's failed connect left its socket in a
    # reference cycle; a later test's garbage collection then failed on its
    # ResourceWarning.
    _docker_answers()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
