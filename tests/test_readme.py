"""The README runs as written: every ``bash`` and ``python`` block, in the order shown, in a
fresh copy of the repository, as one shell session (so ``cd``, ``export`` and background jobs
carry over from block to block, as they do for a reader typing them in).

A block is left out only when the comment line just above it says why:
``<!-- readme-test: skip <reason> -->`` (it needs an API key, a real endpoint or a compiler), or
``<!-- readme-test: ci <reason> -->`` for the install commands, which ``.ci/run`` itself runs on
a fresh machine before the tests. Python blocks run with ``python -`` in the same session.

This test takes minutes (the quick start trains routers); ``-m "not readme"`` deselects it.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from masr_graph.benchmarks.data.data_dir import resolve_data_dir

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")
MARKER = re.compile(r"^<!-- readme-test: (?P<kind>skip|ci) (?P<reason>.+?) -->\s*$")
RUN_LANGUAGES = ("bash", "python")


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int
    skip: str = ""


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text with their language, first line and skip reason."""
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if not fence:
            index += 1
            continue
        previous = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        marker = MARKER.match(previous)
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        blocks.append(Block(fence["lang"], "\n".join(lines[index + 1:end]) + "\n", index + 1,
                            f"{marker['kind']}: {marker['reason']}" if marker else ""))
        index = end + 1
    return blocks


def session_script(blocks: list[Block]) -> str:
    """One bash script running the runnable blocks in order, each announced on stderr."""
    parts = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    for number, block in enumerate(blocks):
        if block.lang not in RUN_LANGUAGES or block.skip:
            continue
        parts.append(f"echo '>>> README.md:{block.line} ({block.lang})' >&2")
        if block.lang == "bash":
            parts.append(block.code)
        else:
            delimiter = f"README_PYTHON_{number}"
            assert delimiter not in block.code
            parts.append(f"python - <<'{delimiter}'\n{block.code}{delimiter}")
    return "\n".join(parts) + "\n"


def test_markers_name_a_reason_and_every_block_is_known():
    blocks = readme_blocks((REPO / "README.md").read_text(encoding="utf-8"))
    assert sum(1 for b in blocks if b.lang in RUN_LANGUAGES and not b.skip) >= 8
    for block in blocks:
        assert block.lang, f"README.md:{block.line}: a fence without a language"
    assert "python -m pytest" in (REPO / "README.md").read_text(encoding="utf-8")


def test_parser_sees_markers_languages_and_order():
    text = ("# t\n```bash\necho one\n```\n<!-- readme-test: skip needs a key -->\n\n"
            "```python\nprint(2)\n```\n```yaml\na: 1\n```\n```python\nprint(3)\n```\n")
    blocks = readme_blocks(text)
    assert [(b.lang, b.skip) for b in blocks] == [
        ("bash", ""), ("python", "skip: needs a key"), ("yaml", ""), ("python", "")]
    script = session_script(blocks)
    assert "echo one" in script and "print(3)" in script and "print(2)" not in script
    assert "a: 1" not in script


def _fresh_copy(dest: Path) -> Path:
    """The repository's tracked and new (not ignored) files, as a clone would have them."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=REPO, check=True, capture_output=True).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


@pytest.mark.readme
def test_the_readme_runs_as_written(tmp_path: Path):
    clone = _fresh_copy(tmp_path / "masr_graph")
    script = session_script(readme_blocks((clone / "README.md").read_text(encoding="utf-8")))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           # a clone elsewhere has no ../shared/data beside it: the README's MASR_DATA_DIR route
           "MASR_DATA_DIR": str(resolve_data_dir(None)),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", "-c", script], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=3600)
    assert done.returncode == 0, (
        f"README session failed with status {done.returncode}\n--- stderr (tail)\n"
        f"{done.stderr[-6000:]}\n--- stdout (tail)\n{done.stdout[-4000:]}")
