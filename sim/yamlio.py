"""The one YAML loader for every file and flag the program reads.

PyYAML's safe loader builds only plain data, but it accepts two things a scenario file must not:
* duplicate keys, where the last silently wins (a second `serving:` block would drop the first
  block's `replicas: 8` to the default 1);
* aliases (`*name`), which share one node many times over: nine levels of ten aliases expand to
  10^9 strings once the data is copied or serialized ("billion laughs").
Both are refused with the line and column. Nothing here needs anchors: write the values out.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import yaml
from yaml.constructor import ConstructorError


class _StrictLoader(yaml.SafeLoader):
    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConstructorError(None, None, "YAML aliases (*name) are not supported; write the values out",
                                   event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable):
                if key in seen:
                    raise ConstructorError("while reading a mapping", node.start_mark,
                                           f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse YAML text into plain data; raises yaml.YAMLError (with a mark) on bad input."""
    loader = _StrictLoader(text)    # a SafeLoader: builds plain data only
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
