"""The two sides of benchmarks/peer_llava.py, each run in its own process (so peak RSS and
thread settings are each side's own): transformers' LlavaForConditionalGeneration trained by
TRL's SFTTrainer, and mmtune's llava recipe path. Both start from the same initial weights
(one safetensors file) and see the same samples in the same order.
"""
from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

IMAGE_TOKEN = "<image>"
# mmtune's "user_assistant" layout with TRL's {% generation %} markers around what carries
# loss (answer + </s>), over TRL's structured content (an image block, then the text).
PEER_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}USER: "
    "{% for c in m.content %}{% if c.type == 'image' %}<image> {% else %}{{ c.text }}{% endif %}{% endfor %} "
    "{% elif m.role == 'assistant' %}ASSISTANT: {% generation %}"
    "{% for c in m.content %}{{ c.text }}{% endfor %}{{ eos_token }}{% endgeneration %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}")


@dataclass
class Work:
    """The architecture and training both sides run (the issue's numbers by default)."""

    vision_hidden: int = 256
    vision_layers: int = 4
    vision_heads: int = 4
    image_size: int = 112
    patch: int = 14
    llm_hidden: int = 512
    llm_layers: int = 8
    llm_heads: int = 8
    llm_intermediate: int = 1376
    batch_size: int = 8
    lr: float = 1e-3
    steps: int = 40
    warmup: int = 5  # first steps left out of timing
    threads: int = 2
    seed: int = 0

    def image_tokens(self) -> int:
        return (self.image_size // self.patch) ** 2

    def vision_arch(self) -> dict:
        return {"hidden_size": self.vision_hidden, "intermediate_size": 4 * self.vision_hidden,
                "num_hidden_layers": self.vision_layers, "num_attention_heads": self.vision_heads,
                "image_size": self.image_size, "patch_size": self.patch}

    def llm_arch(self, vocab: int) -> dict:
        return {"hidden_size": self.llm_hidden, "intermediate_size": self.llm_intermediate,
                "num_hidden_layers": self.llm_layers, "num_attention_heads": self.llm_heads,
                "num_key_value_heads": self.llm_heads, "vocab_size": vocab, "max_position_embeddings": 1024,
                "tie_word_embeddings": False, "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}


@dataclass
class SideResult:
    side: str
    precision: str
    variant: str
    params: int
    trainable_params: int
    step_end_s: list[float]  # seconds since training start at the end of each step
    step_end_cpu_s: list[float]  # this process's CPU seconds at the end of each step
    losses: list[float]  # per step
    real_tokens: list[int]  # per step, image tokens included
    supervised_tokens: list[int]
    computed_tokens: list[int]  # rows x width per step
    peak_rss_mib: float
    extra: dict = field(default_factory=dict)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def tokenizer():
    from mmtune.data.text.tokenizer import build_word_tokenizer, synthetic_words

    return build_word_tokenizer(synthetic_words())


def peer_model(work: Work, tok):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    cfg = LlavaConfig(vision_config=CLIPVisionConfig(**work.vision_arch()),
                      text_config=LlamaConfig(**work.llm_arch(len(tok))),
                      image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN), vision_feature_layer=-2,
                      vision_feature_select_strategy="default", projector_hidden_act="gelu",
                      image_seq_length=work.image_tokens(), tie_word_embeddings=False)
    return LlavaForConditionalGeneration(cfg)


def mmtune_state(peer_state: dict) -> dict:
    """Peer parameter names -> mmtune's MultimodalLM names (same tensors)."""
    rename = [("model.vision_tower.", "encoders.image.tower."),
              ("model.multi_modal_projector.linear_1.", "projectors.image.net.0."),
              ("model.multi_modal_projector.linear_2.", "projectors.image.net.2."),
              ("model.language_model.", "llm.model."), ("lm_head.", "llm.lm_head.")]
    out = {}
    for name, tensor in peer_state.items():
        new = next((dst + name[len(src):] for src, dst in rename if name.startswith(src)), None)
        if new is None:
            raise KeyError(f"peer parameter {name} has no mmtune counterpart")
        out[new] = tensor
    return out


def _counts(model) -> tuple[int, int]:
    return (sum(p.numel() for p in model.parameters()),
            sum(p.numel() for p in model.parameters() if p.requires_grad))


# ---------------------------------------------------------------------------------------- peer
def run_peer(work: Work, data_dir: Path, order: list[list[int]], precision: str, out_dir: Path) -> SideResult:
    import datasets
    from PIL import Image
    from transformers import CLIPImageProcessor, LlavaProcessor, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from mmtune.encoders.hf_vision import CLIP_MEAN, CLIP_STD

    torch.set_num_threads(work.threads)
    tok = tokenizer()
    size = work.image_size
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                           image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)),
        tokenizer=tok, patch_size=work.patch, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, image_token=IMAGE_TOKEN, chat_template=PEER_TEMPLATE)
    model = peer_model(work, tok)
    model.load_state_dict(load_file(data_dir / "init.safetensors"))
    model.model.vision_tower.requires_grad_(False)  # frozen tower, as on the mmtune side
    records = [json.loads(line) for line in (data_dir / "train.jsonl").read_text().splitlines()]
    rows = []
    for step in order:  # the exact sample sequence mmtune trains on; the Trainer reads it in order
        for i in step:
            r = records[i]
            rows.append({"messages": [{"role": m["role"], "content": m["content"].replace(IMAGE_TOKEN, "").strip()}
                                      for m in r["messages"]],
                         "images": [Image.open(data_dir / p).convert("RGB") for p in r["images"]]})
    dataset = datasets.Dataset.from_list(rows)
    args = SFTConfig(output_dir=str(out_dir), per_device_train_batch_size=work.batch_size, max_steps=work.steps,
                     learning_rate=work.lr, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0,
                     max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to=[], seed=work.seed,
                     bf16=precision == "bf16", use_cpu=True, dataloader_num_workers=0, max_length=None,
                     assistant_only_loss=True, gradient_checkpointing=False,
                     train_sampling_strategy="sequential")
    marks: list[float] = []
    cpu: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            marks.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            marks.append(time.perf_counter())
            cpu.append(time.process_time())

    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                         callbacks=[Clock()])
    # What the peer will compute, step by step (outside the timed run): its own collator on
    # the same batches, so the token counts below are the peer's, not assumed.
    real, sup, computed = [], [], []
    for s in range(work.steps):
        b = trainer.data_collator([dict(r) for r in rows[s * work.batch_size:(s + 1) * work.batch_size]])
        real.append(int(b["attention_mask"].sum()))
        sup.append(int((b["labels"][:, 1:] != -100).sum()))
        computed.append(b["input_ids"].numel())
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    n, t = _counts(model)
    return SideResult("peer", precision, "trl", n, t, [m - marks[0] for m in marks[1:]], cpu, losses, real, sup,
                      computed, peak_rss_mib())


