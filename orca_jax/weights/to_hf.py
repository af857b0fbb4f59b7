"""Our parameters back to a Hugging Face checkpoint's tensors, by reading each architecture's key table backwards.

The key tables (`models/text_encoder_keys.py`, `models/swin_keys.py`, beside their models) are the one statement of
how checkpoint names map to our paths; exporting must agree with loading exactly, so it derives every name from the
same rules instead of keeping a second table. For a parameter, the rule whose target template produces its path
gives the checkpoint name (the rule's regex rendered with the path's indices; where the regex accepts several
spellings, the first, which is the one the hub's files and `save_pretrained` write), the inverse of the rule's
transform, and, for a fused parameter, which column block is that tensor. Every name is checked by running the
forward rule on it: it must map back to the same path, so a table whose pattern cannot be read backwards fails here,
loudly, and never writes a wrong name.

`write_safetensors` writes the format `checkpoint_files` reads (bfloat16 included, which NumPy lacks and the
`safetensors` package's NumPy writer refuses), with the `{"format": "pt"}` metadata transformers expects.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping, Sequence

import numpy as np
from etils import epath

from orca_jax.atomic import atomic_path
from orca_jax.weights.checkpoint_files import _SAFETENSORS_DTYPES
from orca_jax.weights.convert import KeyTable, Rule, WeightConversionError, conv_to_hwio, identity, transpose


def hwio_to_conv(x: np.ndarray) -> np.ndarray:
    """`nnx.Conv`'s (*spatial, in, out) -> PyTorch's (out, in, *spatial)."""
    return np.moveaxis(x, (-1, -2), (0, 1))


INVERSE_TRANSFORMS = {identity: identity, transpose: transpose, conv_to_hwio: hwio_to_conv}
_GROUP_REFERENCE = re.compile(r"\\(\d+)")


def _target_regex(target: str) -> re.Pattern:
    """A rule's target template (dotted, with `\\1`-style references) as a regex whose groups are the references."""
    pieces = _GROUP_REFERENCE.split(target)
    regex = "".join(re.escape(piece) if i % 2 == 0 else f"(?P<g{piece}>[^.]+)" for i, piece in enumerate(pieces))
    return re.compile(regex)


def render(pattern: str, groups: Mapping[int, str]) -> str:
    """The name `pattern` (a key-table regex) matches with its capturing groups set to `groups` (numbered as the
    regex numbers them); of alternatives `(?:a|b)`, the first. Only what the tables use is understood: escaped
    characters, capturing groups, non-capturing alternations and plain characters; anything else is an error."""
    position, count = 0, 0

    def matching_paren(start: int) -> int:
        depth, i = 0, start
        while i < len(pattern):
            if pattern[i] == "\\":
                i += 2
                continue
            depth += {"(": 1, ")": -1}.get(pattern[i], 0)
            if depth == 0:
                return i
            i += 1
        raise ValueError(f"unbalanced parentheses in {pattern!r}")

    def sequence(stops: str) -> str:
        nonlocal position, count
        out = []
        while position < len(pattern) and pattern[position] not in stops:
            char = pattern[position]
            if char == "\\":
                escaped = pattern[position + 1]
                if escaped.isalnum():
                    raise ValueError(f"{pattern!r}: the class \\{escaped} outside a capturing group has no one name")
                out.append(escaped)
                position += 2
            elif pattern.startswith("(?:", position):
                position += 3
                alternatives = [sequence("|)")]
                while pattern[position] == "|":
                    position += 1
                    alternatives.append(sequence("|)"))
                position += 1
                out.append(alternatives[0])
            elif char == "(":
                count += 1
                if count not in groups:
                    raise ValueError(f"{pattern!r}: no value for capturing group {count}")
                out.append(groups[count])
                position = matching_paren(position) + 1
            elif char in ".*+?[]{}^$|)":
                raise ValueError(f"{pattern!r}: {char!r} at {position} has no one name")
            else:
                out.append(char)
                position += 1
        return "".join(out)

    name = sequence("")
    if position != len(pattern):
        raise ValueError(f"{pattern!r}: unexpected {pattern[position]!r} at {position}")
    return name


