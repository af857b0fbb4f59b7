"""Test set-up: JAX on 8 fake CPU devices (sharding tests run anywhere), no network, float32 matmuls at full
precision. This must run before anything imports jax, which conftest.py guarantees.

Compiled programs go to a persistent compilation cache private to this session (also used by the command-line runs
the tests start, through the environment): many tests build the same tiny models, and a program compiled once is
then loaded instead of recompiled. The cache is deleted at exit, so no run depends on an earlier one; parallel
test workers (pytest-xdist) share their controller's.
"""
import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
if "ORCA_JAX_TEST_XLA_CACHE" not in os.environ:  # pytest-xdist workers inherit the controller's cache
    os.environ["ORCA_JAX_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="orca-jax-test-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["ORCA_JAX_TEST_XLA_CACHE"], ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["ORCA_JAX_TEST_XLA_CACHE"]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
