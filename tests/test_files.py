"""Atomic replacement of the files runs write (masr_graph.files): a crash inside the write keeps
the old file and leaves no temporary; writers of one path side by side (two invocations into one
--out, two seeds' encoder caches) all finish and leave one writer's whole file."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from masr_graph.files import replaced_atomically, write_atomically


def test_a_write_that_raises_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path):
    target = tmp_path / "model.pt"
    write_atomically(target, b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with replaced_atomically(target) as temporary:
            temporary.write_bytes(b"half of the n")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_torch_save_through_a_temporary_and_text_is_utf8(tmp_path: Path):
    target = tmp_path / "deep" / "cache.pt"  # missing folders are made
    with replaced_atomically(target) as temporary:
        torch.save({"weights": torch.arange(3)}, temporary)
    assert torch.load(target)["weights"].tolist() == [0, 1, 2]
    write_atomically(tmp_path / "results.md", "λ = 100 · $")
    assert (tmp_path / "results.md").read_bytes() == "λ = 100 · $".encode("utf-8")


def test_writers_of_one_file_side_by_side_do_not_rename_each_others_temporary(tmp_path: Path):
    """Two processes writing one path at once each finish, and the file is always one writer's
    whole text (with a temporary name shared by both, one renames the other's away and fails)."""
    target = tmp_path / "results.md"
    start = tmp_path.parent / f"{tmp_path.name}-start"
    # each writer, once imported, waits for the start file, so that their writes overlap
    writer = ("import sys, time; from pathlib import Path; "
              "from masr_graph.files import write_atomically\n"
              "Path(sys.argv[3] + '-' + sys.argv[2]).touch()\n"
              "while not Path(sys.argv[3]).exists(): time.sleep(0.01)\n"
              "for i in range(1000): write_atomically(Path(sys.argv[1]), sys.argv[2] * 5000)")
    writers = [subprocess.Popen([sys.executable, "-c", writer, str(target), tag, str(start)],
                                stderr=subprocess.PIPE, text=True) for tag in "ab"]
    deadline = time.monotonic() + 120
    while not all(Path(f"{start}-{tag}").exists() for tag in "ab"):  # both imported
        assert time.monotonic() < deadline and all(w.poll() is None for w in writers)
        time.sleep(0.05)
    start.touch()
    errors = [w.communicate(timeout=120)[1] for w in writers]
    assert [w.returncode for w in writers] == [0, 0], errors
    assert target.read_text() in ("a" * 5000, "b" * 5000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.md"]
