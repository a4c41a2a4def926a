"""Runtime backends (``adain.backends``): each installed runtime gives the eager output, ``auto`` falls back
cleanly, and precision follows the CPU found. The tolerance: outputs in 0-255 at most 1 level apart
(the runtimes reorder float32 sums: raw differences are ~1e-5), relu4_1 within 1e-4 relative."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adain import Stylizer, backends, diskcache
from adain.backends import generic_shapes, make_backend
from adain.decoder import FoldedDecoder, load_decoder, save_decoder
from adain.precision import BF16_FLAGS, cpu_has_bf16, cpu_info, wants_bf16
from synth import band_mask, encoded, synth_image

torch.set_num_threads(1)
RUNTIMES = [r for r in ("openvino", "onnxruntime") if importlib.util.find_spec(r) is not None]
CONTENT = synth_image(97, 61, seed=1)  # odd sizes: padded to 104 x 64 inside, cut back after
STYLE = encoded(synth_image(64, 64, seed=2))


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int16)


@pytest.fixture(scope="module")
def eager(decoder_path: Path) -> Stylizer:
    return Stylizer(decoder_path, device="cpu", precision="fp32", backend="torch")


@pytest.fixture(scope="module")
def alpha_decoder(tmp_path_factory: pytest.TempPathFactory, decoder_path: Path) -> Path:
    """A version-2 decoder (alpha as an input channel) whose alpha channel matters."""
    dec = load_decoder(decoder_path)[0].with_alpha_input()
    torch.manual_seed(3)
    with torch.no_grad():
        dec.convs[0].weight[:, -1:].normal_(0, 0.05)
    path = tmp_path_factory.mktemp("v2") / "decoder.pt"
    save_decoder(dec, path, {"note": "v2 test"})
    return path


@pytest.mark.skipif(not RUNTIMES, reason="no optional runtime installed (the 'fast' extra)")
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runtime_matches_eager(runtime: str, eager: Stylizer, decoder_path: Path) -> None:
    st = Stylizer(decoder_path, device="cpu", precision="fp32", backend=runtime)
    assert st.backend.name == runtime and st.info["backend"] == runtime and st.info["precision"] == "fp32"
    x = torch.rand(2, 3, 40, 56)
    a, b = st.backend.relu4_1(x), eager.backend.relu4_1(x)
    assert a.shape == b.shape == (2, 512, 5, 7)
    assert (a - b).abs().max().item() <= 1e-4 * b.abs().max().item()
    # one odd-size image, then a batch of three (same padded size, one batch inside)
    one = pixels(st.stylize(CONTENT, STYLE, alpha=0.8))
    assert one.shape == (61, 97, 3)
    assert np.abs(one - pixels(eager.stylize(CONTENT, STYLE, alpha=0.8))).max() <= 1
    contents = [CONTENT, CONTENT.transpose(Image.FLIP_LEFT_RIGHT), synth_image(97, 61, seed=4)]
    for got, want in zip(st.stylize_batch(contents, STYLE), eager.stylize_batch(contents, STYLE)):
        assert np.abs(pixels(got) - pixels(want)).max() <= 1


@pytest.mark.skipif(not RUNTIMES, reason="no optional runtime installed (the 'fast' extra)")
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runtime_encoder_at_many_shapes(runtime: str, eager: Stylizer, decoder_path: Path) -> None:
    """Shapes where a runtime once went wrong on one CPU and not another (OpenVINO's Winograd form on an
    AVX-512 EPYC: 64 x 48 and 96 x 48 off by 12.7 of 14.8), among others: tall, wide, whole tiles, not."""
    st = Stylizer(decoder_path, device="cpu", precision="fp32", backend=runtime)
    for h, w in ((64, 48), (96, 48), (48, 48), (48, 64), (64, 40), (56, 40), (72, 104), (128, 96)):
        x = torch.rand(1, 3, h, w)
        a, b = st.backend.relu4_1(x), eager.backend.relu4_1(x)
        assert (a - b).abs().max().item() <= 1e-4 * b.abs().max().item(), (h, w)


@pytest.mark.skipif("openvino" not in RUNTIMES, reason="OpenVINO not installed (the 'fast' extra)")
def test_openvino_fixed_shape_graphs(eager: Stylizer, decoder_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shape seen a second time gets its own fixed-shape graph (faster) with the same pixels; at most two
    are kept, and a third shape takes a place only once it is used twice as often as the least used (three
    sizes in turn compiled a graph on every call); none inside generic_shapes() (tiled rendering, whose
    memory bound counts one set of buffers) nor over FIXED_SHAPE_MAX_PIXELS."""
    st = Stylizer(decoder_path, device="cpu", precision="fp32", backend="openvino")
    statics = st.backend._encode.statics
    want = pixels(eager.stylize(CONTENT, STYLE))
    for _ in range(3):
        assert np.abs(pixels(st.stylize(CONTENT, STYLE)) - want).max() <= 1
    assert (1, 3, 64, 104) in {shapes[0] for shapes in statics.kept}
    compiled: list = []
    compile_static = statics.compile
    statics.compile = lambda shapes: (compiled.append(shapes[0]), compile_static(shapes))[1]
    for _ in range(10):  # three sizes in turn, the places taken: no graph compiled and thrown away
        for side in (24, 32, 40):
            st.backend.relu4_1(torch.rand(1, 3, side, side))
    assert len(compiled) <= 2 and len(statics.kept) == 2, compiled
    for _ in range(40):  # one size used far more: it takes the least used place
        st.backend.relu4_1(torch.rand(1, 3, 48, 48))
    assert (1, 3, 48, 48) in {shapes[0] for shapes in statics.kept} and len(statics.kept) == 2
    with generic_shapes():
        for _ in range(3):
            st.backend.relu4_1(torch.rand(1, 3, 56, 56))
    assert (1, 3, 56, 56) not in {shapes[0] for shapes in statics.kept}
    monkeypatch.setattr(backends, "FIXED_SHAPE_MAX_PIXELS", 63 * 63)
    for _ in range(3):
        st.backend.relu4_1(torch.rand(1, 3, 64, 64))
    assert (1, 3, 64, 64) not in {shapes[0] for shapes in statics.kept}


