"""Reasoning templates (qwen3, deepseek_r1): thinking data converts, data.thinking keep / drop / mask gives
exact label spans, serving splits reasoning_content from content (whole and streamed) and honours
enable_thinking, and the template survives train → export → GGUF."""

import json

import pytest
from conftest import ROOT

from medtune.cli import main
from medtune.data.encode import assistant_spans, label_policy
from medtune.data.templates import load_template
from medtune.errors import ConfigError

SPECIALS = {"bos_token": "<s>", "eos_token": "</s>"}
LORA = str(ROOT / "configs/tiny/sft_lora.yaml")
THOUGHT = [{"role": "user", "content": "头痛怎么办？"},
           {"role": "assistant", "content": "多休息。", "reasoning_content": "头痛常见于疲劳。"}]


@pytest.mark.parametrize("thinking, supervised", [
    ("keep", ["头痛常见于疲劳。\n</think>\n\n多休息。<|im_end|>"]),
    ("drop", ["<think>\n\n</think>\n\n多休息。<|im_end|>"]),
    ("mask", ["多休息。<|im_end|>"]),
])
def test_thinking_keep_drop_mask_label_spans(thinking, supervised):
    text, spans = assistant_spans(load_template("qwen3"), THOUGHT, SPECIALS, label_policy("all", thinking))
    assert [text[s:e] for s, e in spans] == [x if thinking != "keep" else "<think>\n" + x for x in supervised]
    assert ("头痛常见于疲劳" in text) == (thinking != "drop")


def test_deepseek_r1_masks_its_reasoning_too():
    text, spans = assistant_spans(load_template("deepseek_r1"), THOUGHT, SPECIALS, label_policy("all", "mask"))
    assert text == "<s><｜User｜>头痛怎么办？<｜Assistant｜><think>\n头痛常见于疲劳。\n</think>\n\n多休息。</s>"
    assert [text[s:e] for s, e in spans] == ["多休息。</s>"]


def test_bad_thinking_value_is_refused():
    with pytest.raises(ConfigError, match="data.thinking must be one of keep, drop, mask"):
        label_policy("all", "hide")


def test_reasoning_converts_from_think_tags_fields_and_columns(tmp_path):
    from medtune.data.datasets import resolve
    from medtune.data.formats import FORMATS

    (tmp_path / "r1.jsonl").write_text(json.dumps({"messages": [
        {"role": "user", "content": "发烧怎么办？"},
        {"role": "assistant", "content": "<think>\n先看体温。\n</think>\n\n多喝水。"}]}, ensure_ascii=False) + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "咳嗽？"},
                                   {"role": "assistant", "content": "观察。", "reasoning_content": "可能感冒。"}]},
                     ensure_ascii=False) + "\n", encoding="utf-8")
    (tmp_path / "o1.json").write_text(json.dumps([{"Question": "胸痛？", "Complex_CoT": "排除心梗。", "Response": "就医。"}],
                                                 ensure_ascii=False), encoding="utf-8")
    (tmp_path / "reg.yaml").write_text(f"""
r1: {{path: {tmp_path / 'r1.jsonl'}, format: openai, license: test}}
o1: {{path: {tmp_path / 'o1.json'}, format: alpaca, columns: {{instruction: Question, output: Response, reasoning: Complex_CoT}},
      license: test}}
""")
    got = {}
    for name in ("r1", "o1"):
        (spec,) = resolve([name], [str(tmp_path / "reg.yaml")])
        got[name] = [i.example["messages"][-1] for i in FORMATS.get(spec.format)(spec)]
    assert got["r1"] == [{"role": "assistant", "content": "多喝水。", "reasoning_content": "先看体温。"},
                         {"role": "assistant", "content": "观察。", "reasoning_content": "可能感冒。"}]
    assert got["o1"] == [{"role": "assistant", "content": "就医。", "reasoning_content": "排除心梗。"}]


def test_streamed_split_matches_the_whole_one():
    from medtune.infer.thinking import ThinkSplit, split

    for text, inside in [("<think>\n想\n一想\n</think>\n\n答\n案", False), ("想\n一想\n</think>\n\n答\n案", True)]:
        s = ThinkSplit("<think>\n", "\n</think>\n\n", inside)
        parts = [p for ch in text for p in s.feed(ch)] + s.flush()
        streamed = tuple("".join(t for f, t in parts if f == field) for field in ("reasoning_content", "content"))
        assert streamed == split(text, "<think>\n", "\n</think>\n\n", inside) == ("想\n一想", "答\n案")
    assert split("只是回答", "<think>\n", "\n</think>\n\n", False) == ("", "只是回答")
    assert split("想到一半被截断", "<think>\n", "\n</think>\n\n", True) == ("想到一半被截断", "")


