"""User-data processing as cloud-init does it: jinja rendering, payload types, write_files, commands.

Pure functions (no file system), so they are unit-tested directly. Behaviour follows cloud-init's
`handlers/jinja_template.py` and `templater.py`: the `## template: jinja` first line is dropped, instance
data keys get `_` aliases for jinja operators (`local-hostname` -> `local_hostname`), `v1` keys are also
top-level, and a missing variable renders as `CI_MISSING_JINJA_VAR/<name>`.
"""

from __future__ import annotations

import base64
import copy
import gzip
import re
import shlex
from dataclasses import dataclass
from typing import Any

import jinja2
import yaml
from jinja2.lexer import operator_re

MISSING_JINJA_PREFIX = "CI_MISSING_JINJA_VAR/"
_JINJA_HEADER = re.compile(r"##\s*template:\s*jinja\s*$", re.IGNORECASE)


class UserDataError(Exception):
    pass


class _MissingVariable(jinja2.Undefined):
    """cloud-init's UndefinedJinjaVariable: renders a marker instead of failing."""

    def __str__(self) -> str:
        return f"{MISSING_JINJA_PREFIX}{self._undefined_name}"

    def __sub__(self, other: object) -> Any:
        # `{{ ds.meta_data.local-hostname }}` parses as a subtraction; cloud-init turns that into this hint.
        other_name = str(other).replace(MISSING_JINJA_PREFIX, "")
        raise TypeError(
            f'Undefined jinja variable: "{self._undefined_name}-{other_name}". Jinja tried subtraction. '
            f'Perhaps you meant "{self._undefined_name}_{other_name}"?'
        )


def decode_raw(raw: bytes) -> str:
    """Seed files may be gzip-compressed (NoCloud accepts that); otherwise UTF-8 text."""
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8")


def is_jinja(text: str) -> bool:
    return bool(_JINJA_HEADER.match(text.split("\n", 1)[0]))


def jinja_variables(data: Any) -> Any:
    """cloud-init's convert_jinja_instance_data with key aliases."""
    if not isinstance(data, dict):
        return data
    result: dict[str, Any] = {}
    for key, value in sorted(data.items(), key=lambda kv: str(kv[0])):
        key = str(key)
        result[key] = jinja_variables(value)
        if isinstance(value, dict) and re.match(r"v\d+$", key):
            for subkey, subvalue in result[key].items():
                result[subkey] = copy.deepcopy(subvalue)
        alias = re.sub(operator_re, "_", key)
        if alias != key:
            result[alias] = copy.deepcopy(result[key])
    return result


def render(text: str, instance_data: dict[str, Any]) -> str:
    """Render a `## template: jinja` payload; returns the content without the header line."""
    body = text.split("\n", 1)[1] if "\n" in text else ""
    try:
        template = jinja2.Template(
            body, undefined=_MissingVariable, trim_blocks=True, extensions=["jinja2.ext.do"]
        )
        return template.render(**jinja_variables(instance_data))
    except (TypeError, jinja2.TemplateError) as e:
        raise UserDataError(f"failed to render jinja user-data: {e}") from None


def missing_variables(rendered: str) -> list[str]:
    return [m[len(MISSING_JINJA_PREFIX) :] for m in re.findall(rf"{MISSING_JINJA_PREFIX}\S+", rendered)]


@dataclass(frozen=True)
class Payload:
    kind: str  # "cloud-config", "script" or "empty"
    config: dict[str, Any]
    script: str = ""


def parse_payload(text: str) -> Payload:
    first = text.lstrip().split("\n", 1)[0].strip() if text.strip() else ""
    if not first:
        return Payload("empty", {})
    if first.startswith("#cloud-config"):
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UserDataError(f"user-data is not valid YAML: {e}") from None
        if config is None:
            config = {}
        if not isinstance(config, dict):
            raise UserDataError("#cloud-config user-data must be a mapping")
        return Payload("cloud-config", config)
    if first.startswith("#!"):
        return Payload("script", {}, text)
    raise UserDataError(
        f"unsupported user-data type (first line {first[:40]!r}); the lab handles #cloud-config and #!"
    )


@dataclass(frozen=True)
class WriteFile:
    path: str
    content: bytes
    permissions: int = 0o644
    append: bool = False
    defer: bool = False


_B64 = {"b64", "base64"}
_GZ = {"gz", "gzip"}
_GZ_B64 = {"gz+base64", "gzip+base64", "gz+b64", "gzip+b64"}


def write_files(config: dict[str, Any]) -> list[WriteFile]:
    items = config.get("write_files") or []
    if not isinstance(items, list):
        raise UserDataError("write_files must be a list")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not item.get("path"):
            raise UserDataError(f"write_files[{i}] needs a path")
        if item.get("source"):
            raise UserDataError(f"write_files[{i}] ({item['path']}): 'source' is not supported in the lab")
        out.append(
            WriteFile(
                path=str(item["path"]),
                content=_decode_content(item.get("content", ""), str(item.get("encoding") or "").lower(), i),
                permissions=_permissions(item.get("permissions"), i),
                append=bool(item.get("append", False)),
                defer=bool(item.get("defer", False)),
            )
        )
    return out


def commands(config: dict[str, Any], key: str) -> list[str]:
    """`runcmd`/`bootcmd` items as shell lines (argv lists are quoted and joined, as cloud-init does)."""
    items = config.get(key) or []
    if not isinstance(items, list):
        raise UserDataError(f"{key} must be a list")
    out = []
    for item in items:
        if isinstance(item, list):
            out.append(shlex.join(str(a) for a in item))
        elif item is not None:
            out.append(str(item))
    return out


def _decode_content(content: Any, encoding: str, index: int) -> bytes:
    raw = content if isinstance(content, bytes) else str(content if content is not None else "").encode()
    try:
        if encoding in _B64:
            return base64.b64decode(raw)
        if encoding in _GZ_B64:
            return gzip.decompress(base64.b64decode(raw))
        if encoding in _GZ:
            return gzip.decompress(raw)
    except (ValueError, OSError, EOFError) as e:
        raise UserDataError(f"write_files[{index}]: cannot decode {encoding} content: {e}") from None
    if encoding not in ("", "text/plain"):
        raise UserDataError(f"write_files[{index}]: unknown encoding {encoding!r}")
    return raw


def _permissions(value: Any, index: int) -> int:
    if value is None or value == "":
        return 0o644
    if isinstance(value, int):
        return value  # YAML 1.1 already read an unquoted 0640 as octal
    try:
        return int(str(value), 8)
    except ValueError:
        raise UserDataError(f"write_files[{index}]: bad permissions {value!r}") from None
