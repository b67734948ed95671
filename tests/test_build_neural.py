"""`styleprefs build` with the neural editors on tiny models, and the CLIP quality gate in the loop."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from styleprefs.cli.app import main



def build(out, *args: str) -> dict:
    with pytest.raises(SystemExit) as exc:
        main(["build", "--source", "sample", "--out", str(out), "--editor-model", "tiny", "--editor-steps", "2",
              "--device", "cpu", *args])
        raise SystemExit(0)
    assert exc.value.code == 0
    return json.loads((out / "manifest.json").read_text())


def test_instruct_pix2pix_with_quality_gate(tmp_path):
    manifest = build(tmp_path / "ip2p", "--style", "van_gogh", "--editor", "instruct-pix2pix", "--clip-model", "tiny",
                     "--num-pairs", "3", "--max-tries", "2", "--min-direction", "0.0", "--min-text", "-1", "--batch-size", "2")
    counts = manifest["counts"]
    assert counts["kept"] == 3 and counts["kept"] + counts["rejected"] + counts["quarantined"] == counts["read"]
    assert manifest["config"]["build"]["quality_gate"] is True
    rows = pq.read_table(tmp_path / "ip2p" / "data").to_pylist()
    for row in rows:
        assert row["clip_direction"] >= 0.0 and row["clip_image"] >= 0.7
        assert -1.0 <= row["clip_text_edit"] <= 1.0 and -1.0 <= row["clip_text_original"] <= 1.0
        slot = 0 if row["label_0"] == 1.0 else 1
        assert row[f"model_{slot}"] == "tiny-ip2p" and row["editor"] == "instruct-pix2pix"
        assert json.loads(row["edit_params"])["instruction"] == "make it a Van Gogh painting"
    reasons = pq.read_table(tmp_path / "ip2p" / "rejects.parquet").column("reason").to_pylist()
    assert all(r.startswith("quality gate: clip direction") and r.endswith("after 2 tries") for r in reasons)


def test_prompt_diffusion_without_gate(tmp_path):
    manifest = build(tmp_path / "pd", "--style", "winter", "--editor", "prompt-diffusion", "--no-quality-gate",
                     "--num-pairs", "2")
    assert manifest["counts"] == {"read": 2, "kept": 2, "rejected": 0, "quarantined": 0,
                                  "skipped_duplicate_captions": 0, "requested": 2}
    rows = pq.read_table(tmp_path / "pd" / "data").to_pylist()
    assert all(r["clip_direction"] is None and r["clip_text_edit"] is None and r["editor"] == "prompt-diffusion"
               for r in rows)
    assert manifest["config"]["editor"]["model"] == "tiny-prompt-diffusion"
