"""A program must not be able to fake a HumanEval/MBPP pass: every trick here scores as a failure.

Training rewards come from these verdicts, so each test is a wrong solution plus a trick that made
the old evaluator (pass = exit status 0) score it correct: exiting early, exit hooks, printed
output, always-equal results, patched builtins and modules, redefined helpers, signal handlers,
threads, forks, trace functions, reading the tests from disk. All go through the public
``evaluate``/``aevaluate`` path (reply -> extraction -> harness -> sandbox). The last tests check
that the defences cost no correct solution its pass, and the verdict rule itself.
"""

from __future__ import annotations

import pytest
from masr_graph.benchmarks import Example, aevaluate, evaluate
from masr_graph.benchmarks.tasks import code_eval

WRONG_ADD = "def add(a, b):\n    return a - b\n"


def reply(code: str) -> str:
    return f"Here you go.\n\n```python\n{code.rstrip()}\n```\n"


def mbpp_task(*tests: str) -> Example:
    """An MBPP-style task: asserts as the tests, ``add`` as the entry point."""
    return Example(
        id="mbpp/fake",
        task="mbpp",
        query="Write add(a, b).",
        answer="",
        meta={"entry_point": "add", "test_list": list(tests), "test_setup_code": ""},
    )


def humaneval_task() -> Example:
    """A HumanEval-style task: a prompt, and a ``check(candidate)`` with several asserts."""
    return Example(
        id="HumanEval/fake",
        task="humaneval",
        query="",
        answer="",
        meta={
            "prompt": 'def add(a, b):\n    """Return a + b."""\n',
            "entry_point": "add",
            "canonical_solution": "    return a + b\n",
            "test": (
                "def check(candidate):\n"
                "    assert candidate(2, 3) == 5\n"
                "    assert candidate(1, 1) == 2\n"
                "    return None\n"
            ),
        },
    )


ADD_TASK = mbpp_task("assert add(2, 3) == 5", "assert add(1, 1) == 2")


async def failing(task: Example, code: str, detail: str) -> str:
    score = await aevaluate(task, reply(code))
    assert not score.correct, f"faked a pass: {score.detail}"
    assert detail in score.detail, score.detail
    return score.detail


# --- exiting before or instead of the tests ---------------------------------------------------


@pytest.mark.parametrize(
    "trick, detail",
    [
        ("import sys\nsys.exit(0)\n", "exited (SystemExit) before the tests ran"),
        ("raise SystemExit(0)\n", "exited (SystemExit) before the tests ran"),
        ("exit()\n", "exited (SystemExit) before the tests ran"),
        ("import os\nos._exit(0)\n", "no completion token"),
    ],
    ids=["sys.exit", "raise SystemExit", "exit()", "os._exit"],
)
async def test_exiting_at_top_level_before_the_tests_fails(trick, detail):
    await failing(ADD_TASK, WRONG_ADD + trick, detail)


async def test_system_exit_inside_the_entry_point_fails():
    code = "def add(a, b):\n    raise SystemExit(0)\n"
    await failing(ADD_TASK, code, "SystemExit raised during the tests (in test 1 of 2")


async def test_atexit_hook_that_exits_0_fails():
    await failing(ADD_TASK, "import atexit, os\natexit.register(os._exit, 0)\n" + WRONG_ADD,
                  "AssertionError (in test 1 of 2: assert add(2, 3) == 5)")  # fmt: skip


async def test_excepthook_that_exits_0_fails():
    code = "import os, sys\nsys.excepthook = lambda *args: os._exit(0)\n" + WRONG_ADD
    await failing(ADD_TASK, code, "AssertionError")


async def test_finaliser_that_exits_0_at_shutdown_fails():
    code = "import os\nclass Bye:\n    def __del__(self):\n        os._exit(0)\nkeep = Bye()\n"
    await failing(ADD_TASK, code + WRONG_ADD, "AssertionError")


async def test_exception_whose_str_exits_0_fails():
    code = (
        "import os\nclass Boom(Exception):\n    def __str__(self):\n        os._exit(0)\n"
        "def add(a, b):\n    raise Boom()\n"
    )
    await failing(ADD_TASK, code, "no completion token")


