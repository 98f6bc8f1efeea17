"""zoo-benchmark --plot and --results (backbones/cli/chart.py, backbones/cli/results.py) on the
CPU: tiny inputs, one timed call, no network."""
import csv

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import backbones
import backbones.cli.benchmark as bench
from backbones.cli import chart, report, results
from backbones.cli._common import UsageError

# One thread: two OpenMP threads on a busy 2-core CI machine run tiny models 10x slower.
SMALL_RUN = ["--img-size", "64", "--iters", "1", "--warmup", "0", "--threads", "1"]
README = """# A project

Some text above.

{start}
No results yet.
{end}

Some text below.
""".format(start=results.README_START, end=results.README_END)


def _pixels(path):
    """The PNG at ``path`` as an (H, W, 3) uint8 array; asserts the chart's size."""
    image = Image.open(path)
    assert image.size == chart.SIZE_PX
    return np.asarray(image.convert("RGB")).astype(int)


def _plot_area(pixels):
    """The pixels left of the legend (whose markers show every family, drawn or not)."""
    return pixels[:, :int(chart.AXES_RIGHT * chart.SIZE_PX[0])]


def _colour(pixels, rgb, tolerance=12):
    return np.abs(pixels - np.array(rgb)).max(axis=-1) <= tolerance


def _solid_markers(pixels, rgb, tolerance=12):
    """How many 4x4 squares are all of colour ``rgb``: a filled marker has some, the edge of a
    hollow one, a line or antialiased text has none."""
    windows = np.lib.stride_tricks.sliding_window_view(_colour(pixels, rgb, tolerance), (4, 4))
    return int(windows.all(axis=(-1, -2)).sum())


# ----------------------------------------------------------------------------- --plot

def test_plot_writes_the_chart_of_a_small_run(tmp_path, capsys):
    """The issue's done-when: the plot command writes its PNG from a small benchmark run."""
    png = tmp_path / "chart.png"
    rows = bench.run(["--models", "shvit_s1_224", "deit_tiny_patch16_224", "--batch-sizes", "1",
                      "--plot", str(png), *SMALL_RUN])
    assert [r["model"] for r in rows] == ["shvit_s1_224", "deit_tiny_patch16_224"]
    assert all(r["error"] is None and r["median_ms"] > 0 for r in rows), rows
    assert f"chart: {png}" in capsys.readouterr().out
    pixels = _pixels(png)
    assert (pixels < 250).any(axis=-1).mean() > 0.01  # axes, labels, points: not a blank page
    # both points: the zoo family in the palette's first colour, the timm model in grey
    assert _solid_markers(_plot_area(pixels), (31, 119, 180))  # shvit_s1_224
    assert _solid_markers(_plot_area(pixels), (140, 140, 140), tolerance=3)  # deit_tiny_patch16_224


def test_chart_draws_missing_top1_in_a_strip_and_reports_unmeasured(tmp_path):
    base = dict(source="zoo", latency_ms_b1=10.0, img_per_s_b1=100.0)
    rows = [dict(base, family="halonet", model="halonet_h0_256", paper_top1=77.9,
                 top1_verified=False),
            dict(base, family="shvit", model="shvit_s1_224", paper_top1=72.8, top1_verified=True,
                 latency_ms_b1=3.0),
            dict(base, family="dependencyvit", model="dependencyvit_tiny_224", paper_top1=None,
                 top1_verified=None),
            dict(base, family="cswin", model="cswin_tiny_224", paper_top1=82.8,
                 top1_verified=True, latency_ms_b1=None, img_per_s_b1=None)]
    png = tmp_path / "synthetic.png"
    unplaced = chart.draw(rows, str(png), x_axis="throughput", batch=1)
    assert unplaced == ["cswin_tiny_224"]
    area = _plot_area(_pixels(png))
    # the zoo's families take tab10's colours in name order: cswin, dependencyvit, halonet, shvit
    assert not _colour(area, (31, 119, 180)).any()  # cswin_tiny_224: no speed, not drawn
    assert _solid_markers(area, (255, 127, 14))  # dependencyvit, filled, in the strip
    assert _colour(area, (44, 160, 44)).sum() > 10  # halonet_h0_256's marker is drawn ...
    assert not _solid_markers(area, (44, 160, 44))  # ... hollow: its top-1 is unverified
    assert _solid_markers(area, (214, 39, 40))  # shvit_s1_224, verified: filled
    with pytest.raises(UsageError, match="nothing to plot"):
        chart.draw(rows, str(png), batch=8)
    with pytest.raises(UsageError, match="ending in .png"):
        chart.draw(rows, str(tmp_path / "chart.svg"))


# ----------------------------------------------------------------------------- --results

