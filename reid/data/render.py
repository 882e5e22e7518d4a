"""Procedural renderer of small pedestrians with ground-truth part masks.

A person is a :class:`PersonAttributes` (hair, clothes, shoes, bag, body shape), an image of that
person is fully fixed by a :class:`ViewParams` (viewpoint, walking pose, placement, occluder,
illumination and a noise seed) and a :class:`CameraStyle` (background texture, colour cast, blur).
:func:`render_person` draws the figure on a supersampled canvas as a map of *materials* (skin,
hair, top, ...), colours it, composites it over the camera background and degrades the result
like a surveillance camera. Because every random draw inside the renderer depends only on the view
and the camera, rendering the same view with one attribute changed changes only the pixels of that
attribute (controlled pairs for explanation tests).

Part labels of the mask (:data:`PART_LABELS`): 0 background (also occluders), 1 head incl. hair,
2 torso incl. arms and hands, 3 legs (trousers, shorts, skirt, bare legs), 4 shoes, 5 bag.

Only numpy and OpenCV are needed; nothing runs on import.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

PART_LABELS: Mapping[str, int] = MappingProxyType(
    {"background": 0, "head": 1, "torso": 2, "legs": 3, "shoes": 4, "bag": 5}
)
NUM_PARTS = len(PART_LABELS)

VIEWPOINTS: tuple[str, ...] = ("front", "back", "left", "right")
"""``left``/``right``: the camera sees the person's left/right side (side views)."""

OCCLUDERS: tuple[str, ...] = ("none", "pole", "box", "side", "person")

COLOURS: Mapping[str, tuple[int, int, int]] = MappingProxyType(
    {
        # clothes and bags (RGB); several pairs are deliberately close
        "black": (32, 32, 35),
        "white": (226, 226, 222),
        "grey": (125, 126, 128),
        "red": (185, 38, 42),
        "maroon": (118, 32, 44),
        "navy": (34, 42, 92),
        "blue": (48, 92, 168),
        "green": (52, 118, 62),
        "olive": (102, 106, 52),
        "yellow": (218, 188, 62),
        "beige": (204, 184, 150),
        "denim": (62, 86, 128),
        "khaki": (168, 150, 106),
        "brown": (96, 66, 46),
        # hair
        "dark_brown": (60, 40, 30),
        "auburn": (120, 62, 38),
        "blond": (190, 160, 104),
        "silver": (165, 163, 160),
        # skin
        "skin_light": (232, 196, 170),
        "skin_medium": (204, 156, 120),
        "skin_tan": (164, 116, 84),
        "skin_dark": (104, 72, 54),
    }
)

ATTRIBUTE_VALUES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "hair_style": ("short", "medium", "long", "ponytail"),
        "hair_colour": ("black", "dark_brown", "auburn", "blond", "silver"),
        "skin_tone": ("skin_light", "skin_medium", "skin_tan", "skin_dark"),
        "top_colour": (
            "black", "white", "grey", "red", "maroon", "navy", "blue", "green", "olive", "yellow",
            "beige",
        ),
        "top_pattern": ("solid", "stripes", "checks", "logo"),
        "sleeves": ("short", "long"),
        "bottom_colour": ("black", "navy", "denim", "grey", "khaki", "brown"),
        "bottom_type": ("trousers", "shorts", "skirt"),
        "shoes_colour": ("black", "white", "brown", "grey", "red"),
        "bag_type": ("none", "backpack", "handbag", "shoulder_bag"),
        "bag_colour": ("black", "brown", "grey", "red", "navy"),
        "bag_side": ("left", "right"),
        "body_height": ("short", "medium", "tall"),
        "body_width": ("slim", "medium", "broad"),
    }
)
"""Allowed values of every attribute, in a fixed order (the order matters for determinism)."""

# Prior weights of the values when sampling identities: dark, plain clothes are common, as in
# real footage, which makes many people look alike.
_VALUE_WEIGHTS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        "hair_colour": {"black": 3.0, "dark_brown": 3.0},
        "top_colour": {"black": 3.0, "grey": 2.0, "navy": 2.0, "white": 2.0, "blue": 1.5},
        "top_pattern": {"solid": 2.0},
        "bottom_colour": {"black": 3.0, "denim": 3.0, "navy": 2.0},
        "bottom_type": {"trousers": 4.0},
        "shoes_colour": {"black": 3.0, "white": 2.0},
        "bag_type": {"none": 2.0},
        "bag_colour": {"black": 3.0},
        "body_height": {"medium": 2.0},
        "body_width": {"medium": 2.0},
    }
)

_HEIGHT_FACTOR = MappingProxyType({"short": 0.87, "medium": 0.935, "tall": 1.0})
_WIDTH_FACTOR = MappingProxyType({"slim": 0.84, "medium": 1.0, "broad": 1.2})

# Materials drawn on the supersampled canvas, and the part label of each.
_M_NONE, _M_SKIN_HEAD, _M_HAIR, _M_SKIN_ARM, _M_TOP, _M_LOGO = 0, 1, 2, 3, 4, 5
_M_BOTTOM, _M_SKIN_LEG, _M_SHOES, _M_BAG, _M_BAG_DARK = 6, 7, 8, 9, 10
_NUM_MATERIALS = 11
_MATERIAL_PART = np.array([0, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5], dtype=np.uint8)
_MATERIAL_PART.setflags(write=False)
_FIXED = 16.0  # sub-pixel scale for OpenCV drawing (shift=4)