async def test_printing_the_success_message_and_exiting_fails():
    code = (
        "import os\nprint('All tests passed')\nprint('0' * 64)\n"
        "print('all tests passed', flush=True)\nos._exit(0)\n"
    )
    await failing(ADD_TASK, WRONG_ADD + code, "no completion token")


async def test_stderr_replaced_by_a_writer_that_exits_0_fails():
    code = (
        "import os, sys\nclass Quiet:\n    def write(self, text):\n        os._exit(0)\n"
        "    def flush(self):\n        pass\nsys.stderr = Quiet()\n"
    )
    await failing(ADD_TASK, code + WRONG_ADD, "AssertionError")


@pytest.mark.parametrize(
    "forged, detail",
    [
        ("b'0' * 64", "something other than this run's completion token"),
        ("b'all tests passed'", "something other than this run's completion token"),
        ("b''", "no completion token"),
    ],
    ids=["guessed-token", "garbage", "nothing"],
)
async def test_writing_to_the_report_channel_and_exiting_fails(forged, detail):
    code = f"import os\ntry:\n    os.write(3, {forged})\nexcept OSError:\n    pass\nos._exit(0)\n"
    await failing(ADD_TASK, WRONG_ADD + code, detail)


async def test_garbage_on_the_report_channel_fails_even_a_correct_solution():
    code = "import os\nos.write(3, b'x')\ndef add(a, b):\n    return a + b\n"
    await failing(ADD_TASK, code, "something other than this run's completion token")


# --- asynchronous exits: threads, signals, forks, killing -------------------------------------


async def test_thread_that_exits_0_during_the_tests_fails():
    code = (
        "import os, threading, time\n"
        "threading.Thread(target=lambda: (time.sleep(0.5), os._exit(0)), daemon=True).start()\n"
        "def add(a, b):\n    time.sleep(5)\n    return a - b\n"
    )
    await failing(ADD_TASK, code, "no completion token")


async def test_alarm_handler_that_exits_0_fails():
    code = (
        "import os, signal, time\n"
        "signal.signal(signal.SIGALRM, lambda *args: os._exit(0))\nsignal.alarm(1)\n"
        "def add(a, b):\n    time.sleep(5)\n    return a - b\n"
    )
    await failing(ADD_TASK, code, "no completion token")


async def test_cpu_limit_handler_that_exits_0_fails(monkeypatch):
    monkeypatch.setattr(code_eval, "CPU_LIMIT_S", 1)
    code = (
        "import os, signal\nsignal.signal(signal.SIGXCPU, lambda *args: os._exit(0))\n"
        "def add(a, b):\n    while True:\n        pass\n"
    )
    await failing(ADD_TASK, code, "no completion token")


async def test_fork_whose_original_exits_0_at_once_fails():
    await failing(ADD_TASK, "import os\nif os.fork():\n    os._exit(0)\n" + WRONG_ADD,
                  "no completion token")  # fmt: skip


async def test_killing_the_parent_and_exiting_0_fails():
    code = (
        "import os, signal\nfor pid in (os.getppid(), 1):\n    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\nos._exit(0)\n"
    )
    await failing(ADD_TASK, WRONG_ADD + code, "no completion token")


# --- results that compare equal to anything ---------------------------------------------------

ALWAYS_EQUAL = (
    "class Anything:\n"
    "    def __eq__(self, other):\n        return True\n"
    "    def __ne__(self, other):\n        return False\n"
    "    def __bool__(self):\n        return True\n"
    "    def __hash__(self):\n        return 0\n"
)


@pytest.mark.parametrize(
    "test, returned, detail",
    [
        ("assert add(2, 3) == 5", "Anything()", "returned a __main__.Anything object"),
        ("assert add(2, 3) == [5]", "[Anything()]", "returned a __main__.Anything object"),
        ("assert add(2, 3) == (1, {'k': 5})", "(1, {'k': Anything()})",
         "returned a __main__.Anything object"),
        ("assert add(2, 3) == 5", "Sneaky(a - b)", "returned a __main__.Sneaky object"),
        ("assert add(2, 3) == 5", "Fake", "returned a __main__.Meta object"),
    ],
    ids=["object", "in-a-list", "nested", "int-subclass", "class-with-a-metaclass"],
)  # fmt: skip
async def test_results_that_equal_anything_fail(test, returned, detail):
    code = (
        ALWAYS_EQUAL
        + "class Sneaky(int):\n    __eq__ = Anything.__eq__\n    __ne__ = Anything.__ne__\n"
        + "    __hash__ = int.__hash__\n"
        + "class Meta(type):\n    __eq__ = Anything.__eq__\n    __hash__ = type.__hash__\n"
        + "class Fake(metaclass=Meta):\n    pass\n"
        + f"def add(a, b):\n    return {returned}\n"
    )
    detail = await failing(mbpp_task(test), code, detail)
    assert "only exact builtin value types" in detail


