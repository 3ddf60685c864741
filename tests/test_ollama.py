"""Each Ollama template (`<name>.ollama`) renders what its Jinja twin renders, checked with a small Go
text/template interpreter (tests/gotemplate.py); export writes the Modelfile beside model.gguf."""

from types import SimpleNamespace

import pytest
from conftest import DIALOGUE
from gotemplate import render

from medtune.data.templates import TEMPLATE_DIR, load_template

REASONED = [DIALOGUE[0], {**DIALOGUE[1], "reasoning_content": "头痛可能与血压有关。"}, DIALOGUE[2]]
NO_BOS = {"bos_token": "", "eos_token": "</s>"}  # llama.cpp adds BOS itself (tokenizer.ggml.add_bos_token)


@pytest.mark.parametrize("name", sorted(p.stem for p in TEMPLATE_DIR.glob("*.ollama")))
def test_ollama_template_renders_what_the_jinja_one_renders(name):
    source = (TEMPLATE_DIR / f"{name}.ollama").read_text(encoding="utf-8").replace("[[eos_token]]", "</s>")
    jinja = load_template(name)
    system = [{"role": "system", "content": "You are a helpful assistant."}] if name == "qwen" else []
    for messages in (DIALOGUE[:3], [{"role": "system", "content": "你是医生。"}, *DIALOGUE[:3]], REASONED):
        expected = jinja.render(messages, NO_BOS, add_generation_prompt=True)
        ollama_messages = messages if messages[0]["role"] == "system" else system + messages
        assert render(source, ollama_messages) == expected, name
    if jinja.thinking:  # the think switch off: the empty block in the prompt
        assert render(source, REASONED, IsThinkSet=True, Think=False) == \
            jinja.render(REASONED, NO_BOS, add_generation_prompt=True, enable_thinking=False)


def test_modelfile_has_the_template_stop_and_decoding(tmp_path):
    from medtune.config import GenerationConfig
    from medtune.export_gguf import write_modelfile

    tok = SimpleNamespace(eos_token="</s>", special_tokens_map={"eos_token": "</s>", "bos_token": "<s>"})
    path = write_modelfile(tmp_path, load_template("qwen"), tok, GenerationConfig(do_sample=False))
    text = path.read_text(encoding="utf-8")
    assert "FROM ./model.gguf\n" in text and 'PARAMETER stop "<|im_end|>"' in text
    assert "PARAMETER temperature 0\n" in text and 'SYSTEM """You are a helpful assistant."""' in text
    assert text.split('TEMPLATE """')[1].split('"""')[0] == (TEMPLATE_DIR / "qwen.ollama").read_text(encoding="utf-8")
    assert write_modelfile(tmp_path / "x", load_template("llama2"), tok, GenerationConfig()) is None  # no translation
