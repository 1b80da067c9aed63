"""YAML as the user wrote it: PyYAML keeps the last of two equal keys in one mapping and drops the
first without a word (a second `training:` section silently replaces the first), so a config is
read with a loader that refuses a repeated key. A loader of its own, not a patched global one."""
from __future__ import annotations

import yaml


class DuplicateKey(yaml.YAMLError):
    """A key given twice in one mapping; `problem_mark` is the second one."""

    def __init__(self, key, first: int, second_mark):
        self.key, self.first, self.problem_mark = key, first, second_mark
        super().__init__(f"key {key!r} appears twice")


class _Loader(yaml.SafeLoader):
    pass


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False):
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges, the constructor below resolves it
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                raise DuplicateKey(key, seen[key], key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        except TypeError:  # an unhashable key: the constructor below reports it
            pass
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load(text: str):
    """yaml.safe_load, refusing a key repeated in one mapping (DuplicateKey)."""
    return yaml.load(text, Loader=_Loader)