@pytest.mark.parametrize(
    "test",
    ["assert not (add(2, 3) != 5)", "assert add(2, 3)", "assert [add(2, 3)] == [5]"],
    ids=["__ne__", "__bool__", "inside-the-test's-list"],
)
async def test_ne_and_bool_tricks_fail(test):
    await failing(mbpp_task(test), ALWAYS_EQUAL + "def add(a, b):\n    return Anything()\n",
                  "returned a __main__.Anything object")  # fmt: skip


async def test_rejection_swallowed_by_a_broad_except_in_the_tests_still_fails():
    task = mbpp_task("try:\n    assert add(2, 3) == 5\nexcept BaseException:\n    pass")
    code = ALWAYS_EQUAL + "def add(a, b):\n    return Anything()\n"
    await failing(task, code, "the tests caught the rejection")


async def test_counter_whose_comparison_was_patched_fails():
    code = (
        "import collections\ncollections.Counter.__eq__ = lambda self, other: True\n"
        "def add(a, b):\n    return collections.Counter()\n"
    )
    await failing(ADD_TASK, code, "returned a Counter after the program changed Counter")


# --- patched builtins and modules, redefined helpers -----------------------------------------


@pytest.mark.parametrize(
    "test, code",
    [
        ("assert abs(add(0.1, 0.2) - 0.3) < 1e-9",
         "import builtins\nbuiltins.abs = lambda x: 0\n" + WRONG_ADD),
        ("assert len(add([1], [2])) == 2",
         "import builtins\nbuiltins.len = lambda x: 2\ndef add(a, b):\n    return a\n"),
        ("assert not isinstance(add(1, 2), str)",
         "import builtins\nbuiltins.isinstance = lambda *a: False\n"
         "def add(a, b):\n    return 'wrong'\n"),
        ("if add(2, 3) != 5:\n    raise AssertionError('wrong sum')",
         "import builtins\nbuiltins.AssertionError = lambda *a: SystemExit(0)\n" + WRONG_ADD),
        ("assert sorted(add([3], [1])) == [1, 3]",
         "def sorted(x):\n    return [1, 3]\n\ndef add(a, b):\n    return a\n"),
        ("assert add([3], [1]) == sorted([3, 1])",
         "import builtins\ndef add(a, b):\n    builtins.sorted = lambda x: [3]\n    return a\n"),
        ("assert add([3], [1]) == sorted([3, 1])",
         "import builtins, threading\ndef keep():\n    while True:\n"
         "        builtins.sorted = lambda x: [3]\n"
         "threading.Thread(target=keep, daemon=True).start()\n"
         "def add(a, b):\n    return a\n"),
        ("assert sorted(add([3], [1])) == [1, 3]",
         "import gc\nfor o in gc.get_objects():\n"
         "    if type(o) is dict and 'sorted' in o and 'len' in o:\n"
         "        o['sorted'] = lambda x: [1, 3]\n"
         "def add(a, b):\n    return a\n"),
    ],
    ids=["abs", "len", "isinstance", "AssertionError", "shadowed-in-the-namespace",
         "patched-during-the-call", "patched-by-a-thread", "found-through-gc"],
)  # fmt: skip
async def test_patched_builtins_do_not_reach_the_tests(test, code):
    await failing(mbpp_task(test), code, "tests failed")


async def test_patched_print_does_not_reach_the_tests():
    task = mbpp_task("print('checking add')", "assert add(2, 3) == 5")
    code = "import builtins, os\nbuiltins.print = lambda *a, **k: os._exit(0)\n" + WRONG_ADD
    await failing(task, code, "AssertionError (in test 2 of 2")


