"""Regions (adain.regions): N styles placed by masks or labels, parts left as the photo, soft edges."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from adain import InvalidInputError, Stylizer
from adain.image import to_image, to_tensor
from adain.job import Job
from adain.ops import luminance, masked_adain, mean_std, weighted_mean_std
from adain.regions import maps_at
from adain.video import VideoStream
from adain.wire import Limits
from synth import SRGB_D50, band_mask, encoded, icc_rgb, synth_image

torch.set_num_threads(1)

# Styles the shipped decoder reproduces well and tells apart (relu4_1 statistics far from each other).
NOISE = synth_image(128, 128, seed=2, kind="noise")
MIX = synth_image(128, 128, seed=3, kind="mix")
WIDE = synth_image(480, 128, seed=1)  # three 160-px bands: NOISE | MIX | the photo
CONTENT = synth_image(96, 64, seed=1)
STYLE_A, STYLE_B = encoded(synth_image(64, 64, seed=2)), encoded(synth_image(80, 48, seed=3), "JPEG")


@pytest.fixture(scope="module")
def shipped() -> Stylizer:
    return Stylizer(None, device="cpu")


@pytest.fixture(scope="module")
def stylizer(decoder_path: Path) -> Stylizer:
    # float32 whatever the CPU: these tests compare with the eager float32 modules (auto is bf16 where
    # the CPU has bf16 units)
    return Stylizer(decoder_path, device="cpu", precision="fp32")


def _distance(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> float:
    return float(((a[0] - b[0]) ** 2).mean() + ((a[1] - b[1]) ** 2).mean())


def _levels(a: Image.Image, b: Image.Image) -> torch.Tensor:
    """|a - b| per pixel and channel, in 8-bit levels."""
    return (to_tensor(a) - to_tensor(b)).abs() * 255


def test_each_region_takes_its_own_style_and_the_rest_stays_the_photo(shipped: Stylizer) -> None:
    out = shipped.stylize(WIDE, [encoded(NOISE), encoded(MIX)], masks=[band_mask(480, 128, 0, 160),
                                                                      band_mask(480, 128, 160, 320)])
    with torch.no_grad():
        feat = shipped.encoder(to_tensor(out)).relu4_1
        noise, mix = (mean_std(shipped.encoder(to_tensor(s)).relu4_1) for s in (NOISE, MIX))
    # Interiors at relu4_1 (1/8 of the pixels), at least 32 px from a boundary.
    first, second = mean_std(feat[..., 0:16]), mean_std(feat[..., 24:36])
    assert _distance(first, noise) < 0.2 * _distance(first, mix)
    assert _distance(second, mix) < 0.5 * _distance(second, noise)
    # The uncovered band is the decoder's reconstruction (alpha 0) beyond 32 px from the styled ones.
    photo = shipped.stylize(WIDE, [encoded(NOISE)], alpha=0)
    d = _levels(out, photo)[..., 352:]
    assert d.mean() < 0.05 and d.max() <= 1, (float(d.mean()), float(d.max()))
    assert _levels(out, photo)[..., :128].mean() > 20  # and the styled bands are not


def test_soft_boundary_shows_no_step(shipped: Stylizer) -> None:
    """A ramp from styled to photo: the column profile (rows averaged, so texture cancels and a seam or
    halo stays) changes no faster across the ramp than inside the styled region."""
    ramp = np.zeros((128, 384), np.float32)
    ramp[:, :160] = 1
    ramp[:, 160:224] = np.linspace(1, 0, 64)[None]
    mask = Image.fromarray((ramp * 255).round().astype(np.uint8), "L")
    out = to_tensor(shipped.stylize(synth_image(384, 128, seed=1), [encoded(NOISE)], masks=[mask]))
    profile = out.mean(dim=(0, 1, 2)) * 255
    step = (profile[1:] - profile[:-1]).abs()
    styled, across = step[16:144].max(), step[150:234].max()
    assert across <= 1.25 * styled, (float(across), float(styled))
    # and pixel by pixel, the horizontal gradient across the ramp is no larger than inside the style
    grad = (out[..., 1:] - out[..., :-1]).abs().mean(dim=(0, 1, 2)) * 255
    assert grad[150:234].max() <= 1.5 * grad[16:144].max()


def test_two_style_mask_gives_the_image_it_always_did(stylizer: Stylizer) -> None:
    """The original form: white -> styles[0], black -> styles[1], weights ignored, computed as before."""
    mask = Image.fromarray(np.tile(np.linspace(0, 255, 96, dtype=np.uint8), (64, 1)), "L")  # soft everywhere
    new = stylizer.stylize(CONTENT, [STYLE_A, STYLE_B], weights=[0.9, 0.1], mask=mask, alpha=0.8)
    # The former Stylizer.target, step by step with the Stylizer's own parts.
    prepared = stylizer.prepare(Job(CONTENT, [STYLE_A, STYLE_B], mask=mask, alpha=0.8))
    # held in a byte a pixel a region (at print size with 8 regions, float maps were 2 GB), read as [0, 1]
    assert prepared.regions is not None and prepared.regions.dtype == torch.uint8
    maps = maps_at(prepared.regions, prepared.regions.shape[2:])
    assert torch.equal(maps[:, :1], to_tensor(mask)) and torch.allclose(maps[:, 1:], 1 - to_tensor(mask))
    with torch.inference_mode():
        feat = stylizer.encoder.encode([prepared.content])[0]
        m = F.interpolate(to_tensor(mask).to(feat.device), size=feat.shape[2:], mode="bilinear", align_corners=False)
        t = 0
        for w, (mean, std, _) in zip((m, 1 - m), prepared.targets):
            t = t + w * masked_adain(feat, w, mean, std, weighted_mean_std(feat, w))
        t = 0.8 * t + 0.2 * feat.float()
        old = to_image(stylizer.decoder(t.to(memory_format=torch.channels_last), 0.8).float().clamp(0, 1))
    d = _levels(new, old)
    assert d.max() <= 1 and d.mean() < 0.01, (float(d.max()), float(d.mean()))


def test_a_jpeg_label_image_keeps_its_regions(stylizer: Stylizer) -> None:
    """A JPEG has no pixel of its label colours as painted (#ff0000 comes back #fe0101 and the like), so its job
    was refused: a pixel near a requested colour now takes its label. A grey segmentation's neighbouring labels
    (1, 2) stay exact, as no pixel can be told apart from the next label by distance."""
    colour = np.zeros((64, 96, 3), np.uint8)  # black: label 0, named by no style, so the photo
    colour[:, :40], colour[16:48, 48:80] = (255, 0, 0), (0, 0, 255)
    regions = {fmt: stylizer.prepare(Job(CONTENT, [STYLE_A, STYLE_B], labels=encoded(Image.fromarray(colour), fmt),
                                         label_values=["#ff0000", "#0000ff"])).regions for fmt in ("PNG", "JPEG")}
    differ = (regions["PNG"].int() - regions["JPEG"].int()).abs() > 127
    assert 0 < differ.float().mean() < 0.05, float(differ.float().mean())  # a pixel or two at the edges
    inner = differ[..., 4:-4, 4:36].any() or differ[..., 20:44, 52:76].any()
    assert not inner  # the regions' insides, whole
    grey = np.full((64, 96), 2, np.uint8)
    grey[:, :48] = 1
    jpeg = encoded(Image.fromarray(grey, "L"), "JPEG")
    ours = stylizer.prepare(Job(CONTENT, [STYLE_A, STYLE_B], labels=jpeg, label_values=[1, 2])).regions
    assert ours[0, 0, :, :40].min() == 255 and ours[0, 1, :, 56:].min() == 255
    # labels no style names keep the photo: a segmentation's 0 and 5 beside 3, a colour 20 levels from another
    grey[:, :32], grey[:, 32:64], grey[:, 64:] = 3, 0, 5
    ours = stylizer.prepare(Job(CONTENT, [STYLE_A], labels=encoded(Image.fromarray(grey, "L"), "JPEG"),
                                label_values=[3])).regions
    assert ours[0, 0, :, :24].min() == 255 and ours[0, 0, :, 40:56].max() == 0 and ours[0, 0, :, 72:].max() == 0
    colour[:, :48], colour[:, 48:] = (0, 80, 100), (0, 60, 100)  # a train and a bus of a city's segmentation
    ours = stylizer.prepare(Job(CONTENT, [STYLE_A], labels=encoded(Image.fromarray(colour), "JPEG"),
                                label_values=["#005064"])).regions
    assert ours[0, 0, :, :40].min() == 255 and ours[0, 0, :, 56:].max() == 0


def test_a_missing_labels_hint_names_the_format_that_moved_its_colours(stylizer: Stylizer) -> None:
    """A property tour's: a label no pixel had was blamed on "its JPEG compression" in a WebP, lossless ones too
    (where nothing moved: a typo of a label). The hint names the file's lossy format, and a lossless one has none."""
    labels = Image.new("L", (96, 64), 7)
    for fmt, options, hint in (("JPEG", {}, " (its JPEG compression changed the colours: send labels as PNG)"),
                               ("WEBP", {"quality": 80}, " (its WebP compression changed the colours: send labels "
                                                         "as PNG)"),
                               ("WEBP", {"lossless": True}, ""), ("PNG", {}, "")):
        with pytest.raises(InvalidInputError) as e:
            stylizer.prepare(Job(CONTENT, [STYLE_A], labels=encoded(labels, fmt, **options), label_values=[8]))
        assert e.value.description == "no pixel of labels has label 8" + hint, (fmt, options, e.value.description)
    exif = Image.Exif()
    exif[0x0112] = 1  # (upright: a chunk before the image's)
    rgba = Image.new("RGBA", (96, 64), (7, 7, 7, 255))  # an extended WebP (VP8X, ALPH before VP8L): walked to it
    with pytest.raises(InvalidInputError) as e:
        stylizer.prepare(Job(CONTENT, [STYLE_A], labels=encoded(rgba, "WEBP", lossless=True, exif=exif.tobytes()),
                             label_values=[8]))
    assert e.value.description == "no pixel of labels has label 8", e.value.description


def test_an_anti_aliased_label_image_has_no_seam(stylizer: Stylizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Drawn large and shrunk (as a painting program's soft brush or a vector export does), a label image's edges
    are blends of the colours either side: labels no style names, so they kept the photo, a seam between two
    styled regions (106 of 168 such pixels here). Each now takes the side it is nearer, as a 4 x 4 block's
    majority would; an unrequested region (green, the black hole) keeps its own blends. Read in bands of 5 rows,
    the same regions (a band sees its neighbours' rows as given)."""
    s, colours = 4, [(0, 0, 0), (255, 0, 0), (0, 0, 255), (0, 200, 60)]
    big = Image.new("RGB", (96 * s, 64 * s))
    draw = ImageDraw.Draw(big)
    shapes = ([(0, 0), (40, 0), (28, 64), (0, 64)], [(40, 0), (70, 0), (58, 64), (28, 64)],
              [(70, 0), (96, 0), (96, 64), (58, 64)])
    for colour, corners in zip(colours[1:], shapes):
        draw.polygon([(x * s, y * s) for x, y in corners], fill=colour)
    draw.ellipse([6 * s, 24 * s, 22 * s, 40 * s], fill=colours[0])
    blocks = np.asarray(big).reshape(64, s, 96, s, 3).transpose(0, 2, 1, 3, 4).reshape(64, 96, s * s, 3)
    counts = np.stack([(blocks == c).all(-1).sum(-1) for c in colours], -1)
    majority, tie = counts.argmax(-1), np.sort(counts, -1)[..., -2] == counts.max(-1)
    labels = encoded(big.resize((96, 64), Image.Resampling.BOX))
    job = Job(CONTENT, [STYLE_A, STYLE_B], labels=labels, label_values=["#ff0000", "#0000ff"])
    ours = stylizer.prepare(job).regions[0].numpy()
    wrong = (ours != np.stack([majority == 1, majority == 2]) * 255).any(0)
    assert not (wrong & ~tie).any(), np.argwhere(wrong & ~tie).tolist()
    monkeypatch.setattr("adain.labels.BLEND_BAND", 5)
    assert np.array_equal(stylizer.prepare(job).regions[0].numpy(), ours)
    # a colour that fills a block somewhere is a label, never a blend: a city map's road in a 1-px sliver between
    # building (grey 70) and sidewalk lies on their line, 6 levels off it, yet keeps the photo
    city, road = np.zeros((64, 96, 3), np.uint8), (128, 64, 128)
    city[:, :40], city[:, 40], city[:, 41:80], city[:, 80:] = (70, 70, 70), road, (244, 35, 232), road
    ours = stylizer.prepare(Job(CONTENT, [STYLE_A], labels=encoded(Image.fromarray(city)),
                                label_values=[70])).regions[0, 0]
    assert ours[:, :40].min() == 255 and ours[:, 40:].max() == 0
    # a grey pixel is an id, never a blend: a segmentation's sliver of 20 between 10 and 40 keeps the photo
    grey = np.full((64, 96), 40, np.uint8)
    grey[:, :47], grey[:, 47] = 10, 20
    ours = stylizer.prepare(Job(CONTENT, [STYLE_A], labels=encoded(Image.fromarray(grey, "L")),
                                label_values=[10])).regions[0, 0]
    assert ours[:, :47].min() == 255 and ours[:, 47:].max() == 0


def test_blended_edges_read_in_bands_are_the_same_as_read_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Random small label images of three colours and their blends: read in bands of 3 to 7 rows, the labels are
    those read whole (a band judged whether its windows' outer rows were inside a region by a repeated row, and
    a pixel here and there moved), and only pixels given a requested label change."""
    import adain.labels as labels

    rng = np.random.default_rng(1)
    for trial in range(400):
        h, w = (int(n) for n in rng.integers(1, 30, 2))
        palette = rng.integers(0, 256, (3, 3)).astype(np.uint8)
        pick = rng.integers(0, 3, (h, w))
        rgb = palette[pick]
        blend = rng.random((h, w)) < 0.3
        rgb[blend] = (palette[pick[blend]].astype(int) + palette[(pick[blend] + 1) % 3]) // 2
        given = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
        wanted = [int(given[rng.integers(0, h), rng.integers(0, w)])]
        grey = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])
        whole = given.copy()
        labels._unblend(whole, rgb, grey, wanted)
        monkeypatch.setattr(labels, "BLEND_BAND", int(rng.integers(3, 8)))
        banded = given.copy()
        labels._unblend(banded, rgb, grey, wanted)
        monkeypatch.undo()
        assert np.array_equal(banded, whole), trial
        assert np.isin(whole[whole != given], wanted).all(), trial


def test_a_blue_label_is_not_a_grey_one(stylizer: Stylizer) -> None:
    """A colour (0, 0, b) had label b, a grey level's: blue and white were one region, and a colour-coded map's
    navy car (0, 0, 142) took the grey 142's pixels too."""
    labels = np.zeros((64, 96, 3), np.uint8)
    labels[:, :32], labels[:, 32:64], labels[:, 64:] = (0, 0, 255), 255, (0, 0, 142)
    labels[:16, 64:] = 142  # the grey level of the same number
    ours = stylizer.prepare(Job(CONTENT, [STYLE_A, STYLE_B, STYLE_A], labels=encoded(Image.fromarray(labels)),
                                label_values=["#0000ff", 255, "#00008e"])).regions[0]
    assert ours[0, :, :32].min() == 255 and ours[0, :, 32:].max() == 0
    assert ours[1, :, 32:64].min() == 255 and ours[1, :, :32].max() == 0 and ours[1, :, 64:].max() == 0
    assert ours[2, 16:, 64:].min() == 255 and ours[2, :16].max() == 0
    with pytest.raises(InvalidInputError, match="no pixel of labels has label #000001"):
        stylizer.prepare(Job(CONTENT, [STYLE_A], labels=encoded(Image.fromarray(labels)), label_values=["#000001"]))


def test_a_label_painted_at_partial_opacity_keeps_its_colour(stylizer: Stylizer) -> None:
    """A label image's pixel at least half opaque has its own colour's label, not its colour composited onto
    black (red at alpha 128 was #800000: "no pixel of labels has label #ff0000"); under half it is unpainted."""
    left = np.zeros((64, 96), bool)
    left[:, :48] = True

    def regions(labels: Image.Image, value: object) -> torch.Tensor:
        return stylizer.prepare(Job(CONTENT, [STYLE_A], labels=encoded(labels), label_values=[value])).regions

    rgba = np.zeros((64, 96, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere as stored, also where transparent: there no label
    rgba[..., 3] = np.where(left, 128, 0)
    opaque = np.zeros((64, 96, 3), np.uint8)
    opaque[left] = (255, 0, 0)
    expected = regions(Image.fromarray(opaque), "#ff0000")
    assert torch.equal(regions(Image.fromarray(rgba, "RGBA"), "#ff0000"), expected)
    rgba[..., 3] = np.where(left, 255, 0)  # as it always was where opaque
    assert torch.equal(regions(Image.fromarray(rgba, "RGBA"), "#ff0000"), expected)
    # a grey level is a label alike: 200 at half opacity is 200 (it was 100)
    la = np.stack([np.full((64, 96), 200, np.uint8), np.where(left, 160, 0).astype(np.uint8)], axis=-1)
    assert torch.equal(regions(Image.fromarray(la, "LA"), 200), regions(Image.fromarray(np.where(left, 200, 0)
                                                                                        .astype(np.uint8)), 200))
    rgba[..., 3] = np.where(left, 100, 0)  # under half: unpainted, and the error says why
    with pytest.raises(InvalidInputError, match="under 50% opaque"):
        regions(Image.fromarray(rgba, "RGBA"), "#ff0000")


def test_a_tiny_weight_is_a_weight(stylizer: Stylizer) -> None:
    """Below 1e-6 after normalising, a region was covered with no style to blend: a flat wash 60 levels off."""
    left, right = band_mask(96, 64, 0, 48), band_mask(96, 64, 48, 96)
    outs = [stylizer.stylize(CONTENT, [STYLE_A, STYLE_B], masks=[left, right], weights=[1, w]) for w in (1.0, 1e-7)]
    assert _levels(outs[0], outs[1]).max() <= 1


def test_label_values_as_a_numpy_array() -> None:
    """Label values as a NumPy array, which the check takes (as weights): Job.check raised ValueError, the truth
    of an array of two (``label_values or ()``)."""
    labels = Image.fromarray(np.full((64, 96), 3, np.uint8), "L")
    job = Job(CONTENT, [STYLE_A, STYLE_B], labels=labels, label_values=np.array([200, 3]))
    assert job.check(Limits()).label_values == (200, 3)


def test_labels_are_the_same_regions_as_masks(stylizer: Stylizer) -> None:
    left, middle = band_mask(96, 64, 0, 32), band_mask(96, 64, 32, 64)
    by_masks = stylizer.stylize(CONTENT, [STYLE_A, STYLE_B], masks=[left, middle])
    grey = np.full((64, 96), 9, np.uint8)  # 9: a label no style names, so the photo
    grey[:, :32], grey[:, 32:64] = 200, 3
    assert stylizer.stylize(CONTENT, [STYLE_A, STYLE_B], labels=Image.fromarray(grey, "L"),
                            label_values=[200, 3]) == by_masks
    colour = np.zeros((64, 96, 3), np.uint8)
    colour[:, :32], colour[:, 32:64] = (255, 0, 0), (3, 3, 3)  # a colour and a grey label in one image
    assert stylizer.stylize(CONTENT, [STYLE_A, STYLE_B], labels=Image.fromarray(colour),
                            label_values=["#ff0000", 3]) == by_masks
    assert stylizer.stylize(CONTENT, [STYLE_A, STYLE_B], labels=Image.fromarray(colour),
                            label_values=[0xFF0000, 3]) == by_masks
    # a colour profile on a label image changes no label (labels are names; photos are converted to sRGB)
    swapped = icc_rgb((SRGB_D50[1], SRGB_D50[0], SRGB_D50[2]))
    assert stylizer.stylize(CONTENT, [STYLE_A, STYLE_B], labels=encoded(Image.fromarray(colour), icc_profile=swapped),
                            label_values=["#ff0000", 3]) == by_masks
    # a grey colour named by its hex is its level (a colour-coded map's #464646 matched no pixel)
    assert stylizer.stylize(CONTENT, [STYLE_A, STYLE_B], labels=Image.fromarray(colour),
                            label_values=["#ff0000", "#030303"]) == by_masks
    # labels in a 16-bit image are the numbers stored (3 and 200 were scaled from 65535 to 0)
    wide = encoded(Image.fromarray(grey.astype(np.uint16)), "PNG")
    assert stylizer.stylize(CONTENT, [STYLE_A, STYLE_B], labels=wide, label_values=[200, 3]) == by_masks
    # a mask of 0s and 1s is a binary mask (as 1/255 its style showed nowhere)
    ones = [Image.fromarray((np.asarray(m) > 0).astype(np.uint8), "L") for m in (left, middle)]
    assert stylizer.stylize(CONTENT, [STYLE_A, STYLE_B], masks=ones) == by_masks
    ones16 = [encoded(Image.fromarray((np.asarray(m) > 0).astype(np.uint16)), "PNG") for m in (left, middle)]
    assert stylizer.stylize(CONTENT, [STYLE_A, STYLE_B], masks=ones16) == by_masks  # as a segmentation tool saves


def test_masks_covering_everything_blend_like_weights(stylizer: Stylizer) -> None:
    full = Image.new("L", CONTENT.size, 255)
    regions = stylizer.stylize(CONTENT, [STYLE_A, STYLE_B], weights=[0.7, 0.3], masks=[full, full])
    plain = stylizer.stylize(CONTENT, [STYLE_A, STYLE_B], weights=[0.7, 0.3])
    assert _levels(regions, plain).max() <= 1


def test_region_alpha_scales_one_region(shipped: Stylizer) -> None:
    masks = [band_mask(480, 128, 0, 240), band_mask(480, 128, 240, 480)]
    styles = [encoded(NOISE), encoded(MIX)]
    full = shipped.stylize(WIDE, styles, masks=masks)
    off = shipped.stylize(WIDE, styles, masks=masks, region_alphas=[1.0, 0.0])
    half = shipped.stylize(WIDE, styles, masks=masks, region_alphas=[1.0, 0.5])
    photo = shipped.stylize(WIDE, styles[:1], alpha=0)
    right = (..., slice(288, 480))
    assert _levels(off, photo)[right].max() <= 1  # strength 0: the photo
    d_full, d_half = _levels(full, photo)[right].mean(), _levels(half, photo)[right].mean()
    assert 0.2 * d_full < d_half < 0.8 * d_full
    assert _levels(off, full)[..., :192].max() <= 1  # the other region is untouched


def test_regions_work_with_colour_refine_and_video(stylizer: Stylizer) -> None:
    masks = [band_mask(96, 64, 0, 48), band_mask(96, 64, 48, 96)]
    plain = stylizer.stylize(CONTENT, [STYLE_A, STYLE_B], masks=masks)
    grey = stylizer.stylize(CONTENT, [STYLE_A, STYLE_B], masks=masks, preserve_color="luminance")
    ycc_out, ycc_content = (np.asarray(im.convert("YCbCr"), np.int16) for im in (grey, CONTENT))
    assert np.abs(ycc_out[..., 1:] - ycc_content[..., 1:]).mean() < 2  # the photo's chroma
    assert _levels(grey, plain).mean() > 1
    refined = stylizer.stylize(CONTENT, [STYLE_A, STYLE_B], masks=masks,
                               refine_steps=2)
    assert refined.size == CONTENT.size and _levels(refined, plain).mean() > 0
    stream = VideoStream(stylizer, [STYLE_A, STYLE_B], temporal="smooth", masks=masks)
    frames = [stream.stylize(CONTENT) for _ in range(2)]
    assert _levels(frames[0], plain).max() <= 1 and frames[1].size == CONTENT.size


@pytest.mark.parametrize("temporal", ["flow", "smooth-flow"])
def test_a_region_that_reaches_no_feature_cell_gives_the_photo_in_a_clip_too(stylizer: Stylizer,
                                                                              temporal: str) -> None:
    """A one-pixel mask between relu4_1's sampling points reaches no cell: a photo comes back as the photo,
    and a clip with optical flow crashed on it (INTERNAL, failing the other requests batched with the frame)."""
    mask = Image.new("L", CONTENT.size, 0)
    mask.putpixel((0, 0), 255)
    photo = stylizer.stylize(CONTENT, [STYLE_A], masks=[mask])
    stream = VideoStream(stylizer, [STYLE_A], temporal=temporal, masks=[mask])
    frames = [stream.stylize(CONTENT) for _ in range(2)]
    assert [f.size for f in frames] == [CONTENT.size] * 2
    assert _levels(frames[0], photo).max() <= 1 and _levels(frames[1], photo).max() <= 1


def test_a_grey_styles_region_is_grey_and_the_rest_keeps_the_photos_colours(stylizer: Stylizer) -> None:
    """Grey styles make grey pictures where they apply (adain.colours): by region, refined and in a clip."""
    grey_style = NOISE.convert("L").convert("RGB")
    left = band_mask(96, 64, 0, 40)  # the right part is unpainted: it keeps the photo
    out = np.asarray(stylizer.stylize(CONTENT, [grey_style], masks=[left]), int)
    spread = lambda a: np.abs(a[..., 0] - a[..., 2]).mean()  # noqa: E731
    assert spread(out[:, :36]) == 0 and spread(out[:, 48:]) > 10  # inside, grey; outside, colour
    assert spread(np.asarray(stylizer.stylize(CONTENT, [grey_style], refine_steps=2), int)) == 0
    # at alpha 0.5 a refine keeps half the colour, as the render does (it greyed the render's output again)
    half = [spread(np.asarray(stylizer.stylize(CONTENT, [grey_style], alpha=0.5, refine_steps=n), int)) for n in (0, 2)]
    assert half[1] > 0.75 * half[0], half
    stream = VideoStream(stylizer, [grey_style], temporal="smooth")
    assert all(spread(np.asarray(stream.stylize(CONTENT), int)) == 0 for _ in range(2))
    # a colour style of weight 0 with a region of its own is never applied: the grey one still makes grey
    right = band_mask(96, 64, 48, 96)
    out = np.asarray(stylizer.stylize(CONTENT, [grey_style, NOISE], weights=[1, 0], masks=[left, right]), int)
    assert spread(out[:, :36]) == 0, spread(out[:, :36])


def test_a_grey_styles_region_is_grey_beside_a_coloured_styles(stylizer: Stylizer) -> None:
    """Where only grey styles apply the output is grey, whatever other regions apply (the correction waited for
    every style to be grey: a grey region beside a coloured one kept 18 levels of the decoder's colour); where a
    grey and a coloured style overlap, its chroma is scaled by the grey share."""
    grey_style = NOISE.convert("L").convert("RGB")
    left, right = band_mask(96, 64, 0, 48), band_mask(96, 64, 48, 96)
    spread = lambda a: np.abs(a[..., 0] - a[..., 2]).mean()  # noqa: E731
    for regions in (dict(masks=[left, right]), dict(mask=left)):
        out = np.asarray(stylizer.stylize(CONTENT, [grey_style, NOISE], **regions), int)
        assert spread(out[:, :40]) == 0 and spread(out[:, 56:]) > 10, (regions, spread(out[:, :40]))
    # both everywhere, equal weights, region alphas 1 and 0.5: A = 0.75, of which the grey style's 0.5: chroma halved
    job = stylizer.prepare(Job(CONTENT, [grey_style, NOISE], masks=[Image.new("L", (96, 64), 255)] * 2,
                               region_alphas=[1, 0.5]))
    raw, out = (to_tensor(stylizer.render([j])[0]) for j in (replace(job, grey=False), job))
    y = luminance(raw)
    assert float((out - (y + (raw - y) * 0.5)).abs().max()) * 255 <= 1.5


BAD = {
    "mask-wrong-size": (dict(masks=[Image.new("L", (10, 10), 255), Image.new("L", (96, 64), 255)]), "styles[0].mask"),
    "mask-all-black": (dict(masks=[band_mask(96, 64, 0, 48), Image.new("L", (96, 64))]), "styles[1].mask"),
    "more-masks-than-styles": (dict(masks=[band_mask(96, 64, 0, 48)] * 3), "masks"),
    "a-style-without-mask": (dict(masks=[band_mask(96, 64, 0, 48), None]), "styles[1].mask"),
    "empty-masks": (dict(masks=[b"", b""]), "styles[0].mask"),  # "image data is empty", not "needs a mask"
    "label-no-pixel-has": (dict(labels=Image.new("L", (96, 64), 5), label_values=[5, 6]), "styles[1].label"),
    "label-not-a-label": (dict(labels=Image.new("L", (96, 64), 5), label_values=[5, "red"]), "styles[1].label"),
    "labels-wrong-size": (dict(labels=Image.new("L", (9, 9), 5), label_values=[5, 5]), "labels"),
    "labels-without-values": (dict(labels=Image.new("L", (96, 64), 5)), "label_values"),
    "values-without-labels": (dict(label_values=[1, 2]), "labels"),
    "masks-and-labels": (dict(masks=[band_mask(96, 64, 0, 48)] * 2, labels=Image.new("L", (96, 64))), "labels"),
    "region-alpha-no-regions": (dict(region_alphas=[1, 1]), "styles[0].alpha"),
    "region-alpha-1.5": (dict(masks=[band_mask(96, 64, 0, 48)] * 2, region_alphas=[1, 1.5]), "styles[1].alpha"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_regions_name_the_field(stylizer: Stylizer, case: str) -> None:
    kwargs, field = BAD[case]
    with pytest.raises(InvalidInputError) as err:
        stylizer.stylize(CONTENT, [STYLE_A, STYLE_B], **kwargs)
    assert err.value.field == field, str(err.value)
    if case == "empty-masks":
        assert err.value.description == "image data is empty", str(err.value)


def test_beyond_max_styles_only_the_count_is_reported() -> None:
    # Each of a thousand styles' missing mask, label and alpha was a problem of its own (a 73 MB log line).
    job = Job(CONTENT, [STYLE_A] * 1000, masks=[None] * 1000, region_alphas=[2.0] * 1000)
    problems = job.problems(Limits())
    assert problems[0].field == "styles" and "1000 styles, over the limit of max_styles=8" in problems[0].description
    assert len(problems) <= 1 + 2 * Limits().max_styles, [p.field for p in problems]
    labelled = Job(CONTENT, [STYLE_A] * 1000, labels=Image.new("L", (96, 64)), label_values=[None] * 1000)
    assert len(labelled.problems(Limits())) <= 1 + Limits().max_styles


@pytest.mark.parametrize("h", [200, 201, 204, 207])
def test_a_region_lands_on_its_own_cells_at_any_height(h: int) -> None:
    """A region map shrunk to the relu4_1 grid (a cell per 8 x 8 pixels) keeps its edge where the pixels put it:
    at a height no multiple of 8 the samples were H / ceil(H / 8) px apart, not 8, and the region spread up to
    a cell (8 px) outwards at the bottom (a region ending 10 px above the bottom of 201 took rows 192-199)."""
    end = h - 10  # the region: rows 0 .. end - 1, and every column
    levels = torch.zeros(1, 1, h, 40, dtype=torch.uint8)
    levels[:, :, :end] = 255
    cells = maps_at(levels, (-(-h // 8), 5))[0, 0, :, 0]
    centres = torch.arange(len(cells)) * 8 + 3.5  # each cell's centre row (the last cell's padding repeats row h-1)
    assert torch.equal(cells > 0.5, centres.clamp(max=h - 1) < end), (h, cells.tolist())
    aligned = maps_at(F.pad(levels, (0, 0, 0, 8 * len(cells) - h), mode="replicate"), (len(cells), 5))
    assert torch.equal(cells, aligned[0, 0, :, 0])  # what a whole-cell map gives, as at a multiple of 8


def test_a_large_jpeg_content_with_a_mask_of_its_stored_size_is_stylized(stylizer: Stylizer) -> None:
    """A large JPEG is decoded at a smaller DCT scale when it is downscaled after (``load_image(longest=...)``), but a
    mask or label image must match the content's stored size: with regions it is decoded whole, the mask taken;
    without, the prepared content is the same size either way."""
    photo = encoded(synth_image(1800, 1200, seed=4), "JPEG")
    mask = band_mask(1800, 1200, 0, 900)
    prepared = stylizer.prepare(Job(photo, [STYLE_A, STYLE_B], mask=mask, content_size=256))
    assert prepared.content.shape[2:] == (171, 256) and prepared.regions is not None
    plain = stylizer.prepare(Job(photo, [STYLE_A], content_size=256))
    assert plain.content.shape == prepared.content.shape
    assert (plain.content - prepared.content).abs().max() * 255 < 8  # (a downscale's filter apart, no more)
