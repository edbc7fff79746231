"""Where the digits are: marks on the ink mask -> digit boxes -> lines -> blocks (columns) and groups.

Boxes are (x, y, w, h) in pixels. A line is a chain of boxes, each linked to its nearest neighbour on
the right when both choose each other, so a slanted or gently curved string stays one line. Columns
are the empty vertical bands that at least two lines have ink on both sides of; no line crosses one.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass

import cv2
import numpy as np

Box = tuple[int, int, int, int]


@dataclass
class LineBoxes:
    boxes: list[Box]  # left to right
    block: int = 0  # the column, counted from the left
    groups: tuple[int, ...] = ()  # index of the first box of each group after the first


# --- marks -> digit boxes --------------------------------------------------------------------------------


def marks(mask: np.ndarray) -> tuple[list[tuple[int, int, int, int, int]], float]:
    """((x, y, w, h, area) of each mark that may be (part of) a digit, the typical digit height).

    Dropped: specks far smaller than a digit, ruled lines, page borders and frames.
    """
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    found = [tuple(int(v) for v in stats[i]) for i in range(1, n)]
    sizable = sorted((b for b in found if b[3] >= 8 and b[4] >= 20), key=lambda b: -b[4])
    if not sizable:
        return [], 0.0
    typical = float(np.median([b[3] for b in sizable[: max(1, min(200, len(sizable) // 2))]]))
    height, width = mask.shape
    kept = [b for b in found if not is_noise(b, typical, width, height)]
    return kept, typical


def is_noise(box: tuple[int, int, int, int, int], typical: float, width: int, height: int) -> bool:
    x, y, w, h, area = box
    if max(w, h) < 0.3 * typical:
        return True  # a speck
    if w > 6 * h and w > 2 * typical or h > 6 * max(w, 1) and h > 3 * typical:
        return True  # a ruled line, or a long stroke that is no digit
    touches_edge = x == 0 or y == 0 or x + w == width or y + h == height
    if w > 0.5 * width or h > 0.5 * height or touches_edge and max(w, h) > 3 * typical:
        return True  # the page's border or a table's edge
    return area < 0.02 * w * h and max(w, h) > 2 * typical  # a thin frame around something


def union(a: Box, b: Box) -> Box:
    x, y = min(a[0], b[0]), min(a[1], b[1])
    return x, y, max(a[0] + a[2], b[0] + b[2]) - x, max(a[1] + a[3], b[1] + b[3]) - y


def box_distance(a: Box, b: Box) -> float:
    dx = max(0, max(a[0], b[0]) - min(a[0] + a[2], b[0] + b[2]))
    dy = max(0, max(a[1], b[1]) - min(a[1] + a[3], b[1] + b[3]))
    return float(np.hypot(dx, dy))


def join_broken(found: list[tuple[int, int, int, int, int]], typical: float) -> list[Box]:
    """Pieces of one digit joined: stacked pieces (a 5's bar, a 9's tail) and short pieces nearly touching one.

    Stacked pairs merge in the order a scan from the left meets them, each scan only as far as a box
    reaches to its right: a page broken into thousands of pieces takes seconds, not minutes.
    """
    boxes = sorted((b[:4] for b in found), key=lambda b: b[0])
    i = 0
    while i < len(boxes):
        j = stacked_partner(boxes, i, typical)
        if j is None:
            i += 1
            continue
        boxes[i] = union(boxes[i], boxes[j])  # keeps its place: boxes stay sorted by x
        del boxes[j]
        # the grown box may now be stacked with one before it: that pair is the next one the scan meets
        i = next((k for k in range(i) if stacked(boxes[k], boxes[i], typical)), i)
    return attach_fragments(boxes, typical)


def stacked_partner(boxes: list[Box], i: int, typical: float) -> int | None:
    """The first box after boxes[i] (sorted by x) stacked with it; those starting right of it cannot overlap it."""
    a = boxes[i]
    for j in range(i + 1, len(boxes)):
        if boxes[j][0] >= a[0] + a[2]:
            return None
        if stacked(a, boxes[j], typical):
            return j
    return None


def stacked(a: Box, b: Box, typical: float) -> bool:
    """Two pieces one above the other, close, and together no taller than a tall digit."""
    overlap = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    gap = max(a[1], b[1]) - min(a[1] + a[3], b[1] + b[3])
    return overlap > 0.5 * min(a[2], b[2]) and gap < 0.25 * typical and union(a, b)[3] < 1.5 * typical


def attach_fragments(boxes: list[Box], typical: float) -> list[Box]:
    """Short pieces (a broken-off bar of a 7, a tail) join the nearest full-height box when they nearly touch."""
    full = [b for b in boxes if b[3] >= 0.6 * typical]
    result = list(full)
    for piece in (b for b in boxes if b[3] < 0.6 * typical):
        nearest = min(range(len(result)), key=lambda i: box_distance(piece, result[i]), default=None)
        if nearest is None or box_distance(piece, result[nearest]) > 0.15 * typical:
            result.append(piece)
        else:
            result[nearest] = union(result[nearest], piece)
    return sorted(result, key=lambda b: b[0])


MAX_CUTS = 6  # candidate cut columns per wide box: at most C(8, 2) = 28 pieces to read
SPLIT_WIDTH = 1.1  # boxes this many typical digit widths wide may be touching digits (a 1 beside a 4: ~1.3)
UNREAD_SPLIT_WIDTH = 0.75  # the same for a box that does not read as a digit (a narrow pair, squeezed)
MIN_PIECE = 0.12  # of the box's height: narrower than a 1 is no digit
MAX_PIECE = 1.6  # typical digit widths
MIN_HEIGHT = 0.5  # of the box's height: touching digits are about as tall as each other


def segmentations(
    box: Box, mask: np.ndarray, typical_width: float, split_width: float = SPLIT_WIDTH
) -> list[list[Box]]:
    """The ways a box `split_width` typical digits wide or wider may be cut into 2-4 touching digits.

    Cuts go at the columns with the least ink; the caller reads every piece and keeps the segmentation
    the reader is surest of, or the whole box.
    """
    x, y, w, h = box
    if w < split_width * typical_width:
        return []
    profile = mask[y : y + h, x : x + w].sum(axis=0).astype(float)
    narrowest = max(2, int(MIN_PIECE * h))
    cuts = cut_columns(profile, narrowest)
    options = []
    for count in range(1, min(3, len(cuts)) + 1):
        for chosen in itertools.combinations(cuts, count):
            edges = [0, *chosen, w]
            widths = np.diff(edges)
            if widths.min() >= narrowest and widths.max() <= MAX_PIECE * typical_width:
                options.append([piece for a, b in zip(edges, edges[1:]) if (piece := trimmed(box, mask, a, b))])
    # a short piece is a fragment, not a digit
    return [pieces for pieces in options if len(pieces) > 1 and min(p[3] for p in pieces) >= MIN_HEIGHT * h]


def cut_columns(profile: np.ndarray, narrowest: int) -> list[int]:
    """Up to MAX_CUTS columns, sorted, at local minima of the ink per column `profile`, `narrowest` apart."""
    smooth = np.convolve(profile, np.ones(3) / 3, mode="same")
    inner = range(narrowest, len(profile) - narrowest + 1)
    minima = [c for c in inner if smooth[c] <= smooth[c - 1] and smooth[c] <= smooth[c + 1]]  # narrowest >= 2
    kept: list[int] = []
    for c in sorted(minima, key=lambda c: smooth[c]):
        if len(kept) < MAX_CUTS and all(abs(c - k) >= narrowest for k in kept):
            kept.append(c)
    return sorted(kept)


def trimmed(box: Box, mask: np.ndarray, a: int, b: int) -> Box | None:
    """Columns a..b of `box`, cut to the rows that hold ink (None when there is none)."""
    x, y, w, h = box
    rows = np.flatnonzero(mask[y : y + h, x + a : x + b].any(axis=1))
    return (x + a, y + int(rows[0]), b - a, int(rows[-1] - rows[0] + 1)) if len(rows) and b > a else None


# --- boxes -> lines, blocks, groups --------------------------------------------------------------------


def centre_y(b: Box) -> float:
    return b[1] + b[3] / 2


def link_cost(a: Box, b: Box) -> float | None:
    """How well `b` continues a line to the right of `a`; None when it cannot."""
    size = (a[3] + b[3]) / 2
    gap = b[0] - (a[0] + a[2])
    rise = abs(centre_y(b) - centre_y(a))
    if b[0] + b[2] / 2 <= a[0] + a[2] / 2 or gap > 3.0 * size or gap < -0.5 * min(a[2], b[2]):
        return None
    if rise > 0.5 * size + 0.3 * max(gap, 0) or not 0.4 < b[3] / a[3] < 2.5:
        return None
    return max(gap, 0) + 2 * rise


def chains(boxes: list[Box]) -> list[list[int]]:
    """Indices of `boxes` chained into lines: i links to j when each is the other's best neighbour."""
    order = sorted(range(len(boxes)), key=lambda i: boxes[i][0])
    xs = [boxes[i][0] for i in order]
    reach = 3.5 * max((b[3] for b in boxes), default=0) + max((b[2] for b in boxes), default=0)
    right: dict[int, tuple[float, int]] = {}
    left: dict[int, tuple[float, int]] = {}
    for i, a in enumerate(boxes):
        lo, hi = bisect.bisect_left(xs, a[0] - a[2]), bisect.bisect_right(xs, a[0] + reach)
        for j in order[lo:hi]:  # only boxes near enough on the x axis: linear time on busy pages
            cost = link_cost(a, boxes[j]) if i != j else None
            if cost is not None:
                right[i] = min(right.get(i, (np.inf, -1)), (cost, j))
                left[j] = min(left.get(j, (np.inf, -1)), (cost, i))
    nxt = {i: j for i, (_, j) in right.items() if left[j][1] == i}
    starts = set(range(len(boxes))) - set(nxt.values())
    result = []
    for start in sorted(starts):
        chain = [start]
        while chain[-1] in nxt:
            chain.append(nxt[chain[-1]])
        result.append(chain)
    return result


