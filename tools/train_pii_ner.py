"""Train a small character-level token classifier for names and addresses, for `{redact: {model: PATH}}`.

    python tools/train_pii_ner.py OUT [--records 24000] [--epochs 3] [--seed 7]

Why: the rules find a name from the words around it (a label, a kinship word, a title), so a wording no rule
has seen goes unfound (NAME recall on a blind split: 0.69, 0.77, 0.73 for three successive rule sets). A
model learns what a name looks like next to what is around it, from many more contexts than a rule list.

Data, all generated or shipped (no download, nothing from ../shared):
- records from benchmarks/pii_generator.py's dev, test and holdout templates (never holdout2, the blind
  split), with given names drawn from the characters of jieba's dictionary's person names (nr) rather than
  the generator's own list, so the model does not learn that list;
- the shipped Toyhom sample's asks and answers (src/medtune/data/samples) as text without PII, so ordinary
  consultation language stays unflagged.
Labels: BIO per character for NAME and ADDRESS (the number types stay with the rules, which score 1.00 on
them). Model: a 3-layer BERT over single characters, random init, saved with its tokenizer as a Hugging Face
token-classification folder (`PER` / `ADDR` entities, which pii.MODEL_LABELS maps to NAME / ADDRESS).
"""

from __future__ import annotations

import argparse
import collections
import csv
import io
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["O", "B-PER", "I-PER", "B-ADDR", "I-ADDR"]
KIND = {"NAME": "PER", "ADDRESS": "ADDR"}
MAX_CHARS = 254  # + [CLS] and [SEP]


def name_characters(top: int = 600) -> list[str]:
    """Given-name characters by frequency among jieba's three-character person names with a known surname."""
    from medtune.data.pii import _SURNAMES, _word_tags

    counts: collections.Counter[str] = collections.Counter()
    for word, tag in _word_tags().items():
        if tag == "nr" and len(word) == 3 and word[0] in _SURNAMES and all("\u4e00" <= c <= "\u9fa5" for c in word):
            counts.update(word[1:])
    return [c for c, _ in counts.most_common(top)]


def records(n: int, seed: int) -> list[tuple[str, list[dict]]]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import pii_generator as gen

    templates = [t for _, _, t in gen.TEMPLATES] + [t for _, _, t in gen.HOLDOUT]
    filler = gen.Filler(random.Random(seed), given=name_characters())
    rng = random.Random(seed + 1)
    out = [filler.fill(rng.choice(templates)) for _ in range(n)]
    toyhom = ROOT / "src/medtune/data/samples/toyhom_neike_sample.csv"
    rows = list(csv.DictReader(io.StringIO(toyhom.read_bytes().decode("gb18030"))))
    out += [(text, []) for r in rows for text in (r["ask"], r["answer"]) if text.strip()]
    rng.shuffle(out)
    return out


def tags(text: str, spans: list[dict]) -> list[str]:
    out = ["O"] * len(text)
    for s in spans:
        if s["type"] in KIND:
            out[s["start"]] = f"B-{KIND[s['type']]}"
            for i in range(s["start"] + 1, s["end"]):
                out[i] = f"I-{KIND[s['type']]}"
    return out


def build_tokenizer(texts: list[str]):
    """One token per character (spaces and newlines included), [UNK] for characters never seen."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = sorted({c for t in texts for c in t} | {chr(c) for c in range(0x4e00, 0x9fa6)})
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *chars])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", model_max_length=MAX_CHARS + 2)


def main() -> int:
    import torch
    from transformers import BertConfig, BertForTokenClassification

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--records", type=int, default=24000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    data = [(t[:MAX_CHARS], tags(t, s)[:MAX_CHARS]) for t, s in records(args.records, args.seed)]
    tok = build_tokenizer([t for t, _ in data])
    label_id = {lab: i for i, lab in enumerate(LABELS)}
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=192, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=384, max_position_embeddings=MAX_CHARS + 2, num_labels=len(LABELS),
                     id2label=dict(enumerate(LABELS)), label2id=label_id)
    model = BertForTokenClassification(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
    steps = args.epochs * ((len(data) + args.batch - 1) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-4, total_steps=steps, pct_start=0.1)
    rng = random.Random(args.seed)
    step = 0
    for epoch in range(args.epochs):
        order = sorted(range(len(data)), key=lambda i: (len(data[i][0]) // 16, rng.random()))  # similar lengths together
        batches = [order[i:i + args.batch] for i in range(0, len(order), args.batch)]
        rng.shuffle(batches)
        total = 0.0
        for b in batches:
            texts = [data[i][0] for i in b]
            enc = tok(texts, padding=True, return_tensors="pt")
            labels = torch.full(enc["input_ids"].shape, -100)
            for row, i in enumerate(b):
                labels[row, 1:1 + len(data[i][1])] = torch.tensor([label_id[x] for x in data[i][1]])
            loss = model(**enc, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            total += loss.item()
            step += 1
            if step % 100 == 0:
                print(f"epoch {epoch + 1} step {step}/{steps} loss {total / 100:.4f}", flush=True)
                total = 0.0
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    (args.out / "TRAINING.json").write_text(json.dumps({
        "tool": "tools/train_pii_ner.py", "records": args.records, "epochs": args.epochs, "seed": args.seed,
        "templates": "pii_generator TEMPLATES + HOLDOUT (not HOLDOUT2)", "negatives": "toyhom_neike_sample.csv"},
        indent=1))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
