"""YAML read safely: no anchors or aliases, no duplicate keys, YAML 1.2 floats. The one loader
every spec, override and stored spec.yaml goes through (spec/schema.py, and storage/layout.py's reader)."""
from __future__ import annotations

import re

import yaml

from .errors import GridrunError

MAX_SPEC_BYTES = 1_000_000  # a spec is a small YAML file: more is refused before it is parsed
MAX_SPEC_DEPTH = 32  # a spec nests 3 or 4 levels; PyYAML's scanner is quadratic in the depth


class SpecError(GridrunError):
    """A spec that cannot be launched; nothing was started."""


class _NoAliasLoader(yaml.SafeLoader):
    """safe_load without anchors and aliases: a few lines of aliases can stand for billions of
    values, and a small file must never cost minutes or gigabytes to validate."""

    depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise SpecError(f"YAML alias at line {mark.line + 1}: anchors and aliases (&, *) are not supported in "
                            f"specs: write the values out")
        if self.depth >= MAX_SPEC_DEPTH:  # refused at once, not after seconds and a RecursionError
            mark = self.peek_event().start_mark
            raise SpecError(f"YAML nested more than {MAX_SPEC_DEPTH} levels deep at line {mark.line + 1}: "
                            f"a spec nests a few levels; flatten it")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise SpecError(f"YAML key {key!r} appears twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}): "
                                f"the first would be silently ignored; keep one")
            if isinstance(key, (str, int, float, bool)):
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 floats: PyYAML reads YAML 1.1, where a float needs a dot, so `1e-3` and `3e-4` were
# strings. The 1.2 core schema's float (exponent without a dot, sign optional) is added to the
# one loader every spec, override and stored spec goes through.
_NoAliasLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)$"),
    list("-+0123456789."))


def safe_yaml(text: str, src: str):
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except SpecError as e:  # the loader's own refusals (an alias, a key twice) name the file too
        raise SpecError(f"{src}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(f"{src}: not valid YAML{where}: {problem}") from None
