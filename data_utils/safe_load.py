"""Bounded readers for every YAML and JSON file the project reads: task definitions, sweep specs, settings,
configs, shards, score and metrics files, manifests, encoder configs.

A data file may be broken or hostile: YAML aliases that expand to billions of values (an "alias bomb"), nesting
thousands of levels deep (PyYAML's scanner is quadratic in the depth of ``[[[[...``, and its composer
recursive), integers of thousands of digits, a YAML file of gigabytes. These readers refuse each of them with one
line that names the file (and line) before anything walks the values, so every caller has the same bounds and
callers only check what the values mean.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import yaml

MAX_YAML_CHARS = 1 << 20      # task definitions are a few KB; pure-Python YAML parses about 1 MB per second
MAX_EXPANDED_NODES = 100_000  # a GLUE task file has a few hundred values; aliases can make billions
MAX_DEPTH = 64                # the project's files nest at most ~10 levels (SQuAD)
MAX_YAML_INT_DIGITS = 100     # no setting needs more; int() of a huge one costs quadratic time
_INT_TAG = "tag:yaml.org,2002:int"


class DataFileError(ValueError):
    """A YAML or JSON file (or line) that cannot be read, as one line starting with ``file[:line]``."""


# ---------------------------------------------------------------------------------------------- YAML
class _TooDeep(yaml.MarkedYAMLError):
    pass


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that stops at MAX_DEPTH levels of nesting while scanning, before the quadratic and recursive
    stages see them."""

    def fetch_flow_collection_start(self, TokenClass):
        if self.flow_level >= MAX_DEPTH:
            raise _TooDeep(problem=f"nested more than {MAX_DEPTH} levels deep", problem_mark=self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def add_indent(self, column):
        if len(self.indents) >= MAX_DEPTH:
            raise _TooDeep(problem=f"nested more than {MAX_DEPTH} levels deep", problem_mark=self.get_mark())
        return super().add_indent(column)


@dataclass(frozen=True)
class YamlDocument:
    """The composed node tree (for line numbers) and the values built from it (``yaml.safe_load``'s result)."""
    root: Optional[yaml.Node]
    data: Any


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def check_nodes(root: yaml.Node, path: str) -> None:
    """Refuse documents whose aliases expand to more than MAX_EXPANDED_NODES values (or into themselves), that
    nest deeper than MAX_DEPTH once aliases are followed, or that hold integers of more than
    MAX_YAML_INT_DIGITS digits.

    safe_load shares aliased objects, so building them is cheap; anything that walks them (comparisons, reprs,
    checks) pays for the full expansion. Sizes and heights are memoised per node: one pass over the nodes.
    """
    seen: dict[int, tuple[int, int]] = {}

    def visit(node: yaml.Node, level: int) -> tuple[int, int]:
        if id(node) in seen:
            size, height = seen[id(node)]
            if level + height > MAX_DEPTH:
                raise DataFileError(f"{path}:{_line(node)}: YAML nested more than {MAX_DEPTH} levels deep "
                                    "through aliases")
            return size, height
        if level > MAX_DEPTH:
            raise DataFileError(f"{path}:{_line(node)}: YAML nested more than {MAX_DEPTH} levels deep")
        seen[id(node)] = (MAX_EXPANDED_NODES + 1, 0)  # an alias inside its own anchor counts as unbounded
        if isinstance(node, yaml.ScalarNode):
            digits = sum(c.isdigit() for c in node.value) if node.tag == _INT_TAG else 0
            if digits > MAX_YAML_INT_DIGITS:
                raise DataFileError(f"{path}:{_line(node)}: an integer of {digits} digits; no setting takes more "
                                    f"than {MAX_YAML_INT_DIGITS}")
            children = []
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = [c for pair in node.value for c in pair]
        total, height = 1, 0
        for child in children:
            size, sub = visit(child, level + 1)
            total, height = total + size, max(height, sub + 1)
            if total > MAX_EXPANDED_NODES:
                raise DataFileError(f"{path}:{_line(node)}: YAML aliases expand to more than "
                                    f"{MAX_EXPANDED_NODES:,} values here (an alias bomb?); write the values out")
        seen[id(node)] = (total, height)
        return total, height

    visit(root, 1)


def yaml_error(exc: yaml.YAMLError, path: str) -> DataFileError:
    """``file:line: not valid YAML: reason`` for a PyYAML error."""
    mark = getattr(exc, "problem_mark", None)
    line = f":{mark.line + 1}" if mark is not None else ""
    reason = " ".join(str(getattr(exc, "problem", None) or exc).split())
    return DataFileError(f"{path}{line}: not valid YAML: {reason}")


def parse_yaml(text: str, path: str = "<string>") -> YamlDocument:
    """``yaml.safe_load`` of one document within the bounds above; ``path`` names the source in errors."""
    if len(text) > MAX_YAML_CHARS:
        raise DataFileError(f"{path}: {len(text):,} characters of YAML, more than the {MAX_YAML_CHARS:,} this "
                            "reader takes")
    loader = _BoundedLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return YamlDocument(None, None)
        check_nodes(root, path)
        return YamlDocument(root, loader.construct_document(root))
    except yaml.YAMLError as exc:
        raise yaml_error(exc, path) from None
    except RecursionError:
        raise DataFileError(f"{path}: YAML nested too deeply") from None
    finally:
        loader.dispose()


def load_yaml(text: str, path: str = "<string>") -> Any:
    """The values of a YAML document (what ``yaml.safe_load`` returns), within the bounds above."""
    return parse_yaml(text, path).data


def _read_bytes(path: Union[str, Path], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except IsADirectoryError:
        raise DataFileError(f"{path}: is a folder, not a {what}") from None


def read_text(path: Union[str, Path], what: str = "file") -> str:
    """A UTF-8 file's text; not UTF-8 or a folder is one line naming the file (and line). A missing file raises
    FileNotFoundError for the caller to say what it expected there."""
    data = _read_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataFileError(f"{path}:{line}: not UTF-8 (byte offset {exc.start})") from None


def read_yaml(path: Union[str, Path], what: str = "YAML file") -> Any:
    return load_yaml(read_text(path, what), str(path))


# ---------------------------------------------------------------------------------------------- JSON
def _too_deep(value: Any) -> bool:
    """Whether containers nest deeper than MAX_DEPTH (an explicit stack: no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > MAX_DEPTH:
            return True
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item if isinstance(v, (dict, list)))
    return False


_LONG_INT = re.compile(r"\d{%d,}" % (sys.get_int_max_str_digits() + 1))


def loads_json(text: Union[str, bytes], path: Union[str, Path], line: Optional[int] = None,
               check_depth: bool = True) -> Any:
    """``json.loads`` with one-line errors: ``file:line: not valid JSON (why)`` for ``line`` of a JSON-lines
    file, ``file: not valid JSON (why, line N)`` for a whole file. ``check_depth`` also refuses values nested
    deeper than MAX_DEPTH (callers that check every value's shape anyway, such as the shard reader, skip it)."""
    where = f"{path}:{line}" if line is not None else str(path)

    def error(why: str, at: Optional[int] = None) -> DataFileError:
        return DataFileError(f"{where}: not valid JSON ({why}{f', line {at}' if at and line is None else ''})")

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(exc.msg, exc.lineno) from None
    except RecursionError:
        raise error("nested too deeply") from None
    except ValueError:  # an integer longer than Python converts (sys.get_int_max_str_digits)
        found = _LONG_INT.search(text) if isinstance(text, str) else None
        at = text.count("\n", 0, found.start()) + 1 if found else None
        raise error(f"an integer of more than {sys.get_int_max_str_digits()} digits", at) from None
    if check_depth and _too_deep(value):
        raise error(f"nested more than {MAX_DEPTH} levels deep")
    return value


def read_json(path: Union[str, Path], what: str = "JSON file") -> Any:
    """A whole JSON file, within the bounds above; a missing file raises FileNotFoundError."""
    data = _read_bytes(path, what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataFileError(f"{path}: not valid JSON (not UTF-8 at byte offset {exc.start}, line {line})") from None
    return loads_json(text, path)
