"""Parameter paths and the ordered (regex, value) rules that decide things about them.

Two decisions are made per parameter from its path: where it lives on the mesh (`orca_jax.parallel.sharding`) and
whether a stage trains it (`orca_jax.train.finetune`). Both read the path the same way, a "/"-joined name such as
`body/layers/3/attention/qkv/kernel`, and both take the first rule whose regex `re.fullmatch`es it, so a regex a
user writes for one means the same in the other.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax


def _key_name(key) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def path_names(path) -> tuple[str, ...]:
    """A path as names: a key path from `jax.tree_util` or the tuple of names an nnx filter sees. An nnx Variable's
    own trailing `.value` is dropped, so a parameter of an `nnx.State`, of a module and of an optimizer state that
    mirrors it all read like `body/layers/0/mlp_in/kernel`."""
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        path = path[:-1]
    return tuple(_key_name(k) for k in path)


def path_name(path) -> str:
    """The name rules match."""
    return "/".join(path_names(path))


class PathRules:
    """Ordered (regex, value) pairs; `first(name)` is the value of the first pair whose regex matches all of `name`.

    `what` names the rules in errors ("sharding", "fine-tune"); `value(regex, rule)` checks each rule's value and
    returns it in the form the caller keeps (the identity by default).
    """

    def __init__(self, rules: Sequence, what: str, value: Callable[[str, Any], Any] = lambda regex, rule: rule):
        checked = []
        for item in rules:
            if (isinstance(item, str) or not isinstance(item, Sequence) or len(item) != 2
                    or not isinstance(item[0], str)):
                raise ValueError(
                    f"{what} rules are (regex, rule) pairs; got {item!r} in {rules!r}. A single pair still needs the "
                    "outer tuple: ((\".*\", \"fsdp\"),)."
                )
            try:
                pattern = re.compile(item[0])
            except re.error as error:
                raise ValueError(f"{what} rule regex {item[0]!r} does not compile: {error}.") from None
            checked.append((pattern, value(item[0], item[1])))
        self.rules: tuple[tuple[re.Pattern, Any], ...] = tuple(checked)

    def first(self, name: str, default: Any = None) -> Any:
        return next((value for pattern, value in self.rules if pattern.fullmatch(name)), default)
