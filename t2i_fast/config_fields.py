"""Config dataclass fields by their declared types: command-line text -> a value of the field's
type (`parse`), and the type check every config's validation runs (`check_types`). Ranges and
choices are not checked here: each config's validate() owns them.

    parse(Config, "mask_compat", "false")                            # False
    parse(Config, "schedule", '[["sentence", true, 1], ["word", true, 4]]')
    parse(TrainConfig, "betas", "0.5,0.999")                         # (0.5, 0.999)

Text forms: booleans true/false/1/0 (any case, nothing else); integers refuse 2.5; Optional
fields take 'none'; tuples take comma-separated items or a JSON list; tuples of records (stages,
matching terms) a JSON list of lists (or of objects with the record's field names).
"""
import functools
import json
import re
import typing

from t2i_fast.errors import ConfigError

_BOOL_TEXT = {"true": True, "1": True, "false": False, "0": False}


@functools.lru_cache(maxsize=None)
def field_types(cls):
    """{field name: declared type} of a dataclass or a typed NamedTuple."""
    return typing.get_type_hints(cls)


def _optional(tp):
    """The X of Optional[X], else None."""
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _record(tp):
    return isinstance(tp, type) and issubclass(tp, tuple) and hasattr(tp, "_fields")


def describe(tp):
    """`tp` in words, for error messages."""
    inner = _optional(tp)
    if inner is not None:
        return f"{describe(inner)} or none"
    names = {bool: "true/false/1/0", int: "an integer", float: "a number", str: "a string",
             dict: "a JSON object"}
    if tp in names:
        return names[tp]
    if _record(tp):
        hints = field_types(tp)
        return f"{tp.__name__} [{', '.join(f'{k} ({describe(hints[k])})' for k in tp._fields)}]"
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            form = "a JSON list of" if _record(args[0]) else "comma-separated items, each"
            return f"{form} {describe(args[0])}"
        return f"{len(args)} comma-separated items ({', '.join(describe(a) for a in args)})"
    return getattr(tp, "__name__", str(tp))


def _from_text(tp, text):
    """A value of type `tp` from command-line text; ValueError when it is not one."""
    inner = _optional(tp)
    if inner is not None:
        return None if text.strip().lower() in ("none", "null") else _from_text(inner, text)
    if tp is bool:
        key = text.strip().lower()
        if key not in _BOOL_TEXT:
            raise ValueError(text)
        return _BOOL_TEXT[key]
    if tp is int:
        return int(text.strip())
    if tp is float:
        return float(text.strip())
    if tp is str:
        return text
    if tp is dict:
        return _coerce(tp, json.loads(text))
    if typing.get_origin(tp) is tuple or _record(tp):
        stripped = text.strip()
        if stripped.startswith("["):
            return _coerce(tp, json.loads(stripped))
        if _record(tp):
            raise ValueError(text)
        items = [s.strip() for s in stripped.split(",")] if stripped else []
        return _coerce(tp, items)
    raise TypeError(f"no text form for fields of type {tp}")


def _coerce(tp, value):
    """`value` (from JSON, or text items) as type `tp`; ValueError when it is not one."""
    if isinstance(value, str) and tp is not str and _optional(tp) is None:
        return _from_text(tp, value)
    inner = _optional(tp)
    if inner is not None:
        return None if value is None else _coerce(inner, value)
    if _record(tp):
        hints = field_types(tp)
        if isinstance(value, (list, tuple)) and 1 <= len(value) <= len(tp._fields):
            value = dict(zip(tp._fields, value))
        if not isinstance(value, dict) or not set(value) <= set(tp._fields):
            raise ValueError(value)
        return tp(**{k: _coerce(hints[k], v) for k, v in value.items()})
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(value)
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        if len(value) != len(args):
            raise ValueError(value)
        return tuple(_coerce(a, v) for a, v in zip(args, value))
    if not matches(tp, value):
        raise ValueError(value)
    return float(value) if tp is float else value


def matches(tp, value):
    """Whether `value` is of the field type `tp` (an int is a number; a bool is no int)."""
    inner = _optional(tp)
    if inner is not None:
        return value is None or matches(inner, value)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp in (str, dict):
        return isinstance(value, tp)
    if _record(tp):
        hints = field_types(tp)
        return isinstance(value, tp) and all(matches(hints[k], getattr(value, k))
                                             for k in tp._fields)
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(matches(args[0], v) for v in value)
        return len(value) == len(args) and all(matches(a, v) for a, v in zip(args, value))
    return isinstance(value, tp)


def parse(cls, name, text):
    """The value of field `name` of dataclass `cls` written as `text`; ConfigError naming the
    field and the expected type when it is not one."""
    tp = field_types(cls)[name]
    try:
        return _from_text(tp, text)
    except (ValueError, TypeError, json.JSONDecodeError):
        raise ConfigError(f"{name}={text!r}: expected {describe(tp)}") from None


def type_name(tp):
    """`tp` as written in the dataclass (Optional[int], Tuple[float, float], ...)."""
    if isinstance(tp, type) and typing.get_origin(tp) is None:
        return tp.__name__
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+(\w+)", r"\1", str(tp))


def check_types(obj, where):
    """ConfigError (prefixed with `where`) naming the first field of the dataclass `obj` whose
    value is not of its declared type."""
    for name, tp in field_types(type(obj)).items():
        value = getattr(obj, name)
        if not matches(tp, value):
            raise ConfigError(f"{where}: {name} must be of type {type_name(tp)}, got "
                              f"{value!r} ({type(value).__name__})")
