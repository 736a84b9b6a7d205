"""Tables of tricky replies per benchmark, including every scoring bug of the MasRouter reference
(issue #5): GSM8K "1,000" -> 0, "-5" -> 5, "3.5" -> 5; code extraction by
``lstrip("```python\\n")``; MATH falling back to the last character; an empty ``\\boxed{}``
crashing MMLU. Text scorers and code extraction are tested here (plus a sandbox run of the
lstrip victims); the full code sweeps are in ``test_code_eval.py``; timeouts, threads and the
event loop in ``test_scorer_pool.py``.

Cases marked "hole" are the holes an independent tester found (each fails on the evaluators as
they were before the fix); cases marked "control" pass before and after and guard the fix against
over-correcting (a right answer that must stay right, a wrong one that must stay wrong)."""

from __future__ import annotations

import time

import pytest
from masr_graph.benchmarks import Example, aevaluate_many, answer_key, evaluate
from masr_graph.benchmarks.tasks.code_eval import extract_code
from masr_graph.benchmarks.tasks.extraction import last_answer_statement, last_boxed


def _example(task: str, gold: str) -> Example:
    return Example(id=f"{task}/table", task=task, query="(table case)", answer=gold)


# ----------------------------------------------------------------------------------- shared markers


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{\frac{\sqrt{3}}{2}}.", r"\frac{\sqrt{3}}{2}"),  # nested braces survive
        (r"\boxed{1} then revised: \boxed{2}", "2"),  # the last box wins
        (r"\boxed{4} but then \boxed{\frac{1", "4"),  # a truncated box is skipped
        (r"\fbox{7}", "7"),
        (r"$\boxed 5$.", "5"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces do not close the box
        (r"\boxed{}", ""),  # empty box: empty answer, not None and not a crash
        ("no box at all", None),
        (r"\boxedx{3}", None),  # a longer command name is not a box
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is 42.", "42."),
        ("Final answer: C", "C"),
        ("**Answer:** 7", "7"),
        ("I think the answer is:\n\n  12 apples", "12 apples"),
        ("answer is 3. Wait, the answer is 4", "4"),
        ("no statement", None),
    ],
)
def test_last_answer_statement(text, expected):
    assert last_answer_statement(text) == expected


def test_markers_are_found_in_linear_time():
    # Degenerate replies (long runs of spaces, a box command repeated) made the statement
    # regex backtrack quadratically and re-scanned the reply once per unclosed box.
    started = time.monotonic()
    assert last_answer_statement("answer" + " " * 100_000 + "is 5") == "5"
    assert last_boxed("\\boxed{3} " + "\\boxed{" * 30_000) == "3"
    assert time.monotonic() - started < 2.0


# The ZeroEval recordings (shared/data/outcomes/zeroeval) ask for {"reasoning": ..., "answer": ...};
# these are the forms real replies take (see benchmarks/tasks/zeroeval_extraction_report.py).
JSON_TABLE = [
    # reply, answer field (None: no field, "": a field holding no answer)
    ('{"reasoning": "3 + 5", "answer": "8"}', "8"),
    ('```json\n{\n  "reasoning": "3 + 5",\n  "answer": 8\n}\n```\nHope it helps!', "8"),
    ('Here it is:\n{"reasoning": "line one\nline two", "answer": "8"}', "8"),  # raw newline
    ('{"reasoning": "x", "answer": "\\frac{1}{2}"}', "\\frac{1}{2}"),  # LaTeX, unescaped
    ('{"reasoning": "x", "answer": "\\\\frac{1}{2}"}', "\\frac{1}{2}"),  # LaTeX, escaped
    ('{"reasoning": "x", "answer": "answer": "7.5"\n}', "7.5"),  # a doubled key
    ('{"reasoning": "x", "answer": "Cost:"\n  "\\n- profit $60"\n}', "Cost:\n- profit $60"),
    ('{"reasoning": "so 3.\n\nanswer": "4"\n}\n```', "4"),  # a quote missing
    ('{"reasoning": "so the answer is: \\"answer\\": \\"3\\""\n}', "3"),  # quoted inside
    ('{"reasoning": "so 3. `answer`: "3"\n```', "3"),  # backticks
    ('{"reasoning": "x", "answer": null}', ""),
    ('{"reasoning": "x", "answer": {"glasses": 86, "plates": 42}}', ""),
    ('{"reasoning": "x", "answer": ["2", 3]}', "2, 3"),
    ('{"reasoning": "x", "answer": "12', ""),  # cut off inside the field
    ('{"reasoning": "cut off before the field', None),
    ("The answer is 5.", None),
]


