"""De-identification: precision and recall per PII type on the shipped labelled set (each >= 0.95)."""

import json
from collections import Counter

from conftest import FIXTURES

from medtune.data.pii import detect, redact

TYPES = ["ID_CARD", "PHONE", "EMAIL", "RECORD_NO", "BANK_CARD", "NAME", "ADDRESS", "DOB"]


def score() -> dict[str, dict[str, float]]:
    tp, fp, fn = Counter(), Counter(), Counter()
    for line in (FIXTURES / "pii_labelled.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        gold = Counter((p["type"], p["value"]) for p in row["pii"])
        found = Counter((s.type, s.value) for s in detect(row["text"]))
        for key in gold | found:
            hit = min(gold[key], found[key])
            tp[key[0]] += hit
            fp[key[0]] += found[key] - hit
            fn[key[0]] += gold[key] - hit
    return {t: {"precision": tp[t] / ((tp[t] + fp[t]) or 1), "recall": tp[t] / ((tp[t] + fn[t]) or 1),
                "support": tp[t] + fn[t]} for t in TYPES}


def test_precision_and_recall_per_type():
    results = score()
    print("\n" + "\n".join(f"{t:10s} precision {r['precision']:.3f} recall {r['recall']:.3f} (n={r['support']})"
                           for t, r in results.items()))
    for t, r in results.items():
        assert r["support"] > 0, t
        assert r["precision"] >= 0.95 and r["recall"] >= 0.95, (t, r)


def test_placeholders_are_consistent_within_a_document():
    placeholders = {}
    first, c1 = redact("患者张伟，手机13912345678。", placeholders)
    second, c2 = redact("张伟的家属再次来电13912345678，另一号码13800001111。", placeholders)
    assert first == "患者<NAME_1>，手机<PHONE_1>。"
    assert second == "张伟的家属再次来电<PHONE_1>，另一号码<PHONE_2>。"  # a bare name without context stays
    assert c1 == {"NAME": 1, "PHONE": 1} and c2 == {"PHONE": 2}


def test_checksums_reject_lookalikes():
    assert not detect("身份证号110105194912310021")  # last digit wrong (checksum is 9)
    assert not detect("卡号6222021001123456780")  # fails Luhn