def to_checkpoint_tensors(params: Mapping[str, np.ndarray], table: KeyTable) -> dict[str, np.ndarray]:
    """`params` (our dotted parameter paths -> arrays, e.g. a body's `nnx.Param` state flattened) as the tensors of
    the checkpoint that `table` would load back into them; raises `WeightConversionError` naming every parameter no
    rule produces, or produces ambiguously, and every fused parameter whose blocks the rules do not cover."""
    rules: Sequence[tuple[re.Pattern, re.Pattern, Rule]] = [
        (_target_regex(rule.target), re.compile(rule.pattern), rule) for rule in table.rules
    ]
    tensors: dict[str, np.ndarray] = {}
    problems = []
    for path in sorted(params):
        value = np.asarray(params[path])
        hits = [(match, source, rule) for target, source, rule in rules if (match := target.fullmatch(path))]
        parts = sorted({rule.part for _, _, rule in hits}, key=str)
        if not hits:
            problems.append(f"{path}: no rule of the key table produces it")
            continue
        if None in parts and len(hits) > 1 or len(parts) != len(hits):
            problems.append(f"{path}: {len(hits)} rules of the key table produce it (a bug in the table)")
            continue
        if parts != [None]:
            count = parts[0][1]
            if sorted(parts) != [(i, count) for i in range(count)] or value.shape[-1] % count:
                problems.append(f"{path}: its rules cover blocks {parts}, not all {count} blocks of its last axis")
                continue
        for match, source, rule in hits:
            groups = {int(name[1:]): text for name, text in match.groupdict().items()}
            try:
                name = render(rule.pattern, groups)
            except ValueError as error:
                problems.append(f"{path}: {error}")
                continue
            forward = source.fullmatch(name)
            if forward is None or forward.expand(rule.target) != path:
                problems.append(f"{path}: the rendered name {name!r} does not load back into it (a bug in the table)")
                continue
            block = value
            if rule.part is not None:
                index, count = rule.part
                width = value.shape[-1] // count
                block = value[..., index * width : (index + 1) * width]
            if rule.transform not in INVERSE_TRANSFORMS:
                problems.append(f"{path}: the transform {rule.transform.__name__} has no inverse in to_hf.py")
                continue
            if name in tensors:
                problems.append(f"{path}: the name {name!r} is produced twice")
                continue
            tensors[name] = np.ascontiguousarray(INVERSE_TRANSFORMS[rule.transform](block))
    if problems:
        lines = "\n  - ".join(problems)
        raise WeightConversionError(f"The model cannot be written as a checkpoint ({len(problems)} problem(s)):\n  - "
                                    f"{lines}")
    return tensors


_DTYPE_NAMES = {np.dtype(dtype): name for name, dtype in _SAFETENSORS_DTYPES.items()}


def write_safetensors(path: epath.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """`tensors` as one safetensors file: an 8-byte little-endian header length, the JSON header (names, dtypes,
    shapes, byte ranges; padded with spaces to 8 bytes), then the data in header order."""
    arrays = {name: np.ascontiguousarray(tensors[name]) for name in sorted(tensors)}
    header, offset = {}, 0
    for name, array in arrays.items():
        if array.dtype not in _DTYPE_NAMES:
            raise ValueError(f"tensor {name!r} has dtype {array.dtype}, which safetensors cannot hold; cast it first.")
        if array.dtype.byteorder == ">":
            arrays[name] = array = array.astype(array.dtype.newbyteorder("<"))
        header[name] = {"dtype": _DTYPE_NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    header["__metadata__"] = {"format": "pt", **(metadata or {})}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with atomic_path(path) as tmp, tmp.open("wb") as file:
        file.write(struct.pack("<Q", len(encoded)))
        file.write(encoded)
        for array in arrays.values():
            file.write(array.tobytes())
