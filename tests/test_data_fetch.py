"""`masr data fetch`: downloads from a real HTTP server on 127.0.0.1 serving files laid out like
the public sources (``{repository}/{commit}/{path}``), sha256 verification, nothing half-written,
the ZeroEval conversion, and the packaged manifest against the project's own data copy."""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
from masr_graph.benchmarks.data import fetch
from masr_graph.benchmarks.data.data_dir import resolve_data_dir

from masr_graph.errors import ConfigError, DataError


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A static HTTP server on 127.0.0.1 over ``tmp_path / "remote"``; yields (base URL, root)."""
    root = tmp_path / "remote"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def _zeroeval_records(questions: list[dict[str, str]], outputs: dict[str, str],
                      gsm: bool) -> list[dict[str, Any]]:
    """Result-file records shaped like ZeroEval's (the fields the converter reads, and some it
    ignores)."""
    records = []
    for row in questions:
        record = {"session_id": row["id"], "id": row["id"], "output": [outputs[row["id"]]],
                  "answer": f"# {row['gold']}" if gsm else row["gold"], "generator": "x"}
        record["question" if gsm else "problem"] = row["question"]
        records.append(record)
    return records


@pytest.fixture
def small_manifest(monkeypatch, file_server) -> dict[str, Any]:
    """A manifest of two small sources served by ``file_server``: a plain one and a
    ZeroEval-style conversion (two models, whose file order is not their sorted order)."""
    base, root = file_server
    plain = {"a.jsonl": b'{"question": "q", "answer": "#### 1"}\n', "LICENSE": b"MIT\n"}
    for path, data in plain.items():
        target = root / "org/plain/abc123" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    questions = [
        {"id": "gsm8k-main-test-#0", "question": "Janet’s ducks lay 16 eggs?", "gold": "18"},
        {"id": "gsm8k-main-test-#1", "question": "A robe?", "gold": "3"},
    ]
    models = {"command-r": {"gsm8k-main-test-#0": "18", "gsm8k-main-test-#1": '{"answer": "3"}'},
              "command-r-plus": {"gsm8k-main-test-#0": "17", "gsm8k-main-test-#1": "3"}}
    for model, outputs in models.items():
        target = root / "org/zero/def456/result_dirs/gsm" / f"{model}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(_zeroeval_records(questions, outputs, gsm=True)))
    question_bytes = "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions).encode()
    # "command-r-plus.json" sorts before "command-r.json": the shared layout's order.
    reply_bytes = "".join(
        json.dumps({"model": m, "id": q["id"], "output": models[m][q["id"]]}, ensure_ascii=False)
        + "\n" for m in ("command-r-plus", "command-r") for q in questions).encode()
    manifest = {
        "format_version": 1,
        "url_template": "{base_url}/{repository}/{commit}/{path}",
        "default_base_url": "https://example.invalid",
        "sources": [
            {"name": "plain", "repository": "org/plain", "commit": "abc123",
             "files": [{"path": p, "dest": f"plain/{p}", "sha256": _sha(d)}
                       for p, d in plain.items()]},
            {"name": "zero", "repository": "org/zero", "commit": "def456", "files": [],
             "convert": {"gsm8k": {
                 "directory": "result_dirs/gsm", "models": ["command-r", "command-r-plus"],
                 "questions": {"dest": "outcomes/z/questions_gsm8k.jsonl",
                               "sha256": _sha(question_bytes)},
                 "replies": {"dest": "outcomes/z/replies_gsm8k.jsonl.gz",
                             "content_sha256": _sha(reply_bytes)}}}},
        ],
    }
    monkeypatch.setattr(fetch, "load_manifest", lambda: manifest)
    return manifest


def test_fetch_downloads_verifies_converts_and_lays_out(small_manifest, file_server, tmp_path):
    base, _ = file_server
    dest = tmp_path / "data"
    lines: list[str] = []
    written = fetch.fetch_data(dest, base_url=base, progress=lines.append)
    assert sorted(p.relative_to(dest).as_posix() for p in written) == [
        "outcomes/z/questions_gsm8k.jsonl", "outcomes/z/replies_gsm8k.jsonl.gz",
        "plain/LICENSE", "plain/a.jsonl"]
    assert (dest / "plain/a.jsonl").read_bytes() == b'{"question": "q", "answer": "#### 1"}\n'
    compressed = (dest / "outcomes/z/replies_gsm8k.jsonl.gz").read_bytes()
    replies = [json.loads(line) for line in gzip.decompress(compressed).splitlines()]
    assert [r["model"] for r in replies] == ["command-r-plus"] * 2 + ["command-r"] * 2
    assert replies[1]["output"] == "3"
    assert json.loads((dest / "outcomes/z/questions_gsm8k.jsonl").read_text().splitlines()[0]) == {
        "id": "gsm8k-main-test-#0", "question": "Janet’s ducks lay 16 eggs?", "gold": "18"}
    assert [s.ok for s in fetch.check_data(dest)] == [True, True]
    assert lines == ["plain: 2 files verified", "zero: 2 files verified"]
    assert not list(dest.glob(".masr-fetch-*"))  # staging is gone


def test_a_checksum_mismatch_is_an_error_and_writes_nothing_of_that_set(
        small_manifest, file_server, tmp_path):
    base, root = file_server
    (root / "org/plain/abc123/LICENSE").write_bytes(b"tampered\n")
    dest = tmp_path / "data"
    with pytest.raises(DataError, match=r"LICENSE: sha256 [0-9a-f]{64} differs from the manifest"):
        fetch.fetch_data(dest, base_url=base)
    assert not (dest / "plain").exists()  # a.jsonl arrived and verified, but was not moved in
    assert not list(dest.glob(".masr-fetch-*"))
    status = {s.name: s for s in fetch.check_data(dest)}
    assert status["plain"].missing == ["plain/a.jsonl", "plain/LICENSE"]


def test_a_missing_remote_file_names_the_url(small_manifest, file_server, tmp_path):
    base, root = file_server
    (root / "org/zero/def456/result_dirs/gsm/command-r.json").unlink()
    with pytest.raises(DataError, match=r"result_dirs/gsm/command-r\.json failed: HTTP 404"):
        fetch.fetch_data(tmp_path / "data", only=["zero"], base_url=base)
    assert not (tmp_path / "data" / "outcomes").exists()


def test_a_converted_file_that_differs_is_refused(small_manifest, file_server, tmp_path):
    base, root = file_server
    path = root / "org/zero/def456/result_dirs/gsm/command-r.json"
    records = json.loads(path.read_text())
    records[0]["output"] = ["19"]
    path.write_text(json.dumps(records))
    with pytest.raises(DataError, match="converted outcomes/z/replies_gsm8k.jsonl.gz: sha256"):
        fetch.fetch_data(tmp_path / "data", only=["zero"], base_url=base)


def test_an_existing_good_copy_survives_a_failed_refetch(small_manifest, file_server, tmp_path):
    base, root = file_server
    dest = tmp_path / "data"
    fetch.fetch_data(dest, only=["plain"], base_url=base)
    (root / "org/plain/abc123/a.jsonl").write_bytes(b"changed upstream\n")
    with pytest.raises(DataError):
        fetch.fetch_data(dest, only=["plain"], base_url=base)
    assert fetch.check_data(dest, only=["plain"])[0].ok


def test_unknown_data_set_names_the_known_ones(small_manifest, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown data set\(s\) \['gsm9k'\]; choose from "
                                          r"\['plain', 'zero'\]"):
        fetch.fetch_data(tmp_path, only=["gsm9k"])


def test_the_packaged_manifest_describes_the_projects_data_copy():
    """Every file of every data set, by its sha256 (the converted ZeroEval replies by content),
    is exactly the data directory's: what a fetch must reproduce."""
    try:
        data_dir = resolve_data_dir()
    except DataError as exc:
        pytest.skip(f"no data directory: {exc}")
    statuses = fetch.check_data(data_dir)
    assert [s.name for s in statuses] == fetch.source_names()
    assert {s.name: s.line() for s in statuses if not s.ok} == {}
    assert sum(len(s.valid) for s in statuses) == len(fetch.expected_files())


