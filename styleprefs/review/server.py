"""The review page: a small ASGI app (starlette, served by uvicorn) and one static page.

No URL names a file: the page's three files are fixed routes, images are addressed by tab (``pairs`` or
``quarantine``), row number and slot, and every other parameter is checked against a list (``view``). The
folder lock is never held while the page is open, only for the moment a decision is appended, so another
command (``--apply``, ``filter-unsafe``) can run; while one does, the page is read-only and says so. When
``manifest.json`` changes (an apply finished), the rows are read anew.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from styleprefs.errors import StyleprefsError
from styleprefs.inspect import read_finished_manifest
from styleprefs.lock import lock_holder
from styleprefs.review.decisions import (LOG_NAME, WRITE_LOCK, Decision, append_decision, latest, pair_key, read_log,
                                         tally)
from styleprefs.review.reader import ParquetRows, checked_shards
from styleprefs.review.view import PAGING, SCORE_COLUMNS, ViewError, flag_thresholds, is_plain, select

STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
MAX_LIMIT = 200
TABS = ("pairs", "quarantine")  # the tabs with images


@dataclass
class _Snapshot:
    """The dataset as one manifest describes it."""

    stamp: tuple
    manifest: dict
    pairs: ParquetRows
    rejects: ParquetRows
    quarantine: ParquetRows
    keys: list[str] | None = None  # each row's pair key, read when a filter first needs them


class Review:
    """A dataset under review: its rows (re-read when the manifest changes) and its decision log."""

    def __init__(self, dataset: Path):
        self.dataset = Path(dataset)
        self._lock = threading.Lock()
        self._log: tuple[tuple, bytes, list[Decision]] = ((), b"", [])
        self._snapshot = self._open()
        self.decisions()  # a bad log line stops the page before it starts

    def _open(self) -> _Snapshot:
        manifest = read_finished_manifest(self.dataset)
        pairs = ParquetRows(checked_shards(self.dataset, manifest))
        extra = [ParquetRows([p] if p.is_file() else []) for p in (self.dataset / "rejects.parquet",
                                                                     self.dataset / "quarantine.parquet")]
        return _Snapshot(_stamp(self.dataset / "manifest.json"), manifest, pairs, *extra)

    def snapshot(self) -> _Snapshot:
        """The current rows; read anew once a changed manifest is final (no other command holds the lock)."""
        with self._lock:
            if _stamp(self.dataset / "manifest.json") != self._snapshot.stamp and self.holder() is None:
                self._snapshot = self._open()
            return self._snapshot

    def holder(self) -> str | None:
        """The pid of another command holding the folder lock, else None."""
        with WRITE_LOCK:
            return lock_holder(self.dataset)

    def decisions(self) -> tuple[bytes, list[Decision]]:
        """The log, parsed again only when it changed."""
        with self._lock:
            stamp = _stamp(self.dataset / LOG_NAME)
            if stamp != self._log[0]:
                self._log = (stamp, *read_log(self.dataset))
            return self._log[1], self._log[2]

    def keys(self, snap: _Snapshot) -> list[str]:
        if snap.keys is None:
            table = snap.pairs.small()
            snap.keys = [pair_key(a, b) for a, b in zip(table.column("image_0_uid").to_pylist(),
                                                        table.column("image_1_uid").to_pylist())]
        return snap.keys


def _stamp(path: Path) -> tuple:
    try:
        st = path.stat()
    except FileNotFoundError:
        return ()
    return st.st_ino, st.st_size, st.st_mtime_ns


def make_app(review: Review, host: str = "127.0.0.1") -> Starlette:
    """The page's routes over ``review``, served at ``host``: on this machine's loopback address only requests
    naming it are answered (another site's page cannot reach the app through its own DNS name)."""

    def static(request: Request) -> Response:
        name, media = STATIC[request.url.path]
        page = importlib.resources.files("styleprefs.review") / "static" / name
        return Response(page.read_bytes(), media_type=media)

    def status(request: Request) -> Response:
        snap = review.snapshot()
        decisions = review.decisions()[1]
        state = snap.manifest.get("review", {})
        applied = state.get("applied_bytes", 0)
        return _json({
            "dataset": review.dataset.resolve().name, "version": "-".join(map(str, snap.stamp)),
            "total": snap.pairs.total, "scores": _score_columns(snap.pairs),
            "editors": [snap.manifest["config"]["editor"]["name"]],
            "original_labels": snap.pairs.has("original_label_0"), "thresholds": flag_thresholds(snap.manifest),
            "counts": tally(decisions, state.get("batch_ends", [])),
            "pending": sum(d.end > applied for d in decisions),
            "holder": review.holder(),
            "rejects": snap.rejects.total, "quarantine": snap.quarantine.total,
        })

    def pairs(request: Request) -> Response:
        snap = review.snapshot()
        params = dict(request.query_params)
        offset, limit = _paging(params)
        final = latest(review.decisions()[1])
        applied = snap.manifest.get("review", {}).get("applied_bytes", 0)
        if is_plain(params):
            total, rows = snap.pairs.total, snap.pairs.rows(offset, limit)
        else:
            keys = review.keys(snap)
            chosen = select(snap.pairs.small(), params, [final[k].action if k in final else None for k in keys],
                            flag_thresholds(snap.manifest))
            total, rows = len(chosen), snap.pairs.take(chosen[offset:offset + limit].tolist())
        for row in rows:
            row["pair"] = pair_key(row["image_0_uid"], row["image_1_uid"])
            d = final.get(row["pair"])
            row["decision"] = None if d is None else {"action": d.action, "applied": d.end <= applied}
        return _json({"total": total, "offset": offset, "rows": rows})

    def table(name: str) -> Callable[[Request], Response]:
        def rows(request: Request) -> Response:
            snap = review.snapshot()
            part: ParquetRows = getattr(snap, name)
            offset, limit = _paging(dict(request.query_params), allowed=PAGING)
            found = part.rows(offset, limit)
            if name == "quarantine":
                for row in found:
                    row["images"] = part.has("jpg_0") and part.value(row["row"], "jpg_0") is not None
            return _json({"total": part.total, "offset": offset, "rows": found})
        return rows

    def image(request: Request) -> Response:
        tab, row, slot = request.path_params["tab"], request.path_params["row"], request.path_params["slot"]
        if tab not in TABS or slot not in (0, 1):
            return _error(404, "no such image")
        part = getattr(review.snapshot(), tab)
        try:
            data = part.value(row, f"jpg_{slot}")
        except IndexError:
            data = None
        if not data:
            return _error(404, "no such image")
        return Response(data, media_type=_image_type(data), headers={"Cache-Control": "private, max-age=600"})

    async def decide(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _error(415, "send the decision as application/json")  # a form on another site cannot
        try:
            body = await request.json()
            row, pair, action = int(body["row"]), str(body["pair"]), body["action"]
        except (ValueError, KeyError, TypeError):
            return _error(400, 'send {"row": N, "pair": "...", "action": "drop" | "flip" | "keep"}')
        return await run_in_threadpool(_decide, review, row, pair, action)

    routes = [Route(path, static) for path in STATIC] + [
        Route("/api/status", status), Route("/api/pairs", pairs),
        Route("/api/rejects", table("rejects")), Route("/api/quarantine", table("quarantine")),
        Route("/api/image/{tab:str}/{row:int}/{slot:int}", image),
        Route("/api/decide", decide, methods=["POST"]),
        Route("/favicon.ico", lambda request: Response(status_code=204)),  # none: spares the browser's console a 404
    ]
    hosts = ["127.0.0.1", "localhost"] if host in ("127.0.0.1", "localhost") else ["*"]
    return Starlette(routes=routes, exception_handlers={ViewError: _view_error, StyleprefsError: _user_error},
                     middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)])