@pytest.mark.parametrize("reply, expected", JSON_TABLE)
def test_json_answer(reply, expected):
    from masr_graph.benchmarks.tasks.extraction import json_answer

    assert json_answer(reply) == expected


# ------------------------------------------------------------------------------------------ GSM8K

GSM8K_TABLE = [
    # reply, gold, extracted, correct
    ("She pays 1,000 dollars in total.", "1000", "1000", True),  # reference: "1,000" -> 0
    ("The temperature ends at -5 degrees.", "-5", "-5", True),  # reference: "-5" -> 5
    ("Each cookie costs 3.5 dollars.", "3.5", "3.5", True),  # reference: "3.5" -> 5
    ("It costs $1,234.50.", "1234.5", "1234.5", True),
    ("#### 1,000", "1000", "1000", True),
    ("#### 72\nThe answer is 70", "72", "72", True),  # GSM8K's own marker first
    (
        r"So she has $\boxed{1,000}$ left. Then 3 more.",
        "1000",
        "1000",
        True,
    ),  # box before last number
    (r"\boxed{x = 12}", "12", "12", True),
    (r"\boxed{\frac{1}{2}}", "0.5", "0.5", True),
    ("He eats 1/2 of it.", "0.5", "0.5", True),
    ("The answer is 18. Check: 18 - 3 = 15.", "18", "18", True),  # statement before last number
    ("The answer is: −5", "-5", "-5", True),  # unicode minus
    ("5-3=2 apples remain", "2", "2", True),  # a minus after a digit is an operator
    ("10 - 5 = 5 apples", "5", "5", True),
    ("#### 18.00", "18", "18", True),
    ("The answer is 18 dollars.", "18", "18", True),
    ("#### 17", "18", "17", False),
    ("#### 1000001", "1000000", "1000001", False),  # hole: a 1e-6 relative tolerance accepted it
    ("#### 999999", "1000000", "999999", False),  # hole: same
    ("#### 1000000", "1000000", "1000000", True),  # control
    ("#### 36/2", "18", "18", True),  # control: exact rational equality
    ("#### 0.1", "0.1", "0.1", True),  # control: decimals are exact fractions, not floats
    ("#### " + "9" * 5000, "18", None, False),  # hole: int() refused 5000 digits and raised
    ("Each costs 3.5 dollars.", "35", "3.5", False),  # decimals are not merged into integers
    ("I cannot solve this.", "18", None, False),
    # the JSON answer field decides (ZeroEval forms)
    ('{"answer": "8", "reasoning": "3 + 5 = 8; check: 8 - 3 = 5"}', "8", "8", True),
    ('```json\n{"reasoning": "8 - 3 = 5", "answer": "$8"}\n```', "8", "8", True),  # control
    ('{"reasoning": "x", "answer": "3 + 5 = 8"}', "8", "8", True),  # control
    ('{"reasoning": "12 apples", "answer": "Cannot be determined"}', "12", None, False),
    ('{"reasoning": "86 glasses", "answer": {"glasses": 86, "plates": 42}}', "86", None, False),
    ('{"reasoning": "She has 12 apples and gives 3', "12", None, False),  # cut off in the JSON
    ('{"reasoning": "so 8.\n\nanswer": "8"\n}\n```\nStep 2 done.', "8", "8", True),
    ("#### 499.99999999999994", "500", "499.99999999999994", False),  # exact, not 1e-6
    (r"Final answer: \boxed{}", "18", None, False),  # empty box, no number anywhere
]


@pytest.mark.parametrize("reply, gold, extracted, correct", GSM8K_TABLE)
def test_gsm8k_table(reply, gold, extracted, correct):
    score = evaluate(_example("gsm8k", gold), reply)
    assert (score.extracted, score.correct) == (extracted, correct), score.detail


def test_gsm8k_answer_key_normalises_number_forms():
    keys = {
        answer_key("gsm8k", reply)
        for reply in ("#### 1,000", "The answer is 1000.", r"\boxed{1000}")
    }
    assert keys == {"1000"}
    assert answer_key("gsm8k", "1/2") == answer_key("gsm8k", "0.5") == "0.5"
    assert answer_key("gsm8k", "no number") is None


def test_gsm8k_answer_key_is_exact():
    # Keys agree with the evaluator's exact equality (they were rounded to 12 digits).
    assert answer_key("gsm8k", "#### 499.99999999999994") != answer_key("gsm8k", "#### 500")
    assert answer_key("gsm8k", "#### 1/3") == "1/3"


# ------------------------------------------------------------------------------------------- MATH

