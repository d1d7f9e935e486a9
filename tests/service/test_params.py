"""Text parameters (query string, form fields) and where parameters may come from."""

from __future__ import annotations

import pytest

from service.errors import Unprocessable
from service.params import gather, parse_text, split_run_options


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2", 2),
        ("2,3", [2, 3]),
        ("null,7", [None, 7]),
        ("None,7", [None, 7]),
        ("7,", [7]),
        ("true", True),
        ("false", False),
        ("2.5", 2.5),
        ("max", "max"),
        ("2, 3", [2, 3]),
        ("1,2,3", [1, 2, 3]),
    ],
)
def test_parse_text(text: str, value: object) -> None:
    assert parse_text(text) == value


def test_gather_merges_sources() -> None:
    params = gather([("kernel_size", "2,3")], {"stride": "1"}, {"padding": 1})
    assert params == {"kernel_size": [2, 3], "stride": 1, "padding": 1}


@pytest.mark.parametrize(
    ("query", "form", "body"),
    [
        ([("k", "1"), ("k", "2")], {}, {}),
        ([("k", "1")], {"k": "2"}, {}),
        ([], {"k": "2"}, {"k": 3}),
    ],
)
def test_gather_refuses_a_name_twice(query: list, form: dict, body: dict) -> None:
    with pytest.raises(Unprocessable, match="more than once"):
        gather(query, form, body)


def test_split_run_options() -> None:
    assert split_run_options({"kernel_size": 2}) == ({"kernel_size": 2}, "eval", None)
    assert split_run_options({"mode": "train", "seed": 4, "p": 3}) == ({"p": 3}, "train", 4)
