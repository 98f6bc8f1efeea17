"""The chart to choose a model by: each paper's ImageNet top-1 against speed measured here.

``zoo-benchmark --plot PATH.png`` and ``--results DIR`` draw it from the rows of
:mod:`backbones.cli.results` (one per model). x: latency at one batch size (ms, log scale; the
default) or throughput (images/s, log scale); y: the published top-1. One colour and marker per
zoo family, timm's models in grey; a hollow marker is a top-1 not yet re-read from its source.
Models without a published top-1 (no weights or results released) sit in a strip below, on the
same x axis, rather than being left out. The machine line is the chart's footnote.
"""
import os
import textwrap

from ._common import UsageError

X_AXES = ("latency", "throughput")
FIGSIZE_IN = (14.0, 9.0)
DPI = 100
SIZE_PX = (int(FIGSIZE_IN[0] * DPI), int(FIGSIZE_IN[1] * DPI))  # (width, height) of the PNG
AXES_RIGHT = 0.79  # the axes end here (figure fraction); the legend is right of it
GREY = "0.55"
MARKERS = "osD^vP*XhpH<>d"
# timm's models: one grey marker per architecture family, the zoo's colours stay distinguishable
TIMM_MARKERS = {"timm: DeiT": "o", "timm: Swin": "s", "timm: ConvNeXt": "D",
                "timm: EfficientViT-M": "^", "timm: EfficientViT-B": "v"}


def x_value(row, x_axis, batch):
    key = f"latency_ms_b{batch}" if x_axis == "latency" else f"img_per_s_b{batch}"
    return row.get(key)


def x_label(x_axis, batch, device_label, what):
    if x_axis == "latency":
        return (f"{device_label} {what} latency at batch {batch} (ms per batch, log scale; "
                "left is faster)")
    return (f"{device_label} {what} throughput at batch {batch} (images/s, log scale; right is "
            "faster)")


def _styles(rows):
    """``{family: (colour, marker)}``: the zoo's families in colour, timm's in grey."""
    import matplotlib

    # tab10, then tab20's light shades, without their greys: grey means a timm model
    colours = [c for i, c in enumerate(matplotlib.colormaps["tab10"].colors) if i != 7]
    colours += [c for i, c in enumerate(matplotlib.colormaps["tab20"].colors)
                if i % 2 and i not in (14, 15)]
    zoo = sorted({r["family"] for r in rows if r["source"] == "zoo"})
    styles = {family: (colours[i % len(colours)], MARKERS[i % len(MARKERS)])
              for i, family in enumerate(zoo)}
    for family in sorted({r["family"] for r in rows if r["source"] != "zoo"}):
        styles[family] = (GREY, TIMM_MARKERS.get(family, "X"))
    return styles


