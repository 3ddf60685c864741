"""Write an exported (merged) Hugging Face folder as a GGUF file for llama.cpp, Ollama and friends.

Built on the `gguf` package (llama.cpp's own Python writer): its `TensorNameMap` gives the GGUF
tensor names, and the layout follows llama.cpp's convert_hf_to_gguf.py for the architectures
covered here — `llama` (Q/K rows permuted to llama.cpp's rotary layout, which transformers'
GGUF loader reverses) and `qwen2` with byte-level BPE (`gpt2`) tokenizers, and `gemma3` when the
base model itself came from a GGUF (`gguf:gemma3-270m`): Gemma's SentencePiece tokenizer carries
scores a Hugging Face folder does not keep, so its metadata is copied from the source file, and
norm weights are stored as w + 1 as llama.cpp does. Tensors are written
unquantised (F32 or F16); quantise afterwards with llama.cpp's `llama-quantize` if wanted. The chat
template goes in too, so a GGUF runtime renders prompts as training did.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medtune.errors import ConfigError, MedtuneError

ARCHS = {"llama": "LLAMA", "qwen2": "QWEN2", "gemma3_text": "GEMMA3"}
PRE_TOKENIZER = {"qwen2": "qwen2"}  # split regex name transformers/llama.cpp use; others: GPT-2's


def write_gguf(model: Any, tokenizer: Any, path: Path, dtype: str = "f32", source_gguf: Path | None = None) -> Path:
    """Write `model` (a plain transformers model, adapters merged) and its tokenizer to `path`.

    `source_gguf`: the GGUF the base model was converted from, needed for Gemma (tokenizer metadata)."""
    try:
        import gguf
    except ImportError:
        raise MedtuneError("GGUF export needs the gguf package: pip install 'medtune[gguf]'.") from None
    import numpy as np

    config = model.config
    arch = config.model_type
    if arch not in ARCHS:
        raise ConfigError(f"GGUF export supports {', '.join(ARCHS)} models; this one is {arch!r}. Convert the "
                          "exported Hugging Face folder with llama.cpp's convert_hf_to_gguf.py instead.")
    if dtype not in ("f32", "f16"):
        raise ConfigError(f"export.gguf_dtype must be f32 or f16; got {dtype!r}.")
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, ARCHS[arch])])
    if arch == "gemma3_text":
        if source_gguf is None:
            raise ConfigError("GGUF export of Gemma needs a base loaded from GGUF (model.name_or_path: gguf:...), "
                              "whose SentencePiece tokenizer metadata it reuses.")
        _copy_metadata(writer, source_gguf, gguf)
    else:
        _add_metadata(writer, config, gguf, dtype)
        _add_tokenizer(writer, tokenizer, arch, gguf)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)

    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, ARCHS[arch]), config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied: GGUF runtimes reuse token_embd
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise MedtuneError(f"GGUF export: no GGUF name for tensor {hf_name!r}.")
        data = tensor.detach().float().cpu().numpy()
        if arch == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_attention_heads if "q_proj" in hf_name else config.num_key_value_heads
            data = _permute(data, heads)
        if arch == "gemma3_text" and hf_name.endswith("norm.weight"):
            data = data + 1.0  # Gemma's RMSNorm scales by (1 + w); llama.cpp stores 1 + w
        # 1-D tensors (norms, biases) stay F32, as llama.cpp writes them.
        writer.add_tensor(name, data.astype(np.float16 if dtype == "f16" and data.ndim > 1 else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_metadata(writer: Any, config: Any, gguf: Any, dtype: str) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(Path(getattr(config, "_name_or_path", "model") or "model").name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(_rope_theta(config)))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)


def _copy_metadata(writer: Any, source: Path, gguf: Any) -> None:
    """Every key/value of the source GGUF but its own bookkeeping (architecture, counts, file type)."""
    reader = gguf.GGUFReader(str(source))
    skip = {"general.architecture", "general.file_type", "general.quantization_version", "tokenizer.chat_template"}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in skip:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)


def _add_tokenizer(writer: Any, tokenizer: Any, arch: str, gguf: Any) -> None:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise ConfigError("GGUF export supports byte-level BPE tokenizers (Llama-3, Qwen, GPT-2 style) only.")
    vocab = tokenizer.get_vocab()
    tokens = [""] * len(vocab)
    for token, idx in vocab.items():
        tokens[idx] = token
    special = set(tokenizer.all_special_tokens)
    added = {t.content for t in tokenizer.added_tokens_decoder.values()}
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.USER_DEFINED if t in added
             else gguf.TokenType.NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZER.get(arch, "default"))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name, setter in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                         ("pad", writer.add_pad_token_id), ("unk", writer.add_unk_token_id)):
        token_id = getattr(tokenizer, f"{name}_token_id")
        if token_id is not None:
            setter(token_id)
    writer.add_add_bos_token(False)  # medtune's templates write the BOS themselves where one is needed


def _permute(weights: Any, n_head: int) -> Any:
    """llama.cpp's rotary layout for Q/K rows (convert_hf_to_gguf.py LlamaModel.permute)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return params.get("rope_theta") or getattr(config, "rope_theta", 10000.0)


