"""The code environment: extraction, test judging, LeetCode-style feedback, data, and scoring end to end."""

from __future__ import annotations

import json
import random

import pytest

from resd.envs import load
from resd.envs.base import DataError
from resd.envs.code import (
    FORMAT_MESSAGE,
    INCORRECT_FORMAT,
    PARSE_FAILURE,
    TIMEOUT,
    TRUNCATED_MESSAGE,
    CodeEnv,
    TestRecord,
    canonical_json,
    extract_code,
    format_feedback,
    format_prompt,
    normalize_stdout,
    parse_json_args,
    parse_tests,
    trim_expected_stdout,
)

# Reference solutions of the shipped problems (data/code_problems.jsonl), written for this project.
REFERENCE = {
    "two_sum": """
def two_sum(nums, target):
    seen = {}
    for i, x in enumerate(nums):
        if target - x in seen:
            return [seen[target - x], i]
        seen[x] = i
""",
    "is_palindrome": """
def is_palindrome(s):
    t = [c.lower() for c in s if c.isalnum()]
    return t == t[::-1]
""",
    "max_subarray": """
def max_subarray(nums):
    best = cur = nums[0]
    for x in nums[1:]:
        cur = max(x, cur + x)
        best = max(best, cur)
    return best
""",
    "merge_intervals": """
def merge_intervals(intervals):
    out = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out
""",
    "longest_common_prefix": """
def longest_common_prefix(words):
    if not words:
        return ""
    p = words[0]
    for w in words[1:]:
        while not w.startswith(p):
            p = p[:-1]
    return p
""",
    "word_frequencies": """
def word_frequencies(text):
    d = {}
    for w in text.lower().split():
        d[w] = d.get(w, 0) + 1
    return d
""",
    "rotate_matrix": """
def rotate_matrix(matrix):
    return [list(row) for row in zip(*matrix[::-1])]
""",
    "nth_prime": """
def nth_prime(n):
    import math
    limit = 20 if n < 6 else int(n * (math.log(n) + math.log(math.log(n)))) + 10
    sieve = bytearray([1]) * (limit + 1)
    sieve[0] = sieve[1] = 0
    for i in range(2, int(limit ** 0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytearray(len(sieve[i * i :: i]))
    count = 0
    for i, v in enumerate(sieve):
        if v:
            count += 1
            if count == n:
                return i
""",
    "run_length_encode": """
def run_length_encode(s):
    out = []
    for c in s:
        if out and out[-1][0] == c:
            out[-1][1] += 1
        else:
            out.append([c, 1])
    return out
""",
    "sum_numbers": """
n = int(input())
nums = list(map(int, input().split())) if n else []
print(sum(nums))
""",
    "reverse_words": """
print(" ".join(input().split()[::-1]))
""",
    "fizzbuzz": """
n = int(input())
for i in range(1, n + 1):
    print("FizzBuzz" if i % 15 == 0 else "Fizz" if i % 3 == 0 else "Buzz" if i % 5 == 0 else i)
""",
    "grid_paths": """
import sys
r, c = map(int, sys.stdin.read().split())
MOD = 10**9 + 7
row = [1] * c
for _ in range(r - 1):
    for j in range(1, c):
        row[j] = (row[j] + row[j - 1]) % MOD
print(row[-1])
""",
    "balanced_brackets": """
import sys
data = sys.stdin.read().split("\\n")
t = int(data[0])
pairs = {")": "(", "]": "[", "}": "{"}
for line in data[1 : t + 1]:
    stack = []
    ok = True
    for ch in line.strip():
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                ok = False
                break
    print("YES" if ok and not stack else "NO")
""",
    "distinct_count": """
n = int(input())
print(len(set(input().split())) if n else 0)
""",
}


@pytest.fixture(scope="module")
def env() -> CodeEnv:
    return load("code")


def fenced(code: str, lang: str = "python") -> str:
    return f"Here is my reasoning.\n\n```{lang}\n{code.strip()}\n```\n"


def row(tests: dict, **extra) -> dict:
    return {"idx": 0, "prompt": "solve it", "tests": json.dumps(tests), **extra}


