"""Share links: every query parameter of every page goes through :func:`parse_link`, which never raises.

A bad or out-of-range value (``nan``, ``-1``, ``1``, ``0.999999``, ``1e309``, text, an unknown model,
markup) gives the default or the nearest allowed value and one notice naming what was ignored; the
notice quotes the value with Markdown's special characters escaped, so a link cannot style a page.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from prunekit.app.settings import Settings

SPARSITY_MAX = 0.99  # the sliders' range: [0, 0.99] in steps of 0.01
SPARSITY_STEP = 0.01
_SHOWN_CHARS = 40  # a notice quotes at most this much of a bad value
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:=&\"'])")


@dataclass(frozen=True)
class LinkSchema:
    """What a link may set: each name's default and, for choices, the allowed strings."""

    defaults: Mapping[str, object]
    choices: Mapping[str, Sequence[str]]


Parsed = tuple[object, str | None]  # (value to use, notice or None)


def shown(raw: str) -> str:
    """``raw`` fit to quote on a page: cut to a few dozen characters, Markdown escaped, one line."""
    more = "..." if len(raw) > _SHOWN_CHARS else ""
    return "'" + _MARKDOWN.sub(r"\\\1", " ".join(raw[:_SHOWN_CHARS].split())) + more + "'"


def _sparsity(raw: str, default: object, _choices: Sequence[str]) -> Parsed:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return default, f"Ignored sparsity={shown(raw)} from the link (not a number); using {default}."
    if math.isnan(value):
        return default, f"Ignored sparsity={shown(raw)} from the link (not a number); using {default}."
    nearest = round(round(min(max(value, 0.0), SPARSITY_MAX) / SPARSITY_STEP) * SPARSITY_STEP, 2)
    if not 0.0 <= value <= SPARSITY_MAX:  # however close (-1e-194 is still below 0)
        why = "outside [0, 0.99]"
    elif abs(value / SPARSITY_STEP - round(value / SPARSITY_STEP)) > 1e-6:  # off the grid by > 1e-6 of a step
        why = "between the slider's 0.01 steps"
    else:
        return nearest, None
    return nearest, f"Sparsity {shown(raw)} from the link is {why}; using the nearest allowed value, {nearest}."


def _flag(raw: str, default: object, _choices: Sequence[str]) -> Parsed:
    if raw in ("0", "1"):
        return raw == "1", None
    return default, f"Ignored keep={shown(raw)} from the link (use 0 or 1); using {int(bool(default))}."


def _choice(name: str) -> Callable[[str, object, Sequence[str]], Parsed]:
    def parse(raw: str, default: object, choices: Sequence[str]) -> Parsed:
        if raw in choices:
            return raw, None
        return default, f"Ignored {name}={shown(raw)} from the link (not a known {name}); using '{default}'."

    return parse


def encode_overrides(overrides: Mapping[str, float]) -> str:
    """Per-layer sparsities as a link spells them: ``layer:0.3,other.layer:0.9`` (sorted, dense ones left out)."""
    return ",".join(f"{name}:{s:g}" for name, s in sorted(overrides.items()) if s > 0)


def decode_overrides(text: str) -> dict[str, float]:
    """The inverse of :func:`encode_overrides` for a string that :func:`parse_link` has checked."""
    return {name: float(s) for name, _, s in (item.rpartition(":") for item in text.split(",") if item)}


def _overrides(raw: str, default: object, _choices: Sequence[str]) -> Parsed:
    """``layer:sparsity`` items; one that is not a layer name and an allowed sparsity is dropped, with a notice
    (whether the names are layers of the model is checked on the page, which knows the model)."""
    kept, bad = {}, []
    for item in (part for part in raw.split(",") if part):
        name, _, value = item.rpartition(":")
        sparsity, why = _sparsity(value, None, ())
        if not re.fullmatch(r"[A-Za-z_][\w.]*", name) or why or sparsity is None:
            bad.append(item)
            continue
        kept[name] = sparsity
    notice = f"Ignored {len(bad)} per-layer override(s) from the link: {shown(','.join(bad))}." if bad else None
    return encode_overrides(kept), notice


PARSERS: dict[str, Callable[[str, object, Sequence[str]], Parsed]] = {
    "sparsity": _sparsity,
    "keep": _flag,
    "overrides": _overrides,
}


def parse_link(params: Mapping[str, str], schema: LinkSchema) -> tuple[dict, list[str]]:
    """(settings, notices) from a query string: every setting of ``schema`` (its default where the link
    has none or a bad one), and one notice per value that was not used as given, unknown names included."""
    settings, notices = dict(schema.defaults), []
    for name, raw in params.items():
        if name not in schema.defaults:
            notices.append(f"Ignored {shown(name)} in the link: not a setting of this app.")
            continue
        parse = PARSERS.get(name) or _choice(name)
        settings[name], notice = parse(str(raw), schema.defaults[name], schema.choices.get(name, ()))
        if notice:
            notices.append(notice)
    return settings, notices


def read_settings(
    params: Mapping[str, str], defaults: Settings, choices: Mapping[str, Sequence[str]]
) -> tuple[Settings, list[str]]:
    """(settings, notices) from a share link's query string, as :func:`parse_link` reads it."""
    raw = {name: getattr(defaults, name) for name in Settings.names()} | {
        "overrides": encode_overrides(defaults.overrides)
    }
    values, notices = parse_link(params, LinkSchema(raw, choices))
    return Settings(**(values | {"overrides": decode_overrides(values["overrides"])})), notices


def to_query(settings: Settings) -> dict[str, str]:
    """The query string that :func:`read_settings` reads back as ``settings`` (empty overrides left out)."""
    out = {}
    for name in Settings.names():
        value = getattr(settings, name)
        text = (
            encode_overrides(value)
            if name == "overrides"
            else "1"
            if value is True
            else "0"
            if value is False
            else str(value)
        )
        if text:
            out[name] = text
    return out
