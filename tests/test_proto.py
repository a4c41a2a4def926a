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
        assert fresh == (REPO / "adain" / "v1" / name).read_bytes(), (
            f"adain/v1/{name} is stale: run `sh proto/generate.sh` (grpcio-tools==1.85.1)")


WIRE = REPO / "proto" / "wire-v1.txt"  # every name, number, type and presence adain.v1 has had: clients rely on them


def wire_lines() -> list[str]:
    """The contract as generated clients see it, a line per field, enum value and method. A field's number and
    type are its wire; its name, JSON; its presence (proto3 optional) and oneof, the shape of generated code
    (Go: a field made optional became a pointer, and clients built on the old type stopped compiling)."""
    lines: list[str] = []

    def message(m: descriptor.Descriptor) -> None:
        for f in m.fields:
            kind = f.message_type.full_name if f.message_type else f.enum_type.full_name if f.enum_type else next(
                k[5:].lower() for k, v in vars(descriptor.FieldDescriptor).items() if k[:5] == "TYPE_" and v == f.type)
            repeated = getattr(f, "is_repeated", None)  # (newer protobuf; label elsewhere)
            repeated = f.label == f.LABEL_REPEATED if repeated is None else repeated
            lines.append(f"field {m.full_name} {f.number} {f.name} {kind} repeated={repeated} "
                         f"presence={f.has_presence} oneof={f.containing_oneof.name if f.containing_oneof else ''}")
        for nested in m.nested_types:
            message(nested)
        for e in m.enum_types:
            enum(e)

    def enum(e: descriptor.EnumDescriptor) -> None:
        lines.extend(f"enum {e.full_name} {v.number} {v.name}" for v in e.values)

    for m in pb.DESCRIPTOR.message_types_by_name.values():
        message(m)
    for e in pb.DESCRIPTOR.enum_types_by_name.values():
        enum(e)
    for s in pb.DESCRIPTOR.services_by_name.values():
        lines.extend(f"rpc {s.full_name}.{r.name} {r.input_type.full_name} -> {r.output_type.full_name} "
                     f"client_streaming={r.client_streaming} server_streaming={r.server_streaming}"
                     for r in s.methods)
    return sorted(lines)


def test_nothing_a_client_relies_on_changed() -> None:
    """No field, enum value or method of adain.v1 is taken away, renumbered, retyped or reshaped: other services
    generate clients from the proto. A new one is recorded in proto/wire-v1.txt, the list of what was promised."""
    promised = WIRE.read_text().splitlines()
    now = wire_lines()
    broken = sorted(set(promised) - set(now))
    assert not broken, ("these break existing clients (add new fields instead; a line of your own that no release "
                        f"has carried yet may be deleted from proto/{WIRE.name} by hand):\n" + "\n".join(broken))
    new = sorted(set(now) - set(promised))
    assert not new, (f"new in the contract: record it with `.venv/bin/python tests/test_proto.py` (it writes "
                     f"{WIRE.name}):\n" + "\n".join(new))


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


if __name__ == "__main__":  # record the contract's additions (never to hide a removal: the test above names those)
    WIRE.write_text("\n".join(sorted(set(wire_lines()) | set(WIRE.read_text().splitlines() if WIRE.exists() else ())))
                    + "\n")
