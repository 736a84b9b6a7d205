import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from masr_graph.errors import RoleError
from masr_graph.runtime import roles as roles_module
from masr_graph.runtime.roles import (
    DOMAINS,
    POSTPROCESSORS,
    Role,
    get_role,
    load_roles,
    register_role,
    roles_for_domain,
)

# What each domain's evaluator extracts (see the benchmark contracts): the role's output format
# must tell the agent to end its reply that way.
FORMAT_MARKERS = {"math": r"\boxed{", "code": "```python", "knowledge": "Answer: X"}

VALID_FIELDS = {
    "name": "Tide Table Reader",
    "domain": "knowledge",
    "description": "Reads tide tables and answers questions about coastal water levels.",
    "prompt": "You are a harbour master. Read the table carefully. Answer precisely.",
    "output_format": 'Finish with a final line "Answer: X".',
}


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch):
    """Roles registered by one test must not leak into others."""
    monkeypatch.setattr(roles_module, "_registered", {})


def write_role(directory: Path, filename: str, **overrides) -> Path:
    fields = {**VALID_FIELDS, **overrides}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    path.write_text(yaml.safe_dump({k: v for k, v in fields.items() if v is not ...}))
    return path


def sentences(text: str) -> int:
    return len([s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s])


def test_builtin_roles_cover_every_domain():
    roles = load_roles()
    assert len(roles) >= 27
    for domain in DOMAINS:
        assert len(roles_for_domain(domain)) >= 9, domain
    assert {role.domain for role in roles.values()} == set(DOMAINS)
    assert all(name == role.name for name, role in roles.items())


def test_descriptions_are_distinct_and_substantial():
    roles = list(load_roles().values())
    descriptions = [role.description.casefold() for role in roles]
    assert len(set(descriptions)) == len(descriptions)
    for role in roles:
        assert 60 <= len(role.description) <= 400, role.name
        assert 1 <= sentences(role.description) <= 3, role.name
        assert role.description.casefold() != role.name.casefold()
        assert sentences(role.prompt) >= 3, role.name
        assert role.prompt not in {other.prompt for other in roles if other is not role}


@pytest.mark.parametrize("domain", DOMAINS)
def test_output_formats_match_what_the_evaluator_extracts(domain):
    for role in roles_for_domain(domain):
        assert FORMAT_MARKERS[domain] in role.output_format, role.name
        assert role.system_message().endswith(role.output_format)
        assert role.system_message().startswith(role.prompt)


def test_domains_with_executable_answers_have_a_code_running_role():
    for domain in ("math", "code"):
        assert any(r.postprocess == "run_python" for r in roles_for_domain(domain)), domain
    assert all(r.postprocess in POSTPROCESSORS | {None} for r in load_roles().values())


def test_builtin_order_is_by_domain_then_file():
    domains_in_order = [role.domain for role in load_roles().values()]
    assert domains_in_order == sorted(domains_in_order, key=DOMAINS.index)


def test_load_is_cached_and_returns_a_fresh_dict():
    first = load_roles()
    first.clear()
    second = load_roles()
    assert second
    assert second["Number Theorist"] is load_roles()["Number Theorist"]


