"""The per-device training step (harness.steps): each option changes nothing but speed, and each device gets
its own default."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from harness.config import StepConfig, load_config
from harness.data import IGNORE_INDEX, collate, encode, load_splits
from harness.models import load_model
from harness.steps import CPU_STEP, CUDA_STEP, PAD_MULTIPLE, StepOptions, TrainStep, choose_step, pad_width
from techniques import registry

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def setup(tiny_gemma):
    cfg = load_config(None, [], {"model": {"name": str(tiny_gemma)}, "data": {"max_train_samples": 32}})
    tech = registry.get("lora")
    hp = dict(tech.defaults, r=4, alpha=8, dropout=0.0)
    loaded = load_model(cfg.model, "cpu")
    enc = encode(load_splits(cfg.data).train[:12], loaded.tokenizer, cfg.data)
    return cfg, tech, hp, loaded.tokenizer, enc


def fresh_model(setup):
    cfg, tech, hp, tokenizer, _ = setup
    torch.manual_seed(0)
    model = tech.wrap(load_model(cfg.model, "cpu").model, hp, tokenizer)
    with torch.no_grad():  # a fresh LoRA B is zero: give the adapter weight so its gradients mean something
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
    return model


def reference(setup, groups):
    """The model's own forward with an attention mask over padded batches: summed target cross-entropy."""
    model = fresh_model(setup)
    _, _, _, tokenizer, enc = setup
    batches = [collate(enc, b, tokenizer.pad_token_id) for g in groups for b in g]
    n = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
    total = 0.0
    for b in batches:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), b["labels"][:, 1:].flatten(), reduction="sum")
        (loss / n).backward()
        total += float(loss)
    return total, grads(model)


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def run_step(setup, options, groups, backend="inductor", rows=None):
    model = fresh_model(setup)
    _, _, _, tokenizer, enc = setup
    step = TrainStep(model, options, "cpu", tokenizer.pad_token_id, compile_backend=backend, rows=rows)
    total = 0.0
    for group in groups:
        result = step(enc, group)
        total += float(result.loss_sum)
    return total, grads(model), step


GROUPS = [[[0, 1, 2, 3], [4, 5, 6]]]  # one step accumulating two batches of different widths


@pytest.mark.parametrize("options", [
    StepOptions(),
    CPU_STEP,
    CUDA_STEP,
    StepOptions(packing=True),
    StepOptions(chunked_loss=True),
    StepOptions(fused_lora=True),
    StepOptions(sync_free=True),
], ids=["plain", "cpu", "cuda", "packing", "chunked_loss", "fused_lora", "sync_free"])
def test_every_option_changes_nothing_but_speed(setup, options):
    want_loss, want_grads = reference(setup, GROUPS)
    loss, got, step = run_step(setup, options, GROUPS)
    assert step.options == options  # the tiny Gemma routes its attention: packing stays as asked
    assert loss == pytest.approx(want_loss, rel=1e-5)
    assert got.keys() == want_grads.keys()
    for name, grad in want_grads.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow  # Dynamo tracing of even a tiny model takes tens of seconds on 2 cores
def test_compiled_step_changes_nothing_but_speed(setup):
    """torch.compile of the decoder (traced by Dynamo, autograd by AOT; the eager backend keeps CI fast: the
    inductor kernels are what the GPU check measures), on batches padded to a multiple of PAD_MULTIPLE."""
    want_loss, want_grads = reference(setup, GROUPS)
    loss, got, step = run_step(setup, dataclasses.replace(CUDA_STEP, compile="default"), GROUPS, backend="aot_eager")
    assert step.compiled
    assert loss == pytest.approx(want_loss, rel=1e-5)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_graph_step_changes_nothing_but_speed(setup):
    """The CUDA-graph step's module and static shapes (rows padded to the batch size, widths to a multiple of
    PAD_MULTIPLE), run eagerly on a CPU (capture itself needs a GPU: the GPU check measures it)."""
    want_loss, want_grads = reference(setup, GROUPS)
    loss, got, step = run_step(setup, dataclasses.replace(CUDA_STEP, cuda_graphs=True), GROUPS, rows=8)
    assert step.options.cuda_graphs and len(step.graphs) >= 1
    assert all(shape[0] == 8 and shape[1] % PAD_MULTIPLE == 0 for shape in step.graphs)
    assert loss == pytest.approx(want_loss, rel=1e-5)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_padded_widths_are_rounded_up_for_a_compiled_step(setup):
    _, _, _, tokenizer, enc = setup
    batch = collate(enc, [0, 1], tokenizer.pad_token_id)
    padded = pad_width(batch, PAD_MULTIPLE, tokenizer.pad_token_id)
    width = batch["input_ids"].shape[1]
    assert padded["input_ids"].shape[1] == -(-width // PAD_MULTIPLE) * PAD_MULTIPLE
    assert (padded["labels"][:, width:] == IGNORE_INDEX).all() and (padded["attention_mask"][:, width:] == 0).all()
    assert torch.equal(padded["input_ids"][:, :width], batch["input_ids"])


def test_each_device_gets_its_step():
    assert choose_step("cpu") == CPU_STEP
    assert choose_step("cuda") == CUDA_STEP
    assert CPU_STEP.packing and CPU_STEP.chunked_loss and not CPU_STEP.sync_free
    assert not CUDA_STEP.packing and CUDA_STEP.sync_free
    assert not choose_step("cpu", packing_wanted=False).packing
    assert choose_step("cuda", overrides={"compile": "reduce-overhead"}).compile == "reduce-overhead"


def test_step_options_come_from_the_config():
    cfg = load_config(None, ["train.step.compile=reduce-overhead", "train.step.chunked_loss=false"])
    assert cfg.train.step == StepConfig(compile="reduce-overhead", chunked_loss=False)
    assert choose_step("cpu", True, cfg.train.step.overrides()) == dataclasses.replace(
        CPU_STEP, compile="reduce-overhead", chunked_loss=False)


def test_a_bad_step_option_is_a_user_error():
    from harness.errors import BenchError

    with pytest.raises(BenchError, match="train.step.compile"):
        load_config(None, ["train.step.compile=fast"])