def gutters(boxes: list[Box], lines: list[list[Box]], typical: float) -> list[tuple[int, int]]:
    """Empty vertical bands (x0, x1) between columns: two digits wide or more, with strings on both sides
    of them at the same height in at least two rows (a single wide gap inside a string is no column)."""
    if not boxes:
        return []
    lo, hi = min(b[0] for b in boxes), max(b[0] + b[2] for b in boxes)
    covered = np.zeros(hi - lo + 1, bool)
    for x, _, w, _ in boxes:
        covered[x - lo : x - lo + w] = True
    found = []
    edges = np.flatnonzero(np.diff(covered.astype(np.int8)))
    for start, end in zip(edges[::2] + 1, edges[1::2] + 1):  # runs of uncovered columns
        x0, x1 = lo + int(start), lo + int(end)
        if x1 - x0 >= 2 * typical and rows_across(lines, x0, x1) >= 2:
            found.append((x0, x1))
    return found


def rows_across(lines: list[list[Box]], x0: int, x1: int) -> int:
    """How many rows hold ink just left of x0 and, at the same height, ink right of x1."""
    ends = [max((b for b in line if b[0] + b[2] <= x0), key=lambda b: b[0], default=None) for line in lines]
    starts = [min((b for b in line if b[0] >= x1), key=lambda b: b[0], default=None) for line in lines]
    ends, starts = [b for b in ends if b], [b for b in starts if b]
    return sum(any(abs(centre_y(a) - centre_y(b)) < 0.5 * max(a[3], b[3]) for b in starts) for a in ends)


