"""Which checkpoints resuming and exporting trust, and how many a run keeps (no training: folders written here)."""

import json
import os

import pytest
import torch.distributed as dist

from deberta_pretrain.training.checkpoint import find_checkpoint
from deberta_pretrain.training.checkpoint import Checkpointer, usable_checkpoints
from deberta_pretrain.training.distributed import free_port


def fake_checkpoint(directory, step, payload=b"weights" * 10, complete=True):
    folder = directory / f"step_{step:08d}"
    folder.mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(payload)
    if complete:
        (folder / "complete.json").write_text(json.dumps({"step": step, "files": {
            "mp_rank_00_model_states.pt": len(payload)}}))
    return folder


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    """`latest` names step 4, whose weights file was cut short after its save: resuming and exporting both take
    step 2; exporting step 4 by name is refused with the file and both sizes."""
    checkpoints = tmp_path / "run" / "checkpoints"
    fake_checkpoint(checkpoints, 2)
    damaged = fake_checkpoint(checkpoints, 4)
    (damaged / "mp_rank_00_model_states.pt").write_bytes(b"weig")
    (checkpoints / "latest").write_text("step_00000004")
    fake_checkpoint(checkpoints, 6, complete=False)  # an interrupted save
    usable, refused = usable_checkpoints(str(checkpoints))
    assert usable == ["step_00000002"]
    assert dict(refused) == {"step_00000006": "incomplete (no complete.json: the save did not finish)",
                             "step_00000004": "file mp_rank_00_model_states.pt has 4 bytes, 70 were written"}
    assert find_checkpoint(tmp_path / "run")[1] == "step_00000002"
    assert find_checkpoint(checkpoints)[1] == "step_00000002"
    with pytest.raises(ValueError, match="step_00000004 is damaged: file mp_rank_00_model_states.pt has 4 bytes"):
        find_checkpoint(damaged)


@pytest.fixture
def one_process_group():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


class FakeEngine:
    """Writes what DeepSpeed's ``save_checkpoint`` would, as far as the checkpointer is concerned: files in the tag."""

    def save_checkpoint(self, directory, tag, client_state, save_latest):
        assert save_latest is False  # `latest` is the checkpointer's to move, after complete.json
        os.makedirs(os.path.join(directory, tag), exist_ok=True)
        with open(os.path.join(directory, tag, "mp_rank_00_model_states.pt"), "wb") as f:
            f.write(json.dumps(client_state).encode())


def test_keep_last_prunes_old_and_interrupted_checkpoints(tmp_path, one_process_group):
    directory = tmp_path / "checkpoints"
    checkpointer = Checkpointer(str(directory), keep_last=2, rank=0, world_size=1, zero_stage=0)
    for step in (1, 2):
        checkpointer.save(FakeEngine(), step, {"step": step})
    fake_checkpoint(directory, 3, complete=False)  # killed while saving step 3
    checkpointer.save(FakeEngine(), 4, {"step": 4})
    assert sorted(os.listdir(directory)) == ["latest", "step_00000002", "step_00000004"]
    checkpointer.save(FakeEngine(), 5, {"step": 5})
    assert sorted(os.listdir(directory)) == ["latest", "step_00000004", "step_00000005"]
    assert (directory / "latest").read_text() == "step_00000005"
    marker = json.loads((directory / "step_00000005" / "complete.json").read_text())
    assert marker["world_size"] == 1 and marker["zero_stage"] == 0 and marker["partitioned"] is False
    assert usable_checkpoints(str(directory)) == (["step_00000005", "step_00000004"], [])
