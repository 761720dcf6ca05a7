"""Training recipes. Each module has `main(cfg, run_dir, ...)` and registers it in `RECIPES`."""
from . import instructblip, llava, qlora, sft, video_llama  # noqa: F401  (registration)
from . import instruct_pix2pix  # noqa: F401  (registration; imports diffusers only when it runs)
