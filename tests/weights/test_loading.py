"""Checkpoint reading and the strict converter: every kind of mismatch is an error naming the key."""

import json

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from safetensors.torch import save_file as save_torch_file

from orca_jax.models import from_pretrained, load_checkpoint
from orca_jax.weights import (
    CheckpointFormatError,
    CheckpointNotFoundError,
    WeightConversionError,
    read_tensors,
    resolve_checkpoint,
)
from tests.text_checkpoints import save_tiny_text_model

import jax.numpy as jnp


@pytest.fixture
def tiny(tmp_path):
    return save_tiny_text_model("bert-gelu", tmp_path / "bert")


def _edit(directory, edit):
    tensors = load_file(directory / "model.safetensors")
    edit(tensors)
    save_file(tensors, directory / "model.safetensors")


def test_missing_key_is_named(tiny):
    _edit(tiny, lambda t: t.pop("encoder.layer.1.intermediate.dense.bias"))
    with pytest.raises(WeightConversionError, match=r"missing: layers\.1\.mlp_in\.bias"):
        from_pretrained(tiny)


def test_extra_key_is_named(tiny):
    _edit(tiny, lambda t: t.update({"encoder.layer.0.attention.self.rotary.weight": np.zeros(3, np.float32)}))
    with pytest.raises(WeightConversionError, match=r"unmapped key 'encoder\.layer\.0\.attention\.self\.rotary"):
        from_pretrained(tiny)


def test_extra_layer_beyond_the_config_is_named(tiny):
    _edit(tiny, lambda t: t.update({"encoder.layer.7.output.dense.bias": np.zeros(32, np.float32)}))
    with pytest.raises(WeightConversionError, match=r"'encoder\.layer\.7\.output\.dense\.bias' maps to layers\.7"):
        from_pretrained(tiny)


def test_wrong_shape_is_named(tiny):
    _edit(tiny, lambda t: t.update({"encoder.layer.0.output.dense.weight": np.zeros((32, 47), np.float32)}))
    with pytest.raises(WeightConversionError, match=r"shape mismatch for 'encoder\.layer\.0\.output\.dense\.weight'"):
        from_pretrained(tiny)


def test_duplicate_spelling_is_named(tiny):
    _edit(tiny, lambda t: t.update({"embeddings.LayerNorm.gamma": t["embeddings.LayerNorm.weight"]}))
    with pytest.raises(WeightConversionError, match=r"duplicate: keys 'embeddings\.LayerNorm\.gamma' and"):
        from_pretrained(tiny)


def test_query_key_value_fill_the_fused_kernel_in_order(tiny):
    file = load_file(tiny / "model.safetensors")
    attention = from_pretrained(tiny).layers[1].attention.qkv
    prefix = "encoder.layer.1.attention.self."
    for i, name in enumerate(("query", "key", "value")):
        block = slice(32 * i, 32 * (i + 1))
        np.testing.assert_array_equal(attention.kernel[:, block], file[prefix + name + ".weight"].T)
        np.testing.assert_array_equal(attention.bias[block], file[prefix + name + ".bias"])


def test_missing_or_mis_shaped_block_of_a_fused_parameter_is_named(tiny):
    def edit(t):
        t.pop("encoder.layer.0.attention.self.value.weight")
        t["encoder.layer.1.attention.self.key.bias"] = np.zeros(31, np.float32)

    _edit(tiny, edit)
    with pytest.raises(WeightConversionError, match=r"2 problem\(s\)") as err:
        from_pretrained(tiny)
    message = str(err.value)
    assert r"missing: layers.0.attention.qkv.kernel (block 3 of 3)" in message
    assert (
        "shape mismatch for 'encoder.layer.1.attention.self.key.bias': the file has (31,), giving (31,) for "
        "layers.1.attention.qkv.bias (block 2 of 3), but the config implies (32,)"
    ) in message


