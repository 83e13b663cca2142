"""The King James Bible from Debian's bible-kjv package, split by chapter.

The text comes from the `bible` program (package bible-kjv) reading the data
file of bible-kjv-text; nothing else is needed. Every chapter is one document:
its verses, without their numbers, joined by single spaces. A fixed 5% of the
chapters (every 20th, counting from the 11th) is held out and never trained on.
"""

import re
import subprocess

HELDOUT_EVERY = 20
HELDOUT_OFFSET = 10

_HEADING = re.compile(r"^(?P<book>[1-3]?[A-Za-z ]+?) (?P<chapter>\d+)$")
_VERSE = re.compile(r"^\s*(?P<verse>\d+) (?P<text>.*\S)\s*$")


def chapters():
    """Returns [(title, text)] for the 1189 chapters in canonical order."""
    out = subprocess.run(
        ["bible", "-l100000", "gen1:1-rev22:21"],
        check=True, capture_output=True, text=True,
    ).stdout
    result, title, verses = [], None, []
    for line in out.splitlines():
        if not line.strip():
            continue
        m = _HEADING.match(line)
        if m:
            if title is not None:
                result.append((title, " ".join(verses)))
            title, verses = line.strip(), []
            continue
        m = _VERSE.match(line)
        if not m or title is None:
            raise ValueError(f"unexpected line in bible output: {line!r}")
        verses.append(" ".join(m.group("text").split()))
    if title is not None:
        result.append((title, " ".join(verses)))
    if len(result) != 1189:
        raise ValueError(f"got {len(result)} chapters, want 1189")
    return result


def split():
    """Returns (train, heldout), each a list of (title, text)."""
    train, heldout = [], []
    for i, ch in enumerate(chapters()):
        (heldout if i % HELDOUT_EVERY == HELDOUT_OFFSET else train).append(ch)
    return train, heldout