# ---------------------------------------------------------------- extraction


def test_extract_code_takes_the_longest_fenced_block():
    text = "```python\nshort\n```\nthen\n```\nthe longest block\nof all\n```\n```py\nmid one\n```"
    assert extract_code(text) == "the longest block\nof all\n"
    assert extract_code("```python\nx = 1\n```") == "x = 1\n"
    assert extract_code("no code here") is None
    assert extract_code("```python x = 1```") is None  # the opening fence needs a newline
    assert extract_code("```c++\nint x;\n```") is None  # a language tag is \w* only
    assert extract_code("```python\nunclosed") is None
    assert extract_code(None) is None  # type: ignore[arg-type]
    # equal lengths: the first one wins
    assert extract_code("```\naaa\n```\n```\nbbb\n```") == "aaa\n"


def test_extract_code_fuzz_never_raises():
    rng = random.Random(1)
    pieces = ["```", "```python\n", "\n", "x", "`", "py", " ", "```\n", "def f():", "\t"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        code = extract_code(text)
        assert code is None or code in text


# ---------------------------------------------------------------- tests JSON and comparisons


def test_parse_tests_validates():
    good = {"inputs": ["1"], "outputs": ["1"], "testtype": "stdin", "fn_name": "", "time_limit": 6}
    assert parse_tests(json.dumps(good))["time_limit"] == 6.0
    assert parse_tests({**good, "time_limit": None})["time_limit"] is None
    assert parse_tests({**good, "fn_name": None})["fn_name"] == ""
    bad = [
        "{not json",
        "[]",
        {**good, "inputs": "1"},
        {"outputs": ["1"], "testtype": "stdin"},
        {**good, "outputs": ["1", "2"]},
        {**good, "testtype": "interactive"},
        {**good, "time_limit": "soon"},
        {**good, "time_limit": 0},
        {**good, "fn_name": 3},
    ]
    for raw in bad:
        with pytest.raises(DataError):
            parse_tests(raw)


def test_parse_json_args():
    assert parse_json_args("[2,7,11,15]\n9") == [[2, 7, 11, 15], 9]
    assert parse_json_args('[1, 2]\n"a b"  3') == [[1, 2], "a b", 3]
    assert parse_json_args("  ") == []
    with pytest.raises(ValueError):
        parse_json_args("[1,")
    rng = random.Random(2)
    for _ in range(3000):
        text = "".join(rng.choice('[]{}",:1 a\n-e.') for _ in range(rng.randint(0, 20)))
        try:
            assert isinstance(parse_json_args(text), list)
        except (ValueError, RecursionError):
            pass


def test_comparisons():
    assert canonical_json({"b": [1, (2, 3)], "a": None}) == '{"a":null,"b":[1,[2,3]]}'
    assert canonical_json({1: True}) == '{"1":true}'
    with pytest.raises(TypeError, match="Non-serializable result type: set"):
        canonical_json({1, 2})
    assert normalize_stdout("  1\r\n2\n3 \n") == "1 2 3"
    assert trim_expected_stdout(" 5 -\n") == "5"
    assert trim_expected_stdout("1-2-") == "1-2"
    assert trim_expected_stdout("-") == ""
    assert trim_expected_stdout("a\nb\n") == "a\nb"


# ---------------------------------------------------------------- feedback format


def rec(i, inp, expected, actual, passed=False, debug=""):
    return TestRecord(i, inp, expected, actual, passed, debug)


def test_feedback_empty_when_all_pass_and_placeholder_without_records():
    assert format_feedback([rec(0, "1", "1", "1", True), rec(1, "2", "2", "2", True)]) == ""
    assert format_feedback([]) == "No test execution information available."


def test_feedback_runtime_error_shows_only_the_first_error():
    records = [
        rec(0, "short", "1", "2"),
        rec(1, "x", "1", TIMEOUT),
        rec(
            2,
            "[1,2]\n3",
            "[0]",
            "Error: ZeroDivisionError: division by zero\n  return 1 / 0\nLine 4 in f (Solution.py)",
            debug="dbg line",
        ),
        rec(3, "y", "1", "Error: ValueError: second"),
    ]
    assert format_feedback(records) == (
        "Runtime Error\n"
        "ZeroDivisionError: division by zero\n"
        "  return 1 / 0\n"
        "Line 4 in f (Solution.py)\n"
        "\n"
        "Last Executed Input\n"
        "[1,2]\n"
        "3\n"
        "\n"
        "Debug Output\n"
        "dbg line"
    )


def test_feedback_time_limit_exceeded_before_wrong_answers():
    records = [rec(0, "1", "1", "2"), rec(1, "big input", "1", TIMEOUT), rec(2, "other", "1", TIMEOUT)]
    assert format_feedback(records) == "Time Limit Exceeded\n\nLast Executed Input\nbig input"
    skipped = TestRecord(0, "never ran", "1", TIMEOUT, False, skipped=True)
    assert format_feedback([skipped, rec(1, "ran", "1", TIMEOUT)]).endswith("Last Executed Input\nran")


def test_feedback_incorrect_format_and_truncation():
    records = [rec(0, None, None, INCORRECT_FORMAT)]
    assert (
        format_feedback(records)
        == FORMAT_MESSAGE
        == "Incorrect Format: Put your code inside a ```python ... ``` block."
    )
    assert format_feedback(records, truncated=True) == TRUNCATED_MESSAGE
    assert TRUNCATED_MESSAGE == (
        "Truncated Attempt: Your previous response was too long and truncated because it reached the maximum "
        "response length. Try again with a shorter response."
    )


def test_feedback_two_shortest_wrong_answers():
    records = [
        rec(0, "a much longer input line", "1", "2"),
        rec(1, "ok", "1", "1", True),
        rec(2, "tiny", "5", "6", debug="\n".join(f"d{k}" for k in range(12))),
        rec(3, "mid input", "7", "8"),
    ]
    assert format_feedback(records) == (
        "Test Case 3: Wrong Answer\n\nInput\ntiny\n\nOutput\n6\n\nExpected\n5\n\n"
        "Debug Output\n" + "\n".join(f"d{k}" for k in range(10)) + "\n... (2 more lines)\n\n"
        "Test Case 4: Wrong Answer\n\nInput\nmid input\n\nOutput\n8\n\nExpected\n7"
    )


def test_feedback_truncation_rules():
    long_line = "z" * 300
    many_lines = "\n".join(str(k) for k in range(11))
    text = format_feedback([rec(0, many_lines, "e" * 260, long_line)])
    lines = text.split("\n")
    assert lines[3:11] == [str(k) for k in range(8)]
    assert lines[11] == "... (3 more lines)"
    assert "z" * 250 + "..." in lines and "e" * 250 + "..." in lines
    assert format_feedback([rec(0, {"nums": [1, 2], "k": "q" * 300}, "1", "2")]).split("\n")[3:5] == [
        "nums = [1, 2]",
        "k = " + "q" * 250 + "...",
    ]
    assert format_feedback([rec(0, "i", "1", "2", debug=long_line)]).endswith("z" * 300)
    assert format_feedback([rec(0, "i", "1", "2", debug="w" * 400)]).endswith("w" * 300 + "...")
    huge = [rec(k, "x" * 249 + "\n" + "y" * 249, "1", "2" * 249) for k in range(5)]
    assert len(format_feedback(huge)) <= 2000
    errors = "Error: E: " + "m" * 5000
    assert len(format_feedback([rec(0, "i", "1", errors)])) == 2000


# ---------------------------------------------------------------- scoring through the sandbox


def test_every_shipped_problem_is_solved_by_its_reference(env):
    rows = env.load_split("test")
    assert len(rows) == 15
    assert {r["name"] for r in rows} == set(REFERENCE)
    for r in rows:
        fb = env.score(fenced(REFERENCE[r["name"]]), r)
        assert (fb.score, fb.acc, fb.feedback) == (1.0, 1.0, ""), (r["name"], fb.feedback)


def test_wrong_answer_feedback_and_partial_acc(env):
    two_sum = env.load_split("test")[0]
    fb = env.score(fenced("def two_sum(nums, target):\n    return [0, 1]"), two_sum)
    tests = json.loads(two_sum["tests"])
    n_pass = sum(out == "[0,1]" for out in tests["outputs"])
    assert fb.score == 0.0 and fb.acc == pytest.approx(n_pass / len(tests["outputs"]))
    assert fb.feedback.startswith("Test Case 3: Wrong Answer\n\nInput\n[3,2,4]\n6\n\nOutput\n[0, 1]\n\nExpected\n[1,2]")
    assert fb.feedback.count("Wrong Answer") == 2
    assert fb.details["incorrect_format"] == 0 and fb.details["passed"].count(True) == n_pass


def test_runtime_error_feedback_names_the_line(env):
    two_sum = env.load_split("test")[0]
    code = (
        "def two_sum(nums, target):\n    seen = {}\n    return lookup(nums)\n\ndef lookup(nums):\n    return nums[99]\n"
    )
    fb = env.score(fenced(code), two_sum)
    assert fb.feedback == (
        "Runtime Error\nIndexError: list index out of range\n  return lookup(nums)\nLine 3 in two_sum (Solution.py)\n"
        "  return nums[99]\nLine 6 in lookup (Solution.py)\n\nLast Executed Input\n[2,7,11,15]\n9"
    )
    assert fb.details["error_in_test_cases"] == 1


def test_stdin_problem_wrong_and_right(env):
    reverse = [r for r in env.load_split("test") if r["name"] == "reverse_words"][0]
    assert env.score(fenced("print(' '.join(input().split()))"), reverse).score == 0.0
    # output normalization: trailing spaces and newlines between words are fine
    spaced = "for w in input().split()[::-1]:\n    print(w)\nprint('   ')"
    assert env.score(fenced(spaced), reverse).score == 1.0


def test_time_limit_exceeded(env):
    tests = {
        "inputs": ["1", "0", "2"],
        "outputs": ["1", "0", "2"],
        "testtype": "stdin",
        "fn_name": "",
        "time_limit": 0.2,
    }
    fast = CodeEnv(timeout_slack_s=0.3)
    program = "n = int(input())\nwhile n == 1:\n    pass\nprint(n)"
    fb = fast.score(fenced(program), row(tests))
    assert fb.feedback == "Time Limit Exceeded\n\nLast Executed Input\n1"
    assert fb.details["timed_out"] == 1 and fb.details["tests_not_run"] == 2 and fb.acc == 0.0
    exact = CodeEnv(timeout_slack_s=0.3, stop_after_timeouts=None)
    fb = exact.score(fenced(program), row(tests))
    assert fb.acc == pytest.approx(2 / 3) and fb.details["tests_not_run"] == 0
    with pytest.raises(ValueError):
        CodeEnv(stop_after_timeouts=0)


def test_format_truncation_and_broken_tests(env):
    two_sum = env.load_split("test")[0]
    fb = env.score("I think the answer is to use a hash map.", two_sum)
    assert (fb.score, fb.acc, fb.feedback) == (0.0, 0.0, FORMAT_MESSAGE)
    assert fb.details["incorrect_format"] == 1
    fb = env.score("def two_sum(nums, target):\n    return [", two_sum, truncated=True)
    assert fb.feedback == TRUNCATED_MESSAGE and fb.details["truncated"] == 1
    broken = {"idx": 1, "prompt": "p", "tests": "{oops"}
    assert env.score(fenced("print(1)"), broken).feedback == PARSE_FAILURE


def test_parquet_row_kwargs_inputs_and_dash_outputs(env):
    tests = {
        "inputs": [{"a": 2, "b": 3}, "[1, 2]\n3"],
        "outputs": ["5", "6"],
        "testtype": "functional",
        "fn_name": "add",
        "time_limit": None,
    }
    parquet_row = {
        "data_source": "livecodebench",
        "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "add them"}],
        "reward_model": {"style": "code", "ground_truth": json.dumps(tests)},
        "extra_info": {"split": "test", "index": 7},
    }
    code = "def add(a, b, c=0):\n    if isinstance(a, list):\n        return sum(a) + b\n    return a + b\n"
    assert env.score(fenced(code), parquet_row).score == 1.0
    assert env.prompt_messages(parquet_row)[0] == {"role": "system", "content": "be brief"}
    assert env.example_id(parquet_row) == "7"
    dash = {"inputs": ["3"], "outputs": ["3 -"], "testtype": "stdin", "fn_name": "", "time_limit": 1}
    assert env.score(fenced("print(input())"), row(dash)).score == 1.0
    bad_expected = {
        "inputs": ["1"],
        "outputs": ["{not json"],
        "testtype": "functional",
        "fn_name": "f",
        "time_limit": 1,
    }
    fb = env.score(fenced("def f(x):\n    return x"), row(bad_expected))
    assert fb.score == 0.0 and fb.feedback.startswith("Runtime Error\nJSONDecodeError: could not read this test case")


def test_hostile_solutions_score_zero_without_harm(env):
    sums = [r for r in env.load_split("test") if r["name"] == "sum_numbers"][0]
    for program in (
        "import os\nos.kill(os.getppid(), 9)\nprint(6)",
        "import sys\nwhile True:\n    sys.stdout.write('x' * 100000)",
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        break\nprint(0)",
        "x = bytearray(10**10)",
    ):
        fb = CodeEnv(timeout_slack_s=0.3, stop_after_timeouts=1).score(fenced(program), sums)
        assert fb.score == 0.0 and fb.feedback


# ---------------------------------------------------------------- data and prompts


def test_splits_and_prompts(env):
    test_rows = env.load_split("test")
    train_rows = env.load_split("train")
    assert [r["idx"] for r in train_rows] == [r["idx"] for r in test_rows]
    for full, reduced in zip(test_rows, train_rows, strict=True):
        all_tests, some = json.loads(full["tests"]), json.loads(reduced["tests"])
        n = len(all_tests["inputs"])
        assert len(some["inputs"]) == max(1, n // 2)
        pairs = list(zip(all_tests["inputs"], all_tests["outputs"], strict=True))
        assert all(p in pairs for p in zip(some["inputs"], some["outputs"], strict=True))
        assert full["prompt"] == format_prompt(full["question"], full["starter_code"])
        assert env.prompt_messages(full) == [{"role": "user", "content": full["prompt"]}]
        assert env.example_id(full) == str(full["idx"])
    assert env.load_split("train") == train_rows  # deterministic
    assert len(env.load_split("test", limit=3)) == 3
    with pytest.raises(DataError):
        env.load_split("validation")
    first = test_rows[0]["prompt"]
    assert "The time limit is 1 second." in first and first.endswith(
        "```python\ndef two_sum(nums: list[int], target: int) -> list[int]:\n```"
    )


def test_row_formats_for_prompts(env):
    sdpo_row = {"idx": 3, "prompt": "Write it.", "system": "You code.", "tests": "-"}
    assert env.prompt_messages(sdpo_row) == [
        {"role": "system", "content": "You code."},
        {"role": "user", "content": "Write it."},
    ]
    raw_lcb = {"question_content": "Add two numbers.", "starter_code": "def add(a, b):"}
    (message,) = env.prompt_messages(raw_lcb)
    assert message["content"] == format_prompt("Add two numbers.", "def add(a, b):")
    assert "Your solution should have the following signature: ```python\ndef add(a, b):\n```" in message["content"]
    with pytest.raises(DataError):
        env.prompt_messages({"tests": "{}"})


def test_load_split_from_a_path_names_the_bad_row(env, tmp_path):
    good = row({"inputs": ["1"], "outputs": ["1"], "testtype": "stdin", "fn_name": "", "time_limit": 1})
    path = tmp_path / "lcb.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "tests": json.dumps({"inputs": []})}) + "\n")
    with pytest.raises(DataError, match=r"lcb.jsonl: row 2: tests: missing field 'outputs'"):
        env.load_split("train", path=str(path))
    path.write_text(json.dumps(good) + "\n")
    assert env.load_split("train", path=str(path)) == [good]
