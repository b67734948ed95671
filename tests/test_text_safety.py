"""Offline caption safety filter: normalisation, word boundaries, categories, user lists, labelled-set metrics."""

from __future__ import annotations

import importlib.util
import pickle
import sys
from pathlib import Path

import pytest

from styleprefs.errors import StyleprefsError
from styleprefs.safety.text import LISTS_DIR, TextFilter, TextVerdict, normalise

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def text_filter() -> TextFilter:
    return TextFilter()


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


@pytest.mark.parametrize(("text", "expected"), [
    ("A NUDE Woman", "a nude woman"),
    ("ｎｕｄｅ", "nude"),                       # fullwidth
    ("𝐧𝐮𝐝𝐞 ⓝⓤⓓⓔ", "nude nude"),               # styled and circled letters
    ("nüdé séx", "nude sex"),                   # accents
    ("nud\u0435 n\u03b1ked", "nude naked"),     # Cyrillic e, Greek alpha
    ("ɴꜱꜰᴡ", "nsfw"),                           # small capitals
    ("nu\u200bde na\u00adked", "nude naked"),   # zero-width space, soft hyphen
    ("n̶u̶d̶e̶", "nude"),                           # combining strokes
    ("n00d s3x n@ked $ex", "nood sex naked sex"),  # leetspeak, usual reading
    ("n u d e", "nude"),
    ("s.e.x", "sex"),
    ("n-u-d-e", "nude"),
    ("s_e_x", "sex"),
    ("n / u / d / e", "nude"),
    ("nuuuude sexxxy", "nuude sexxy"),          # runs of 3+ shortened to 2
    ("8k, 35mm, 1990s, 12yo", "8k 35mm 1990s 12yo"),  # sizes and counts are not leetspeak
])
def test_normalise(text: str, expected: str) -> None:
    assert normalise(text) == expected


@pytest.mark.parametrize(("text", "category"), [
    ("NUDE woman, oil painting", "sexual"),
    ("ｎｕｄｅ anime girl", "sexual"),
    ("𝓭𝓮𝓬𝓪𝓹𝓲𝓽𝓪𝓽𝓮𝓭 warrior", "violence"),
    ("nüdë goddess", "sexual"),
    ("p\u043e\u043ern actress", "sexual"),      # Cyrillic o twice: letters may repeat
    ("\u0455uicide", "self_harm"),
    ("nu\u200dde woman", "sexual"),
    ("n0od girl", "sexual"),
    ("k1ll myself", "self_harm"),               # 1 read as i
    ("f1ayed man", "violence"),                 # 1 read as l
    ("p*rn poster", "sexual"),                  # * read as a vowel
    ("n*u*d*e model", "sexual"),                # * read as nothing
    ("nude!!! model", "sexual"),                # trailing ! is punctuation, not i
    ("n u d e woman", "sexual"),
    ("a n u d e girl", "sexual"),               # letters written apart lose word boundaries
    ("h e i l h i t l e r", "hate"),            # a phrase written apart
    ("s.e.x on a bed", "sexual"),
    ("d.i.s.m.e.m.b.e.r.e.d", "violence"),
    ("sui-cide scene", "self_harm"),            # a word split by a hyphen
    ("Nude_Woman_Painting", "sexual"),
    ("nuuuude woman", "sexual"),
    ("sexxxy naked elf", "sexual"),
    ("toppless mermaid", "sexual"),
    ("boooobs", "sexual"),
    ("woman in her birthday suit", "sexual"),   # euphemisms
    ("slit her throat", "violence"),            # filler words inside phrases
    ("woman taking her own life", "self_harm"),
])
def test_evasions_are_caught(text_filter: TextFilter, text: str, category: str) -> None:
    assert text_filter.check(text).category == category


HARMLESS = [
    "a watercolor map of Sussex", "Middlesex", "a cocktail on a bar", "Scunthorpe united",
    "shooting star over a lake", "olympic breaststroke", "therapist's office", "assassin's creed concept art",
    "data analysis", "a class of students", "bass guitar", "Dick Van Dyke dancing", "purple grapes",
    "cast iron skillet", "hello kitty", "cumulus clouds", "antique sextant", "peacock feathers",
    "shiitake mushrooms", "a red button", "spice market", "execute a plan", "kill the lights",
    "bloody mary cocktail", "zombie in a ruined city", "a human skull", "knight with a sword",
    "epic battle scene", "the battle of waterloo", "woman in a bikini on a beach", "sexy woman in a red dress",
    "nude color lipstick", "nude heels and a beige coat", "a frog rapping into a microphone", "niger river delta",
    "bob's burgers", "summa cum laude", "Al Gore speaking", "gore-tex jacket", "in the style of edward gorey",
    "a maine coon cat", "a knight with a chink in his armor", "suicide squad poster", "naked eye astronomy",
    "blue tits at a bird feeder", "breast cancer awareness", "children playing in a park",
    "12 year old boy flying a kite", "schoolgirl with a backpack", "gothic lolita fashion", "a nudibranch",
    "r2-d2 and c-3po", "f/1.4 85mm portrait", "alphabet blocks a b c", "s.w.a.t. team", "niggling doubts",
]


