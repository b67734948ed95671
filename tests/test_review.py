"""`styleprefs review`: the decision log, --apply (twice, crashes, hostile lines), the page's API (paging by row
group, filters, the folder lock, URL parameters), and the page itself in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from styleprefs.build import BuildConfig, build_dataset
from styleprefs.errors import StyleprefsError
from styleprefs.filter_unsafe import SafetyOptions, filter_unsafe
from styleprefs.inspect import inspect_dataset, read_finished_manifest
from styleprefs.lock import folder_lock
from styleprefs.review.apply import apply_review
from styleprefs.review.decisions import LOG_NAME, parse_log, tally
from styleprefs.review.server import Review, listen, server, url
from styleprefs.review.view import ViewError, flag_thresholds, select
from styleprefs.trainer.data import read_pairs
from test_battery import _crash_every_step, assert_error, assert_finished_and_sound, run, snapshot

PAIRS = 12
SHARD_SIZE = 5  # 3 shards, one row group each


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 Winter pairs from the sample scenes, classic editor."""
    out = tmp_path_factory.mktemp("review") / "winter"
    build_dataset(BuildConfig(style="winter", source="sample", num_pairs=PAIRS, shard_size=SHARD_SIZE), out,
                  show_progress=False)
    return out


@pytest.fixture
def dataset(built: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "ds"))


def _rows(dataset: Path) -> list[dict]:
    return pq.read_table(dataset / "data").drop_columns(["jpg_0", "jpg_1"]).to_pylist()


def _key(row: dict) -> str:
    return f"{row['image_0_uid']}:{row['image_1_uid']}"


