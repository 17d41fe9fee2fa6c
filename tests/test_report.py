"""`vintage report RUN`: the report card is one self-contained HTML file (nothing fetched),
holds every section with this run's numbers, and renders in a real headless Chromium with no
console errors and a picture that is not blank; a lab page renders the same way.

    pytest tests/test_report.py -q
"""
import re
import shutil

import pytest

from browser import browser_page
from verse import verse
from vintagelm.cli import main

SCREENSHOTS = "/tmp/vintagelm_report.png", "/tmp/vintagelm_lab_page.png"  # copies to look at


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    (root / "verse.txt").write_text(verse(400))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VINTAGELM_CACHE", str(root / "cache"))
        assert main(["--threads", "1", "train", "--data", str(root / "verse.txt"), "--out", str(root / "run"),
                     "--max-iters", "60", "--set", "n_layer=2", "--set", "n_embd=32", "--set", "n_head=2",
                     "--set", "block_size=32", "--set", "sample_tokens=0", "--set", "layer_norm_interval=10",
                     "--set", "checkpoint_interval=30", "--set", "eval_interval=20", "--no-progress"]) == 0
    return root / "run"


def screenshot_is_not_blank(page, path, copy):
    import matplotlib.image

    page.screenshot(path=str(path), full_page=True)
    shutil.copy(path, copy)
    pixels = matplotlib.image.imread(str(path))
    assert pixels.std() > 0.02, f"the screenshot {path} is blank"


def test_the_report_card_is_self_contained_and_complete(run_dir, tmp_path):
    out = tmp_path / "card.html"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    html = out.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing from the network
    assert html.count("data:image/png;base64,") >= 4  # loss, throughput + norm, layer norms, attention
    for heading in ("Doctor", "Curves", "Configuration", "Data", "Samples at the checkpoints", "Attention maps"):
        assert f"<h2>{heading}" in html, heading
    assert "step 30" in html and "step 60" in html  # a sample of each checkpoint kept
    assert "gradient norm of each layer" in html.lower()


def test_the_report_and_a_lab_page_render_in_a_browser(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("VINTAGELM_CACHE", str(tmp_path / "cache"))
    report = tmp_path / "card.html"
    assert main(["report", str(run_dir), "--out", str(report)]) == 0
    assert main(["lab", "attention-cost", "--quick", "--out", str(tmp_path / "lab"), "--no-progress"]) == 0
    with browser_page() as (page, problems):
        for html, shot, copy in ((report, tmp_path / "report.png", SCREENSHOTS[0]),
                                 (tmp_path / "lab" / "index.html", tmp_path / "lab.png", SCREENSHOTS[1])):
            page.goto(html.as_uri())
            images = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete && i.naturalWidth)")
            assert images and all(images), f"an image of {html} did not load"
            screenshot_is_not_blank(page, shot, copy)
    assert not problems, "\n".join(problems)


def test_a_report_of_a_folder_that_is_no_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "not a run directory" in capsys.readouterr().err
