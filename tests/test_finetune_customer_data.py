"""``granite-train finetune`` on the customer inputs of issue 27's table (scripts/customer_data_rows.py):
the rows that hung now exit 2 within 60 s with a message naming the fix; every row in the slow tier."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.conftest import FSDD_DIR, require_shared

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "customer_data_rows.py"


def _script():
    spec = importlib.util.spec_from_file_location("customer_data_rows", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


rows = _script()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    require_shared(FSDD_DIR)
    from granite_train.models.tiny_release import build_tiny_released_model

    return build_tiny_released_model(tmp_path_factory.mktemp("model"))


@pytest.mark.parametrize("name", rows.FAILING)
def test_a_row_that_hung_now_exits_2_in_seconds_naming_the_fix(name, model, tmp_path):
    row = getattr(rows, name)(tmp_path)
    code, seconds, output = rows.run_row(row, model, tmp_path)
    assert code == 2, output[-3000:]
    assert row.expect in output and "Traceback" not in output
    assert rows.message_of(output).startswith("granite-train finetune: ")
    assert seconds < 60


@pytest.mark.slow
def test_every_row_of_the_table(tmp_path):
    require_shared(FSDD_DIR)
    assert rows.main(["--out", str(tmp_path)]) == 0