# -------------------------------------------------------------------------------------- mmtune
def mmtune_config(work: Work, data_dir: Path, precision: str, overrides: list[str]):
    from mmtune.config import RecipeConfig, from_dict, merge, parse_overrides

    vocab = len(tokenizer())
    model_cfg = {"llm": {"arch": {"model_type": "llama", **work.llm_arch(vocab)}},
                 "encoders": {"image": {"type": "hf_clip", "select_layer": -2, "drop_cls": True,
                                        "image_pad": False, "arch": work.vision_arch()}},
                 "projectors": {"image": {"type": "mlp2x_gelu"}}, "tokenizer": {"type": "synthetic"}}
    # Cosine to 0 without warmup: the peer's lr_scheduler_type="cosine".
    stage = {"data": "train.jsonl", "train": ["projector", "llm"], "lr": work.lr, "max_steps": work.steps,
             "warmup_steps": 0, "min_lr_ratio": 0.0, "batch_size": work.batch_size,
             "chat_template": "user_assistant"}
    data = {"model": model_cfg, "data_dir": str(data_dir),
            "stages": {"init": dict(stage, max_steps=1), "finetune": stage},
            "train": {"seed": work.seed, "mixed_precision": "bf16" if precision == "bf16" else "no",
                      "max_length": 4096, "log_every": 1, "threads": work.threads, "packing": True}}
    return from_dict(RecipeConfig, merge(data, parse_overrides(overrides)), "peer_llava: ")


def mmtune_plan(cfg, model, data_dir: Path, steps: int) -> tuple[list[list[int]], list[tuple[int, int, int]]]:
    """The sample indices of each step and (real, supervised, computed) tokens of the batch the
    recipe's own collate function builds for it."""
    from mmtune.recipes.common import training_data
    from mmtune.train.loop import BatchPlan

    stage = cfg.stages["finetune"]
    dataset, collate_fn, _ = training_data(model, cfg, data_dir / stage.data, stage.chat_template)
    plan = BatchPlan(len(dataset), stage.batch_size, cfg.train.seed)
    order, counts = [], []
    for k in range(steps):
        idx = plan.indices(k)
        b = collate_fn([dataset[i] for i in idx])
        order.append(idx)
        counts.append((int(b.attention_mask.sum()), b.num_loss_tokens(), b.input_ids.numel()))
    return order, counts


def run_mmtune(work: Work, data_dir: Path, precision: str, overrides: list[str], out_dir: Path,
               variant: str) -> SideResult:
    from mmtune.model import MultimodalLM
    from mmtune.recipes.stages import run_stages

    cfg = mmtune_config(work, data_dir, precision, overrides)
    # The "init" stage's saved model is where "finetune" starts: the peer's initial weights.
    model = MultimodalLM.build(cfg.model)
    model.load_state_dict(mmtune_state(load_file(data_dir / "init.safetensors")), strict=True)
    model.save_pretrained(out_dir / "init" / "model")
    _, counts = mmtune_plan(cfg, model, data_dir, work.steps)
    del model
    summary = run_stages("llava", cfg, out_dir, stages=["finetune"], resume=False, evaluate=False)
    metrics = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    metrics = [m for m in metrics if m["stage"] == "finetune"]
    stage_sum = summary["stages"]["finetune"]
    rows = stage_sum["parameters"]
    supervised = [m["loss_count"] for m in metrics]  # supervised tokens
    if supervised != [c[1] for c in counts]:
        raise AssertionError(f"the run's supervised tokens {supervised} differ from its plan's")
    return SideResult("mmtune", precision, variant, sum(r["params"] for r in rows),
                      sum(r["trainable"] for r in rows), [m["elapsed_s"] for m in metrics],
                      [m["process_cpu_s"] for m in metrics],
                      [m["loss"] for m in metrics], [c[0] for c in counts], supervised,
                      [c[2] for c in counts], peak_rss_mib(),
                      extra={"mfu_per_step": [m["mfu"] for m in metrics], "mfu": stage_sum["mfu"],
                             "peak_flops_per_s": stage_sum["peak_flops_per_s"],
                             "model_flops": stage_sum["model_flops"], "overrides": overrides})