MATH_TABLE = [
    # reply, gold, extracted, correct
    (r"Thus $\boxed{\frac{\sqrt{3}}{2}}$.", r"\frac{\sqrt3}{2}", r"\frac{\sqrt{3}}{2}", True),
    (r"\boxed{0.5}", r"\frac{1}{2}", "0.5", True),
    (r"\boxed{\dfrac{1}{2}}", r"\frac12", r"\dfrac{1}{2}", True),
    (
        r"\boxed{(3, \frac{\pi}{2})}",
        r"\left( 3, \frac{\pi}{2} \right)",
        r"(3, \frac{\pi}{2})",
        True,
    ),
    (r"\boxed{(x+1)^2}", "x^2+2x+1", "(x+1)^2", True),
    (r"\boxed{\{2, 1\}}", r"\{1,2\}", r"\{2, 1\}", True),
    (r"\boxed{30^\circ}", "30", r"30^\circ", True),
    (r"\boxed{\text{Monday}}", r"\text{Monday}", r"\text{Monday}", True),
    (r"\fbox{7}", "7", "7", True),
    (r"First \boxed{3}; correcting myself, \boxed{4}", "4", "4", True),
    (r"The answer is $\frac{1}{2}$.", r"\frac12", r"\frac{1}{2}", True),  # statement fallback
    (r"\boxed{3}", "4", "3", False),
    (r"\boxed{\frac{1}{3}}", "0.333", r"\frac{1}{3}", False),  # no loose rounding
    # reference: no box -> last character "5", scored correct; here: nothing extracted
    ("so we get x = 5", "5", None, False),
    ("so we get x = 5.", "5", None, False),
    (r"Hence \boxed{}", "5", "", False),  # empty box: incorrect, not a crash
    # hole: a final box cut off by truncation is no answer (was read out by the statement rule)
    (r"The answer is \boxed{4", "4", None, False),
    (r"First \boxed{4}; on reflection the final answer is \boxed{45", "4", None, False),
    (r"\boxed{4} and that is final", "4", "4", True),  # control: a complete last box
    # hole: an equation is a value only when its left side is a variable name
    (r"\boxed{2+2=4}", "4", "2+2=4", False),
    (r"\boxed{f(x)=5}", "5", "f(x)=5", False),
    (r"\boxed{x=4}", "4", "x=4", True),  # control
    (r"\boxed{x = 2 + 2 = 4}", "4", "x = 2 + 2 = 4", True),  # control
    (r"\boxed{y = 3 + 2x}", "y = 2x + 3", "y = 3 + 2x", True),  # control: equation golds
    # hole: a top-level list is a multiset, not a set
    (r"\boxed{1,2,2}", "1,2", "1,2,2", False),
    (r"\boxed{3, 3}", "3", "3, 3", False),
    (r"\boxed{2, 1}", "1,2", "2, 1", True),  # control: any order
    (r"\boxed{x = -1, x = 2}", "2, -1", "x = -1, x = 2", True),  # control: items as equations
    (r"\boxed{(2,1)}", "(1,2)", "(2,1)", False),  # control: tuples keep their order
    (r"\boxed{(1,2]}", "[1,2)", "(1,2]", False),  # control: intervals keep their ends
    (r"\boxed{15000}", r"15,\!000", "15000", True),  # control: a thousands separator
    (r"\boxed{1+\sqrt5, 1-\sqrt5}", r"1\pm\sqrt5", r"1+\sqrt5, 1-\sqrt5", True),  # control
    # \pm inside a fraction: math-verify cannot parse it (was wrong), expanded here
    (
        r"\boxed{\frac{-1-\sqrt5}{2}, \frac{-1+\sqrt5}{2}}",
        r"\frac{-1\pm\sqrt{5}}{2}",
        r"\frac{-1-\sqrt5}{2}, \frac{-1+\sqrt5}{2}",
        True,
    ),
    (r"\boxed{C, B}", r"\text{B, C}", "C, B", True),  # was wrong: a \text{}-wrapped list
    # hole: a single letter is a letter, case-sensitively (math-verify reads e and E as Euler's e)
    (r"\boxed{e}", "E", "e", False),
    (r"\boxed{E}", "e", "E", False),
    (r"\boxed{e}", r"\text{(E)}", "e", False),
    (r"\boxed{2.718281828}", r"\text{(E)}", "2.718281828", False),  # control
    (r"\boxed{E}", r"\text{(E)}", "E", True),  # control
    (r"\boxed{\textbf{(E)}}", r"\text{(E)}", r"\textbf{(E)}", True),  # control
    # the JSON answer field decides (ZeroEval forms)
    ('{"reasoning": "not \\\\boxed{3}", "answer": "4"}', "4", "4", True),
    ('{"reasoning": "x", "answer": "\\frac{1}{2}"}', "0.5", "\\frac{1}{2}", True),
    ('{"reasoning": "x", "answer": "$\\\\frac{1}{2}$"}', "0.5", "\\frac{1}{2}", True),
    ('{"reasoning": "x", "answer": "The sum is $17$."}', "17", "17", True),
    ('{"reasoning": "x", "answer": "sqrt(25)"}', "5", "sqrt(25)", True),  # plain-text math
    ('{"reasoning": "x", "answer": "4√2 + 8"}', "8+4\\sqrt{2}", "4√2 + 8", True),
    ('{"reasoning": "x", "answer": "25π"}', "25\\pi", "25π", True),
    ('{"reasoning": "x", "answer": ""}', "5", None, False),  # control
    ('{"reasoning": "if we guess \\\\boxed{5} then', "5", None, False),  # cut off in the JSON
]