def layout(boxes: list[Box], typical: float) -> list[LineBoxes]:
    """Lines of boxes in reading order: top to bottom, lines at the same height left to right.

    On a page photographed askew the lines are first made level (see `level`), so that two groups of one
    line, or two columns of one row, stay at one height across the gap between them.
    """
    found = chains(boxes)
    slope = skew(boxes, found)
    if not slope:
        return level_layout(boxes, found, typical)
    levelled = [level(b, slope) for b in boxes]
    original = dict(zip(levelled, boxes))
    lines = level_layout(levelled, chains(levelled), typical)
    for line in lines:
        line.boxes = [original[b] for b in line.boxes]
    return lines


MIN_SKEW = 0.01  # slope (0.6 degrees) below which a page is taken as level


def skew(boxes: list[Box], found: list[list[int]]) -> float:
    """The page's slope (dy/dx): the median slope of its lines (`found`: `chains(boxes)`) of three boxes or more,
    0 if it has none."""
    slopes = []
    for chain in found:
        if len(chain) >= 3:
            xs = [boxes[i][0] + boxes[i][2] / 2 for i in chain]
            slopes.append(float(np.polyfit(xs, [centre_y(boxes[i]) for i in chain], 1)[0]))
    slope = float(np.median(slopes)) if slopes else 0.0
    return slope if abs(slope) >= MIN_SKEW else 0.0


