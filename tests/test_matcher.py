"""mm_core.Matcher: one engine and its heads, made once; the conveniences over a default one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import mm_core
from mm_core.engines.classic import ClassicEngine
from mm_core.errors import InputError
from mm_core.heads.counting import DensityHead
from mm_core.heads.segmentation import WatershedHead
from mm_core.heads.tracking import AnalyticLinker


def blobs(shape=(96, 96), shift=0, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(100, 4, shape).astype(np.float32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for cy, cx in ((24, 24), (24, 70), (70, 24), (70, 70)):
        img[(yy - cy) ** 2 + (xx - cx - shift) ** 2 <= 64] += 300
    return img


class CountingEngine(ClassicEngine):
    """The classic engine, counting its calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def match(self, image, boxes=None):
        self.calls += 1
        return super().match(image, boxes)


def test_matcher_holds_one_engine_and_its_heads():
    m = mm_core.Matcher("classic", head="analytic")
    assert m.engine.name == "classic" and "weight-free" in m.engine_note
    assert isinstance(m.head("segment"), WatershedHead) and m.head("segment") is m.head("segment")
    assert isinstance(m.head("count"), DensityHead) and isinstance(m.head("track"), AnalyticLinker)
    assert "segment: analytic watershed head" in m.head_note
    res = m.segment(blobs())
    assert res.n_objects == 4 and res.head_note.startswith("analytic watershed head")
    assert round(m.count(blobs()).count) == 4


def test_shipped_defaults(torch_one_thread):
    """What ships: CellMatch segments in both modes (issue 21's rule); counting stays analytic."""
    from mm_core.heads.learned.cellmatch import CellMatchHead

    m = mm_core.Matcher("classic")
    assert isinstance(m.head("segment"), CellMatchHead) and m.head("segment", "exemplar") is not None
    assert isinstance(m.head("segment", "exemplar"), CellMatchHead)
    assert isinstance(m.head("count"), DensityHead) and isinstance(m.head("count", "exemplar"), DensityHead)
    res = m.segment(blobs())
    assert "cellmatch" in res.head_note and res.n_objects == 4
    boxed = m.segment(blobs(), boxes=[[16, 16, 33, 33]])
    assert "cellmatch" in boxed.head_note and boxed.maps.mode == "exemplar" and "prompt" in boxed.maps.conditioning
    assert "with exemplar boxes" not in m.head_notes()["segment"]  # one model for both modes


def test_engine_object_is_used_as_given_and_tracking_is_driven_by_the_pipeline():
    eng = CountingEngine()
    m = mm_core.Matcher(eng, head="analytic")
    frames = [blobs(shift=2 * t, seed=t) for t in range(3)]
    res = m.track(frames)
    assert eng.calls >= 3 and res.n_tracks == 4 and "as given" in res.engine_note
    assert "analytic watershed head" in res.head_note and "analytic linking" in res.head_note


def test_from_pretrained_and_bad_arguments():
    assert mm_core.Matcher.from_pretrained("classic").engine.name == "classic"
    with pytest.raises(InputError, match="unknown pretrained"):
        mm_core.Matcher.from_pretrained("nope")
    with pytest.raises(InputError, match="unknown engine"):
        mm_core.Matcher("gpu-please")
    with pytest.raises(InputError, match="engine must be"):
        mm_core.Matcher(42)
    with pytest.raises(InputError, match="unknown task"):
        mm_core.Matcher("classic", head={"segmentation": "analytic"})
    with pytest.raises(InputError, match="head must be"):
        mm_core.Matcher("classic", head=3.5)
    with pytest.raises(InputError, match="no head checkpoint"):
        mm_core.Matcher("classic", head={"segment": "no-such-head"}).segment(blobs())


def test_a_setup_is_one_registry_entry(monkeypatch):
    """``from_pretrained(name)`` builds what the one table says: engine and heads per task."""
    from mm_core.heads import registry

    assert set(registry.SETUPS) >= {"auto", "classic", "ldm-sd14"}
    assert all(s.doc and s.engine in ("auto", "classic", "ldm") for s in registry.SETUPS.values())
    monkeypatch.setitem(registry.SETUPS, "test-setup", registry.Setup("classic", {"segment": "analytic"}, "a test"))
    m = mm_core.Matcher.from_pretrained("test-setup")
    assert m.engine.name == "classic" and m.head_notes()["segment"] == "analytic watershed head, as requested"
    assert m.head_notes()["count"] == mm_core.Matcher("classic").head_notes()["count"]  # left out: the default
    over = mm_core.Matcher.from_pretrained("test-setup", head={"segment": WatershedHead(), "track": "analytic"})
    assert over.head_notes()["segment"] == "analytic watershed head" and "as requested" in over.head_note
    with pytest.raises(InputError, match="head object serves one task"):
        mm_core.Matcher("classic", head=WatershedHead())
    with pytest.raises(InputError, match="head must be"):
        mm_core.Matcher("classic", head={"count": 7})


