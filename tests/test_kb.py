"""Knowledge bases through the CLI: build with provenance, skips counted, incremental rebuilds, BM25 /
dense / hybrid retrieval, mismatched indexes refused, retrieval scored on real data."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, shared

from medtune.cli import main

pytest.importorskip("bm25s")
SAMPLES = ROOT / "src/medtune/kb/samples"


def write_cfg(d: Path, **kb) -> Path:
    import yaml

    cfg = d / "kb.yaml"
    cfg.write_text(yaml.safe_dump({"kb": {"index": str(d / "kb"), **kb}}, allow_unicode=True), encoding="utf-8")
    return cfg


def text_pdf(path: Path, pages: list[str]) -> None:
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.pdfgen import canvas

    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    c = canvas.Canvas(str(path), pagesize=A4)
    c.setTitle("门诊用药指南")
    for text in pages:
        if text:
            c.setFont("STSong-Light", 12)
            c.drawString(72, 760, text)
        c.showPage()
    c.save()


@pytest.fixture
def docs(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "bp.md").write_text("# 高血压\n\n## 饮食\n每日食盐不超过5克。\n多吃蔬菜。\n\n## 用药\n降压药不要自行停药。\n",
                             encoding="utf-8")
    (d / "dm.txt").write_text("糖尿病患者需要控制血糖。\n\n糖化血红蛋白每三个月查一次。\n", encoding="utf-8")
    (d / "drugs.jsonl").write_text(
        '{"id": "asp", "title": "阿司匹林", "text": "阿司匹林可能引起胃出血，黑便时及时就医。"}\n'
        '{"id": "bad", "text": 42}\n', encoding="utf-8")
    text_pdf(d / "guide.pdf", ["胰岛素未开封时冷藏保存，不能冷冻。", "", "注射部位需要轮换。"])
    text_pdf(d / "scan.pdf", ["", ""])  # pages without a text layer: a scan
    (d / "broken.pdf").write_bytes(b"%PDF-1.4\nnot really a pdf")
    (d / "empty.txt").write_text("\n\n", encoding="utf-8")
    shutil.copy(d / "dm.txt", d / "dm_copy.txt")
    (d / "notes.docx").write_bytes(b"PK\x03\x04")
    return d


def chunks(index: Path) -> list[dict]:
    return [json.loads(x) for x in (index / "chunks.jsonl").read_text(encoding="utf-8").splitlines()]


def test_build_keeps_provenance_and_counts_every_skip(docs, tmp_path, capsys):
    cfg = write_cfg(tmp_path, documents=[str(docs)])
    assert main(["kb", str(cfg)]) == 0
    assert "7 chunks from 4 document(s) (files: 8 new, 0 changed, 0 unchanged, 0 removed)" in capsys.readouterr().out
    got = {c["id"]: (c["text"], c["title"], c.get("line"), c.get("page")) for c in chunks(tmp_path / "kb")}
    assert got == {  # md headings title their sections; txt paragraphs keep their first line; PDF pages their number
        "bp.md#0": ("每日食盐不超过5克。多吃蔬菜。", "高血压 · 饮食", 4, None),
        "bp.md#1": ("降压药不要自行停药。", "高血压 · 用药", 8, None),
        "dm.txt#0": ("糖尿病患者需要控制血糖。", "dm", 1, None),
        "dm.txt#1": ("糖化血红蛋白每三个月查一次。", "dm", 3, None),
        "drugs.jsonl#0": ("阿司匹林可能引起胃出血，黑便时及时就医。", "阿司匹林", 1, None),
        "guide.pdf#0": ("胰岛素未开封时冷藏保存，不能冷冻。", "门诊用药指南", None, 1),
        "guide.pdf#1": ("注射部位需要轮换。", "门诊用药指南", None, 3)}
    report = json.loads((tmp_path / "kb/report.json").read_text())
    assert report["skipped"] == {"no_text": 1, "no_text_layer": 1, "unreadable_pdf": 1, "empty": 1,
                                 "duplicate_document": 1, "unsupported_type": 1}
    skipped = [json.loads(x) for x in (tmp_path / "kb/skipped.jsonl").read_text().splitlines()]
    assert {s["file"]: s["reason"] for s in skipped} == {
        "drugs.jsonl": "no_text", "scan.pdf": "no_text_layer", "broken.pdf": "unreadable_pdf", "empty.txt": "empty",
        "dm_copy.txt": "duplicate_document", "notes.docx": "unsupported_type"}
    assert "line 2: field 'text' is of type int" in next(s["detail"] for s in skipped if s["file"] == "drugs.jsonl")
    assert "OCR" in next(s["detail"] for s in skipped if s["file"] == "scan.pdf")
    assert (tmp_path / "kb/COMPLETE").is_file()


def test_chunks_overlap_on_sentence_boundaries():
    from medtune.kb.chunking import chunk

    text = "第一句话在这里。第二句话更长一些！第三句？第四句话结束；"
    assert chunk(text, 20, 10) == ["第一句话在这里。第二句话更长一些！", "第二句话更长一些！第三句？第四句话结束；"]
    assert chunk("很" * 25, 10, 0) == ["很" * 10, "很" * 10, "很" * 5]  # one over-long sentence is cut


def test_rebuild_reads_only_what_changed(docs, tmp_path, capsys):
    cfg = write_cfg(tmp_path, documents=[str(docs)])
    assert main(["kb", str(cfg)]) == 0
    before = {c["id"]: c for c in chunks(tmp_path / "kb")}
    (docs / "dm.txt").write_text("糖尿病患者需要控制血糖。\n\n胰岛素需冷藏。\n", encoding="utf-8")
    (docs / "bp.md").unlink()
    (docs / "new.md").write_text("# 哮喘\n吸入激素后要漱口。\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["kb", str(cfg)]) == 0
    out = capsys.readouterr().out
    # dm_copy.txt is no longer a duplicate of dm.txt: it is indexed now (new)
    assert "(files: 2 new, 1 changed, 6 unchanged, 1 removed)" in out
    after = {c["id"]: c for c in chunks(tmp_path / "kb")}
    assert not any(k.startswith("bp.md") for k in after)
    assert after["dm.txt#1"]["text"] == "胰岛素需冷藏。" and after["new.md#0"]["title"] == "哮喘"
    assert after["guide.pdf#0"] == {**before["guide.pdf#0"], "n": after["guide.pdf#0"]["n"]}  # reused as is
    assert main(["kb", str(cfg), "--query", "胰岛素 冷藏"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("dm (dm.txt, line 3)")


def test_bad_input_is_an_error_and_leaves_the_old_index(docs, tmp_path, capsys):
    cfg = write_cfg(tmp_path, documents=[str(docs)])
    assert main(["kb", str(cfg)]) == 0
    index = (tmp_path / "kb/chunks.jsonl").read_text()
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank/a.txt").write_text("  \n", encoding="utf-8")
    assert main(["kb", str(cfg), f"kb.documents=[{tmp_path / 'blank'}]"]) == 2
    assert "no text in any of the 1 file(s) ({'empty': 1}). Nothing was written." in capsys.readouterr().err
    assert (tmp_path / "kb/chunks.jsonl").read_text() == index
    assert main(["kb", str(cfg), f"kb.documents=[{tmp_path / 'nope'}]"]) == 2
    assert "is not a file, folder or glob that matches anything" in capsys.readouterr().err
    assert main(["kb", str(cfg), "kb.overlap_chars=400"]) == 2
    assert "kb.overlap_chars (400) must be at least 0 and below kb.chunk_chars (300)" in capsys.readouterr().err
    assert main(["kb", str(cfg), "kb.retriever=bm26", "--query", "血糖"]) == 2
    assert "Unknown retriever 'bm26'. Did you mean 'bm25'?" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "kb/manifest.json").read_text())
    manifest["segmenter"] = "pkuseg 0.0.25"
    (tmp_path / "kb/manifest.json").write_text(json.dumps(manifest))
    assert main(["kb", str(cfg), "--query", "血糖"]) == 2
    err = capsys.readouterr().err
    assert "was segmented with 'pkuseg 0.0.25'" in err and "Rebuild the index with `medtune kb CONFIG`" in err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A tiny random BERT sentence encoder (mean pooling) with the tiny tokenizer: dense plumbing, offline."""
    st = pytest.importorskip("sentence_transformers")
    from transformers import AutoTokenizer, BertConfig, BertModel

    from medtune.model.tiny import tiny_model_path

    d = tmp_path_factory.mktemp("encoder")
    tok = AutoTokenizer.from_pretrained(tiny_model_path("llama"))
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=512)).save_pretrained(d / "hf")
    tok.save_pretrained(d / "hf")
    st.SentenceTransformer(str(d / "hf"), device="cpu").save(str(d / "st"))  # a plain model folder: mean pooling
    return d / "st"