def level(box: Box, slope: float) -> Box:
    """The box moved up or down by the page's slope at its centre: lines of an askew page made level."""
    x, y, w, h = box
    return x, y - round(slope * (x + w / 2)), w, h


def level_layout(boxes: list[Box], found: list[list[int]], typical: float) -> list[LineBoxes]:
    """`layout` of a level page whose boxes are chained into `found` (`chains(boxes)`)."""
    lines = [[boxes[i] for i in chain] for chain in found]
    cuts = gutters(boxes, lines, typical)
    lines = [piece for line in lines for piece in cut_at(line, cuts)]
    blocked = [LineBoxes(line, block=sum(line[0][0] >= x1 for _, x1 in cuts)) for line in lines]
    blocked = join_same_height(blocked)
    for line in blocked:
        line.groups = group_starts(line.boxes)
    return reading_order(blocked)


def cut_at(line: list[Box], cuts: list[tuple[int, int]]) -> list[list[Box]]:
    pieces, current = [], [line[0]]
    for a, b in zip(line, line[1:]):
        if any(a[0] + a[2] <= x0 and b[0] >= x1 for x0, x1 in cuts):
            pieces.append(current)
            current = []
        current.append(b)
    return [*pieces, current]


def join_same_height(lines: list[LineBoxes]) -> list[LineBoxes]:
    """Pieces of one line in one block (split by a gap too wide to link) joined, left to right."""
    lines = sorted(lines, key=lambda line: line.boxes[0][0])
    joined: list[LineBoxes] = []
    for line in lines:
        mate = next((m for m in joined if m.block == line.block and same_row(m.boxes, line.boxes)), None)
        if mate is not None and mate.boxes[-1][0] + mate.boxes[-1][2] <= line.boxes[0][0]:
            mate.boxes.extend(line.boxes)
        else:
            joined.append(line)
    return joined


def same_row(a: list[Box], b: list[Box]) -> bool:
    """`b` continues `a` at the same height, allowing the slope of a slanted or curved string across the gap."""
    size = float(np.median([box[3] for box in a + b]))
    gap = max(0, b[0][0] - (a[-1][0] + a[-1][2]))
    return abs(centre_y(a[-1]) - centre_y(b[0])) < 0.5 * size + 0.3 * gap


GROUP_GAP = 1.2  # digit heights; writers leave 1.5-2 between groups, and less than 1 between digits


def group_starts(boxes: list[Box]) -> tuple[int, ...]:
    """Where a new group starts: a gap wider than GROUP_GAP digit heights and than twice the ordinary spacing."""
    if len(boxes) < 2:
        return ()
    gaps = [b[0] - (a[0] + a[2]) for a, b in zip(boxes, boxes[1:])]
    height = float(np.median([b[3] for b in boxes]))
    ordinary = [g for g in gaps if g < height]
    limit = max(GROUP_GAP * height, 2 * float(np.median(ordinary)) if ordinary else 0.0)
    return tuple(k + 1 for k, gap in enumerate(gaps) if gap > limit)


def reading_order(lines: list[LineBoxes]) -> list[LineBoxes]:
    """Rows top to bottom (lines whose middles are within half a digit share a row), each left to right."""
    lines = sorted(lines, key=lambda line: np.median([centre_y(b) for b in line.boxes]))
    rows: list[list[LineBoxes]] = []
    for line in lines:
        middle = float(np.median([centre_y(b) for b in line.boxes]))
        size = float(np.median([b[3] for b in line.boxes]))
        if rows and abs(middle - float(np.median([centre_y(b) for b in rows[-1][0].boxes]))) < 0.5 * size:
            rows[-1].append(line)
        else:
            rows.append([line])
    return [line for row in rows for line in sorted(row, key=lambda line: line.boxes[0][0])]
