"""Generate gembatch_async/_schema_tables.py from the installed google-genai SDK.

    python tools/gen_schema.py            # rewrite the tables
    python tools/gen_schema.py --check    # exit 1 if the committed tables differ

One source: the SDK's own request path for the Gemini Developer API. The SDK
turns its pydantic types (``types.py``) into REST JSON with generated
converters (``models.py``: ``_GenerateContentConfig_to_mldev``, ``_Part_to_mldev``,
...). For a type with a converter, the converter is read (its AST, not run):
each ``if getv(from_object, ['py_name']) is not None:`` block either writes the
field under its REST name (``setv(to_object, ['restName'], ...)``), lifts it
into the enclosing request (``setv(parent_object, [...])``) or refuses it as
Vertex-only (``raise ValueError``). A type without a converter is sent as its
pydantic model dumps, so its fields are taken as they are. Field types come
from the pydantic annotations, or from the converter where the annotation is
an SDK convenience (``system_instruction`` takes a str, a Part or a Content;
the REST field is a Content).

The request roots are the two the Batch API takes per line:
GenerateContentRequest (``_GenerateContentParameters_to_mldev`` plus what the
config converter lifts out of ``generationConfig``) and EmbedContentRequest
(``content``, ``model`` and what ``_EmbedContentConfig_to_mldev`` sets on each
request).
"""

from __future__ import annotations

import argparse
import ast
import datetime
import enum
import inspect
import pathlib
import pprint
import shutil
import subprocess
import sys
import tempfile
import types as pytypes
import typing
from typing import Any

import pydantic
from google.genai import models, types
from google.genai import version as genai_version

TARGET = pathlib.Path(__file__).resolve().parent.parent / "gembatch_async" / "_schema_tables.py"

FieldSpec = tuple[str, bool]  # (type code, repeated)
# Transformers the converters call, and the REST type each one produces.
_TRANSFORMERS = {
    "t_content": ("Content", False),
    "t_contents": ("Content", True),
    "t_schema": ("Schema", False),
    "t_speech_config": ("SpeechConfig", False),
    "t_json_schema": ("value", False),
    "t_cached_content_name": ("string", False),
}
_SCALARS: dict[Any, str] = {
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    bytes: "bytes",
    datetime.datetime: "string",  # a Timestamp: RFC 3339 text in JSON
}


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


