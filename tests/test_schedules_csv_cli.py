"""torch's per-rank action CSV in and out, and `pipesim schedule`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from astra_driver.cli import main
from llm_converter.errors import DeadlockError, PipesimError
from llm_converter.schedules import build_schedule, load_schedule, read_actions_csv, write_actions_csv


def test_csv_round_trips_every_schedule(tmp_path: Path) -> None:
    for name in ("gpipe", "1f1b", "interleaved-1f1b", "looped-bfs", "zb-h1", "zb-h2", "zb-v", "dualpipev"):
        schedule = build_schedule(name, 2, 4)
        path = tmp_path / f"{name}.csv"
        write_actions_csv(path, schedule)
        loaded = load_schedule(path)
        assert loaded.actions == schedule.actions
        assert loaded.stage_to_rank == schedule.stage_to_rank
        assert (loaded.pp, loaded.num_stages, loaded.microbatches) == (2, schedule.num_stages, 4)
        assert loaded.name == name


def test_csv_has_torchs_layout_blank_cells_for_idle_steps(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    write_actions_csv(path, build_schedule("1f1b", 2, 2))
    assert path.read_text() == "0F0,0F1,,0B0,,0B1\n,1F0,1B0,1F1,1B1\n"


def test_csv_from_torch_with_lowered_actions_loads(tmp_path: Path) -> None:
    # torch's _dump_csv of a schedule after _add_reduce_grad, and DualPipeV's overlapped pairs.
    path = tmp_path / "torch.csv"
    path.write_text("0F0,0F1,,0B0,0B1,0REDUCE_GRAD,0SEND_F1\n,1F0,(1F1;1B0)OVERLAP_F_B,1B1,1REDUCE_GRAD\n")
    schedule = read_actions_csv(path)
    assert [[str(a) for a in rank] for rank in schedule.actions] == [
        ["0F0", "0F1", "0B0", "0B1"],
        ["1F0", "1F1", "1B0", "1B1"],
    ]


def test_malformed_csv_names_file_row_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("0F0,0B0\n1F0,1X0\n")
    with pytest.raises(PipesimError) as info:
        read_actions_csv(path)
    assert str(info.value).startswith(f"{path}: row 2 (rank 1), column 2: '1X0' is not an action")


def test_deadlocking_csv_names_the_actions(tmp_path: Path) -> None:
    path = tmp_path / "dead.csv"
    path.write_text("0F0,0B0\n1B0,1F0\n")
    with pytest.raises(DeadlockError) as info:
        load_schedule(path)
    message = str(info.value)
    assert message.startswith(f"{path}: deadlock: ")
    assert "rank 0 stuck at 0B0 (waits for 1B0)" in message
    assert "rank 1 stuck at 1B0 (waits for 1F0 later on the same rank)" in message


def test_csv_with_a_stage_on_two_ranks(tmp_path: Path) -> None:
    path = tmp_path / "split.csv"
    path.write_text("0F0,0B0\n0F1,0B1\n")
    with pytest.raises(PipesimError, match="stage 0 has actions on rank 0"):
        read_actions_csv(path)


def test_missing_and_empty_csv(tmp_path: Path) -> None:
    with pytest.raises(PipesimError, match="no such file"):
        load_schedule(tmp_path / "none.csv")
    (tmp_path / "empty.csv").write_text("\n\n")
    with pytest.raises(PipesimError, match="no actions"):
        load_schedule(tmp_path / "empty.csv")


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_prints_grid_and_bubble(capsys) -> None:
    assert main(["schedule", "--schedule", "1f1b", "--pp", "4", "--microbatches", "8"]) == 0
    out = capsys.readouterr().out
    assert "Step 03: 0F3    1F2    2F1    3F0" in out
    assert "bubble 27.27%" in out and "closed form for uniform times and free transfers (p-1)/(m+p-1) = 27.27%" in out
    assert "peak in-flight microbatches per stage: 4 3 2 1" in out


def test_cli_zb_h2_reports_the_bubble_its_parallelogram_removes(capsys) -> None:
    # Same synchronous-step bubble as zb-h1 (the p-1 ramp), but nothing between each rank's first and last action:
    # the paper's (p-1)(F+B-2W) = 0 at F = I = W.
    argv = ["schedule", "--schedule", "zb-h2", "--pp", "4", "--microbatches", "8", "--times", "1,1,1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "step time 27 steps; bubble 11.11% (1 - busy / (ranks x step)); idle per rank 3, 3, 3, 3" in out
    assert (
        "idle between each rank's first and last action: 0, 0, 0, 0; steps overlapped (no end-of-step sync): "
        "step 24, bubble 0.00%" in out
    )
    assert "zero-bubble paper's bubble (p-1)(F+B-2W) = 0" in out
    assert main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["overlapped_step_time"] == 24 and data["overlapped_bubble_fraction"] == 0
    assert data["paper_bubble_time"] == {"formula": "(p-1)(F+B-2W)", "value": 0}
    assert [r["span_bubble_time"] for r in data["per_rank"]] == [0, 0, 0, 0]
    assert [r["bubble_time"] for r in data["per_rank"]] == [3, 3, 3, 3]
    assert main(["schedule", "--schedule", "zb-h1", "--pp", "4", "--microbatches", "8", "--times", "1,1,1"]) == 0
    out = capsys.readouterr().out
    assert "idle between each rank's first and last action: 3, 2, 1, 0" in out
    assert "zero-bubble paper's bubble (p-1)(F+B-W) = 3" in out
    assert "rank 0's idle between first and last action: 3" in out


def test_cli_p2p_steps_lengthen_the_step(capsys) -> None:
    assert main(["schedule", "--schedule", "gpipe", "--pp", "2", "--microbatches", "3", "--p2p", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step_time"] == 2 * (3 + 2 - 1) + 2 * 1


def test_cli_json_interleaved(capsys) -> None:
    assert (
        main(
            [
                "schedule",
                "--schedule",
                "interleaved-1f1b",
                "--pp",
                "4",
                "--microbatches",
                "8",
                "--chunks",
                "2",
                "--json",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["num_stages"] == 8 and data["chunks"] == 2
    assert data["bubble_fraction"] == pytest.approx(3 / 19)
    assert data["closed_form_bubble"]["value"] == pytest.approx(3 / 19)
    assert data["stage_to_rank"] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert len(data["actions"][0]) == 2 * 8 * 2


def test_cli_csv_out_and_back(tmp_path: Path, capsys) -> None:
    path = tmp_path / "out" / "zbv.csv"
    assert main(["schedule", "--schedule", "zb-v", "--pp", "2", "--microbatches", "4", "--csv", str(path)]) == 0
    first = capsys.readouterr().out
    assert main(["schedule", "--from-csv", str(path), "--times", "1,1,1"]) == 0
    second = capsys.readouterr().out
    assert "Rank 1" in second and "zbv: 2 ranks, 4 stages" in second
    assert first.splitlines()[2:] == second.splitlines()[2:]  # same grid (unit times either way)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--schedule", "zz", "--pp", "2", "--microbatches", "2"], "unknown schedule 'zz'; choose one of"),
        (["--schedule", "gpipe", "--pp", "2", "--microbatches", "0"], "--microbatches: 0"),
        (["--schedule", "1f1b", "--pp", "4", "--microbatches", "2"], "needs at least 4 microbatches"),
        (["--schedule", "interleaved-1f1b", "--pp", "4", "--microbatches", "6"], "divisible by --pp 4"),
        (["--schedule", "gpipe", "--pp", "2", "--microbatches", "2", "--chunks", "2"], "takes no --chunks"),
        (["--schedule", "looped-bfs", "--pp", "2", "--microbatches", "2", "--chunks", "0"], "--chunks: 0"),
        (["--schedule", "gpipe", "--pp", "2"], "--pp and --microbatches"),
        (["--pp", "2", "--microbatches", "2"], "--schedule: missing"),
        (["--schedule", "gpipe", "--pp", "2", "--microbatches", "2", "--times", "1,x"], "--times: '1,x'"),
        (["--schedule", "zb-h1", "--pp", "2", "--microbatches", "2", "--times", "1,4"], "give F,I,W"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(argv: list[str], message: str, capsys) -> None:
    assert main(["schedule", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pipesim: error: ")
    assert message in err


def test_cli_deadlocking_csv_exits_2_naming_actions(tmp_path: Path, capsys) -> None:
    path = tmp_path / "dead.csv"
    path.write_text("0F0,0B0\n1B0,1F0\n")
    assert main(["schedule", "--from-csv", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rank 1 stuck at 1B0" in err


def test_cli_csv_with_schedule_flags_is_refused(tmp_path: Path, capsys) -> None:
    path = tmp_path / "s.csv"
    write_actions_csv(path, build_schedule("gpipe", 2, 2))
    assert main(["schedule", "--from-csv", str(path), "--pp", "2"]) == 2
    assert "drop --schedule, --pp" in capsys.readouterr().err