@pytest.mark.parametrize("text", HARMLESS)
def test_harmless_words_never_hit(text_filter: TextFilter, text: str) -> None:
    assert text_filter.check(text) == TextVerdict(False, None, None)


@pytest.mark.parametrize(("text", "category", "term"), [
    ("reclining nude, classical painting", "sexual", "nude*"),   # artistic nudity is still nudity
    ("dick pic", "sexual", "dick"),                               # the bare word is unsafe, the actor is not
    ("nsfw, masterpiece", "sexual", "nsfw*"),
    ("decapitated knight", "violence", "decapitat*"),
    ("guts spilling out", "violence", "guts spilling"),
    ("a k1ke caricature", "hate", "kike"),
    ("niggar in a field", "hate", "nigg*"),
    ("suicide note on a table", "self_harm", "suicide*"),
    ("loli art", "minors", "loli"),
])
def test_categories_and_terms(text_filter: TextFilter, text: str, category: str, term: str) -> None:
    assert text_filter.check(text) == TextVerdict(True, category, term)


@pytest.mark.parametrize(("text", "verdict"), [
    ("nude child on a bed", TextVerdict(True, "minors", "child + nude*")),
    ("sexy 12yo girl", TextVerdict(True, "minors", "12yo + sexy*")),                 # suggestive counts with a minor
    ("13 y.o. girl in lingerie", TextVerdict(True, "minors", "13 y o + lingerie")),
    ("a fourteen year old in a bikini", TextVerdict(True, "minors", "fourteen year old + bikini*")),
    ("teen girl, gore, nude", TextVerdict(True, "minors", "teen + nude*")),          # minors outranks the rest
    ("sexy woman in lingerie", TextVerdict(False, None, None)),                      # suggestive alone is safe
    ("kids building a sandcastle", TextVerdict(False, None, None)),                  # a minor alone is safe
])
def test_minors_combination(text_filter: TextFilter, text: str, verdict: TextVerdict) -> None:
    assert text_filter.check(text) == verdict


@pytest.mark.parametrize(("text", "verdict"), [
    ("a dog with its legs broken lying in the street", TextVerdict(True, "violence", "dog + legs broken")),
    ("man beaten with a bat until he bleeds", TextVerdict(True, "violence", "man + beaten")),
    ("toddler locked in a dog cage", TextVerdict(True, "minors", "toddler* + locked in")),
    ("a little boy with bruises on his arms", TextVerdict(True, "minors", "little boy* + bruises")),
    ("teen, decapitated", TextVerdict(True, "minors", "teen + decapitat*")),            # violence with a minor
    ("burning her own arm with a lighter", TextVerdict(True, "self_harm", "own + burning")),
    ("mexicans drawn as rats", TextVerdict(True, "hate", "mexican* + as rats")),
    ("a knight fighting a dragon", TextVerdict(False, None, None)),
    ("a child playing with a toy sword", TextVerdict(False, None, None)),
    ("kid dressed as a zombie, fake blood", TextVerdict(False, None, None)),            # allowlisted
    ("a boxer with a bloody nose", TextVerdict(False, None, None)),
    ("a man making whipped cream", TextVerdict(False, None, None)),
    ("a muslim family sharing a meal", TextVerdict(False, None, None)),
    ("crushed ice in a glass", TextVerdict(False, None, None)),                         # a cue alone is safe
])
def test_compositional_layer(text_filter: TextFilter, text: str, verdict: TextVerdict) -> None:
    assert text_filter.check(text) == verdict


