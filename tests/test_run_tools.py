"""Around a trained run: tracker event files, the curves plot, interactive chat, quiet output."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mmtune.cli import main as cli

from conftest import SMALL, repo_env, tiny_llava_run

QUICK = [*SMALL, "stages.pretrain.max_steps=2", "stages.finetune.max_steps=3",
         "stages.pretrain.batch_size=4", "stages.finetune.batch_size=4", "train.log_every=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_llava_run(tmp_path_factory.mktemp("runtools"), 16, "train.report_to=[tensorboard]")


def test_tensorboard_event_file_holds_the_loss_scalars(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir = run
    events = list((run_dir / "trackers").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    logged = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    scalars = {}
    for event_file in events:
        acc = EventAccumulator(str(event_file)).Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    for stage in ("pretrain", "finetune"):
        expected = [(r["step"], r["loss"]) for r in logged if r["stage"] == stage]
        got = scalars[f"{stage}/loss"]
        assert [s for s, _ in got] == [s for s, _ in expected]
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-5)
    assert "finetune/tokens_per_s" in scalars and "finetune/grad_norm" in scalars


def test_unknown_tracker_is_an_error(run, tmp_path):
    data, _ = run
    with pytest.raises(ValueError, match=r"train.report_to: unknown tracker\(s\) \['tensorbord'\]"):
        cli(["--debug", "train", "llava", "--config", "tiny", "--output-dir", str(tmp_path), "--data", str(data),
             *QUICK, "train.report_to=[tensorbord]"])


def test_plot_writes_a_nontrivial_png(run, capsys):
    from PIL import Image

    _, run_dir = run
    cli(["plot", str(run_dir)])
    png = run_dir / "curves.png"
    assert f"wrote {png}" in capsys.readouterr().out
    image = Image.open(png).convert("RGB")
    assert image.size[0] >= 800 and image.size[1] >= 300
    colours = image.getcolors(maxcolors=1 << 16)
    # Lines in several stage colours, axes and text: far more than a blank or single-colour canvas.
    assert colours is None or len(colours) > 50


def test_chat_session_keeps_the_conversation(run):
    from mmtune.chat import ChatSession, Generation
    from mmtune.recipes.common import load_run

    data, run_dir = run
    cfg, model = load_run(run_dir)
    session = ChatSession(model, cfg, Generation(max_new_tokens=4))
    session.attach("image", data / "images" / "test_00000.png")
    first = "".join(session.stream("what colour is the shape ?")).strip()
    session.ask("and the shape ?")
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    assert session.messages[1]["content"] == first
    assert session.messages[0]["content"].startswith("<image>") and len(session.media["image"]) == 1
    session.reset()
    again = ChatSession(model, cfg, Generation(max_new_tokens=4))
    again.attach("image", data / "images" / "test_00000.png")
    assert again.ask("what colour is the shape ?") == first  # greedy: streamed == whole answer
    with pytest.raises(ValueError, match="no video encoder"):
        session.attach("video", data / "images" / "test_00000.png")


def test_chat_session_with_video_and_audio(tmp_path):
    """A Video-LLaMA model reads both media of one message (what `chat --video --audio` attaches)."""
    import torch

    from mmtune.chat import ChatSession, Generation
    from mmtune.model import MultimodalLM
    from mmtune.recipes.common import load_recipe_config
    from mmtune.synth import av

    av.generate(tmp_path, n_train=2, n_test=1, seed=0)
    record = json.loads((tmp_path / "test.jsonl").read_text().splitlines()[0])
    cfg = load_recipe_config("video_llama", "tiny", ["model.preset=tiny-video-llama-av"])
    torch.manual_seed(0)
    session = ChatSession(MultimodalLM.build(cfg.model), cfg, Generation(max_new_tokens=3))
    session.attach("video", tmp_path / record["videos"][0])
    session.attach("audio", tmp_path / record["audios"][0])
    reply = session.ask("what do you see and hear ?")
    assert session.messages[0]["content"] == "<video>\n<audio>\nwhat do you see and hear ?"
    assert session.messages[1]["content"] == reply
    assert len(session.media["video"]) == len(session.media["audio"]) == 1 and not session.pending


def test_interactive_chat_through_a_pseudo_terminal(run):
    """Drive `mmtune chat RUN` as a person would: attach, ask twice, reset, ask again, quit."""
    pexpect = pytest.importorskip("pexpect")
    from mmtune.chat import ChatSession, Generation
    from mmtune.recipes.common import load_run

    data, run_dir = run
    image = data / "images" / "test_00001.png"
    cfg, model = load_run(run_dir)
    expected = ChatSession(model, cfg, Generation(max_new_tokens=6))
    expected.attach("image", image)
    turns = [expected.ask("what colour is the shape ?"), expected.ask("is it left or right ?")]
    assert all(turns), "precondition: the tiny model says something"

    child = pexpect.spawn(sys.executable, ["-m", "mmtune.cli", "chat", str(run_dir), "--max-new-tokens", "6"],
                          env=repo_env(), encoding="utf-8", timeout=120)
    try:
        child.expect("you> ")
        assert "/image PATH" in child.before and "Warning" not in child.before
        child.sendline(f"/image {image}")
        child.expect(r"attached .*next message\)")
        for question, answer in zip(["what colour is the shape ?", "is it left or right ?"], turns):
            child.expect("you> ")
            child.sendline(question)
            child.expect("bot> ")
            child.expect("\r\n")
            assert child.before.strip() == answer
        child.expect("you> ")
        child.sendline("/reset")
        child.expect(r"\(new conversation\)")
        child.expect("you> ")
        child.sendline("/image missing.png")
        child.expect("error: missing.png: no such file")
        child.expect("you> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_one_shot_chat_takes_sampling_options(run, capsys):
    data, run_dir = run
    cli(["chat", str(run_dir), "--image", str(data / "images" / "test_00000.png"), "what colour is the shape ?",
         "--temperature", "1.0", "--top-p", "0.9", "--max-new-tokens", "3"])
    assert len(capsys.readouterr().out.split()) <= 3


def test_version_and_train_help_list_recipes(capsys):
    with pytest.raises(SystemExit):
        cli(["--version"])
    assert capsys.readouterr().out.startswith("mmtune 0.")
    with pytest.raises(SystemExit):
        cli(["train", "--help"])
    out = capsys.readouterr().out
    assert "llava" in out and "llava-1.5-7b" in out and "video_llama" in out and "tiny-audio" in out


def test_a_plain_command_prints_no_warnings():
    """`mmtune zoo` imports diffusers and peft, which import bitsandbytes when installed."""
    done = subprocess.run([sys.executable, "-m", "mmtune.cli", "zoo"], env=repo_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    assert "tiny-llava" in done.stdout