def test_all_problems_reported_at_once(tiny):
    def edit(t):
        t.pop("pooler.dense.bias")
        t["mystery"] = np.zeros(1, np.float32)

    _edit(tiny, edit)
    with pytest.raises(WeightConversionError, match=r"2 problem\(s\)") as err:
        from_pretrained(tiny)
    assert "pooler.dense.bias" in str(err.value) and "mystery" in str(err.value)


def test_task_checkpoint_loads_body_and_reports_head(tmp_path):
    directory = save_tiny_text_model("roberta", tmp_path, task_model=True)
    loaded = load_checkpoint(directory)
    assert loaded.report.body_prefix == "roberta."
    assert loaded.report.ignored_head_keys == (
        "classifier.dense.bias", "classifier.dense.weight", "classifier.out_proj.bias", "classifier.out_proj.weight"
    )
    assert loaded.model.pooler is None  # sequence-classification models have no pooler
    body = load_file(directory / "model.safetensors")
    np.testing.assert_array_equal(
        loaded.model.embeddings.word.embedding[...], body["roberta.embeddings.word_embeddings.weight"]
    )


def test_sharded_and_legacy_bin_checkpoints_load_the_same(tmp_path):
    import transformers

    reference = save_tiny_text_model("roberta", tmp_path / "one")
    model = transformers.AutoModel.from_pretrained(str(reference))
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    (tmp_path / "bin").mkdir()
    model.config.save_pretrained(tmp_path / "bin")
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    want = read_tensors(reference)
    for variant in ("sharded", "bin"):
        got = read_tensors(tmp_path / variant)
        assert set(got) == set(want), variant
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{variant}: {name}")


def test_bfloat16_safetensors_keep_their_dtype(tmp_path):
    values = torch.randn(3, 5).to(torch.bfloat16)
    save_torch_file({"w": values}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    got = read_tensors(tmp_path)["w"]
    assert got.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got.astype(np.float32), values.float().numpy())


# ---- Damaged files: each error names the file and what is wrong with it ----------------------------------------

def test_truncated_safetensors_is_named(tiny):
    file = tiny / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(CheckpointFormatError, match=rf"{file}.*ends at byte \d+ of the data .*cut short"):
        from_pretrained(tiny)


def test_safetensors_cut_inside_its_header_or_garbage_is_named(tiny):
    file = tiny / "model.safetensors"
    content = file.read_bytes()
    file.write_bytes(content[:100])
    with pytest.raises(CheckpointFormatError, match=rf"{file}.*header length says \d+ bytes but only 92 follow"):
        from_pretrained(tiny)
    file.write_bytes(np.random.default_rng(0).bytes(5000))  # e.g. an HTML error page saved under the name
    with pytest.raises(CheckpointFormatError, match=rf"{file} is not a readable safetensors file"):
        from_pretrained(tiny)
    file.write_bytes(b"\x05\x00\x00")
    with pytest.raises(CheckpointFormatError, match="3 bytes, too few"):
        from_pretrained(tiny)
    header_len = int.from_bytes(content[:8], "little")
    file.write_bytes(content[:8] + b"{" * header_len + content[8 + header_len :])
    with pytest.raises(CheckpointFormatError, match=rf"its {header_len}-byte header is not JSON"):
        from_pretrained(tiny)


def test_safetensors_header_that_disagrees_with_its_data_is_named(tiny):
    file = tiny / "model.safetensors"
    content = file.read_bytes()
    header_len = int.from_bytes(content[:8], "little")
    header = json.loads(content[8 : 8 + header_len])
    header["pooler.dense.bias"]["shape"] = [33]  # 32 floats in the file
    raw = json.dumps(header).encode()
    file.write_bytes(len(raw).to_bytes(8, "little") + raw + content[8 + header_len :])
    message = r"'pooler\.dense\.bias' \(F32, shape \(33,\)\) needs 132 bytes but its data offsets span 128"
    with pytest.raises(CheckpointFormatError, match=message):
        from_pretrained(tiny)


