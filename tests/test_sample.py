"""python -m t2i_fast.sample: images for captions; clear messages for unknown words and paths."""
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from t2i_fast.data.base import tensor_to_image
from t2i_fast.runs import load_run
from t2i_fast.sample import main as sample_main
from t2i_fast.train import Run, train_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample") / "run"
    cfg = train_config("tiny", itm_steps=2, steps=2, ckpt_every=2, sample_every=2,
                       dataset_size=32, batch_size=4, num_samples=4, threads=1, out=str(out))
    Run(cfg, out, quiet=True).train()
    return out


def test_writes_one_image_per_caption_and_seed(run_dir, tmp_path, capsys):
    assert sample_main(["--run", str(run_dir), "--caption", "a big red circle on the left",
                        "--caption", "a small blue square", "--num", "2",
                        "--out", str(tmp_path)]) == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["000_seed0.png", "001_seed1.png", "002_seed0.png", "003_seed1.png",
                     "grid.png"]
    assert Image.open(tmp_path / "000_seed0.png").size == (64, 64)
    assert "wrote 4 images" in capsys.readouterr().out
    # the same caption and seed give the same image as the Python API
    run = load_run(run_dir)
    expected = run.generate_text(["a big red circle on the left"], seed=1)[0]
    got = Image.open(tmp_path / "001_seed1.png")
    assert np.array_equal(np.asarray(tensor_to_image(expected)), np.asarray(got))


def fails(argv, message, capsys):
    """The command exits with 2 and prints one line `error: ...` matching `message`."""
    assert sample_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err
    return err


@pytest.mark.parametrize("argv, message", [
    (["--caption", "a red dragon"], "dragon"),
    (["--caption", "!!!"], "no words"),
    ([], "at least one --caption"),
    (["--caption", "a red circle", "--num", "0"], "--num"),
    (["--captions-file", "/no/such/file.txt"], "does not exist"),
    (["--caption", "a red circle", "--device", "cuda:99"], "--device cuda:99"),
    (["--caption", "a red circle", "--num", "2.5"], "--num: invalid int value"),
])
def test_bad_requests_are_named(run_dir, argv, message, capsys):
    fails(["--run", str(run_dir)] + argv, message, capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_a_gpu_is_named(run_dir, capsys):
    fails(["--run", str(run_dir), "--caption", "a red circle", "--device", "cuda"],
          "--device cuda: CUDA is not available", capsys)


def test_bad_run_paths_are_named(tmp_path, capsys):
    fails(["--run", str(tmp_path), "--caption", "a red circle"], "no config.json", capsys)
    (tmp_path / "config.json").write_text("{not json")
    fails(["--run", str(tmp_path), "--caption", "a red circle"],
          "config.json is not a valid run config", capsys)


def test_a_run_without_readable_encoders_is_refused(run_dir, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    out = tmp_path / "images"
    (copy / "encoders.pt").unlink()
    fails(["--run", str(copy), "--caption", "a red circle", "--out", str(out)],
          f"{copy / 'encoders.pt'} is missing", capsys)
    (copy / "encoders.pt").write_bytes(os.urandom(2048))
    fails(["--run", str(copy), "--caption", "a red circle", "--out", str(out)],
          f"{copy / 'encoders.pt'} is not a t2i_fast checkpoint", capsys)
    assert not out.exists()


def test_foreign_checkpoints_are_named_without_torch_advice(run_dir, tmp_path, capsys):
    random_bytes = tmp_path / "random.pt"
    random_bytes.write_bytes(os.urandom(4096))
    err = fails(["--run", str(run_dir), "--caption", "a red circle", "--checkpoint",
                 str(random_bytes)], f"{random_bytes} is not a t2i_fast checkpoint", capsys)
    assert "weights_only" not in err

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo payload",))
    torch.save({"step": Payload()}, tmp_path / "payload.pt")
    err = fails(["--run", str(run_dir), "--caption", "a red circle", "--checkpoint",
                 str(tmp_path / "payload.pt")], "holds the Python object", capsys)
    assert "system" in err and "weights_only" not in err
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    fails(["--run", str(run_dir), "--caption", "a red circle", "--checkpoint", str(empty)],
          f"checkpoint {empty} is empty", capsys)
