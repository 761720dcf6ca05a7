"""MultimodalLM: encoders -> projectors -> placeholder positions of any HF causal LM.

The LLM is held by composition (never subclassed), so any `AutoModelForCausalLM` works.
The whole forward is `embed()` + one LLM call:

    input_ids [B, T] with K placeholder ids per medium
    media[m]  [n_m, ...] --encoder--> [n_m, N, D_enc] --projector--> [n_m, K, D_llm]
    embeds    [B, T, D_llm] = token embeddings, placeholder rows replaced (masked_scatter)
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from . import encoders as _encoders  # noqa: F401  (fills ENCODERS)
from . import projectors as _projectors  # noqa: F401  (fills PROJECTORS)
from .attention import SEGMENTS_KWARG, segment_starts, uses_varlen
from .batch import MEDIA_TOKENS, Batch, Instruction, MediumSpec
from .feature_cache import FeatureCache
from .config import ModelConfig, ProjectorConfig, TokenizerConfig, from_dict, to_dict
from .data.text.tokenizer import load_tokenizer
from .llm import adapter_parameters, add_lora, load_llm
from .parts import Encoder, feature_spec
from .registry import ENCODERS, PROJECTORS

def _every_rank_runs_every_module() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class PlaceholderMismatchError(ValueError):
    pass


def build_projector(modality: str, cfg: ProjectorConfig, encoder: Encoder, d_llm: int) -> nn.Module:
    """The projector for `encoder`'s features (their width, token count and frames). A frame
    count is set once, in the encoder's config: a projector option that disagrees is an error."""
    spec = feature_spec(encoder)
    options = dict(cfg.options)
    given = options.pop("num_frames", spec.frames)
    if given != spec.frames:
        raise ValueError(f"model.projectors.{modality}.options.num_frames={given} but the {modality} "
                         f"encoder samples {spec.frames} frames (model.encoders.{modality}.arch.num_frames); "
                         "drop the projector's value to follow the encoder")
    return PROJECTORS.get(cfg.type)(spec, d_llm, **options)


