"""Loading and validating an LLM pool file.

A pool file is YAML with one top-level key, ``llms``, a list of entries::

    llms:
      - name: gpt-4o-mini                     # unique; used in plans, traces, results
        model: gpt-4o-mini                    # provider model id sent in the request
        base_url: https://api.openai.com/v1   # OpenAI-compatible endpoint (or replay://...)
        api_key_env: OPENAI_API_KEY           # NAME of the env var with the key; omit: no key
        price_in: 0.15                        # $ per 1M prompt tokens (required, >= 0)
        price_out: 0.60                       # $ per 1M completion tokens (required, >= 0)
        description: Small, fast, cheap ...   # the LLM node's feature text for the router
        max_concurrency: 32                   # optional, default 16
        timeout_s: 60                         # optional, per-attempt timeout, default 60
        notional: local vLLM, electricity     # optional: the prices are notional (nothing is
                                              # billed); printed next to every $ figure

Every problem in the file is reported at once, each naming the file, the entry and the field.
Prices are required for every entry — an unknown model is never priced at $0. Whether the key's
environment variable is set is checked only when that LLM is called (``MissingAPIKeyError``), so
a pool may list providers the user has no key for.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Union
from urllib.parse import urlsplit

import yaml

from ..errors import ConfigError
from .types import LLMSpec

PoolSource = Union[str, "os.PathLike[str]", Mapping[str, Any]]

TOP_LEVEL_FIELDS = ("llms",)
REQUIRED_FIELDS = ("name", "model", "base_url", "price_in", "price_out", "description")
OPTIONAL_FIELDS = ("api_key_env", "max_concurrency", "timeout_s", "notional")
ALLOWED_FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS
ENV_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a doubled ``price_in`` must be an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} appears twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_pool_config(source: PoolSource) -> list[LLMSpec]:
    """Read and validate a pool.

    Args:
        source: path of a YAML pool file, or the already-parsed mapping ``{"llms": [...]}``.

    Returns:
        One :class:`LLMSpec` per entry, in file order.

    Raises:
        ConfigError: the file is missing or not YAML, or any entry is invalid (unknown or missing
            fields, wrong types, negative or non-finite prices, bad URLs, duplicate names); the
            message lists every problem found.
    """
    if isinstance(source, Mapping):
        where, data = "<mapping>", source
    else:
        where, data = str(source), _read_yaml(Path(source))
    problems: list[str] = []
    specs = _parse_pool(data, problems)
    if problems:
        raise ConfigError(f"invalid LLM pool {where}:\n  " + "\n  ".join(problems))
    return specs


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"LLM pool file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read LLM pool file {str(path)!r}: {exc}") from exc
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as exc:
        raise ConfigError(f"invalid LLM pool {str(path)!r}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"LLM pool file {str(path)!r} is not valid YAML: {exc}") from exc


def _parse_pool(data: Any, problems: list[str]) -> list[LLMSpec]:
    if not isinstance(data, Mapping):
        problems.append(
            f"the top level must be a mapping with key 'llms' (got {type(data).__name__})"
        )
        return []
    unknown = sorted(str(k) for k in data if k not in TOP_LEVEL_FIELDS)
    if unknown:
        problems.append(f"unknown top-level key(s) {unknown}; allowed: {list(TOP_LEVEL_FIELDS)}")
    entries = data.get("llms")
    if not isinstance(entries, list) or not entries:
        problems.append(f"'llms' must be a non-empty list of LLM entries (got {entries!r})")
        return []
    specs: list[LLMSpec] = []
    first_index_of_name: dict[str, int] = {}
    for index, entry in enumerate(entries):
        spec = _parse_entry(index, entry, problems)
        if spec is None:
            continue
        if spec.name in first_index_of_name:
            problems.append(
                f"llms[{index}]: duplicate name {spec.name!r} "
                f"(already used by llms[{first_index_of_name[spec.name]}])"
            )
            continue
        first_index_of_name[spec.name] = index
        specs.append(spec)
    return specs


def _parse_entry(index: int, entry: Any, problems: list[str]) -> LLMSpec | None:
    if not isinstance(entry, Mapping):
        problems.append(f"llms[{index}]: must be a mapping of fields (got {type(entry).__name__})")
        return None
    label = f"llms[{index}]"
    if isinstance(entry.get("name"), str):
        label += f" ({entry['name']!r})"
    count_before = len(problems)

    def problem(field: str, message: str) -> None:
        problems.append(f"{label}: field {field!r} {message}")

    unknown = sorted(str(k) for k in entry if k not in ALLOWED_FIELDS)
    if unknown:
        problems.append(f"{label}: unknown field(s) {unknown}; allowed: {list(ALLOWED_FIELDS)}")
    for field in REQUIRED_FIELDS:
        if field not in entry or entry[field] is None:
            problem(field, "is required")

    for field in ("name", "model", "description"):
        value = entry.get(field)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            problem(field, f"must be a non-empty string (got {value!r})")

    base_url = entry.get("base_url")
    if base_url is not None:
        url_problem = _check_base_url(base_url)
        if url_problem:
            problem("base_url", url_problem)

    for field in ("price_in", "price_out"):
        value = entry.get(field)
        if value is not None and not (_is_number(value) and math.isfinite(value) and value >= 0):
            problem(field, f"must be a finite number >= 0, in $ per 1M tokens (got {value!r})")

    key_env = entry.get("api_key_env")
    if key_env is not None:
        if not isinstance(key_env, str) or not ENV_VAR_NAME.fullmatch(key_env):
            hint = (
                " — it looks like an API key itself; put the key in an environment variable and "
                "give that variable's name here"
                if isinstance(key_env, str) and len(key_env) > 20
                else ""
            )
            # Never echo what may be a secret.
            shown = "<redacted>" if hint else repr(key_env)
            problem("api_key_env", f"must be an environment variable name (got {shown}){hint}")

    concurrency = entry.get("max_concurrency")
    if concurrency is not None and not (
        isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency >= 1
    ):
        problem("max_concurrency", f"must be an integer >= 1 (got {concurrency!r})")

    timeout = entry.get("timeout_s")
    if timeout is not None and not (_is_number(timeout) and math.isfinite(timeout) and timeout > 0):
        problem("timeout_s", f"must be a number of seconds > 0 (got {timeout!r})")

    notional = entry.get("notional")
    if notional is not None and (not isinstance(notional, str) or not notional.strip()):
        problem("notional", f"must be a non-empty string saying why nothing is paid (got "
                            f"{notional!r})")

    if len(problems) > count_before:
        return None
    optional = {f: entry[f] for f in OPTIONAL_FIELDS if entry.get(f) is not None}
    return LLMSpec(
        name=entry["name"],
        model=entry["model"],
        base_url=entry["base_url"],
        price_in=float(entry["price_in"]),
        price_out=float(entry["price_out"]),
        description=entry["description"].strip(),
        **optional,
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_base_url(value: Any) -> str:
    """Empty when ``value`` is a usable endpoint URL, else what is wrong with it."""
    if not isinstance(value, str) or not value:
        return f"must be a URL string (got {value!r})"
    parts = urlsplit(value)
    if not parts.scheme:
        return f"must start with a scheme such as https:// (got {value!r})"
    if parts.scheme in ("http", "https") and not parts.hostname:
        return f"has no host (got {value!r})"
    return ""
