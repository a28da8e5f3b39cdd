"""cloud-init stand-in, pure parts: jinja with instance data, payload types, write_files, commands."""

from __future__ import annotations

import base64
import gzip

import pytest
from lab.standins import userdata
from lab.standins.userdata import UserDataError

META = {"instance-id": "i-1", "local-hostname": "node-a", "provider-id": "ns/bmh-1", "uuid": "u-1"}
DATA = {"ds": {"meta_data": META}, "v1": {"instance_id": "i-1", "cloud_name": "nocloud"}}


def test_jinja_header_is_detected_only_on_the_first_line() -> None:
    assert userdata.is_jinja("## template: jinja\n#cloud-config\n")
    assert userdata.is_jinja("##template:JINJA\n#cloud-config\n")
    assert not userdata.is_jinja("#cloud-config\n## template: jinja\n")


def test_render_drops_header_and_offers_underscore_aliases() -> None:
    text = (
        "## template: jinja\n#cloud-config\n"
        "a: {{ ds.meta_data.local_hostname }}\n"
        "b: {{ ds.meta_data['local-hostname'] }}\n"
        "c: metal3://{{ ds.meta_data.provider_id }}\n"
        "d: {{ v1.instance_id }} {{ instance_id }} {{ cloud_name }}\n"
    )
    assert userdata.render(text, DATA) == (
        "#cloud-config\na: node-a\nb: node-a\nc: metal3://ns/bmh-1\nd: i-1 i-1 nocloud"
    )


def test_missing_variable_renders_cloud_init_marker() -> None:
    rendered = userdata.render("## template: jinja\nname: {{ ds.meta_data.nope }}\n", DATA)
    assert rendered == "name: CI_MISSING_JINJA_VAR/nope"
    assert userdata.missing_variables(rendered) == ["nope"]


def test_dash_in_variable_name_gives_cloud_init_hint() -> None:
    with pytest.raises(UserDataError, match='Perhaps you meant "local_hostname"'):
        userdata.render("## template: jinja\n{{ ds.meta_data.local-hostname }}\n", DATA)


def test_jinja_variables_alias_nested_keys_and_keep_originals() -> None:
    out = userdata.jinja_variables({"ds": {"meta_data": {"a-b": {"c.d": 1}}}})
    assert out["ds"]["meta_data"]["a-b"] == {"c.d": 1, "c_d": 1}
    assert out["ds"]["meta_data"]["a_b"]["c_d"] == 1


def test_payload_types() -> None:
    assert userdata.parse_payload("#cloud-config\nruncmd: [a]\n").config == {"runcmd": ["a"]}
    assert userdata.parse_payload("#cloud-config\n").config == {}
    script = userdata.parse_payload("#!/bin/sh\necho hi\n")
    assert script.kind == "script"
    assert script.script.endswith("echo hi\n")
    assert userdata.parse_payload("  \n").kind == "empty"
    with pytest.raises(UserDataError, match="unsupported user-data type"):
        userdata.parse_payload("Content-Type: multipart/mixed\n")
    with pytest.raises(UserDataError, match="mapping"):
        userdata.parse_payload("#cloud-config\n- a\n")


def test_gzip_seed_is_decompressed() -> None:
    assert userdata.decode_raw(gzip.compress(b"#cloud-config\n")) == "#cloud-config\n"


def test_write_files_encodings_permissions_and_flags() -> None:
    payload = b"\x00binary\xff"
    cfg = {
        "write_files": [
            {"path": "/a", "content": "text\n", "permissions": "0640", "owner": "root:root"},
            {"path": "/b", "content": base64.b64encode(payload).decode(), "encoding": "b64"},
            {
                "path": "/c",
                "content": base64.b64encode(gzip.compress(payload)).decode(),
                "encoding": "gz+b64",
            },
            {"path": "/d", "content": gzip.compress(payload), "encoding": "gzip"},
            {"path": "/e", "content": "more", "append": True, "defer": True, "permissions": 0o600},
            {"path": "/f"},
        ]
    }
    files = userdata.write_files(cfg)
    assert [(f.path, f.content, f.permissions) for f in files] == [
        ("/a", b"text\n", 0o640),
        ("/b", payload, 0o644),
        ("/c", payload, 0o644),
        ("/d", payload, 0o644),
        ("/e", b"more", 0o600),
        ("/f", b"", 0o644),
    ]
    assert files[4].append and files[4].defer
    assert not files[0].append and not files[0].defer


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"content": "x"}, "needs a path"),
        ({"path": "/x", "content": "abc", "encoding": "b64"}, "cannot decode"),
        ({"path": "/x", "content": "x", "encoding": "rot13"}, "unknown encoding"),
        ({"path": "/x", "permissions": "rw-r--r--"}, "bad permissions"),
        ({"path": "/x", "source": {"uri": "http://x"}}, "not supported"),
    ],
)
def test_write_files_errors(item: dict, message: str) -> None:
    with pytest.raises(UserDataError, match=message):
        userdata.write_files({"write_files": [item]})


def test_commands_quote_argv_lists_like_cloud_init() -> None:
    cfg = {"runcmd": ["echo 'a b' > /x", ["touch", "/path with space"], None]}
    assert userdata.commands(cfg, "runcmd") == ["echo 'a b' > /x", "touch '/path with space'"]
    assert userdata.commands({}, "bootcmd") == []
