"""Wire compatibility of our proto/*.proto with the descriptors that tritonclient 2.73.0 ships.

Compiles proto/grpc_service.proto (and its import model_config.proto) with grpcio-tools into a
FileDescriptorSet and compares every message (recursively), field, enum, enum value and service method
with `tritonclient.grpc.service_pb2.DESCRIPTOR` / `model_config_pb2.DESCRIPTOR`, in both directions.
Needs no server.
"""

from __future__ import annotations

import pathlib

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc
from importlib import resources
from tritonclient.grpc import model_config_pb2, service_pb2

from helpers import REPO

PROTO_DIR = REPO / "proto"
FILES = ("grpc_service.proto", "model_config.proto")


def compile_ours(tmp_path: pathlib.Path) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    out = tmp_path / "ours.pb"
    well_known = str(resources.files("grpc_tools") / "_proto")
    rc = protoc.main(
        [
            "protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            "--include_imports",
            f"--descriptor_set_out={out}",
            *FILES,
        ]
    )
    assert rc == 0, f"protoc failed on {PROTO_DIR} (rc={rc})"
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return {f.name: f for f in fds.file}


def theirs() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    files = {}
    for module in (service_pb2, model_config_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        files[proto.name] = proto
    return files


def _label(field: descriptor_pb2.FieldDescriptorProto) -> str:
    return descriptor_pb2.FieldDescriptorProto.Label.Name(field.label)


def _type(field: descriptor_pb2.FieldDescriptorProto) -> str:
    return descriptor_pb2.FieldDescriptorProto.Type.Name(field.type)


def flatten(file: descriptor_pb2.FileDescriptorProto) -> dict[str, object]:
    """Map a qualified item name to a comparable description of it."""
    items: dict[str, object] = {f"file {file.name}": {"package": file.package, "syntax": file.syntax}}

    def add_enum(prefix: str, enum: descriptor_pb2.EnumDescriptorProto) -> None:
        name = f"{prefix}.{enum.name}"
        items[f"enum {name}"] = "enum"
        for value in enum.value:
            items[f"enum value {name}.{value.name}"] = {"number": value.number}

    def add_message(prefix: str, msg: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{msg.name}"
        items[f"message {name}"] = {"map_entry": msg.options.map_entry}
        for oneof_index, oneof in enumerate(msg.oneof_decl):
            members = sorted(f.name for f in msg.field if f.HasField("oneof_index") and f.oneof_index == oneof_index)
            items[f"oneof {name}.{oneof.name}"] = {"members": members}
        for field in msg.field:
            oneof = msg.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None
            items[f"field {name}.{field.name}"] = {
                "number": field.number,
                "type": _type(field),
                "label": _label(field),
                "type_name": field.type_name,
                "oneof": oneof,
                "proto3_optional": field.proto3_optional,
            }
        for nested in msg.nested_type:
            add_message(name, nested)
        for enum in msg.enum_type:
            add_enum(name, enum)

    root = f".{file.package}" if file.package else ""
    for msg in file.message_type:
        add_message(root, msg)
    for enum in file.enum_type:
        add_enum(root, enum)
    for service in file.service:
        sname = f"{root}.{service.name}"
        items[f"service {sname}"] = "service"
        for method in service.method:
            items[f"method {sname}/{method.name}"] = {
                "input_type": method.input_type,
                "output_type": method.output_type,
                "client_streaming": method.client_streaming,
                "server_streaming": method.server_streaming,
            }
    return items


def differences(ours: dict[str, object], reference: dict[str, object]) -> list[str]:
    diffs = []
    for key in sorted(reference.keys() - ours.keys()):
        diffs.append(f"missing in proto/: {key} = {reference[key]}")
    for key in sorted(ours.keys() - reference.keys()):
        diffs.append(f"extra in proto/: {key} = {ours[key]}")
    for key in sorted(ours.keys() & reference.keys()):
        if ours[key] != reference[key]:
            diffs.append(f"differs: {key}: ours {ours[key]} != tritonclient {reference[key]}")
    return diffs


@pytest.mark.parametrize("file_name", FILES)
def test_proto_matches_tritonclient(tmp_path: pathlib.Path, file_name: str) -> None:
    ours = compile_ours(tmp_path)
    reference = theirs()
    assert file_name in ours, f"{file_name} not produced by protoc (got {sorted(ours)})"
    diffs = differences(flatten(ours[file_name]), flatten(reference[file_name]))
    for line in diffs:
        print(line)
    assert diffs == [], f"{len(diffs)} differences between proto/{file_name} and tritonclient:\n" + "\n".join(diffs)


def test_grpc_service_imports_only_model_config(tmp_path: pathlib.Path) -> None:
    ours = compile_ours(tmp_path)
    assert list(ours["grpc_service.proto"].dependency) == list(theirs()["grpc_service.proto"].dependency)


def test_comparison_detects_a_changed_field(tmp_path: pathlib.Path) -> None:
    """Guard against a comparison that can never fail: a renumbered field must show up."""
    ours = compile_ours(tmp_path)["grpc_service.proto"]
    broken = descriptor_pb2.FileDescriptorProto()
    broken.CopyFrom(ours)
    msg = next(m for m in broken.message_type if m.name == "ModelInferRequest")
    msg.field[0].number += 100
    diffs = differences(flatten(broken), flatten(theirs()["grpc_service.proto"]))
    assert any("ModelInferRequest.model_name" in d for d in diffs), diffs
