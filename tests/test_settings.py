"""The one settings object (mm_core.settings): every MM_* variable, parsed once, documented in the README."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from mm_core.errors import InputError
from mm_core.settings import Settings, get_settings, reload_settings, settings_table

REPO = Path(__file__).resolve().parents[1]
#: Variables other libraries own; the code reads them where it uses them.
NOT_OURS = ("GRADIO_ANALYTICS_ENABLED", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "HF_HUB_OFFLINE",
            "ZERO_GPU_ENV")


def test_readme_table_is_generated_from_the_settings():
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- settings-table:start -->\n(.*?)\n<!-- settings-table:end -->", text, re.DOTALL)
    assert block, "README.md lacks the settings-table markers"
    assert block.group(1) == settings_table(), "regenerate it: python -m mm_core settings --markdown"
    assert len(settings_table().splitlines()) == 2 + len(fields(Settings))


def test_every_field_has_its_own_variable_and_a_one_line_doc():
    names = [f.metadata["env"] for f in fields(Settings)]
    assert len(set(names)) == len(names) and all(n.startswith("MM_") for n in names)
    for f in fields(Settings):
        doc = f.metadata["doc"]
        assert doc and "\n" not in doc and doc.endswith("."), f.name
        assert Settings.env(f.name) == f.metadata["env"]
        assert type(getattr(Settings(), f.name)) is type(f.default)


def test_every_variable_the_code_names_is_a_setting():
    known = {f.metadata["env"] for f in fields(Settings)}
    named = set()
    for path in [*(REPO / "mm_core").rglob("*.py"), REPO / "app.py"]:
        named |= set(re.findall(r"\bMM_[A-Z0-9_]+", path.read_text()))
    assert named and named <= known, sorted(named - known)


def test_no_module_reads_the_environment_but_settings():
    offenders = []
    for path in (REPO / "mm_core").rglob("*.py"):
        if path.name == "settings.py" and path.parent.name == "mm_core":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"os\.environ|getenv", line) and not any(v in line for v in NOT_OURS):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, offenders


def test_values_parse_by_type_and_empty_keeps_the_default():
    s = Settings.from_env({"MM_ALLOW_DOWNLOAD": "yes", "MM_APP_DEBUG": "0", "MM_MAX_PIXELS": "1e6",
                           "MM_APP_MAX_AGE_S": " 90.5 ", "MM_ENGINE": "classic", "MM_LDM_DTYPE": "bfloat16",
                           "MM_SD_MODEL": "/data/sd14", "MM_MAX_BOXES": "", "MM_APP_OUTPUT_ROOT": "  "})
    assert s.allow_download is True and s.app_debug is False
    assert s.max_pixels == 1_000_000 and isinstance(s.max_pixels, int)
    assert s.app_max_age_s == 90.5 and s.engine == "classic" and s.ldm_dtype == "bfloat16"
    assert s.sd_model == "/data/sd14"
    assert s.max_boxes == 64 and s.app_output_root == ""  # empty or blank: the default
    assert Settings.from_env({}) == Settings()


@pytest.mark.parametrize(("env", "value", "what"), [
    ("MM_APP_MAX_PIXELS", "abc", "a positive whole number"),
    ("MM_MAX_BOXES", "0", "a positive whole number"),
    ("MM_MAX_FRAMES", "2.5", "a positive whole number"),
    ("MM_APP_IDLE_S", "nan", "a positive number"),
    ("MM_APP_DEBUG", "maybe", "one of 1/true"),
    ("MM_ENGINE", "gpu", "one of auto, classic, ldm"),
    ("MM_LDM_DTYPE", "half", "one of float32, float16, bfloat16"),
])
def test_a_bad_value_is_one_message_naming_the_variable(env, value, what):
    with pytest.raises(InputError) as err:
        Settings.from_env({env: value})
    msg = str(err.value)
    assert msg.startswith(f"environment variable {env} must be {what}") and msg.endswith(f", got {value!r}")


def test_read_once_until_reloaded(mm_env, monkeypatch):
    mm_env(MM_MAX_BOXES="5")
    first = get_settings()
    assert first.max_boxes == 5 and get_settings() is first
    monkeypatch.setenv("MM_MAX_BOXES", "7")  # without a reload: still the value read first
    assert get_settings().max_boxes == 5
    assert reload_settings().max_boxes == 7 and get_settings().max_boxes == 7


def test_limits_read_their_defaults_from_the_settings(mm_env):
    from mm_core.io.limits import MAX_BOXES, MAX_PIXELS, Limits

    assert (MAX_PIXELS, MAX_BOXES) == (Settings().max_pixels, Settings().max_boxes)
    mm_env(MM_MAX_ZIP_RATIO="9")
    lim = Limits.resolve(max_pixels=100)
    assert lim.max_zip_ratio == 9 and lim.max_pixels == 100 and lim.max_frames == Settings().max_frames


def test_cli_prints_the_settings_and_refuses_a_bad_one(mm_env, capsys):
    from mm_core.cli import main

    assert main(["settings", "--markdown"]) == 0
    assert capsys.readouterr().out.strip() == settings_table()
    mm_env(MM_MAX_BOXES="3")
    assert main(["settings"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "MM_MAX_BOXES=3" in out and len(out) == len(fields(Settings))
    mm_env(MM_APP_MAX_PIXELS="abc")
    assert main(["settings"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: environment variable MM_APP_MAX_PIXELS must be a positive whole number, got 'abc'"


def test_app_refuses_a_bad_setting_at_start_without_a_traceback(mm_env, capsys):
    pytest.importorskip("gradio")
    from mm_core.app import ui

    mm_env(MM_APP_MAX_PIXELS="abc")
    with pytest.raises(SystemExit) as stop:
        ui.main([])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "MM_APP_MAX_PIXELS" in err and "Traceback" not in err
