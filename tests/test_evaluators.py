"""Tables of tricky replies per benchmark, including every scoring bug of the MasRouter reference
(issue #5): GSM8K "1,000" -> 0, "-5" -> 5, "3.5" -> 5; code extraction by
``lstrip("```python\\n")``; MATH falling back to the last character; an empty ``\\boxed{}``
crashing MMLU. Text scorers and code extraction are tested here (plus a sandbox run of the
lstrip victims); the full code sweeps are in ``test_code_eval.py``."""

from __future__ import annotations

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
    ("Each costs 3.5 dollars.", "35", "3.5", False),  # decimals are not merged into integers
    ("I cannot solve this.", "18", None, False),
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
]


@pytest.mark.parametrize("reply, gold, extracted, correct", MATH_TABLE)
def test_math_table(reply, gold, extracted, correct):
    score = evaluate(_example("math", gold), reply)
    assert (score.extracted, score.correct) == (extracted, correct), score.detail


def test_math_answer_key_groups_equivalent_forms():
    assert answer_key("math", r"\boxed{0.5}") == answer_key("math", r"\boxed{\frac{1}{2}}")
    assert answer_key("math", r"\boxed{2}") != answer_key("math", r"\boxed{3}")
    assert answer_key("math", r"\boxed{}") is None


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
