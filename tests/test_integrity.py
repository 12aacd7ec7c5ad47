"""Integrity: the manifest lists every file a run wrote, and nothing reads past a damaged one.

Each test damages a run the way a user or a disk did (a deleted chunk, bytes
flipped in place, a missing or changed checkpoint file) and checks that the
answer is a named error or an exact recovery, never a silently wrong table.
"""

import json
import os
import shutil

import pyarrow as pa
import pytest
from conftest import cli, failed_run, sorted_events

import swarm
from swarm.errors import IntegrityError


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """A run that failed at step 14 (checkpoints at 3, 7, 11): kept pristine, copy to use."""
    return failed_run(tmp_path_factory.mktemp("crashed") / "r", 14)


def copy_run(src, tmp_path):
    dst = tmp_path / "r"
    shutil.copytree(src, dst)
    return dst


def test_manifest_lists_every_file_with_rows_bytes_and_checksum(reference):
    m = reference.manifest
    assert m["format"] == "swarm-run/2"
    on_disk = {os.path.relpath(os.path.join(root, f), reference.path)
               for root, _, files in os.walk(reference.path) for f in files}
    listed = set(m["files"]) | set(m["checkpoint"]["files"]) | set(
        m["previous_checkpoint"]["files"])
    # Every data file is listed; what is not listed is bookkeeping (manifest, lease lock).
    assert on_disk - listed == {"manifest.json", ".lease.lock"}
    assert listed <= on_disk
    chunks = {k: v for k, v in m["files"].items() if k.startswith("events/")}
    assert sum(v["rows"] for v in chunks.values()) == m["events"]
    for rel, rec in chunks.items():
        assert os.path.getsize(os.path.join(reference.path, rel)) == rec["bytes"]
    assert reference.verify() == []
    out = cli("verify", reference.path)
    assert out.exit_code == 0 and "intact" in out.stdout


def test_a_deleted_chunk_is_an_error_not_a_smaller_answer(reference, tmp_path):
    path = copy_run(reference.path, tmp_path)
    gone = "events/shard=1/part-00002.arrow"
    os.remove(path / gone)
    with pytest.raises(IntegrityError, match="part-00002.arrow is missing"):
        swarm.open_run(path).events()
    for args in (["query", str(path), "SELECT count(*) FROM cascades"], ["analyze", str(path)]):
        out = cli(*args)
        assert out.exit_code == 2, out.stderr
        assert gone in out.stderr and "is missing" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1  # one line, no traceback
    out = cli("verify", str(path))
    assert out.exit_code == 1 and gone in out.stderr


def _agent_offset(path) -> int:
    """Where the first agent id of an event chunk lies in the file."""
    with pa.memory_map(str(path)) as src:
        whole = src.read_buffer()
        src.seek(0)
        table = pa.ipc.open_file(src).read_all()
        data = table.column("agent").chunk(0).buffers()[1]
        return data.address - whole.address


def test_bytes_flipped_in_place_are_caught(reference, tmp_path):
    path = copy_run(reference.path, tmp_path)
    chunk = path / "events/shard=0/part-00001.arrow"
    at = _agent_offset(chunk)
    raw = bytearray(chunk.read_bytes())
    raw[at:at + 8] = bytes(b ^ 0x5A for b in raw[at:at + 8])
    chunk.write_bytes(bytes(raw))
    # Same size, so the cheap check passes; the id range and the checksum do not.
    out = cli("query", str(path), "SELECT max(agent) FROM events")
    assert out.exit_code == 2 and "events.agent holds" in out.stderr
    with pytest.raises(IntegrityError, match="events.agent holds"):
        swarm.open_run(path).events()
    problems = swarm.open_run(path).verify()
    assert any("part-00001.arrow" in p and "checksum" in p for p in problems)


def test_an_unlisted_chunk_is_left_out_and_said(reference, tmp_path):
    path = copy_run(reference.path, tmp_path)
    shutil.copy(path / "events/shard=0/part-00000.arrow", path / "events/shard=0/part-09999.arrow")
    run = swarm.open_run(path)
    assert run.events().num_rows == reference.manifest["events"]
    assert run.unlisted_chunks == ["events/shard=0/part-09999.arrow"]
    out = cli("query", str(path), "SELECT count(*) FROM events")
    assert out.exit_code == 0 and "part-09999.arrow" in out.stderr
    assert any("does not list" in p for p in run.verify())