class Builder:
    """Collects messages and enums reachable from the request roots."""

    def __init__(self) -> None:
        self.messages: dict[str, dict[str, FieldSpec]] = {}
        self.enums: dict[str, tuple[str, ...]] = {}
        self.notes: list[str] = []

    # -- pydantic annotations ------------------------------------------------------------
    def annotation(self, owner: str, field: str, ann: Any) -> FieldSpec | None:
        origin, args = typing.get_origin(ann), typing.get_args(ann)
        if origin is typing.Annotated:
            return self.annotation(owner, field, args[0])
        if origin in (typing.Union, pytypes.UnionType):
            members = [a for a in args if a is not type(None)]
            if len(members) == 1:
                return self.annotation(owner, field, members[0])
            self.notes.append(f"{owner}.{field}: union {ann!r}, taken as any JSON value")
            return ("value", False)
        if origin is list:
            inner = self.annotation(owner, field, args[0]) if args else ("value", False)
            return (inner[0], True) if inner else None
        if origin is dict or ann is dict:
            if len(args) == 2 and _is_model(args[1]):
                return (f"map:{self.message(args[1])}", False)
            return ("struct", False)
        if ann is Any:
            return ("value", False)
        if ann in _SCALARS:
            return (_SCALARS[ann], False)
        if isinstance(ann, type) and issubclass(ann, enum.Enum):
            self.enums[ann.__name__] = tuple(str(m.value) for m in ann)
            return (f"enum:{ann.__name__}", False)
        if _is_model(ann):
            return (self.message(ann), False)
        if ann is list:
            return ("value", True)
        self.notes.append(f"{owner}.{field}: {ann!r} not understood, taken as any JSON value")
        return ("value", False)

    # -- messages --------------------------------------------------------------------------
    def message(self, model: type[pydantic.BaseModel]) -> str:
        name = model.__name__
        if name in self.messages:
            return name
        self.messages[name] = {}  # placeholder: recursion (Schema.items) stops here
        converter = getattr(models, f"_{name}_to_mldev", None)
        if converter is None:
            fields = self._plain_fields(model)
        else:
            fields, lifted = self._converted_fields(model, converter)
            if lifted:
                raise SystemExit(f"{name}: unexpected fields lifted to the parent: {lifted}")
        self.messages[name] = fields
        return name

    def _plain_fields(self, model: type[pydantic.BaseModel]) -> dict[str, FieldSpec]:
        fields: dict[str, FieldSpec] = {}
        for py_name, info in model.model_fields.items():
            spec = self.annotation(model.__name__, py_name, info.annotation)
            if spec is not None:
                fields[camel(py_name)] = spec
        return fields

    def _converted_fields(
        self, model: type[pydantic.BaseModel], converter: Any
    ) -> tuple[dict[str, FieldSpec], dict[str, FieldSpec]]:
        """(fields of the message, fields lifted into the parent request)."""
        own: dict[str, FieldSpec] = {}
        lifted: dict[str, FieldSpec] = {}
        for py_name, target, path, value in _converter_blocks(converter):
            if target is None:  # refused for the Gemini Developer API
                continue
            spec = self._value_spec(model, py_name, value)
            rest_name = path[-1]
            if target == "to_object" and len(path) == 1:
                own[rest_name] = spec
            elif target == "parent_object":
                lifted["/".join(path)] = spec
            else:
                self.notes.append(f"{model.__name__}.{py_name}: written to {target}{path}, skipped")
        return own, lifted

    def _value_spec(
        self, model: type[pydantic.BaseModel], py_name: str, value: ast.expr
    ) -> FieldSpec:
        repeated = isinstance(value, ast.ListComp)
        for node in ast.walk(value):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id.endswith("_to_mldev"):
                nested = getattr(types, func.id[1 : -len("_to_mldev")])
                return (self.message(nested), repeated)
            if isinstance(func, ast.Attribute) and func.attr in _TRANSFORMERS:
                code, many = _TRANSFORMERS[func.attr]
                if code[0].isupper():
                    code = self.message(getattr(types, code))
                return (code, repeated or many)
        spec = self.annotation(model.__name__, py_name, model.model_fields[py_name].annotation)
        assert spec is not None
        return spec

    # -- the two request roots ---------------------------------------------------------------
    def roots(self) -> None:
        config, lifted = self._converted_fields(
            types.GenerateContentConfig, models._GenerateContentConfig_to_mldev
        )
        self.messages["GenerationConfig"] = config
        request: dict[str, FieldSpec] = {
            "model": ("string", False),
            "contents": (self.message(types.Content), True),
            "generationConfig": ("GenerationConfig", False),
        }
        request.update(lifted)
        self.messages["GenerateContentRequest"] = dict(sorted(request.items()))
        _, embed_lifted = self._converted_fields(
            types.EmbedContentConfig, models._EmbedContentConfig_to_mldev
        )
        embed: dict[str, FieldSpec] = {
            "model": ("string", False),
            "content": (self.message(types.Content), False),
        }
        embed.update({key.split("/")[-1]: spec for key, spec in embed_lifted.items()})
        self.messages["EmbedContentRequest"] = dict(sorted(embed.items()))
        self.messages.pop("GenerateContentConfig", None)
        self.messages.pop("EmbedContentConfig", None)


def _is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, pydantic.BaseModel)


Block = tuple[str, "str | None", list[str], ast.expr]


