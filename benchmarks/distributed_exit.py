"""Do 2-process training runs always exit? Run the 2-process tests of tests/trainer/test_distributed.py N times in a
row (one pytest process each) and count, per test, the runs that passed; after each run, look for any process of a
launch still alive (each carries tests/process_tree.py's marker in its environment) and end it.

    OMP_NUM_THREADS=1 python benchmarks/distributed_exit.py --runs 20 --output benchmarks/results/distributed_exit_cpu
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shlex
import subprocess
import sys
import time

import psutil
from report import REPO, command_line, environment, tests_module, write_report

__all__ = ["TESTS", "leftovers", "main"]

TESTS = "loss_curve or accelerate_launch_exits"
_RESULT = re.compile(r"^(PASSED|FAILED|ERROR) tests/trainer/test_distributed\.py::(\S+)", re.MULTILINE)


def leftovers() -> list[str]:
    """Every live process of any launch of the tests (`tests/process_tree.py`'s marker), ended here."""
    process_tree = tests_module("process_tree")
    found = process_tree.marked_processes()
    left = [process_tree.describe(process) for process in found]
    for process in found:
        try:
            process.kill()
        except psutil.Error:
            continue
    return left


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per pytest run (each test has its own)")
    parser.add_argument("--output", default=None, help="report prefix (writes PREFIX.json and PREFIX.md)")
    args = parser.parse_args(argv)
    command = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider"]
    command += ["tests/trainer/test_distributed.py", "-k", TESTS]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    passed: collections.Counter = collections.Counter()
    runs = []
    load = os.getloadavg()
    for index in range(args.runs):
        start = time.monotonic()
        try:
            result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
            outcomes = dict((name, status) for status, name in _RESULT.findall(result.stdout))
        except subprocess.TimeoutExpired:
            outcomes = {"pytest": "TIMEOUT"}
        left = leftovers()
        passed.update(name for name, status in outcomes.items() if status == "PASSED")
        runs.append(
            {"run": index + 1, "seconds": round(time.monotonic() - start, 1), "outcomes": outcomes, "left": left}
        )
        print(f"run {index + 1}: {outcomes} left={len(left)}", flush=True)
    tests = sorted({name for run in runs for name in run["outcomes"]})
    report = {
        "environment": environment("transformers", "accelerate"),
        "command": command_line(__file__, argv),
        "pytest": shlex.join(["python", *command[1:]]),
        "runs": runs,
        "passed": {name: passed[name] for name in tests},
        "processes_left_behind": sum(len(run["left"]) for run in runs),
        "load_average": {"start": load, "end": os.getloadavg()},
    }
    env_ = report["environment"]
    lines = [
        "# 2-process training runs: do they exit? (cpu)",
        "",
        f"{env_['date']}; {env_['machine']['cpu']} x {env_['machine']['cpu_count']}; "
        f"torch {env_['versions']['torch']}, transformers {env_['versions']['transformers']}, "
        f"accelerate {env_['versions']['accelerate']}",
        "",
        f"Command: `OMP_NUM_THREADS=1 {report['command']}` ({args.runs} runs of `{report['pytest']}`)",
        "",
        "| test | passed |",
        "|---|---|",
        *(f"| {name} | {passed[name]} / {args.runs} |" for name in tests),
        "",
        f"Processes of a launch left behind after a run: {report['processes_left_behind']}. "
        f"Seconds per run: {min(r['seconds'] for r in runs)}-{max(r['seconds'] for r in runs)}. "
        f"Load average (1 min) at the start and the end: {load[0]:.2f}, {report['load_average']['end'][0]:.2f}.",
        "",
    ]
    write_report(args.output, report, "\n".join(lines))
    return report


if __name__ == "__main__":
    main()
