"""`styleprefs push`: the upload plan, two configs in one repo, bad input, offline failure, a faked Hub."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import yaml
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants

from styleprefs import publish
from styleprefs.build import BuildConfig, build_dataset
from styleprefs.errors import StyleprefsError
from styleprefs.publish import format_plan, plan_push, push

REPO = "me/style-prefs"
TOKEN = "hf_SECRETsecretSECRET0123456789"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    from conftest import write_pickapic_parquet

    root = tmp_path_factory.mktemp("publish")
    src = write_pickapic_parquet(root / "pickapic")
    return {style: build_dataset(BuildConfig(source=str(src), style=style, num_pairs=n, shard_size=4),
                                 root / style, show_progress=False).out
            for style, n in (("winter", 10), ("sketch", 5))}


def _yaml(text: str) -> dict:
    return yaml.safe_load(text.split("---\n")[1])


def _repo_paths(plan) -> list[str]:
    return [repo_path for _, repo_path in plan.files]


def test_plan_for_two_configs_in_one_repo(built):
    winter = plan_push(built["winter"], REPO, license="openrail++")
    sketch = plan_push(built["sketch"], REPO, existing_card=winter.card_text)
    assert _repo_paths(winter) == [f"winter/train-0000{i}-of-00003.parquet" for i in range(3)] + ["winter/manifest.json"]
    assert _repo_paths(sketch) == ["sketch/train-00000-of-00002.parquet", "sketch/train-00001-of-00002.parquet",
                                   "sketch/manifest.json"]
    for plan in (winter, sketch):
        assert all(local.is_file() for local, _ in plan.files)
        assert not any("rejects" in str(local) or "quarantine" in str(local) for local, _ in plan.files)
    meta = _yaml(sketch.card_text)
    assert meta["configs"] == [
        {"config_name": "sketch", "data_files": [{"split": "train", "path": "sketch/train-*"}]},
        {"config_name": "winter", "data_files": [{"split": "train", "path": "winter/train-*"}], "default": True},
    ]
    assert {i["config_name"]: i["splits"][0]["num_examples"] for i in meta["dataset_info"]} == {"sketch": 5, "winter": 10}
    assert meta["license"] == "openrail++"
    assert set(meta["tags"]) >= {"winter", "sketch"}
    assert "<!-- styleprefs-config: winter -->" in sketch.card_text and "<!-- styleprefs-config: sketch -->" in sketch.card_text
    assert f'load_dataset("{REPO}", "sketch", split="train")' in sketch.card_text


def test_repo_layout_loads_with_datasets(built, tmp_path):
    """The merged card's configs, with files where the plans put them, load per config."""
    winter = plan_push(built["winter"], REPO)
    sketch = plan_push(built["sketch"], REPO, existing_card=winter.card_text)
    repo = tmp_path / "repo"
    for local, repo_path in winter.files + sketch.files:
        (repo / repo_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(local, repo / repo_path)
    (repo / "README.md").write_text(sketch.card_text)
    for name, rows in (("winter", 10), ("sketch", 5)):
        ds = datasets.load_dataset(str(repo), name, split="train", cache_dir=str(tmp_path / "cache"))
        assert len(ds) == rows and set(ds["style"]) == {name}
        assert ds.features["jpg_1"] == datasets.Value("binary")


def _lay_out(plans, repo: Path) -> Path:
    """A local folder laid out as the pushed repo: every plan's files, the last plan's card."""
    for local, repo_path in [f for plan in plans for f in plan.files]:
        (repo / repo_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(local, repo / repo_path)
    (repo / "README.md").write_text(plans[-1].card_text)
    return repo


def test_two_style_repo_loads_with_no_config_name(built, tmp_path):
    """Clients that pass no config name (diffusers' train_diffusion_dpo.py) get the first pushed config."""
    winter = plan_push(built["winter"], REPO)
    sketch = plan_push(built["sketch"], REPO, existing_card=winter.card_text)
    repo = _lay_out([winter, sketch], tmp_path / "repo")
    assert [c.get("default") for c in _yaml(sketch.card_text)["configs"]] == [None, True]
    ds = datasets.load_dataset(str(repo), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 10 and set(ds["style"]) == {"winter"}


def test_default_config_option_moves_the_default(built, tmp_path):
    winter = plan_push(built["winter"], REPO)
    sketch = plan_push(built["sketch"], REPO, existing_card=winter.card_text, default_config="sketch")
    again = plan_push(built["winter"], REPO, existing_card=sketch.card_text)  # re-pushing keeps the default
    assert [c["config_name"] for c in _yaml(again.card_text)["configs"] if c.get("default")] == ["sketch"]
    repo = _lay_out([winter, sketch, again], tmp_path / "repo")
    ds = datasets.load_dataset(str(repo), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 5 and set(ds["style"]) == {"sketch"}
    with pytest.raises(StyleprefsError, match="--default-config 'autumn' is not a config of this repo"):
        plan_push(built["sketch"], REPO, existing_card=winter.card_text, default_config="autumn")


def test_format_plan_lists_every_upload(built):
    plan = plan_push(built["sketch"], REPO, config_name="sketch_v2", revision="dev", private=True)
    lines = format_plan(plan)
    assert lines[0] == f"dataset repo {REPO}@dev (created private if missing), config sketch_v2:"
    for local, repo_path in plan.files:
        assert any(line.startswith(f"{local} -> {REPO}:{repo_path} (") for line in lines)
    assert any(f"-> {REPO}:README.md" in line for line in lines)
    assert "rejects.parquet" not in "\n".join(lines) and "quarantine.parquet" not in "\n".join(lines)


@pytest.mark.parametrize("repo_id", ["not a repo", "a/b/c", "noslash", "me/bad--name", ""])
def test_malformed_repo_id(built, repo_id):
    with pytest.raises(StyleprefsError, match=r"malformed repo id .*: expected owner/name"):
        plan_push(built["winter"], repo_id)


def test_no_manifest(tmp_path):
    with pytest.raises(StyleprefsError, match="no manifest.json"):
        plan_push(tmp_path, REPO)


def test_tampered_shard(built, tmp_path):
    copy = Path(shutil.copytree(built["winter"], tmp_path / "winter"))
    shard = copy / "data" / "train-00001-of-00003.parquet"
    shard.write_bytes(shard.read_bytes() + b"x")
    with pytest.raises(StyleprefsError, match="train-00001-of-00003.parquet does not match its sha256"):
        plan_push(copy, REPO)
    shard.unlink()
    with pytest.raises(StyleprefsError, match="train-00001-of-00003.parquet is missing"):
        plan_push(copy, REPO)


def test_offline_push_fails_fast(built, monkeypatch):
    plan = plan_push(built["winter"], REPO)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    start = time.monotonic()
    with pytest.raises(StyleprefsError, match=r"cannot reach the Hugging Face Hub at http://127\.0\.0\.1:9: .*push needs network"):
        push(plan, token=TOKEN)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(StyleprefsError, match="offline mode is on .*use --dry-run to see the plan"):
        push(plan, token=TOKEN)
    assert time.monotonic() - start < 5


class FakeHub:
    """Records HfApi calls; the remote repo holds a sketch config and an older, longer winter config."""

    def __init__(self, remote_card: str, tmp: Path):
        self.calls: list[tuple[str, dict]] = []
        self.tokens: list = []
        self.card_file = tmp / "remote_README.md"
        self.card_file.write_text(remote_card)
        self.remote = [".gitattributes", "README.md", "sketch/manifest.json", "sketch/train-00000-of-00002.parquet",
                       "winter/manifest.json"] + [f"winter/train-0000{i}-of-00005.parquet" for i in range(5)]

    def install(self, monkeypatch):
        hub = self

        def record(name, result=None):
            def method(api, *args, **kwargs):
                hub.calls.append((name, {"args": args, **kwargs}))
                hub.tokens.append(api.token)
                return result() if callable(result) else result
            monkeypatch.setattr(HfApi, name, method)

        record("create_repo", SimpleNamespace(repo_id=REPO))
        record("create_branch")
        record("list_repo_files", lambda: list(hub.remote))
        record("hf_hub_download", lambda: str(hub.card_file))
        record("create_commit", SimpleNamespace(commit_url=f"https://huggingface.co/datasets/{REPO}/commit/abc"))
        monkeypatch.setattr(publish, "_probe", lambda endpoint: None)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def named(self, name: str) -> list[dict]:
        return [kw for n, kw in self.calls if n == name]


@pytest.fixture
def hub(built, tmp_path, monkeypatch) -> FakeHub:
    fake = FakeHub(plan_push(built["sketch"], REPO, license="mit").card_text, tmp_path)
    fake.install(monkeypatch)
    return fake


def test_push_is_one_commit_and_keeps_other_configs(built, hub, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    plan = plan_push(built["winter"], REPO, revision="dev")
    url = push(plan, token=TOKEN)
    assert url.endswith("/commit/abc")
    assert [n for n, _ in hub.calls] == ["create_repo", "create_branch", "list_repo_files", "hf_hub_download", "create_commit"]
    assert hub.named("create_repo") == [{"args": (REPO,), "repo_type": "dataset", "private": False, "exist_ok": True}]
    assert hub.named("create_branch") == [{"args": (REPO,), "branch": "dev", "repo_type": "dataset", "exist_ok": True}]
    assert set(hub.tokens) == {TOKEN}
    (commit,) = hub.named("create_commit")
    assert commit["repo_type"] == "dataset" and commit["revision"] == "dev"
    ops = commit["args"][1]
    adds = {op.path_in_repo: op for op in ops if isinstance(op, CommitOperationAdd)}
    deletes = sorted(op.path_in_repo for op in ops if isinstance(op, CommitOperationDelete))
    assert sorted(adds) == sorted(_repo_paths(plan) + ["README.md"])
    assert deletes == [f"winter/train-0000{i}-of-00005.parquet" for i in range(5)]  # renamed: -of-00003 now
    card = adds["README.md"].path_or_fileobj.decode()
    meta = _yaml(card)
    assert [c["config_name"] for c in meta["configs"]] == ["sketch", "winter"]
    assert meta["license"] == "mit"  # kept from the repo's card
    assert "<!-- styleprefs-config: sketch -->" in card
    out, err = capsys.readouterr()
    assert TOKEN not in out + err + caplog.text


def test_hub_errors_become_one_line_without_the_token(built, hub, monkeypatch, capsys, caplog):
    def fail(api, *args, **kwargs):
        raise RuntimeError(f"401 Client Error: Unauthorized for token {TOKEN}\nAuthorization: Bearer {TOKEN}")

    monkeypatch.setattr(HfApi, "create_commit", fail)
    with pytest.raises(StyleprefsError) as exc:
        push(plan_push(built["winter"], REPO), token=TOKEN)
    message = str(exc.value)
    assert message.startswith(f"push to {REPO} failed: 401 Client Error")
    assert "\n" not in message and TOKEN not in message and "SECRET" not in message
    out, err = capsys.readouterr()
    assert TOKEN not in out + err + caplog.text


def test_push_without_any_token(built, hub, monkeypatch):
    monkeypatch.setattr(publish, "get_token", lambda: None)
    with pytest.raises(StyleprefsError, match="no Hugging Face token: pass --token, set HF_TOKEN"):
        push(plan_push(built["winter"], REPO), token=None)
    assert hub.calls == []


def test_push_into_an_empty_repo(built, hub):
    hub.remote = [".gitattributes"]
    push(plan_push(built["winter"], REPO), token=TOKEN)
    assert hub.named("hf_hub_download") == [] and hub.named("create_branch") == []
    (commit,) = hub.named("create_commit")
    ops = commit["args"][1]
    assert not any(isinstance(op, CommitOperationDelete) for op in ops)
    card = next(op for op in ops if op.path_in_repo == "README.md").path_or_fileobj.decode()
    assert [c["config_name"] for c in _yaml(card)["configs"]] == ["winter"]
    assert "license" not in _yaml(card)

