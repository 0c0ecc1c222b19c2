"""The embedded "shapes" world (docs/design.md section 2): a conditioning space small enough for a CPU.

Combinations of shape x colour x position x size x background are rendered deterministically with
NumPy (4x supersampled, so small shapes keep their outline at 16x16) and described by many
paraphrased prompts. Splits are by combination: seen (paired images), under-represented (<= 2
images), unseen (no image, but every prompt is in the pool). Images are float32 in [-1, 1],
shape (3, H, W).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from aria_hpc.splits import SPLITS

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLOURS = ("red", "green", "blue", "yellow", "cyan", "magenta", "orange", "white")
POSITIONS = ("centre", "top left", "top right", "bottom left", "bottom right")
SIZES = ("small", "large")
BACKGROUNDS = ("black", "grey")
ATTRIBUTES = {"shape": SHAPES, "colour": COLOURS, "position": POSITIONS, "size": SIZES,
              "background": BACKGROUNDS}

COLOUR_RGB = {
    "red": (0.92, 0.12, 0.10), "green": (0.10, 0.78, 0.15), "blue": (0.15, 0.30, 1.00),
    "yellow": (0.95, 0.90, 0.10), "cyan": (0.10, 0.88, 0.90), "magenta": (0.88, 0.12, 0.90),
    "orange": (1.00, 0.55, 0.05), "white": (1.00, 1.00, 1.00),
}
BACKGROUND_RGB = {"black": (0.0, 0.0, 0.0), "grey": (0.45, 0.45, 0.45)}
POSITION_CENTRE = {  # (row, col) as fractions of the image side
    "centre": (0.5, 0.5), "top left": (0.27, 0.27), "top right": (0.27, 0.73),
    "bottom left": (0.73, 0.27), "bottom right": (0.73, 0.73),
}
SIZE_RADIUS = {"small": 0.15, "large": 0.23}  # fraction of the image side
SUPERSAMPLE = 4

# Paraphrase templates. {size}/{colour}/{shape}/{pos}/{bg} are filled per combination; several
# templates use synonyms so the pool is not one sentence with slots.
TEMPLATES = (
    "a {size} {colour} {shape} {pos} on a {bg} background",
    "{size} {colour} {shape}, {pos}, {bg} background",
    "an image of a {size} {colour} {shape} placed {pos} against {bg}",
    "a {colour} {shape} of {size} size {pos}, {bg} backdrop",
    "{bg} background with a {size} {colour} {shape} {pos}",
    "there is a {size} {shape} coloured {colour} {pos} on {bg}",
    "a picture showing one {size2} {colour} {shape} {pos}; the background is {bg}",
    "{pos2}: a {size} {colour} {shape} over a {bg} background",
    "draw a {size2} {colour} {shape} {pos} on {bg}",
    "simple icon: {colour} {shape}, {size}, {pos}, on {bg}",
    "a {bg} canvas with a {colour} {size2} {shape} {pos}",
    "the {shape} is {colour} and {size}, located {pos}, with a {bg} background",
)
POSITION_PHRASE = {"centre": "in the centre", "top left": "in the top left corner",
                   "top right": "in the top right corner", "bottom left": "in the bottom left corner",
                   "bottom right": "in the bottom right corner"}
POSITION_PHRASE2 = {"centre": "centre", "top left": "upper left", "top right": "upper right",
                    "bottom left": "lower left", "bottom right": "lower right"}
SIZE_SYNONYM = {"small": "tiny", "large": "big"}


@dataclass(frozen=True)
class Combination:
    shape: str
    colour: str
    position: str
    size: str
    background: str

    def labels(self) -> tuple[int, ...]:
        """Attribute indices in ATTRIBUTES order (what the judge predicts)."""
        return tuple(values.index(getattr(self, name)) for name, values in ATTRIBUTES.items())


ALL_COMBINATIONS: tuple[Combination, ...] = tuple(
    Combination(*c) for c in itertools.product(SHAPES, COLOURS, POSITIONS, SIZES, BACKGROUNDS))


def _shape_mask(shape: str, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Inside test in coordinates normalised by the radius (dy down, dx right)."""
    r = np.sqrt(dx * dx + dy * dy)
    if shape == "circle":
        return r <= 1.0
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.8
    if shape == "triangle":  # apex up
        return (dy <= 0.75) & (dy >= -1.0) & (np.abs(dx) <= (dy + 1.0) * 0.55)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.0
    if shape == "cross":
        return ((np.abs(dx) <= 0.3) & (np.abs(dy) <= 1.0)) | ((np.abs(dy) <= 0.3) & (np.abs(dx) <= 1.0))
    if shape == "ring":
        return (r <= 1.0) & (r >= 0.55)
    raise ValueError(f"unknown shape '{shape}'")