@pytest.mark.parametrize("damage", ["delete", "flip"])
def test_resume_falls_back_from_a_damaged_checkpoint(crashed, reference, tmp_path, damage,
                                                     capfd):
    path = copy_run(crashed, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["checkpoint"]["step"] == 11 and manifest["previous_checkpoint"]["step"] == 7
    target = path / "state/step=00000011/msgs-1-to-0.arrow"
    if damage == "delete":
        os.remove(target)  # resumed to "completed" with 235 events missing before
    else:
        raw = bytearray(target.read_bytes())
        raw[len(raw) // 2] ^= 0x01  # changed one event's root before
        target.write_bytes(bytes(raw))
    resumed = swarm.resume(path)
    err = capfd.readouterr().err
    assert "msgs-1-to-0.arrow" in err and "resuming from the previous checkpoint, of step 7" in err
    assert resumed.status == "completed" and resumed.manifest["resumed_from"] == 7
    assert sorted_events(resumed).equals(sorted_events(reference))
    assert resumed.verify() == []


def test_resume_with_no_intact_checkpoint_starts_over(crashed, reference, tmp_path, capfd):
    path = copy_run(crashed, tmp_path)
    for step in (7, 11):
        os.remove(path / f"state/step={step:08d}/shard=0.arrow")
    resumed = swarm.resume(path)
    assert "starts again from step 0" in capfd.readouterr().err
    assert resumed.manifest["resumed_from"] == -1
    assert sorted_events(resumed).equals(sorted_events(reference))


def test_resume_refuses_when_an_early_chunk_is_gone_and_replays_it(crashed, reference,
                                                                   tmp_path, capfd):
    # The chunk holds steps before every checkpoint: no checkpoint can stand in for
    # it, so the run replays from step 0 (keyed randomness rewrites it exactly).
    path = copy_run(crashed, tmp_path)
    os.remove(path / "events/shard=0/part-00000.arrow")
    resumed = swarm.resume(path)
    assert "part-00000.arrow is missing" in capfd.readouterr().err
    assert resumed.manifest["resumed_from"] == -1
    assert sorted_events(resumed).equals(sorted_events(reference))


def test_a_run_from_an_older_swarm_resumes_from_step_0(crashed, reference, tmp_path, capfd):
    path = copy_run(crashed, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format"] = "swarm-run/1"
    for key in ("files", "previous_checkpoint"):
        manifest.pop(key)
    manifest["checkpoint"] = {k: manifest["checkpoint"][k] for k in ("step", "path", "unix")}
    (path / "manifest.json").write_text(json.dumps(manifest))
    old = swarm.open_run(path)
    assert not old.listed and "lists no files" in old.verify()[0]
    resumed = swarm.resume(path)
    assert "older swarm (swarm-run/1)" in capfd.readouterr().err
    assert resumed.manifest["resumed_from"] == -1 and resumed.listed
    assert sorted_events(resumed).equals(sorted_events(reference))
    assert resumed.verify() == []


def test_rows_that_disagree_with_the_manifest_are_an_error(reference, tmp_path):
    path = copy_run(reference.path, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    rows = sum(rec["rows"] for rel, rec in manifest["files"].items() if rel.startswith("events/"))
    manifest["files"]["events/shard=0/part-00001.arrow"]["rows"] += 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match=f"hold {rows:,} rows but the manifest lists "
                                             f"{rows + 1:,}"):
        swarm.open_run(path).events()
    out = cli("query", path, "SELECT count(*) FROM events")
    assert out.exit_code == 2 and f"manifest lists {rows + 1:,}" in out.stderr
    assert any("part-00001.arrow" in p and "rows" in p for p in swarm.open_run(path).verify())


def test_a_manifest_cannot_point_readers_outside_the_run(reference, tmp_path):
    outside = tmp_path / "secret.arrow"
    shutil.copy(os.path.join(reference.path, "events/shard=0/part-00000.arrow"), outside)
    path = copy_run(reference.path, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    rec = manifest["files"].pop("events/shard=0/part-00000.arrow")
    manifest["files"]["events/../../secret.arrow"] = rec
    manifest["checkpoint"]["files"]["state/../../secret.arrow"] = rec
    (path / "manifest.json").write_text(json.dumps(manifest))
    run = swarm.open_run(path)
    with pytest.raises(IntegrityError, match="secret.arrow is missing"):
        run.events()
    assert any("points outside the run directory" in p for p in run.verify())
    with pytest.raises(swarm.errors.LogError, match="points outside"):
        run.store.path("events/../../secret.arrow")


def test_links_planted_in_a_run_directory_reach_nothing_outside(crashed, tmp_path):
    # A run directory from elsewhere, resumed here: a link at a temporary name would
    # have a checkpoint overwrite the target; a linked folder would have the rewind
    # delete files there. Both are refused, and the targets stay as they were.
    victim = tmp_path / "home"
    victim.mkdir()
    (victim / ".bashrc").write_text("mine")
    (victim / "notes.txt").write_text("mine")
    path = copy_run(crashed, tmp_path)
    (path / "state/step=00000015").mkdir()
    os.symlink(victim / "notes.txt", path / "state/step=00000015/.shard=0.arrow.tmp")
    with pytest.raises(swarm.errors.LogError, match="is a symbolic link"):
        swarm.resume(path, backend="local")
    assert (victim / "notes.txt").read_text() == "mine"
    os.remove(path / "state/step=00000015/.shard=0.arrow.tmp")
    shutil.rmtree(path / "events/shard=1")
    os.symlink(victim, path / "events/shard=1")
    with pytest.raises(swarm.errors.LogError, match="link out of the run directory"):
        swarm.resume(path, backend="local")
    assert sorted(os.listdir(victim)) == [".bashrc", "notes.txt"]
    assert (victim / ".bashrc").read_text() == "mine"


def test_analyze_does_not_follow_a_linked_analysis_folder(reference, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = copy_run(reference.path, tmp_path)
    os.symlink(elsewhere, path / "analysis")
    out = cli("analyze", path)
    assert out.exit_code == 2 and "link out of the run directory" in out.stderr
    assert os.listdir(elsewhere) == []
