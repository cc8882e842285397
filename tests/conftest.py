"""Shared test helpers: where the read-only fixtures live, and how a test asks for them.

The fixtures in ../shared are not part of the repository. A test that needs one skips with a reason
that says where it looked; under CI (CI=true) a missing ../shared is a failure, never a silent skip.
"""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PERA_SHARED", ROOT.parent / "shared"))
HERE_FIXTURES = ROOT / "tests" / "fixtures"  # small fixtures we generated and commit (see tests/fixtures/README.md)

sys.path.insert(0, str(ROOT))


def shared(*parts) -> Path:
    """The path ../shared/<parts>, or skip (fail under CI) when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        reason = f"fixture {path} not found (the read-only ../shared folder is expected beside the repository)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path
