"""Pool-file loading: the shipped example, and every kind of mistake named precisely."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from masr_graph.errors import ConfigError, MissingAPIKeyError
from masr_graph.llm import LLMPool, LLMSpec, load_pool_config

GOOD_ENTRY: dict[str, Any] = {
    "name": "mini",
    "model": "gpt-4o-mini",
    "base_url": "https://api.openai.com/v1",
    "api_key_env": "OPENAI_API_KEY",
    "price_in": 0.15,
    "price_out": 0.6,
    "description": "small and cheap",
}
_DELETE = object()


def pool_with(**changes: Any) -> dict[str, Any]:
    entry = copy.deepcopy(GOOD_ENTRY)
    for field, value in changes.items():
        if value is _DELETE:
            del entry[field]
        else:
            entry[field] = value
    return {"llms": [entry]}


def config_error(source: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_pool_config(source)
    return str(info.value)


def test_example_pool_ships_with_the_package_and_loads():
    with resources.as_file(resources.files("masr_graph") / "configs" / "example_pool.yaml") as path:
        specs = load_pool_config(path)
    names = [s.name for s in specs]
    assert len(names) == len(set(names)) >= 5
    schemes = {s.base_url.split("://")[0] for s in specs}
    assert schemes == {"https", "http"}
    assert any("openrouter.ai" in s.base_url for s in specs)
    local = [s for s in specs if s.api_key_env is None]
    assert local and all(s.base_url.startswith("http://127.0.0.1") for s in local)
    # Paid providers must carry real prices and a key variable.
    for spec in specs:
        if spec.api_key_env is not None:
            assert spec.price_in > 0 and spec.price_out > 0, spec.name
        assert len(spec.description) > 40, spec.name


def test_valid_mapping_gives_specs_with_defaults_and_options():
    source = pool_with()
    source["llms"].append(
        {
            **GOOD_ENTRY,
            "name": "local",
            "api_key_env": None,
            "price_in": 0,
            "price_out": 0,
            "base_url": "http://127.0.0.1:8080/v1",
            "max_concurrency": 2,
            "timeout_s": 5,
        }
    )
    mini, local = load_pool_config(source)
    assert mini == LLMSpec(
        name="mini",
        model="gpt-4o-mini",
        base_url="https://api.openai.com/v1",
        price_in=0.15,
        price_out=0.6,
        description="small and cheap",
        api_key_env="OPENAI_API_KEY",
    )
    assert (local.api_key_env, local.max_concurrency, local.timeout_s) == (None, 2, 5)
    assert isinstance(local.price_in, float)


def test_unknown_field_is_named_with_the_allowed_ones():
    message = config_error(pool_with(temprature=0.2))
    assert "llms[0] ('mini')" in message
    assert "'temprature'" in message
    for allowed in ("price_in", "api_key_env", "max_concurrency", "timeout_s", "description"):
        assert allowed in message


def test_unknown_top_level_key_is_rejected():
    message = config_error({"llm": [GOOD_ENTRY]})
    assert "'llm'" in message and "allowed: ['llms']" in message


@pytest.mark.parametrize("field", ["price_in", "price_out"])
def test_missing_price_is_an_error_never_zero(field):
    message = config_error(pool_with(**{field: _DELETE}))
    assert f"field {field!r} is required" in message


@pytest.mark.parametrize("value", [-0.01, float("nan"), float("inf"), "0.15", True])
def test_bad_price_values_are_rejected(value):
    message = config_error(pool_with(price_out=value))
    assert "'price_out'" in message and "finite number >= 0" in message


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("name", "", "non-empty string"),
        ("model", 42, "non-empty string"),
        ("description", None, "is required"),
        ("base_url", "api.openai.com/v1", "scheme"),
        ("base_url", "https:///v1", "no host"),
        ("max_concurrency", 0, "integer >= 1"),
        ("max_concurrency", 2.5, "integer >= 1"),
        ("timeout_s", 0, "seconds > 0"),
        ("api_key_env", "MY KEY", "environment variable name"),
    ],
)
def test_field_type_and_range_errors_name_the_field(field, value, expected):
    message = config_error(pool_with(**{field: value}))
    assert f"'{field}'" in message and expected in message


def test_a_pasted_key_is_rejected_without_being_echoed():
    secret = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"
    message = config_error(pool_with(api_key_env=secret))
    assert secret not in message
    assert "looks like an API key itself" in message


def test_duplicate_names_are_rejected_with_both_positions():
    source = {"llms": [GOOD_ENTRY, {**GOOD_ENTRY, "model": "gpt-4o"}]}
    message = config_error(source)
    assert "llms[1]" in message and "duplicate name 'mini'" in message and "llms[0]" in message


def test_all_problems_are_reported_at_once(tmp_path: Path):
    path = tmp_path / "pool.yaml"
    path.write_text(
        "llms:\n"
        "  - name: a\n    model: m\n    base_url: https://x.example/v1\n    description: d\n"
        "    price_in: -1\n"
        "  - name: b\n    model: m\n    base_url: https://x.example/v1\n    description: d\n"
        "    price_in: 1\n    price_out: 1\n    colour: red\n"
    )
    message = config_error(path)
    assert str(path) in message
    assert "llms[0] ('a'): field 'price_in'" in message
    assert "llms[0] ('a'): field 'price_out' is required" in message
    assert "llms[1] ('b'): unknown field(s) ['colour']" in message


def test_duplicate_yaml_key_is_not_silently_overwritten(tmp_path: Path):
    path = tmp_path / "pool.yaml"
    path.write_text(
        "llms:\n  - name: a\n    model: m\n    base_url: https://x.example/v1\n"
        "    description: d\n    price_in: 1\n    price_out: 1\n    price_in: 0\n"
    )
    message = config_error(path)
    assert "'price_in' appears twice" in message and str(path) in message


@pytest.mark.parametrize(
    "text, expected",
    [
        ("llms: [\n", "not valid YAML"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("llms: []\n", "non-empty list"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, expected: str):
    path = tmp_path / "pool.yaml"
    path.write_text(text)
    assert expected in config_error(path)


def test_missing_file_names_the_path(tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    assert str(missing) in config_error(missing)


async def test_missing_key_variable_fails_only_when_that_llm_is_called(monkeypatch, tmp_path):
    monkeypatch.delenv("MASR_TEST_UNSET_KEY", raising=False)
    source = pool_with(api_key_env="MASR_TEST_UNSET_KEY")
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump(source))
    async with LLMPool.from_yaml(path) as pool:  # loading and building the pool succeed
        assert list(pool.specs) == ["mini"]
        with pytest.raises(MissingAPIKeyError) as info:
            await pool.chat("mini", [{"role": "user", "content": "hi"}])
    assert "MASR_TEST_UNSET_KEY" in str(info.value) and "'mini'" in str(info.value)
    (record,) = pool.ledger.records
    assert record.error is not None and record.cost_usd == 0.0 and record.attempts == 0
