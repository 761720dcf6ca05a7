"""`mmtune serve RUN [--port N]`: a local web page for a trained run, on gradio.

A MultimodalLM run gets an upload box per medium its encoders read (image, video, audio), a
question box and the answer, streamed as it is generated; an instruct_pix2pix run (RUN/model is
a diffusers pipeline) gets an input image and an instruction, and shows the edited image.
gradio is an optional dependency: `pip install 'mmtune[serve]'`. Nothing leaves the machine
(no share link, analytics off).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

INPUTS = {"image": "Image", "video": "Video", "audio": "Audio"}


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    try:
        import gradio as gr
    except ImportError:
        raise SystemExit("mmtune serve needs gradio: pip install 'mmtune[serve]'") from None
    return gr


def chat_app(run: str | Path, max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0):
    """The page for a MultimodalLM run: one question per submission about the uploaded media."""
    from .chat import ChatSession, Generation
    from .recipes.common import load_run

    gr = _gradio()
    cfg, model = load_run(run)
    generation = Generation(max_new_tokens, temperature, top_p)
    modalities = [m for m in INPUTS if m in model.encoders]

    def respond(question: str, *media: str | None) -> Iterator[str]:
        session = ChatSession(model, cfg, generation)
        try:
            for modality, path in zip(modalities, media):
                if path:
                    session.attach(modality, path)
            text = ""
            for piece in session.stream(question or ""):
                text += piece
                yield text
        except ValueError as e:  # a file that does not decode, a medium the model cannot read
            raise gr.Error(str(e)) from None

    with gr.Blocks(title=f"mmtune: {run}") as app:
        gr.Markdown(f"### mmtune · `{run}`\nReads: {', '.join(modalities) or 'text only'}")
        with gr.Row():
            uploads = [getattr(gr, INPUTS[m])(label=m, type="filepath", elem_id=f"{m}-input", height=240)
                       if m != "video" else gr.Video(label=m, elem_id="video-input") for m in modalities]
        question = gr.Textbox(label="question", elem_id="question")
        ask = gr.Button("Ask", elem_id="ask", variant="primary")
        answer = gr.Textbox(label="answer", elem_id="answer", interactive=False)
        ask.click(respond, [question, *uploads], answer)
        question.submit(respond, [question, *uploads], answer)
    return app


def edit_app(run: str | Path, steps: int | None = None):
    """The page for an instruct_pix2pix run: input image + instruction -> edited image."""
    import torch
    from PIL import Image

    from .diffusion.cli import _pipeline_dir
    from .diffusion.components import load_pipeline
    from .diffusion.config import EditEvalConfig, edit_config_from_run

    gr = _gradio()
    run = Path(run)
    pipe = load_pipeline(_pipeline_dir(run))
    ec, resolution = EditEvalConfig(), None
    if (run / "config.yaml").exists():
        cfg = edit_config_from_run(run)
        ec, resolution = cfg.eval, cfg.edit.resolution

    def edit(image: Image.Image | None, instruction: str) -> Image.Image:
        if image is None:
            raise gr.Error("upload an image to edit")
        image = image.convert("RGB")
        if resolution and image.size != (resolution, resolution):
            image = image.resize((resolution, resolution), Image.BICUBIC)  # the size it was trained at
        return pipe(prompt=instruction, image=image, num_inference_steps=steps or ec.num_inference_steps,
                    guidance_scale=ec.guidance_scale, image_guidance_scale=ec.image_guidance_scale,
                    generator=torch.Generator().manual_seed(0)).images[0]

    with gr.Blocks(title=f"mmtune edit: {run}") as app:
        gr.Markdown(f"### mmtune · image editing · `{run}`")
        with gr.Row():
            source = gr.Image(label="image", type="pil", elem_id="image-input")
            edited = gr.Image(label="edited", type="pil", elem_id="edited", interactive=False)
        instruction = gr.Textbox(label="instruction", elem_id="question")
        go = gr.Button("Edit", elem_id="ask", variant="primary")
        go.click(edit, [source, instruction], edited)
        instruction.submit(edit, [source, instruction], edited)
    return app


def build_app(run: str | Path, max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0):
    """The page the run's recipe asks for (`Recipe.page`); a run folder without run.json chats."""
    from . import recipes  # noqa: F401  (fills RECIPES)
    from .registry import RECIPES
    from .train.run import recipe_of

    name = recipe_of(run)
    if name in RECIPES and RECIPES.get(name).page == "edit":
        return edit_app(run)
    return chat_app(run, max_new_tokens, temperature, top_p)


def _serve(args) -> None:
    app = build_app(args.run, args.max_new_tokens, args.temperature, args.top_p)
    print(f"serving {args.run} on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
    app.queue().launch(server_name=args.host, server_port=args.port, share=False, quiet=True,
                       ssr_mode=False, show_error=True)


def add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="a local web page to talk to (or edit images with) a trained run")
    p.add_argument("run")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: the whole network)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.set_defaults(fn=_serve)
