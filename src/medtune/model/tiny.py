"""Tiny random-init models of real architectures, built locally in seconds.

`model.name_or_path: tiny:llama` (or `tiny:qwen2`, `tiny:gemma3`) runs any config without a
download: a byte-level BPE tokenizer is trained on medtune's shipped Chinese medical sample, a
2-layer model of the named architecture is initialised with a fixed seed, and both are saved to
`$MEDTUNE_CACHE/tiny/<arch>` (default `~/.cache/medtune`). Later runs load that folder like any
Hugging Face model, so train → save → reload → chat behaves exactly as with a real model.
The weights are random: outputs are noise, but shapes, masks, adapters and files are real.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from medtune.errors import ConfigError

# Every template's special strings, so one tiny tokenizer can render any template in the repo.
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>", "<|im_start|>", "<|im_end|>", "<|endoftext|>",
            "<start_of_turn>", "<end_of_turn>"]
ARCHS = ("llama", "qwen2", "gemma3")
VOCAB_SIZE = 3000
SEED = 1234


def cache_dir() -> Path:
    return Path(os.environ.get("MEDTUNE_CACHE", Path.home() / ".cache" / "medtune"))


def tiny_model_path(arch: str) -> Path:
    """Return the folder of tiny model `arch`, building it on first use."""
    if arch not in ARCHS:
        raise ConfigError(f"Unknown tiny architecture {arch!r}; use one of {', '.join(ARCHS)} (tiny:llama).")
    path = cache_dir() / "tiny" / arch
    if not (path / "config.json").exists():
        build_tiny(arch, path)
    return path


def build_tiny(arch: str, path: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = _train_tokenizer()
    shape = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                 pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    if arch == "gemma3":
        shape.update(model_type="gemma3_text", head_dim=16, sliding_window=64)
    config = AutoConfig.for_model(shape.pop("model_type", arch), **shape)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config)
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(path)  # atomic: a half-built folder is never mistaken for a model


def _train_tokenizer():
    """An 3k-token byte-level BPE trained on the shipped Chinese medical sample (about a second)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    sample = Path(__file__).parents[1] / "data" / "samples" / "toyhom_neike_sample.csv"
    rows = csv.DictReader(io.StringIO(sample.read_bytes().decode("gb18030")))
    corpus = [f"{r['title']}\n{r['ask']}\n{r['answer']}" for r in rows]
    corpus += ["病人：\n医生：\nUSER: ASSISTANT: [INST] [/INST] <<SYS>> <</SYS>> [Round 1] 问：答："
               " user assistant system model You are a helpful assistant."]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>",
                                   additional_special_tokens=SPECIALS[4:])