class MultimodalLM(nn.Module):
    def __init__(self, config: ModelConfig, llm: nn.Module, encoders: dict[str, nn.Module],
                 projectors: dict[str, nn.Module], tokenizer,
                 instruction_tokenizers: dict | None = None) -> None:
        super().__init__()
        if set(encoders) != set(projectors):
            raise ValueError(f"encoders {sorted(encoders)} and projectors {sorted(projectors)} "
                             "must cover the same modalities")
        self.config = config
        self.llm = llm
        self.encoders = nn.ModuleDict(encoders)
        self.projectors = nn.ModuleDict(projectors)
        self.tokenizer = tokenizer
        self.instruction_tokenizers = instruction_tokenizers or {}  # modality -> projector's tokenizer
        self.placeholder_ids = {m: tokenizer.convert_tokens_to_ids(MEDIA_TOKENS[m]) for m in encoders}
        self.feature_caches: dict[str, FeatureCache] = {}  # modality -> cache, for frozen encoders (train.feature_cache)

    # ----------------------------------------------------------------- construction
    @classmethod
    def build(cls, cfg: ModelConfig) -> "MultimodalLM":
        """Build every part from config (weights from paths where given, random otherwise)."""
        if cfg.init_from is not None:
            from .interop import init_from

            return init_from(cfg)
        llm = load_llm(cfg.llm)
        d_llm = llm.get_input_embeddings().embedding_dim
        encoders, projectors = {}, {}
        for modality, enc_cfg in cfg.encoders.items():
            encoders[modality] = ENCODERS.get(enc_cfg.type)(enc_cfg)
            projectors[modality] = build_projector(modality, cfg.projectors[modality], encoders[modality], d_llm)
        tokenizer = load_tokenizer(cfg.tokenizer, cfg.llm.path, media=tuple(cfg.encoders))
        instruction_tokenizers = {m: load_tokenizer(p.instruction_tokenizer, None, media=())
                                  for m, p in cfg.projectors.items() if p.instruction_tokenizer is not None}
        model = cls(cfg, llm, encoders, projectors, tokenizer, instruction_tokenizers)
        for modality, enc_cfg in cfg.encoders.items():
            model.encoders[modality].requires_grad_(enc_cfg.trainable)
        return model

    @classmethod
    def from_hf(cls, path: str | Path, settings: ModelConfig | None = None) -> "MultimodalLM":
        """A released checkpoint (llava-hf, InstructBLIP, BLIP-2, original LLaVA): see mmtune.interop."""
        from .interop import from_hf

        return from_hf(path, settings)

    def tokens_per_medium(self, modality: str) -> int:
        return self.projectors[modality].num_tokens(self.encoders[modality].num_tokens())

    def media_specs(self) -> dict[str, MediumSpec]:
        """What the collator needs to know about each modality (the data<->model contract). A
        frozen encoder with a feature cache (`train.feature_cache`) reads through the cache, so
        a medium is decoded once per run."""
        specs = {}
        for m, enc in self.encoders.items():
            cache = self.feature_caches.get(m) if not any(p.requires_grad for p in enc.parameters()) else None
            specs[m] = MediumSpec(placeholder_id=self.placeholder_ids[m], tokens=self.tokens_per_medium(m),
                                  load=enc.load if cache is None else cache.loader(enc.load),
                                  blank=enc.blank, preprocess=enc.preprocess,
                                  instruction_tokenizer=self.instruction_tokenizers.get(m),
                                  max_instruction_length=self.config.projectors[m].max_instruction_length)
        return specs

    def enable_gradient_checkpointing(self) -> list[str]:
        """Recompute activations in backward instead of storing them (non-reentrant, so frozen
        inputs such as a LoRA base's embeddings need no `requires_grad` trick), in the LLM
        (peft-wrapped too) and in every encoder / projector built on a transformers model.
        Frozen parts run under no_grad, where it stores and costs nothing. Returns the parts
        it enabled, e.g. ["llm", "encoder.image"]."""
        from transformers import PreTrainedModel

        kwargs = {"use_reentrant": False}
        self.llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        enabled = ["llm"]
        for kind, parts in (("encoder", self.encoders), ("projector", self.projectors)):
            for modality, part in parts.items():
                hf = [m for m in part.modules() if isinstance(m, PreTrainedModel) and m.supports_gradient_checkpointing]
                for m in hf:
                    m.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
                if hf:
                    enabled.append(f"{kind}.{modality}")
        return enabled

    def enable_lora(self) -> None:
        if not hasattr(self.llm, "peft_config"):
            self.llm = add_lora(self.llm, self.config.llm.lora)

    # ----------------------------------------------------------------- forward
    def check_placeholders(self, batch: Batch) -> None:
        """Fail before any encoder or LLM work when slots and features cannot match."""
        rows = batch.input_ids.shape[0]
        for modality, media in batch.media.items():
            if modality not in self.placeholder_ids:
                raise PlaceholderMismatchError(f"batch has {modality} but the model has no {modality} encoder")
            per_row = batch.media_per_row.get(modality, [])
            if len(per_row) != rows or sum(per_row) != media.shape[0]:
                raise PlaceholderMismatchError(
                    f"batch of {rows} rows carries {media.shape[0]} {modality}(s) but media_per_row "
                    f"says {per_row} (records {batch.ids})")
        for modality, token_id in self.placeholder_ids.items():
            per_row = batch.media_per_row.get(modality, [0] * rows)
            slots = (batch.input_ids == token_id).sum(dim=1).tolist()
            k = self.tokens_per_medium(modality)
            for row, (n_slots, n_media) in enumerate(zip(slots, per_row)):
                if n_slots != n_media * k:
                    rid = batch.ids[row] if row < len(batch.ids) else f"row {row}"
                    raise PlaceholderMismatchError(
                        f"record {rid}: {n_slots} {MEDIA_TOKENS[modality]} placeholder tokens but "
                        f"{n_media} {modality}(s) x {k} tokens = {n_media * k} feature vectors")

    def encode_media(self, modality: str, media: torch.Tensor,
                     instruction: Instruction | None = None) -> torch.Tensor:
        encoder = self.encoders[modality]
        frozen = not any(p.requires_grad for p in encoder.parameters())
        cache = self.feature_caches.get(modality) if frozen else None
        if cache is not None:
            features = cache.encode(encoder, media)  # [n, N, D_enc], each distinct medium once
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
                features = encoder(media)  # [n, N, D_enc]
        if modality in self.instruction_tokenizers:
            if instruction is None:
                raise ValueError(f"the {modality} projector reads instructions but the batch has none "
                                 "(build examples with an ExampleBuilder from model.media_specs())")
            return self.projectors[modality](features, instruction=instruction)  # [n, K, D_llm]
        return self.projectors[modality](features)  # [n, K, D_llm]

    def embed(self, batch: Batch) -> torch.Tensor:
        self.check_placeholders(batch)
        ids = batch.input_ids
        is_slot = torch.zeros_like(ids, dtype=torch.bool)
        for token_id in self.placeholder_ids.values():
            is_slot |= ids == token_id
        # Placeholder ids may lie outside the LLM's vocabulary: look up id 0 there instead.
        embeds = self.llm.get_input_embeddings()(ids.masked_fill(is_slot, 0))  # [B, T, D]
        for modality in self.encoders:
            media = batch.media.get(modality)
            if media is None or media.shape[0] == 0:
                if _every_rank_runs_every_module():
                    embeds = embeds + 0.0 * self._placeholder_features(modality, embeds).sum()
                continue
            feats = self.encode_media(modality, media, batch.instructions.get(modality)).to(embeds.dtype)
            mask = (ids == self.placeholder_ids[modality]).unsqueeze(-1)
            embeds = embeds.masked_scatter(mask, feats)
        return embeds

    def _placeholder_features(self, modality: str, like: torch.Tensor) -> torch.Tensor:
        """Features of one blank medium (and a one-token instruction), for a batch without
        this modality. Under FSDP / ZeRO-3 each encoder and projector gathers its weights with
        a collective, and DDP all-reduces every parameter's gradient: a rank that skipped them
        while another ran them would hang. Adding them with weight 0 (as LLaVA does under
        ZeRO-3) runs the same modules on every rank and changes no value or gradient."""
        encoder = self.encoders[modality]
        media = encoder.preprocess([encoder.blank()]).to(like.device)
        instruction = None
        if modality in self.instruction_tokenizers:
            one = torch.ones(1, 1, dtype=torch.long, device=like.device)
            instruction = Instruction(input_ids=one * 0, attention_mask=one)
        return self.encode_media(modality, media, instruction).to(like.dtype)

    def forward(self, batch: Batch, logits_to_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V]; with `logits_to_keep` (bool [B, T]) only at those positions,
        flattened to [K, V] (the output head never sees the rest). The loss is left to the
        caller, who knows the token normaliser."""
        embeds = self.embed(batch)
        # Packed rows: position ids restart per example and no 2-D mask is passed, so
        # transformers builds a block-diagonal causal mask from the position ids, or, with
        # the varlen attention, each example's segment attends only to itself.
        mask = None if batch.position_ids is not None else batch.attention_mask
        extra = {}
        if batch.position_ids is not None and uses_varlen(self.llm):
            extra[SEGMENTS_KWARG] = segment_starts(batch.position_ids)
        if logits_to_keep is not None:
            extra["logits_to_keep"] = logits_to_keep
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=batch.position_ids,
                       use_cache=False, **extra)
        return out.logits

    @torch.no_grad()
    def generate(self, batch: Batch, max_new_tokens: int = 32, temperature: float = 0.0,
                 top_p: float = 1.0, streamer=None) -> torch.Tensor:
        """Continuation of left-padded prompts, greedy at temperature 0 (else sampled with
        nucleus `top_p`); returns only the new tokens [B, T_new]. A transformers streamer
        (e.g. `TextIteratorStreamer`) receives the tokens as they are generated."""
        embeds = self.embed(batch)
        tok = self.tokenizer
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 \
            else {"do_sample": False}
        return self.llm.generate(inputs_embeds=embeds, attention_mask=batch.attention_mask,
                                 max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id, streamer=streamer, **sampling)

    # ----------------------------------------------------------------- save / load
    def save_pretrained(self, out_dir: str | Path) -> None:
        """Each part in its own library's format, plus `mmtune_config.json` tying them together:
        llm/ (transformers; peft adapter in llm_adapter/), encoders/<m>/, projectors.safetensors,
        tokenizer/. Paths in the saved config are relative to `out_dir`."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        cfg = dataclasses.replace(self.config, preset=None)
        # `quantize` is kept: a reload quantises the same base again, as it was trained.
        llm_cfg = dataclasses.replace(cfg.llm, arch={})
        if hasattr(self.llm, "peft_config"):
            self.llm.save_pretrained(out / "llm_adapter")
            if self.config.llm.path is None:  # random-init base exists nowhere else
                self._save_lora_base(out / "llm")
                llm_cfg.path = "llm"
            else:
                llm_cfg.path = str(Path(self.config.llm.path).resolve())
        else:
            if cfg.llm.quantize and cfg.llm.quantize_embeddings:  # no format transformers reloads
                raise ValueError("a 4-bit LLM with quantize_embeddings saves only as a LoRA adapter")
            self.llm.save_pretrained(out / "llm")
            llm_cfg.path = "llm"
        encoders = {}
        for modality, encoder in self.encoders.items():
            encoder.save_pretrained(out / "encoders" / modality)
            encoders[modality] = dataclasses.replace(self.config.encoders[modality],
                                                     path=f"encoders/{modality}", arch=self._enc_arch(modality))
        state = {f"{m}.{k}": v.contiguous() for m, p in self.projectors.items()
                 for k, v in p.state_dict().items()}
        save_file(state, out / "projectors.safetensors")
        self.tokenizer.save_pretrained(out / "tokenizer")
        tok_cfg = dataclasses.replace(cfg.tokenizer, type="auto", path="tokenizer", chat_template=None)
        projectors = dict(cfg.projectors)
        for modality, tok in self.instruction_tokenizers.items():
            tok.save_pretrained(out / "instruction_tokenizers" / modality)
            projectors[modality] = dataclasses.replace(projectors[modality], instruction_tokenizer=TokenizerConfig(
                type="auto", path=f"instruction_tokenizers/{modality}"))
        saved = dataclasses.replace(cfg, llm=llm_cfg, encoders=encoders, tokenizer=tok_cfg, projectors=projectors)
        (out / "mmtune_config.json").write_text(json.dumps(to_dict(saved), indent=2))

    def _save_lora_base(self, out: Path) -> None:
        """The base weights without the adapters peft injected into its layers, under the
        original names, so `llm/` loads in transformers as the plain base model."""
        base = self.llm.get_base_model()
        adapters = {id(p) for p in adapter_parameters(self.llm)}
        # peft moves each wrapped layer's own weights under `.base_layer.`: give them back their names.
        state = {k.replace(".base_layer.", "."): v for k, v in base.state_dict(keep_vars=True).items()
                 if id(v) not in adapters}
        state = {k: v.detach() for k, v in state.items()}
        base.save_pretrained(out, state_dict=state)

    def _enc_arch(self, modality: str) -> dict:
        # open_clip needs its architecture name to rebuild; HF towers carry config.json.
        arch = self.config.encoders[modality].arch
        return {"model_name": arch["model_name"]} if "model_name" in arch else {}

    @classmethod
    def from_pretrained(cls, path: str | Path, trainable_adapter: bool = False) -> "MultimodalLM":
        root = Path(path)
        cfg = from_dict(ModelConfig, json.loads((root / "mmtune_config.json").read_text()),
                        f"{root / 'mmtune_config.json'}: ")

        def here(p: str | None) -> str | None:
            return None if p is None else str(root / p) if not Path(p).is_absolute() else p

        cfg.llm.path = here(cfg.llm.path)
        cfg.tokenizer.path = here(cfg.tokenizer.path)
        for enc in cfg.encoders.values():
            enc.path = here(enc.path)
        for proj in cfg.projectors.values():
            if proj.instruction_tokenizer is not None:
                proj.instruction_tokenizer.path = here(proj.instruction_tokenizer.path)
        model = cls.build(cfg)
        state = load_file(root / "projectors.safetensors")
        for m, proj in model.projectors.items():
            proj.load_state_dict({k[len(m) + 1:]: v for k, v in state.items() if k.startswith(m + ".")})
        if (root / "llm_adapter").exists():
            from peft import PeftModel

            model.llm = PeftModel.from_pretrained(model.llm, root / "llm_adapter",
                                                  is_trainable=trainable_adapter)
        return model
