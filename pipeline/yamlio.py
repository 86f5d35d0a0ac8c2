"""Reading the user's YAML (params.yaml, local.yaml, run configs): yaml.safe_load, but a key written twice is an error.

PyYAML keeps the last of two equal keys silently, so a row edited twice reports the wrong setting (DVC,
reading the same params.yaml with ruamel.yaml, refuses it). `UniqueKeyLoader` is PyYAML's SafeLoader
(same YAML 1.1 value resolution as `yaml.safe_load`, so every value reads exactly as before) whose
mappings raise on a duplicate key, naming the key and both lines.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import UserError


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that raises `yaml.constructor.ConstructorError` on a duplicate mapping key."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _value in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<:` merge keys may repeat (YAML merge spec)
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable key: SafeLoader reports it itself
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key!r} (first at line {first.line + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | os.PathLike) -> Any:
    """The YAML document in `path`; UserError naming the file for a syntax error or a duplicate key."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        loader = UniqueKeyLoader(text)  # what yaml.load(text, Loader=...) does, with our SafeLoader subclass
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.constructor.ConstructorError as exc:
        if exc.problem and exc.problem.startswith("found duplicate key") and exc.problem_mark is not None:
            raise UserError(f"{path}:{exc.problem_mark.line + 1}: {exc.problem[len('found '):]}; "
                            f"remove one of them (a YAML reader would keep only the last)") from None
        raise UserError(f"{path}: not valid YAML: {exc}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from None
