"""Offline caption safety filter: evasion-resistant normalisation plus curated word lists.

What counts as unsafe is data, not code: each file in ``lists/`` starts with its policy. Verdict categories
are ``minors``, ``sexual``, ``hate``, ``self_harm``, ``violence`` and any category a user blocklist adds
(``custom`` by default). The other lists are signals, not categories (see ``SIGNALS``): harmless alone, a
caption with terms from both sides of a rule in ``COMBINATIONS`` gets that rule's verdict. So a minor term
(child, teen, 12yo) with a sexual, suggestive, injury or abuse term gives ``minors``; a harm subject (man,
dog, skull) with an injury or cruelty cue (beaten, crushed, set on fire) gives ``violence``; a self reference
(herself, own) with an injury cue or a means of harm gives ``self_harm``, and so does a farewell (goodbye
letter) with a means; a protected group with a dehumanising cue ("as rats") or an injury gives ``hate``, and
so does an extremist symbol with a glorifying cue (swastika, proudly). Acts whose words are harmless next to
a thing (kicking, burning, shooting: harm_act.txt) count only when done to what follows them, the next word
in the same clause past fillers, descriptive words and possessives: "kicking a pregnant dog" and "slitting a
merchant's throat" hit, "kicking a ball", "shooting a portrait of a man" and "cutting a man's hair" do not.
Direct hits of a category rank below the minors rules and above the others.

An entry word ending in "~" also matches its regular -s, -ed and -ing forms ("stab~": stabs, stabbed,
stabbing); a trailing "*" matches any word starting with the entry's last word.

Matching is whole-word on the normalised caption, so "Sussex", "cocktail" and "therapist" never hit.
Evasions handled: case, fullwidth and styled letters (NFKD compatibility folding, which includes NFKC's),
accents and combining marks, Cyrillic/Greek/small-cap look-alikes, zero-width and other invisible
characters, leetspeak (ambiguous symbols are tried every way: "1" as i and l, "*" as any vowel or nothing),
letters spelled out with separators ("n u d e", "s.e.x", "n-u-d-e"), words split by a hyphen or dot
("sui-cide"), and repeated letters (each letter of a term matches one or more copies, so "nuuuude" hits
"nude" while "as" still does not hit "ass").
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from itertools import groupby, islice, product
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

from styleprefs.errors import StyleprefsError

MINORS = "minors"
SEXUAL = "sexual"
MINOR_CONTEXT = "minor_context"
SUGGESTIVE = "suggestive"
INJURY = "injury"
ABUSE = "abuse"
HARM_ACT = "harm_act"
SIGNALS = frozenset({MINOR_CONTEXT, SUGGESTIVE, INJURY, ABUSE, HARM_ACT, "harm_subject", "self_reference",
                     "harm_means", "hate_target", "contempt", "extremism", "glorification", "despair"})


class Combination(NamedTuple):
    """A caption with a term from ``subject`` and one from any of ``cues`` gets the verdict ``category``. An
    ``acted_on`` rule asks more: the cue (an act) must come just before the subject term, which is what it is
    done to ("kicking a dog", "kicking a pregnant dog", "cutting a man's throat"), in the same clause."""

    category: str
    subject: str
    cues: tuple[str, ...]
    acted_on: bool = False


MINOR_COMBINATIONS = (
    Combination(MINORS, MINOR_CONTEXT, (SEXUAL, SUGGESTIVE)),
    Combination(MINORS, MINOR_CONTEXT, (INJURY, ABUSE, "violence", "self_harm")),
    Combination(MINORS, MINOR_CONTEXT, (HARM_ACT,), acted_on=True),
)
CUE_COMBINATIONS = (
    Combination("self_harm", "self_reference", (INJURY, "harm_means")),
    Combination("self_harm", "self_reference", (HARM_ACT,), acted_on=True),
    Combination("self_harm", "despair", ("harm_means",)),
    Combination("hate", "hate_target", ("contempt", INJURY)),
    Combination("hate", "hate_target", (HARM_ACT,), acted_on=True),
    Combination("hate", "extremism", ("glorification", "contempt", INJURY)),
    Combination("violence", "harm_subject", (INJURY,)),
    Combination("violence", "harm_subject", (HARM_ACT,), acted_on=True),
)
COMBINATIONS = MINOR_COMBINATIONS + CUE_COMBINATIONS
CUSTOM = "custom"
_ALLOW = "<allow>"  # not a valid category name, so no user list can collide with it
# Verdict priority when a caption hits several categories; user categories come after these.
PRIORITY = (SEXUAL, "hate", "self_harm", "violence")

LISTS_DIR = Path(__file__).with_name("lists")
DEFAULT_ALLOWLIST = LISTS_DIR / "allowlist.txt"

# Ignored inside phrases so that "slit throat" also matches "slit her throat".
_FILLERS = frozenset({"a", "an", "the", "her", "his", "my", "their", "your", "its", "our"})
# Words that may stand between an act and what it is done to ("kicking a little dog", "drowning a black cat").
_DESCRIPTIVE = frozenset({"all", "little", "small", "tiny", "big", "young", "old", "poor", "cute", "fluffy", "black",
                          "white", "brown", "grey", "gray", "ginger", "spotted", "striped"})
# Punctuation between two words that starts a new clause: "photo shoot, woman in red" shoots no one.
_CLAUSE_BREAK = re.compile(r"[,;:()\[\]/\n]|[.?]\s")
_INFLECTED = re.compile(r"([a-z]+)~(?=\s|$)")

_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\U000e0000-\U000e007f]"
)
# Capitals are listed too: Greek capital eta looks like H but lowercases to a letter that looks like n.
_CONFUSABLES = str.maketrans({
    **dict.fromkeys("аАɑα", "a"), **dict.fromkeys("вВьЬβΒʙ", "b"), **dict.fromkeys("сСᴄϲ", "c"),
    **dict.fromkeys("ԁđðᴅ", "d"), **dict.fromkeys("еЕεΕᴇ€", "e"), **dict.fromkeys("ꜰ", "f"),
    **dict.fromkeys("ɡɢ", "g"), **dict.fromkeys("нНһΗʜħ", "h"), **dict.fromkeys("іІιΙıɩɪ¡", "i"),
    **dict.fromkeys("јЈȷᴊ", "j"), **dict.fromkeys("кКκΚᴋ", "k"), **dict.fromkeys("ӏłʟ", "l"),
    **dict.fromkeys("мМΜᴍ", "m"), **dict.fromkeys("пηΝɴ", "n"), **dict.fromkeys("оОοΟσᴏø", "o"),
    **dict.fromkeys("рРρΡᴘ", "p"), **dict.fromkeys("ԛ", "q"), **dict.fromkeys("гʀ", "r"),
    **dict.fromkeys("ѕЅꜱ", "s"), **dict.fromkeys("тТτΤᴛŧ", "t"), **dict.fromkeys("υμᴜ", "u"),
    **dict.fromkeys("νᴠ", "v"), **dict.fromkeys("шщԝωᴡ", "w"), **dict.fromkeys("хХχΧ", "x"),
    **dict.fromkeys("уУγΥүʏ", "y"), **dict.fromkeys("Ζƶᴢ", "z"), "æ": "ae", "œ": "oe",
})
# Leetspeak readings per symbol, the usual one first (it is what normalise() shows).
_LEET: dict[str, tuple[str, ...]] = {
    "0": ("o",), "1": ("i", "l"), "3": ("e",), "4": ("a",), "5": ("s",), "6": ("g", "b"), "7": ("t",),
    "8": ("b",), "9": ("g",), "@": ("a",), "$": ("s",),
    "!": ("", "i"), "|": ("", "l", "i"), "+": ("", "t"), "*": ("", "o", "a", "e", "i", "u"),
}
_MAX_VARIANTS = 64
_CHARS = "a-z0-9@$!|+*"  # what a token is made of: letters, digits and leetspeak symbols
_TOKEN = re.compile(f"[{_CHARS}]+")
_HAS_ALNUM = re.compile(r"[a-z0-9]")
_MAX_SPACED_GAP = 3
# Three one-character tokens in a row, 1-3 separators apart: letters written apart ("n u d e", "s.e.x").
_SPACED_RUN = re.compile(
    f"(?<![{_CHARS}])[{_CHARS}](?:[^{_CHARS}]{{1,{_MAX_SPACED_GAP}}}[{_CHARS}]){{2}}(?![{_CHARS}])"
)
_IN_WORD_SEPARATORS = "-._"
_GLUED = re.compile(f"[{_CHARS}][-._][{_CHARS}]")
# Sizes and counts such as "8k", "3d", "35mm", "1990s", "12yo" are never leetspeak.
_TECHNICAL = re.compile(r"\d+(?:k|d|mm|cm|px|p|fps|s|th|st|nd|rd|x|yo|hz|mp)?")
_DOUBLE = re.compile(r"(.)\1")
_TRIPLES = re.compile(r"([a-z])\1{2,}")
_CATEGORY_NAME = re.compile(r"[a-z][a-z0-9_]*")
_VOWELS = "aeiou"
_VOWEL_GROUP = re.compile("[aeiou]+")


@dataclass(frozen=True)
class TextVerdict:
    """``term`` is the list entry that matched; for a combination rule it is ``"<subject term> + <cue term>"``."""

    unsafe: bool
    category: str | None
    term: str | None


SAFE = TextVerdict(False, None, None)


class _Token(NamedTuple):
    text: str
    spaced: bool  # joined from letters written apart ("n u d e"): word boundaries inside are unknown
    start: int
    end: int


class _Words(NamedTuple):
    """A caption cut into words; ``spaced`` holds the positions of words joined from letters written apart,
    ``compounds`` the chains of words glued by a hyphen, dot or underscore as (first, end, joined text)."""

    texts: list[str]
    spaced: frozenset[int]
    compounds: list[tuple[int, int, str]]


def _fold_chars(text: str) -> str:
    if text.isascii():
        return text.lower()
    text = unicodedata.normalize("NFKD", _INVISIBLE.sub("", text))
    text = "".join(c for c in text if not unicodedata.combining(c))
    return text.translate(_CONFUSABLES).casefold().translate(_CONFUSABLES)


def _words(folded: str) -> _Words:
    spaced_letters, glued = _SPACED_RUN.search(folded), _GLUED.search(folded)
    if not spaced_letters and not glued:  # most captions: plain words only
        texts = [t for t in _TOKEN.findall(folded) if t.isalnum() or _HAS_ALNUM.search(t)]
        return _Words(texts, frozenset(), [])
    tokens = _tokens(folded) if spaced_letters else _plain_tokens(folded)
    spaced = frozenset(i for i, t in enumerate(tokens) if t.spaced)
    return _Words([t.text for t in tokens], spaced, _compounds(folded, tokens) if glued else [])


def _plain_tokens(folded: str) -> list[_Token]:
    matches = (m for m in _TOKEN.finditer(folded) if _HAS_ALNUM.search(m.group()))
    return [_Token(m.group(), False, m.start(), m.end()) for m in matches]


def _tokens(folded: str) -> list[_Token]:
    """Tokens with runs of letters written apart joined into one spaced token."""
    tokens: list[_Token] = []
    run: list[_Token] = []  # consecutive one-character tokens
    for m in _TOKEN.finditer(folded):
        token = _Token(m.group(), False, m.start(), m.end())
        if len(token.text) == 1 and run and token.start - run[-1].end <= _MAX_SPACED_GAP:
            run.append(token)
            continue
        tokens += _join_spaced(run)
        run = [token] if len(token.text) == 1 else []
        if not run:
            tokens.append(token)
    tokens += _join_spaced(run)
    return [t for t in tokens if _HAS_ALNUM.search(t.text)]


def _join_spaced(run: list[_Token]) -> list[_Token]:
    if len(run) < 3:
        return run
    text = "".join(t.text for t in run)
    if sum(c.isalpha() for c in text) < 2:
        return run
    return [_Token(text, True, run[0].start, run[-1].end)]


def _compounds(folded: str, tokens: Sequence[_Token]) -> list[tuple[int, int, str]]:
    """Chains of tokens glued by one hyphen, dot or underscore ("sui-cide"), as (first, end, text)."""
    chains: list[tuple[int, int, str]] = []
    first = 0
    for i in range(1, len(tokens) + 1):
        glued = i < len(tokens) and tokens[i].start - tokens[i - 1].end == 1 \
            and folded[tokens[i - 1].end] in _IN_WORD_SEPARATORS
        if not glued:
            if i - first >= 2:
                chains.append((first, i, "".join(t.text for t in tokens[first:i])))
            first = i
    return chains


@lru_cache(maxsize=1 << 16)
def _variants(token: str) -> tuple[str, ...]:
    """Readings of one token, the usual leetspeak reading first."""
    if token.isalpha() or _TECHNICAL.fullmatch(token):
        return (token,)
    options = [_LEET.get(c, (c,)) for c in token]
    readings = ("".join(p) for p in islice(product(*options), _MAX_VARIANTS))
    found = dict.fromkeys(r for r in readings if r.isalpha())
    if token.isalnum():  # list entries may contain digits ("r34", "12yo")
        found[token] = None
    return tuple(found) or (token,)


_Shape = tuple[str, tuple[int, ...]]


def _shape(word: str) -> _Shape:
    """The word with each run of a letter squeezed to one, and the run lengths ("boobs" -> "bobs", 1,2,1,1)."""
    if not _DOUBLE.search(word):
        return word, (1,) * len(word)
    runs = [len(list(group)) for _, group in groupby(word)]
    return "".join(letter for letter, _ in groupby(word)), tuple(runs)


@lru_cache(maxsize=1 << 16)
def _shapes(token: str) -> tuple[_Shape, ...]:
    return tuple(_shape(reading) for reading in _variants(token))


def normalise(text: str) -> str:
    """The caption as the lists see it: words one space apart, in their usual leetspeak reading, with runs of
    three or more of a letter shortened to two. The matcher also tries the other leetspeak readings and lets
    each letter of a term match one or more copies, so "nuude" still hits "nude"."""
    words = (_variants(word)[0] for word in _words(_fold_chars(text)).texts)
    return _TRIPLES.sub(r"\1\1", " ".join(words))


@dataclass(frozen=True)
class _Word:
    key: str
    runs: tuple[int, ...]
    prefix: bool

    def matches(self, shape: _Shape) -> bool:
        key, runs = shape
        if not (key.startswith(self.key) if self.prefix else key == self.key):
            return False
        return all(have >= need for have, need in zip(runs, self.runs))


@dataclass(frozen=True)
class _Term:
    entry: str
    category: str
    words: tuple[_Word, ...]
    joined: str  # the words run together, for letters written apart


_Match = tuple[int, int, _Term]
_Hits = tuple[tuple[_Shape, tuple[_Term, ...]], ...]


class _Index:
    """Terms by their first word, looked up per token; phrases then check the following tokens."""

    _CACHE_LIMIT = 1 << 17

    def __init__(self, terms: Iterable[_Term]) -> None:
        self._exact: dict[str, list[_Term]] = {}
        self._prefix: dict[int, dict[str, list[_Term]]] = {}  # by prefix length
        self._joined: dict[int, dict[str, list[_Term]]] = {}  # by length
        for term in terms:
            first = term.words[0]
            if first.prefix:
                self._prefix.setdefault(len(first.key), {}).setdefault(first.key, []).append(term)
            else:
                self._exact.setdefault(first.key, []).append(term)
            self._joined.setdefault(len(term.joined), {}).setdefault(term.joined, []).append(term)
        # One C-level test that rejects the words no prefix entry can match, which is nearly all of them.
        self._any_prefix = re.compile("|".join(sorted({k for t in self._prefix.values() for k in t}, key=len,
                                                      reverse=True)) or "(?!)")
        self._hits: dict[str, _Hits] = {}  # per token: the readings that some term's first word may match

    def find(self, words: _Words) -> Iterator[_Match]:
        texts = words.texts
        for i, token_hits in enumerate(list(map(self._hits.get, texts))):
            for shape, terms in self._token_hits(texts[i]) if token_hits is None else token_hits:
                for term in terms:
                    end = _phrase_end(term, texts, i) if term.words[0].matches(shape) else None
                    if end is not None:
                        yield i, end, term
        for i in sorted(words.spaced):
            yield from ((i, i + 1, term) for term in self._inside(_variants(texts[i])))
        for first, end, joined in words.compounds:
            yield from ((first, end, term) for term in self._single_word_terms(joined))

    def _token_hits(self, text: str) -> _Hits:
        if len(self._hits) > self._CACHE_LIMIT:
            self._hits.clear()
        hits = ((shape, self._first_word_candidates(shape[0])) for shape in _shapes(text))
        found = self._hits[text] = tuple((shape, terms) for shape, terms in hits if terms)
        return found

    def _first_word_candidates(self, key: str) -> tuple[_Term, ...]:
        terms = list(self._exact.get(key, ()))
        if self._any_prefix.match(key):
            for length, table in self._prefix.items():
                terms += table.get(key[:length], ())
        return tuple(terms)

    def _single_word_terms(self, text: str) -> Iterator[_Term]:
        for shape, terms in self._token_hits(text):
            yield from (term for term in terms if len(term.words) == 1 and term.words[0].matches(shape))

    def _inside(self, readings: tuple[str, ...]) -> Iterator[_Term]:
        """Terms anywhere inside letters written apart: "a n u d e" has no word boundaries left."""
        for reading in readings:
            for length, table in self._joined.items():
                for start in range(len(reading) - length + 1):
                    yield from table.get(reading[start:start + length], ())


def _phrase_end(term: _Term, texts: Sequence[str], start: int) -> int | None:
    """Where ``term`` ends if its first word matched at ``start``, skipping filler words; None if it does not."""
    position = start + 1
    for word in term.words[1:]:
        position = _skip_fillers(texts, position)
        if position == len(texts) or not any(word.matches(shape) for shape in _shapes(texts[position])):
            return None
        position += 1
    return position


def _skip_fillers(texts: Sequence[str], position: int) -> int:
    while position < len(texts) and texts[position] in _FILLERS:
        position += 1
    return position


class TextFilter:
    """Flags unsafe captions. ``blocklists`` add terms (lines ``category<TAB>term`` or ``term``, which is
    category ``custom``); ``allowlists`` add phrases that are masked before matching. With
    ``replace_default`` the built-in lists, including the built-in allowlist, are not loaded."""

    def __init__(self, blocklists: Sequence[Path] = (), allowlists: Sequence[Path] = (),
                 replace_default: bool = False) -> None:
        sources = [] if replace_default else [(p, p.stem) for p in _default_blocklists()]
        sources += [(Path(p), CUSTOM) for p in blocklists]
        terms = [term for path, category in sources for term in _read_terms(path, category)]
        allow_paths = ([] if replace_default else [DEFAULT_ALLOWLIST]) + [Path(p) for p in allowlists]
        allowed = [term for path in allow_paths for term in _read_terms(path, None)]
        self._index = _Index(terms + allowed)
        self._order = _category_order(term.category for term in terms)

    def check(self, text: str) -> TextVerdict:
        folded = _fold_chars(text)
        words = _words(folded)
        matches = list(self._index.find(words))
        if not matches:
            return SAFE
        # An allowlisted phrase masks its words: any term overlapping it is dropped.
        masked = {i for start, end, term in matches if term.category == _ALLOW for i in range(start, end)}
        found = _Found(folded, words.texts)
        for start, end, term in matches:
            if term.category != _ALLOW and masked.isdisjoint(range(start, end)):
                found.spans.setdefault(term.category, []).append((start, end, term.entry))
        return self._decide(found)

    def check_many(self, texts: Iterable[str]) -> list[TextVerdict]:
        return [self.check(text) for text in texts]

    def _decide(self, found: _Found) -> TextVerdict:
        if MINORS in found.spans:
            return TextVerdict(True, MINORS, found.first(MINORS))
        direct = next((TextVerdict(True, c, found.first(c)) for c in self._order if c in found.spans), None)
        return _combined(found, MINOR_COMBINATIONS) or direct or _combined(found, CUE_COMBINATIONS) or SAFE


_Span = tuple[int, int, str]  # first word, end, list entry


@dataclass
class _Found:
    """The unmasked matches of one caption by category, in the order the index found them."""

    folded: str
    texts: list[str]
    spans: dict[str, list[_Span]] = field(default_factory=dict)

    def first(self, category: str) -> str:
        return self.spans[category][0][2]

    def object_of(self, end: int, subject: str) -> str | None:
        """The ``subject`` entry that an act ending at word ``end`` is done to: the word after it, past descriptive
        words ("kicking a little dog"), and past a possessive to what follows ("slitting a merchant's throat", not
        "cutting a man's hair")."""
        objects = {start: (stop, entry) for start, stop, entry in reversed(self.spans.get(subject, []))}
        for position in self._object_positions(end):
            object_end, entry = objects.get(position, (position + 1, None))
            if object_end < len(self.texts) and self.texts[object_end] == "s":
                return self.object_of(object_end + 1, subject)
            if entry:
                return entry
        return None

    def _object_positions(self, end: int) -> Iterator[int]:
        """The next word after ``end`` in the same clause, past fillers, and the next again past a descriptive word."""
        position = _skip_fillers(self.texts, end)
        while position < len(self.texts) and self.breaks.isdisjoint(range(end, position + 1)):
            yield position
            if self.texts[position] not in _DESCRIPTIVE:
                return
            end = position + 1
            position = _skip_fillers(self.texts, end)

    @cached_property
    def breaks(self) -> frozenset[int]:
        """Positions of the words that start a clause (after a comma, a full stop and the like)."""
        tokens = _tokens(self.folded) if _SPACED_RUN.search(self.folded) else _plain_tokens(self.folded)
        return frozenset(i for i in range(1, len(tokens))
                         if _CLAUSE_BREAK.search(self.folded, tokens[i - 1].end, tokens[i].start))


def _combined(found: _Found, rules: Sequence[Combination]) -> TextVerdict | None:
    """The verdict of the first rule whose subject and one of whose cues are both found (for an ``acted_on``
    rule: a cue done to a subject term)."""
    for rule in rules:
        if rule.subject in found.spans:
            term = _acted_on(found, rule) if rule.acted_on else _cooccurring(found, rule)
            if term:
                return TextVerdict(True, rule.category, term)
    return None


def _cooccurring(found: _Found, rule: Combination) -> str | None:
    cue = next((found.first(c) for c in rule.cues if c in found.spans), None)
    return f"{found.first(rule.subject)} + {cue}" if cue else None


def _acted_on(found: _Found, rule: Combination) -> str | None:
    for cue in rule.cues:
        for act in found.spans.get(cue, ()):
            target = found.object_of(act[1], rule.subject)
            if target:
                return f"{target} + {act[2]}"
    return None


def _default_blocklists() -> list[Path]:
    return sorted(p for p in LISTS_DIR.glob("*.txt") if p != DEFAULT_ALLOWLIST)


def _category_order(categories: Iterable[str]) -> tuple[str, ...]:
    seen = dict.fromkeys(c for c in categories if c != MINORS and c not in SIGNALS)
    return tuple(sorted(seen, key=lambda c: PRIORITY.index(c) if c in PRIORITY else len(PRIORITY)))


def _read_terms(path: Path, default_category: str | None) -> list[_Term]:
    """Terms of one list file; ``default_category`` None reads an allowlist (no categories allowed)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise StyleprefsError(f"list file {path}: not UTF-8 text") from None
    except OSError as exc:
        raise StyleprefsError(f"list file {path}: cannot read it ({exc.strerror or exc})") from None
    terms = []
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if line:
            terms += _parse_line(line, default_category, f"list file {path}, line {number}")
    return terms


