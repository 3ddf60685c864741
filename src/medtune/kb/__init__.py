"""Knowledge bases: a hospital's own documents, chunked with provenance, searchable by BM25, dense
embeddings or both, and the grounding that puts retrieved passages into prompts with citations.

    documents.py  files (txt, md, JSONL/JSON, PDF) → passages with file, line or page, and title
    chunking.py   passages → overlapping chunks on sentence boundaries
    index.py      `medtune kb`: the index folder, built and rebuilt incrementally
    retrieve.py   the retrievers (bm25, dense, hybrid) over a built folder
    ground.py     retrieved chunks → the prompt (one Jinja template, shared with training) + citations
    qa.py         grounded SFT data: QA pairs + gold passage + hard negatives → conversations
"""