@pytest.mark.parametrize("reply, gold, extracted, correct", MATH_TABLE)
def test_math_table(reply, gold, extracted, correct):
    score = evaluate(_example("math", gold), reply)
    assert (score.extracted, score.correct) == (extracted, correct), score.detail


def test_math_answer_key_groups_equivalent_forms():
    assert answer_key("math", r"\boxed{0.5}") == answer_key("math", r"\boxed{\frac{1}{2}}")
    assert answer_key("math", r"\boxed{2}") != answer_key("math", r"\boxed{3}")
    assert answer_key("math", r"\boxed{}") is None
    assert answer_key("math", r"\boxed{2, 1}") == answer_key("math", r"\boxed{1,2}")


def test_math_answer_key_follows_the_judgement_rules():
    # Voting keys agree with the evaluator: equal answers vote together, unequal ones apart.
    assert answer_key("math", r"\boxed{x = 4}") == answer_key("math", r"\boxed{4}")
    assert answer_key("math", r"\boxed{1,2,2}") != answer_key("math", r"\boxed{1,2}")
    assert answer_key("math", r"\boxed{e}") != answer_key("math", r"\boxed{E}")
    assert answer_key("math", r"\boxed{\text{(E)}}") == answer_key("math", r"\boxed{E}")
    assert answer_key("math", r"The answer is \boxed{4") is None  # truncated


# ------------------------------------------------------------------------------------------- MMLU

MMLU_TABLE = [
    # reply, extracted
    ("Answer: C", "C"),
    ("(C)", "C"),
    ("C.", "C"),
    ("C", "C"),
    ("**C**", "C"),
    ("the answer is C", "C"),
    ("The answer is (c).", "C"),
    (r"\boxed{C}", "C"),
    (r"\boxed{\text{(B)}}", "B"),
    ("**Answer:** **D**", "D"),
    ("The correct option is B: 5", "B"),
    ("A cat sits. A dog barks. Therefore the answer is D.", "D"),  # incidental capitals ignored
    (
        "A. foo is wrong\nB. bar is wrong\nSo the final answer is C.",
        "C",
    ),  # restated options ignored
    ("Let me think.\n(D) Paris", "D"),
    ("Because of that, the answer is Because", None),  # a word starting with B is not "B"
    ("The answer is a prime number.", None),  # the article "a" is not option A
    ("A bird in the hand is worth two.", None),
    (r"\boxed{}", None),  # reference: crashed on an empty box
    (r"Answer: \boxed{}", None),
    (r"\boxed{} so the answer is B", "B"),  # an empty box is skipped, not fatal
    ("", None),
    # hole: a lower-case letter that is the whole reply (or the whole statement) counts
    ("b", "B"),
    ("(c)", "C"),
    ("c.", "C"),
    ("Answer: b", "B"),
    (r"\boxed{c}", "C"),
    ("I pick a dog.", None),  # control: an article is still not an option
    # hole: several distinct letters in the chosen answer span are a hedge, not an answer
    ("Answer: A, C", None),
    ("The answer is A or B", None),
    (r"\boxed{A, C}", None),
    ("The answer is A/B.", None),
    ("Answer: **C** and **D**", None),
    ("Answer: C or C", "C"),  # control: one letter repeated
    ("Answer: C, because A is wrong", "C"),  # control: only the leading letters count
    # hole: a reply that only restates the options gives no answer (was the last option)
    ("A. Paris\nB. Rome\nC. Madrid\nD. Oslo", None),
    ("A. Paris\n\nB. Rome\n\nC. Madrid\n\nD. Oslo\n", None),
    ("Options considered.\nC. Madrid", "C"),  # control: one trailing option line
    # the JSON answer field decides
    ('{"reasoning": "A is wrong, so is B.", "answer": "C"}', "C"),
    ('{"reasoning": "x", "answer": "(c) Madrid"}', "C"),
    ('{"reasoning": "x", "answer": "A or C"}', None),  # control
    ('{"reasoning": "x", "answer": "Madrid"}\nAnswer: C', None),
]