def _parse_line(line: str, default_category: str | None, where: str) -> list[_Term]:
    fields = [field.strip() for field in line.split("\t")]
    if len(fields) == 1:
        return _parse_entry(fields[0], default_category or _ALLOW, where)
    if default_category is None:
        raise StyleprefsError(f"{where}: allowlist entries take no category (found a tab)")
    if len(fields) > 2:
        raise StyleprefsError(f"{where}: expected 'category<TAB>term' or 'term', found more than one tab")
    if not _CATEGORY_NAME.fullmatch(fields[0]):
        raise StyleprefsError(f"{where}: category must be one lowercase word like 'sexual' or 'my_terms', "
                              f"got {fields[0]!r}")
    return _parse_entry(fields[1], fields[0], where)


def _parse_entry(entry: str, category: str, where: str) -> list[_Term]:
    """The terms of one entry: one, or one per combination of inflections of the words marked with "~"."""
    prefix = entry.endswith("*")
    body = entry[:-1] if prefix else entry
    if "*" in body:
        raise StyleprefsError(f"{where}: '*' is only allowed at the end of an entry, got {entry!r}")
    marked = _INFLECTED.findall(body)
    if body.count("~") != len(marked) or (prefix and body.endswith("~")):
        raise StyleprefsError(f"{where}: '~' goes at the end of a lowercase word, not before '*' ({entry!r})")
    words = [word for word in _words(_fold_chars(body.replace("~", ""))).texts if word not in _FILLERS]
    if not words:
        raise StyleprefsError(f"{where}: entry {entry!r} has no words left after normalisation")
    if not all(w.isalnum() for w in words):
        raise StyleprefsError(f"{where}: write entries in plain letters and digits ({entry!r}); "
                              "leetspeak and look-alikes are handled by the matcher")
    forms = [_inflections(word) if word in marked else (word,) for word in words]
    return [_term(entry, category, variant, prefix) for variant in product(*forms)]