def test_dense_and_hybrid_embed_only_new_chunks_and_refuse_another_model(docs, tmp_path, encoder, capsys):
    cfg = write_cfg(tmp_path, documents=[str(docs)], embedding_model=str(encoder))
    assert main(["kb", str(cfg)]) == 0
    assert "embedded 7 chunk(s)" in capsys.readouterr().out
    import numpy as np

    assert np.load(tmp_path / "kb/embeddings.npy").shape == (7, 32)
    (docs / "new.md").write_text("吸入激素后要漱口。\n", encoding="utf-8")
    assert main(["kb", str(cfg)]) == 0
    assert "embedded 1 chunk(s)" in capsys.readouterr().out
    for retriever in ("dense", "hybrid"):
        assert main(["kb", str(cfg), f"kb.retriever={retriever}", "kb.top_k=3", "--query", "漱口"]) == 0
        lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[")]
        assert len(lines) == 3
    other = tmp_path / "other_encoder"
    shutil.copytree(encoder, other)
    assert main(["kb", str(cfg), f"kb.embedding_model={other}", "kb.retriever=dense", "--query", "漱口"]) == 2
    assert "holds embeddings of" in capsys.readouterr().err


def test_retrieval_recall_and_mrr_on_huatuo26m(tmp_path, encoder):
    """Real data: the 300 Huatuo-26M test answers are the knowledge base, their questions the queries."""
    data = shared("huatuo26m_test/huatuo26m_test_dev300.jsonl")
    import yaml

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "kb": {"documents": [str(data)], "index": str(tmp_path / "kb"), "text_field": "answer",
               "embedding_model": str(encoder)},
        "eval": {"tasks": [{"name": "huatuo_answers", "type": "retrieval", "data": str(data), "kb": str(tmp_path / "kb"),
                            "gold_field": "id", "retrievers": ["bm25", "dense", "hybrid"]}],
                 "output_dir": str(tmp_path / "eval")}}, allow_unicode=True))
    assert main(["kb", str(cfg)]) == 0
    assert main(["eval", str(cfg)]) == 0
    task = json.loads((tmp_path / "eval/results.json").read_text())["tasks"]["huatuo_answers"]
    got = {mode: {k: v["value"] for k, v in m["models"]["kb"]["metrics"].items()} for mode, m in task["modes"].items()}
    assert set(got) == {"bm25", "dense", "hybrid"}
    assert got["bm25"]["recall_at_5"] >= 0.5 and got["bm25"]["mrr"] >= got["bm25"]["recall_at_1"]
    assert got["dense"]["recall_at_5"] < 0.2  # a random encoder: the plumbing, not a model
    report = (tmp_path / "eval/report.md").read_text()
    assert "| huatuo_answers | bm25 | recall@5 | 300 |" in report
