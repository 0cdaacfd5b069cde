"""Typed dataclass configs -> command-line options.

Each config is a ``@dataclass`` whose fields carry a docstring (a string literal
on the line after the field, as in EleutherAI/sparsify). :func:`build_parser`
turns the fields into ``--name`` options whose help text is that docstring;
nested dataclass fields are flattened (their options keep their own names, which
must be unique across the whole tree, or get the prefix ``p-`` of a nested field with
``metadata={"prefix": "p"}``). A field with ``metadata={"positional": True}`` may also be given
as a positional argument. :func:`parse_config` returns the filled-in config, and every parse
problem becomes a one-line :class:`SaescaleError`.

Supported field types: ``int``, ``float``, ``str``, ``bool`` (``--x`` / ``--no-x``),
``Literal[...]`` (choices), ``X | None``, ``tuple[int, ...]``/``list[int]``, and
nested dataclasses. A field made with :func:`saescale.configs.valid` shows its valid range in --help.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import typing
from functools import lru_cache
from typing import Any, Literal, get_args, get_origin

from saescale.configs import field_default, unwrap_optional
from saescale.errors import SaescaleError

_POS = "@positional"  # dest suffix of a field's positional argument


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Map each field of dataclass ``cls`` (and its bases) to its docstring."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _none_or(conv):
    def parse(s: str):
        return None if s.lower() in ("none", "") else conv(s)

    parse.__name__ = getattr(conv, "__name__", "value")
    return parse


def _leaf_fields(cls: type, path: tuple[str, ...] = (), prefix: str = ""):
    """Yield (path, option name, field, type, owning class) for every non-dataclass field, depth first.

    A nested field with ``metadata={"prefix": "p"}`` puts ``p-`` before the option names of its fields.
    """
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            sub = prefix + (f"{f.metadata['prefix']}-" if "prefix" in f.metadata else "")
            yield from _leaf_fields(tp, path + (f.name,), sub)
        else:
            yield path + (f.name,), prefix + f.name.replace("_", "-"), f, tp, cls


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, no usage dump
        raise SaescaleError(f"{message} (see '{self.prog} --help')")


def _value_kwargs(tp: Any, dest: str) -> dict[str, Any]:
    """argparse ``type``/``choices``/``nargs``/``metavar`` of a field type (bool: a --x / --no-x flag)."""
    base, optional = unwrap_optional(tp)
    if base is bool:
        return {"action": argparse.BooleanOptionalAction}
    if get_origin(base) is Literal:
        choices = list(get_args(base))
        kwargs = {"type": type(choices[0]), "choices": choices, "metavar": "{" + ",".join(map(str, choices)) + "}"}
    elif get_origin(base) in (tuple, list):
        elem = get_args(base)[0]
        kwargs = {"type": elem, "nargs": "+", "metavar": elem.__name__.upper()}
    elif base in (int, float, str):
        kwargs = {"type": base, "metavar": base.__name__.upper()}
    else:
        raise TypeError(f"unsupported config type {tp!r} for {dest}")
    if optional:
        kwargs["type"] = _none_or(kwargs["type"])
    return kwargs


def build_parser(cls: type, prog: str, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one ``--option`` per leaf field of ``cls``.

    A field with ``metadata={"positional": True}`` may also be given as a positional argument
    (a list field: any number of them, added to the option's values).
    """
    parser = _Parser(
        prog=prog,
        description=description or (inspect.getdoc(cls) or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    seen: dict[str, tuple[str, ...]] = {}
    groups: dict[type, Any] = {}
    for path, name, f, tp, owner in _leaf_fields(cls):
        if name in seen:
            raise TypeError(f"option --{name} defined twice: {seen[name]} and {path}")
        seen[name] = path
        if owner not in groups:
            groups[owner] = parser.add_argument_group(owner.__name__, (inspect.getdoc(owner) or "").split("\n\n")[0])
        dest, default = ".".join(path), field_default(f)
        doc = field_docs(owner).get(f.name, "")
        if "valid" in f.metadata:
            doc += f" Valid: {f.metadata['valid']}."
        kwargs = {"help": doc.replace("%", "%%"), "default": default, **_value_kwargs(tp, dest)}
        if f.metadata.get("positional"):
            groups[owner].add_argument(dest + _POS, **{**kwargs, "metavar": name.upper(), "default": argparse.SUPPRESS,
                                                        "nargs": "*" if "nargs" in kwargs else "?"})
        if default is dataclasses.MISSING:
            kwargs["default"] = argparse.SUPPRESS  # checked in parse_config (it may come as a positional)
        groups[owner].add_argument(f"--{name}", dest=dest, **kwargs)
    return parser


def _construct(cls: type, values: dict[str, Any], prefix: tuple[str, ...] = ()) -> Any:
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        path = prefix + (f.name,)
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _construct(tp, values, path)
        else:
            v = values[".".join(path)]
            if get_origin(unwrap_optional(tp)[0]) is tuple and isinstance(v, list):
                v = tuple(v)
            kwargs[f.name] = v
    return cls(**kwargs)


def parse_config(cls: type, argv: list[str], prog: str) -> Any:
    """Parse ``argv`` into an instance of dataclass ``cls`` (errors: SaescaleError)."""
    parser = build_parser(cls, prog)
    values = vars(parser.parse_intermixed_args(argv))
    for key in [k for k in values if k.endswith(_POS)]:
        pos, dest = values.pop(key), key.removesuffix(_POS)
        values[dest] = [*values.get(dest, []), *pos] if isinstance(pos, list) else pos
    missing = [f"{name.upper()} (or --{name})" if f.metadata.get("positional") else f"--{name}"
               for path, name, f, *_ in _leaf_fields(cls) if ".".join(path) not in values]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    try:
        return _construct(cls, values)
    except (TypeError, ValueError) as e:
        raise SaescaleError(f"invalid option value: {e} (see '{prog} --help')") from None