QUANTS = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
          "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}


def quantize(source: Path, kind: str, threads: int = 0) -> Path:
    """`model.gguf` → `model-<kind>.gguf` with llama.cpp's quantiser (through llama-cpp-python's C API).
    Tensors whose rows do not fit a k-quant block are given llama.cpp's own fallback type."""
    import ctypes

    if kind not in QUANTS:
        raise ConfigError(f"export.gguf_quantize: {kind!r} is not one of {', '.join(QUANTS)}.")
    try:
        import llama_cpp
    except ImportError:
        raise MedtuneError("GGUF quantisation uses llama.cpp's quantiser: install llama-cpp-python (`make llamacpp` "
                           "builds it from PyPI, ~10 min on 2 cores), or run llama.cpp's llama-quantize on model.gguf.") \
            from None
    target = source.with_name(f"{source.stem}-{kind}.gguf")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTS[kind])
    params.nthread = threads
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
        raise MedtuneError(f"llama.cpp could not quantise {source} to {kind} (see its log above).")
    return target


# Templates whose Jinja file adds a system prompt when the conversation has none: Ollama does it with SYSTEM.
DEFAULT_SYSTEM = {"qwen": "You are a helpful assistant."}


def write_modelfile(folder: Path, template: Any, tokenizer: Any, generation: Any, gguf_name: str = "model.gguf") -> Path | None:
    """An Ollama Modelfile beside the GGUF: FROM, the template as Ollama's Go template (a `<name>.ollama`
    file beside the Jinja one, written to render the same text), the end-of-turn stop and the decoding
    settings. Templates without a translation get none (said in the log): a wrong TEMPLATE is worse."""
    import logging

    from medtune.data.encode import special_tokens
    from medtune.data.templates import TEMPLATE_DIR

    source = TEMPLATE_DIR / f"{template.name}.ollama"
    if not source.is_file():
        logging.getLogger(__name__).info("no Ollama translation of template %s: no Modelfile written (write "
                                         "TEMPLATE by hand)", template.name)
        return None
    text = source.read_text(encoding="utf-8").replace("[[eos_token]]", tokenizer.eos_token or "")
    stop = template.stop_string(special_tokens(tokenizer))
    lines = [f"# Written by medtune export: ollama create NAME -f {folder.name}/Modelfile", f"FROM ./{gguf_name}",
             f'TEMPLATE """{text}"""', f'PARAMETER stop "{stop}"']
    if generation.do_sample:
        lines += [f"PARAMETER temperature {generation.temperature}", f"PARAMETER top_p {generation.top_p}",
                  f"PARAMETER top_k {generation.top_k}"]
    else:
        lines.append("PARAMETER temperature 0")
    lines += [f"PARAMETER repeat_penalty {generation.repetition_penalty}", f"PARAMETER num_predict {generation.max_new_tokens}"]
    if system := DEFAULT_SYSTEM.get(template.name):
        lines.append(f'SYSTEM """{system}"""')
    path = folder / "Modelfile"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