def test_roles_are_found_from_another_working_directory(tmp_path):
    script = (
        "import json\n"
        "from masr_graph.runtime.roles import load_roles\n"
        "roles = load_roles()\n"
        "print(json.dumps({name: role.domain for name, role in roles.items()}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found == {name: role.domain for name, role in load_roles().items()}


def test_extra_dir_roles_are_added(tmp_path):
    write_role(tmp_path / "knowledge", "tides.yaml", temperature=0.3)
    write_role(tmp_path, "riddles.yml", name="Riddle Solver", domain="math",
               postprocess="run_python")
    roles = load_roles([tmp_path])
    assert len(roles) == len(load_roles()) + 2
    tide = get_role("Tide Table Reader", extra_dirs=[str(tmp_path)])
    assert tide.temperature == 0.3 and tide.postprocess is None
    assert get_role("Riddle Solver", extra_dirs=[tmp_path]).postprocess == "run_python"
    assert tide in roles_for_domain("knowledge", extra_dirs=[tmp_path])
    assert tide not in roles_for_domain("knowledge")
    # extra roles come after the built-in ones, so existing vocabulary indices do not move
    assert list(roles)[: len(load_roles())] == list(load_roles())


def test_block_scalars_are_stripped(tmp_path):
    (tmp_path / "r.yaml").write_text(
        "name: Folded\ndomain: code\ndescription: >\n  Writes code.\n"
        "prompt: |\n  Line one.\n  Line two.\noutput_format: >-\n  ```python block\n"
    )
    role = get_role("Folded", extra_dirs=[tmp_path])
    assert role.description == "Writes code."
    assert role.prompt == "Line one.\nLine two."


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"colour": "blue"}, ["unknown field", "'colour'", "allowed:", "output_format"]),
        ({"prompt": ...}, ["missing required field", "'prompt'"]),
        ({"domain": "biology"}, ["'domain'", "'biology'", "math, code, knowledge"]),
        ({"postprocess": "run_java"}, ["'postprocess'", "'run_java'", "run_python"]),
        ({"postprocess": ["run_python"]}, ["'postprocess'", "run_python"]),
        ({"temperature": 3.5}, ["'temperature'", "3.5", "0.0 to 2.0"]),
        ({"temperature": True}, ["'temperature'", "True"]),
        ({"temperature": "hot"}, ["'temperature'", "'hot'"]),
        ({"description": "   "}, ["'description'", "non-empty string"]),
        ({"name": 7}, ["'name'", "non-empty string", "7"]),
    ],
)
def test_invalid_fields_are_rejected_with_file_field_and_allowed_values(
    tmp_path, overrides, expected
):
    path = write_role(tmp_path, "bad.yaml", **overrides)
    with pytest.raises(RoleError) as caught:
        load_roles([tmp_path])
    message = str(caught.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message


@pytest.mark.parametrize(
    "content, expected",
    [("name: [unclosed\n", "not valid YAML"), ("- a\n- b\n", "mapping"), ("", "mapping")],
)
def test_malformed_files_are_rejected(tmp_path, content, expected):
    (tmp_path / "broken.yaml").write_text(content)
    with pytest.raises(RoleError, match=expected) as caught:
        load_roles([tmp_path])
    assert "broken.yaml" in str(caught.value)


def test_domain_must_match_its_folder(tmp_path):
    path = write_role(tmp_path / "math", "misplaced.yaml", domain="code")
    with pytest.raises(RoleError, match="'math' folder") as caught:
        load_roles([tmp_path])
    assert str(path) in str(caught.value)


def test_duplicate_names_are_rejected(tmp_path):
    first = write_role(tmp_path, "a.yaml")
    second = write_role(tmp_path, "b.yaml", description="Another description of the same name.")
    with pytest.raises(RoleError, match="duplicate role name 'Tide Table Reader'") as caught:
        load_roles([tmp_path])
    assert str(first) in str(caught.value) and str(second) in str(caught.value)


def test_extra_role_may_not_shadow_a_builtin(tmp_path):
    write_role(tmp_path, "theorist.yaml", name="Number Theorist", domain="math")
    with pytest.raises(RoleError, match="duplicate role name 'Number Theorist'"):
        load_roles([tmp_path])


def test_missing_or_empty_extra_dirs_are_rejected(tmp_path):
    with pytest.raises(RoleError, match="does not exist"):
        load_roles([tmp_path / "nowhere"])
    (tmp_path / "notes.txt").write_text("not a role")
    with pytest.raises(RoleError, match="holds no role files"):
        load_roles([tmp_path])


def test_unknown_role_and_domain_name_the_allowed_values():
    with pytest.raises(RoleError) as caught:
        get_role("Astrologer")
    assert "'Astrologer'" in str(caught.value) and "Number Theorist" in str(caught.value)
    with pytest.raises(RoleError, match="'chemistry'.*math, code, knowledge"):
        roles_for_domain("chemistry")


def test_register_role_from_code():
    role = Role(**{**VALID_FIELDS, "name": "Registered Role"})
    assert register_role(role) is role
    assert register_role(role) is role  # re-registering the identical role is a no-op
    assert get_role("Registered Role") is role
    assert list(load_roles())[-1] == "Registered Role"
    assert role in roles_for_domain("knowledge")
    with pytest.raises(RoleError, match="already exists"):
        register_role(Role(**{**VALID_FIELDS, "name": "Registered Role", "prompt": "Other."}))
    with pytest.raises(RoleError, match="already exists"):
        register_role(Role(**{**VALID_FIELDS, "name": "Number Theorist", "domain": "math"}))
    with pytest.raises(RoleError, match="expects a Role"):
        register_role(VALID_FIELDS)


def test_registered_role_clashing_with_an_extra_dir_is_reported(tmp_path):
    register_role(Role(**VALID_FIELDS))
    write_role(tmp_path, "tides.yaml")
    with pytest.raises(RoleError, match="register_role"):
        load_roles([tmp_path])


def test_role_constructor_validates_like_files():
    with pytest.raises(RoleError, match="'domain' is 'law'"):
        Role(**{**VALID_FIELDS, "domain": "law"})
    assert Role(**VALID_FIELDS, temperature=1).temperature == 1.0