def _converter_blocks(converter: Any) -> list[Block]:
    """(py_name, target or None when refused, REST path, value) per ``if getv(...)`` block."""
    tree = ast.parse(inspect.getsource(converter))
    func = tree.body[0]
    assert isinstance(func, ast.FunctionDef)
    blocks: list[Block] = []
    for stmt in func.body:
        if not isinstance(stmt, ast.If):
            continue
        py_name = _getv_name(stmt.test)
        if py_name is None:
            continue
        first = stmt.body[0]
        if isinstance(first, ast.Raise):
            blocks.append((py_name, None, [], ast.Constant(None)))
            continue
        call = first.value if isinstance(first, ast.Expr) else None
        if not (isinstance(call, ast.Call) and getattr(call.func, "id", "") == "setv"):
            continue  # a discriminator or a helper call: nothing written directly
        target = call.args[0]
        path = call.args[1]
        assert isinstance(target, ast.Name)
        assert isinstance(path, ast.List)
        keys = [str(e.value) for e in path.elts if isinstance(e, ast.Constant)]
        blocks.append((py_name, target.id, [k.replace("[]", "") for k in keys], call.args[2]))
    return blocks


def _getv_name(test: ast.expr) -> str | None:
    """'x' for ``getv(from_object, ['x']) is not None``."""
    if not (isinstance(test, ast.Compare) and isinstance(test.ops[0], ast.IsNot)):
        return None
    call = test.left
    if not (isinstance(call, ast.Call) and getattr(call.func, "id", "") == "getv"):
        return None
    path = call.args[1]
    if isinstance(path, ast.List) and len(path.elts) == 1:
        element = path.elts[0]
        if isinstance(element, ast.Constant) and isinstance(element.value, str):
            return element.value
    return None


def render(builder: Builder) -> str:
    version = genai_version.__version__
    messages = {name: builder.messages[name] for name in sorted(builder.messages)}
    enums = {name: builder.enums[name] for name in sorted(builder.enums)}
    return f'''"""The Gemini API's request schema for batch lines. GENERATED: do not edit.

Made by tools/gen_schema.py from google-genai {version}: its pydantic request
types (types.py) and its Gemini Developer API request converters (models.py,
``_*_to_mldev``), which name each field as the REST API spells it, lift some
out of ``generationConfig`` into the request, and refuse Vertex-only ones.

MESSAGES: message -> REST field name (lowerCamelCase) -> (type, repeated).
A type is a message name, an ``enum:Name`` (values in ENUMS), ``map:Message``,
or one of string, bytes, integer, number, boolean, struct (any JSON object),
value (any JSON value).
"""

SDK_VERSION = {version!r}

MESSAGES: dict[str, dict[str, tuple[str, bool]]] = {pprint.pformat(messages, width=96, sort_dicts=False)}

ENUMS: dict[str, tuple[str, ...]] = {pprint.pformat(enums, width=96, sort_dicts=False)}
'''


def formatted(text: str) -> str:
    """The module as ``ruff format`` leaves it (the repository's formatting)."""
    ruff = shutil.which("ruff") or str(pathlib.Path(sys.executable).with_name("ruff"))
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / TARGET.name
        path.write_text(text)
        subprocess.run([ruff, "format", "--quiet", "--line-length", "100", str(path)], check=True)
        return path.read_text()


def tables_of(source: str) -> dict[str, object]:
    """The values a tables module defines (SDK_VERSION, MESSAGES, ENUMS)."""
    namespace: dict[str, object] = {}
    exec(compile(source, str(TARGET), "exec"), namespace)  # our own generated module
    return {name: namespace.get(name) for name in ("SDK_VERSION", "MESSAGES", "ENUMS")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    builder = Builder()
    builder.roots()
    for note in builder.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.check:
        # The check compares the tables' values, not their text, so it needs no
        # formatter: the README's test command installs no ruff.
        if tables_of(TARGET.read_text()) != tables_of(render(builder)):
            print(f"{TARGET} is out of date: run tools/gen_schema.py", file=sys.stderr)
            return 1
        print(f"{TARGET} matches google-genai {genai_version.__version__}")
        return 0
    TARGET.write_text(formatted(render(builder)))
    print(f"wrote {TARGET} ({len(builder.messages)} messages, {len(builder.enums)} enums)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
