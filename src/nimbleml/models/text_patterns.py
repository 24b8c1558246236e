"""Python's ``re`` token patterns rewritten for RE2, the engine of ONNX Runtime's Tokenizer.

In Python 3, ``\\w``, ``\\d`` and ``\\s`` are Unicode classes; in RE2 they are ASCII, so
scikit-learn's default ``(?u)\\b\\w\\w+\\b`` run as-is drops "é" and "東京" from tokens. The
classes are spelled out code point by code point from this interpreter's own tables.
"""

from __future__ import annotations

import functools
import sys

DEFAULT_PATTERNS = {  # Python patterns whose \b can be expressed without RE2's ASCII \b
    r"\b\w\w+\b": "[{w}]{{2,}}",
    r"\b\w+\b": "[{w}]+",
}


@functools.lru_cache(maxsize=4)
def char_class(kind: str) -> str:
    """The body of an RE2 character class holding exactly the code points Python's ``re``
    puts in ``\\w`` (``isalnum`` or ``_``), ``\\s`` (``isspace``) or ``\\d`` (``isdecimal``)
    in this interpreter. RE2's ``\\p{L}\\p{N}`` differs from Python's ``\\w`` on about 5,000
    code points (another Unicode version) and RE2's ``\\s`` misses 24 that Python counts
    (\\xa0, \\u2000-\\u200a, ...), so the classes are spelled out (\\w: 734 ranges, 12 kB)."""
    test = {
        "w": lambda c: c.isalnum() or c == "_",
        "s": str.isspace,
        "d": str.isdecimal,
    }[kind]
    ranges: list[tuple[int, int]] = []
    for cp in range(sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF or not test(chr(cp)):
            continue
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1] = (ranges[-1][0], cp)
        else:
            ranges.append((cp, cp))
    return "".join(f"\\x{{{a:x}}}" if a == b else f"\\x{{{a:x}}}-\\x{{{b:x}}}" for a, b in ranges)


def re2_pattern(pattern: str) -> str:
    """``token_pattern`` rewritten for RE2 with Python's Unicode ``\\w``, ``\\d``, ``\\s``.

    ``\\b`` stays as it is (RE2's is ASCII-only): the two patterns scikit-learn users
    almost always have (``\\b\\w\\w+\\b``, ``\\b\\w+\\b``) are maximal runs of word characters
    and are written that way; any other ``\\b`` is left for the verification to judge."""
    body = pattern.removeprefix("(?u)")
    if body in DEFAULT_PATTERNS:
        return DEFAULT_PATTERNS[body].format(w=char_class("w"))
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            esc = body[i + 1]
            if esc in "wds":
                cls = char_class(esc)
                out.append(cls if in_class else f"[{cls}]")
            elif esc in "WDS" and not in_class:
                out.append(f"[^{char_class(esc.lower())}]")
            else:
                out.append(body[i : i + 2])
            i += 2
            continue
        if ch == "[" and not in_class:
            in_class = True
            out.append(ch)
            if body[i + 1 : i + 2] == "^":
                out.append("^")
                i += 1
            if body[i + 1 : i + 2] == "]":  # a leading ] is a literal
                out.append("\\]")
                i += 1
        elif ch == "]" and in_class:
            in_class = False
            out.append(ch)
        else:
            out.append(ch)
        i += 1
    return "".join(out)
