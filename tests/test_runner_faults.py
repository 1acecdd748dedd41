"""The runner under faults: bad run directories, failed reruns, dead kernels, full disks, crashes.

Notebook execution is replaced by :class:`FakePapermill`, which saves the executed notebook
the way papermill does (through papermill's writer, after every cell) and fails on demand;
everything else (parameter checks, status file, HTML export, publishing, the CLI) is real.
Each test works in a throw-away copy of the project, so nothing can touch the real one.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from synapse_nb.pipeline import runner
from synapse_nb.pipeline.cli import main

from .conftest import copy_project

CI = "parameters/ci.yaml"
PLAIN = "parameters/plain.yaml"


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A copy of the project's notebooks and ci.yaml in a folder that is the working directory."""
    proj = copy_project(tmp_path)
    plain = [ln for ln in (proj / CI).read_text().splitlines() if not ln.startswith("n_preview")]
    (proj / PLAIN).write_text("\n".join(plain) + "\n")  # no display key: any step can run it alone
    monkeypatch.chdir(proj)
    return proj


class FakePapermill:
    """Stands in for ``papermill.execute_notebook``: one cell per save, faults per step."""

    def __init__(self) -> None:
        self.faults: dict[str, object] = {}
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, input_path, output_path, parameters=None, **kwargs):
        from papermill.iorw import write_ipynb

        step = Path(input_path).stem
        self.calls.append((step, dict(parameters or {})))
        attempt = sum(s == step for s, _ in self.calls)
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells = [self._cell(f"{step} attempt {attempt} cell 1")]
        write_ipynb(nb, output_path)
        fault = self.faults.get(step)
        if isinstance(fault, BaseException):
            raise fault
        if callable(fault):
            fault()
        nb.cells.append(self._cell(f"{step} attempt {attempt} cell 2"))
        write_ipynb(nb, output_path)
        return nb

    @staticmethod
    def _cell(text: str):
        out = nbformat.v4.new_output("stream", name="stdout", text=text + "\n")
        return nbformat.v4.new_code_cell("print('x')", outputs=[out], execution_count=1)


@pytest.fixture
def fake(monkeypatch) -> FakePapermill:
    import papermill

    executor = FakePapermill()
    monkeypatch.setattr(papermill, "execute_notebook", executor)
    return executor


