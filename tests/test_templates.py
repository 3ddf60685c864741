"""Exact rendered strings and exact label masks for a 2-turn Chinese dialogue."""

import pytest
from conftest import DIALOGUE

from medtune.data.encode import IGNORE_INDEX, assistant_spans, encode_messages, prompt_ids
from medtune.data.templates import TemplateError, available, load_template
from medtune.errors import ConfigError

SPECIALS = {"bos_token": "<s>", "eos_token": "</s>"}

EXPECTED = {
    "chatml": "<|im_start|>user\n我最近总是头痛，怎么办？<|im_end|>\n<|im_start|>assistant\n建议先测量血压，注意休息。<|im_end|>\n"
              "<|im_start|>user\n血压有点高，需要吃药吗？<|im_end|>\n<|im_start|>assistant\n请到心内科就诊，遵医嘱用药。<|im_end|>\n",
    "qwen": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\n我最近总是头痛，怎么办？<|im_end|>\n<|im_start|>assistant\n建议先测量血压，注意休息。<|im_end|>\n"
            "<|im_start|>user\n血压有点高，需要吃药吗？<|im_end|>\n<|im_start|>assistant\n请到心内科就诊，遵医嘱用药。<|im_end|>\n",
    "gemma": "<s><start_of_turn>user\n我最近总是头痛，怎么办？<end_of_turn>\n<start_of_turn>model\n建议先测量血压，注意休息。<end_of_turn>\n"
             "<start_of_turn>user\n血压有点高，需要吃药吗？<end_of_turn>\n<start_of_turn>model\n请到心内科就诊，遵医嘱用药。<end_of_turn>\n",
    "llama2": "<s>[INST] 我最近总是头痛，怎么办？ [/INST] 建议先测量血压，注意休息。 </s>"
              "<s>[INST] 血压有点高，需要吃药吗？ [/INST] 请到心内科就诊，遵医嘱用药。 </s>",
    "vicuna": "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
              "detailed, and polite answers to the user's questions. USER: 我最近总是头痛，怎么办？ ASSISTANT: "
              "建议先测量血压，注意休息。</s>USER: 血压有点高，需要吃药吗？ ASSISTANT: 请到心内科就诊，遵医嘱用药。</s>",
    "chatglm": "[Round 1]\n\n问：我最近总是头痛，怎么办？\n\n答：建议先测量血压，注意休息。</s>\n\n"
               "[Round 2]\n\n问：血压有点高，需要吃药吗？\n\n答：请到心内科就诊，遵医嘱用药。</s>\n\n",
    "medical": "以下是病人和医生之间的对话。医生根据病人的描述，给出专业、准确、易懂的回答。\n"
               "病人：我最近总是头痛，怎么办？\n医生：建议先测量血压，注意休息。</s>\n"
               "病人：血压有点高，需要吃药吗？\n医生：请到心内科就诊，遵医嘱用药。</s>\n",
    # reasoning templates without reasoning: the empty thinking block, as enable_thinking=false serves
    "qwen3": "<|im_start|>user\n我最近总是头痛，怎么办？<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
             "建议先测量血压，注意休息。<|im_end|>\n<|im_start|>user\n血压有点高，需要吃药吗？<|im_end|>\n"
             "<|im_start|>assistant\n<think>\n\n</think>\n\n请到心内科就诊，遵医嘱用药。<|im_end|>\n",
    "deepseek_r1": "<s><｜User｜>我最近总是头痛，怎么办？<｜Assistant｜><think>\n\n</think>\n\n建议先测量血压，注意休息。</s>"
                   "<｜User｜>血压有点高，需要吃药吗？<｜Assistant｜><think>\n\n</think>\n\n请到心内科就诊，遵医嘱用药。</s>",
}

# What carries loss: each answer plus the end-of-turn string, nothing of the prompts.
SUPERVISED = {
    "chatml": ["建议先测量血压，注意休息。<|im_end|>", "请到心内科就诊，遵医嘱用药。<|im_end|>"],
    "gemma": ["建议先测量血压，注意休息。<end_of_turn>", "请到心内科就诊，遵医嘱用药。<end_of_turn>"],
    "llama2": [" 建议先测量血压，注意休息。 </s>", " 请到心内科就诊，遵医嘱用药。 </s>"],
    "vicuna": [" 建议先测量血压，注意休息。</s>", " 请到心内科就诊，遵医嘱用药。</s>"],
    "chatglm": ["建议先测量血压，注意休息。</s>", "请到心内科就诊，遵医嘱用药。</s>"],
    "medical": ["建议先测量血压，注意休息。</s>", "请到心内科就诊，遵医嘱用药。</s>"],
    "qwen3": ["<think>\n\n</think>\n\n建议先测量血压，注意休息。<|im_end|>", "<think>\n\n</think>\n\n请到心内科就诊，遵医嘱用药。<|im_end|>"],
    # the generation prompt opens the block: the model learns to close it
    "deepseek_r1": ["\n</think>\n\n建议先测量血压，注意休息。</s>", "\n</think>\n\n请到心内科就诊，遵医嘱用药。</s>"],
}


def test_every_template_is_pinned():
    assert set(available()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_rendered_string(name):
    assert load_template(name).render(DIALOGUE, SPECIALS) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(SUPERVISED))
