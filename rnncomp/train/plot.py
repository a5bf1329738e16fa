"""Learning curves as PNG files with NumPy and zlib only (no matplotlib needed).

A small line-plot rasteriser: axes with "nice" ticks (linear or log y), lines, a title
and labels in a built-in 5×7 bitmap font, written as an 8-bit RGB PNG.  Deterministic:
the same data gives the same bytes.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "c.png")
    >>> line_plot(p, [([1, 2, 3], [1.0, 0.5, 0.2])], title="loss", xlabel="epoch")
    >>> open(p, "rb").read(8) == b"\\x89PNG\\r\\n\\x1a\\n"
    True
"""
from __future__ import annotations

import math
import struct
import zlib

import numpy as np

# 5×7 glyphs (9 rows for those with descenders), rows top to bottom, X = ink.
# Characters not listed are drawn as "?".
_GLYPHS = {
    " ": "..... ..... ..... ..... ..... ..... .....",
    "0": ".XXX. X...X X..XX X.X.X XX..X X...X .XXX.", "1": "..X.. .XX.. ..X.. ..X.. ..X.. ..X.. .XXX.",
    "2": ".XXX. X...X ....X ...X. ..X.. .X... XXXXX", "3": "XXXXX ...X. ..X.. ...X. ....X X...X .XXX.",
    "4": "...X. ..XX. .X.X. X..X. XXXXX ...X. ...X.", "5": "XXXXX X.... XXXX. ....X ....X X...X .XXX.",
    "6": "..XX. .X... X.... XXXX. X...X X...X .XXX.", "7": "XXXXX ....X ...X. ..X.. .X... .X... .X...",
    "8": ".XXX. X...X X...X .XXX. X...X X...X .XXX.", "9": ".XXX. X...X X...X .XXXX ....X ...X. .XX..",
    ".": "..... ..... ..... ..... ..... .XX.. .XX..", "-": "..... ..... ..... XXXXX ..... ..... .....",
    "+": "..... ..X.. ..X.. XXXXX ..X.. ..X.. .....", ":": "..... .XX.. .XX.. ..... .XX.. .XX.. .....",
    "(": "...X. ..X.. .X... .X... .X... ..X.. ...X.", ")": ".X... ..X.. ...X. ...X. ...X. ..X.. .X...",
    ",": "..... ..... ..... ..... ..... .XX.. .XX.. ..X.. .X...", "/": "....X ....X ...X. ..X.. .X... X.... X....",
    "=": "..... ..... XXXXX ..... XXXXX ..... .....", "_": "..... ..... ..... ..... ..... ..... XXXXX",
    "%": "XX... XX..X ...X. ..X.. .X... X..XX ...XX", "?": ".XXX. X...X ....X ...X. ..X.. ..... ..X..",
    "'": "..X.. ..X.. ..... ..... ..... ..... .....", "|": "..X.. ..X.. ..X.. ..X.. ..X.. ..X.. ..X..",
    "a": "..... ..... .XXX. ....X .XXXX X...X .XXXX", "b": "X.... X.... X.XX. XX..X X...X X...X XXXX.",
    "c": "..... ..... .XXX. X.... X.... X...X .XXX.", "d": "....X ....X .XX.X X..XX X...X X...X .XXXX",
    "e": "..... ..... .XXX. X...X XXXXX X.... .XXX.", "f": "..XX. .X..X .X... XXX.. .X... .X... .X...",
    "g": "..... ..... .XXXX X...X X...X X...X .XXXX ....X .XXX.", "h": "X.... X.... X.XX. XX..X X...X X...X X...X",
    "i": "..X.. ..... .XX.. ..X.. ..X.. ..X.. .XXX.", "j": "...X. ..... ..XX. ...X. ...X. ...X. ...X. X..X. .XX..",
    "k": "X.... X.... X..X. X.X.. XX... X.X.. X..X.", "l": ".XX.. ..X.. ..X.. ..X.. ..X.. ..X.. .XXX.",
    "m": "..... ..... XX.X. X.X.X X.X.X X...X X...X", "n": "..... ..... X.XX. XX..X X...X X...X X...X",
    "o": "..... ..... .XXX. X...X X...X X...X .XXX.", "p": "..... ..... XXXX. X...X X...X X...X XXXX. X.... X....",
    "q": "..... ..... .XXXX X...X X...X X...X .XXXX ....X ....X", "r": "..... ..... X.XX. XX..X X.... X.... X....",
    "s": "..... ..... .XXX. X.... .XXX. ....X XXXX.", "t": ".X... .X... XXX.. .X... .X... .X..X ..XX.",
    "u": "..... ..... X...X X...X X...X X..XX .XX.X", "v": "..... ..... X...X X...X X...X .X.X. ..X..",
    "w": "..... ..... X...X X...X X.X.X X.X.X .X.X.", "x": "..... ..... X...X .X.X. ..X.. .X.X. X...X",
    "y": "..... ..... X...X X...X X...X X...X .XXXX ....X .XXX.", "z": "..... ..... XXXXX ...X. ..X.. .X... XXXXX",
    "A": ".XXX. X...X X...X XXXXX X...X X...X X...X", "B": "XXXX. X...X X...X XXXX. X...X X...X XXXX.",
    "C": ".XXX. X...X X.... X.... X.... X...X .XXX.", "D": "XXX.. X..X. X...X X...X X...X X..X. XXX..",
    "E": "XXXXX X.... X.... XXXX. X.... X.... XXXXX", "F": "XXXXX X.... X.... XXXX. X.... X.... X....",
    "G": ".XXX. X...X X.... X.XXX X...X X...X .XXXX", "H": "X...X X...X X...X XXXXX X...X X...X X...X",
    "I": ".XXX. ..X.. ..X.. ..X.. ..X.. ..X.. .XXX.", "J": "..XXX ...X. ...X. ...X. ...X. X..X. .XX..",
    "K": "X...X X..X. X.X.. XX... X.X.. X..X. X...X", "L": "X.... X.... X.... X.... X.... X.... XXXXX",
    "M": "X...X XX.XX X.X.X X.X.X X...X X...X X...X", "N": "X...X X...X XX..X X.X.X X..XX X...X X...X",
    "O": ".XXX. X...X X...X X...X X...X X...X .XXX.", "P": "XXXX. X...X X...X XXXX. X.... X.... X....",
    "Q": ".XXX. X...X X...X X...X X.X.X X..X. .XX.X", "R": "XXXX. X...X X...X XXXX. X.X.. X..X. X...X",
    "S": ".XXXX X.... X.... .XXX. ....X ....X XXXX.", "T": "XXXXX ..X.. ..X.. ..X.. ..X.. ..X.. ..X..",
    "U": "X...X X...X X...X X...X X...X X...X .XXX.", "V": "X...X X...X X...X X...X X...X .X.X. ..X..",
    "W": "X...X X...X X...X X.X.X X.X.X X.X.X .X.X.", "X": "X...X X...X .X.X. ..X.. .X.X. X...X X...X",
    "Y": "X...X X...X .X.X. ..X.. ..X.. ..X.. ..X..", "Z": "XXXXX ....X ...X. ..X.. .X... X.... XXXXX",
}
_FONT = {c: np.array([[ch == "X" for ch in row] for row in (g + " ....." * 2).split()[:9]], dtype=bool)
         for c, g in _GLYPHS.items()}

COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]
INK, GRID, WHITE = (34, 34, 34), (225, 225, 225), (255, 255, 255)


def write_png(path, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 array as an 8-bit RGB PNG (filter 0 on every row)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    with open(path, "wb") as fh:
        fh.write(png)


def read_png(path) -> np.ndarray:
    """Read back a PNG written by :func:`write_png` (8-bit RGB, filter 0): (H, W, 3) uint8."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG file")
    pos, idat, w, h = 8, b"", None, None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
            if (depth, ctype) != (8, 2):
                raise ValueError(f"{path}: only 8-bit RGB PNGs are read, got depth {depth} colour type {ctype}")
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 3 * w)
    if rows[:, 0].any():
        raise ValueError(f"{path}: rows use PNG filters other than 0")
    return rows[:, 1:].reshape(h, w, 3).copy()


# ----------------------------------------------------------------------------- drawing
def text_bitmap(text: str, scale: int = 2) -> np.ndarray:
    """The ink mask of a line of text: (9·scale, 6·len·scale) booleans."""
    out = np.zeros((9, 6 * max(len(text), 1)), dtype=bool)
    for i, ch in enumerate(text):
        out[:, 6 * i:6 * i + 5] = _FONT.get(ch, _FONT["?"])
    return out.repeat(scale, 0).repeat(scale, 1)


class Canvas:
    def __init__(self, width: int, height: int):
        self.img = np.full((height, width, 3), 255, dtype=np.uint8)

    def blit(self, mask: np.ndarray, x: int, y: int, color) -> None:
        """Paint ``mask`` with its top-left corner at (x, y), clipped to the canvas."""
        H, W = self.img.shape[:2]
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + mask.shape[1], W), min(y + mask.shape[0], H)
        if x1 <= x0 or y1 <= y0:
            return
        m = mask[y0 - y:y1 - y, x0 - x:x1 - x]
        self.img[y0:y1, x0:x1][m] = color

    def text(self, s: str, x: int, y: int, color=INK, scale=2, anchor="left", vertical=False) -> None:
        m = text_bitmap(s, scale)
        if vertical:
            m = np.rot90(m)
        w = m.shape[1]
        x = x - w // 2 if anchor == "center" else x - w if anchor == "right" else x
        self.blit(m, x, y - m.shape[0] // 2, color)

    def rect(self, x0, y0, x1, y1, color) -> None:
        self.img[max(y0, 0):y1, max(x0, 0):x1] = color

    def polyline(self, xs, ys, color, width: int = 2, clip=None) -> None:
        """Straight segments between consecutive points (pixel coordinates), ``width`` px thick."""
        pts = [(float(a), float(b)) for a, b in zip(xs, ys) if math.isfinite(a) and math.isfinite(b)]
        dot = np.ones((width, width), dtype=bool)
        x0c, y0c, x1c, y1c = clip or (0, 0, self.img.shape[1], self.img.shape[0])
        stamps = set()
        for (ax, ay), (bx, by) in zip(pts, pts[1:] or pts):
            n = int(max(abs(bx - ax), abs(by - ay))) + 1
            for s in np.linspace(0.0, 1.0, n + 1):
                stamps.add((int(round(ax + s * (bx - ax))), int(round(ay + s * (by - ay)))))
        for px, py in sorted(stamps):
            if x0c <= px < x1c and y0c <= py < y1c:
                self.blit(dot, px - width // 2, py - width // 2, color)


def nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """About ``n`` round values (1, 2, 5 × 10^k steps) covering [lo, hi]."""
    if not hi > lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten in [lo, hi], with 2 and 5 between them when the range is short."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mult = (1,) if b - a > 3 else (1, 2, 5)
    out = [m * 10.0 ** k for k in range(a, b + 1) for m in mult]
    out = [v for v in out if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)]
    return out or [lo, hi]


def tick_label(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        m, e = f"{v:.1e}".split("e")
        return f"{m.rstrip('0').rstrip('.')}e{int(e)}"
    return f"{v:.6g}"


def line_plot(path, series, title: str = "", xlabel: str = "", ylabel: str = "", logy=None,
              legend=None, size=(720, 450)) -> None:
    """Draw ``series`` — a list of ``(xs, ys)`` or ``(xs, ys, color, width)`` — to a PNG.

    ``logy=None`` picks a log y axis when all values are positive and span over a decade;
    ``legend``: one label per series (None: no legend)."""
    W, H = size
    right, top, bottom = 20, 40 if title else 16, 56 if xlabel else 36
    c = Canvas(W, H)
    norm = []
    for i, s in enumerate(series):
        xs, ys = np.asarray(s[0], float), np.asarray(s[1], float)
        color = s[2] if len(s) > 2 and s[2] is not None else COLORS[i % len(COLORS)]
        width = s[3] if len(s) > 3 else 2
        norm.append((xs, ys, color, width))
    allx = np.concatenate([s[0] for s in norm]) if norm else np.zeros(0)
    ally = np.concatenate([s[1] for s in norm]) if norm else np.zeros(0)
    finite = np.isfinite(ally) & np.isfinite(allx)
    allx, ally = allx[finite], ally[finite]
    if ally.size == 0:
        allx, ally = np.array([0.0, 1.0]), np.array([0.0, 1.0])
    if logy is None:
        logy = bool((ally > 0).all() and ally.max() > 10 * ally.min())
    if logy:  # points at or below 0 are left out
        allx, ally = allx[ally > 0], ally[ally > 0]
        if ally.size == 0:
            raise ValueError("line_plot: a log y axis needs positive values")
    xlo, xhi = float(allx.min()), float(allx.max())
    if xhi <= xlo:
        xlo, xhi = xlo - 0.5, xhi + 0.5
    if logy:
        ylo, yhi = float(ally.min()) / 1.15, float(ally.max()) * (1.6 if legend else 1.15)
        yt = log_ticks(ylo, yhi)
        fy = math.log10
    else:
        ylo, yhi = float(ally.min()), float(ally.max())
        pad = 0.05 * (yhi - ylo) if yhi > ylo else (abs(yhi) or 1.0) * 0.5
        ylo, yhi = ylo - pad, yhi + pad * (4 if legend else 1)  # room for the legend
        yt = [v for v in nice_ticks(ylo, yhi) if ylo <= v <= yhi]
        fy = float
    left = 12 * max(len(tick_label(v)) for v in yt) + 14 + (28 if ylabel else 4)  # 12 px a character
    px0, px1, py0, py1 = left, W - right, top, H - bottom

    def X(v):
        return px0 + (v - xlo) / (xhi - xlo) * (px1 - px0 - 1)

    def Y(v):
        return py1 - 1 - (fy(v) - fy(ylo)) / (fy(yhi) - fy(ylo)) * (py1 - py0 - 1)

    for v in yt:
        y = int(round(Y(v)))
        c.rect(px0, y, px1, y + 1, GRID)
        c.rect(px0 - 5, y, px0, y + 1, INK)
        c.text(tick_label(v), px0 - 8, y, anchor="right")
    for v in nice_ticks(xlo, xhi, 7):
        if xlo <= v <= xhi:
            x = int(round(X(v)))
            c.rect(x, py0, x + 1, py1, GRID)
            c.rect(x, py1, x + 1, py1 + 5, INK)
            c.text(tick_label(v), x, py1 + 16, anchor="center")
    for xs, ys, color, width in norm:
        ok = np.isfinite(xs) & np.isfinite(ys) & ((ys > 0) if logy else True)
        c.polyline([X(v) for v in xs[ok]], [Y(v) for v in ys[ok]], color, width, clip=(px0, py0, px1, py1))
    c.rect(px0, py0, px1, py0 + 1, INK)
    c.rect(px0, py1 - 1, px1, py1, INK)
    c.rect(px0, py0, px0 + 1, py1, INK)
    c.rect(px1 - 1, py0, px1, py1, INK)
    if title:
        c.text(title, W // 2, 20, anchor="center")
    if xlabel:
        c.text(xlabel, (px0 + px1) // 2, H - 14, anchor="center")
    if ylabel:
        c.text(ylabel, 14, (py0 + py1) // 2, vertical=True)
    labels = [(color, label) for (_, _, color, _), label in zip(norm, legend or []) if label]
    if labels:  # top right, on a white box
        wide = 12 * max(len(label) for _, label in labels)
        x0, y = px1 - wide - 48, py0 + 16
        c.rect(x0 - 6, py0 + 4, px1 - 6, py0 + 8 + 20 * len(labels), WHITE)
        for color, label in labels:
            c.rect(x0, y - 1, x0 + 24, y + 2, color)
            c.text(label, x0 + 32, y)
            y += 20
    write_png(path, c.img)