def test_zeroeval_conversion_reproduces_the_shared_layout_exactly(tmp_path):
    """Result files rebuilt from the data copy's first 40 questions of three models convert
    back to the very same bytes (line format, escaping, model order)."""
    try:
        folder = resolve_data_dir() / "outcomes/zeroeval"
    except DataError as exc:
        pytest.skip(f"no data directory: {exc}")
    questions = [json.loads(line) for line in
                 (folder / "questions_math_l5.jsonl").read_text(encoding="utf-8").splitlines()[:40]]
    wanted = {q["id"] for q in questions}
    models = ["gpt-4o-mini-2024-07-18", "Qwen2-7B-Instruct", "gemma-2-9b-it"]
    replies: dict[str, dict[str, str]] = {m: {} for m in models}
    lines = []
    with gzip.open(folder / "replies_math_l5.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row["model"] in replies and row["id"] in wanted:
                replies[row["model"]][row["id"]] = row["output"]
                lines.append(line)
    files = {}
    for model in models:
        files[model] = tmp_path / f"{model}.json"
        files[model].write_text(json.dumps(_zeroeval_records(questions, replies[model], gsm=False)))
    question_bytes, reply_bytes = fetch.convert_zeroeval("math_l5", files)
    assert question_bytes == "".join(json.dumps(q, ensure_ascii=False) + "\n"
                                     for q in questions).encode()
    assert reply_bytes == "".join(lines).encode()
