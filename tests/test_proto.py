"""The contract: committed stubs match the .proto, and the fields the service relies on are there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor

from adain.v1 import style_transfer_pb2 as pb

REPO = Path(__file__).resolve().parents[1]
STUBS = ("style_transfer_pb2.py", "style_transfer_pb2.pyi", "style_transfer_pb2_grpc.py")


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    """proto/generate.sh, run on a copy of proto/, writes exactly the committed stubs."""
    script = REPO / "proto" / "generate.sh"
    assert os.access(script, os.X_OK)
    shutil.copytree(REPO / "proto", tmp_path / "proto")
    subprocess.run(["sh", str(tmp_path / "proto" / "generate.sh")], check=True, timeout=120,
                   env={**os.environ, "PYTHON": sys.executable})
    for name in STUBS:
        fresh = (tmp_path / "adain" / "v1" / name).read_bytes()
        assert fresh == (REPO / "adain" / "v1" / name).read_bytes(), f"adain/v1/{name} is stale: run proto/generate.sh"


def test_service_and_messages() -> None:
    assert pb.DESCRIPTOR.package == "adain.v1"
    service = pb.DESCRIPTOR.services_by_name["StyleTransfer"]
    assert service.full_name == "adain.v1.StyleTransfer"
    methods = {m.name: (m.input_type.name, m.output_type.name) for m in service.methods}
    assert methods == {
        "Stylize": ("StylizeRequest", "StylizeResponse"),
        "RegisterStyle": ("RegisterStyleRequest", "RegisterStyleResponse"),
        "GetServerInfo": ("GetServerInfoRequest", "ServerInfo"),
        "StylizeVideo": ("VideoRequest", "VideoFrame"),
        "StylizeWithProgress": ("StylizeRequest", "StylizeEvent"),
        "ListStyles": ("ListStylesRequest", "ListStylesResponse"),
    }
    video = service.methods_by_name["StylizeVideo"]
    assert video.client_streaming and video.server_streaming
    progress = service.methods_by_name["StylizeWithProgress"]
    assert not progress.client_streaming and progress.server_streaming
    req = pb.StylizeRequest.DESCRIPTOR.fields_by_name
    assert req["alpha"].has_presence and req["alpha"].type == descriptor.FieldDescriptor.TYPE_FLOAT
    assert req["styles"].message_type.name == "Style"
    for name in ("content", "mask", "content_size", "style_size", "format", "quality", "preserve_color"):
        assert name in req
    # refine_steps is signed, so that a negative value reaches the server's check and its precise error.
    assert req["refine_steps"].type == descriptor.FieldDescriptor.TYPE_INT32
    for name in ("content_weight", "style_weight", "tv_weight"):
        assert req[name].has_presence
    style = pb.Style.DESCRIPTOR
    assert [f.name for f in style.oneofs_by_name["source"].fields] == ["image", "style_id"]
    assert style.fields_by_name["weight"].has_presence
    assert set(pb.PreserveColor.keys()) == {"PRESERVE_COLOR_NONE", "PRESERVE_COLOR_CORAL", "PRESERVE_COLOR_LUMINANCE"}
    assert set(pb.ImageFormat.keys()) == {"IMAGE_FORMAT_PNG", "IMAGE_FORMAT_JPEG", "IMAGE_FORMAT_WEBP"}
    reply = pb.StylizeResponse.DESCRIPTOR.fields_by_name
    assert {"image", "width", "height", "format", "timings", "request_id"} <= set(reply)
    assert {"queue_ms", "inference_ms"} <= set(pb.Timings.DESCRIPTOR.fields_by_name)


def test_alpha_presence_distinguishes_zero() -> None:
    unset = pb.StylizeRequest()
    zero = pb.StylizeRequest(alpha=0.0)
    assert not unset.HasField("alpha") and zero.HasField("alpha")
    assert pb.StylizeRequest.FromString(zero.SerializeToString()).HasField("alpha")