@pytest.mark.parametrize(("text", "verdict"), [
    # an act counts only when done to what follows it, past fillers, descriptive words and possessives
    ("kicking a pregnant dog in the belly", TextVerdict(True, "violence", "pregnant + kicking")),
    ("burning a pigeon with a magnifying glass", TextVerdict(True, "violence", "pigeon* + burn~")),
    ("drowning a little black cat", TextVerdict(True, "violence", "cat + drown~")),
    ("a bandit slitting a merchant's throat", TextVerdict(True, "violence", "throat + slit~")),
    ("stepdad hitting a little boy in the face", TextVerdict(True, "minors", "little boy* + hitting")),
    ("woman cuts her own thighs in the bathroom", TextVerdict(True, "self_harm", "own + cuts")),
    ("beating up a gay couple while people cheer", TextVerdict(True, "hate", "gay + beat~ up")),
    ("a man beating eggs in a bowl", TextVerdict(False, None, None)),
    ("kids kicking a ball with their dog", TextVerdict(False, None, None)),
    ("photographer shooting a portrait of a man", TextVerdict(False, None, None)),
    ("a forest burning, deer running away", TextVerdict(False, None, None)),     # a comma ends the clause
    ("barber cutting a man's hair", TextVerdict(False, None, None)),
    ("a man drowning in paperwork, cartoon", TextVerdict(False, None, None)),
    ("woman with a pixie cut, portrait", TextVerdict(False, None, None)),
    ("one punch man fan art", TextVerdict(False, None, None)),                  # base forms that are nouns
    # hate: framings, extremist symbols with glorification, a group with an injury
    ("refugees depicted as rats swarming a boat", TextVerdict(True, "hate", "refugee* + as rats")),
    ("chinese zodiac, year of the rat, paper cut art", TextVerdict(False, None, None)),
    ("swastika flag held proudly by skinheads", TextVerdict(True, "hate", "swastika* + proud*")),
    ("swastika carved on an ancient hindu temple", TextVerdict(False, None, None)),
    ("nazi officer in a ww2 movie, cinematic still", TextVerdict(False, None, None)),
    ("transgender woman beaten in the street", TextVerdict(True, "hate", "transgender* + beaten")),
    # self-harm: despair next to a means
    ("goodbye letter next to a bottle of pills", TextVerdict(True, "self_harm", "goodbye letter* + bottle of pills")),
    ("a pharmacist counting pills at the counter", TextVerdict(False, None, None)),
    # killings that need no victim word; idioms allowlisted
    ("goldfish squeezed to death in a fist", TextVerdict(True, "violence", "to death")),
    ("bored to death in a meeting", TextVerdict(False, None, None)),
])
def test_acts_framings_and_signals(text_filter: TextFilter, text: str, verdict: TextVerdict) -> None:
    assert text_filter.check(text) == verdict


@pytest.mark.parametrize(("entry", "forms"), [
    ("stab~", ["stab", "stabs", "stabbed", "stabbbbed", "stabbing"]),     # the last consonant doubled
    ("strangle~", ["strangles", "strangled", "strangling"]),             # the final e dropped
    ("crucify~", ["crucifies", "crucified", "crucifying"]),              # y to ie
    ("rip~ off", ["rips off", "ripped off", "ripping off"]),
])
def test_inflection_marker(tmp_path: Path, entry: str, forms: list[str]) -> None:
    text_filter = TextFilter(blocklists=[write(tmp_path / "acts.txt", entry + "\n")], replace_default=True)
    for text in forms:
        assert text_filter.check(text) == TextVerdict(True, "custom", entry), text
    for text in ("stable", "stabed", "strangler", "rip", "ripped the mask off"):  # not forms of any entry
        assert not text_filter.check(text).unsafe, text


def test_allowlist_masks_only_its_phrase(text_filter: TextFilter) -> None:
    assert text_filter.check("nude woman wearing nude lipstick").unsafe
    assert text_filter.check("Dick Van Dyke and his dick").unsafe


def test_check_many_matches_check(text_filter: TextFilter) -> None:
    texts = ["a cat", "n u d e", "gore", "sussex"]
    assert text_filter.check_many(texts) == [text_filter.check(t) for t in texts]


def test_filter_pickles_for_worker_processes(text_filter: TextFilter) -> None:
    assert pickle.loads(pickle.dumps(text_filter)).check("n u d e") == TextVerdict(True, "sexual", "nude*")


def test_custom_blocklist(tmp_path: Path) -> None:
    blocklist = write(tmp_path / "mine.txt", "# my terms\n\nweapons\tassault rifle\nbaz*\nsexual\tsoft core\n")
    text_filter = TextFilter(blocklists=[blocklist])
    assert text_filter.check("an assault rifle on a table") == TextVerdict(True, "weapons", "assault rifle")
    assert text_filter.check("a bazooka") == TextVerdict(True, "custom", "baz*")
    assert text_filter.check("s0ft c0re photo") == TextVerdict(True, "sexual", "soft core")
    assert text_filter.check("nude") == TextVerdict(True, "sexual", "nude*")   # defaults still loaded


def test_custom_allowlist(tmp_path: Path) -> None:
    allowlist = write(tmp_path / "allow.txt", "nude beach\n")
    text_filter = TextFilter(allowlists=[allowlist])
    assert not text_filter.check("a nude beach sign").unsafe
    assert text_filter.check("nude beach, naked woman").unsafe


def test_replace_default(tmp_path: Path) -> None:
    blocklist = write(tmp_path / "mine.txt", "dick\n")
    text_filter = TextFilter(blocklists=[blocklist], replace_default=True)
    assert text_filter.check("nude woman") == TextVerdict(False, None, None)
    assert text_filter.check("Dick Van Dyke") == TextVerdict(True, "custom", "dick")  # default allowlist gone too


