"""The C++ core built once with AddressSanitizer and UndefinedBehaviorSanitizer (cmake -DDLLAMA_SANITIZE=ON),
then the transport tests (cpp/net/tests/net_test.cpp) and the loader, network and worker tests run against
it. Python itself is not instrumented, so the ASan runtime is preloaded (LD_PRELOAD) and leak checking is
off; every process writes its reports to a log folder, and any report fails the test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "sanitize"

# The tests that read files and wire messages through the core, with a smaller fuzz run.
SANITIZED_TESTS = ["tests/test_model_file.py", "tests/test_hostile_files.py", "tests/test_worker_protocol.py",
                   "tests/test_worker_fuzz.py",
                   "tests/test_distributed.py::test_f32_exchange_equals_single_node",
                   "tests/test_distributed.py::test_worker_survives_garbage_and_a_wrong_secret",
                   "tests/test_distributed.py::test_dead_worker_is_reported_within_seconds",
                   "tests/test_distributed.py::test_worker_with_a_local_copy_of_the_model"]
# Timing tests whose fake peer is a thread of the test process: a sanitized process can stall it for
# seconds. The heartbeat code itself runs sanitized in the other worker-protocol tests.
NOT_SANITIZED = "not test_a_ready_worker_outlasts_a_slow_one"


def _runtime(name: str) -> str:
    path = subprocess.run([os.environ.get("CXX", "g++"), f"-print-file-name={name}"], capture_output=True,
                          text=True).stdout.strip()
    if not os.path.isabs(path):
        pytest.fail(f"the C++ compiler has no {name}: cannot build with sanitizers")
    return path


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory):
    """(folder holding a dllama_py package with the sanitized core, environment to run it, log folder)."""
    import pybind11

    package = BUILD / "pkg" / "dllama_py"
    configure = ["cmake", "-S", str(ROOT), "-B", str(BUILD), "-DDLLAMA_SANITIZE=ON", "-DCMAKE_BUILD_TYPE=Release",
                 f"-DDLLAMA_MODULE_DIR={package}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
                 f"-DPython_EXECUTABLE={sys.executable}"]
    if shutil.which("ccache"):
        configure.append("-DCMAKE_CXX_COMPILER_LAUNCHER=ccache")
    for cmd in (configure, ["cmake", "--build", str(BUILD), "-j", str(os.cpu_count() or 2), "--target", "_core",
                            "net_test"]):
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    shutil.copytree(ROOT / "src" / "dllama_py", package, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    logs = tmp_path_factory.mktemp("sanitizer_logs")
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join([str(package.parent), str(ROOT / "tests")]),
               # libstdc++ too: ASan must find the real __cxa_throw, and Python does not load it first.
               LD_PRELOAD=" ".join([_runtime("libasan.so"), _runtime("libstdc++.so")]),
               ASAN_OPTIONS=f"detect_leaks=0:halt_on_error=1:log_path={logs}/asan",
               UBSAN_OPTIONS=f"halt_on_error=1:print_stacktrace=1:log_path={logs}/ubsan")
    return package.parent, env, logs


def _reports(logs: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[:4000] for p in sorted(logs.iterdir()))


def test_transport_under_sanitizers(sanitized):
    _, env, logs = sanitized
    env = dict(env)
    del env["LD_PRELOAD"]  # an instrumented executable links its runtime itself
    done = subprocess.run([str(BUILD / "net_test")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and " 0 failed" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    assert not _reports(logs), _reports(logs)


def test_loader_network_and_worker_tests_under_sanitizers(sanitized):
    _, env, logs = sanitized
    env = dict(env, DLLAMA_FUZZ_CASES="100")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", NOT_SANITIZED,
                           *SANITIZED_TESTS],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=1200)
    assert not _reports(logs), _reports(logs)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    print(done.stdout.strip().splitlines()[-1])  # the sanitized run's "N passed in ..."
    assert " passed" in done.stdout.strip().splitlines()[-1]
    assert "sanitize/pkg/dllama_py" in subprocess.run(
        [sys.executable, "-c", "import dllama_py._core as c; print(c.__file__)"], capture_output=True, text=True,
        env=env).stdout
