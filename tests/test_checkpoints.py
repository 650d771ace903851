import pytest
import torch

from df_agent import checkpoints
from df_agent.checkpoints import read_checkpoint_file, save_atomically


def test_an_interrupted_save_keeps_the_previous_checkpoint_and_leaves_no_partial_file(tmp_path, monkeypatch):
    path = save_atomically({"step": 1}, tmp_path / "run" / "checkpoint.pt")
    assert read_checkpoint_file(path, "cpu", "remedy") == {"step": 1}

    def interrupted(payload, file):  # writes half a file, then dies (a crash or Ctrl-C mid-write)
        open(file, "wb").write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_atomically({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False) == {"step": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]


def test_reading_a_missing_or_corrupt_file_names_the_problem_and_the_remedy(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*missing.pt; train one"):
        read_checkpoint_file(tmp_path / "missing.pt", None, "train one")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"corrupt or not a Diffuser checkpoint .*; train one"):
        read_checkpoint_file(tmp_path / "bad.pt", None, "train one", kind="a Diffuser")
