"""medtune eval with models that are not local weights: an OpenAI-compatible endpoint (a live
`medtune serve` on 127.0.0.1, no HTTP mocks) and the vLLM engine (gpu-marked)."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import QA, ROOT

from medtune.cli import main

pytest.importorskip("openai")
pytest.importorskip("fastapi")
from test_serve import free_port, serving


@pytest.fixture(scope="module")
def served(trained):
    """The tiny model that memorised QA, behind `medtune serve`'s app on 127.0.0.1."""
    with serving(str(trained)) as handle:
        yield handle


def _qa_task(tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answer": a}, ensure_ascii=False) + "\n"
                            for i, (q, a) in enumerate(QA.items())), encoding="utf-8")
    return {"name": "memorised_qa", "type": "open_qa", "data": str(data)}


def test_an_endpoint_model_answers_like_the_same_weights_loaded_here_and_its_cost_is_counted(tmp_path, served):
    """The trained tiny model served by `medtune serve` and loaded locally: greedy answers through the
    API equal the local ones item by item; requests and tokens are counted and priced; the
    log-likelihood modes skip the endpoint with the reason in the report."""
    mc = {"name": "mc", "type": "multiple_choice", "data": str(ROOT / "src/medtune/eval/samples/cmb_exam_dev.jsonl")}
    cfg = {"model": {"name_or_path": str(served.trained), "template": "chatml"},
           "eval": {"tasks": [_qa_task(tmp_path), mc], "limit": 3, "bootstrap": 200, "max_new_tokens": 16,
                    "mc_max_new_tokens": 4, "output_dir": str(tmp_path / "out"),
                    "models": [{"name": "local"},
                               {"name": "api", "endpoint": {"base_url": served.url + "/v1",
                                                            "api_key_env": "MEDTUNE_TEST_KEY", "concurrency": 2,
                                                            "price_per_1k_prompt": 0.5,
                                                            "price_per_1k_completion": 2.0}}]}}
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    assert main(["eval", str(path)]) == 0
    out = tmp_path / "out"

    def outputs(model, task, mode="generate"):
        return {json.loads(x)["id"]: json.loads(x)["output"] for x in
                (out / f"predictions/{model}/{task}.{mode}.jsonl").read_text(encoding="utf-8").splitlines()}

    local, api = outputs("local", "memorised_qa"), outputs("api", "memorised_qa")
    assert local == api and sorted(local.values()) == sorted(QA.values())
    assert outputs("local", "mc") == outputs("api", "mc")
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert set(res["tasks"]["mc"]["modes"]["loglik"]["models"]) == {"local"}  # no weights behind an API
    assert set(res["tasks"]["mc"]["modes"]["generate"]["models"]) == {"local", "api"}
    note = res["card"]["model_notes"]["api"]
    assert note["skipped_modes"]["modes"] == ["loglik", "cloze"]
    usage = note["api"]
    assert usage["requests"] == 1 + 2 + 3 and usage["retries"] == 0 and usage["prompt_tokens"] > 0
    assert usage["cost"] == pytest.approx((usage["prompt_tokens"] * 0.5 + usage["completion_tokens"] * 2.0) / 1000)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| api | loglik, cloze | an OpenAI-compatible chat API returns no log-probabilities" in report
    assert f"| api | {Path(served.trained).name} | {served.url}/v1 | 6 | 0 |" in report


def test_an_unreachable_endpoint_is_one_clear_error(tmp_path, capsys):
    cfg = {"eval": {"tasks": [_qa_task(tmp_path)], "output_dir": str(tmp_path / "out"),
                    "models": [{"name": "api", "endpoint": {"base_url": f"http://127.0.0.1:{free_port()}/v1",
                                                            "max_retries": 1, "backoff": 0.01}}]}}
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    assert main(["eval", str(path)]) == 2
    err = capsys.readouterr().err
    assert "still failing after 1 retries" in err and "eval.models[api].endpoint.max_retries" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.gpu
def test_the_vllm_engine_evaluates_generation_tasks(tmp_path):
    pytest.importorskip("vllm")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU")
    cfg = {"model": {"name_or_path": "tiny:qwen2", "template": "chatml"},
           "eval": {"tasks": [_qa_task(tmp_path)], "output_dir": str(tmp_path / "out"), "max_new_tokens": 8,
                    "models": [{"name": "hf"}, {"name": "vllm", "engine": "vllm"}]}}
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["eval", str(path)]) == 0
    res = json.loads((tmp_path / "out/results.json").read_text(encoding="utf-8"))
    assert set(res["tasks"]["memorised_qa"]["modes"]["generate"]["models"]) == {"hf", "vllm"}