def error_lines(caplog) -> list[str]:
    """What the package logged as errors (papermill logs its own line about a dead kernel)."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("synapse_nb")]


def assert_one_line_error(caplog, capsys, *needles: str) -> str:
    """The CLI said one thing, on one line, without a traceback."""
    errors = error_lines(caplog)
    assert len(errors) == 1, errors
    assert "\n" not in errors[0] and "Traceback" not in errors[0], errors[0]
    assert "Traceback" not in capsys.readouterr().err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def execution_error(step: str = "06_attention"):
    from papermill.exceptions import PapermillExecutionError

    return PapermillExecutionError(3, 3, "snb.pipeline.load_study(run)", "RunError", "cache folder moved", [])


# ----------------------------------------------------------------------------- run directories
@pytest.mark.parametrize("run_dir", [".", "runs/x/..", "notebooks", "..", "runs/bad name"])
def test_unsafe_run_dir_is_refused_before_anything_is_written(project, fake, caplog, capsys, run_dir):
    before = {p: p.stat().st_mtime_ns for p in project.rglob("*") if p.is_file()}
    code = main(["run", CI, "--only", "01_load", "--run-dir", run_dir])
    assert code == 2
    message = assert_one_line_error(caplog, capsys, run_dir)
    assert "--run-dir" in message
    assert fake.calls == []
    after = {p: p.stat().st_mtime_ns for p in project.rglob("*") if p.is_file()}
    assert after == before  # notebooks/01_load.ipynb untouched, no status/params/log in the project
    assert not (project / "reports").exists()
    assert not (project.parent / "01_load.html").exists() and not (project.parent / "status.json").exists()


def test_run_dirs_under_the_runs_folder_or_outside_the_project_are_accepted(project, fake, tmp_path):
    runner.run_pipeline(CI, run_dir="runs/R1", only=["01_load"])
    assert (project / "runs" / "R1" / "html" / "01_load.html").is_file()
    assert (project / "reports" / "R1" / "01_load.html").is_file()
    elsewhere = tmp_path / "elsewhere" / "run_a"
    result = runner.run_pipeline(CI, run_dir=elsewhere, only=["01_load"], reports_root=tmp_path / "pub")
    assert result.ok and (elsewhere / "notebooks" / "01_load.ipynb").is_file()
    assert (tmp_path / "pub" / "run_a" / "01_load.html").is_file()


def test_check_run_dir_refuses_the_runs_and_reports_roots_and_their_parents(project, tmp_path):
    with pytest.raises(runner.RunnerError, match=r"runs folder"):
        runner.check_run_dir(tmp_path / "r", runs_root=tmp_path / "r", project_root=project)
    with pytest.raises(runner.RunnerError, match=r"contains the reports folder"):
        runner.check_run_dir(tmp_path / "x", runs_root=tmp_path / "runs", project_root=project, reports_root=tmp_path / "x" / "reports")
    with pytest.raises(runner.RunnerError, match=r"outside the runs folder"):
        runner.check_run_dir(project / "parameters" / "r1", runs_root="runs", project_root=project)
    assert runner.check_run_dir("runs/sweep_1/alpha1_0", runs_root="runs", project_root=project) == project / "runs" / "sweep_1" / "alpha1_0"


# ----------------------------------------------------------------------------- failed reruns
def test_failed_rerun_keeps_the_good_report_and_merges_status(project, fake):
    result = runner.run_pipeline(PLAIN, run_dir="runs/R")
    run = result.run.path
    page, published = run / "html" / "06_attention.html", project / "reports" / "R" / "06_attention.html"
    good_page, good_nb = page.read_text(), (run / "notebooks" / "06_attention.ipynb").read_text()
    assert "06_attention attempt 1" in good_page and published.read_text() == good_page
    before = runner.read_status(run)

    fake.faults["06_attention"] = execution_error()
    with pytest.raises(runner.RunnerError, match=r"notebook 06_attention failed \(RunError: cache folder moved\)"):
        runner.run_pipeline(PLAIN, run_dir="runs/R", only=["06_attention"])
    assert page.read_text() == good_page and published.read_text() == good_page
    assert (run / "notebooks" / "06_attention.ipynb").read_text() == good_nb
    failed_page = run / "html" / "06_attention.failed.html"
    assert "06_attention attempt 2" in failed_page.read_text()
    assert (project / "reports" / "R" / "06_attention.failed.html").read_text() == failed_page.read_text()
    assert "attempt 2" in (run / "notebooks" / "06_attention.failed.ipynb").read_text()
    status = runner.read_status(run)
    assert status["status"] == "failed" and "cache folder moved" in status["error"]
    assert list(status["step_status"]) == list(runner.PIPELINE)
    for step in runner.PIPELINE:
        if step != "06_attention":
            assert status["step_status"][step] == before["step_status"][step]
    assert status["step_status"]["06_attention"]["status"] == "failed"
    assert status["step_status"]["06_attention"]["html"] == "html/06_attention.failed.html"
    assert "kept the earlier report" in (run / "run.log").read_text()
    assert not list(run.rglob("*.previous.*")) and not list(run.rglob(".*tmp*"))

    # once the step works again its new report replaces the old one and the failure page goes
    fake.faults.clear()
    runner.run_pipeline(PLAIN, run_dir="runs/R", only=["06_attention"])
    assert "06_attention attempt 3" in page.read_text() and published.read_text() == page.read_text()
    assert not failed_page.exists() and not (project / "reports" / "R" / "06_attention.failed.html").exists()
    assert not (run / "notebooks" / "06_attention.failed.ipynb").exists()
    assert runner.read_status(run)["status"] == "ok"


def test_first_failure_of_a_step_writes_its_page_in_the_usual_place(project, fake):
    fake.faults["03_extract"] = execution_error()
    with pytest.raises(runner.RunnerError, match="03_extract failed"):
        runner.run_pipeline(CI, run_dir="runs/R", only=["01_load", "03_extract"])
    run = project / "runs" / "R"
    assert "03_extract attempt 1" in (run / "html" / "03_extract.html").read_text()
    assert not (run / "html" / "03_extract.failed.html").exists()


# ----------------------------------------------------------------------------- parameters of other steps
def test_display_key_of_a_step_not_run_is_accepted(project, fake):
    result = runner.run_pipeline(CI, run_dir="runs/R", start="07_presynapse")
    assert result.ok and [s for s, _ in fake.calls] == ["07_presynapse", "08_report"]
    assert all("n_preview" not in params for _, params in fake.calls)


# ----------------------------------------------------------------------------- dead kernel
def test_dead_kernel_is_a_failed_step_with_a_report(project, fake, caplog, capsys):
    from nbclient.exceptions import DeadKernelError

    fake.faults["03_extract"] = DeadKernelError("Kernel died")
    code = main(["run", CI, "--run-dir", "runs/R", "--only", "01_load", "03_extract"])
    assert code == 2
    assert_one_line_error(caplog, capsys, "the Jupyter kernel died while running 03_extract (Kernel died")
    run = project / "runs" / "R"
    status = runner.read_status(run)
    assert status["status"] == "failed" and "kernel died while running 03_extract" in status["error"]
    assert status["step_status"]["03_extract"]["status"] == "failed"
    assert status["step_status"]["01_load"]["status"] == "ok"
    assert "03_extract attempt 1" in (run / "html" / "03_extract.html").read_text()


# ----------------------------------------------------------------------------- disk and permissions
def test_read_only_runs_folder_is_one_line(project, fake, caplog, capsys, monkeypatch):
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if "runs" in self.parts:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert main(["run", CI, "--only", "01_load"]) == 2
    assert_one_line_error(caplog, capsys, "runs", "Permission denied")
    assert fake.calls == []


def test_full_disk_while_saving_the_executed_notebook(project, fake, caplog, capsys, monkeypatch):
    from papermill import iorw

    def fill_disk() -> None:
        def write(self, buf, path):  # what a full disk does to a plain open(..., "w")
            with open(path, "w", encoding="utf-8") as f:
                f.write(buf[: len(buf) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

        monkeypatch.setattr(iorw.LocalHandler, "write", write)

    fake.faults["01_load"] = fill_disk
    code = main(["run", CI, "--run-dir", "runs/R", "--only", "01_load"])
    assert code == 2
    assert_one_line_error(caplog, capsys, "No space left on device", "01_load")
    run = project / "runs" / "R"
    executed = json.loads((run / "notebooks" / "01_load.ipynb").read_text())  # the last complete save
    assert len(executed["cells"]) == 1
    assert not [p.name for p in (run / "notebooks").iterdir() if p.name != "01_load.ipynb"]
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and "No space left on device" in status["error"]
    assert status["step_status"]["01_load"]["status"] == "failed"


# ----------------------------------------------------------------------------- crashes and kills
def test_status_never_stays_running_after_the_runner_raises(project, fake, monkeypatch):
    fake.faults["01_load"] = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        runner.run_pipeline(CI, run_dir="runs/R", only=["01_load", "03_extract"])
    status = json.loads((project / "runs" / "R" / "status.json").read_text())
    assert status["status"] == "interrupted" and status["finished"]
    assert status["step_status"]["01_load"]["status"] == "interrupted"
    assert status["step_status"]["03_extract"]["status"] == "not run"

    def broken_publish(run, root):
        raise RuntimeError("publishing broke")

    fake.faults.clear()
    monkeypatch.setattr(runner, "publish_reports", broken_publish)
    with pytest.raises(RuntimeError):
        runner.run_pipeline(CI, run_dir="runs/R2", only=["01_load"])
    status = json.loads((project / "runs" / "R2" / "status.json").read_text())
    assert status["status"] == "failed" and "publishing broke" in status["error"]


def test_running_status_of_a_dead_runner_reads_interrupted_and_the_run_resumes(project, fake):
    run = project / "runs" / "R"
    runner.run_pipeline(CI, run_dir=run, only=["01_load"])
    data = json.loads((run / "status.json").read_text())
    assert data["pid"] == os.getpid()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    data.update(status="running", pid=gone.pid, finished=None)
    data["step_status"]["03_extract"] = {"status": "running", "started": data["started"]}
    (run / "status.json").write_text(json.dumps(data))
    state = runner.read_status(run)
    assert state["status"] == "interrupted" and state["step_status"]["03_extract"]["status"] == "interrupted"
    # the same pid, but a process started at another time: not our runner
    data.update(pid=os.getpid(), pid_started=1.0)
    (run / "status.json").write_text(json.dumps(data))
    assert runner.read_status(run)["status"] == "interrupted"
    # a live runner reads as running
    live = runner.RunStatus(project / "runs" / "live", ["01_load"])
    assert runner.read_status(live.run_path)["status"] == "running"
    # resume from the interrupted step: earlier records kept, the step runs again
    result = runner.run_pipeline(CI, run_dir=run, start="03_extract")
    assert result.ok
    status = runner.read_status(run)
    assert status["status"] == "ok"
    assert status["step_status"].get("02_pretrain", {}).get("status", runner.NOT_ASKED) == runner.NOT_ASKED
    assert all(status["step_status"][s]["status"] == "ok" for s in runner.PIPELINE if s != "02_pretrain")


def test_interrupted_rerun_puts_the_good_notebook_back(project, fake):
    from papermill.iorw import papermill_io

    handlers = list(papermill_io._handlers)
    run = runner.run_pipeline(CI, run_dir="runs/R", only=["01_load"]).run.path
    good_nb, good_page = (run / "notebooks" / "01_load.ipynb").read_text(), (run / "html" / "01_load.html").read_text()
    fake.faults["01_load"] = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        runner.run_pipeline(CI, run_dir="runs/R", only=["01_load"])
    assert (run / "notebooks" / "01_load.ipynb").read_text() == good_nb
    assert (run / "html" / "01_load.html").read_text() == good_page
    assert "attempt 2" in (run / "notebooks" / "01_load.interrupted.ipynb").read_text()
    assert runner.read_status(run)["step_status"]["01_load"]["status"] == "interrupted"
    assert papermill_io._handlers == handlers  # the atomic writer was only there while a notebook ran
    # the good report is still the one to keep when the next attempt fails
    fake.faults["01_load"] = execution_error()
    with pytest.raises(runner.RunnerError, match="01_load failed"):
        runner.run_pipeline(CI, run_dir="runs/R", only=["01_load"])
    assert (run / "html" / "01_load.html").read_text() == good_page
    assert (run / "notebooks" / "01_load.ipynb").read_text() == good_nb
    assert "attempt 3" in (run / "html" / "01_load.failed.html").read_text()


def test_a_report_that_cannot_be_exported_fails_its_step_and_keeps_the_earlier_one(project, fake, monkeypatch):
    from synapse_nb.pipeline.report import ReportError

    run = runner.run_pipeline(CI, run_dir="runs/R", only=["01_load"]).run.path
    good_page = (run / "html" / "01_load.html").read_text()
    real_export = runner.export_html

    def lossy(notebook, html_path, strict=True):
        if strict:
            raise ReportError(f"{notebook}: 1 output(s) cannot be shown in HTML: a widget")
        return real_export(notebook, html_path, strict=False)

    monkeypatch.setattr(runner, "export_html", lossy)
    with pytest.raises(runner.RunnerError, match=r"the report of 01_load could not be written: ReportError: .*cannot be shown in HTML"):
        runner.run_pipeline(CI, run_dir="runs/R", only=["01_load"])
    assert (run / "html" / "01_load.html").read_text() == good_page
    assert "attempt 2" in (run / "html" / "01_load.failed.html").read_text()


def test_export_of_a_truncated_notebook_is_one_line_and_keeps_the_old_page(tmp_path):
    from synapse_nb.pipeline.report import ReportError, export_html

    notebook, page = tmp_path / "01_load.ipynb", tmp_path / "01_load.html"
    notebook.write_text('{"cells": [{"cell_type": "code", "sou')
    page.write_text("good")
    with pytest.raises(ReportError, match=r"cannot read the executed notebook .*01_load.ipynb .*run its step again") as info:
        export_html(notebook, page)
    assert "\n" not in str(info.value) and page.read_text() == "good"


def test_cli_turns_a_refused_file_into_one_line(monkeypatch, caplog, capsys):
    from synapse_nb.pipeline import cli

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", "/srv/data/params.yaml")

    monkeypatch.setattr(cli, "run_pipeline", refused)
    assert main(["run", "params.yaml"]) == 2
    assert_one_line_error(caplog, capsys, "Permission denied: /srv/data/params.yaml")


@pytest.mark.notebooks
def test_a_real_kernel_that_segfaults_is_a_failed_step_with_its_report(project, caplog, capsys):
    import signal

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": runner.KERNEL_NAME, "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('run_dir: str = ""  # set by the runner')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_code_cell("print('before the crash')"), params,
                nbformat.v4.new_code_cell(f"import os\nos.kill(os.getpid(), {int(signal.SIGSEGV)})")]
    nbformat.write(nb, str(project / "notebooks" / "01_load.ipynb"))
    assert main(["run", PLAIN, "--run-dir", "runs/R", "--only", "01_load"]) == 2
    assert_one_line_error(caplog, capsys, "the Jupyter kernel died while running 01_load")
    run = project / "runs" / "R"
    executed = nbformat.read(str(run / "notebooks" / "01_load.ipynb"), as_version=4)  # complete JSON
    assert "before the crash" in executed.cells[0].outputs[0]["text"]
    assert "before the crash" in (run / "html" / "01_load.html").read_text()
    status = runner.read_status(run)
    assert status["status"] == "failed" and status["step_status"]["01_load"]["status"] == "failed"
    assert not [p for p in (run / "notebooks").iterdir() if p.name != "01_load.ipynb"]


# ----------------------------------------------------------------------------- checks up front
def no_vesicle_params(tiny_params: dict, **extra) -> dict:
    """The tiny demo with its vesicle cloud unannotated (label id 0): types needing it are refused."""
    labels = {b: {"mito": 5, "vesicle": 0, "cleft": 7, "cleft2": 7} for b in ("bbox1", "bbox2")}
    return {**tiny_params, "label_table": labels, **extra}


@pytest.mark.parametrize("extra, needles", [
    ({"segmentation_type": 6}, ("segmentation type 6 (vesicle) needs a vesicle-cloud label", "labels.vesicle: 0",
                                "Types this dataset supports: 0, 3, 7, 8")),
    ({"segmentation_type": 7, "crop_mode": "presynapse"}, ("crop_mode 'presynapse'", "use crop_mode 'cleft'")),
])
def test_a_type_the_dataset_cannot_serve_is_refused_before_any_run_directory(project, fake, caplog, capsys, tiny_params,
                                                                            extra, needles):
    import yaml

    (project / "bad.yaml").write_text(yaml.safe_dump(no_vesicle_params(tiny_params, **extra)))
    assert main(["run", "bad.yaml"]) == 2
    message = assert_one_line_error(caplog, capsys, "bad.yaml: ", *needles)
    assert "Traceback" not in message
    assert fake.calls == [] and not (project / "runs").exists() and not (project / "reports").exists()
    # steps that read neither key are not held back by it
    assert runner.run_pipeline(no_vesicle_params(tiny_params, **extra), run_dir="runs/later", only=["04_reduce"]).ok
