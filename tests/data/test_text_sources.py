"""Text source sets: python_docs is deterministic and sane; CoNLL-2003 sentences and labels from tfds-format
examples."""

import logging

import numpy as np
import pytest

from orca_jax.data import load_source
from orca_jax.data.text_sources import (
    CONLL_CLASSES,
    CONLL_NER_TAGS,
    PYTHON_DOCS_PACKAGES,
    conll_examples_to_sentences,
    conll_sentence_label,
    docstring_sentences,
    python_docs_sentences,
)


def test_python_docs_is_deterministic_and_sane():
    texts, labels = python_docs_sentences.__wrapped__()  # uncached: a fresh read of the sources
    again, labels_again = python_docs_sentences.__wrapped__()
    assert texts == again and np.array_equal(labels, labels_again)
    assert labels.dtype == np.int32 and len(texts) == len(labels)
    assert 2000 <= len(texts) <= 8000
    counts = np.bincount(labels, minlength=len(PYTHON_DOCS_PACKAGES))
    assert len(counts) == 10 and counts.min() >= 50
    assert len(set(texts)) == len(texts)
    for text in texts:
        assert 6 <= len(text.split()) <= 40 and text[0].isupper() and text[-1] in ".!?"


def test_docstring_sentences_skip_code():
    doc = (
        "Return the answer to the question asked here.\n\n"
        "Example:\n\n"
        "    >>> answer()\n    42\n\n"
        ">>> x = compute(1, 2)\n\n"
        "Short one.  The second sentence of this paragraph is long enough."
    )
    assert list(docstring_sentences(doc)) == [
        "Return the answer to the question asked here.",
        "The second sentence of this paragraph is long enough.",
    ]


def test_python_docs_subset_is_seeded(caplog):
    a = load_source("python_docs", size=300, seed=1)
    b = load_source("python_docs", size=300, seed=1)
    c = load_source("python_docs", size=300, seed=2)
    assert a.inputs == b.inputs and np.array_equal(a.labels, b.labels)
    assert a.inputs != c.inputs
    assert len(a) == 300 and a.modality == "text" and a.class_names == PYTHON_DOCS_PACKAGES
    texts, labels = python_docs_sentences()
    lookup = dict(zip(texts, labels))
    assert [lookup[t] for t in a.inputs] == a.labels.tolist()
    with caplog.at_level(logging.WARNING):
        everything = load_source("python_docs", size=100_000, seed=0)
    assert len(everything) == len(texts) and "using all of them" in caplog.text


def _conll_example(words, tags):
    """An example as tfds.as_numpy yields conll2003: bytes tokens, int64 tag ids (pos/chunks unused)."""
    ids = [CONLL_NER_TAGS.index(t) for t in tags]
    return {
        "tokens": np.array([w.encode() for w in words], dtype=object),
        "ner": np.array(ids, np.int64),
        "pos": np.zeros(len(words), np.int64),
        "chunks": np.zeros(len(words), np.int64),
    }


def test_conll_label_rule_and_sentences():
    examples = [
        _conll_example(["EU", "rejects", "German", "call"], ["B-ORG", "O", "B-MISC", "O"]),  # tie ORG/MISC -> ORG
        _conll_example(["Peter", "Blackburn"], ["B-PER", "I-PER"]),
        _conll_example(["the", "European", "Commission", "in", "Brussels"], ["O", "B-ORG", "I-ORG", "O", "B-LOC"]),
        _conll_example(["It", "rained", "."], ["O", "O", "O"]),
        _conll_example(["Paris", "and", "Lyon", "beat", "Smith"], ["B-LOC", "O", "B-LOC", "O", "B-PER"]),
        _conll_example(["Germany", "'s", "Fischer"], ["B-LOC", "O", "B-PER"]),  # tie PER/LOC -> PER
    ]
    sentences, labels = conll_examples_to_sentences(examples)
    assert sentences[0] == "EU rejects German call" and sentences[3] == "It rained ."
    assert [CONLL_CLASSES[i] for i in labels] == ["ORG", "PER", "ORG", "O", "LOC", "PER"]
    assert labels.dtype == np.int32
    assert conll_sentence_label([]) == 0


def test_conll_tags_match_tfds():
    import tensorflow_datasets as tfds
    import tensorflow_datasets.text.conll2003  # noqa: F401  (registers the builder; no TensorFlow needed)

    features = tfds.builder("conll2003").info.features
    assert tuple(features["ner"].feature.names) == CONLL_NER_TAGS


def test_tfds_sources_explain_what_is_missing(tmp_path):
    for name in ("conll2003", "cifar10"):
        with pytest.raises((ImportError, FileNotFoundError)) as info:
            load_source(name, data_dir=tmp_path)
        assert str(tmp_path) in str(info.value) and f"tfds build {name}" in str(info.value)
