# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""Reading a model's free-text answer the way the benchmarks' scorers do (docs/eval.md).

* ``option_letter``: the option a multiple-choice answer picks (``"B"``, ``" B"``, ``"B."``, ``"(B) cat"``,
  ``"The answer is B"``, or the text of an option), or None.
* ``yes_no_prefix``: MME's rule (the MME paper's ``calculation.py``): the answer is "yes" / "no" when it is
  that word, or when "yes" / "no" occurs in its first four characters; anything else is neither.
* ``vqa_normalize``: the answer normalisation of the VQA / TextVQA evaluators (lower case, punctuation,
  number words to digits, articles, contractions), written from their documented rules.
* the prompt suffixes of the MoAI / LLaVA-1.5 evaluation (MoAI paper, arXiv 2403.07508, Appendix; LLaVA-1.5
  docs/Evaluation.md) and ``strip_suffix`` to take them off questions files that already carry them.
"""

from __future__ import annotations

import re
import string

#: Short-answer instruction (POPE, TextVQA, GQA; LLaVA's MME question file carries it too).
SHORT_ANSWER = "Answer the question using a single word or phrase."
#: Multiple-choice instruction (ScienceQA, SEED, Q-Bench, AI2D, MMBench).
OPTION_LETTER = "Answer with the option's letter from the given choices directly."
#: MMBench-CN's multiple-choice instruction.
OPTION_LETTER_CN = "请直接回答选项字母。"

LETTERS = string.ascii_uppercase


def strip_suffix(text: str, suffix: str) -> str:
    """``text`` without a trailing ``suffix`` (and the whitespace before it); unchanged when absent."""
    text = text.rstrip()
    return text[: -len(suffix)].rstrip() if text.endswith(suffix) else text


def format_options(options: list[str]) -> str:
    """``"A. first\\nB. second"``: the options one a line, lettered from A (LLaVA-1.5's layout)."""
    return "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(options))


def choice_prompt(question: str, options: list[str], instruction: str = OPTION_LETTER) -> str:
    """``question``, the lettered options and the instruction, one block per line."""
    return f"{question}\n{format_options(options)}\n{instruction}"


_BARE = re.compile(r"^[(\[]?([A-Za-z])[)\].:：,]?$")
_LEADING = re.compile(r"^[(\[]?([A-Z])(?:[)\].:：]|\s*$)")
_STATED = re.compile(r"(?i:answer|option|choice)\s*(?:is|:|：)?\s*[(\[]?([A-Z])(?![A-Za-z'])")
_STANDALONE = re.compile(r"(?<![A-Za-z'])([A-Z])(?![A-Za-z'])")


def option_letter(text: str, options: list[str]) -> str | None:
    """The letter of the option ``text`` picks among ``options`` (A, B, ...), or None.

    Tried in order: the answer is a letter alone (``"B"``, ``"(B)"``, ``"B."``, ``"b"``); it starts with
    a capital letter followed by ``.``, ``)`` or ``:`` (``"B. cat"``, ``"(B) cat"``); it states one
    (``"The answer is B"``, ``"Answer: (B)"``); it is the text of exactly one option, ignoring case and a
    final period; it names exactly one valid letter as a word of its own, not counting an article "A"
    before a lower-case word (``"I think C"``, but not ``"A cat"``). A letter outside the options is no
    answer.
    """
    valid = LETTERS[: len(options)]
    text = text.strip()
    for pattern in (_BARE, _LEADING):
        match = pattern.match(text)
        if match:
            return match.group(1).upper() if match.group(1).upper() in valid else None
    match = _STATED.search(text)
    if match and match.group(1) in valid:
        return match.group(1)
    plain = text.rstrip(".").strip().lower()
    same = [LETTERS[i] for i, option in enumerate(options) if plain and option.strip().lower() == plain]
    if len(same) == 1:
        return same[0]
    found = set()
    for match in _STANDALONE.finditer(text):
        after = text[match.end() : match.end() + 2]
        if match.group(1) == "A" and len(after) == 2 and after[0] == " " and after[1].islower():
            continue  # the article "A", as in "A cat"
        found.add(match.group(1))
    found &= set(valid)
    return found.pop() if len(found) == 1 else None


def yes_no_prefix(text: str) -> str | None:
    """``"yes"`` / ``"no"`` by MME's rule (the whole answer, else the first four characters), or None."""
    text = text.strip().lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return None


# --- VQA answer normalisation (the VQA evaluation page, as the TextVQA / m4c evaluator applies it) ---------

_SPACED_PUNCTUATION = ';/[]"{}()=+\\_->@`?!<'
_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
#: Contractions written without their apostrophe, as answers often are. Words that are English words
#: without the apostrophe too (its, lets, were, well, hell, ill, id, shed, wed, shell) are left as they are.
_CONTRACTIONS = {
    w.replace("'", ""): w
    for w in (
        "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't "
        "haven't he'd he'd've he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll ma'am"
        " mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't shan't "
        "she'd've she's should've shouldn't shouldn't've somebody'd somebody'll somebody's someone'd "
        "someone'll someone's something'd something'll something's that's there'd there're there's "
        "they'd they'll they're they've 'twas wasn't we'd've we've weren't what'll what're what's "
        "what've when's where'd where's where've who'd who'll who's who've why'll why're why's won't "
        "would've wouldn't wouldn't've y'all you'd you'll you're you've"
    ).split()
}
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d)")
_PERIOD = re.compile(r"\.(?!\d)")


def vqa_normalize(answer: str) -> str:
    """An answer as the VQA / TextVQA evaluators compare it.

    Lower case; newlines and tabs become spaces; commas and question marks are dropped and ``'s`` is split
    off as its own word (the m4c evaluator's tokenisation). Each other punctuation mark is deleted where it
    touches a space and turned into a space elsewhere (``"t-shirt"`` -> ``"t shirt"``); a period is dropped
    unless a digit follows (``"3.5"`` stays). Then, word by word: number words zero..ten (and "none") become
    digits, the articles a / an / the are removed, contractions missing their apostrophe get it back
    (``"dont"`` -> ``"don't"``); words are joined by single spaces.
    """
    text = answer.lower().replace("\n", " ").replace("\t", " ")
    text = _DIGIT_COMMA.sub("", text).replace(",", "").replace("?", "").replace("'s", " 's").strip()
    for mark in _SPACED_PUNCTUATION:
        if mark in text:
            touches_space = f"{mark} " in text or f" {mark}" in text
            text = text.replace(mark, "" if touches_space else " ")
    text = _PERIOD.sub("", text)
    words = []
    for word in text.split():
        word = _NUMBER_WORDS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)
