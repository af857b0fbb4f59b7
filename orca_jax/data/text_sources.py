"""Text source sets for BERT-family bodies: CoNLL-2003 sentences (the paper's source) and an offline stand-in.

The official RoBERTa source features are a file of undocumented origin (`text_xs_32.npy`: token features of 32
tokens per row, reportedly CoNLL-2003). We regenerate them from sentences, sentence-level as those rows are:

- `conll2003` (tensorflow-datasets, train split, 14,041 sentences): a sentence is its tokens joined with single
  spaces (the body's tokenizer then truncates/pads it to 32 tokens). Its label is the entity type that tags the
  most of its tokens, counting B- and I- tags alike: PER, ORG, LOC or MISC; ties go to the type listed first in
  that order (tfds's tag order); a sentence without entities is `O`. 5 classes: O, PER, ORG, LOC, MISC.
- `python_docs` (offline, no network ever): English sentences from the docstrings of ten standard-library
  packages, labelled by package. Docstrings are read from the installed sources with `ast` (nothing is imported,
  so no side effects and no platform-specific modules are needed); paragraphs containing indented or doctest
  lines are skipped as code, and a sentence is kept if it starts with a capitalised word, ends with `.`, `!` or
  `?`, has 6-40 words and at least 80 % plain words. Duplicates within a package are dropped, and so are
  sentences found in two packages (their label would be ambiguous). The order is deterministic (packages, then
  files sorted, then docstrings in `ast.walk` order); the contents depend on the Python version's standard
  library (3,081 sentences on Python 3.11.7), so its cache key includes the Python version.
"""

from __future__ import annotations

import ast
import collections
import functools
import importlib.util
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from orca_jax.data.source_set import SourceSet, subset_indices
from orca_jax.data.tfds_io import read_tfds

PYTHON_DOCS_PACKAGES = (
    "asyncio", "email", "logging", "http", "xml", "importlib", "urllib", "multiprocessing", "inspect", "typing",
)
CONLL_NER_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")  # tfds's order
CONLL_CLASSES = ("O", "PER", "ORG", "LOC", "MISC")

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_PLAIN_WORD = re.compile(r"""^[("`']*[A-Za-z][A-Za-z'-]*[)"`']*[,;:]?$""")
_FIRST_WORD = re.compile(r"^[A-Z][a-z]*$")
_MIN_WORDS, _MAX_WORDS, _MIN_PLAIN_FRACTION = 6, 40, 0.8


def conll_sentence_label(ner_tags: Iterable[int]) -> int:
    """Index into CONLL_CLASSES of the entity type tagging most tokens (ties: PER, ORG, LOC, MISC order); 0 = none."""
    counts = collections.Counter(CONLL_NER_TAGS[int(t)].partition("-")[2] for t in ner_tags)
    counts.pop("", None)  # the "O" tag
    if not counts:
        return 0
    return max(range(1, len(CONLL_CLASSES)), key=lambda c: (counts[CONLL_CLASSES[c]], -c))


def conll_examples_to_sentences(examples: Iterable[Mapping]) -> tuple[tuple[str, ...], np.ndarray]:
    """tfds `conll2003` examples (`tokens`: bytes, `ner`: tag ids) -> sentences and int32 sentence labels."""
    sentences, labels = [], []
    for example in examples:
        tokens = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in example["tokens"]]
        sentences.append(" ".join(tokens))
        labels.append(conll_sentence_label(example["ner"]))
    return tuple(sentences), np.asarray(labels, np.int32)


def load_conll2003(size: int | None, seed: int, data_dir: str | os.PathLike | None) -> SourceSet:
    sentences, labels = conll_examples_to_sentences(read_tfds("conll2003", "train", data_dir))
    keep = subset_indices(len(labels), size, np.random.default_rng(seed), "conll2003")
    return SourceSet("conll2003", "text", tuple(sentences[i] for i in keep), labels[keep], CONLL_CLASSES)


def _package_files(package: str) -> list[Path]:
    spec = importlib.util.find_spec(package)
    if spec is None or not (spec.submodule_search_locations or spec.origin):
        raise FileNotFoundError(f"Standard-library package {package!r} was not found in this Python.")
    if spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations)))
        files = sorted(p for p in root.rglob("*.py") if not {"test", "tests"} & set(p.relative_to(root).parts))
    else:
        files = [Path(spec.origin)] if spec.origin.endswith(".py") else []
    if not files:
        raise FileNotFoundError(
            f"No Python sources for the standard-library package {package!r} (this Python ships compiled files "
            "only); python_docs needs a CPython with its .py sources, or use the conll2003 source."
        )
    return files


def _docstrings(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc


def _is_sentence(text: str) -> bool:
    words = text.split()
    if not _MIN_WORDS <= len(words) <= _MAX_WORDS or text[-1] not in ".!?" or not _FIRST_WORD.match(words[0]):
        return False
    words[-1] = words[-1][:-1]
    return sum(bool(_PLAIN_WORD.match(w)) for w in words) >= _MIN_PLAIN_FRACTION * len(words)


def docstring_sentences(docstring: str) -> Iterator[str]:
    """The English sentences of one docstring; paragraphs with indented or doctest lines are code, and skipped."""
    for paragraph in re.split(r"\n\s*\n", docstring):
        lines = paragraph.strip("\n").split("\n")
        if any(line.startswith((" ", "\t", ">>>", "...")) for line in lines):
            continue
        for sentence in _SENTENCE_END.split(" ".join(paragraph.split())):
            if _is_sentence(sentence):
                yield sentence


@functools.cache
def python_docs_sentences() -> tuple[tuple[str, ...], np.ndarray]:
    """All python_docs sentences in their deterministic order, and their int32 package labels."""
    per_package = []
    for package in PYTHON_DOCS_PACKAGES:
        docs = (doc for path in _package_files(package) for doc in _docstrings(path))
        per_package.append(list(dict.fromkeys(s for doc in docs for s in docstring_sentences(doc))))
    packages_per_sentence = collections.Counter(s for sentences in per_package for s in sentences)
    texts, labels = [], []
    for label, sentences in enumerate(per_package):
        unique = [s for s in sentences if packages_per_sentence[s] == 1]
        texts += unique
        labels += [label] * len(unique)
    return tuple(texts), np.asarray(labels, np.int32)


def load_python_docs(size: int | None, seed: int, data_dir: str | os.PathLike | None = None) -> SourceSet:
    del data_dir  # offline: read from this Python's own sources
    texts, labels = python_docs_sentences()
    keep = subset_indices(len(labels), size, np.random.default_rng(seed), "python_docs")
    return SourceSet("python_docs", "text", tuple(texts[i] for i in keep), labels[keep], PYTHON_DOCS_PACKAGES)