def render(combo: Combination, resolution: int = 16, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Deterministic render, (3, H, W) float32 in [-1, 1]; `offset` shifts the shape in pixels."""
    n = resolution * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / n
    cy, cx = POSITION_CENTRE[combo.position]
    cy += offset[0] / resolution
    cx += offset[1] / resolution
    radius = SIZE_RADIUS[combo.size]
    dy = (coords[:, None] - cy) / radius
    dx = (coords[None, :] - cx) / radius
    mask = _shape_mask(combo.shape, dy, dx).astype(np.float32)
    coverage = mask.reshape(resolution, SUPERSAMPLE, resolution, SUPERSAMPLE).mean(axis=(1, 3))
    fg = np.array(COLOUR_RGB[combo.colour], dtype=np.float32)[:, None, None]
    bg = np.array(BACKGROUND_RGB[combo.background], dtype=np.float32)[:, None, None]
    image = bg + (fg - bg) * coverage[None]
    return image * 2.0 - 1.0


def image_offset(image_index: int, jitter_px: int) -> tuple[int, int]:
    """The pixel offset of a combination's image_index-th image (image 0 is centred)."""
    if image_index == 0 or jitter_px == 0:
        return (0, 0)
    rng = np.random.default_rng([image_index, 0x5A])
    return tuple(int(v) for v in rng.integers(-jitter_px, jitter_px + 1, size=2))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def prompts_for(combo: Combination) -> list[str]:
    """Every paraphrase of one combination, one per template, all distinct."""
    out = []
    for template in TEMPLATES:
        text = template.format(size=combo.size, size2=SIZE_SYNONYM[combo.size], colour=combo.colour,
                               shape=combo.shape, pos=POSITION_PHRASE[combo.position],
                               pos2=POSITION_PHRASE2[combo.position], bg=combo.background)
        # "a orange", "a upper": fix the article before a vowel.
        words = text.split(" ")
        for i in range(len(words) - 1):
            if words[i] in ("a", "an"):
                words[i] = _article(words[i + 1])
        out.append(" ".join(words))
    return out




@dataclass(frozen=True)
class ShapesWorld:
    """Combinations, their splits and images, and the prompt pool with its per-prompt labels.

    Regimes: a pair holdout (unseen_pairs: those colour-shape pairs have no image), a whole-concept
    holdout (heldout_colours / heldout_shapes: every combination with such a value has no image) and
    pool dilution (heldout_share: the held-out concepts' combinations keep only as many paraphrases
    as bring their share of the pool to at most that fraction; everything else keeps all)."""

    resolution: int = 16
    seen_images: int = 4  # images per seen combination
    under_images: int = 2  # images per under-represented combination (<= 2)
    jitter_px: int = 1
    unseen_pairs: tuple[str, ...] = ("red triangle", "blue circle", "yellow cross", "cyan square")
    under_pairs: tuple[str, ...] = ("green ring", "magenta diamond", "orange square", "white triangle")
    heldout_colours: tuple[str, ...] = ()
    heldout_shapes: tuple[str, ...] = ()
    heldout_share: float = 0.0  # 0: held-out concepts keep every paraphrase

    def __post_init__(self) -> None:
        pairs = {f"{c} {s}" for c in COLOURS for s in SHAPES}
        for name in ("unseen_pairs", "under_pairs"):
            for pair in getattr(self, name):
                if pair not in pairs:
                    raise ValueError(f"world.{name}: '{pair}' is not a '<colour> <shape>' pair of this world")
        if set(self.unseen_pairs) & set(self.under_pairs):
            raise ValueError("world.unseen_pairs and world.under_pairs overlap")
        if not 1 <= self.under_images <= 2:
            raise ValueError("world.under_images must be 1 or 2 (under-represented means <= 2 images)")
        for name, values in (("heldout_colours", COLOURS), ("heldout_shapes", SHAPES)):
            bad = [v for v in getattr(self, name) if v not in values]
            if bad:
                raise ValueError(f"world.{name}: '{bad[0]}' is not one of {', '.join(values)}")
        clash = [p for p in self.under_pairs if self._heldout_concept(*p.split(" "))]
        if clash:
            raise ValueError(f"world.under_pairs: '{clash[0]}' has a held-out colour or shape (it can have no "
                             "image): drop it from world.under_pairs")
        if not 0 <= self.heldout_share < 1:
            raise ValueError("world.heldout_share must be in [0, 1)")
        if self.heldout_share and not (self.heldout_colours or self.heldout_shapes):
            raise ValueError("world.heldout_share dilutes held-out concepts: set world.heldout_colours or "
                             "world.heldout_shapes")

    def _heldout_concept(self, colour: str, shape: str) -> bool:
        return colour in self.heldout_colours or shape in self.heldout_shapes

    def is_heldout_concept(self, combo: Combination) -> bool:
        return self._heldout_concept(combo.colour, combo.shape)

    def split_of(self, combo: Combination) -> str:
        pair = f"{combo.colour} {combo.shape}"
        if pair in self.unseen_pairs or self.is_heldout_concept(combo):
            return "unseen"
        if pair in self.under_pairs:
            return "under"
        return "seen"

    @cached_property
    def heldout_paraphrases(self) -> int:
        """Paraphrases each held-out-concept combination keeps: all, or the most (>= 1) that keep
        the concepts' share of the pool at or below heldout_share."""
        held = sum(map(self.is_heldout_concept, ALL_COMBINATIONS))
        if not self.heldout_share or not held:
            return len(TEMPLATES)
        others = (len(ALL_COMBINATIONS) - held) * len(TEMPLATES)
        fits = int(np.floor(self.heldout_share * others / (held * (1 - self.heldout_share)) + 1e-9))
        return int(np.clip(fits, 1, len(TEMPLATES)))

    def templates_of(self, combo_id: int) -> list[int]:
        """Template indices of a combination's paraphrases (a diluted one keeps a rotating subset, so
        the held-out concept's prompts still vary in wording across its combinations)."""
        if not self.is_heldout_concept(ALL_COMBINATIONS[combo_id]) or self.heldout_paraphrases == len(TEMPLATES):
            return list(range(len(TEMPLATES)))
        return [(combo_id + j) % len(TEMPLATES) for j in range(self.heldout_paraphrases)]

    @cached_property
    def heldout_pool_share(self) -> float:
        """The held-out concepts' share of the pool (0 without a whole-concept holdout)."""
        held = np.array([self.is_heldout_concept(c) for c in ALL_COMBINATIONS])
        return float(held[self.prompt_combination].mean())

    @cached_property
    def combination_splits(self) -> np.ndarray:
        """(960,) split index into SPLITS, per combination id."""
        return np.array([SPLITS.index(self.split_of(c)) for c in ALL_COMBINATIONS], dtype=np.int8)

    @cached_property
    def prompts(self) -> list[str]:
        """The pool: the paraphrases of all combinations, combination-major."""
        out = []
        for combo_id, combo in enumerate(ALL_COMBINATIONS):
            texts = prompts_for(combo)
            out += [texts[j] for j in self.templates_of(combo_id)]
        return out

    @cached_property
    def prompt_combination(self) -> np.ndarray:
        """(N,) combination id of every prompt in the pool."""
        counts = [len(self.templates_of(c)) for c in range(len(ALL_COMBINATIONS))]
        return np.repeat(np.arange(len(ALL_COMBINATIONS)), counts)

    def caption_ids(self, combo_ids: np.ndarray) -> np.ndarray:
        """(n, len(TEMPLATES)) pool ids of every paraphrase of each combination (combinations that
        have images keep all their paraphrases)."""
        first = np.searchsorted(self.prompt_combination, np.asarray(combo_ids))
        ids = first[:, None] + np.arange(len(TEMPLATES))[None]
        if len(ids) and not np.array_equal(self.prompt_combination[np.minimum(ids, len(self.prompt_combination) - 1)],
                                           np.repeat(np.asarray(combo_ids)[:, None], len(TEMPLATES), 1)):
            raise ValueError("caption_ids: a diluted combination has no full set of paraphrases")
        return ids

    def images_per_combination(self, combo_id: int) -> int:
        split = SPLITS[self.combination_splits[combo_id]]
        return {"seen": self.seen_images, "under": self.under_images, "unseen": 0}[split]

    def paired_set(self) -> tuple[np.ndarray, np.ndarray]:
        """The student's paired images: (M, 3, H, W) float32 and their (M,) combination ids."""
        ids, images = [], []
        for combo_id, combo in enumerate(ALL_COMBINATIONS):
            for k in range(self.images_per_combination(combo_id)):
                ids.append(combo_id)
                images.append(render(combo, self.resolution, image_offset(k, self.jitter_px)))
        return np.stack(images), np.array(ids, dtype=np.int64)

    def render_id(self, combo_id: int, image_index: int = 0) -> np.ndarray:
        return render(ALL_COMBINATIONS[combo_id], self.resolution, image_offset(image_index, self.jitter_px))


def shapes_world(w) -> ShapesWorld:
    """The world a config's `world` section (config.WorldConfig) describes; ValueError naming the
    field when its names do not make one."""
    return ShapesWorld(resolution=w.resolution, seen_images=w.seen_images, under_images=w.under_images,
                       jitter_px=w.jitter_px, unseen_pairs=tuple(w.unseen_pairs), under_pairs=tuple(w.under_pairs),
                       heldout_colours=tuple(w.heldout_colours), heldout_shapes=tuple(w.heldout_shapes),
                       heldout_share=w.heldout_share)