@pytest.mark.parametrize("reply, extracted", MMLU_TABLE)
def test_mmlu_table(reply, extracted):
    score = evaluate(_example("mmlu", "C"), reply)
    assert score.extracted == extracted, score.detail
    assert score.correct == (extracted == "C")
    assert answer_key("mmlu", reply) == extracted


# ------------------------------------------------------------------------------- code extraction

# The reference did reply.lstrip("```python\n"), which strips any leading characters of the set
# {`, p, y, t, h, o, n, \n}: these programs all begin with such letters.
LSTRIP_VICTIMS = [
    "print('ready')\n\ndef add(a, b):\n    return a + b\n",
    "hypot = __import__('math').hypot\n\n\ndef add(a, b):\n    return hypot(a, 0) + b\n",
    "nothing = None\n\n\ndef add(a, b):\n    return a + b if nothing is None else 0\n",
    "type_ok = True\n\n\ndef add(a, b):\n    return a + b\n",
]


@pytest.mark.parametrize("code", LSTRIP_VICTIMS)
def test_code_extraction_never_strips_characters(code):
    reply = f"```python\n{code}```"
    # what the reference ran:
    assert reply.lstrip("```python\n") != code  # noqa: B005, PLE1310
    assert extract_code(reply, "add") == code


async def test_lstrip_victims_pass_in_the_sandbox():
    task = Example(
        id="mbpp/table",
        task="mbpp",
        query="Write add(a, b).",
        answer="",
        meta={"entry_point": "add", "test_list": ["assert add(2, 3) == 5"], "test_setup_code": ""},
    )
    scores = await aevaluate_many(
        [task] * len(LSTRIP_VICTIMS), [f"```python\n{c}```" for c in LSTRIP_VICTIMS]
    )
    assert [score.detail for score in scores] == ["all tests passed"] * len(LSTRIP_VICTIMS)


ADD = "def add(a, b):\n    return a + b\n"

CODE_TABLE = [
    # reply, entry point, expected code
    (f"```py\n{ADD}```", "add", ADD),
    (f"```python3\n{ADD}```", "add", ADD),
    (f"```\n{ADD}```", "add", ADD),
    (f"~~~python\n{ADD}~~~", "add", ADD),
    (f"```Python\r\n{ADD.replace(chr(10), chr(13) + chr(10))}```", "add", ADD),  # CRLF reply
    # the block defining the entry point beats a later usage example
    (f"Solution:\n```python\n{ADD}```\nUsage:\n```python\nprint(add(1, 2))\n```", "add", ADD),
    # several definitions: the last (corrected) one
    (
        f"```python\ndef add(a, b):\n    return a - b\n```\nOops, fixed:\n```python\n{ADD}```",
        "add",
        ADD,
    ),
    # other languages are ignored even when they come last
    (f"```python\n{ADD}```\n```text\n3\n```\n```bash\npython add.py\n```", "add", ADD),
    # a fence left open by a truncated reply
    (f"Here you go:\n```python\n{ADD}", "add", ADD),
    # a block indented inside a markdown list
    ("1. Write it:\n   ```python\n   def add(a, b):\n       return a + b\n   ```", "add", ADD),
    # unfenced: the whole reply when it parses, else from the first def, minus trailing prose
    (ADD, "add", ADD),
    (f"Here is my solution:\n{ADD}This adds the numbers.", "add", ADD),
    (f"Sure!\nimport math\n{ADD}", "add", f"import math\n{ADD}"),
    # a __main__ demo would read stdin when run as the main module; it is dropped
    (f'{ADD}\nif __name__ == "__main__":\n    print(add(int(input()), 1))\n', "add", f"{ADD}\n"),
    ("", "add", None),
]


@pytest.mark.parametrize("reply, entry_point, expected", CODE_TABLE)
def test_code_extraction_table(reply, entry_point, expected):
    assert extract_code(reply, entry_point) == expected


def test_code_answer_key_ignores_formatting_but_not_logic():
    spaced = "```python\ndef add(a, b):  # sum\n\n    return a + b\n```"
    assert answer_key("mbpp", f"```python\n{ADD}```") == answer_key("humaneval", spaced)
    assert answer_key("mbpp", ADD) != answer_key("mbpp", ADD.replace("+", "-"))
    assert answer_key("mbpp", "") is None
