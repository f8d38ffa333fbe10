"""apk version comparison, the algorithm of apk-tools 2.x (``src/version.c``).

A version is Gentoo-like: ``digits{.digits}[letter]{_suffix[digits]}[-r<rev>]``.
The string is read as a sequence of typed tokens; two versions are compared
token by token (type first, then value). Pre-release suffixes (_alpha, _beta,
_pre, _rc) sort before the bare version, post-release ones (_cvs, _svn, _git,
_hg, _p) after it. Components after a ``.`` that start with ``0`` sort below
those that do not (``1.01 < 1.1``), as apk does. ``~`` (fuzzy) matches when the
wanted version is a token prefix of the package's (``~1.2`` matches ``1.2.3``).
"""

from __future__ import annotations

from functools import cmp_to_key

# Token types in apk's order; a later type in the same position sorts lower.
INVALID, DIGIT_OR_ZERO, DIGIT, LETTER, SUFFIX, SUFFIX_NO, REVISION_NO, END = range(-1, 7)

PRE_SUFFIXES = ("alpha", "beta", "pre", "rc")
POST_SUFFIXES = ("cvs", "svn", "git", "hg", "p")

LESS, EQUAL, GREATER = 1, 2, 4
UNCOMPARABLE = LESS | EQUAL | GREATER

# Transitions that go "backwards" in the token order but are still valid.
_ALLOWED_BACK = {(DIGIT_OR_ZERO, DIGIT), (SUFFIX, SUFFIX_NO), (DIGIT, LETTER)}


class _Reader:
    """A cursor over a version string that yields (type, value) tokens."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.type = DIGIT

    def _left(self) -> int:
        return len(self.s) - self.i

    def _classify_next(self) -> None:
        """Decide the type of the token at the cursor, consuming any separator."""
        prev, s, i = self.type, self.s, self.i
        if i >= len(s) or s[i] == "\0":
            new = END
        elif prev in (DIGIT, DIGIT_OR_ZERO) and s[i].islower() and s[i].isascii():
            new = LETTER
        elif prev == LETTER and s[i].isdigit():
            new = DIGIT
        elif prev == SUFFIX and s[i].isdigit():
            new = SUFFIX_NO
        else:
            new = INVALID
            if s[i] == ".":
                new = DIGIT_OR_ZERO
            elif s[i] == "_":
                new = SUFFIX
            elif s[i] == "-" and i + 1 < len(s) and s[i + 1] == "r":
                new = REVISION_NO
                self.i += 1
            self.i += 1
        if new < prev and (new, prev) not in _ALLOWED_BACK:
            new = INVALID
        self.type = new

    def _read_digits(self) -> int:
        value = 0
        while self.i < len(self.s) and self.s[self.i] in "0123456789":
            value = value * 10 + int(self.s[self.i])
            self.i += 1
        return value

    def _read_suffix(self) -> int | None:
        rest = self.s[self.i :]
        for n, word in enumerate(PRE_SUFFIXES):
            if rest.startswith(word):
                self.i += len(word)
                return n - len(PRE_SUFFIXES)
        for n, word in enumerate(POST_SUFFIXES):
            if rest.startswith(word):
                self.i += len(word)
                return n
        return None

    def take(self) -> int:
        """Read the value of the current token and classify the next one."""
        if self._left() <= 0:
            self.type = END
            return 0
        forced_next = None
        kind = self.type
        if kind == DIGIT_OR_ZERO and self.s[self.i] == "0":
            # A component after "." that starts with "0" yields an extra token:
            # minus the number of zeros before the last one (so "1.0" > "1.00"
            # and "1.01" > "1.001"); the digits from that last zero on follow
            # as an ordinary number. This is what apk-tools 2.14 does (checked
            # against `apk version -t`, see tests/test_alpine_version.py).
            start = self.i
            while self.i + 1 < len(self.s) and self.s[self.i + 1] == "0":
                self.i += 1
            value, forced_next = -(self.i - start), DIGIT
        elif kind in (DIGIT_OR_ZERO, DIGIT, SUFFIX_NO, REVISION_NO):
            value = self._read_digits()
        elif kind == LETTER:
            value = ord(self.s[self.i])
            self.i += 1
        elif kind == SUFFIX and (suffix := self._read_suffix()) is not None:
            value = suffix
        else:
            self.type = INVALID
            return -1
        if self._left() == 0:
            self.type = END
        elif forced_next is not None:
            self.type = forced_next
        else:
            self._classify_next()
        return value


def compare(a: str | None, b: str | None, *, fuzzy: bool = False) -> int:
    """Compare two versions: return LESS, EQUAL or GREATER (apk's bit values).

    ``None`` stands for "no version" (an unversioned provide): it is
    UNCOMPARABLE with anything but another ``None``, so it satisfies every
    operator, as in apk.
    """
    if a is None or b is None:
        return EQUAL if a is None and b is None else UNCOMPARABLE
    ra, rb = _Reader(a), _Reader(b)
    av = bv = 0
    while ra.type == rb.type and ra.type not in (END, INVALID) and av == bv:
        av = ra.take()
        bv = rb.take()
    if av != bv:
        return LESS if av < bv else GREATER
    if ra.type == rb.type or (fuzzy and rb.type == END):
        return EQUAL
    # Equal so far; the longer one is newer unless what follows is a pre-release suffix.
    if ra.type == SUFFIX and _peek_suffix(ra) < 0:
        return LESS
    if rb.type == SUFFIX and _peek_suffix(rb) < 0:
        return GREATER
    if ra.type > rb.type:
        return LESS
    if rb.type > ra.type:
        return GREATER
    return EQUAL


def _peek_suffix(reader: _Reader) -> int:
    probe = _Reader(reader.s)
    probe.i, probe.type = reader.i, reader.type
    return probe.take()


def is_valid(version: str) -> bool:
    """True when apk would accept ``version`` (it parses to the end)."""
    reader = _Reader(version)
    while reader.type not in (END, INVALID):
        reader.take()
    return reader.type == END


def sort_key(version: str):
    """A key for ``sorted()`` that orders versions as apk does (oldest first)."""
    return cmp_to_key(_cmp)(version)


def _cmp(a: str, b: str) -> int:
    result = compare(a, b)
    return -1 if result == LESS else (1 if result == GREATER else 0)
