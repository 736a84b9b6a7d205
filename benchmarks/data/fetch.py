"""Get every data set the project uses from its public source, verified, laid out like
``shared/data`` (``masr data fetch``), and say what a data directory holds (``masr data check``).

The manifest shipped with the package (``manifest.json`` next to this module) pins each source to
a commit and lists every file with the sha256 of the bytes the project was built and tested on:

=============  ====================================  =========================================
data set       public source (repository @ commit)   laid out as
=============  ====================================  =========================================
gsm8k          openai/grade-school-math               ``gsm8k/{train,test}.jsonl``
humaneval      openai/human-eval                      ``humaneval/HumanEval.jsonl.gz``
mbpp           patdfb/TPC-EES (a copy of MBPP)        ``mbpp/mbpp.jsonl``, ``sanitized-mbpp.json``
math           ZubinGou/math-evaluation-harness       ``math/test.jsonl``, ``math500_test.jsonl``
mmlu           lu-wang-dl/chain-of-thought-hub        ``mmlu/{dev,val,test}/<subject>_*.csv``
llmrouter      ulab-uiuc/LLMRouter                    ``outcomes/llmrouter/...``
zeroeval       WildEval/ZeroEval (per-model result    ``outcomes/zeroeval/questions_*.jsonl``,
               files, converted by :func:`convert_   ``replies_*.jsonl.gz``
               zeroeval`)
packaged       shipped inside masr_graph               ``outcomes/zeroeval/models.csv`` (prices
                                                      compiled for cost modelling),
                                                      ``collaboration/debate_transitions.json``
=============  ====================================  =========================================

Files are fetched as ``{base_url}/{repository}/{commit}/{path}`` (``base_url`` defaults to
``https://raw.githubusercontent.com``; a mirror or a test server can stand in). Every download goes
to a staging folder inside the destination; a source's files move into place only when all of
them arrived and their sha256 match, so an interrupted or failed fetch leaves the previous
contents and no half-written file. ZeroEval's raw result files have no recorded checksum; what is
verified is the content of the converted files (the decompressed JSONL for the ``.gz``), which
must equal the project's own copy byte for byte.

The pinned commits were read from an index of public repositories on the machine this was
written on, which had no internet access: the download path itself is tested against a loopback
server serving files laid out like the sources (``tests/test_data_fetch.py``).
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from masr_graph.errors import ConfigError, DataError

from .data_dir import PathLike

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT_VERSION = 1
_CHUNK = 1 << 16


def load_manifest() -> dict[str, Any]:
    """The packaged manifest (sources, pinned commits, files and checksums).

    Raises:
        DataError: it is missing or of another format version (a broken installation).
    """
    text = resources.files("masr_graph.benchmarks.data").joinpath(MANIFEST_FILE).read_text("utf-8")
    manifest = json.loads(text)
    if manifest.get("format_version") != MANIFEST_FORMAT_VERSION:
        raise DataError(f"the packaged {MANIFEST_FILE} has format_version "
                        f"{manifest.get('format_version')!r}, this version reads "
                        f"{MANIFEST_FORMAT_VERSION}; reinstall masr_graph")
    return manifest


def source_names() -> list[str]:
    """Names of the data sets in the manifest, in manifest order."""
    return [source["name"] for source in load_manifest()["sources"]]


def _selected(only: Optional[Sequence[str]]) -> list[dict[str, Any]]:
    sources = load_manifest()["sources"]
    if not only:
        return sources
    known = [s["name"] for s in sources]
    unknown = [name for name in only if name not in known]
    if unknown:
        raise ConfigError(f"unknown data set(s) {unknown}; choose from {known}")
    return [s for s in sources if s["name"] in only]


@dataclass(frozen=True)
class ExpectedFile:
    """A file a data directory should hold after a fetch."""

    source: str
    dest: str
    sha256: str
    compressed_content: bool = False
    """``sha256`` is of the decompressed content (converted ``.gz`` files)."""


def expected_files(only: Optional[Sequence[str]] = None) -> list[ExpectedFile]:
    """Every file :func:`fetch_data` lays out, with the checksum it must have."""
    files = []
    for source in _selected(only):
        for entry in source.get("files", []):
            files.append(ExpectedFile(source["name"], entry["dest"], entry["sha256"]))
        for entry in source.get("packaged", []):
            files.append(ExpectedFile(source["name"], entry["dest"], entry["sha256"]))
        for conversion in source.get("convert", {}).values():
            files.append(ExpectedFile(source["name"], conversion["questions"]["dest"],
                                      conversion["questions"]["sha256"]))
            files.append(ExpectedFile(source["name"], conversion["replies"]["dest"],
                                      conversion["replies"]["content_sha256"], True))
    return files


def _file_digest(path: Path, *, decompress: bool = False) -> str:
    digest = hashlib.sha256()
    opener = gzip.open if decompress else open
    with opener(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class SourceStatus:
    """What a data directory holds of one data set."""

    name: str
    valid: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.mismatched

    def line(self) -> str:
        if self.ok:
            return f"{self.name}: ok ({len(self.valid)} files)"
        problems = []
        if self.missing:
            problems.append(f"{len(self.missing)} missing (e.g. {self.missing[0]})")
        if self.mismatched:
            problems.append(f"{len(self.mismatched)} with a different sha256 (e.g. "
                            f"{self.mismatched[0]})")
        return f"{self.name}: " + ", ".join(problems)


def check_data(data_dir: PathLike, only: Optional[Sequence[str]] = None) -> list[SourceStatus]:
    """Check every expected file of ``data_dir`` against the manifest's checksums.

    Raises:
        ConfigError: an unknown data set in ``only``.
    """
    root = Path(data_dir)
    statuses: dict[str, SourceStatus] = {}
    for expected in expected_files(only):
        status = statuses.setdefault(expected.source, SourceStatus(expected.source))
        path = root / expected.dest
        if not path.is_file():
            status.missing.append(expected.dest)
        elif _file_digest(path, decompress=expected.compressed_content) != expected.sha256:
            status.mismatched.append(expected.dest)
        else:
            status.valid.append(expected.dest)
    return list(statuses.values())


def fetch_data(
    dest: PathLike,
    *,
    only: Optional[Sequence[str]] = None,
    base_url: Optional[str] = None,
    timeout_s: float = 60.0,
    progress: Optional[Any] = None,
) -> list[Path]:
    """Download, verify and lay out the data sets into ``dest`` (see the module docstring).

    Args:
        dest: the data directory to fill (created if needed); point ``MASR_DATA_DIR`` at it.
        only: data set names (default: all of :func:`source_names`).
        base_url: where ``{repository}/{commit}/{path}`` are served (default: the manifest's,
            ``https://raw.githubusercontent.com``).
        timeout_s: per-request timeout.
        progress: called with one line per data set as it is done (e.g. ``print``).

    Returns:
        The paths written.

    Raises:
        ConfigError: an unknown data set name.
        DataError: a download failed or a file's sha256 differs from the manifest's (the message
            names the URL or the file); the data set's files are then left as they were.
    """
    manifest = load_manifest()
    base = (base_url or manifest["default_base_url"]).rstrip("/")
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for source in _selected(only):
        with _staging(root) as staging:
            staged = _stage_source(source, staging, base, manifest["url_template"], timeout_s)
            for relative, path in staged.items():
                target = root / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
                written.append(target)
        if progress is not None:
            progress(f"{source['name']}: {len(staged)} files verified")
    return written


@contextlib.contextmanager
def _staging(root: Path) -> Iterator[Path]:
    # Inside the destination, so the final moves are renames on one filesystem.
    staging = Path(tempfile.mkdtemp(prefix=".masr-fetch-", dir=root))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _stage_source(source: Mapping[str, Any], staging: Path, base: str, template: str,
                  timeout_s: float) -> dict[str, Path]:
    """Every file of one source downloaded (or copied, or converted) into ``staging`` and
    verified; ``{dest: staged path}``."""
    staged: dict[str, Path] = {}

    def url(path: str) -> str:
        return template.format(base_url=base, repository=source["repository"],
                               commit=source["commit"], path=path)

    for entry in source.get("files", []):
        path = staging / entry["dest"]
        _download(url(entry["path"]), path, timeout_s)
        _verify(path, entry["sha256"], where=url(entry["path"]))
        staged[entry["dest"]] = path
    for entry in source.get("packaged", []):
        path = staging / entry["dest"]
        path.parent.mkdir(parents=True, exist_ok=True)
        data = resources.files(entry["package"]).joinpath(entry["resource"]).read_bytes()
        path.write_bytes(data)
        _verify(path, entry["sha256"], where=f"{entry['package']}/{entry['resource']}")
        staged[entry["dest"]] = path
    for stem, conversion in source.get("convert", {}).items():
        raw = staging / "raw" / stem
        model_files = {}
        for model in conversion["models"]:
            remote = f"{conversion['directory']}/{model}.json"
            model_files[model] = raw / f"{model}.json"
            _download(url(remote), model_files[model], timeout_s)
        questions, replies = convert_zeroeval(stem, model_files)
        for kind, payload in (("questions", questions), ("replies", replies)):
            entry = conversion[kind]
            path = staging / entry["dest"]
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "replies":
                _verify_bytes(payload, entry["content_sha256"], where=entry["dest"])
                with open(path, "wb") as handle, gzip.GzipFile(
                        fileobj=handle, mode="wb", mtime=0, filename="") as compressed:
                    compressed.write(payload)
            else:
                _verify_bytes(payload, entry["sha256"], where=entry["dest"])
                path.write_bytes(payload)
            staged[entry["dest"]] = path
    return staged


def _download(url: str, path: Path, timeout_s: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(path, "wb") as out:
            shutil.copyfileobj(response, out, _CHUNK)
    except urllib.error.HTTPError as exc:
        raise DataError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(f"download of {url} failed: {reason}") from None


def _verify(path: Path, expected: str, *, where: str) -> None:
    actual = _file_digest(path)
    if actual != expected:
        raise DataError(f"{where}: sha256 {actual} differs from the manifest's {expected}; "
                        "nothing of this data set was written")


def _verify_bytes(payload: bytes, expected: str, *, where: str) -> None:
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise DataError(f"converted {where}: sha256 {actual} differs from the manifest's "
                        f"{expected}; nothing of this data set was written")


def convert_zeroeval(stem: str, model_files: Mapping[str, Path]) -> tuple[bytes, bytes]:
    """ZeroEval's per-model result files of one task turned into the shared layout.

    Each result file is a JSON list of records with ``id``, the question (``question`` for
    GSM8K, ``problem`` for MATH), the gold ``answer`` (GSM8K writes it ``"# 18"``) and ``output``
    (a one-element list: the reply). Models are written in the order of their file names (as the
    shared copy is), questions in the first file's order.

    Returns:
        ``(questions JSONL, replies JSONL)`` as bytes (the replies are compressed by the caller).

    Raises:
        DataError: a file is not such a list, or two files disagree on a question or its gold.
    """
    questions: dict[str, dict[str, str]] = {}
    lines = io.StringIO()
    for model in sorted(model_files, key=lambda name: f"{name}.json"):
        path = model_files[model]
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"ZeroEval result file {path.name} is not JSON: {exc}") from None
        if not isinstance(records, list):
            raise DataError(f"ZeroEval result file {path.name} is not a list of records")
        for index, record in enumerate(records):
            try:
                question_id = str(record["id"])
                text = record["question"] if "question" in record else record["problem"]
                gold = str(record["answer"]).removeprefix("#").strip()
                output = record["output"][0]
            except (KeyError, IndexError, TypeError) as exc:
                raise DataError(f"ZeroEval result file {path.name} record {index} lacks {exc}"
                                ) from None
            row = {"id": question_id, "question": text, "gold": gold}
            if questions.setdefault(question_id, row) != row:
                raise DataError(f"ZeroEval result files disagree on question {question_id!r} "
                                f"({path.name})")
            lines.write(json.dumps({"model": model, "id": question_id, "output": output},
                                   ensure_ascii=False) + "\n")
    question_lines = "".join(json.dumps(row, ensure_ascii=False) + "\n"
                             for row in questions.values())
    return question_lines.encode("utf-8"), lines.getvalue().encode("utf-8")