@pytest.mark.parametrize(
    "test, code",
    [
        ("import math\nassert math.isclose(add(0.1, 0.2), 0.4)",
         "import math\nmath.isclose = lambda *a, **k: True\n" + WRONG_ADD),
        ("from math import isclose\nassert isclose(add(0.1, 0.2), 0.4)",
         "import math\nmath.isclose = lambda *a, **k: True\n" + WRONG_ADD),
        ("import math\nassert math.isclose(add(0.1, 0.2), 0.4)",
         "import sys, types\nfake = types.ModuleType('math')\n"
         "fake.isclose = lambda *a, **k: True\nsys.modules['math'] = fake\n" + WRONG_ADD),
    ],
    ids=["attribute", "from-import", "sys.modules"],
)  # fmt: skip
async def test_patched_modules_do_not_reach_the_tests(test, code):
    await failing(mbpp_task(test), code, "AssertionError")


async def test_module_patched_during_a_call_does_not_reach_later_tests():
    task = mbpp_task(
        "assert add(1, 1) == 0", "import math\nassert math.isclose(add(0.1, 0.2), 0.4)"
    )
    code = (
        "import math\ndef add(a, b):\n    math.isclose = lambda *a, **k: True\n    return a - b\n"
    )
    await failing(task, code, "AssertionError (in test 2 of 2")


async def test_replacing_the_entry_point_through_its_globals_fails():
    code = (
        ALWAYS_EQUAL
        + "def add(a, b):\n    globals()['add'] = lambda a, b: Anything()\n    return a + b\n"
    )
    await failing(mbpp_task("assert add(2, 3) == 5", "assert add(1, 1) == 7"), code,
                  "AssertionError (in test 2 of 2")  # fmt: skip


@pytest.fixture(scope="module")
def humaneval_by_id():
    from masr_graph.benchmarks import load_benchmark, resolve_data_dir

    from masr_graph.errors import DataError

    try:
        resolve_data_dir()
    except DataError as exc:
        pytest.skip(f"benchmark data directory not available: {exc}")
    return {example.id: example for example in load_benchmark("humaneval")}


@pytest.mark.parametrize(
    "task_id, code",
    [
        # The tests decode what the prompt's encode_cyclic/encode_shift made.
        ("HumanEval/38",
         "def encode_cyclic(s):\n    return s\n\ndef decode_cyclic(s):\n    return s\n"),
        ("HumanEval/50",
         "def encode_shift(s):\n    return s\n\ndef decode_shift(s):\n    return s\n"),
        # The tests check find_zero's root with the prompt's poly.
        ("HumanEval/32",
         "def poly(xs, x):\n    return 0.0\n\ndef find_zero(xs):\n    return 0.0\n"),
    ],
    ids=["encode_cyclic", "encode_shift", "poly"],
)  # fmt: skip
async def test_redefining_the_prompts_helpers_does_not_reach_the_tests(
    humaneval_by_id, task_id, code
):
    await failing(humaneval_by_id[task_id], code, "AssertionError")


async def test_looking_up_the_reference_solution_in_the_benchmark_data_fails(humaneval_by_id):
    from masr_graph.benchmarks import resolve_data_dir

    data = resolve_data_dir() / "humaneval" / "HumanEval.jsonl.gz"
    code = (
        "def has_close_elements(numbers, threshold):\n    return False\n\n"
        "import gzip, json\n"
        "try:\n"
        f"    rows = [json.loads(line) for line in gzip.open({str(data)!r}, 'rt')]\n"
        "except OSError:\n"
        "    rows = []\n"
        "for row in rows:\n"
        "    if row['entry_point'] == 'has_close_elements':\n"
        "        exec(row['prompt'] + row['canonical_solution'])\n"
    )
    await failing(humaneval_by_id["HumanEval/0"], code, "AssertionError")


async def test_trace_function_that_jumps_over_the_asserts_fails():
    tracer = (
        "import sys\n"
        "def tracer(frame, event, arg):\n"
        "    if frame.f_code.co_name != 'check':\n        return None\n"
        "    last = max(line for _, _, line in frame.f_code.co_lines() if line is not None)\n"
        "    def local(frame, event, arg):\n"
        "        if event == 'line' and frame.f_lineno < last:\n"
        "            frame.f_lineno = last\n"
        "        return local\n"
        "    return local\n"
        "sys.settrace(tracer)\n"
    )
    await failing(humaneval_task(), tracer + WRONG_ADD, "AssertionError (in check(add))")


