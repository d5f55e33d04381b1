from __future__ import annotations

import pytest
from metrics_testutil import make_scene

from ptq3d.datasets.base import SceneSample


@pytest.fixture
def scene() -> SceneSample:
    return make_scene()