def test_cut_short_or_invalid_config_is_named(tiny):
    config_file = tiny / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps(config)[:60])
    with pytest.raises(CheckpointFormatError, match=rf"{config_file} is not valid JSON .*column \d+.*cut short"):
        from_pretrained(tiny)
    config_file.write_text("[1, 2]")
    with pytest.raises(CheckpointFormatError, match=r"holds a JSON list, not an object"):
        from_pretrained(tiny)
    config_file.write_text(json.dumps({**config, "hidden_size": "32", "num_hidden_layers": None}))
    with pytest.raises(ValueError, match=rf"{config_file}: the config does not describe a TextEncoderConfig: "
                                         "hidden_size='32' is not of type int; num_hidden_layers is missing"):
        from_pretrained(tiny)


def test_broken_shard_index_and_legacy_bin_are_named(tmp_path, tiny):
    (tiny / "model.safetensors.index.json").write_text('{"weight_map": {"a": "model-00001-of-00002.safetensors"}')
    with pytest.raises(CheckpointFormatError, match=r"model\.safetensors\.index\.json is not valid JSON"):
        read_tensors(tiny)
    (tiny / "model.safetensors.index.json").write_text('{"weight_map": {"a": "model-00001-of-00002.safetensors"}}')
    with pytest.raises(CheckpointNotFoundError, match=r"\['model-00001-of-00002\.safetensors'\] that are not in"):
        read_tensors(tiny)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointFormatError, match=r"pytorch_model\.bin is not a readable PyTorch checkpoint"):
        read_tensors(tmp_path / "bin")


def test_directory_without_config_or_weights(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="has no config.json"):
        resolve_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointNotFoundError, match="No weights in"):
        read_tensors(resolve_checkpoint(tmp_path))


def test_offline_hub_id_without_cache_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointNotFoundError, match=r"'orca-jax-tests/no-such-model'.*hf download"):
        resolve_checkpoint("orca-jax-tests/no-such-model")


def test_unsupported_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type='gpt2' is not supported"):
        from_pretrained(tmp_path)


def test_verify_weights_script_passes_and_fails_on_tolerance(tiny, capsys):
    from scripts.verify_weights import main

    assert main([str(tiny)]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main([str(tiny), "--tolerance", "0"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_non_finite_differences_fail():
    from orca_jax.parity import Comparison, worst

    comparisons = [Comparison("a", 1e-6), Comparison("b", float("nan")), Comparison("c", 3e-5), Comparison("d", np.inf)]
    assert [c.within(1e-4) for c in comparisons] == [True, False, True, False]
    assert worst(comparisons).name == "b"
    assert worst(comparisons[2:]).name == "d" and worst(comparisons[:1] + comparisons[2:3]).name == "c"


def test_verify_weights_script_fails_on_nan_weights(tiny, capsys):
    from scripts.verify_weights import main

    _edit(tiny, lambda t: t["encoder.layer.1.output.dense.weight"].__setitem__((0, 0), np.nan))
    assert main([str(tiny)]) == 1
    *lines, verdict = capsys.readouterr().out.splitlines()
    flags = {line.split("max|diff|")[0].strip(): line.split(" = ")[1] for line in lines}
    assert flags["input_ids/layer 1"].endswith("  ok")  # before the NaN
    assert flags["input_ids/layer 2"] == "nan  FAIL (not finite)"
    assert verdict == "FAIL: 6 of 12 comparisons fail; worst input_ids, no mask/layer 2 nan vs tolerance 0.0001"


def test_parameters_are_cast_to_the_param_dtype_not_the_compute_dtype(tiny):
    assert from_pretrained(tiny, param_dtype=jnp.bfloat16).embeddings.word.embedding.dtype == jnp.bfloat16
    assert from_pretrained(tiny, dtype=jnp.bfloat16).embeddings.word.embedding.dtype == jnp.float32