@dataclass(frozen=True)
class PersonAttributes:
    """The appearance of one identity. Every field takes one value of :data:`ATTRIBUTE_VALUES`.

    ``bag_side`` is the person's own side (not the image side); it has no effect without a bag or
    with a backpack. ``bag_colour`` has no effect without a bag.
    """

    hair_style: str = "short"
    hair_colour: str = "black"
    skin_tone: str = "skin_medium"
    top_colour: str = "grey"
    top_pattern: str = "solid"
    sleeves: str = "long"
    bottom_colour: str = "denim"
    bottom_type: str = "trousers"
    shoes_colour: str = "black"
    bag_type: str = "none"
    bag_colour: str = "black"
    bag_side: str = "right"
    body_height: str = "medium"
    body_width: str = "medium"

    def __post_init__(self) -> None:
        for name, allowed in ATTRIBUTE_VALUES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"attribute {name}={value!r} is not one of {allowed}")

    def replace(self, **changes: str) -> PersonAttributes:
        """Returns a copy with some fields changed (validated), e.g. ``replace(bag_type='none')``."""
        unknown = set(changes) - set(ATTRIBUTE_VALUES)
        if unknown:
            raise ValueError(f"unknown attributes {sorted(unknown)}; known: {list(ATTRIBUTE_VALUES)}")
        return dataclasses.replace(self, **changes)

    def with_attribute(self, name: str, value: str) -> PersonAttributes:
        """Returns a copy with exactly one attribute changed."""
        return self.replace(**{name: value})

    def to_dict(self) -> dict[str, str]:
        """Returns the attributes as a plain JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, str]) -> PersonAttributes:
        """Builds attributes from :meth:`to_dict` output."""
        return cls(**dict(values))

    def as_tuple(self) -> tuple[str, ...]:
        """Returns the values in the order of :data:`ATTRIBUTE_VALUES`."""
        return tuple(getattr(self, name) for name in ATTRIBUTE_VALUES)


@dataclass(frozen=True)
class Difficulty:
    """Knobs that make the synthetic set harder (or easier); defaults target a mid-hard set.

    Attributes:
        occlusion_prob: probability that an image has an occluder (pole, box, image-side block,
            another person's fragment).
        colour_noise: std of the per-image, per-material multiplicative colour jitter (log scale).
        illumination_jitter: std of the per-image log gain.
        camera_cast: std of each camera's per-channel log colour cast.
        desaturation: largest loss of saturation of a camera (0 keeps colours, 1 may grey out).
        position_jitter: std of the person's horizontal shift, as a fraction of the image width
            (vertical: half of it, as a fraction of the height).
        scale_jitter: std of the per-image log scale of the person.
        pose_strength: multiplier of walking stride and arm swing.
        blur: largest Gaussian blur sigma, in output pixels.
        pixel_noise: std of the additive sensor noise, in 0-255 units.
        view_bias: probability of a camera's dominant viewpoint (the rest is shared evenly).
        clutter_prob: probability of extra random objects in the background of an image.
        family_size: identities generated as variants of one prototype (1 = all independent).
        family_mutations: attributes changed from the prototype for each family member.
    """

    occlusion_prob: float = 0.25
    colour_noise: float = 0.05
    illumination_jitter: float = 0.12
    camera_cast: float = 0.08
    desaturation: float = 0.25
    position_jitter: float = 0.05
    scale_jitter: float = 0.07
    pose_strength: float = 1.0
    blur: float = 1.0
    pixel_noise: float = 4.0
    view_bias: float = 0.5
    clutter_prob: float = 0.5
    family_size: int = 3
    family_mutations: int = 2

    def __post_init__(self) -> None:
        for name in ("occlusion_prob", "view_bias", "clutter_prob", "desaturation"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"Difficulty.{name} must be in [0, 1], got {getattr(self, name)}")
        for field in dataclasses.fields(self):
            if getattr(self, field.name) < 0:
                raise ValueError(f"Difficulty.{field.name} must be >= 0")
        if self.family_size < 1:
            raise ValueError("Difficulty.family_size must be >= 1")

    def scaled(self, factor: float) -> Difficulty:
        """Returns a copy with the nuisance knobs multiplied by ``factor`` (0 = clean images).

        Identity similarity (``family_*``), ``view_bias`` and ``pose_strength`` are unchanged.
        """
        if factor < 0:
            raise ValueError("factor must be >= 0")
        changes: dict[str, float] = {}
        for name in ("colour_noise", "illumination_jitter", "camera_cast", "position_jitter",
                     "scale_jitter", "blur", "pixel_noise"):
            changes[name] = getattr(self, name) * factor
        for name in ("occlusion_prob", "clutter_prob", "desaturation"):
            changes[name] = min(1.0, getattr(self, name) * factor)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, float]:
        """Returns the knobs as a plain dict."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CameraStyle:
    """Everything that is constant for one camera.

    Attributes:
        index: 0-based camera index.
        background: texture kind, one of ``floor``, ``bricks``, ``noise``, ``clutter``,
            ``gradient``, ``fence``.
        palette: three background RGB colours.
        gain: global brightness multiplier.
        cast: per-channel (R, G, B) multiplier.
        saturation: 1 keeps colours, lower values grey them out.
        blur: base Gaussian sigma in output pixels.
        scale: mean person height as a fraction of the image height.
        view_probs: probabilities of ``front``, ``back``, ``left``, ``right``.
        light_side: -1 light from the image left, +1 from the right.
        jpeg_quality: JPEG quality used when the dataset writes the image.
        texture_seed: seed of the background texture.
    """

    index: int
    background: str
    palette: tuple[tuple[int, int, int], ...]
    gain: float
    cast: tuple[float, float, float]
    saturation: float
    blur: float
    scale: float
    view_probs: tuple[float, float, float, float]
    light_side: float
    jpeg_quality: int
    texture_seed: int

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CameraStyle:
        """Builds a camera from :meth:`to_dict` output (lists become tuples)."""
        v = dict(values)
        v["palette"] = tuple(tuple(int(c) for c in col) for col in v["palette"])
        v["cast"] = tuple(float(c) for c in v["cast"])
        v["view_probs"] = tuple(float(p) for p in v["view_probs"])
        return cls(**v)


@dataclass(frozen=True)
class ViewParams:
    """Everything that varies per image; with attributes and camera it fixes the image exactly.

    Attributes:
        viewpoint: one of :data:`VIEWPOINTS`.
        phase: walking phase in radians.
        stride: stride amplitude (0 standing, 1 long stride).
        arm_swing: arm swing amplitude (0..1).
        scale: person height as a fraction of the image height (before the body height factor).
        dx: horizontal shift as a fraction of the image width.
        dy: vertical shift as a fraction of the image height.
        occluder: one of :data:`OCCLUDERS`.
        occluder_seed: seed of the occluder's geometry and colour.
        gain: per-image illumination multiplier.
        blur: Gaussian sigma in output pixels (camera blur included).
        colour_noise: std of the per-material log colour jitter.
        pixel_noise: std of additive noise in 0-255 units.
        clutter: whether random objects are added to the background.
        noise_seed: seed of all remaining per-image randomness.
    """

    viewpoint: str = "front"
    phase: float = 0.0
    stride: float = 0.5
    arm_swing: float = 0.5
    scale: float = 0.86
    dx: float = 0.0
    dy: float = 0.0
    occluder: str = "none"
    occluder_seed: int = 0
    gain: float = 1.0
    blur: float = 0.0
    colour_noise: float = 0.0
    pixel_noise: float = 0.0
    clutter: bool = False
    noise_seed: int = 0

    def __post_init__(self) -> None:
        if self.viewpoint not in VIEWPOINTS:
            raise ValueError(f"viewpoint {self.viewpoint!r} is not one of {VIEWPOINTS}")
        if self.occluder not in OCCLUDERS:
            raise ValueError(f"occluder {self.occluder!r} is not one of {OCCLUDERS}")

    def replace(self, **changes: Any) -> ViewParams:
        """Returns a copy with some fields changed, e.g. ``replace(occluder='none')``."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ViewParams:
        """Builds view parameters from :meth:`to_dict` output."""
        return cls(**dict(values))


def bag_visible(attributes: PersonAttributes, viewpoint: str) -> bool:
    """Whether the bag of ``attributes`` shows in an unoccluded image from ``viewpoint``.

    A backpack always shows (straps from the front, the pack from the back and the sides); a
    handbag or shoulder bag is hidden behind the body in the side view of the other side.
    """
    if attributes.bag_type == "none":
        return False
    if attributes.bag_type == "backpack" or viewpoint in ("front", "back"):
        return True
    return attributes.bag_side == viewpoint


def logo_visible(attributes: PersonAttributes, viewpoint: str) -> bool:
    """Whether the front logo of the top shows: only a front view of a ``logo`` top."""
    return attributes.top_pattern == "logo" and viewpoint == "front"


# --------------------------------------------------------------------------------------------
# sampling


def _weighted_choice(rng: np.random.Generator, name: str, exclude: str | None = None) -> str:
    values = [v for v in ATTRIBUTE_VALUES[name] if v != exclude]
    weights = np.array([_VALUE_WEIGHTS.get(name, {}).get(v, 1.0) for v in values])
    return values[int(rng.choice(len(values), p=weights / weights.sum()))]


def sample_attributes(rng: np.random.Generator) -> PersonAttributes:
    """Samples one random identity from the prior (common values are more likely)."""
    return PersonAttributes(**{name: _weighted_choice(rng, name) for name in ATTRIBUTE_VALUES})


def _mutate(proto: PersonAttributes, rng: np.random.Generator, count: int) -> PersonAttributes:
    names = list(ATTRIBUTE_VALUES)
    chosen = rng.choice(len(names), size=min(count, len(names)), replace=False)
    changes = {names[i]: _weighted_choice(rng, names[i], exclude=getattr(proto, names[i]))
               for i in sorted(chosen)}
    return proto.replace(**changes)


def _fix_singletons(rows: list[list[str]], rng: np.random.Generator) -> bool:
    """Moves every identity holding a unique value to a value held by others; True if changed."""
    changed = False
    for k in range(len(ATTRIBUTE_VALUES)):
        column = [row[k] for row in rows]
        counts = {v: column.count(v) for v in column}
        for i, value in enumerate(column):
            if counts[value] == 1:
                others = sorted(v for v in counts if v != value and counts[v] > 0)
                new = others[int(rng.integers(len(others)))]
                rows[i][k] = new
                counts[value] -= 1
                counts[new] += 1
                changed = True
    return changed


def _fix_duplicates(rows: list[list[str]], rng: np.random.Generator) -> bool:
    """Swaps one attribute between a duplicated identity and another one (value counts stay)."""
    seen: dict[tuple[str, ...], int] = {}
    for i, row in enumerate(rows):
        key = tuple(row)
        if key not in seen:
            seen[key] = i
            continue
        for _ in range(100):
            k = int(rng.integers(len(row)))
            j = int(rng.integers(len(rows)))
            if rows[j][k] != row[k]:
                rows[i][k], rows[j][k] = rows[j][k], rows[i][k]
                return True
    return False


def sample_identities(
    num_ids: int, rng: np.random.Generator, family_size: int = 3, family_mutations: int = 2
) -> list[PersonAttributes]:
    """Samples distinct identities in which every occurring attribute value is shared.

    Identities come in families: a prototype from the prior and ``family_size`` variants of it,
    each with ``family_mutations`` attributes changed, so many people differ in only a few
    attributes. Afterwards every value held by a single identity is moved to a value held by
    others and duplicates are broken by swapping values (which keeps the value counts), so no
    attribute value alone identifies a person.

    Args:
        num_ids: number of identities, at least 4.
        rng: random generator.
        family_size: identities per prototype (1 = independent identities).
        family_mutations: attributes changed from the prototype per identity.

    Returns:
        ``num_ids`` distinct attributes.

    Raises:
        ValueError: if ``num_ids < 4`` (sharing and distinctness cannot both hold).
    """
    if num_ids < 4:
        raise ValueError(f"need at least 4 identities to share every attribute value, got {num_ids}")
    people: list[PersonAttributes] = []
    while len(people) < num_ids:
        proto = sample_attributes(rng)
        for _ in range(family_size):
            people.append(_mutate(proto, rng, family_mutations) if family_mutations else proto)
    rows = [list(p.as_tuple()) for p in people[:num_ids]]
    for _ in range(10_000):
        singles = _fix_singletons(rows, rng)
        dups = _fix_duplicates(rows, rng)
        if not singles and not dups:
            break
    else:  # pragma: no cover - never seen; guards against an endless loop
        raise RuntimeError("could not make the identities distinct with shared attribute values")
    names = list(ATTRIBUTE_VALUES)
    return [PersonAttributes(**dict(zip(names, row))) for row in rows]


_BACKGROUNDS = ("floor", "bricks", "noise", "clutter", "gradient", "fence")


def make_cameras(num_cams: int, rng: np.random.Generator, difficulty: Difficulty) -> list[CameraStyle]:
    """Samples the styles of ``num_cams`` cameras.

    Each camera gets a background kind (all kinds are used before one repeats), a dominant
    viewpoint (cycling through front, back, side), a colour cast, saturation, blur and scale.
    """
    kinds = [_BACKGROUNDS[i] for i in rng.permutation(len(_BACKGROUNDS))]
    dominant_order = [VIEWPOINTS[i] for i in rng.permutation(len(VIEWPOINTS))]
    cameras = []
    for index in range(num_cams):
        dominant = dominant_order[index % len(VIEWPOINTS)]
        rest = (1.0 - difficulty.view_bias) / (len(VIEWPOINTS) - 1)
        probs = tuple(difficulty.view_bias if v == dominant else rest for v in VIEWPOINTS)
        hues = rng.uniform(0, 180, size=3)
        sats = rng.uniform(10, 90, size=3)
        vals = rng.uniform(60, 220, size=3)
        hsv = np.stack([hues, sats, vals], axis=1).astype(np.uint8)[None]
        palette = tuple(tuple(int(c) for c in col) for col in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0])
        cameras.append(
            CameraStyle(
                index=index,
                background=kinds[index % len(kinds)],
                palette=palette,
                gain=float(np.exp(rng.normal(0.0, 0.15))),
                cast=tuple(float(c) for c in np.exp(rng.normal(0.0, difficulty.camera_cast, 3))),
                saturation=float(1.0 - rng.uniform(0.0, difficulty.desaturation)),
                blur=float(rng.uniform(0.0, 0.6) * difficulty.blur),
                scale=float(rng.uniform(0.8, 0.9)),
                view_probs=probs,  # type: ignore[arg-type]
                light_side=float(rng.uniform(-1.0, 1.0)),
                jpeg_quality=int(rng.integers(70, 96)),
                texture_seed=int(rng.integers(2**31)),
            )
        )
    return cameras


def sample_view(rng: np.random.Generator, camera: CameraStyle, difficulty: Difficulty) -> ViewParams:
    """Samples the per-image parameters of one image from ``camera``.

    The number of random draws is fixed, so the same generator state always gives the same view.
    """
    viewpoint = VIEWPOINTS[int(rng.choice(len(VIEWPOINTS), p=np.array(camera.view_probs)))]
    phase = float(rng.uniform(0.0, 2.0 * math.pi))
    stride = float(min(1.0, rng.uniform(0.2, 1.0) * difficulty.pose_strength))
    arm_swing = float(min(1.0, rng.uniform(0.2, 1.0) * difficulty.pose_strength))
    scale = float(camera.scale * math.exp(rng.normal(0.0, difficulty.scale_jitter)))
    dx = float(np.clip(rng.normal(0.0, difficulty.position_jitter), -0.2, 0.2))
    dy = float(np.clip(rng.normal(0.0, difficulty.position_jitter / 2), -0.1, 0.1))
    occluded = rng.random() < difficulty.occlusion_prob
    occluder = OCCLUDERS[1 + int(rng.integers(len(OCCLUDERS) - 1))]
    occluder_seed = int(rng.integers(2**31))
    gain = float(math.exp(rng.normal(0.0, difficulty.illumination_jitter)))
    blur = float(camera.blur + rng.uniform(0.0, 0.5) * difficulty.blur)
    clutter = bool(rng.random() < difficulty.clutter_prob)
    noise_seed = int(rng.integers(2**31))
    return ViewParams(
        viewpoint=viewpoint, phase=phase, stride=stride, arm_swing=arm_swing, scale=scale,
        dx=dx, dy=dy, occluder=occluder if occluded else "none", occluder_seed=occluder_seed,
        gain=gain, blur=blur, colour_noise=difficulty.colour_noise,
        pixel_noise=difficulty.pixel_noise, clutter=clutter, noise_seed=noise_seed,
    )


# --------------------------------------------------------------------------------------------
# drawing primitives on an integer material canvas


def _pts(points: Sequence[Sequence[float]]) -> np.ndarray:
    return np.round(np.asarray(points, dtype=np.float64) * _FIXED).astype(np.int32)


def _poly(canvas: np.ndarray, points: Sequence[Sequence[float]], value: int) -> None:
    cv2.fillPoly(canvas, [_pts(points)], int(value), lineType=cv2.LINE_8, shift=4)


def _disc(canvas: np.ndarray, centre: Sequence[float], radius: float, value: int) -> None:
    c = _pts([centre])[0]
    cv2.circle(canvas, (int(c[0]), int(c[1])), max(1, round(radius * _FIXED)), int(value), -1,
               lineType=cv2.LINE_8, shift=4)


def _ellipse(canvas: np.ndarray, centre: Sequence[float], axes: Sequence[float], value: int,
             angle: float = 0.0) -> None:
    c = _pts([centre])[0]
    a = (max(1, round(axes[0] * _FIXED)), max(1, round(axes[1] * _FIXED)))
    cv2.ellipse(canvas, (int(c[0]), int(c[1])), a, angle, 0, 360, int(value), -1,
                lineType=cv2.LINE_8, shift=4)


def _capsule(canvas: np.ndarray, p: Sequence[float], q: Sequence[float], rp: float, rq: float,
             value: int) -> None:
    """Fills a tapered capsule from ``p`` (radius ``rp``) to ``q`` (radius ``rq``)."""
    p_, q_ = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    d = q_ - p_
    n = float(np.hypot(d[0], d[1]))
    if n > 1e-6:
        perp = np.array([-d[1], d[0]]) / n
        _poly(canvas, [p_ + perp * rp, q_ + perp * rq, q_ - perp * rq, p_ - perp * rp], value)
    _disc(canvas, p_, rp, value)
    _disc(canvas, q_, rq, value)


# --------------------------------------------------------------------------------------------
# the figure


@dataclass(frozen=True)
class _Frame:
    """Pixel geometry of one figure on the canvas: centre x, top y, height and width factor."""

    cx: float
    top: float
    ph: float
    wf: float

    def y(self, fraction: float) -> float:
        return self.top + fraction * self.ph

    def u(self, fraction: float) -> float:
        return fraction * self.ph


def _frame(attrs: PersonAttributes, view: ViewParams, hs: int, ws: int, x_offset: float = 0.0) -> _Frame:
    ph = view.scale * hs * _HEIGHT_FACTOR[attrs.body_height]
    sole = hs * (0.975 + view.dy)
    return _Frame(cx=ws * (0.5 + view.dx) + x_offset, top=sole - ph, ph=ph,
                  wf=_WIDTH_FACTOR[attrs.body_width])


def _image_side(person_side: str, viewpoint: str) -> int:
    """Image direction (-1 left, +1 right) of the person's ``left``/``right`` side in a frontal view."""
    sign = 1 if person_side == "left" else -1
    return sign if viewpoint == "front" else -sign


def _leg(canvas: np.ndarray, f: _Frame, hip: np.ndarray, knee: np.ndarray, ankle: np.ndarray,
         attrs: PersonAttributes) -> None:
    r_hip, r_knee, r_ankle = f.u(0.052) * f.wf, f.u(0.036) * math.sqrt(f.wf), f.u(0.026)
    if attrs.bottom_type == "trousers":
        _capsule(canvas, hip, knee, r_hip, r_knee, _M_BOTTOM)
        _capsule(canvas, knee, ankle, r_knee, r_ankle * 1.1, _M_BOTTOM)
        return
    _capsule(canvas, hip, knee, r_hip * 0.9, r_knee * 0.85, _M_SKIN_LEG)
    _capsule(canvas, knee, ankle, r_knee * 0.85, r_ankle * 0.9, _M_SKIN_LEG)
    if attrs.bottom_type == "shorts":
        end = hip + 0.55 * (knee - hip)
        _capsule(canvas, hip, end, r_hip * 1.05, r_hip * 0.95, _M_BOTTOM)


def _shoe(canvas: np.ndarray, f: _Frame, ankle: np.ndarray, facing: int) -> None:
    if facing == 0:
        _ellipse(canvas, (ankle[0], ankle[1] + f.u(0.03)), (f.u(0.034), f.u(0.025)), _M_SHOES)
    else:
        _ellipse(canvas, (ankle[0] + facing * f.u(0.024), ankle[1] + f.u(0.03)),
                 (f.u(0.056), f.u(0.024)), _M_SHOES)


def _arm(canvas: np.ndarray, f: _Frame, shoulder: np.ndarray, elbow: np.ndarray, wrist: np.ndarray,
         attrs: PersonAttributes) -> None:
    r_up, r_el, r_wr = f.u(0.031) * math.sqrt(f.wf), f.u(0.025), f.u(0.02)
    if attrs.sleeves == "long":
        _capsule(canvas, shoulder, elbow, r_up, r_el, _M_TOP)
        _capsule(canvas, elbow, wrist, r_el, r_wr, _M_TOP)
    else:
        _capsule(canvas, shoulder, elbow, r_up * 0.9, r_el * 0.9, _M_SKIN_ARM)
        _capsule(canvas, elbow, wrist, r_el * 0.9, r_wr * 0.9, _M_SKIN_ARM)
        _capsule(canvas, shoulder, shoulder + 0.6 * (elbow - shoulder), r_up * 1.1, r_up, _M_TOP)
    hand = wrist + (wrist - elbow) * 0.25
    _disc(canvas, hand, f.u(0.024), _M_SKIN_ARM)


def _pelvis_and_skirt(canvas: np.ndarray, f: _Frame, half_waist: float, half_hip: float,
                      x_shift: float, attrs: PersonAttributes) -> None:
    cx = f.cx + x_shift
    if attrs.bottom_type == "skirt":
        flare = half_hip * 1.45
        _poly(canvas, [(cx - half_waist, f.y(0.455)), (cx + half_waist, f.y(0.455)),
                       (cx + flare, f.y(0.705)), (cx - flare, f.y(0.705))], _M_BOTTOM)
    else:
        _poly(canvas, [(cx - half_waist, f.y(0.455)), (cx + half_waist, f.y(0.455)),
                       (cx + half_hip, f.y(0.53)), (cx + half_hip * 0.8, f.y(0.575)),
                       (cx - half_hip * 0.8, f.y(0.575)), (cx - half_hip, f.y(0.53))], _M_BOTTOM)


def _head(canvas: np.ndarray, f: _Frame, attrs: PersonAttributes, viewpoint: str, hx: float) -> None:
    hy = f.y(0.072)
    rx, ry = f.u(0.05), f.u(0.064)
    sh = f.y(0.19)
    _poly(canvas, [(hx - f.u(0.021), hy), (hx + f.u(0.021), hy), (hx + f.u(0.024), sh),
                   (hx - f.u(0.024), sh)], _M_SKIN_HEAD)
    style = attrs.hair_style
    if viewpoint in ("front", "back"):
        if style == "medium":
            _poly(canvas, [(hx - rx * 1.12, hy), (hx + rx * 1.12, hy), (hx + rx * 1.12, hy + ry * 1.15),
                           (hx - rx * 1.12, hy + ry * 1.15)], _M_HAIR)
        if style == "long" and viewpoint == "back":
            _poly(canvas, [(hx - rx * 1.15, hy), (hx + rx * 1.15, hy), (hx + rx * 1.05, sh + f.u(0.13)),
                           (hx - rx * 1.05, sh + f.u(0.13))], _M_HAIR)
        if style == "long" and viewpoint == "front":
            for s in (-1, 1):
                _poly(canvas, [(hx + s * rx * 0.55, hy), (hx + s * rx * 1.15, hy),
                               (hx + s * rx * 1.2, sh + f.u(0.08)), (hx + s * rx * 0.6, sh + f.u(0.08))],
                      _M_HAIR)
        if viewpoint == "back":
            _ellipse(canvas, (hx, hy), (rx * 1.04, ry * 1.0), _M_HAIR)
            if style == "ponytail":
                _capsule(canvas, (hx, hy + ry * 0.3), (hx, sh + f.u(0.07)), f.u(0.02), f.u(0.012), _M_HAIR)
        else:
            _ellipse(canvas, (hx, hy - f.u(0.01)), (rx * 1.06, ry * 0.96), _M_HAIR)
            _ellipse(canvas, (hx, hy + f.u(0.014)), (rx * 0.84, ry * 0.8), _M_SKIN_HEAD)
        return
    facing = -1 if viewpoint == "left" else 1
    back = -facing
    if style == "medium":
        _poly(canvas, [(hx, hy), (hx + back * rx * 1.05, hy), (hx + back * rx * 1.0, hy + ry * 1.1),
                       (hx, hy + ry * 1.1)], _M_HAIR)
    if style == "long":
        _poly(canvas, [(hx, hy), (hx + back * rx * 1.08, hy), (hx + back * rx * 1.0, sh + f.u(0.12)),
                       (hx + back * rx * 0.2, sh + f.u(0.12))], _M_HAIR)
    if style == "ponytail":
        _capsule(canvas, (hx + back * rx * 0.9, hy), (hx + back * rx * 1.35, hy + f.u(0.1)),
                 f.u(0.02), f.u(0.012), _M_HAIR)
    _ellipse(canvas, (hx, hy), (rx * 0.98, ry), _M_SKIN_HEAD)
    _ellipse(canvas, (hx + back * f.u(0.012), hy - f.u(0.012)), (rx * 0.92, ry * 0.9), _M_HAIR)
    _ellipse(canvas, (hx + facing * f.u(0.02), hy + f.u(0.014)), (rx * 0.7, ry * 0.72), _M_SKIN_HEAD)


def _draw_frontal(canvas: np.ndarray, f: _Frame, attrs: PersonAttributes, view: ViewParams) -> None:
    front = view.viewpoint == "front"
    cx, u = f.cx, f.u
    sw, ww, hw = u(0.118) * f.wf, u(0.088) * f.wf, u(0.092) * f.wf
    y_sh = f.y(0.19)
    # legs: walking towards/away from the camera shows as a lifted, bent leg
    ankles = []
    for i, s in enumerate((-1, 1)):
        ph_i = view.phase + math.pi * i
        lift = max(0.0, math.sin(ph_i)) * view.stride * u(0.05)
        hip = np.array([cx + s * hw * 0.5, f.y(0.53)])
        ankle = np.array([cx + s * (hw * 0.55 + u(0.012) * math.cos(ph_i) * view.stride),
                          f.y(0.945) - lift])
        knee = np.array([(hip[0] + ankle[0]) / 2 + s * lift * 0.3, f.y(0.74) - lift * 0.6])
        _leg(canvas, f, hip, knee, ankle, attrs)
        ankles.append(ankle)
    _pelvis_and_skirt(canvas, f, ww, hw, 0.0, attrs)
    for ankle in ankles:
        _shoe(canvas, f, ankle, 0)
    # torso
    _poly(canvas, [(cx - sw, y_sh + u(0.025)), (cx - u(0.045), f.y(0.165)), (cx + u(0.045), f.y(0.165)),
                   (cx + sw, y_sh + u(0.025)), (cx + ww * 1.02, f.y(0.42)), (cx + hw, f.y(0.525)),
                   (cx - hw, f.y(0.525)), (cx - ww * 1.02, f.y(0.42))], _M_TOP)
    for s in (-1, 1):
        _disc(canvas, (cx + s * (sw - u(0.03)), y_sh + u(0.035)), u(0.036), _M_TOP)
    if attrs.top_pattern == "logo" and front:
        _disc(canvas, (cx, f.y(0.29)), u(0.045) * math.sqrt(f.wf), _M_LOGO)
    # bags worn on the body
    side = _image_side(attrs.bag_side, view.viewpoint)
    if attrs.bag_type == "backpack":
        if front:
            for s in (-1, 1):
                _capsule(canvas, (cx + s * sw * 0.55, y_sh + u(0.005)), (cx + s * sw * 0.62, f.y(0.37)),
                         u(0.013), u(0.011), _M_BAG_DARK)
        else:
            top, bottom = y_sh + u(0.02), f.y(0.44)
            _poly(canvas, [(cx - sw * 0.8, top + u(0.02)), (cx - sw * 0.7, top), (cx + sw * 0.7, top),
                           (cx + sw * 0.8, top + u(0.02)), (cx + sw * 0.82, bottom),
                           (cx - sw * 0.82, bottom)], _M_BAG)
            _poly(canvas, [(cx - sw * 0.55, f.y(0.35)), (cx + sw * 0.55, f.y(0.35)),
                           (cx + sw * 0.55, bottom - u(0.012)), (cx - sw * 0.55, bottom - u(0.012))],
                  _M_BAG_DARK)
    elif attrs.bag_type == "shoulder_bag":
        bag_c = np.array([cx + side * (hw + u(0.05)), f.y(0.52)])
        _capsule(canvas, (cx - side * sw * 0.62, y_sh + u(0.005)), bag_c + (0, -u(0.04)),
                 u(0.011), u(0.011), _M_BAG_DARK)
        _poly(canvas, [bag_c + (-u(0.055), -u(0.045)), bag_c + (u(0.055), -u(0.045)),
                       bag_c + (u(0.055), u(0.045)), bag_c + (-u(0.055), u(0.045))], _M_BAG)
    # arms
    wrists = {}
    for i, s in enumerate((-1, 1)):
        swing = math.sin(view.phase + math.pi * (1 - i)) * view.arm_swing
        shoulder = np.array([cx + s * (sw - u(0.025)), y_sh + u(0.03)])
        elbow = np.array([cx + s * (sw + u(0.012)), f.y(0.34) - u(0.012) * swing])
        wrist = np.array([cx + s * (hw + u(0.045)), f.y(0.475) - u(0.035) * max(0.0, swing)])
        _arm(canvas, f, shoulder, elbow, wrist, attrs)
        wrists[s] = wrist
    if attrs.bag_type == "handbag":
        w = wrists[side] + (0, u(0.03))
        _capsule(canvas, wrists[side], w, u(0.008), u(0.008), _M_BAG_DARK)
        _poly(canvas, [w + (-u(0.04), 0), w + (u(0.04), 0), w + (u(0.052), u(0.085)),
                       w + (-u(0.052), u(0.085))], _M_BAG)
    _head(canvas, f, attrs, view.viewpoint, cx)


def _draw_side(canvas: np.ndarray, f: _Frame, attrs: PersonAttributes, view: ViewParams) -> None:
    facing = -1 if view.viewpoint == "left" else 1
    back = -facing
    u = f.u
    near_bag = attrs.bag_type in ("handbag", "shoulder_bag") and attrs.bag_side == view.viewpoint
    # legs: angle from the vertical, positive towards the facing direction
    thigh, shin = u(0.215), u(0.21)
    hip = np.array([f.cx, f.y(0.53)])
    legs = []
    for i in range(2):  # 0 near, 1 far
        ph_i = view.phase + math.pi * i
        theta = 0.42 * view.stride * math.sin(ph_i)
        bend = 0.55 * view.stride * max(0.0, -math.cos(ph_i))
        knee = hip + thigh * np.array([facing * math.sin(theta), math.cos(theta)])
        ankle = knee + shin * np.array([facing * math.sin(theta - bend), math.cos(theta - bend)])
        legs.append((knee, ankle))
    drop = f.y(0.945) - max(a[1] for _, a in legs)  # keep the lower foot on the ground
    legs = [(k + (0, drop), a + (0, drop)) for k, a in legs]
    hip = hip + (0, drop)
    # arms swing opposite to the legs on the same side
    shoulder = np.array([f.cx, f.y(0.22)])
    arms = []
    for i in range(2):
        alpha = -0.5 * view.arm_swing * math.sin(view.phase + math.pi * i)
        elbow = shoulder + u(0.15) * np.array([facing * math.sin(alpha), math.cos(alpha)])
        fore = alpha + 0.25 + 0.3 * view.arm_swing * max(0.0, math.sin(alpha))
        wrist = elbow + u(0.14) * np.array([facing * math.sin(fore), math.cos(fore)])
        arms.append((elbow, wrist))
    chest, spine = u(0.072) * f.wf, u(0.062) * f.wf
    if attrs.bag_type == "backpack":
        x0 = f.cx + back * spine * 0.7
        x1 = f.cx + back * (spine + u(0.075))
        _poly(canvas, [(x0, f.y(0.21)), (x1, f.y(0.225)), (x1, f.y(0.43)), (x0, f.y(0.445))], _M_BAG)
    _arm(canvas, f, shoulder, arms[1][0], arms[1][1], attrs)
    for idx in (1, 0):
        knee, ankle = legs[idx]
        _leg(canvas, f, hip, knee, ankle, attrs)
        _shoe(canvas, f, ankle, facing)
    _pelvis_and_skirt(canvas, f, u(0.066) * f.wf, u(0.07) * f.wf, facing * u(0.004), attrs)
    cx = f.cx
    _poly(canvas, [(cx + back * spine, f.y(0.2)), (cx + back * u(0.01), f.y(0.165)),
                   (cx + facing * u(0.03), f.y(0.17)), (cx + facing * chest, f.y(0.25)),
                   (cx + facing * chest * 0.92, f.y(0.42)), (cx + facing * u(0.068) * f.wf, f.y(0.525)),
                   (cx + back * u(0.068) * f.wf, f.y(0.525)), (cx + back * spine * 0.95, f.y(0.42))],
          _M_TOP)
    if attrs.bag_type == "backpack":
        _capsule(canvas, (cx + back * u(0.02), f.y(0.2)), (cx + facing * u(0.045), f.y(0.33)),
                 u(0.012), u(0.011), _M_BAG_DARK)
    if near_bag and attrs.bag_type == "shoulder_bag":
        bag_c = np.array([cx + facing * u(0.015), f.y(0.53)])
        _capsule(canvas, (cx, f.y(0.2)), bag_c + (0, -u(0.04)), u(0.011), u(0.011), _M_BAG_DARK)
        _poly(canvas, [bag_c + (-u(0.06), -u(0.045)), bag_c + (u(0.06), -u(0.045)),
                       bag_c + (u(0.06), u(0.045)), bag_c + (-u(0.06), u(0.045))], _M_BAG)
    _arm(canvas, f, shoulder, arms[0][0], arms[0][1], attrs)
    if near_bag and attrs.bag_type == "handbag":
        w = arms[0][1] + (0, u(0.03))
        _capsule(canvas, arms[0][1], w, u(0.008), u(0.008), _M_BAG_DARK)
        _poly(canvas, [w + (-u(0.045), 0), w + (u(0.045), 0), w + (u(0.055), u(0.085)),
                       w + (-u(0.055), u(0.085))], _M_BAG)
    _head(canvas, f, attrs, view.viewpoint, cx + facing * u(0.012))


def draw_materials(attrs: PersonAttributes, view: ViewParams, height: int, width: int,
                   x_offset: float = 0.0) -> tuple[np.ndarray, _Frame]:
    """Draws the figure as a material map (internal ids, 0 = empty) of shape ``(height, width)``."""
    canvas = np.zeros((height, width), dtype=np.uint8)
    f = _frame(attrs, view, height, width, x_offset)
    if view.viewpoint in ("front", "back"):
        _draw_frontal(canvas, f, attrs, view)
    else:
        _draw_side(canvas, f, attrs, view)
    return canvas, f


# --------------------------------------------------------------------------------------------
# colouring, background, camera


def _pattern_colour(top: tuple[int, int, int]) -> np.ndarray:
    rgb = np.asarray(top, dtype=np.float32)
    if rgb.mean() > 120:
        return rgb * 0.3
    return rgb * 0.35 + 0.65 * np.array([235.0, 232.0, 225.0], dtype=np.float32)


def _material_colours(attrs: PersonAttributes, jitter: np.ndarray) -> np.ndarray:
    """Returns ``(NUM_MATERIALS, 3)`` float RGB with the per-image log jitter ``(NUM_MATERIALS, 3)``."""
    skin = COLOURS[attrs.skin_tone]
    bag = np.asarray(COLOURS[attrs.bag_colour], dtype=np.float32)
    table = np.zeros((_NUM_MATERIALS, 3), dtype=np.float32)
    table[_M_SKIN_HEAD] = skin
    table[_M_HAIR] = COLOURS[attrs.hair_colour]
    table[_M_SKIN_ARM] = skin
    table[_M_TOP] = COLOURS[attrs.top_colour]
    table[_M_LOGO] = _pattern_colour(COLOURS[attrs.top_colour])
    table[_M_BOTTOM] = COLOURS[attrs.bottom_colour]
    table[_M_SKIN_LEG] = skin
    table[_M_SHOES] = COLOURS[attrs.shoes_colour]
    table[_M_BAG] = bag
    table[_M_BAG_DARK] = bag * 0.6 + 10.0
    # skin shares one jitter so that face, arms and legs stay alike
    jitter = jitter.copy()
    jitter[[_M_SKIN_ARM, _M_SKIN_LEG]] = jitter[_M_SKIN_HEAD]
    return table * np.exp(jitter).astype(np.float32)


def _apply_top_pattern(rgb: np.ndarray, materials: np.ndarray, attrs: PersonAttributes, f: _Frame,
                       colour: np.ndarray) -> None:
    """Paints stripes or checks on the top's pixels of ``rgb`` ``(H, W, 3)`` in place."""
    if attrs.top_pattern not in ("stripes", "checks"):
        return
    ys, xs = np.nonzero(materials == _M_TOP)
    if ys.size == 0:
        return
    period = f.u(0.055)
    band_y = np.floor((ys - f.y(0.19)) / period).astype(np.int64)
    if attrs.top_pattern == "stripes":
        on = band_y % 2 == 1
    else:
        cell = f.u(0.07)
        on = (np.floor((ys - f.y(0.19)) / cell).astype(np.int64)
              + np.floor((xs - f.cx) / cell).astype(np.int64)) % 2 == 1
    rgb[ys[on], xs[on]] = colour


def _camera_texture(camera: CameraStyle, height: int, width: int) -> np.ndarray:
    """Returns the camera's background texture ``(2H, 2W, 3)`` float32 RGB (deterministic)."""
    rng = np.random.default_rng(camera.texture_seed)
    h, w = 2 * height, 2 * width
    pal = np.asarray(camera.palette, dtype=np.float32)
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    tex = np.broadcast_to(pal[0] * (1 - t) + pal[1] * t, (h, w, 3)).copy()
    kind = camera.background
    if kind == "floor":
        horizon = int(h * rng.uniform(0.35, 0.6))
        tex[horizon:] = pal[2] * 0.9
        vx = w * rng.uniform(0.2, 0.8)
        line = tuple(float(c) for c in pal[2] * 0.6)
        for k in range(-12, 13):
            cv2.line(tex, (int(vx), horizon), (int(vx + k * w * 0.25), h), line, 1)
        y = float(horizon)
        step = 3.0
        while y < h:
            cv2.line(tex, (0, int(y)), (w, int(y)), line, 1)
            step *= 1.35
            y += step
        for x in rng.uniform(0, w, size=3):
            cv2.rectangle(tex, (int(x), int(horizon * 0.2)), (int(x + w * 0.12), horizon - 2),
                          tuple(float(c) for c in pal[0] * 0.7), -1)
    elif kind == "bricks":
        bh = int(rng.integers(6, 11))
        bw = bh * 2 + int(rng.integers(0, 6))
        for row, y in enumerate(range(0, h, bh)):
            off = (row % 2) * bw // 2
            for x in range(-bw, w, bw):
                shade = pal[0] * rng.uniform(0.8, 1.15)
                cv2.rectangle(tex, (x + off, y), (x + off + bw - 2, y + bh - 2),
                              tuple(float(c) for c in shade), -1)
        tex[np.arange(h) % bh == bh - 1] = pal[2] * 0.8
    elif kind == "noise":
        small = rng.random((h // 12 + 2, w // 12 + 2, 1)).astype(np.float32)
        blend = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]
        tex = pal[0] * (1 - blend) + pal[2] * blend
    elif kind == "clutter":
        for _ in range(int(rng.integers(25, 45))):
            colour = COLOURS[list(COLOURS)[int(rng.integers(14))]] if rng.random() < 0.5 else pal[
                int(rng.integers(3))] * rng.uniform(0.6, 1.3)
            x, y = int(rng.integers(-10, w)), int(rng.integers(-10, h))
            cw, ch = int(rng.integers(6, 30)), int(rng.integers(6, 40))
            if rng.random() < 0.7:
                cv2.rectangle(tex, (x, y), (x + cw, y + ch), tuple(float(c) for c in colour), -1)
            else:
                cv2.circle(tex, (x, y), cw // 2 + 2, tuple(float(c) for c in colour), -1)
    elif kind == "gradient":
        gx = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
        tex = tex * (1 - gx * 0.6) + pal[2] * gx * 0.6
        for y in rng.uniform(0, h, size=4):
            tex[int(y):int(y) + int(rng.integers(2, 6))] *= 0.75
    elif kind == "fence":
        step = int(rng.integers(7, 14))
        bar = tuple(float(c) for c in pal[2])
        for x in range(0, w, step):
            cv2.rectangle(tex, (x, 0), (x + max(2, step // 3), h), bar, -1)
        y0 = int(h * rng.uniform(0.3, 0.5))
        cv2.rectangle(tex, (0, y0), (w, y0 + 4), bar, -1)
    grain = rng.normal(0.0, 6.0, size=(h, w, 1)).astype(np.float32)
    return np.clip(tex + grain, 0, 255).astype(np.float32)


def _background(texture: np.ndarray, height: int, width: int, view: ViewParams,
                rng: np.random.Generator) -> np.ndarray:
    """Crops and decorates the per-image background ``(H, W, 3)`` float32."""
    oy = int(rng.integers(0, texture.shape[0] - height + 1))
    ox = int(rng.integers(0, texture.shape[1] - width + 1))
    flip = rng.random() < 0.5
    bg = texture[oy:oy + height, ox:ox + width].copy()
    if flip:
        bg = bg[:, ::-1].copy()
    items = rng.random((3, 7))
    if view.clutter:
        names = list(COLOURS)
        for row in items[: 1 + int(items[0, 6] * 3) % 3]:
            colour = tuple(float(c) for c in COLOURS[names[int(row[0] * 14)]])
            x, y = int(row[1] * width), int(row[2] * height)
            cw, ch = int(4 + row[3] * width * 0.3), int(4 + row[4] * height * 0.3)
            cv2.rectangle(bg, (x, y), (x + cw, y + ch), colour, -1)
    return bg


def _occlude(image: np.ndarray, labels: np.ndarray, view: ViewParams, height: int, width: int,
             supersample: int) -> None:
    """Draws the view's occluder over ``image`` ``(H, W, 3)`` and clears ``labels`` below it."""
    if view.occluder == "none":
        return
    rng = np.random.default_rng(view.occluder_seed)
    cover = np.zeros((height, width), dtype=np.uint8)
    colour = rng.uniform(40, 200, size=3)
    if view.occluder == "person":
        other = sample_attributes(rng)
        side = -1 if rng.random() < 0.5 else 1
        other_view = ViewParams(
            viewpoint=VIEWPOINTS[int(rng.integers(4))], phase=float(rng.uniform(0, 2 * math.pi)),
            stride=float(rng.uniform(0.2, 1.0)), arm_swing=float(rng.uniform(0.2, 1.0)),
            scale=float(view.scale * rng.uniform(0.95, 1.12)),
            dx=float(view.dx + side * rng.uniform(0.22, 0.45)), dy=float(rng.uniform(0.0, 0.03)),
        )
        hs, ws = height * supersample, width * supersample
        mats, f = draw_materials(other, other_view, hs, ws)
        table = _material_colours(other, rng.normal(0.0, 0.05, size=(_NUM_MATERIALS, 3)))
        rgb = table[mats]
        _apply_top_pattern(rgb, mats, other, f, table[_M_LOGO])
        small = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
        alpha = cv2.resize((mats > 0).astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
        image[:] = image * (1 - alpha[..., None]) + small * alpha[..., None]
        labels[alpha > 0.5] = 0
        return
    ys, xs = np.nonzero(labels)
    if xs.size == 0:
        return
    x0, x1, y0, y1 = float(xs.min()), float(xs.max() + 1), float(ys.min()), float(ys.max() + 1)
    pw_, ph_ = x1 - x0, y1 - y0
    if view.occluder == "pole":
        half = pw_ * rng.uniform(0.06, 0.12)
        x = x0 + pw_ * rng.uniform(0.25, 0.75)
        cv2.rectangle(cover, (int(round(x - half)), 0), (int(round(x + half)), height), 1, -1)
    elif view.occluder == "box":
        top = int(round(y0 + ph_ * rng.uniform(0.6, 0.82)))
        a = x0 - pw_ * rng.uniform(0.0, 0.6)
        b = a + pw_ * rng.uniform(0.8, 2.0)
        cv2.rectangle(cover, (int(round(a)), top), (int(round(b)), height), 1, -1)
    else:  # side: a wall or vehicle edge from one image side into the person
        depth = pw_ * rng.uniform(0.2, 0.45)
        if rng.random() < 0.5:
            cv2.rectangle(cover, (0, 0), (int(round(x0 + depth)), height), 1, -1)
        else:
            cv2.rectangle(cover, (int(round(x1 - depth)), 0), (width, height), 1, -1)
    on = cover.astype(bool)
    shade = np.linspace(0.8, 1.15, width, dtype=np.float32)[None, :, None]
    painted = np.broadcast_to(colour.astype(np.float32) * shade, image.shape)
    image[on] = painted[on]
    labels[on] = 0


def _shading(f: _Frame, width: int, light_side: float) -> np.ndarray:
    """Per-column brightness ``(W,)`` of a cylinder lit from ``light_side``."""
    x = (np.arange(width, dtype=np.float32) - f.cx) / max(1.0, f.u(0.16))
    return np.clip(1.0 - 0.18 * x * x + 0.12 * light_side * x, 0.65, 1.15).astype(np.float32)


def _default_camera() -> CameraStyle:
    return CameraStyle(index=0, background="gradient", palette=((170, 170, 165), (120, 118, 112),
                       (90, 92, 96)), gain=1.0, cast=(1.0, 1.0, 1.0), saturation=1.0, blur=0.0,
                       scale=0.86, view_probs=(0.25, 0.25, 0.25, 0.25), light_side=0.0,
                       jpeg_quality=95, texture_seed=0)


class PersonRenderer:
    """Renders people at a fixed output size, caching each camera's background texture.

    Args:
        height: output image height in pixels.
        width: output image width in pixels.
        supersample: the figure is drawn at this factor and area-downsampled (anti-aliasing).
    """

    def __init__(self, height: int = 128, width: int = 64, supersample: int = 2) -> None:
        if height < 16 or width < 8:
            raise ValueError(f"image size {height}x{width} is too small (at least 16x8)")
        if supersample < 1:
            raise ValueError("supersample must be >= 1")
        self.height = height
        self.width = width
        self.supersample = supersample
        self._textures: dict[CameraStyle, np.ndarray] = {}

    def texture(self, camera: CameraStyle) -> np.ndarray:
        """Returns the cached background texture ``(2H, 2W, 3)`` of ``camera``."""
        if camera not in self._textures:
            self._textures[camera] = _camera_texture(camera, self.height, self.width)
        return self._textures[camera]

    def render(self, attributes: PersonAttributes, view: ViewParams,
               camera: CameraStyle | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Renders one image; see :func:`render_person`."""
        image, mask, _ = self.render_with_unoccluded(attributes, view, camera)
        return image, mask

    def render_with_unoccluded(self, attributes: PersonAttributes, view: ViewParams,
                               camera: CameraStyle | None = None
                               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like :meth:`render`, plus the ``(H, W)`` mask before the occluder was drawn."""
        camera = camera or _default_camera()
        h, w, s = self.height, self.width, self.supersample
        rng = np.random.default_rng(view.noise_seed)
        # fixed order and number of draws, independent of the attributes
        jitter = rng.normal(0.0, 1.0, size=(_NUM_MATERIALS, 3)).astype(np.float32) * view.colour_noise
        pixel_noise = rng.normal(0.0, 1.0, size=(h, w, 3)).astype(np.float32) * view.pixel_noise
        background = _background(self.texture(camera), h, w, view, rng)

        materials, f = draw_materials(attributes, view, h * s, w * s)
        table = _material_colours(attributes, jitter)
        rgb = table[materials]
        _apply_top_pattern(rgb, materials, attributes, f, table[_M_LOGO])
        rgb *= _shading(f, w * s, camera.light_side)[None, :, None]
        person = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        alpha = cv2.resize((materials > 0).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
        labels = cv2.resize(_MATERIAL_PART[materials], (w, h), interpolation=cv2.INTER_NEAREST)
        image = background * (1.0 - alpha[..., None]) + person * alpha[..., None]

        unoccluded = labels.copy()
        _occlude(image, labels, view, h, w, s)

        image *= np.asarray(camera.cast, dtype=np.float32) * (camera.gain * view.gain)
        grey = image.mean(axis=2, keepdims=True)
        image = grey + camera.saturation * (image - grey)
        if view.blur > 0.05:
            image = cv2.GaussianBlur(image, (0, 0), view.blur)
        image += pixel_noise
        return np.clip(image + 0.5, 0, 255).astype(np.uint8), labels, unoccluded


def render_person(attributes: PersonAttributes, view: ViewParams, camera: CameraStyle | None = None,
                  height: int = 128, width: int = 64, supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Renders one image of a person and its part mask.

    The result depends only on the arguments: to change one attribute and keep everything else,
    call again with ``attributes.with_attribute(name, value)`` and the same ``view`` and camera.
    For many images prefer a :class:`PersonRenderer` (it caches background textures).

    Args:
        attributes: the identity's appearance.
        view: per-image parameters (viewpoint, pose, placement, occluder, noise seed); see
            :func:`sample_view`.
        camera: camera style (:func:`make_cameras`); a plain grey gradient camera if ``None``.
        height: output height.
        width: output width.
        supersample: drawing resolution factor.

    Returns:
        ``(image, mask)``: ``(H, W, 3)`` uint8 RGB and ``(H, W)`` uint8 part labels
        (:data:`PART_LABELS`; occluded pixels are 0).
    """
    return PersonRenderer(height, width, supersample).render(attributes, view, camera)
