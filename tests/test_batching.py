"""Continuous batching: requests join a running batch between decoding steps and get exactly what
`model.generate` gives each of them alone."""

import threading
import time

import pytest
import torch

from medtune.infer.batching import Batcher, Request

GREEDY = {"do_sample": False, "repetition_penalty": 1.3, "min_new_tokens": 4, "num_beams": 1}


def _model(arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medtune.model.tiny import tiny_model_path

    path = tiny_model_path(arch)
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _alone(model, tok, ids, new, **params):
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=new, eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id, **params)
    got = out[0, len(ids):].tolist()
    return got[:got.index(tok.eos_token_id)] if tok.eos_token_id in got else got


class Client:
    """A request whose first token and end are timed."""

    def __init__(self, batcher, ids, new, params, seed=None):
        self.first = self.end = None
        self.done = threading.Event()
        self.request = batcher.submit(Request(ids=ids, params=params, max_new_tokens=new, emit=self._emit, seed=seed))

    def _emit(self, delta):
        now = time.monotonic()
        if delta is None:
            self.end = now
            self.done.set()
        elif self.first is None:
            self.first = now


# gemma3's tiny model has a 64-token sliding window on every layer: these prompts cross it
@pytest.mark.parametrize("arch,lengths", [("llama", (5, 17, 9, 30, 3, 12, 25, 8)), ("gemma3", (50, 70, 3, 61, 90, 12))])
def test_rows_joining_a_running_batch_get_what_generate_gives_each_alone(arch, lengths):
    model, tok = _model(arch)
    torch.manual_seed(0)
    prompts = [torch.randint(5, 200, (n,)).tolist() for n in lengths]
    want = [_alone(model, tok, p, 20, do_sample=False, repetition_penalty=1.3, min_new_tokens=4) for p in prompts]
    batcher = Batcher(model, tok, [tok.eos_token_id], max_batch_size=4, max_wait_ms=1)
    clients = []
    for p in prompts:  # staggered: most arrive while others decode
        clients.append(Client(batcher, p, 20, GREEDY))
        time.sleep(0.005)
    for c in clients:
        assert c.done.wait(60)
    batcher.close()
    assert [c.request.tokens for c in clients] == want
    assert batcher.joined >= 1 and batcher.largest_batch <= 4


def test_a_newcomer_gets_its_first_token_before_the_running_batch_ends():
    model, tok = _model("llama")
    batcher = Batcher(model, tok, [-1], max_batch_size=8, max_wait_ms=1)  # no end-of-turn: rows run to their limit
    long = Client(batcher, list(range(5, 25)), 300, {"do_sample": False, "num_beams": 1})
    while long.first is None:
        time.sleep(0.001)
    late = Client(batcher, list(range(30, 40)), 5, {"do_sample": False, "num_beams": 1})
    assert late.done.wait(60) and long.done.wait(60)
    batcher.close()
    assert late.first < long.end and late.end < long.end  # it did not wait for the batch to finish
    assert batcher.joined == 1 and len(long.request.tokens) == 300 and late.request.finish_reason == "length"


def test_a_seeded_sample_is_the_same_alone_and_beside_other_settings():
    model, tok = _model("llama")
    sampled = {"do_sample": True, "temperature": 0.8, "top_k": 20, "top_p": 0.9, "num_beams": 1,
               "repetition_penalty": 1.1}
    prompt = list(range(10, 30))

    def answer(company):
        batcher = Batcher(model, tok, [tok.eos_token_id], max_batch_size=8, max_wait_ms=50)
        others = [Client(batcher, list(range(40 + i, 60 + i)), 24, params) for i, params in enumerate(company)]
        mine = Client(batcher, prompt, 24, sampled, seed=7)
        assert mine.done.wait(60) and all(o.done.wait(60) for o in others)
        batcher.close()
        return mine.request.tokens

    alone = answer([])
    assert answer([GREEDY, {**sampled, "temperature": 1.5}, GREEDY]) == alone
    assert len(alone) > 0


def test_a_cancelled_row_leaves_and_its_batch_mates_finish():
    model, tok = _model("llama")
    batcher = Batcher(model, tok, [-1], max_batch_size=8, max_wait_ms=50)
    a = Client(batcher, list(range(5, 25)), 200, {"do_sample": False, "num_beams": 1})
    b = Client(batcher, list(range(7, 20)), 40, {"do_sample": False, "num_beams": 1})
    while len(a.request.tokens) < 3:
        time.sleep(0.001)
    a.request.cancel()
    assert a.done.wait(60) and b.done.wait(60)
    batcher.close()
    assert a.request.finish_reason == "cancelled" and len(a.request.tokens) < 200
    assert b.request.finish_reason == "length" and len(b.request.tokens) == 40
    assert b.request.tokens == _alone(model, tok, list(range(7, 20)), 40, do_sample=False)


def test_beam_search_runs_alone_after_the_batch_and_close_cancels_the_queue():
    model, tok = _model("llama")
    batcher = Batcher(model, tok, [-1], max_batch_size=8, max_wait_ms=1)
    running = Client(batcher, list(range(5, 25)), 30, {"do_sample": False, "num_beams": 1})
    beams = Client(batcher, list(range(5, 25)), 8, {"do_sample": False, "num_beams": 3})
    assert beams.done.wait(60) and running.done.wait(60)
    assert beams.request.finish_reason == "length" and len(beams.request.tokens) == 8
    assert beams.request.tokens == _alone(model, tok, list(range(5, 25)), 8, do_sample=False, num_beams=3)
    assert beams.end > running.end  # it waited for the decoding batch
    long = Client(batcher, list(range(5, 25)), 10_000, {"do_sample": False, "num_beams": 1})
    while not long.request.tokens:
        time.sleep(0.001)
    batcher.close()
    assert long.done.wait(10) and long.request.finish_reason == "cancelled"