def draw(rows, path, *, x_axis="latency", batch=1, device_label="CPU", what="inference",
         footnote=""):
    """Write the chart of ``rows`` (results rows, :func:`backbones.cli.results.result_row`) to
    the PNG ``path``, :data:`SIZE_PX` pixels; returns the names of the models it could not place
    (not measured at ``batch``)."""
    if x_axis not in X_AXES:
        raise UsageError(f"--plot-x is one of {', '.join(X_AXES)}, got {x_axis!r}")
    if not path.lower().endswith(".png"):
        raise UsageError(f"--plot writes a PNG: give a path ending in .png, got {path!r}")
    try:
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError as e:
        raise UsageError("the chart needs matplotlib: pip install matplotlib "
                         "(or pip install -e .[benchmark])") from e

    placed = [r for r in rows if x_value(r, x_axis, batch)]
    unplaced = [r["model"] for r in rows if not x_value(r, x_axis, batch)]
    if not placed:
        raise UsageError(f"nothing to plot: no model has a {x_axis} at batch {batch} "
                         "(see the table's errors)")
    with_top1 = [r for r in placed if r.get("paper_top1") is not None]
    without = [r for r in placed if r.get("paper_top1") is None]
    styles = _styles(rows)

    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI)
    strip_families = sorted({r["family"] for r in without}, key=lambda f: (f.startswith("timm"), f))
    # the strip grows with the families it holds, one row each
    grid = fig.add_gridspec(2 if without else 1, 1, left=0.1, right=AXES_RIGHT, top=0.93,
                            bottom=0.16, hspace=0.05,
                            height_ratios=[6, max(1, 0.45 * len(strip_families))] if without
                            else None)
    ax = fig.add_subplot(grid[0])
    strip = fig.add_subplot(grid[1], sharex=ax) if without else None

    def scatter(axes, row, y, label_below=False):
        colour, marker = styles[row["family"]]
        hollow = row.get("paper_top1") is not None and not row.get("top1_verified")
        axes.scatter([x_value(row, x_axis, batch)], [y], s=42, marker=marker, linewidths=1.3,
                     facecolors="none" if hollow else [colour], edgecolors=[colour], zorder=3)
        axes.annotate(row["model"], (x_value(row, x_axis, batch), y),
                      xytext=(4, -9 if label_below else 3),
                      textcoords="offset points", fontsize=6.5,
                      color="0.35" if row["source"] != "zoo" else "0.1")

    for row in with_top1:
        scatter(ax, row, row["paper_top1"])
    ax.set_xscale("log")
    ax.margins(x=0.08, y=0.06)  # room for the labels of the outermost points
    ax.set_ylabel("ImageNet-1k top-1 (%), as published")
    ax.grid(True, which="both", linewidth=0.4, alpha=0.5)
    if strip is not None:
        # one row per family: neighbours' labels alternate above and below their row
        for family in strip_families:
            ranked = sorted((r for r in without if r["family"] == family),
                            key=lambda r: x_value(r, x_axis, batch))
            for i, row in enumerate(ranked):
                scatter(strip, row, strip_families.index(family), label_below=i % 2 == 1)
        strip.set_yticks(range(len(strip_families)), strip_families, fontsize=7)
        strip.set_ylim(-0.7, len(strip_families) - 0.3)
        strip.invert_yaxis()
        strip.set_ylabel("no published\ntop-1", fontsize=8)
        strip.grid(True, axis="x", which="both", linewidth=0.4, alpha=0.5)
        ax.tick_params(which="both", labelbottom=False)
    (strip or ax).set_xlabel(x_label(x_axis, batch, device_label, what))
    # plain numbers on the log axis (10, 100, not 10^1); the minor ticks labelled too when the
    # models span less than about a decade and few major ticks would be left
    low, high = ax.get_xlim()
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain if high / low < 15 else NullFormatter())

    n_zoo = sum(r["source"] == "zoo" for r in placed)
    n_timm = len(placed) - n_zoo
    ax.set_title(f"Published top-1 against {device_label} {what} "
                 f"{'latency' if x_axis == 'latency' else 'throughput'}: {n_zoo} zoo models, "
                 f"{n_timm} timm model{'' if n_timm == 1 else 's'}", fontsize=11)
    handles = [Line2D([], [], linestyle="", marker=marker, color=colour, markersize=7,
                      label=family) for family, (colour, marker) in styles.items()]
    handles.append(Line2D([], [], linestyle="", marker="o", markerfacecolor="none",
                          markeredgecolor="0.2", markersize=7,
                          label="hollow: top-1 unverified\n(not yet re-read from\nits source)"))
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(AXES_RIGHT + 0.015, 0.93),
               fontsize=8, frameon=False)
    foot = footnote
    if unplaced:
        foot += f" Not measured at batch {batch}: {', '.join(unplaced)}."
    fig.text(0.01, 0.01, "\n".join(textwrap.wrap(foot.strip(), 230)), fontsize=6.5,
             va="bottom", ha="left", color="0.3")

    partial = f"{path}.partial.png"
    fig.savefig(partial, dpi=DPI)
    os.replace(partial, path)
    return unplaced
