"""Tiny random BERT-family checkpoints written with transformers' save_pretrained, for parity and loading tests."""

import string
from pathlib import Path

import torch
import transformers

# Each differs in what the family takes from config.json: positions (offset, pad id), token types, epsilon,
# activation, widths.
TINY_TEXT_CONFIGS = {
    "bert-gelu": (transformers.BertConfig, dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                intermediate_size=48, vocab_size=97, max_position_embeddings=40)),
    "bert-tanh-gelu-3types": (transformers.BertConfig, dict(hidden_size=24, num_hidden_layers=3, num_attention_heads=3,
                                                            intermediate_size=40, vocab_size=61, type_vocab_size=3,
                                                            hidden_act="gelu_new", layer_norm_eps=1e-5,
                                                            max_position_embeddings=32, pad_token_id=3)),
    "roberta": (transformers.RobertaConfig, dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                 intermediate_size=64, vocab_size=101, max_position_embeddings=34,
                                                 type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5)),
    "roberta-relu-pad0": (transformers.RobertaConfig, dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                           intermediate_size=32, vocab_size=50, max_position_embeddings=20,
                                                           type_vocab_size=1, pad_token_id=0, hidden_act="relu")),
    "xlm-roberta": (transformers.XLMRobertaConfig, dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                        intermediate_size=40, vocab_size=120, max_position_embeddings=36,
                                                        type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5)),
    "xlm-roberta-2types": (transformers.XLMRobertaConfig, dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=4,
                                                               intermediate_size=24, vocab_size=80,
                                                               max_position_embeddings=30, type_vocab_size=2,
                                                               pad_token_id=2)),
}


# A character-level WordPiece vocabulary of 87 entries ([PAD] at 1, RoBERTa's pad id): any lower-case English text
# tokenizes into ids that fit a tiny model's embedding table, so source sentences get distinct features.
_CHARS = list(string.ascii_lowercase) + list(string.digits)
TINY_VOCAB = ["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]"] + _CHARS + ["##" + c for c in _CHARS] + list(".,()_:'\"=-")


def save_tiny_text_model(
    name: str, directory: Path, *, task_model: bool = False, seed: int = 0, tokenizer: bool = False
) -> Path:
    """Saves a random model of TINY_TEXT_CONFIGS[name]; `task_model` saves a ...ForSequenceClassification;
    `tokenizer` adds a character-level tokenizer (for source features of text sets)."""
    config_cls, kwargs = TINY_TEXT_CONFIGS[name]
    config = config_cls(**kwargs)
    torch.manual_seed(seed)
    if task_model:
        model = transformers.AutoModelForSequenceClassification.from_config(config)
    else:
        model = transformers.AutoModel.from_config(config)
    # Random init gives near-identical layer norms and tiny biases; perturb every parameter so that a wrong
    # mapping (e.g. scale <-> bias, a missed transpose) cannot hide behind the initialisation.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(directory)
    if tokenizer:
        if len(TINY_VOCAB) > config.vocab_size:
            raise ValueError(f"{name} has {config.vocab_size} token ids, fewer than the tiny tokenizer's {len(TINY_VOCAB)}.")
        transformers.BertTokenizer(vocab={t: i for i, t in enumerate(TINY_VOCAB)}).save_pretrained(directory)
    return directory
