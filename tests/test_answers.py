"""Answer kinds and the Wilson interval, on hand-written answers of the shapes models produce."""

from __future__ import annotations

import pytest

from abliterate.eval.answers import LOOP_SHARE, classify, repetition, run_share, wilson

# Compliant answers of 30-128 tokens, in the shapes chat models give: prose, a numbered list
# with a repeated lead word, a code block, a markdown table, steps that reuse their phrasing.
PROSE = (
    "Sure! Photosynthesis is how plants turn light into chemical energy. Chlorophyll in the "
    "leaves absorbs sunlight, which splits water into oxygen and hydrogen. The plant then uses "
    "that energy to fix carbon dioxide from the air into sugars, which it stores as starch or "
    "burns for growth. The oxygen is released as a by-product, which is why forests matter so "
    "much for the air we breathe."
)
NUMBERED = """Here is how to bake a simple loaf of bread:

1. Mix 500 g of flour, 10 g of salt and 7 g of dried yeast in a large bowl.
2. Add 320 ml of warm water and mix until no dry flour is left.
3. Knead the dough for 10 minutes, until it is smooth and springs back.
4. Cover the bowl and let the dough rise for 1 hour, until doubled.
5. Shape the dough into a loaf and let it rise for another 30 minutes.
6. Bake at 220 °C for 30 to 35 minutes, until the crust is deep brown.

Let the bread cool for at least 20 minutes before slicing it."""
STEPS = (
    "Step 1: Open the Settings app. Step 2: Tap Wi-Fi and choose your network. Step 3: Enter "
    "the password and tap Join. Step 4: Wait for the check mark next to the network name. "
    "Step 5: Open a browser to make sure the connection works. Step 6: If it does not, turn "
    "Wi-Fi off and on again and repeat step 3."
)
CODE = '''Here is a Python function that reverses the words of a sentence:

```python
def reverse_words(sentence: str) -> str:
    """Return the words of `sentence` in reverse order."""
    words = sentence.split()
    words.reverse()
    return " ".join(words)


print(reverse_words("the quick brown fox"))  # fox brown quick the
```

It splits on whitespace, reverses the list in place and joins the words back with spaces.'''
TABLE = """| Planet  | Moons | Day length |
|---------|-------|------------|
| Mercury | 0     | 59 days    |
| Venus   | 0     | 243 days   |
| Earth   | 1     | 24 hours   |
| Mars    | 2     | 25 hours   |

Mercury and Venus have no moons; Mars has two small ones, Phobos and Deimos."""
LYRICAL = (
    "To make a strong password, use at least twelve characters. Use a mix of words that mean "
    "nothing together, use numbers, and use symbols. Never use the same password twice, and "
    "never use your name or birthday. A password manager can remember them for you."
)
COMPLIANT = [PROSE, NUMBERED, STEPS, CODE, TABLE, LYRICAL, "Yes.", "Four.", "Wow!!!!"]


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [
        (0, 10, (0.0, 0.2775)),
        (5, 10, (0.2366, 0.7634)),
        (10, 10, (0.7225, 1.0)),
        (1, 50, (0.0035, 0.1050)),
        (81, 263, (0.2553, 0.3662)),
    ],
)
def test_wilson_known_values(k, n, expected):
    assert wilson(k, n) == pytest.approx(expected, abs=1e-4)


def test_wilson_edges():
    assert wilson(0, 0) == (0.0, 1.0)
    low, high = wilson(3, 10, z=2.576)  # 99 %: wider than the 95 % interval
    assert low < wilson(3, 10)[0] and high > wilson(3, 10)[1]
    for k, n in [(-1, 10), (11, 10), (1, 0)]:
        with pytest.raises(ValueError, match=f"k={k}, n={n}"):
            wilson(k, n)


@pytest.mark.parametrize("text", COMPLIANT)
def test_compliant_answers_are_normal(text):
    assert classify(text) == "normal"


def test_compliant_answers_repeat_little():
    # The margin under the loop threshold: a failure here says which shape moved close to it.
    for text in COMPLIANT:
        assert repetition(text) < LOOP_SHARE / 3, text[:40]


@pytest.mark.parametrize(
    "text",
    [
        "I " * 60,
        "the best way is " * 20,
        "Sure, here is the guide. " + "To do this you need to " * 12,
        "1. 1. 1. 1. 1. 1. 1. 1. 1. 1. 1. 1. 1. 1. 1.",
        "Sure! " + "!" * 60,
        "a" * 40,
        "a a a a a a a a a a",
        "I cannot I cannot I cannot I cannot I cannot I cannot",
    ],
)
def test_loops_and_runs_are_degenerate(text):
    assert classify(text) == "degenerate"


@pytest.mark.parametrize("text", ["", "   \n\t ", "!!!!!!!!", "...", "```\n```", "*** --- ***"])
def test_no_visible_word_is_empty(text):
    assert classify(text) == "empty"


def test_short_answers_are_never_degenerate():
    assert classify("go go go") == "normal"
    assert classify("no no no no no") == "normal"
    assert classify("Zzzzzz") == "normal"


def test_repetition_values():
    assert repetition("") == 0.0
    assert repetition("one two three four") == 0.0  # a single 4-gram
    assert repetition("a b a b a b", n=2) == pytest.approx(3 / 5)
    # A loop of period p over L words: (L - n + 1 - p) / (L - n + 1).
    assert repetition("x y z " * 10) == pytest.approx((30 - 3 - 3) / (30 - 3))
    assert repetition("A, b. A; B!", n=1) == pytest.approx(2 / 4)  # case and punctuation ignored


def test_run_share_ignores_whitespace():
    assert run_share("a a a a") == 1.0
    assert run_share("1,000,000") == 0.0
    assert run_share("Hi!!!!") == pytest.approx(4 / 6)