@pytest.mark.skipif(not RUNTIMES, reason="no optional runtime installed (the 'fast' extra)")
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runtime_alpha_decoder_with_regions(runtime: str, alpha_decoder: Path) -> None:
    """A version-2 decoder takes a per-sample alpha or a map (regions): both reach the exported graph."""
    st = Stylizer(alpha_decoder, device="cpu", precision="fp32", backend=runtime)
    ref = Stylizer(alpha_decoder, device="cpu", precision="fp32", backend="torch")
    masks = [encoded(band_mask(97, 61, 0, 50)), encoded(band_mask(97, 61, 50, 97))]
    for options in ({"alpha": 0.3}, {"masks": masks}):
        styles = [STYLE, encoded(synth_image(48, 64, seed=5))] if "masks" in options else [STYLE]
        got, want = st.stylize(CONTENT, styles, **options), ref.stylize(CONTENT, styles, **options)
        assert np.abs(pixels(got) - pixels(want)).max() <= 1


def test_auto_falls_back_to_torch_when_runtimes_are_missing(
    decoder_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("openvino", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)  # import now raises ImportError
    with caplog.at_level(logging.INFO, logger="adain.backends"):
        st = Stylizer(decoder_path, device="cpu", precision="fp32", backend="auto")
    assert st.backend.name == "torch"
    assert "openvino not usable" in caplog.text
    assert pixels(st.stylize(CONTENT, STYLE)).shape == (61, 97, 3)
    with pytest.raises(RuntimeError, match=r"openvino is not usable.*the 'fast' extra: pip install 'adain\[fast\]'; "
                       r"in a checkout: pip install -e '\.\[fast\]'\)"):
        Stylizer(decoder_path, device="cpu", backend="openvino")


@pytest.mark.skipif(not RUNTIMES, reason="no optional runtime installed (the 'fast' extra)")
def test_runtime_failure_on_a_shape_runs_that_shape_on_torch(
    eager: Stylizer, decoder_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    st = Stylizer(decoder_path, device="cpu", precision="fp32", backend=RUNTIMES[0])
    calls = []
    compiled = st.backend._encode

    def fails_at_61_rows(*arrays: np.ndarray) -> np.ndarray:  # stands in for a runtime that cannot compile
        calls.append(arrays[0].shape)
        if arrays[0].shape[2] == 64:  # 61 rows pad to 64
            raise RuntimeError("cannot compile this shape")
        return compiled(*arrays)

    st.backend._encode = fails_at_61_rows
    with caplog.at_level(logging.WARNING, logger="adain.backends"):
        got = st.stylize(CONTENT, STYLE)
        again = st.stylize(CONTENT, STYLE)
    assert "failed on the encoder for shape (1, 3, 64, 104), running it on torch" in caplog.text
    assert calls.count((1, 3, 64, 104)) == 1  # not retried within its cool-off: that shape stays on torch
    want = pixels(eager.stylize(CONTENT, STYLE))
    assert np.abs(pixels(got) - want).max() <= 1 and np.abs(pixels(again) - want).max() <= 1


def test_backend_and_precision_errors(decoder_path: Path) -> None:
    with pytest.raises(ValueError, match="backend must be one of auto, torch, compiled, openvino, onnxruntime"):
        Stylizer(decoder_path, device="cpu", backend="tensorrt")
    st = Stylizer(decoder_path, device="cpu", backend="torch")
    with pytest.raises(ValueError, match="onnxruntime runs fp32 only"):
        make_backend("onnxruntime", st.encoder, st.decoder, torch.device("cpu"), bf16=True, explicit_precision=True)
    with pytest.raises(ValueError, match="runs on the CPU"):
        make_backend("openvino", st.encoder, st.decoder, torch.device("cuda"), bf16=True, explicit_precision=False)


def test_precision_follows_the_cpu() -> None:
    model, flags = cpu_info()
    assert model and isinstance(flags, frozenset)
    assert cpu_has_bf16() == bool(BF16_FLAGS & flags)
    assert wants_bf16("auto", cuda=False) == cpu_has_bf16()  # bf16 only where the CPU has the units
    assert wants_bf16("auto", cuda=True) and wants_bf16("bf16", cuda=False) and not wants_bf16("fp32", cuda=True)
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32"):
        wants_bf16("fp16", cuda=False)


def test_folded_decoder_is_the_decoder(decoder_path: Path, alpha_decoder: Path) -> None:
    """The exported runtimes run the folded decoder: the same function (odd sizes, batches, alpha maps)."""
    for path in (decoder_path, alpha_decoder):
        dec = load_decoder(path)[0]
        folded = FoldedDecoder(dec)
        x = torch.randn(2, 512, 5, 9).relu()
        alpha = torch.rand(2, 1, 5, 9)
        with torch.no_grad():
            want, got = dec(x, alpha), folded(x, alpha)
        assert got.shape == want.shape == (2, 3, 40, 72)
        assert (got - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())


def test_threads_follow_the_containers_cpu_limit(tmp_path: Path) -> None:
    """In a pod limited to 2 CPUs torch starts one thread a core of the node; cgroup's cpu.max says 2."""
    from adain.precision import cpu_quota

    cgroup = tmp_path / "sys/fs/cgroup"
    cgroup.mkdir(parents=True)
    expected_affinity = None
    if len(os.sched_getaffinity(0)) < (os.cpu_count() or 0):  # this process is pinned itself
        expected_affinity = len(os.sched_getaffinity(0))
    assert cpu_quota(tmp_path) == expected_affinity  # nothing readable: no limit
    (cgroup / "cpu.max").write_text("max 100000\n")  # v2: no limit
    assert cpu_quota(tmp_path) == expected_affinity
    (cgroup / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs: 2 threads
    assert cpu_quota(tmp_path) == min(2, expected_affinity or 2)
    (cgroup / "cpu.max").unlink()
    (cgroup / "cpu").mkdir()
    (cgroup / "cpu/cpu.cfs_quota_us").write_text("-1\n")  # v1: no limit
    (cgroup / "cpu/cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(tmp_path) == expected_affinity
    (cgroup / "cpu/cpu.cfs_quota_us").write_text("50000\n")  # half a CPU: 1 thread
    assert cpu_quota(tmp_path) == 1


@pytest.mark.skipif("openvino" not in RUNTIMES, reason="OpenVINO not installed (the 'fast' extra)")
def test_processes_starting_together_convert_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """One converts while the others wait on the cache entry's lock, then read its graph (the suite's two
    workers converted the same decoder side by side); a lock held too long is not waited on for ever."""
    import fcntl
    import threading

    import openvino as ov

    monkeypatch.setenv("ADAIN_CACHE_DIR", str(tmp_path))
    traced = []
    trace = torch.jit.trace
    monkeypatch.setattr(torch.jit, "trace", lambda *a, **k: traced.append(1) or trace(*a, **k))
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    example = (torch.rand(1, 3, 16, 16),)
    key = backends._weights_key(module, example, "openvino", ov.get_version(), "")
    folder = tmp_path / "openvino" / key
    folder.parent.mkdir(parents=True)
    x = torch.rand(2, 3, 24, 40)
    with torch.no_grad():
        want = module(x).numpy()

    def build(out: list) -> None:
        out.append(backends._openvino(module, example, False, 1, "", 1))

    got: list = []
    with open(backends._lock_file(folder), "a") as lock:  # another process, converting
        fcntl.flock(lock, fcntl.LOCK_EX)
        waiter = threading.Thread(target=build, args=(got,))
        waiter.start()
        waiter.join(1.0)
        assert waiter.is_alive() and not got and not traced  # waiting for the lock, not converting
        assert backends._save_openvino(ov, backends._convert(ov, module, example, ""), folder)
    waiter.join(60)
    assert got and len(traced) == 1  # the waiter read the other's graph
    assert np.abs(got[0](x.numpy()) - want).max() <= 1e-5

    monkeypatch.setattr(backends, "LOCK_WAIT_S", 0.5)
    monkeypatch.setenv("ADAIN_CACHE_DIR", str(tmp_path / "hung"))
    folder = tmp_path / "hung" / "openvino" / key
    folder.parent.mkdir(parents=True)
    with open(backends._lock_file(folder), "a") as lock, caplog.at_level(logging.WARNING, "adain.backends"):
        fcntl.flock(lock, fcntl.LOCK_EX)  # a converter that hung
        run = backends._openvino(module, example, False, 1, "", 1)
    assert len(traced) == 2 and "converting here too" in caplog.text
    assert np.abs(run(x.numpy()) - want).max() <= 1e-5


@pytest.mark.skipif("openvino" not in RUNTIMES, reason="OpenVINO not installed (the 'fast' extra)")
def test_a_compile_that_uses_the_blob_cache_takes_its_turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """The compile that writes or reads an entry's compiled blobs waits on the entry's lock too: two of the
    suite's servers compiling one graph at once raced in its blob file (one removed the other's half-written
    blob, whose compile then failed, "cannot set permissions: No such file or directory", and ran without the
    cache, which its log said as an exception)."""
    import fcntl
    import threading

    monkeypatch.setenv("ADAIN_CACHE_DIR", str(tmp_path))
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    example = (torch.rand(1, 3, 16, 16),)
    backends._openvino(module, example, False, 1, "", 1)  # converted and saved: later builds read it
    (folder,) = [p for p in (tmp_path / "openvino").iterdir() if p.is_dir()]  # (beside it: its lock file)
    got: list = []
    with open(backends._lock_file(folder), "a") as lock, caplog.at_level(logging.WARNING, "adain.backends"):
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process, compiling this graph into the blobs
        waiter = threading.Thread(target=lambda: got.append(backends._openvino(module, example, False, 1, "", 1)))
        waiter.start()
        waiter.join(1.0)
        assert waiter.is_alive() and not got  # waiting for its turn at the blobs
    waiter.join(60)
    assert got and not caplog.text, caplog.text
    x = torch.rand(1, 3, 24, 40)
    with torch.no_grad():
        assert np.abs(got[0](x.numpy()) - module(x).numpy()).max() <= 1e-5
    assert list((folder / "compiled").glob("*.blob"))


def _entry(path: Path, size: int, age_s: float) -> Path:
    """A cache entry made by hand: a folder with a graph of ``size`` bytes, last used ``age_s`` ago."""
    path.mkdir(parents=True)
    (path / "model.xml").write_text("<net/>")
    (path / "model.bin").write_bytes(b"\0" * size)
    when = time.time() - age_s
    os.utime(path, (when, when))
    return path


@pytest.mark.skipif("openvino" not in RUNTIMES, reason="OpenVINO not installed (the 'fast' extra)")
def test_the_graph_cache_keeps_within_its_bound_least_recently_used_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Every decoder and runtime version added ~0.7 GB that nothing removed. A build that pushes the cache over
    ADAIN_CACHE_MAX_MB removes the entries used longest ago, the old shared compiled blobs among them, until it is
    within; one used in the last minutes (another process may be reading it) and the one just built stay. The
    compiled blobs now live in their entry, and a build marks its entry used."""
    monkeypatch.setenv("ADAIN_CACHE_DIR", str(tmp_path))
    mb = 1 << 20
    legacy = tmp_path / diskcache.LEGACY_BLOBS / "123.blob"
    legacy.parent.mkdir()
    legacy.write_bytes(b"\0" * (mb // 2))
    os.utime(legacy, (time.time() - 3 * 3600,) * 2)
    oldest, older = _entry(tmp_path / "openvino" / "a", mb, 7200), _entry(tmp_path / "openvino" / "b", mb, 3600)
    recent = _entry(tmp_path / "openvino" / "c", mb, 60)
    monkeypatch.setenv("ADAIN_CACHE_MAX_MB", "2.2")  # 3.5 MB and the new graph: two must go, the oldest
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.rand(1, 3, 20, 28)
    with caplog.at_level(logging.INFO, "adain.diskcache"):
        run = backends._openvino(module, (x,), False, 1, "", 1)
        diskcache.bound(keep=[run.entry])  # (as ExportedBackend does once all its parts are built)
    with torch.no_grad():
        assert np.abs(run(x.numpy()) - module(x).numpy()).max() <= 1e-5
    (built,) = {p for p in (tmp_path / "openvino").iterdir() if p.is_dir()} - {oldest, older, recent}
    assert not legacy.exists() and not oldest.exists() and older.exists() and recent.exists()
    assert list((built / "compiled").glob("*.blob")) and "removed 2 entries used longest ago" in caplog.text
    # over a bound only what is in use is left: the newest used minutes ago, and this build's
    monkeypatch.setenv("ADAIN_CACHE_MAX_MB", "0.1")
    os.utime(built, (time.time() - 7200,) * 2)
    caplog.clear()
    with caplog.at_level(logging.INFO, "adain.diskcache"):
        diskcache.bound(keep=[backends._openvino(module, (x,), False, 1, "", 1).entry])  # read from the cache
    assert {p for p in (tmp_path / "openvino").iterdir() if p.is_dir()} == {recent, built}
    assert time.time() - built.stat().st_mtime < 60  # marked used by the build that read it
    assert "over ADAIN_CACHE_MAX_MB=0.1" in caplog.text and "used in the last 10 minutes" in caplog.text
    # 0: no bound; a value that is no size is said, and the default serves
    assert diskcache.max_bytes({"ADAIN_CACHE_MAX_MB": "0"}) is None
    assert diskcache.max_bytes({}) == diskcache.max_bytes({"ADAIN_CACHE_MAX_MB": "lots"}) == diskcache.DEFAULT_MB * mb
    assert "ADAIN_CACHE_MAX_MB='lots' is not a number of megabytes" in caplog.text
    assert diskcache.max_bytes({"ADAIN_CACHE_MAX_MB": "-1"}) == diskcache.max_bytes({"ADAIN_CACHE_MAX_MB": "nan"})
    # the old shared compiled blobs, which this version never reads, go within the bound too (once not new)
    legacy.write_bytes(b"blob")
    monkeypatch.setenv("ADAIN_CACHE_MAX_MB", "100")
    assert diskcache.bound() == [] and legacy.exists()  # (another process may have just written it)
    os.utime(legacy, (time.time() - 3600,) * 2)
    assert diskcache.bound() == [legacy] and recent.exists() and built.exists()


@pytest.mark.skipif("openvino" not in RUNTIMES, reason="OpenVINO not installed (the 'fast' extra)")
def test_a_backend_keeps_the_cache_within_its_bound_once_all_its_parts_are_built(
        decoder_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each part's graph (encoder, decoder, the decoder at alpha 1) is an entry with its compiled blobs in it; once
    all are built, entries used longest ago go, and none of the backend's own, though each was last used long ago
    (a bound kept after the first part could have removed the next one just before it was read)."""
    import shutil

    built = Stylizer(decoder_path, device="cpu", precision="fp32", backend="openvino").backend
    parts = built.cache_entries
    assert len(parts) == 2 + (built._decode_alpha_one is not None)  # every part has its entry
    for part in parts:  # the session's entries, linked into a cache of this test's own (no conversion again)
        shutil.copytree(part, tmp_path / "openvino" / part.name, copy_function=os.link)
        os.utime(tmp_path / "openvino" / part.name, (time.time() - 7200,) * 2)
    stranger = _entry(tmp_path / "openvino" / "other-decoder", 1 << 20, 3600)  # used since, but not by this one
    monkeypatch.setenv("ADAIN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("ADAIN_CACHE_MAX_MB", "1")
    again = Stylizer(decoder_path, device="cpu", precision="fp32", backend="openvino").backend
    entries = again.cache_entries
    assert [e.name for e in entries] == [p.name for p in parts] and not stranger.exists()
    assert all(e.parent == tmp_path / "openvino" and time.time() - e.stat().st_mtime < 60 for e in entries)
    assert all(list((e / "compiled").glob("*.blob")) for e in entries)


@pytest.mark.skipif(not RUNTIMES, reason="no optional runtime installed (the 'fast' extra)")
def test_runtime_failure_is_retried_given_up_and_bounded(
    eager: Stylizer, decoder_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A failure may pass (an allocation under memory pressure): after a cool-off the shape goes back to the
    runtime. One that fails GIVE_UP_FAILURES times in a row stays on torch, logged once; the failures
    remembered are bounded, the oldest forgotten first. Every call gets the right answer meanwhile."""
    monkeypatch.setattr(backends, "RETRY_AFTER_CALLS", 3)
    monkeypatch.setattr(backends, "RETRY_AFTER_S", 0.0)
    monkeypatch.setattr(backends, "FAILED_SHAPES", 2)
    st = Stylizer(decoder_path, device="cpu", precision="fp32", backend=RUNTIMES[0])
    backend = st.backend
    compiled = backend._encode
    passing, failing, other, another = ((1, 3, side, side) for side in (16, 24, 32, 40))
    failures = {passing: 1, failing: 99, other: 1, another: 1}  # the runtime's failures to come, per shape
    calls: list[tuple[int, ...]] = []

    def flaky(*arrays: np.ndarray) -> np.ndarray:  # stands in for a runtime short of memory now and then
        calls.append(arrays[0].shape)
        if failures[arrays[0].shape] > 0:
            failures[arrays[0].shape] -= 1
            raise RuntimeError("cannot allocate memory")
        return compiled(*arrays)

    def check(shape: tuple[int, ...]) -> None:
        x = torch.rand(shape)
        a, b = backend.relu4_1(x), eager.backend.relu4_1(x)
        assert (a - b).abs().max().item() <= 1e-4 * b.abs().max().item(), shape

    backend._encode = flaky
    with caplog.at_level(logging.INFO, logger="adain.backends"):
        for _ in range(12):  # the backend's calls 1, 3, 5...: passing; 2, 4, 6...: failing
            check(passing)
            check(failing)
    # passing: failed at call 1, on torch at call 3 (cooling off), back on the runtime from call 5 (it worked)
    assert calls.count(passing) == 1 + 10 and ("encoder", passing) not in backend._failures
    assert calls.count(failing) == 3  # failed at calls 2, 6 and 10 (each after a cool-off), then given up
    assert caplog.text.count("running it on torch from now on") == 1
    assert "failed on the encoder for shape (1, 3, 24, 24) 3 times in a row, running it on torch from now on" \
        in caplog.text
    check(other)
    check(another)
    assert list(backend._failures) == [("encoder", other), ("encoder", another)]  # the given-up one forgotten
    check(failing)
    assert calls.count(failing) == 4  # forgotten: tried again
    # calls that fail together count once: three threads short of memory at one moment are one failure
    import threading

    together = (1, 3, 48, 48)
    failures[together] = 3
    barrier = threading.Barrier(3)

    def at_once(*arrays: np.ndarray) -> np.ndarray:
        barrier.wait(10)  # all three inside the runtime before any fails
        return flaky(*arrays)

    backend._encode = at_once
    # (daemons: one stuck, as two were once inside MKL's allocator for 25 minutes, fails the test, not the run)
    threads = [threading.Thread(target=check, args=(together,), daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a thread still running after 30 s"
    assert backend._failures[("encoder", together)].count == 1


def test_fixed_shape_compile_stalls_no_other_call() -> None:
    """A fixed-shape graph compiles (0.2-0.4 s) outside the lock that every call takes: the other threads'
    calls are answered meanwhile (a kept shape gets its graph, others the generic one), the shape is compiled
    once, and one compile runs at a time."""
    import threading

    kept, slow, other = ((1, 3, 8, 8),), ((1, 3, 16, 16),), ((1, 3, 24, 24),)
    started, release = threading.Event(), threading.Event()
    compiled: list[tuple[tuple[int, ...], ...]] = []

    def compile_static(shapes: tuple[tuple[int, ...], ...]) -> str:
        compiled.append(shapes)
        if shapes == slow:
            started.set()
            assert release.wait(30)
        return f"graph for {shapes[0]}"

    statics = backends._StaticShapes(compile_static, bound=2)
    for _ in range(2):
        got = statics.get(kept)
    assert got is not None and got[0] == "graph for (1, 3, 8, 8)"
    assert statics.get(slow) is None  # seen once
    result: list = []
    compiler = threading.Thread(target=lambda: result.append(statics.get(slow)), daemon=True)
    compiler.start()  # its second call: compiles, held on `release`
    assert started.wait(30)

    def answered(shapes: tuple[tuple[int, ...], ...]) -> list:
        out: list = []
        caller = threading.Thread(target=lambda: out.append(statics.get(shapes)), daemon=True)
        caller.start()
        caller.join(5)
        return out  # empty: it waited for the compile

    try:
        assert answered(kept) == [got]
        assert answered(slow) == [None]  # being compiled: the generic graph meanwhile, not compiled twice
        assert answered(other) == [None] and answered(other) == [None]  # worth a graph, but one compile at a time
    finally:
        release.set()
    compiler.join(30)
    assert result and result[0] is not None and result[0][0] == "graph for (1, 3, 16, 16)"
    assert compiled == [kept, slow] and set(statics.kept) == {kept, slow} and statics.compiling is None


def test_fixed_shape_graphs_are_bounded_by_their_pixels_in_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept fixed-shape graphs hold at most FIXED_SHAPE_MAX_PIXELS image pixels together, not only two places (each
    holds its buffers: two 1-MP sizes took a process from 2.8 to 5.4 GB): a shape that needs the room takes it from
    the least used ones only once it is asked for twice as often as each, and a decoder's input counts 64 image
    pixels a pixel (its ``scale``)."""
    monkeypatch.setattr(backends, "FIXED_SHAPE_MAX_PIXELS", 1000)
    small, mid, large = ((1, 3, 20, 20),), ((1, 3, 20, 25),), ((1, 3, 30, 30),)  # 400, 500 and 900 pixels
    statics = backends._StaticShapes(lambda shapes: f"graph for {shapes[0]}", bound=2)
    for shapes in (small, small, mid, mid):
        statics.get(shapes)
    assert set(statics.kept) == {small, mid}  # 900 pixels: both fit
    for _ in range(3):
        assert statics.get(large) is None  # it would need both places' pixels, and is asked for less than twice each
    statics.get(large)  # 4 calls: twice the 2 of each
    assert set(statics.kept) == {large}  # both made way: 1,300 pixels would pass the bound
    assert statics.get(((2, 3, 20, 20),)) is None and statics.get(((2, 3, 20, 20),)) is None  # a batch counts
    assert set(statics.kept) == {large}  # 800 + 900: no room, and not asked for twice as often
    decoder = backends._StaticShapes(lambda shapes: "graph", scale=64, bound=2)
    for _ in range(3):
        decoder.get(((1, 512, 4, 4),))  # 1,024 image pixels: over the bound
    assert not decoder.kept


@pytest.mark.skipif("openvino" not in RUNTIMES, reason="OpenVINO not installed (the 'fast' extra)")
def test_converted_graph_that_cannot_be_saved_costs_only_speed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """OpenVINO raises RuntimeError, not OSError, when it cannot write a file (here: a file-size limit, as a
    full disk or quota): the save is skipped with a warning, and its .tmp-* folder goes. A .tmp-* folder left
    by a process killed mid-save goes once it is an hour old."""
    import resource
    import signal

    import openvino as ov

    module = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, padding=1)).eval()  # 9 KB of weights
    model = backends._convert(ov, module, (torch.rand(1, 16, 8, 8),), "")
    folder = tmp_path / "openvino" / "entry"
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, limit[1]))
        with caplog.at_level(logging.WARNING, logger="adain.backends"):
            saved = backends._save_openvino(ov, model, folder)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, handler)
    assert not saved and not folder.exists() and "could not cache the converted model" in caplog.text
    assert not list(folder.parent.glob(".tmp-*"))

    stale, fresh = folder.parent / ".tmp-stale", folder.parent / ".tmp-fresh"
    for tmp in (stale, fresh):
        tmp.mkdir()
        (tmp / "model.xml").write_text("<half")
    hours_ago = backends.time.time() - 2 * 3600
    os.utime(stale, (hours_ago, hours_ago))
    assert backends._save_openvino(ov, model, folder) and (folder / "model.xml").is_file()
    assert not stale.exists() and fresh.exists()  # a save under way in another process keeps its folder


def test_avx512_kernels_follow_onednn_isa_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Float32 takes the Winograd form only where OpenVINO runs no AVX-512 kernels (they miscomputed it): on a
    CPU without AVX-512, or one whose oneDNN is held to AVX2 or lower (ONEDNN_MAX_CPU_ISA, as the README's
    figures for CPUs without bf16 units were measured); a limit at an AVX-512 level leaves them."""
    monkeypatch.setattr(backends, "cpu_info", lambda: ("a CPU", frozenset({"avx2", "avx512f"})))
    for limit, avx512 in (("", True), ("AVX512_CORE", True), ("avx512_core_vnni", True), ("AVX2", False),
                          ("AVX2_VNNI", False), ("AVX", False), ("SSE41", False)):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", limit)
        assert backends._avx512() is avx512, limit
    monkeypatch.setattr(backends, "cpu_info", lambda: ("a CPU", frozenset({"avx2"})))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    assert not backends._avx512()


def test_bf16_asked_for_on_a_cpu_without_bf16_units_is_warned(
    decoder_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A fleet's ADAIN_PRECISION=bf16 on a node without bf16 units runs 2.7-9x slower than fp32: it runs, but
    the start log says so; auto runs fp32 there and says nothing."""
    import adain.precision

    monkeypatch.setattr(adain.precision, "cpu_info", lambda: ("a CPU", frozenset({"avx2", "avx512f"})))
    with caplog.at_level(logging.WARNING, logger="adain.backends"):
        auto = Stylizer(decoder_path, device="cpu", backend="torch")
        assert auto.dtype == torch.float32 and "without bf16 units" not in caplog.text
        asked = Stylizer(decoder_path, device="cpu", precision="bf16", backend="torch")
    assert asked.dtype == torch.bfloat16
    assert "precision bf16 on a CPU without bf16 units (AVX512-BF16, AMX): emulated" in caplog.text


@pytest.mark.skipif("openvino" not in RUNTIMES, reason="OpenVINO not installed (the 'fast' extra)")
def test_installed_runtime_that_cannot_build_names_no_install(decoder_path: Path, tmp_path: Path) -> None:
    """OpenVINO installed but unable to build the networks (bf16 where oneDNN is held to AVX2: no bf16 pooling)
    is an error that says so, and does not tell the operator to install what is installed."""
    import subprocess

    code = (f"from adain import Stylizer\nStylizer({str(decoder_path)!r}, device='cpu', precision='bf16', "
            "backend='openvino')")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ADAIN_CACHE_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    if run.returncode == 0:
        pytest.skip("this OpenVINO builds bf16 under AVX2: no failure to name")
    error = run.stderr[run.stderr.rindex("RuntimeError: backend openvino is not usable here"):]  # (OpenVINO's lines)
    assert error.rstrip().endswith("); choose another backend or precision") and "pip install" not in error


def test_a_process_without_a_home_gets_one_before_openvino_loads(monkeypatch) -> None:
    """An arbitrary UID with no HOME (OpenShift's): OpenVINO's telemetry failed on Path.home() and auto ran torch,
    at half the speed, saying so only at INFO. Such a process is given the temporary folder as its HOME."""
    import tempfile
    from pathlib import Path

    from adain.precision import give_openvino_a_home

    def nobody() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(Path, "home", nobody)  # (what pathlib says with HOME unset and no passwd entry)
    give_openvino_a_home()
    assert os.environ["HOME"] == tempfile.gettempdir()
    monkeypatch.setenv("HOME", "/home/someone")
    give_openvino_a_home()
    assert os.environ["HOME"] == "/home/someone"


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO is not installed")
@pytest.mark.parametrize("allowed", ["", "1"])
def test_openvino_sends_no_telemetry_unless_allowed(allowed: str) -> None:
    """A notebook tour's: each Stylizer on OpenVINO started a process that posted a usage event to Google
    Analytics (47 on a first start, converting), unless the user had opted out in ~/intel; with no network they
    hung. Before OpenVINO is imported its telemetry is refused, which its converter and NNCF read as not
    installed; ADAIN_OPENVINO_TELEMETRY=1 leaves the choice to OpenVINO's consent file."""
    import subprocess

    code = ("from adain.precision import before_openvino; before_openvino()\n"
            "import openvino.tools.ovc.telemetry_utils as ovc\n"
            "print(ovc.tm.__name__)\n")
    env = {**os.environ, "ADAIN_OPENVINO_TELEMETRY": allowed}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["openvino_telemetry" if allowed else "openvino.tools.ovc.telemetry_stub"], out


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO is not installed")
def test_a_cache_entry_that_cannot_be_looked_at_is_converted_again(tmp_path: Path) -> None:
    """A filesystem tour's: a cache another user wrote (its folders 0700) raised PermissionError from the look at
    its graph, outside the guard, and auto dropped OpenVINO for eager torch (about half the speed) saying so at
    INFO. Looking at an entry that cannot be looked at (here a name too long for the file system, which pathlib
    raises for as it does for a folder not ours) is a miss: converted again, and not cached."""
    import openvino as ov

    from adain.backends import _cached_model, _save_openvino

    folder = tmp_path / ("x" * 300)  # ENAMETOOLONG: an OSError pathlib does not take for "no such file"
    with pytest.raises(OSError):
        (folder / "model.xml").is_file()
    assert _cached_model(ov.Core(), folder / "model.xml") is None
    x = ov.opset13.parameter([1, 3], name="x")
    model = ov.Model([ov.opset13.relu(x)], [x], "m")  # (a graph to save)
    assert _save_openvino(ov, model, folder) is False


@pytest.mark.parametrize("backend", ["torch", *RUNTIMES])
def test_a_render_whose_callers_went_away_stops_part_way(backend: str, decoder_path: Path) -> None:
    """A render stops with StoppedError once its thread's test says so (adain.stopping: the server's batch whose
    callers all left), within about one layer: OpenVINO inside a fixed-shape graph's call (this size's second
    render), ONNX Runtime's call terminated, eager torch between two layers (the last two stopped only between
    the encoder and the decoder: half a render late); nothing is left half-done: the next render (its test saying
    no) gives the picture it gave before."""
    from adain import stopping
    from adain.errors import StoppedError
    from adain.job import Job

    st = Stylizer(decoder_path, device="cpu", precision="fp32", backend=backend)
    job = st.prepare(Job(content=synth_image(256, 160, seed=4), styles=[STYLE]))  # (an encoder call over POLL_MS)
    want = pixels(st.render([job])[0])
    asked: list[float] = []
    with stopping.stop_when(lambda: not asked.append(time.monotonic())):  # (True: stop at once)
        with pytest.raises(StoppedError, match="cancelled") as stopped:
            st.render([job])
    frames = [f.f_code.co_name for f, _ in traceback.walk_tb(stopped.value.__traceback__)]
    inside = {"openvino": "_infer", "onnxruntime": "_run_stoppable", "torch": "between_layers"}[backend]
    assert inside in frames and len(asked) == 1, frames  # stopped in the encoder's call, at its first look
    with stopping.stop_when(lambda: False):
        assert np.array_equal(pixels(st.render([job])[0]), want)
    if backend == "torch":  # the decoder's layers look too: a test that turns after the encoder's 9 and the step's
        assert "activations" in frames, frames  # (the encoder's own loop, above)
        looks: list[int] = []
        with stopping.stop_when(lambda: not looks.append(1) and len(looks) > 10):
            with pytest.raises(StoppedError):
                st.render([job])
        assert len(looks) == 11  # (the encoder's 9 layers, the Stylizer's look between, the decoder's first)


# (the encoder's size test, as the exporters see it; torch.jit's deprecation)
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_a_trace_under_a_stop_test_never_sees_it(decoder_path: Path) -> None:
    """The eager network's looks at the stop test are not traced: an exporter's trace (TorchScript, as OpenVINO's
    and ONNX's converters here take it) or torch.compile's, made where a thread's test says stop, neither raises
    nor holds it."""
    from adain import stopping
    from adain.decoder import load_decoder
    from adain.encoder import Encoder

    decoder, _ = load_decoder(decoder_path)
    encoder = Encoder()
    with stopping.stop_when(lambda: True), torch.no_grad():
        traced = torch.jit.trace(decoder, (torch.rand(1, 512, 4, 4),), check_trace=False)
        _ = torch.jit.trace(lambda x: encoder(x).relu4_1, (torch.rand(1, 3, 32, 32),), check_trace=False)
        y = traced(torch.rand(1, 512, 4, 4))  # the graph runs under the test: it holds no look at it
        # torch.compile (--backend compiled): one graph, no break at each look (CUDA graphs want one)
        z = torch.compile(decoder, backend="eager", fullgraph=True)(torch.rand(1, 512, 4, 4))
    assert y.shape == z.shape == (1, 3, 32, 32)


JEMALLOC = next(iter(sorted(Path("/usr/lib").glob("*/libjemalloc.so.2"))), None)  # Debian's libjemalloc2


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO is not installed")
def test_a_preloaded_malloc_skips_openvino_and_says_why(decoder_path: Path, monkeypatch, caplog) -> None:
    """Under a preloaded jemalloc or tcmalloc OpenVINO aborted the process as it compiled ('free(): invalid
    pointer', the server's one line, a restart loop). Now auto runs torch and warns why; openvino asked for by
    name, and int8, are refused naming the preload. (Here the variable alone: this process preloaded nothing.)"""
    from adain import int8
    from adain.precision import preloaded_malloc

    monkeypatch.setenv("LD_PRELOAD", "/opt/lib/libfast.so")
    assert preloaded_malloc() == ""  # a preload that is no malloc
    jemalloc = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
    monkeypatch.setenv("LD_PRELOAD", f"/opt/lib/libfast.so:{jemalloc}")
    assert preloaded_malloc() == jemalloc
    with caplog.at_level(logging.WARNING, logger="adain.backends"):
        st = Stylizer(decoder_path, device="cpu", backend="auto", precision="fp32")
    assert st.info["backend"] == "torch"
    assert f"openvino not usable (RuntimeError: OpenVINO aborts its process under a preloaded malloc ({jemalloc}" in (
        caplog.text), caplog.text
    with pytest.raises(RuntimeError, match=r"backend openvino is not usable here \(RuntimeError: OpenVINO aborts its "
                                           r"process under a preloaded malloc .*without that LD_PRELOAD"):
        Stylizer(decoder_path, device="cpu", backend="openvino", precision="fp32")
    assert int8.available().startswith(f"OpenVINO aborts its process under a preloaded malloc ({jemalloc}: it crashes")
    monkeypatch.setenv("LD_PRELOAD", "libtcmalloc_minimal.so.4")
    assert preloaded_malloc() == "libtcmalloc_minimal.so.4"


@pytest.mark.skipif(JEMALLOC is None, reason="jemalloc is not installed (Debian's libjemalloc2; scripts/setup.sh)")
def test_a_server_under_jemalloc_serves(decoder_path: Path) -> None:
    """The real preload: the server starts, says why it runs torch, and serves (it aborted before)."""
    from adain.client import StyleTransferClient
    from helpers import NO_REFINE, ServerProcess

    srv = ServerProcess(decoder_path, *NO_REFINE, "--log-level", "INFO", env={"LD_PRELOAD": str(JEMALLOC)})
    try:
        srv.wait_serving()
        with StyleTransferClient(srv.target, timeout=60) as client:
            assert client.server_info()["backend"] == "torch"
            got = client.stylize(encoded(synth_image(40, 32, seed=3)), encoded(synth_image(32, 32, seed=4)))
            assert (got.width, got.height) == (40, 32)
    finally:
        code = srv.terminate()
    log = "".join(srv.stderr_lines)
    assert code == 0, log
    assert f"openvino not usable (RuntimeError: OpenVINO aborts its process under a preloaded malloc ({JEMALLOC}" in log
