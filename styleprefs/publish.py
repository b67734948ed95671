"""``styleprefs push``: upload a dataset's shards, manifest and card to a Hub dataset repo as one config.

Repo layout: ``<config>/train-XXXXX-of-YYYYY.parquet``, ``<config>/manifest.json`` and one ``README.md``
whose ``configs`` list every config, so several styles share a repo. One config is the repo's default (the
first pushed, or ``default_config``), so clients that pass no config name load it. Pushing a config again replaces
its files (stale shards are deleted in the same commit) and keeps the other configs.
``rejects.parquet`` and ``quarantine.parquet`` are never uploaded: they hold unusable or unsafe rows.

The token is handed to ``huggingface_hub`` and nothing else: it is never printed or logged, and Hub
errors are reduced to one line with any token text removed.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, get_token
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import get_session, validate_repo_id

from styleprefs.card import check_config_name, check_license, human_size, render_card
from styleprefs.errors import StyleprefsError
from styleprefs.inspect import read_verified_manifest, shard_paths

CARD_PATH = "README.md"
REACH_TIMEOUT_S = 5.0
_TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{8,}")


@dataclass(frozen=True)
class UploadPlan:
    repo_id: str
    config_name: str
    revision: str | None
    private: bool
    files: list[tuple[Path, str]]  # (local path, path in the repo); the card is card_text
    card_text: str
    dataset: Path
    license: str | None = None
    default_config: str | None = None


def plan_push(dataset: Path, repo_id: str, *, config_name: str | None = None, license: str | None = None,
              private: bool = False, revision: str | None = None, existing_card: str | None = None,
              default_config: str | None = None) -> UploadPlan:
    """What ``push`` uploads, checked offline: repo id, manifest, shard checksums and the card.

    ``existing_card`` is the repo's current ``README.md``; its other configs are kept in the new card.
    """
    check_repo_id(repo_id)
    if license is not None:
        check_license(license)  # before hashing the shards
    dataset = Path(dataset)
    manifest = read_verified_manifest(dataset)
    if not manifest["counts"]["kept"]:
        raise StyleprefsError(f"{dataset} holds no pairs (0 kept): nothing to push")  # `datasets` cannot load it
    name = check_config_name(config_name or manifest["config"]["build"]["style"])
    files = [(path, f"{name}/{path.name}") for path in shard_paths(dataset, manifest)]
    files.append((dataset / "manifest.json", f"{name}/manifest.json"))
    if default_config is not None:
        check_config_name(default_config)
    # Another config named default can only be checked against the repo's card, which push reads.
    preview_default = default_config if existing_card is not None or default_config == name else None
    card = render_card(dataset, license=license, config_name=name, repo_folder=name, repo_id=repo_id,
                       existing_card=existing_card, default_config=preview_default)
    return UploadPlan(repo_id, name, revision, private, files, card, dataset, license, default_config)


def push(plan: UploadPlan, *, token: str | None = None) -> str:
    """Create the repo if needed and upload ``plan`` in one commit; return the commit URL.

    ``token=None`` uses ``HF_TOKEN`` or the saved login, as huggingface_hub does.
    """
    api = HfApi(token=token)
    check_reachable(api.endpoint)
    if token is None and get_token() is None:
        raise StyleprefsError("no Hugging Face token: pass --token, set HF_TOKEN or log in with `hf auth login`")
    with _hub_errors(plan.repo_id, token):
        api.create_repo(plan.repo_id, repo_type="dataset", private=plan.private, exist_ok=True)
        if plan.revision:
            api.create_branch(plan.repo_id, branch=plan.revision, repo_type="dataset", exist_ok=True)
        remote = api.list_repo_files(plan.repo_id, repo_type="dataset", revision=plan.revision)
        existing = _read_remote_card(api, plan) if CARD_PATH in remote else None
    plan = replace(plan, card_text=render_card(
        plan.dataset, license=plan.license, config_name=plan.config_name, repo_folder=plan.config_name,
        repo_id=plan.repo_id, existing_card=existing, default_config=plan.default_config))
    with _hub_errors(plan.repo_id, token):
        info = api.create_commit(plan.repo_id, commit_operations(plan, remote), repo_type="dataset",
                                 revision=plan.revision, commit_message=f"styleprefs: push config {plan.config_name}")
    return info.commit_url


def commit_operations(plan: UploadPlan, remote_files: list[str]) -> list:
    """Adds for the plan's files and card, deletes for this config's shards that the new set lacks."""
    adds = [CommitOperationAdd(path_in_repo=repo_path, path_or_fileobj=str(local)) for local, repo_path in plan.files]
    adds.append(CommitOperationAdd(path_in_repo=CARD_PATH, path_or_fileobj=plan.card_text.encode("utf-8")))
    keep = {repo_path for _, repo_path in plan.files}
    stale = [p for p in remote_files if p.startswith(f"{plan.config_name}/train-") and p not in keep]
    return adds + [CommitOperationDelete(path_in_repo=p) for p in stale]


def format_plan(plan: UploadPlan) -> list[str]:
    """``--dry-run`` output: one line per upload, ``local -> repo:path (size)``."""
    where = f"{plan.repo_id}@{plan.revision}" if plan.revision else plan.repo_id
    visibility = "private" if plan.private else "public"
    lines = [f"dataset repo {where} (created {visibility} if missing), config {plan.config_name}:"]
    lines += [f"{local} -> {plan.repo_id}:{repo_path} ({human_size(local.stat().st_size)})" for local, repo_path in plan.files]
    card_size = human_size(len(plan.card_text.encode("utf-8")))
    lines.append(f"(dataset card) -> {plan.repo_id}:{CARD_PATH} ({card_size}; merged with the repo's card at push time)")
    lines.append(f"repo files {plan.config_name}/train-* not listed above will be deleted; rejects and quarantine stay local")
    return lines


def check_repo_id(repo_id: str) -> str:
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise StyleprefsError(f"malformed repo id {repo_id!r}: expected owner/name") from None
    if repo_id.count("/") != 1:
        raise StyleprefsError(f"malformed repo id {repo_id!r}: expected owner/name")
    return repo_id


def check_reachable(endpoint: str) -> None:
    """Fail in seconds, with one clear line, when the Hub cannot be reached."""
    reason = "offline mode is on (HF_HUB_OFFLINE is set)" if constants.is_offline_mode() else _probe(endpoint)
    if reason:
        raise StyleprefsError(
            f"cannot reach the Hugging Face Hub at {endpoint}: {reason}; push needs network (use --dry-run to see the plan)"
        )


def _probe(endpoint: str) -> str | None:
    try:
        get_session().head(endpoint, timeout=REACH_TIMEOUT_S)  # any HTTP answer means reachable
    except Exception as exc:  # the HTTP client raises many transport error types
        return _one_line(exc)
    return None


def _read_remote_card(api: HfApi, plan: UploadPlan) -> str:
    path = api.hf_hub_download(plan.repo_id, CARD_PATH, repo_type="dataset", revision=plan.revision)
    return Path(path).read_text(encoding="utf-8")


@contextmanager
def _hub_errors(repo_id: str, token: str | None) -> Iterator[None]:
    try:
        yield
    except Exception as exc:  # huggingface_hub raises HTTP, transport, OS and value errors
        raise StyleprefsError(f"push to {repo_id} failed: {_one_line(exc, token)}") from None


def _one_line(exc: BaseException, token: str | None = None) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if token:
        text = text.replace(token, "***")
    return _TOKEN_LIKE.sub("***", text)
