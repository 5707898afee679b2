"""YAML with positions: load a document and remember where every key and value stood.

>>> doc = load_yaml("a:\\n  b: 1\\n", "x.yaml")
>>> doc.data, doc.position(("a", "b"))
({'a': {'b': 1}}, (2, 6))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]


class YamlError(Exception):
    """The text is not YAML we can read; `line` and `column` are 1-based."""

    def __init__(self, filename: str, line: int, column: int, message: str) -> None:
        super().__init__(f"{filename}:{line}:{column}: {message}")
        self.filename, self.line, self.column, self.message = filename, line, column, message


@dataclass
class Document:
    filename: str
    data: Any = None
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)
    duplicates: list[tuple[Path, tuple[int, int]]] = field(default_factory=list)

    def position(self, path: Path, *, key: bool = False) -> tuple[int, int]:
        """Where `path` stands: its key when `key` is set, else its value; else its nearest parent."""
        while path:
            found = (self.keys if key else self.values).get(path) or self.values.get(path)
            if found:
                return found
            path = path[:-1]
        return self.values.get((), (1, 1))


def load_yaml(text: str, filename: str) -> Document:
    """Parse `text`; raise `YamlError` with the position of a syntax error."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        document = Document(filename)
        if node is not None:
            document.data = _build(node, (), document, loader)
        return document
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlError(filename, line, column, f"invalid YAML: {error.problem or error}") from None
    except yaml.YAMLError as error:
        raise YamlError(filename, 1, 1, f"invalid YAML: {error}") from None
    finally:
        loader.dispose()


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _build(node: yaml.Node, path: Path, document: Document, loader: yaml.SafeLoader) -> Any:
    document.values[path] = _mark(node)
    if isinstance(node, yaml.MappingNode):
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise YamlError(document.filename, *_mark(key_node), "invalid YAML: a key must be a plain scalar")
            key = str(key) if not isinstance(key, str) else key
            child = (*path, key)
            if key in mapping:
                document.duplicates.append((child, _mark(key_node)))
            document.keys[child] = _mark(key_node)
            mapping[key] = _build(value_node, child, document, loader)
        return mapping
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, index), document, loader) for index, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)
