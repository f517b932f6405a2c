"""The TRL followers' live training loop (align_cbrl.followers.trl_loop): TRL's train() runs
once per follower across chunks, signals reach the main thread, the worker thread ends."""

from __future__ import annotations

import gc
import os
import signal
import threading

import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from align_cbrl.followers import GRPOFollower, TRLFollowerConfig  # noqa: E402
from align_cbrl.models import build_tiny_lm  # noqa: E402

PROMPTS = ["a", "b", "c", "d"]


def reward(prompts, completions, **kw):
    return [float(c.count("b")) for c in completions]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_lm("word", cache_dir=tmp_path_factory.mktemp("tiny"), words=PROMPTS)


def follower(model_dir, fn=reward, name="f"):
    ds = datasets.Dataset.from_dict({"prompt": PROMPTS})
    config = TRLFollowerConfig(
        beta=0.5, trl={"learning_rate": 1e-2, "num_generations": 4, "max_completion_length": 2}
    )
    return GRPOFollower(model_dir, ds, fn, config, name=name)


def loop_threads(name):
    return [t for t in threading.enumerate() if t.name == f"trl-loop-{name}"]


def flat_params(f):
    return torch.cat([p.detach().flatten() for p in f.model.parameters()])


def test_one_train_call_serves_every_chunk_and_close_ends_the_thread(model_dir, tmp_path):
    f = follower(model_dir, name="once")
    calls = []
    train = f.trainer.train

    def counted(*args, **kwargs):
        calls.append(kwargs.get("resume_from_checkpoint"))
        return train(*args, **kwargs)

    f.trainer.train = counted
    f.train(2)
    f.sample(["a"], 2)
    f.train(2)
    f.save(tmp_path / "ckpt")
    f.train(2)
    assert calls == [None] and f.global_step == 6
    assert len(loop_threads("once")) == 1
    f.load(tmp_path / "ckpt")  # stops the loop; the next chunk resumes it once, from memory
    assert loop_threads("once") == []
    f.train(2)
    assert len(calls) == 2 and calls[1] is not None and f.global_step == 6
    f.close()
    assert loop_threads("once") == []


def test_ctrl_c_during_a_chunk_reaches_the_main_thread(model_dir):
    sent = []

    def interrupting(prompts, completions, **kw):
        if not sent:  # inside TRL's loop, in the worker thread
            sent.append(threading.current_thread().name)
            os.kill(os.getpid(), signal.SIGINT)
        return reward(prompts, completions)

    f = follower(model_dir, interrupting, name="sigint")
    # Python's own Ctrl-C handler (a background shell may have started us with SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            f.train(2)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sent == ["trl-loop-sigint"]
    f.train(2)  # waits for the interrupted chunk, then trains the next one
    g = follower(model_dir, name="plain")
    g.train(4)
    assert f.global_step == g.global_step == 4
    assert torch.equal(flat_params(f), flat_params(g))
    f.close()
    g.close()


def test_a_dropped_follower_ends_its_loop(model_dir):
    f = follower(model_dir, name="dropped")
    f.train(2)
    (thread,) = loop_threads("dropped")
    del f
    gc.collect()
    thread.join(10)
    assert not thread.is_alive()