def test_supervised_spans(name):
    text, spans = assistant_spans(load_template(name), DIALOGUE, SPECIALS)
    assert [text[s:e] for s, e in spans] == SUPERVISED[name]
    _, last = assistant_spans(load_template(name), DIALOGUE, SPECIALS, mask="last")
    assert last == spans[-1:]


def test_generation_prompts():
    assert load_template("gemma").render(DIALOGUE[:1], {"bos_token": "<bos>"}, add_generation_prompt=True) == \
        "<bos><start_of_turn>user\n我最近总是头痛，怎么办？<end_of_turn>\n<start_of_turn>model\n"
    assert load_template("medical").render(DIALOGUE[:1], SPECIALS, add_generation_prompt=True).endswith(
        "病人：我最近总是头痛，怎么办？\n医生：")


def test_system_message_placement():
    msgs = [{"role": "system", "content": "你是医生。"}] + DIALOGUE[:2]
    assert load_template("gemma").render(msgs, {"bos_token": "<bos>"}).startswith(
        "<bos><start_of_turn>user\n你是医生。\n\n我最近总是头痛，怎么办？<end_of_turn>")
    assert load_template("llama2").render(msgs, SPECIALS).startswith(
        "<s>[INST] <<SYS>>\n你是医生。\n<</SYS>>\n\n我最近总是头痛，怎么办？ [/INST]")


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("mask", ["all", "last"])
def test_exact_label_mask_chatml(tiny_tokenizer, mask):
    tok = tiny_tokenizer
    enc = encode_messages(tok, load_template("chatml"), DIALOGUE, max_length=512, mask=mask)
    p1 = _ids(tok, "<|im_start|>user\n我最近总是头痛，怎么办？<|im_end|>\n<|im_start|>assistant\n")
    a1 = _ids(tok, "建议先测量血压，注意休息。<|im_end|>")
    p2 = _ids(tok, "\n<|im_start|>user\n血压有点高，需要吃药吗？<|im_end|>\n<|im_start|>assistant\n")
    a2 = _ids(tok, "请到心内科就诊，遵医嘱用药。<|im_end|>")
    nl = _ids(tok, "\n")
    assert enc["input_ids"] == p1 + a1 + p2 + a2 + nl
    first = a1 if mask == "all" else [IGNORE_INDEX] * len(a1)
    assert enc["labels"] == [IGNORE_INDEX] * len(p1) + first + [IGNORE_INDEX] * len(p2) + a2 + [IGNORE_INDEX]
    # The end-of-turn token is supervised, so the model learns to stop.
    assert enc["labels"][len(p1) + len(a1) - 1] in (tok.convert_tokens_to_ids("<|im_end|>"), IGNORE_INDEX)
    assert enc["labels"][-2] == tok.convert_tokens_to_ids("<|im_end|>")


def test_exact_label_mask_gemma_starts_with_bos(tiny_tokenizer):
    tok = tiny_tokenizer
    enc = encode_messages(tok, load_template("gemma"), DIALOGUE[:2], max_length=512)
    assert enc["input_ids"][0] == tok.bos_token_id
    p1 = _ids(tok, "<bos><start_of_turn>user\n我最近总是头痛，怎么办？<end_of_turn>\n<start_of_turn>model\n")
    a1 = _ids(tok, "建议先测量血压，注意休息。<end_of_turn>")
    assert enc["labels"] == [IGNORE_INDEX] * len(p1) + a1 + [IGNORE_INDEX]


def test_serving_prompt_is_training_prefix(tiny_tokenizer):
    """The tokens a server feeds for a conversation equal what training saw for the same turns."""
    template = load_template("chatml")
    train = encode_messages(tiny_tokenizer, template, DIALOGUE, max_length=512)["input_ids"]
    serve = prompt_ids(tiny_tokenizer, template, DIALOGUE[:3])
    assert train[: len(serve)] == serve


def test_hf_apply_chat_template_matches(tiny_tokenizer):
    """Embedded as tokenizer.chat_template, the file renders identically through transformers."""
    for name in ("chatml", "gemma", "llama2", "medical", "qwen3", "deepseek_r1"):
        template = load_template(name)
        tiny_tokenizer.chat_template = template.source
        hf = tiny_tokenizer.apply_chat_template(DIALOGUE, tokenize=False)
        ours = template.render(DIALOGUE, {k: v for k, v in tiny_tokenizer.special_tokens_map.items()
                                          if isinstance(v, str)})
        assert hf == ours


def test_truncation_that_cuts_every_answer_drops_the_example(tiny_tokenizer):
    assert encode_messages(tiny_tokenizer, load_template("chatml"), DIALOGUE[:2], max_length=5) is None


def test_unknown_template_suggests():
    with pytest.raises(ConfigError, match="Did you mean 'gemma'"):
        load_template("gemmma")


def test_template_that_is_not_prefix_stable_is_refused(tmp_path):
    bad = tmp_path / "bad.jinja"
    bad.write_text('{#-\nend_of_turn: "</s>"\n-#}\n{% for m in messages %}{{ m.content }}{% endfor %}'
                   '{% if add_generation_prompt %}A:{% endif %}', encoding="utf-8")
    with pytest.raises(TemplateError, match="not prefix-stable"):
        assistant_spans(load_template(str(bad)), DIALOGUE[:2], SPECIALS)
