"""What the app says on screen (mm_core.app.display): plain words, warnings, legends, settings."""

from __future__ import annotations

import numpy as np

from mm_core.app import display


def test_result_panel_whole_numbers_and_warnings_with_one_try_line():
    html = display.result_html(127, "objects counted")
    assert ">127<" in html and "No sign of a failed match" in html and "mm-warn" not in html
    assert ">1,840<" in display.result_html(1840.0, "objects")  # a whole float is written whole
    warns = ["Objects cover 70% of the image. Try: draw a box around one typical object.",
             "Objects <b>tiny</b>. Try: draw a box around one typical object."]
    html = display.result_html(5, "objects", warns, extra=[(2, "divisions")])
    assert html.count("<li>") == 2 and html.count("<b>Try:</b>") == 1 and "&lt;b&gt;tiny" in html
    assert ">2<" in html and "divisions" in html


def test_plain_words_and_the_setting_that_applies():
    assert "classical image analysis, no download" in display.engine_words("classic")
    assert "Stable Diffusion attention matching, GPU" in display.engine_words("ldm")
    msg = "big.png is 9,000x9,000 pixels, more than 16.8 megapixels per image (MM_MAX_PIXELS); crop it"
    assert "(MM_APP_MAX_PIXELS)" in display.app_message(msg) and "(MM_MAX_PIXELS)" not in display.app_message(msg)


def test_legends_name_their_scale():
    dens = np.zeros((50, 50), np.float32)
    dens[20:30, 20:30] = 0.01
    legend = display.density_legend(dens)
    assert "objects per 10×10 pixels" in legend and "linear-gradient" in legend and "1 or more" in legend
    assert "no match" in display.match_legend() and "strong match" in display.match_legend()