@pytest.mark.parametrize(("content", "problem"), [
    ("na*ked\n", "only allowed at the end"),
    ("sexual\tnude\textra\n", "more than one tab"),
    ("Bad Category\tnude\n", "category must be"),
    ("$ex\n", "plain letters"),
    ("the\n", "no words left"),
    ("~stab\n", "'~' goes at the end"),
    ("stab~*\n", "'~' goes at the end"),
])
def test_bad_list_line(tmp_path: Path, content: str, problem: str) -> None:
    path = write(tmp_path / "bad.txt", "# fine\nfine term\n" + content)
    with pytest.raises(StyleprefsError, match=problem) as error:
        TextFilter(blocklists=[path])
    assert str(path) in str(error.value) and "line 3" in str(error.value) and "\n" not in str(error.value)


def test_allowlist_takes_no_category(tmp_path: Path) -> None:
    path = write(tmp_path / "allow.txt", "sexual\tnude beach\n")
    with pytest.raises(StyleprefsError, match="allowlist entries take no category"):
        TextFilter(allowlists=[path])


@pytest.mark.parametrize("make", [
    lambda tmp: tmp / "missing.txt",
    lambda tmp: tmp,
    lambda tmp: write(tmp / "latin1.txt", "caf\xe9\n", encoding="latin-1"),
])
def test_unreadable_list_file(tmp_path: Path, make) -> None:
    path = make(tmp_path)
    with pytest.raises(StyleprefsError) as error:
        TextFilter(blocklists=[path])
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_every_list_file_opens_with_its_policy() -> None:
    files = sorted(LISTS_DIR.glob("*.txt"))
    assert {f.stem for f in files} >= {"sexual", "minors", "violence", "hate", "self_harm", "allowlist"}
    for path in files:
        assert path.read_text(encoding="utf-8").startswith("# "), path


def load_bench():
    spec = importlib.util.spec_from_file_location("text_safety_eval", ROOT / "bench" / "text_safety_eval.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_labelled_set_meets_targets(text_filter: TextFilter) -> None:
    bench = load_bench()
    rows = bench.load_prompts()
    near_misses = [r for r in rows if not r.unsafe and r.category != "none"]
    assert len(rows) >= 350 and len(near_misses) >= 120 and sum(r.unsafe for r in rows) >= 120
    outcomes = bench.run(text_filter, rows)
    recall, fpr = bench.rates(outcomes, unsafe=True)["all"], bench.rates(outcomes, unsafe=False)["all"]
    assert recall.rate >= bench.RECALL_TARGET, f"recall {recall.rate:.3f}"
    assert fpr.rate <= bench.FPR_TARGET, f"false-positive rate {fpr.rate:.3f}"


def test_fresh_holdout_and_probe_sets(text_filter: TextFilter) -> None:
    """Kept apart from the tuning set and from each other, and all tuned on since (see the bench's docstring for
    their first, unseen scores): fresh and holdout must meet the targets, the probe sets guard against
    regressions at their current level."""
    bench = load_bench()
    seen = {r.prompt.lower() for r in bench.load_prompts()}
    floors = {bench.FRESH_PROMPTS: (300, bench.RECALL_TARGET, bench.FPR_TARGET),
              bench.HOLDOUT_PROMPTS: (100, bench.RECALL_TARGET, bench.FPR_TARGET),
              **{path: (100, 0.88, 0.05) for path in bench.PROBE_PROMPTS}}
    assert len(bench.PROBE_PROMPTS) == 5
    for path, (size, recall_floor, fpr_ceiling) in floors.items():
        rows = bench.load_prompts(path)
        prompts = {r.prompt.lower() for r in rows}
        assert len(rows) >= size and seen.isdisjoint(prompts), path
        seen |= prompts
        outcomes = bench.run(text_filter, rows)
        recall, fpr = bench.rates(outcomes, unsafe=True)["all"], bench.rates(outcomes, unsafe=False)["all"]
        assert recall.rate >= recall_floor, f"{path.name}: recall {recall.rate:.3f}"
        assert fpr.rate <= fpr_ceiling, f"{path.name}: false-positive rate {fpr.rate:.3f}"


def test_parti_prompts_false_positives(text_filter: TextFilter) -> None:
    """PartiPrompts (nateraw/parti-prompts, prompt column) are all safe; one is flagged since before issue 13."""
    captions = (ROOT / "tests" / "data" / "parti_prompts.txt").read_text(encoding="utf-8").splitlines()
    flagged = [c for c, v in zip(captions, text_filter.check_many(captions)) if v.unsafe]
    assert len(captions) == 1632 and flagged == ["a closet without clothes"]
