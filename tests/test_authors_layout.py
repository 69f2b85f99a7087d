"""The authors' head checkpoints: our modules' layout, strict loading, check-heads.

The recorded key / shape lists (``tests/data/authors_heads_keys``, copied from
``../shared/research/authors_heads_keys``) stand in for the real files, which no machine here
can download. Checkpoints are written as the authors' are: ``torch.save`` of a plain state dict.
Most files hold stride-0 tensors (full shapes, one stored value), so even the 1.4 GB layouts are
cheap; the counting checkpoint is also written at full size, and seg/tra at full size under
``-m slow``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from mm_core.cli import main as cli_main
from mm_core.errors import ModelUnavailableError
from mm_core.heads.authors import layout
from mm_core.heads.authors.check import TASK_EMBED, check_folder

KEYS = Path(__file__).parent / "data" / "authors_heads_keys"
FILES = {"seg": "microscopy_matching_seg.pth", "cnt": "microscopy_matching_cnt.pth",
         "tra": "microscopy_matching_tra.pth"}
COUNTS = {"seg": 757, "cnt": 423, "tra": 1023}


def recorded(kind: str) -> list[tuple[str, tuple[int, ...], str]]:
    """(key, shape, param/buffer) rows of a recorded list, in state-dict order."""
    rows = [line.rstrip("\n").split("\t") for line in (KEYS / f"{kind}_keys.tsv").read_text().splitlines()]
    return [(k, tuple(ast.literal_eval(s)), t) for k, s, t in rows]


def cheap_state(kind: str) -> dict:
    """A state dict of the recorded layout whose tensors store one value each (stride 0)."""
    return {k: torch.full((1,), 0.5).expand(shape) for k, shape, _ in recorded(kind)}


def random_state(kind: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k, shape, _ in recorded(kind)}


@pytest.fixture(scope="module")
def meta_modules() -> dict:
    return {kind: layout.build(kind, device="meta") for kind in layout.KINDS}


@pytest.mark.parametrize("kind", layout.KINDS)
def test_state_dict_is_the_recorded_layout(kind, meta_modules):
    """Names, shapes, order and parameter/buffer kind, entry for entry."""
    module = meta_modules[kind]
    buffers = {name for name, _ in module.named_buffers()}
    ours = [(k, tuple(v.shape), "buffer" if k in buffers else "param") for k, v in module.state_dict().items()]
    want = recorded(kind)
    assert len(want) == COUNTS[kind]
    assert ours == want


def test_frozen_batch_norm_has_four_buffers_and_no_counter(meta_modules):
    keys = list(meta_modules["cnt"].state_dict())
    assert not [k for k in keys if k.endswith("num_batches_tracked")]
    bn1 = [k for k in keys if k.startswith("loca_model.backbone.backbone.bn1.")]
    assert [k.rsplit(".", 1)[1] for k in bn1] == ["weight", "bias", "running_mean", "running_var"]
    assert sum(1 for _ in meta_modules["cnt"].loca_model.backbone.buffers()) == 212


def test_element_counts_match_the_note(meta_modules):
    counts = {k: sum(t.numel() for t in m.state_dict().values()) for k, m in meta_modules.items()}
    assert counts == {"seg": 344_078_465, "cnt": 40_272_460, "tra": 356_137_280}


@pytest.mark.parametrize("kind", layout.KINDS)
def test_recorded_layout_loads_strictly_from_a_saved_file(kind, tmp_path):
    path = tmp_path / FILES[kind]
    torch.save(cheap_state(kind), path)
    module = layout.build(kind, device="meta")
    layout.load_state(module, torch.load(path, map_location="cpu", weights_only=True), path.name)
    assert not any(t.is_meta for t in module.state_dict().values())
    assert float(module.state_dict()[recorded(kind)[-1][0]].flatten()[0]) == 0.5


def test_reduced_depth_round_trip_keeps_every_value(tmp_path):
    """Random weights saved from one small tracking module load into a fresh one unchanged."""
    torch.manual_seed(0)
    src = layout.build("tra", vit_depth=1, tracker_layers=1, device="meta").to_empty(device="cpu")
    for t in src.state_dict().values():
        t.copy_(torch.randn_like(t))
    torch.save(src.state_dict(), tmp_path / "small.pth")
    state = torch.load(tmp_path / "small.pth", map_location="cpu", weights_only=True)
    dst = layout.build("tra", vit_depth=1, tracker_layers=1, device="meta")
    layout.load_state(dst, state, "small.pth")
    loaded = dst.state_dict()
    for key, value in src.state_dict().items():
        assert torch.equal(loaded[key], value), key
    assert not any(p.requires_grad for p in dst.parameters())


def test_full_size_counting_checkpoint_with_random_values(tmp_path, capsys):
    state = random_state("cnt")
    torch.save(state, tmp_path / FILES["cnt"])
    assert cli_main(["check-heads", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == (
        f"{FILES['cnt']}: ok (counting head, 423 tensors, 40,272,460 values)")
    module = layout.build("cnt", device="meta")
    layout.load_state(module, torch.load(tmp_path / FILES["cnt"], weights_only=True), FILES["cnt"])
    key = "loca_model.fuse.0.weight"
    assert torch.equal(module.state_dict()[key], state[key])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["seg", "tra"])
def test_full_size_checkpoints_with_random_values(kind, tmp_path, capsys):
    torch.save(random_state(kind), tmp_path / FILES[kind])
    assert cli_main(["check-heads", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(f"{FILES[kind]}: ok")


# --- one clear message naming the key


def _meta_state(kind: str) -> dict:
    return {k: torch.empty(shape, device="meta") for k, shape, _ in recorded(kind)}


def test_missing_key_is_named(meta_modules):
    state = _meta_state("seg")
    del state["counting_adapter.regressor.vit.encoder.blocks.5.attn.rel_pos_h"]
    msg = layout.first_mismatch(meta_modules["seg"], state)
    assert msg == "missing key 'counting_adapter.regressor.vit.encoder.blocks.5.attn.rel_pos_h' [127, 64]"


def test_unexpected_key_is_named(meta_modules):
    state = _meta_state("cnt")
    state["loca_model.fuse1.weight"] = torch.empty(3, device="meta")
    assert layout.first_mismatch(meta_modules["cnt"], state) == "unexpected key 'loca_model.fuse1.weight'"


def test_mis_shaped_key_is_named_with_both_shapes(meta_modules):
    state = _meta_state("tra")
    state["track_model.proj.weight"] = torch.empty(320, 150, device="meta")
    assert layout.first_mismatch(meta_modules["tra"], state) == (
        "key 'track_model.proj.weight' has shape [320, 150], expected [320, 152]")


def test_first_problem_in_order_and_counts_of_the_rest(meta_modules):
    state = _meta_state("cnt")
    del state["loca_model.input_proj.bias"], state["counting_adapter.adapter.fc.bias"]
    state["loca_model.backbone.backbone.bn1.num_batches_tracked"] = torch.empty((), device="meta")
    msg = layout.first_mismatch(meta_modules["cnt"], state)
    assert msg == "missing key 'loca_model.input_proj.bias' [256] (and 1 more missing, 1 more unexpected)"


def test_another_head_layout_is_refused_with_the_file_name():
    module = layout.build("cnt", device="meta")
    with pytest.raises(ModelUnavailableError) as err:
        layout.load_state(module, _meta_state("seg"), "microscopy_matching_cnt.pth")
    assert str(err.value) == (
        "microscopy_matching_cnt.pth does not have the layout of the authors' checkpoint: missing key "
        "'counting_adapter.regressor.layer1.0.weight' [256, 324, 1, 1] (and 17 more missing, 352 more unexpected)")


# --- check-heads


def _run(folder, capsys) -> tuple[int, list[str], str]:
    code = cli_main(["check-heads", str(folder)])
    out = capsys.readouterr()
    return code, out.out.splitlines(), out.err


def test_check_heads_all_three_ok(tmp_path, capsys):
    for kind in layout.KINDS:
        torch.save(cheap_state(kind), tmp_path / FILES[kind])
    torch.save(torch.zeros(768), tmp_path / TASK_EMBED)
    code, lines, _ = _run(tmp_path, capsys)
    assert code == 0
    assert [line.split(":")[0] for line in lines] == [*FILES.values(), TASK_EMBED]
    assert all(": ok (" in line for line in lines)
    assert lines[2] == f"{FILES['tra']}: ok (tracking head, 1023 tensors, 356,137,280 values)"


def test_check_heads_names_the_bad_key_and_fails(tmp_path, capsys):
    good, bad = cheap_state("cnt"), cheap_state("tra")
    bad["track_model.mlp.extra"] = torch.zeros(2)
    del bad["track_model.norm.bias"]
    torch.save(good, tmp_path / FILES["cnt"])
    torch.save(bad, tmp_path / FILES["tra"])
    code, lines, _ = _run(tmp_path, capsys)
    assert code == 1
    assert lines == [f"{FILES['cnt']}: ok (counting head, 423 tensors, 40,272,460 values)",
                     f"{FILES['tra']}: missing key 'track_model.norm.bias' [320] (and 1 more unexpected)"]


def test_check_heads_truncated_file(tmp_path, capsys):
    torch.save(cheap_state("seg"), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / FILES["seg"]).write_bytes(data[: len(data) // 2])
    code, lines, _ = _run(tmp_path, capsys)
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith(f"{FILES['seg']} cannot be read as a PyTorch checkpoint (corrupt or truncated?)")


def test_check_heads_token_embedding_layouts(tmp_path, capsys):
    torch.save({"<task-prompt>": torch.zeros(1, 768)}, tmp_path / TASK_EMBED)
    code, lines, _ = _run(tmp_path, capsys)
    assert (code, lines) == (0, [f"{TASK_EMBED}: ok (token embedding under '<task-prompt>', shape [1, 768])"])
    torch.save(torch.zeros(1024), tmp_path / TASK_EMBED)
    code, lines, _ = _run(tmp_path, capsys)
    assert (code, lines) == (1, [f"{TASK_EMBED}: expected a 768-value token embedding, found [1024]"])


def test_check_heads_usage_errors(tmp_path, capsys):
    code, lines, err = _run(tmp_path, capsys)
    assert (code, lines) == (2, []) and "holds none of the authors' files" in err
    code, lines, err = _run(tmp_path / "nope", capsys)
    assert (code, lines) == (2, []) and "is not a folder" in err


def test_check_folder_ignores_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    torch.save(cheap_state("cnt"), tmp_path / FILES["cnt"])
    lines, good = check_folder(tmp_path)
    assert good and len(lines) == 1
