"""Draw the figures of ``docs/backprop.md`` from fastconv's own outputs.

Every number in the figures is computed here by :mod:`fastconv.functional` (and checked
against the page's worked examples before anything is drawn):

``weight_gradient.png``
    Which input pixels feed dE/dW1: the pixels whose one-hot image changes
    ``conv2d_backward_weight(...)[..., 0, 0]``, coloured by the output gradient they meet.
``input_gradient.png``
    The 180-degree-rotated kernel sliding over the zero-padded output gradient, next to
    ``conv2d_backward_input``'s result.
``maxpool_routing.png``
    Overlapping 3x3 pooling windows (stride 2), their winners from ``max_pool2d`` and the
    gradient ``max_pool2d_backward`` routes back.

Usage::

    python scripts/make_figures.py            # writes docs/figures/*.png
    python scripts/make_figures.py --out DIR  # somewhere else

The output is deterministic for a given matplotlib version (no timestamps, no random data).
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

import fastconv.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "figures"

DPI = 80
# One colour per output position G1..G4 (or pooling window), colour-blind safe (Okabe-Ito).
COLOURS = ["#E69F00", "#56B4E9", "#009E73", "#CC79A7"]
ZERO_GREY = "#9a9a9a"

# The worked example of docs/backprop.md, sections 1 and 2.
V = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
W = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
DG = np.array([[1.0, 2.0], [-1.0, 3.0]]).reshape(1, 1, 2, 2)

# Section 3.3: 5x5 input, 3x3 windows, stride 2.
X_POOL = np.array(
    [
        [0.0, 1.0, 2.0, 1.0, 0.0],
        [1.0, 3.0, 9.0, 2.0, 1.0],
        [2.0, 1.0, 0.0, 1.0, 5.0],
        [0.0, 6.0, 1.0, 4.0, 2.0],
        [1.0, 0.0, 2.0, 7.0, 1.0],
    ]
).reshape(1, 1, 5, 5)
DY_POOL = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)


def _fmt(v):
    """Integers without a decimal point, with a real minus sign."""
    text = f"{v:g}"
    return text.replace("-", "\u2212")


def _product(a, b):
    """``a·b``, with negative factors in parentheses."""
    fa, fb = _fmt(a), _fmt(b)
    fa = f"({fa})" if a < 0 else fa
    fb = f"({fb})" if b < 0 else fb
    return f"{fa}\u00b7{fb}"


def _tint(colour, amount=0.5):
    """``colour`` mixed with white (``amount`` = share of the colour), for fills that carry text."""
    rgb = np.array(matplotlib.colors.to_rgb(colour))
    return tuple(amount * rgb + (1 - amount) * np.ones(3))


def _grid(ax, values, labels=None, fills=None, title=None, origin=(0, 0), text_colour=None, fontsize=13):
    """Draw a matrix of cells with their values; row 0 at the top. Returns nothing."""
    rows, cols = values.shape
    y0, x0 = origin
    for r in range(rows):
        for c in range(cols):
            fill = "white" if fills is None or fills[r][c] is None else fills[r][c]
            ax.add_patch(Rectangle((x0 + c, y0 + r), 1, 1, facecolor=fill, edgecolor="#444444", linewidth=1))
            text = _fmt(values[r, c]) if labels is None else labels[r][c]
            colour = "black" if text_colour is None else text_colour[r][c]
            ax.text(x0 + c + 0.5, y0 + r + 0.5, text, ha="center", va="center", fontsize=fontsize, color=colour)
    if title:
        ax.set_title(title, fontsize=12)


def _frame(ax, rows, cols, pad=0.15):
    ax.set_xlim(-pad, cols + pad)
    ax.set_ylim(rows + pad, -pad)
    ax.set_aspect("equal")
    ax.axis("off")


def _onehot(shape, flat_index):
    e = np.zeros(int(np.prod(shape)))
    e[flat_index] = 1.0
    return e.reshape(shape)


def figure_weight_gradient(path):
    """Which input pixels feed dE/dW1, and which output gradient each one meets."""
    dW = F.conv2d_backward_weight(DG, V, W.shape)
    assert dW[0, 0].tolist() == [[16.0, 21.0], [31.0, 36.0]], dW
    # pairs[o] = the input pixel that output o multiplied by W1: the one-hot input k and one-hot
    # output gradient o for which fastconv's dE/dW1 is 1.
    pairs = {}
    for o in range(4):
        for k in range(9):
            dw1 = F.conv2d_backward_weight(_onehot(DG.shape, o), _onehot(V.shape, k), W.shape)[0, 0, 0, 0]
            if dw1 != 0:
                pairs[o] = k
    assert sorted(pairs.values()) == [0, 1, 3, 4], pairs  # V1, V2, V4, V5

    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.5), gridspec_kw={"width_ratios": [3, 2, 2]})
    fills_v = [[None] * 3 for _ in range(3)]
    labels_v = [[f"V{3 * r + c + 1}\n{_fmt(V[0, 0, r, c])}" for c in range(3)] for r in range(3)]
    for o, k in pairs.items():
        fills_v[k // 3][k % 3] = _tint(COLOURS[o])
    _grid(axes[0], V[0, 0], labels=labels_v, fills=fills_v, title="input V: the pixels that feed dE/dW1")
    _frame(axes[0], 3, 3)

    fills_g = [[_tint(COLOURS[2 * r + c]) for c in range(2)] for r in range(2)]
    labels_g = [[f"dG{2 * r + c + 1}\n{_fmt(DG[0, 0, r, c])}" for c in range(2)] for r in range(2)]
    _grid(axes[1], DG[0, 0], labels=labels_g, fills=fills_g, title="output gradient dG")
    _frame(axes[1], 2, 2)

    fills_w = [["#d9d9d9", None], [None, None]]
    labels_w = [[f"dW{2 * r + c + 1}\n{_fmt(dW[0, 0, r, c])}" for c in range(2)] for r in range(2)]
    _grid(axes[2], dW[0, 0], labels=labels_w, fills=fills_w, title="dW (fastconv)")
    _frame(axes[2], 2, 2)

    terms = " + ".join(_product(DG.flat[o], V.flat[k]) for o, k in sorted(pairs.items()))
    fig.text(
        0.5, 0.04, f"dE/dW1 = dG1\u00b7V1 + dG2\u00b7V2 + dG3\u00b7V4 + dG4\u00b7V5 = {terms} = {_fmt(dW[0, 0, 0, 0])}",
        ha="center", fontsize=12,
    )
    fig.subplots_adjust(left=0.02, right=0.98, top=0.88, bottom=0.16, wspace=0.25)
    return _save(fig, path)


def figure_input_gradient(path):
    """The rotated kernel at three positions over the padded dG, and the resulting dV."""
    dV = F.conv2d_backward_input(DG, W, V.shape)
    padded = np.pad(DG, ((0, 0), (0, 0), (1, 1), (1, 1)))[0, 0]
    rotated = W[0, 0, ::-1, ::-1]
    assert np.array_equal(F.conv2d(padded[None, None], rotated[None, None].copy())[0, 0], dV[0, 0])

    positions = [(0, 0), (0, 1), (1, 1)]  # dV1, dV2, dV5
    fig, axes = plt.subplots(1, 4, figsize=(12.0, 3.9), gridspec_kw={"width_ratios": [4, 4, 4, 3.2]})
    real = np.zeros((4, 4), dtype=bool)
    real[1:3, 1:3] = True
    for ax, (r, c), colour in zip(axes[:3], positions, COLOURS):
        fills = [[("#f2f2f2" if not real[i, j] else "white") for j in range(4)] for i in range(4)]
        text_colour = [[(ZERO_GREY if not real[i, j] else "black") for j in range(4)] for i in range(4)]
        for i in range(2):
            for j in range(2):
                fills[r + i][c + j] = _tint(colour)
                text_colour[r + i][c + j] = "#555555" if not real[r + i, c + j] else "black"
        _grid(ax, padded, fills=fills, text_colour=text_colour, fontsize=14)
        ax.add_patch(Rectangle((c, r), 2, 2, fill=False, edgecolor="black", linewidth=3))
        for i in range(2):
            for j in range(2):
                ax.text(c + j + 0.93, r + i + 0.9, f"\u00d7{_fmt(rotated[i, j])}", ha="right", va="bottom",
                        fontsize=10, color="#222222", style="italic")
        window = padded[r:r + 2, c:c + 2]
        k = 3 * r + c
        terms = " + ".join(_product(a, b) for a, b in zip(window.ravel(), rotated.ravel()))
        assert np.sum(window * rotated) == dV[0, 0, r, c]
        ax.set_title(f"dE/dV{k + 1} = {terms}\n= {_fmt(dV[0, 0, r, c])}", fontsize=11)
        _frame(ax, 4, 4)

    fills = [[None] * 3 for _ in range(3)]
    for (r, c), colour in zip(positions, COLOURS):
        fills[r][c] = _tint(colour)
    _grid(axes[3], dV[0, 0], fills=fills, fontsize=14)
    axes[3].set_title("dV from fastconv's\nconv2d_backward_input", fontsize=11)
    _frame(axes[3], 3, 3)
    fig.text(
        0.5, 0.03,
        "zero-padded dG (grey: padding) under the filter rotated by 180\u00b0: "
        f"[[{_fmt(rotated[0, 0])}, {_fmt(rotated[0, 1])}], [{_fmt(rotated[1, 0])}, {_fmt(rotated[1, 1])}]] = "
        "[[W4, W3], [W2, W1]]",
        ha="center", fontsize=11,
    )
    fig.subplots_adjust(left=0.01, right=0.99, top=0.80, bottom=0.10, wspace=0.15)
    return _save(fig, path)


def figure_maxpool_routing(path):
    """Overlapping pooling windows, their winners, and the routed gradient."""
    y, indices = F.max_pool2d(X_POOL, kernel_size=3, stride=2)
    dx = F.max_pool2d_backward(DY_POOL, indices, X_POOL.shape)
    assert indices[0, 0].tolist() == [[7, 7], [16, 23]], indices
    H, Wd = X_POOL.shape[2:]

    fig, axes = plt.subplots(1, 3, figsize=(10.4, 3.9), gridspec_kw={"width_ratios": [5, 2.6, 5]})
    ax = axes[0]
    _grid(ax, X_POOL[0, 0], fontsize=14)
    # Windows drawn inset by a different amount each, so that shared borders stay visible.
    for o in range(4):
        oh, ow = divmod(o, 2)
        inset = 0.06 + 0.07 * o
        ax.add_patch(Rectangle((2 * ow + inset, 2 * oh + inset), 3 - 2 * inset, 3 - 2 * inset, fill=False,
                               edgecolor=COLOURS[o], linewidth=3))
    for o, k in enumerate(indices[0, 0].ravel()):
        r, c = divmod(int(k), Wd)
        ax.add_patch(plt.Circle((c + 0.5, r + 0.5), 0.36 - 0.06 * (o % 2), fill=False, edgecolor=COLOURS[o],
                                linewidth=2.5))
    ax.set_title("input: 3x3 windows, stride 2\n(circles: each window's winner)", fontsize=11)
    _frame(ax, H, Wd)

    fills = [[_tint(COLOURS[2 * r + c]) for c in range(2)] for r in range(2)]
    labels = [[f"dy={_fmt(DY_POOL[0, 0, r, c])}\nmax={_fmt(y[0, 0, r, c])}" for c in range(2)] for r in range(2)]
    _grid(axes[1], y[0, 0], labels=labels, fills=fills, fontsize=11)
    axes[1].set_title("output: max and\nits gradient dy", fontsize=11)
    _frame(axes[1], 2, 2)

    labels = [[_fmt(dx[0, 0, r, c]) if dx[0, 0, r, c] else "0" for c in range(Wd)] for r in range(H)]
    text_colour = [["black" if dx[0, 0, r, c] else ZERO_GREY for c in range(Wd)] for r in range(H)]
    fills = [[None] * Wd for _ in range(H)]
    winners_of = {}
    for o, k in enumerate(indices[0, 0].ravel()):
        winners_of.setdefault(int(k), []).append(o)
    for k, windows in winners_of.items():
        r, c = divmod(k, Wd)
        fills[r][c] = _tint(COLOURS[windows[0]])
        if len(windows) > 1:
            parts = " + ".join(_fmt(DY_POOL.flat[o]) for o in windows)
            labels[r][c] = f"{parts}\n= {_fmt(dx[0, 0, r, c])}"
            # Split the cell between the windows that share this winner.
            for i, o in enumerate(windows):
                axes[2].add_patch(Rectangle((c + i / len(windows), r), 1 / len(windows), 1, facecolor=_tint(COLOURS[o]),
                                            edgecolor="none", zorder=0.5))
            fills[r][c] = "none"
    _grid(axes[2], dx[0, 0], labels=labels, fills=fills, text_colour=text_colour, fontsize=13)
    for t in axes[2].texts:  # the two-line label of the shared winner needs a smaller font
        if "\n" in t.get_text():
            t.set_fontsize(10)
    axes[2].set_title("dx from fastconv's max_pool2d_backward:\nthe shared winner gets the sum", fontsize=11)
    _frame(axes[2], H, Wd)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.84, bottom=0.02, wspace=0.12)
    return _save(fig, path)


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return path


def make_figures(out=DEFAULT_OUT):
    """Write the three figures into ``out``; return their paths."""
    out = Path(out)
    with matplotlib.rc_context({"font.family": "DejaVu Sans", "svg.hashsalt": "fastconv"}):
        return [
            figure_weight_gradient(out / "weight_gradient.png"),
            figure_input_gradient(out / "input_gradient.png"),
            figure_maxpool_routing(out / "maxpool_routing.png"),
        ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: docs/figures)")
    args = parser.parse_args(argv)
    for path in make_figures(args.out):
        print(f"{path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
