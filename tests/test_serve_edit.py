"""`mmtune serve` on an instruct_pix2pix run: the page's edit endpoint returns the edited image."""
from __future__ import annotations

import pytest
from PIL import Image

from conftest import free_port
from test_pix2pix import SMALL  # the tiny config shrunk to 16 px, three steps

gradio_client = pytest.importorskip("gradio_client")

def test_edit_page_returns_the_edited_image(tmp_path):
    from mmtune.recipes.instruct_pix2pix import load_edit_config
    from mmtune.recipes.instruct_pix2pix import main as pix2pix
    from mmtune.serve import build_app
    from mmtune.synth.edits import generate

    data = tmp_path / "edits"
    generate(data, n_train=8, n_test=2, seed=1, image_size=32)
    run = tmp_path / "run"
    pix2pix(load_edit_config("tiny", [*SMALL, f"data_dir={data}"]), run, evaluate=False)
    assert (run / "config.yaml").exists()
    app = build_app(run)
    port = free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                       ssr_mode=False)
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        result = client.predict(gradio_client.handle_file(str(data / "images" / "test_00000_in.png")),
                                "make the circle blue", api_name="/edit")
    finally:
        app.close()
    edited = Image.open(result)
    assert edited.size == (16, 16)  # resized to the run's training resolution, then edited
