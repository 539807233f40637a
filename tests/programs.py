"""
System programs some tests need that ``pip install -e '.[test]'`` cannot
bring (a browser).  A test asks for one with L{require_program}: when it is
missing the test is skipped with a one-line reason saying how to get it; with
``CDNPULL_REQUIRE_ALL=1`` in the environment (CI, see ``.ci/run``) a missing
program fails the test instead, so CI never goes green by skipping.
"""

from __future__ import annotations

import os
import shutil

import pytest

__all__ = ["require_program", "REQUIRE_ALL"]

REQUIRE_ALL = "CDNPULL_REQUIRE_ALL"


def require_program(program: str, how: str, search: str | None = None) -> str:
    """
    The path of C{program} (an absolute path, or a name looked up on
    C{search} then C{PATH}); skip the calling test (fail it under
    C{CDNPULL_REQUIRE_ALL=1}) when it is not there.

    @param how: what gets it, e.g. C{"apt-get install chromium"}.
    """
    if os.path.isabs(program):
        found = program if os.access(program, os.X_OK) else None
    else:
        found = (shutil.which(program, path=search) if search else None) or shutil.which(program)
    if found:
        return found
    reason = f"{program} not found (get it with: {how})"
    if os.environ.get(REQUIRE_ALL) == "1":
        pytest.fail(f"{reason}; {REQUIRE_ALL}=1 forbids skipping", pytrace=False)
    pytest.skip(reason)