def _decide(review: Review, row: int, pair: str, action: str) -> Response:
    snap = review.snapshot()
    if not 0 <= row < snap.pairs.total:
        return _error(409, f"row {row} is not in the dataset (it changed): reload the page")
    found = snap.pairs.rows(row, 1)[0]
    if pair_key(found["image_0_uid"], found["image_1_uid"]) != pair:
        return _error(409, "the dataset changed since this page was loaded: reload the page")
    append_decision(review.dataset, pair, action, row=row, source=found.get("source"))
    decisions = review.decisions()[1]
    return _json({"pair": pair, "action": action,
                  "counts": tally(decisions, snap.manifest.get("review", {}).get("batch_ends", []))})


def _paging(params: dict, allowed: tuple[str, ...] | None = None) -> tuple[int, int]:
    if allowed is not None and any(key not in allowed for key in params):
        raise ViewError(f"unknown parameter(s) {', '.join(k for k in params if k not in allowed)}")
    try:
        offset, limit = int(params.get("offset", 0)), int(params.get("limit", 10))
    except ValueError:
        raise ViewError("offset and limit must be whole numbers") from None
    if offset < 0 or not 1 <= limit <= MAX_LIMIT:
        raise ViewError(f"offset must be at least 0 and limit between 1 and {MAX_LIMIT}")
    return offset, limit


def _score_columns(part: ParquetRows) -> list[str]:
    """Score columns with at least one value, from the footers' null counts (no data read)."""
    return [c for c in SCORE_COLUMNS if part.has(c) and part.non_null(c)]


def _image_type(data: bytes) -> str:
    for magic, media in ((b"\xff\xd8", "image/jpeg"), (b"\x89PNG", "image/png"), (b"RIFF", "image/webp")):
        if data.startswith(magic):
            return media
    return "application/octet-stream"


def _json(data: dict, status: int = 200) -> Response:
    return Response(json.dumps(_finite(data), default=str, allow_nan=False, ensure_ascii=False),
                    status_code=status, media_type="application/json")


def _finite(value):
    """NaN and infinities as null (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


async def _view_error(request: Request, exc: Exception) -> Response:
    return _error(400, str(exc))


async def _user_error(request: Request, exc: Exception) -> Response:
    return _error(409, str(exc))


def listen(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free one); a taken or unknown address is a one-line error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StyleprefsError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): choose another --port "
                              "or --host") from None
    sock.listen(64)
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if sock.family == socket.AF_INET6 else host}:{port}/"


def server(review: Review, host: str = "127.0.0.1") -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(make_app(review, host), log_level="warning", lifespan="off"))


def serve(dataset: Path, host: str = "127.0.0.1", port: int = 7860, ready: Callable[[str], None] = print) -> None:
    """Serve the page for ``dataset`` until Ctrl-C; ``ready(url)`` is called once it listens."""
    review = Review(dataset)  # a dataset that cannot be shown is refused before anything listens
    sock = listen(host, port)
    try:
        ready(url(sock))
        server(review, host).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn raises Ctrl-C again once it has shut down
        pass
    finally:
        sock.close()