async def test_profile_function_that_exits_0_when_the_tests_start_fails():
    code = (
        "import os, sys\n"
        "sys.setprofile(lambda frame, event, arg: os._exit(0) if frame.f_code.co_name == 'check'"
        " else None)\n"
    )
    await failing(humaneval_task(), code + WRONG_ADD, "AssertionError (in check(add))")


async def test_reading_the_tests_from_the_work_directory_does_not_help():
    # Answers whatever the asserts expect, if it can find them in a file of the run.
    code = (
        "import glob, re\n"
        "text = ''.join(open(f, errors='ignore').read() for f in glob.glob('*') + [__file__])\n"
        "answers = {(int(m[1]), int(m[2])): int(m[3])\n"
        "           for m in re.finditer(r'add\\((\\d+), (\\d+)\\) == (\\d+)', text)}\n"
        "def add(a, b):\n    return answers.get((a, b), -1)\n"
    )
    await failing(mbpp_task("assert add(2, 3) == 7"), code, "AssertionError")


# --- what the defences must not break, and the verdict rule -----------------------------------


ADD_AND_MAX = ("assert add(2, 3) == 5", "assert max(1, add(1, 1)) == 2")


@pytest.mark.parametrize(
    "tests, code",
    [
        (ADD_AND_MAX, "import os\nos.close(1)\nos.close(2)\ndef add(a, b):\n    return a + b\n"),
        (ADD_AND_MAX, "import io, sys\nsys.stdout = io.StringIO()\nsys.stderr = None\n"
                      "def add(a, b):\n    return a + b\n"),
        (ADD_AND_MAX, "def max(*args):\n    raise RuntimeError('shadowed')\n\n"
                      "def add(a, b):\n    return sum([a, b])\n"),
        (ADD_AND_MAX,
         "import numpy as np\ndef add(a, b):\n    return np.int64(a) + np.float64(b)\n"),
        (ADD_AND_MAX, "print('x' * 100000)\ndef add(a, b):\n    return a + b\n"),
        (("assert add(2, 3) == {'x': 5}",),
         "import collections\ndef add(a, b):\n    return collections.Counter({'x': a + b})\n"),
        (("assert add([2], [3]) == {2: [3]}",),
         "import collections\ndef add(a, b):\n    d = collections.defaultdict(list)\n"
         "    d[a[0]].extend(b)\n    return d\n"),
    ],
    ids=["closed-stdio", "redirected-stdio", "own-builtin-names", "numpy-numbers",
         "long-output", "counter", "defaultdict"],
)  # fmt: skip
async def test_correct_solutions_still_pass(tests, code):
    score = await aevaluate(mbpp_task(*tests), reply(code))
    assert score.correct and score.detail == "all tests passed", score.detail


def test_blocking_evaluate_rejects_a_fake_too():
    score = evaluate(ADD_TASK, reply(WRONG_ADD + "import os\nos._exit(0)\n"))
    assert not score.correct and "no completion token" in score.detail


async def test_numpy_object_arrays_are_rejected():
    code = ALWAYS_EQUAL + "import numpy as np\ndef add(a, b):\n    return np.array([Anything()])\n"
    await failing(ADD_TASK, code, "returned a numpy.ndarray object")


@pytest.mark.parametrize(
    "ok, returncode, report, correct",
    [
        (True, 0, "TOKEN", True),
        (True, 0, None, False),
        (True, 0, "", False),
        (True, 0, "TOKEN\n", False),
        (True, 0, "TOKENTOKEN", False),
        (False, 1, "TOKEN", False),
    ],
    ids=["both", "no-report", "empty-report", "token-plus-newline", "token-twice", "exit-1"],
)
def test_the_verdict_needs_exit_0_and_exactly_the_token(ok, returncode, report, correct):
    from masr_graph.runtime.sandbox import SandboxResult

    result = SandboxResult(
        ok=ok, returncode=returncode, stdout="", stderr="", timed_out=False,
        memory_exceeded=False, killed_signal=None, duration_s=0.1,
        failure=None if ok else "exited with code 1", report=report,
    )  # fmt: skip
    assert code_eval.score_run("code", result, "TOKEN").correct is correct