@pytest.fixture(scope="module")
def thinker(tmp_path_factory):
    """A tiny qwen2 fully tuned on one reasoning answer with the qwen3 template, exported with its GGUF."""
    d = tmp_path_factory.mktemp("thinker")
    rows = [{"messages": [{"role": "user", "content": "头痛怎么办？"},
                          {"role": "assistant", "content": "多休息，少熬夜。", "reasoning_content": "头痛多见于疲劳。"}]},
            {"messages": [{"role": "user", "content": "发烧了吃什么药？"},
                          {"role": "assistant", "content": "可以服用退烧药。", "reasoning_content": "先量体温。"}]}]
    (d / "r.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) * 4, encoding="utf-8")
    (d / "reg.yaml").write_text(f"r: {{path: {d / 'r.jsonl'}, format: openai, license: test, source: test}}\n")
    common = ["model.name_or_path=tiny:qwen2", "model.template=qwen3", f"train.output_dir={d / 'run'}"]
    assert main(["train", LORA, *common, f"data.registries=[{d / 'reg.yaml'}]", "data.datasets=[r]", "data.test_size=0",
                 "train.eval_strategy=no", "finetune.method=full", "train.learning_rate=1e-2", "train.max_steps=60",
                 "train.per_device_train_batch_size=8", "train.save_steps=1000",
                 "train.lr_scheduler_type=constant"]) == 0
    assert main(["export", LORA, *common, f"export.output_dir={d / 'export'}", "export.gguf=true",
                 "export.gguf_dtype=f32"]) == 0
    return d


def test_template_renders_identically_after_export_and_in_the_gguf(thinker):
    pytest.importorskip("gguf")
    import gguf
    from transformers import AutoTokenizer

    out = thinker / "export"
    field = gguf.GGUFReader(str(out / "model.gguf")).fields["tokenizer.chat_template"]
    assert field.contents() == load_template("qwen3").source
    back = AutoTokenizer.from_pretrained(out, gguf_file="model.gguf")
    specials = {k: v for k, v in back.special_tokens_map.items() if isinstance(v, str)}
    for switch in ({}, {"enable_thinking": False}):
        ours = load_template("qwen3").render(THOUGHT[:1], specials, add_generation_prompt=True, **switch)
        assert back.apply_chat_template(THOUGHT[:1], tokenize=False, add_generation_prompt=True, **switch) == ours
    assert back.apply_chat_template(THOUGHT, tokenize=False) == load_template("qwen3").render(THOUGHT, specials)


def test_api_returns_reasoning_content_and_honours_enable_thinking(thinker):
    from test_serve import serving

    with serving(str(thinker / "export"), "model.template=qwen3") as server:
        reply = server.client.chat.completions.create(model="x", messages=THOUGHT[:1], max_tokens=48)
        message = reply.choices[0].message
        assert (message.model_extra["reasoning_content"], message.content) == ("头痛多见于疲劳。", "多休息，少熬夜。")
        chunks = list(server.client.chat.completions.create(model="x", messages=THOUGHT[:1], max_tokens=48, stream=True))
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        reasoning = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
        assert (reasoning, "".join(d.content or "" for d in deltas)) == ("头痛多见于疲劳。", "多休息，少熬夜。")
        first_content = next(i for i, d in enumerate(deltas) if d.content)
        assert all(not (d.model_extra or {}).get("reasoning_content") for d in deltas[first_content:])
        off = server.client.chat.completions.create(model="x", messages=THOUGHT[:1], max_tokens=8,
                                                    extra_body={"chat_template_kwargs": {"enable_thinking": False}})
        closed = server.engine.prompt_ids(THOUGHT[:1], enable_thinking=False)
        assert off.usage.prompt_tokens == len(closed) > reply.usage.prompt_tokens
        bad = server.client.with_options(max_retries=0)
        with pytest.raises(openai_error()) as e:
            bad.chat.completions.create(model="x", messages=THOUGHT[:1], extra_body={"chat_template_kwargs": {"x": 1}})
        assert "chat_template_kwargs.x is not supported" in str(e.value)


def openai_error():
    import openai

    return openai.BadRequestError
