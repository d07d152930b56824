"""python -m t2i_fast.sample: images for captions; clear messages for unknown words and paths."""
import numpy as np
import pytest
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
    sample_main(["--run", str(run_dir), "--caption", "a big red circle on the left",
                 "--caption", "a small blue square", "--num", "2", "--out", str(tmp_path)])
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


@pytest.mark.parametrize("argv, message", [
    (["--caption", "a red dragon"], "dragon"),
    (["--caption", "!!!"], "no words"),
    ([], "at least one --caption"),
    (["--caption", "a red circle", "--num", "0"], "--num"),
    (["--captions-file", "/no/such/file.txt"], "does not exist"),
])
def test_bad_requests_are_named(run_dir, argv, message):
    with pytest.raises(SystemExit, match=message):
        sample_main(["--run", str(run_dir)] + argv)


def test_bad_run_paths_are_named(tmp_path):
    with pytest.raises(SystemExit, match="no config.json"):
        sample_main(["--run", str(tmp_path), "--caption", "a red circle"])
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SystemExit, match="not a valid run config"):
        sample_main(["--run", str(tmp_path), "--caption", "a red circle"])