def test_one_checkpoint_serves_its_own_task(tmp_path, torch_one_thread):
    """``head=<linking checkpoint>`` makes track use it; segment and count keep their defaults."""
    import torch

    from mm_core.heads.learned import LinkingHead

    torch.manual_seed(0)
    folder = LinkingHead("classic", 28, dim=16, heads=2).save_pretrained(tmp_path / "link-test")
    m = mm_core.Matcher("classic", head=str(folder))
    default = mm_core.Matcher("classic")
    assert isinstance(m.head("track"), LinkingHead) and isinstance(m.head("count"), type(default.head("count")))
    for mode in ("automatic", "exemplar"):  # the shipped defaults
        assert type(m.head("segment", mode)) is type(default.head("segment", mode))
    res = m.track([blobs(shift=2 * t, seed=t) for t in range(3)])
    assert "learned linking head 'link-test'" in res.head_note
    assert res.masks.shape == (3, 96, 96) and res.n_tracks >= 4
    with pytest.raises(InputError, match="needs a segmentation head"):  # per task: strict
        mm_core.Matcher("classic", head={"segment": str(folder)}).segment(blobs())


def test_default_matcher_is_reused_and_replaced():
    from mm_core.models import default_matcher

    a = default_matcher("classic")
    assert default_matcher("classic") is a
    b = default_matcher("classic", head="analytic")
    assert b is not a and default_matcher("classic", head="analytic") is b
    assert mm_core.segment(blobs(), engine="classic").n_objects == 4


def test_training_cache_key_covers_every_source_the_maps_depend_on():
    from mm_core.train.cache import engine_sources

    files = {Path(p).relative_to(Path(mm_core.__file__).parent).as_posix() for p in engine_sources(ClassicEngine())}
    assert {"engines/classic/engine.py", "engines/classic/bank.py", "engines/classic/centers.py",
            "transforms/image.py", "engines/base.py"} <= files
    assert not any(f.startswith("heads/") for f in files)  # heads do not shape the engine's maps


def test_shipped_defaults_are_per_mode(tmp_path, monkeypatch, torch_one_thread):
    """A default for one mode runs only without (or with) boxes; the note says which head ran."""
    import torch

    from mm_core.heads import registry
    from mm_core.heads.learned import checkpoints
    from mm_core.heads.learned.generalist import GeneralistCounter, GeneralistHead

    torch.manual_seed(0)
    GeneralistHead("classic", base=4, levels=2, tile=64).save_pretrained(tmp_path / "weights" / "g-mode")
    monkeypatch.setattr(checkpoints, "WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.setattr(registry, "DEFAULTS", {("segment", "classic", "automatic"): "g-mode",
                                               ("count", "classic", "exemplar"): "g-mode"})
    m = mm_core.Matcher("classic")
    box = [[16, 16, 33, 33]]
    assert isinstance(m.head("segment"), GeneralistHead)
    assert isinstance(m.head("segment", "exemplar"), WatershedHead)
    assert isinstance(m.head("count"), DensityHead) and isinstance(m.head("count", "exemplar"), GeneralistCounter)
    assert "g-mode" in m.segment(blobs()).head_note
    res = m.segment(blobs(), boxes=box)
    assert res.head_note.startswith("analytic watershed head") and "for automatic mode only" in res.head_note
    assert "g-mode" in m.count(blobs(), boxes=box).head_note
    assert m.count(blobs(), boxes=[]).head_note.startswith("analytic density head")  # no box: automatic
    assert "with exemplar boxes: learned generalist head 'g-mode'" in m.head_notes()["count"]
    # --head analytic keeps the analytic heads in both modes
    a = mm_core.Matcher("classic", head="analytic")
    assert isinstance(a.head("segment"), WatershedHead) and a.segment(blobs(), boxes=box).n_objects >= 1
    assert "as requested" in a.segment(blobs()).head_note
    with pytest.raises(InputError, match="unknown mode"):
        m.head("segment", "boxes")


def test_tracking_keeps_the_analytic_per_frame_head_unless_asked(torch_one_thread):
    """The segmentation default tracked worse on SIM+: track() does not use it by default."""
    from mm_core.heads.learned.generalist import GeneralistHead

    frames = [blobs(shift=2 * t, seed=t) for t in range(3)]
    m = mm_core.Matcher("classic")
    seg, link, note = m.track_heads()
    assert isinstance(seg, WatershedHead) and isinstance(link, AnalyticLinker)
    res = m.track(frames)
    assert res.head_note.startswith("analytic watershed head") and "not used for tracking" in res.head_note
    asked = mm_core.Matcher("classic", head="generalist-classic")
    assert isinstance(asked.track_heads()[0], GeneralistHead)
    assert "generalist-classic" in asked.track(frames).head_note