def _write_log(dataset: Path, *lines: str) -> None:
    with open(dataset / LOG_NAME, "a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def _line(row: dict, action: str) -> str:
    return json.dumps({"pair": _key(row), "action": action})


# ------------------------------------------------------------------------------------------ --apply


def test_documented_lines_applied_twice(dataset, capsys):
    rows = _rows(dataset)
    a, b, c, d = rows[0], rows[1], rows[6], rows[11]  # in shards 0, 0, 1, 2
    _write_log(dataset, _line(a, "drop"), _line(b, "flip"), _line(c, "flip"), _line(c, "drop"), _line(d, "keep"))
    code, out, _ = run(["review", str(dataset), "--apply"], capsys)
    assert code == 0 and "judged by eye: 4 pairs, 2 dropped, 1 flipped" in out
    after = snapshot(dataset)
    code, out, _ = run(["review", str(dataset), "--apply"], capsys)
    assert code == 0 and "nothing to do" in out
    assert snapshot(dataset) == after  # the second apply changes nothing

    now = {_key(r): r for r in _rows(dataset)}
    assert len(now) == PAIRS - 2 and _key(a) not in now and _key(c) not in now
    flipped = now[_key(b)]
    assert (flipped["label_0"], flipped["label_1"]) == (b["label_1"], b["label_0"])
    assert flipped["best_image_uid"] == (b["image_0_uid"] if b["label_1"] == 1.0 else b["image_1_uid"])
    assert flipped["best_image_uid"] != b["best_image_uid"]
    assert (flipped["original_label_0"], flipped["original_label_1"]) == (b["label_0"], b["label_1"])
    for key, row in now.items():
        if key != _key(b):  # the rest keep their labels, and original labels equal to them
            before = next(r for r in rows if _key(r) == key)
            assert (row["label_0"], row["label_1"], row["best_image_uid"]) == \
                (before["label_0"], before["label_1"], before["best_image_uid"])
            assert (row["original_label_0"], row["original_label_1"]) == (row["label_0"], row["label_1"])
    rejects = pq.read_table(dataset / "rejects.parquet").to_pylist()
    assert [(r["source"], r["reason"]) for r in rejects] == [(a["source"], "review"), (c["source"], "review")]
    manifest = read_finished_manifest(dataset)
    assert manifest["counts"]["kept"] == PAIRS - 2 and manifest["counts"]["rejected"] == 2
    assert manifest["counts"]["read"] == manifest["counts"]["kept"] + 2 + manifest["counts"]["quarantined"]
    assert manifest["reject_reasons"] == {"review": 2}
    assert manifest["review"]["counts"] == {"judged": 4, "dropped": 2, "flipped": 1, "kept": 1}
    assert "Judged by eye: 4 pairs, 2 dropped, 1 flipped" in (dataset / "README.md").read_text()
    assert inspect_dataset(dataset).problems == []
    assert len(read_pairs(dataset)[0]) == PAIRS - 2  # the trainer's loader reads the result


def test_later_decisions_apply_to_the_dataset_as_applied(dataset):
    rows = _rows(dataset)
    a, b, d = rows[0], rows[1], rows[11]
    _write_log(dataset, _line(a, "drop"), _line(b, "flip"), _line(d, "keep"))
    apply_review(dataset)
    _write_log(dataset, _line(b, "flip"), _line(d, "drop"))  # flip back; drop what was kept
    report = apply_review(dataset)
    assert report.lines == 2 and report.counts == {"judged": 3, "dropped": 2, "flipped": 0, "kept": 1}
    now = {_key(r): r for r in _rows(dataset)}
    assert len(now) == PAIRS - 2 and _key(d) not in now
    assert now[_key(b)]["label_0"] == b["label_0"] and now[_key(b)]["best_image_uid"] == b["best_image_uid"]
    assert now[_key(b)]["original_label_0"] == b["label_0"]  # the labels from before the first change
    _write_log(dataset, _line(a, "keep"))
    before = snapshot(dataset)
    with pytest.raises(StyleprefsError, match="line 6 .*an earlier --apply dropped it"):
        apply_review(dataset)
    assert snapshot(dataset) == before


def test_tally_counts_net_flips_per_apply():
    log = b"".join(json.dumps({"pair": p, "action": a}).encode() + b"\n" for p, a in
                   [("x", "flip"), ("y", "flip"), ("y", "keep"), ("z", "drop"), ("x", "flip"), ("w", "keep")])
    decisions = parse_log(log, Path("review.jsonl"))
    ends = [d.end for d in decisions]
    assert tally(decisions, []) == {"judged": 4, "dropped": 1, "flipped": 1, "kept": 2}  # one batch: x's last is flip
    assert tally(decisions, [ends[3]]) == {"judged": 4, "dropped": 1, "flipped": 0, "kept": 3}  # x flipped twice


@pytest.mark.parametrize("line, expected", [
    ("{not json", "line 2 is not JSON"),
    ('{"pair": "nobody:nowhere", "action": "drop"}', "line 2 names pair 'nobody:nowhere', which is not in the dataset"),
    ('{"pair": "PAIR", "action": "delete"}', "line 2 has unknown action 'delete'"),
    ('["PAIR", "drop"]', 'line 2 is not an object with a "pair" string'),
])
def test_bad_log_line_applies_nothing(dataset, line, expected, capsys):
    row = _rows(dataset)[0]
    _write_log(dataset, _line(row, "drop"), line.replace("PAIR", _key(row)), _line(row, "flip"))
    before = snapshot(dataset)
    message = assert_error(run(["review", str(dataset), "--apply"], capsys), expected)
    assert "review.jsonl" in message
    assert snapshot(dataset) == before
    if "nobody" not in line:  # a line that cannot be read stops the page too (the page never checks pair names)
        assert_error(run(["review", str(dataset), "--port", "0"], capsys), expected)


def test_edited_applied_lines_are_refused(dataset, capsys):
    rows = _rows(dataset)
    _write_log(dataset, _line(rows[0], "flip"))
    apply_review(dataset)
    (dataset / LOG_NAME).write_text(_line(rows[1], "flip") + "\n")
    assert_error(run(["review", str(dataset), "--apply"], capsys), "no longer starts with the")


def test_folders_that_cannot_be_reviewed(dataset, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (["--apply"], ["--port", "0"]):
        assert_error(run(["review", str(empty), *args], capsys), "no manifest.json")
    for shard in (dataset / "data").glob("*.parquet"):
        shard.unlink()
    for args in (["--apply"], ["--port", "0"]):
        assert_error(run(["review", str(dataset), *args], capsys), "missing shard")
    manifest = json.loads((dataset / "manifest.json").read_text())
    (dataset / "manifest.json").write_text(json.dumps({**manifest, "shards": []}))
    assert_error(run(["review", str(dataset), "--port", "0"], capsys), "has no shards")


def test_a_taken_port_is_a_one_line_error(dataset, capsys):
    taken = listen("127.0.0.1", 0)
    try:
        port = str(taken.getsockname()[1])
        assert_error(run(["review", str(dataset), "--port", port], capsys), f"cannot listen on 127.0.0.1:{port}")
    finally:
        taken.close()


def test_apply_waits_for_no_one(dataset, capsys):
    _write_log(dataset, _line(_rows(dataset)[0], "drop"))
    before = snapshot(dataset)
    with folder_lock(dataset):
        assert_error(run(["review", str(dataset), "--apply"], capsys), "in use by another styleprefs process")
    assert snapshot(dataset) == before


def test_apply_crash_at_every_step(built, tmp_path, monkeypatch):
    """Killed anywhere in --apply: the dataset reads as unfinished or as before, and a rerun gives the result."""
    rows = _rows(built)
    lines = [_line(rows[0], "drop"), _line(rows[3], "flip"), _line(rows[7], "drop")]
    expected_dir = Path(shutil.copytree(built, tmp_path / "expected"))
    _write_log(expected_dir, *lines)
    apply_review(expected_dir)
    outs = iter(range(10**6))

    def prepare() -> Path:
        out = Path(shutil.copytree(built, tmp_path / f"d{next(outs)}"))
        _write_log(out, *lines)
        return out

    def untouched_or_sound(folder: Path) -> None:
        try:
            read_finished_manifest(folder)
        except StyleprefsError:
            return  # says it is unfinished: the rerun finishes it
        untouched = {k: v for k, v in snapshot(folder).items() if not k.startswith(".review-tmp/")}
        if untouched != snapshot(prepare()):  # as it was (plus staging the next run clears), or sound and applied
            assert_finished_and_sound(folder)

    steps = _crash_every_step(monkeypatch, prepare, apply_review, snapshot(expected_dir), untouched_or_sound)
    assert steps >= 8


# ------------------------------------------------------------------------------------------ the page's API


@contextmanager
def served(dataset: Path) -> Iterator[tuple[str, Review]]:
    """The page's app on a free port, in a thread."""
    review = Review(dataset)
    sock = listen("127.0.0.1", 0)
    app_server = server(review)
    thread = threading.Thread(target=app_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not app_server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield url(sock).rstrip("/"), review
    finally:
        app_server.should_exit = True
        thread.join(20)
        sock.close()


def fetch(address: str, body: dict | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(address, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def fetch_json(address: str, body: dict | None = None) -> tuple[int, dict]:
    status, data = fetch(address, body)
    return status, json.loads(data)


def test_first_page_reads_only_its_row_groups(dataset):
    rows = _rows(dataset)
    with served(dataset) as (base, review):
        status, info = fetch_json(f"{base}/api/status")
        assert status == 200 and info["total"] == PAIRS and review.snapshot().pairs.groups_read == 0  # footers only
        status, page = fetch_json(f"{base}/api/pairs?offset=0&limit=5")
        assert [r["caption"] for r in page["rows"]] == [r["caption"] for r in rows[:5]] and page["total"] == PAIRS
        assert review.snapshot().pairs.groups_read == 1  # shard 0's one row group, images left out
        status, page = fetch_json(f"{base}/api/pairs?offset=4&limit=3")
        assert [r["row"] for r in page["rows"]] == [4, 5, 6] and review.snapshot().pairs.groups_read == 3
        status, image = fetch(f"{base}/api/image/pairs/6/1")
        expected = pq.read_table(dataset / "data", columns=["jpg_1"]).column(0)[6].as_py()
        assert status == 200 and image == expected
        fetch(f"{base}/api/image/pairs/7/1")  # same row group and slot: cached
        assert review.snapshot().pairs.groups_read == 4


def test_decisions_are_saved_and_shown(dataset):
    rows = _rows(dataset)
    with served(dataset) as (base, _):
        status, result = fetch_json(f"{base}/api/decide", {"row": 1, "pair": _key(rows[1]), "action": "drop"})
        assert status == 200 and result["counts"] == {"judged": 1, "dropped": 1, "flipped": 0, "kept": 0}
        status, _ = fetch_json(f"{base}/api/decide", {"row": 2, "pair": _key(rows[2]), "action": "explode"})
        assert status == 409  # unknown action: nothing written
        status, _ = fetch_json(f"{base}/api/decide", {"row": 2, "pair": _key(rows[3]), "action": "flip"})
        assert status == 409  # the row does not hold that pair (a stale page)
    lines = (dataset / LOG_NAME).read_text().splitlines()
    assert len(lines) == 1 and (json.loads(lines[0])["pair"], json.loads(lines[0])["action"]) == (_key(rows[1]), "drop")
    with served(dataset) as (base, _):  # a restart shows the decision
        _, page = fetch_json(f"{base}/api/pairs?limit=3")
        assert [r["decision"] for r in page["rows"]] == [None, {"action": "drop", "applied": False}, None]
        _, page = fetch_json(f"{base}/api/pairs?decision=drop")
        assert [r["row"] for r in page["rows"]] == [1]
        _, status = fetch_json(f"{base}/api/status")
        assert status["pending"] == 1 and status["counts"]["dropped"] == 1


def test_two_tabs_lose_nothing(dataset):
    rows = _rows(dataset)
    with served(dataset) as (base, _):
        def tab(actions: list[str]) -> None:
            for i, action in enumerate(actions * 3):
                row = i % PAIRS
                decision = {"row": row, "pair": _key(rows[row]), "action": action}
                assert fetch_json(f"{base}/api/decide", decision)[0] == 200

        tabs = [threading.Thread(target=tab, args=(actions,)) for actions in (["drop", "keep"], ["flip"])]
        for t in tabs:
            t.start()
        for t in tabs:
            t.join()
    decisions = parse_log((dataset / LOG_NAME).read_bytes(), dataset / LOG_NAME)  # every line whole
    assert len(decisions) == 6 + 3
    assert sorted(d.action for d in decisions) == ["drop"] * 3 + ["flip"] * 3 + ["keep"] * 3


def test_read_only_while_another_command_holds_the_lock(dataset):
    rows = _rows(dataset)
    with served(dataset) as (base, _):
        with folder_lock(dataset):
            _, status = fetch_json(f"{base}/api/status")
            assert status["holder"] == str(os.getpid())
            code, result = fetch_json(f"{base}/api/decide", {"row": 0, "pair": _key(rows[0]), "action": "drop"})
            assert code == 409 and "in use by another styleprefs process" in result["error"]
            assert fetch(f"{base}/api/pairs?limit=2")[0] == 200  # still browsable
        assert not (dataset / LOG_NAME).exists()
        _, status = fetch_json(f"{base}/api/status")
        assert status["holder"] is None
        assert fetch_json(f"{base}/api/decide", {"row": 0, "pair": _key(rows[0]), "action": "drop"})[0] == 200
        version = status["version"]
        apply_review(dataset)  # the page reads the applied dataset
        _, status = fetch_json(f"{base}/api/status")
        assert status["version"] != version and status["total"] == PAIRS - 1 and status["pending"] == 0
        assert status["counts"] == {"judged": 1, "dropped": 1, "flipped": 0, "kept": 0}


def test_url_parameters_reach_no_file_outside(dataset, tmp_path):
    secret = b"SECRET-OUTSIDE-THE-DATASET"
    (tmp_path / "secret.txt").write_bytes(secret)
    (dataset / "data" / "secret.txt").write_bytes(secret)  # not a file the page serves, even inside
    with served(dataset) as (base, _):
        hostile = ["/../secret.txt", "/..%2Fsecret.txt", "/%2e%2e/%2e%2e/etc/passwd", "/static/../../secret.txt",
                   "/app.js/../../secret.txt", "/api/image/pairs/..%2F..%2Fsecret.txt/0",
                   "/api/image/../../secret.txt/0/0", "/api/image/rejects/0/0", "/api/image/pairs/0/2",
                   "/api/image/pairs/-1/0", "/api/image/pairs/99999/0",
                   "/api/pairs?sort=../../secret.txt", "/api/pairs?min.../secret.txt=0",
                   "/api/pairs?file=../secret.txt",
                   "/api/rejects?path=../secret.txt", "/api/quarantine?tab=../secret.txt",
                   "/api/pairs?offset=-3", "/api/pairs?limit=100000", "/data/secret.txt", "/review.jsonl",
                   "/manifest.json", f"/{tmp_path}/secret.txt"]
        for path in hostile:
            status, body = fetch(base + path)
            assert 400 <= status < 500 and secret not in body and b"Traceback" not in body, path
            assert b'"caption"' not in body, path
        for path in ("/", "/app.js", "/style.css"):
            assert fetch(base + path)[0] == 200
        rebound = urllib.request.Request(f"{base}/api/pairs", headers={"Host": "evil.example"})
        with pytest.raises(urllib.error.HTTPError, match="400"):  # a DNS name another site points here
            urllib.request.urlopen(rebound, timeout=20)
        form = urllib.request.Request(f"{base}/api/decide", data=b'{"row": 0, "pair": "a:b", "action": "drop"}',
                                      headers={"Content-Type": "text/plain"})
        with pytest.raises(urllib.error.HTTPError, match="415"):  # a form posted by another site's page
            urllib.request.urlopen(form, timeout=20)


def test_a_manifest_cannot_point_outside(dataset, capsys):
    manifest = json.loads((dataset / "manifest.json").read_text())
    manifest["shards"][0]["path"] = "../../etc/passwd"
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    for args in (["--apply"], ["--port", "0"]):
        assert_error(run(["review", str(dataset), *args], capsys), "outside the dataset folder")


def test_quarantine_keeps_a_filtered_pairs_images(dataset, tmp_path):
    blocklist = tmp_path / "block.txt"
    blocklist.write_text("horse\n")
    filter_unsafe(dataset, SafetyOptions(blocklists=(str(blocklist),)), show_progress=False)
    quarantine = pq.read_table(dataset / "quarantine.parquet").to_pylist()
    assert quarantine and all(q["jpg_0"] and q["jpg_1"] for q in quarantine)
    with served(dataset) as (base, _):
        _, page = fetch_json(f"{base}/api/quarantine")
        assert page["total"] == len(quarantine) and all(r["images"] for r in page["rows"])
        assert fetch(f"{base}/api/image/quarantine/0/1")[1] == quarantine[0]["jpg_1"]
        assert fetch_json(f"{base}/api/decide", {"row": 0, "pair": "x:y", "action": "drop"})[0] == 409


def test_filters_and_sort():
    table = pa.table({
        "caption": ["A snowy Cabin", "red fox", None, "cabin at night", "fox den"],
        "editor": ["classic", "instruct-pix2pix", "classic", "classic", "classic"],
        "clip_direction": [0.3, None, 0.1, 0.25, 0.5],
        "safety_text_score": [0.1, 0.9, None, 0.5, 0.0],
        "safety_image_score_0": [0.0, 0.0, 0.2, None, 0.0], "safety_image_score_1": [0.0, -1.0, 0.0, 0.0, 0.3],
        "editor_nsfw": [None, True, False, None, None],
        "label_0": [1.0, 0.0, 1.0, 0.5, 0.0], "label_1": [0.0, 1.0, 0.0, 0.5, 1.0],
        "original_label_0": [1.0, 1.0, 1.0, 1.0, 0.0], "original_label_1": [0.0, 0.0, 0.0, 0.0, 1.0],
    })
    decisions = [None, "drop", None, "flip", "keep"]

    def rows(**params: str) -> list[int]:
        return select(table, params, decisions, {"image": 0.0, "text": 0.5}).tolist()

    assert rows(q="CABIN") == [0, 3]
    assert rows(editor="classic", **{"min.clip_direction": "0.2", "max.clip_direction": "0.4"}) == [0, 3]
    assert rows(sort="clip_direction") == [2, 3, 0, 4, 1]  # nulls last
    assert rows(sort="clip_direction", desc="1") == [4, 0, 3, 2, 1]
    assert rows(flag="text") == [1, 3] and rows(flag="image") == [2, 4] and rows(flag="editor_nsfw") == [1]
    assert rows(disagree="1") == [1]  # row 3 is a tie now: not a disagreement
    assert rows(decision="undecided") == [0, 2] and rows(decision="decided") == [1, 3, 4]
    assert rows(decision="flip", q="cabin") == [3]
    for bad in ({"sort": "caption"}, {"min.score_0": "1"}, {"min.clip_direction": "lots"}, {"flag": "rude"},
                {"decision": "maybe"}, {"path": "/etc/passwd"}):
        with pytest.raises(ViewError):
            rows(**bad)
    assert select(table, {"flag": "image"}, decisions, {"image": 0.25, "text": 0.95}).tolist() == [4]
    assert select(table, {"flag": "text"}, decisions, {"image": 0.25, "text": 0.95}).tolist() == []
    with pytest.raises(ViewError, match="no original_label"):
        select(table.drop_columns(["original_label_0"]), {"disagree": "1"}, decisions, {"image": 0.0, "text": 0.5})


def test_flag_thresholds_follow_the_last_filter_run():
    assert flag_thresholds({}) == {"image": 0.8, "text": 0.5}  # open_nsfw's, the text classifier's defaults
    runs = [{"images": True, "image_model": "open_nsfw", "image_threshold": 0.6, "text_model": None},
            {"images": True, "image_model": "CompVis/stable-diffusion-safety-checker", "image_threshold": None,
             "text_model": "some/classifier", "text_threshold": 0.7},
            {"images": False, "text_model": None}]
    assert flag_thresholds({"safety": {"runs": runs}}) == {"image": 0.0, "text": 0.7}
    assert flag_thresholds({"safety": {"runs": runs[:1]}}) == {"image": 0.6, "text": 0.5}


# ------------------------------------------------------------------------------------------ in a real browser

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def review_command(dataset: Path) -> Iterator[str]:
    """`styleprefs review DATASET --port 0` in a subprocess: the URL it prints; stopped with Ctrl-C (SIGINT)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "styleprefs.cli", "review", str(dataset), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        yield line.split("open ")[1].split()[0]
    finally:
        proc.send_signal(2)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err, err


def _log_lines(dataset: Path, n: int) -> list[dict]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        path = dataset / LOG_NAME
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)
    raise AssertionError(f"review.jsonl did not reach {n} lines")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_page_in_headless_chromium(dataset, tmp_path, capsys):
    sync_api = pytest.importorskip("playwright.sync_api")
    blocklist = tmp_path / "block.txt"
    blocklist.write_text("horse\n")  # some pairs go to quarantine, with their images
    filter_unsafe(dataset, SafetyOptions(blocklists=(str(blocklist),)), show_progress=False)
    rows = _rows(dataset)
    n = len(rows)
    with review_command(dataset) as address, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(address)
        page.wait_for_selector(".pair .caption")
        assert page.locator(".pair .caption").first.inner_text() == rows[0]["caption"]
        page.keyboard.press("ArrowRight")
        assert page.locator(".pair.current").get_attribute("data-i") == "1"
        page.keyboard.press("d")
        first = _log_lines(dataset, 1)[0]
        assert (first["pair"], first["action"], first["row"]) == (_key(rows[1]), "drop", 1)
        other = browser.new_page()  # a second tab judges at the same time
        other.goto(address)
        other.wait_for_selector(".pair .caption")
        other.locator(".pair").nth(2).get_by_role("button", name="flip (f)").click()
        assert [line["action"] for line in _log_lines(dataset, 2)] == ["drop", "flip"]

        page.reload()
        page.wait_for_selector(".pair .caption")
        assert page.locator(".pair .decision").nth(1).inner_text() == "decision: drop"
        assert page.locator(".pair .decision").nth(2).inner_text() == "decision: flip"
        assert "judged 2 · dropped 1 · flipped 1" in page.locator("#progress").inner_text()
        if os.environ.get("STYLEPREFS_REVIEW_SCREENSHOT"):  # the README's picture
            page.locator(".pair").nth(1).click()
            page.screenshot(path=os.environ["STYLEPREFS_REVIEW_SCREENSHOT"])

        with folder_lock(dataset):  # another command writes: the page turns read-only
            page.wait_for_selector("#lock:not([hidden])", timeout=10000)
            assert page.locator("#b-drop").is_disabled()
            page.keyboard.press("k")
            page.wait_for_selector("#error:not([hidden])")
        assert len(_log_lines(dataset, 2)) == 2

        page.get_by_role("button", name="Quarantine").click()
        page.wait_for_selector(".quarantined img")
        images = page.locator(".quarantined .images").first
        assert "blur" in images.locator("img").first.evaluate("img => getComputedStyle(img).filter")
        images.click()
        assert images.locator("img").first.evaluate("img => getComputedStyle(img).filter") == "none"
        assert page.locator(".quarantined button").count() == 0  # read-only: nothing to judge there
        browser.close()
    code, out, _ = run(["review", str(dataset), "--apply"], capsys)
    assert code == 0 and "judged by eye: 2 pairs, 1 dropped, 1 flipped" in out
    after = {_key(r): r for r in _rows(dataset)}
    assert len(after) == n - 1 and _key(rows[1]) not in after
    assert after[_key(rows[2])]["label_0"] == rows[2]["label_1"]
