from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workbench.core import contract


def test_algo_arg_names_the_contract_paths_and_args() -> None:
    doc = json.loads(contract.algo_arg_env({"threshold_hu": -950}))
    assert doc == {
        "contract": "elic-algo/1",
        "participant": "/elic/input/participant.json",
        "output": "/elic/output/output.json",
        "args": {"threshold_hu": -950},
    }


def test_series_dir_refuses_keys_that_escape_the_dicom_root() -> None:
    assert contract.series_dir("se-1") == "/elic/dicom/se-1"
    for bad in ["", ".", "..", "a/b", "../etc"]:
        with pytest.raises(ValueError):
            contract.series_dir(bad)


def test_cli_args_keep_json_types_and_fall_back_to_strings() -> None:
    args = contract.parse_cli_args(["n=3", "x=-2.5", "on=true", "name=abc", "empty=", "eq=a=b"])
    assert args == {"n": 3, "x": -2.5, "on": True, "name": "abc", "empty": "", "eq": "a=b"}


@pytest.mark.parametrize("bad", [["novalue"], ["=3"], ["a=1", "a=2"]])
def test_cli_args_refuse_malformed_pairs(bad: list[str]) -> None:
    with pytest.raises(ValueError):
        contract.parse_cli_args(bad)


@given(
    st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), st.integers() | st.booleans())
)
def test_cli_args_round_trip_json_scalars(values: dict[str, object]) -> None:
    pairs = [f"{k}={json.dumps(v)}" for k, v in values.items()]
    assert contract.parse_cli_args(pairs) == values
