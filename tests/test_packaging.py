"""The base install is the thin client: a fresh virtual environment without torch can use it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from helpers import ServerProcess
from synth import make_image, make_video

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(os.environ.get("ADAIN_SKIP_VENV_TEST") == "1", reason="ADAIN_SKIP_VENV_TEST=1 (offline)")
@pytest.mark.timeout(900)  # its steps' own limits (pip 600 s, mypy 300 s) pass the suite's 300 s
def test_base_install_imports_the_client_without_torch(tmp_path: Path, server: ServerProcess) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)  # installed into by this pip (--python): ensurepip took 6 s of 20
    py = env_dir / "bin" / "python"
    # from a copy: pip builds in the tree it is given, and the checkout's build/ kept modules deleted since (the
    # wheel, and this test, had files the source no longer has)
    source = tmp_path / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "data_local", "*.egg-info", "__pycache__", "runs", "out", ".gpu*",
        "node_modules", ".pytest_cache", ".ruff_cache"))  # (what .gitignore leaves out)
    pip = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--disable-pip-version-check",
           str(source)]
    proc = subprocess.run(pip, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stderr[-2000:] + "\n(it needs a package index for setuptools, the build's "
                                  "own requirement: ADAIN_SKIP_VENV_TEST=1 skips this test offline)")
    check = (
        "import importlib.util, sys\n"
        "assert importlib.util.find_spec('torch') is None, 'torch is installed'\n"
        "import adain, adain.client, adain.client.cli\n"
        "from adain.client import StyleTransferClient\n"
        "import grpc_health.v1.health_pb2  # health() and --server-info's health: in the base install\n"
        "import google.rpc.error_details_pb2  # the violations: a style a replica lacks is sent again as bytes\n"
        "from importlib import resources  # precision int8 calibrates on these (adain.int8): in the wheel\n"
        "names = sorted(e.name for e in resources.files('adain').joinpath('assets', 'calibration').iterdir())\n"
        "assert len(names) == 7 and names[0] == 'content-astronaut.jpg', names\n"
        "from importlib import metadata  # the licence and the assets' terms travel with the package\n"
        "assert any(str(f).endswith('LICENSE') for f in metadata.files('adain')), 'no LICENSE'\n"
        "assert resources.files('adain').joinpath('assets', 'NOTICE.md').is_file(), 'no assets/NOTICE.md'\n"
        "assert adain.__version__ == metadata.version('adain') and 'Stylizer' in dir(adain)\n"
        "print('ok')\n"
    )
    out = subprocess.run([str(py), "-c", check], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    cli = subprocess.run([str(env_dir / "bin" / "adain-stylize"), "--help"], capture_output=True, text=True)
    assert cli.returncode == 0 and "--style" in cli.stdout
    # The model needs the extras: it says so instead of failing obscurely.
    model = subprocess.run(
        [str(py), "-c", "import adain; adain.Stylizer"], capture_output=True, text=True, cwd=tmp_path
    )
    assert model.returncode != 0 and "torch" in model.stderr
    # Several photos, and a clip, with the thin client alone (no numpy): the photos are stylized and the clip says
    # what to install (both ended in a numpy traceback, as did adain-server and adain-train)
    for name, seed in (("a.png", 1), ("b.png", 2), ("s.png", 3)):
        (tmp_path / name).write_bytes(make_image(48, 32, seed=seed))
    make_video(tmp_path / "clip.mp4", frames=3)
    stylize = [str(env_dir / "bin" / "adain-stylize"), "--server", server.target, "-s", "s.png"]
    run = subprocess.run([*stylize, "a.png", "b.png", "-o", "out/"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert run.returncode == 0 and sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a_stylized_s.png", "b_stylized_s.png"], run.stderr
    run = subprocess.run([*stylize, "clip.mp4", "-o", "c.mp4"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=60)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert "video needs PyAV and numpy (the 'video' extra: pip install 'adain[video]'" in run.stderr, run.stderr
    for command, extra in (("adain-server", "server"), ("adain-train", "train"), ("adain-web", "web")):
        run = subprocess.run([str(env_dir / "bin" / command)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
        assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
        assert run.stderr.startswith(f"{command}: error: ") and f"needs the '{extra}' extra (pip install " \
            f"'adain[{extra}]'; in a checkout: pip install -e '.[{extra}]')" in run.stderr, run.stderr
    # What a user's type checker reads of the installed wheel: the documented calls check, a misspelt name does not
    # (a module __getattr__ made `from adain import Stylzer` pass), the generators close in contextlib's helpers
    (tmp_path / "user.py").write_text(
        "import contextlib\n"
        "from fractions import Fraction\n"
        "from adain import Progress, Stylizer\n"
        "from adain.client import (ImageInput, Preset, StyleRef, StyleTransferClient, StylizeOptions,\n"
        "                          VideoStreamOptions)\n"
        "from adain.client.aio import AsyncStyleTransferClient\n"
        "from adain.client.video import stylize_video_file\n"
        "def run(c: StyleTransferClient, frames: list[ImageInput], **o: StylizeOptions) -> None:\n"
        "    with contextlib.closing(c.stylize_video(frames, 'id:waves')) as it:\n"
        "        for frame in it:\n"
        "            frame.to_pil().save('f.png')\n"
        "    stylize_video_file(c, 'in.gif', 'out.gif', 'id:waves')\n"
        "    c.stylize('p.jpg', ['a.jpg', ('b.jpg', 0.3), StyleRef('waves')], alpha=0.8)\n"
        "    c.stylize('p.jpg', Preset('calm-sea'))\n"
        "    c.stylize('p.jpg', 'a.jpg', alpha=Fraction(1, 2), weights=range(1, 2))  # as NumPy's\n"
        "    c.stylize('p.jpg', 42)\n"
        "async def run_async(c: AsyncStyleTransferClient, frames: list[ImageInput]) -> None:\n"
        "    async with contextlib.aclosing(c.stylize_video(frames, 'id:waves')) as it:\n"
        "        async for frame in it:\n"
        "            frame.to_pil().save('f.png')\n"
        "def steps(p: Progress, o: VideoStreamOptions) -> int:\n"
        "    return p.iteration\n"
        "def library(st: Stylizer) -> None:\n"
        "    st.stylize('photo.jpg', ['a.jpg'], alpha=0.5, on_step=lambda p: print(p.step, p.steps))\n"
        "    st.stylize('photo.jpg', ['a.jpg'], alhpa=0.5)\n"
        "from adain import Stylzer\n"
    )
    typed = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--python-executable",
                            str(py), "user.py"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    errors = [line for line in typed.stdout.splitlines() if ": error: " in line]
    assert [e.split(": error: ")[0] for e in errors] == ["user.py:16", "user.py:25", "user.py:26"], typed.stdout
    assert errors[0].startswith('user.py:16: error: Argument 2 to "stylize" of "StyleTransferClient" has incompatible '
                                'type "int"'), typed.stdout
    assert errors[1:] == [
        'user.py:25: error: Unexpected keyword argument "alhpa" for "stylize" of "Stylizer"; did you mean "alpha"?  '
        '[call-arg]',
        'user.py:26: error: Module "adain" has no attribute "Stylzer"; maybe "Stylizer"?  [attr-defined]'], typed.stdout
