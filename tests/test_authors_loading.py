"""Loading the paper's heads: where the files come from and one clear message for each bad case (issue 22)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mm_core.errors import ModelUnavailableError
from mm_core.heads.authors import weights
from mm_core.settings import reload_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("MM_AUTHORS_HEADS", raising=False)
    monkeypatch.delenv("MM_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(weights, "_cached", lambda filename: None)  # no copy in this machine's HF cache
    reload_settings()
    yield
    reload_settings()


def _no_download(*a, **k):
    raise AssertionError("the hub must not be asked when downloads are off")


@pytest.fixture(scope="module")
def cnt_state():
    from mm_core.heads.authors.layout import build

    torch.manual_seed(0)
    return build("cnt").state_dict()


def test_no_weights_and_downloads_off_names_folder_and_variable(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _no_download)
    monkeypatch.setenv("MM_AUTHORS_HEADS", str(tmp_path))
    reload_settings()
    with pytest.raises(ModelUnavailableError) as e:
        weights.find_file("seg")
    msg = str(e.value)
    assert str(tmp_path) in msg and "MM_AUTHORS_HEADS" in msg and "MM_ALLOW_DOWNLOAD" in msg
    assert "\n" not in msg
    monkeypatch.delenv("MM_AUTHORS_HEADS")
    reload_settings()
    with pytest.raises(ModelUnavailableError, match="MM_AUTHORS_HEADS is not set"):
        weights.find_file("cnt")


def test_download_only_when_allowed_and_checksum_checked(monkeypatch, tmp_path):
    import huggingface_hub

    calls = []
    blob = tmp_path / "blob.pth"

    def fake_download(repo_id, filename, **kw):
        calls.append((repo_id, filename))
        blob.write_bytes(b"weights")
        return str(blob)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(weights, "_hub_sha256", lambda f: weights.sha256(blob))
    assert weights.find_file("tra", allow_download=True) == blob
    assert calls == [("phoebe777777/111", "microscopy_matching_tra.pth")]
    monkeypatch.setattr(weights, "_hub_sha256", lambda f: "0" * 64)  # the hub records another file
    with pytest.raises(ModelUnavailableError, match="checksum"):
        weights.find_file("tra", allow_download=True)
    assert not blob.exists()  # nothing half-right stays cached
    monkeypatch.setenv("MM_ALLOW_DOWNLOAD", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline wins, as for the SD weights
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _no_download)
    with pytest.raises(ModelUnavailableError, match="downloads are off"):
        weights.find_file("tra")


def test_download_failure_is_one_message(monkeypatch):
    import huggingface_hub

    def boom(**kw):
        raise OSError("connection refused\nmore lines")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda **kw: boom(**kw))
    with pytest.raises(ModelUnavailableError) as e:
        weights.find_file("cnt", allow_download=True)
    assert "connection refused" in str(e.value) and "more lines" not in str(e.value)


def test_truncated_and_corrupt_files_give_one_message(tmp_path, cnt_state):
    from mm_core.heads.authors.count import AuthorsCountHead

    good = tmp_path / "full.pth"
    torch.save(cnt_state, good)
    data = good.read_bytes()
    (tmp_path / "microscopy_matching_cnt.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelUnavailableError, match="truncated"):
        AuthorsCountHead.load(tmp_path)
    junk = np.random.default_rng(0).integers(0, 255, len(data), dtype=np.uint8).tobytes()
    (tmp_path / "microscopy_matching_cnt.pth").write_bytes(junk)
    with pytest.raises(ModelUnavailableError, match="cannot be read as a PyTorch checkpoint") as e:
        AuthorsCountHead.load(tmp_path)
    assert "\n" not in str(e.value)


def test_other_layout_names_first_mismatching_key_and_good_file_loads(tmp_path, cnt_state):
    from mm_core.heads.authors.count import AuthorsCountHead

    bad = dict(cnt_state)
    bad["loca_model.input_proj.weight"] = torch.zeros(128, 3584, 1, 1)
    torch.save(bad, tmp_path / "microscopy_matching_cnt.pth")
    with pytest.raises(ModelUnavailableError, match="loca_model.input_proj.weight"):
        AuthorsCountHead.load(tmp_path)
    torch.save(cnt_state, tmp_path / "microscopy_matching_cnt.pth")
    head = AuthorsCountHead.load(tmp_path)
    got = head.module.state_dict()
    assert set(got) == set(cnt_state)
    assert torch.equal(got["loca_model.fuse.0.weight"], cnt_state["loca_model.fuse.0.weight"])
    assert "microscopy_matching_cnt.pth" in head.describe()


def test_default_heads_stay_analytic_without_authors_weights():
    from mm_core.heads.registry import resolve_head

    head, note = resolve_head(None, "count", "ldm")
    assert "paper" not in note and head.describe() in note
    with pytest.raises(ModelUnavailableError, match="LDM engine"):
        resolve_head("microscopymatching", "count", "classic")
    with pytest.raises(ModelUnavailableError, match="MM_AUTHORS_HEADS"):
        resolve_head("microscopymatching", "count", "ldm", own_task=True)


def test_pretrained_setup_is_registered():
    from mm_core.heads.registry import setup

    s = setup("microscopymatching")
    assert s.engine == "ldm" and s.heads == "microscopymatching"


def test_app_falls_back_to_weight_free_engine_and_says_why(monkeypatch, tmp_path):
    pytest.importorskip("gradio")
    from mm_core.app import handlers

    monkeypatch.setenv("MM_PRETRAINED", "microscopymatching")
    monkeypatch.setenv("MM_SD_MODEL", str(tmp_path / "no-sd-here"))
    reload_settings()
    monkeypatch.setitem(handlers.MATCHER, "matcher", None)
    handlers.load_engine()
    m = handlers.MATCHER["matcher"]
    assert m is not None and m.engine.name == "classic"
    reason = handlers.MATCHER["reason"]
    assert "microscopymatching" in reason and "no-sd-here" in reason


def test_app_with_sd_but_a_broken_head_file_falls_back_and_names_the_file(monkeypatch, tmp_path):
    pytest.importorskip("gradio")
    pytest.importorskip("diffusers")
    from mm_core.app import handlers
    from mm_core.heads.authors.testing import save_authors_tiny_pipeline

    sd = save_authors_tiny_pipeline(tmp_path / "sd")
    heads = tmp_path / "heads"
    heads.mkdir()
    (heads / "microscopy_matching_seg.pth").write_bytes(b"PK\x03\x04 not really a checkpoint")
    monkeypatch.setenv("MM_PRETRAINED", "microscopymatching")
    monkeypatch.setenv("MM_SD_MODEL", str(sd))
    monkeypatch.setenv("MM_AUTHORS_HEADS", str(heads))
    reload_settings()
    monkeypatch.setitem(handlers.MATCHER, "matcher", None)
    handlers.load_engine()
    assert handlers.MATCHER["matcher"].engine.name == "classic"
    reason = handlers.MATCHER["reason"]
    assert "weight-free engine" in reason and "microscopy_matching_seg.pth" in reason and "truncated" in reason