@pytest.fixture(scope="module")
def results_run(tmp_path_factory):
    """One small --results run (a zoo model and a comparator, inference at batch 1 and 2, a
    training step at batch 2) into a fresh directory and README, the models run in this process
    (the CLI's worker processes would only add interpreter start-ups)."""
    root = tmp_path_factory.mktemp("results")
    readme = root / "README.md"
    readme.write_text(README)
    argv = ["--results", str(root / "results"), "--models", "shvit_s1_224", "--comparators",
            "deit_tiny_patch16_224", "--batch-sizes", "1", "2", "--train-batch", "2",
            "--readme", str(readme), *SMALL_RUN]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench, "benchmark_in_subprocess", bench.benchmark_model)
        rows = bench.run(argv)
    return root, readme, argv, rows


def test_results_csv_has_one_row_per_model_with_every_column(results_run):
    root, _, _, returned = results_run
    with open(root / "results" / "benchmark-cpu.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == results.result_fields([1, 2]) + ["command"]
        rows = list(reader)
    assert [(r["family"], r["model"], r["source"]) for r in rows] == [
        ("shvit", "shvit_s1_224", "zoo"), ("timm: DeiT", "deit_tiny_patch16_224", "timm")]
    shvit, deit = rows
    assert (shvit["paper_top1"], shvit["top1_verified"]) == ("72.8", "True")
    assert deit["paper_top1"] == "72.2" and "facebookresearch/deit" in deit["top1_source"]
    for row in rows:
        assert row["error"] == "", row["error"]
        assert float(row["params_m"]) > 1 and float(row["gmacs"]) > 0
        assert row["resolution"] == "64x64"
        for key in ("latency_ms_b1", "img_per_s_b1", "latency_ms_b2", "img_per_s_b2",
                    "train_step_ms"):
            assert float(row[key]) > 0, key
        assert float(row["train_step_peak_mem_mb"]) >= 0 and row["train_batch"] == "2"
        assert f"torch {torch.__version__}" in row["machine"] and row["device"] == "cpu"
        assert "training step (SGD) batch 2" in row["settings"]
        assert row["command"].startswith("python tools/benchmark.py --results ")
        assert "--train-batch 2" in row["command"] and "--models" not in row["command"]
    assert [r["model"] for r in returned] == ["shvit_s1_224", "deit_tiny_patch16_224"]


def test_results_markdown_and_chart_are_rendered_from_the_csv(results_run):
    root = results_run[0]
    text = (root / "results" / "benchmark-cpu.md").read_text()
    assert "| family | model | params (M) | GMACs | resolution | top-1 (paper) | b1 ms |" in text
    assert "| shvit | `shvit_s1_224` | 6.33 |" in text
    assert "timm: DeiT top-1: DeiT official README" in text
    assert (_pixels(root / "results" / "benchmark-cpu.png") < 250).any(axis=-1).mean() > 0.01


def test_results_readme_table_is_regenerated_between_the_markers(results_run):
    root, readme, argv, _ = results_run
    text = readme.read_text()
    before, block = text.split(results.README_START)
    block, after = block.split(results.README_END)
    assert before == README.split(results.README_START)[0]
    assert after == README.split(results.README_END)[1]
    assert "No results yet" not in block
    assert "![ImageNet top-1 against CPU latency](results/benchmark-cpu.png)" in block
    assert "| family | model | params (M) | GMACs | top-1 (paper) | CPU b1 ms | CPU b2 img/s |" \
        in block
    assert "| shvit | `shvit_s1_224` | 6.33 |" in block
    # idempotent: rendering again from the same CSV leaves the README byte for byte
    bench.run(["--results", str(root / "results"), "--report-only", "--readme", str(readme)])
    assert readme.read_text() == text


def test_results_resume_skips_measured_models_and_other_settings_are_refused(results_run,
                                                                            monkeypatch, capsys):
    root, readme, argv, _ = results_run
    csv_path = root / "results" / "benchmark-cpu.csv"
    before = csv_path.read_text()

    def must_not_run(*args, **kwargs):
        raise AssertionError("--resume measured a model the CSV already has")

    monkeypatch.setattr(bench, "measure", must_not_run)
    bench.run(argv + ["--resume"])
    assert "--resume: 2 of 2 models already in" in capsys.readouterr().out
    assert csv_path.read_text() == before
    with pytest.raises(SystemExit, match="another machine or settings.*--fresh"):
        bench.run([a if a != "0" else "1" for a in argv])  # --warmup 1: other settings


def test_merge_rows_replaces_the_measured_models_and_keeps_the_others():
    old = [dict(model="b_model", family="b", source="zoo", params_m=2.0, latency_ms_b1=1.0),
           dict(model="a_model", family="a", source="zoo", params_m=1.0, latency_ms_b1=1.0),
           dict(model="deit", family="timm: DeiT", source="timm", params_m=0.5)]
    new = [dict(model="b_model", family="b", source="zoo", params_m=2.0, latency_ms_b1=5.0)]
    merged = results.merge_rows(old, new)
    assert [r["model"] for r in merged] == ["a_model", "b_model", "deit"]  # zoo first, by family
    assert merged[1]["latency_ms_b1"] == 5.0


def test_update_readme_needs_its_markers(tmp_path):
    readme = tmp_path / "README.md"
    for text, found in [("# no markers\n", "found 0 and 0"),
                        (f"{results.README_START}\n", "found 1 and 0"),
                        (f"{results.README_END}\n{results.README_START}\n", "wrong order"),
                        (README + README, "found 2 and 2")]:
        readme.write_text(text)
        with pytest.raises(UsageError, match=f"needs one line .*{found}.*add them"):
            results.update_readme(str(readme), "table")
        assert readme.read_text() == text  # left as it was
    readme.write_text(README)
    assert results.update_readme(str(readme), "| a |")
    assert not results.update_readme(str(readme), "| a |")
    assert f"{results.README_START}\n| a |\n{results.README_END}" in readme.read_text()


def test_readme_block_from_csv_marks_unverified_and_missing_top1(tmp_path):
    rows = []
    for name in ("halonet_h0_256", "dependencyvit_tiny_224", "efficientvit_m0"):
        record = dict(model=name, params=5e6, gmacs=1.0, resolution="224x224", error=None,
                      cases={1: dict(median_ms=10.0, img_per_s=100.0, peak_mb=1.0, error=None)})
        rows.append(results.result_row(record, device="cpu", machine="a CPU", settings_text="s",
                                       memory="peak RSS+ MB"))
    report.write_csv(str(tmp_path / "benchmark-cpu.csv"), results.sort_rows(rows),
                     results.result_fields([1]))
    block = results.readme_block(results.results_files(str(tmp_path)), str(tmp_path))
    assert "| halonet | `halonet_h0_256` | 5.00 | 1 | 77.9 (unverified) | 10.0 | 100.0 |" in block
    assert "| dependencyvit | `dependencyvit_tiny_224` | 5.00 | 1 | – | 10.0 | 100.0 |" in block
    assert "| timm: EfficientViT-M | `efficientvit_m0` | 5.00 | 1 | 63.2 | 10.0 | 100.0 |" in block
    assert block.index("dependencyvit_tiny_224") < block.index("halonet_h0_256") \
        < block.index("efficientvit_m0")  # zoo families in order, then timm's
    assert results.readme_block([], str(tmp_path)).startswith("No results yet")


# ----------------------------------------------------------------------------- top-1

def test_top1_of_zoo_models_comparators_and_timm_twins():
    assert results.top1_of("shvit_s1_224") == results.Top1(
        72.8, True, "shvit family record (paper_results)")
    assert results.top1_of("halonet_h0_256").verified is False
    assert results.top1_of("dependencyvit_tiny_224").value is None
    assert results.top1_of("deit_small_patch16_224").value == 79.9
    assert results.top1_of("shvit_s1").source == "same architecture as shvit_s1_224"
    assert results.top1_of("resnet50").value is None
    for name, comparator in results.COMPARATORS.items():
        assert timm.is_model(name), name
        assert 60 < comparator.top1 < 90 and "README" in comparator.source
        assert results.family_label(name) == f"timm: {comparator.family}"
    assert results.family_label("cswin_tiny_224") == "cswin"


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("argv, message", [
    (["--plot", "chart.jpg"], "--plot writes a PNG: give a path ending in .png"),
    (["--plot", "c.png", "--params-only"], "--plot draws measured speed: drop --params-only"),
    (["--plot", "c.png", "--plot-batch", "4"], "--plot-batch 4 is not measured: pick one of "
                                               "--batch-sizes 1 8"),
    (["--resume"], "--resume goes with --results DIR"),
    (["--readme", "README.md"], "--readme goes with --results DIR"),
    (["--results", "r", "--resume", "--fresh"], "pass one of them"),
    (["--results", "r", "--csv", "x.csv", "--paired"], "drop --paired, --csv"),
    (["--results", "r", "--train-batch", "-1"], "--train-batch must be >= 1"),
    (["--families", "cswin", "nosuch"], "unknown families nosuch; the zoo's families: biformer"),
    (["--models", "shvit_s1_224", "--comparators", "deit_smal_patch16_224"],
     "'deit_smal_patch16_224' is not a timm model; did you mean deit_small_patch16_224"),
])
def test_bad_arguments_exit_with_what_to_do(argv, message):
    with pytest.raises(SystemExit) as exc:
        bench.run(argv)
    assert str(exc.value.code).startswith("zoo-benchmark: error: ")
    assert message in str(exc.value.code)


def test_report_only_without_results_says_how_to_make_them(tmp_path):
    with pytest.raises(SystemExit, match="no results in .* yet: measure them first with "
                                         "zoo-benchmark --results"):
        bench.run(["--results", str(tmp_path), "--report-only"])


def test_families_select_their_zoo_models():
    args = bench.parse_args(["--families", "shvit", "--models", "cswin_tiny_224"])
    assert bench.select_models(args) == backbones.list_zoo_models("shvit") + ["cswin_tiny_224"]
    full = bench.select_models(bench.parse_args(["--results", "r"]))
    assert full == backbones.list_zoo_models() + list(results.COMPARATORS)
