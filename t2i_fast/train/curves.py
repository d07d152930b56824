"""curves.png: a run's losses and evaluation scores against the training step, drawn with
Pillow from metrics.jsonl (so a resumed run, whose metrics.jsonl was cut back to its
checkpoint, redraws exactly what it keeps).

    write_curves("runs/demo")        # runs/demo/curves.png from runs/demo/metrics.jsonl
    image = curves_image(records)    # a PIL image of metrics records (progress.read_metrics)

Panels, top to bottom, each drawn only when it has data: phase 1's matching losses (against
the phase-1 step), the adversarial losses (each D, G's adversarial terms, G's total), G's
matching and KL terms, the evaluation scores in [0, 1] (R-precision, attribute accuracy overall
and per attribute, and the classifier's accuracy on real images as a thin ceiling), then FID,
IS and CMD on scales of their own. The legend gives each series' last value; values that are
missing or not finite are left out.
"""
import math
import re
from pathlib import Path

from PIL import Image, ImageDraw

from t2i_fast.fileio import save_png
from t2i_fast.grid import _font
from t2i_fast.train.progress import read_metrics

WIDTH, PANEL_HEIGHT = 960, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 210, 26, 30            # margins of each panel's plot area
COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
# Keys of a GAN record that are not losses.
BOOKKEEPING = ("phase", "step", "time_s", "it_s", "mem_mib")
ADVERSARIAL = re.compile(r"^(g_loss|d_loss\d+|g_adv\d+)$")
# Series of the evaluation panels: (title, keys, y range or None for the data's own range).
EVAL_PANELS = (
    ("evaluation on held-out captions", ("r_precision", "attributes", "attributes_colour",
                                         "attributes_shape", "attributes_size",
                                         "attributes_position", "attributes_real"), (0.0, 1.0)),
    ("FID", ("fid",), None),
    ("Inception Score", ("is",), None),
    ("CMD", ("cmd", "itdis"), None),
)
THIN = ("attributes_real",)                           # reference lines, not results


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def _series(records, keys):
    """{key: [(step, value), ...]} for the keys (in order) that have at least one value."""
    out = {}
    for key in keys:
        points = [(r["step"], r[key]) for r in records if _number(r.get(key))]
        if points:
            out[key] = points
    return out


def panels(records):
    """The panels of curves.png: [(title, {key: [(step, value)]}, y range or None)]."""
    phase = {name: [r for r in records if r.get("phase") == name and _number(r.get("step"))]
             for name in ("encoders", "gan", "eval")}
    keys = {name: list(dict.fromkeys(k for r in rows for k in r if k not in BOOKKEEPING))
            for name, rows in phase.items()}
    adversarial = [k for k in keys["gan"] if ADVERSARIAL.match(k)]
    out = [("phase 1: matching losses (phase-1 step)", _series(phase["encoders"],
                                                              keys["encoders"]), None),
           ("adversarial losses", _series(phase["gan"], adversarial), None),
           ("generator: matching terms and KL",
            _series(phase["gan"], [k for k in keys["gan"] if k not in adversarial]), None)]
    out += [(title, _series(phase["eval"], wanted), y_range)
            for title, wanted, y_range in EVAL_PANELS]
    return [p for p in out if p[1]]


def _nice_ticks(low, high, count=5):
    """Round tick values covering [low, high]."""
    span = high - low
    raw = span / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _label(value):
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.2e}"


def _range(series, y_range):
    if y_range is not None:
        return y_range
    values = [v for points in series.values() for _, v in points]
    low, high = min(values), max(values)
    pad = (high - low) * 0.05 or max(abs(high) * 0.1, 1e-3)
    return low - pad, high + pad


def _text(draw, xy, text, font, right=False, centre=False):
    """Text whose right end (right) or middle (centre) is at x; vertically centred on y when
    right. (Pillow's anchors need a FreeType font, which a Pillow build may lack.)"""
    left, top, end, bottom = draw.textbbox((0, 0), text, font=font)
    x, y = xy
    if right:
        x, y = x - end, y - (top + bottom) / 2
    elif centre:
        x = x - (left + end) / 2
    draw.text((x, y), text, fill="black", font=font)


def _draw_panel(draw, top, title, series, y_range, x_max, font):
    x0, x1 = LEFT, WIDTH - RIGHT
    y0, y1 = top + TOP, top + PANEL_HEIGHT - BOTTOM
    low, high = _range(series, y_range)

    def to_xy(step, value):
        return (x0 + (x1 - x0) * step / x_max, y1 - (y1 - y0) * (value - low) / (high - low))

    draw.text((x0, top + 6), title, fill="black", font=font)
    for tick in _nice_ticks(low, high):
        y = to_xy(0, tick)[1]
        draw.line([(x0, y), (x1, y)], fill=(228, 228, 228))
        _text(draw, (x0 - 6, y), _label(tick), font, right=True)
    for tick in _nice_ticks(0, x_max):
        x = to_xy(tick, low)[0]
        draw.line([(x, y0), (x, y1)], fill=(228, 228, 228))
        _text(draw, (x, y1 + 4), _label(tick), font, centre=True)
    draw.rectangle([x0, y0, x1, y1], outline=(90, 90, 90))
    for i, (key, points) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        xy = [to_xy(s, v) for s, v in points]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=1 if key in THIN else 2)
        if len(xy) <= 20 and key not in THIN:          # sparse series: mark each point
            for x, y in xy:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        ly = y0 + 4 + 14 * i
        draw.line([(x1 + 10, ly + 6), (x1 + 28, ly + 6)], fill=colour, width=3)
        draw.text((x1 + 34, ly), f"{key} {_label(points[-1][1])}", fill="black", font=font)


def curves_image(records):
    """The curves of `records` (metrics.jsonl lines) as an RGB PIL image; one line saying
    there is nothing yet when no record holds a value."""
    font = _font(11)
    drawn = panels(records)
    if not drawn:
        image = Image.new("RGB", (WIDTH, 60), "white")
        ImageDraw.Draw(image).text((LEFT, 22), "no metrics logged yet", fill="black",
                                   font=font)
        return image
    image = Image.new("RGB", (WIDTH, PANEL_HEIGHT * len(drawn)), "white")
    draw = ImageDraw.Draw(image)
    gan_steps = [s for title, series, _ in drawn if not title.startswith("phase 1")
                 for points in series.values() for s, _ in points]
    for i, (title, series, y_range) in enumerate(drawn):
        steps = [s for points in series.values() for s, _ in points]
        x_max = max(steps if title.startswith("phase 1") else gan_steps) or 1
        _draw_panel(draw, i * PANEL_HEIGHT, title, series, y_range, x_max, font)
    return image


def write_curves(run_dir):
    """Draw RUN/curves.png from RUN/metrics.jsonl, atomically; returns its path."""
    run_dir = Path(run_dir)
    image = curves_image(read_metrics(run_dir / "metrics.jsonl"))
    path = run_dir / "curves.png"
    save_png(image, path)
    return path
