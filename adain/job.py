"""One stylization request and its one check (no torch, so the server checks requests before any model).

``Job`` is what a caller asks for; ``Job.check(limits)`` finds every problem that needs no decoding and
either raises one :class:`InvalidInputError` listing them all, or returns a :class:`CheckedJob` whose
values are resolved (weights normalised, colour mode named, sizes bounded). ``Stylizer.prepare`` takes
either; a CheckedJob is not checked again. Field names in errors are the Job's, which are the proto's
(``styles[1].weight``, ``styles[0].mask``, ``alpha``...) except the Python lists the proto keeps per style
(``weights``, ``masks``, ``label_values``, ``region_alphas``), named when their count is wrong.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypedDict, TypeGuard, cast

from adain.errors import InvalidInputError
from adain.image import ImageSource, KeyedImage
from adain.wire import (
    COLOR_MODES,
    DEFAULT_CONTENT_WEIGHT,
    DEFAULT_STYLE_WEIGHT,
    DEFAULT_TV_WEIGHT,
    MAX_LOSS_WEIGHT,
    OPTIMIZERS,
    REFINE_CONTENT_WEIGHT,
    REFINE_INITS,
    TEMPORAL_MODES,
    Limits,
    color_mode,
    label_value,
    plural,
    refuse_unknown,
)


class JobOptions(TypedDict, total=False):
    """A Job's options as a public call's ``**options`` (``Stylizer.stylize``'s), for type checkers: they were Any,
    and mypy took ``alhpa=0.5`` or ``alpha="high"`` without a word (the call refuses them when it runs). The same
    fields and types as :class:`Job`'s below (a test holds the two together)."""

    weights: Sequence[float] | None
    alpha: float
    preserve_color: str | bool | None
    mask: ImageSource | None
    masks: Sequence[ImageSource] | None
    labels: ImageSource | None
    label_values: Sequence[int | str] | None
    region_alphas: Sequence[float] | None
    content_size: int | None
    style_size: int | None
    refine_steps: int
    refine_init: str
    content_weight: float | None
    style_weight: float
    tv_weight: float | None
    refine_size: int | None
    optimizer: str


@dataclass
class Job:
    """One stylization request. Styles are images; ``weights`` (one per style) default to equal."""

    content: ImageSource | None  # None: a video's template (check(content=False)), its frames given later
    styles: Sequence[ImageSource]
    weights: Sequence[float] | None = None
    alpha: float = 1.0
    preserve_color: str | bool | None = None  # None, "coral" (True) or "luminance"
    mask: ImageSource | None = None  # white: styles[0], black: styles[1]; grey blends
    # Regions (adain.regions): one greyscale mask per style, or a label image and one label per style;
    # each region's strength (times alpha; 1 each by default). Uncovered pixels keep the content.
    masks: Sequence[ImageSource] | None = None
    labels: ImageSource | None = None
    label_values: Sequence[int | str] | None = None
    region_alphas: Sequence[float] | None = None
    content_size: int | None = None  # longest side of the content; None (or 0) keeps it (up to the limit)
    style_size: int | None = None  # longest side of the styles; None (or 0) = the limits' default (512)
    # The optimisation method (adain.optimize): iterations (0: off), from "adain" (the decoder's output)
    # or "content" (the classic method); the loss weights; the longest side it works at (None or 0: full).
    # Without refine_steps the others are not used (not refused: a form may always send them).
    refine_steps: int = 0
    refine_init: str = "adain"
    content_weight: float | None = None  # None: 5 for a refine, 1 for the classic method (adain.wire)
    style_weight: float = DEFAULT_STYLE_WEIGHT
    tv_weight: float | None = None  # None: 1e3 for a full-size refine, else 0 (adain.wire)
    refine_size: int | None = None
    optimizer: str = "lbfgs"

    @classmethod
    def of(
        cls, caller: str, content: ImageSource | None, styles: Sequence[ImageSource], options: Mapping[str, Any]
    ) -> Job:
        """The job a public call's ``**options`` ask for; an option no Job has is a TypeError naming ``caller``
        and the nearest field (it said "Job.__init__() got an unexpected keyword argument 'alhpa'")."""
        refuse_unknown(caller, options, JOB_OPTIONS)
        return cls(content, styles, **options)

    def problems(self, limits: Limits, *, content: bool = True) -> list[InvalidInputError]:
        """Every problem with the arguments that needs no decoding; empty when there is none.
        ``content=False`` checks a template whose contents come later (a video's frames)."""
        bad: list[InvalidInputError] = []
        empty = self.content is None or (isinstance(self.content, (bytes, bytearray, memoryview)) and not self.content)
        if content and empty:
            bad.append(InvalidInputError("content", "image data is empty (a content image is required)"))
        n = len(self.styles) if is_list(self.styles) else 0
        if not is_list(self.styles):
            bad.append(InvalidInputError("styles", f"must be a list of style images, got a {type(self.styles).__name__}"
                                                   " (one style: [style])"))
        elif n == 0:
            bad.append(InvalidInputError("styles", "at least 1 style is required"))
        elif n > limits.max_styles:
            bad.append(too_many_styles(n, limits))
        for name in ("weights", "masks", "label_values", "region_alphas"):
            value = getattr(self, name)
            if value is not None and not is_list(value):
                bad.append(InvalidInputError(name, f"must be a list, one per style; got a {type(value).__name__}"))
        weights = [1.0] * n if not is_list(self.weights) else list(self.weights)
        if len(weights) != n:
            bad.append(InvalidInputError("weights", f"{plural(len(weights), 'weight')} for {plural(n, 'style')}"))
        finite = True
        for i, w in enumerate(weights[: limits.max_styles]):  # beyond the limit only the count is reported
            if not is_number(w) or w < 0:
                bad.append(InvalidInputError(f"styles[{i}].weight", f"must be a finite number >= 0, got {w!r}"))
                finite = False
        if weights and finite and sum(weights) <= 0:
            bad.append(InvalidInputError("styles.weight", "all style weights are zero; at least one must be > 0"))
        if not is_number(self.alpha) or not 0 <= self.alpha <= 1:
            bad.append(InvalidInputError("alpha", f"must be a number in [0, 1], got {self.alpha!r}"))
        if color_mode(self.preserve_color) not in (None, *COLOR_MODES):
            modes = ", ".join(("none", *COLOR_MODES))
            bad.append(InvalidInputError("preserve_color", f"must be one of {modes}; got {self.preserve_color!r}"))
        for name in ("content_size", "style_size"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 0):  # 0: not given, as on the wire and the CLI
                bad.append(InvalidInputError(name, f"must be an integer >= 0 (0 or None is not given), got {value!r}"))
            elif value is not None and value > limits.max_content_side:
                bad.append(
                    InvalidInputError(name, f"{value} is over the limit of max_content_side={limits.max_content_side}")
                )
        bad += self._refine_problems(limits)
        bad += self._region_problems(n, limits.max_styles)
        return bad

    def _region_problems(self, n: int, most: int) -> list[InvalidInputError]:
        """Problems with the regions; beyond ``most`` styles only the count is reported."""
        bad = []
        forms = [name for name in ("mask", "masks", "labels") if getattr(self, name) is not None]
        if len(forms) > 1:
            bad.append(InvalidInputError(forms[1], f"give one form of regions, not {' and '.join(forms)}"))
        if self.mask is not None and n != 2:
            bad.append(InvalidInputError("mask", f"a mask needs exactly 2 styles (white, black), got {n}"))
        if self.masks is not None and is_list(self.masks):
            masks = list(self.masks)
            if len(masks) != n:
                bad.append(InvalidInputError("masks", f"{plural(len(masks), 'mask')}"
                                                      f" for {plural(n, 'style')} (one per style)"))
            bad += [
                InvalidInputError(f"styles[{i}].mask", "every style needs a mask when one has (its region)")
                for i, m in enumerate(masks[:most]) if m is None  # (the server's: a style whose mask was not sent)
            ]
        if self.labels is not None:
            values = list(self.label_values) if is_list(self.label_values) else []
            if len(values) != n:
                bad.append(InvalidInputError("label_values", f"{plural(len(values), 'label')}"
                                                             f" for {plural(n, 'style')} (one per style)"))
            for i, v in enumerate(values[:most]):
                if v is None:
                    bad.append(InvalidInputError(f"styles[{i}].label", "every style needs a label when labels is set"))
                elif label_value(v) is None:
                    why = f"must be a grey level 0-255, a colour 0xRRGGBB or '#rrggbb', got {v!r}"
                    bad.append(InvalidInputError(f"styles[{i}].label", why))
        elif self.label_values is not None:
            bad.append(InvalidInputError("labels", "label values need a labels image"))
        if self.region_alphas is not None and is_list(self.region_alphas):
            alphas = list(self.region_alphas)
            if not forms:
                bad.append(InvalidInputError("styles[0].alpha", "a per-style alpha needs regions (masks or labels)"))
            elif len(alphas) != n:
                bad.append(InvalidInputError("region_alphas", f"{plural(len(alphas), 'region alpha')}"
                                                              f" for {plural(n, 'style')}"))
            for i, a in enumerate(alphas[:most]):
                if not is_number(a) or not 0 <= a <= 1:
                    bad.append(InvalidInputError(f"styles[{i}].alpha", f"must be a number in [0, 1], got {a!r}"))
        return bad

    def _refine_problems(self, limits: Limits) -> list[InvalidInputError]:
        bad = []
        steps, top = self.refine_steps, limits.max_refine_steps
        if not _is_int(steps) or steps < 0:
            bad.append(InvalidInputError("refine_steps", f"must be an integer >= 0, got {steps!r}"))
        elif steps > top:
            bad.append(InvalidInputError("refine_steps", f"{steps} is over the limit of max_refine_steps={top}"))
        elif self.refine_init == "content" and steps == 0:
            bad.append(InvalidInputError("refine_steps", "the classic method (refine_init content) needs steps >= 1"))
        if self.refine_init not in REFINE_INITS:
            bad.append(
                InvalidInputError("refine_init", f"must be one of {', '.join(REFINE_INITS)}; got {self.refine_init!r}")
            )
        if self.optimizer not in OPTIMIZERS:
            bad.append(
                InvalidInputError("optimizer", f"must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
            )
        for name in ("content_weight", "style_weight", "tv_weight"):
            value = getattr(self, name)
            if name != "style_weight" and value is None:
                continue
            if not is_number(value) or not 0 <= value <= MAX_LOSS_WEIGHT:
                bad.append(InvalidInputError(name, f"must be a finite number in [0, {MAX_LOSS_WEIGHT:g}], "
                                                   f"got {value!r}"))
        if (
            is_number(self.content_weight)
            and is_number(self.style_weight)
            and self.content_weight == 0 == self.style_weight
        ):
            bad.append(InvalidInputError("style_weight", "content_weight and style_weight are both 0"))
        size = self.refine_size
        if size is not None and (not _is_int(size) or (size < 16 and size != 0)):  # 0: full size, as on the wire
            bad.append(InvalidInputError("refine_size", f"must be an integer >= 16 (or 0: full size), got {size!r}"))
        return bad

    def _content_weight(self) -> float:
        if self.content_weight is not None:
            return self.content_weight
        return DEFAULT_CONTENT_WEIGHT if self.refine_init == "content" else REFINE_CONTENT_WEIGHT

    def _tv_weight(self) -> float | None:
        if self.tv_weight is not None:
            return float(self.tv_weight)
        return DEFAULT_TV_WEIGHT if self.refine_init == "content" else None  # a refine's: by its working size

    def check(self, limits: Limits, *, content: bool = True) -> CheckedJob:
        """The job with its values resolved; raises InvalidInputError (all problems in ``.problems``)."""
        bad = self.problems(limits, content=content)
        if bad:
            raise InvalidInputError.of(bad)
        weights = [1.0] * len(self.styles) if self.weights is None else [float(w) for w in self.weights]
        if self.mask is not None:  # the two-style mask places its styles by the mask alone (no weights): here,
            weights = [1.0, 1.0]  # so that every step agrees (a refine took them: [1, 0] lost styles[1])
        top = max(weights)  # first to 1 at most: two weights of 1e308 summed to inf, and every style to 0
        weights = [w / top for w in weights]
        total = sum(weights)
        return CheckedJob(
            content=self.content,
            styles=tuple(self.styles),
            weights=tuple(w / total for w in weights),
            alpha=float(self.alpha),
            color=color_mode(self.preserve_color),
            mask=self.mask,
            masks=None if self.masks is None else tuple(self.masks),
            labels=self.labels,
            label_values=None if self.labels is None else _label_ints(self.label_values),
            region_alphas=None if self.region_alphas is None else tuple(float(a) for a in self.region_alphas),
            content_side=int(min(self.content_size or limits.max_content_side, limits.max_content_side)),
            style_size=int(self.style_size or limits.style_size),
            refine_steps=int(self.refine_steps),
            refine_init=self.refine_init,
            content_weight=float(self._content_weight()),
            style_weight=float(self.style_weight),
            tv_weight=self._tv_weight(),
            refine_size=int(self.refine_size) if self.refine_size else None,
            optimizer=self.optimizer,
        )


JOB_OPTIONS = tuple(f.name for f in fields(Job) if f.name not in ("content", "styles"))  # a call's **options


@dataclass(frozen=True)
class CheckedJob:
    """A job that passed its check: weights sum to 1, ``color`` is None or a mode name, sizes are bounded."""

    content: ImageSource | None  # None: a video's template, its frames given later
    styles: tuple[ImageSource, ...]
    weights: tuple[float, ...]
    alpha: float
    color: str | None
    mask: ImageSource | None
    content_side: int  # the content is downscaled (never up) to this longest side
    style_size: int  # the styles' longest side
    refine_steps: int = 0
    refine_init: str = "adain"
    content_weight: float = DEFAULT_CONTENT_WEIGHT
    style_weight: float = DEFAULT_STYLE_WEIGHT
    tv_weight: float | None = DEFAULT_TV_WEIGHT  # None: a refine's default, by its working size (adain.optimize)
    refine_size: int | None = None
    optimizer: str = "lbfgs"
    masks: tuple[ImageSource, ...] | None = None
    labels: ImageSource | None = None
    label_values: tuple[int, ...] | None = None
    region_alphas: tuple[float, ...] | None = None


def too_many_styles(n: int, limits: Limits) -> InvalidInputError:
    """The one problem reported for more than max_styles styles (none of each style's own)."""
    return InvalidInputError("styles", f"{n} styles, over the limit of max_styles={limits.max_styles}")


def is_number(value: object) -> bool:
    """A finite real number: a NumPy scalar too (np.float32(0.5) was refused as no number), never a bool; an int
    past a float's range is none (math.isfinite raised OverflowError for alpha=10**400)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _label_ints(values: Sequence[int | str] | None) -> tuple[int, ...]:
    """Checked label values as ints (``problems`` refused any that is none); a NumPy array too, whose truth
    ``values or ()`` asked (a ValueError for two or more)."""
    return tuple(cast(int, label_value(v)) for v in (() if values is None else values))


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_list(value: object) -> TypeGuard[Sequence[Any]]:
    """A list of per-style values (a str, bytes or one image would be taken apart character by character), or a
    NumPy array of one dimension (``weights=np.array([0.3, 0.7])``: a notebook's, refused as "got a ndarray")."""
    if isinstance(value, Sequence):
        return not isinstance(value, (str, bytes, bytearray, memoryview, KeyedImage))
    return type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 1


def style_list(styles: ImageSource | Sequence[ImageSource]) -> list[ImageSource]:
    """One style image or a list of them, as a list (a KeyedImage is one image, though a tuple)."""
    return list(styles) if is_list(styles) else [cast(ImageSource, styles)]


def temporal_problems(
    mode: str, strength: float | None, strength_field: str = "temporal_strength"
) -> list[InvalidInputError]:
    """Problems with a video's temporal mode (see ``adain.wire.TEMPORAL_MODES``) and strength (named as the
    caller's API names it: the wire's ``temporal_strength``, the library's ``strength``)."""
    bad = []
    if mode not in TEMPORAL_MODES:
        bad.append(InvalidInputError("temporal", f"must be one of {', '.join(TEMPORAL_MODES)}; got {mode!r}"))
    if strength is not None and (not is_number(strength) or not 0 <= strength < 1):
        bad.append(InvalidInputError(strength_field, f"must be a number in [0, 1), got {strength!r}"))
    return bad