def _term(entry: str, category: str, words: Sequence[str], prefix: bool) -> _Term:
    shapes = [_shape(w) for w in words]
    parsed = tuple(_Word(key, runs, prefix and i == len(words) - 1) for i, (key, runs) in enumerate(shapes))
    return _Term(entry, category, parsed, "".join(words))


def _inflections(word: str) -> tuple[str, ...]:
    """``word`` and its regular -s, -ed and -ing forms ("stab": stabs, stabbed, stabbing; "strangle": strangles,
    strangled, strangling; "bury": buries, buried, burying). Irregular forms are listed as entries of their own."""
    if word.endswith("e") and not word.endswith("ee"):
        return word, word + "s", word + "d", word[:-1] + "ing"
    if word.endswith("y") and word[-2:-1] not in _VOWELS:
        return word, word[:-1] + "ies", word[:-1] + "ied", word + "ing"
    plural = word + ("es" if word.endswith(("s", "x", "z", "ch", "sh")) else "s")
    stem = word + word[-1] if _doubles_last_letter(word) else word
    return word, plural, stem + "ed", stem + "ing"


def _doubles_last_letter(word: str) -> bool:
    """One syllable ending in one vowel and one consonant doubles it before -ed and -ing (stab, cut, whip)."""
    return len(_VOWEL_GROUP.findall(word)) == 1 and len(word) >= 2 and word[-1] not in _VOWELS + "wxy" \
        and word[-2] in _VOWELS and (len(word) == 2 or word[-3] not in _VOWELS)
